#!/usr/bin/env bash
# renameat2 with RENAME_NOREPLACE, RENAME_EXCHANGE and RENAME_WHITEOUT, with the
# kernel's ext4 as the oracle: the same steps on our mount and on a kernel
# loop mount of a copy, the same outcomes and the same names, types, device
# numbers and contents afterwards (a whiteout is a character device 0:0);
# both images fsck clean. (fstests generic/078 and the renameat2 tests.)
# Exit: 0 pass, 77 skip (last line says why), anything else fails.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
export EXT4IOMAP_BUILD="${EXT4IOMAP_BUILD:-$repo/.build/debug}"
TOOLS="$repo/tests/tools"
skip() { echo "$1"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "rename2: needs root (loop and FUSE mounts, whiteouts need CAP_MKNOD)"
[ "$(uname -m)" = x86_64 ] || skip "rename2: the renameat2 syscall number is x86_64's"
for c in python3 mkfs.ext4 e2fsck mount; do
  command -v "$c" >/dev/null || skip "rename2: $c not installed"
done
# shellcheck source=../tools/twin.sh
. "$TOOLS/twin.sh"
twin_init rename2
twin_mount 32M
twin_compare python3 "$TOOLS/rename2.py"
echo "$ours" | grep -q '^whiteout w over a ok$' || fail "a whiteout rename failed: $ours"
echo "$ours" | grep -q '^w c---------' || fail "no whiteout left at the old name: $ours"
twin_unmount_fsck
echo "$ours" | sed 's/^/    /'
echo "rename2: pass (outcomes equal to the kernel's ext4, fsck clean)"
