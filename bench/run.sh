#!/usr/bin/env bash
# Benchmarks, side by side: ext4iomapd (through fuservicemount), the kernel's ext4
# (loop) and fuse2fs, on copies of one freshly made sparse image in /tmp.
# Not a test: prints a markdown table and the raw numbers, writes bench/out/.
# Root needed. Options are passed to bench/bench.py (see --help), e.g.
#   sudo bench/run.sh                    # the full run recorded in docs/BENCHMARKS.md
#   sudo bench/run.sh --quick            # a 1-minute smoke run at 5% of the sizes
# Our binaries come from $EXT4IOMAP_BUILD (default .build/release if built, else .build/debug).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${EXT4IOMAP_BUILD:-}" ]; then
  if [ -x "$repo/.build/release/ext4iomapd" ]; then EXT4IOMAP_BUILD="$repo/.build/release"
  else EXT4IOMAP_BUILD="$repo/.build/debug"; fi
fi
export EXT4IOMAP_BUILD
for c in fio fuse2fs mkfs.ext4 e2fsck python3; do
  command -v "$c" >/dev/null || { echo "bench: $c is not installed (scripts/setup.sh installs it)" >&2; exit 1; }
done
[ "$(id -u)" -eq 0 ] || { echo "bench: run as root" >&2; exit 1; }
exec python3 "$repo/bench/bench.py" --out "$repo/bench/out" "$@"
