#!/usr/bin/env python3
"""A compromised ext4iomap server, for tests/integration/hostile.sh.

The proxy is the "server" fuservicemount talks to. It starts the real
ext4iomapd behind itself (socketpair SOCK_SEQPACKET as its fd 3, argv
`ext4iomapd --service-fd 3`, EXT4IOMAP_SERVICE_FD=3) and forwards every
datagram both ways, fds included, except where the scenario rewrites, drops,
replays or injects a message. With --pure it plays the server alone.
Everything the helper sends back is recorded in a JSON result: every reply
(which request it answered, its errno, its path) and fstat of every fd it
carried (dev/ino/mode/rdev, and for a loop device the backing file's dev/ino
from LOOP_GET_STATUS64), so a test can tell which file the helper really
opened. python3 standard library only.

Two ways to run it:

  serve    --listen /run/filesystems/hostile [--uid U --gid G]
           Service-socket mode. Binds as root (socket mode/owner settable to
           test the helper's trust checks), drops to U:G (setgroups([]),
           setresgid, setresuid) and accepts exactly one connection.
  spawned  [--sock-fd 3]
           Spawn mode: run by a wrapper script given to
           `fuservicemount --server`. The real server is started and every
           module is imported before HELLO is answered (the helper may empty
           the root after HELLO); results go only through inherited fds.

Coordination with the test: `--wait TAG` announces "ready TAG" on the status
file and blocks until one byte arrives on the go FIFO. Status lines:
"started", "listening", "connected", "ready TAG", "done REASON".

Also small helpers the test uses from outside: watch (inotify IN_OPEN),
excl (O_EXCL open of a block device), fifo-writer, devino, fd-check, get,
replies.
"""

import argparse
import array
import ctypes
import errno
import fcntl
import json
import os
import select
import signal
import socket
import stat
import struct
import sys
import time

TAGS = {
    b"SAFT": "HELLO", b"LAST": "LAST", b"OPEN": "OPEN", b"BDEV": "BDEV",
    b"TYPE": "TYPE", b"NAME": "NAME", b"OPTS": "OPTS", b"MNTP": "MNTP",
    b"MTAB": "MTAB", b"IOMA": "IOMA", b"DOIT": "DOIT", b"BYEE": "BYEE",
    b"FILE": "FILE", b"REPL": "REPL",
}
MAGIC = {v: k for k, v in TAGS.items()}
SEND_FLAGS = socket.MSG_NOSIGNAL | socket.MSG_EOR
LOOP_MAJOR = 7
LOOP_GET_STATUS64 = 0x4C05

# Named scenarios: presets of the generic knobs below (the command line may add to them).
SCENARIOS = {
    "forward": {},
    # Finding 1: ask for a mount without nosuid/nodev.
    "doit-flags0": {"rewrite": ["DOIT=0"]},
    # Finding 1: server options outside the allow-list; if refused, send no OPTS at all.
    "opts-extra": {"rewrite": ["OPTS=sync,dirsync,lazytime"], "fallback": "drop"},
    # Finding 2: a fuseblk mount of some other block device (NAME given by the test).
    "fuseblk": {"rewrite": ["TYPE=1"]},
    # Finding 12: a server-chosen source name and utab options.
    "mtab-name": {"rewrite": ["NAME=hostile-name", "MTAB=rw,user=nobody,uhelper=hostile"]},
    # Finding 3: the same open twice.
    "replay-open": {"replay": ["BDEV"], "inject_after": ["BDEV=OPEN:@source"]},
    # Finding 3: the test swaps the source path, then the proxy asks for it.
    "swap-source": {"wait": ["START"], "inject": ["START=OPEN:@source"]},
    # Finding 4: the test swaps the mountpoint before MNTP / between MNTP and DOIT.
    "swap-mnt": {"wait": ["MNTP"]},
    "swap-mnt-doit": {"wait": ["DOIT"]},
    # Finding 5: after a good DOIT the test swaps the mountpoint; we vanish without BYEE.
    "undo": {"undo": True},
    # Finding 8: take the device fd and stop (never hand it to the real server).
    "grab-device": {"stop_after": ["BDEV", "OPEN"]},
    # Finding 11: ask for files named by -o values (paths given by the test), then BYEE 1.
    "inject-open": {"pure": "byee"},
    # Finding 10: bounds.
    "dup-slow": {"pure": "dup", "interval": 0.1},
    "dup-fast": {"pure": "dup", "interval": 0.0},
    "flood": {"pure": "flood"},
    "byee-linger": {"pure": "byee-linger"},
}


class Stop(Exception):
    pass


class HelperGone(Exception):
    pass


def u32(b):
    return struct.unpack(">I", bytes(b[:4]))[0]


def cstr(b):
    b = bytes(b)
    s = b[:-1] if b.endswith(b"\0") else b
    t = s.decode("utf-8", "replace")
    return t if len(t) <= 300 else t[:300] + "...(%d bytes)" % len(s)


def tag_of(d):
    if d is None:
        return "EOF"
    if len(d) < 4:
        return "SHORT"
    return TAGS.get(bytes(d[:4]), "0x" + bytes(d[:4]).hex())


def describe(d):
    t = tag_of(d)
    out = {"tag": t, "len": len(d) if d is not None else 0}
    try:
        if t in ("REPL",) and len(d) == 8:
            out["error"] = u32(d[4:8])
        elif t in ("TYPE", "DOIT", "BYEE") and len(d) == 8:
            out["value"] = u32(d[4:8])
        elif t == "FILE":
            out["error"] = u32(d[4:8])
            out["path"] = cstr(d[8:])
        elif t in ("OPEN", "BDEV"):
            fl, mode, rf, bs = struct.unpack(">IIII", bytes(d[4:20]))
            out.update(flags=oct(fl), create_mode=oct(mode), request_flags=hex(rf), block_size=bs,
                       path=cstr(d[20:]))
        elif t in ("NAME", "OPTS", "MTAB"):
            out["value"] = cstr(d[4:])
        elif t == "MNTP":
            fmt, _ = struct.unpack(">HH", bytes(d[4:8]))
            out.update(fmt=hex(fmt), path=cstr(d[8:]))
        elif t == "HELLO":
            lo, hi, fl = struct.unpack(">HHI", bytes(d[4:12]))
            out.update(min=lo, max=hi, flags=fl)
        elif t == "LAST":
            out["version"] = struct.unpack(">H", bytes(d[4:6]))[0]
    except (struct.error, IndexError):
        out["garbled"] = True
    return out


def enc_open(path, flags=os.O_RDONLY, kind="OPEN", mode=0, rflags=0, bs=0):
    return MAGIC[kind] + struct.pack(">IIII", flags & 0xFFFFFFFF, mode, rflags, bs) + path.encode() + b"\0"


def enc_u32(kind, v):
    return MAGIC[kind] + struct.pack(">I", v & 0xFFFFFFFF)


def enc_str(kind, s):
    return MAGIC[kind] + s.encode() + b"\0"


def enc_mntp(path, fmt=0x4000):
    return MAGIC["MNTP"] + struct.pack(">HH", fmt, 0) + path.encode() + b"\0"


def enc_last(v):
    return MAGIC["LAST"] + struct.pack(">HH", v, 0)


def reply_error(d):
    t = tag_of(d)
    if t in ("REPL", "FILE") and len(d) >= 8:
        return u32(d[4:8])
    return None


def devstr(dev):
    return "%d:%d" % (os.major(dev), os.minor(dev))


def fdinfo(fd):
    info = {}
    try:
        st = os.fstat(fd)
    except OSError as e:
        return {"error": errno.errorcode.get(e.errno, str(e.errno))}
    m = st.st_mode
    kind = ("reg" if stat.S_ISREG(m) else "blk" if stat.S_ISBLK(m) else "chr" if stat.S_ISCHR(m)
            else "dir" if stat.S_ISDIR(m) else "fifo" if stat.S_ISFIFO(m) else "sock" if stat.S_ISSOCK(m)
            else "other")
    info.update(kind=kind, dev=devstr(st.st_dev), ino=st.st_ino, mode=oct(m), uid=st.st_uid)
    if kind in ("blk", "chr"):
        info["rdev"] = devstr(st.st_rdev)
    try:
        acc = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
        info["access"] = {os.O_RDONLY: "r", os.O_WRONLY: "w", os.O_RDWR: "rw"}.get(acc, "?")
    except OSError:
        pass
    if kind == "blk" and os.major(st.st_rdev) == LOOP_MAJOR:
        buf = bytearray(232)
        try:
            fcntl.ioctl(fd, LOOP_GET_STATUS64, buf)
            lo_device, lo_inode = struct.unpack_from("=QQ", buf, 0)
            info["backing_dev"] = "%d:%d" % (os.major(lo_device), os.minor(lo_device))
            info["backing_ino"] = lo_inode
        except OSError as e:
            info["backing_error"] = errno.errorcode.get(e.errno, str(e.errno))
    try:
        info["link"] = os.readlink("/proc/self/fd/%d" % fd)
    except OSError:
        pass
    return info


def read_argv_memfd(fd):
    try:
        size = os.fstat(fd).st_size
        b = os.pread(fd, min(size, 1 << 20), 0)
        if b[:4] != b"ARGS":
            return None
        argc = u32(b[4:8])
        out = []
        for i in range(min(argc, 4096)):
            pos, ln = struct.unpack(">II", b[8 + 8 * i:16 + 8 * i])
            out.append(cstr(b[pos:pos + ln]))
        return out
    except (OSError, struct.error):
        return None


def recv_dgram(sock, timeout):
    """One datagram and its fds (close-on-exec), or (None, []) at EOF."""
    r, _, _ = select.select([sock], [], [], timeout)
    if not r:
        raise TimeoutError
    fds = array.array("i")
    try:
        msg, anc, flags, _ = sock.recvmsg(65537, socket.CMSG_LEN(8 * fds.itemsize), socket.MSG_CMSG_CLOEXEC)
    except (ConnectionResetError, BrokenPipeError):
        return None, []
    for level, typ, data in anc:
        if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    if not msg and not fds:
        return None, []
    return msg, list(fds)


def send_dgram(sock, data, fds=()):
    if fds:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))], SEND_FLAGS)
    else:
        sock.sendmsg([data], [], SEND_FLAGS)


def close_all(fds):
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class Proxy:
    def __init__(self, a, mode):
        self.a = a
        self.mode = mode
        self.t0 = time.monotonic()
        self.last_save = 0.0
        self.h = None  # helper side
        self.s = None  # real server side
        self.server_pid = None
        self.argv = None
        self.doit_ok = False
        self.seen = set()
        self.res = {
            "scenario": a.scenario, "mode": mode, "pid": os.getpid(), "uid": os.getuid(),
            "connected": False, "argv": None, "hello": None, "version": None,
            "events": [], "replies": [], "fds": [], "sent_to_helper": 0, "replies_count": 0,
            "helper_eof": None, "end": None, "server_pid": None, "server_status": None,
        }
        self.result_fd = self.open_out(a.result, a.result_fd, os.O_RDWR | os.O_CREAT)
        self.status_fd = self.open_out(a.status, a.status_fd, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        self.go_fd = self.open_out(a.go, a.go_fd, os.O_RDWR | os.O_NONBLOCK)
        # Opened now: in spawn mode the root may be empty after HELLO.
        self.devnull = os.open("/dev/null", os.O_WRONLY | os.O_CLOEXEC)

    @staticmethod
    def open_out(path, fd, flags):
        if fd is not None:
            os.set_inheritable(fd, False)
            return fd
        if path:
            return os.open(path, flags | os.O_CLOEXEC, 0o666)
        return -1

    def now(self):
        return round(time.monotonic() - self.t0, 3)

    def status(self, line):
        if self.status_fd >= 0:
            try:
                os.write(self.status_fd, ("%s\n" % line).encode())
            except OSError:
                pass

    def event(self, what, **kw):
        kw.update(t=self.now(), what=what)
        ev = self.res["events"]
        if len(ev) < 200:
            ev.append(kw)
        self.save()

    def save(self, force=False):
        if self.result_fd < 0:
            return
        now = time.monotonic()
        if not force and now - self.last_save < 0.05:
            return
        self.last_save = now
        data = json.dumps(self.res, indent=1, sort_keys=True).encode()
        try:
            os.ftruncate(self.result_fd, 0)
            os.pwrite(self.result_fd, data, 0)
        except OSError:
            pass

    def log(self, msg):
        try:
            os.write(2, ("hostile_proxy[%s]: %s\n" % (self.a.scenario, msg)).encode())
        except OSError:
            pass

    # -- the real server

    def start_server(self):
        if not self.a.server:
            return
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        tfd = theirs.fileno()
        if tfd == 3:  # dup2(3, 3) would keep close-on-exec
            tfd = fcntl.fcntl(theirs.fileno(), fcntl.F_DUPFD_CLOEXEC, 10)
        env = {"EXT4IOMAP_SERVICE_FD": "3", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        if "HOSTILE_TAG" in os.environ:  # lets the test find (and kill) what it started
            env["HOSTILE_TAG"] = os.environ["HOSTILE_TAG"]
        self.server_pid = os.posix_spawn(self.a.server, ["ext4iomapd", "--service-fd", "3"], env,
                                         file_actions=[(os.POSIX_SPAWN_DUP2, tfd, 3)])
        if tfd != theirs.fileno():
            os.close(tfd)
        theirs.close()
        self.s = mine
        self.res["server_pid"] = self.server_pid
        self.event("server started", pid=self.server_pid)

    def server_alive(self):
        if not self.server_pid:
            return False
        try:
            pid, st = os.waitpid(self.server_pid, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True
        self.res["server_status"] = st
        self.server_pid = None
        return False

    def kill_server(self):
        if self.server_alive():
            try:
                os.kill(self.server_pid, signal.SIGKILL)
                _, st = os.waitpid(self.server_pid, 0)
                self.res["server_status"] = st
            except (ProcessLookupError, ChildProcessError):
                pass
            self.server_pid = None

    # -- datagrams

    def recv_h(self, timeout=None):
        d, fds = recv_dgram(self.h, self.a.timeout if timeout is None else timeout)
        if d is None and self.res["helper_eof"] is None:
            self.res["helper_eof"] = self.now()
            self.event("helper closed the connection")
        return d, fds

    def send_h(self, d, fds=()):
        try:
            send_dgram(self.h, d, fds)
        except (BrokenPipeError, ConnectionResetError):
            if self.res["helper_eof"] is None:
                self.res["helper_eof"] = self.now()
            raise HelperGone
        self.res["sent_to_helper"] += 1

    def recv_s(self):
        return recv_dgram(self.s, self.a.timeout)

    def send_s(self, d, fds=()):
        try:
            send_dgram(self.s, d, fds)
        except (BrokenPipeError, ConnectionResetError):
            self.event("server closed its socket")

    def exchange(self, d, label, injected=False):
        """Send one request to the helper and return its reply (bytes, fds)."""
        self.send_h(d)
        reply, fds = self.recv_h()
        if reply is None:
            close_all(fds)
            raise HelperGone
        rec = describe(reply)
        rec.update(label=label, injected=injected, request=describe(d), t=self.now())
        rec["fds"] = [fdinfo(fd) for fd in fds]
        for fi in rec["fds"]:
            fi["for"] = rec.get("path")
            fi["request"] = rec["request"]["tag"]
            self.res["fds"].append(fi)
        self.res["replies_count"] += 1
        if len(self.res["replies"]) < 300:
            self.res["replies"].append(rec)
        self.save()
        return reply, fds

    # -- knobs

    def param_path(self, p):
        if p == "@source":
            return self.argv[1] if self.argv and len(self.argv) > 1 else p
        if p == "@mountpoint":
            return self.argv[2] if self.argv and len(self.argv) > 2 else p
        return p

    def build(self, spec):
        """TAG:VALUE -> datagram. OPEN:path[:flags], BDEV:path[:flags], TYPE:n, DOIT:n,
        NAME:s, OPTS:s, MTAB:s, MNTP:path."""
        kind, _, rest = spec.partition(":")
        if kind in ("OPEN", "BDEV"):
            path, flags = rest, os.O_RDONLY
            head, sep, tail = rest.rpartition(":")
            if sep:
                try:
                    path, flags = head, int(tail, 0)
                except ValueError:
                    pass
            return enc_open(self.param_path(path), flags, kind)
        if kind in ("TYPE", "DOIT", "BYEE"):
            return enc_u32(kind, int(rest, 0))
        if kind in ("NAME", "OPTS", "MTAB"):
            return enc_str(kind, rest)
        if kind == "MNTP":
            return enc_mntp(self.param_path(rest))
        raise ValueError("bad message spec %r" % spec)

    def rewrite_for(self, t):
        for r in self.a.rewrite:
            k, _, v = r.partition("=")
            if k == t:
                if t in ("TYPE", "DOIT"):
                    return enc_u32(t, int(v, 0))
                return enc_str(t, v)
        return None

    def wait_go(self, step):
        self.status("ready %s" % step)
        self.event("waiting for go", step=step)
        if self.go_fd < 0:
            raise Stop("--wait without a go fifo")
        deadline = time.monotonic() + self.a.go_timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Stop("no go for %s" % step)
            r, _, _ = select.select([self.go_fd], [], [], left)
            if r:
                try:
                    if os.read(self.go_fd, 1):
                        break
                except BlockingIOError:
                    continue
        self.event("go", step=step)

    def hook_point(self, t):
        if t in self.seen:
            return
        self.seen.add(t)
        if t in self.a.wait:
            self.wait_go(t)
        for spec in self.a.inject:
            at, _, what = spec.partition("=")
            if at == t:
                _, fds = self.exchange(self.build(what), "inject:" + what.split(":")[0], injected=True)
                close_all(fds)

    # -- the conversation

    def handshake(self):
        hello, fds = self.recv_h()
        close_all(fds)
        if hello is None:
            raise Stop("helper closed before HELLO")
        self.res["hello"] = describe(hello)
        self.event("HELLO", msg=self.res["hello"])
        if self.s:
            self.send_s(hello)
            last, sfds = self.recv_s()
            close_all(sfds)
            if last is None:
                raise Stop("server closed before answering HELLO")
        else:
            hi = self.res["hello"].get("max", 1)
            last = enc_last(2 if hi >= 2 else 1)
        self.res["version"] = describe(last).get("version")
        self.send_h(last)
        for name in ("argv", "fusedev"):
            d, fds = self.recv_h()
            if d is None:
                close_all(fds)
                raise Stop("helper closed before sending %s" % name)
            rec = describe(d)
            rec["fds"] = [fdinfo(fd) for fd in fds]
            if name == "argv" and fds:
                self.argv = read_argv_memfd(fds[0])
                self.res["argv"] = self.argv
            self.event("FILE " + name, msg=rec)
            if self.s:
                self.send_s(d, fds)
            close_all(fds)

    def forward_loop(self):
        while True:
            try:
                req, fds = self.recv_s()
            except TimeoutError:
                raise Stop("server silent")
            close_all(fds)
            if req is None:
                self.event("server closed")
                return "server closed"
            t = tag_of(req)
            if t == "BYEE":
                if self.a.undo and self.doit_ok:
                    self.wait_go("undo")
                    self.h.shutdown(socket.SHUT_RDWR)
                    self.h.close()
                    self.h = None
                    self.event("dropped the connection without BYEE")
                    return "dropped without BYEE"
                self.send_h(req)
                self.event("BYEE forwarded", msg=describe(req))
                return "BYEE %d" % u32(req[4:8])
            self.hook_point(t)
            if t in self.a.drop:
                self.event("dropped", msg=describe(req))
                self.send_s(enc_u32("REPL", 0))
                continue
            reply, rfds = self.handle(req, t)
            if t in self.a.stop_after:
                close_all(rfds)
                self.event("stopped after " + t)
                return "stopped after " + t
            self.send_s(reply, rfds)
            close_all(rfds)
            if t == "DOIT" and reply_error(reply) == 0:
                self.doit_ok = True
            if ("after", t) not in self.seen:
                self.seen.add(("after", t))
                if t in self.a.replay:
                    _, rfds = self.exchange(req, "replay:" + t, injected=True)
                    close_all(rfds)
                for spec in self.a.inject_after:
                    at, _, what = spec.partition("=")
                    if at == t:
                        _, rfds = self.exchange(self.build(what), "inject:" + what.split(":")[0], injected=True)
                        close_all(rfds)

    def handle(self, req, t):
        new = self.rewrite_for(t)
        if new is None or new == req:
            return self.exchange(req, "forward:" + t)
        reply, fds = self.exchange(new, "rewrite:" + t, injected=True)
        if reply_error(reply) == 0 or self.a.fallback == "none":
            return reply, fds
        close_all(fds)
        if self.a.fallback == "drop":
            self.event("rewrite refused; not sending " + t)
            return enc_u32("REPL", 0), []
        return self.exchange(req, "original:" + t)

    # -- pure scenarios (no real server)

    def pure(self):
        self.hook_point("START")
        kind = self.a.pure
        if kind == "byee":
            self.send_h(enc_u32("BYEE", self.a.exit_code))
            self.event("BYEE sent")
            self.wait_eof(10)
            return "BYEE %d" % self.a.exit_code
        if kind == "byee-linger":
            for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(s, signal.SIG_IGN)
            signal.alarm(0)
            self.send_h(enc_u32("BYEE", self.a.exit_code))
            self.event("BYEE sent; staying alive")
            self.save(force=True)
            self.status("lingering")
            end = time.monotonic() + self.a.linger
            while time.monotonic() < end:
                time.sleep(0.2)
            return "lingered"
        if kind == "dup":
            n = 0
            while True:
                try:
                    _, fds = self.exchange(enc_u32("TYPE", 0), "dup:TYPE", injected=True)
                except (HelperGone, TimeoutError):
                    break
                close_all(fds)
                n += 1
                if self.a.interval:
                    time.sleep(self.a.interval)
            self.res["dup_sent"] = n
            return "helper gave up after %d duplicates" % n
        if kind == "flood":
            # OPENs of a long path nobody named: each refusal echoes the path, so
            # the helper's send buffer fills after a few dozen replies, far below
            # its message cap; only a send timeout can get it out of sendmsg.
            req = enc_open("/" + "x" * max(1, self.a.flood_path_len - 1))
            n = 0
            for _ in range(20000):
                try:
                    self.h.sendmsg([req], [], SEND_FLAGS | socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                except (BrokenPipeError, ConnectionResetError):
                    break
                n += 1
            self.res["flood_sent"] = n
            self.event("flooded without reading", sent=n)
            p = select.poll()
            p.register(self.h, select.POLLHUP)
            end = time.monotonic() + self.a.timeout
            while time.monotonic() < end:
                if any(ev & (select.POLLHUP | select.POLLERR) for _, ev in p.poll(200)):
                    self.res["helper_eof"] = self.now()
                    self.event("helper closed the connection")
                    self.res["flood_replies"] = self.drain()
                    return "helper hung up"
            return "helper still connected"
        raise Stop("unknown pure action %r" % kind)

    def drain(self):
        """Count the replies still queued for us (they outlive the helper's close)."""
        n = 0
        while True:
            try:
                d, fds = self.h.recvmsg(65537, socket.CMSG_LEN(32), socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC)[:2]
            except (BlockingIOError, ConnectionResetError):
                return n
            if not d:
                return n
            n += 1

    def wait_eof(self, secs):
        end = time.monotonic() + secs
        while time.monotonic() < end:
            try:
                d, fds = self.recv_h(timeout=max(0.01, end - time.monotonic()))
            except TimeoutError:
                return
            close_all(fds)
            if d is None:
                return
            self.event("unexpected message after BYEE", msg=describe(d))

    def session(self):
        self.res["connected"] = True
        self.status("connected")
        self.event("connected")
        try:
            self.handshake()
            if self.a.pure:
                return self.pure()
            self.hook_point("START")
            return self.forward_loop()
        except HelperGone:
            return "helper gone"
        except TimeoutError:
            return "timeout waiting for a message"

    def finish(self, reason):
        self.res["end"] = reason
        if not self.doit_ok:
            self.kill_server()
        self.save(force=True)
        self.status("done %s" % reason)
        signal.alarm(0)
        if self.h is not None:
            try:
                self.h.close()
            except OSError:
                pass
            self.h = None
        if self.s is not None:
            self.s.close()
            self.s = None
        # The real server serves the mount now; in spawn mode we are the PID
        # namespace's init, so stay until it ends. Like the real server, let go
        # of the helper's stderr first (the helper drains it until end of file).
        if self.server_pid:
            if self.mode == "spawn":
                os.dup2(self.devnull, 2)
            self.event("waiting for the serving server", pid=self.server_pid)
            self.save(force=True)
            try:
                _, st = os.waitpid(self.server_pid, 0)
                self.res["server_status"] = st
            except ChildProcessError:
                pass
            self.server_pid = None
            self.save(force=True)


def on_signal(signum, _frame):
    raise Stop("signal %d" % signum)


def apply_scenario(a):
    preset = SCENARIOS.get(a.scenario)
    if preset is None:
        sys.exit("hostile_proxy: unknown scenario %r (known: %s)" % (a.scenario, ", ".join(sorted(SCENARIOS))))
    for k in ("rewrite", "wait", "inject", "inject_after", "replay", "stop_after", "drop"):
        setattr(a, k, list(preset.get(k, [])) + list(getattr(a, k) or []))
    if a.fallback is None:
        a.fallback = preset.get("fallback", "original")
    a.undo = a.undo or preset.get("undo", False)
    a.pure = a.pure or preset.get("pure")
    if a.interval is None:
        a.interval = preset.get("interval", 0.1)
    if a.pure:
        a.server = None


def run(a, mode):
    apply_scenario(a)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGHUP):
        signal.signal(s, on_signal)
    p = Proxy(a, mode)
    reason = "?"
    try:
        signal.alarm(a.deadline)
        if mode == "spawn":
            fd = int(os.environ.get("EXT4IOMAP_SERVICE_FD", a.sock_fd))
            hi = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
            os.close(fd)
            p.h = socket.socket(fileno=hi)
            p.status("started")
            p.event("started (spawn mode)", uid=os.getuid(), gid=os.getgid())
            p.start_server()  # before HELLO is answered
            reason = p.session()
        else:
            lsock = listen_socket(a)
            drop_privileges(a)
            p.res["uid"] = os.getuid()
            p.status("listening")
            p.event("listening", path=a.listen, uid=os.getuid())
            lsock.settimeout(a.accept_timeout)
            try:
                conn, _ = lsock.accept()
            except socket.timeout:
                reason = "no connection"
                conn = None
            lsock.close()
            if conn is not None:
                conn.settimeout(None)
                p.h = conn
                p.start_server()
                reason = p.session()
    except Stop as e:
        reason = str(e)
    except Exception as e:  # record, never hang
        reason = "proxy error: %r" % (e,)
        p.log(reason)
    try:
        p.finish(reason)
    except Stop:
        p.kill_server()
        p.save(force=True)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)
    return 0


def listen_socket(a):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.bind(a.listen)
    os.chmod(a.listen, int(a.sock_mode, 8))
    if a.sock_owner is not None:
        os.chown(a.listen, a.sock_owner, a.sock_owner)
    s.listen(1)
    return s


def drop_privileges(a):
    if os.getuid() != 0:
        return
    os.setgroups([])
    os.setresgid(a.gid, a.gid, a.gid)
    os.setresuid(a.uid, a.uid, a.uid)
    if os.getuid() == 0 or os.geteuid() == 0:
        sys.exit("hostile_proxy: could not drop privileges")


# ---------------------------------------------------------------- test helpers

IN_ACCESS, IN_MODIFY, IN_OPEN = 0x1, 0x2, 0x20


def cmd_watch(a):
    """inotify on each path; one line per event ('OPEN path'), 'watching' once armed."""
    libc = ctypes.CDLL(None, use_errno=True)
    ifd = libc.inotify_init1(os.O_CLOEXEC)
    if ifd < 0:
        sys.exit("inotify_init1: %s" % os.strerror(ctypes.get_errno()))
    wds = {}
    for p in a.paths:
        wd = libc.inotify_add_watch(ifd, p.encode(), IN_OPEN | IN_ACCESS | IN_MODIFY)
        if wd < 0:
            sys.exit("inotify_add_watch %s: %s" % (p, os.strerror(ctypes.get_errno())))
        wds[wd] = p
    out = open(a.out, "a", buffering=1)
    out.write("watching\n")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    names = {IN_OPEN: "OPEN", IN_ACCESS: "ACCESS", IN_MODIFY: "MODIFY"}
    while True:
        buf = os.read(ifd, 65536)
        off = 0
        while off + 16 <= len(buf):
            wd, mask, _, ln = struct.unpack_from("iIII", buf, off)
            off += 16 + ln
            for bit, n in names.items():
                if mask & bit:
                    out.write("%s %s\n" % (n, wds.get(wd, "?")))


def cmd_excl(a):
    try:
        fd = os.open(a.device, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as e:
        print("busy: %s" % os.strerror(e.errno))
        return 1
    os.close(fd)
    print("free")
    return 0


def cmd_fifo_writer(a):
    fd = os.open(a.fifo, os.O_WRONLY)  # blocks until some process opens it for reading
    with open(a.out, "a") as f:
        f.write("opened\n")
    os.close(fd)
    return 0


def cmd_devino(a):
    st = os.stat(a.path)
    print("%s %d" % (devstr(st.st_dev), st.st_ino))
    return 0


def load(path):
    """The proxy's result; {} when it never ran (an empty file)."""
    with open(path) as f:
        text = f.read()
    return json.loads(text) if text.strip() else {}


def cmd_get(a):
    v = load(a.result)
    for k in a.key.split("."):
        v = v.get(k) if isinstance(v, dict) else None
    print(json.dumps(v) if not isinstance(v, str) else v)
    return 0


def printable(v):
    """Control characters from the server as \\xNN, so a log shows them and a terminal ignores them."""
    return "".join(c if c.isprintable() else "\\x%02x" % ord(c) for c in str(v))


def cmd_replies(a):
    r = load(a.result)
    for x in r.get("replies", []):
        req = x.get("request", {})
        what = req.get("path", req.get("value", ""))
        e = x.get("error")
        ename = errno.errorcode.get(e, str(e)) if e else "ok"
        fds = ", ".join("%s %s ino %s%s" % (f.get("kind"), f.get("dev"), f.get("ino"),
                                           " backing %s ino %s" % (f["backing_dev"], f["backing_ino"])
                                           if "backing_dev" in f else "") for f in x.get("fds", []))
        label = x.get("label", "")
        if a.label and label != a.label:
            continue
        print("%-16s %s %s -> %s %s%s" % (label, req.get("tag"), printable(what), x.get("tag"), ename,
                                          " fds: " + fds if fds else ""))
    return 0


def cmd_reply_error(a):
    """errno name of the first reply with this label (and request path), 'none' if none."""
    for x in load(a.result).get("replies", []):
        if x.get("label") == a.label and (a.path is None or x.get("request", {}).get("path") == a.path):
            e = x.get("error") or 0
            print(errno.errorcode.get(e, str(e)) if e else "0")
            return 0
    print("none")
    return 0


def cmd_fd_check(a):
    """Every fd the helper handed out for an OPEN/BDEV must be one of the --allow
    files: the same regular file (dev/ino), a loop device backed by it, or the
    same block device (rdev). Exit 1 otherwise, or when there are more than --max."""
    allow = []
    for p in a.allow:
        st = os.stat(p)
        allow.append((p, devstr(st.st_dev), st.st_ino,
                      devstr(st.st_rdev) if stat.S_ISBLK(st.st_mode) else None))
    r = load(a.result)
    fds = [f for f in r.get("fds", []) if f.get("request") in ("OPEN", "BDEV")]
    bad = 0
    for f in fds:
        ok = None
        for p, dev, ino, rdev in allow:
            if f.get("kind") == "reg" and (f.get("dev"), f.get("ino")) == (dev, ino):
                ok = p
            elif f.get("kind") == "blk" and (f.get("backing_dev"), f.get("backing_ino")) == (dev, ino):
                ok = p + " (through a loop device)"
            elif f.get("kind") == "blk" and rdev is not None and f.get("rdev") == rdev:
                ok = p
        desc = "%s dev %s ino %s%s%s" % (f.get("kind"), f.get("dev"), f.get("ino"),
                                         " rdev " + f["rdev"] if "rdev" in f else "",
                                         " backing %s ino %s" % (f.get("backing_dev"), f.get("backing_ino"))
                                         if "backing_dev" in f else "")
        print("  fd for %s: %s -> %s" % (f.get("for"), desc, ok or "NOT ALLOWED"))
        if not ok:
            bad += 1
    print("  %d fd(s) received for OPEN/BDEV" % len(fds))
    if a.max is not None and len(fds) > a.max:
        return 1
    return 1 if bad else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    def proxy_args(p):
        p.add_argument("--scenario", default="forward")
        p.add_argument("--server", help="the real ext4iomapd (omit, or --pure, for no real server)")
        p.add_argument("--result"), p.add_argument("--result-fd", type=int)
        p.add_argument("--status"), p.add_argument("--status-fd", type=int)
        p.add_argument("--go", help="FIFO the test writes a byte to after a 'ready' line")
        p.add_argument("--go-fd", type=int)
        p.add_argument("--rewrite", action="append", help="TAG=VALUE for TYPE, DOIT, NAME, OPTS, MTAB")
        p.add_argument("--fallback", choices=["original", "drop", "none"],
                       help="when a rewrite is refused: send the original, send nothing (REPL 0 to the "
                            "server), or pass the refusal on")
        p.add_argument("--wait", action="append", help="TAG or START: wait for go first")
        p.add_argument("--inject", action="append", help="AT=SPEC, e.g. START=OPEN:/etc/shadow, BDEV=OPEN:@source")
        p.add_argument("--inject-after", action="append", dest="inject_after",
                       help="TAG=SPEC: like --inject, after the first TAG was answered")
        p.add_argument("--replay", action="append", help="TAG: send the server's first TAG again, after its reply")
        p.add_argument("--drop", action="append", help="TAG: do not pass it on; REPL 0 to the server")
        p.add_argument("--stop-after", action="append", dest="stop_after", help="TAG: stop after its reply")
        p.add_argument("--undo", action="store_true")
        p.add_argument("--pure", choices=["byee", "byee-linger", "dup", "flood"])
        p.add_argument("--interval", type=float)
        p.add_argument("--exit-code", type=int, default=1)
        p.add_argument("--linger", type=float, default=60)
        p.add_argument("--flood-path-len", type=int, default=16000)
        p.add_argument("--timeout", type=float, default=30, help="per-message wait")
        p.add_argument("--go-timeout", type=float, default=30)
        p.add_argument("--deadline", type=int, default=90, help="whole run")

    s = sub.add_parser("serve", help="service-socket mode")
    proxy_args(s)
    s.add_argument("--listen", required=True)
    s.add_argument("--uid", type=int, default=65534)
    s.add_argument("--gid", type=int, default=65534)
    s.add_argument("--sock-mode", default="600")
    s.add_argument("--sock-owner", type=int)
    s.add_argument("--accept-timeout", type=float, default=30)
    s2 = sub.add_parser("spawned", help="spawn mode (run by a --server wrapper)")
    proxy_args(s2)
    s2.add_argument("--sock-fd", type=int, default=3)

    w = sub.add_parser("watch")
    w.add_argument("--out", required=True)
    w.add_argument("paths", nargs="+")
    e = sub.add_parser("excl")
    e.add_argument("device")
    f = sub.add_parser("fifo-writer")
    f.add_argument("fifo")
    f.add_argument("out")
    d = sub.add_parser("devino")
    d.add_argument("path")
    g = sub.add_parser("get")
    g.add_argument("result")
    g.add_argument("key")
    r = sub.add_parser("replies")
    r.add_argument("result")
    r.add_argument("--label")
    re_ = sub.add_parser("reply-error")
    re_.add_argument("result")
    re_.add_argument("label")
    re_.add_argument("--path")
    c = sub.add_parser("fd-check")
    c.add_argument("result")
    c.add_argument("--allow", action="append", default=[])
    c.add_argument("--max", type=int)

    a = ap.parse_args()
    if a.cmd == "serve":
        return run(a, "socket")
    if a.cmd == "spawned":
        return run(a, "spawn")
    return {"watch": cmd_watch, "excl": cmd_excl, "fifo-writer": cmd_fifo_writer, "devino": cmd_devino,
            "get": cmd_get, "replies": cmd_replies, "reply-error": cmd_reply_error,
            "fd-check": cmd_fd_check}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
