import Ext4Engine
import Foundation
import Glibc
import Testing

struct WVariant: CustomStringConvertible, Sendable {
    let name: String
    let fsType: String
    let args: [String]
    var description: String { name }
}

let writeVariants: [WVariant] = [
    WVariant(name: "ext4", fsType: "ext4", args: []),
    WVariant(name: "ext4-nocsum", fsType: "ext4", args: ["-O", "^metadata_csum"]),
    WVariant(name: "ext4-1k", fsType: "ext4", args: ["-b", "1024"]),
    WVariant(name: "ext2", fsType: "ext2", args: []),
    WVariant(name: "ext3-1k", fsType: "ext3", args: ["-b", "1024"]),
    WVariant(name: "ext4-inline", fsType: "ext4", args: ["-O", "inline_data"]),
    WVariant(name: "ext4-128", fsType: "ext4", args: ["-I", "128"]),
]

func makeImage(_ tmp: TempDir, _ v: WVariant, sizeMB: Int = 64, tree: String? = nil) throws -> String {
    let img = tmp.sub("w.img")
    var a = ["-q", "-F", "-t", v.fsType] + v.args
    if let tree { a += ["-d", tree] }
    a += [img, "\(sizeMB)M"]
    try run("/usr/sbin/mkfs.ext4", a)
    return img
}

func openRW(_ path: String) throws -> Ext4FileSystem {
    let dev = try FileBlockDevice(path: path, readOnly: false)
    return try Ext4FileSystem.open(device: dev, options: MountOptions(readOnly: false))
}

/// e2fsck -fn must be silent about problems and exit 0.
func fsckClean(_ img: String, _ ctx: String = "") throws {
    let out = try run("/usr/sbin/e2fsck", ["-fn", img], allowFail: true)
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/sbin/e2fsck")
    p.arguments = ["-fn", img]
    p.standardOutput = FileHandle.nullDevice
    p.standardError = FileHandle.nullDevice
    try p.run()
    p.waitUntilExit()
    #expect(p.terminationStatus == 0, "e2fsck \(ctx) exit \(p.terminationStatus):\n\(out)")
}

func debugfs(_ img: String, _ cmd: String) throws -> String {
    try run("/usr/sbin/debugfs", ["-R", cmd, img], allowFail: true)
}

func debugfsCat(_ img: String, _ path: String) throws -> [UInt8] {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/sbin/debugfs")
    p.arguments = ["-R", "cat \(path)", img]
    let out = Pipe()
    p.standardOutput = out
    p.standardError = FileHandle.nullDevice
    try p.run()
    let d = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return [UInt8](d)
}

func b(_ s: String) -> [UInt8] { Array(s.utf8) }

extension Ext4FileSystem {
    func put(_ ino: UInt32, _ off: UInt64, _ data: [UInt8]) throws {
        let n = try data.withUnsafeBytes { p in try self.write(ino, offset: off, data: p) }
        #expect(n == data.count)
    }
    func readAll(_ ino: UInt32) throws -> [UInt8] {
        let sz = try inode(ino).size
        return try read(ino, offset: 0, count: Int(sz))
    }
}

let fileMode = NewInode(mode: 0o100644, uid: 1000, gid: 1000, rdev: (0, 0))
let dirMode = NewInode(mode: 0o40755, uid: 1000, gid: 1000, rdev: (0, 0))
let root = Ext4FileSystem.rootIno

@Suite("write side, verified by e2fsck and debugfs")
struct WriteTests {
    @Test(arguments: writeVariants)
    func createWriteReadBack(_ v: WVariant) throws {
        let tmp = try TempDir()
        let img = try makeImage(tmp, v)
        let fs = try openRW(img)
        #expect(!fs.readOnly, "\(fs.warnings)")
        let d = try fs.mkdir(parent: root, name: b("dir"), dirMode)
        let f = try fs.mknod(parent: d.ino, name: b("small"), fileMode)
        try fs.put(f.ino, 0, b("hello world\n"))
        let big = pattern(300_000, seed: 7)
        let g = try fs.mknod(parent: d.ino, name: b("multi"), fileMode)
        try fs.put(g.ino, 0, Array(big[0..<100_000]))
        try fs.put(g.ino, 100_000, Array(big[100_000...]))
        let sp = try fs.mknod(parent: root, name: b("sparse"), fileMode)
        try fs.put(sp.ino, 5 << 20, b("island"))
        try fs.put(sp.ino, 1000, b("start"))
        #expect(try fs.readAll(g.ino) == big)
        #expect(try fs.readAll(f.ino) == b("hello world\n"))
        let sub = try fs.mkdir(parent: d.ino, name: b("sub"), dirMode)
        _ = try fs.mknod(parent: sub.ino, name: b("fifo"), NewInode(mode: 0o10644, uid: 0, gid: 0, rdev: (0, 0)))
        _ = try fs.mknod(parent: sub.ino, name: b("chr"), NewInode(mode: 0o20644, uid: 0, gid: 0, rdev: (4, 300)))
        #expect(throws: Ext4Error.exists) { _ = try fs.mknod(parent: d.ino, name: b("small"), fileMode) }
        #expect(throws: Ext4Error.nameTooLong) { _ = try fs.mknod(parent: d.ino, name: [UInt8](repeating: 0x61, count: 256), fileMode) }
        try fs.unmount()
        try fsckClean(img, v.name)
        #expect(try debugfsCat(img, "/dir/multi") == big)
        #expect(try debugfsCat(img, "/dir/small") == b("hello world\n"))
        var sparse = [UInt8](repeating: 0, count: (5 << 20) + 6)
        sparse.replaceSubrange(1000..<1005, with: b("start"))
        sparse.replaceSubrange((5 << 20)..<((5 << 20) + 6), with: b("island"))
        #expect(try debugfsCat(img, "/sparse") == sparse)
        let ls = try debugfs(img, "ls -l /dir/sub")
        #expect(ls.contains("fifo") && ls.contains("chr"))
        let st = try debugfs(img, "stat /dir")
        #expect(st.contains("Links: 3"), "\(st)")
    }

    @Test(arguments: writeVariants)
    func truncateUnlinkRmdir(_ v: WVariant) throws {
        let tmp = try TempDir()
        let img = try makeImage(tmp, v)
        let fs = try openRW(img)
        let data = pattern(200_000, seed: 3)
        let f = try fs.mknod(parent: root, name: b("t"), fileMode)
        try fs.put(f.ino, 0, data)
        var c = AttrChange(); c.size = 5000
        _ = try fs.setattr(f.ino, c)
        c.size = 9000
        _ = try fs.setattr(f.ino, c)
        let d = try fs.mkdir(parent: root, name: b("d"), dirMode)
        let x = try fs.mknod(parent: d.ino, name: b("x"), fileMode)
        try fs.put(x.ino, 0, pattern(50_000, seed: 1))
        #expect(throws: Ext4Error.notEmpty) { try fs.rmdir(parent: root, name: b("d")) }
        #expect(throws: Ext4Error.isDirectory) { _ = try fs.unlink(parent: root, name: b("d")) }
        #expect(try fs.unlink(parent: d.ino, name: b("x")) == x.ino)
        try fs.rmdir(parent: root, name: b("d"))
        #expect(throws: Ext4Error.notFound) { _ = try fs.lookup(dir: root, name: b("d")) }
        try fs.unmount()
        try fsckClean(img, v.name)
        var want = Array(data[0..<5000]) + [UInt8](repeating: 0, count: 4000)
        #expect(try debugfsCat(img, "/t") == want)
        want = []
        _ = want
    }

    @Test(arguments: writeVariants)
    func renameLinkSymlink(_ v: WVariant) throws {
        let tmp = try TempDir()
        let img = try makeImage(tmp, v)
        let fs = try openRW(img)
        let a = try fs.mkdir(parent: root, name: b("a"), dirMode)
        let bdir = try fs.mkdir(parent: root, name: b("b"), dirMode)
        let f = try fs.mknod(parent: a.ino, name: b("f"), fileMode)
        try fs.put(f.ino, 0, b("content"))
        _ = try fs.link(f.ino, parent: bdir.ino, name: b("hard"))
        _ = try fs.symlink(parent: root, name: b("short"), target: b("a/f"), uid: 0, gid: 0)
        let longT = b(String(repeating: "x/", count: 60) + "end")
        _ = try fs.symlink(parent: root, name: b("long"), target: longT, uid: 0, gid: 0)
        // move a file across dirs, rename a dir into another, exchange, noreplace
        try fs.rename(parent: a.ino, name: b("f"), newParent: bdir.ino, newName: b("g"), flags: 0)
        let sub = try fs.mkdir(parent: a.ino, name: b("sub"), dirMode)
        try fs.rename(parent: a.ino, name: b("sub"), newParent: bdir.ino, newName: b("sub2"), flags: 0)
        #expect(throws: Ext4Error.invalid("move into own subtree")) {
            try fs.rename(parent: root, name: b("b"), newParent: sub.ino, newName: b("x"), flags: 0)
        }
        #expect(throws: Ext4Error.exists) {
            try fs.rename(parent: bdir.ino, name: b("g"), newParent: bdir.ino, newName: b("hard"), flags: 1)
        }
        let other = try fs.mknod(parent: a.ino, name: b("other"), fileMode)
        try fs.put(other.ino, 0, b("other"))
        try fs.rename(parent: a.ino, name: b("other"), newParent: bdir.ino, newName: b("sub2"), flags: 2)
        // replace an existing file
        let r = try fs.mknod(parent: root, name: b("victim"), fileMode)
        try fs.put(r.ino, 0, pattern(40_000, seed: 5))
        try fs.rename(parent: bdir.ino, name: b("g"), newParent: root, newName: b("victim"), flags: 0)
        #expect(try fs.readlink(try fs.lookup(dir: root, name: b("long"))) == longT)
        try fs.unmount()
        try fsckClean(img, v.name)
        #expect(try debugfsCat(img, "/victim") == b("content"))
        #expect(try debugfsCat(img, "/b/hard") == b("content"))
        #expect(try debugfsCat(img, "/b/sub2") == b("other"))
        let ls = try debugfs(img, "ls -l /a")
        #expect(ls.contains("other") && !ls.contains(" f "), "\(ls)")
        let sub2 = try debugfs(img, "ls -l /a/other")
        #expect(sub2.contains(".."), "\(sub2)")
        let st = try debugfs(img, "stat /victim")
        #expect(st.contains("Links: 2"), "\(st)")
    }

    @Test(arguments: writeVariants)
    func xattrs(_ v: WVariant) throws {
        let tmp = try TempDir()
        let img = try makeImage(tmp, v)
        let fs = try openRW(img)
        let f = try fs.mknod(parent: root, name: b("f"), fileMode)
        try fs.setxattr(f.ino, name: b("user.small"), value: b("v1"), flags: 0)
        try fs.setxattr(f.ino, name: b("user.big"), value: [UInt8](repeating: 0x41, count: 700), flags: 0)
        try fs.setxattr(f.ino, name: b("trusted.t"), value: b("tt"), flags: 0)
        #expect(throws: Ext4Error.exists) { try fs.setxattr(f.ino, name: b("user.small"), value: b("x"), flags: 1) }
        #expect(throws: Ext4Error.noData) { try fs.setxattr(f.ino, name: b("user.none"), value: b("x"), flags: 2) }
        try fs.setxattr(f.ino, name: b("user.small"), value: b("v2"), flags: 2)
        // ACL in VFS form: user::rw- user:1234:rw- group::r-- mask::rw- other::r--
        var acl = [UInt8]([2, 0, 0, 0])
        for (tag, perm, id) in [(1, 6, UInt32.max), (2, 6, 1234), (4, 4, UInt32.max), (0x10, 6, UInt32.max), (0x20, 4, UInt32.max)] {
            acl += [UInt8(tag), 0, UInt8(perm), 0] + withUnsafeBytes(of: id.littleEndian) { Array($0) }
        }
        try fs.setxattr(f.ino, name: b("system.posix_acl_access"), value: acl, flags: 0)
        #expect(try fs.getxattr(f.ino, name: b("system.posix_acl_access")) == acl)
        let g = try fs.mknod(parent: root, name: b("g"), fileMode)
        try fs.setxattr(g.ino, name: b("user.gone"), value: b("x"), flags: 0)
        try fs.removexattr(g.ino, name: b("user.gone"))
        #expect(throws: Ext4Error.noData) { try fs.removexattr(g.ino, name: b("user.gone")) }
        try fs.unmount()
        try fsckClean(img, v.name)
        let ea = try debugfs(img, "ea_list /f")
        #expect(ea.contains("user.small") && ea.contains("v2") && ea.contains("user.big") && ea.contains("trusted.t"), "\(ea)")
        let ro = try openImage(img)
        let fi = try resolve(ro, "f")
        #expect(try ro.getxattr(fi, name: b("user.big")) == [UInt8](repeating: 0x41, count: 700))
        #expect(try ro.getxattr(fi, name: b("system.posix_acl_access")) == acl)
    }

    @Test(arguments: writeVariants)
    func manyEntriesHtree(_ v: WVariant) throws {
        defer { }
        let tmp = try TempDir()
        let img = try makeImage(tmp, v, sizeMB: 96)
        let fs = try openRW(img)
        let d = try fs.mkdir(parent: root, name: b("many"), dirMode)
        let n = 5000
        for i in 0..<n {
            _ = try fs.mknod(parent: d.ino, name: b("file-with-a-longish-name-\(i)"), fileMode)
        }
        #expect(try fs.inodeFlags(d.ino) & 0x1000 != 0, "directory should be indexed")
        for i in stride(from: 0, to: n, by: 3) {
            _ = try fs.unlink(parent: d.ino, name: b("file-with-a-longish-name-\(i)"))
        }
        for i in 0..<n {
            let r = try? fs.lookup(dir: d.ino, name: b("file-with-a-longish-name-\(i)"))
            #expect((r != nil) == (i % 3 != 0), "entry \(i)")
        }
        try fs.unmount()
        try fsckClean(img, v.name)
        let ls = try debugfs(img, "ls /many")
        #expect(ls.contains("file-with-a-longish-name-4999"))
        #expect(!ls.contains("file-with-a-longish-name-4998 "))
    }

    @Test(arguments: writeVariants)
    func fragmentedExtents(_ v: WVariant) throws {
        let tmp = try TempDir()
        let img = try makeImage(tmp, v, sizeMB: 96)
        let fs = try openRW(img)
        let f = try fs.mknod(parent: root, name: b("frag"), fileMode)
        let bs = UInt64(fs.blockSize)
        // Every other block: each one is its own extent.
        var want = [UInt8](repeating: 0, count: Int(1599 * bs))
        for i in stride(from: 0, to: 1600, by: 2) {
            let chunk = pattern(Int(bs), seed: UInt32(i))
            try fs.put(f.ino, UInt64(i) * bs, chunk)
            want.replaceSubrange(Int(UInt64(i) * bs)..<Int(UInt64(i + 1) * bs), with: chunk)
        }
        let e = try fs.mappings(f.ino, fromBlock: 0, maxBlocks: 100_000)
        #expect(e.count >= 800)
        #expect(try fs.readAll(f.ino) == want)
        try fs.unmount()
        try fsckClean(img, v.name)
        #expect(try debugfsCat(img, "/frag") == want)
        // Shrink again: depth must go down, fsck clean.
        let fs2 = try openRW(img)
        var c = AttrChange(); c.size = 3 * bs
        _ = try fs2.setattr(try fs2.lookup(dir: root, name: b("frag")), c)
        try fs2.unmount()
        try fsckClean(img, v.name + " shrunk")
    }

    @Test(arguments: writeVariants.filter { $0.fsType == "ext4" })
    func fallocateModes(_ v: WVariant) throws {
        let tmp = try TempDir()
        let img = try makeImage(tmp, v)
        let fs = try openRW(img)
        let bs = UInt64(fs.blockSize)
        let f = try fs.mknod(parent: root, name: b("fa"), fileMode)
        try fs.fallocate(f.ino, mode: 0, offset: 0, length: 64 * bs)
        #expect(try fs.inode(f.ino).size == 64 * bs)
        try fs.fallocate(f.ino, mode: 1, offset: 64 * bs, length: 16 * bs)
        #expect(try fs.inode(f.ino).size == 64 * bs)
        try fs.put(f.ino, 10 * bs + 7, b("written"))
        let data = pattern(Int(20 * bs), seed: 11)
        try fs.put(f.ino, 30 * bs, data)
        try fs.fallocate(f.ino, mode: 3, offset: 32 * bs + 5, length: 4 * bs)
        try fs.fallocate(f.ino, mode: 0x10, offset: 40 * bs + 1, length: 3 * bs)
        #expect(throws: Ext4Error.unsupported("fallocate mode 4")) { try fs.fallocate(f.ino, mode: 4, offset: 0, length: 1) }
        var want = [UInt8](repeating: 0, count: Int(64 * bs))
        want.replaceSubrange(Int(10 * bs + 7)..<Int(10 * bs + 14), with: b("written"))
        want.replaceSubrange(Int(30 * bs)..<Int(50 * bs), with: data)
        want.replaceSubrange(Int(32 * bs + 5)..<Int(36 * bs + 5), with: [UInt8](repeating: 0, count: Int(4 * bs)))
        want.replaceSubrange(Int(40 * bs + 1)..<Int(43 * bs + 1), with: [UInt8](repeating: 0, count: Int(3 * bs)))
        #expect(try fs.readAll(f.ino) == want)
        try fs.unmount()
        try fsckClean(img, v.name)
        #expect(try debugfsCat(img, "/fa") == want)
    }

    @Test(arguments: [writeVariants[0], writeVariants[3]])
    func enospcTiny(_ v: WVariant) throws {
        let tmp = try TempDir()
        let img = try makeImage(tmp, v, sizeMB: 4)
        let fs = try openRW(img)
        var made = 0
        var hitENOSPC = false
        for i in 0..<1000 {
            do {
                let f = try fs.mknod(parent: root, name: b("f\(i)"), fileMode)
                try fs.put(f.ino, 0, pattern(64 * 1024, seed: UInt32(i)))
                made += 1
            } catch Ext4Error.noSpace {
                hitENOSPC = true
                break
            }
        }
        #expect(hitENOSPC)
        #expect(made > 10)
        for i in 0..<made { _ = try fs.unlink(parent: root, name: b("f\(i)")) }
        _ = try? fs.unlink(parent: root, name: b("f\(made)"))
        let f = try fs.mknod(parent: root, name: b("again"), fileMode)
        try fs.put(f.ino, 0, pattern(100_000, seed: 1))
        try fs.unmount()
        try fsckClean(img, v.name)
        #expect(try debugfsCat(img, "/again") == pattern(100_000, seed: 1))
    }

    /// RENAME_WHITEOUT: the old name points at a new character device 0:0
    /// owned by the caller, the file is at the new name, a replaced target is
    /// gone; with EXCHANGE it is refused; e2fsck is clean (fstests generic/078).
    @Test(arguments: [writeVariants[0], writeVariants[4]])
    func renameWhiteout(_ v: WVariant) throws {
        let tmp = try TempDir()
        let img = try makeImage(tmp, v)
        let fs = try openRW(img)
        let f = try fs.mknod(parent: root, name: b("f"), fileMode)
        try fs.put(f.ino, 0, b("data"))
        let victim = try fs.mknod(parent: root, name: b("victim"), fileMode)
        let d = try fs.mkdir(parent: root, name: b("d"), dirMode)
        try fs.rename(parent: root, name: b("f"), newParent: d.ino, newName: b("g"), flags: 4, owner: (1000, 1001))
        let w = try fs.inode(try fs.lookup(dir: root, name: b("f")))
        #expect(w.fileType == .charDevice && w.rdev == (0, 0) && w.mode == 0x2000 && w.uid == 1000 && w.gid == 1001 && w.links == 1)
        #expect(try fs.lookup(dir: d.ino, name: b("g")) == f.ino)
        // Over an existing name, with NOREPLACE refused first.
        _ = try fs.mknod(parent: root, name: b("h"), fileMode)
        #expect(throws: Ext4Error.exists) {
            try fs.rename(parent: root, name: b("h"), newParent: root, newName: b("victim"), flags: 5)
        }
        try fs.rename(parent: root, name: b("h"), newParent: root, newName: b("victim"), flags: 4)
        #expect(try fs.inode(try fs.lookup(dir: root, name: b("h"))).fileType == .charDevice)
        #expect(throws: Ext4Error.invalid("rename flags")) {
            try fs.rename(parent: d.ino, name: b("g"), newParent: root, newName: b("victim"), flags: 6)
        }
        _ = victim
        try fs.unmount()
        try fsckClean(img, v.name)
        #expect(try debugfs(img, "stat /f").contains("Type: character special"))
        #expect(try debugfsCat(img, "/d/g") == b("data"))
    }

    /// On a file system full up to its reserved pool, punching holes and
    /// writing into preallocated space still work: the extent blocks their
    /// splits need may come from the reserve, as in the kernel's ext4
    /// (fstests generic/256 and generic/274).
    @Test(arguments: [writeVariants[0], writeVariants[2]])
    func extentSplitsOnAFullFileSystem(_ v: WVariant) throws {
        let tmp = try TempDir()
        let img = try makeImage(tmp, v, sizeMB: 8)
        let fs = try openRW(img)
        let bs = UInt64(fs.statfs().bsize)
        let pre = try fs.mknod(parent: root, name: b("pre"), fileMode)
        try fs.put(pre.ino, 0, pattern(Int(16 * bs), seed: 1))
        try fs.fallocate(pre.ino, mode: 1, offset: 16 * bs, length: 600 * bs)   // KEEP_SIZE: unwritten
        let big = try fs.mknod(parent: root, name: b("big"), fileMode)
        try fs.put(big.ino, 0, pattern(Int(600 * bs), seed: 2))
        let fill = try fs.mknod(parent: root, name: b("fill"), fileMode)
        var off: UInt64 = 0
        while true {
            do { try fs.put(fill.ino, off, pattern(Int(bs), seed: 3)) } catch Ext4Error.noSpace { break }
            off += bs
        }
        // Every other block of the preallocated range written: each write splits an unwritten extent.
        for i in stride(from: UInt64(17), to: 16 + 600, by: 2) {
            try fs.put(pre.ino, i * bs, pattern(Int(bs), seed: UInt32(i)))
        }
        // A hole punched in every other block of the written file.
        for i in stride(from: UInt64(1), to: 600, by: 2) {
            try fs.fallocate(big.ino, mode: 3, offset: i * bs, length: bs)
        }
        let got = try fs.read(pre.ino, offset: 17 * bs, count: Int(bs))
        #expect(got == pattern(Int(bs), seed: 17))
        try fs.unmount()
        try fsckClean(img, v.name)
    }

    @Test func orphansAndTmpfile() throws {
        let tmp = try TempDir()
        let img = try makeImage(tmp, writeVariants[0])
        let fs = try openRW(img)
        let f = try fs.mknod(parent: root, name: b("open"), fileMode)
        try fs.put(f.ino, 0, pattern(50_000, seed: 2))
        fs.retain(f.ino, count: 1)
        _ = try fs.unlink(parent: root, name: b("open"))
        #expect(try fs.readAll(f.ino) == pattern(50_000, seed: 2))
        let t = try fs.tmpfile(parent: root, fileMode)
        fs.retain(t.ino, count: 1)
        try fs.put(t.ino, 0, b("tmp"))
        let t2 = try fs.tmpfile(parent: root, fileMode)
        fs.retain(t2.ino, count: 1)
        _ = try fs.link(t2.ino, parent: root, name: b("linked"))
        try fs.release(f.ino, count: 1)
        try fs.sync()
        // Simulate a crash: t stays on the orphan list; reopen frees it.
        let fs2 = try openRW(img)
        try fs2.unmount()
        try fsckClean(img, "orphans")
        let ls = try debugfs(img, "ls -l /")
        #expect(ls.contains("linked") && !ls.contains("open"))
    }

    /// A long orphan chain, unlinked from in random order: the on-disk chain
    /// must stay walkable (a crash now leaves the rest for the next mount).
    @Test func longOrphanChain() throws {
        let tmp = try TempDir()
        let img = try makeImage(tmp, writeVariants[0])
        let fs = try openRW(img)
        let free0 = fs.statfs().ffree
        var inos: [UInt32] = []
        for i in 0..<300 {
            let f = try fs.mknod(parent: root, name: b("o\(i)"), fileMode)
            try fs.put(f.ino, 0, pattern(3000, seed: UInt32(i)))
            fs.retain(f.ino, count: 1)   // the kernel still knows it
            _ = try fs.unlink(parent: root, name: b("o\(i)"))
            inos.append(f.ino)
        }
        var rng = SplitMix(seed: 5)
        inos.shuffle(using: &rng)
        for ino in inos.prefix(200) { try fs.release(ino, count: 1) }
        try fs.sync()
        // "Crash": the other 100 are still on the on-disk chain; the next mount frees them.
        let fs2 = try openRW(img)
        #expect(fs2.statfs().ffree == free0)
        try fs2.unmount()
        try fsckClean(img, "long orphan chain")
    }

    @Test func concurrentStress() throws {
        let tmp = try TempDir()
        let img = try makeImage(tmp, writeVariants[0], sizeMB: 128)
        let fs = try openRW(img)
        let dirs = try (0..<4).map { try fs.mkdir(parent: root, name: b("d\($0)"), dirMode).ino }
        let errors = ErrorBox()
        DispatchQueue.concurrentPerform(iterations: 8) { t in
            var rng = UInt32(t * 7919 + 1)
            func next() -> Int { rng ^= rng << 13; rng ^= rng >> 17; rng ^= rng << 5; return Int(rng % 1_000_000) }
            for i in 0..<150 {
                let d = dirs[next() % dirs.count]
                let name = b("t\(t)-\(i)")
                if t == 7 {
                    // A reader racing the writers.
                    for dd in dirs {
                        try? fs.readDirectory(dd, from: 0) { e in
                            _ = try? fs.inode(e.ino)
                            return true
                        }
                    }
                    continue
                }
                do {
                    let f = try fs.mknod(parent: d, name: name, fileMode)
                    try fs.put(f.ino, 0, pattern(1000 + next() % 20_000, seed: UInt32(i)))
                    switch next() % 4 {
                    case 0: _ = try fs.unlink(parent: d, name: name)
                    case 1: try fs.rename(parent: d, name: name, newParent: dirs[next() % dirs.count], newName: b("r\(t)-\(i)"), flags: 0)
                    case 2: try fs.setxattr(f.ino, name: b("user.k"), value: pattern(next() % 300, seed: 1), flags: 0)
                    default: try fs.put(f.ino, UInt64(next() % 100_000), pattern(5000, seed: 3))
                    }
                } catch {
                    errors.add("\(error)")
                }
            }
        }
        #expect(errors.all.isEmpty, "\(errors.all.prefix(5))")
        try fs.unmount()
        try fsckClean(img, "stress")
    }
}

final class ErrorBox: @unchecked Sendable {
    private let l = NSLock()
    private var e: [String] = []
    func add(_ s: String) { l.lock(); e.append(s); l.unlock() }
    var all: [String] { l.lock(); defer { l.unlock() }; return e }
}
