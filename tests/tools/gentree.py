#!/usr/bin/env python3
"""Generate source trees for the oracle images (mkfs.ext4 -d TREE), and the
debugfs edits that mkfs -d cannot express (nanosecond, pre-1970 and post-2038
timestamps, creation times, inode flags).

  gentree.py PROFILE DIR [--post FILE] [options]

Profiles:
  full      every file type, names, modes and owners, hard links, xattrs, ACLs,
            sparse files, a large file, deep nesting, timestamp and flag targets
  inline    many small files and small directories (for -O inline_data)
  blockmap  files that need direct, single, double and triple indirect blocks
            with 1 KiB blocks (the triple one is sparse), for ext2/ext3
  small     a handful of files (the base of the kernel-made htree image)
  ea        xattr values larger than a block (DIR must be on a file system
            that accepts them, e.g. a kernel ext4 mount with ea_inode)
  kernel    run on a read-write kernel ext4 mount: a directory with --entries
            empty files (the kernel builds the htree), unwritten extents
            (fallocate), punched holes, blocks past EOF

Root is needed for device nodes, ownership and trusted.* xattrs; everything is
deterministic (seeded) so that failures reproduce.
"""
import argparse
import ctypes
import os
import random
import socket
import stat
import subprocess
import sys

RNG = random.Random(20240601)


def data(n):
    return RNG.randbytes(n)


def write(path, content, mode=None):
    with open(path, "wb") as f:
        f.write(content)
    if mode is not None:
        os.chmod(path, mode)


def sparse(path, pieces, size):
    """pieces: [(offset, length)] of random data; the rest is a hole."""
    with open(path, "wb") as f:
        for off, n in pieces:
            f.seek(off)
            f.write(data(n))
        f.truncate(size)


def setx(path, name, value, follow=True):
    os.setxattr(path, name, value, follow_symlinks=follow)


def run(*argv):
    subprocess.run(argv, check=True)


# --------------------------------------------------------------------------
# Post-mkfs debugfs edits.

class Post:

    @staticmethod
    def _extra(sec, nsec):
        low = sec & 0xFFFFFFFF
        signed = low - (1 << 32) if low & 0x80000000 else low
        epoch = ((sec - signed) >> 32) & 3
        return (nsec << 2) | epoch

    def __init__(self, extra=True):
        self.cmds = []
        self.extra = extra  # False for 128-byte inodes: no *_extra fields, no crtime

    def time(self, path, field, sec, nsec):
        # debugfs sets the seconds (and epoch bits), then we set the full extra word.
        if not self.extra:
            if field == "crtime":
                return
            sec = max(-2**31, min(sec, 2**31 - 1))
            if sec == -1:
                sec = -2  # debugfs reads "@-1" as a parse failure
        self.cmds.append(f"sif {path} {field} @{sec}")
        if self.extra:
            self.cmds.append(f"sif {path} {field}_extra {self._extra(sec, nsec):#x}")

    def flags(self, path, value):
        self.cmds.append(f"sif {path} flags {value:#x}")

    def save(self, path):
        if path:
            with open(path, "w") as f:
                f.write("\n".join(self.cmds) + ("\n" if self.cmds else ""))


# --------------------------------------------------------------------------

def make_types(d, blocksize):
    os.makedirs(d)
    write(f"{d}/regular", b"regular file\n")
    os.mkfifo(f"{d}/fifo", 0o640)
    cwd = os.getcwd()
    os.chdir(d)  # socket paths are limited to 108 bytes
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind("socket")
        s.close()
    except OSError as e:
        print(f"gentree: no socket node ({e})", file=sys.stderr)
    finally:
        os.chdir(cwd)
    os.mknod(f"{d}/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(f"{d}/loop200", 0o660 | stat.S_IFBLK, os.makedev(7, 200))
    # Major > 255 and minor > 255: needs the "new" encoding in i_block[1].
    os.mknod(f"{d}/bigdev", 0o600 | stat.S_IFCHR, os.makedev(300, 70000))
    os.mknod(f"{d}/bigblk", 0o600 | stat.S_IFBLK, os.makedev(259, 1048575))
    os.symlink("regular", f"{d}/short-link")
    os.symlink("x" * 59, f"{d}/link59")
    os.symlink("y" * 60, f"{d}/link60")       # exactly 60: no longer fits i_block
    os.symlink("z" * 61, f"{d}/link61")
    os.symlink("/a/long/target/" + "p" * 180, f"{d}/long-link")
    os.symlink("q" * min(blocksize - 1, 4000), f"{d}/block-link")
    os.symlink("does/not/exist", f"{d}/dangling")
    os.symlink("..", f"{d}/dotdot-link")
    os.mkdir(f"{d}/subdir")


def make_names(d):
    os.makedirs(d)
    names = [
        b"a" * 255,
        ("\u00e9" * 127).encode() + b"z",           # 2-byte UTF-8, 255 bytes
        ("\u65e5" * 85).encode(),                   # 3-byte UTF-8, 255 bytes
        ("\U0001F600" * 63).encode() + b"abc",      # 4-byte UTF-8, 255 bytes
        "na\u00efve caf\u00e9 \u65e5\u672c\u8a9e \U0001F600".encode(),
        b"with space", b" leading", b"trailing ", b"-dash", b"new\nline", b"tab\tchar",
        b"\xff\xfe not utf8 \x80", b"...", b"..x", b".hidden", b"UPPER", b"upper",
        b"#%&*?[]{}!$'\"\\", b"1", b"12", b"123",
    ]
    for n in names:
        write(os.path.join(os.fsencode(d), n), n)
    os.mkdir(os.path.join(os.fsencode(d), b"d" * 255))
    write(os.path.join(os.fsencode(d), b"d" * 255, b"e" * 255), b"deep long names\n")


def make_modes(d):
    os.makedirs(d)
    specs = [("m0000", 0o000), ("m4755", 0o4755), ("m2755", 0o2755), ("m1777", 0o1777),
             ("m7777", 0o7777), ("m0444", 0o444), ("m0600", 0o600)]
    for n, m in specs:
        write(f"{d}/{n}", n.encode())
        os.chmod(f"{d}/{n}", m)
    os.mkdir(f"{d}/sticky")
    os.chmod(f"{d}/sticky", 0o1777)
    os.mkdir(f"{d}/setgid-dir")
    os.chmod(f"{d}/setgid-dir", 0o2775)
    owners = [("u1000", 1000, 1000), ("u65534", 65534, 65534), ("u70000", 70000, 70001),
              ("u4000000", 4000000, 4123456), ("u0g5", 0, 5)]
    for n, u, g in owners:
        write(f"{d}/{n}", n.encode())
        os.chown(f"{d}/{n}", u, g)
    os.symlink("m0600", f"{d}/owned-link")
    os.lchown(f"{d}/owned-link", 123456, 654321)


def make_links(d):
    os.makedirs(f"{d}/a/b")
    write(f"{d}/target", data(5000))
    os.link(f"{d}/target", f"{d}/a/link1")
    os.link(f"{d}/target", f"{d}/a/b/link2")
    os.link(f"{d}/target", f"{d}/a/b/link3")
    write(f"{d}/empty-target", b"")
    os.link(f"{d}/empty-target", f"{d}/empty-link")


def make_xattrs(d, blocksize):
    os.makedirs(d)
    write(f"{d}/small", b"x")
    setx(f"{d}/small", "user.a", b"1")
    setx(f"{d}/small", "user.empty", b"")
    setx(f"{d}/small", "trusted.t", b"trusted value")
    # Enough to overflow the in-inode area into an xattr block.
    write(f"{d}/block", b"y")
    big = min(blocksize - 400, 3000)
    setx(f"{d}/block", "user.big", data(big))
    setx(f"{d}/block", "trusted.big", bytes(range(128)))
    # Many names.
    write(f"{d}/many", b"z")
    for i in range(40 if blocksize >= 4096 else 12):
        setx(f"{d}/many", f"user.attr{i:02d}", f"value {i} ".encode() * (i % 5 + 1))
    # Two files with identical xattr blocks (mkfs may share them).
    for n in ("same1", "same2"):
        write(f"{d}/{n}", n.encode())
        setx(f"{d}/{n}", "user.shared", b"S" * min(blocksize // 2, 1500))
    os.mkdir(f"{d}/dir")
    setx(f"{d}/dir", "user.on-dir", b"directory xattr")
    os.symlink("small", f"{d}/link")
    try:
        setx(f"{d}/link", "trusted.on-link", b"symlink xattr", follow=False)
    except OSError as e:
        print(f"gentree: no xattr on symlink ({e})", file=sys.stderr)
    os.mkfifo(f"{d}/fifo")
    setx(f"{d}/fifo", "trusted.on-fifo", b"fifo xattr")


def make_acls(d):
    os.makedirs(f"{d}/dir/sub")
    write(f"{d}/file", b"acl")
    run("setfacl", "-m", "u:1234:rwx,u:99:r,g:4321:r-x,g:7:-,m:rwx,o:r", f"{d}/file")
    run("setfacl", "-m", "u:1000:rx", f"{d}/dir")
    run("setfacl", "-d", "-m", "u:2000:rwx,g:3000:rx,o::-", f"{d}/dir")
    write(f"{d}/dir/inherits", b"inherited default acl")
    write(f"{d}/minimal", b"minimal acl")
    run("setfacl", "-m", "u::rw,g::r,o::-", f"{d}/minimal")


def make_sparse(d, large_mb):
    os.makedirs(d)
    M = 1 << 20
    sparse(f"{d}/holes", [(M, 8192), (5 * M + 100, 70000)], 8 * M)
    sparse(f"{d}/leading-hole", [(3 * M, 4096)], 3 * M + 4096)
    sparse(f"{d}/trailing-hole", [(0, 10000)], 6 * M)
    sparse(f"{d}/all-hole", [], 3 * M + 17)
    sparse(f"{d}/checker", [(i * 65536, 4096) for i in range(64)], 64 * 65536)
    # Explicit zero blocks: mkfs -d turns them into holes; both sides must agree.
    write(f"{d}/zeros", bytes(300000))
    if large_mb:
        with open(f"{d}/large", "wb") as f:
            for _ in range(large_mb):
                f.write(data(M))
        # A large sparse file: 1 GiB apparent size, a few islands.
        sparse(f"{d}/large-sparse", [(i * 100 * M, 65536) for i in range(10)], 1 << 30)


def make_regular(d):
    os.makedirs(d)
    for n in (0, 1, 59, 60, 61, 100, 511, 512, 1023, 1024, 1025, 4095, 4096, 4097, 8192, 65536, 100003, 1 << 20):
        write(f"{d}/size{n}", data(n))
    write(f"{d}/text", b"".join(b"line %d\n" % i for i in range(20000)))


def make_times(d, post, prefix):
    os.makedirs(d)
    cases = {
        "nsec": dict(atime=(1500000000, 123456789), mtime=(1600000000, 987654321),
                     ctime=(1700000000, 1), crtime=(1400000000, 999999999)),
        "pre1970": dict(atime=(-2, 500000000), mtime=(-86400 * 365 * 30, 42),
                        ctime=(-2147483648, 0), crtime=(-123456789, 123456789)),
        "post2038": dict(atime=(2147483648, 7), mtime=(4102444800, 999999999),
                         ctime=(4294967296 + 12345, 1000), crtime=(8589934591, 314159265)),
        "epoch3": dict(atime=(2 ** 33 + 2 ** 32 + 5, 5), mtime=(0, 0),
                       ctime=(2 ** 34 - 2 ** 31 - 1, 999999999), crtime=(2 ** 31 - 1, 0)),
    }
    for n, fields in cases.items():
        write(f"{d}/{n}", n.encode())
        for field, (sec, nsec) in fields.items():
            post.time(f"{prefix}/{n}", field, sec, nsec)
    os.mkdir(f"{d}/dir")
    post.time(f"{prefix}/dir", "mtime", 3000000000, 123)
    os.symlink("nsec", f"{d}/link")
    post.time(f"{prefix}/link", "mtime", -5, 5)
    # Plain touch -d with nanoseconds in the source tree (mkfs may keep only seconds).
    write(f"{d}/touched", b"t")
    run("touch", "-h", "-d", "1969-07-20 20:17:40.123456789", f"{d}/touched")


def make_flags(d, post, prefix, extents):
    os.makedirs(d)
    base = 0x80000 if extents else 0
    for n, fl in (("immutable", 0x10), ("append", 0x20), ("sync", 0x8), ("nodump", 0x40),
                  ("noatime", 0x80), ("imm-app", 0x30)):
        write(f"{d}/{n}", n.encode() * 100)
        post.flags(f"{prefix}/{n}", base | fl)
    os.mkdir(f"{d}/immutable-dir")
    write(f"{d}/immutable-dir/inside", b"inside")
    post.flags(f"{prefix}/immutable-dir", base | 0x10)


def make_deep(d, depth=24):
    p = d
    for i in range(depth):
        p = f"{p}/level{i:02d}"
    os.makedirs(p)
    write(f"{p}/bottom", b"bottom\n")


def make_dirs(d):
    # A directory that needs several blocks (linear unless mkfs indexes it).
    os.makedirs(f"{d}/wide")
    for i in range(600):
        write(f"{d}/wide/entry-{i:04d}-{'n' * (i % 50)}", b"")
    os.makedirs(f"{d}/empty")


def profile_full(root, a, post):
    bs = a.blocksize
    make_regular(f"{root}/regular")
    make_types(f"{root}/types", bs)
    make_names(f"{root}/names")
    make_modes(f"{root}/modes")
    make_links(f"{root}/links")
    if not a.no_xattrs:
        make_xattrs(f"{root}/xattrs", bs)
        make_acls(f"{root}/acls")
    make_sparse(f"{root}/sparse", a.large_mb)
    make_times(f"{root}/times", post, "/times")
    make_flags(f"{root}/flags", post, "/flags", not a.no_extents)
    make_deep(f"{root}/deep")
    make_dirs(f"{root}/dirs")
    write(f"{root}/README", b"oracle tree\n")


def profile_inline(root, a, post):
    for i in range(200):
        n = i % 160
        write(f"{root}/f{i:03d}", data(n))
    for i in range(30):
        os.makedirs(f"{root}/d{i:02d}")
        for j in range(i):
            write(f"{root}/d{i:02d}/e{j}", data(j * 7))
    os.symlink("t" * 100, f"{root}/longlink")
    os.symlink("short", f"{root}/shortlink")
    write(f"{root}/with-xattr", b"inline + xattr")
    setx(f"{root}/with-xattr", "user.k", b"v" * 40)
    write(f"{root}/bigger", data(5000))
    write(f"{root}/empty", b"")
    os.makedirs(f"{root}/emptydir")


def profile_blockmap(root, a, post):
    K = 1024
    M = K * K
    write(f"{root}/direct", data(12 * K))
    write(f"{root}/single", data(200 * K))
    write(f"{root}/double", data(3 * M + 5))
    # With 1 KiB blocks, the triple-indirect range starts at (12+256+65536) KiB.
    sparse(f"{root}/triple", [(0, 1000), (5 * M, 3000), (65 * M, 70000), (70 * M, 4096)], 72 * M + 1)
    sparse(f"{root}/holes", [(20 * K, 4 * K), (300 * K, 2 * K)], 2 * M)
    make_types(f"{root}/types", a.blocksize)
    make_links(f"{root}/links")
    make_times(f"{root}/times", post, "/times")
    make_flags(f"{root}/flags", post, "/flags", extents=False)
    if not a.no_xattrs:
        make_xattrs(f"{root}/xattrs", a.blocksize)
        make_acls(f"{root}/acls")
    make_dirs(f"{root}/dirs")


def profile_small(root, a, post):
    write(f"{root}/hello", b"hello\n")
    os.makedirs(f"{root}/sub")
    write(f"{root}/sub/file", data(10000))


def profile_ea(root, a, post):
    write(f"{root}/huge", b"huge xattrs")
    setx(f"{root}/huge", "user.huge", data(6000))
    setx(f"{root}/huge", "user.huger", data(60000))
    setx(f"{root}/huge", "trusted.mid", data(3000))
    setx(f"{root}/huge", "user.small", b"s")
    write(f"{root}/also", b"second ea_inode user")
    setx(f"{root}/also", "user.huge", data(9000))
    os.makedirs(f"{root}/dir")
    setx(f"{root}/dir", "user.dirhuge", data(20000))
    write(f"{root}/plain", b"no xattrs")


def profile_kernel(root, a, post):
    """Run on a kernel ext4 mount: the kernel itself lays these out."""
    os.makedirs(f"{root}/big")
    for i in range(a.entries):
        open(f"{root}/big/f{i:06d}-{'x' * (i % 40)}", "wb").close()
    M = 1 << 20
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]

    def falloc(path, mode, off, n, create=True):
        fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
        try:
            if libc.fallocate(fd, mode, off, n) != 0:
                raise OSError(ctypes.get_errno(), f"fallocate {path}")
        finally:
            os.close(fd)
    falloc(f"{root}/unwritten", 0, 0, 4 * M)                     # one unwritten extent
    with open(f"{root}/unwritten-part", "wb") as f:
        f.write(data(8192))
    falloc(f"{root}/unwritten-part", 0, 0, 2 * M, create=False)   # written head, unwritten tail
    with open(f"{root}/unwritten-part", "r+b") as f:
        f.seek(M)
        f.write(data(4096))                                      # a written island inside
        os.fsync(f.fileno())
    with open(f"{root}/past-eof", "wb") as f:
        f.write(data(5000))
    falloc(f"{root}/past-eof", 1, 0, M, create=False)            # KEEP_SIZE: blocks beyond EOF
    with open(f"{root}/punched", "wb") as f:
        f.write(data(3 * M))
    falloc(f"{root}/punched", 1 | 2, M // 2, M, create=False)    # PUNCH_HOLE|KEEP_SIZE
    # Many small extents: every other 4 KiB block written.
    with open(f"{root}/fragmented", "wb") as f:
        for i in range(400):
            f.seek(i * 8192)
            f.write(data(4096))
            if i % 50 == 0:
                f.flush()
                os.fsync(f.fileno())
    os.sync()


PROFILES = {"full": profile_full, "inline": profile_inline, "blockmap": profile_blockmap,
            "small": profile_small, "ea": profile_ea, "kernel": profile_kernel}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("profile", choices=sorted(PROFILES))
    p.add_argument("dir")
    p.add_argument("--post", help="write debugfs commands for the image here")
    p.add_argument("--blocksize", type=int, default=4096)
    p.add_argument("--large-mb", type=int, default=0)
    p.add_argument("--no-extents", action="store_true")
    p.add_argument("--no-xattrs", action="store_true")
    p.add_argument("--entries", type=int, default=50500)
    p.add_argument("--no-extra", action="store_true", help="128-byte inodes: no extra timestamp fields")
    a = p.parse_args()
    os.umask(0o022)
    os.makedirs(a.dir, exist_ok=True)
    post = Post(extra=not a.no_extra)
    PROFILES[a.profile](a.dir, a, post)
    post.save(a.post)


if __name__ == "__main__":
    main()
