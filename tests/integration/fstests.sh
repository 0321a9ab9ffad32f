#!/usr/bin/env bash
# fstests in CI: the fixed list tests/fstests/ci.list run on our mount through
# mount(8) (tests/fstests/run.sh --target ours), once with 4 KiB blocks and once
# with 1 KiB blocks. Every listed test must pass: a failure, a test that is not
# run, or a test with no result fails this script. Each run ends with e2fsck -fn
# of the TEST and SCRATCH images (fstests' own check after every test).
# Exit 0 pass, 77 skip (last line says why), anything else fail.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${EXT4IOMAP_BUILD:-$repo/.build/debug}
LIST=$repo/tests/fstests/ci.list

[ "$(id -u)" -eq 0 ] || { echo "skip: needs root (loop devices, FUSE mounts)"; exit 77; }
[ -x "$BUILD/fuservicemount" ] && [ -x "$BUILD/ext4iomapd" ] || { echo "skip: binaries not built in $BUILD"; exit 77; }
[ -c /dev/fuse ] || { echo "skip: no /dev/fuse"; exit 77; }
tarball=${EXT4IOMAP_FSTESTS_TARBALL:-$(ls -t "$repo"/../shared/thirdparty/xfstests-*.tar.gz 2>/dev/null | head -1)}
[ -n "$tarball" ] && [ -r "$tarball" ] || { echo "skip: no fstests snapshot (../shared/thirdparty/xfstests-*.tar.gz)"; exit 77; }
for c in xfs_io make gcc fuser; do
  command -v "$c" >/dev/null || { echo "skip: $c missing (bash scripts/setup.sh installs what fstests needs)"; exit 77; }
done
if [ -S /run/filesystems/ext4 ]; then
  echo "skip: /run/filesystems/ext4 exists, so the helper would use the systemd service instead of spawning"; exit 77
fi

out=$(mktemp -d /tmp/ext4iomap-fstests-ci.XXXXXX)
RUN=
# run.sh cleans up after itself on TERM: stop it (and wait) before leaving.
stop() { [ -n "$RUN" ] && kill -TERM "$RUN" 2>/dev/null && wait "$RUN"; rm -rf "$out"; }
trap stop EXIT
trap 'exit 130' INT TERM
fails=0
loops_before=$(losetup -a | grep 'ext4iomap-fstests/run\.' || true)
for bs in 4096 1024; do
  echo "== fstests CI list, ${bs}-byte blocks"
  t0=$(date +%s)
  EXT4IOMAP_FSTESTS_TARBALL=$tarball bash "$repo/tests/fstests/run.sh" --target ours --block-size "$bs" \
    --build "$BUILD" --list "$LIST" --strict --timeout 300 --size 2G --results "$out/$bs" > "$out/$bs.log" 2>&1 &
  RUN=$!
  wait "$RUN"
  rc=$?
  RUN=
  dt=$(( $(date +%s) - t0 ))
  tsv=$out/$bs/summary.tsv
  want=$(sed -e 's/#.*//' "$LIST" | awk 'NF {print $1}' | sort)
  got=$(awk -F'\t' '$2 == "pass" {print $1}' "$tsv" 2>/dev/null | sort)
  missing=$(comm -23 <(echo "$want") <(echo "$got"))
  if [ $rc -eq 0 ] && [ -z "$missing" ]; then
    echo "ok   ${bs}-byte blocks: all $(echo "$want" | wc -l) listed tests pass (${dt}s)"
  else
    fails=$((fails + 1))
    echo "FAIL ${bs}-byte blocks (run.sh exit $rc, ${dt}s); not passed:"
    for t in $missing; do
      line=$(awk -F'\t' -v t="$t" '$1 == t' "$tsv" 2>/dev/null)
      echo "     $t: ${line:-no result}"
      f=$out/$bs/results/$t.out.bad
      [ -f "$f" ] && head -20 "$f" | sed 's/^/       /'
    done
    tail -25 "$out/$bs.log"
  fi
done
# Nothing may be left behind: no loop device over the images of these runs
# (another run of the runner beside this one keeps its own).
left=$(losetup -a | grep 'ext4iomap-fstests/run\.' | grep -vxF -f <(printf '%s\n' "$loops_before") || true)
if [ -n "$left" ]; then
  echo "FAIL a loop device over a runner image is left:"; echo "$left"; fails=$((fails + 1))
fi
[ $fails -eq 0 ] || exit 1
echo "fstests CI list passed at 4 KiB and 1 KiB"
