# Sourced by integration scripts that compare our read-write mount with the
# kernel's ext4 on a copy of the same image (acl-inherit.sh, killpriv.sh, iflags.sh).
# Needs TOOLS set. Defines WORK, A/B (our image, the kernel's copy), AM/BM
# (their mount points), fail(), and a trap that unmounts, detaches and removes
# everything on every path.
#
#   twin_init NAME              scratch directory, trap, fail() prefixed NAME
#   twin_mount SIZE [OPTS]      mkfs A, copy it to B, mount ours (OPTS) on AM
#                               and the kernel's on BM
#   twin_compare CMD...         run CMD DIR on our mount and on the kernel's; the
#                               outputs ($ours, $theirs) must be equal
#   twin_unmount_fsck           unmount both, e2fsck -fn both must be clean
#   twin_view_ours / twin_view_done
#                               the kernel mounts our image read-only on AM

twin_init() {
  TWIN_NAME=$1
  WORK=$(mktemp -d "/tmp/$1.XXXXXX")
  chmod 755 "$WORK"  # tests that switch to an unprivileged user reach into it
  A="$WORK/a.img" B="$WORK/b.img"
  AM="$WORK/a" BM="$WORK/b"
  mkdir -p "$AM" "$BM"
  trap twin_cleanup EXIT
  trap 'exit 130' INT TERM
}

twin_cleanup() {
  python3 "$TOOLS/fstarget.py" cleanup --image "$A" --image "$B" "$AM" "$BM" 2>/dev/null
  rm -rf "$WORK"
}

fail() { echo "$TWIN_NAME: FAIL: $*"; exit 1; }

twin_mount() {
  local size=$1 opts=${2:-}
  mkfs.ext4 -q -F "$A" "$size" || fail "mkfs"
  cp --sparse=always "$A" "$B"
  python3 "$TOOLS/fstarget.py" mount ext4iomap "$A" "$AM" ${opts:+-o "$opts"} --log "$WORK/server.log" \
      > "$WORK/mount.out" 2>&1 || { cat "$WORK/mount.out"; fail "mounting ours read-write"; }
  python3 "$TOOLS/fstarget.py" mount kernel "$B" "$BM" > "$WORK/kmount.out" 2>&1 \
    || { cat "$WORK/kmount.out"; fail "mounting the kernel's"; }
}

twin_compare() {
  ours=$("$@" "$AM") || fail "$* on our mount: $ours"
  theirs=$("$@" "$BM") || fail "$* on the kernel's mount: $theirs"
  if [ "$ours" != "$theirs" ]; then
    diff <(echo "$theirs") <(echo "$ours") | sed 's/^/    /'
    fail "outcomes differ from the kernel's ext4 (< kernel, > ours)"
  fi
}

twin_unmount_fsck() {
  python3 "$TOOLS/fstarget.py" umount "$AM" --image "$A" || fail "unmount of ours"
  python3 "$TOOLS/fstarget.py" umount "$BM" --image "$B" || fail "unmount of the kernel's"
  local img
  for img in "$A" "$B"; do
    e2fsck -fn "$img" > "$WORK/fsck.out" 2>&1 || { head -40 "$WORK/fsck.out"; fail "e2fsck -fn $img"; }
  done
}

twin_view_ours() {
  python3 "$TOOLS/fstarget.py" mount kernel "$A" "$AM" -o ro > /dev/null 2>&1 || fail "kernel mount of our image"
}

twin_view_done() {
  python3 "$TOOLS/fstarget.py" umount "$AM" --image "$A" > /dev/null 2>&1
}
