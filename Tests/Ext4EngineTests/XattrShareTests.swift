import Ext4Engine
import Foundation
import Glibc
import Testing

/// The xattr block ("File ACL") of `path` and its refcount, read from the image.
func xattrBlockOf(_ img: String, _ path: String, blockSize: Int) throws -> (block: UInt64, refcount: UInt32) {
    let st = try debugfs(img, "stat \(path)")
    guard let r = st.range(of: "File ACL: ") else { return (0, 0) }
    let num = st[r.upperBound...].prefix { $0.isNumber }
    let blk = UInt64(num) ?? 0
    guard blk != 0 else { return (0, 0) }
    let fd = open(img, O_RDONLY)
    defer { close(fd) }
    var hdr = [UInt8](repeating: 0, count: 8)
    _ = hdr.withUnsafeMutableBytes { pread(fd, $0.baseAddress, 8, off_t(blk) * off_t(blockSize)) }
    let rc = UInt32(hdr[4]) | UInt32(hdr[5]) << 8 | UInt32(hdr[6]) << 16 | UInt32(hdr[7]) << 24
    return (blk, rc)
}

@Suite("xattr blocks shared between inodes")
struct XattrShareTests {
    @Test(arguments: [editVariants[0], editVariants[2], editVariants[3]])
    func identicalBlocksAreShared(_ v: WVariant) throws {
        let tmp = try TempDir()
        let img = try makeImage(tmp, v, sizeMB: 32)
        let bs = try openRW(img).blockSize   // opened and dropped: just the geometry
        var fs = try openRW(img)
        let big = pattern(700, seed: 5)   // too big for the inode body: goes to a block
        var files: [UInt32] = []
        for i in 0..<1030 {
            let f = try fs.mknod(parent: root, name: b("f\(i)"), fileMode)
            try fs.setxattr(f.ino, name: b("user.big"), value: big, flags: 0)
            files.append(f.ino)
        }
        // Copy on write: one file changes its value, another gets a second attribute.
        try fs.setxattr(files[0], name: b("user.big"), value: pattern(700, seed: 6), flags: 0)
        try fs.setxattr(files[1], name: b("user.more"), value: pattern(200, seed: 7), flags: 0)
        // Ten drop theirs.
        for i in 2..<12 { try fs.removexattr(files[i], name: b("user.big")) }
        try fs.unmount()
        try fsckSilent(img, "\(v.name) after sharing")
        var blocks: [UInt64: UInt32] = [:]
        var holders: [UInt64: Int] = [:]
        for i in 12..<1030 {
            let (blk, rc) = try xattrBlockOf(img, "/f\(i)", blockSize: bs)
            #expect(blk != 0)
            blocks[blk] = rc
            holders[blk, default: 0] += 1
        }
        // 1018 identical holders: at most 1024 per block, so two blocks.
        #expect(blocks.count == 2, "\(blocks)")
        for (blk, rc) in blocks { #expect(Int(rc) == holders[blk], "block \(blk): refcount \(rc), holders \(holders[blk] ?? 0)") }
        let own0 = try xattrBlockOf(img, "/f0", blockSize: bs), own1 = try xattrBlockOf(img, "/f1", blockSize: bs)
        #expect(own0.refcount == 1 && own1.refcount == 1 && blocks[own0.block] == nil && blocks[own1.block] == nil)
        #expect(try xattrBlockOf(img, "/f5", blockSize: bs).block == 0)

        // After a remount, a block seen by a read is shared with a new file.
        fs = try openRW(img)
        let seen = try fs.lookup(dir: root, name: b("f20"))
        #expect(try fs.getxattr(seen, name: b("user.big")) == big)
        let n = try fs.mknod(parent: root, name: b("new"), fileMode)
        try fs.setxattr(n.ino, name: b("user.big"), value: big, flags: 0)
        #expect(try fs.getxattr(n.ino, name: b("user.big")) == big)
        try fs.unmount()
        try fsckSilent(img, "\(v.name) after remount")
        let a = try xattrBlockOf(img, "/new", blockSize: bs), c = try xattrBlockOf(img, "/f20", blockSize: bs)
        #expect(a.block == c.block && a.refcount == c.refcount, "new \(a), f20 \(c)")
        #expect(try debugfs(img, "ea_get /f0 user.big").count > 0)
    }
}
