#!/usr/bin/env bash
# Runs every test: the Swift test suites (unit, codec, socket-kernel, real FUSE
# mounts as root) and the integration scripts in tests/integration/.
# Prints one summary and exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/opt/swift/usr/bin"
export EXT4IOMAP_ROOT="$PWD"
export EXT4IOMAP_BUILD="$PWD/.build/debug"

LOGDIR=$(mktemp -d /tmp/ext4iomap-tests.XXXXXX)
declare -a RESULTS=()
fail=0
start=$(date +%s)

echo "== build (debug, with tests)"
if ! swift build --build-tests 2>&1 | tee "$LOGDIR/build.log" | grep -E "error|warning:|Compiling|Build complete" | grep -v "^\[" ; then :; fi
if ! grep -q "Build complete" "$LOGDIR/build.log"; then
  tail -40 "$LOGDIR/build.log"
  echo "SUMMARY: build FAILED"
  exit 1
fi
if grep -q "warning:" "$LOGDIR/build.log"; then
  echo "SUMMARY: build has warnings (treated as errors)"; grep "warning:" "$LOGDIR/build.log" | sort -u | head -20
  exit 1
fi

echo "== swift test"
timeout 1500 swift test --skip-build --no-parallel 2>&1 | tee "$LOGDIR/swift-test.log" | grep -E "^(✘|✔ Test run|􀢄|􁁛)|Test run with|recorded an issue|Executed .* tests" || true
rc=${PIPESTATUS[0]}
summary=$(grep -E "Test run with [0-9]+ tests?" "$LOGDIR/swift-test.log" | tail -1)
if [ "$rc" -eq 0 ] && [ -n "$summary" ]; then
  RESULTS+=("PASS  swift test: ${summary#*Test run with }")
else
  RESULTS+=("FAIL  swift test (exit $rc): ${summary:-no summary}")
  fail=1
fi

echo "== integration tests"
for t in tests/integration/*.sh; do
  [ -e "$t" ] || continue
  name=$(basename "$t" .sh)
  echo "-- $name"
  t0=$(date +%s)
  timeout 900 bash "$t" > "$LOGDIR/$name.log" 2>&1
  rc=$?
  dt=$(( $(date +%s) - t0 ))
  case $rc in
    0)  RESULTS+=("PASS  $name (${dt}s)") ;;
    77) RESULTS+=("SKIP  $name: $(tail -1 "$LOGDIR/$name.log")") ;;
    *)  RESULTS+=("FAIL  $name (exit $rc, ${dt}s); log: $LOGDIR/$name.log"); fail=1
        tail -30 "$LOGDIR/$name.log" ;;
  esac
done

echo
echo "================ SUMMARY ($(( $(date +%s) - start ))s) ================"
printf '%s\n' "${RESULTS[@]}"
if [ $fail -eq 0 ]; then echo "ALL PASSED"; else echo "FAILURES (logs in $LOGDIR)"; fi
exit $fail
