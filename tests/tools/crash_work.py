#!/usr/bin/env python3
"""Workload, crash trigger and promise checker for tests/integration/crash.sh.

  crash_work.py run DIR MANIFEST --seed S [--workers 4]
                [--crash kill:PID[,PID...] | shutdown | none]
                [--after-records K] [--delay-ms D] [--max-secs T]

      Creates the shared directories d0..d5 (fsyncing the root), then runs
      WORKERS threads, each with its own seeded generator, that create, write
      (sizes from 0 bytes to 1 MiB, sparse, fallocate), truncate, set and remove
      xattrs, rename across directories, replace atomically, unlink, mkdir, rename
      and remove directories, and fsync/fdatasync files and directories. Beside
      that "durable" work, which is written down, they churn other files and
      directories that are never promised (shared names, so workers race).

      A controller thread waits until the manifest holds K records, sleeps D
      milliseconds and crashes the target: SIGKILL to the server pids
      (`kill:`), or EXT4_IOC_SHUTDOWN without flushing the log (`shutdown`, the
      kernel's ext4: a crash of the file system, not of a process). After T
      seconds it crashes regardless of K. The workers stop at the first error
      after the crash; an error before it (the server died on its own, EIO,
      ENOSPC, a read-back that differs from what was written) fails the run.
      A killed server cannot answer after its death, so every fsync that
      returned is a promise. EXT4_IOC_SHUTDOWN is no such barrier: an fsync
      that returns while it runs may or may not have committed, so with
      `shutdown` a worker records nothing once the crash has begun.

      MANIFEST (a file outside the mount; every record is flushed and fsynced
      before the worker goes on) holds JSON lines, in order (seq), written only
      after the promise is made:
        data  fid ino size sha how xattrs after fsync/fdatasync of the file returned:
                                          the inode's exact content and, after
                                          fsync, its user.* xattrs; fsync also
                                          promises that the inode exists (some name
                                          refers to it), fdatasync only its data
        dirty fid                         before the worker changes a promised file:
                                          its content is unknown until the next data
        link  dir name fid ino type       after fsync of the directory returned:
                                          entry name in dir refers to that inode
        maybe dir name alts               before a rename/unlink touching the entry:
                                          it refers to one of alts (fids; null: absent)
        gone  dir name                    after the fsync of the directory: no entry
        mortal fid dir name / dead fid    before an unlink or replace of the object
                                          (promised only while dir/name still refers
                                          to it) / after the directory fsync: gone
      Directories are named by fid (the root is "root"), so renaming a directory
      keeps the promises about what is inside it. Names are never reused.

  crash_work.py verify DIR MANIFEST [--snapshot OUT.json]
      With --snapshot, first saves tests/tools/treecompare.py's snapshot of DIR
      (before anything here reads a file: reading changes what SEEK_DATA says
      about unwritten extents). Then walks the tree (lost+found included) and
      checks every promise of the manifest: every promised entry (dir inode,
      name) -> inode, every absent entry absent, every uncertain entry one of
      its alternatives, every promised object reachable under some name with
      its type, and for files the exact size, SHA-256 and user.* xattrs of the
      last promise. Exit 1 on any broken promise.

  crash_work.py compare DIR SNAPSHOT.json
      treecompare.py's snapshot of DIR (e2fsck's replay) must equal
      SNAPSHOT.json (the kernel's replay). Exit 1 on any difference.

Python 3 standard library only.
"""

import argparse
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import random
import signal
import stat
import struct
import sys
import threading
import time

GONE = {errno.ENOTCONN, errno.EIO, errno.ECONNABORTED, errno.ENODEV, errno.ESHUTDOWN, errno.EBADF,
        errno.EROFS}
TOPS = 6
EXT4_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32)
EXT4_GOING_FLAGS_NOLOGFLUSH = 2
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def ename(e):
    return errno.errorcode.get(e, str(e))


def fallocate(fd, mode, off, length):
    if libc.fallocate(fd, mode, off, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def fsync_path(path, data_only=False):
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if os.path.isdir(path) else 0))
    try:
        (os.fdatasync if data_only else os.fsync)(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- the manifest

class Manifest:
    def __init__(self, path):
        self.f = open(path, "w")
        self.cond = threading.Condition()
        self.n = 0

    def record(self, op, **kw):
        kw["op"] = op
        with self.cond:
            kw["seq"] = self.n
            self.f.write(json.dumps(kw, sort_keys=True) + "\n")
            self.f.flush()
            os.fsync(self.f.fileno())
            self.n += 1
            self.cond.notify_all()


class Crashed(Exception):
    """The target went away after the crash: the worker stops quietly."""


class Failure(Exception):
    """Something went wrong before the crash: the run fails."""


# ---------------------------------------------------------------- objects a worker owns

class Dir:
    def __init__(self, fid, ino, parent, name):
        self.fid, self.ino, self.parent, self.name = fid, ino, parent, name
        self.entry_promised = True

    def path(self, root):
        return root if self.parent is None else os.path.join(self.parent.path(root), self.name)


class File:
    def __init__(self, fid, ino, parent, name):
        self.fid, self.ino, self.parent, self.name = fid, ino, parent, name
        self.model = bytearray()
        self.xattrs = {}
        self.entry_promised = False
        self.dirty = False

    def path(self, root):
        return os.path.join(self.parent.path(root), self.name)


SIZES = [0, 1, 17, 511, 1024, 4095, 4096, 4097, 8191, 12288, 65539, 131072, 200_000]


class Worker:
    def __init__(self, k, seed, root, manifest, tops, crashed, racing_ok):
        self.k = k
        self.racing_ok = racing_ok
        self.rng = random.Random(seed * 1000 + k)
        self.root = root
        self.m = manifest
        self.tops = tops
        self.crashed = crashed
        self.files = []      # File objects alive
        self.subdirs = []    # Dir objects of ours (children of top dirs)
        self.n = 0
        self.stats = {}
        self.error = None
        self.live_bytes = 0

    # ---- helpers
    def name(self, prefix):
        self.n += 1
        return f"{prefix}{self.k}_{self.n}"

    def count(self, what):
        self.stats[what] = self.stats.get(what, 0) + 1

    def size(self):
        r = self.rng.random()
        if r < 0.03:
            return 1 << 20
        if r < 0.2:
            return self.rng.randrange(1, 300_000)
        return self.rng.choice(SIZES)

    def dirs(self):
        return self.tops + self.subdirs

    def files_in(self, d):
        return [f for f in self.files if f.parent is d]

    def mutate(self, fd, f, allow_xattr=True):
        """One change to an open file, applied to the model too."""
        rng = self.rng
        r = rng.random()
        cur = len(f.model)
        if r < 0.45:      # write, possibly past the end (a hole) or overwriting
            off = rng.choice([0, cur, rng.randrange(0, cur + 1), cur + rng.randrange(1, 70_000),
                              rng.randrange(0, 4) * 4096])
            data = rng.randbytes(self.size() or 1)
            os.pwrite(fd, data, off)
            if off > cur:
                f.model.extend(bytes(off - cur))
            f.model[off:off + len(data)] = data
        elif r < 0.6:     # truncate down or up
            new = rng.choice([0, cur // 2, cur + rng.randrange(1, 50_000), rng.randrange(0, cur + 1),
                              (cur // 4096) * 4096])
            os.ftruncate(fd, new)
            if new < cur:
                del f.model[new:]
            else:
                f.model.extend(bytes(new - cur))
        elif r < 0.7:     # fallocate: extend with zeros, or punch a hole
            off = rng.randrange(0, cur + 20_000)
            length = rng.randrange(1, 40_000)
            punch = rng.random() < 0.5 and cur > 0
            mode = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE if punch else 0
            try:
                fallocate(fd, mode, off, length)
            except OSError as e:
                if e.errno != errno.EOPNOTSUPP:
                    raise
                self.count("fallocate-unsupported")
                return
            if punch:
                end = min(off + length, cur)
                if off < end:
                    f.model[off:end] = bytes(end - off)
            elif off + length > cur:
                f.model.extend(bytes(off + length - cur))
        elif allow_xattr and r < 0.9:
            name = f"user.k{rng.randrange(4)}"
            value = rng.randbytes(rng.choice([0, 5, 40, 120, 300, rng.randrange(0, 900)]))
            try:
                os.setxattr(fd, name, value)
                f.xattrs[name] = value.hex()
            except OSError as e:
                if e.errno != errno.ENOSPC:  # a full xattr block is a legitimate answer
                    raise
                self.count("xattr-enospc")
        elif allow_xattr and f.xattrs:
            name = rng.choice(sorted(f.xattrs))
            os.removexattr(fd, name)
            del f.xattrs[name]
        else:             # append
            data = rng.randbytes(rng.randrange(1, 20_000))
            os.pwrite(fd, data, cur)
            f.model.extend(data)

    def synced(self):
        """Called when an fsync returned: may the worker record its promise?"""
        if self.crashed.is_set() and not self.racing_ok:
            # EXT4_IOC_SHUTDOWN is no barrier: an fsync that returns while it runs
            # may or may not have committed. A killed server cannot answer after
            # its death, so with kill: every answer is a promise.
            raise Crashed()

    def fsync_dir(self, d):
        fsync_path(d.path(self.root) if isinstance(d, Dir) else d)
        self.synced()

    def promise_data(self, fd, f, how):
        """fsync or fdatasync FD, then record what is now durable."""
        if how == "fsync":
            os.fsync(fd)
        else:
            os.fdatasync(fd)
        self.synced()
        if self.rng.random() < 0.1:  # read back: what the server returns must be what was written
            back = bytearray()
            while True:
                chunk = os.pread(fd, 1 << 20, len(back))
                if not chunk:
                    break
                back.extend(chunk)
            if back != f.model:
                raise Failure(f"{f.path(self.root)}: read back {len(back)} bytes that differ from the "
                              f"{len(f.model)} bytes written")
        self.m.record("data", fid=f.fid, ino=f.ino, size=len(f.model), how=how,
                      sha=hashlib.sha256(f.model).hexdigest(),
                      xattrs=dict(f.xattrs) if how == "fsync" else None)
        f.dirty = False
        self.count(how)

    def promise_entries(self, d, objs):
        self.fsync_dir(d)
        self.count("fsync-dir")
        for o in objs:
            self.m.record("link", dir=d.fid, name=o.name, fid=o.fid, ino=o.ino,
                          type="d" if isinstance(o, Dir) else "f")
            o.entry_promised = True

    # ---- durable operations
    def op_create(self):
        rng = self.rng
        d = rng.choice(self.dirs())
        f = File(f"w{self.k}.{self.n + 1}", 0, d, self.name("f"))
        fd = os.open(f.path(self.root), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            f.ino = os.fstat(fd).st_ino
            self.files.append(f)
            data = rng.randbytes(self.size())
            if data:
                os.write(fd, data)
                f.model.extend(data)
            for _ in range(rng.choice([0, 0, 1, 2, 3])):
                self.mutate(fd, f)
            self.promise_data(fd, f, "fsync" if rng.random() < 0.8 else "fdatasync")
        finally:
            os.close(fd)
        if rng.random() < 0.85:
            self.promise_entries(d, [f])
        self.count("create")

    def op_modify(self):
        cands = [f for f in self.files]
        if not cands:
            return self.op_create()
        f = self.rng.choice(cands)
        if not f.dirty:
            self.m.record("dirty", fid=f.fid)
            f.dirty = True
        fd = os.open(f.path(self.root), os.O_RDWR)
        try:
            for _ in range(self.rng.randrange(1, 4)):
                self.mutate(fd, f)
            if self.rng.random() < 0.85:
                self.promise_data(fd, f, "fsync" if self.rng.random() < 0.7 else "fdatasync")
        finally:
            os.close(fd)
        self.count("modify")

    def op_fsync_file(self):
        cands = [f for f in self.files if f.dirty]
        if not cands:
            return self.op_modify()
        f = self.rng.choice(cands)
        fd = os.open(f.path(self.root), os.O_RDONLY)
        try:
            self.promise_data(fd, f, "fsync")
        finally:
            os.close(fd)

    def op_fsync_dir(self):
        d = self.rng.choice(self.dirs())
        objs = [f for f in self.files_in(d) if not f.entry_promised]
        self.promise_entries(d, objs)

    def rename(self, o, newdir, newname):
        """Move object O (File or Dir) to newdir/newname; both directories fsynced."""
        olddir, oldname = o.parent, o.name
        self.m.record("maybe", dir=olddir.fid, name=oldname, alts=[o.fid, None])
        self.m.record("maybe", dir=newdir.fid, name=newname, alts=[o.fid, None])
        os.rename(o.path(self.root), os.path.join(newdir.path(self.root), newname))
        o.parent, o.name = newdir, newname
        self.fsync_dir(newdir)
        if olddir is not newdir:
            self.fsync_dir(olddir)
        self.m.record("link", dir=newdir.fid, name=newname, fid=o.fid, ino=o.ino,
                      type="d" if isinstance(o, Dir) else "f")
        self.m.record("gone", dir=olddir.fid, name=oldname)
        o.entry_promised = True

    def op_rename_file(self):
        if not self.files:
            return self.op_create()
        f = self.rng.choice(self.files)
        dirs = [d for d in self.dirs() if d is not f.parent] or self.dirs()
        self.rename(f, self.rng.choice(dirs), self.name("f"))
        self.count("rename")

    def op_unlink(self):
        if not self.files:
            return self.op_create()
        f = self.rng.choice(self.files)
        self.m.record("maybe", dir=f.parent.fid, name=f.name, alts=[f.fid, None])
        self.m.record("mortal", fid=f.fid, dir=f.parent.fid, name=f.name)
        self.files.remove(f)
        os.unlink(f.path(self.root))
        self.fsync_dir(f.parent)
        self.m.record("gone", dir=f.parent.fid, name=f.name)
        self.m.record("dead", fid=f.fid)
        self.count("unlink")

    def op_replace(self):
        """Write a temporary file, fsync it, rename it over one of ours, fsync the directory."""
        if not self.files:
            return self.op_create()
        rng = self.rng
        old = rng.choice(self.files)
        d = old.parent
        t = File(f"w{self.k}.{self.n + 1}", 0, d, self.name("t"))
        fd = os.open(t.path(self.root), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            t.ino = os.fstat(fd).st_ino
            self.files.append(t)
            data = rng.randbytes(self.size())
            os.write(fd, data)
            t.model.extend(data)
            if rng.random() < 0.5:
                self.mutate(fd, t)
            self.promise_data(fd, t, "fsync")
        finally:
            os.close(fd)
        self.m.record("maybe", dir=d.fid, name=t.name, alts=[t.fid, None])
        self.m.record("maybe", dir=d.fid, name=old.name,
                      alts=[old.fid, t.fid] + ([] if old.entry_promised else [None]))
        self.m.record("mortal", fid=old.fid, dir=d.fid, name=old.name)
        self.files.remove(old)
        tmpname = t.name
        os.rename(t.path(self.root), old.path(self.root))
        t.name = old.name
        self.fsync_dir(d)
        self.m.record("link", dir=d.fid, name=t.name, fid=t.fid, ino=t.ino, type="f")
        self.m.record("gone", dir=d.fid, name=tmpname)
        self.m.record("dead", fid=old.fid)
        t.entry_promised = True
        self.count("replace")

    def op_mkdir(self):
        if len(self.subdirs) >= 6:
            return self.op_rmdir()
        parent = self.rng.choice(self.tops)
        name = self.name("s")
        path = os.path.join(parent.path(self.root), name)
        os.mkdir(path)
        d = Dir(f"w{self.k}.{self.n}", os.lstat(path).st_ino, parent, name)
        self.subdirs.append(d)
        d.entry_promised = False
        self.promise_entries(parent, [d])
        self.count("mkdir")

    def op_rename_dir(self):
        if not self.subdirs:
            return self.op_mkdir()
        d = self.rng.choice(self.subdirs)
        dirs = [t for t in self.tops if t is not d.parent]
        self.rename(d, self.rng.choice(dirs), self.name("s"))
        self.count("rename-dir")

    def op_rmdir(self):
        empty = [d for d in self.subdirs if not self.files_in(d)]
        if not empty:
            return self.op_unlink()
        d = self.rng.choice(empty)
        self.m.record("maybe", dir=d.parent.fid, name=d.name, alts=[d.fid, None])
        self.m.record("mortal", fid=d.fid, dir=d.parent.fid, name=d.name)
        self.subdirs.remove(d)
        os.rmdir(d.path(self.root))
        self.fsync_dir(d.parent)
        self.m.record("gone", dir=d.parent.fid, name=d.name)
        self.m.record("dead", fid=d.fid)
        self.count("rmdir")

    # ---- churn: never promised, shared names, races between workers
    def churn(self):
        rng = self.rng
        top = rng.choice(self.tops).path(self.root)
        name = os.path.join(top, f"c{rng.randrange(30)}")
        r = rng.random()
        try:
            if r < 0.3:
                fd = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644)
                try:
                    os.pwrite(fd, rng.randbytes(rng.randrange(1, 65536)), rng.randrange(0, 300_000))
                    if rng.random() < 0.15:
                        (os.fsync if rng.random() < 0.5 else os.fdatasync)(fd)
                finally:
                    os.close(fd)
            elif r < 0.4:
                os.truncate(name, rng.randrange(0, 100_000))
            elif r < 0.55:
                os.rename(name, os.path.join(rng.choice(self.tops).path(self.root), f"c{rng.randrange(30)}"))
            elif r < 0.65:
                os.unlink(name)
            elif r < 0.75:
                try:
                    os.setxattr(name, f"user.c{rng.randrange(3)}", rng.randbytes(rng.randrange(0, 300)))
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
            elif r < 0.8:
                os.removexattr(name, f"user.c{rng.randrange(3)}")
            elif r < 0.85:
                os.symlink(f"c{rng.randrange(30)}", os.path.join(top, f"l{rng.randrange(10)}"))
            elif r < 0.9:
                os.link(name, os.path.join(rng.choice(self.tops).path(self.root), f"c{rng.randrange(30)}"))
            elif r < 0.95:
                p = os.path.join(top, f"cd{rng.randrange(5)}")
                os.mkdir(p) if rng.random() < 0.6 else os.rmdir(p)
            else:
                fd = os.open(name, os.O_WRONLY)
                try:
                    fallocate(fd, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE if rng.random() < 0.5 else 0,
                              rng.randrange(0, 100_000), rng.randrange(1, 100_000))
                finally:
                    os.close(fd)
        except OSError as e:
            if e.errno in GONE:
                raise
            if e.errno not in (errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR,
                               errno.ENODATA, errno.EOPNOTSUPP):
                raise
        self.count("churn")

    OPS = [("create", 22), ("modify", 14), ("fsync_file", 4), ("fsync_dir", 5), ("rename_file", 10),
           ("unlink", 5), ("replace", 7), ("mkdir", 3), ("rename_dir", 2), ("rmdir", 1), ("churn", 27)]

    def run(self, deadline):
        names = [n for n, _ in self.OPS]
        weights = [w for _, w in self.OPS]
        try:
            while time.time() < deadline and not self.crashed.is_set():
                op = self.rng.choices(names, weights)[0]
                if op != "churn" and sum(len(f.model) for f in self.files) > (12 << 20):
                    op = "unlink"
                getattr(self, "churn" if op == "churn" else "op_" + op)()
        except OSError as e:
            if self.crashed.is_set():
                self.count(f"stopped-by-{ename(e.errno)}")
                return
            self.error = f"worker {self.k}: {ename(e.errno)} before the crash: {e}"
        except Crashed:
            self.count("stopped-by-a-racing-fsync")
        except Failure as e:
            if not self.crashed.is_set():
                self.error = f"worker {self.k}: {e}"
        except Exception as e:  # a bug in the tool: fail loudly
            self.error = f"worker {self.k}: {type(e).__name__}: {e}"


def crash_now(how, root):
    """Returns a description, or raises Failure when the target was already gone."""
    if how.startswith("kill:"):
        pids = [int(p) for p in how[5:].split(",") if p]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                raise Failure(f"server pid {pid} was gone before the kill")
        return f"SIGKILL to {pids}"
    if how == "shutdown":
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", EXT4_GOING_FLAGS_NOLOGFLUSH))
        finally:
            os.close(fd)
        return "EXT4_IOC_SHUTDOWN (NOLOGFLUSH)"
    return "no crash"


def cmd_run(a):
    m = Manifest(a.manifest)
    crashed = threading.Event()
    t0 = time.time()
    tops = []
    root = Dir("root", 2, None, "")
    for i in range(TOPS):
        p = os.path.join(a.dir, f"d{i}")
        os.mkdir(p)
        tops.append(Dir(f"top{i}", os.lstat(p).st_ino, root, f"d{i}"))
    root.ino = os.lstat(a.dir).st_ino
    fsync_path(a.dir)
    for t in tops:
        m.record("link", dir="root", name=t.name, fid=t.fid, ino=t.ino, type="d")

    workers = [Worker(k, a.seed, a.dir, m, tops, crashed, not a.crash.startswith("shutdown"))
               for k in range(a.workers)]
    deadline = t0 + a.max_secs + (3600 if a.crash != "none" else 0)
    threads = [threading.Thread(target=w.run, args=(deadline,), daemon=True) for w in workers]
    for t in threads:
        t.start()

    outcome = {}

    def controller():
        with m.cond:
            reached = m.cond.wait_for(lambda: m.n >= a.after_records, timeout=a.max_secs)
        if a.crash == "none":
            return
        time.sleep(a.delay_ms / 1000)
        outcome["records"] = m.n
        outcome["at"] = time.time() - t0
        outcome["reached"] = reached
        crashed.set()
        try:
            outcome["how"] = crash_now(a.crash, a.dir)
        except (Failure, OSError) as e:
            outcome["error"] = str(e)

    ctl = threading.Thread(target=controller, daemon=True)
    ctl.start()
    ctl.join()
    for t in threads:
        t.join(timeout=max(1, deadline - time.time()) if a.crash == "none" else 30)
    hung = sum(t.is_alive() for t in threads)

    stats = {}
    for w in workers:
        for k, v in w.stats.items():
            stats[k] = stats.get(k, 0) + v
    if a.crash != "none":
        print(f"crash_work: {outcome.get('how', 'crash failed')} at {outcome.get('at', 0):.2f}s after "
              f"{outcome.get('records', 0)} records"
              + ("" if outcome.get("reached", True) else f" (wanted {a.after_records}: time limit)"))
    print(f"crash_work: {m.n} manifest records; " + ", ".join(f"{k} {v}" for k, v in sorted(stats.items())))
    errors = [w.error for w in workers if w.error]
    if "error" in outcome:
        errors.append(outcome["error"])
    if hung:
        errors.append(f"{hung} worker(s) still blocked 30s after the crash")
    for e in errors:
        print(f"crash_work: FAIL: {e}")
    sys.stdout.flush()
    os._exit(1 if errors else 0)  # blocked daemon threads must not hold the exit


# ---------------------------------------------------------------- verify

def walk(root):
    """dirents {dir ino: {name: ino}}, kinds {ino: 'f'|'d'|'l'|...}, paths {ino: a path}."""
    dirents, kinds, paths = {}, {}, {}
    st = os.lstat(root)
    kinds[st.st_ino] = "d"
    paths[st.st_ino] = root
    stack = [(root, st.st_ino)]
    while stack:
        path, ino = stack.pop()
        ents = dirents.setdefault(ino, {})
        for e in os.scandir(path):
            s = e.stat(follow_symlinks=False)
            ents[e.name] = s.st_ino
            k = "d" if stat.S_ISDIR(s.st_mode) else "f" if stat.S_ISREG(s.st_mode) else "o"
            kinds[s.st_ino] = k
            paths.setdefault(s.st_ino, e.path)
            if k == "d":
                stack.append((e.path, s.st_ino))
    return dirents, kinds, paths


def user_xattrs(path):
    return {n: os.getxattr(path, n, follow_symlinks=False).hex()
            for n in os.listxattr(path, follow_symlinks=False) if n.startswith("user.")}


def treecompare():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import treecompare as tc
    return tc


def cmd_compare(a):
    tc = treecompare()
    served = {k: json.loads(json.dumps(v)) for k, v in tc.walk(a.dir).items()}  # as a snapshot reads back
    return tc.compare(tc.load(a.snapshot), served, 30, set(), names=("kernel-replay", "e2fsck-replay"))


def cmd_verify(a):
    if a.snapshot:
        tc = treecompare()
        tc.save(tc.walk(a.dir), a.snapshot)
    recs = []
    with open(a.manifest) as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        try:
            recs.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                print(f"  manifest line {i + 1} is not JSON")
                return 2
    recs.sort(key=lambda r: r["seq"])

    objs = {"root": {"ino": os.lstat(a.dir).st_ino, "type": "d", "state": "alive"}}
    entries = {}
    for r in recs:
        op = r["op"]
        if op == "data":
            o = objs.setdefault(r["fid"], {"type": "f"})
            o.update(ino=r["ino"], state="alive", size=r["size"], sha=r["sha"], known=True, seq=r["seq"])
            # fsync makes the inode durable; fdatasync only its data (a new inode
            # that fdatasync found with no data to flush may vanish, as on the
            # kernel's ext4): its content is checked where it is found.
            o["exists"] = o.get("exists", False) or r.get("how") != "fdatasync"
            if r.get("xattrs") is not None:
                o["xattrs"] = r["xattrs"]
            else:
                o.pop("xattrs", None)
        elif op == "dirty":
            objs[r["fid"]]["known"] = False
            objs[r["fid"]].pop("xattrs", None)
        elif op == "link":
            o = objs.setdefault(r["fid"], {"type": r["type"], "state": "alive"})
            o["ino"] = r["ino"]
            o["exists"] = True
            entries[(r["dir"], r["name"])] = ("link", r["fid"])
        elif op == "maybe":
            entries[(r["dir"], r["name"])] = ("maybe", r["alts"])
        elif op == "gone":
            entries[(r["dir"], r["name"])] = ("gone",)
        elif op == "mortal":
            objs[r["fid"]].update(state="mortal", at=(r["dir"], r["name"]))
        elif op == "dead":
            objs[r["fid"]]["state"] = "dead"

    dirents, kinds, paths = walk(a.dir)
    problems = []

    def where(fid):
        o = objs.get(fid)
        if o is None:
            return fid
        p = paths.get(o["ino"])
        return os.path.relpath(p, a.dir) if p else f"{fid} (ino {o['ino']}, not found)"

    checked_entries = 0
    for (dfid, name), e in sorted(entries.items(), key=lambda t: (t[0][0], t[0][1])):
        d = objs[dfid]
        if d["state"] != "alive" or d["ino"] not in dirents:
            continue  # the directory itself is checked below, or may be gone
        actual = dirents[d["ino"]].get(name)
        label = f"entry {where(dfid)}/{name}"
        checked_entries += 1
        if e[0] == "link":
            want = objs[e[1]]["ino"]
            if actual != want:
                problems.append(f"{label}: fsynced as inode {want}, found "
                                f"{'nothing' if actual is None else 'inode %d' % actual}")
        elif e[0] == "gone":
            if actual is not None:
                problems.append(f"{label}: removed and fsynced, found inode {actual}")
        else:
            allowed = {None if f is None else objs[f]["ino"] for f in e[1]}
            if actual not in allowed:
                problems.append(f"{label}: must be one of {sorted(allowed, key=str)}, found {actual}")

    checked_files = checked_dirs = 0
    for fid, o in sorted(objs.items()):
        if o["state"] == "dead" or "ino" not in o:
            continue
        ino = o["ino"]
        if o["state"] == "mortal":
            # Being removed: checked only where its last name still refers to it
            # (once freed, its inode number may already be someone else's).
            d = objs[o["at"][0]]
            if d.get("ino") not in dirents or dirents[d["ino"]].get(o["at"][1]) != ino:
                continue
        if ino not in kinds and not o.get("exists"):
            continue
        if ino not in kinds:
            problems.append(f"{'directory' if o['type'] == 'd' else 'file'} {fid} (inode {ino}): "
                            f"promised, but no name in the tree refers to it")
            continue
        if kinds[ino] != o["type"]:
            problems.append(f"{where(fid)}: inode {ino} should be type {o['type']}, is {kinds[ino]}")
            continue
        if o["type"] == "d":
            checked_dirs += 1
            continue
        if not o.get("known"):
            continue
        p = paths[ino]
        try:
            with open(p, "rb") as f:
                data = f.read()
        except OSError as ex:
            problems.append(f"{where(fid)}: cannot read: {ex}")
            continue
        checked_files += 1
        if len(data) != o["size"] or hashlib.sha256(data).hexdigest() != o["sha"]:
            problems.append(f"{where(fid)} (inode {ino}): size {len(data)}, fsynced (record {o['seq']}) as {o['size']} bytes; "
                            f"content {'differs' if len(data) == o['size'] else 'and size differ'}")
            continue
        if "xattrs" in o:
            have = user_xattrs(p)
            if have != o["xattrs"]:
                problems.append(f"{where(fid)} (inode {ino}): xattrs {sorted(have)} differ from the "
                                f"fsynced {sorted(o['xattrs'])}")

    lf = os.path.join(a.dir, "lost+found")
    lost = len(os.listdir(lf)) if os.path.isdir(lf) else 0
    print(f"  promises: {checked_files} files with exact content, {checked_dirs} directories, "
          f"{checked_entries} entries; broken: {len(problems)}; "
          f"{sum(1 for k in kinds.values() if k == 'f')} files in the tree, {lost} in lost+found")
    for p in problems[:30]:
        print(f"  BROKEN {p}")
    if len(problems) > 30:
        print(f"  ... and {len(problems) - 30} more")
    return 1 if problems else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("dir")
    r.add_argument("manifest")
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--workers", type=int, default=4)
    r.add_argument("--crash", default="none", help="kill:PID[,PID...], shutdown, or none")
    r.add_argument("--after-records", type=int, default=50)
    r.add_argument("--delay-ms", type=int, default=0)
    r.add_argument("--max-secs", type=float, default=20)
    v = sub.add_parser("verify")
    v.add_argument("dir")
    v.add_argument("manifest")
    v.add_argument("--snapshot")
    c = sub.add_parser("compare")
    c.add_argument("dir")
    c.add_argument("snapshot")
    a = ap.parse_args()
    return {"run": cmd_run, "verify": cmd_verify, "compare": cmd_compare}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
