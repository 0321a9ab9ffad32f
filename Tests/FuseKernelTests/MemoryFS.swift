// A small in-memory file system, used only by the tests, that exercises the
// FuseFileSystem API through a real kernel mount or a test kernel.

import FuseKernel
import Glibc
import Synchronization

final class MemoryFS: FuseFileSystem, @unchecked Sendable {
    struct Node {
        var mode: UInt32
        var data: [UInt8] = []
        var children: [[UInt8]: UInt64] = [:]
        var xattrs: [[UInt8]: [UInt8]] = [:]
        var nlink: UInt32
        var lookups: UInt64 = 0
        var mtime: UInt64 = 1_700_000_000
    }
    struct State {
        var nodes: [UInt64: Node] = [FuseABI.rootID: Node(mode: UInt32(S_IFDIR) | 0o755, nlink: 2)]
        var next: UInt64 = 2
        var info: FuseConnectionInfo?
        var destroyed = false
        var forgets = 0
    }
    let state = Mutex(State())
    let wants: FuseInitWants

    init(wantIomap: Bool = false) {
        var w = FuseInitWants()
        if wantIomap { w.flags.insert(.iomap) }
        wants = w
    }

    var info: FuseConnectionInfo? { state.withLock { $0.info } }
    var destroyed: Bool { state.withLock { $0.destroyed } }

    func negotiate(_ offer: FuseInitOffer) -> FuseInitWants { wants }
    func initialized(_ info: FuseConnectionInfo, channel: any FuseChannel) { state.withLock { $0.info = info } }
    func destroy() { state.withLock { $0.destroyed = true } }

    private func attr(_ id: UInt64, _ n: Node) -> FuseAttr {
        FuseAttr(ino: id, size: UInt64(n.data.count), blocks: UInt64((n.data.count + 511) / 512),
                 atime: n.mtime, mtime: n.mtime, ctime: n.mtime, mode: n.mode, nlink: n.nlink,
                 blksize: 4096)
    }
    private func entry(_ s: inout State, _ id: UInt64) -> FuseEntryOut {
        s.nodes[id]?.lookups += 1
        let n = s.nodes[id] ?? Node(mode: 0, nlink: 0)
        return FuseEntryOut(nodeid: id, generation: 1, entryValid: 1, attrValid: 1, attr: attr(id, n))
    }
    private func isDir(_ n: Node) -> Bool { n.mode & UInt32(S_IFMT) == UInt32(S_IFDIR) }

    func lookup(_ c: FuseContext, parent: UInt64, name: FuseName) throws(FuseError) -> FuseEntryOut {
        try state.withLock { s throws(FuseError) in
            guard let p = s.nodes[parent] else { throw .noent }
            guard let id = p.children[name] else { throw .noent }
            return entry(&s, id)
        }
    }
    func forget(_ nodeid: UInt64, nlookup: UInt64) {
        state.withLock { s in
            s.forgets += 1
            guard var n = s.nodes[nodeid] else { return }
            n.lookups -= min(n.lookups, nlookup)
            if n.lookups == 0 && n.nlink == 0 { s.nodes[nodeid] = nil } else { s.nodes[nodeid] = n }
        }
    }
    func getattr(_ c: FuseContext, fh: UInt64?) throws(FuseError) -> FuseAttrOut {
        try state.withLock { s throws(FuseError) in
            guard let n = s.nodes[c.nodeid] else { throw .noent }
            return FuseAttrOut(attrValid: 1, attr: attr(c.nodeid, n))
        }
    }
    func setattr(_ c: FuseContext, _ a: FuseSetattrIn) throws(FuseError) -> FuseAttrOut {
        try state.withLock { s throws(FuseError) in
            guard var n = s.nodes[c.nodeid] else { throw .noent }
            let v = FuseSetattrValid(rawValue: a.valid)
            if v.contains(.mode) { n.mode = (n.mode & UInt32(S_IFMT)) | (a.mode & 0o7777) }
            if v.contains(.size) {
                guard a.size <= 64 << 20 else { throw .fbig }
                let sz = Int(a.size)
                if sz < n.data.count { n.data.removeLast(n.data.count - sz) } else {
                    n.data.append(contentsOf: repeatElement(0, count: sz - n.data.count))
                }
            }
            s.nodes[c.nodeid] = n
            return FuseAttrOut(attrValid: 1, attr: attr(c.nodeid, n))
        }
    }
    private func make(_ c: FuseContext, _ name: FuseName, mode: UInt32) throws(FuseError) -> FuseEntryOut {
        try state.withLock { s throws(FuseError) in
            guard var p = s.nodes[c.nodeid], isDir(p) else { throw .notdir }
            guard p.children[name] == nil else { throw .exist }
            let id = s.next
            s.next += 1
            let dir = mode & UInt32(S_IFMT) == UInt32(S_IFDIR)
            s.nodes[id] = Node(mode: mode, nlink: dir ? 2 : 1)
            p.children[name] = id
            if dir { p.nlink += 1 }
            s.nodes[c.nodeid] = p
            return entry(&s, id)
        }
    }
    func mkdir(_ c: FuseContext, name: FuseName, _ a: FuseMkdirIn) throws(FuseError) -> FuseEntryOut {
        try make(c, name, mode: UInt32(S_IFDIR) | (a.mode & 0o7777))
    }
    func mknod(_ c: FuseContext, name: FuseName, _ a: FuseMknodIn) throws(FuseError) -> FuseEntryOut {
        try make(c, name, mode: a.mode)
    }
    func create(_ c: FuseContext, name: FuseName, _ a: FuseCreateIn) throws(FuseError) -> (FuseEntryOut, FuseOpenOut) {
        (try make(c, name, mode: UInt32(S_IFREG) | (a.mode & 0o7777)), FuseOpenOut(fh: 7))
    }
    private func remove(_ c: FuseContext, _ name: FuseName, dir: Bool) throws(FuseError) {
        try state.withLock { s throws(FuseError) in
            guard var p = s.nodes[c.nodeid], let id = p.children[name], var n = s.nodes[id] else { throw .noent }
            if dir {
                guard isDir(n) else { throw .notdir }
                guard n.children.isEmpty else { throw .notempty }
                p.nlink -= 1
                n.nlink = 0
            } else {
                guard !isDir(n) else { throw .isdir }
                n.nlink -= 1
            }
            p.children[name] = nil
            s.nodes[c.nodeid] = p
            s.nodes[id] = n
        }
    }
    func unlink(_ c: FuseContext, name: FuseName) throws(FuseError) { try remove(c, name, dir: false) }
    func rmdir(_ c: FuseContext, name: FuseName) throws(FuseError) { try remove(c, name, dir: true) }
    func rename(_ c: FuseContext, name: FuseName, newParent: UInt64, newName: FuseName, flags: UInt32) throws(FuseError) {
        guard flags == 0 else { throw .inval }
        try state.withLock { s throws(FuseError) in
            guard let id = s.nodes[c.nodeid]?.children[name] else { throw .noent }
            guard s.nodes[newParent] != nil else { throw .noent }
            if let old = s.nodes[newParent]?.children[newName], old != id { s.nodes[old]?.nlink = 0 }
            s.nodes[c.nodeid]?.children[name] = nil
            s.nodes[newParent]?.children[newName] = id
        }
    }
    func read(_ c: FuseContext, _ a: FuseReadIn) throws(FuseError) -> [UInt8] {
        try state.withLock { s throws(FuseError) in
            guard let n = s.nodes[c.nodeid] else { throw .noent }
            guard a.offset < UInt64(n.data.count) else { return [] }
            let start = Int(a.offset)
            return Array(n.data[start..<min(n.data.count, start + Int(a.size))])
        }
    }
    func write(_ c: FuseContext, _ a: FuseWriteIn, data p: UnsafeRawBufferPointer) throws(FuseError) -> UInt32 {
        let data = Array(p)
        return try state.withLock { s throws(FuseError) in
            guard var n = s.nodes[c.nodeid] else { throw .noent }
            guard a.offset + UInt64(data.count) <= 64 << 20 else { throw .fbig }
            let end = Int(a.offset) + data.count
            if end > n.data.count { n.data.append(contentsOf: repeatElement(0, count: end - n.data.count)) }
            n.data.replaceSubrange(Int(a.offset)..<end, with: data)
            s.nodes[c.nodeid] = n
            return UInt32(data.count)
        }
    }
    func flush(_ c: FuseContext, _ a: FuseFlushIn) throws(FuseError) {}
    func fsync(_ c: FuseContext, _ a: FuseFsyncIn) throws(FuseError) {}
    func statfs(_ c: FuseContext) throws(FuseError) -> FuseKstatfs {
        FuseKstatfs(blocks: 1000, bfree: 500, bavail: 400, files: 100, ffree: 50, bsize: 4096, namelen: 255, frsize: 4096)
    }
    func readdir(_ c: FuseContext, _ a: FuseReadIn, into buf: inout FuseDirBuffer) throws(FuseError) {
        try state.withLock { s throws(FuseError) in
            guard let d = s.nodes[c.nodeid], isDir(d) else { throw .notdir }
            var all: [([UInt8], UInt64)] = [(Array(".".utf8), c.nodeid), (Array("..".utf8), FuseABI.rootID)]
            all += d.children.sorted { $0.key.lexicographicallyPrecedes($1.key) }.map { ($0.key, $0.value) }
            var i = Int(a.offset)
            while i < all.count {
                let (name, id) = all[i]
                let n = s.nodes[id] ?? Node(mode: 0, nlink: 0)
                let dot = name == Array(".".utf8) || name == Array("..".utf8)
                let e: FuseEntryOut? = buf.plus
                    ? FuseEntryOut(nodeid: id, generation: 1, entryValid: 1, attrValid: 1, attr: attr(id, n)) : nil
                guard buf.add(name: name, ino: id, type: (n.mode >> 12) & 0xf, nextOffset: UInt64(i + 1), entry: e) else { break }
                if buf.plus && !dot { s.nodes[id]?.lookups += 1 }
                i += 1
            }
        }
    }
    func setxattr(_ c: FuseContext, name: FuseName, value: [UInt8], flags: UInt32, setxattrFlags: UInt32) throws(FuseError) {
        try state.withLock { s throws(FuseError) in
            guard s.nodes[c.nodeid] != nil else { throw .noent }
            s.nodes[c.nodeid]?.xattrs[name] = value
        }
    }
    func getxattr(_ c: FuseContext, name: FuseName) throws(FuseError) -> [UInt8] {
        try state.withLock { s throws(FuseError) in
            guard let v = s.nodes[c.nodeid]?.xattrs[name] else { throw .nodata }
            return v
        }
    }
    func listxattr(_ c: FuseContext) throws(FuseError) -> [UInt8] {
        state.withLock { s in
            (s.nodes[c.nodeid]?.xattrs.keys.sorted { $0.lexicographicallyPrecedes($1) } ?? []).flatMap { $0 + [0] }
        }
    }
    func removexattr(_ c: FuseContext, name: FuseName) throws(FuseError) {
        try state.withLock { s throws(FuseError) in
            guard s.nodes[c.nodeid]?.xattrs.removeValue(forKey: name) != nil else { throw .nodata }
        }
    }
}
