#!/usr/bin/env python3
"""Randomized differential file system tester (in the spirit of fsx and fsstress).

A seeded generator produces a sequence of namespace, data and metadata operations.
The same sequence runs on two mounts of copies of the same image: A, the system under
test, and B, the reference (normally the kernel's ext4). After every operation the
results (return value or errno, data read back) must be equal; every --check-every
operations and at the end the whole trees must be equal (names, types, modes, owners,
sizes, link counts, hard-link structure, xattrs, symlink targets, bytes; optionally
mtimes, directory sizes, block counts, SEEK_DATA/SEEK_HOLE maps, inode counts).

Managed mode (--image or --mkfs): the tool copies the image for A and B, mounts them
(see fstarget.py for the target kinds), runs, unmounts, runs `e2fsck -fn` on both,
then mounts both images read-only with the kernel and compares those trees too (what
A wrote must be what the kernel reads). On a divergence it prints the seed, the op
index and the op, then shrinks: it replays prefixes on fresh copies (binary search on
the op count, then tries dropping single ops) and prints the shortest reproducer as
a runnable op list (JSON lines), saved with a replay command.

Unmanaged mode (--a-dir, --b-dir): runs on two existing directories; no fsck, no
shrinking (the op list up to the divergence is still saved).

Examples:
  fsdiff_stress.py run --mkfs "-t ext4 -b 4096" --size 64M --a kernel --b kernel --seed 1
  fsdiff_stress.py run --image base.img --a ext4iomap --b kernel --seed 7 --ops 3000
  fsdiff_stress.py run --a-dir /mnt/x --b-dir /mnt/y --seed 3
  fsdiff_stress.py replay repro.json            # a saved reproducer, same targets
  fsdiff_stress.py show repro.json              # print an op list readably

Exit status: 0 equal and clean; 1 divergence or fsck/kernel-view failure; 2 setup
error; 3 an operation hung (watchdog). Python 3 standard library only; root needed
for managed mode.
"""

import argparse
import ctypes
import errno
import hashlib
import json
import os
import random
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fstarget  # noqa: E402
import treecompare  # noqa: E402

# ---------------------------------------------------------------- syscalls

_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
FALLOC_MODES = {
    "alloc": 0,
    "keep": FALLOC_FL_KEEP_SIZE,
    "punch": FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
    "zero": FALLOC_FL_ZERO_RANGE,
    "zero_keep": FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
}
SEEK_DATA = getattr(os, "SEEK_DATA", 3)
SEEK_HOLE = getattr(os, "SEEK_HOLE", 4)

try:
    _renameat2 = _libc.renameat2
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    _renameat2.restype = ctypes.c_int
except AttributeError:  # old glibc: raw syscall (x86_64: 316, aarch64: 276)
    _renameat2 = None
_linkat = _libc.linkat
_linkat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
_linkat.restype = ctypes.c_int
AT_SYMLINK_FOLLOW = 0x400
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int


def renameat2(src, dst, flags):
    if _renameat2 is not None:
        r = _renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), flags)
    else:
        nr = {"x86_64": 316, "aarch64": 276}.get(os.uname().machine)
        if nr is None:
            raise OSError(errno.ENOSYS, "renameat2")
        _libc.syscall.restype = ctypes.c_long
        r = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(AT_FDCWD), os.fsencode(src),
                          ctypes.c_int(AT_FDCWD), os.fsencode(dst), ctypes.c_uint(flags))
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def link_fd(fd, dst):
    """linkat(AT_FDCWD, "/proc/self/fd/N", AT_FDCWD, dst, AT_SYMLINK_FOLLOW): gives an
    O_TMPFILE file a name (os.link would link the /proc symlink itself)."""
    if _linkat(AT_FDCWD, f"/proc/self/fd/{fd}".encode(), AT_FDCWD, os.fsencode(dst), AT_SYMLINK_FOLLOW) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def fallocate(fd, mode, off, length):
    if _fallocate(fd, mode, off, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


# ---------------------------------------------------------------- configuration

DEFAULT_WEIGHTS = {
    # namespace
    "creat": 8, "mkdir": 4, "symlink": 3, "link": 3, "mknod": 2, "unlink": 4, "rmdir": 2,
    "rename": 7, "tmpfile": 1,
    # data
    "write": 20, "append": 5, "read": 8, "truncate": 6, "fallocate": 8, "copy_range": 4,
    # metadata
    "chmod": 3, "chown": 2, "utime": 3, "setxattr": 5, "removexattr": 2, "fsync": 3,
    "stat": 3, "listdir": 2, "hold": 2, "release": 2,
}

BIG = 1 << 44  # beyond s_maxbytes of every ext2/3/4 geometry: EFBIG


class Config:
    def __init__(self, a=None):
        g = (lambda k, d: getattr(a, k, d) if a is not None else d)
        self.nfiles = g("nfiles", 12)
        self.ndirs = g("ndirs", 4)
        self.depth = g("depth", 3)
        self.max_size = parse_size(g("max_size", "256K"))
        self.max_io = parse_size(g("max_io", "64K"))
        self.max_xattr = g("max_xattr", 300)
        self.slots = g("slots", 4)
        self.far_prob = g("far_prob", 0.004)
        self.rename2 = not g("no_rename2", False)
        self.falloc_modes = [m for m in (g("falloc_modes", None) or ",".join(FALLOC_MODES)).split(",") if m]
        for m in self.falloc_modes:
            if m not in FALLOC_MODES:
                raise SystemExit(f"--falloc-modes: unknown mode {m!r} (modes: {', '.join(FALLOC_MODES)})")
        self.weights = dict(DEFAULT_WEIGHTS)
        for name in (g("exclude", None) or "").split(","):
            if name.strip():
                if name.strip() not in self.weights:
                    raise SystemExit(f"--exclude: unknown op {name.strip()!r} (ops: {', '.join(self.weights)})")
                self.weights[name.strip()] = 0
        for kv in (g("weight", None) or []):
            k, _, v = kv.partition("=")
            if k not in self.weights:
                raise SystemExit(f"--weight: unknown op {k!r}")
            self.weights[k] = int(v)
        # comparison switches
        self.mtime = g("compare_mtime", False)
        self.dir_size = g("compare_dir_size", False)
        self.blocks = g("compare_blocks", False)
        self.seek = g("compare_seek", False)
        self.statfs = g("compare_statfs", False)

    def to_json(self):
        return {k: v for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, d):
        c = cls()
        c.__dict__.update(d)
        return c


def parse_size(s):
    if isinstance(s, int):
        return s
    s = str(s).strip()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1:].upper(), 1)
    return int(s[:-1] if mult > 1 else s) * mult


# ---------------------------------------------------------------- generator

class Generator:
    """Deterministic op generator. It keeps a model of the namespace (paths and
    their types), updated from results both sides agreed on, to choose mostly
    existing objects while still producing error cases."""

    def __init__(self, seed, cfg):
        self.rng = random.Random(seed)
        self.cfg = cfg
        self.model = {}  # relpath -> 'f' file, 'd' dir, 'l' symlink, 'p' fifo, 'c' char dev
        self.held = set()
        self.xattrs = {}  # path -> names set there (approximate: not moved by renames)
        ops = [k for k, w in cfg.weights.items() if w > 0]
        self.ops = ops
        self.w = [cfg.weights[k] for k in ops]

    # -- choosing names
    def _depth(self, p):
        return 0 if p == "" else p.count("/") + 1

    def dirs(self):
        return [""] + [p for p, t in self.model.items() if t == "d" and self._depth(p) < self.cfg.depth]

    def name(self, prefix):
        r = self.rng.random()
        if r < 0.005:
            return "L" * 255
        if r < 0.008:
            return "M" * 256  # ENAMETOOLONG
        if r < 0.10:
            prefix = self.rng.choice("fdslp")
        n = self.cfg.nfiles if prefix in "fslp" else self.cfg.ndirs
        return f"{prefix}{self.rng.randrange(max(1, n))}"

    def new_path(self, prefix):
        parent = self.rng.choice(self.dirs())
        n = self.name(prefix)
        return n if parent == "" else f"{parent}/{n}"

    def existing(self, types=None, prob=0.9, prefix="f"):
        cands = [p for p, t in self.model.items() if types is None or t in types]
        if cands and self.rng.random() < prob:
            return self.rng.choice(sorted(cands))
        return self.new_path(prefix)

    def file_target(self, allow_slot=True):
        if allow_slot and self.held and self.rng.random() < 0.25:
            return {"slot": self.rng.choice(sorted(self.held))}
        return {"path": self.existing("f", 0.93)}

    # -- sizes
    def offset(self, length=0):
        ms = self.cfg.max_size
        r = self.rng.random()
        if r < 0.35:
            o = self.rng.randrange(0, max(1, ms // 8))
        elif r < 0.55:  # around a block boundary
            o = max(0, self.rng.randrange(0, max(1, ms // 1024)) * 1024 + self.rng.randint(-3, 3))
        else:
            o = self.rng.randrange(0, ms)
        return max(0, min(o, ms - length))

    def length(self):
        r = self.rng.random()
        mi = self.cfg.max_io
        if r < 0.45:
            return self.rng.randint(1, min(512, mi))
        if r < 0.75:
            return self.rng.randint(1, min(8192, mi))
        if r < 0.85:
            return min(mi, self.rng.choice([1024, 2048, 4096, 8192, 65536]))
        return self.rng.randint(1, mi)

    def data(self, op):
        op["data"] = self.rng.getrandbits(32)
        if self.rng.random() < 0.1:
            op["zero"] = True
        return op

    def times(self):
        r = self.rng.random()
        if r < 0.7:
            s = self.rng.randrange(0, 1 << 31)
        elif r < 0.85:
            s = self.rng.randrange(1 << 31, 1 << 34)  # beyond 2038 (extra epoch bits)
        else:
            s = -self.rng.randrange(1, 1 << 31)  # before 1970
        return s * 1_000_000_000 + self.rng.randrange(0, 1_000_000_000)

    # -- one op
    def next(self):
        kind = self.rng.choices(self.ops, self.w)[0]
        rng = self.rng
        if kind == "creat":
            return {"op": "creat", "path": self.existing("f", 0.2), "mode": rng.choice([0o644, 0o600, 0o755, 0o4755, 0o2644, 0o000]),
                    "excl": rng.random() < 0.3, "trunc": rng.random() < 0.2}
        if kind == "mkdir":
            return {"op": "mkdir", "path": self.existing("d", 0.1, "d") if rng.random() < 0.5 else self.new_path("d"),
                    "mode": rng.choice([0o755, 0o700, 0o1777, 0o2755])}
        if kind == "symlink":
            r = rng.random()
            if r < 0.5:
                target = self.existing(None, 0.7)
            elif r < 0.7:
                target = "../" * rng.randint(0, 2) + self.name("f")
            elif r < 0.85:
                target = "t" * rng.randint(55, 65)  # around the fast/slow symlink boundary
            elif r < 0.97:
                target = "/nonexistent/" + "x" * rng.randint(1, 900)
            else:
                target = "y" * rng.choice([1023, 1024, 4094, 4095, 4096])
            return {"op": "symlink", "target": target, "path": self.new_path("s")}
        if kind == "link":
            return {"op": "link", "src": self.existing("flpc", 0.95), "path": self.new_path("f")}
        if kind == "mknod":
            if rng.random() < 0.8:
                return {"op": "mknod", "path": self.new_path("p"), "type": "fifo", "mode": 0o644}
            return {"op": "mknod", "path": self.new_path("p"), "type": "chr", "mode": 0o600,
                    "major": 1, "minor": rng.choice([3, 5])}
        if kind == "unlink":
            return {"op": "unlink", "path": self.existing("flpc" if rng.random() < 0.9 else None, 0.9)}
        if kind == "rmdir":
            return {"op": "rmdir", "path": self.existing("d" if rng.random() < 0.9 else None, 0.9, "d")}
        if kind == "rename":
            src = self.existing(None, 0.95)
            dst = self.existing(None, 1.0) if rng.random() < 0.4 else self.new_path(rng.choice("fd"))
            r = rng.random()
            flags = 0 if r < 0.7 or not self.cfg.rename2 else ("noreplace" if r < 0.85 else "exchange")
            return {"op": "rename", "src": src, "path": dst, "flags": flags}
        if kind == "tmpfile":
            op = {"op": "tmpfile", "dir": rng.choice(self.dirs()), "len": self.length(), "mode": 0o640}
            if rng.random() < 0.6:
                op["link"] = self.new_path("f")
            return self.data(op)
        if kind == "write":
            op = {"op": "write", **self.file_target()}
            if rng.random() < self.cfg.far_prob:
                op.update(off=BIG + rng.randrange(0, 1 << 20), len=rng.randint(1, 4096))
            else:
                n = self.length()
                op.update(len=n, off=self.offset(n))
            return self.data(op)
        if kind == "append":
            return self.data({"op": "append", "path": self.existing("f", 0.93), "len": self.length()})
        if kind == "read":
            n = self.length()
            return {"op": "read", **self.file_target(), "off": self.offset(n) if rng.random() < 0.9 else self.cfg.max_size + 10,
                    "len": n}
        if kind == "truncate":
            if rng.random() < self.cfg.far_prob:
                size = BIG + rng.randrange(0, 4096)
            elif rng.random() < 0.3:
                size = 0 if rng.random() < 0.3 else rng.randrange(0, 4096)
            else:
                size = self.offset()
            return {"op": "truncate", **self.file_target(), "size": size}
        if kind == "fallocate":
            mode = rng.choice(sorted(self.cfg.falloc_modes))
            n = self.length() if rng.random() < 0.98 else 0  # len 0: EINVAL
            return {"op": "fallocate", **self.file_target(), "mode": mode, "off": self.offset(n), "len": n}
        if kind == "copy_range":
            n = self.length()
            src = self.file_target()
            dst = self.file_target()
            return {"op": "copy_range", "src": src, "dst": dst, "soff": self.offset(n), "doff": self.offset(n), "len": n}
        if kind == "chmod":
            mode = rng.choice([0o644, 0o755, 0o600, 0o000, 0o4755, 0o2755, 0o6711, 0o1777, 0o2745]) \
                if rng.random() < 0.7 else rng.randrange(0, 0o10000)
            return {"op": "chmod", "path": self.existing(None, 0.95), "mode": mode}
        if kind == "chown":
            ids = [-1, 0, 1, 1000, 65534, 70000]
            return {"op": "chown", "path": self.existing(None, 0.95), "uid": rng.choice(ids), "gid": rng.choice(ids)}
        if kind == "utime":
            return {"op": "utime", "path": self.existing(None, 0.95), "atime": self.times(), "mtime": self.times()}
        if kind == "setxattr":
            r = rng.random()
            n = rng.randint(0, 64) if r < 0.6 else (rng.randint(0, self.cfg.max_xattr) if r < 0.95
                                                    else rng.choice([1000, 2000, 4000, 5000]))
            flags = rng.choice(["", "", "create", "replace"])
            return {"op": "setxattr", "path": self.existing("fd" if rng.random() < 0.85 else None, 0.95),
                    "name": f"user.x{rng.randrange(6)}",
                    "len": n, "data": rng.getrandbits(32), "flags": flags}
        if kind == "removexattr":
            have = sorted((p, n) for p, ns in self.xattrs.items() for n in ns if p in self.model)
            if have and rng.random() < 0.8:
                p, n = rng.choice(have)
                return {"op": "removexattr", "path": p, "name": n}
            return {"op": "removexattr", "path": self.existing(None, 0.95), "name": f"user.x{rng.randrange(6)}"}
        if kind == "fsync":
            t = self.file_target() if rng.random() < 0.7 else {"path": self.existing("d", 0.9, "d")}
            return {"op": "fsync", **t, "datasync": rng.random() < 0.3}
        if kind == "stat":
            return {"op": "stat", "path": self.existing(None, 0.9)}
        if kind == "listdir":
            return {"op": "listdir", "path": rng.choice(self.dirs())}
        if kind == "hold":
            return {"op": "hold", "slot": rng.randrange(self.cfg.slots), "path": self.existing("f", 0.95)}
        if kind == "release":
            if self.held and rng.random() < 0.85:
                return {"op": "release", "slot": rng.choice(sorted(self.held))}
            return {"op": "release", "slot": rng.randrange(self.cfg.slots)}
        raise AssertionError(kind)

    # -- model update from an agreed, successful result
    def update(self, op, res):
        if res[0] != "ok":
            return
        k = op["op"]
        m = self.model
        if k == "creat":
            m.setdefault(op["path"], "f")
        elif k == "mkdir":
            m[op["path"]] = "d"
        elif k == "symlink":
            m[op["path"]] = "l"
        elif k == "mknod":
            m[op["path"]] = "p" if op["type"] == "fifo" else "c"
        elif k == "link":
            m[op["path"]] = m.get(op["src"], "f")
        elif k == "tmpfile" and op.get("link") and res[1].get("linked"):
            m[op["link"]] = "f"
        elif k in ("unlink", "rmdir"):
            self._drop(op["path"])
        elif k == "rename":
            s, d = op["src"], op["path"]
            if s == d:
                return
            if op["flags"] == "exchange":
                sub_s = self._take(s)
                sub_d = self._take(d)
                self._put(d, sub_s)
                self._put(s, sub_d)
            else:
                sub = self._take(s)
                self._take(d)
                self._put(d, sub)
        elif k == "setxattr":
            self.xattrs.setdefault(op["path"], set()).add(op["name"])
        elif k == "removexattr":
            self.xattrs.get(op["path"], set()).discard(op["name"])
        elif k == "hold":
            self.held.add(op["slot"])
        elif k == "release":
            self.held.discard(op["slot"])

    def _drop(self, p):
        self._take(p)

    def _take(self, p):
        out = {}
        for q in list(self.model):
            if q == p or q.startswith(p + "/"):
                out[q[len(p):]] = self.model.pop(q)
        return out

    def _put(self, p, sub):
        for rel, t in sub.items():
            self.model[p + rel] = t


# ---------------------------------------------------------------- execution

def payload(seed, n, zero=False):
    if zero:
        return bytes(n)
    return random.Random(seed).randbytes(n)


def digest(b):
    return hashlib.sha1(b).hexdigest()[:16]


OPEN_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Side:
    """One mount: a root directory and its table of held file descriptors."""

    def __init__(self, root, fault=False):
        self.root = os.path.abspath(root)
        self.slots = {}
        self.fault = fault  # harness self-test: an off-by-one truncate on this side

    def p(self, rel):
        return os.path.join(self.root, rel) if rel else self.root

    def close_all(self):
        for fd in self.slots.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.slots.clear()

    def fd_for(self, target, flags):
        """(fd, owned): a held slot, or a fresh open of a path."""
        if "slot" in target:
            fd = self.slots.get(target["slot"])
            if fd is None:
                raise OSError(errno.EBADF, "slot not held")
            return fd, False
        return os.open(self.p(target["path"]), flags | OPEN_FLAGS), True

    def apply(self, op):
        try:
            return ["ok", self._apply(op)]
        except OSError as e:
            return ["err", errno.errorcode.get(e.errno, str(e.errno))]
        except (ValueError, OverflowError) as e:
            return ["exc", type(e).__name__]

    def _apply(self, op):
        k = op["op"]
        P = self.p
        if k == "creat":
            fl = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if op["excl"] else 0) | (os.O_TRUNC if op["trunc"] else 0)
            os.close(os.open(P(op["path"]), fl | OPEN_FLAGS, op["mode"]))
            return None
        if k == "mkdir":
            os.mkdir(P(op["path"]), op["mode"])
            return None
        if k == "symlink":
            os.symlink(op["target"], P(op["path"]))
            return None
        if k == "link":
            os.link(P(op["src"]), P(op["path"]), follow_symlinks=False)
            return None
        if k == "mknod":
            if op["type"] == "fifo":
                os.mkfifo(P(op["path"]), op["mode"])
            else:
                os.mknod(P(op["path"]), stat.S_IFCHR | op["mode"], os.makedev(op["major"], op["minor"]))
            return None
        if k == "unlink":
            os.unlink(P(op["path"]))
            return None
        if k == "rmdir":
            os.rmdir(P(op["path"]))
            return None
        if k == "rename":
            fl = {0: 0, "noreplace": RENAME_NOREPLACE, "exchange": RENAME_EXCHANGE}[op["flags"]]
            renameat2(P(op["src"]), P(op["path"]), fl)
            return None
        if k == "tmpfile":
            fd = os.open(P(op["dir"]), os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, op["mode"])
            try:
                os.pwrite(fd, payload(op["data"], op["len"], op.get("zero")), 0)
                linked = None
                if op.get("link"):
                    try:
                        link_fd(fd, P(op["link"]))
                        linked = True
                    except OSError as e:
                        linked = errno.errorcode.get(e.errno, str(e.errno))
                return {"linked": linked}
            finally:
                os.close(fd)
        if k in ("write", "append"):
            data = payload(op["data"], op["len"], op.get("zero"))
            if k == "append":
                fd, own = os.open(P(op["path"]), os.O_WRONLY | os.O_APPEND | OPEN_FLAGS), True
            else:
                fd, own = self.fd_for(op, os.O_WRONLY)
            try:
                done = 0
                while done < len(data):
                    if k == "append":
                        n = os.write(fd, data[done:])
                    else:
                        n = os.pwrite(fd, data[done:], op["off"] + done)
                    if n <= 0:
                        break
                    done += n
                if k == "append":
                    return [done, os.fstat(fd).st_size]
                return done
            finally:
                if own:
                    os.close(fd)
        if k == "read":
            fd, own = self.fd_for(op, os.O_RDONLY)
            try:
                buf = b""
                while len(buf) < op["len"]:
                    b = os.pread(fd, op["len"] - len(buf), op["off"] + len(buf))
                    if not b:
                        break
                    buf += b
                return [len(buf), digest(buf)]
            finally:
                if own:
                    os.close(fd)
        if k == "truncate":
            fd, own = self.fd_for(op, os.O_WRONLY)
            try:
                os.ftruncate(fd, op["size"] + (1 if self.fault else 0))
                return os.fstat(fd).st_size
            finally:
                if own:
                    os.close(fd)
        if k == "fallocate":
            fd, own = self.fd_for(op, os.O_WRONLY)
            try:
                fallocate(fd, FALLOC_MODES[op["mode"]], op["off"], op["len"])
                return os.fstat(fd).st_size
            finally:
                if own:
                    os.close(fd)
        if k == "copy_range":
            sfd, sown = self.fd_for(op["src"], os.O_RDONLY)
            try:
                dfd, down = self.fd_for(op["dst"], os.O_WRONLY)
                try:
                    done = 0
                    while done < op["len"]:
                        n = os.copy_file_range(sfd, dfd, op["len"] - done, op["soff"] + done, op["doff"] + done)
                        if n <= 0:
                            break
                        done += n
                    return [done, os.fstat(dfd).st_size]
                finally:
                    if down:
                        os.close(dfd)
            finally:
                if sown:
                    os.close(sfd)
        if k == "chmod":
            fd = os.open(P(op["path"]), os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                if stat.S_ISLNK(os.fstat(fd).st_mode):
                    raise OSError(errno.ELOOP, "symlink")  # never follow a link off the mount
                os.chmod(f"/proc/self/fd/{fd}", op["mode"])
                return oct(stat.S_IMODE(os.fstat(fd).st_mode))
            finally:
                os.close(fd)
        if k == "chown":
            os.chown(P(op["path"]), op["uid"], op["gid"], follow_symlinks=False)
            st = os.lstat(P(op["path"]))
            return [st.st_uid, st.st_gid, oct(st.st_mode)]
        if k == "utime":
            os.utime(P(op["path"]), ns=(op["atime"], op["mtime"]), follow_symlinks=False)
            st = os.lstat(P(op["path"]))
            return [st.st_atime_ns, st.st_mtime_ns]
        if k == "setxattr":
            fl = {"": 0, "create": os.XATTR_CREATE, "replace": os.XATTR_REPLACE}[op["flags"]]
            os.setxattr(P(op["path"]), op["name"], payload(op["data"], op["len"]), fl, follow_symlinks=False)
            return None
        if k == "removexattr":
            os.removexattr(P(op["path"]), op["name"], follow_symlinks=False)
            return None
        if k == "fsync":
            fd, own = self.fd_for(op, os.O_RDONLY)
            try:
                (os.fdatasync if op["datasync"] else os.fsync)(fd)
                return None
            finally:
                if own:
                    os.close(fd)
        if k == "stat":
            st = os.lstat(P(op["path"]))
            x = sorted(os.listxattr(P(op["path"]), follow_symlinks=False))
            return [stat.filemode(st.st_mode), st.st_uid, st.st_gid, st.st_nlink,
                    None if stat.S_ISDIR(st.st_mode) else st.st_size, x]
        if k == "listdir":
            return sorted(os.listdir(P(op["path"])))
        if k == "hold":
            fd = os.open(P(op["path"]), os.O_RDWR | OPEN_FLAGS)
            old = self.slots.pop(op["slot"], None)
            if old is not None:
                os.close(old)
            self.slots[op["slot"]] = fd
            return None
        if k == "release":
            fd = self.slots.pop(op["slot"], None)
            if fd is None:
                raise OSError(errno.EBADF, "slot not held")
            os.close(fd)
            return None
        raise ValueError(f"unknown op {k}")


# ---------------------------------------------------------------- tree snapshots

def snapshot(root, cfg, cap=None):
    """relpath -> comparable description of every object under root."""
    cap = cap or max(cfg.max_size * 4, 1 << 20)
    out = {}
    inodes = {}
    root = os.path.abspath(root)

    def visit(rel):
        p = os.path.join(root, rel) if rel else root
        st = os.lstat(p)
        e = {"mode": stat.filemode(st.st_mode), "uid": st.st_uid, "gid": st.st_gid, "nlink": st.st_nlink}
        if cfg.mtime:
            e["mtime"] = st.st_mtime_ns
        if cfg.blocks:
            e["blocks"] = st.st_blocks
        try:
            names = sorted(os.listxattr(p, follow_symlinks=False))
            e["xattr"] = {n: digest(os.getxattr(p, n, follow_symlinks=False)) for n in names}
        except OSError as ex:
            e["xattr"] = "error " + errno.errorcode.get(ex.errno, str(ex.errno))
        if stat.S_ISDIR(st.st_mode):
            if cfg.dir_size:
                e["size"] = st.st_size
            out[rel] = e
            for n in sorted(os.listdir(p)):
                if rel == "" and n == "lost+found":
                    continue
                visit(f"{rel}/{n}" if rel else n)
            return
        e["size"] = st.st_size
        if st.st_nlink > 1:
            inodes.setdefault(st.st_ino, []).append(rel)
        if stat.S_ISLNK(st.st_mode):
            e["target"] = os.readlink(p)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            e["rdev"] = [os.major(st.st_rdev), os.minor(st.st_rdev)]
        elif stat.S_ISREG(st.st_mode):
            try:
                fd = os.open(p, os.O_RDONLY | OPEN_FLAGS)
                try:
                    h = hashlib.sha1()
                    left = min(st.st_size, cap)
                    off = 0
                    while left > 0:
                        b = os.pread(fd, min(left, 1 << 20), off)
                        if not b:
                            break
                        h.update(b)
                        off += len(b)
                        left -= len(b)
                    e["data"] = h.hexdigest()[:16] + (f" (first {cap} bytes)" if st.st_size > cap else "")
                    if off < min(st.st_size, cap):
                        e["data"] += f" short read at {off}"
                    if cfg.seek:
                        e["seek"] = [list(x) for x in treecompare.seek_layout(fd, st.st_size)]
                finally:
                    os.close(fd)
            except OSError as ex:
                e["data"] = "error " + errno.errorcode.get(ex.errno, str(ex.errno))
        out[rel] = e

    visit("")
    for paths in inodes.values():
        for q in paths:
            out[q]["links"] = sorted(paths)
    if cfg.statfs:
        sv = os.statvfs(root)
        out["<statfs>"] = {"inodes_used": sv.f_files - sv.f_ffree}
    return out


def diff_trees(a, b, limit=20):
    lines = []
    for k in sorted(set(a) | set(b)):
        ea, eb = a.get(k), b.get(k)
        if ea == eb:
            continue
        if ea is None or eb is None:
            lines.append(f"  /{k}: only in {'B' if ea is None else 'A'}: {json.dumps(ea or eb, sort_keys=True)}")
        else:
            fields = sorted(set(ea) | set(eb))
            d = ", ".join(f"{f}: A={json.dumps(ea.get(f))} B={json.dumps(eb.get(f))}" for f in fields if ea.get(f) != eb.get(f))
            lines.append(f"  /{k}: {d}")
        if len(lines) >= limit:
            lines.append("  ...")
            break
    return lines


# ---------------------------------------------------------------- formatting

def fmt_op(op):
    parts = [op["op"]]
    for k, v in op.items():
        if k == "op":
            continue
        if isinstance(v, dict):
            v = "#" + str(v["slot"]) if "slot" in v else v["path"]
        elif k == "mode" and isinstance(v, int):
            v = oct(v)
        elif isinstance(v, str) and len(v) > 40:
            v = f"{v[:12]}...({len(v)} chars)"
        parts.append(f"{k}={v}")
    return " ".join(parts)


# ---------------------------------------------------------------- one run

class Divergence(Exception):
    def __init__(self, kind, index, op, text, sig):
        super().__init__(text)
        self.kind, self.index, self.op, self.text = kind, index, op, text
        self.sig = sig  # what shrinking must preserve


def result_sig(op, ra, rb):
    """Op kind and outcome class (ok or errno) of both sides, not the values."""
    cls = lambda r: r[0] if r[0] == "ok" else f"{r[0]}:{r[1]}"
    return ("result", op["op"], cls(ra), cls(rb))


def tree_sig(ta, tb):
    fields = set()
    for k in set(ta) | set(tb):
        ea, eb = ta.get(k), tb.get(k)
        if ea == eb:
            continue
        if ea is None or eb is None:
            fields.add("only in " + ("B" if ea is None else "A"))
        else:
            fields |= {f for f in set(ea) | set(eb) if ea.get(f) != eb.get(f)}
    return ("tree",) + tuple(sorted(fields))


class Watchdog:
    """Ends the process if one operation takes longer than `limit` seconds: a hung
    FUSE request cannot be interrupted from Python."""

    def __init__(self, limit, on_hang):
        self.limit, self.on_hang = limit, on_hang
        self.where = None
        self.since = time.time()
        self.stop = False
        t = threading.Thread(target=self._run, daemon=True)
        t.start()

    def enter(self, where):
        self.where, self.since = where, time.time()

    def leave(self):
        self.where = None

    def _run(self):
        while not self.stop:
            time.sleep(1)
            if self.where is not None and time.time() - self.since > self.limit:
                print(f"fsdiff: HANG: {self.where} did not finish in {self.limit}s", flush=True)
                try:
                    self.on_hang()
                finally:
                    os._exit(3)


INJECT_FAULT = False


def execute(ops, a_root, b_root, cfg, check_every=0, gen=None, nops=0, watchdog=None, verbose=False,
            progress=None):
    """Runs `ops` (or `nops` ops from `gen`, appending them to `ops`) on both roots.
    Raises Divergence on the first difference; compares the trees at the end."""
    A, B = Side(a_root, INJECT_FAULT), Side(b_root)
    total = nops if gen is not None else len(ops)
    try:
        for i in range(total):
            op = gen.next() if gen is not None else ops[i]
            if gen is not None:
                ops.append(op)
            if watchdog:
                watchdog.enter(f"op {i}: {fmt_op(op)}")
            ra = A.apply(op)
            rb = B.apply(op)
            if watchdog:
                watchdog.leave()
            if verbose:
                print(f"  {i:5d} {fmt_op(op)} -> {ra}" + ("" if ra == rb else f" / B {rb}"), flush=True)
            if ra != rb:
                raise Divergence("result", i, op, f"result differs: A={json.dumps(ra)} B={json.dumps(rb)}",
                                 result_sig(op, ra, rb))
            if gen is not None:
                gen.update(op, ra)
            if check_every and (i + 1) % check_every == 0 and i + 1 < total:
                compare(A, B, cfg, i, op, watchdog)
            if progress and (i + 1) % 500 == 0:
                progress(i + 1)
        A.close_all()
        B.close_all()
        if total:
            compare(A, B, cfg, total - 1, ops[total - 1] if ops else None, watchdog)
    finally:
        A.close_all()
        B.close_all()


def compare(A, B, cfg, i, op, watchdog=None):
    if watchdog:
        watchdog.enter(f"tree compare after op {i}")
    ta, tb = snapshot(A.root, cfg), snapshot(B.root, cfg)
    if watchdog:
        watchdog.leave()
    if ta != tb:
        raise Divergence("tree", i, op, "trees differ after op %d:\n%s" % (i, "\n".join(diff_trees(ta, tb))),
                         tree_sig(ta, tb))


# ---------------------------------------------------------------- managed targets

def sh(cmd, **kw):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


class Pair:
    """Fresh copies of a base image mounted as A and B, unmounted and checked."""

    def __init__(self, base, work, kind_a, kind_b, opts_a, opts_b):
        self.base, self.work = base, work
        self.kinds = {"A": kind_a, "B": kind_b}
        self.opts = {"A": opts_a, "B": opts_b}
        self.img = {s: os.path.join(work, f"{s.lower()}.img") for s in "AB"}
        self.mnt = {s: os.path.join(work, s.lower()) for s in "AB"}
        self.kmnt = {s: os.path.join(work, f"k{s.lower()}") for s in "AB"}
        self.mounted = set()

    def start(self):
        for s in "AB":
            self.teardown_side(s)
            r = sh(["cp", "--sparse=always", self.base, self.img[s]])
            if r.returncode != 0:
                raise RuntimeError(f"copy image: {r.stdout}")
            err = fstarget.mount(self.kinds[s], self.img[s], self.mnt[s], self.opts[s],
                                 logfile=os.path.join(self.work, f"server-{s.lower()}.log"))
            if err:
                raise RuntimeError(f"mount {s} ({self.kinds[s]}): {err}")
            self.mounted.add(s)

    def stop(self):
        """Unmount both; returns the list of problems (forced unmounts)."""
        problems = []
        for s in "AB":
            if s in self.mounted:
                forced = fstarget.umount(self.mnt[s], self.img[s])
                self.mounted.discard(s)
                if forced:
                    problems.append(f"{s} ({self.kinds[s]}) unmount: {forced}")
        return problems

    def fsck(self):
        """[(side, ok, output)] of e2fsck -fn on both images."""
        out = []
        for s in "AB":
            r = sh(["e2fsck", "-fn", self.img[s]])
            out.append((s, r.returncode == 0, r.stdout))
        return out

    def kernel_view(self, cfg):
        """Mount both images read-only with the kernel and compare their trees."""
        snaps = {}
        try:
            for s in "AB":
                err = fstarget.mount("kernel", self.img[s], self.kmnt[s], "ro,noload")
                if err:
                    return [f"kernel read-only mount of {s}'s image failed: {err}"]
                snaps[s] = snapshot(self.kmnt[s], cfg)
        finally:
            for s in "AB":
                fstarget.umount(self.kmnt[s], self.img[s])
        if snaps["A"] != snaps["B"]:
            return ["the kernel's view of the images differs (A's image vs B's image):"] + diff_trees(snaps["A"], snaps["B"])
        return []

    def teardown_side(self, s):
        fstarget.cleanup([self.img[s]], [self.mnt[s], self.kmnt[s]])
        self.mounted.discard(s)

    def teardown(self):
        for s in "AB":
            self.teardown_side(s)


def trial(pair, ops, cfg, full, watchdog):
    """One replay on fresh copies. Returns the failure's signature, or None."""
    pair.start()
    fail = None
    try:
        execute(ops, pair.mnt["A"], pair.mnt["B"], cfg, watchdog=watchdog)
    except Divergence as d:
        fail = d.sig
    problems = pair.stop()
    if fail or not full:
        return fail or (("umount",) if problems else None)
    if problems:
        return ("umount",)
    return post_sig(pair.fsck(), pair.kernel_view(cfg))


def post_sig(fsck, kview):
    for s, ok, _ in fsck:
        if not ok:
            return ("fsck", s)
    return ("kernel-view",) if kview else None


def shrink(pair, ops, cfg, full, want, watchdog, budget_trials, budget_secs, log):
    """Shortest op list that still fails the same way (signature `want`): binary
    search on the prefix, then drop single ops."""
    t0 = time.time()
    tries = 0

    def fails(cand):
        nonlocal tries
        tries += 1
        try:
            r = trial(pair, cand, cfg, full, watchdog)
        except RuntimeError as e:
            log(f"shrink: trial setup failed: {e}")
            r = None
        return r == want

    def out_of_budget():
        return tries >= budget_trials or time.time() - t0 > budget_secs

    lo, hi = 0, len(ops)
    if not fails(ops):
        log("shrink: the full op list does not fail on a fresh replay (flaky or timing dependent); not shrinking")
        return ops, False
    while hi - lo > 1 and not out_of_budget():
        mid = (lo + hi) // 2
        if fails(ops[:mid]):
            hi = mid
        else:
            lo = mid
    cur = ops[:hi]
    log(f"shrink: shortest failing prefix: {len(cur)} ops ({tries} trials)")
    # Drop chunks (halves, quarters, ... single ops), the last op always kept:
    # a coarse ddmin, so long prefixes shrink in few trials.
    chunk = max(1, (len(cur) - 1) // 2)
    while chunk >= 1 and not out_of_budget():
        changed = False
        j = len(cur) - 1 - chunk
        while j >= 0 and not out_of_budget():
            cand = cur[:j] + cur[j + chunk:]
            if fails(cand):
                cur = cand
                changed = True
            j = min(j, len(cur) - 1) - chunk
        if chunk == 1 and not changed:
            break
        if chunk > 1:
            chunk //= 2
    log(f"shrink: {len(cur)} ops after dropping chunks and single ops ({tries} trials, {time.time() - t0:.0f}s"
        + (", budget exhausted" if out_of_budget() else "") + ")")
    return cur, True


# ---------------------------------------------------------------- commands

def make_base(work, mkfs_args, size):
    base = os.path.join(work, "base.img")
    cmd = ["mkfs.ext4", "-q", "-F"] + shlex.split(mkfs_args or "") + [base, size]
    r = sh(cmd)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stdout}")
    return base


def save_repro(path, meta, ops):
    with open(path, "w") as f:
        json.dump({**meta, "ops": ops}, f, indent=None)
        f.write("\n")


def cmd_run(a, replay_doc=None):
    log = lambda m: print(f"fsdiff: {m}", flush=True)
    cfg = Config.from_json(replay_doc["config"]) if replay_doc else Config(a)
    managed = not (a.a_dir or a.b_dir)
    os.umask(int(a.umask, 8))
    seed = replay_doc.get("seed") if replay_doc else a.seed
    meta = {"seed": seed, "config": cfg.to_json(), "a": a.a, "b": a.b, "a_opts": a.a_opts, "b_opts": a.b_opts,
            "mkfs": a.mkfs, "size": a.size, "image": os.path.abspath(a.image) if a.image else None}
    label = f"seed {seed}" if seed is not None else "replay"
    art = a.artifacts or os.getcwd()
    os.makedirs(art, exist_ok=True)
    repro_path = os.path.join(art, f"fsdiff-repro-{seed if seed is not None else 'replay'}-{os.getpid()}.json")

    ops = list(replay_doc["ops"]) if replay_doc else []
    gen = None if replay_doc else Generator(seed, cfg)
    nops = 0 if replay_doc else a.ops

    if not managed:
        if not (a.a_dir and a.b_dir):
            log("--a-dir and --b-dir go together")
            return 2
        wd = Watchdog(a.op_timeout, lambda: None)
        try:
            execute(ops, a.a_dir, a.b_dir, cfg, a.check_every, gen, nops, wd, a.verbose)
        except Divergence as d:
            log(f"DIVERGENCE ({label}) at op {d.index}: {fmt_op(d.op)}")
            print(d.text, flush=True)
            save_repro(repro_path, meta, ops[:d.index + 1])
            log(f"op list up to the divergence ({d.index + 1} ops, not shrunk): {repro_path}")
            return 1
        log(f"{label}: {len(ops)} ops, results and trees equal")
        return 0

    work = tempfile.mkdtemp(prefix="fsdiff.", dir=a.workdir)
    pair = None
    try:
        if a.image:
            base = os.path.abspath(a.image)
        else:
            base = make_base(work, a.mkfs, a.size)
        pair = Pair(base, work, a.a, a.b, a.a_opts, a.b_opts)
        wd = Watchdog(a.op_timeout, pair.teardown)
        t0 = time.time()
        pair.start()
        failure = None
        try:
            execute(ops, pair.mnt["A"], pair.mnt["B"], cfg, a.check_every, gen, nops, wd, a.verbose)
        except Divergence as d:
            failure = d
        problems = pair.stop()
        fsck = pair.fsck()
        kview = [] if failure else pair.kernel_view(cfg)
        dt = time.time() - t0
        bad_fsck = [(s, out) for s, ok, out in fsck if not ok]
        full_check = False
        if failure:
            log(f"DIVERGENCE ({label}, A={a.a} B={a.b}) at op {failure.index}: {fmt_op(failure.op)}")
            print(failure.text, flush=True)
        for s, out in bad_fsck:
            log(f"e2fsck -fn of {s}'s image ({pair.kinds[s]}) is NOT clean:")
            print("\n".join("    " + l for l in out.strip().splitlines()[:60]), flush=True)
        for p in problems:
            log(f"unmount problem: {p}")
        if kview:
            log(kview[0])
            print("\n".join(kview[1:]), flush=True)
        if not failure and not bad_fsck and not problems and not kview:
            log(f"{label}: {len(ops)} ops in {dt:.1f}s; results and trees equal, both images fsck clean, "
                f"kernel view of A's image equals B's")
            return 0
        if failure:
            cand = ops[:failure.index + 1]
            want = failure.sig
        else:
            cand = ops
            full_check = True
            want = ("umount",) if problems else post_sig(fsck, kview)
        save_repro(repro_path, meta, cand)
        log(f"{label}: failing op list ({len(cand)} ops) saved: {repro_path}")
        if a.no_shrink or a.shrink_trials <= 0:
            return 1
        log(f"shrinking on fresh image copies (keeping the failure {want})...")
        small, shrunk = shrink(pair, cand, cfg, full_check, want, wd, a.shrink_trials, a.shrink_time, log)
        if shrunk:
            spath = repro_path.replace(".json", "-min.json")
            save_repro(spath, meta, small)
            log(f"shortest reproducer ({len(small)} ops), {label}:")
            for j, op in enumerate(small):
                print(f"    {j:4d} {json.dumps(op, separators=(',', ':'))}")
            log(f"saved: {spath}")
            log(f"replay: {sys.executable} {os.path.abspath(__file__)} replay {spath} -v")
        return 1
    except RuntimeError as e:
        log(f"setup error: {e}")
        return 2
    finally:
        if pair:
            pair.teardown()
        if a.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def cmd_replay(a):
    with open(a.file) as f:
        doc = json.load(f)
    for k in ("a", "b", "a_opts", "b_opts", "mkfs", "size", "image"):
        if getattr(a, k, None) in (None, "") and doc.get(k) is not None:
            setattr(a, k, doc[k])
    a.ops = 0
    a.seed = doc.get("seed")
    return cmd_run(a, doc)


def cmd_show(a):
    with open(a.file) as f:
        doc = json.load(f)
    print(f"seed {doc.get('seed')}, A={doc.get('a')} B={doc.get('b')}, mkfs {doc.get('mkfs')!r} {doc.get('size')}")
    for j, op in enumerate(doc["ops"]):
        print(f"{j:5d} {fmt_op(op)}")
    return 0


def add_common(p):
    p.add_argument("--a", default="ext4iomap", choices=fstarget.KINDS, help="kind of target A (system under test)")
    p.add_argument("--b", default="kernel", choices=fstarget.KINDS, help="kind of target B (reference)")
    p.add_argument("--a-opts", default="")
    p.add_argument("--b-opts", default="nosuid,nodev")
    p.add_argument("--image", help="base image (copied for every mount; never modified)")
    p.add_argument("--mkfs", default=None, help='make the base image: extra mkfs.ext4 args, e.g. "-t ext2 -b 1024"')
    p.add_argument("--size", default="64M", help="size of the image made by --mkfs")
    p.add_argument("--a-dir", help="unmanaged: existing directory for A")
    p.add_argument("--b-dir", help="unmanaged: existing directory for B")
    p.add_argument("--workdir", default=None, help="where temporary images and mounts go (default /tmp)")
    p.add_argument("--artifacts", default=None, help="where reproducers are saved (default: current directory)")
    p.add_argument("--check-every", type=int, default=200, help="compare the trees every N ops (0: only at the end)")
    p.add_argument("--op-timeout", type=int, default=120, help="seconds before an op counts as hung")
    p.add_argument("--no-shrink", action="store_true")
    p.add_argument("--shrink-trials", type=int, default=150)
    p.add_argument("--shrink-time", type=int, default=180, help="seconds to spend shrinking at most")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("-v", "--verbose", action="store_true", help="print every op and its result")
    p.add_argument("--umask", default="0", help="octal umask for the run (default 0)")
    p.add_argument("--inject-fault", action="store_true",
                   help="harness self-test: side A truncates one byte too far (must be caught and shrunk)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="generate and run a seeded sequence")
    add_common(r)
    r.add_argument("--seed", type=int, default=None)
    r.add_argument("--ops", type=int, default=2000)
    r.add_argument("--nfiles", type=int, default=12, help="file names per directory in the name pool")
    r.add_argument("--ndirs", type=int, default=4, help="directory names in the name pool")
    r.add_argument("--depth", type=int, default=3, help="maximum directory depth")
    r.add_argument("--max-size", default="256K", help="largest file offset used (sizes K/M/G)")
    r.add_argument("--max-io", default="64K", help="largest single write/read/fallocate length")
    r.add_argument("--max-xattr", type=int, default=300, help="usual largest xattr value")
    r.add_argument("--slots", type=int, default=4, help="held open file descriptors")
    r.add_argument("--far-prob", type=float, default=0.004, help="probability of an EFBIG-sized offset")
    r.add_argument("--no-rename2", action="store_true", help="plain renames only (no NOREPLACE/EXCHANGE)")
    r.add_argument("--falloc-modes", default=None, help="fallocate modes to use (default all: %s)" % ",".join(FALLOC_MODES))
    r.add_argument("--exclude", default="", help="comma-separated op kinds not to generate")
    r.add_argument("--weight", action="append", help="OP=N: weight of an op kind (repeatable)")
    r.add_argument("--compare-mtime", action="store_true", help="compare mtimes in tree snapshots")
    r.add_argument("--compare-dir-size", action="store_true", help="compare directory sizes")
    r.add_argument("--compare-blocks", action="store_true", help="compare st_blocks")
    r.add_argument("--compare-seek", action="store_true", help="compare SEEK_DATA/SEEK_HOLE maps")
    r.add_argument("--compare-statfs", action="store_true", help="compare the number of used inodes")
    p = sub.add_parser("replay", help="replay a saved op list")
    p.add_argument("file")
    add_common(p)
    for k in ("a", "b", "a_opts", "b_opts", "size"):
        p.set_defaults(**{k: None})
    s = sub.add_parser("show", help="print a saved op list readably")
    s.add_argument("file")
    a = ap.parse_args(argv)
    global INJECT_FAULT
    INJECT_FAULT = getattr(a, "inject_fault", False)
    if a.cmd == "show":
        return cmd_show(a)
    if a.cmd == "replay":
        return cmd_replay(a)
    if a.seed is None:
        a.seed = random.SystemRandom().randrange(1 << 31)
    return cmd_run(a)


if __name__ == "__main__":
    sys.exit(main())
