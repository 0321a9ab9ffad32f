#!/usr/bin/env bash
# Crash safety without a journal: run a workload on our server mounted read-write
# that fsyncs some files (recording which, and their SHA-256, outside the mount),
# SIGKILL the server in the middle, lazy-unmount, then `e2fsck -fy` the image
# (its findings are printed as they are), `e2fsck -fn` must then be clean, and the
# kernel, mounting the image read-only, must show every fsynced file with its
# recorded content. Done on an ext4 image with a journal and on one without.
#
# CRASH_TARGET=ext4iomap (default), ext4iomapd or fuse2fs (the last one exercises
# the test itself). Skips (77) while the server refuses read-write mounts.
# Exit: 0 pass, 77 skip (last line says why), anything else fails.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
export EXT4IOMAP_BUILD="${EXT4IOMAP_BUILD:-$repo/.build/debug}"
TOOLS="$repo/tests/tools"
KIND=${CRASH_TARGET:-ext4iomap}
RUNS=${CRASH_RUNS:-1}

skip() { echo "$1"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "crash: needs root (loop and FUSE mounts)"
for c in python3 mkfs.ext4 e2fsck mount losetup; do
  command -v "$c" >/dev/null || skip "crash: $c not installed"
done
case $KIND in ext4iomap|ext4iomapd|fuse2fs) ;; *) echo "crash: CRASH_TARGET must be a FUSE server"; exit 2 ;; esac

WORK=$(mktemp -d /tmp/crash.XXXXXX)
IMG="$WORK/crash.img"
MNT="$WORK/mnt"
KMNT="$WORK/kernel"
WPID=
mkdir -p "$MNT" "$KMNT"
cleanup() {
  [ -n "$WPID" ] && kill -9 "$WPID" 2>/dev/null
  python3 "$TOOLS/fstarget.py" cleanup --image "$IMG" "$MNT" "$KMNT" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() { echo "crash: FAIL: $*"; exit 1; }
synced() { awk '!/pending/ { n++ } END { print n + 0 }' "$WORK/manifest" 2>/dev/null || echo 0; }
declare -a REPORT=()

one_run() {  # one_run LABEL MKFS_ARGS SEED
  local label=$1 mkfsargs=$2 seed=$3
  echo "== $label (seed $seed)"
  rm -f "$IMG" "$WORK/manifest"
  # shellcheck disable=SC2086
  mkfs.ext4 -q -F $mkfsargs "$IMG" 128M > /dev/null || fail "mkfs.ext4 $mkfsargs"
  python3 "$TOOLS/fstarget.py" mount "$KIND" "$IMG" "$MNT" --log "$WORK/server.log" > "$WORK/mount.out" 2>&1
  local rc=$?
  if [ $rc -eq 77 ]; then cat "$WORK/mount.out"; skip "$(tail -1 "$WORK/mount.out")"; fi
  [ $rc -eq 0 ] || { cat "$WORK/mount.out"; fail "mounting $KIND read-write"; }

  local pids
  pids=$(python3 "$TOOLS/fstarget.py" pids "$IMG")
  [ -n "$pids" ] || fail "cannot find the server process serving $IMG"

  python3 "$TOOLS/crash_work.py" run "$MNT" "$WORK/manifest" --seed "$seed" --max-secs 60 > "$WORK/work.log" 2>&1 &
  WPID=$!
  # Kill once enough files are durable, at a moment that varies with the seed.
  local want=$((15 + seed % 10)) t0=$SECONDS
  while [ "$(synced)" -lt "$want" ]; do
    kill -0 "$WPID" 2>/dev/null || break
    [ $((SECONDS - t0)) -lt 40 ] || break
    sleep 0.1
  done
  sleep "0.$((seed * 37 % 10))"
  echo "  SIGKILL server pid(s) $pids after $((SECONDS - t0))s, $(synced) files fsynced"
  kill -9 $pids 2>/dev/null || fail "the server was already gone before the kill"

  local waited=0
  while kill -0 "$WPID" 2>/dev/null && [ $waited -lt 300 ]; do sleep 0.1; waited=$((waited + 1)); done
  if kill -0 "$WPID" 2>/dev/null; then
    kill -9 "$WPID" 2>/dev/null
    echo "  the workload did not notice the dead server within 30s (killed)"
  fi
  wait "$WPID" 2>/dev/null
  WPID=
  sed 's/^/  /' "$WORK/work.log"

  python3 "$TOOLS/fstarget.py" umount "$MNT" --image "$IMG" --timeout 30 \
    || echo "  (unmount needed force; continuing with the image)"

  echo "  -- e2fsck -fy (what the crash left behind):"
  e2fsck -fy "$IMG" > "$WORK/fsck.out" 2>&1
  local frc=$?
  sed 's/^/     | /' "$WORK/fsck.out"
  echo "  e2fsck -fy exit $frc"
  [ $frc -lt 4 ] || fail "$label: e2fsck -fy could not repair the file system (exit $frc)"
  e2fsck -fn "$IMG" > "$WORK/fsck2.out" 2>&1 || { sed 's/^/     | /' "$WORK/fsck2.out"; fail "$label: not clean after e2fsck -fy"; }

  python3 "$TOOLS/fstarget.py" mount kernel "$IMG" "$KMNT" -o ro || fail "kernel read-only mount after repair"
  python3 "$TOOLS/crash_work.py" verify "$KMNT" "$WORK/manifest" > "$WORK/verify.out" 2>&1
  rc=$?
  cat "$WORK/verify.out"
  python3 "$TOOLS/fstarget.py" umount "$KMNT" --image "$IMG" || fail "kernel unmount"
  local fixed="nothing to fix"
  [ $frc -ne 0 ] && fixed="exit $frc, $(grep -cE '\? yes' "$WORK/fsck.out") fixes"
  REPORT+=("$label seed $seed: e2fsck -fy: $fixed; $(head -1 "$WORK/verify.out" | sed 's/^ *//')")
  [ $rc -eq 0 ] || fail "$label: fsynced files were lost or damaged"
}

for r in $(seq 1 "$RUNS"); do
  one_run "ext4 with journal" "-b 4096" "$r"
  one_run "ext4 without journal" "-b 4096 -O ^has_journal" "$((r + 100))"
  one_run "ext2 block maps, 1 KiB" "-t ext2 -b 1024" "$((r + 200))"
done

echo "== summary ($KIND)"
printf '  %s\n' "${REPORT[@]}"
echo "crash: every fsynced file survived SIGKILL of the server ($KIND)"
