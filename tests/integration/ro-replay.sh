#!/usr/bin/env bash
# A read-only mount of a crashed file system replays its journal in memory
# and never writes the device (issue [9]). The kernel's ext4 writes a tree
# (files, directories, a rename, an unlink, xattrs, a symlink), syncs, and
# the image is copied while it is still mounted: the copy's journal holds
# committed transactions and needs_recovery is set. Then, through
# fuservicemount and the sandboxed server, `-o ro`: the mount comes up; a full
# walk (tests/tools/treecompare.py) must equal what the kernel's ext4 shows
# after replaying another copy read-write; after umount the image's SHA-256
# is unchanged, the loop device is gone, and the journal still needs
# recovery. A read-write mount of the same image then replays it for real.
# Exit: 0 pass, 77 skip (last line says why), anything else fails.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
export EXT4IOMAP_BUILD="${EXT4IOMAP_BUILD:-$repo/.build/debug}"
TOOLS="$repo/tests/tools"
skip() { echo "$1"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "ro-replay: needs root (loop and FUSE mounts)"
for c in python3 mkfs.ext4 e2fsck dumpe2fs mount losetup sha256sum setfattr; do
  command -v "$c" >/dev/null || skip "ro-replay: $c not installed"
done
[ -e /dev/fuse ] || skip "ro-replay: /dev/fuse missing"

WORK=$(mktemp -d /tmp/ro-replay.XXXXXX)
SRC="$WORK/src.img" IMG="$WORK/crash.img" KIMG="$WORK/k.img"
KMNT="$WORK/kmnt" MNT="$WORK/mnt"
mkdir -p "$KMNT" "$MNT"
cleanup() {
  python3 "$TOOLS/fstarget.py" cleanup --image "$SRC" --image "$IMG" --image "$KIMG" "$MNT" "$KMNT" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() { echo "ro-replay: FAIL: $*"; exit 1; }

mkfs.ext4 -q -F -b 4096 "$SRC" 64M || fail "mkfs"
mount -o loop -t ext4 "$SRC" "$KMNT" || skip "ro-replay: the kernel's ext4 cannot loop-mount here"
mkdir -p "$KMNT/a/b" "$KMNT/c"
for i in $(seq 1 40); do head -c $((i * 1500)) /dev/urandom > "$KMNT/a/f$i"; done
head -c 3000000 /dev/urandom > "$KMNT/a/b/big"
ln -s ../a/f1 "$KMNT/c/link"
setfattr -n user.note -v "crashed" "$KMNT/a/f2"
mv "$KMNT/a/f3" "$KMNT/c/moved"
rm "$KMNT/a/f4"
sync -f "$KMNT"
cp --sparse=always "$SRC" "$IMG"      # what a crash leaves
umount "$KMNT" || fail "kernel umount"
dumpe2fs -h "$IMG" 2>/dev/null | grep -q '^Filesystem features:.*needs_recovery' \
  || skip "ro-replay: the kernel had checkpointed everything before the copy (nothing to replay)"
before=$(sha256sum < "$IMG")

# The oracle: the kernel's ext4 replays a copy read-write.
cp --sparse=always "$IMG" "$KIMG"
mount -o loop -t ext4 "$KIMG" "$KMNT" || fail "kernel mount of the copy"
python3 "$TOOLS/treecompare.py" snapshot "$KMNT" "$WORK/kernel.json" || fail "snapshot of the kernel's view"
umount "$KMNT"

python3 "$TOOLS/fstarget.py" mount ext4iomap "$IMG" "$MNT" -o ro --log "$WORK/server.log" > "$WORK/mount.out" 2>&1 \
  || { cat "$WORK/mount.out" "$WORK/server.log"; fail "read-only mount of the crashed image"; }
grep -q "journal replayed in memory" "$WORK/server.log" || { cat "$WORK/server.log"; fail "the server did not say it replayed in memory"; }
grep -E "^[^ ]+ $MNT " /proc/mounts | grep -q ' ro[, ]' || fail "the mount is not read-only"
python3 "$TOOLS/treecompare.py" snapshot "$MNT" "$WORK/ours.json" || fail "snapshot of our view"
touch "$MNT/new" 2>/dev/null && fail "a read-only mount accepted a create"
python3 "$TOOLS/fstarget.py" umount "$MNT" --image "$IMG" --timeout 30 >/dev/null 2>&1 || fail "umount"
[ -z "$(losetup -j "$IMG")" ] || fail "a loop device still holds the image"
after=$(sha256sum < "$IMG")
[ "$before" = "$after" ] || fail "the read-only mount changed the image"
dumpe2fs -h "$IMG" 2>/dev/null | grep -q '^Filesystem features:.*needs_recovery' || fail "needs_recovery went away"
# Times of the replayed objects are the kernel's on both sides; atime moves
# with the walks and the statvfs of a read-only mount is the same numbers.
python3 "$TOOLS/treecompare.py" diff "$WORK/kernel.json" "$WORK/ours.json" --ignore atime \
  || fail "our in-memory replay differs from the kernel's replay"

# Read-write: the replay reaches the device.
python3 "$TOOLS/fstarget.py" mount ext4iomap "$IMG" "$MNT" --log "$WORK/server-rw.log" > "$WORK/mount.out" 2>&1 \
  || { cat "$WORK/mount.out"; fail "read-write mount"; }
[ "$(cat "$MNT/c/moved" | wc -c)" -gt 0 ] || fail "moved file empty after the read-write replay"
python3 "$TOOLS/fstarget.py" umount "$MNT" --image "$IMG" --timeout 30 >/dev/null 2>&1 || fail "umount (rw)"
dumpe2fs -h "$IMG" 2>/dev/null | grep -q '^Filesystem features:.*needs_recovery' && fail "needs_recovery still set after a read-write mount"
e2fsck -fn "$IMG" > "$WORK/fsck.out" 2>&1 || { cat "$WORK/fsck.out"; fail "e2fsck -fn after the read-write mount"; }
echo "ro-replay: pass (read-only mount replayed in memory, equal to the kernel's replay, image unchanged; read-write replay clean)"
