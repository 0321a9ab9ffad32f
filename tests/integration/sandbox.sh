#!/usr/bin/env bash
# The sandbox of a spawned server, inspected from outside through /proc:
# mount an image with fuservicemount (spawn mode), find the serving process,
# check its uid/gid, capabilities, no_new_privs, seccomp, namespaces and open
# fds; run ext4iomapd --sandbox-selftest; umount and check the server exited,
# the loop device auto-cleared and neither mountinfo nor utab keep an entry.
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
MNT=$work/mnt
IMG=$work/img
SPID=
fails=0
cleanup() {
  if mountpoint -q "$MNT" 2>/dev/null; then umount "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null; fi
  if [ -n "$SPID" ] && [ -d "/proc/$SPID" ]; then kill -KILL "$SPID" 2>/dev/null; fi
  for l in $(losetup -j "$IMG" -O NAME -n 2>/dev/null); do losetup -d "$l" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pass() { echo "ok   $*"; }
fail() { echo "FAIL $*"; fails=$((fails + 1)); }
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }
absent() { ! grep -qs "$@"; }

mkdir -p "$work/tree/sub" "$MNT"
echo "sandboxed hello" > "$work/tree/hello.txt"
seq 1 5000 > "$work/tree/sub/numbers"
mkfs.ext4 -q -F -d "$work/tree" "$IMG" 16M || { echo "mkfs.ext4 failed"; exit 1; }

if ! "$HELPER" "$IMG" "$MNT" -t fuse.ext4 -o ro 2>"$work/helper.err"; then
  cat "$work/helper.err"; echo "FAIL mount through fuservicemount"; exit 1
fi
pass "mount through fuservicemount (spawn mode)"

LOOP=$(losetup -j "$IMG" -O NAME -n | head -1)
[ -n "$LOOP" ] || { echo "FAIL no loop device backs $IMG"; exit 1; }
# The serving process is the one holding our (exclusive) loop device.
for p in /proc/[0-9]*; do
  for f in "$p"/fd/*; do
    if [ "$(readlink "$f" 2>/dev/null)" = "$LOOP" ]; then SPID=${p#/proc/}; break 2; fi
  done
done
[ -n "$SPID" ] || { echo "FAIL no process holds $LOOP"; exit 1; }
pass "server pid $SPID holds $LOOP"

check "file content through the mount" [ "$(cat "$MNT/hello.txt")" = "sandboxed hello" ]
check "whole tree walk" [ "$(cd "$MNT" && find . ! -path './lost+found*' | sort)" = "$(cd "$work/tree" && find . | sort)" ]
check "large read" cmp -s "$MNT/sub/numbers" "$work/tree/sub/numbers"

st=/proc/$SPID/status
field() { awk -v k="$1:" '$1 == k { $1 = ""; sub(/^ /, ""); print }' "$st"; }
check "runs the built server ($(readlink /proc/$SPID/exe))" [ "$(readlink -f /proc/$SPID/exe)" = "$(readlink -f "$SERVER")" ]
read -r ruid euid suid fsuid <<<"$(field Uid)"
read -r rgid egid sgid fsgid <<<"$(field Gid)"
check "uid not 0 (Uid: $ruid $euid $suid $fsuid)" [ "$ruid" != 0 -a "$euid" != 0 -a "$suid" != 0 -a "$fsuid" != 0 ]
check "gid not 0 (Gid: $rgid $egid $sgid $fsgid)" [ "$rgid" != 0 -a "$egid" != 0 -a "$sgid" != 0 -a "$fsgid" != 0 ]
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

# Only the descriptors the helper passed: stdio, /dev/fuse, the loop device,
# and the server's own io_uring rings when the fuse module offers FUSE over
# io_uring (restricted to FUSE ring commands; see tests/integration/uring.sh).
# No service socket (closed after the handshake), no image file, nothing else.
bad=
for f in /proc/$SPID/fd/*; do
  n=${f##*/} t=$(readlink "$f")
  case "$n:$t" in
    0:/dev/null|1:/dev/null|2:*) ;;
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

# A killed server: the mount reports ENOTCONN, the loop device is freed, umount cleans up.
if "$HELPER" "$IMG" "$MNT" -t fuse.ext4 -o ro 2>>"$work/helper.err"; then
  LOOP=$(losetup -j "$IMG" -O NAME -n | head -1)
  SPID=
  for p in /proc/[0-9]*; do
    for f in "$p"/fd/*; do [ "$(readlink "$f" 2>/dev/null)" = "$LOOP" ] && { SPID=${p#/proc/}; break 2; }; done
  done
  if [ -n "$SPID" ]; then
    kill -KILL "$SPID"
    for _ in $(seq 50); do [ -d /proc/$SPID ] || break; sleep 0.1; done
    err=$(stat "$MNT/hello.txt" 2>&1 >/dev/null)
    check "after SIGKILL: ENOTCONN on the mount ($err)" grep -q "Transport endpoint is not connected" <<<"$err"
    for _ in $(seq 50); do [ -z "$(losetup -j "$IMG" -O NAME -n)" ] && break; sleep 0.1; done
    check "after SIGKILL: loop device freed" [ -z "$(losetup -j "$IMG" -O NAME -n)" ]
    SPID=
  else fail "second mount: no server process found"; fi
  umount "$MNT" 2>/dev/null || umount -l "$MNT"
  check "after SIGKILL: umount removes the mount" [ -z "$(findmnt -n --mountpoint "$MNT")" ]
  check "after SIGKILL: umount removes the utab entry" absent "TARGET=$MNT " /run/mount/utab
else
  fail "second mount (for the kill test)"
fi

if [ $fails -ne 0 ]; then
  echo "--- helper/server stderr"; cat "$work/helper.err"
  echo "$fails check(s) failed"; exit 1
fi
echo "all sandbox checks passed"
