#!/usr/bin/env bash
# Full-disk test through our server mounted read-write: several parallel writers,
# then many small files, then the writers again and empty files, each until ENOSPC.
# ENOSPC (never EIO or anything else) must be what fails; statfs must stay sane;
# after unmount `e2fsck -fn` must be clean and the kernel must read back every byte
# that was written. Then remount, verify, delete everything, check the space came
# back, write again, unmount, fsck clean again.
#
# FULL_TARGET=ext4iomap (default), ext4iomapd, kernel or fuse2fs (the last two
# exercise the test itself). Skips (77) while the server refuses read-write mounts.
# Exit: 0 pass, 77 skip (last line says why), anything else fails.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
export EXT4IOMAP_BUILD="${EXT4IOMAP_BUILD:-$repo/.build/debug}"
TOOLS="$repo/tests/tools"
KIND=${FULL_TARGET:-ext4iomap}

skip() { echo "$1"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "fullness: needs root (loop and FUSE mounts)"
for c in python3 mkfs.ext4 e2fsck mount losetup; do
  command -v "$c" >/dev/null || skip "fullness: $c not installed"
done

WORK=$(mktemp -d /tmp/fullness.XXXXXX)
IMG="$WORK/full.img"
MNT="$WORK/mnt"
KMNT="$WORK/kernel"
STATE="$WORK/state.json"
mkdir -p "$MNT" "$KMNT"
cleanup() {
  python3 "$TOOLS/fstarget.py" cleanup --image "$IMG" "$MNT" "$KMNT" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() { echo "fullness: FAIL: $*"; exit 1; }
W() { python3 "$TOOLS/fullness_work.py" "$@"; }
mnt() {  # mount the image as KIND; 77 while read-write is refused
  python3 "$TOOLS/fstarget.py" mount "$KIND" "$IMG" "$MNT" --log "$WORK/server.log" > "$WORK/mount.out" 2>&1
  local rc=$?
  if [ $rc -eq 77 ]; then
    cat "$WORK/mount.out"
    skip "$(tail -1 "$WORK/mount.out")"
  fi
  [ $rc -eq 0 ] || { cat "$WORK/mount.out"; fail "mounting $KIND read-write failed"; }
}
umnt() {
  python3 "$TOOLS/fstarget.py" umount "$MNT" --image "$IMG" || fail "unmount of $KIND was not clean"
}
fsck_clean() {
  e2fsck -fn "$IMG" > "$WORK/fsck.out" 2>&1
  local rc=$?
  if [ $rc -ne 0 ]; then
    sed 's/^/    /' "$WORK/fsck.out" | head -60
    fail "e2fsck -fn is not clean ($1; exit $rc)"
  fi
  echo "  e2fsck -fn clean ($1)"
}

# 32 MiB, 4 KiB blocks, 5% reserved, few inodes so that empty files run out too.
mkfs.ext4 -q -F -b 4096 -N 4096 "$IMG" 32M || fail "mkfs.ext4"

echo "== mount ($KIND, read-write)"
mnt
W statfs "$MNT" || fail "statfs of the fresh file system"

echo "== 4 writers, 4 MiB each"
W fill "$MNT" "$STATE" --writers 4 --cap $((4 << 20)) || fail "writers"
echo "== small files (4 KiB) until ENOSPC"
W small "$MNT" "$STATE" --size 4096 --max 20000 --expect-full || fail "small files"
echo "== 4 writers again until ENOSPC"
W fill "$MNT" "$STATE" --writers 4 --expect-full || fail "writers on a full file system"
echo "== empty files until ENOSPC"
W empty "$MNT" "$STATE" --max 20000 --expect-full || fail "empty files"
W statfs "$MNT" --full --used-at-least "$STATE" || fail "statfs of the full file system"
W verify "$MNT" "$STATE" || fail "reading back through $KIND"

echo "== unmount, fsck, kernel read-back"
umnt
fsck_clean "after filling"
python3 "$TOOLS/fstarget.py" mount kernel "$IMG" "$KMNT" -o ro,noload || fail "kernel read-only mount"
W verify "$KMNT" "$STATE" || fail "the kernel reads back different data"
python3 "$TOOLS/fstarget.py" umount "$KMNT" --image "$IMG" || fail "kernel unmount"

echo "== remount, verify, delete everything, write again"
mnt
W verify "$MNT" "$STATE" || fail "reading back after remount"
W rmall "$MNT" || fail "deleting"
W statfs "$MNT" --min-free 0.85 || fail "space not given back after deleting everything"
W refill "$MNT" --fraction 0.6 || fail "writing after deleting"
umnt
fsck_clean "after deleting and writing again"
echo "fullness: ENOSPC handled, statfs sane, fsck clean, data intact ($KIND)"
