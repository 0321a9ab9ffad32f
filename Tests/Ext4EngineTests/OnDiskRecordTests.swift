import Foundation
import Testing

@testable import Ext4Engine

/// The typed on-disk records (OnDisk.swift): every record round-trips,
/// fields sit at the documented offsets, truncated and out-of-range input
/// throws `.corrupted` and never traps, and a real mkfs image decodes with
/// matching checksums from the group descriptor down to a directory block.
@Suite("unit: typed on-disk records")
struct OnDiskRecordTests {
    func expectCorrupt(_ what: String, sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) {
        do {
            try body()
            Issue.record("\(what): no error thrown", sourceLocation: sourceLocation)
        } catch let e as Ext4Error {
            guard case .corrupted = e else {
                Issue.record("\(what): \(e), not .corrupted", sourceLocation: sourceLocation)
                return
            }
        } catch {
            Issue.record("\(what): unexpected \(error)", sourceLocation: sourceLocation)
        }
    }

    // MARK: inode

    @Test func inodeRoundTrip() throws {
        var r = InodeRecord(blank: 12, inodeSize: 256, extraIsize: 32)
        #expect(r.extraIsize == 32 && r.hasCrtime && r.hasChecksumHi)
        r.mode = 0o100644
        r.uid = 0x1234_5678
        r.gid = 0x9ABC_DEF0
        r.size = 0x0000_0012_3456_789A
        r.links = 3
        r.flags = InodeFlag.extents | InodeFlag.hugeFile
        r.dtime = 77
        r.generation = 0xCAFE_F00D
        r.setFileACL(0x0000_BEEF_0000_1000)
        r.version = 0x1_0000_0002
        let later = Timespec(sec: (1 << 32) + 5, nsec: 999_999_999)   // past 2038: epoch bits
        let before = Timespec(sec: -1, nsec: 1)                        // before 1970
        r.setTime(.atime, later)
        r.setTime(.mtime, before)
        r.setTime(.ctime, Timespec(sec: 1_700_000_000, nsec: 123))
        r.setTime(.crtime, Timespec(sec: 42, nsec: 7))
        r.iBlock = Array(1...60)
        r.sealChecksum(seed: 0x1111)

        let d = try InodeRecord(ino: 12, bytes: r.b, inodeSize: 256)
        #expect(d.mode == 0o100644 && d.fileType == .regular && !d.isDir)
        #expect(d.uid == 0x1234_5678 && d.gid == 0x9ABC_DEF0)
        #expect(d.size == 0x0000_0012_3456_789A && d.links == 3 && d.dtime == 77)
        #expect(d.generation == 0xCAFE_F00D && d.hasExtents && !d.hasInline)
        #expect(d.fileACL(true) == 0x0000_BEEF_0000_1000 && d.fileACL(false) == 0x1000)
        #expect(d.version == 0x1_0000_0002)
        #expect(d.time(.atime) == later && d.time(.mtime) == before)
        #expect(d.time(.ctime) == Timespec(sec: 1_700_000_000, nsec: 123))
        #expect(d.time(.crtime) == Timespec(sec: 42, nsec: 7))
        #expect(d.iBlock == Array(1...60))
        #expect(d.checksumMatches(seed: 0x1111) && !d.checksumMatches(seed: 0x1112))
        // The documented offsets.
        #expect(d.b.le16(0x0) == 0o100644 && d.b.le16(0x2) == 0x5678 && d.b.le16(0x78) == 0x1234)
        #expect(d.b.le32(0x4) == 0x3456_789A && d.b.le32(0x6C) == 0x12)
        #expect(d.b.le16(0x1A) == 3 && d.b.le32(0x14) == 77 && d.b.le32(0x64) == 0xCAFE_F00D)
        #expect(d.b.le32(0x68) == 0x1000 && d.b.le16(0x76) == 0xBEEF)
        #expect(d.b.le32(0x24) == 2 && d.b.le32(0x98) == 1)
        #expect(d.b.le16(0x80) == 32 && d.b.u8(0x28) == 1 && d.b.u8(0x28 + 59) == 60)
        #expect(d.b.le32(0x90) == 42 && d.b.le32(0x94) == 7 << 2)
        #expect(d.b.le32(0x8C) & 3 == 1, "atime epoch bits")
        // A flipped byte anywhere breaks the checksum.
        var bad = d
        bad.b[0x50] ^= 1
        #expect(!bad.checksumMatches(seed: 0x1111))
    }

    @Test func inodeWithoutExtraFields() throws {
        // 128-byte inodes: no extra fields, no crtime, 32-bit version, 16-bit checksum.
        var r = InodeRecord(blank: 5, inodeSize: 128, extraIsize: 32)
        #expect(r.extraIsize == 0 && !r.hasCrtime && !r.hasChecksumHi && r.ibodyXattrStart == nil)
        r.version = 0x7_0000_0001
        r.setTime(.crtime, Timespec(sec: 9, nsec: 9))
        r.setTime(.mtime, Timespec(sec: 100, nsec: 500))
        r.sealChecksum(seed: 3)
        let d = try InodeRecord(ino: 5, bytes: r.b, inodeSize: 128)
        #expect(d.version == 1)
        #expect(d.time(.crtime) == Timespec(sec: 0, nsec: 0))
        #expect(d.time(.mtime) == Timespec(sec: 100, nsec: 0))
        #expect(d.checksumMatches(seed: 3))
        #expect(d.storedChecksum <= 0xFFFF)
        // An extra_isize too small for checksum_hi: 16 bits only.
        var small = InodeRecord(blank: 6, inodeSize: 256, extraIsize: 0)
        #expect(!small.hasChecksumHi && !small.hasCrtime && small.ibodyXattrStart == 128)
        small.sealChecksum(seed: 4)
        #expect(try InodeRecord(ino: 6, bytes: small.b, inodeSize: 256).checksumMatches(seed: 4))
    }

    @Test func inodeBlocksAndDevices() throws {
        var r = InodeRecord(blank: 7, inodeSize: 256, extraIsize: 32)
        try r.setFsBlocks(10, hugeFile: false, blockSize: 4096)
        #expect(r.blocks512(hugeFile: false, blockSize: 4096) == 80 && r.fsBlocks(hugeFile: false, blockSize: 4096) == 10)
        // Past 2^32 sectors: the 48-bit field with huge_file, EFBIG without.
        let big: UInt64 = 1 << 30
        try r.setFsBlocks(big, hugeFile: true, blockSize: 4096)
        #expect(r.flags & InodeFlag.hugeFile == 0 && r.fsBlocks(hugeFile: true, blockSize: 4096) == big)
        #expect(r.b.le16(0x74) == UInt16((big * 8) >> 32))
        #expect(throws: Ext4Error.fileTooBig) { try r.setFsBlocks(big, hugeFile: false, blockSize: 4096) }
        // Past 2^48 sectors: counted in blocks with the HUGE_FILE flag.
        let huge: UInt64 = 1 << 46
        try r.setFsBlocks(huge, hugeFile: true, blockSize: 4096)
        #expect(r.flags & InodeFlag.hugeFile != 0)
        #expect(r.fsBlocks(hugeFile: true, blockSize: 4096) == huge && r.blocks512(hugeFile: true, blockSize: 4096) == huge * 8)
        #expect(throws: Ext4Error.fileTooBig) { try r.setFsBlocks(UInt64.max, hugeFile: true, blockSize: 4096) }

        r.setDeviceNumber(major: 8, minor: 17)
        #expect(r.deviceNumber == (8, 17) && r.b.le32(0x28) == 0x0811 && r.b.le32(0x2C) == 0)
        r.setDeviceNumber(major: 300, minor: 70000)
        #expect(r.deviceNumber == (300, 70000) && r.b.le32(0x28) == 0)
    }

    @Test func inodeRejectsBadInput() {
        let good = InodeRecord(blank: 1, inodeSize: 256, extraIsize: 32).b
        expectCorrupt("truncated") { _ = try InodeRecord(ino: 1, bytes: Array(good.prefix(200)), inodeSize: 256) }
        expectCorrupt("empty") { _ = try InodeRecord(ino: 1, bytes: [], inodeSize: 256) }
        expectCorrupt("inode size below 128") { _ = try InodeRecord(ino: 1, bytes: Array(good.prefix(64)), inodeSize: 64) }
        var b = good
        b.putLE16(0x80, 132)                         // 128 + 132 > 256
        expectCorrupt("extra_isize past the slot") { _ = try InodeRecord(ino: 1, bytes: b, inodeSize: 256) }
        b.putLE16(0x80, 0xFFFF)
        expectCorrupt("extra_isize 0xffff") { _ = try InodeRecord(ino: 1, bytes: b, inodeSize: 256) }
        b.putLE16(0x80, 30)
        expectCorrupt("extra_isize not a multiple of 4") { _ = try InodeRecord(ino: 1, bytes: b, inodeSize: 256) }
        b.putLE16(0x80, 128)                         // exactly the slot: fine, no xattr area
        #expect((try? InodeRecord(ino: 1, bytes: b, inodeSize: 256))?.ibodyXattrStart == nil)
    }

    // MARK: group descriptor

    @Test func groupDescriptorLayouts() throws {
        for size in [32, 64, 128] {
            var d = try GroupDescriptorRecord([UInt8](repeating: 0, count: size), descSize: size)
            d.blockBitmap = 0x0000_1234_0000_0100
            d.inodeBitmap = 0x0000_0001_0000_0200
            d.inodeTable = 0x0000_0002_0000_0300
            d.freeBlocks = 0x0003_8000
            d.freeInodes = 0x0001_0004
            d.usedDirs = 0x0002_0005
            d.itableUnused = 0x0005_0006
            d.blockBitmapChecksum = 0xAAAA_BBBB
            d.inodeBitmapChecksum = 0xCCCC_DDDD
            d.flags = GroupDescriptorRecord.Flag.inodeUninit | GroupDescriptorRecord.Flag.itableZeroed
            let e = try GroupDescriptorRecord(d.b, descSize: size)
            let wide = size >= 64
            #expect(e.is64 == wide && e.descSize == size)
            #expect(e.blockBitmap == (wide ? 0x0000_1234_0000_0100 : 0x100))
            #expect(e.inodeBitmap == (wide ? 0x0000_0001_0000_0200 : 0x200))
            #expect(e.inodeTable == (wide ? 0x0000_0002_0000_0300 : 0x300))
            #expect(e.freeBlocks == (wide ? 0x0003_8000 : 0x8000))
            #expect(e.freeInodes == (wide ? 0x0001_0004 : 4))
            #expect(e.usedDirs == (wide ? 0x0002_0005 : 5))
            #expect(e.itableUnused == (wide ? 0x0005_0006 : 6))
            #expect(e.blockBitmapChecksum == (wide ? 0xAAAA_BBBB : 0xBBBB))
            #expect(e.inodeBitmapChecksum == (wide ? 0xCCCC_DDDD : 0xDDDD))
            #expect(e.flags == 5 && e.b.le16(0x12) == 5)
            #expect(e.b.le32(0x8) == 0x300 && e.b.le16(0xC) == 0x8000 && e.b.le16(0x1C) == 6)
            if wide { #expect(e.b.le32(0x28) == 2 && e.b.le16(0x2C) == 3 && e.b.le16(0x3A) == 0xCCCC) }
            // Checksums: stable, sensitive to the group and to every field but bg_checksum.
            let uuid = Array(UInt8(1)...UInt8(16))
            for csum in [true, false] {
                let c = e.computedChecksum(group: 3, metadataCsum: csum, fsSeed: 0x5EED, uuid: uuid)
                var f = e
                f.checksum = c
                #expect(f.computedChecksum(group: 3, metadataCsum: csum, fsSeed: 0x5EED, uuid: uuid) == c)
                #expect(f.computedChecksum(group: 4, metadataCsum: csum, fsSeed: 0x5EED, uuid: uuid) != c)
                f.freeInodes &+= 1
                #expect(f.computedChecksum(group: 3, metadataCsum: csum, fsSeed: 0x5EED, uuid: uuid) != c)
            }
        }
    }

    @Test func groupDescriptorRejectsBadInput() {
        let block = [UInt8](repeating: 0, count: 1024)
        expectCorrupt("short") { _ = try GroupDescriptorRecord([UInt8](repeating: 0, count: 31), descSize: 32) }
        expectCorrupt("size mismatch") { _ = try GroupDescriptorRecord([UInt8](repeating: 0, count: 32), descSize: 64) }
        expectCorrupt("size 48") { _ = try GroupDescriptorRecord([UInt8](repeating: 0, count: 48), descSize: 48) }
        expectCorrupt("size 0") { _ = try GroupDescriptorRecord([], descSize: 0) }
        expectCorrupt("past the block") { _ = try GroupDescriptorRecord(block: block, offset: 1000, descSize: 64) }
        expectCorrupt("negative offset") { _ = try GroupDescriptorRecord(block: block, offset: -32, descSize: 32) }
        expectCorrupt("huge offset") { _ = try GroupDescriptorRecord(block: block, offset: Int.max, descSize: 32) }
        #expect((try? GroupDescriptorRecord(block: block, offset: 960, descSize: 64)) != nil)
    }

    // MARK: extents

    @Test func extentNodeRoundTrip() throws {
        var node = [UInt8](repeating: 0, count: 1024)
        let h = ExtentHeader(entries: 3, max: ExtentHeader.capacity(nodeBytes: 1024), depth: 0)
        h.encode(into: &node)
        let exts = [Extent(logical: 0, physical: 0x0000_ABCD_0000_0010, length: 32768, unwritten: false),
                    Extent(logical: 40000, physical: 77, length: 32767, unwritten: true),
                    Extent(logical: 0xFFFF_FFF0, physical: 1, length: 16, unwritten: false)]
        for (i, x) in exts.enumerated() { ExtentLeafEntry(x).encode(into: &node, index: i) }
        h.sealTail(&node, seed: 99)

        let d = try ExtentHeader(decoding: node)
        #expect(d == h && d.magic == 0xF30A && d.max == 84 && d.tailOffset == 12 + 12 * 84)
        #expect(d.isValid(nodeBytes: 1024, maxDepth: 5) && d.tailMatches(node, seed: 99) && !d.tailMatches(node, seed: 98))
        for (i, x) in exts.enumerated() { #expect(try ExtentLeafEntry(decoding: node, index: i).extent == x) }
        // The documented layout of entry 1: 40000, 32767 + 32768 (unwritten), start hi 0, start lo 77.
        #expect(node.le32(24) == 40000 && node.le16(28) == 65535 && node.le16(30) == 0 && node.le32(32) == 77)
        #expect(node.le16(18) == 0xABCD, "start_hi of entry 0")
        // 32768 is the longest initialized extent, not an unwritten one.
        #expect(!(try ExtentLeafEntry(decoding: node, index: 0)).isUnwritten)

        var idx = [UInt8](repeating: 0, count: 60)
        ExtentHeader(entries: 2, max: 4, depth: 1).encode(into: &idx)
        ExtentIndexEntry(logical: 0, child: 0x0000_1234_5678_9ABC).encode(into: &idx, index: 0)
        ExtentIndexEntry(logical: 500, child: 9).encode(into: &idx, index: 1)
        #expect(try ExtentIndexEntry(decoding: idx, index: 0) == ExtentIndexEntry(logical: 0, child: 0x1234_5678_9ABC))
        #expect(try ExtentIndexEntry(decoding: idx, index: 1) == ExtentIndexEntry(logical: 500, child: 9))
        #expect(idx.le32(16) == 0x5678_9ABC && idx.le16(20) == 0x1234)
        #expect(try ExtentHeader(decoding: idx).isValid(nodeBytes: 60, maxDepth: 5))
        #expect(ExtentHeader.capacity(nodeBytes: 60) == ExtentHeader.rootCapacity)
    }

    @Test func extentRejectsBadInput() throws {
        expectCorrupt("header in 11 bytes") { _ = try ExtentHeader(decoding: [UInt8](repeating: 0, count: 11)) }
        expectCorrupt("no header") { _ = try ExtentHeader(decoding: []) }
        let root = [UInt8](repeating: 0xFF, count: 60)
        expectCorrupt("leaf entry 4 of a root") { _ = try ExtentLeafEntry(decoding: root, index: 4) }
        expectCorrupt("index entry 4 of a root") { _ = try ExtentIndexEntry(decoding: root, index: 4) }
        expectCorrupt("negative index") { _ = try ExtentLeafEntry(decoding: root, index: -2) }
        expectCorrupt("huge index") { _ = try ExtentLeafEntry(decoding: root, at: Int.max) }
        // Out-of-range header fields decode, and isValid says no.
        var n = [UInt8](repeating: 0, count: 60)
        ExtentHeader(entries: 5, max: 4, depth: 0).encode(into: &n)
        #expect(!(try ExtentHeader(decoding: n)).isValid(nodeBytes: 60, maxDepth: 5))
        ExtentHeader(entries: 1, max: 5, depth: 0).encode(into: &n)
        #expect(!(try ExtentHeader(decoding: n)).isValid(nodeBytes: 60, maxDepth: 5))
        ExtentHeader(entries: 1, max: 4, depth: 6).encode(into: &n)
        #expect(!(try ExtentHeader(decoding: n)).isValid(nodeBytes: 60, maxDepth: 5))
        n.putLE16(0, 0xF30B)
        #expect(!(try ExtentHeader(decoding: n)).isValid(nodeBytes: 60, maxDepth: 5))
        // A tail past the node: no checksum, no match, no trap.
        let h = ExtentHeader(entries: 0, max: 4, depth: 0)
        #expect(h.tailChecksum(n, seed: 1) == nil && !h.tailMatches(n, seed: 1))
        var copy = n
        h.sealTail(&copy, seed: 1)
        #expect(copy == n)
    }

    // MARK: directory entries

    @Test func dirEntryRoundTrip() throws {
        for bs in [1024, 4096, 65536] {
            var b = [UInt8](repeating: 0xEE, count: bs)
            DirEntryRecord.write(into: &b, at: 0, inode: 2, recLen: 12, name: [0x2E], fileType: 2, blockSize: bs)
            DirEntryRecord.write(into: &b, at: 12, inode: 0xFFFF_FFF0, recLen: bs - 12 - DirLeafTail.size,
                                 name: Array("hello".utf8), fileType: 1, blockSize: bs)
            DirLeafTail.seal(&b, blockSize: bs, seed: 7)
            let a = try DirEntryRecord(decoding: b, at: 0, blockSize: bs)
            #expect(a == DirEntryRecord(inode: 2, recLen: 12, nameLen: 1, fileType: 2) && a.fits(at: 0, end: bs))
            #expect(b.u8(9) == 0 && b.u8(10) == 0 && b.u8(11) == 0, "name padding zeroed")
            let c = try DirEntryRecord(decoding: b, at: 12, blockSize: bs)
            #expect(c.inode == 0xFFFF_FFF0 && c.recLen == bs - 24 && c.nameLen == 5 && c.fileType == 1)
            #expect(c.name(in: b, at: 12) == Array("hello".utf8) && c.nameEquals(Array("hello".utf8), in: b, at: 12))
            #expect(!c.nameEquals(Array("hellO".utf8), in: b, at: 12) && !c.nameEquals(Array("hell".utf8), in: b, at: 12))
            #expect(c.fits(at: 12, end: bs - DirLeafTail.size) && !c.fits(at: 16, end: bs - DirLeafTail.size))
            #expect(DirLeafTail.isPresent(b, blockSize: bs) && DirLeafTail.matches(b, blockSize: bs, seed: 7))
            #expect(!DirLeafTail.matches(b, blockSize: bs, seed: 8))
            b[20] ^= 1
            #expect(!DirLeafTail.matches(b, blockSize: bs, seed: 7))
        }
        // rec_len on 64 KiB blocks: 65536 is stored as 65535 (or 0), the low bits carry bits 16-17.
        for n in [12, 4096, 65532, 65536] {
            #expect(DirEntryRecord.decodeRecLen(DirEntryRecord.encodeRecLen(n, blockSize: 65536), blockSize: 65536) == n)
        }
        #expect(DirEntryRecord.encodeRecLen(65536, blockSize: 65536) == 65535)
        #expect(DirEntryRecord.decodeRecLen(0, blockSize: 65536) == 65536)
        #expect(DirEntryRecord.size(nameLen: 1) == 12 && DirEntryRecord.size(nameLen: 5) == 16)
        #expect(DirEntryRecord.size(nameLen: 255) == 264)
    }

    @Test func dirEntryRejectsBadInput() {
        let b = [UInt8](repeating: 0xFF, count: 64)
        expectCorrupt("header past the end") { _ = try DirEntryRecord(decoding: b, at: 60, blockSize: 4096) }
        expectCorrupt("negative offset") { _ = try DirEntryRecord(decoding: b, at: -4, blockSize: 4096) }
        expectCorrupt("huge offset") { _ = try DirEntryRecord(decoding: b, at: Int.max - 2, blockSize: 4096) }
        // Out-of-range fields decode, and fits says no.
        let r = (try? DirEntryRecord(decoding: b, at: 0, blockSize: 4096)) ?? DirEntryRecord(inode: 0, recLen: 0, nameLen: 0, fileType: 0)
        #expect(r.recLen == 0xFFFF && r.nameLen == 255 && !r.fits(at: 0, end: 64))
        for (len, name) in [(8, 0), (14, 0), (12, 5), (4096, 0)] {
            #expect(!DirEntryRecord(inode: 1, recLen: len, nameLen: name, fileType: 0).fits(at: 0, end: 64))
        }
        // A name past the buffer is no name.
        #expect(DirEntryRecord(inode: 1, recLen: 12, nameLen: 200, fileType: 0).name(in: b, at: 0) == nil)
        #expect(!DirEntryRecord(inode: 1, recLen: 12, nameLen: 200, fileType: 0).nameEquals([UInt8](repeating: 0xFF, count: 200), in: b, at: 0))
        // No tail in a short or tail-less block.
        #expect(!DirLeafTail.isPresent(b, blockSize: 4096) && !DirLeafTail.isPresent(b, blockSize: 64))
        #expect(!DirLeafTail.isPresent(b, blockSize: 8))
        var s = b
        DirLeafTail.seal(&s, blockSize: 4096, seed: 1)
        #expect(s == b)
    }

    // MARK: htree index

    @Test func htreeRoundTrip() throws {
        for csum in [false, true] {
            let bs = 4096
            var root = [UInt8](repeating: 0, count: bs)
            DirEntryRecord.write(into: &root, at: 0, inode: 2, recLen: 12, name: [0x2E], fileType: 2, blockSize: bs)
            DirEntryRecord.write(into: &root, at: 12, inode: 2, recLen: bs - 12, name: [0x2E, 0x2E], fileType: 2, blockSize: bs)
            DxRootInfo(hashVersion: 1, indirectLevels: 0).encode(into: &root)
            let limit = DxBlock.limit(blockSize: bs, entries: DxBlock.rootEntries, tail: csum)
            #expect(limit == (csum ? 507 : 508))
            DxCountLimit(limit: limit, count: 3).encode(into: &root, at: DxBlock.rootEntries)
            let entries = [DxEntry(hash: 0, block: 1), DxEntry(hash: 0x1000, block: 2), DxEntry(hash: 0xF000_0000, block: 0xFFFF_FFFF)]
            for (i, e) in entries.enumerated() { e.encode(into: &root, entries: DxBlock.rootEntries, index: i) }
            if csum { DxTail.seal(&root, entries: DxBlock.rootEntries, seed: 5) }

            let info = try DxRootInfo(decoding: root)
            #expect(info == DxRootInfo(hashVersion: 1, indirectLevels: 0) && info.infoLength == 8)
            #expect(root.u8(28) == 1 && root.u8(29) == 8 && root.u8(30) == 0 && root.u8(31) == 0)
            let cl = try DxCountLimit(decoding: root, at: DxBlock.rootEntries)
            #expect(Int(cl.limit) == limit && cl.count == 3 && root.le16(32) == UInt16(limit) && root.le16(34) == 3)
            for (i, e) in entries.enumerated() {
                #expect(try DxEntry(decoding: root, entries: DxBlock.rootEntries, index: i) == e)
            }
            #expect(try DxEntry(decoding: root, entries: DxBlock.rootEntries, index: 2).block == 0x0FFF_FFFF)
            #expect(root.le32(40) == 0x1000 && root.le32(44) == 2)
            #expect(!DxBlock.isNode(root, blockSize: bs))
            if csum {
                #expect(DxTail.matches(root, entries: DxBlock.rootEntries, seed: 5))
                #expect(!DxTail.matches(root, entries: DxBlock.rootEntries, seed: 6))
                #expect(DxTail.expected(root, entries: DxBlock.rootEntries, seed: 5)?.offset == 32 + 8 * 507)
            }
            var node = [UInt8](repeating: 0, count: bs)
            DirEntryRecord(inode: 0, recLen: bs, nameLen: 0, fileType: 0).encode(into: &node, at: 0, blockSize: bs)
            #expect(DxBlock.isNode(node, blockSize: bs))
        }
    }

    @Test func htreeRejectsBadInput() {
        expectCorrupt("root info past the end") { _ = try DxRootInfo(decoding: [UInt8](repeating: 0, count: 31)) }
        let b = [UInt8](repeating: 0xFF, count: 64)
        expectCorrupt("count/limit past the end") { _ = try DxCountLimit(decoding: b, at: 62) }
        expectCorrupt("entry past the end") { _ = try DxEntry(decoding: b, entries: 32, index: 4) }
        expectCorrupt("negative entry") { _ = try DxEntry(decoding: b, entries: 8, index: -2) }
        // count and limit of 65535 in a small block: no tail, no checksum, no match, no trap.
        #expect(DxTail.expected(b, entries: 32, seed: 1) == nil && !DxTail.matches(b, entries: 32, seed: 1))
        var s = b
        DxTail.seal(&s, entries: 32, seed: 1)
        #expect(s == b)
        DxTail.seal(&s, entries: 1 << 40, seed: 1)
        #expect(s == b && !DxBlock.isNode(b, blockSize: 4096) && !DxBlock.isNode([], blockSize: 4096))
        #expect(DxBlock.limit(blockSize: 16, entries: 32, tail: true) == 0)
    }

    // MARK: xattrs

    @Test func xattrRoundTrip() throws {
        var b = [UInt8](repeating: 0, count: 1024)
        let e = XattrEntryRecord(nameLen: 3, nameIndex: XattrIndex.user, valueOffset: 1000, valueInum: 0, valueSize: 24, hash: 0xABCD)
        e.encode(into: &b, at: XattrBlockHeader.size, name: Array("big".utf8))
        XattrBlockHeader(refcount: 2, hash: 0x1234).encode(into: &b)
        XattrBlockHeader.seal(&b, block: 4242, fsSeed: 0x5EED)
        let h = try XattrBlockHeader(decoding: b)
        #expect(h.isValid && h.refcount == 2 && h.blocks == 1 && h.hash == 0x1234)
        #expect(h.checksum == XattrBlockHeader.computedChecksum(b, block: 4242, fsSeed: 0x5EED))
        #expect(h.checksum != XattrBlockHeader.computedChecksum(b, block: 4243, fsSeed: 0x5EED))
        #expect(b.le32(0) == 0xEA02_0000 && b.le32(4) == 2 && b.le32(8) == 1 && b.le32(0xC) == 0x1234)
        let d = try XattrEntryRecord(decoding: b, at: 32, end: b.count)
        #expect(d == e && d.recordSize == 20)
        #expect(try d.name(in: b, at: 32, end: b.count) == Array("big".utf8))
        #expect(b.u8(32) == 3 && b.u8(33) == 1 && b.le16(34) == 1000 && b.le32(40) == 24 && b.le32(44) == 0xABCD)
        #expect(XattrEntryRecord.isEnd(b, at: 52) && !XattrEntryRecord.isEnd(b, at: 32))
        #expect(XattrEntryRecord.size(nameLen: 255) == 272)
    }

    @Test func xattrRejectsBadInput() {
        expectCorrupt("header in 31 bytes") { _ = try XattrBlockHeader(decoding: [UInt8](repeating: 0, count: 31)) }
        var b = [UInt8](repeating: 0xFF, count: 64)
        expectCorrupt("entry past the end") { _ = try XattrEntryRecord(decoding: b, at: 50, end: 64) }
        expectCorrupt("entry past the region") { _ = try XattrEntryRecord(decoding: b, at: 0, end: 10) }
        expectCorrupt("negative offset") { _ = try XattrEntryRecord(decoding: b, at: -16, end: 64) }
        b[0] = 200   // a name of 200 bytes in a 64-byte buffer
        let e = (try? XattrEntryRecord(decoding: b, at: 0, end: 64))
        #expect(e?.nameLen == 200)
        expectCorrupt("name past the end") { _ = try e?.name(in: b, at: 0, end: 64) }
        #expect((try? XattrBlockHeader(decoding: b))?.isValid == false)
    }

    // MARK: any bytes at all

    /// Random buffers of random sizes through every decoder: they throw or
    /// decode, and nothing traps.
    @Test func superblockRecordRoundTrip() throws {
        let tmp = try TempDir(prefix: "sbrec")
        for (args, is64) in [(["-t", "ext4", "-O", "64bit,metadata_csum"], true), (["-t", "ext4", "-O", "^64bit"], false)] {
            let img = tmp.sub("sb\(is64).img")
            try mkfs(img, tree: nil, args: args, sizeMB: 16)
            let raw = Array(try readWhole(img)[1024..<2048])
            let parsed = try Superblock(raw)
            var r = parsed.record
            #expect(r.b == raw)
            #expect(r.is64 == is64 && r.freeBlocks == parsed.freeBlocksCount && r.freeInodes == parsed.freeInodesCount)
            r.freeBlocks = 0x1_2345_6789
            r.freeInodes = 77
            r.state = 0
            r.needsRecovery = true
            r.mtime = 1_700_000_000
            r.mountCount = 9
            r.lastOrphan = 12
            r.seal()
            let back = try Superblock(r.b)
            #expect(back.freeBlocksCount == (is64 ? 0x1_2345_6789 : 0x2345_6789))
            #expect(back.freeInodesCount == 77 && back.state == 0 && back.has(incompat: Incompat.recover))
            #expect(r.b.le32(0x2C) == 1_700_000_000 && r.b.le16(0x34) == 9 && r.b.le32(0xE8) == 12)
            if is64 {
                #expect(r.b.le32(0x3FC) == crc32c(~0, r.b[0..<0x3FC]), "s_checksum sealed")
            } else {
                #expect(r.b.le32(0x15C - 4) == raw.le32(0x15C - 4), "no high half written without 64bit")
            }
            r.needsRecovery = false
            #expect(!(try Superblock(r.b)).has(incompat: Incompat.recover))
            // Only these fields changed.
            let changed = (0..<1024).filter { r.b[$0] != raw[$0] }
            let allowed = Set([0xC, 0xD, 0xE, 0xF, 0x10, 0x11, 0x2C, 0x2D, 0x2E, 0x2F, 0x34, 0x35, 0x3A, 0x3B, 0xE8, 0xE9, 0xEA, 0xEB]
                              + Array(0x158..<0x15C) + Array(0x3FC..<0x400))
            #expect(changed.allSatisfy(allowed.contains), "changed: \(changed.filter { !allowed.contains($0) })")
        }
        expectCorrupt("short superblock") { _ = try SuperblockRecord([UInt8](repeating: 0, count: 1023)) }
    }

    @Test func randomBytesNeverTrap() {
        var rng = SplitMix(seed: 0x0D15_C0DE)
        var decoded = 0
        for _ in 0..<3000 {
            let n = Int(rng.below(300))
            let b = (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            let off = Int(rng.below(UInt64(n) + 24)) - 8
            let size = [64, 128, 256, n][Int(rng.below(4))]
            if let r = try? InodeRecord(ino: 1, bytes: b, inodeSize: size) {
                decoded += 1
                _ = (r.time(.crtime), r.version, r.storedChecksum, r.checksumMatches(seed: 1), r.deviceNumber,
                     r.blocks512(hugeFile: true, blockSize: 65536), r.iBlock, r.ibodyXattrStart)
                var m = r
                m.setTime(.crtime, Timespec(sec: Int64.min, nsec: UInt32.max))
                m.version = UInt64.max
                m.sealChecksum(seed: 2)
                try? m.setFsBlocks(UInt64.max / 3, hugeFile: true, blockSize: 1024)
            }
            if let g = try? GroupDescriptorRecord(block: b, offset: off, descSize: [32, 64, n][Int(rng.below(3))]) {
                decoded += 1
                _ = (g.inodeTable, g.freeBlocks, g.computedChecksum(group: 1, metadataCsum: false, fsSeed: 0, uuid: []))
            }
            if let h = try? ExtentHeader(decoding: b) {
                decoded += 1
                _ = (h.isValid(nodeBytes: n, maxDepth: 5), h.tailMatches(b, seed: 0))
                for i in 0..<min(Int(h.entries), 8) {
                    _ = try? ExtentLeafEntry(decoding: b, index: i).extent
                    _ = try? ExtentIndexEntry(decoding: b, index: i)
                }
            }
            if let d = try? DirEntryRecord(decoding: b, at: off, blockSize: [1024, 65536][Int(rng.below(2))]) {
                decoded += 1
                _ = (d.fits(at: off, end: n), d.name(in: b, at: off), d.nameEquals([1, 2], in: b, at: off))
                _ = DirLeafTail.matches(b, blockSize: n, seed: 0)
            }
            if let x = try? XattrEntryRecord(decoding: b, at: off, end: n) {
                decoded += 1
                _ = try? x.name(in: b, at: off, end: n)
            }
            _ = try? XattrBlockHeader(decoding: b)
            if let i = try? DxRootInfo(decoding: b) { decoded += 1; _ = i.indirectLevels }
            for entries in [off, DxBlock.nodeEntries, DxBlock.rootEntries] {
                if let cl = try? DxCountLimit(decoding: b, at: entries) {
                    for k in 0..<min(Int(cl.count), 8) { _ = try? DxEntry(decoding: b, entries: entries, index: k) }
                }
                _ = (DxTail.matches(b, entries: entries, seed: 3), DxBlock.isNode(b, blockSize: n))
                var m = b
                DxTail.seal(&m, entries: entries, seed: 3)
            }
        }
        #expect(decoded > 1000)
    }

    // MARK: a real image

    /// mkfs (64-bit descriptors, metadata_csum) as the oracle: the group
    /// descriptor, the root inode, its extent root, its first directory block
    /// and an xattr block decode, and every checksum matches.
    @Test func mkfsImageDecodes() throws {
        let tmp = try TempDir()
        let tree = tmp.sub("tree")
        try FileManager.default.createDirectory(atPath: tree, withIntermediateDirectories: true)
        try writeFile(tree + "/f", Array("data\n".utf8))
        try run("/usr/bin/setfattr", ["-n", "user.big", "-v", String(repeating: "v", count: 600), tree + "/f"])
        let img = tmp.sub("fs.img")
        try mkfs(img, tree: tree, args: ["-t", "ext4", "-b", "4096", "-I", "256", "-O", "64bit,metadata_csum"], sizeMB: 16)
        let disk = try readWhole(img)
        func block(_ n: UInt64) throws -> [UInt8] {
            guard let b = disk.sub(Int(n) * 4096, 4096) else { throw Ext4Error.corrupted("block \(n) past the image") }
            return b
        }
        let sb = try Superblock(Array(disk[1024..<2048]))
        #expect(sb.descSize == 64 && sb.metadataCsum && sb.inodeSize == 256)
        let fsSeed = sb.has(incompat: Incompat.csumSeed) ? sb.checksumSeed : crc32c(~0, sb.uuid)

        let gd = try GroupDescriptorRecord(block: try block(1), offset: 0, descSize: 64)
        #expect(gd.checksum == gd.computedChecksum(group: 0, metadataCsum: true, fsSeed: fsSeed, uuid: sb.uuid))
        #expect(gd.blockBitmapChecksum == crc32c(fsSeed, try block(gd.blockBitmap)[0..<(Int(sb.blocksPerGroup) / 8)]))
        #expect(gd.inodeBitmapChecksum == crc32c(fsSeed, try block(gd.inodeBitmap)[0..<(Int(sb.inodesPerGroup) / 8)]))
        let dumpe2fs = try run("/usr/sbin/dumpe2fs", [img])
        #expect(dumpe2fs.contains("Inode table at \(gd.inodeTable)-"))
        #expect(dumpe2fs.contains("\(gd.freeInodes) free inodes"))

        func inode(_ ino: UInt32) throws -> InodeRecord {
            let slot = Int(ino - 1) * 256
            let tb = try block(gd.inodeTable + UInt64(slot / 4096))
            return try InodeRecord(ino: ino, bytes: Array(tb[(slot % 4096)..<(slot % 4096 + 256)]), inodeSize: 256)
        }
        let root = try inode(2)
        let rootSeed = root.checksumSeed(fsSeed: fsSeed)
        #expect(root.checksumMatches(seed: rootSeed) && root.isDir && root.hasExtents && root.extraIsize == 32)
        let stat = try run("/usr/sbin/debugfs", ["-R", "stat <2>", img])
        #expect(stat.contains("Generation: \(root.generation) "))
        #expect(stat.contains("Links: \(root.links) "))

        let h = try ExtentHeader(decoding: root.iBlock)
        #expect(h.isValid(nodeBytes: 60, maxDepth: 5) && h.depth == 0 && h.entries == 1 && h.max == 4)
        let x = try ExtentLeafEntry(decoding: root.iBlock, index: 0).extent
        #expect(x.logical == 0 && x.length >= 1 && !x.unwritten)
        let dir = try block(x.physical)
        #expect(DirLeafTail.matches(dir, blockSize: 4096, seed: rootSeed))
        var names: [String: UInt32] = [:]
        var off = 0
        while off < 4096 - DirLeafTail.size {
            let d = try DirEntryRecord(decoding: dir, at: off, blockSize: 4096)
            #expect(d.fits(at: off, end: 4096 - DirLeafTail.size))
            if d.inode != 0, let n = d.name(in: dir, at: off) { names[String(decoding: n, as: UTF8.self)] = d.inode }
            off += max(d.recLen, DirEntryRecord.minSize)
        }
        #expect(names["."] == 2 && names[".."] == 2 && names["lost+found"] != nil)
        let fino = try #require(names["f"])

        let f = try inode(fino)
        #expect(f.checksumMatches(seed: f.checksumSeed(fsSeed: fsSeed)) && f.size == 5)
        let acl = f.fileACL(sb.is64)
        #expect(acl != 0)
        let xb = try block(acl)
        let xh = try XattrBlockHeader(decoding: xb)
        #expect(xh.isValid && xh.refcount == 1)
        #expect(xh.checksum == XattrBlockHeader.computedChecksum(xb, block: acl, fsSeed: fsSeed))
        let e = try XattrEntryRecord(decoding: xb, at: XattrBlockHeader.size, end: xb.count)
        #expect(e.nameIndex == XattrIndex.user && e.valueSize == 600)
        #expect(try e.name(in: xb, at: XattrBlockHeader.size, end: xb.count) == Array("big".utf8))
        #expect(xb.sub(Int(e.valueOffset), 600) == Array(String(repeating: "v", count: 600).utf8))
    }
}
