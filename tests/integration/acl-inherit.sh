#!/usr/bin/env bash
# Default-ACL inheritance, with the kernel's ext4 as the oracle. The same steps
# run on our read-write mount (through fuservicemount) and on a kernel loop
# mount of a copy of the same image: directories with default ACLs (with and
# without named entries and a mask, nested, with setgid), then files, FIFOs and
# directories created in them under several umasks and modes. Every new inode's
# mode and access/default ACLs (getfacl -n) must be the same on both; after
# unmount both images must be e2fsck clean, and the kernel must read our image's
# ACLs back the same.
# Exit: 0 pass, 77 skip (last line says why), anything else fails.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
export EXT4IOMAP_BUILD="${EXT4IOMAP_BUILD:-$repo/.build/debug}"
TOOLS="$repo/tests/tools"

skip() { echo "$1"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "acl-inherit: needs root (loop and FUSE mounts)"
for c in python3 mkfs.ext4 e2fsck mount setfacl getfacl; do
  command -v "$c" >/dev/null || skip "acl-inherit: $c not installed"
done

# shellcheck source=../tools/twin.sh
. "$TOOLS/twin.sh"
twin_init acl-inherit
twin_mount 64M

# The workload, run in a subshell per mount (umask is per process).
work() {
  local m=$1
  (
    cd "$m" || exit 1
    mkdir plain named nomask sgid
    setfacl -d -m u::rwx,g::r-x,o::--- plain
    setfacl -d -m u::rwx,u:1234:rwx,g::rwx,g:99:r--,m::rwx,o::r-x named
    setfacl -d -m u::rw-,u:4321:r-x,g::r--,o::r-- nomask
    chown 0:99 sgid; chmod 2775 sgid
    setfacl -d -m u::rwx,g:77:rwx,g::r-x,o::r-x sgid
    for d in plain named nomask sgid; do
      for um in 022 077 000 027; do
        umask "$um"
        touch "$d/f$um"
        mkdir "$d/d$um"
        mkfifo -m 0666 "$d/p$um"
        python3 -c "import os,sys; os.close(os.open(sys.argv[1], os.O_CREAT|os.O_WRONLY, 0o640))" "$d/m$um"
        mkdir -m 0700 "$d/s$um"
      done
      umask 022
      mkdir "$d/d022/deeper"; touch "$d/d022/deeper/f"
    done
  ) || fail "workload on $m"
}
work "$AM"
work "$BM"

snapshot() {  # mode and ACLs of everything, in a stable order
  (cd "$1" && find . -mindepth 1 | LC_ALL=C sort | while read -r p; do
     printf '%s %s\n' "$p" "$(stat -c '%A %u %g' "$p")"
     getfacl -n -p --absolute-names "$p" 2>/dev/null | grep -v '^# file' | sed 's/^/    /'
   done)
}
snapshot "$AM" > "$WORK/a.txt"
snapshot "$BM" > "$WORK/b.txt"
if ! diff -u "$WORK/b.txt" "$WORK/a.txt" > "$WORK/diff.txt"; then
  head -60 "$WORK/diff.txt"
  fail "modes or ACLs differ from the kernel's ext4 (- kernel, + ours)"
fi
n=$(grep -c '^\./' "$WORK/a.txt")
echo "  $n inodes: modes and ACLs equal to the kernel's"
grep -q 'user:1234:rwx' "$WORK/a.txt" || fail "no inherited named entry seen: the test did not test"

twin_unmount_fsck
echo "  e2fsck -fn clean on both images"
# The kernel reads our image the same way.
twin_view_ours
snapshot "$AM" > "$WORK/a2.txt"
twin_view_done
diff -u "$WORK/b.txt" "$WORK/a2.txt" > "$WORK/diff2.txt" || { head -40 "$WORK/diff2.txt"; fail "the kernel reads our ACLs differently"; }
echo "acl-inherit: pass (default ACLs inherited as the kernel's ext4 does, fsck clean)"
