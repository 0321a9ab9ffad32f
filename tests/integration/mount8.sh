#!/usr/bin/env bash
# mount(8) and umount(8) end to end through the installed helper, without
# touching the real /usr: `make install` into a staging root, then, inside a
# private mount namespace, overlay the staged /usr/sbin (mount.fuse.ext*),
# /usr/bin (fuservicemount) and /usr/libexec (ext4iomapd) over the real ones and
# run the real mount -t fuse.ext4 / umount. The helper finds the server in
# /usr/libexec/ext4iomap as it would on an installed system (spawn mode).
# Exit 0 pass, 77 skip (last line says why), anything else fail.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${EXT4IOMAP_BUILD:-$repo/.build/debug}

if [ "${1:-}" != --inner ]; then
  [ "$(id -u)" -eq 0 ] || { echo "skip: needs root (mount namespaces, loop devices, FUSE)"; exit 77; }
  [ -x "$BUILD/fuservicemount" ] && [ -x "$BUILD/ext4iomapd" ] || { echo "skip: binaries not built in $BUILD"; exit 77; }
  command -v unshare >/dev/null || { echo "skip: unshare(1) missing"; exit 77; }
  grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || true
  grep -qw overlay /proc/filesystems || { echo "skip: no overlay file system"; exit 77; }
  [ -c /dev/fuse ] || { echo "skip: no /dev/fuse"; exit 77; }
  if [ -S /run/filesystems/ext4 ]; then
    echo "skip: /run/filesystems/ext4 exists, so the helper would use the systemd service instead of spawning"; exit 77
  fi
  work=$(mktemp -d /tmp/ext4iomap-mount8.XXXXXX)
  cleanup() {
    # The inner namespace unmounts on every path; this catches a killed inner shell.
    for img in "$work"/*.img; do
      for l in $(losetup -j "$img" -O NAME -n 2>/dev/null); do
        for p in /proc/[0-9]*; do
          for f in "$p"/fd/*; do [ "$(readlink "$f" 2>/dev/null)" = "$l" ] && kill -KILL "${p#/proc/}" 2>/dev/null; done
        done
        losetup -d "$l" 2>/dev/null
      done
    done
    rm -rf "$work"
  }
  trap cleanup EXIT
  trap 'exit 130' INT TERM

  echo "== make install DESTDIR=stage PREFIX=/usr (binaries from $BUILD)"
  if ! make -s -C "$repo" install SKIP_BUILD=1 BUILDDIR="$BUILD" DESTDIR="$work/stage" PREFIX=/usr > "$work/install.log" 2>&1; then
    cat "$work/install.log"; echo "FAIL make install"; exit 1
  fi
  expected="./usr/bin/fuservicemount
./usr/lib/systemd/system/ext4iomap.socket
./usr/lib/systemd/system/ext4iomap@.service
./usr/libexec/ext4iomap/ext4iomapd
./usr/sbin/mount.fuse.ext2 -> /usr/bin/fuservicemount
./usr/sbin/mount.fuse.ext3 -> /usr/bin/fuservicemount
./usr/sbin/mount.fuse.ext4 -> /usr/bin/fuservicemount
./usr/share/man/man8/ext4iomapd.8
./usr/share/man/man8/fuservicemount.8
./usr/share/man/man8/mount.fuse.ext2.8 -> fuservicemount.8
./usr/share/man/man8/mount.fuse.ext3.8 -> fuservicemount.8
./usr/share/man/man8/mount.fuse.ext4.8 -> fuservicemount.8"
  got=$(cd "$work/stage" && find . \( -type f -printf '%p\n' \) -o \( -type l -printf '%p -> %l\n' \) | sort)
  if [ "$got" != "$expected" ]; then
    echo "FAIL installed file list differs:"; diff <(echo "$expected") <(echo "$got"); exit 1
  fi
  echo "ok   installed file list (12 entries)"
  unit=$work/stage/usr/lib/systemd/system/ext4iomap@.service
  if grep -n '@[A-Z_]*@' "$unit"; then echo "FAIL unsubstituted placeholder in ext4iomap@.service"; exit 1; fi
  grep -qx 'ExecStart=/usr/libexec/ext4iomap/ext4iomapd --service' "$unit" || { echo "FAIL ExecStart in the installed unit"; grep ExecStart "$unit"; exit 1; }
  echo "ok   ExecStart=/usr/libexec/ext4iomap/ext4iomapd --service"
  for f in fuservicemount ext4iomapd; do
    man -l "$work/stage/usr/share/man/man8/$f.8" > /dev/null 2>"$work/man.err" && [ ! -s "$work/man.err" ] \
      || { cat "$work/man.err"; echo "FAIL man page $f.8 does not render cleanly"; exit 1; }
  done
  echo "ok   man pages render"
  if ! make -s -C "$repo" uninstall DESTDIR="$work/stage" PREFIX=/usr > "$work/uninstall.log" 2>&1; then
    cat "$work/uninstall.log"; echo "FAIL make uninstall"; exit 1
  fi
  left=$(cd "$work/stage" && find . \( -type f -o -type l \) | sort)
  [ -z "$left" ] || { echo "FAIL make uninstall left: $left"; exit 1; }
  echo "ok   make uninstall removes every file"
  make -s -C "$repo" install SKIP_BUILD=1 BUILDDIR="$BUILD" DESTDIR="$work/stage" PREFIX=/usr > "$work/install.log" 2>&1 \
    || { cat "$work/install.log"; echo "FAIL make install (again)"; exit 1; }

  unshare -m --propagation private bash "$0" --inner "$work"
  exit $?
fi

# ---- inside the private mount namespace --------------------------------------
work=$2
STAGE=$work/stage
MNT=$work/mnt
IMG=$work/good.img
BAD=$work/bad.img
fails=0
cleanup_inner() {
  if mountpoint -q "$MNT" 2>/dev/null; then umount "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null; fi
}
trap cleanup_inner EXIT
trap 'exit 130' INT TERM
pass() { echo "ok   $*"; }
fail() { echo "FAIL $*"; fails=$((fails + 1)); }
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }
absent() { ! grep -qs "$@"; }
server_of() {  # pid holding loop device $1
  local p f
  for p in /proc/[0-9]*; do
    for f in "$p"/fd/*; do [ "$(readlink "$f" 2>/dev/null)" = "$1" ] && { echo "${p#/proc/}"; return; }; done
  done
}

for d in sbin bin libexec; do
  mount -t overlay overlay -o "lowerdir=$STAGE/usr/$d:/usr/$d" "/usr/$d" || { echo "FAIL overlay on /usr/$d"; exit 1; }
done
check "mount.fuse.ext4 resolves to the staged helper" [ "$(readlink -f /usr/sbin/mount.fuse.ext4)" = /usr/bin/fuservicemount ]

mkdir -p "$work/tree/dir" "$MNT"
echo "mounted by mount(8)" > "$work/tree/dir/file.txt"
mkfs.ext4 -q -F -d "$work/tree" "$IMG" 16M || { echo "mkfs failed"; exit 1; }
head -c 4M /dev/zero > "$BAD"

# -- the good path
if mount -t fuse.ext4 -o ro "$IMG" "$MNT" 2>"$work/mount.err"; then pass "mount -t fuse.ext4 -o ro IMG DIR"
else cat "$work/mount.err"; echo "FAIL mount -t fuse.ext4 -o ro (exit $?)"; exit 1; fi
read -r fstype source opts <<<"$(findmnt -n -o FSTYPE,SOURCE,OPTIONS --mountpoint "$MNT")"
LOOP=$(losetup -j "$IMG" -O NAME -n | head -1)
check "a loop device backs the image ($LOOP)" [ -n "$LOOP" ]
# A block device source (here the helper's loop device) is mounted fuseblk:
# the kernel then waits for the server at umount (umount-durable.sh).
check "findmnt: fstype fuseblk.ext4 ($fstype)" [ "$fstype" = fuseblk.ext4 ]
check "findmnt: source is the loop device over the image ($source)" [ "$source" = "${LOOP:-none}" ]
check "findmnt: read-only ($opts)" [ "${opts%%,*}" = ro ]
# mount(8) names an auto-clearing loop device by its backing file.
check "mount(8) lists it" grep -qF "$IMG on $MNT type fuseblk.ext4 (ro," <(mount)
check "the loop device is read-only (RO=$(losetup -n -O RO "$LOOP" | tr -d ' '))" [ "$(losetup -n -O RO "$LOOP" | tr -d ' ')" = 1 ]
SPID=$(server_of "$LOOP")
# The same file, not the same name: the server's root is emptied after HELLO,
# so from outside its executable is named relative to a detached mount.
check "the server is the installed /usr/libexec/ext4iomap/ext4iomapd" \
  [ "$(stat -L -c %d:%i /proc/$SPID/exe)" = "$(stat -c %d:%i /usr/libexec/ext4iomap/ext4iomapd)" ]
check "the server is not root" [ "$(stat -c %u /proc/$SPID)" != 0 ]
check "file content" [ "$(cat "$MNT/dir/file.txt")" = "mounted by mount(8)" ]
if umount "$MNT" 2>"$work/umount.err"; then pass "umount DIR"; else cat "$work/umount.err"; fail "umount DIR"; fi
check "no longer mounted" [ -z "$(findmnt -n --mountpoint "$MNT")" ]
check "no utab entry" absent "TARGET=$MNT " /run/mount/utab
for _ in $(seq 50); do [ -d /proc/$SPID ] || break; sleep 0.1; done
check "server exited" [ ! -d /proc/$SPID ]
for _ in $(seq 50); do [ -z "$(losetup -j "$IMG" -O NAME -n)" ] && break; sleep 0.1; done
check "loop device released" [ -z "$(losetup -j "$IMG" -O NAME -n)" ]

# -- refusals: mount(8) exit code 32 and a message that says why
refused() {  # what, expected-exit-codes-regex, expected-reason-regex, mount args...
  local what=$1 codes=$2 why=$3; shift 3
  mount "$@" 2>"$work/err"
  local rc=$?
  local lines; lines=$(grep -c . "$work/err")
  if [[ $rc =~ ^($codes)$ ]] && grep -qE "$why" "$work/err" && [ "$lines" -le 2 ]; then
    pass "$what: exit $rc, \"$(grep -E "$why" "$work/err" | head -1)\""
  else
    fail "$what: exit $rc (want $codes), $lines line(s), want /$why/:"; sed 's/^/     /' "$work/err"
  fi
  check "$what: nothing mounted" [ -z "$(findmnt -n --mountpoint "$MNT")" ]
}
refused "not an ext4 image" 32 "not a valid ext2/3/4 file system" -t fuse.ext4 -o ro "$BAD" "$MNT"
refused "iomap=1 on a kernel without FUSE iomap" 32 "does not offer FUSE iomap" -t fuse.ext4 -o ro,iomap=1 "$IMG" "$MNT"

# -- read-write: the default, as for any mount(8) file system
if mount -t fuse.ext4 "$IMG" "$MNT" 2>"$work/mount.err"; then pass "mount -t fuse.ext4 IMG DIR (read-write)"
else cat "$work/mount.err"; fail "read-write mount"; fi
opts=$(findmnt -n -o OPTIONS --mountpoint "$MNT")
check "findmnt: read-write ($opts)" [ "${opts%%,*}" = rw ]
LOOP=$(losetup -j "$IMG" -O NAME -n | head -1)
check "the loop device is writable (RO=$(losetup -n -O RO "$LOOP" | tr -d ' '))" [ "$(losetup -n -O RO "$LOOP" | tr -d ' ')" = 0 ]
SPID=$(server_of "$LOOP")
echo "written through mount(8)" > "$MNT/dir/new.txt"
check "write and read back" [ "$(cat "$MNT/dir/new.txt")" = "written through mount(8)" ]
# -- remount: ro and back to rw, through the helper (mount -t given, as fstests
# does) and through libmount alone (no type); the same server keeps serving
if mount -t fuse.ext4 -o remount,ro "$IMG" "$MNT" 2>"$work/remount.err"; then pass "mount -t fuse.ext4 -o remount,ro IMG DIR"
else cat "$work/remount.err"; fail "mount -t fuse.ext4 -o remount,ro IMG DIR"; fi
opts=$(findmnt -n -o OPTIONS --mountpoint "$MNT")
check "findmnt after remount,ro: ro ($opts)" [ "${opts%%,*}" = ro ]
check "the same server still serves it" [ "$(server_of "$LOOP")" = "$SPID" ]
check "remount,ro: a write is refused" bash -c "! touch '$MNT/dir/after-ro' 2>/dev/null"
check "remount,ro: reads work" [ "$(cat "$MNT/dir/new.txt")" = "written through mount(8)" ]
if mount -t fuse.ext4 -o remount,rw,noexec "$IMG" "$MNT" 2>"$work/remount.err"; then pass "mount -t fuse.ext4 -o remount,rw,noexec"
else cat "$work/remount.err"; fail "mount -t fuse.ext4 -o remount,rw,noexec"; fi
opts=$(findmnt -n -o OPTIONS --mountpoint "$MNT")
check "findmnt after remount,rw,noexec: rw and noexec, still nosuid,nodev ($opts)" \
  bash -c "[ '${opts%%,*}' = rw ] && [[ ',$opts,' == *,noexec,* ]] && [[ ',$opts,' == *,nosuid,nodev,* ]]"
if mount -o remount,ro "$MNT" 2>"$work/remount.err" && mount -o remount,rw "$MNT" 2>>"$work/remount.err"; then pass "mount -o remount,ro then rw DIR (libmount alone)"
else cat "$work/remount.err"; fail "mount -o remount,ro then rw DIR"; fi
check "the same server still serves it" [ "$(server_of "$LOOP")" = "$SPID" ]
opts=$(findmnt -n -o OPTIONS --mountpoint "$MNT")
check "findmnt after remount,rw: rw ($opts)" [ "${opts%%,*}" = rw ]
# -- the same image mounted twice: one server, one file system, two mount points
MNT2="$work/mnt2"; mkdir -p "$MNT2"
mount --make-shared "$MNT" || fail "mount --make-shared DIR"
if mount -t fuse.ext4 "$IMG" "$MNT2" 2>"$work/mount2.err"; then pass "mount -t fuse.ext4 IMG DIR2 while mounted at DIR"
else cat "$work/mount2.err"; fail "second mount of the image"; fi
check "DIR2 is fuseblk.ext4 on the same loop device" [ "$(findmnt -n -o SOURCE,FSTYPE --mountpoint "$MNT2" | tr -s ' ')" = "$LOOP fuseblk.ext4" ]
check "no second server" [ "$(for p in /proc/[0-9]*; do for f in "$p"/fd/*; do [ "$(readlink "$f" 2>/dev/null)" = "$LOOP" ] && echo "${p#/proc/}"; done; done | sort -u | wc -l)" = 1 ]
echo "through DIR2" > "$MNT2/dir/two.txt"
check "a file written through DIR2 is seen through DIR" [ "$(cat "$MNT/dir/two.txt")" = "through DIR2" ]
# A mount of its own, as the kernel's second mount is: not a peer of DIR
# (DIR is shared here), so what is mounted under one does not appear under
# the other (fstests generic/409-411).
check "DIR is shared, DIR2 has no peer group" bash -c "findmnt -n -o PROPAGATION --mountpoint '$MNT' | grep -qw shared && ! findmnt -n -o PROPAGATION --mountpoint '$MNT2' | grep -qw shared"
mount -t tmpfs -o size=1M ext4iomap-probe "$MNT2/dir" || fail "tmpfs under DIR2"
check "a mount under DIR2 does not propagate to DIR" [ "$(findmnt -n -o FSTYPE --mountpoint "$MNT/dir")" = "" ]
umount "$MNT2/dir"
umount "$MNT2" && pass "umount DIR2" || fail "umount DIR2"
check "DIR still serves after DIR2 is gone" [ "$(cat "$MNT/dir/two.txt")" = "through DIR2" ]
if mount -t fuse.ext4 -o ro "$IMG" "$MNT2" 2>"$work/mount2.err"; then pass "mount -o ro IMG DIR2 while mounted read-write at DIR"
else cat "$work/mount2.err"; fail "second, read-only mount of the image"; fi
check "DIR2 refuses writes, DIR takes them" bash -c "! touch '$MNT2/dir/no' 2>/dev/null && touch '$MNT/dir/yes'"
umount "$MNT2" || fail "umount DIR2 (ro)"
echo "after remount" > "$MNT/dir/after-rw.txt"
check "remount,rw: writes work again" [ "$(cat "$MNT/dir/after-rw.txt")" = "after remount" ]
if umount "$MNT" 2>"$work/umount.err"; then pass "umount DIR (read-write)"; else cat "$work/umount.err"; fail "umount DIR (read-write)"; fi
for _ in $(seq 100); do [ -n "$SPID" ] && [ -d /proc/$SPID ] || break; sleep 0.1; done
for _ in $(seq 50); do [ -z "$(losetup -j "$IMG" -O NAME -n)" ] && break; sleep 0.1; done
check "e2fsck -fn clean after the read-write mount" e2fsck -fn "$IMG"
check "the file is on disk (debugfs)" grep -q "written through mount(8)" <(debugfs -R "cat /dir/new.txt" "$IMG" 2>/dev/null)
check "the file written after remount,rw is on disk" grep -q "after remount" <(debugfs -R "cat /dir/after-rw.txt" "$IMG" 2>/dev/null)
# A missing source is a mount failure (32), as mount(8) reports it.
refused "missing source" "32" "$work/missing.img" -t fuse.ext4 -o ro "$work/missing.img" "$MNT"
sleep 0.5
check "no loop device left for the bad image" [ -z "$(losetup -j "$BAD" -O NAME -n)" ]
check "no loop device left for the image" [ -z "$(losetup -j "$IMG" -O NAME -n)" ]

[ $fails -eq 0 ] || { echo "$fails check(s) failed"; exit 1; }
echo "all mount(8) checks passed"
