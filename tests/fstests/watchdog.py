#!/usr/bin/env python3
"""Per-test time limit for an fstests `check` run.

usage: watchdog.py CHECK_PID SECONDS LOGFILE MOUNTPOINT...

Every few seconds, find the test script that `check` (CHECK_PID) is running
(a descendant whose command line runs .../tests/<dir>/<name>). When one has run
longer than SECONDS, SIGKILL it and everything below it; `check` then records
that test as failed and goes on. If the test is still there 30 seconds later
(stuck in the kernel on a FUSE request that will never be answered), abort the
FUSE connections of the given mountpoints. Ends when CHECK_PID ends.
"""
import os, re, signal, sys, time


def procs():
    """pid -> (ppid, start ticks, argv) for every process."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        rest = stat[stat.rindex(")") + 2:].split()
        out[int(d)] = (int(rest[1]), int(rest[19]), argv)
    return out


def descendants(table, root):
    kids = {}
    for pid, (ppid, _, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            found.append(c)
            todo.append(c)
    return found


TEST_RE = re.compile(r"(?:^|/)tests/([a-z0-9]+/[0-9]+)$")


def test_of(argv):
    """generic/001 for a process running tests/generic/001, else None."""
    for a in argv[1:3]:
        m = TEST_RE.search(a)
        if m:
            return m.group(1)
    return None


def abort_fuse(mounts, log):
    for m in mounts:
        try:
            st = os.stat(m)
        except OSError:
            continue
        conn = f"/sys/fs/fuse/connections/{os.minor(st.st_dev)}/abort"
        if os.path.exists(conn):
            with open(conn, "w") as f:
                f.write("1")
            log(f"aborted the FUSE connection of {m}")


def main():
    check_pid, limit, logfile = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    mounts = sys.argv[4:]
    hz = os.sysconf("SC_CLK_TCK")

    def log(msg):
        with open(logfile, "a") as f:
            f.write(time.strftime("%H:%M:%S ") + msg + "\n")

    killed = {}  # pid -> time of the kill
    while os.path.exists(f"/proc/{check_pid}"):
        time.sleep(5)
        with open("/proc/uptime") as f:
            now = float(f.read().split()[0])
        table = procs()
        for pid in descendants(table, check_pid):
            ppid, start, argv = table[pid]
            name = test_of(argv)
            # the test script itself: its parent is not running the same test
            if name is None or test_of(table.get(ppid, (0, 0, []))[2]) == name:
                continue
            age = now - start / hz
            if pid in killed:
                if time.monotonic() - killed[pid] > 30:
                    log(f"{name} still there 30 s after SIGKILL")
                    abort_fuse(mounts, log)
                    killed[pid] = time.monotonic()
                continue
            if age > limit:
                log(f"{name} ran {age:.0f} s (limit {limit:.0f} s): SIGKILL")
                for p in [pid] + descendants(table, pid):
                    try:
                        os.kill(p, signal.SIGKILL)
                    except OSError:
                        pass
                killed[pid] = time.monotonic()


if __name__ == "__main__":
    main()
