#!/usr/bin/env bash
# File handles (name_to_handle_at / open_by_handle_at), with the kernel's ext4
# as the oracle: the same files, directory, unlinked and renamed files on our
# mount and on a kernel loop mount of a copy of the image, handles taken, the
# kernel's dentry and inode caches dropped (so it must look each inode up
# again: FUSE_EXPORT_SUPPORT sends LOOKUP "." on the handle's node), then
# opened. Linked files and the directory open and read the same; the unlinked
# file is ESTALE on both. Both images fsck clean. (fstests generic/426, 467, 477.)
# Exit: 0 pass, 77 skip (last line says why), anything else fails.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
export EXT4IOMAP_BUILD="${EXT4IOMAP_BUILD:-$repo/.build/debug}"
TOOLS="$repo/tests/tools"
skip() { echo "$1"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "handles: needs root (loop and FUSE mounts, open_by_handle_at)"
for c in python3 mkfs.ext4 e2fsck mount; do
  command -v "$c" >/dev/null || skip "handles: $c not installed"
done
# shellcheck source=../tools/twin.sh
. "$TOOLS/twin.sh"
twin_init handles
twin_mount 32M

twin_compare python3 "$TOOLS/handles.py"
echo "$ours" | grep -q '^f0 ok 7$' || fail "a linked file did not open by handle: $ours"
echo "$ours" | grep -q '^f3 ESTALE$' || fail "an unlinked file opened by handle: $ours"
echo "$ours" | grep -q '^f4 ok 35$' || fail "a renamed file did not open by handle: $ours"
twin_unmount_fsck
echo "$ours" | sed 's/^/    /'
echo "handles: pass (outcomes equal to the kernel's ext4, fsck clean)"
