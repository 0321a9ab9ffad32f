#!/usr/bin/env bash
# Unmount durability: when umount(8) returns, the file system is complete on
# the device and its journal is clean. The helper mounts fuseblk on a block
# device source (its own loop device over an image file included), so the
# kernel sends FUSE_DESTROY at umount and waits for the server's answer, which
# comes after the server's last commit and device flush.
#
# Inside a private mount namespace, with `make install` staged over /usr (as
# mount8.sh does):
#   image   mount(8): mount -t fuse.ext4 IMG DIR (spawn mode, the helper's loop
#           device). mountinfo says fuseblk.ext4 on /dev/loopN with blksize=.
#           cp -a a tree of many files and a big file, umount, and at once copy
#           the image; e2fsck -fn on the copy is clean and a read-only kernel
#           ext4 mount of the copy shows exactly the tree written. The loop
#           device is gone within 1 s of umount, the server exits.
#   bdev    the helper run directly (spawn mode) on a loop device this test made
#           with losetup (a block device source): the same checks on the device,
#           the device is free for an exclusive open right after umount, and
#           the test's own loop device stays attached.
#   lazy    umount -l returns at once, while a process still has its working
#           directory on the mount: the mount leaves the namespace, but the
#           server keeps serving that process (DESTROY comes only when the last
#           reference goes). The process writes a file and exits; then the
#           server has answered DESTROY and the image is clean with that file.
# With a helper that mounts plain fuse (the behaviour before fuseblk), the
# fstype checks fail and the copies taken right after umount are not clean.
# Exit 0 pass, 77 skip (last line says why), anything else fail.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${EXT4IOMAP_BUILD:-$repo/.build/debug}

if [ "${1:-}" != --inner ]; then
  [ "$(id -u)" -eq 0 ] || { echo "skip: needs root (mount namespaces, loop devices, FUSE)"; exit 77; }
  [ -x "$BUILD/fuservicemount" ] && [ -x "$BUILD/ext4iomapd" ] || { echo "skip: binaries not built in $BUILD"; exit 77; }
  for t in unshare losetup mkfs.ext4 e2fsck dumpe2fs debugfs findmnt python3; do
    command -v $t >/dev/null || { echo "skip: $t not installed"; exit 77; }
  done
  [ -c /dev/fuse ] || { echo "skip: no /dev/fuse"; exit 77; }
  grep -qw fuseblk /proc/filesystems || { echo "skip: the kernel has no fuseblk file system"; exit 77; }
  grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || true
  grep -qw overlay /proc/filesystems || { echo "skip: no overlay file system"; exit 77; }
  work=$(mktemp -d /tmp/ext4iomap-umount-durable.XXXXXX)
  chmod 755 "$work"
  cleanup() {
    # The inner namespace unmounts on every path; this catches a killed inner
    # shell: servers holding our images or loop devices, then the loops.
    local img l p f
    for img in "$work"/*.img; do
      [ -e "$img" ] || continue
      for l in $(losetup -j "$img" -O NAME -n 2>/dev/null); do
        for p in /proc/[0-9]*; do
          for f in "$p"/fd/*; do [ "$(readlink "$f" 2>/dev/null)" = "$l" ] && kill -KILL "${p#/proc/}" 2>/dev/null; done
        done
      done
      for l in $(losetup -j "$img" -O NAME -n 2>/dev/null); do losetup -d "$l" 2>/dev/null; done
    done
    rm -rf "$work"
  }
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  if ! make -s -C "$repo" install SKIP_BUILD=1 BUILDDIR="$BUILD" DESTDIR="$work/stage" PREFIX=/usr > "$work/install.log" 2>&1; then
    cat "$work/install.log"; echo "FAIL make install"; exit 1
  fi
  unshare -m --propagation private bash "$0" --inner "$work"
  exit $?
fi

# ---- inside the private mount namespace --------------------------------------
work=$2
STAGE=$work/stage
MNT=$work/mnt
KMNT=$work/kmnt
SRC=$work/src
HOLDER=
TLOOP=
fails=0
cleanup_inner() {
  [ -n "$HOLDER" ] && kill -KILL "$HOLDER" 2>/dev/null && wait "$HOLDER" 2>/dev/null
  local m
  for m in "$MNT" "$KMNT"; do
    # A trap does not wait for a server's DESTROY answer: abort the connection first.
    if mountpoint -q "$m" 2>/dev/null; then
      python3 "$repo/tests/tools/fstarget.py" abort "$m" 2>/dev/null
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
    fi
  done
  [ -n "$TLOOP" ] && losetup -d "$TLOOP" 2>/dev/null
}
trap cleanup_inner EXIT
trap 'exit 130' INT TERM
pass() { echo "ok   $*"; }
fail() { echo "FAIL $*"; fails=$((fails + 1)); }
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
mi() { awk -v t="$1" '$5 == t' /proc/self/mountinfo | tail -1; }
mi_fstype() { mi "$1" | awk '{ for (i = 7; i <= NF; i++) if ($i == "-") { print $(i + 1); exit } }'; }
mi_source() { mi "$1" | awk '{ for (i = 7; i <= NF; i++) if ($i == "-") { print $(i + 2); exit } }'; }
mi_super() { mi "$1" | awk '{ print $NF }'; }
has_opt() { case ",$1," in *",$2,"*) return 0 ;; esac; return 1; }
server_of() {  # the pid of the ext4iomapd holding block device $1
  local p f
  for p in /proc/[0-9]*; do
    [ "$(cat "$p/comm" 2>/dev/null)" = ext4iomapd ] || continue
    for f in "$p"/fd/*; do [ "$(readlink "$f" 2>/dev/null)" = "$1" ] && { echo "${p#/proc/}"; return; }; done
  done
}
alive() {  # exists and is not a zombie
  local st; st=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}
within() { [ "$1" != still ] && [ "$1" -le "$2" ]; }  # milliseconds from loop_watch, limit
gone_within() {  # pid, tenths of a second
  local i
  for ((i = 0; i < $2; i++)); do alive "$1" || return 0; sleep 0.1; done
  ! alive "$1"
}
# loop_watch IMG OUT: in the background, write to OUT the milliseconds from
# now until no loop device has IMG as its backing file (or "still" after 5 s).
loop_watch() {
  local t0 i; t0=$(now_ms)
  ( for ((i = 0; i < 250; i++)); do
      if [ -z "$(losetup -j "$1" -O NAME -n 2>/dev/null)" ]; then echo $(( $(now_ms) - t0 )) > "$2"; exit 0; fi
      sleep 0.02
    done
    echo still > "$2" ) &
  WATCH=$!
}
# Names, types, modes, owners, sizes, mtimes and link targets, then contents.
listing() {
  (cd "$1" && find . -path ./lost+found -prune -o \( -type d -printf '%p %y %m %U %G\n' \) \
     -o -printf '%p %y %m %U %G %s %T@ %l\n' | LC_ALL=C sort)
}
# same_tree WHAT DIR: DIR holds exactly the source tree.
same_tree() {
  listing "$SRC" > "$work/src.list"
  listing "$2" > "$work/got.list"
  if ! diff "$work/src.list" "$work/got.list" > "$work/list.diff"; then
    fail "$1: names, types, modes, owners, sizes, mtimes or link targets differ ($(grep -c '^[<>]' "$work/list.diff") lines):"
    head -8 "$work/list.diff" | sed 's/^/     /'
    return
  fi
  if ! diff -r --no-dereference -x lost+found "$SRC" "$2" > "$work/content.diff" 2>&1; then
    fail "$1: file contents differ:"; head -8 "$work/content.diff" | sed 's/^/     /'
    return
  fi
  pass "$1: the tree is complete ($(wc -l < "$work/src.list") entries, contents equal)"
}
# fsck_clean WHAT IMAGE-OR-DEVICE: e2fsck -fn finds nothing, and the file
# system was unmounted cleanly: state clean, no needs_recovery, the journal
# empty. (e2fsck -fn skips a journal that needs recovery and can exit 0 on
# what is left; the kernel then refuses a read-only mount of a read-only device.)
fsck_clean() {
  local rc=0 h state feats jstart
  e2fsck -fn "$2" > "$work/fsck.log" 2>&1 || rc=$?
  h=$(dumpe2fs -h "$2" 2>/dev/null)
  state=$(sed -n 's/^Filesystem state: *//p' <<<"$h")
  feats=$(sed -n 's/^Filesystem features: *//p' <<<"$h")
  jstart=$(sed -n 's/^Journal start: *//p' <<<"$h")
  if [ "$rc" = 0 ] && [ "$state" = clean ] && ! has_word "$feats" needs_recovery && [ "${jstart:-0}" = 0 ]; then
    pass "$1: e2fsck -fn clean; state clean, no needs_recovery, journal empty"
  else
    fail "$1: e2fsck -fn exit $rc, state '$state', needs_recovery $(has_word "$feats" needs_recovery && echo set || echo clear), journal start ${jstart:-?}:"
    grep -v '^Pass\|^e2fsck' "$work/fsck.log" | head -6 | sed 's/^/     /'
  fi
}
has_word() { [[ " $1 " == *" $2 "* ]]; }
# kernel_view WHAT IMAGE: mount IMAGE read-only with the kernel's ext4 and compare.
kernel_view() {
  if mount -t ext4 -o ro,loop "$2" "$KMNT" 2> "$work/kmount.err"; then
    same_tree "$1: the kernel's ext4 (read-only)" "$KMNT"
    umount "$KMNT"
  else
    fail "$1: the kernel's ext4 cannot mount it read-only: $(cat "$work/kmount.err")"
  fi
}

for d in sbin bin libexec; do
  mount -t overlay overlay -o "lowerdir=$STAGE/usr/$d:/usr/$d" "/usr/$d" || { echo "FAIL overlay on /usr/$d"; exit 1; }
done
# The helper must spawn its server: hide any service socket of the host.
[ -d /run/filesystems ] && mount -t tmpfs -o size=1m,mode=0755 umount-durable /run/filesystems
mkdir -p "$MNT" "$KMNT"

# The tree: many small files, symbolic links, hard links, empty files and
# directories, and a big file, all copied with cp -a (modes, owners, times).
mkdir -p "$SRC"
for d in /usr/include/linux /usr/share/zoneinfo; do [ -d "$d" ] && cp -a "$d" "$SRC/"; done
python3 - "$SRC/gen" <<'PYEOF'
import os, random, sys
root = sys.argv[1]
rng = random.Random(12)
for i in range(40):
    d = os.path.join(root, f"d{i:02}")
    os.makedirs(d)
    for j in range(25):
        with open(os.path.join(d, f"f{j:02}"), "wb") as f:
            f.write(rng.randbytes(rng.choice([0, 1, 100, 4095, 4096, 4097, 20000])))
    os.symlink(f"f{i % 25:02}", os.path.join(d, "link"))
    os.link(os.path.join(d, "f00"), os.path.join(d, "hard"))
os.makedirs(os.path.join(root, "empty-dir"))
with open(os.path.join(root, "big.bin"), "wb") as f:
    for _ in range(48):
        f.write(rng.randbytes(1 << 20))
PYEOF
chown -R 1234:5678 "$SRC/gen/d00"
entries=$(find "$SRC" | wc -l)
echo "     source tree: $entries entries, $(du -sm "$SRC" | cut -f1) MiB"

# ---------------------------------------------------------------- image, mount(8)
echo "-- image: mount -t fuse.ext4 IMG DIR, cp -a, umount, copy at once"
IMG=$work/disk.img
mkfs.ext4 -q -F "$IMG" 256M > /dev/null || { echo "FAIL mkfs.ext4"; exit 1; }
if mount -t fuse.ext4 "$IMG" "$MNT" 2> "$work/mount.err"; then pass "mount -t fuse.ext4 IMG DIR"
else cat "$work/mount.err"; echo "FAIL mount -t fuse.ext4 IMG DIR"; exit 1; fi
LOOP=$(losetup -j "$IMG" -O NAME -n | head -1)
fstype=$(mi_fstype "$MNT") source=$(mi_source "$MNT") super=$(mi_super "$MNT")
check "mountinfo fstype is fuseblk.ext4 (got $fstype)" [ "$fstype" = fuseblk.ext4 ]
check "a loop device backs the image ($LOOP)" [ -n "$LOOP" ]
check "mountinfo source is that loop device (got $source)" [ "$source" = "$LOOP" ]
check "super options carry blksize=4096 ($super)" has_opt "$super" blksize=4096
SPID=$(server_of "$LOOP")
check "the server holds the loop device (pid ${SPID:-none})" [ -n "$SPID" ]
if cp -a "$SRC/." "$MNT/"; then pass "cp -a the tree onto the mount"; else fail "cp -a the tree onto the mount"; fi
t0=$(now_ms)
if umount "$MNT" 2> "$work/umount.err"; then pass "umount DIR ($(( $(now_ms) - t0 )) ms)"; else cat "$work/umount.err"; fail "umount DIR"; fi
loop_watch "$IMG" "$work/loop.gone"
# At once: nothing waits for the server beyond what umount itself did.
cp --sparse=always "$IMG" "$work/copy.img"
pass "copied the image $(( $(now_ms) - t0 )) ms after umount started"
wait "$WATCH"
gone=$(cat "$work/loop.gone")
check "the loop device is gone within 1 s of umount (${gone} ms)" within "$gone" 1000
check "no /sys/block/${LOOP#/dev/}/loop/backing_file left" [ ! -e "/sys/block/${LOOP#/dev/}/loop/backing_file" ]
check "the server exited" gone_within "${SPID:-0}" 50
fsck_clean "image copy" "$work/copy.img"
kernel_view "image copy" "$work/copy.img"
rm -f "$work/copy.img"

# ------------------------------------------------- block device, spawn mode direct
echo "-- bdev: fuservicemount /dev/loopN DIR -t fuse.ext4 (a loop device of the test's own)"
BIMG=$work/bdev.img
mkfs.ext4 -q -F "$BIMG" 256M > /dev/null || { echo "FAIL mkfs.ext4"; exit 1; }
TLOOP=$(losetup -f --show "$BIMG") || { echo "FAIL losetup"; exit 1; }
if /usr/bin/fuservicemount "$TLOOP" "$MNT" -t fuse.ext4 2> "$work/mount.err"; then pass "fuservicemount $TLOOP DIR -t fuse.ext4"
else cat "$work/mount.err"; echo "FAIL fuservicemount $TLOOP"; exit 1; fi
fstype=$(mi_fstype "$MNT") source=$(mi_source "$MNT")
check "mountinfo fstype is fuseblk.ext4 (got $fstype)" [ "$fstype" = fuseblk.ext4 ]
check "mountinfo source is $TLOOP (got $source)" [ "$source" = "$TLOOP" ]
check "no loop device of the helper's own (only $TLOOP backs the image)" [ "$(losetup -j "$BIMG" -O NAME -n)" = "$TLOOP" ]
SPID=$(server_of "$TLOOP")
check "the server holds $TLOOP (pid ${SPID:-none})" [ -n "$SPID" ]
excl() { python3 -c 'import os, sys
try:
    os.close(os.open(sys.argv[1], os.O_RDONLY | os.O_EXCL)); print("free")
except OSError as e:
    print(os.strerror(e.errno))' "$1"; }
ex=$(excl "$TLOOP")
check "while mounted, $TLOOP is held exclusively ($ex)" [ "$ex" != free ]
cp -a "$SRC/." "$MNT/" && pass "cp -a the tree onto the mount" || fail "cp -a the tree onto the mount"
t0=$(now_ms)
if umount "$MNT" 2> "$work/umount.err"; then pass "umount DIR ($(( $(now_ms) - t0 )) ms)"; else cat "$work/umount.err"; fail "umount DIR"; fi
cp --sparse=always "$BIMG" "$work/copy.img"
pass "copied the backing image $(( $(now_ms) - t0 )) ms after umount started"
fsck_clean "$TLOOP right after umount" "$TLOOP"
ex=$(excl "$TLOOP")
check "$TLOOP is free for an exclusive open ($ex)" [ "$ex" = free ]
check "the server exited" gone_within "${SPID:-0}" 50
check "$TLOOP is still attached (the helper leaves a device it did not make alone)" \
  [ "$(losetup -j "$BIMG" -O NAME -n)" = "$TLOOP" ]
fsck_clean "bdev copy" "$work/copy.img"
kernel_view "bdev copy" "$work/copy.img"
rm -f "$work/copy.img"
losetup -d "$TLOOP"; TLOOP=

# ---------------------------------------------------------------- umount -l
echo "-- lazy: umount -l with a process still on the mount"
LIMG=$work/lazy.img
mkfs.ext4 -q -F "$LIMG" 64M > /dev/null || { echo "FAIL mkfs.ext4"; exit 1; }
if mount -t fuse.ext4 "$LIMG" "$MNT" 2> "$work/mount.err"; then pass "mount -t fuse.ext4 IMG DIR"
else cat "$work/mount.err"; echo "FAIL mount (lazy)"; exit 1; fi
LOOP=$(losetup -j "$LIMG" -O NAME -n | head -1)
SPID=$(server_of "$LOOP")
echo "before" > "$MNT/before.txt"
mkfifo "$work/go"
# The holder's working directory keeps the superblock alive after umount -l.
( cd "$MNT" && read -r _ < "$work/go" && echo "written after umount -l" > after.txt && cd / ) &
HOLDER=$!
sleep 0.2
t0=$(now_ms)
umount -l "$MNT"; rc=$?
dt=$(( $(now_ms) - t0 ))
check "umount -l returns at once (exit $rc, ${dt} ms)" eval '[ "$rc" = 0 ] && [ "$dt" -lt 1000 ]'
check "the mount is gone from mountinfo" [ -z "$(mi "$MNT")" ]
sleep 1
check "a second later the server still serves the remaining reference (no DESTROY yet)" alive "${SPID:-0}"
check "and its loop device is still attached" [ -n "$(losetup -j "$LIMG" -O NAME -n)" ]
echo go > "$work/go"
wait "$HOLDER"; HOLDER=
# The holder's exit dropped the last reference: the kernel sent DESTROY and
# waited for the answer before that exit completed.
loop_watch "$LIMG" "$work/loop.gone"
cp --sparse=always "$LIMG" "$work/copy.img"
wait "$WATCH"
gone=$(cat "$work/loop.gone")
check "once the last reference is gone, the loop device goes within 1 s (${gone} ms)" within "$gone" 1000
check "and the server exits" gone_within "${SPID:-0}" 50
fsck_clean "lazy copy" "$work/copy.img"
check "the file written after umount -l is on disk" \
  [ "$(debugfs -R "cat /after.txt" "$work/copy.img" 2>/dev/null)" = "written after umount -l" ]
check "and the one written before" [ "$(debugfs -R "cat /before.txt" "$work/copy.img" 2>/dev/null)" = "before" ]

[ $fails -eq 0 ] || { echo "$fails check(s) failed"; exit 1; }
echo "all unmount durability checks passed"
