#!/usr/bin/env python3
"""File handles on a mount: name_to_handle_at, then open_by_handle_at after the
kernel dropped its dentries and inodes (so it must find the inode again through
the file system), for files, a directory, an unlinked file and a renamed one.
Prints one line per case: NAME ok <bytes read> | NAME <errno name>.
Usage: handles.py MOUNTPOINT (as root: open_by_handle_at needs CAP_DAC_READ_SEARCH)."""
import ctypes, errno, os, sys

libc = ctypes.CDLL(None, use_errno=True)
MAX_HANDLE_SZ = 128


class FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * MAX_HANDLE_SZ)]


def handle_of(path):
    fh = FileHandle(handle_bytes=MAX_HANDLE_SZ)
    mnt_id = ctypes.c_int()
    if libc.name_to_handle_at(-100, path.encode(), ctypes.byref(fh), ctypes.byref(mnt_id), 0) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), path)
    return fh


def open_by(mount_fd, fh, flags=os.O_RDONLY):
    fd = libc.open_by_handle_at(mount_fd, ctypes.byref(fh), flags)
    if fd < 0:
        return None, errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
    return fd, None


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")


def main():
    mnt = sys.argv[1]
    d = os.path.join(mnt, "h")
    os.mkdir(d)
    for i in range(5):
        with open(os.path.join(d, f"f{i}"), "w") as f:
            f.write(f"file {i}\n" * (i + 1))
    os.mkdir(os.path.join(d, "sub"))
    handles = {n: handle_of(os.path.join(d, n)) for n in ["f0", "f1", "f2", "f3", "f4", "sub"]}
    os.unlink(os.path.join(d, "f3"))
    os.rename(os.path.join(d, "f4"), os.path.join(d, "sub", "moved"))
    drop_caches()
    mfd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    out = []
    for name, fh in handles.items():
        fd, err = open_by(mfd, fh, os.O_RDONLY | (os.O_DIRECTORY if name == "sub" else 0))
        if err:
            out.append(f"{name} {err}")
            continue
        if name == "sub":
            out.append(f"{name} ok {sorted(os.listdir(f'/proc/self/fd/{fd}'))}")
        else:
            out.append(f"{name} ok {len(os.read(fd, 4096))}")
        os.close(fd)
    os.close(mfd)
    print("\n".join(out))


main()
