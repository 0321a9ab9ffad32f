#!/usr/bin/env bash
# Real systemd: boot a throwaway container (systemd-nspawn -D / --volatile=yes,
# systemd as PID 1) with `make install` staged over /usr and ext4iomap.socket
# enabled, then, from a oneshot test unit inside it, mount an ext4 image with
# the real mount(8) through the installed helper. With the socket listening the
# helper must not spawn: it connects to /run/filesystems/ext4 and a
# socket-activated ext4iomap@.service instance (DynamicUser, the unit's sandbox
# plus the server's own seccomp) serves the mount. The test reads files, checks
# the instance from systemctl and /proc, unmounts, and checks the instance ended
# cleanly. Then a read-write mount of a second block device: a tree is copied
# in, and right after umount returns e2fsck -fn finds the device clean and the
# kernel's ext4 reads the whole tree back (the mount is fuseblk, so umount
# waited for the instance to commit and flush). The container's exit status is
# the test result.
# Recipe: ../shared/docs/systemd-testing.md (c).
# Exit 0 pass, 77 skip (last line says why), anything else fail.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${EXT4IOMAP_BUILD:-$repo/.build/debug}
TIMEOUT=${NSPAWN_TIMEOUT:-120}

[ "$(id -u)" -eq 0 ] || { echo "skip: needs root (systemd-nspawn, loop devices)"; exit 77; }
command -v systemd-nspawn >/dev/null || { echo "skip: systemd-nspawn not installed (apt-get install systemd-container)"; exit 77; }
[ -x "$BUILD/fuservicemount" ] && [ -x "$BUILD/ext4iomapd" ] || { echo "skip: binaries not built in $BUILD"; exit 77; }
[ -c /dev/fuse ] || { echo "skip: no /dev/fuse"; exit 77; }
[ -x /lib/systemd/systemd ] || { echo "skip: no systemd binary to boot in the container"; exit 77; }

work=$(mktemp -d /tmp/ext4iomap-nspawn.XXXXXX)
machine=ext4iomap-test-$$
CG=ext4iomap-nspawn.$$
LOOP=
RWLOOP=
created_run=()
for d in /run/systemd/nspawn /run/systemd/nspawn-root; do [ -e "$d" ] || created_run+=("$d"); done
cleanup() {
  [ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null
  [ -n "$RWLOOP" ] && losetup -d "$RWLOOP" 2>/dev/null
  for h in systemd unified; do
    [ -d "/sys/fs/cgroup/$h/$CG" ] && find "/sys/fs/cgroup/$h/$CG" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  # nspawn cannot remove its propagation directory on a disk-backed /run.
  rm -rf "/run/systemd/nspawn/propagate/$machine" 2>/dev/null
  for d in "${created_run[@]}"; do
    rmdir "$d/propagate" "$d/incoming" 2>/dev/null; rmdir "$d" 2>/dev/null
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- stage and harness
stage=$work/stage
make -s -C "$repo" install SKIP_BUILD=1 BUILDDIR="$BUILD" DESTDIR="$stage" PREFIX=/usr > "$work/install.log" 2>&1 \
  || { cat "$work/install.log"; echo "FAIL make install"; exit 1; }

mkdir -p "$work/tree/docs" "$work/harness/etc/multi-user.target.wants" "$work/harness/etc/sockets.target.wants" "$work/harness/bin"
echo "served by a socket-activated instance" > "$work/tree/hello.txt"
seq 1 30000 > "$work/tree/docs/numbers.txt"
mkfs.ext4 -q -F -L nspawn -d "$work/tree" "$work/image.img" 32M || { echo "mkfs.ext4 failed"; exit 1; }
sum=$(md5sum < "$work/tree/docs/numbers.txt" | cut -d' ' -f1)
LOOP=$(losetup -r -f --show "$work/image.img") || { echo "skip: cannot create a loop device"; LOOP=; exit 77; }
mkfs.ext4 -q -F -L nspawn-rw "$work/rw.img" 64M || { echo "mkfs.ext4 failed"; exit 1; }
RWLOOP=$(losetup -f --show "$work/rw.img") || { echo "skip: cannot create a loop device"; RWLOOP=; exit 77; }

# `systemctl enable ext4iomap.socket`, done ahead of boot (/etc/systemd/system is bound read-only).
ln -s /usr/lib/systemd/system/ext4iomap.socket "$work/harness/etc/sockets.target.wants/ext4iomap.socket"
cat > "$work/harness/etc/ext4test.service" <<'EOF'
[Unit]
Description=ext4iomap in-container test driver
ConditionKernelCommandLine=!ext4test.interactive
After=sockets.target
SuccessAction=exit-force
FailureAction=exit-force

[Service]
Type=oneshot
ExecStart=/ext4test/bin/container-test.sh
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=60
EOF
ln -s ../ext4test.service "$work/harness/etc/multi-user.target.wants/ext4test.service"

cat > "$work/harness/bin/container-test.sh" <<EOF
#!/bin/bash
# Runs inside the container as a oneshot; its exit status is the container's.
set -u
SUM=$sum
EOF
cat >> "$work/harness/bin/container-test.sh" <<'EOF'
fails=0
pass() { echo "CT ok   $*"; }
fail() { echo "CT FAIL $*"; fails=$((fails + 1)); }
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }
# No awk here: /etc/alternatives does not exist in a --volatile=yes container.
field() { sed -n "s/^$1:[[:space:]]*//p" "/proc/$2/status"; }

check "ext4iomap.socket is enabled" [ "$(systemctl is-enabled ext4iomap.socket)" = enabled ]
check "ext4iomap.socket is active" [ "$(systemctl is-active ext4iomap.socket)" = active ]
check "/run/filesystems/ext4 is a socket" [ -S /run/filesystems/ext4 ]
check "socket mode 0600 root" [ "$(stat -c '%a %U' /run/filesystems/ext4)" = "600 root" ]
mkdir -p /mnt/e4
if mount -t fuse.ext4 -o ro /dev/ext4test-blk /mnt/e4; then pass "mount -t fuse.ext4 -o ro (through mount(8))"
else fail "mount -t fuse.ext4 -o ro"; systemctl --no-pager status 'ext4iomap@*' 2>&1 | tail -20; journalctl --no-pager -u 'ext4iomap@*' | tail -20; exit 1; fi
findmnt /mnt/e4
# A block device source is mounted fuseblk (the kernel waits for the server at umount).
check "findmnt: fuseblk.ext4, ro" [ "$(findmnt -n -o FSTYPE,OPTIONS /mnt/e4 | cut -d, -f1)" = "fuseblk.ext4 ro" ]
check "read a file" [ "$(cat /mnt/e4/hello.txt)" = "served by a socket-activated instance" ]
check "read a larger file" [ "$(md5sum < /mnt/e4/docs/numbers.txt | cut -d' ' -f1)" = "$SUM" ]
check "no server was spawned by the helper" [ -z "$(pgrep -f -- '--service-fd')" ]
unit=$(systemctl list-units --no-legend --plain 'ext4iomap@*.service' | cut -d' ' -f1 | head -1)
check "an ext4iomap@ instance serves it ($unit)" [ -n "$unit" ]
pid=$(systemctl show -P MainPID "$unit")
check "instance has a main pid ($pid)" [ -n "$pid" -a "$pid" != 0 ]
systemctl show -p Id,ActiveState,SubState,MainPID,DynamicUser,UID,GID,ExecMainStartTimestamp "$unit"
check "DynamicUser=yes" [ "$(systemctl show -P DynamicUser "$unit")" = yes ]
read -r ruid euid _ <<<"$(field Uid "$pid" | tr '\t' ' ')"
check "runs as a dynamic uid ($euid), not root" [ "$ruid" != 0 -a "$euid" != 0 -a "$euid" = "$(systemctl show -P UID "$unit")" ]
check "runs the installed server" [ "$(readlink /proc/$pid/exe)" = /usr/libexec/ext4iomap/ext4iomapd ]
for c in CapEff CapPrm CapBnd CapAmb; do check "$c = 0" [ "$(field $c "$pid")" = 0000000000000000 ]; done
check "NoNewPrivs = 1" [ "$(field NoNewPrivs "$pid")" = 1 ]
check "not dumpable (/proc/PID/fd owned by root)" [ "$(stat -c %u /proc/$pid/fd)" = 0 ]
check "no core dumps (LimitCORE=0)" [ "$(sed -n 's/^Max core file size *\([0-9a-z]*\) .*/\1/p' /proc/$pid/limits)" = 0 ]
check "no OOM immunity (oom_score_adj $(cat /proc/$pid/oom_score_adj))" [ "$(cat /proc/$pid/oom_score_adj)" -ge 0 ]
check "MemoryMax=1G ($(systemctl show -P MemoryMax "$unit"))" [ "$(systemctl show -P MemoryMax "$unit")" = 1073741824 ]
check "Seccomp = 2" [ "$(field Seccomp "$pid")" = 2 ]
nf=$(field Seccomp_filters "$pid")
echo "Seccomp_filters: $nf (systemd's plus the server's two stages)"
check "systemd's filters plus the server's own (>= 3, got $nf)" [ "$nf" -ge 3 ]
check "own mount namespace" [ "$(readlink /proc/$pid/ns/mnt)" != "$(readlink /proc/1/ns/mnt)" ]
check "own network namespace" [ "$(readlink /proc/$pid/ns/net)" != "$(readlink /proc/1/ns/net)" ]
check "own user namespace (PrivateUsers)" [ "$(readlink /proc/$pid/ns/user)" != "$(readlink /proc/1/ns/user)" ]
echo "fds:"; ls -l /proc/$pid/fd | sed -n '2,$p' | sed 's/.* \([0-9]* -> .*\)/  \1/'
check "holds /dev/fuse and the device only as passed fds" [ -n "$(ls -l /proc/$pid/fd | grep -- '-> /dev/fuse')" -a -n "$(ls -l /proc/$pid/fd | grep -- '-> /dev/ext4test-blk')" ]
check "the instance sees no /dev/fuse node (PrivateDevices)" nsenter -t "$pid" -m test ! -e /dev/fuse
umount /mnt/e4 && pass "umount" || fail "umount"
for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
check "server exited after umount" [ ! -d "/proc/$pid" ]
sleep 0.3
journalctl --no-pager -o cat -u "$unit" > /tmp/unit.log
sed 's/^/  journal: /' /tmp/unit.log
check "the server logged to the journal" grep -q "serving /dev/ext4test-blk" /tmp/unit.log
check "the server confined itself (landlock + seccomp)" grep -q "sandboxed: no_new_privs, landlock ABI [0-9]*, seccomp" /tmp/unit.log
check "no seccomp denial logged" bash -c '! grep -q "seccomp: denied" /tmp/unit.log'
check "instance ended without failure" bash -c '! systemctl --no-legend --plain list-units --failed | grep -q ext4iomap@'
check "nothing mounted" [ -z "$(findmnt -n /mnt/e4)" ]

# Read-write: umount returns only after the instance has committed and flushed.
mkdir -p /mnt/rw /mnt/k /tmp/tree
cp -a /usr/include/linux /tmp/tree/ && seq 1 200000 > /tmp/tree/numbers.txt
if mount -t fuse.ext4 /dev/ext4test-rw /mnt/rw; then pass "mount -t fuse.ext4 (read-write)"
else fail "mount -t fuse.ext4 (read-write)"; journalctl --no-pager -u 'ext4iomap@*' | tail -20; exit 1; fi
check "findmnt: fuseblk.ext4, rw" [ "$(findmnt -n -o FSTYPE,OPTIONS /mnt/rw | cut -d, -f1)" = "fuseblk.ext4 rw" ]
rwunit=$(systemctl list-units --no-legend --plain 'ext4iomap@*.service' | cut -d' ' -f1 | head -1)
rwpid=$(systemctl show -P MainPID "$rwunit")
cp -a /tmp/tree/. /mnt/rw/ && pass "cp -a a tree onto the mount" || fail "cp -a a tree onto the mount"
umount /mnt/rw && pass "umount (read-write)" || fail "umount (read-write)"
# At once, without waiting for the instance:
if e2fsck -fn /dev/ext4test-rw > /tmp/fsck.log 2>&1; then pass "e2fsck -fn clean right after umount"
else fail "e2fsck -fn right after umount"; tail -8 /tmp/fsck.log; fi
dumpe2fs -h /dev/ext4test-rw 2>/dev/null > /tmp/dumpe2fs.txt
check "state clean, no needs_recovery (the journal was emptied before umount returned)" \
  bash -c 'grep -q "^Filesystem state: *clean$" /tmp/dumpe2fs.txt && ! grep "^Filesystem features:" /tmp/dumpe2fs.txt | grep -qw needs_recovery'
if mount -t ext4 -o ro /dev/ext4test-rw /mnt/k; then
  check "the kernel's ext4 reads back the whole tree" diff -r --no-dereference -x lost+found /tmp/tree /mnt/k
  umount /mnt/k
else fail "kernel ext4 mount of the device"; fi
for _ in $(seq 50); do kill -0 "$rwpid" 2>/dev/null || break; sleep 0.1; done
check "the read-write instance exited" [ ! -d "/proc/$rwpid" ]
check "no instance failed" bash -c '! systemctl --no-legend --plain list-units --failed | grep -q ext4iomap@'
echo "CT result: $fails failure(s)"
[ $fails -eq 0 ]
EOF
chmod +x "$work/harness/bin/container-test.sh"

# The Swift runtime the binaries link against (RUNPATH), when it lives outside /usr.
binds=()
swiftlib=$(ldd "$BUILD/ext4iomapd" | sed -n 's/.*libswiftCore.so => \(.*\)\/libswiftCore.so .*/\1/p')
case $swiftlib in ""|/usr/*|/lib/*) ;; *) binds+=(--bind-ro="$swiftlib") ;; esac

# ---- boot
for h in systemd unified; do mkdir -p "/sys/fs/cgroup/$h/$CG" 2>/dev/null; done
t0=$(date +%s.%N)
SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 bash -c 'for h in systemd unified; do [ -d /sys/fs/cgroup/$h/'$CG' ] && echo $$ > /sys/fs/cgroup/$h/'$CG'/cgroup.procs; done; exec "$@"' - \
  timeout -k 15 "$TIMEOUT" systemd-nspawn -D / --volatile=yes --register=no --keep-unit \
    --machine="$machine" --console=read-only --private-network --system-call-filter="bpf landlock_create_ruleset landlock_add_rule landlock_restrict_self" \
    --overlay-ro=/usr:"$stage"/usr:/usr \
    "${binds[@]}" \
    --bind-ro="$work/harness/etc":/etc/systemd/system \
    --bind-ro="$work/harness":/ext4test \
    --bind=/dev/fuse --bind="$LOOP":/dev/ext4test-blk --bind="$RWLOOP":/dev/ext4test-rw \
    -b systemd.firstboot=off > "$work/nspawn.log" 2>&1
rc=$?
t1=$(date +%s.%N)
secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')

grep -E "container-test.sh\[[0-9]+\]: " "$work/nspawn.log" | sed 's/\r$//; s/^container-test.sh\[[0-9]*\]: //'
if ! grep -q "CT " "$work/nspawn.log"; then
  if ! grep -qE "systemd [0-9]+ running in system mode|Welcome to" "$work/nspawn.log"; then
    tail -20 "$work/nspawn.log"
    echo "skip: systemd-nspawn could not boot a container here (exit $rc): $(grep -m1 -iE 'fail|error|not supported' "$work/nspawn.log" | tr -d '\r')"
    exit 77
  fi
  tail -40 "$work/nspawn.log"; echo "FAIL the in-container test did not run (nspawn exit $rc)"; exit 1
fi
if [ $rc -eq 0 ]; then echo "nspawn: container booted, tested and powered off in ${secs}s; exit 0"; exit 0; fi
[ $rc -eq 124 ] && echo "FAIL container timed out after ${TIMEOUT}s"
tail -30 "$work/nspawn.log"
echo "FAIL in-container test (nspawn exit $rc, ${secs}s)"
exit 1
