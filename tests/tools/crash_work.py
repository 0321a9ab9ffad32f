#!/usr/bin/env python3
"""Workload and checker for tests/integration/crash.sh.

  crash_work.py run DIR MANIFEST [--seed S] [--max-secs N]
      Until the file system goes away (ENOTCONN, EIO, ...) or N seconds pass:
      - durable files: create, write, fsync the file, fsync its directory, then
        record path, size and SHA-256 in MANIFEST (a file outside the mount, itself
        fsynced). These files are never touched again.
      - atomic replaces: write a temporary file, fsync it, rename it over a durable
        target, fsync the directory; recorded as pending before the rename and as
        committed after the directory fsync.
      - churn that is never fsynced: overwrites, appends, truncates, renames, unlinks,
        mkdirs and xattrs on other files.
  crash_work.py verify DIR MANIFEST
      Every committed file must exist with its recorded content (for a pending replace,
      the old or the new content). Prints what it found; exit 1 on any loss.

Python 3 standard library only.
"""

import argparse
import errno
import hashlib
import json
import os
import random
import sys
import time

GONE = {errno.ENOTCONN, errno.EIO, errno.ECONNABORTED, errno.ENODEV, errno.ESHUTDOWN, errno.EBADF}


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path, data, sync):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        off = 0
        while off < len(data):
            off += os.write(fd, data[off:])
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def cmd_run(a):
    rng = random.Random(a.seed)
    mf = open(a.manifest, "a")

    def record(**kw):
        mf.write(json.dumps(kw) + "\n")
        mf.flush()
        os.fsync(mf.fileno())

    durable = []
    stats = {"durable": 0, "replaced": 0, "churn": 0}
    t_end = time.time() + a.max_secs
    i = 0
    try:
        for d in range(4):
            os.makedirs(os.path.join(a.dir, f"d{d}"), exist_ok=True)
        fsync_dir(a.dir)
        while time.time() < t_end:
            i += 1
            r = rng.random()
            if r < 0.25:
                rel = f"d{i % 4}/dur{i}"
                data = rng.randbytes(rng.choice([0, 1, 100, 4096, 5000, rng.randrange(1, 300_000)]))
                write_file(os.path.join(a.dir, rel), data, True)
                fsync_dir(os.path.join(a.dir, f"d{i % 4}"))
                record(path=rel, size=len(data), sha=hashlib.sha256(data).hexdigest())
                durable.append(rel)
                stats["durable"] += 1
            elif r < 0.32 and durable:
                rel = rng.choice(durable)
                d = os.path.dirname(rel)
                tmp = f"{d}/.tmp{i}"
                data = rng.randbytes(rng.randrange(0, 100_000))
                write_file(os.path.join(a.dir, tmp), data, True)
                sha = hashlib.sha256(data).hexdigest()
                record(path=rel, size=len(data), sha=sha, pending=True)
                os.rename(os.path.join(a.dir, tmp), os.path.join(a.dir, rel))
                fsync_dir(os.path.join(a.dir, d))
                record(path=rel, size=len(data), sha=sha)
                stats["replaced"] += 1
            else:
                churn(a.dir, rng, i)
                stats["churn"] += 1
    except OSError as e:
        if e.errno not in GONE:
            print(f"crash_work: unexpected {errno.errorcode.get(e.errno, e.errno)} at step {i}: {e}")
            print(f"crash_work: {stats}")
            return 1
        print(f"crash_work: the file system went away at step {i} ({errno.errorcode.get(e.errno, e.errno)})")
    print(f"crash_work: {stats['durable']} durable files, {stats['replaced']} atomic replaces, "
          f"{stats['churn']} churn ops")
    return 0


def churn(root, rng, i):
    d = os.path.join(root, f"d{rng.randrange(4)}")
    name = os.path.join(d, f"c{rng.randrange(40)}")
    r = rng.random()
    try:
        if r < 0.35:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, rng.randbytes(rng.randrange(1, 65536)), rng.randrange(0, 200_000))
            finally:
                os.close(fd)
        elif r < 0.45:
            with open(name, "ab") as f:
                f.write(rng.randbytes(rng.randrange(1, 10000)))
        elif r < 0.55:
            os.truncate(name, rng.randrange(0, 100_000))
        elif r < 0.7:
            os.rename(name, os.path.join(root, f"d{rng.randrange(4)}", f"c{rng.randrange(40)}"))
        elif r < 0.8:
            os.unlink(name)
        elif r < 0.88:
            os.mkdir(os.path.join(d, f"sub{rng.randrange(10)}"))
        elif r < 0.95:
            os.setxattr(name, f"user.c{rng.randrange(3)}", rng.randbytes(rng.randrange(0, 200)))
        else:
            os.symlink(f"c{rng.randrange(40)}", os.path.join(d, f"l{rng.randrange(10)}"))
    except OSError as e:
        if e.errno in GONE:
            raise
        if e.errno not in (errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR,
                           errno.ENODATA, errno.ENOSPC):
            raise


def cmd_verify(a):
    entries = {}
    with open(a.manifest) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line: the workload was writing it when killed
            prev = entries.get(e["path"])
            if e.get("pending"):
                ok = set(prev["ok"]) if prev else set()
                entries[e["path"]] = {"ok": sorted(ok | {e["sha"]}), "pending": True}
            else:
                entries[e["path"]] = {"ok": [e["sha"]], "size": e["size"]}
    missing, wrong, good = [], [], 0
    for rel, e in sorted(entries.items()):
        p = os.path.join(a.dir, rel)
        try:
            with open(p, "rb") as f:
                sha = hashlib.sha256(f.read()).hexdigest()
        except OSError as ex:
            missing.append(f"{rel}: {errno.errorcode.get(ex.errno, ex.errno)}")
            continue
        if sha in e["ok"]:
            good += 1
        else:
            wrong.append(f"{rel}: size {os.path.getsize(p)}, content matches no fsynced version")
    lf = os.path.join(a.dir, "lost+found")
    lost = len(os.listdir(lf)) if os.path.isdir(lf) else 0
    total = sum(len(fs) for _, _, fs in os.walk(a.dir))
    print(f"  fsynced files: {len(entries)}; intact: {good}; missing: {len(missing)}; wrong content: {len(wrong)}")
    print(f"  files now in the file system: {total}; entries in lost+found: {lost}")
    for m in missing[:20]:
        print(f"  MISSING {m}")
    for w in wrong[:20]:
        print(f"  WRONG   {w}")
    if not entries:
        print("  FAIL: no file was fsynced before the kill; nothing was tested")
        return 1
    return 1 if (missing or wrong) else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("dir")
    r.add_argument("manifest")
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--max-secs", type=float, default=60)
    v = sub.add_parser("verify")
    v.add_argument("dir")
    v.add_argument("manifest")
    a = ap.parse_args()
    return cmd_run(a) if a.cmd == "run" else cmd_verify(a)


if __name__ == "__main__":
    sys.exit(main())
