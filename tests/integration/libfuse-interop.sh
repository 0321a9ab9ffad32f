#!/usr/bin/env bash
# Interoperability with libfuse master's service mounts, both ways, with real
# mounts: libfuse is built from the source tarball in ../shared/thirdparty at
# test time (only util/fuservicemount3 and example/service_ll).
#
#  (a) libfuse's fuservicemount3 (a version-1 helper, no loop devices) mounts
#      through our ext4iomapd, socket-activated by systemd-socket-activate as
#      uid 65534: an ext4 image file read-only (tree compared with the one
#      mkfs.ext4 -d was given), the same file read-write (a file written, then
#      e2fsck -fn clean and debugfs reads it back), and a loop block device.
#      The server must ask for the file with OPEN (never BDEV: the helper would
#      print "Block device required") and serve it on the classic path.
#  (b) our fuservicemount mounts libfuse's service_ll example, socket-activated
#      at /run/filesystems/service_ll: its default socket mode (0220, group
#      writable) is refused first; service_ll names its mount source after its
#      subtype unless -o fsname= is given, and the helper never uses a server's
#      name, so both mounts show the command line's source; the file it serves
#      is read and written.
# After every mount: mountinfo (fstype, source, options), umount leaves nothing
# mounted, no loop device, and no server process behind its activator.
# Exit 0 pass, 77 skip (last line says why), anything else fail.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${EXT4IOMAP_BUILD:-$repo/.build/debug}

skip() { echo "skip: $*"; exit 77; }
fail() { echo "FAIL $*"; exit 1; }
ok() { echo "ok   $*"; }

[ "$(id -u)" -eq 0 ] || skip "needs root (FUSE mounts, loop devices)"
[ -x "$BUILD/fuservicemount" ] && [ -x "$BUILD/ext4iomapd" ] || skip "binaries not built in $BUILD"
[ -c /dev/fuse ] || skip "no /dev/fuse"
tarball=$(ls "$repo"/../shared/thirdparty/libfuse-master-*.tar.gz 2>/dev/null | sort | tail -1)
[ -n "$tarball" ] || skip "libfuse master source not present ($repo/../shared/thirdparty/libfuse-master-*.tar.gz)"
for c in meson ninja cc pkg-config systemd-socket-activate setpriv mkfs.ext4 e2fsck debugfs losetup findmnt; do
  command -v "$c" >/dev/null || skip "$c missing (scripts/setup.sh installs it)"
done
pkg-config --exists libsystemd || skip "libsystemd headers missing: libfuse builds fuservicemount3 only with them"
svcdir=/run/filesystems
[ -e "$svcdir/service_ll" ] && skip "$svcdir/service_ll exists: something else serves service_ll here"
if [ -e "$svcdir" ]; then
  [ -d "$svcdir" ] && [ ! -L "$svcdir" ] && [ "$(stat -c %u "$svcdir")" = 0 ] && [ $(( 0$(stat -c %a "$svcdir") & 022 )) = 0 ] \
    || skip "$svcdir is not a root-owned directory writable only by root ($(stat -c '%U %a' "$svcdir")); our helper would refuse it"
fi

work=$(mktemp -d /tmp/ext4iomap-libfuse.XXXXXX)
chmod 755 "$work"   # the servers run as uid 65534 from here
declare -a activators=() loops=()
made_svcdir=0
cleanup() {
  for m in "$work"/mnt-*; do
    [ -d "$m" ] || continue
    while mountpoint -q "$m"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || break; done
  done
  local p c i
  for p in "${activators[@]}"; do
    for c in $(pgrep -P "$p"); do kill -KILL "$c" 2>/dev/null; done
    # The activator reaps its servers; stop it only when they are gone.
    for i in $(seq 30); do [ -z "$(pgrep -P "$p")" ] && break; sleep 0.1; done
    kill "$p" 2>/dev/null
  done
  for p in "${activators[@]}"; do wait "$p" 2>/dev/null; done
  for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null; done
  for img in "$work"/*.img; do
    [ -e "$img" ] || continue
    for l in $(losetup -j "$img" -O NAME -n 2>/dev/null); do losetup -d "$l" 2>/dev/null; done
  done
  rm -f "$svcdir/service_ll"
  [ "$made_svcdir" = 1 ] && rmdir "$svcdir" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- libfuse master: fuservicemount3 and service_ll only ----
t0=$(date +%s)
mkdir "$work/src" "$work/sock"
tar -xzf "$tarball" -C "$work/src" || fail "cannot extract $tarball"
src=$(dirname "$(ls "$work"/src/*/meson.build | head -1)")
# The libfuse helper's socket directory is compiled in: point it into the
# scratch directory, so (a) needs no /run/filesystems/ext4 and cannot meet an
# installed ext4iomap.socket.
if ! meson setup "$work/build" "$src" -Dbuildtype=plain -Dexamples=true -Dutils=true -Dtests=false \
      -Denable-io-uring=false -Duseroot=false -Dinitscriptdir= -Dudevrulesdir="$work/udev" \
      -Dservice-socket-dir="$work/sock" > "$work/meson.log" 2>&1; then
  tail -30 "$work/meson.log"; fail "meson setup of $(basename "$tarball")"
fi
grep -q '^#define HAVE_SERVICEMOUNT' "$work/build/fuse_config.h" \
  || { grep -i "service" "$work/meson.log" | tail -5; fail "libfuse configured without service mounts"; }
if ! ninja -C "$work/build" util/fuservicemount3 example/service_ll > "$work/ninja.log" 2>&1; then
  tail -30 "$work/ninja.log"; fail "building fuservicemount3 and service_ll"
fi
lfhelper=$work/build/util/fuservicemount3
service_ll=$work/build/example/service_ll
ok "built libfuse $(basename "$tarball" .tar.gz): fuservicemount3, service_ll ($(( $(date +%s) - t0 ))s)"

# The servers run as uid 65534: give them copies under the scratch directory.
mkdir "$work/bin"
cp "$BUILD/ext4iomapd" "$work/bin/ext4iomapd"
chmod 755 "$work/bin/ext4iomapd"

# activate SOCKET LOG COMMAND...: one server per connection, as uid 65534
# without capabilities (what the units give), LISTEN_FDS=1 on fd 3.
activate() {
  local sock=$1 log=$2; shift 2
  systemd-socket-activate --seqpacket --accept -l "$sock" \
    setpriv --reuid 65534 --regid 65534 --clear-groups --inh-caps=-all --bounding-set=-all "$@" \
    > "$log" 2>&1 < /dev/null &
  activators+=($!)
  local i
  for i in $(seq 50); do [ -S "$sock" ] && return 0; sleep 0.1; done
  cat "$log"; fail "no socket at $sock"
}

# wait_served ACTIVATOR: the per-connection server has exited (10 s).
wait_served() {
  local i
  for i in $(seq 100); do [ -z "$(pgrep -P "$1")" ] && return 0; sleep 0.1; done
  return 1
}

# mnt_field MOUNTPOINT: "fstype source mount-options super-options" from mountinfo.
mnt_field() {
  awk -v m="$1" '$5 == m { for (i = 7; $i != "-"; i++); print $(i+1), $(i+2), $6, $(i+3) }' /proc/self/mountinfo
}

has_opt() { case ",$1," in *",$2,"*) return 0 ;; esac; return 1; }

# unmount_and_check MOUNTPOINT ACTIVATOR WHAT
unmount_and_check() {
  umount "$1" || fail "$3: umount"
  wait_served "$2" || fail "$3: the server is still running after umount: $(pgrep -a -P "$2")"
  [ -z "$(mnt_field "$1")" ] || fail "$3: still mounted after umount: $(mnt_field "$1")"
  ok "$3: umount leaves nothing mounted, the server exited"
}

# ================= (a) libfuse fuservicemount3 -> our ext4iomapd =================
echo "== (a) libfuse fuservicemount3 (protocol v1) -> ext4iomapd"
tree=$work/tree
mkdir -p "$tree/dir/sub" "$tree/empty-dir"
echo "hello through libfuse's helper" > "$tree/hello.txt"
: > "$tree/empty"
head -c 3000000 /dev/urandom > "$tree/dir/big.bin"
head -c 7000 /dev/urandom > "$tree/dir/sub/small.bin"
truncate -s 5M "$tree/dir/sparse"
printf 'middle' | dd of="$tree/dir/sparse" bs=1 seek=2000000 conv=notrunc status=none
ln -s hello.txt "$tree/link"
chmod 640 "$tree/dir/sub/small.bin"; chmod 711 "$tree/dir/sub"
img=$work/fs.img
mkfs.ext4 -q -F -d "$tree" "$img" 64M > /dev/null || fail "mkfs.ext4 -d"
# Names, types, modes, owners; sizes and link targets of non-directories.
listing() {
  (cd "$1" && find . -path ./lost+found -prune -o \( -type d -printf '%p %y %m %U %G\n' \) \
     -o -printf '%p %y %m %U %G %s %l\n' | LC_ALL=C sort)
}
listing "$tree" > "$work/tree.list"

mkdir "$work/mnt-a"
alog=$work/activator-ext4.log
activate "$work/sock/ext4" "$alog" "$work/bin/ext4iomapd" --service
act_a=${activators[-1]}

# lfmount SOURCE OPTS WHAT: mount with libfuse's helper; its stderr must be clean.
lfmount() {
  if ! timeout 60 "$lfhelper" "$1" "$work/mnt-a" -t fuse.ext4 -o "$2" 2> "$work/lf.err"; then
    cat "$work/lf.err"; tail -5 "$alog"; fail "$3: fuservicemount3 $1 -o $2"
  fi
  ! grep -q "Block device required" "$work/lf.err" || fail "$3: the server asked a v1 helper for a block device: $(cat "$work/lf.err")"
}

check_mount_a() {  # SOURCE ro|rw WHAT
  read -r fstype source mopts sopts <<< "$(mnt_field "$work/mnt-a")"
  [ "$fstype" = fuse.ext4 ] || fail "$3: fstype '$fstype'"
  [ "$source" = "$1" ] || fail "$3: source '$source', expected $1"
  has_opt "$mopts" "$2" && has_opt "$mopts" nosuid && has_opt "$mopts" nodev || fail "$3: mount options '$mopts'"
  has_opt "$sopts" default_permissions && has_opt "$sopts" allow_other || fail "$3: super options '$sopts'"
  ok "$3: mountinfo fuse.ext4 $source $mopts ($sopts)"
}

# Read-only, image file.
lfmount "$img" ro "image file, ro"
check_mount_a "$img" ro "image file, ro"
grep -q "protocol version 1 (no loop devices): opened with OPEN instead, serving the image file on the classic FUSE path" "$alog" \
  || { tail -5 "$alog"; fail "image file, ro: no fallback line in the server's log"; }
ok "image file, ro: the server logged the OPEN fallback (classic path)"
[ -z "$(losetup -j "$img" -O NAME -n)" ] || fail "image file, ro: a loop device was attached to the image"
listing "$work/mnt-a" > "$work/mnt.list"
diff "$work/tree.list" "$work/mnt.list" > "$work/list.diff" || { head -20 "$work/list.diff"; fail "image file, ro: names, types, modes, owners, sizes or link targets differ"; }
diff -r --no-dereference -x lost+found "$tree" "$work/mnt-a" > "$work/content.diff" || { head -20 "$work/content.diff"; fail "image file, ro: file contents differ"; }
ok "image file, ro: the tree equals the one given to mkfs.ext4 -d ($(wc -l < "$work/tree.list") entries)"
unmount_and_check "$work/mnt-a" "$act_a" "image file, ro"

# Read-write, image file.
lfmount "$img" rw "image file, rw"
check_mount_a "$img" rw "image file, rw"
head -c 500000 /dev/urandom > "$work/written.bin"
cp "$work/written.bin" "$work/mnt-a/dir/written.bin" || fail "image file, rw: write a file"
mkdir "$work/mnt-a/newdir" && echo "new" > "$work/mnt-a/newdir/new.txt" || fail "image file, rw: mkdir and create"
rm "$work/mnt-a/dir/sub/small.bin" || fail "image file, rw: unlink"
cmp -s "$work/written.bin" "$work/mnt-a/dir/written.bin" || fail "image file, rw: read back through the mount"
unmount_and_check "$work/mnt-a" "$act_a" "image file, rw"
e2fsck -fn "$img" > "$work/fsck.log" 2>&1 || { cat "$work/fsck.log"; fail "image file, rw: e2fsck -fn after umount"; }
ok "image file, rw: e2fsck -fn clean"
debugfs -R "dump /dir/written.bin $work/dumped.bin" "$img" > /dev/null 2>&1
cmp -s "$work/written.bin" "$work/dumped.bin" || fail "image file, rw: debugfs does not read the written file back"
[ "$(debugfs -R "cat /newdir/new.txt" "$img" 2>/dev/null)" = new ] || fail "image file, rw: debugfs: /newdir/new.txt"
debugfs -R "stat /dir/sub/small.bin" "$img" 2>&1 | grep -q "File not found" || fail "image file, rw: the unlinked file is still there"
ok "image file, rw: debugfs reads the written file and directory, the unlinked file is gone"

# Read-only, loop block device (the helper opens a block device; no fallback needed
# for the device itself, but a v1 helper still gets OPEN).
loop=$(losetup -f --show -r "$img") || fail "losetup"
loops+=("$loop")
lfmount "$loop" ro "loop device, ro"
check_mount_a "$loop" ro "loop device, ro"
grep -q "$loop: .*serving the block device" "$alog" || { tail -5 "$alog"; fail "loop device: the server did not serve the block device"; }
cmp -s "$work/written.bin" "$work/mnt-a/dir/written.bin" && [ "$(cat "$work/mnt-a/newdir/new.txt")" = new ] \
  || fail "loop device, ro: contents"
cmp -s "$tree/dir/big.bin" "$work/mnt-a/dir/big.bin" || fail "loop device, ro: dir/big.bin"
ok "loop device, ro: served the block device, contents read back"
unmount_and_check "$work/mnt-a" "$act_a" "loop device, ro"
losetup -d "$loop" || fail "losetup -d $loop"
loops=()
for i in $(seq 50); do [ -z "$(losetup -j "$img" -O NAME -n)" ] && break; sleep 0.1; done
[ -z "$(losetup -j "$img" -O NAME -n)" ] || fail "a loop device is left on the image: $(losetup -j "$img")"
ok "no loop device left on the image"
if grep -E " (error|critical) " "$alog"; then fail "the server logged errors"; fi

# ================= (b) our fuservicemount -> libfuse service_ll =================
echo "== (b) fuservicemount -> libfuse service_ll"
if [ ! -d "$svcdir" ]; then
  mkdir -m 755 "$svcdir" || fail "mkdir $svcdir"
  chown root:root "$svcdir"
  made_svcdir=1
fi
backing=$work/single.img
head -c 1048576 /dev/urandom > "$backing"
chmod 644 "$backing"
cp "$backing" "$work/single.orig"
mkdir "$work/mnt-b"
blog=$work/activator-service_ll.log
oldmask=$(umask); umask 077
activate "$svcdir/service_ll" "$blog" "$service_ll"
umask "$oldmask"
act_b=${activators[-1]}
ok "service_ll socket-activated at $svcdir/service_ll"

# libfuse's service_ll.socket uses SocketMode=0220 (its service-socket-perms
# default): group-writable, which our helper does not trust.
chmod 0220 "$svcdir/service_ll"
rc=0
timeout 60 "$BUILD/fuservicemount" "$backing" "$work/mnt-b" -t fuse.service_ll -o "fsname=$backing" 2> "$work/fsm.err" || rc=$?
[ "$rc" != 0 ] && grep -q "$svcdir/service_ll" "$work/fsm.err" \
  || { cat "$work/fsm.err"; fail "a group-writable service socket (0220) was used (exit $rc)"; }
[ -z "$(mnt_field "$work/mnt-b")" ] || fail "socket mode 0220: something is mounted"
ok "socket mode 0220 (libfuse's default) refused (exit $rc): $(head -1 "$work/fsm.err")"
chmod 0600 "$svcdir/service_ll"

# Without fsname, service_ll sends NAME "service_ll": the helper never uses a
# server's name, so the kernel's source is still the command line's.
if ! timeout 60 "$BUILD/fuservicemount" "$backing" "$work/mnt-b" -t fuse.service_ll 2> "$work/fsm.err"; then
  cat "$work/fsm.err"; tail -5 "$blog"; fail "fuservicemount -t fuse.service_ll (no fsname)"
fi
read -r fstype source mopts sopts <<< "$(mnt_field "$work/mnt-b")"
[ "$fstype" = fuse.service_ll ] && [ "$source" = "$backing" ] \
  || fail "service_ll without fsname: mountinfo $fstype $source (the server's NAME must not become the source)"
cmp -s "$work/single.orig" "$work/mnt-b/single_file" || fail "service_ll without fsname: single_file differs"
unmount_and_check "$work/mnt-b" "$act_b" "service_ll (no fsname)"
ok "service_ll without -o fsname: NAME 'service_ll' ignored, mountinfo source is $backing"

# With fsname=SOURCE: mounted, read and written.
if ! timeout 60 "$BUILD/fuservicemount" "$backing" "$work/mnt-b" -t fuse.service_ll -o "fsname=$backing" 2> "$work/fsm.err"; then
  cat "$work/fsm.err"; tail -5 "$blog"; fail "fuservicemount -t fuse.service_ll -o fsname=$backing"
fi
read -r fstype source mopts sopts <<< "$(mnt_field "$work/mnt-b")"
[ "$fstype" = fuse.service_ll ] && [ "$source" = "$backing" ] || fail "service_ll: mountinfo $fstype $source"
has_opt "$mopts" rw && has_opt "$mopts" nosuid && has_opt "$mopts" nodev || fail "service_ll: mount options '$mopts'"
has_opt "$sopts" default_permissions && has_opt "$sopts" allow_other || fail "service_ll: super options '$sopts'"
ok "service_ll: mountinfo fuse.service_ll $source $mopts ($sopts)"
[ "$(ls "$work/mnt-b")" = single_file ] || fail "service_ll serves: $(ls "$work/mnt-b")"
cmp -s "$work/single.orig" "$work/mnt-b/single_file" || fail "service_ll: single_file differs from the backing file"
ok "service_ll: single_file reads back the backing file (1 MiB)"
head -c 8192 /dev/urandom > "$work/patch.bin"
dd if="$work/patch.bin" of="$work/mnt-b/single_file" bs=4096 seek=16 conv=notrunc,fsync status=none \
  || fail "service_ll: write through the mount"
unmount_and_check "$work/mnt-b" "$act_b" "service_ll"
cmp -s <(dd if="$backing" bs=4096 skip=16 count=2 status=none) "$work/patch.bin" || fail "service_ll: the write did not reach the backing file"
cmp -s <(head -c 65536 "$backing") <(head -c 65536 "$work/single.orig") || fail "service_ll: bytes before the write changed"
ok "service_ll: the write reached the backing file at 64 KiB, nothing else changed before it"

# Stop the activators; nothing of ours may be left running.
for p in "${activators[@]}"; do kill "$p" 2>/dev/null; done
for p in "${activators[@]}"; do wait "$p" 2>/dev/null; done
for p in "${activators[@]}"; do
  [ ! -e "/proc/$p" ] || fail "activator $p still running"
done
activators=()
ok "activators stopped, no server process left"
echo "PASS libfuse interop: fuservicemount3 -> ext4iomapd (file ro/rw, loop), fuservicemount -> service_ll"
