#!/usr/bin/env bash
# FS_IOC_SHUTDOWN (xfs_io -x -c "shutdown -f", fstests' _scratch_shutdown),
# with the kernel's ext4 as the oracle. The same steps on our mount and on a
# kernel loop mount of a copy: files written and fsynced, one written and
# not, one renamed, then shutdown; afterwards reads, writes and creates fail
# with EIO on both while stat and listing still answer, and a non-root caller
# cannot shut down. Unmount; each
# image then needs recovery, and the kernel's ext4 (and for our image, our own
# server too) replays the journal: the fsynced file has its content, the
# rename and every name created before the shutdown are there (the log was
# flushed), unsynced data is either there or reads as nothing or zeros, and
# e2fsck -fn is clean.
# Exit: 0 pass, 77 skip (last line says why), anything else fails.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
export EXT4IOMAP_BUILD="${EXT4IOMAP_BUILD:-$repo/.build/debug}"
TOOLS="$repo/tests/tools"
skip() { echo "$1"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "shutdown: needs root (loop and FUSE mounts)"
for c in python3 mkfs.ext4 e2fsck dumpe2fs mount xfs_io setpriv getfattr; do
  command -v "$c" >/dev/null || skip "shutdown: $c not installed"
done
# shellcheck source=../tools/twin.sh
. "$TOOLS/twin.sh"
twin_init shutdown
twin_mount 64M

steps() {  # steps DIR: before, shutdown, after; one line per outcome
  local d=$1
  mkdir "$d/s" || return 1
  head -c 300000 /dev/urandom > "$WORK/data.${d##*/}"
  cp "$WORK/data.${d##*/}" "$d/s/synced" && sync "$d/s/synced"
  echo "not synced" > "$d/s/unsynced"
  echo "to be renamed" > "$d/s/old" && mv "$d/s/old" "$d/s/new"
  sync "$d/s"
  if setpriv --reuid=nobody --regid=nogroup --clear-groups xfs_io -x -c "shutdown -f" "$d" 2>/dev/null
  then echo "non-root shutdown allowed"; else echo "non-root shutdown refused"; fi
  xfs_io -x -c "shutdown -f" "$d" || return 1
  local r
  for op in "cat $d/s/synced" "touch $d/s/created" "stat $d/s/new" "ls $d/s" "sh -c 'echo x >> $d/s/new'" \
            "getfattr -d $d/s/new" "sync $d/s/new"; do
    r=$(eval "$op" 2>&1 >/dev/null); r=${r##*: }
    echo "after shutdown: ${op%% *} ${r:-ok}"
  done
}

twin_compare steps
echo "$ours" | grep -q '^after shutdown: cat Input/output error$' || fail "a read after shutdown did not fail with EIO: $ours"
python3 "$TOOLS/fstarget.py" umount "$AM" --image "$A" || fail "unmount of ours after shutdown"
python3 "$TOOLS/fstarget.py" umount "$BM" --image "$B" || fail "unmount of the kernel's after shutdown"
dumpe2fs -h "$A" 2>/dev/null | grep -q needs_recovery || fail "our image does not need recovery after a shutdown (unmount wrote after it)"

check_replayed() {  # check_replayed IMAGE MOUNTPOINT WHO: the kernel replays, then the files and e2fsck
  local img=$1 data=$WORK/data.${2##*/} who=$3
  cp --sparse=always "$img" "$WORK/replay.img"
  python3 "$TOOLS/fstarget.py" mount kernel "$WORK/replay.img" "$BM" > /dev/null 2>&1 || fail "$who: kernel mount (replay)"
  cmp -s "$data" "$BM/s/synced" || fail "$who: the fsynced file differs after replay"
  # Its name was committed by the log flush; its data may still have been in
  # the page cache (so: empty, zeros, or the data; never anything else).
  [ -e "$BM/s/unsynced" ] || fail "$who: the file created before a flushing shutdown is missing"
  case "$(tr -d '\0' < "$BM/s/unsynced")" in ""|"not synced") ;; *) fail "$who: the unsynced file holds other data";; esac
  [ -e "$BM/s/new" ] && [ ! -e "$BM/s/old" ] || fail "$who: the rename is not there"
  python3 "$TOOLS/fstarget.py" umount "$BM" --image "$WORK/replay.img" || fail "$who: kernel unmount"
  e2fsck -fn "$WORK/replay.img" > "$WORK/fsck.out" 2>&1 || { head -30 "$WORK/fsck.out"; fail "$who: e2fsck -fn after the kernel's replay"; }
}
check_replayed "$B" "$BM" "the kernel's image"
check_replayed "$A" "$AM" "our image"
# Our own server replays it too.
python3 "$TOOLS/fstarget.py" mount ext4iomap "$A" "$AM" --log "$WORK/server2.log" > "$WORK/mount2.out" 2>&1 \
  || { cat "$WORK/mount2.out"; fail "our mount after the shutdown"; }
cmp -s "$WORK/data.${AM##*/}" "$AM/s/synced" || fail "ours: the fsynced file differs after our replay"
python3 "$TOOLS/fstarget.py" umount "$AM" --image "$A" || fail "unmount of ours after replay"
e2fsck -fn "$A" > "$WORK/fsck.out" 2>&1 || { head -30 "$WORK/fsck.out"; fail "e2fsck -fn after our replay"; }
echo "$ours" | sed 's/^/    /'
echo "shutdown: pass (outcomes equal to the kernel's ext4, replayed by the kernel and by us, fsck clean)"
