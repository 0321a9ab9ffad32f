#!/usr/bin/env bash
# Static checks of the systemd units on a staged `make install`:
# systemd-analyze verify must print nothing (its exit code is 0 even for
# unknown keys), and systemd-analyze security --offline must score the service
# at 1.0 or below. No systemd PID 1 needed.
# Exit 0 pass, 77 skip (last line says why), anything else fail.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${EXT4IOMAP_BUILD:-$repo/.build/debug}
MAX_EXPOSURE=${MAX_EXPOSURE:-1.0}

command -v systemd-analyze >/dev/null || { echo "skip: systemd-analyze not installed"; exit 77; }
[ -x "$BUILD/fuservicemount" ] && [ -x "$BUILD/ext4iomapd" ] || { echo "skip: binaries not built in $BUILD"; exit 77; }

work=$(mktemp -d /tmp/ext4iomap-units-static.XXXXXX)
# systemd-analyze verify touches this marker; remove it again if we created it.
marker=/run/systemd/systemd-units-load
had_marker=; [ -e "$marker" ] && had_marker=1
cleanup() {
  rm -rf "$work"
  [ -n "$had_marker" ] || rm -f "$marker"
  rmdir /run/systemd 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fails=0
pass() { echo "ok   $*"; }
fail() { echo "FAIL $*"; fails=$((fails + 1)); }

stage=$work/stage
make -s -C "$repo" install SKIP_BUILD=1 BUILDDIR="$BUILD" DESTDIR="$stage" PREFIX=/usr > "$work/install.log" 2>&1 \
  || { cat "$work/install.log"; echo "FAIL make install"; exit 1; }
units=$stage/usr/lib/systemd/system
# verify --root needs the stock units (sysinit.target, sockets.target, ...).
cp -rn /lib/systemd/system/. "$units/"
export MANPATH=$stage/usr/share/man   # so Documentation=man:... is checked against our pages

verify() { systemd-analyze verify --root="$stage" ext4iomap.socket ext4iomap@.service 2>&1; }
out=$(verify); rc=$?
if [ $rc -eq 0 ] && [ -z "$out" ]; then pass "systemd-analyze verify: no output, exit 0"
else fail "systemd-analyze verify (exit $rc):"; echo "$out" | sed 's/^/     /'; fi

# The check is not vacuous: a missing server binary and an unknown key are caught.
mv "$stage/usr/libexec/ext4iomap/ext4iomapd" "$work/ext4iomapd.moved"
out=$(verify); rc=$?
if [ $rc -ne 0 ] && [ -n "$out" ]; then pass "verify catches a missing ExecStart binary"; else fail "verify did not notice a missing ExecStart binary"; fi
mv "$work/ext4iomapd.moved" "$stage/usr/libexec/ext4iomap/ext4iomapd"
cp "$units/ext4iomap@.service" "$work/service.orig"
echo "FooBar=1" >> "$units/ext4iomap@.service"
out=$(verify)
if [ -n "$out" ]; then pass "verify reports an unknown key"; else fail "verify did not report an unknown key"; fi
cp "$work/service.orig" "$units/ext4iomap@.service"

sec=$(systemd-analyze security --offline=yes --no-pager --root="$stage" ext4iomap@x.service 2>&1); rc=$?
score=$(echo "$sec" | sed -n 's/.*Overall exposure level for ext4iomap@x.service: \([0-9.]*\).*/\1/p')
if [ $rc -eq 0 ] && [ -n "$score" ] && awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s <= m) }'; then
  pass "systemd-analyze security: exposure $score (<= $MAX_EXPOSURE)"
  echo "$sec" | grep '^✗' | sed 's/  */ /g; s/^/     remaining: /'
else
  fail "systemd-analyze security: exposure ${score:-?} (max $MAX_EXPOSURE), exit $rc"; echo "$sec" | grep -v '^✓' | sed 's/^/     /'
fi
thr=$(awk -v m="$MAX_EXPOSURE" 'BEGIN { printf "%d", m * 10 }')
if systemd-analyze security --offline=yes --no-pager --root="$stage" --threshold="$thr" ext4iomap@x.service > /dev/null 2>&1; then
  pass "systemd-analyze security --threshold=$thr passes"
else fail "systemd-analyze security --threshold=$thr"; fi

# What the brief requires of the socket, literally.
sock=$units/ext4iomap.socket
for want in ListenSequentialPacket=/run/filesystems/ext2 ListenSequentialPacket=/run/filesystems/ext3 \
            ListenSequentialPacket=/run/filesystems/ext4 Accept=yes SocketMode=0600; do
  if grep -qx "$want" "$sock"; then pass "socket: $want"; else fail "socket: $want missing"; fi
done
svc=$units/ext4iomap@.service
for want in DynamicUser=true PrivateDevices=true NoNewPrivileges=true CapabilityBoundingSet= \
            "ExecStart=/usr/libexec/ext4iomap/ext4iomapd --service" LimitCORE=0 MemoryMax=1G; do
  if grep -qx "$want" "$svc"; then pass "service: $want"; else fail "service: $want missing"; fi
done
# No OOM immunity: a server the kernel must kill is killed like any process.
if grep -q '^OOMScoreAdjust=' "$svc"; then fail "service: sets OOMScoreAdjust ($(grep '^OOMScoreAdjust=' "$svc"))"
else pass "service: no OOMScoreAdjust"; fi

[ $fails -eq 0 ] || { echo "$fails check(s) failed"; exit 1; }
echo "units pass static checks (exposure $score)"
