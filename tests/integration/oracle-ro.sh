#!/usr/bin/env bash
# Oracle test, read side: images built at test time (mkfs.ext4 -d from generated
# trees, plus debugfs edits and, for one variant, files laid out by the kernel
# itself) are walked once through the kernel's own ext4 (mount -t ext4 -o ro,loop)
# and once through ext4iomapd, and the two walks must be identical: names, types,
# modes, inode numbers, owners, sizes, link counts, st_blocks, rdev, all four
# timestamps to the nanosecond, xattrs of every namespace (ACLs included),
# symlink targets, the SHA-256 of every file, the SEEK_DATA/SEEK_HOLE layout,
# FS_IOC_GETFLAGS/FS_IOC_FSGETXATTR and statvfs (tests/tools/treecompare.py).
#
# Most variants go through the product path (fuservicemount, which spawns a
# sandboxed ext4iomapd); the csum64 variant runs ext4iomapd standalone.
# The two walks run one after the other: the product path refuses an image that
# a loop device (here: the kernel's mount) already holds.
#
# Usage: tests/integration/oracle-ro.sh [VARIANT...]   (default: all)
# Exit: 0 all identical, 77 skipped (last line says why), 1 any difference.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${EXT4IOMAP_BUILD:-$repo/.build/debug}
TOOLS=$repo/tests/tools
HELPER=$BUILD/fuservicemount
SERVER=$BUILD/ext4iomapd

skip() { echo "oracle-ro: skipped: $*"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "needs root (loop devices, kernel and FUSE mounts, mknod)"
for t in mkfs.ext4 debugfs e2fsck setfacl losetup python3 findmnt; do
  command -v "$t" >/dev/null || skip "$t is not installed"
done
[ -c /dev/fuse ] || skip "no /dev/fuse"
grep -qw ext4 /proc/filesystems || modprobe ext4 2>/dev/null || skip "the kernel has no ext4 driver (the oracle)"
grep -qw ext4 /proc/filesystems || skip "the kernel has no ext4 driver (the oracle)"
[ -x "$HELPER" ] && [ -x "$SERVER" ] || { echo "oracle-ro: FAIL: $HELPER or $SERVER not built"; exit 1; }

WORK=$(mktemp -d /tmp/oracle-ro.XXXXXX)
STANDALONE_PID=""
cleanup() {
  local m
  # Deepest mounts first.
  for m in $(findmnt -rn -o TARGET | grep "^$WORK/" | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  if [ -n "$STANDALONE_PID" ] && kill -0 "$STANDALONE_PID" 2>/dev/null; then
    kill "$STANDALONE_PID" 2>/dev/null; sleep 0.5; kill -9 "$STANDALONE_PID" 2>/dev/null || true
  fi
  for f in "$WORK"/*/*.img; do
    [ -e "$f" ] && losetup -j "$f" 2>/dev/null | cut -d: -f1 | while read -r l; do losetup -d "$l" 2>/dev/null; done
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fails=0
declare -a SUMMARY=()
START=$(date +%s)

# The ext4iomapd that serves IMG through a loop device fuservicemount attached.
server_pid_for() {
  local img=$1 loops l p fd
  loops=$(losetup -j "$img" | cut -d: -f1)
  [ -n "$loops" ] || return 1
  for p in /proc/[0-9]*; do
    [ "$(cat "$p/comm" 2>/dev/null)" = ext4iomapd ] || continue
    for fd in "$p"/fd/*; do
      l=$(readlink "$fd" 2>/dev/null) || continue
      for x in $loops $img; do
        [ "$l" = "$x" ] && { echo "${p#/proc/}"; return 0; }
      done
    done
  done
  return 1
}

# After umount the loop device's autoclear release runs asynchronously; the
# product path refuses an image that a loop device still holds.
detach_wait() {  # image
  local i
  for ((i = 0; i < 100; i++)); do
    [ -z "$(losetup -j "$1" 2>/dev/null)" ] && return 0
    losetup -j "$1" | cut -d: -f1 | while read -r l; do losetup -d "$l" 2>/dev/null; done
    sleep 0.1
  done
  echo "oracle-ro: a loop device still holds $1"; return 1
}

# Alive = exists and is not a zombie (a product-path server lives in its own PID
# namespace, is reparented when fuservicemount exits and may be reaped late).
alive() {
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}

wait_gone() {  # pid seconds
  local i
  for ((i = 0; i < $2 * 10; i++)); do alive "$1" || return 0; sleep 0.1; done
  return 1
}

# compare NAME MODE: IMG is $W/$NAME.img; MODE is product or standalone.
compare() {
  local name=$1 mode=$2 W=$WORK/$1 t0 rc pid status
  local img=$W/$name.img
  t0=$(date +%s)
  mkdir -p "$W/kernel" "$W/served"
  if ! e2fsck -fn "$img" > "$W/e2fsck.log" 2>&1; then
    echo "FAIL $name: the generated image is not clean (test bug?):"; tail -20 "$W/e2fsck.log"
    SUMMARY+=("FAIL $name (image not clean)"); fails=$((fails + 1)); return
  fi
  # 1. The oracle.
  if ! mount -t ext4 -o ro,loop "$img" "$W/kernel" 2> "$W/kmount.log"; then
    echo "FAIL $name: the kernel's ext4 cannot mount the image: $(cat "$W/kmount.log")"
    SUMMARY+=("FAIL $name (kernel mount)"); fails=$((fails + 1)); return
  fi
  timeout 300 python3 "$TOOLS/treecompare.py" snapshot "$W/kernel" "$W/kernel.json" > "$W/kwalk.log" 2>&1
  rc=$?
  umount "$W/kernel" || umount -l "$W/kernel"
  detach_wait "$img"
  if [ $rc -ne 0 ]; then
    echo "FAIL $name: walking the kernel's mount failed:"; tail -5 "$W/kwalk.log"
    SUMMARY+=("FAIL $name (kernel walk)"); fails=$((fails + 1)); return
  fi
  # 2. ext4iomapd.
  if [ "$mode" = product ]; then
    if ! "$HELPER" "$img" "$W/served" -t fuse.ext4 -o ro 2> "$W/server.log"; then
      echo "FAIL $name: fuservicemount failed:"; tail -5 "$W/server.log"
      SUMMARY+=("FAIL $name (mount)"); fails=$((fails + 1)); return
    fi
    pid=$(server_pid_for "$img") || pid=""
  else
    "$SERVER" --device "$img" --mountpoint "$W/served" -o ro 2> "$W/server.log" &
    pid=$!
    STANDALONE_PID=$pid
    for ((i = 0; i < 100; i++)); do
      findmnt -rn "$W/served" > /dev/null && break
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if ! findmnt -rn "$W/served" > /dev/null; then
      echo "FAIL $name: ext4iomapd did not mount:"; tail -5 "$W/server.log"
      SUMMARY+=("FAIL $name (standalone mount)"); fails=$((fails + 1)); return
    fi
  fi
  timeout 300 python3 "$TOOLS/treecompare.py" snapshot "$W/served" "$W/served.json" > "$W/fwalk.log" 2>&1
  rc=$?
  local alive=yes
  if [ -n "$pid" ] && ! alive "$pid"; then alive=no; fi
  umount "$W/served" 2>/dev/null || umount -l "$W/served"
  local problems=""
  [ $rc -eq 0 ] || problems+=" walk-failed(rc=$rc: $(tail -1 "$W/fwalk.log"))"
  [ "$alive" = yes ] || problems+=" server-died-during-walk"
  [ -n "$pid" ] || problems+=" server-pid-not-found"
  if [ -n "$pid" ]; then
    if ! wait_gone "$pid" 10; then
      problems+=" server-still-running-10s-after-umount"
      kill -9 "$pid" 2>/dev/null
    fi
    if [ "$mode" = standalone ]; then
      wait "$pid"; status=$?
      STANDALONE_PID=""
      [ $status -eq 0 ] || problems+=" ext4iomapd-exit-status-$status"
    fi
  fi
  for ((i = 0; i < 50; i++)); do [ -z "$(losetup -j "$img")" ] && break; sleep 0.1; done
  if [ -n "$(losetup -j "$img")" ]; then
    problems+=" loop-device-left-attached-5s-after-umount"
    detach_wait "$img" > /dev/null
  fi
  # 3. Compare. statx.attributes: FUSE (ABI 7.45) does not pass the server's
  # STATX attributes (immutable/append/nodump) on to statx(2); the server's
  # reply is checked by Tests/Ext4ServerTests instead.
  if [ $rc -eq 0 ]; then
    python3 "$TOOLS/treecompare.py" diff "$W/kernel.json" "$W/served.json" --ignore statx.attributes > "$W/diff.log" 2>&1
    rc=$?
  fi
  local dt=$(( $(date +%s) - t0 ))
  if [ $rc -eq 0 ] && [ -z "$problems" ]; then
    echo "PASS $name ($mode, ${dt}s): $(tail -1 "$W/diff.log")"
    SUMMARY+=("PASS $name")
  else
    echo "FAIL $name ($mode, ${dt}s):$problems"
    [ -s "$W/diff.log" ] && cat "$W/diff.log"
    echo "  server log (last lines):"; tail -5 "$W/server.log" | sed 's/^/    /'
    SUMMARY+=("FAIL $name")
    fails=$((fails + 1))
  fi
}

gen() { python3 "$TOOLS/gentree.py" "$@"; }

# mkimage NAME SIZE PROFILE GENARGS -- MKFSARGS: tree, mkfs -d, debugfs edits.
mkimage() {
  local name=$1 size=$2 profile=$3; shift 3
  local gargs=() W=$WORK/$name
  while [ $# -gt 0 ] && [ "$1" != -- ]; do gargs+=("$1"); shift; done
  shift
  mkdir -p "$W"
  gen "$profile" "$W/tree" --post "$W/post.debugfs" "${gargs[@]}" || return 1
  mkfs.ext4 -q -F "$@" -d "$W/tree" "$W/$name.img" "$size" || return 1
  postedit "$W/$name.img" "$W/post.debugfs"
}

postedit() {
  [ -s "$2" ] || return 0
  debugfs -w -f "$2" "$1" > /dev/null 2> "$1.debugfs.log"
  if grep -v '^debugfs [0-9]' "$1.debugfs.log" | grep -q .; then
    echo "oracle-ro: debugfs edits failed:"; cat "$1.debugfs.log"; return 1
  fi
}

want() {  # variant selected on the command line (or all)
  [ ${#SELECTED[@]} -eq 0 ] && return 0
  local v; for v in "${SELECTED[@]}"; do [ "$v" = "$1" ] && return 0; done; return 1
}
SELECTED=("$@")

run_variant() {  # NAME MODE BUILDER...
  local name=$1 mode=$2; shift 2
  want "$name" || return 0
  if ! "$@" > "$WORK/$name.build.log" 2>&1; then
    echo "FAIL $name: building the image failed:"; tail -15 "$WORK/$name.build.log"
    SUMMARY+=("FAIL $name (image build)"); fails=$((fails + 1)); return
  fi
  compare "$name" "$mode"
}

# --- variants --------------------------------------------------------------

v_default()   { mkimage default 256M full --large-mb 40 -- -b 4096; }
v_1k()        { mkimage 1k 96M full --blocksize 1024 --large-mb 6 -- -b 1024; }
v_csum64()    { mkimage csum64 64M full -- -b 4096 -O 64bit,metadata_csum; }
# e2fsck -D indexes every directory of more than one block (htree made by e2fsprogs).
v_nocsum()    { mkimage nocsum 64M full -- -b 4096 -O ^64bit,^metadata_csum,uninit_bg &&
                { e2fsck -fyD "$WORK/nocsum/nocsum.img"; [ $? -le 1 ]; }; }
v_inode128()  { mkimage inode128 64M full --no-extra -- -b 4096 -I 128; }
v_inline()    { mkimage inline 32M inline -- -b 4096 -O inline_data -I 256; }
v_inline1k()  { mkimage inline1k 32M inline -- -b 1024 -O inline_data,^metadata_csum -I 512; }
v_ext2()      { mkimage ext2 128M blockmap --blocksize 1024 --no-extents -- -t ext2 -b 1024; }
v_ext3()      { mkimage ext3 96M full --no-extents --large-mb 12 -- -t ext3 -b 4096; }

# Values larger than a block can only come from a source tree on a file system
# that accepts them: a kernel ext4 mount with ea_inode.
v_eainode() {
  local W=$WORK/eainode
  mkdir -p "$W/stage"
  mkfs.ext4 -q -F -b 4096 -O ea_inode "$W/stage.img" 64M || return 1
  mount -o loop "$W/stage.img" "$W/stage" || return 1
  gen ea "$W/stage/tree" && mkfs.ext4 -q -F -b 4096 -O ea_inode -d "$W/stage/tree" "$W/eainode.img" 64M
  local rc=$?
  umount "$W/stage"
  detach_wait "$W/stage.img"
  [ $rc -eq 0 ] || return 1
  # mke2fs 1.47.0 -d leaves the owners' i_blocks without their EA inodes' blocks
  # (e2fsck: "i_blocks is 8, should be 32"); let e2fsck settle it, as the kernel would count it.
  e2fsck -fy "$W/eainode.img" > "$W/e2fsck-fix.log" 2>&1
  [ $? -le 1 ]
}

# A small mkfs -d tree, then the kernel (read-write) adds a directory of more
# than 50,000 entries (the kernel builds the htree: 1 KiB blocks give two
# index levels), unwritten extents, punched holes and blocks past EOF.
kernel_made() {  # NAME MKFSARGS...
  local name=$1; shift
  local W=$WORK/$name
  mkdir -p "$W/rw"
  gen small "$W/tree" || return 1
  mkfs.ext4 -q -F "$@" -N 60000 -d "$W/tree" "$W/$name.img" 96M || return 1
  mount -t ext4 -o loop "$W/$name.img" "$W/rw" || return 1
  gen kernel "$W/rw" --entries 50500
  local rc=$?
  umount "$W/rw"
  detach_wait "$W/$name.img"
  [ $rc -eq 0 ] || return 1
  debugfs -R "htree /big" "$W/$name.img" 2>/dev/null | grep -q "Indirect levels: 1" ||
    { echo "the 50,000-entry directory is not a two-level htree"; return 1; }
}
v_htree()       { kernel_made htree -b 1024; }
v_htreenocsum() { kernel_made htreenocsum -b 1024 -O ^metadata_csum,^64bit; }

run_variant default  product    v_default
run_variant csum64   standalone v_csum64
run_variant nocsum   product    v_nocsum
run_variant 1k       product    v_1k
run_variant inode128 product    v_inode128
run_variant inline   product    v_inline
run_variant inline1k product    v_inline1k
run_variant ext2     product    v_ext2
run_variant ext3     product    v_ext3
run_variant eainode  product    v_eainode
run_variant htree    product    v_htree
run_variant htreenocsum product v_htreenocsum

echo "== oracle-ro: $(( $(date +%s) - START ))s"
printf '%s\n' "${SUMMARY[@]}"
if [ $fails -ne 0 ]; then
  echo "oracle-ro: $fails variant(s) differ from the kernel's ext4"
  exit 1
fi
echo "oracle-ro: all variants identical to the kernel's ext4"
exit 0
