#!/usr/bin/env bash
# Crash by kill: SIGKILL the server at seeded random moments while 4 workers
# create, write, truncate, fallocate, set xattrs, rename across directories,
# replace, unlink, mkdir/rmdir and fsync files and directories
# (tests/tools/crash_work.py). Every promise (after fsync of a file: its exact
# content and xattrs; after fsync of a directory: each entry -> inode, or its
# absence) goes to a manifest outside the mount. Then, on copies of the crashed
# image:
#   journaled cases  the kernel's ext4 mounts it (replaying our journal) and
#                    unmounts; `e2fsck -fn` must exit 0 and print nothing but its
#                    pass lines; every promise must hold on the kernel's
#                    read-only view; e2fsck's own replay (`e2fsck -fy -E
#                    no_optimize_extents` on a fresh copy) may do nothing but
#                    replay, release orphans and correct the superblock's free
#                    counts, must leave `-fn` clean and give the very same tree
#                    (tests/tools/treecompare.py: names, types, inodes, modes,
#                    sizes, links, times, xattrs, content, holes, statvfs).
#   no journal       `e2fsck -fy` may repair; a second `e2fsck -fn` must be clean,
#                    and every promise must hold.
# (`-E no_optimize_extents` with -fn too: an extent tree that "could be
# narrower" is no error; the kernel's ext4 leaves them after a crash as well.)
# Cases: ext4 4 KiB, ext4 1 KiB, ext4 with a checksum-v3 64-bit journal, ext4
# with block maps (1 KiB), ext4 without a journal; CRASH_POINTS kill points each.
#
# Environment:
#   CRASH_SEED    base seed (default: new each run, printed); run i uses seed+i
#   CRASH_POINTS  kill points per case (default 8)
#   CRASH_CASES   names of cases to run (default all: ext4-4k ext4-1k ext4-csum3
#                 ext4-blockmap nojournal)
#   CRASH_TARGET  ext4iomap (default: fuservicemount and the sandboxed server),
#                 ext4iomapd (the server standalone), or kernel: the harness's
#                 self-check. The kernel's ext4 runs the same workload and the
#                 crash is EXT4_IOC_SHUTDOWN without a log flush (nothing more
#                 reaches the disk, as in a power cut); every check must pass on
#                 it, which shows that the promises, the strict e2fsck and the
#                 replay comparison ask nothing a correct jbd2 file system fails.
#   CRASH_KEEP=1  keep the images, manifests and logs of failed runs
#   CRASH_BREAK   promised or entry: damage each replayed image (see break_image);
#                 every kill point must then fail (proves the checks can fail)
# Reproduce one run: CRASH_CASES=<case> CRASH_SEED=<its seed> CRASH_POINTS=1.
# Exit: 0 pass, 77 skip (last line says why), anything else fails.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
export EXT4IOMAP_BUILD="${EXT4IOMAP_BUILD:-$repo/.build/debug}"
TOOLS="$repo/tests/tools"
KIND=${CRASH_TARGET:-ext4iomap}
POINTS=${CRASH_POINTS:-8}
BASE=${CRASH_SEED:-$(( ($(date +%s%N) / 1000) % 1000000 ))}
CASES=${CRASH_CASES:-"ext4-4k ext4-1k ext4-csum3 ext4-blockmap nojournal"}
SIZE=128M

skip() { echo "$1"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "crash: needs root (loop and FUSE mounts)"
for c in python3 mkfs.ext4 e2fsck dumpe2fs debugfs mount losetup cp; do
  command -v "$c" >/dev/null || skip "crash: $c not installed"
done
case $KIND in
  ext4iomap|ext4iomapd) [ -e /dev/fuse ] || skip "crash: /dev/fuse missing" ;;
  kernel) ;;
  *) echo "crash: CRASH_TARGET must be ext4iomap, ext4iomapd or kernel"; exit 2 ;;
esac
[[ $BASE =~ ^[0-9]+$ ]] || { echo "crash: CRASH_SEED must be a number"; exit 2; }

WORK=$(mktemp -d /tmp/crash.XXXXXX)
IMG="$WORK/crash.img"   # the target writes here
KIMG="$WORK/k.img"      # copy replayed by the kernel
EIMG="$WORK/e.img"      # copy replayed (or repaired) by e2fsck
TMPL="$WORK/template.img"
MNT="$WORK/mnt" KMNT="$WORK/kmnt" EMNT="$WORK/emnt"
mkdir -p "$MNT" "$KMNT" "$EMNT"
WPID=
cleanup() {
  [ -n "$WPID" ] && kill "$WPID" 2>/dev/null  # timeout passes TERM on to the workload
  # Unmount everything, kill servers, detach loops.
  python3 "$TOOLS/fstarget.py" cleanup --image "$IMG" --image "$KIMG" --image "$EIMG" --image "$TMPL" \
    "$MNT" "$KMNT" "$EMNT" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() { echo "crash: FAIL: $*"; exit 1; }

# A FUSE mount still there (its server gone, or hung): abort that connection
# only, then detach it.
abort_fuse() {  # abort_fuse DIR
  local dev
  dev=$(awk -v d="$1" '$5 == d { print $3 }' /proc/self/mountinfo | tail -1)
  [ -n "$dev" ] || return 0
  # The connection's number is the mount's device number, major << 20 | minor
  # (a fuseblk mount's major is not 0).
  local conn=$(( (${dev%%:*} << 20) | ${dev#*:} ))
  [ -e "/sys/fs/fuse/connections/$conn/abort" ] && echo 1 > "/sys/fs/fuse/connections/$conn/abort"
  umount -l "$1" 2>/dev/null
  return 0
}

# e2fsck -fn must exit 0 and say nothing beyond its pass lines and summary.
# -E no_optimize_extents: an extent tree that "could be narrower/shorter" is no
# error (the kernel's ext4 leaves such trees after a crash too).
fsck_strict() {  # fsck_strict IMG OUT -> 0 clean
  e2fsck -fn -E no_optimize_extents "$1" > "$2" 2>&1
  local rc=$?
  if [ $rc -ne 0 ] || grep -qvE '^(e2fsck [0-9.]+ \(.*\)|Pass [1-5][A-E]?: .*|.*: [0-9]+/[0-9]+ files \([0-9.]+% non-contiguous\), [0-9]+/[0-9]+ blocks|)$' "$2"; then
    echo "    e2fsck -fn exit $rc:"
    sed 's/^/     | /' "$2" | head -60
    return 1
  fi
  return 0
}

# The kernel's mounts (plain mount(8): a Python helper per mount costs too much
# time here). `-o loop` sets autoclear: the loop device goes with the unmount.
# A loop device freed a moment ago by a dead fuseblk mount can be handed out
# again while the kernel still drops that mount's claim on it (EBUSY, "already
# mounted"); such a mount is retried a few times.
kmount() {  # kmount IMG DIR [OPTS]
  local n=0 out
  until out=$(mount -t ext4 -o "loop${3:+,$3}" "$1" "$2" 2>&1); do
    n=$((n + 1))
    if [ $n -ge 10 ] || ! grep -q "already mounted or mount point busy" <<< "$out"; then
      echo "$out"; return 1
    fi
    echo "    (kernel mount: $out; retrying)" >&2
    sleep 0.3
  done
  return 0
}
kumount() {  # kumount DIR IMG: 0, or 1 with the reason printed
  local n=0 out
  until out=$(umount "$1" 2>&1); do
    n=$((n + 1))
    if [ $n -ge 20 ]; then
      echo "    umount $1: $out (detached lazily)"; umount -l "$1"; break
    fi
    sleep 0.25
  done
  n=0
  while [ -n "$(losetup -j "$2")" ]; do
    n=$((n + 1))
    if [ $n -ge 100 ]; then
      echo "    loop device over $2 still there 10s after the unmount: $(losetup -j "$2") (detached)"
      losetup -j "$2" | cut -d: -f1 | xargs -r -n1 losetup -d
      return 1
    fi
    sleep 0.1
  done
  [ $n -lt 20 ] || echo "    (the loop device over $2 took $((n / 10))s to go)"
  return 0
}

make_template() {  # make_template CASE -> journaled (1/0) in JOURNALED, or fails
  local args
  case $1 in
    ext4-4k) args="-b 4096" ;;
    ext4-1k) args="-b 1024" ;;
    ext4-csum3) args="-b 4096 -O metadata_csum,64bit" ;;
    ext4-blockmap) args="-b 1024 -O ^extent,^64bit" ;;
    nojournal) args="-b 4096 -O ^has_journal" ;;
    *) echo "crash: unknown case $1"; exit 2 ;;
  esac
  rm -f "$TMPL"
  # shellcheck disable=SC2086
  mkfs.ext4 -q -F $args "$TMPL" "$SIZE" > "$WORK/mkfs.out" 2>&1 || { cat "$WORK/mkfs.out"; die "mkfs.ext4 $args"; }
  if [ "$1" = ext4-csum3 ]; then
    # The kernel turns on journal_64bit and journal_checksum_v3 at its first commit.
    kmount "$TMPL" "$KMNT" || die "kernel mount of the template"
    echo x > "$KMNT/x" && sync -f "$KMNT" && rm "$KMNT/x"
    kumount "$KMNT" "$TMPL" || die "kernel unmount of the template"
    dumpe2fs -h "$TMPL" 2>/dev/null | grep -q 'Journal features:.*journal_checksum_v3' \
      || die "the template has no checksum-v3 journal"
  fi
  JOURNALED=1
  dumpe2fs -h "$TMPL" 2>/dev/null | grep -q '^Filesystem features:.*has_journal' || JOURNALED=0
  echo "== $1: mkfs.ext4 $args ($SIZE)$( [ $JOURNALED = 1 ] && dumpe2fs -h "$TMPL" 2>/dev/null \
    | sed -n 's/^Journal features: *\(.*\)/, journal features: \1/p')"
}

declare -A CASE_PASS=() CASE_FAIL=()
FAILED_RUNS=()
PROMISES=0

# One kill point. Returns 0 pass, 1 fail (reasons printed), exits on a broken harness.
one_run() {  # one_run CASE SEED
  local case=$1 seed=$2
  # The kill point: once the manifest holds `after` records, `delay` ms later;
  # one run in five late (0.7-3 s), when the log has filled and started afresh.
  RANDOM=$seed
  local after=$((4 + RANDOM % 140)) delay=$((RANDOM % 700))
  [ $((RANDOM % 5)) -eq 0 ] && delay=$((700 + RANDOM % 2300))
  echo "-- $case seed $seed: crash after $after manifest records + ${delay} ms"
  rm -f "$IMG" "$KIMG" "$EIMG" "$WORK/manifest"
  cp --sparse=always "$TMPL" "$IMG"

  local crash
  if [ "$KIND" = kernel ]; then
    kmount "$IMG" "$MNT" || die "kernel mount"
    crash=shutdown
  else
    python3 "$TOOLS/fstarget.py" mount "$KIND" "$IMG" "$MNT" --log "$WORK/server.log" > "$WORK/mount.out" 2>&1
    local rc=$?
    if [ $rc -eq 77 ]; then cat "$WORK/mount.out"; skip "$(tail -1 "$WORK/mount.out")"; fi
    [ $rc -eq 0 ] || { cat "$WORK/mount.out"; die "mounting $KIND read-write"; }
    local pids
    pids=$(python3 "$TOOLS/fstarget.py" pids "$IMG" | paste -sd,)
    [ -n "$pids" ] || die "cannot find the server process serving $IMG"
    crash="kill:$pids"
  fi

  timeout -s KILL 180 python3 "$TOOLS/crash_work.py" run "$MNT" "$WORK/manifest" --seed "$seed" --workers 4 \
    --crash "$crash" --after-records "$after" --delay-ms "$delay" --max-secs 20 > "$WORK/work.log" 2>&1 &
  WPID=$!
  wait "$WPID"
  local wrc=$?
  WPID=
  sed 's/^/    /' "$WORK/work.log"

  # The dead mount: unmount it; the server's loop device goes with the server.
  if [ "$KIND" = kernel ]; then
    kumount "$MNT" "$IMG" || echo "    (teardown needed force)"
  else
    # Waits for the server to be gone and its loop device detached.
    local forced
    forced=$(python3 "$TOOLS/fstarget.py" umount "$MNT" --image "$IMG" --timeout 30 2>&1) \
      || echo "    (teardown needed force: $forced)"
  fi
  abort_fuse "$MNT"
  [ -z "$(losetup -j "$IMG")" ] || die "a loop device still holds $IMG after the kill"

  local bad=()
  [ $wrc -eq 0 ] || bad+=("workload failed (exit $wrc)")
  local n
  n=$(wc -l < "$WORK/manifest" 2>/dev/null || echo 0)
  PROMISES=$((PROMISES + n))

  cp --sparse=always "$IMG" "$KIMG"
  cp --sparse=always "$IMG" "$EIMG"
  local recovery=no jinfo
  dumpe2fs -h "$IMG" > "$WORK/dumpe2fs.out" 2>/dev/null
  grep -q '^Filesystem features:.*needs_recovery' "$WORK/dumpe2fs.out" && recovery=yes
  jinfo=$(sed -n 's/^Journal sequence: *\(.*\)/sequence \1/p; s/^Journal start: *\(.*\)/start \1/p' "$WORK/dumpe2fs.out" | paste -sd' ')

  if [ "$JOURNALED" = 1 ]; then
    echo "    journal needs recovery: $recovery (superblock: $jinfo)"
    # Where a replay stops (information for whoever reads a failure: a
    # sequence number higher than the expected one means a gap in the log).
    [ $recovery = yes ] && debugfs -R logdump "$IMG" 2>/dev/null \
      | awk '/^Found expected sequence .*commit block/ { n++; last = $4 + 0 } /end of journal/ { e = $0 }
             END { printf "    log: %d commits replayable (last %s); %s\n", n, last, e }' 
    # The kernel's replay.
    if ! kmount "$KIMG" "$KMNT" > "$WORK/kmount.out" 2>&1; then
      sed 's/^/     | /' "$WORK/kmount.out"; bad+=("the kernel cannot mount the crashed image")
    else
      kumount "$KMNT" "$KIMG" || bad+=("kernel unmount after replay")
      [ -n "${CRASH_BREAK:-}" ] && break_image "$KIMG"
      echo "    kernel replay: e2fsck -fn"
      fsck_strict "$KIMG" "$WORK/fsck-k.out" || bad+=("e2fsck -fn after the kernel's replay is not clean")
      if kmount "$KIMG" "$KMNT" ro > "$WORK/kmount.out" 2>&1; then
        # verify takes the tree's snapshot first, on the fresh mount, as compare
        # does on e2fsck's side: once read, unwritten extents are cached zero
        # pages that SEEK_DATA reports as data.
        python3 "$TOOLS/crash_work.py" verify "$KMNT" "$WORK/manifest" --snapshot "$WORK/k.json" \
          > "$WORK/verify.out" 2>&1 || bad+=("fsynced promises broken after the kernel's replay")
        sed 's/^/  /' "$WORK/verify.out"
        kumount "$KMNT" "$KIMG" || bad+=("kernel unmount")
      else
        sed 's/^/     | /' "$WORK/kmount.out"; bad+=("the kernel cannot mount its replayed image read-only")
      fi
    fi
    # e2fsck's replay of a fresh copy.
    e2fsck -fy -E no_optimize_extents "$EIMG" > "$WORK/fsck-e.out" 2>&1
    local erc=$?
    local extra
    extra=$(grep -vE '^(e2fsck [0-9.]+ \(.*\)|Pass [1-5][A-E]?: .*|.*: [0-9]+/[0-9]+ files \([0-9.]+% non-contiguous\), [0-9]+/[0-9]+ blocks|.*: recovering journal|Clearing orphaned inode .*|Truncating orphaned inode .*|Free (blocks|inodes) count wrong \([0-9]+, counted=[0-9]+\)\.|Fix\? yes|.*: \*+ FILE SYSTEM WAS MODIFIED \*+|)$' "$WORK/fsck-e.out")
    echo "    e2fsck replay: -fy exit $erc$( [ -n "$extra" ] && echo ", beyond replay, orphans and the superblock's free counts:")"
    [ -n "$extra" ] && sed 's/^/     | /' <<< "$extra" | head -40
    { [ $erc -le 1 ] && [ -z "$extra" ]; } || bad+=("e2fsck -fy found more than a journal to replay (exit $erc)")
    fsck_strict "$EIMG" "$WORK/fsck-e2.out" || bad+=("e2fsck -fn after e2fsck's replay is not clean")
    if kmount "$EIMG" "$EMNT" ro > "$WORK/emount.out" 2>&1; then
      if [ -s "$WORK/k.json" ]; then
        python3 "$TOOLS/crash_work.py" compare "$EMNT" "$WORK/k.json" > "$WORK/diff.out" 2>&1
        local drc=$?
        sed 's/^/    kernel vs e2fsck replay: /' "$WORK/diff.out"
        [ $drc -eq 0 ] || bad+=("the kernel's and e2fsck's replays differ")
      fi
      kumount "$EMNT" "$EIMG" || bad+=("kernel unmount")
    else
      sed 's/^/     | /' "$WORK/emount.out"; bad+=("the kernel cannot mount e2fsck's replay")
    fi
  else
    e2fsck -fy "$EIMG" > "$WORK/fsck-e.out" 2>&1
    local erc=$?
    local fixes
    fixes=$(grep -cE '\? yes$' "$WORK/fsck-e.out")
    echo "    e2fsck -fy exit $erc, $fixes fixes"
    [ "$fixes" -gt 0 ] && grep -vE '^(e2fsck [0-9.]+ \(.*\)|Pass [1-5][A-E]?: .*|)$' "$WORK/fsck-e.out" | sed 's/^/     | /' | head -40
    [ $erc -lt 4 ] || bad+=("e2fsck -fy could not repair the file system (exit $erc)")
    [ -n "${CRASH_BREAK:-}" ] && break_image "$EIMG"
    fsck_strict "$EIMG" "$WORK/fsck-e2.out" || bad+=("not clean after e2fsck -fy")
    if kmount "$EIMG" "$EMNT" ro > "$WORK/emount.out" 2>&1; then
      python3 "$TOOLS/crash_work.py" verify "$EMNT" "$WORK/manifest" > "$WORK/verify.out" 2>&1 \
        || bad+=("fsynced promises broken after e2fsck -fy")
      sed 's/^/  /' "$WORK/verify.out"
      kumount "$EMNT" "$EIMG" || bad+=("kernel unmount")
    else
      sed 's/^/     | /' "$WORK/emount.out"; bad+=("the kernel cannot mount the repaired image")
    fi
  fi
  rm -f "$WORK/k.json"

  if [ ${#bad[@]} -eq 0 ]; then
    echo "    ok"
    return 0
  fi
  printf '    FAIL: %s\n' "${bad[@]}"
  FAILED_RUNS+=("$case seed $seed: ${bad[*]}")
  if [ "${CRASH_KEEP:-0}" = 1 ]; then
    local keep
    keep=$(mktemp -d "/tmp/crash-fail.$case.$seed.XXXXXX")
    cp --sparse=always "$IMG" "$keep/crashed.img"
    cp "$WORK"/manifest "$WORK"/*.out "$WORK"/*.log "$keep/" 2>/dev/null
    echo "    kept in $keep"
  fi
  return 1
}

# Harness self-test (CRASH_BREAK=promised|entry): after the replay, damage the
# replayed image the way lost data would look; the checks must then fail.
#   promised  16 bytes of 0xff over the start of the newest file promised with
#             content (and still promised at the crash)
#   entry     unlink (debugfs) the newest entry promised by a directory fsync
break_image() {  # break_image IMG
  python3 - "$CRASH_BREAK" "$WORK/manifest" "$1" <<'EOF'
import json, subprocess, sys
how, manifest, img = sys.argv[1:]
recs = sorted((json.loads(l) for l in open(manifest) if l.strip()), key=lambda r: r["seq"])
state, entry = {}, {}
for r in recs:
    if r["op"] in ("data", "dirty", "mortal", "dead"):
        state[r["fid"]] = (r["op"], r)
    if r["op"] in ("link", "maybe", "gone"):
        entry[(r["dir"], r["name"])] = r
def debugfs(cmds, write=False):
    return subprocess.run(["debugfs"] + (["-w"] if write else []) + ["-f", "-", img], input=cmds,
                          capture_output=True, text=True).stdout
if how == "promised":
    bs = int(debugfs("stats -h\n").split("Block size:")[1].split()[0])
    for fid, (op, r) in sorted(state.items(), key=lambda t: -t[1][1]["seq"]):
        if op != "data" or r["size"] == 0:
            continue
        blk = debugfs(f"bmap <{r['ino']}> 0\n").split()
        if blk and blk[-1].isdigit() and int(blk[-1]) > 0:
            with open(img, "r+b") as f:
                f.seek(int(blk[-1]) * bs)
                f.write(b"\xff" * 16)
            print(f"    CRASH_BREAK: overwrote the start of inode {r['ino']} ({fid}) at block {blk[-1]}")
            break
elif how == "entry":
    dirs = {r["fid"]: r["ino"] for r in recs if r["op"] == "link" and r["type"] == "d"}
    dirs["root"] = 2
    for r in sorted(entry.values(), key=lambda r: -r["seq"]):
        if r["op"] == "link" and r["dir"] in dirs:
            debugfs(f"cd <{dirs[r['dir']]}>\nunlink {r['name']}\n", write=True)
            print(f"    CRASH_BREAK: unlinked {r['name']} (inode {r['ino']}) from directory inode {dirs[r['dir']]}")
            break
EOF
}

echo "crash: target $KIND, CRASH_SEED=$BASE, $POINTS kill points per case, cases: $CASES"
t_start=$SECONDS
i=0
for case in $CASES; do
  make_template "$case"
  CASE_PASS[$case]=0 CASE_FAIL[$case]=0
  for p in $(seq 1 "$POINTS"); do
    seed=$((BASE + i))
    i=$((i + 1))
    if one_run "$case" "$seed"; then
      CASE_PASS[$case]=$(( ${CASE_PASS[$case]} + 1 ))
    else
      CASE_FAIL[$case]=$(( ${CASE_FAIL[$case]} + 1 ))
    fi
  done
done

echo "== summary ($KIND, CRASH_SEED=$BASE, $((SECONDS - t_start))s, $PROMISES manifest records)"
for case in $CASES; do
  echo "  $case: ${CASE_PASS[$case]} passed, ${CASE_FAIL[$case]} failed"
done
if [ ${#FAILED_RUNS[@]} -gt 0 ]; then
  printf '  FAILED %s\n' "${FAILED_RUNS[@]}"
  echo "  reproduce one: CRASH_CASES=<case> CRASH_SEED=<seed> CRASH_POINTS=1 bash tests/integration/crash.sh"
  echo "crash: FAIL: ${#FAILED_RUNS[@]} of $i kill points broke a promise or left the file system unclean ($KIND)"
  exit 1
fi
echo "crash: pass: $i kill points, every promise kept, replays clean and identical ($KIND)"
