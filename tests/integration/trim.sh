#!/usr/bin/env bash
# FITRIM (fstrim) on our mount: the free blocks are discarded on the loop
# device, which punches them out of the image file, so a sparse image gives
# the space of deleted files back. Through fuservicemount and the sandboxed
# server: a 40 MB file is written, synced and deleted; fstrim -v must report
# at least that much, the image's allocated size must shrink by at least
# that much, the files that stay must keep their bytes (also after a
# remount), a non-root caller is refused as on ext4, and e2fsck is clean.
# Exit: 0 pass, 77 skip (last line says why), anything else fails.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
export EXT4IOMAP_BUILD="${EXT4IOMAP_BUILD:-$repo/.build/debug}"
TOOLS="$repo/tests/tools"
skip() { echo "$1"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "trim: needs root (loop and FUSE mounts)"
for c in python3 mkfs.ext4 e2fsck fstrim setpriv sha256sum du; do
  command -v "$c" >/dev/null || skip "trim: $c not installed"
done
[ -e /dev/fuse ] || skip "trim: /dev/fuse missing"
WORK=$(mktemp -d /tmp/trim.XXXXXX)
IMG="$WORK/t.img" MNT="$WORK/mnt"
mkdir -p "$MNT"
cleanup() {
  python3 "$TOOLS/fstarget.py" cleanup --image "$IMG" "$MNT" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() { echo "trim: FAIL: $*"; exit 1; }
mount_ours() {
  python3 "$TOOLS/fstarget.py" mount ext4iomap "$IMG" "$MNT" --log "$WORK/server.log" > "$WORK/mount.out" 2>&1 \
    || { cat "$WORK/mount.out"; fail "mount"; }
}
umount_ours() { python3 "$TOOLS/fstarget.py" umount "$MNT" --image "$IMG" --timeout 30 >/dev/null 2>&1 || fail "umount"; }

mkfs.ext4 -q -F -b 4096 "$IMG" 128M || fail "mkfs"
mount_ours
head -c 3000000 /dev/urandom > "$MNT/keep"
want=$(sha256sum < "$MNT/keep")
head -c 40000000 /dev/urandom > "$MNT/big"
sync -f "$MNT"
full=$(du -k "$IMG" | cut -f1)
rm "$MNT/big"
sync -f "$MNT"    # the frees are committed: only then may their blocks be discarded
setpriv --reuid=nobody --regid=nogroup --clear-groups fstrim "$MNT" 2>/dev/null && fail "a non-root caller trimmed"
out=$(fstrim -v "$MNT" 2>&1) || fail "fstrim: $out"
bytes=$(echo "$out" | sed -n 's/.*(\([0-9]*\) bytes) trimmed.*/\1/p')
[ -n "$bytes" ] && [ "$bytes" -ge 40000000 ] || fail "fstrim reported too little: $out"
after=$(du -k "$IMG" | cut -f1)
[ $((full - after)) -ge 39000 ] || fail "the image kept its space: ${full} KiB before, ${after} KiB after fstrim"
[ "$(sha256sum < "$MNT/keep")" = "$want" ] || fail "a kept file changed"
umount_ours
e2fsck -fn "$IMG" > "$WORK/fsck.out" 2>&1 || { cat "$WORK/fsck.out"; fail "e2fsck -fn"; }
mount_ours
[ "$(sha256sum < "$MNT/keep")" = "$want" ] || fail "a kept file changed after a remount"
umount_ours
echo "trim: pass ($bytes bytes trimmed, image ${full} KiB -> ${after} KiB, kept data intact, e2fsck clean)"
