import Ext4Engine
import Foundation
import Glibc
import Testing

func sourceXattrs(_ path: String) throws -> [String: [UInt8]] {
    let out = try run("/usr/bin/getfattr", ["-h", "-d", "-m", "-", "-e", "hex", "--absolute-names", path],
                      allowFail: true)
    var res: [String: [UInt8]] = [:]
    for line in out.split(separator: "\n") where !line.hasPrefix("#") {
        guard let eq = line.firstIndex(of: "=") else { continue }
        let name = String(line[..<eq])
        var hex = line[line.index(after: eq)...]
        if hex.hasPrefix("0x") { hex = hex.dropFirst(2) }
        var bytes: [UInt8] = []
        var it = hex.makeIterator()
        while let a = it.next(), let b = it.next() {
            if let v = UInt8(String([a, b]), radix: 16) { bytes.append(v) }
        }
        res[name] = bytes
    }
    return res
}

struct Variant: CustomStringConvertible, Sendable {
    let name: String
    let args: [String]
    var big = false
    /// Default hash to set before `e2fsck -fD` re-indexes the directories.
    var rehash: String? = nil
    var unsigned = false
    var description: String { name }
}

let variants: [Variant] = [
    Variant(name: "ext4-default", args: ["-t", "ext4"], big: true),
    Variant(name: "ext4-nocsum", args: ["-t", "ext4", "-O", "^metadata_csum"]),
    Variant(name: "ext4-1k", args: ["-t", "ext4", "-b", "1024"], big: true),
    Variant(name: "ext2", args: ["-t", "ext2"]),
    Variant(name: "ext3", args: ["-t", "ext3"]),
    Variant(name: "ext4-inline", args: ["-t", "ext4", "-O", "inline_data"]),
    Variant(name: "ext4-no64bit", args: ["-t", "ext4", "-O", "^64bit"]),
    Variant(name: "ext4-tea-256", args: ["-t", "ext4", "-I", "256"], rehash: "tea"),
    Variant(name: "ext4-legacy-128", args: ["-t", "ext4", "-I", "128"], rehash: "legacy"),
    Variant(name: "ext4-halfmd4-unsigned", args: ["-t", "ext4"], rehash: "half_md4", unsigned: true),
    Variant(name: "ext3-tea-unsigned", args: ["-t", "ext3"], rehash: "tea", unsigned: true),
    Variant(name: "ext4-metabg", args: ["-t", "ext4", "-O", "meta_bg,^resize_inode", "-b", "1024"]),
    Variant(name: "ext4-64k", args: ["-t", "ext4", "-b", "65536", "-N", "8192"]),
]

@Suite("mkfs images compared with their source tree")
struct ImageTests {
    @Test(arguments: variants)
    func compareWithSource(_ v: Variant) throws {
        let tmp = try TempDir()
        let tree = tmp.sub("tree")
        try buildTree(tree, big: v.big, trailingHole: v.name != "ext4-inline")
        let img = tmp.sub("fs.img")
        try mkfs(img, tree: tree, args: v.args, sizeMB: v.big ? 96 : 64)
        if v.unsigned {
            try run("/usr/sbin/debugfs", ["-w", "-R", "ssv flags 2", img])
        }
        if let h = v.rehash {
            try run("/usr/sbin/debugfs", ["-w", "-R", "ssv def_hash_version \(h)", img])
        }
        if v.rehash != nil || v.unsigned {
            try run("/usr/sbin/e2fsck", ["-fyD", img], allowFail: true)
        }
        let fs = try openImage(img)
        #expect(fs.readOnly)
        // Group descriptor checksums (crc16 / crc32c) verify: no warnings on a clean image.
        #expect(fs.warnings.isEmpty, "\(fs.warnings)")
        let root = try fs.inode(Ext4FileSystem.rootIno)
        #expect(root.fileType == .directory)

        let fm = FileManager.default
        guard let en = fm.enumerator(atPath: tree) else { Issue.record("enumerator"); return }
        var checked = 0
        while let rel = en.nextObject() as? String {
            let path = tree + "/" + rel
            var st = stat()
            #expect(lstat(path, &st) == 0)
            let ino = try resolve(fs, rel)
            let node = try fs.inode(ino)
            #expect(UInt32(node.mode) == st.st_mode & 0xFFFF, "mode \(rel)")
            #expect(node.uid == st.st_uid && node.gid == st.st_gid, "owner \(rel)")
            #expect(node.mtime.sec == Int64(st.st_mtim.tv_sec), "mtime \(rel)")
            #expect((node.crtime == nil) == v.args.contains("128"), "crtime presence \(rel)")
            switch st.st_mode & S_IFMT {
            case S_IFREG:
                #expect(node.fileType == .regular)
                #expect(node.size == UInt64(st.st_size), "size \(rel)")
                let want = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
                var got: [UInt8] = []
                var off: UInt64 = 0
                while true {
                    let chunk = try fs.read(ino, offset: off, count: 3 << 20 + 777)
                    if chunk.isEmpty { break }
                    got += chunk
                    off += UInt64(chunk.count)
                }
                let same = got == want
                let firstDiff = zip(got, want).enumerated().first { $0.element.0 != $0.element.1 }?.offset
                #expect(same, "content \(rel): got \(got.count) want \(want.count) first diff \(String(describing: firstDiff))")
                // Unaligned read in the middle.
                if want.count > 5000 {
                    let part = try fs.read(ino, offset: 1234, count: 4321)
                    let okPart = part == Array(want[1234..<(1234 + 4321)])
                    #expect(okPart, "partial \(rel)")
                }
                #expect(try fs.read(ino, offset: UInt64(want.count) + 10, count: 10).isEmpty)
            case S_IFLNK:
                #expect(node.fileType == .symlink)
                let target = try fm.destinationOfSymbolicLink(atPath: path)
                #expect(try fs.readlink(ino) == Array(target.utf8), "symlink \(rel)")
                #expect(node.size == UInt64(target.utf8.count))
            case S_IFDIR:
                #expect(node.fileType == .directory)
                let names = Set(try listDir(fs, ino).map { String(decoding: $0.name, as: UTF8.self) })
                let want = Set(try fm.contentsOfDirectory(atPath: path)).union([".", ".."])
                #expect(names == want, "dir listing \(rel)")
                #expect(throws: Ext4Error.isDirectory) { try fs.read(ino, offset: 0, count: 1) }
            case S_IFIFO:
                #expect(node.fileType == .fifo)
            default:
                Issue.record("unexpected type \(rel)")
            }
            // Extended attributes, including ACLs in their VFS form.
            let want = try sourceXattrs(path)
            let gotNames = Set(try fs.listxattr(ino).map { String(decoding: $0, as: UTF8.self) })
            #expect(gotNames == Set(want.keys), "xattr names \(rel)")
            for (k, val) in want {
                #expect(try fs.getxattr(ino, name: Array(k.utf8)) == val, "xattr \(k) on \(rel)")
            }
            checked += 1
        }
        #expect(checked > manyCount)

        // Hard links share the inode.
        let hard = try resolve(fs, "hard"), small = try resolve(fs, "small.txt")
        #expect(hard == small)
        #expect(try fs.inode(small).links == 2)
        #expect(throws: Ext4Error.notFound) { try fs.lookup(dir: Ext4FileSystem.rootIno, name: Array("nope".utf8)) }
        #expect(throws: Ext4Error.noData) { try fs.getxattr(small, name: Array("user.nope".utf8)) }
        #expect(throws: Ext4Error.notSymlink) { try fs.readlink(small) }
        #expect(throws: Ext4Error.notDirectory) { try fs.lookup(dir: small, name: Array("x".utf8)) }

        // Sparse file: holes are not mapped, data islands are.
        let sparse = try resolve(fs, "sparse.bin")
        let bs = UInt64(fs.blockSize)
        let maps = try fs.mappings(sparse, fromBlock: 0, maxBlocks: UInt64.max)
        #expect(!maps.isEmpty)
        if v.name != "ext4-inline" { // mke2fs -d maps block 0 of sparse files with inline_data
            #expect(maps.allSatisfy { $0.logical >= (1 << 20) / bs })
        }
        #expect(maps.contains { $0.logical <= (1 << 20) / bs && $0.logical + $0.length > (1 << 20) / bs })
        #expect(try fs.read(sparse, offset: 4096, count: 100) == [UInt8](repeating: 0, count: 100))
        #expect(try fs.inode(sparse).blocks512 * 512 < 1 << 20)

        // Fragmented file: every island mapped, separately.
        let frag = try resolve(fs, "frag.bin")
        let fragMaps = try fs.mappings(frag, fromBlock: 0, maxBlocks: UInt64.max)
        #expect(fragMaps.count >= 200 || v.name == "ext4-64k", "frag extents \(fragMaps.count)")
        #expect(fragMaps.reduce(UInt64(0)) { $0 + $1.length } >= 200 || v.name == "ext4-64k")
        let mid = try fs.mappings(frag, fromBlock: 65536 * 100 / bs, maxBlocks: 1)
        #expect(mid.count == 1 && mid.first?.logical == 65536 * 100 / bs)

        // Big directory: htree lookups of every name, paged readdir with cookies.
        let many = try resolve(fs, "many")
        let indexed = try fs.inodeFlags(many) & 0x1000 != 0
        let before = fs.lookupCounters
        for i in 0..<manyCount {
            _ = try fs.lookup(dir: many, name: Array(manyName(i).utf8))
        }
        if indexed {
            #expect(fs.lookupCounters.htree - before.htree == manyCount, "htree used")
            #expect(fs.lookupCounters.linear == before.linear, "no linear fallback")
        }
        if v.rehash != nil { #expect(indexed, "e2fsck -D indexes the big directory") }
        var paged: [String] = []
        var cookie: UInt64 = 0
        var rounds = 0
        while rounds < 10_000 {
            rounds += 1
            var page: [DirEntry] = []
            try fs.readDirectory(many, from: cookie) { e in page.append(e); return page.count < 97 }
            if page.isEmpty { break }
            paged += page.map { String(decoding: $0.name, as: UTF8.self) }
            cookie = page[page.count - 1].nextCookie
        }
        #expect(paged.count == manyCount + 2)
        #expect(Set(paged).count == manyCount + 2)

        let st = fs.statfs()
        #expect(st.bsize == UInt32(fs.blockSize) && st.namelen == 255)
        #expect(st.bfree <= st.blocks && st.bavail <= st.bfree && st.ffree < st.files)
        #expect(fs.uuid.count == 16)
    }

    @Test func devicesAndDebugfs() throws {
        let tmp = try TempDir()
        let tree = tmp.sub("tree")
        try FileManager.default.createDirectory(atPath: tree, withIntermediateDirectories: true)
        try writeFile(tree + "/f", Array("x".utf8))
        try writeFile(tree + "/future", Array("x".utf8))
        try writeFile(tree + "/past", Array("x".utf8))
        try run("/usr/bin/touch", ["-d", "1960-01-01 00:00:01", tree + "/past"])
        let img = tmp.sub("fs.img")
        try mkfs(img, tree: tree, args: ["-t", "ext4"], sizeMB: 16)
        // 2300-05-06 07:08:09.123456789: epoch bits 2, nsec in the extra field.
        try run("/usr/sbin/debugfs", ["-w", "-R", "sif /future mtime 0x6d5b0ad9", img])
        try run("/usr/sbin/debugfs", ["-w", "-R", "sif /future mtime_extra 0x1D6F3456", img])
        try run("/usr/sbin/debugfs", ["-w", "-R", "mknod cdev c 4 5", img])
        try run("/usr/sbin/debugfs", ["-w", "-R", "mknod bdev b 259 1000", img])
        try run("/usr/sbin/debugfs", ["-w", "-R", "mknod pipe p", img])
        let fs = try openImage(img)
        let names = try listDir(fs, Ext4FileSystem.rootIno).map { String(decoding: $0.name, as: UTF8.self) }
        #expect(names.contains("cdev"), "\(names)")
        let c = try fs.inode(try resolve(fs, "cdev"))
        #expect(c.fileType == .charDevice && c.rdev.major == 4 && c.rdev.minor == 5)
        let b = try fs.inode(try resolve(fs, "bdev"))
        #expect(b.fileType == .blockDevice && b.rdev.major == 259 && b.rdev.minor == 1000)
        #expect(try fs.inode(try resolve(fs, "pipe")).fileType == .fifo)
        let fut = try fs.inode(try resolve(fs, "future"))
        #expect(fut.mtime == Timespec(sec: 10_424_617_689, nsec: 123_456_789))
        #expect(try fs.inode(try resolve(fs, "past")).mtime.sec == -315_619_199)
        // Cross-check an inode against debugfs stat.
        let fino = try resolve(fs, "f")
        let out = try run("/usr/sbin/debugfs", ["-R", "stat <\(fino)>", img])
        let node = try fs.inode(fino)
        #expect(out.contains("Generation: \(node.generation)"))
        #expect(out.contains("Links: \(node.links)"))
        if let cr = node.crtime {
            #expect(out.contains("crtime: 0x" + String(format: "%08x", UInt32(truncatingIfNeeded: cr.sec))))
        }
    }
}
