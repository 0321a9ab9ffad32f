#!/usr/bin/env python3
"""Mount and unmount test targets over an ext2/3/4 image, and clean up after them.

Target kinds (the same image can be mounted by any of them):
  kernel       the kernel's ext4 driver: mount -t ext4 -o loop[,OPTS] IMG DIR
  ext4iomap    our product path: fuservicemount IMG DIR -t fuse.ext4 [-o OPTS]
               (spawns a sandboxed ext4iomapd; `umount DIR` ends it)
  ext4iomapd   our server standalone: ext4iomapd --device IMG --mountpoint DIR [-o OPTS]
  fuse2fs      e2fsprogs' FUSE driver: fuse2fs -f IMG DIR -o fakeroot[,OPTS]

Binaries of ours come from $EXT4IOMAP_BUILD (default <repo>/.build/debug).

Unmounting waits until every server process that holds the image (or a loop device
over it) has exited and every loop device over it is detached, so that the image
can be checked or copied right after. Python 3 standard library only.

CLI (used by the integration scripts and bench/):
  fstarget.py mount KIND IMG DIR [-o OPTS]     exit 0 mounted; 77 read-write refused as not
                                               implemented (reason on the last line); else 32
  fstarget.py umount DIR [--image IMG]         unmount and wait for the servers
  fstarget.py pids IMG                         pids of servers holding IMG (one a line)
  fstarget.py cleanup [--image IMG]... [DIR]...  lazy unmount, kill servers, detach loops
  fstarget.py probe-rw KIND [--size 16M]       0: read-write mount works; 77: refused
                                               (the refusal is the last line); 1: other failure
"""

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time

KINDS = ("kernel", "ext4iomap", "ext4iomapd", "fuse2fs")
SERVER_COMMS = ("ext4iomapd", "fuse2fs")
# What our server (and helper) say while read-write is not implemented.
RW_REFUSAL = re.compile(r"read-write[^\n]*(not supported|not implemented|unsupported|refus)", re.I)


def repo_root():
    return os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def build_dir():
    return os.environ.get("EXT4IOMAP_BUILD") or os.path.join(repo_root(), ".build", "debug")


def log(msg):
    print(f"fstarget: {msg}", file=sys.stderr, flush=True)


def run(cmd, check=False, timeout=120):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(shlex.quote, cmd))}: exit {p.returncode}: {p.stdout.strip()}")
    return p


# ---------------------------------------------------------------- mount table

def _unescape(s):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def mounts():
    """[(mountpoint, fstype, source)] from /proc/self/mountinfo."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            parts = left.split()
            r = right.split()
            out.append((_unescape(parts[4]), r[0] if r else "", _unescape(r[1]) if len(r) > 1 else ""))
    return out


def abort_fuse_connection(mnt):
    """Abort the FUSE connection of the mount at MNT (its number is the mount's
    device number, major << 20 | minor). A fuseblk umount waits, uninterruptibly,
    for the server's DESTROY answer: a trap must not wait on a hung server."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            parts = left.split()
            if len(parts) < 5 or _unescape(parts[4]) != mnt or not right.startswith("fuse"):
                continue
            major, _, minor = parts[2].partition(":")
            try:
                conn = (int(major) << 20) | int(minor)
                if not os.path.exists(f"/sys/fs/fuse/connections/{conn}"):
                    run(["mount", "-t", "fusectl", "fusectl", "/sys/fs/fuse/connections"], timeout=10)
                with open(f"/sys/fs/fuse/connections/{conn}/abort", "w") as a:
                    a.write("1")
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass


def is_mounted(mnt):
    mnt = os.path.realpath(mnt)
    return any(m[0] == mnt for m in mounts())


def wait_mounted(mnt, timeout=30, proc=None):
    end = time.time() + timeout
    while time.time() < end:
        if is_mounted(mnt):
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


# ---------------------------------------------------------------- loops and servers

def loops_for(img):
    """Loop devices whose backing file is IMG (by path, or by device and inode)."""
    real = os.path.realpath(img)
    try:
        st = os.stat(img)
        ident = (st.st_dev, st.st_ino)
    except OSError:
        ident = None
    out = []
    try:
        names = os.listdir("/sys/block")
    except OSError:
        return []
    for name in names:
        if not name.startswith("loop"):
            continue
        try:
            with open(f"/sys/block/{name}/loop/backing_file") as f:
                backing = f.read().strip()
        except OSError:
            continue
        path = backing.removesuffix(" (deleted)")
        same = os.path.realpath(path) == real
        if not same and ident and not backing.endswith(" (deleted)"):
            try:
                b = os.stat(path)
                same = (b.st_dev, b.st_ino) == ident
            except OSError:
                pass
        if same:
            out.append("/dev/" + name)
    return out


def _rdev(path):
    try:
        return os.stat(path).st_rdev
    except OSError:
        return None


def server_pids(img):
    """Server processes (ext4iomapd, fuse2fs) that hold IMG or a loop device over it."""
    try:
        st = os.stat(img)
        ident = (st.st_dev, st.st_ino)
    except OSError:
        ident = None
    rdevs = {r for r in (_rdev(d) for d in loops_for(img)) if r}
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if comm not in SERVER_COMMS:
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                s = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if (ident and (s.st_dev, s.st_ino) == ident) or (s.st_rdev and s.st_rdev in rdevs):
                out.append(int(pid))
                break
    return sorted(out)


# ---------------------------------------------------------------- mount / umount

def mount(kind, img, mnt, opts="", build=None, timeout=60, logfile=None):
    """Mount IMG on MNT as KIND. Returns None on success, else the failure text."""
    build = build or build_dir()
    for exe in {"ext4iomap": ("fuservicemount", "ext4iomapd"), "ext4iomapd": ("ext4iomapd",)}.get(kind, ()):
        if not os.access(os.path.join(build, exe), os.X_OK):
            return f"{os.path.join(build, exe)}: not built (set EXT4IOMAP_BUILD or run swift build)"
    img = os.path.abspath(img)
    mnt = os.path.abspath(mnt)
    os.makedirs(mnt, exist_ok=True)
    if kind == "kernel":
        o = "loop" + ("," + opts if opts else "")
        p = run(["mount", "-t", "ext4", "-o", o, img, mnt], timeout=timeout)
        return None if p.returncode == 0 else (p.stdout.strip() or f"mount: exit {p.returncode}")
    if kind == "ext4iomap":
        cmd = [os.path.join(build, "fuservicemount"), img, mnt, "-t", "fuse.ext4",
               "--server", os.path.join(build, "ext4iomapd")]
        if opts:
            cmd += ["-o", opts]
        # Not a pipe: the spawned server inherits the helper's stdout/stderr and
        # would hold a pipe open for as long as it runs.
        with (open(logfile, "a+b") if logfile else tempfile.TemporaryFile()) as out:
            start = out.seek(0, os.SEEK_END)
            try:
                rc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                rc = None
            out.seek(start)
            text = out.read().decode(errors="replace").strip()
        if rc != 0:
            return text or (f"fuservicemount: exit {rc}" if rc is not None else f"fuservicemount: no answer in {timeout}s")
        return None
    if kind in ("ext4iomapd", "fuse2fs"):
        if kind == "ext4iomapd":
            cmd = [os.path.join(build, "ext4iomapd"), "--device", img, "--mountpoint", mnt]
            if opts:
                cmd += ["-o", opts]
        else:
            cmd = ["fuse2fs", "-f", img, mnt, "-o", "fakeroot" + ("," + opts if opts else "")]
        out = open(logfile, "ab") if logfile else tempfile.TemporaryFile()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        _children.append(proc)
        if wait_mounted(mnt, timeout, proc):
            out.close()
            return None
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        out.seek(0)
        text = out.read().decode(errors="replace").strip()
        out.close()
        return text or f"{kind}: exit {proc.returncode}"
    raise ValueError(f"unknown target kind {kind!r} (one of {', '.join(KINDS)})")


_children = []  # servers started by this process, reaped after unmounts


def reap():
    for p in list(_children):
        if p.poll() is not None:
            _children.remove(p)


def detach_loops(img):
    for dev in loops_for(img):
        run(["losetup", "-d", dev])


def kill_servers(img, sig=signal.SIGKILL):
    for pid in server_pids(img):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def umount(mnt, img=None, timeout=60):
    """Unmount MNT; if IMG is given, wait for its servers to exit and its loops to go.
    Returns None when everything went away cleanly, else a description of what was forced."""
    mnt = os.path.abspath(mnt)
    forced = []
    if is_mounted(mnt):
        for attempt in range(20):
            p = run(["umount", mnt])
            if p.returncode == 0 or not is_mounted(mnt):
                break
            time.sleep(0.25)
        if is_mounted(mnt):
            run(["umount", "-l", mnt])
            forced.append(f"lazy unmount of {mnt} ({p.stdout.strip()})")
    if img:
        end = time.time() + timeout
        while time.time() < end and (server_pids(img) or loops_for(img)):
            reap()
            time.sleep(0.05)
        reap()
        pids = server_pids(img)
        if pids:
            forced.append(f"servers still running after {timeout}s: {pids} (killed)")
            kill_servers(img)
            time.sleep(0.5)
        if loops_for(img):
            detach_loops(img)
            time.sleep(0.2)
            if loops_for(img):
                forced.append(f"loop devices over {img} would not detach: {loops_for(img)}")
    return "; ".join(forced) or None


def cleanup(images=(), dirs=()):
    """Best effort, for traps: lazy-unmount DIRs, kill servers of IMGs, detach their loops."""
    for d in dirs:
        d = os.path.abspath(d)
        # Nested mounts first (deepest path first).
        for m in sorted((m[0] for m in mounts() if m[0] == d or m[0].startswith(d + "/")), reverse=True):
            abort_fuse_connection(m)
            try:
                if run(["umount", m], timeout=30).returncode != 0:
                    run(["umount", "-l", m])
            except subprocess.TimeoutExpired:
                run(["umount", "-l", m])
    for img in images:
        kill_servers(img)
    end = time.time() + 10
    while time.time() < end and any(server_pids(i) for i in images):
        time.sleep(0.05)
    for img in images:
        detach_loops(img)
    end = time.time() + 10
    while time.time() < end and any(loops_for(i) for i in images):
        time.sleep(0.1)
        for img in images:
            detach_loops(img)


def probe_rw(kind, size="16M", build=None):
    """Try a read-write mount of a fresh image. Returns (status, message):
    0 works, 77 refused as not implemented, 1 any other failure."""
    work = tempfile.mkdtemp(prefix="ext4iomap-probe.")
    img = os.path.join(work, "probe.img")
    mnt = os.path.join(work, "mnt")
    try:
        p = run(["mkfs.ext4", "-q", "-F", img, size])
        if p.returncode != 0:
            return 1, f"mkfs.ext4 failed: {p.stdout.strip()}"
        err = mount(kind, img, mnt, "", build=build, timeout=60)
        if err is not None:
            if RW_REFUSAL.search(err):
                line = [l for l in err.splitlines() if RW_REFUSAL.search(l)][-1].strip()
                return 77, f"{kind} refuses read-write mounts: {line}"
            return 1, f"read-write mount with {kind} failed: {err}"
        try:
            with open(os.path.join(mnt, "probe"), "w") as f:
                f.write("probe\n")
                f.flush()
                os.fsync(f.fileno())
            msg = None
        except OSError as e:
            msg = f"{kind} mounted read-write but writing failed: {e}"
        forced = umount(mnt, img)
        if msg:
            return 1, msg
        if forced:
            return 1, f"{kind}: unmount was not clean: {forced}"
        return 0, f"{kind} mounts read-write"
    finally:
        cleanup([img], [mnt])
        subprocess.run(["rm", "-rf", work])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("mount")
    m.add_argument("kind", choices=KINDS)
    m.add_argument("image")
    m.add_argument("dir")
    m.add_argument("-o", dest="opts", default="")
    m.add_argument("--log", help="server output goes here (ext4iomapd, fuse2fs)")
    u = sub.add_parser("umount")
    u.add_argument("dir")
    u.add_argument("--image")
    u.add_argument("--timeout", type=int, default=60)
    p = sub.add_parser("pids")
    p.add_argument("image")
    c = sub.add_parser("cleanup")
    c.add_argument("--image", action="append", default=[])
    c.add_argument("dirs", nargs="*")
    ab = sub.add_parser("abort", help="abort the FUSE connection of the mount at DIR (for traps)")
    ab.add_argument("dir")
    r = sub.add_parser("probe-rw")
    r.add_argument("kind", choices=KINDS)
    r.add_argument("--size", default="16M")
    a = ap.parse_args(argv)
    if a.cmd == "mount":
        err = mount(a.kind, a.image, a.dir, a.opts, logfile=a.log)
        if err:
            print(err, file=sys.stderr)
            refusal = [l for l in err.splitlines() if RW_REFUSAL.search(l)]
            if refusal and "ro" not in a.opts.split(","):
                # A read-write mount refused as not implemented: the caller may skip.
                print(f"{a.kind} refuses read-write mounts: {refusal[-1].strip()}")
                return 77
            return 32
        return 0
    if a.cmd == "umount":
        forced = umount(a.dir, a.image, a.timeout)
        if forced:
            print(f"fstarget: {forced}", file=sys.stderr)
            return 1
        return 0
    if a.cmd == "pids":
        for pid in server_pids(a.image):
            print(pid)
        return 0
    if a.cmd == "cleanup":
        cleanup(a.image, a.dirs)
        return 0
    if a.cmd == "abort":
        abort_fuse_connection(os.path.abspath(a.dir))
        return 0
    if a.cmd == "probe-rw":
        st, msg = probe_rw(a.kind, a.size)
        print(msg)
        return st
    return 2


if __name__ == "__main__":
    sys.exit(main())
