#!/usr/bin/env bash
# Measure the syscalls ext4iomapd makes while serving (after the helper's BYEE):
# mount an image through fuservicemount under strace -f, walk and read the whole
# tree, read xattrs, statfs, umount. Prints "count syscall" per syscall and any
# call that failed with EPERM (a seccomp denial). Root only. Used to derive the
# allow-list in Sources/Ext4Server/Lockdown.swift.
# Usage: tests/tools/syscall-profile.sh [BUILD_DIR] [-o OPTS]   (KEEP=1 keeps the traces)
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${1:-${EXT4IOMAP_BUILD:-$repo/.build/debug}}
OPTS=${2:-ro}
work=$(mktemp -d /tmp/ext4iomap-sysprof.XXXXXX)
cleanup() {
  mountpoint -q "$work/mnt" 2>/dev/null && { umount "$work/mnt" 2>/dev/null || umount -l "$work/mnt"; }
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT INT TERM
mkdir -p "$work/tree/d/e" "$work/mnt"
for i in $(seq 1 300); do echo "file $i" > "$work/tree/d/f$i"; done
seq 1 200000 > "$work/tree/big.txt"
ln -s big.txt "$work/tree/link"
setfattr -n user.x -v y "$work/tree/big.txt" 2>/dev/null || true
mkfs.ext4 -q -F -d "$work/tree" "$work/img" 64M
# strace follows the spawned server, so it only returns when the server exits.
strace -f -ff -o "$work/tr" "$BUILD/fuservicemount" "$work/img" "$work/mnt" -t fuse.ext4 -o "$OPTS" 2>"$work/helper.err" &
spid=$!
for _ in $(seq 100); do mountpoint -q "$work/mnt" && break; sleep 0.1; done
mountpoint -q "$work/mnt" || { cat "$work/helper.err" >&2; kill "$spid"; exit 1; }
find "$work/mnt" -type f -exec cat {} + > /dev/null
ls -laR "$work/mnt" > /dev/null
getfattr -d "$work/mnt/big.txt" > /dev/null 2>&1 || true
readlink "$work/mnt/link" > /dev/null
stat -f "$work/mnt" > /dev/null
umount "$work/mnt"
timeout 20 tail --pid="$spid" -f /dev/null
main=$(grep -l 'BYEE' "$work"/tr.* | xargs grep -L '^execve("[^"]*fuservicemount' | head -1)
[ -n "$main" ] || { echo "server trace not found" >&2; exit 1; }
mainpid=${main##*.}
# What the helper itself started besides the server (its stderr-relay thread,
# the short-lived child that empties the server's root) is not the server: the
# helper's clone()s return their ids in our PID namespace, the trace files' names.
helper=$(grep -l '^execve("[^"]*fuservicemount' "$work"/tr.* | head -1)
notserver=" $(grep -hoE '^clone3?\(.*\) += [0-9]+' "$helper" | sed 's/.*= //' | tr '\n' ' ')"
# Server threads: the main file after BYEE, plus every other trace without execve.
{
  sed -n '/BYEE/,$p' "$main"
  for f in "$work"/tr.*; do
    [ "$f" = "$main" ] && continue
    grep -q '^execve(' "$f" && continue
    case $notserver in *" ${f##*.} "*) continue ;; esac
    cat "$f"
  done
} > "$work/serving"
echo "== syscalls while serving (pid $mainpid and its threads)"
grep -oE '^[a-z_0-9]+\(' "$work/serving" | tr -d '(' | sort | uniq -c | sort -rn
echo "== failed with EPERM/ENOSYS"
grep -E "= -1 (EPERM|ENOSYS)" "$work/serving" | cut -c1-90 | sort | uniq -c || true
exit 0
