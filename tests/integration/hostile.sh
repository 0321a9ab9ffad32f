#!/usr/bin/env bash
# A compromised server against fuservicemount. tests/tools/hostile_proxy.py sits
# between the helper and the real ext4iomapd and rewrites, replays or injects
# messages; every check reads the host's state from outside (mountinfo, utab,
# which inode an fd the proxy received really is, inotify on files the server
# must not reach, O_EXCL on block devices, what an ordinary user can do with
# the mount, what is still mounted, attached or running afterwards). The
# helper's replies are recorded and shown, and checked where the protocol
# names them, but a refusal alone is never the proof.
#
# Each attack runs through the service socket (/run/filesystems/hostile, the
# proxy bound as root and then running as uid 65534) and, where it makes sense,
# through spawn mode (--server WRAPPER, the proxy as the sandboxed server).
# The whole script runs in a private mount namespace with a tmpfs on /run, so
# the host's /run/filesystems and utab are never touched.
#
#   flags-*     DOIT flags 0: setuid-root binary and device node in the image
#   opts-*      OPTS outside the allow-list; the helper's own allow_other
#   fuseblk-*   TYPE fuseblk + NAME of another loop device (the mount is fuseblk
#               on the helper's own loop device, never on the one named)
#   name-*      server-chosen NAME and MTAB (mountinfo, utab)
#   kind-*      FIFO, /dev/zero, directory as source
#   once-*      the same source opened twice
#   swapsrc-*   source path swapped for a symlink to a root-only file
#   swapmnt-*   mountpoint swapped for a symlink (before MNTP, before DOIT)
#   undo-*      mountpoint path swapped after DOIT, connection dropped
#   busy-*      a block device the kernel has mounted
#   bound-*     duplicates forever, a cap, a flood without reading, BYEE 1 + linger
#   optfile-*   -o values: a non-file key, a relative path
#   trust-*     a service socket or directory that is not root's alone
#   echo-*      (beyond the findings) escapes and newlines in a path the helper quotes
#
# Exit 0 pass, 77 skip (last line says why), anything else fail.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${EXT4IOMAP_BUILD:-$repo/.build/debug}
HELPER=$BUILD/fuservicemount
SERVER=$BUILD/ext4iomapd
PROXY=$repo/tests/tools/hostile_proxy.py
U=65534  # the ordinary user, and the uid the proxy runs as in socket mode
# The proxy runs as other uids (65534, the spawn sandbox's own): a system
# python3 they can all read, not one under root's home.
PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3)
ONLY=${HOSTILE_ONLY:-}  # run only cases whose name matches this regex

[ "$(id -u)" -eq 0 ] || { echo "skip: needs root (real FUSE mounts, loop devices, a private mount namespace)"; exit 77; }
[ -x "$HELPER" ] && [ -x "$SERVER" ] || { echo "skip: $HELPER or $SERVER not built"; exit 77; }
[ -c /dev/fuse ] || { echo "skip: no /dev/fuse"; exit 77; }
for t in python3 setpriv unshare mkfs.ext4 e2fsck losetup findmnt mknod timeout; do
  command -v $t >/dev/null || { echo "skip: $t not installed"; exit 77; }
done

if [ -z "${HOSTILE_IN_NS:-}" ]; then
  unshare --mount --propagation private true 2>/dev/null \
    || { echo "skip: cannot make a private mount namespace"; exit 77; }
  HOSTILE_IN_NS=1 exec unshare --mount --propagation private -- bash "$0" "$@"
fi

# Inside our own mount namespace: a private /run (the helper looks for
# /run/filesystems/<subtype>; libmount keeps utab in /run/mount).
mount -t tmpfs -o mode=0755,size=4m hostile-run /run || { echo "FAIL: tmpfs on /run"; exit 1; }
mkdir -m 0755 /run/filesystems /run/mount

work=$(mktemp -d /tmp/ext4iomap-hostile.XXXXXX)
chmod 755 "$work"
LOOPS=()
fails=0
passes=0
declare -a FAILED=()

# Proxies, real servers and watchers this test started (directly or through
# the helper) carry HOSTILE_TAG=<scratch or case directory> in their environment.
tagged_pids() {
  local want=${1:-$work} p
  for p in /proc/[0-9]*; do
    [ "${p#/proc/}" = "$$" ] && continue
    [ "${p#/proc/}" = "$BASHPID" ] && continue
    if { tr '\0' '\n' < "$p/environ"; } 2>/dev/null | grep -qx "HOSTILE_TAG=$want.*"; then echo "${p#/proc/}"; fi
  done
}
kill_tagged() {
  local p
  for p in $(tagged_pids "${1:-$work}"); do kill -KILL "$p" 2>/dev/null; done
}
unmount_under() {
  local t
  for t in $(awk -v w="$1" 'index($5, w "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r); do
    umount "$t" 2>/dev/null || umount -l "$t" 2>/dev/null
  done
}
cleanup() {
  kill_tagged
  unmount_under "$work"
  local l
  for l in "${LOOPS[@]}"; do losetup -d "$l" 2>/dev/null; done
  for l in $(losetup -l -n -O NAME,BACK-FILE 2>/dev/null | awk -v w="$work" 'index($2, w "/") == 1 { print $1 }'); do
    losetup -d "$l" 2>/dev/null
  done
  kill_tagged
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

as_user() { setpriv --reuid $U --regid $U --clear-groups -- "$@"; }
P() { "$PY" -I "$PROXY" "$@"; }

CASE=
pass() { echo "ok   $CASE: $*"; passes=$((passes + 1)); }
fail() { echo "FAIL $CASE: $*"; fails=$((fails + 1)); FAILED+=("$CASE: $*"); }
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }
note() { echo "     $*"; }

# mountinfo of one target: fields
mi() { awk -v t="$1" '$5 == t' /proc/self/mountinfo | tail -1; }
mounted() { [ -n "$(mi "$1")" ]; }
mnt_opts() { mi "$1" | awk '{ print $6 }'; }
mnt_fstype() { mi "$1" | awk '{ for (i = 7; i <= NF; i++) if ($i == "-") { print $(i + 1); exit } }'; }
mnt_source() { mi "$1" | awk '{ for (i = 7; i <= NF; i++) if ($i == "-") { print $(i + 2); exit } }'; }
super_opts() { mi "$1" | awk '{ print $NF }'; }
has_opt() { case ",$1," in *",$2,"*) return 0 ;; esac; return 1; }
not() { ! "$@"; }
# The helper ended by itself (not killed by our timeout), failing, within $1 ms.
gave_up() { [ "$MS" -lt "$1" ] && [ "$RC" != 0 ] && [ "$RC" != 124 ] && [ "$RC" != 137 ]; }
nonzero_number() { [[ $1 =~ ^[0-9]+$ && $1 != 0 ]]; }
utab_source_ok() { [ -z "$1" ] || grep -q "^SRC=$2 " <<<"$1"; }
# The kernel's source for a mount of image IMG: the helper mounts fuseblk on
# its own loop device over IMG (the only loop device over it), else IMG itself.
kernel_source() { local l; l=$(losetup -j "$1" -O NAME -n 2>/dev/null | head -1); echo "${l:-$1}"; }
user_opens() { as_user sh -c "exec 3$2\"\$1\"" - "$1" 2>/dev/null; }
decoy_in_mountinfo() {
  awk -v d="$DECOY" -v n="$DECOY_MAJ:$DECOY_MIN" '$3 == n || $0 ~ (" " d " ")' /proc/self/mountinfo | grep -q .
}
hostile_mounts() { awk -v w="$work" 'index($5, w "/") == 1 { for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i + 1) ~ /^fuse(blk)?\.hostile$/) print $5 } }' /proc/self/mountinfo; }

wait_for() {  # wait_for SECONDS FILE REGEX
  local n=$(( $1 * 20 ))
  while [ $n -gt 0 ]; do grep -qE "$3" "$2" 2>/dev/null && return 0; sleep 0.05; n=$((n - 1)); done
  return 1
}

# -- one case: scratch dir, proxy (socket) or wrapper (spawn), helper

base_image() {
  mkdir -p "$work/tree/bin" "$work/tree/dev"
  echo "hostile hello" > "$work/tree/hello.txt"
  cp /usr/bin/id "$work/tree/bin/id"
  chown 0:0 "$work/tree/bin/id"
  chmod 4755 "$work/tree/bin/id"
  # A device node for an unrelated loop device, readable and writable by anyone.
  mknod -m 0666 "$work/tree/dev/decoy" b "$DECOY_MAJ" "$DECOY_MIN"
  mkfs.ext4 -q -F -d "$work/tree" "$work/base.img" 16M || { echo "FAIL: mkfs.ext4"; exit 1; }
}

new_case() {  # new_case NAME MODE
  CASE=$1-$2 MODE=$2
  C=$work/$CASE
  mkdir -p "$C"
  chmod 755 "$C"
  : > "$C/status"; : > "$C/result.json"; mkfifo "$C/go"
  chmod 666 "$C/status" "$C/result.json" "$C/go"
  PPID_=
  HELPER_EXTRA=()
}

want() { [ -z "$ONLY" ] || [[ $1 =~ $ONLY ]]; }

start_proxy() {  # start_proxy SCENARIO [proxy args...]; socket: listens now; spawn: writes the wrapper
  local sc=$1; shift
  if [ "$MODE" = socket ]; then
    rm -f /run/filesystems/hostile
    HOSTILE_TAG=$C "$PY" -I "$PROXY" serve --listen /run/filesystems/hostile --uid $U --gid $U \
      --result "$C/result.json" --status "$C/status" --go "$C/go" --server "$SERVER" \
      --scenario "$sc" "$@" >> "$C/proxy.err" 2>&1 &
    PPID_=$!
    wait_for 10 "$C/status" '^listening' || { fail "proxy did not start listening"; cat "$C/proxy.err"; return 1; }
  else
    local q="" a
    for a in "$@"; do q="$q $(printf '%q' "$a")"; done
    cat > "$C/wrapper" <<EOF
#!/bin/bash
# Generated by hostile.sh: the helper runs this as its sandboxed server. Files
# are opened here, before HELLO; afterwards the proxy uses only these fds.
exec 7<>'$C/result.json' 8>>'$C/status' 9<>'$C/go'
HOSTILE_TAG='$C'; export HOSTILE_TAG
exec '$PY' -I '$PROXY' spawned --result-fd 7 --status-fd 8 --go-fd 9 --server '$SERVER' --scenario '$sc'$q
EOF
    chmod 755 "$C/wrapper"
    HELPER_EXTRA=(--server "$C/wrapper")
  fi
}

# run_helper TIMEOUT ARGS... (foreground); sets RC and MS
run_helper() {
  local to=$1; shift
  local t0; t0=$(date +%s%N)
  timeout -k 2 "$to" "$HELPER" "$@" -t fuse.hostile "${HELPER_EXTRA[@]}" > "$C/helper.out" 2> "$C/helper.err"
  RC=$?
  MS=$(( ($(date +%s%N) - t0) / 1000000 ))
  note "helper exit $RC after ${MS} ms$( [ -s "$C/helper.err" ] && printf ': %s' "$(tail -1 "$C/helper.err" | cat -v | cut -c1-400)")"
}
# bg_helper TIMEOUT ARGS... ; later wait_helper
bg_helper() {
  local to=$1; shift
  T0=$(date +%s%N)
  timeout -k 2 "$to" "$HELPER" "$@" -t fuse.hostile "${HELPER_EXTRA[@]}" > "$C/helper.out" 2> "$C/helper.err" &
  HPID=$!
}
wait_helper() {
  wait "$HPID"
  RC=$?
  HPID=
  MS=$(( ($(date +%s%N) - T0) / 1000000 ))
  note "helper exit $RC after ${MS} ms$( [ -s "$C/helper.err" ] && printf ': %s' "$(tail -1 "$C/helper.err" | cat -v | cut -c1-400)")"
}
go() { echo g 1<>"$C/go"; }
# As the ordinary user who owns DIR: move DIR/NAME aside and put a symlink to
# TARGET in its place.  user_swap DIR NAME TARGET WHAT
user_swap() {
  as_user sh -c 'mv "$1/$2" "$1/$2.orig" && ln -s "$3" "$1/$2"' - "$1" "$2" "$3" \
    || fail "could not swap $4 as uid $U"
}

# The proxy's view: replies it got and what it recorded.
rget() { P get "$C/result.json" "$1" 2>/dev/null; }
rerr() { P reply-error "$C/result.json" "$1" 2>/dev/null; }
# fd-check: which files the fds the proxy received really are (printed), 0 if all allowed.
fd_check() { P fd-check "$C/result.json" "$@" | sed 's/^/    /'; return "${PIPESTATUS[0]}"; }
quiet() { "$@" > "$C/quiet.out" 2>&1 || { sed 's/^/     /' "$C/quiet.out" | head -20; return 1; }; }
show_replies() {
  [ "$MODE" = spawn ] && [ -s "$C/result.json" ] && note "the proxy ran as uid $(rget uid), pid $(rget pid) in its namespace"
  P replies "$C/result.json" 2>/dev/null | sed 's/^/     reply: /'
}
connected() {
  if [ "$MODE" = socket ]; then [ "$(rget connected)" = true ]
  else grep -q '^started' "$C/status"; fi
}

end_case() {
  [ -n "${HPID:-}" ] && { kill -KILL "$HPID" 2>/dev/null; wait "$HPID" 2>/dev/null; HPID=; }
  unmount_under "$C"
  if [ -n "$PPID_" ]; then
    kill -TERM "$PPID_" 2>/dev/null
    for _ in $(seq 40); do kill -0 "$PPID_" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$PPID_" 2>/dev/null
    wait "$PPID_" 2>/dev/null
    PPID_=
  fi
  kill_tagged "$C"
  rm -f /run/filesystems/hostile
  if [ -n "$(hostile_mounts)" ]; then
    fail "left mounted: $(hostile_mounts | tr '\n' ' ')"
    unmount_under "$work/$CASE"
  fi
  if [ $fails -gt ${FAILS_BEFORE:-0} ]; then
    [ -s "$C/helper.err" ] && sed 's/^/     helper: /' "$C/helper.err" | tail -8 | cat -v | cut -c1-400
    [ -s "$C/proxy.err" ] && sed 's/^/     proxy: /' "$C/proxy.err" | tail -8 | cat -v | cut -c1-400
  fi
}
begin() { FAILS_BEFORE=$fails; new_case "$@"; echo "-- $CASE"; }

# Common image copy and mountpoint.
img_and_mnt() { cp --sparse=always "$work/base.img" "$C/img"; mkdir -p "$C/mnt"; }

# -- set-up shared by the cases

truncate -s 1M "$work/decoy.img"
printf 'DECOY-MARKER' | dd of="$work/decoy.img" conv=notrunc status=none
DECOY=$(losetup -f --show "$work/decoy.img") || { echo "FAIL: losetup"; exit 1; }
LOOPS+=("$DECOY")
DECOY_MAJ=$(( 0x$(stat -c %t "$DECOY") )) DECOY_MIN=$(( 0x$(stat -c %T "$DECOY") ))
base_image
printf 'SECRET root only\n' > "$work/secret"
chmod 600 "$work/secret"

# An inotify watcher on the root-only file, checked by a test open first.
HOSTILE_TAG=$work "$PY" -I "$PROXY" watch --out "$work/inotify.log" "$work/secret" >/dev/null 2>&1 &
WATCH_PID=$!
wait_for 5 "$work/inotify.log" '^watching' || { echo "FAIL: inotify watcher did not start"; exit 1; }
cat "$work/secret" > /dev/null
wait_for 5 "$work/inotify.log" "^OPEN $work/secret\$" || { echo "FAIL: inotify watcher does not see opens"; exit 1; }
secret_opens() { grep -c "^OPEN $work/secret\$" "$work/inotify.log"; }

# ================================================================ finding 1: flags

flags_case() {  # MODE [control]
  local control=${2:-}
  begin flags${control:+-control} "$1"
  img_and_mnt
  if [ -n "$control" ]; then
    start_proxy forward || return
    run_helper 20 "$C/img" "$C/mnt" -o suid,dev
  else
    start_proxy doit-flags0 || return
    run_helper 20 "$C/img" "$C/mnt"
  fi
  show_replies
  check "mounted (flags are forced, the mount is not refused)" mounted "$C/mnt"
  if mounted "$C/mnt"; then
    local o s euid rd
    o=$(mnt_opts "$C/mnt") s=$(super_opts "$C/mnt")
    note "mountinfo: $o - $(mnt_fstype "$C/mnt") $(mnt_source "$C/mnt") $s"
    euid=$(as_user "$C/mnt/bin/id" -u 2>&1)
    rd=$(as_user head -c 12 "$C/mnt/dev/decoy" 2>&1)
    if [ -n "$control" ]; then
      # The harness sees the attack when the admin allows it: -o suid,dev.
      check "control -o suid,dev: mount has no nosuid ($o)" not has_opt "$o" nosuid
      check "control -o suid,dev: mount has no nodev ($o)" not has_opt "$o" nodev
      check "control -o suid,dev: setuid-root binary gives uid $U euid 0 (got '$euid')" [ "$euid" = 0 ]
      check "control -o suid,dev: the device node reads the decoy loop device" [ "$rd" = DECOY-MARKER ]
    else
      check "mount has nosuid ($o)" has_opt "$o" nosuid
      check "mount has nodev ($o)" has_opt "$o" nodev
      check "super options have allow_other ($s)" has_opt "$s" allow_other
      check "super options have default_permissions ($s)" has_opt "$s" default_permissions
      check "setuid-root binary run by uid $U: euid is not 0 (got '$euid')" nonzero_number "$euid"
      check "device node in the image: uid $U reads nothing of the decoy (got '$rd')" [ "$rd" != DECOY-MARKER ]
      check "device node in the image: uid $U cannot open it for reading" not user_opens "$C/mnt/dev/decoy" '<'
      check "device node in the image: uid $U cannot open it read-write" not user_opens "$C/mnt/dev/decoy" '<>'
    fi
  fi
  end_case
}

opts_case() {
  begin opts "$1"
  img_and_mnt
  start_proxy opts-extra || return
  run_helper 20 "$C/img" "$C/mnt"
  show_replies
  check "OPTS sync,dirsync,lazytime refused with EPERM (reply: $(rerr rewrite:OPTS))" [ "$(rerr rewrite:OPTS)" = EPERM ]
  check "mounted without any OPTS from the server" mounted "$C/mnt"
  if mounted "$C/mnt"; then
    local s; s=$(super_opts "$C/mnt")
    note "super options: $s"
    local o
    for o in sync dirsync lazytime; do check "no $o in the super options" not has_opt "$s" $o; done
    check "the helper's own allow_other is there" has_opt "$s" allow_other
    check "the helper's own default_permissions is there" has_opt "$s" default_permissions
    local r; r=$(as_user cat "$C/mnt/hello.txt" 2>&1)
    check "uid $U can read a file on the mount, allow_other is in force ($r)" [ "$r" = "hostile hello" ]
  fi
  end_case
}

# ================================================================ finding 2: fuseblk + NAME

fuseblk_case() {
  begin fuseblk "$1"
  img_and_mnt
  start_proxy fuseblk --rewrite "NAME=$DECOY" || return
  run_helper 20 "$C/img" "$C/mnt"
  show_replies
  note "replies: TYPE fuseblk $(rerr rewrite:TYPE), NAME $DECOY $(rerr rewrite:NAME)"
  local ex; ex=$(P excl "$DECOY" 2>&1)
  check "the kernel does not hold $DECOY: O_EXCL open works ($ex)" [ "$ex" = free ]
  local h; h=$(ls "/sys/block/${DECOY#/dev/}/holders" 2>/dev/null)
  check "$DECOY has no holders${h:+ ($h)}" [ -z "$h" ]
  check "no mount names $DECOY or its device number" not decoy_in_mountinfo
  if mounted "$C/mnt"; then
    note "mountinfo: $(mnt_fstype "$C/mnt") $(mnt_source "$C/mnt")"
    local want; want=$(kernel_source "$C/img")
    check "mount source is the helper's loop device over the configured $C/img, $want (got $(mnt_source "$C/mnt"))" \
      [ "$(mnt_source "$C/mnt")" = "$want" ]
    check "the helper's loop device is not $DECOY" [ "$want" != "$DECOY" ]
  fi
  end_case
}

# ================================================================ finding 12: NAME, MTAB, utab

name_case() {
  begin name "$1"
  img_and_mnt
  start_proxy mtab-name || return
  run_helper 20 "$C/img" "$C/mnt"
  show_replies
  note "reply to NAME hostile-name: $(rerr rewrite:NAME) (the helper may refuse it or ignore it; what counts is below)"
  check "MTAB with user=/uhelper= refused with EINVAL (reply: $(rerr rewrite:MTAB))" [ "$(rerr rewrite:MTAB)" = EINVAL ]
  check "mounted" mounted "$C/mnt"
  if mounted "$C/mnt"; then
    check "mountinfo source is the helper's loop device over the configured $C/img (got $(mnt_source "$C/mnt"))" \
      [ "$(mnt_source "$C/mnt")" = "$(kernel_source "$C/img")" ]
  fi
  local u; u=$(grep -s " TARGET=$C/mnt " /run/mount/utab; grep -s "TARGET=$C/mnt\$" /run/mount/utab)
  note "utab: ${u:-(no entry)}"
  check "utab has no server-chosen options (user=, uhelper=)" not grep -qE "(user|uhelper)=" <<<"$u"
  check "utab names no source but the mount's own" utab_source_ok "$u" "$(kernel_source "$C/img")"
  end_case
}

# ================================================================ finding 3: what the source is

kind_case() {  # MODE fifo|zero|dir
  begin "kind-$2" "$1"
  mkdir -p "$C/mnt"
  local src writer=
  case $2 in
    fifo) src=$C/src.fifo; mkfifo -m 0666 "$src"
          # A writer waiting on the FIFO: it gets through only if someone opens the FIFO for reading.
          HOSTILE_TAG=$C "$PY" -I "$PROXY" fifo-writer "$src" "$C/fifo.seen" >/dev/null 2>&1 & writer=$! ;;
    zero) src=/dev/zero ;;
    dir)  src=$C/srcdir; mkdir -p "$src" ;;
  esac
  start_proxy forward || return
  run_helper 15 "$src" "$C/mnt" -o ro
  show_replies
  check "helper exits 32 (got $RC)" [ "$RC" = 32 ]
  check "helper exits quickly, without blocking (${MS} ms < 5000)" [ "$MS" -lt 5000 ]
  check "the server is never contacted" not connected
  if [ -n "$writer" ]; then
    check "the FIFO was never opened for reading (a waiting writer saw no reader)" [ ! -e "$C/fifo.seen" ]
    kill -KILL "$writer" 2>/dev/null; wait "$writer" 2>/dev/null
  fi
  check "nothing mounted" not mounted "$C/mnt"
  end_case
}

once_case() {
  begin once "$1"
  img_and_mnt
  start_proxy replay-open || return
  run_helper 20 "$C/img" "$C/mnt"
  show_replies
  check "second BDEV of the source refused with EPERM (reply: $(rerr replay:BDEV))" [ "$(rerr replay:BDEV)" = EPERM ]
  check "extra OPEN of the source refused with EPERM (reply: $(rerr inject:OPEN))" [ "$(rerr inject:OPEN)" = EPERM ]
  check "at most one fd for the source reached the server, and it is the image" fd_check --allow "$C/img" --max 1
  end_case
}

swapsrc_case() {
  begin swapsrc "$1"
  mkdir -p "$C/user" "$C/mnt"
  cp --sparse=always "$work/base.img" "$C/user/img"
  chown -R $U:$U "$C/user"
  local before; before=$(secret_opens)
  start_proxy swap-source || return
  bg_helper 25 "$C/user/img" "$C/mnt"
  if wait_for 10 "$C/status" '^ready START'; then
    # The image's owner swaps the path for a symlink to a root-only file.
    user_swap "$C/user" img "$work/secret" "the source"
    go
  else
    fail "the proxy never got to the swap point"
  fi
  wait_helper
  show_replies
  check "every fd the server got is the original image (or none)" fd_check --allow "$C/user/img.orig"
  check "the root-only file was never opened (inotify: $(( $(secret_opens) - before )) opens)" [ "$(secret_opens)" = "$before" ]
  end_case
}

# ================================================================ finding 4: the mountpoint

swapmnt_case() {  # MODE MNTP|DOIT
  begin "swapmnt-$(tr A-Z a-z <<<"$2")" "$1"
  mkdir -p "$C/user/mnt" "$C/rootdir"
  cp --sparse=always "$work/base.img" "$C/img"
  echo "root's directory" > "$C/rootdir/marker"
  chown -R $U:$U "$C/user"
  start_proxy "$( [ "$2" = MNTP ] && echo swap-mnt || echo swap-mnt-doit)" || return
  bg_helper 25 "$C/img" "$C/user/mnt"
  if wait_for 10 "$C/status" "^ready $2"; then
    user_swap "$C/user" mnt "$C/rootdir" "the mountpoint"
    go
  else
    fail "the proxy never got to $2"
  fi
  wait_helper
  show_replies
  check "nothing mounted on the root-owned directory" not mounted "$C/rootdir"
  check "no fuse.hostile mount anywhere ($(hostile_mounts | tr '\n' ' '))" [ -z "$(hostile_mounts)" ]
  check "the root-owned directory still shows its own files" [ -e "$C/rootdir/marker" ]
  check "helper fails (exit $RC)" [ "$RC" != 0 ]
  end_case
}

# ================================================================ finding 5: undo after the path moved

undo_case() {
  begin undo "$1"
  mkdir -p "$C/user/p/mnt" "$C/t/mnt"
  cp --sparse=always "$work/base.img" "$C/img"
  chown -R $U:$U "$C/user"
  mount -t tmpfs -o size=1m hostile-undo "$C/t/mnt" || { fail "tmpfs"; end_case; return; }
  echo "other mount" > "$C/t/mnt/marker"
  start_proxy undo || return
  bg_helper 25 "$C/img" "$C/user/p/mnt"
  if wait_for 10 "$C/status" '^ready undo'; then
    check "the FUSE mount was made (precondition)" mounted "$C/user/p/mnt"
    # The mountpoint itself cannot be renamed while mounted; its parent can.
    user_swap "$C/user" p "$C/t" "the mountpoint's parent"
    go
  else
    fail "the proxy never got a successful DOIT"
  fi
  wait_helper
  show_replies
  local n=0
  while [ -n "$(hostile_mounts)" ] && [ $n -lt 60 ]; do sleep 0.05; n=$((n + 1)); done
  check "the helper's FUSE mount is gone ($(hostile_mounts | tr '\n' ' '))" [ -z "$(hostile_mounts)" ]
  check "the other mount (tmpfs at $C/t/mnt) is still mounted" mounted "$C/t/mnt"
  check "and still shows its file" [ -e "$C/t/mnt/marker" ]
  check "helper fails (exit $RC)" [ "$RC" != 0 ]
  umount "$C/t/mnt" 2>/dev/null
  end_case
}

# ================================================================ finding 8: a busy block device

busy_case() {
  begin busy "$1"
  mkdir -p "$C/mnt" "$C/kmnt"
  mkfs.ext4 -q -F "$C/k.img" 16M
  local L; L=$(losetup -f --show "$C/k.img") || { fail "losetup"; end_case; return; }
  LOOPS+=("$L")
  mount -t ext4 "$L" "$C/kmnt" || { fail "kernel mount of $L"; end_case; return; }
  echo before > "$C/kmnt/before"
  start_proxy grab-device || return
  run_helper 20 "$L" "$C/mnt"
  show_replies
  check "helper exits 32 (got $RC)" [ "$RC" = 32 ]
  check "helper says the device is busy" eval 'sed "s#$work[^ ]*##g" "$C/helper.err" | grep -qi busy'
  check "no server got an fd for $L" fd_check --max 0
  local ko; ko=$(findmnt -no OPTIONS "$C/kmnt")
  check "the kernel's mount of $L is still there, read-write (${ko:-not mounted})" has_opt "$ko" rw
  check "and still writable" sh -c "echo after > '$C/kmnt/after'"
  umount "$C/kmnt"
  check "e2fsck -fn clean after umount" quiet e2fsck -fn "$L"
  losetup -d "$L"
  end_case
}

# ================================================================ finding 10: bounds

dup_slow_case() {
  begin bound-dup-slow "$1"
  img_and_mnt
  start_proxy dup-slow || return
  run_helper 15 "$C/img" "$C/mnt" --session-timeout 4 --timeout 30
  local n; n=$(rget replies_count)
  note "the proxy got ${n:-no} replies to duplicate TYPEs"
  if [ "${n:-0}" -ge 10 ]; then
    check "helper gives up by its session deadline (${MS} ms < 8000, exit $RC)" gave_up 8000
  else
    fail "the helper never got into the conversation (${n:-0} replies, exit $RC)"
  fi
  end_case
}

dup_fast_case() {
  begin bound-dup-fast "$1"
  img_and_mnt
  start_proxy dup-fast || return
  run_helper 15 "$C/img" "$C/mnt"
  local n; n=$(rget replies_count)
  note "the proxy got ${n:-no} replies to duplicate TYPEs"
  if [ "${n:-0}" -ge 50 ]; then
    check "at most 256 messages answered (${n:-0})" [ "${n:-0}" -le 256 ]
    check "helper gives up quickly (${MS} ms < 8000, exit $RC)" gave_up 8000
  else
    fail "the helper never got into the conversation (${n:-0} replies, exit $RC)"
  fi
  end_case
}

flood_case() {
  begin bound-flood "$1"
  img_and_mnt
  start_proxy flood || return
  run_helper 15 "$C/img" "$C/mnt" --timeout 3
  local n r; n=$(rget flood_sent) r=$(rget flood_replies)
  note "the proxy sent ${n:-no} requests without reading a reply; ${r:-?} replies were queued for it"
  if [ "${n:-0}" -gt 0 ]; then
    check "helper ends by its per-message timeout, not stuck in sendmsg (${MS} ms < 8000, exit $RC)" gave_up 8000
    # It must be the send timeout that ended it: blocked for about --timeout,
    # with far fewer replies than the 256-message cap.
    if [ "$MODE" = socket ]; then
      check "it was blocked in sendmsg until its timeout (${MS} ms >= 2500, ${r:-?} replies < 256)" \
        eval '[ "$MS" -ge 2500 ] && [ "${r:-999}" -lt 256 ]'
    fi
  else
    fail "the helper never got into the conversation (exit $RC)"
  fi
  end_case
}

linger_case() {
  begin bound-linger "$1"
  img_and_mnt
  start_proxy byee-linger || return
  run_helper 15 "$C/img" "$C/mnt"
  check "the server got to say BYEE 1" grep -q '^lingering' "$C/status"
  check "helper exits within ~6 s of BYEE 1 (${MS} ms < 8000, exit $RC)" gave_up 8000
  local n=0
  while [ -n "$(tagged_pids "$C")" ] && [ $n -lt 40 ]; do sleep 0.05; n=$((n + 1)); done
  check "the lingering server process is gone ($(tagged_pids "$C" | tr '\n' ' '))" [ -z "$(tagged_pids "$C")" ]
  end_case
}

# ================================================================ finding 11: -o values

optfile_case() {
  begin optfile "$1"
  img_and_mnt
  printf 'journal\n' > "$C/jfile"; chmod 600 "$C/jfile"
  local before; before=$(secret_opens)
  start_proxy inject-open --inject "START=OPEN:$work/secret" --inject "START=OPEN:$C/jfile" || return
  run_helper 20 "$C/img" "$C/mnt" -o "foo=$work/secret,journal_path=$C/jfile"
  show_replies
  local e; e=$(P reply-error "$C/result.json" inject:OPEN --path "$work/secret")
  check "OPEN of the foo= value refused with EPERM (reply: $e)" [ "$e" = EPERM ]
  check "no fd for anything but the journal_path file" fd_check --allow "$C/jfile"
  check "the foo= file was never opened (inotify: $(( $(secret_opens) - before )) opens)" [ "$(secret_opens)" = "$before" ]
  # Control: the injection works, the journal_path file is handed out.
  check "control: OPEN of the journal_path file is answered (reply: $(P reply-error "$C/result.json" inject:OPEN --path "$C/jfile"))" \
    [ "$(P reply-error "$C/result.json" inject:OPEN --path "$C/jfile")" = 0 ]
  end_case

  begin optfile-relative "$1"
  img_and_mnt
  printf 'rel\n' > "$C/rel"
  start_proxy inject-open --inject "START=OPEN:rel" || return
  cd "$C" && run_helper 20 "$C/img" "$C/mnt" -o journal_path=rel
  cd "$work" || exit 1
  show_replies
  check "relative -o journal_path=rel refused at start-up (exit $RC)" [ "$RC" != 0 ]
  check "the server is never contacted" not connected
  check "no fd handed out" fd_check --max 0
  end_case
}

# ================================ extra: server strings in the helper's own messages

echo_case() {
  begin echo "$1"
  img_and_mnt
  # A path the helper will refuse and may quote: terminal escapes, a bell, a
  # carriage return and a newline followed by a forged helper line.
  local evil; evil=$(printf '/x\033]0;hostile-title\007\033[2J\r\nfuservicemount: FORGED mounted fine')
  start_proxy inject-open --inject "START=OPEN:$evil" || return
  run_helper 20 "$C/img" "$C/mnt"
  show_replies
  check "the helper's stderr carries no control characters from the server" \
    not env LC_ALL=C grep -q "$(printf '[\001-\010\013-\037\177]')" "$C/helper.err"
  check "the server cannot forge a line of the helper's output" not grep -q '^fuservicemount: FORGED' "$C/helper.err"
  end_case
}

# ================================================================ finding 14: who owns the socket

trust_case() {  # what
  begin "trust-$1" socket
  img_and_mnt
  local sock_args=()
  case $1 in
    dir-owner) chown $U:$U /run/filesystems ;;
    dir-0777) chmod 0777 /run/filesystems ;;
    dir-0775) chmod 0775 /run/filesystems ;;
    sock-owner) sock_args=(--sock-owner $U) ;;
    sock-0666) sock_args=(--sock-mode 666) ;;
  esac
  start_proxy forward "${sock_args[@]}" || { chown 0:0 /run/filesystems; chmod 0755 /run/filesystems; return; }
  note "$(ls -ld /run/filesystems | awk '{print $1, $3}') /run/filesystems; $(ls -l /run/filesystems/hostile | awk '{print $1, $3}') socket"
  run_helper 15 "$C/img" "$C/mnt"
  check "helper refuses (exit $RC)" [ "$RC" != 0 ]
  check "the proxy never saw a connection" not connected
  check "nothing mounted (no fallback)" not mounted "$C/mnt"
  end_case
  chown 0:0 /run/filesystems; chmod 0755 /run/filesystems
}

# ================================================================ run

T_START=$(date +%s)
for m in socket spawn; do
  want "flags-$m" && flags_case $m
done
want flags-control-socket && flags_case socket control
for m in socket spawn; do
  want "opts-$m" && opts_case $m
  want "fuseblk-$m" && fuseblk_case $m
  want "name-$m" && name_case $m
  for k in fifo zero dir; do want "kind-$k-$m" && kind_case $m $k; done
  want "once-$m" && once_case $m
  want "swapsrc-$m" && swapsrc_case $m
  want "swapmnt-mntp-$m" && swapmnt_case $m MNTP
  want "swapmnt-doit-$m" && swapmnt_case $m DOIT
  want "undo-$m" && undo_case $m
  want "busy-$m" && busy_case $m
  want "optfile-$m" && optfile_case $m
  want "echo-$m" && echo_case $m
  want "bound-dup-slow-$m" && dup_slow_case $m
  want "bound-flood-$m" && flood_case $m
done
want bound-dup-fast-socket && dup_fast_case socket
want bound-linger-spawn && linger_case spawn
for t in dir-owner dir-0777 dir-0775 sock-owner sock-0666; do
  want "trust-$t-socket" && trust_case $t
done

kill -TERM "$WATCH_PID" 2>/dev/null; wait "$WATCH_PID" 2>/dev/null
for _ in $(seq 20); do [ -z "$(tagged_pids)" ] && break; sleep 0.05; done
CASE=final
left=$(awk -v w="$work" 'index($5, w "/") == 1 { print $5 }' /proc/self/mountinfo)
check "nothing of ours left mounted${left:+ ($left)}" [ -z "$left" ]
left=$(tagged_pids)
check "no process of ours left running${left:+ ($left)}" [ -z "$left" ]

echo
echo "$passes passed, $fails failed in $(( $(date +%s) - T_START )) s"
if [ $fails -ne 0 ]; then
  printf '  %s\n' "${FAILED[@]}"
  exit 1
fi
echo "all hostile-server checks passed"
