#!/usr/bin/env python3
"""Walk a mounted (possibly corrupt) file system the way a careful user would,
and count what fails instead of stopping.

  corpuswalk.py DIR [--read-cap BYTES] [--max-objects N]

Per object: lstat, statx, listxattr + getxattr of each name, readlink for
symlinks; for regular files a full read (capped per file, so a corrupt size of
terabytes cannot turn into a hang) and the SEEK_DATA/SEEK_HOLE walk; for
directories readdir and descent (each directory inode once, so hard-linked
directories cannot loop). Errors on individual objects are expected on these
images: they are counted by errno. Prints one JSON line:
{"objects":..,"dirs":..,"files":..,"bytes":..,"errors":{"EIO":n,...},"fatal":...}
"fatal" is set when the mount itself stops answering (ENOTCONN, ECONNABORTED),
which means the server died. Exit 0, or 2 when fatal.
"""
import argparse
import ctypes
import errno
import json
import os
import stat
import sys

libc = ctypes.CDLL(None, use_errno=True)
SEEK_DATA, SEEK_HOLE = 3, 4
DEAD = {errno.ENOTCONN, errno.ECONNABORTED, errno.ENODEV}


class Walk:
    def __init__(self, read_cap, max_objects):
        self.read_cap = read_cap
        self.max_objects = max_objects
        self.c = dict(objects=0, dirs=0, files=0, symlinks=0, other=0, bytes=0, xattrs=0,
                      truncated_reads=0, errors={}, fatal=None)
        self.seen_dirs = set()

    def fail(self, what, e):
        name = errno.errorcode.get(e.errno, str(e.errno)) if isinstance(e, OSError) else type(e).__name__
        key = f"{what}:{name}"
        self.c["errors"][key] = self.c["errors"].get(key, 0) + 1
        if isinstance(e, OSError) and e.errno in DEAD:
            self.c["fatal"] = f"{what}: {os.strerror(e.errno)}"
            raise SystemExit(2)

    def xattrs(self, p):
        try:
            names = os.listxattr(p, follow_symlinks=False)
        except OSError as e:
            self.fail("listxattr", e)
            return
        for n in names:
            try:
                os.getxattr(p, n, follow_symlinks=False)
                self.c["xattrs"] += 1
            except OSError as e:
                self.fail("getxattr", e)

    def statx(self, p):
        buf = ctypes.create_string_buffer(256)
        if libc.statx(-100, p, 0x100, 0xFFF, buf) != 0:
            self.fail("statx", OSError(ctypes.get_errno(), "statx"))

    def regular(self, p, size):
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as e:
            self.fail("open", e)
            return
        try:
            off, n = 0, 0
            while off < size and n < 10000:
                n += 1
                try:
                    d = os.lseek(fd, off, SEEK_DATA)
                    h = os.lseek(fd, d, SEEK_HOLE)
                except OSError as e:
                    if e.errno != errno.ENXIO:
                        self.fail("lseek", e)
                    break
                if h <= d:
                    self.fail("lseek-no-progress", OSError(errno.EINVAL, "no progress"))
                    break
                off = h
            got = 0
            while True:
                try:
                    chunk = os.read(fd, min(1 << 20, self.read_cap - got))
                except OSError as e:
                    self.fail("read", e)
                    break
                if not chunk:
                    break
                got += len(chunk)
                if got >= self.read_cap:
                    self.c["truncated_reads"] += 1
                    break
            self.c["bytes"] += got
        finally:
            os.close(fd)

    def visit(self, p):
        self.c["objects"] += 1
        if self.c["objects"] > self.max_objects:
            raise StopIteration
        try:
            st = os.lstat(p)
        except OSError as e:
            self.fail("lstat", e)
            return None
        self.statx(p)
        self.xattrs(p)
        m = st.st_mode
        if stat.S_ISLNK(m):
            self.c["symlinks"] += 1
            try:
                os.readlink(p)
            except OSError as e:
                self.fail("readlink", e)
        elif stat.S_ISREG(m):
            self.c["files"] += 1
            self.regular(p, st.st_size)
        elif stat.S_ISDIR(m):
            self.c["dirs"] += 1
        else:
            self.c["other"] += 1
        return st

    def run(self, root):
        root = os.fsencode(root)
        st = self.visit(root)
        stack = [root] if st is not None else []
        if st is not None:
            self.seen_dirs.add(st.st_ino)
        while stack:
            d = stack.pop()
            try:
                entries = list(os.scandir(d))
            except OSError as e:
                self.fail("readdir", e)
                continue
            for e in entries:
                st = self.visit(e.path)
                if st is not None and stat.S_ISDIR(st.st_mode) and st.st_ino not in self.seen_dirs:
                    self.seen_dirs.add(st.st_ino)
                    stack.append(e.path)
        try:
            os.statvfs(root)
        except OSError as e:
            self.fail("statfs", e)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--read-cap", type=int, default=64 << 20)
    ap.add_argument("--max-objects", type=int, default=200000)
    a = ap.parse_args()
    w = Walk(a.read_cap, a.max_objects)
    rc = 0
    try:
        w.run(a.dir)
    except StopIteration:
        w.c["errors"]["max-objects"] = 1
    except SystemExit as e:
        rc = int(e.code or 0)
    print(json.dumps(w.c, sort_keys=True))
    sys.stdout.flush()
    return rc


if __name__ == "__main__":
    sys.exit(main())
