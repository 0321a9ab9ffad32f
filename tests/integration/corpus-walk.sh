#!/usr/bin/env bash
# Bad input: every image of the e2fsprogs test corpus (../shared/corpus/
# e2fsprogs-tests/*/image{,.gz,.bz2}) goes through the product path
# (fuservicemount IMG DIR -t fuse.ext4 -o ro; -o ro,norecovery when the first
# refusal says the journal needs recovery). Each image is either
#   refused: fuservicemount fails with a clear message (recorded), leaving no
#            server, mount or loop device behind; or
#   served:  a full walk (tests/tools/corpuswalk.py: readdir, lstat, statx,
#            readlink, listxattr/getxattr, a read of every file, SEEK_DATA/HOLE)
#            finishes within WALK_TIMEOUT seconds; errors on single objects are
#            counted, not failures. Afterwards the mount still answers, the
#            server is still alive, its peak RSS (VmHWM) is below MAX_HWM_MB,
#            and after umount it exits and the loop device is gone.
# A crash, a hang, a leak or an unclear refusal fails the test.
# Skips (77) when the corpus is absent.
#
# Usage: tests/integration/corpus-walk.sh [NAME-GLOB]   (default: all)
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${EXT4IOMAP_BUILD:-$repo/.build/debug}
TOOLS=$repo/tests/tools
HELPER=$BUILD/fuservicemount
CORPUS=$repo/../shared/corpus/e2fsprogs-tests
WALK_TIMEOUT=${WALK_TIMEOUT:-120}  # f_many_subdirs (130,000 objects) takes 50-70s on a debug build
MAX_HWM_MB=${MAX_HWM_MB:-512}
MAX_IMAGE_MB=${MAX_IMAGE_MB:-2048}
PATTERN=${1:-*}

skip() { echo "corpus-walk: skipped: $*"; exit 77; }
[ -d "$CORPUS" ] || skip "no corpus at $CORPUS"
[ "$(id -u)" -eq 0 ] || skip "needs root (FUSE mounts, loop devices)"
[ -c /dev/fuse ] || skip "no /dev/fuse"
for t in python3 losetup findmnt gzip bzip2 timeout; do
  command -v "$t" >/dev/null || skip "$t is not installed"
done
[ -x "$HELPER" ] && [ -x "$BUILD/ext4iomapd" ] || { echo "corpus-walk: FAIL: $HELPER or ext4iomapd not built"; exit 1; }

WORK=$(mktemp -d /tmp/corpus-walk.XXXXXX)
MNT=$WORK/mnt
IMG=$WORK/image
mkdir -p "$MNT"
cleanup() {
  if findmnt -rn "$MNT" >/dev/null 2>&1; then
    abort_fuse
    umount "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true
  fi
  local p
  for p in $(server_pids); do kill -9 "$p" 2>/dev/null; done
  detach_loops
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

detach_loops() {
  [ -e "$IMG" ] || return 0
  losetup -j "$IMG" 2>/dev/null | cut -d: -f1 | while read -r l; do losetup -d "$l" 2>/dev/null; done
}

# ext4iomapd processes that hold our image (directly or through its loop device).
server_pids() {
  local loops p fd l x
  loops=$(losetup -j "$IMG" 2>/dev/null | cut -d: -f1)
  for p in /proc/[0-9]*; do
    [ "$(cat "$p/comm" 2>/dev/null)" = ext4iomapd ] || continue
    for fd in "$p"/fd/*; do
      l=$(readlink "$fd" 2>/dev/null) || continue
      for x in $loops "$IMG"; do
        [ "$l" = "$x" ] && { echo "${p#/proc/}"; continue 3; }
      done
    done
  done
}

# Abort the FUSE connection of $MNT (a hung server): every waiting request fails.
# The connection is named by the superblock's device number in the kernel's
# encoding, major << 20 | minor: 0:N (N) for fuse, the block device for fuseblk.
abort_fuse() {
  local mm conn
  mm=$(findmnt -rn -o MAJ:MIN "$MNT" 2>/dev/null | head -1)
  [ -n "$mm" ] || return 0
  conn=$(( (${mm%%:*} << 20) | ${mm#*:} ))
  [ -d /sys/fs/fuse/connections ] || return 0
  [ -e /sys/fs/fuse/connections/"$conn"/abort ] ||
    mount -t fusectl fusectl /sys/fs/fuse/connections 2>/dev/null || true
  [ -e /sys/fs/fuse/connections/"$conn"/abort ] && echo 1 > /sys/fs/fuse/connections/"$conn"/abort
}

# Alive = exists and is not a zombie. The server runs in its own PID namespace and
# is reparented when fuservicemount exits; its new parent may reap it late, and
# kill -0 succeeds on a zombie.
alive() {
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}

CRASH_RE='Fatal error|Segmentation fault|Illegal instruction|Current stack trace|core dumped|Trace/breakpoint trap'

served=0 refused=0 bad=0 total=0
declare -a BAD=()
START=$(date +%s)
printf '%-36s %-8s %7s %7s %6s %5s  %s\n' IMAGE RESULT OBJECTS ERRORS HWM_MB SECS NOTE

for dir in "$CORPUS"/$PATTERN/; do
  name=$(basename "$dir")
  src=""
  for f in image.gz image.bz2 image; do [ -e "$dir/$f" ] && { src=$dir/$f; break; }; done
  [ -n "$src" ] || continue
  total=$((total + 1))
  t0=$(date +%s.%N)
  rm -f "$IMG"
  case $src in
    *.gz)  gzip -dc "$src" | head -c $((MAX_IMAGE_MB << 20)) > "$IMG" ;;
    *.bz2) bzip2 -dc "$src" | head -c $((MAX_IMAGE_MB << 20)) > "$IMG" ;;
    *)     cp --sparse=always "$src" "$IMG" ;;
  esac
  result="" note="" objects="-" errors="-" hwm="-" opts=ro
  : > "$WORK/mount.log"
  for attempt in 1 2; do
    timeout 30 "$HELPER" "$IMG" "$MNT" -t fuse.ext4 -o "$opts" 2> "$WORK/mount.log"
    mrc=$?
    if [ $mrc -eq 0 ]; then break; fi
    if [ $attempt -eq 1 ] && grep -qi 'recover' "$WORK/mount.log"; then opts=ro,norecovery; continue; fi
    break
  done
  # The server's own reason (ext4iomapd: ...), else the helper's last line.
  msg=$(grep -m1 '^ext4iomapd: ' "$WORK/mount.log")
  [ -n "$msg" ] || msg=$(grep -v '^[[:space:]]*$' "$WORK/mount.log" | tail -1)
  if [ $mrc -eq 124 ]; then
    result=HANG; note="mount did not return within 30s"
  elif [ $mrc -ne 0 ]; then
    if grep -Eq "$CRASH_RE" "$WORK/mount.log"; then
      result=CRASH; note="refusal looks like a crash: $msg"
    elif [ -z "$msg" ] || ! grep -q '^ext4iomapd: ' "$WORK/mount.log"; then
      result=UNCLEAR; note="refused (status $mrc) without the server's reason: ${msg:-no message}"
    else
      result=refused; note="$msg"
    fi
    if findmnt -rn "$MNT" >/dev/null; then result=LEFTOVER; note="refused but mounted: $msg"; fi
    if [ -n "$(server_pids)" ]; then result=LEFTOVER; note="refused but a server is still running: $msg"; fi
    if [ -n "$(losetup -j "$IMG" 2>/dev/null)" ]; then result=LEFTOVER; note="refused but the loop device is attached: $msg"; fi
  else
    pid=$(server_pids | head -1)
    [ "$opts" = ro ] || note="norecovery; "
    if [ -z "$pid" ]; then
      result=NOPID; note+="mounted, but no ext4iomapd holds the image"
    fi
    timeout -s KILL "$WALK_TIMEOUT" python3 "$TOOLS/corpuswalk.py" "$MNT" > "$WORK/walk.json" 2> "$WORK/walk.err"
    wrc=$?
    if [ $wrc -eq 137 ] || [ $wrc -eq 124 ]; then
      result=HANG; note+="walk did not finish within ${WALK_TIMEOUT}s"
      abort_fuse
    elif [ $wrc -eq 2 ]; then
      result=CRASH; note+="mount stopped answering: $(python3 -c 'import json,sys; print(json.load(sys.stdin)["fatal"])' < "$WORK/walk.json" 2>/dev/null)"
    elif [ $wrc -ne 0 ]; then
      result=WALKERR; note+="walker failed: $(tail -1 "$WORK/walk.err")"
    else
      read -r objects errors errsum < <(python3 -c '
import json, sys
c = json.load(sys.stdin)
e = c["errors"]
top = ",".join(f"{k}={v}" for k, v in sorted(e.items(), key=lambda t: -t[1])[:3])
print(c["objects"], sum(e.values()), top or "-")' < "$WORK/walk.json")
      [ "$errsum" = "-" ] || note+="$errsum"
    fi
    if [ -z "$result" ] || [ "$result" = NOPID ]; then
      # Alive: statfs answers, and stat of the root answers (an error such as
      # EUCLEAN for a corrupt root inode is an answer; ENOTCONN is not).
      if ! timeout 5 python3 -c '
import errno, os, sys
os.statvfs(sys.argv[1])
try:
    os.stat(sys.argv[1])
except OSError as e:
    if e.errno in (errno.ENOTCONN, errno.ECONNABORTED, errno.ENODEV):
        raise' "$MNT" 2> "$WORK/alive.err"; then
        result=CRASH; note+=" (the mount no longer answers after the walk: $(tail -1 "$WORK/alive.err"))"
      elif [ -n "$pid" ] && ! alive "$pid"; then
        result=CRASH; note+=" (server gone after the walk)"
      fi
    fi
    if [ -n "$pid" ] && [ -r "/proc/$pid/status" ]; then
      kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")
      hwm=$(( ${kb:-0} / 1024 ))
      if [ "$hwm" -gt "$MAX_HWM_MB" ] && [ -z "$result" ]; then
        result=MEMORY; note+=" (VmHWM ${hwm} MB > ${MAX_HWM_MB} MB)"
      fi
    fi
    if ! timeout 10 umount "$MNT" 2>/dev/null; then
      abort_fuse
      umount -l "$MNT" 2>/dev/null
      [ -z "$result" ] && { result=HANG; note+=" (umount hung or failed)"; }
    fi
    if [ -n "$pid" ]; then
      for ((i = 0; i < 100; i++)); do alive "$pid" || break; sleep 0.1; done
      if alive "$pid"; then
        # For the record: what each of its threads is waiting on.
        threads=$(for t in /proc/"$pid"/task/*; do
          printf '%s:%s:%s ' "$(cat "$t/comm" 2>/dev/null)" "$(awk '{print $3}' "$t/stat" 2>/dev/null)" "$(cat "$t/wchan" 2>/dev/null)"
        done)
        echo "  $name: server $pid still running 10s after umount; threads (comm:state:wchan): $threads"
        [ -z "$result" ] && { result=LEFTOVER; note+=" (server still running 10s after umount)"; }
        kill -9 "$pid" 2>/dev/null
      fi
    fi
    for ((i = 0; i < 20; i++)); do [ -z "$(losetup -j "$IMG" 2>/dev/null)" ] && break; sleep 0.1; done
    if [ -n "$(losetup -j "$IMG" 2>/dev/null)" ]; then
      [ -z "$result" ] && { result=LEFTOVER; note+=" (loop device still attached after umount)"; }
      detach_loops
    fi
    if grep -Eq "$CRASH_RE" "$WORK/mount.log" && [ -z "$result" ]; then
      result=CRASH; note+=" (server log: $(grep -Em1 "$CRASH_RE" "$WORK/mount.log"))"
    fi
    [ -z "$result" ] && result=served
  fi
  secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  printf '%-36s %-8s %7s %7s %6s %5s  %s\n' "$name" "$result" "$objects" "$errors" "$hwm" "$secs" "${note:0:160}"
  case $result in
    served) served=$((served + 1)) ;;
    refused) refused=$((refused + 1)) ;;
    *) bad=$((bad + 1)); BAD+=("$name: $result: $note")
       # Whatever is left of this image must not disturb the next one.
       for p in $(server_pids); do kill -9 "$p" 2>/dev/null; done
       findmnt -rn "$MNT" >/dev/null && { abort_fuse; umount -l "$MNT" 2>/dev/null; }
       detach_loops ;;
  esac
  rm -f "$IMG"
done

echo
echo "corpus-walk: $total images in $(( $(date +%s) - START ))s: $served served, $refused refused, $bad bad"
if [ $bad -ne 0 ]; then
  printf '  %s\n' "${BAD[@]}"
  echo "corpus-walk: FAIL ($bad images crashed, hung, leaked or were refused without a clear message)"
  exit 1
fi
[ $total -gt 0 ] || skip "the corpus at $CORPUS has no images"
echo "corpus-walk: PASS"
exit 0
