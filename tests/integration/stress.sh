#!/usr/bin/env bash
# Concurrency stress through our server mounted read-write: many threads create,
# write, rename across directories, unlink and set xattrs at once. It must finish
# (no deadlock), report only errors a racing peer explains, unmount cleanly, leave
# `e2fsck -fn` clean, and the kernel must read the result back with the same tree.
# Exit: 0 pass, 77 skip (last line says why), anything else fails.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
export EXT4IOMAP_BUILD="${EXT4IOMAP_BUILD:-$repo/.build/debug}"
TOOLS="$repo/tests/tools"
skip() { echo "$1"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "stress: needs root (loop and FUSE mounts)"

WORK=$(mktemp -d /tmp/stress.XXXXXX)
IMG="$WORK/s.img"; MNT="$WORK/mnt"; KMNT="$WORK/k"
mkdir -p "$MNT" "$KMNT"
cleanup() {
  python3 "$TOOLS/fstarget.py" cleanup --image "$IMG" "$MNT" "$KMNT" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() { echo "stress: FAIL: $*"; exit 1; }

for variant in "ext4:-b 4096" "ext2:-t ext2 -b 1024"; do
  name=${variant%%:*}; opts=${variant#*:}
  # shellcheck disable=SC2086
  mkfs.ext4 -q -F $opts "$IMG" 64M || fail "mkfs ($name)"
  python3 "$TOOLS/fstarget.py" mount ext4iomap "$IMG" "$MNT" --log "$WORK/server.log" > "$WORK/mount.out" 2>&1
  rc=$?
  [ $rc -eq 77 ] && skip "$(tail -1 "$WORK/mount.out")"
  [ $rc -eq 0 ] || { cat "$WORK/mount.out"; fail "mount ($name)"; }
  timeout 300 python3 "$TOOLS/stress_work.py" "$MNT" 8 20 7 || fail "workload ($name)"
  ours=$(cd "$MNT" && find . -printf '%y %p %s %n\n' | sort | md5sum)
  python3 "$TOOLS/fstarget.py" umount "$MNT" --image "$IMG" || fail "unmount ($name)"
  e2fsck -fn "$IMG" > "$WORK/fsck.out" 2>&1 || { sed 's/^/    /' "$WORK/fsck.out" | head -40; fail "e2fsck -fn ($name)"; }
  mount -o ro,loop "$IMG" "$KMNT" || fail "kernel mount ($name)"
  theirs=$(cd "$KMNT" && find . -printf '%y %p %s %n\n' | sort | md5sum)
  umount "$KMNT"
  [ "$ours" = "$theirs" ] || fail "the kernel sees a different tree ($name)"
  echo "  $name: fsck clean, kernel view equal"
done
echo "stress: pass"
