#!/usr/bin/env python3
"""Concurrent stress through a mount: N threads create, write, rename across
directories, unlink and set xattrs at the same time for a while. Errors that a
racing peer explains (ENOENT, EEXIST, ENOTEMPTY) are fine; anything else fails.
Prints the final tree's file count. Usage: stress_work.py DIR THREADS SECONDS SEED"""
import errno, os, random, sys, threading, time

root, nthreads, seconds, seed = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
DIRS = [os.path.join(root, f"d{i}") for i in range(6)]
for d in DIRS:
    os.makedirs(d, exist_ok=True)
OPS = [int(c) for c in os.environ.get("STRESS_OPS", "012345")]
OK = {errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.ENODATA}
bad, lock, counts = [], threading.Lock(), {"ops": 0}

def worker(k):
    rnd = random.Random(seed * 1000 + k)
    deadline = time.time() + seconds
    n = 0
    while time.time() < deadline:
        d = rnd.choice(DIRS)
        name = os.path.join(d, f"f{rnd.randrange(40)}")
        op = rnd.choice(OPS)
        try:
            if op == 0:
                with open(name, "ab") as f:
                    f.write(os.urandom(rnd.choice([1, 100, 4096, 70000])))
            elif op == 1:
                os.rename(name, os.path.join(rnd.choice(DIRS), f"f{rnd.randrange(40)}"))
            elif op == 2:
                os.unlink(name)
            elif op == 3:
                os.setxattr(name, f"user.k{rnd.randrange(4)}", os.urandom(rnd.choice([8, 300])))
            elif op == 4:
                sub = os.path.join(d, f"s{rnd.randrange(4)}")
                if rnd.random() < 0.5:
                    os.mkdir(sub)
                else:
                    os.rmdir(sub)
            else:
                with open(name, "r+b") as f:
                    f.truncate(rnd.randrange(50000))
        except OSError as e:
            # A full xattr block (1 KiB blocks, small inodes) is a legitimate ENOSPC.
            if e.errno not in OK and not (op == 3 and e.errno == errno.ENOSPC):
                with lock:
                    bad.append(f"thread {k} op {op} {name}: {e}")
        n += 1
    with lock:
        counts["ops"] += n

threads = [threading.Thread(target=worker, args=(k,)) for k in range(nthreads)]
for t in threads: t.start()
for t in threads: t.join(seconds + 60)
if any(t.is_alive() for t in threads):
    print("stress: FAIL: a thread is still running (deadlock?)"); sys.exit(2)
files = sum(len(fs) for _, _, fs in os.walk(root))
print(f"stress: {nthreads} threads, {counts['ops']} ops in {seconds:.0f}s, {files} files at the end")
if bad:
    print("stress: FAIL: unexpected errors:"); print("\n".join(bad[:20])); sys.exit(1)
