#!/usr/bin/python3
# A minimal service-protocol server that speaks ONLY version 1 (libfuse upstream
# wire format). Used to prove that fuservicemount mounts a v1 peer in spawn mode.
# It mounts, says goodbye, then exits (the mount stays until the test unmounts it).
import array, os, socket, struct, sys

s = socket.socket(fileno=3)

def recv():
    fds = array.array("i")
    msg, anc, flags, addr = s.recvmsg(65536, socket.CMSG_SPACE(4 * fds.itemsize))
    for level, typ, data in anc:
        if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    return msg, list(fds)

def send(b):
    s.sendmsg([b])

def cmd(b):
    send(b)
    msg, _ = recv()
    magic, err = struct.unpack(">II", msg)
    assert magic == 0x5245504C, hex(magic)
    if err:
        sys.exit(err)

hello, _ = recv()
magic, lo, hi, flags = struct.unpack(">IHHI", hello)
assert magic == 0x53414654 and lo <= 1 <= hi
send(struct.pack(">IHH", 0x4C415354, 1, 0))
argvmsg, argvfds = recv()
fusemsg, fusefds = recv()
assert argvmsg[8:] == b"argv\0" and fusemsg[8:] == b"fusedev\0"
data = os.pread(argvfds[0], 1 << 20, 0)
magic, argc = struct.unpack(">II", data[:8])
args = []
for i in range(argc):
    pos, ln = struct.unpack(">II", data[8 + 8 * i : 16 + 8 * i])
    args.append(data[pos : pos + ln - 1].decode())
source, mnt = args[1], args[2]
# open the source read-only (QUIET flag only; v1 knows no loop flag)
send(struct.pack(">IIIII", 0x4F50454E, os.O_RDONLY, 0, 1, 0) + source.encode() + b"\0")
filemsg, filefds = recv()
assert struct.unpack(">II", filemsg[:8]) == (0x46494C45, 0) and len(filefds) == 1
cmd(struct.pack(">II", 0x54595045, 0))
cmd(struct.pack(">I", 0x4E414D45) + source.encode() + b"\0")
cmd(struct.pack(">IHH", 0x4D4E5450, 0x4000, 0) + mnt.encode() + b"\0")
cmd(struct.pack(">I", 0x4F505453) + b"default_permissions\0")
cmd(struct.pack(">II", 0x444F4954, 0))
send(struct.pack(">II", 0x42594545, 0))
