#!/usr/bin/env python3
"""Compare two mounted trees object by object (the kernel's ext4 is the oracle).

  treecompare.py snapshot DIR OUT.json     (walk a mounted tree)
  treecompare.py diff ORACLE.json TESTED.json [--max-diffs N] [--ignore KEY]

The two mounts are walked one after the other: the product path refuses an
image that a loop device (the kernel's mount) already holds.

For every object (paths as bytes, no symlink following): name, type, mode,
inode number, uid, gid, size, nlink, st_blocks, st_blksize, rdev, atime, mtime,
ctime (ns), statx btime and statx attributes, readdir d_ino and d_type, every
xattr (all namespaces, as root) and its value, symlink target, the SHA-256 of
every regular file, its SEEK_DATA/SEEK_HOLE layout, FS_IOC_GETFLAGS and
FS_IOC_FSGETXATTR for regular files and directories; and statvfs of the root.
Prints "OK <n> objects" or each difference, one per line; exit 0/1.
"""
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import re
import stat
import struct
import sys

libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
STATX_ALL = 0xFFF
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_FSGETXATTR = 0x801C581F
SEEK_DATA, SEEK_HOLE = 3, 4


def statx(path):
    buf = ctypes.create_string_buffer(256)
    if libc.statx(AT_FDCWD, path, AT_SYMLINK_NOFOLLOW, STATX_ALL, buf) != 0:
        e = ctypes.get_errno()
        return {"statx": f"errno {errno.errorcode.get(e, e)}"}
    b = buf.raw
    mask, = struct.unpack_from("<I", b, 0)
    attrs, = struct.unpack_from("<Q", b, 8)
    amask, = struct.unpack_from("<Q", b, 48)
    bsec, bnsec = struct.unpack_from("<qI", b, 80)
    # Only the attribute bits an ext4 inode can carry; mount-level bits are the VFS's.
    fsbits = 0x4 | 0x10 | 0x20 | 0x40 | 0x800 | 0x100000 | 0x200000
    out = {"statx.attributes": hex(attrs & fsbits),
           "statx.btime_mask": bool(mask & 0x800)}
    if mask & 0x800:
        out["btime"] = bsec * 10**9 + bnsec
    return out


def err(e):
    return f"errno {errno.errorcode.get(e.errno, e.errno)}"


def seek_layout(fd, size):
    out = []
    off = 0
    while off < size:
        try:
            d = os.lseek(fd, off, SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            out.append(("data-err", off, err(e)))
            break
        try:
            h = os.lseek(fd, d, SEEK_HOLE)
        except OSError as e:
            out.append(("hole-err", d, err(e)))
            break
        out.append((d, h))
        if h <= d:
            out.append(("no-progress", d, h))
            break
        off = h
    return out


def ioctls(path):
    out = {}
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError as e:
        return {"ioctl.open": err(e)}
    try:
        try:
            b = fcntl.ioctl(fd, FS_IOC_GETFLAGS, b"\0" * 8)
            out["getflags"] = hex(struct.unpack_from("<I", b)[0])
        except OSError as e:
            out["getflags"] = err(e)
        try:
            b = fcntl.ioctl(fd, FS_IOC_FSGETXATTR, b"\0" * 28)
            xflags, extsize, nextents, projid, cowext = struct.unpack_from("<IIIII", b)
            out["fsgetxattr"] = f"xflags={xflags:#x} extsize={extsize} projid={projid} cowextsize={cowext}"
        except OSError as e:
            out["fsgetxattr"] = err(e)
    finally:
        os.close(fd)
    return out


def content(path, size, want_layout):
    out = {}
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        return {"open": err(e)}
    try:
        # The layout first: once read, unwritten extents sit in the kernel's page
        # cache as uptodate zero pages, which its SEEK_DATA reports as data.
        if want_layout:
            out["seek"] = seek_layout(fd, size)
            os.lseek(fd, 0, os.SEEK_SET)  # SEEK_DATA/SEEK_HOLE moved the file offset
        h = hashlib.sha256()
        n = 0
        try:
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                h.update(chunk)
                n += len(chunk)
            out["sha256"] = h.hexdigest()
            out["bytes_read"] = n
        except OSError as e:
            out["read"] = f"{err(e)} after {n} bytes"
    finally:
        os.close(fd)
    return out


def describe(path, dentry, full_content=True):
    r = {}
    try:
        st = os.lstat(path)
    except OSError as e:
        return {"lstat": err(e)}
    fmt = stat.S_IFMT(st.st_mode)
    r.update(type=oct(fmt), mode=oct(stat.S_IMODE(st.st_mode)), ino=st.st_ino, uid=st.st_uid,
             gid=st.st_gid, size=st.st_size, nlink=st.st_nlink, blocks=st.st_blocks,
             blksize=st.st_blksize, atime=st.st_atime_ns, mtime=st.st_mtime_ns, ctime=st.st_ctime_ns)
    if fmt in (stat.S_IFCHR, stat.S_IFBLK):
        r["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
    if dentry is not None:
        r["d_ino"] = dentry.inode()
        r["d_type"] = ("dir" if dentry.is_dir(follow_symlinks=False) else
                       "link" if dentry.is_symlink() else
                       "file" if dentry.is_file(follow_symlinks=False) else "other")
    r.update(statx(path))
    try:
        names = sorted(os.listxattr(path, follow_symlinks=False))
        r["xattrs"] = names
        for n in names:
            try:
                v = os.getxattr(path, n, follow_symlinks=False)
                r["xattr " + n] = hashlib.sha256(v).hexdigest()[:16] + f" ({len(v)} bytes)" if len(v) > 64 else v.hex()
            except OSError as e:
                r["xattr " + n] = err(e)
    except OSError as e:
        r["xattrs"] = err(e)
    if fmt == stat.S_IFLNK:
        try:
            r["target"] = os.fsdecode(os.readlink(path))
        except OSError as e:
            r["target"] = err(e)
    if fmt == stat.S_IFREG:
        r.update(content(path, st.st_size, True))
    if fmt in (stat.S_IFREG, stat.S_IFDIR):
        r.update(ioctls(path))
    return r


def walk(root):
    """{relative path (bytes): description}, plus the statvfs of the root."""
    root = os.fsencode(root)
    objs = {}
    objs[b"."] = describe(root, None)
    stack = [b""]
    while stack:
        rel = stack.pop()
        full = os.path.join(root, rel) if rel else root
        try:
            entries = list(os.scandir(full))
        except OSError as e:
            objs[(rel or b".") + b" <readdir>"] = {"readdir": err(e)}
            continue
        for e in entries:
            r = os.path.join(rel, e.name) if rel else e.name
            objs[r] = describe(e.path, e)
            if objs[r].get("type") == oct(stat.S_IFDIR):
                stack.append(r)
    sv = os.statvfs(root)
    objs[b"<statvfs>"] = dict(bsize=sv.f_bsize, frsize=sv.f_frsize, blocks=sv.f_blocks, bfree=sv.f_bfree,
                              bavail=sv.f_bavail, files=sv.f_files, ffree=sv.f_ffree, namemax=sv.f_namemax)
    return objs


def show(p):
    return os.fsdecode(p).encode("unicode_escape").decode()


def compare(A, B, max_diffs, ignore, names=("kernel", "served")):
    """A is the oracle; names label A and B in the output."""
    a, b = names
    diffs = []
    for p in sorted(set(A) | set(B)):
        if p not in B:
            diffs.append(f"{show(p)}: only in the {a} tree")
            continue
        if p not in A:
            diffs.append(f"{show(p)}: only in the {b} tree")
            continue
        x, y = A[p], B[p]
        if ("lstat" in x) != ("lstat" in y):
            # One side could not stat the object at all: one line, not one per attribute.
            diffs.append(f"{show(p)}: lstat: {a}={x.get('lstat', 'ok')!r} {b}={y.get('lstat', 'ok')!r}")
            continue
        for k in sorted(set(x) | set(y)):
            if k in ignore:
                continue
            if x.get(k, "<absent>") != y.get(k, "<absent>"):
                diffs.append(f"{show(p)}: {k}: {a}={x.get(k, '<absent>')!r} {b}={y.get(k, '<absent>')!r}")
    files = sum(1 for v in A.values() if v.get("type") == oct(stat.S_IFREG))
    if diffs:
        for d in diffs[:max_diffs]:
            print("DIFF " + d)
        if len(diffs) > max_diffs:
            print(f"DIFF ... and {len(diffs) - max_diffs} more")
        keys = {}
        for d in diffs:
            m = re.match(r".*?: ([^:]+): " + re.escape(a) + "=", d)
            k = m.group(1) if m else "presence"
            keys[k] = keys.get(k, 0) + 1
        summary = ", ".join(f"{k} x{n}" for k, n in sorted(keys.items(), key=lambda t: -t[1]))
        print(f"FAIL {len(diffs)} differences over {len(A)} objects ({summary})")
        return 1
    print(f"OK {len(A)} objects ({files} regular files) identical")
    return 0


def save(objs, path):
    with open(path, "w") as f:
        json.dump({os.fsdecode(k): v for k, v in objs.items()}, f)


def load(path):
    with open(path) as f:
        return {os.fsencode(k): v for k, v in json.load(f).items()}


def main():
    import argparse
    ap = argparse.ArgumentParser(description="snapshot a mounted tree, or compare two snapshots")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s1 = sub.add_parser("snapshot")
    s1.add_argument("dir")
    s1.add_argument("out")
    s2 = sub.add_parser("diff")
    s2.add_argument("oracle")
    s2.add_argument("tested")
    s2.add_argument("--max-diffs", type=int, default=60)
    s2.add_argument("--ignore", action="append", default=[], help="attribute name to ignore")
    a = ap.parse_args()
    if a.cmd == "snapshot":
        objs = walk(a.dir)
        save(objs, a.out)
        print(f"{len(objs)} objects")
        return 0
    return compare(load(a.oracle), load(a.tested), a.max_diffs, a.ignore)


if __name__ == "__main__":
    sys.exit(main())
