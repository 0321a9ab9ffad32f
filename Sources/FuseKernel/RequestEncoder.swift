// The inverse of FuseDecoder: how the kernel lays out each request. Used by
// test kernels (socket transport) and by the codec round-trip tests.

public enum FuseRequestEncoder {
    public static func encode(_ h: FuseRequestHeader, _ req: FuseRequest,
                              context ctx: FuseDecodeContext = FuseDecodeContext(setxattrExt: true)) -> [UInt8] {
        var b = WireWriter()
        func name(_ n: [UInt8]) { b.cString(n) }
        let opcode: FuseOpcode
        switch req {
        case .lookup(let n): opcode = .lookup; name(n)
        case .forget(let f): opcode = .forget; f.encode(to: &b)
        case .batchForget(let items):
            opcode = .batchForget
            FuseBatchForgetIn(count: UInt32(items.count)).encode(to: &b)
            for i in items { i.encode(to: &b) }
        case .getattr(let g): opcode = .getattr; g.encode(to: &b)
        case .setattr(let s): opcode = .setattr; s.encode(to: &b)
        case .readlink: opcode = .readlink
        case .symlink(let n, let t): opcode = .symlink; name(n); name(t)
        case .mknod(let m, let n): opcode = .mknod; m.encode(to: &b); name(n)
        case .mkdir(let m, let n): opcode = .mkdir; m.encode(to: &b); name(n)
        case .unlink(let n): opcode = .unlink; name(n)
        case .rmdir(let n): opcode = .rmdir; name(n)
        case .rename(let newdir, let flags, let o, let n):
            if flags == 0 {
                opcode = .rename
                FuseRenameIn(newdir: newdir).encode(to: &b)
            } else {
                opcode = .rename2
                FuseRename2In(newdir: newdir, flags: flags).encode(to: &b)
            }
            name(o); name(n)
        case .link(let l, let n): opcode = .link; l.encode(to: &b); name(n)
        case .open(let o): opcode = .open; o.encode(to: &b)
        case .read(let r): opcode = .read; r.encode(to: &b)
        case .write(let w, let data): opcode = .write; w.encode(to: &b); b.append(data)
        case .statfs: opcode = .statfs
        case .release(let r): opcode = .release; r.encode(to: &b)
        case .fsync(let f): opcode = .fsync; f.encode(to: &b)
        case .setxattr(let s, let n, let v):
            opcode = .setxattr
            if ctx.setxattrExt { s.encode(to: &b) } else { b.u32(s.size); b.u32(s.flags) }
            name(n); b.append(v)
        case .getxattr(let g, let n): opcode = .getxattr; g.encode(to: &b); name(n)
        case .listxattr(let g): opcode = .listxattr; g.encode(to: &b)
        case .removexattr(let n): opcode = .removexattr; name(n)
        case .flush(let f): opcode = .flush; f.encode(to: &b)
        case .initialize(let i): opcode = .initialize; i.encode(to: &b)
        case .opendir(let o): opcode = .opendir; o.encode(to: &b)
        case .readdir(let r): opcode = .readdir; r.encode(to: &b)
        case .readdirplus(let r): opcode = .readdirplus; r.encode(to: &b)
        case .releasedir(let r): opcode = .releasedir; r.encode(to: &b)
        case .fsyncdir(let f): opcode = .fsyncdir; f.encode(to: &b)
        case .getlk(let l): opcode = .getlk; l.encode(to: &b)
        case .setlk(let l, let wait): opcode = wait ? .setlkw : .setlk; l.encode(to: &b)
        case .access(let a): opcode = .access; a.encode(to: &b)
        case .create(let c, let n): opcode = .create; c.encode(to: &b); name(n)
        case .tmpfile(let c, let n): opcode = .tmpfile; c.encode(to: &b); name(n)
        case .interrupt(let i): opcode = .interrupt; i.encode(to: &b)
        case .bmap(let m): opcode = .bmap; m.encode(to: &b)
        case .destroy: opcode = .destroy
        case .ioctl(let i, let input): opcode = .ioctl; i.encode(to: &b); b.append(input)
        case .poll(let p): opcode = .poll; p.encode(to: &b)
        case .notifyReply(let n, let data): opcode = .notifyReply; n.encode(to: &b); b.append(data)
        case .fallocate(let f): opcode = .fallocate; f.encode(to: &b)
        case .lseek(let l): opcode = .lseek; l.encode(to: &b)
        case .copyFileRange(let c, let is64): opcode = is64 ? .copyFileRange64 : .copyFileRange; c.encode(to: &b)
        case .setupMapping(let s): opcode = .setupMapping; s.encode(to: &b)
        case .removeMapping(let items):
            opcode = .removeMapping
            FuseRemovemappingIn(count: UInt32(items.count)).encode(to: &b)
            for i in items { i.encode(to: &b) }
        case .syncfs(let s): opcode = .syncfs; s.encode(to: &b)
        case .statx(let s): opcode = .statx; s.encode(to: &b)
        case .freezeFS(let f): opcode = .freezeFS; f.encode(to: &b)
        case .unfreezeFS: opcode = .unfreezeFS
        case .shutdownFS(let s): opcode = .shutdownFS; s.encode(to: &b)
        case .iomapConfig(let c): opcode = .iomapConfig; c.encode(to: &b)
        case .iomapBegin(let x): opcode = .iomapBegin; x.encode(to: &b)
        case .iomapEnd(let x): opcode = .iomapEnd; x.encode(to: &b)
        case .iomapIoend(let x): opcode = .iomapIoend; x.encode(to: &b)
        }
        var w = WireWriter(capacity: FuseInHeader.wireSize + b.count)
        FuseInHeader(len: UInt32(FuseInHeader.wireSize + b.count), opcode: opcode.rawValue, unique: h.unique,
                     nodeid: h.nodeid, uid: h.uid, gid: h.gid, pid: h.pid).encode(to: &w)
        w.append(b.bytes)
        return w.bytes
    }
}
