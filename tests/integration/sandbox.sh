#!/usr/bin/env bash
# The sandbox of a spawned server, inspected from outside through /proc:
# mount an image with fuservicemount (spawn mode), find the serving process,
# check its uid/gid (its own, from our range), capabilities, no_new_privs,
# seccomp, namespaces, that it is not dumpable (a process of the same uid can
# neither take its fds with pidfd_getfd nor open its memory, while it can do
# both to a dumpable process of that uid), its empty root (one mount), its own
# session without a terminal, and its open fds; run ext4iomapd
# --sandbox-selftest; umount and check the server exited, the loop device
# auto-cleared and neither mountinfo nor utab keep an entry. Then two mounts at
# once: different uids, and unmounting one ends its server and frees its loop
# device at once (the other server's namespace does not pin it), so it mounts
# again straight away. Last, a killed server.
# Exit 0 pass, 77 skip (last line says why), anything else fail.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${EXT4IOMAP_BUILD:-$repo/.build/debug}
HELPER=$BUILD/fuservicemount
SERVER=$BUILD/ext4iomapd

[ "$(id -u)" -eq 0 ] || { echo "skip: needs root (real FUSE mounts and loop devices)"; exit 77; }
[ -x "$HELPER" ] && [ -x "$SERVER" ] || { echo "skip: $HELPER or $SERVER not built"; exit 77; }
[ -c /dev/fuse ] || { echo "skip: no /dev/fuse"; exit 77; }
if [ -S /run/filesystems/ext4 ]; then
  echo "skip: /run/filesystems/ext4 exists, so the helper would use the systemd service instead of spawning"
  exit 77
fi

work=$(mktemp -d /tmp/ext4iomap-sandbox.XXXXXX)
chmod 755 "$work"
MNT=$work/mnt
MNT2=$work/mnt2
IMG=$work/img
IMG2=$work/img2
SPID=
PIDS=()   # every process this test started that may still run
fails=0
cleanup() {
  for m in "$MNT" "$MNT2"; do
    # A trap does not wait for a server's DESTROY answer: abort the connection first.
    if mountpoint -q "$m" 2>/dev/null; then
      python3 "$repo/tests/tools/fstarget.py" abort "$m" 2>/dev/null
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
    fi
  done
  for p in $SPID "${PIDS[@]}"; do [ -n "$p" ] && [ -d "/proc/$p" ] && kill -KILL "$p" 2>/dev/null; done
  for i in "$IMG" "$IMG2"; do
    for l in $(losetup -j "$i" -O NAME -n 2>/dev/null); do losetup -d "$l" 2>/dev/null; done
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pass() { echo "ok   $*"; }
fail() { echo "FAIL $*"; fails=$((fails + 1)); }
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }
absent() { ! grep -qs "$@"; }
server_of() {  # the pid holding loop device $1 (besides the kernel's fuseblk mount, only the server does)
  local p f
  for p in /proc/[0-9]*; do
    for f in "$p"/fd/*; do [ "$(readlink "$f" 2>/dev/null)" = "$1" ] && { echo "${p#/proc/}"; return; }; done
  done
}
fd_of() {  # the fd number of $1's fd pointing at $2
  local f
  for f in /proc/$1/fd/*; do [ "$(readlink "$f" 2>/dev/null)" = "$2" ] && { echo "${f##*/}"; return; }; done
}
uid_of() { awk '$1 == "Uid:" { print $2 }' "/proc/$1/status"; }
# The server ids: 0x7E000000…0x7E000FFF (ServerIDs.swift).
ID_FIRST=2113929216 ID_LAST=2113933311
in_range() { [ -n "$1" ] && [ "$1" -ge $ID_FIRST ] && [ "$1" -le $ID_LAST ]; }
gone_within() {  # pid, tenths of a second
  local i
  for ((i = 0; i < $2; i++)); do [ -d "/proc/$1" ] || return 0; sleep 0.1; done
  [ ! -d "/proc/$1" ]
}

# An unprivileged process of a given uid: python3 for pidfd_getfd and /proc/PID/mem.
PY=
for c in /usr/bin/python3 /usr/local/bin/python3; do [ -x "$c" ] && { PY=$c; break; }; done
as_uid() { local u=$1; shift; (cd / && exec setpriv --reuid "$u" --regid "$u" --clear-groups "$@"); }
cat > "$work/steal.py" <<'PYEOF'
# steal.py PID FD: take fd FD of process PID (pidfd_open + pidfd_getfd) and
# open /proc/PID/mem. Prints "getfd:<result> mem:<result>", result ok or an errno name.
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
pid, fd = int(sys.argv[1]), int(sys.argv[2])
def err():
    return errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
pidfd = libc.syscall(434, pid, 0)          # pidfd_open
if pidfd < 0:
    getfd = "pidfd_open-" + err()
else:
    got = libc.syscall(438, pidfd, fd, 0)  # pidfd_getfd
    getfd = "ok" if got >= 0 else err()
try:
    with open("/proc/%d/mem" % pid, "rb"):
        mem = "ok"
except OSError as e:
    mem = errno.errorcode.get(e.errno, str(e.errno))
print("getfd:%s mem:%s" % (getfd, mem))
PYEOF
chmod 644 "$work/steal.py"

mkdir -p "$work/tree/sub" "$MNT" "$MNT2"
echo "sandboxed hello" > "$work/tree/hello.txt"
seq 1 5000 > "$work/tree/sub/numbers"
mkfs.ext4 -q -F -d "$work/tree" "$IMG" 16M || { echo "mkfs.ext4 failed"; exit 1; }
mkfs.ext4 -q -F -d "$work/tree" "$IMG2" 16M || { echo "mkfs.ext4 failed"; exit 1; }

if ! "$HELPER" "$IMG" "$MNT" -t fuse.ext4 -o ro 2>"$work/helper.err"; then
  cat "$work/helper.err"; echo "FAIL mount through fuservicemount"; exit 1
fi
pass "mount through fuservicemount (spawn mode)"

LOOP=$(losetup -j "$IMG" -O NAME -n | head -1)
[ -n "$LOOP" ] || { echo "FAIL no loop device backs $IMG"; exit 1; }
# The serving process is the one holding our loop device.
SPID=$(server_of "$LOOP")
[ -n "$SPID" ] || { echo "FAIL no process holds $LOOP"; exit 1; }
pass "server pid $SPID holds $LOOP"

check "file content through the mount" [ "$(cat "$MNT/hello.txt")" = "sandboxed hello" ]
check "whole tree walk" [ "$(cd "$MNT" && find . ! -path './lost+found*' | sort)" = "$(cd "$work/tree" && find . | sort)" ]
check "large read" cmp -s "$MNT/sub/numbers" "$work/tree/sub/numbers"

st=/proc/$SPID/status
field() { awk -v k="$1:" '$1 == k { $1 = ""; sub(/^ /, ""); print }' "$st"; }
# Compared as files: outside its (emptied) namespace the kernel may name the
# executable relative to the mount it came from.
check "runs the built server ($(readlink /proc/$SPID/exe))" [ "$(stat -L -c %d:%i /proc/$SPID/exe)" = "$(stat -L -c %d:%i "$SERVER")" ]
read -r ruid euid suid fsuid <<<"$(field Uid)"
read -r rgid egid sgid fsgid <<<"$(field Gid)"
check "uid not 0 (Uid: $ruid $euid $suid $fsuid)" [ "$ruid" != 0 -a "$euid" != 0 -a "$suid" != 0 -a "$fsuid" != 0 ]
check "gid not 0 (Gid: $rgid $egid $sgid $fsgid)" [ "$rgid" != 0 -a "$egid" != 0 -a "$sgid" != 0 -a "$fsgid" != 0 ]
check "uid in the server range $ID_FIRST…$ID_LAST ($ruid), all four equal" \
  bash -c "[ $ruid -ge $ID_FIRST ] && [ $ruid -le $ID_LAST ] && [ $ruid = $euid ] && [ $ruid = $suid ] && [ $ruid = $fsuid ]"
check "gid equals the uid ($rgid), all four equal" [ "$rgid" = "$ruid" -a "$egid" = "$ruid" -a "$sgid" = "$ruid" -a "$fsgid" = "$ruid" ]
check "no other process runs as uid $ruid" [ "$(ps -e -o pid=,uid= | awk -v u="$ruid" '$2 == u { n++ } END { print n + 0 }')" = 1 ]
check "no supplementary groups (Groups: $(field Groups))" [ -z "$(field Groups)" ]
for c in CapInh CapPrm CapEff CapBnd CapAmb; do
  v=$(field $c)
  check "$c = 0 ($v)" [ "$v" = 0000000000000000 ]
done
check "NoNewPrivs = 1" [ "$(field NoNewPrivs)" = 1 ]
check "Seccomp = 2 (filter)" [ "$(field Seccomp)" = 2 ]
check "Seccomp_filters >= 2 (both lockdown stages; got $(field Seccomp_filters))" [ "$(field Seccomp_filters)" -ge 2 ]
for ns in mnt net ipc pid; do
  mine=$(readlink /proc/$$/ns/$ns) theirs=$(readlink /proc/$SPID/ns/$ns)
  check "own $ns namespace ($theirs vs host $mine)" [ -n "$theirs" -a "$mine" != "$theirs" ]
done

# Not dumpable: /proc/PID/fd and friends belong to root, and another process
# running as the server's uid can neither take its fds nor open its memory.
# The control (a dumpable process of that uid, where both succeed) shows the
# check is not vacuous (no Yama or LSM that refuses it anyway).
sigign=$(field SigIgn)
check "SIGPIPE ignored (SigIgn $sigign): a write after the helper's relay is gone cannot kill it" \
  [ $(( 0x$sigign >> 12 & 1 )) = 1 ]
check "not dumpable: /proc/$SPID/fd owned by root ($(stat -c %U /proc/$SPID/fd))" [ "$(stat -c %u /proc/$SPID/fd)" = 0 ]
if [ -n "$PY" ] && command -v setpriv >/dev/null; then
  LOOPFD=$(fd_of "$SPID" "$LOOP")
  (cd / && exec setpriv --reuid "$ruid" --regid "$ruid" --clear-groups sleep 30) < /dev/null &
  CTRL=$!
  PIDS+=($CTRL)
  for _ in $(seq 50); do [ "$(uid_of "$CTRL" 2>/dev/null)" = "$ruid" ] && [ "$(cat /proc/$CTRL/comm)" = sleep ] && break; sleep 0.1; done
  got=$(as_uid "$ruid" "$PY" "$work/steal.py" "$CTRL" 0 2>&1)
  check "control: uid $ruid takes an fd and opens the memory of its own dumpable process ($got)" [ "$got" = "getfd:ok mem:ok" ]
  kill -KILL "$CTRL" 2>/dev/null; wait "$CTRL" 2>/dev/null
  got=$(as_uid "$ruid" "$PY" "$work/steal.py" "$SPID" "$LOOPFD" 2>&1)
  check "uid $ruid cannot pidfd_getfd the server's loop fd $LOOPFD (EPERM) nor open /proc/$SPID/mem ($got)" \
    [ "$got" = "getfd:EPERM mem:EACCES" ]
else
  echo "skip pidfd_getfd and /proc/PID/mem as the server's uid: needs setpriv and /usr/bin/python3"
fi

# An empty root: the server's mount namespace holds one mount, an empty
# read-only tmpfs, which is its root and its working directory.
check "one mount in the server's namespace ($(wc -l < /proc/$SPID/mountinfo))" [ "$(wc -l < /proc/$SPID/mountinfo)" = 1 ]
read -r _ _ _ mroot mpoint mopts _ <<<"$(head -1 /proc/$SPID/mountinfo)"
check "that mount is / ($mroot on $mpoint), read-only, nosuid, nodev, noexec ($mopts)" \
  [ "$mroot" = / -a "$mpoint" = / -a "${mopts%%,relatime*}" = ro,nosuid,nodev,noexec ]
check "it is tmpfs" grep -q " - tmpfs " /proc/$SPID/mountinfo
check "the server's root is empty ($(ls -A /proc/$SPID/root | head -3 | tr '\n' ' '))" [ -z "$(ls -A /proc/$SPID/root)" ]
check "root dir 0755 root ($(stat -c '%a %U' /proc/$SPID/root/))" [ "$(stat -c '%a %u' /proc/$SPID/root/)" = "755 0" ]
check "cwd is that root" [ "$(stat -L -c %d:%i /proc/$SPID/cwd)" = "$(stat -L -c %d:%i /proc/$SPID/root)" ]

# Its own session, no controlling terminal, no terminal among its fds.
stat_fields=$(sed 's/.*) //' /proc/$SPID/stat)   # after "pid (comm) "
read -r _ _ pgrp sid tty_nr _ <<<"$stat_fields"
check "own session (sid $sid = pid $SPID) and process group ($pgrp)" [ "$sid" = "$SPID" -a "$pgrp" = "$SPID" ]
check "no controlling terminal (tty_nr $tty_nr)" [ "$tty_nr" = 0 ]
ttys=
for f in /proc/$SPID/fd/*; do
  case $(readlink "$f") in /dev/tty*|/dev/pts/*|/dev/console|/dev/ptmx|/dev/vc*) ttys="$ttys ${f##*/}->$(readlink "$f")" ;; esac
done
check "no fd on a terminal${ttys:+ (found:$ttys)}" [ -z "$ttys" ]

# Only the descriptors the helper passed: stdio, /dev/fuse, the loop device,
# and the server's own io_uring rings when the fuse module offers FUSE over
# io_uring (restricted to FUSE ring commands; see tests/integration/uring.sh).
# No service socket (closed after the handshake), no image file, nothing else.
# Stdio is /dev/null (stderr was the relay pipe until the mount was made); the
# server opened it in the namespace it has since detached, so the kernel names
# it "/null" from outside: compare the device (char 1:3) instead of the name.
devnull() { [ "$(stat -L -c '%F %t:%T' "$1" 2>/dev/null)" = "character special file 1:3" ]; }
bad=
for f in /proc/$SPID/fd/*; do
  n=${f##*/} t=$(readlink "$f")
  if [ "$n" -le 2 ]; then devnull "$f" || bad="$bad $n->$t"; continue; fi
  case "$n:$t" in
    *:/dev/fuse|*:"$LOOP") ;;
    *:"anon_inode:[io_uring]") ;;
    *) bad="$bad $n->$t" ;;
  esac
done
check "open fds are only stdio, /dev/fuse, $LOOP and io_uring rings${bad:+ (unexpected:$bad)}" [ -z "$bad" ]
check "no socket fd after the handshake" [ -z "$(ls -l /proc/$SPID/fd | grep socket:)" ]

# The same sandbox, applied to a test process, denies every forbidden action.
if out=$("$SERVER" --sandbox-selftest 2>/dev/null); then pass "--sandbox-selftest: every forbidden action denied"
else fail "--sandbox-selftest"; fi
echo "$out" | sed 's/^/     /'

umount "$MNT" || fail "umount"
gone=
for _ in $(seq 50); do [ -d /proc/$SPID ] || { gone=1; break; }; sleep 0.1; done
check "server exited after umount" [ -n "$gone" ]
[ -n "$gone" ] && SPID=
cleared=
for _ in $(seq 50); do [ -z "$(losetup -j "$IMG" -O NAME -n)" ] && { cleared=1; break; }; sleep 0.1; done
check "loop device auto-cleared" [ -n "$cleared" ]
check "no mountinfo entry" absent " $MNT " /proc/self/mountinfo
check "no utab entry" absent "TARGET=$MNT " /run/mount/utab
check "server reports its lockdown" grep -q "sandboxed: no_new_privs, .*seccomp allow-list" "$work/helper.err"
check "server logged no seccomp denial" absent "seccomp: denied" "$work/helper.err"

# Two mounts at once: A and B. Each server has its own uid; unmounting A ends
# A's server and frees A's loop device at once, although B's server started
# while A was mounted (its namespace no longer holds a copy of A's mount), and
# A mounts again straight away.
if "$HELPER" "$IMG" "$MNT" -t fuse.ext4 -o ro 2>>"$work/helper.err" \
   && "$HELPER" "$IMG2" "$MNT2" -t fuse.ext4 -o ro 2>>"$work/helper.err"; then
  LOOPA=$(losetup -j "$IMG" -O NAME -n | head -1) LOOPB=$(losetup -j "$IMG2" -O NAME -n | head -1)
  APID=$(server_of "$LOOPA") BPID=$(server_of "$LOOPB")
  PIDS+=($APID $BPID)
  ua=$(uid_of "$APID") ub=$(uid_of "$BPID")
  check "A and B: both server uids in range ($ua, $ub)" bash -c "$(declare -f in_range); ID_FIRST=$ID_FIRST ID_LAST=$ID_LAST; in_range '$ua' && in_range '$ub'"
  check "A and B: different uids" [ -n "$ua" -a "$ua" != "$ub" ]
  check "B's namespace holds no copy of A's mount (one mount)" [ "$(wc -l < /proc/$BPID/mountinfo)" = 1 ]
  check "A readable" [ "$(cat "$MNT/hello.txt")" = "sandboxed hello" ]
  check "B readable" [ "$(cat "$MNT2/hello.txt")" = "sandboxed hello" ]
  umount "$MNT" || fail "umount A"
  t0=$(date +%s%N)
  check "A's server exited within 5 s of umount" gone_within "$APID" 50
  cleared=
  for _ in $(seq 50); do [ -z "$(losetup -j "$IMG" -O NAME -n)" ] && { cleared=1; break; }; sleep 0.1; done
  check "A's loop device detached within 5 s ($(( ($(date +%s%N) - t0) / 1000000 )) ms)" [ -n "$cleared" ]
  check "B's server still serves" [ -d /proc/$BPID -a "$(cat "$MNT2/hello.txt")" = "sandboxed hello" ]
  if "$HELPER" "$IMG" "$MNT" -t fuse.ext4 -o ro 2>>"$work/helper.err"; then
    pass "A mounts again at once"
    check "A readable again" [ "$(cat "$MNT/hello.txt")" = "sandboxed hello" ]
    A2PID=$(server_of "$(losetup -j "$IMG" -O NAME -n | head -1)")
    PIDS+=($A2PID)
    umount "$MNT" || fail "umount A (again)"
    check "A's second server exited" gone_within "$A2PID" 30
  else
    fail "A mounts again at once"
  fi
  umount "$MNT2" || fail "umount B"
  check "B's server exited" gone_within "$BPID" 30
  for _ in $(seq 30); do [ -z "$(losetup -j "$IMG2" -O NAME -n)$(losetup -j "$IMG" -O NAME -n)" ] && break; sleep 0.1; done
  check "no loop device left for A or B" [ -z "$(losetup -j "$IMG2" -O NAME -n)$(losetup -j "$IMG" -O NAME -n)" ]
else
  fail "mount A and B at once"
fi

# A killed server: the mount reports ENOTCONN; umount (which cannot wait for a
# dead server: its connection ended with it) removes it and frees the loop device.
if "$HELPER" "$IMG" "$MNT" -t fuse.ext4 -o ro 2>>"$work/helper.err"; then
  LOOP=$(losetup -j "$IMG" -O NAME -n | head -1)
  SPID=$(server_of "$LOOP")
  if [ -n "$SPID" ]; then
    kill -KILL "$SPID"
    for _ in $(seq 50); do [ -d /proc/$SPID ] || break; sleep 0.1; done
    err=$(stat "$MNT/hello.txt" 2>&1 >/dev/null)
    check "after SIGKILL: ENOTCONN on the mount ($err)" grep -q "Transport endpoint is not connected" <<<"$err"
    # The mount is fuseblk: the kernel itself holds the loop device until umount.
    check "after SIGKILL: the mount still holds its loop device" [ -n "$(losetup -j "$IMG" -O NAME -n)" ]
    SPID=
  else fail "second mount: no server process found"; fi
  umount "$MNT" 2>/dev/null || umount -l "$MNT"
  check "after SIGKILL: umount removes the mount" [ -z "$(findmnt -n --mountpoint "$MNT")" ]
  for _ in $(seq 10); do [ -z "$(losetup -j "$IMG" -O NAME -n)" ] && break; sleep 0.1; done
  check "after SIGKILL: umount frees the loop device (within 1 s)" [ -z "$(losetup -j "$IMG" -O NAME -n)" ]
  check "after SIGKILL: umount removes the utab entry" absent "TARGET=$MNT " /run/mount/utab
else
  fail "second mount (for the kill test)"
fi

if [ $fails -ne 0 ]; then
  echo "--- helper/server stderr"; cat "$work/helper.err"
  echo "$fails check(s) failed"; exit 1
fi
echo "all sandbox checks passed"
