#!/usr/bin/env bash
# FUSE over io_uring. The fuse module's enable_uring is switched on for the
# test and put back on every path. Through the real helper -> sandboxed server
# path, the server must negotiate io_uring and serve the requests on its
# "fuse-uring" threads (their context switches must grow by at least one per
# file operation of the workload), and the write side must stay correct:
#   1. a copy-in / compare / rename / delete workload: the kernel's ext4 reads
#      back exactly what was written, e2fsck -fn clean;
#   2. the concurrency stress workload (8 threads): no deadlock, fsck clean,
#      kernel view equal;
#   3. the randomized differential tester against kernel ext4, two seeds over
#      ext4 4 KiB and ext2-style 1 KiB images;
#   4. with uring=0 the same kernel setting leaves the server on /dev/fuse
#      (no fuse-uring threads).
# Exit: 0 pass, 77 skip (last line says why), anything else fails.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
export EXT4IOMAP_BUILD="${EXT4IOMAP_BUILD:-$repo/.build/debug}"
TOOLS="$repo/tests/tools"
PARAM=/sys/module/fuse/parameters/enable_uring
skip() { echo "$1"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "uring: needs root (module parameter, loop and FUSE mounts)"
[ -e /dev/fuse ] || skip "uring: /dev/fuse missing"
modprobe fuse 2>/dev/null
[ -w "$PARAM" ] || skip "uring: this kernel has no FUSE over io_uring ($PARAM)"

WORK=$(mktemp -d /tmp/uring.XXXXXX)
IMG="$WORK/u.img"; MNT="$WORK/mnt"; KMNT="$WORK/k"
mkdir -p "$MNT" "$KMNT"
saved=$(cat "$PARAM")
cleanup() {
  python3 "$TOOLS/fstarget.py" cleanup --image "$IMG" "$MNT" "$KMNT" 2>/dev/null
  echo "$saved" > "$PARAM"
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() { echo "uring: FAIL: $*"; [ -f "$WORK/server.log" ] && sed 's/^/    /' "$WORK/server.log" | tail -20; exit 1; }
echo Y > "$PARAM" || skip "uring: cannot set $PARAM"

mountit() {  # mountit OPTS
  : > "$WORK/server.log"
  python3 "$TOOLS/fstarget.py" mount ext4iomap "$IMG" "$MNT" ${1:+-o "$1"} --log "$WORK/server.log" \
      > "$WORK/mount.out" 2>&1 || { cat "$WORK/mount.out"; fail "mount ($1)"; }
  pid=$(python3 "$TOOLS/fstarget.py" pids "$IMG" | head -1)
  [ -n "$pid" ] || fail "no server process for $IMG"
}
# Voluntary context switches of the server's fuse-uring threads (-1: none exist).
uring_switches() {
  local total=-1 t
  for t in /proc/"$pid"/task/*; do
    [ "$(cat "$t/comm" 2>/dev/null)" = fuse-uring ] || continue
    [ $total -lt 0 ] && total=0
    total=$((total + $(awk '/^voluntary_ctxt_switches/ {print $2}' "$t/status")))
  done
  echo $total
}
check_image() {  # check_image NAME: fsck clean and the kernel sees tree $1
  e2fsck -fn "$IMG" > "$WORK/fsck.out" 2>&1 || { sed 's/^/    /' "$WORK/fsck.out" | head -40; fail "e2fsck -fn ($1)"; }
  mount -o ro,loop "$IMG" "$KMNT" || fail "kernel mount ($1)"
  theirs=$(cd "$KMNT" && find . -path ./lost+found -prune -o -type f -printf '%p ' -exec md5sum {} \; | sort | md5sum)
  umount "$KMNT"
}

# 1. copy-in, compare, rename, delete.
mkfs.ext4 -q -F -b 4096 "$IMG" 128M || fail mkfs
mountit ""
before=$(uring_switches)
[ "$before" -ge 0 ] || fail "no fuse-uring threads: io_uring was not negotiated"
mkdir "$MNT/src"
python3 - "$MNT/src" <<'EOF' || fail "workload"
import os, random, sys
d = sys.argv[1]
r = random.Random(7)
for i in range(300):
    sub = os.path.join(d, f"d{i % 7}")
    os.makedirs(sub, exist_ok=True)
    with open(os.path.join(sub, f"f{i}"), "wb") as f:
        f.write(r.randbytes(r.choice([0, 100, 4096, 5000, 70000, 300000])))
for i in range(0, 300, 3):
    os.rename(os.path.join(d, f"d{i % 7}", f"f{i}"), os.path.join(d, f"d{(i + 1) % 7}", f"r{i}"))
for i in (i for i in range(1, 300, 5) if i % 3 != 0):
    os.unlink(os.path.join(d, f"d{i % 7}", f"f{i}"))
EOF
ours=$(cd "$MNT" && find . -path ./lost+found -prune -o -type f -printf '%p ' -exec md5sum {} \; | sort | md5sum)
after=$(uring_switches)
[ $((after - before)) -ge 900 ] || fail "fuse-uring threads carried too little: $before -> $after switches"
python3 "$TOOLS/fstarget.py" umount "$MNT" --image "$IMG" || fail "unmount"
check_image workload
[ "$ours" = "$theirs" ] || fail "the kernel reads back different data"
echo "  workload: served on io_uring ($((after - before)) thread wakeups), fsck clean, kernel view equal"

# 2. concurrency stress.
mkfs.ext4 -q -F -b 4096 "$IMG" 64M || fail mkfs
mountit ""
timeout 300 python3 "$TOOLS/stress_work.py" "$MNT" 8 20 7 || fail "stress workload"
[ "$(uring_switches)" -gt 0 ] || fail "stress: fuse-uring threads idle"
ours=$(cd "$MNT" && find . -path ./lost+found -prune -o -type f -printf '%p ' -exec md5sum {} \; | sort | md5sum)
python3 "$TOOLS/fstarget.py" umount "$MNT" --image "$IMG" || fail "unmount (stress)"
check_image stress
[ "$ours" = "$theirs" ] || fail "stress: the kernel sees a different tree"
echo "  stress: no deadlock, fsck clean, kernel view equal"

# 3. differential tester (it mounts through the same helper path).
FSX_SEEDS="1 2" FSX_OPS=${FSX_OPS:-3000} FSX_CONFIGS="ext4-4k ext2-1k" FSX_SELFCHECK=0 bash "$repo/tests/integration/fsx-diff.sh" \
    > "$WORK/fsx.out" 2>&1
rc=$?
sed 's/^/    /' "$WORK/fsx.out" | tail -8
[ $rc -eq 0 ] || fail "fsx-diff under io_uring (exit $rc)"

# 4. uring=0 keeps /dev/fuse.
mkfs.ext4 -q -F "$IMG" 16M || fail mkfs
mountit "uring=0"
echo x > "$MNT/x" || fail "write with uring=0"
[ "$(uring_switches)" -lt 0 ] || fail "uring=0 still started io_uring threads"
python3 "$TOOLS/fstarget.py" umount "$MNT" --image "$IMG" || fail "unmount (uring=0)"
echo "  uring=0: served on /dev/fuse"
echo "uring: pass"
