#!/usr/bin/env python3
"""Workloads for tests/integration/fullness.sh: fill a mounted file system to ENOSPC
and check what happened. Every command appends its findings to a JSON state file and
exits 1 on a violation (an errno other than ENOSPC, wrong data, insane statfs).

  fullness_work.py fill DIR STATE --writers N [--cap BYTES]   parallel writers until ENOSPC (or cap)
  fullness_work.py small DIR STATE [--size 4096] [--max N]    many small files until ENOSPC
  fullness_work.py empty DIR STATE [--max N]                  empty files until ENOSPC
  fullness_work.py statfs DIR [--full]                        sanity of statvfs
  fullness_work.py verify DIR STATE                           sizes and bytes of everything recorded
  fullness_work.py rmall DIR                                  delete everything but lost+found
  fullness_work.py refill DIR [--fraction 0.5]                write, fsync and read back a file

Data is a pattern derived from the file name and offset, so it can be checked later.
Python 3 standard library only.
"""

import argparse
import errno
import hashlib
import json
import os
import shutil
import sys

CHUNK = 1 << 20


def pattern(name, off, n):
    """Bytes [off, off+n) of the pattern of file `name` (16-byte lines keyed by offset)."""
    start = off - off % 16
    out = bytearray()
    key = hashlib.sha1(name.encode()).hexdigest()[:6]
    for o in range(start, off + n, 16):
        out += f"{key}{o:09x}\n".encode()
    return bytes(out[off - start: off - start + n])


def ename(e):
    return errno.errorcode.get(e, str(e))


def load(state):
    try:
        with open(state) as f:
            return json.load(f)
    except FileNotFoundError:
        return {"files": {}, "events": []}


def save(state, st):
    with open(state + ".tmp", "w") as f:
        json.dump(st, f)
    os.replace(state + ".tmp", state)


def write_until_full(path, name, start, cap, chunk=CHUNK):
    """Appends pattern data from `start` until an error or `cap` bytes. Returns
    (good_size, errno_name_or_None, where)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    good = start
    err, where = None, None
    try:
        while cap is None or good < cap:
            n = chunk if cap is None else min(chunk, cap - good)
            buf = pattern(name, good, n)
            try:
                w = os.pwrite(fd, buf, good)
            except OSError as e:
                err, where = ename(e.errno), "write"
                break
            good += w
            if w < n:
                continue  # short write: the next one reports the error
        try:
            os.fsync(fd)
        except OSError as e:
            if err is None:
                err, where = ename(e.errno), "fsync"
    finally:
        try:
            os.close(fd)
        except OSError as e:
            if err is None:
                err, where = ename(e.errno), "close"
    return good, err, where


def cmd_fill(a):
    st = load(a.state)
    kids = []
    for w in range(a.writers):
        r, wr = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            name = f"big{w}"
            start = st["files"].get(name, {}).get("size", 0)
            cap = None if a.cap is None else start + a.cap
            res = write_until_full(os.path.join(a.dir, name), name, start, cap)
            os.write(wr, json.dumps([name, *res]).encode())
            os._exit(0)
        os.close(wr)
        kids.append((pid, r))
    bad = 0
    for pid, r in kids:
        data = b""
        while True:
            b = os.read(r, 65536)
            if not b:
                break
            data += b
        os.close(r)
        os.waitpid(pid, 0)
        name, good, err, where = json.loads(data)
        st["files"][name] = {"size": good}
        if where in ("fsync", "close"):
            st["files"][name]["partial"] = True
        st["events"].append({"file": name, "errno": err, "where": where, "size": good})
        print(f"  {name}: {good} bytes" + (f", then {err} at {where}" if err else " (cap reached)"))
        if err not in (None, "ENOSPC"):
            print(f"FAIL: {name}: {err} at {where} (expected ENOSPC)")
            bad += 1
    save(a.state, st)
    if a.expect_full and not any(e["errno"] == "ENOSPC" for e in st["events"][-a.writers:]):
        print("FAIL: no writer saw ENOSPC")
        bad += 1
    return 1 if bad else 0


def cmd_small(a, size):
    st = load(a.state)
    made, err, where = 0, None, None
    for i in range(a.max):
        d = os.path.join(a.dir, f"{'small' if size else 'empty'}{i // 500}")
        try:
            os.makedirs(d, exist_ok=True)
        except OSError as e:
            err, where = ename(e.errno), "mkdir"
            break
        name = os.path.relpath(os.path.join(d, f"s{i}"), a.dir)
        try:
            fd = os.open(os.path.join(a.dir, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as e:
            err, where = ename(e.errno), "create"
            break
        good, e2, w2 = 0, None, None
        try:
            if size:
                buf = pattern(name, 0, size)
                try:
                    good = os.write(fd, buf)
                    if good < size:
                        e2, w2 = "short write", "write"
                except OSError as e:
                    e2, w2 = ename(e.errno), "write"
        finally:
            try:
                os.close(fd)
            except OSError as e:
                e2, w2 = e2 or ename(e.errno), w2 or "close"
        st["files"][name] = {"size": good}
        made += 1
        if e2:
            err, where = e2, w2
            st["files"][name]["partial"] = True
            break
    else:
        err, where = None, None
    st["events"].append({"small": size, "made": made, "errno": err, "where": where})
    save(a.state, st)
    print(f"  {made} {'files of ' + str(size) + ' bytes' if size else 'empty files'}"
          + (f", then {err} at {where}" if err else f" (limit {a.max} reached)"))
    if err not in (None, "ENOSPC"):
        print(f"FAIL: {err} at {where} (expected ENOSPC)")
        return 1
    if a.expect_full and err != "ENOSPC":
        print("FAIL: expected ENOSPC")
        return 1
    return 0


def cmd_statfs(a):
    sv = os.statvfs(a.dir)
    bs = sv.f_frsize or sv.f_bsize
    print(f"  statfs: bsize {bs}, blocks {sv.f_blocks}, bfree {sv.f_bfree}, bavail {sv.f_bavail}, "
          f"files {sv.f_files}, ffree {sv.f_ffree}, namemax {sv.f_namemax}")
    bad = []
    if not (0 < sv.f_blocks and sv.f_bavail <= sv.f_bfree <= sv.f_blocks):
        bad.append("block counts out of order (need bavail <= bfree <= blocks, blocks > 0)")
    if not (0 < sv.f_files and sv.f_favail <= sv.f_ffree <= sv.f_files):
        bad.append("inode counts out of order")
    if bs not in (1024, 2048, 4096, 65536):
        bad.append(f"odd block size {bs}")
    if sv.f_namemax != 255:
        bad.append(f"namemax {sv.f_namemax}, expected 255")
    if a.full and sv.f_bavail > sv.f_blocks * 0.02 + 64:
        bad.append(f"full file system still shows {sv.f_bavail} available blocks")
    if a.min_free is not None and sv.f_bfree < sv.f_blocks * a.min_free:
        bad.append(f"only {sv.f_bfree} free blocks of {sv.f_blocks} after deleting everything")
    if a.used_at_least:
        used = (sv.f_blocks - sv.f_bfree) * bs
        st = load(a.used_at_least)
        data = sum(f["size"] for f in st["files"].values())
        print(f"  used {used} bytes for {data} bytes of file data")
        if used < data:
            bad.append(f"statfs says {used} bytes used but {data} bytes of data were written")
    for b in bad:
        print(f"FAIL: statfs: {b}")
    return 1 if bad else 0


def cmd_verify(a):
    st = load(a.state)
    bad = 0
    checked = 0
    for name, f in sorted(st["files"].items()):
        p = os.path.join(a.dir, name)
        try:
            size = os.stat(p).st_size
        except OSError as e:
            print(f"FAIL: {name}: {ename(e.errno)}")
            bad += 1
            continue
        want = f["size"]
        if f.get("partial"):
            # the write that hit ENOSPC (or an fsync that did): any prefix of the data will do
            with open(p, "rb") as fh:
                if fh.read() != pattern(name, 0, size):
                    print(f"FAIL: {name}: wrong data (partially written file, size {size})")
                    bad += 1
            continue
        if size != want:
            print(f"FAIL: {name}: size {size}, expected {want}")
            bad += 1
            continue
        with open(p, "rb") as fh:
            off = 0
            while off < size:
                b = fh.read(CHUNK)
                if not b:
                    break
                if b != pattern(name, off, len(b)):
                    print(f"FAIL: {name}: wrong data in [{off}, {off + len(b)})")
                    bad += 1
                    break
                off += len(b)
            else:
                checked += 1
                continue
            if off < size:
                print(f"FAIL: {name}: short read at {off} of {size}")
                bad += 1
    print(f"  verified {checked} files" + (f", {bad} bad" if bad else ""))
    return 1 if bad else 0


def cmd_rmall(a):
    n = 0
    for e in os.listdir(a.dir):
        if e == "lost+found":
            continue
        p = os.path.join(a.dir, e)
        if os.path.isdir(p) and not os.path.islink(p):
            n += sum(len(fs) for _, _, fs in os.walk(p))
            shutil.rmtree(p)
        else:
            os.unlink(p)
            n += 1
    print(f"  deleted {n} files")
    return 0


def cmd_refill(a):
    sv = os.statvfs(a.dir)
    size = int(sv.f_bavail * sv.f_frsize * a.fraction) // CHUNK * CHUNK
    name = "again"
    good, err, where = write_until_full(os.path.join(a.dir, name), name, 0, size)
    print(f"  wrote {good} of {size} bytes" + (f", {err} at {where}" if err else ""))
    if err or good != size:
        print("FAIL: writing after deleting everything failed")
        return 1
    with open(os.path.join(a.dir, name), "rb") as fh:
        if fh.read() != pattern(name, 0, size):
            print("FAIL: the rewritten file reads back wrong")
            return 1
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fill")
    f.add_argument("dir")
    f.add_argument("state")
    f.add_argument("--writers", type=int, default=4)
    f.add_argument("--cap", type=int, default=None)
    f.add_argument("--expect-full", action="store_true")
    for n in ("small", "empty"):
        s = sub.add_parser(n)
        s.add_argument("dir")
        s.add_argument("state")
        s.add_argument("--size", type=int, default=4096)
        s.add_argument("--max", type=int, default=20000)
        s.add_argument("--expect-full", action="store_true")
    s = sub.add_parser("statfs")
    s.add_argument("dir")
    s.add_argument("--full", action="store_true")
    s.add_argument("--min-free", type=float, default=None)
    s.add_argument("--used-at-least", metavar="STATE")
    v = sub.add_parser("verify")
    v.add_argument("dir")
    v.add_argument("state")
    r = sub.add_parser("rmall")
    r.add_argument("dir")
    r = sub.add_parser("refill")
    r.add_argument("dir")
    r.add_argument("--fraction", type=float, default=0.5)
    a = ap.parse_args()
    if a.cmd == "fill":
        return cmd_fill(a)
    if a.cmd == "small":
        return cmd_small(a, a.size)
    if a.cmd == "empty":
        return cmd_small(a, 0)
    return {"statfs": cmd_statfs, "verify": cmd_verify, "rmall": cmd_rmall, "refill": cmd_refill}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
