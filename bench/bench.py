#!/usr/bin/env python3
"""Benchmarks: ext4iomapd (our server, through fuservicemount), the kernel's ext4
(loop) and fuse2fs, side by side, on copies of the same freshly made image.

Workloads (fio unless noted):
  seqwrite   1 GiB sequential write, bs=1M, end_fsync=1
  randwrite  4 KiB random writes over a 256 MiB file, buffered (direct=0), fsync at end
  seqread    1 GiB sequential read, bs=1M, of a file written beforehand (page cache dropped)
  randread   4 KiB random reads over that file for --randread-secs seconds (page cache dropped)
  fsync      4 KiB random writes, each followed by fsync, for --fsync-secs seconds:
             IOPS and fsync latency p50/p99 (fio --fsync=1)
  meta       create/stat/unlink of 10,000 small files (bench/meta.py)

Write workloads need a read-write mount; a target that refuses one (our server until
its write side lands) is reported as "n/a (read-write not available)". Read workloads
mount read-only. The server's peak RSS (VmHWM) is read at the end of the read runs.

  bench.py [--targets ext4iomap,kernel,fuse2fs] [--image-size 3G] [--quick]
           [--out DIR] [--workloads seqwrite,randwrite,seqread,randread,meta]
           [--uring on|off|leave]

A target may carry mount options after a colon: ext4iomap:uring=0. Our server may
also come from another build, labelled in the table: ext4iomap@base=/tmp/base/.build/release
(to compare two builds in one run).

Writes results.md (a markdown table) and results.json (raw numbers, fio's JSON
included) into --out. Root needed. Python 3 standard library only (plus fio, e2fsprogs,
fuse2fs).
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "tools"))
import fstarget  # noqa: E402

_LABEL = {"ext4iomap": "ext4iomapd", "ext4iomapd": "ext4iomapd (standalone)", "kernel": "kernel ext4", "fuse2fs": "fuse2fs"}
URING_PARAM = "/sys/module/fuse/parameters/enable_uring"


def split_target(t):
    """A target is KIND[@NAME=BUILD][:OPTIONS]: mount options for that target (ext4iomap:uring=0),
    and for our server another build directory, labelled NAME (ext4iomap@base=/tmp/base/.build/release)."""
    kind, _, opts = t.partition(":")
    kind, _, _ = kind.partition("@")
    return kind, opts


def target_build(t):
    """(label, build dir) of a KIND@NAME=BUILD target, else (None, None)."""
    spec = t.partition(":")[0].partition("@")[2]
    if not spec:
        return None, None
    name, _, build = spec.partition("=")
    return name, build or None


class _Labels(dict):
    def __missing__(self, t):
        kind, opts = split_target(t)
        name, _ = target_build(t)
        base = f"{_LABEL[kind]} [{name}]" if name else _LABEL[kind]
        return f"{base} ({opts})" if opts else base


LABEL = _Labels()
NA_RW = "n/a (read-write not available)"


def log(m):
    print(f"bench: {m}", file=sys.stderr, flush=True)


def sh(cmd, **kw):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def drop_caches():
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as e:
        log(f"cannot drop caches: {e}")


def fio(name, directory, args, timeout=1800):
    cmd = ["fio", f"--name={name}", f"--directory={directory}", "--ioengine=psync", "--numjobs=1",
           "--group_reporting", "--output-format=json"] + args
    t = time.time()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
    wall = time.time() - t
    if p.returncode != 0:
        raise RuntimeError(f"fio {name}: exit {p.returncode}: {p.stderr.strip()[-500:]}")
    j = json.loads(p.stdout[p.stdout.index("{"):])
    job = j["jobs"][0]
    side = "write" if job["write"]["io_bytes"] > 0 else "read"
    r = job[side]
    # fio's bw excludes end_fsync time; report bytes / job runtime including it too.
    bw = r["bw_bytes"]
    runtime_ms = job.get("job_runtime") or r.get("runtime") or 0
    eff = r["io_bytes"] / (runtime_ms / 1000) if runtime_ms else bw
    return {"MiB_s": bw / 2**20, "MiB_s_incl_fsync": eff / 2**20, "iops": r["iops"], "io_bytes": r["io_bytes"],
            "runtime_ms": runtime_ms, "wall_s": wall, "cmd": " ".join(cmd), "fio": j}


class Bench:
    def __init__(self, a):
        self.a = a
        self.work = tempfile.mkdtemp(prefix="ext4iomap-bench.", dir=a.workdir)
        self.pristine = os.path.join(self.work, "pristine.img")
        self.img = os.path.join(self.work, "run.img")
        self.mnt = os.path.join(self.work, "mnt")
        os.makedirs(self.mnt)
        self.results = {}  # target -> workload -> dict or str
        self.rss = {}
        s = a.scale
        self.seq_size = f"{max(1, int(1024 * s))}M"
        self.rand_size = f"{max(16, int(256 * s))}M"
        self.nfiles = max(100, int(10000 * s))

    def cleanup(self):
        fstarget.cleanup([self.img, self.pristine], [self.mnt])
        shutil.rmtree(self.work, ignore_errors=True)

    def fresh(self, src):
        if os.path.exists(self.img):
            os.unlink(self.img)
        r = sh(["cp", "--sparse=always", src, self.img])
        if r.returncode != 0:
            raise RuntimeError(r.stdout)

    def mount(self, target, ro):
        kind, opts = split_target(target)
        opts = ",".join(o for o in ("ro" if ro else "", opts) if o)
        _, build = target_build(target)
        err = fstarget.mount(kind, self.img, self.mnt, opts, build=build,
                             logfile=os.path.join(self.work, f"server-{split_target(target)[0]}.log"))
        if err and not ro and fstarget.RW_REFUSAL.search(err):
            return NA_RW
        if err:
            raise RuntimeError(f"mount {target} ({'ro' if ro else 'rw'}): {err}")
        return None

    def umount(self):
        forced = fstarget.umount(self.mnt, self.img, timeout=300)
        if forced:
            log(f"unmount: {forced}")

    def record(self, target, wl, val):
        self.results.setdefault(target, {})[wl] = val
        if isinstance(val, dict):
            main = f"{val['MiB_s']:.1f} MiB/s" if "MiB_s" in val else f"{val['total_ops']:.0f} ops/s"
            log(f"{LABEL[target]:>12} {wl:>9}: {main}")
        else:
            log(f"{LABEL[target]:>12} {wl:>9}: {val}")

    def run(self):
        a = self.a
        wl = a.workloads
        r = sh(["mkfs.ext4", "-q", "-F", "-L", "bench", self.pristine, a.image_size])
        if r.returncode != 0:
            raise RuntimeError(f"mkfs.ext4: {r.stdout}")
        writes = [w for w in ("seqwrite", "randwrite", "fsync", "meta") if w in wl]
        if writes:
            for t in a.targets:
                self.fresh(self.pristine)
                na = self.mount(t, ro=False)
                if na:
                    for w in writes:
                        self.record(t, w, na)
                    continue
                try:
                    if "seqwrite" in wl:
                        drop_caches()
                        self.record(t, "seqwrite", fio("seqwrite", self.mnt, [
                            "--rw=write", "--bs=1M", f"--size={self.seq_size}", "--end_fsync=1"]))
                    if "randwrite" in wl:
                        drop_caches()
                        self.record(t, "randwrite", fio("randwrite", self.mnt, [
                            "--rw=randwrite", "--bs=4k", f"--size={self.rand_size}", "--direct=0",
                            "--end_fsync=1", "--randrepeat=1"]))
                    if "fsync" in wl:
                        drop_caches()
                        r = fio("fsync", self.mnt, [
                            "--rw=randwrite", "--bs=4k", "--size=16M", "--direct=0", "--fsync=1",
                            "--time_based", f"--runtime={a.fsync_secs}", "--randrepeat=1"])
                        pct = r["fio"]["jobs"][0].get("sync", {}).get("lat_ns", {}).get("percentile", {})
                        if "50.000000" not in pct or "99.000000" not in pct:
                            raise RuntimeError("fio reported no fsync latency percentiles")
                        r["fsync_p50_us"] = pct["50.000000"] / 1000
                        r["fsync_p99_us"] = pct["99.000000"] / 1000
                        self.record(t, "fsync", r)
                    if "meta" in wl:
                        drop_caches()
                        p = sh([sys.executable, os.path.join(HERE, "meta.py"), self.mnt, "--files", str(self.nfiles)])
                        if p.returncode != 0:
                            raise RuntimeError(f"meta.py: {p.stdout}")
                        self.record(t, "meta", json.loads(p.stdout.strip().splitlines()[-1]))
                finally:
                    self.umount()
                fs = sh(["e2fsck", "-fn", self.img])
                self.results[t]["fsck_after_writes"] = "clean" if fs.returncode == 0 else fsck_summary(fs)
                self.results[t]["fsck_output"] = fs.stdout
        reads = [w for w in ("seqread", "randread") if w in wl]
        if reads:
            # The read image: the pristine image plus one file written by the kernel.
            self.fresh(self.pristine)
            kmnt = self.mnt
            err = fstarget.mount("kernel", self.img, kmnt, "")
            if err:
                raise RuntimeError(err)
            try:
                fio("layout", kmnt, ["--rw=write", "--bs=1M", f"--size={self.seq_size}", "--end_fsync=1",
                                     "--filename=readfile"])
            finally:
                fstarget.umount(kmnt, self.img)
            readimg = os.path.join(self.work, "read.img")
            os.replace(self.img, readimg)
            for t in a.targets:
                self.fresh(readimg)
                self.mount(t, ro=True)
                try:
                    if "seqread" in wl:
                        drop_caches()
                        self.record(t, "seqread", fio("seqread", self.mnt, [
                            "--rw=read", "--bs=1M", f"--size={self.seq_size}", "--filename=readfile", "--readonly"]))
                    if "randread" in wl:
                        drop_caches()
                        self.record(t, "randread", fio("randread", self.mnt, [
                            "--rw=randread", "--bs=4k", f"--size={self.seq_size}", "--filename=readfile", "--readonly",
                            "--time_based", f"--runtime={a.randread_secs}", "--randrepeat=1"]))
                    if split_target(t)[0] in ("ext4iomap", "ext4iomapd", "fuse2fs"):
                        for pid in fstarget.server_pids(self.img):
                            hwm = vm_hwm(pid)
                            if hwm:
                                self.rss[t] = max(self.rss.get(t, 0), hwm)
                                log(f"{LABEL[t]:>12} peak RSS (VmHWM) during reads: {hwm / 1024:.1f} MiB")
                finally:
                    self.umount()
            os.unlink(readimg)

    def report(self):
        a = self.a
        rows = [
            ("seqwrite", f"sequential write {self.seq_size}iB, bs=1M, end_fsync=1 (MiB/s)", "MiB_s"),
            ("randwrite", f"random write 4 KiB over {self.rand_size}iB, buffered, end_fsync=1 (IOPS)", "iops"),
            ("seqread", f"sequential read {self.seq_size}iB, bs=1M, cold cache (MiB/s)", "MiB_s"),
            ("randread", f"random read 4 KiB, {a.randread_secs}s, cold cache (IOPS)", "iops"),
            ("fsync", f"4 KiB random write + fsync each, {a.fsync_secs}s (IOPS)", "iops"),
            ("fsync.p50", "  fsync latency p50 (µs)", "fsync_p50_us"),
            ("fsync.p99", "  fsync latency p99 (µs)", "fsync_p99_us"),
            ("meta", f"create+stat+unlink {self.nfiles} files of 1 KiB (ops/s)", "total_ops"),
            ("meta.create", "  create (ops/s, incl. syncfs)", "create_ops"),
            ("meta.stat", "  stat (ops/s)", "stat_ops"),
            ("meta.unlink", "  unlink (ops/s, incl. syncfs)", "unlink_ops"),
        ]
        ts = a.targets
        lines = ["| workload | " + " | ".join(LABEL[t] for t in ts) + " |",
                 "|---|" + "---:|" * len(ts)]
        for key, title, field in rows:
            wl = key.split(".")[0]
            if wl not in a.workloads:
                continue
            cells = []
            for t in ts:
                v = self.results.get(t, {}).get(wl)
                if v is None:
                    cells.append("-")
                elif isinstance(v, str):
                    cells.append(v)
                else:
                    x = v[field]
                    cells.append(f"{x:,.1f}" if field == "MiB_s" else f"{x:,.0f}")
            lines.append(f"| {title} | " + " | ".join(cells) + " |")
        if self.rss:
            lines.append("| server peak RSS during reads (VmHWM, MiB) | " + " | ".join(
                f"{self.rss[t] / 1024:.1f}" if t in self.rss else "-" for t in ts) + " |")
        fsck = [f"{LABEL[t]}: {self.results[t].get('fsck_after_writes')}" for t in ts
                if isinstance(self.results.get(t), dict) and "fsck_after_writes" in self.results[t]]
        kernel = platform.release()
        head = (f"Run {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, kernel {kernel}, "
                f"{os.cpu_count()} CPUs, image {a.image_size} (sparse, in {a.workdir or tempfile.gettempdir()}), "
                f"scale {a.scale}, build {fstarget.build_dir()}")
        md = head + "\n\n" + "\n".join(lines) + "\n"
        if fsck:
            md += "\ne2fsck -fn after the write workloads: " + "; ".join(fsck) + "\n"
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "results.md"), "w") as f:
            f.write(md)
        raw = {"when": datetime.datetime.now().isoformat(), "kernel": kernel, "cpus": os.cpu_count(),
               "args": vars(a), "results": self.results, "vmhwm_kib": self.rss}
        with open(os.path.join(a.out, "results.json"), "w") as f:
            json.dump(raw, f, indent=1, default=str)
        print(md)
        # The raw numbers, compact.
        for t in ts:
            for w, v in self.results.get(t, {}).items():
                if isinstance(v, dict):
                    keep = {k: (round(x, 2) if isinstance(x, float) else x) for k, x in v.items()
                            if k not in ("fio", "cmd")}
                    print(f"raw {LABEL[t]} {w}: {json.dumps(keep)}")
        print(f"raw results: {os.path.join(a.out, 'results.json')}")


def fsck_summary(p):
    """One line for a failed e2fsck -fn: exit status, number of problems, the first one."""
    lines = [l.strip() for l in p.stdout.splitlines()]
    probs = [l for l in lines if l.endswith("?") or l.endswith("? no") or "differences" in l]
    first = next((l for l in lines if l and not l.startswith(("e2fsck", "Pass ")) and not l.endswith("? no")), "")
    return f"NOT clean (exit {p.returncode}, {len(probs)} problems; first: {first[:120]})"


def vm_hwm(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default="ext4iomap,kernel,fuse2fs")
    ap.add_argument("--workloads", default="seqwrite,randwrite,fsync,seqread,randread,meta")
    ap.add_argument("--image-size", default="3G")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply data sizes and file counts (quick runs: 0.1)")
    ap.add_argument("--quick", action="store_true", help="same as --scale 0.05 --randread-secs 5")
    ap.add_argument("--randread-secs", type=int, default=20)
    ap.add_argument("--fsync-secs", type=int, default=15, help="length of the fsync-latency run")
    ap.add_argument("--workdir", default=None, help="where the sparse images go (default /tmp)")
    ap.add_argument("--out", default="bench/out")
    ap.add_argument("--uring", choices=("on", "off", "leave"), default="leave",
                    help="set the fuse module's enable_uring for the run (restored after); "
                         "only servers that ask for FUSE over io_uring use it (ours, not fuse2fs)")
    a = ap.parse_args()
    if a.quick:
        a.scale, a.randread_secs, a.fsync_secs = 0.05, 5, 5
    a.targets = [t for t in a.targets.split(",") if t]
    a.workloads = [w for w in a.workloads.split(",") if w]
    for t in a.targets:
        if split_target(t)[0] not in fstarget.KINDS:
            ap.error(f"unknown target {t}")
    if os.geteuid() != 0:
        ap.error("benchmarks mount file systems: run as root")
    saved_uring = None
    if a.uring != "leave":
        try:
            with open(URING_PARAM) as f:
                saved_uring = f.read().strip()
            with open(URING_PARAM, "w") as f:
                f.write("Y" if a.uring == "on" else "N")
        except OSError as e:
            ap.error(f"--uring {a.uring}: {URING_PARAM}: {e}")
    try:
        return run_bench(a)
    finally:
        if saved_uring is not None:
            with open(URING_PARAM, "w") as f:
                f.write(saved_uring)


def run_bench(a):
    try:
        with open(URING_PARAM) as f:
            log(f"fuse enable_uring={f.read().strip()}")
    except OSError:
        log("fuse enable_uring: not available on this kernel")
    b = Bench(a)
    try:
        b.run()
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        log(f"FAILED: {e}")
        b.report()
        return 1
    finally:
        b.cleanup()
    b.report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
