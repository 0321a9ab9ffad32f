import Ext4Engine
import Foundation
import Testing

@Suite("inline data and EA inodes")
struct InlineEATests {
    @Test func inlineObjectsAndEAInodeValue() throws {
        let tmp = try TempDir()
        let tree = tmp.sub("tree")
        let fm = FileManager.default
        try fm.createDirectory(atPath: tree + "/sd", withIntermediateDirectories: true)
        try writeFile(tree + "/f", Array("x\n".utf8))
        try writeFile(tree + "/f90", pattern(90, seed: 5)) // i_block + system.data
        for i in 1...4 { try writeFile(tree + "/sd/nm\(i)", Array("\(i)".utf8)) }
        let target = String(repeating: "t", count: 100)
        symlink(target, tree + "/lsym")
        let img = tmp.sub("fs.img")
        try mkfs(img, tree: tree, args: ["-t", "ext4", "-b", "1024", "-I", "256", "-O", "ea_inode,inline_data"], sizeMB: 32)
        let val = String(repeating: "v", count: 1024)
        try writeFile(tmp.sub("val"), Array(val.utf8))
        try run("/usr/sbin/debugfs", ["-w", "-R", "ea_set -f \(tmp.sub("val")) /f user.huge", img])
        try run("/usr/sbin/debugfs", ["-R", "ea_get -f \(tmp.sub("out")) /f user.huge", img])
        let truth = [UInt8](try Data(contentsOf: URL(fileURLWithPath: tmp.sub("out"))))
        #expect(truth.count == 1024)

        let fs = try openImage(img)
        let f = try resolve(fs, "f")
        #expect(try fs.inodeFlags(f) & 0x1000_0000 != 0, "inline file")
        #expect(try fs.read(f, offset: 0, count: 100) == Array("x\n".utf8))
        #expect(try fs.mappings(f, fromBlock: 0, maxBlocks: 10).isEmpty)
        let f90 = try resolve(fs, "f90")
        #expect(try fs.read(f90, offset: 0, count: 1000) == pattern(90, seed: 5))
        #expect(try fs.read(f90, offset: 50, count: 20) == Array(pattern(90, seed: 5)[50..<70]))
        #expect(try fs.getxattr(f, name: Array("user.huge".utf8)) == truth)
        #expect(try fs.listxattr(f).map { String(decoding: $0, as: UTF8.self) } == ["user.huge"])
        #expect(throws: Ext4Error.unsupported("xattr namespace not supported")) {
            try fs.getxattr(f, name: Array("system.data".utf8))
        }

        let sd = try resolve(fs, "sd")
        #expect(try fs.inodeFlags(sd) & 0x1000_0000 != 0, "inline dir")
        let entries = try listDir(fs, sd)
        #expect(entries.map { String(decoding: $0.name, as: UTF8.self) }.sorted() == [".", "..", "nm1", "nm2", "nm3", "nm4"])
        #expect(entries.first { $0.name == [0x2E, 0x2E] }?.ino == Ext4FileSystem.rootIno)
        #expect(try fs.lookup(dir: sd, name: [0x2E, 0x2E]) == Ext4FileSystem.rootIno)
        #expect(try fs.lookup(dir: sd, name: [0x2E]) == sd)
        for i in 1...4 {
            let ino = try fs.lookup(dir: sd, name: Array("nm\(i)".utf8))
            #expect(try fs.read(ino, offset: 0, count: 10) == Array("\(i)".utf8))
        }
        // Cookie-based resumption, one entry at a time.
        var names: [[UInt8]] = []
        var cookie: UInt64 = 0
        for _ in 0..<20 {
            var got: DirEntry? = nil
            try fs.readDirectory(sd, from: cookie) { got = $0; return false }
            guard let e = got else { break }
            names.append(e.name)
            cookie = e.nextCookie
        }
        #expect(names.count == 6 && Set(names).count == 6)

        let lsym = try resolve(fs, "lsym")
        #expect(try fs.readlink(lsym) == Array(target.utf8))
        #expect(try fs.inode(lsym).size == 100)
    }
}
