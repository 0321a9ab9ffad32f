import Foundation
import Testing

@testable import Ext4Engine

/// A file's map is rewritten over its own blocks (storeMap). When the space
/// for the rest of the new map runs out halfway, nothing may have been
/// written: the inode's root still points at the old nodes. fstests'
/// generic/300 (direct writes, fallocate and hole punching racing on a full
/// file system) found extent nodes overwritten this way, naming blocks the
/// failed operation had freed.
@Suite("write side: map rewrites are failure-atomic")
struct MapAtomicityTests {
    @Test func rewriteThatRunsOutOfSpaceWritesNothing() throws {
        let tmp = try TempDir()
        let img = tmp.sub("m.img")
        // 1 KiB blocks (84 entries per extent leaf), no reserved pool: full means full.
        try run("/usr/sbin/mkfs.ext4", ["-q", "-F", "-t", "ext4", "-b", "1024", "-m", "0", img, "8M"])
        let fs = try openRW(img)
        // A file whose map is a root with three leaves: 200 one-block extents.
        let f = try fs.mknod(parent: root, name: b("f"), fileMode)
        try fs.put(f.ino, 0, pattern(400 * 1024, seed: 9))
        for i in stride(from: UInt64(1), to: 400, by: 2) { try fs.fallocate(f.ino, mode: 3, offset: i * 1024, length: 1024) }
        // Fill every free block, twice (blocks freed by the punches come back after a commit).
        let fill = try fs.mknod(parent: root, name: b("fill"), fileMode)
        var off: UInt64 = 0
        for _ in 0..<2 {
            while true {
                do { try fs.put(fill.ino, off, pattern(1024, seed: 1)) } catch Ext4Error.noSpace { break }
                off += 1024
            }
            try fs.sync()
        }
        #expect(fs.statfs().bfree == 0)
        let m = try fs.loadInode(f.ino)
        let oldMeta = try fs.mapMetaBlocks(m)
        #expect(oldMeta.count >= 3, "the file's map has \(oldMeta.count) blocks")
        let before = try oldMeta.map { try fs.block($0) }
        let want = try fs.readAll(f.ino)
        // A new map of 2,000 entries (written and unwritten alternating, so
        // none merge) needs far more blocks than the old map's.
        let exts = (0..<UInt64(2000)).map { Extent(logical: $0, physical: 1000 + $0, length: 1, unwritten: $0 % 2 == 1) }
        var mm = m
        #expect(throws: Ext4Error.noSpace) { try fs.storeMap(&mm, exts, oldMeta: oldMeta) }
        #expect(try oldMeta.map { try fs.block($0) } == before, "the old map's blocks were written")
        #expect(try fs.readAll(f.ino) == want)
        try fs.unmount()
        try fsckClean(img, "after a map rewrite that ran out of space")
    }
}
