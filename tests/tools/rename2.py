#!/usr/bin/env python3
"""renameat2 on a mount: NOREPLACE, EXCHANGE and WHITEOUT, then what each name
is. One line per step: NAME ok | NAME <errno name>, then one line per file
(name, type, device numbers, mode, owner). Usage: rename2.py MOUNTPOINT (root)."""
import ctypes, errno, os, stat, sys

libc = ctypes.CDLL(None, use_errno=True)
SYS_renameat2 = 316  # x86_64
AT_FDCWD = -100
NOREPLACE, EXCHANGE, WHITEOUT = 1, 2, 4


def rename2(a, b, flags):
    r = libc.syscall(SYS_renameat2, AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), flags)
    return "ok" if r == 0 else errno.errorcode.get(ctypes.get_errno(), "?")


d = os.path.join(sys.argv[1], "r2")
os.mkdir(d)
for n in ["a", "b", "c", "w"]:
    with open(os.path.join(d, n), "w") as f:
        f.write(n * 3)
os.mkdir(os.path.join(d, "sub"))
p = lambda n: os.path.join(d, n)
steps = [
    ("noreplace over b", rename2(p("a"), p("b"), NOREPLACE)),
    ("exchange a b", rename2(p("a"), p("b"), EXCHANGE)),
    ("whiteout c to sub/c", rename2(p("c"), p("sub/c"), WHITEOUT)),
    ("whiteout w over a", rename2(p("w"), p("a"), WHITEOUT)),
    ("whiteout with exchange", rename2(p("b"), p("a"), WHITEOUT | EXCHANGE)),
    ("whiteout noreplace over b", rename2(p("sub/c"), p("b"), WHITEOUT | NOREPLACE)),
]
for name, r in steps:
    print(name, r)
for root, dirs, files in sorted(os.walk(d)):
    for n in sorted(files + dirs):
        st = os.lstat(os.path.join(root, n))
        content = ""
        if stat.S_ISREG(st.st_mode):
            with open(os.path.join(root, n)) as f:
                content = f.read()
        print(os.path.relpath(os.path.join(root, n), d), stat.filemode(st.st_mode),
              f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}", st.st_uid, st.st_nlink, content)
