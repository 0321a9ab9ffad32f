#!/usr/bin/env bash
# Immutable and append-only inodes, with the kernel's ext4 as the oracle. The
# same steps run on our read-write mount (through fuservicemount) and on a
# kernel loop mount of a copy of the same image: chattr +a / +i on files and
# directories, then every kind of change (append, overwrite, truncate, chmod,
# chown, touch, utimes, setfattr, rm, ln, mv, creating in the directory), and
# chattr again. Each step's outcome (ok or the errno name) and lsattr must be
# the same on both; after unmount both images must be e2fsck clean.
# Exit: 0 pass, 77 skip (last line says why), anything else fails.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
export EXT4IOMAP_BUILD="${EXT4IOMAP_BUILD:-$repo/.build/debug}"
TOOLS="$repo/tests/tools"

skip() { echo "$1"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "iflags: needs root (loop and FUSE mounts)"
for c in python3 mkfs.ext4 e2fsck mount chattr lsattr setfattr xfs_io; do
  command -v "$c" >/dev/null || skip "iflags: $c not installed"
done

# shellcheck source=../tools/twin.sh
. "$TOOLS/twin.sh"
twin_init iflags
twin_mount 32M

# step NAME CMD...: one line, "NAME ok" or "NAME <error message tail>".
step() {
  local name=$1; shift
  local out
  if out=$("$@" 2>&1); then echo "$name ok"; else out=${out##*: }; echo "$name ${out%% while *}"; fi
}

steps() {  # steps DIR
  local d=$1/t
  mkdir "$d" "$d/adir" "$d/idir" || return 1
  for f in a i; do echo seed > "$d/$f"; done
  echo x > "$d/adir/old"; echo x > "$d/idir/old"
  chattr +a "$d/a" "$d/adir" && chattr +i "$d/i" "$d/idir" || return 1
  for f in a i; do
    step "$f-append" sh -c "echo more >> '$d/$f'"
    step "$f-overwrite" sh -c "echo new > '$d/$f'"
    step "$f-truncate" truncate -s 1 "$d/$f"
    step "$f-chmod" chmod 600 "$d/$f"
    step "$f-chown" chown 1:1 "$d/$f"
    step "$f-touch" touch "$d/$f"
    step "$f-utimes" touch -d @12345 "$d/$f"
    step "$f-setfattr" setfattr -n user.x -v 1 "$d/$f"
    step "$f-rm" rm -f "$d/$f"
    step "$f-ln" ln "$d/$f" "$d/$f.link"
    step "$f-mv" mv "$d/$f" "$d/$f.moved"
    step "$f-nodump" chattr +d "$d/$f"
  done
  for dd in adir idir; do
    step "$dd-create" touch "$d/$dd/new"
    step "$dd-mkdir" mkdir "$d/$dd/sub"
    step "$dd-rm" rm -f "$d/$dd/old"
    step "$dd-mv-in" mv "$d/$dd/old" "$d/$dd/renamed"
  done
  (cd "$d" && lsattr -d a i adir idir | awk '{print $2, $1}' && stat -c '%n %a %s' a i)
  chattr -a "$d/a" "$d/adir" && chattr -i "$d/i" "$d/idir"
  # Flags a directory passes on to what is made in it (ext4's inheritance,
  # narrowed by type), including DAX, which only the fsxattr view sets
  # (fstests generic/607).
  mkdir "$d/inh" && chattr +S +d +A +D "$d/inh" && xfs_io -c 'chattr +x' "$d/inh" || return 1
  touch "$d/inh/file"; mkdir "$d/inh/sub"
  (cd "$d/inh" && lsattr -d file sub | awk '{print "inherit", $2, $1}')
  (cd "$d/inh" && for f in file sub; do echo "inherit-fsx $f $(xfs_io -c lsattr "$f" | awk '{print $1}')"; done)
  # chattr changes ctime, and the very next stat sees it (fstests generic/277).
  echo c > "$d/c"
  local before after
  before=$(stat -c %z "$d/c")
  sleep 0.05
  chattr +A "$d/c"
  after=$(stat -c %z "$d/c")
  if [ "$after" != "$before" ]; then echo "chattr-ctime updated"; else echo "chattr-ctime unchanged"; fi
}

twin_compare steps
echo "$ours" | grep -q '^a-append ok' || fail "an append to an append-only file failed: $ours"
echo "$ours" | grep -q '^i-append Operation not permitted' || fail "an append to an immutable file succeeded: $ours"
echo "$ours" | grep -q '^chattr-ctime updated' || fail "stat right after chattr shows the old ctime: $ours"
twin_unmount_fsck
echo "$ours" | sed 's/^/    /'
echo "iflags: pass (outcomes equal to the kernel's ext4, fsck clean)"
