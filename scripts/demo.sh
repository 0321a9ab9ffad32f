#!/usr/bin/env bash
# Demo: build a small ext4 image, mount it through fuservicemount (which spawns
# a sandboxed, unprivileged ext4iomapd), show it, unmount. Root required.
# Usage: scripts/demo.sh [BUILD_DIR]   (default .build/release)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-.build/release}
HELPER="$BUILD/fuservicemount"
[ -x "$HELPER" ] || { echo "demo: $HELPER not built; run make first" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "demo: mounting needs root; run: sudo make demo" >&2; exit 1; }

WORK=$(mktemp -d /tmp/ext4iomap-demo.XXXXXX)
MNT="$WORK/mnt"
cleanup() {
  mountpoint -q "$MNT" 2>/dev/null && umount "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

echo "== creating a demo ext4 image"
mkdir -p "$WORK/tree/docs" "$MNT"
echo "Hello from an ext4 image served by a sandboxed Swift server." > "$WORK/tree/README.txt"
seq 1 20000 > "$WORK/tree/docs/numbers.txt"
ln -s README.txt "$WORK/tree/readme-link"
setfattr -n user.origin -v demo "$WORK/tree/README.txt" 2>/dev/null || true
mkfs.ext4 -q -F -L demo -d "$WORK/tree" "$WORK/demo.img" 32M

echo "== mounting: $HELPER demo.img mnt -t fuse.ext4 -o ro"
"$HELPER" "$WORK/demo.img" "$MNT" -t fuse.ext4 -o ro
echo "== findmnt"
findmnt "$MNT"
echo "== the server process (unprivileged, sandboxed)"
ps -o pid,user,args -C ext4iomapd | sed 's/^/   /'
echo "== ls -la"
ls -la "$MNT"
echo "== cat README.txt; getfattr"
cat "$MNT/README.txt"
getfattr -d "$MNT/README.txt" 2>/dev/null || true
echo "== tail -3 docs/numbers.txt"
tail -3 "$MNT/docs/numbers.txt"
echo "== df -h"
df -h "$MNT"
echo "== umount"
umount "$MNT"
echo "demo: done. Without -o ro the mount is read-write; the iomap data path needs a kernel with FUSE iomap (this one: classic READ/WRITE)."
