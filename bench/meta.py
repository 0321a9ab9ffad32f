#!/usr/bin/env python3
"""Metadata benchmark: create, stat and unlink N small files in DIR.

  meta.py DIR [--files 10000] [--size 1024] [--dirs 10]

Files are spread over --dirs directories; each create is open(O_CREAT|O_EXCL),
write --size bytes, close. Every phase ends with syncfs (so a server that defers
work pays for it inside the phase). Prints one JSON object: seconds and ops/s per
phase and overall. Python 3 standard library only.
"""

import argparse
import ctypes
import json
import os
import sys
import time

_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
    finally:
        os.close(fd)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--dirs", type=int, default=10)
    a = ap.parse_args()
    root = os.path.join(a.dir, "meta")
    os.makedirs(root)
    dirs = [os.path.join(root, f"d{i}") for i in range(a.dirs)]
    for d in dirs:
        os.mkdir(d)
    names = [os.path.join(dirs[i % a.dirs], f"f{i}") for i in range(a.files)]
    data = b"x" * a.size
    out = {"files": a.files, "size": a.size}

    t = time.perf_counter()
    for n in names:
        fd = os.open(n, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.close(fd)
    syncfs(a.dir)
    out["create_s"] = time.perf_counter() - t

    t = time.perf_counter()
    for n in names:
        os.stat(n)
    out["stat_s"] = time.perf_counter() - t

    t = time.perf_counter()
    for n in names:
        os.unlink(n)
    syncfs(a.dir)
    out["unlink_s"] = time.perf_counter() - t
    for d in dirs:
        os.rmdir(d)
    os.rmdir(root)

    for ph in ("create", "stat", "unlink"):
        out[f"{ph}_ops"] = a.files / out[f"{ph}_s"]
    out["total_s"] = out["create_s"] + out["stat_s"] + out["unlink_s"]
    out["total_ops"] = 3 * a.files / out["total_s"]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
