import Foundation
import Synchronization
import Testing

@testable import Ext4Engine

/// A device that records what it is asked to discard.
final class DiscardRecorder: BlockDevice, Sendable {
    let base: FileBlockDevice
    let ranges = Mutex<[(UInt64, UInt64)]>([])
    init(_ base: FileBlockDevice) { self.base = base }
    var size: UInt64 { base.size }
    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(Ext4Error) { try base.read(at: offset, into: buffer) }
    func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(Ext4Error) { try base.write(at: offset, from: buffer) }
    func flush() throws(Ext4Error) { try base.flush() }
    func dropCached(at offset: UInt64, count: Int) {}
    func discard(at offset: UInt64, count: UInt64) throws(Ext4Error) { ranges.withLock { $0.append((offset, count)) } }
    func discarded(_ block: UInt64, _ bs: UInt64) -> Bool {
        ranges.withLock { $0.contains { block * bs >= $0.0 && block * bs < $0.0 + $0.1 } }
    }
}

/// FITRIM discards free blocks only: never one in use, never one freed by a
/// transaction that has not committed (a crash would bring its owner back
/// with its data), and the range and minimum length are honoured.
@Suite("FITRIM")
struct TrimTests {
    @Test func onlyCommittedFreeBlocksAreDiscarded() throws {
        let tmp = try TempDir()
        let img = tmp.sub("t.img")
        try mkfs(img, tree: nil, args: ["-t", "ext4", "-b", "4096"], sizeMB: 64)
        let dev = DiscardRecorder(try FileBlockDevice(path: img, readOnly: false))
        let fs = try Ext4FileSystem.open(device: dev, options: MountOptions(readOnly: false, commitInterval: 3600))
        let root = Ext4FileSystem.rootIno
        let keep = try fs.mknod(parent: root, name: b("keep"), fileMode)
        let gone = try fs.mknod(parent: root, name: b("gone"), fileMode)
        try fs.put(keep.ino, 0, pattern(1 << 20, seed: 1))
        try fs.put(gone.ino, 0, pattern(1 << 20, seed: 2))
        try fs.sync()
        let keepBlocks = try (0..<256).map { try fs.bmap(keep.ino, block: UInt64($0)) }
        let goneBlocks = try (0..<256).map { try fs.bmap(gone.ino, block: UInt64($0)) }
        #expect(!keepBlocks.contains(0) && !goneBlocks.contains(0))
        _ = try fs.unlink(parent: root, name: b("gone"))
        // Freed, not committed: not discarded.
        let t1 = try fs.trim(start: 0, length: UInt64.max, minLength: 0)
        #expect(t1 > 0)
        let bs = UInt64(fs.blockSize)
        #expect(!goneBlocks.contains { dev.discarded($0, bs) }, "blocks of an uncommitted free were discarded")
        #expect(!keepBlocks.contains { dev.discarded($0, bs) }, "blocks in use were discarded")
        try fs.sync()
        dev.ranges.withLock { $0 = [] }
        // A range that ends before the freed blocks discards none of them.
        let lowest = goneBlocks.min() ?? 0
        _ = try fs.trim(start: 0, length: lowest * bs, minLength: 0)
        #expect(!goneBlocks.contains { dev.discarded($0, bs) }, "the range was not honoured")
        let t2 = try fs.trim(start: 0, length: UInt64.max, minLength: 0)
        #expect(t2 >= 256 * bs)
        #expect(goneBlocks.allSatisfy { dev.discarded($0, bs) }, "committed free blocks were not discarded")
        #expect(!keepBlocks.contains { dev.discarded($0, bs) })
        // A minimum longer than any free run discards nothing.
        dev.ranges.withLock { $0 = [] }
        #expect(throws: Ext4Error.self) { _ = try fs.trim(start: 0, length: UInt64.max, minLength: 1 << 40) }
        #expect(throws: Ext4Error.self) { _ = try fs.trim(start: 1 << 50, length: 4096, minLength: 0) }
        try fs.unmount()
        try fsckClean(img, "after FITRIM")
    }
}
