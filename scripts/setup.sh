#!/usr/bin/env bash
# Installs every Debian package the build, the demo and the tests need.
# Idempotent: safe to run again. Needs root (or sudo) for apt-get.
set -euo pipefail

PACKAGES=(
  # build: system libraries the package links against
  pkg-config libmount-dev libsystemd-dev libseccomp-dev libfuse3-dev linux-libc-dev
  # demo and tests: images, oracles, ground truth
  e2fsprogs util-linux mount kmod attr acl fuse3 fuse2fs
  # system tests of the units, benchmarks
  systemd systemd-container fio python3 gzip bzip2
  # libfuse-interop.sh builds libfuse master's helper and service_ll example
  meson ninja-build gcc
  # tests/fstests (fstests.sh in CI) builds and runs fstests
  make autoconf automake libtool-bin xfslibs-dev uuid-dev libgdbm-dev gawk uuid-runtime
  libaio-dev libacl1-dev libattr1-dev liburing-dev libcap-dev bc psmisc quota xfsprogs
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup: run as root (apt-get needs it)" >&2; exit 1; }
  SUDO=sudo
fi

echo "setup: apt-get update"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
echo "setup: installing ${#PACKAGES[@]} packages (already installed ones are kept)"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >/dev/null

if ! command -v swift >/dev/null; then
  if [ -x /opt/swift/usr/bin/swift ]; then
    echo "setup: swift is at /opt/swift/usr/bin; add it to PATH"
  else
    echo "setup: Swift 6 toolchain not found; install it from swift.org (needs 6.0 or newer)" >&2
    exit 1
  fi
fi
[ -e /dev/fuse ] || echo "setup: warning: /dev/fuse is missing; FUSE mounts will not work" >&2
echo "setup: done"
