#!/usr/bin/env bash
# Set-user-ID and set-group-ID clearing, with the kernel's ext4 as the oracle
# (write, direct write, truncate, O_TRUNC, chown, fallocate, punch, zero range,
# ACLs).
# The server negotiates FUSE_HANDLE_KILLPRIV_V2 on the classic path, so it, not
# the kernel, clears the bits on write (FUSE_WRITE_KILL_SUIDGID), truncate and
# chown (FATTR_KILL_SUIDGID) and open(O_TRUNC) (FUSE_OPEN_KILL_SUIDGID), and
# setting an access ACL clears set-group-ID when the caller is not in the
# file's group (FUSE_SETXATTR_ACL_KILL_SGID, as posix_acl_update_mode). The
# same steps run on our mount (-o suid, through fuservicemount) and on a kernel
# loop mount of a copy of the image: a non-root writer appends, truncates and
# opens with O_TRUNC; root chowns and root writes (root keeps the bits on write,
# as CAP_FSETID does); a non-root owner sets ACLs on a file of another group and
# on one of its own group; a writer outside a setgid file's group (no group
# execute) writes and fallocates. Modes, owners and sizes must be the same on both, the
# kernel must read our image back the same, and both images must fsck clean.
# Exit: 0 pass, 77 skip (last line says why), anything else fails.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
export EXT4IOMAP_BUILD="${EXT4IOMAP_BUILD:-$repo/.build/debug}"
TOOLS="$repo/tests/tools"

skip() { echo "$1"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "killpriv: needs root (loop and FUSE mounts)"
for c in python3 mkfs.ext4 e2fsck mount setpriv truncate setfacl xfs_io; do
  command -v "$c" >/dev/null || skip "killpriv: $c not installed"
done
getent passwd nobody >/dev/null || skip "killpriv: no user nobody"
grp=$(id -gn nobody)

# shellcheck source=../tools/twin.sh
. "$TOOLS/twin.sh"
twin_init killpriv

steps() {  # steps DIR: the scenario; prints one line per file
  local d=$1/s
  mkdir "$d" && chmod 777 "$d" || return 1
  for f in append trunc otrunc chown rootw direct overwrite falloc fpunch fzero; do
    : > "$d/$f"; echo seed > "$d/$f"
    chown nobody:"$grp" "$d/$f"; chmod 6775 "$d/$f"
  done
  : > "$d/noxgrp"; chown nobody:"$grp" "$d/noxgrp"; chmod 2765 "$d/noxgrp"  # setgid without group-exec: kept
  : > "$d/plain"; chown nobody:"$grp" "$d/plain"; chmod 0644 "$d/plain"
  # setgid without group-exec, group root, which the writer is not in: the
  # kernel clears it (fstests generic/683-685)
  for f in noxgrp-out-w noxgrp-out-f; do : > "$d/$f"; chown nobody:root "$d/$f"; chmod 2766 "$d/$f"; done
  : > "$d/acl-other"; chown nobody:root "$d/acl-other"; chmod 2775 "$d/acl-other"  # owner not in group root
  : > "$d/acl-own"; chown nobody:"$grp" "$d/acl-own"; chmod 2775 "$d/acl-own"
  setpriv --reuid=nobody --regid="$grp" --clear-groups sh -c "
    echo more >> '$d/append'; truncate -s 2 '$d/trunc'; : > '$d/otrunc'
    echo y >> '$d/noxgrp'; echo z >> '$d/plain'
    echo w >> '$d/noxgrp-out-w'; xfs_io -c 'falloc 0 4096' '$d/noxgrp-out-f'
    stat -c %a '$d/direct' '$d/overwrite' >/dev/null  # the kernel caches the mode (fstests generic/355)
    dd if=/dev/zero of='$d/direct' bs=4096 count=1 oflag=direct conv=notrunc status=none
    printf x | dd of='$d/overwrite' conv=notrunc status=none
    xfs_io -c 'falloc 0 8192' '$d/falloc'; xfs_io -c 'fpunch 0 1' '$d/fpunch'; xfs_io -c 'fzero 0 1' '$d/fzero'
    stat -c '%n %a' '$d/direct' '$d/overwrite' '$d/falloc' '$d/fpunch' '$d/fzero' > '$d/.seen-by-writer'
    setfacl -m u:nobody:rwx '$d/acl-other' && setfacl -m u:nobody:rwx '$d/acl-own'" || return 1
  chown root "$d/chown"
  echo root >> "$d/rootw"
  (cd "$d" && stat -c '%n %a %U %G %s' *)
  sed "s|$d/||" "$d/.seen-by-writer" | sed 's/^/seen /'; rm -f "$d/.seen-by-writer"
}

twin_mount 32M suid
twin_compare steps
# The scenario must have exercised every clearing rule, or the comparison says little.
echo "$ours" | grep -q '^append 775 ' || fail "append by a non-root writer kept set-ID bits: $ours"
echo "$ours" | grep -q '^seen direct 775$' || fail "stat right after a direct write that cleared set-ID bits shows the old mode: $ours"
echo "$ours" | grep -q '^seen overwrite 775$' || fail "stat right after a write that cleared set-ID bits shows the old mode: $ours"
for f in falloc fpunch fzero; do
  echo "$ours" | grep -q "^seen $f 775\$" || fail "$f by a non-root owner kept set-ID bits, or stat saw a stale mode (fstests generic/683-685): $ours"
done
echo "$ours" | grep -q '^direct 775 ' || fail "a direct write by a non-root writer kept set-ID bits, or stat saw a stale mode: $ours"
echo "$ours" | grep -q '^overwrite 775 ' || fail "an overwrite by a non-root writer kept set-ID bits, or stat saw a stale mode: $ours"
echo "$ours" | grep -q '^rootw 6775 ' || fail "root's write cleared set-ID bits: $ours"
echo "$ours" | grep -q '^noxgrp 2765 ' || fail "setgid without group-exec was cleared: $ours"
echo "$ours" | grep -q '^noxgrp-out-w 766 ' || fail "a write by a caller outside the file's group kept setgid: $ours"
echo "$ours" | grep -q '^noxgrp-out-f 766 ' || fail "fallocate by a caller outside the file's group kept setgid: $ours"
echo "$ours" | grep -q '^acl-other 775 ' || fail "an ACL set by a non-member kept setgid: $ours"
echo "$ours" | grep -q '^acl-own 2775 ' || fail "an ACL set by a group member cleared setgid: $ours"
twin_unmount_fsck
twin_view_ours
back=$(cd "$AM/s" && stat -c '%n %a %U %G %s' *)
twin_view_done
[ "$back" = "$(echo "$ours" | grep -v '^seen ')" ] || fail "the kernel reads our image back differently"
echo "$ours" | sed 's/^/    /'
echo "killpriv: pass (modes equal to the kernel's ext4, fsck clean)"
