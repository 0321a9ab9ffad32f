#!/usr/bin/env bash
# Run fstests (xfstests) against ext4iomap, the kernel's ext4 or fuse2fs.
# See --help, docs/FSTESTS.md and docs/TESTING.md.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

usage() {
  cat <<EOF
usage: tests/fstests/run.sh [options] [TEST...]

Builds fstests from the snapshot tarball (once per tarball, cached), makes a
TEST and a SCRATCH image file, attaches each to a loop device, and runs the
chosen tests on the chosen target. Needs root. Exit status: 0 when every test
that ran passed (notrun allowed), 1 when any failed, 2 on a setup error;
with --strict, a notrun test is a failure too.

target (default ours):
  --target ours      ext4iomap through mount(8): FSTYP=fuse, FUSE_SUBTYP=.ext4,
                     the helper and server installed into a staging root and
                     laid over /usr inside a private mount namespace
  --target kernel    the kernel's ext4 (FSTYP=ext4)
  --target fuse2fs   e2fsprogs' fuse2fs (FSTYP=fuse, FUSE_SUBTYP=.fuse2fs)

tests (any mix; default: -g quick):
  -g GROUP           an fstests group, e.g. -g generic/auto (a bare group such
                     as -g auto also takes the FSTYP's own directory: ext4/ for
                     the kernel target)
  -x GROUP           exclude a group
  --list FILE        test names, one a line (# comments allowed)
  TEST...            e.g. generic/001 generic/013

file system:
  -b, --block-size N 4096 (default) or 1024; adds -b N to MKFS_OPTIONS
  --mkfs-options S   more mke2fs options (MKFS_OPTIONS), e.g. "-O ^metadata_csum"
  --size SIZE        size of each image file (default 4G)

run:
  --results DIR      results directory (default /var/tmp/ext4iomap-fstests/results/TARGET-BS-DATE);
                     must be outside the repository
  --timeout SEC      per-test time limit; a test over it is killed and fails (default 900)
  --strict           a listed test that is notrun fails the run
  --build DIR        ext4iomap binaries (default \$EXT4IOMAP_BUILD, else .build/release, else .build/debug)
  -h, --help         this text

environment:
  EXT4IOMAP_FSTESTS_TARBALL  the fstests snapshot (default: newest ../shared/thirdparty/xfstests-*.tar.gz)
  EXT4IOMAP_FSTESTS_DIR      where builds, images and results live (default /var/tmp/ext4iomap-fstests)

Results: DIR/summary.tsv (test, status, seconds), DIR/check.out (check's own
output), DIR/result.xml and per-test *.full/*.out.bad files under DIR/results.
EOF
}

TARGET=ours BS=4096 MKFS_EXTRA="" SIZE=4G TIMEOUT=900 STRICT=0
RESULTS="" BUILD=${EXT4IOMAP_BUILD:-}
declare -a SEL=() TESTS=() LISTS=()
while [ $# -gt 0 ]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --target) TARGET=$2; shift ;;
    -b|--block-size) BS=$2; shift ;;
    --mkfs-options) MKFS_EXTRA=$2; shift ;;
    --size) SIZE=$2; shift ;;
    --results) RESULTS=$2; shift ;;
    --timeout) TIMEOUT=$2; shift ;;
    --strict) STRICT=1 ;;
    --build) BUILD=$2; shift ;;
    --list) LISTS+=("$2"); shift ;;
    -g|-x) SEL+=("$1" "$2"); shift ;;
    -*) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) TESTS+=("$1") ;;
  esac
  shift
done
case $TARGET in ours|kernel|fuse2fs) ;; *) echo "run.sh: --target is ours, kernel or fuse2fs" >&2; exit 2 ;; esac
case $BS in 1024|2048|4096) ;; *) echo "run.sh: --block-size is 1024, 2048 or 4096" >&2; exit 2 ;; esac
for l in "${LISTS[@]}"; do
  [ -r "$l" ] || { echo "run.sh: cannot read list $l" >&2; exit 2; }
  while read -r t _; do TESTS+=("$t"); done < <(sed -e 's/#.*//' "$l" | grep -v '^[[:space:]]*$')
done
[ ${#TESTS[@]} -gt 0 ] || [ ${#SEL[@]} -gt 0 ] || SEL=(-g quick)

[ "$(id -u)" -eq 0 ] || { echo "run.sh: needs root (loop devices, mounts)"; exit 2; }
BASE=${EXT4IOMAP_FSTESTS_DIR:-/var/tmp/ext4iomap-fstests}
TARBALL=${EXT4IOMAP_FSTESTS_TARBALL:-$(ls -t "$repo"/../shared/thirdparty/xfstests-*.tar.gz 2>/dev/null | head -1)}
[ -n "$TARBALL" ] && [ -r "$TARBALL" ] || { echo "run.sh: no fstests tarball (set EXT4IOMAP_FSTESTS_TARBALL)"; exit 2; }
TARBALL=$(readlink -f "$TARBALL")
KEY=$(basename "$TARBALL" .tar.gz)
FST=$BASE/cache/$KEY/xfstests
mkdir -p "$BASE/cache"

# ---- fstests: build once per tarball --------------------------------------
need=(xfs_io fsck.ext4 mkfs.ext4 e2fsck losetup unshare flock patch make gcc fuser python3)
[ "$TARGET" = fuse2fs ] && need+=(fuse2fs)
for c in "${need[@]}"; do
  command -v "$c" >/dev/null || { echo "run.sh: $c missing (apt-get install xfsprogs e2fsprogs psmisc build-essential ...)"; exit 2; }
done
exec 9>"$BASE/cache/.lock"
flock 9
if [ ! -f "$FST/.ext4iomap-built" ]; then
  echo "== building fstests from $(basename "$TARBALL") in $BASE/cache/$KEY (once)"
  rm -rf "$BASE/cache/$KEY" && mkdir -p "$BASE/cache/$KEY"
  tar xzf "$TARBALL" -C "$BASE/cache/$KEY" || { echo "run.sh: cannot extract $TARBALL"; exit 2; }
  top=$(tar tzf "$TARBALL" | head -1 | cut -d/ -f1)
  [ "$top" = xfstests ] || mv "$BASE/cache/$KEY/$top" "$FST"
  if ! make -C "$FST" -j"$(nproc)" > "$BASE/cache/$KEY/build.log" 2>&1; then
    tail -30 "$BASE/cache/$KEY/build.log"; echo "run.sh: fstests build failed (log: $BASE/cache/$KEY/build.log)"; exit 2
  fi
  touch "$FST/.ext4iomap-built"
fi
flock -u 9

# fstests runs some tests as these users.
for u in fsgqa fsgqa2 123456-fsgqa; do
  id -u "$u" >/dev/null 2>&1 || useradd -m "$u" >/dev/null 2>&1 || useradd -m --badname "$u" \
    || { echo "run.sh: cannot create user $u"; exit 2; }
done

# ---- ext4iomap binaries --------------------------------------------------
if [ "$TARGET" = ours ]; then
  if [ -z "$BUILD" ]; then
    if [ -x "$repo/.build/release/ext4iomapd" ]; then BUILD=$repo/.build/release; else BUILD=$repo/.build/debug; fi
  fi
  [ -x "$BUILD/fuservicemount" ] && [ -x "$BUILD/ext4iomapd" ] \
    || { echo "run.sh: ext4iomap binaries not built in $BUILD (swift build -c release --product ext4iomapd; ... fuservicemount)"; exit 2; }
  [ -S /run/filesystems/ext4 ] && { echo "run.sh: /run/filesystems/ext4 exists; the helper would use that service, not the staged server"; exit 2; }
fi

stamp=$(date +%Y%m%d-%H%M%S)
[ -n "$RESULTS" ] || RESULTS=$BASE/results/$TARGET-$BS-$stamp
mkdir -p "$RESULTS" && RESULTS=$(cd "$RESULTS" && pwd)
case $RESULTS/ in "$repo"/*) echo "run.sh: --results must be outside the repository"; exit 2 ;; esac
WORK=$(mktemp -d "$BASE/run.XXXXXX")
chmod 0755 "$BASE" "$WORK"   # tests run steps as fsgqa, nobody, daemon: they must reach the mounts

# Each run works on its own copy of the built tree (33 MB), with the project's
# patches applied to the files as they are in the tarball: runs side by side
# never see each other's changes, and the cache stays as built.
cp -a "$FST" "$WORK/xfstests" || { echo "run.sh: cannot copy the fstests tree"; rm -rf "$WORK"; exit 2; }
FST=$WORK/xfstests
top=$(tar tzf "$TARBALL" | head -1 | cut -d/ -f1)
touched=$(sed -n 's#^+++ b/\([^[:space:]]*\).*#\1#p' "$here"/patches/*.patch | sort -u)
mkdir "$WORK/pristine"
# shellcheck disable=SC2046
tar xzf "$TARBALL" -C "$WORK/pristine" $(for f in $touched; do echo "$top/$f"; done) \
  || { echo "run.sh: cannot restore the files the patches change"; rm -rf "$WORK"; exit 2; }
for f in $touched; do cp "$WORK/pristine/$top/$f" "$FST/$f"; done
for p in "$here"/patches/*.patch; do
  patch -s -p1 -d "$FST" < "$p" || { echo "run.sh: patch $(basename "$p") does not apply"; rm -rf "$WORK"; exit 2; }
done

# ---- cleanup on every path -----------------------------------------------
cleanup() {
  local l p f
  # The namespace's own trap stops check and unmounts; wait for it, then
  # catch what a killed inner shell left.
  # INNER_PID is unshare, which ignores TERM while it waits: signal its
  # child, the namespace's first process.
  if [ -n "${INNER_PID:-}" ] && kill -0 "$INNER_PID" 2>/dev/null; then
    pkill -TERM -P "$INNER_PID" 2>/dev/null
    for _ in $(seq 60); do kill -0 "$INNER_PID" 2>/dev/null || break; sleep 0.5; done
  fi
  for img in "$WORK"/*.img; do
    [ -e "$img" ] || continue
    for l in $(losetup -j "$img" -O NAME -n 2>/dev/null); do
      for p in /proc/[0-9]*; do  # a server still holding it
        for f in "$p"/fd/*; do [ "$(readlink "$f" 2>/dev/null)" = "$l" ] && kill -KILL "${p#/proc/}" 2>/dev/null; done
      done
      losetup -d "$l" 2>/dev/null
    done
  done
  chattr -i "$WORK/test" "$WORK/scratch" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- images and loop devices ----------------------------------------------
MKFS_OPTIONS="-b $BS${MKFS_EXTRA:+ $MKFS_EXTRA}"
truncate -s "$SIZE" "$WORK/test.img" "$WORK/scratch.img" || exit 2
TEST_DEV=$(losetup -f --show "$WORK/test.img") || { echo "run.sh: losetup failed"; exit 2; }
SCRATCH_DEV=$(losetup -f --show "$WORK/scratch.img") || { echo "run.sh: losetup failed"; exit 2; }
# shellcheck disable=SC2086
mkfs.ext4 -q -F $MKFS_OPTIONS "$TEST_DEV" || { echo "run.sh: mkfs of the TEST device failed"; exit 2; }
mkdir -p "$WORK/test" "$WORK/scratch"
# The bare mountpoints are immutable: a test whose mount did not happen gets
# EPERM instead of filling the host's disk under an unmounted mountpoint.
chattr +i "$WORK/test" "$WORK/scratch" || { echo "run.sh: chattr +i on the mountpoints failed"; exit 2; }

case $TARGET in
  ours)    FSTYP=fuse FUSE_SUBTYP=.ext4    MOPTS="" ;;   # suid,dev: bin/mount.fuse.ext4
  fuse2fs) FSTYP=fuse FUSE_SUBTYP=.fuse2fs MOPTS="" ;;
  kernel)  FSTYP=ext4 FUSE_SUBTYP=""       MOPTS="" ;;
esac
cat > "$WORK/local.config" <<EOF
# written by tests/fstests/run.sh ($TARGET, $BS-byte blocks)
export FSTYP=$FSTYP
export FUSE_SUBTYP=$FUSE_SUBTYP
export FUSE_EXTFS=$([ "$FSTYP" = fuse ] && echo ext4)
export TEST_DEV=$TEST_DEV
export TEST_DIR=$WORK/test
export SCRATCH_DEV=$SCRATCH_DEV
export SCRATCH_MNT=$WORK/scratch
export MKFS_OPTIONS="$MKFS_OPTIONS"
export MOUNT_OPTIONS="$MOPTS"
export TEST_FS_MOUNT_OPTS="$MOPTS"
export RESULT_BASE=$RESULTS/results
export LOGWRITES_DEV=
EOF

if [ "$TARGET" = ours ]; then
  echo "== staging ext4iomap from $BUILD"
  make -s -C "$repo" install SKIP_BUILD=1 BUILDDIR="$BUILD" DESTDIR="$WORK/stage" PREFIX=/usr > "$WORK/install.log" 2>&1 \
    || { cat "$WORK/install.log"; echo "run.sh: make install into the staging root failed"; exit 2; }
fi
mkdir -p "$WORK/stage/usr/sbin" "$WORK/stage/usr/bin" "$WORK/stage/usr/libexec"
cp "$here/bin/mount.fuse.fuse2fs" "$here/bin/mount.fuse" "$WORK/stage/usr/sbin/"
[ "$TARGET" = ours ] && { rm -f "$WORK/stage/usr/sbin/mount.fuse.ext4"; cp "$here/bin/mount.fuse.ext4" "$WORK/stage/usr/sbin/"; }

{
  echo "target=$TARGET block_size=$BS mkfs_options=\"$MKFS_OPTIONS\" size=$SIZE timeout=${TIMEOUT}s"
  echo "fstests=$KEY ext4iomap=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null)$( [ -n "$(git -C "$repo" status --porcelain -- Sources 2>/dev/null)" ] && echo +dirty) build=${BUILD:-n/a}"
  echo "kernel=$(uname -r) e2fsprogs=$(e2fsck -V 2>&1 | head -1 | awk '{print $2}') started=$(date -Is)"
  echo "tests: ${SEL[*]} ${TESTS[*]}"
} > "$RESULTS/run.info"
cp "$WORK/local.config" "$RESULTS/local.config"
cat "$RESULTS/run.info"

# ---- the run, inside a private mount namespace -----------------------------
cat > "$WORK/inner.sh" <<'EOF'
set -uo pipefail
WORK=$1 FST=$2 RESULTS=$3 TIMEOUT=$4 HERE=$5; shift 5
. "$WORK/local.config"
kill_tree() {  # SIGKILL a process and everything below it, children first
  local c
  for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do kill_tree "$c"; done
  kill -KILL "$1" 2>/dev/null
}
inner_cleanup() {
  [ -n "${WD:-}" ] && kill "$WD" 2>/dev/null
  [ -n "${CHECK:-}" ] && kill_tree "$CHECK"
  for m in "$SCRATCH_MNT" "$TEST_DIR"; do
    mountpoint -q "$m" 2>/dev/null && { /usr/bin/umount "$m" 2>/dev/null || /usr/bin/umount -l "$m"; }
  done
}
trap inner_cleanup EXIT
trap 'exit 130' INT TERM
# This namespace began as a copy of the host's mounts. A copy of another FUSE
# mount would keep its server from getting DESTROY at the host's umount, and a
# copy of a loop-backed mount would keep its loop device busy: let go of them
# here (only here; the host keeps its mounts), deepest first.
findmnt -rn -o TARGET,SOURCE,FSTYPE | awk '($3 ~ /^fuse/ && $3 != "fusectl") || $2 ~ /^\/dev\/loop/ { print $1 }' \
  | sort -r | while read -r m; do /usr/bin/umount -l "$(printf '%b' "$m")" 2>/dev/null; done
for d in sbin bin libexec; do
  mount -t overlay overlay -o "lowerdir=$WORK/stage/usr/$d:/usr/$d" "/usr/$d" || { echo "overlay on /usr/$d failed"; exit 2; }
done
export PATH="$HERE/bin:$PATH" HOST_OPTIONS="$WORK/local.config"
cd "$FST"
./check -R xunit "$@" > >(tee "$RESULTS/check.out") 2>&1 &
CHECK=$!
python3 "$HERE/watchdog.py" "$CHECK" "$TIMEOUT" "$RESULTS/watchdog.log" "$TEST_DIR" "$SCRATCH_MNT" &
WD=$!
wait "$CHECK"
rc=$?
CHECK=
kill "$WD" 2>/dev/null; WD=
exit $rc
EOF
ARGS=("${SEL[@]}" "${TESTS[@]}")
# Its own PID namespace too (with its own /proc): fstests stops fsstress and
# friends with pkill by name, which would reach another run's. The inner
# script gets the TERM that stops unshare (and cleans up).
unshare -m -p -f --kill-child=TERM --mount-proc --propagation private bash "$WORK/inner.sh" "$WORK" "$FST" "$RESULTS" "$TIMEOUT" "$here" "${ARGS[@]}" &
INNER_PID=$!
wait "$INNER_PID"
crc=$?
INNER_PID=

# ---- results ------------------------------------------------------------
python3 "$here/summarize.py" "$RESULTS" "${TESTS[@]}" > "$RESULTS/summary.txt"
src=$?
cat "$RESULTS/summary.txt"
echo "results: $RESULTS (check exit $crc)"
if [ $src -eq 2 ]; then exit 2; fi
if grep -q '^fail' <(cut -f2 "$RESULTS/summary.tsv"); then exit 1; fi
if [ $STRICT -eq 1 ] && grep -qv '^pass$' <(cut -f2 "$RESULTS/summary.tsv"); then exit 1; fi
exit 0
