#!/usr/bin/env bash
# Randomized differential test (tests/tools/fsdiff_stress.py): the same seeded
# sequence of namespace, data and metadata operations runs on our server mounted
# read-write (A) and on the kernel's ext4 mounting a copy of the same image (B).
# Results must agree op by op, trees must be equal, both images must pass
# `e2fsck -fn`, and the kernel's view of A's image must equal B's.
# Matrix: seeds x {ext4 4 KiB, ext4 1 KiB, ext2-style block maps 1 KiB and 4 KiB},
# small files to stay fast.
#
# First, always: a harness self-check with the kernel on both sides (must agree),
# and a fault-injection run (must be caught and shrunk to a short reproducer).
# Then, while the server refuses read-write mounts, exit 77.
#
# Environment: FSX_SEEDS ("1 2 3"), FSX_OPS (1500), FSX_A (ext4iomap; fuse2fs or
# kernel to exercise the harness), FSX_KEEP=1 keeps the artifacts directory,
# FSX_CONFIGS (names from the matrix below; default all), FSX_SELFCHECK=0 skips
# the harness self-checks (for callers that already ran them, e.g. uring.sh).
# Exit: 0 pass, 77 skip (last line says why), anything else fails.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
export EXT4IOMAP_BUILD="${EXT4IOMAP_BUILD:-$repo/.build/debug}"
TOOLS="$repo/tests/tools"
SEEDS=${FSX_SEEDS:-"1 2 3"}
OPS=${FSX_OPS:-1500}
A=${FSX_A:-ext4iomap}

skip() { echo "$1"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "fsx-diff: needs root (loop and FUSE mounts)"
for c in python3 mkfs.ext4 e2fsck mount losetup; do
  command -v "$c" >/dev/null || skip "fsx-diff: $c not installed"
done
[ -e /dev/fuse ] || [ "$A" = kernel ] || skip "fsx-diff: /dev/fuse missing"

WORK=$(mktemp -d /tmp/fsx-diff.XXXXXX)
ART="$WORK/artifacts"
mkdir -p "$ART"
cleanup() {
  # Anything the tool left behind if it was killed: mounts under WORK, servers, loops.
  local imgs=()
  while IFS= read -r -d '' f; do imgs+=(--image "$f"); done < <(find "$WORK" -name '*.img' -print0 2>/dev/null)
  python3 "$TOOLS/fstarget.py" cleanup "${imgs[@]}" "$WORK" 2>/dev/null
  if [ "${FSX_KEEP:-0}" = 1 ] || [ -n "$(ls -A "$ART" 2>/dev/null)" ]; then
    keep=$(mktemp -d /tmp/fsx-diff-artifacts.XXXXXX)
    cp -a "$ART/." "$keep/" 2>/dev/null
    echo "fsx-diff: artifacts (reproducers) kept in $keep"
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fsdiff() {  # fsdiff LABEL ARGS...: runs the tool with a hard time limit
  local label=$1; shift
  local t0=$SECONDS
  timeout -s KILL 240 python3 "$TOOLS/fsdiff_stress.py" "$@" --workdir "$WORK" --artifacts "$ART" \
      > "$WORK/run.log" 2>&1
  local rc=$?
  sed "s/^/    /" "$WORK/run.log"
  echo "  [$label] exit $rc ($((SECONDS - t0))s)"
  return $rc
}

small=(--max-size 64K --max-io 16K --check-every 250)

if [ "${FSX_SELFCHECK:-1}" != 0 ]; then
  echo "== harness self-check: kernel ext4 (A) vs kernel ext4 (B)"
  fsdiff "self-check 4k" run --a kernel --b kernel --mkfs "-b 4096" --size 64M --seed 1 --ops $((OPS * 2)) "${small[@]}" \
    || { echo "fsx-diff: FAIL: the harness does not agree with itself (kernel vs kernel)"; exit 1; }
  fsdiff "self-check ext2 1k" run --a kernel --b kernel --mkfs "-t ext2 -b 1024" --size 32M --seed 2 --ops 800 "${small[@]}" \
    || { echo "fsx-diff: FAIL: the harness does not agree with itself (kernel vs kernel, ext2)"; exit 1; }

  echo "== harness self-check: an injected fault must be caught and shrunk"
  fsdiff "fault injection" run --a kernel --b kernel --mkfs "-b 1024" --size 32M --seed 5 --ops 1000 "${small[@]}" \
    --inject-fault --shrink-time 60
  rc=$?
  n=$(sed -n 's/.*shortest reproducer (\([0-9]*\) ops).*/\1/p' "$WORK/run.log" | tail -1)
  if [ "$rc" -ne 1 ] || [ -z "$n" ] || [ "$n" -gt 3 ]; then
    echo "fsx-diff: FAIL: the injected fault was not caught and shrunk (exit $rc, reproducer '${n:-none}' ops)"
    exit 1
  fi
  rm -f "$ART"/*  # expected reproducers of the injected fault
  echo "  injected fault caught, reproducer shrunk to $n ops"
fi

if [ "$A" = ext4iomap ] || [ "$A" = ext4iomapd ]; then
  out=$(python3 "$TOOLS/fstarget.py" probe-rw "$A" 2>&1)
  rc=$?
  case $rc in
    0) echo "== $out" ;;
    77) echo "fsx-diff: harness self-checks passed; the differential runs need a read-write mount"
        skip "$(echo "$out" | tail -1)" ;;
    *) echo "$out"; echo "fsx-diff: FAIL: cannot mount $A read-write"; exit 1 ;;
  esac
fi

declare -a FAILS=()
configs=(
  "ext4-4k|-b 4096|64M"
  "ext4-1k|-b 1024|32M"
  "ext2-1k|-t ext2 -b 1024|32M"
  "ext2-4k|-t ext2 -b 4096|64M"
)
for cfg in "${configs[@]}"; do
  IFS='|' read -r name mkfsargs size <<< "$cfg"
  if [ -n "${FSX_CONFIGS:-}" ] && [[ " $FSX_CONFIGS " != *" $name "* ]]; then continue; fi
  for seed in $SEEDS; do
    echo "== A=$A B=kernel, $name, seed $seed, $OPS ops"
    # Shrink only the first failure, so that the script stays within its time.
    shrinkopt=(--shrink-time 90)
    [ ${#FAILS[@]} -eq 0 ] || shrinkopt=(--no-shrink)
    if ! fsdiff "$name seed $seed" run --a "$A" --b kernel --mkfs "$mkfsargs" --size "$size" --seed "$seed" \
        --ops "$OPS" "${small[@]}" "${shrinkopt[@]}"; then
      FAILS+=("$name seed $seed")
    fi
  done
done

if [ ${#FAILS[@]} -gt 0 ]; then
  echo "fsx-diff: FAIL: ${#FAILS[@]} run(s) diverged or left unclean images: ${FAILS[*]}"
  exit 1
fi
echo "fsx-diff: all runs equal and fsck clean (A=$A, seeds: $SEEDS)"
