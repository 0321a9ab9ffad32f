/// Typed views of the ext4 on-disk records, one per record, shared by the read
/// and the write side: the inode, the group descriptor, the extent tree node
/// (header, leaf entry, index entry, checksum tail), the directory entry (and
/// the leaf checksum tail), the htree index (root info, count/limit, entries,
/// tail), the xattr block header and xattr entry. The jbd2 records are in
/// JournalFormat.swift.
///
/// Offsets and widths follow the ext4 on-disk format documentation
/// (Documentation/filesystems/ext4 in the kernel tree); every field is
/// little-endian. Decoders check that the bytes they read are there and throw
/// `.corrupted` otherwise; no accessor traps, whatever the buffer or the field
/// values. Encoders write into buffers the engine sized itself and clip
/// rather than trap. The engine's callers add their context (inode, block) and
/// log the error through `Ext4FileSystem.reported`.
enum OnDisk {
    /// `[off, off + len)` must lie inside a buffer of `count` bytes.
    @inline(__always)
    static func need(_ count: Int, _ off: Int, _ len: Int, _ what: @autoclosure () -> String) throws(Ext4Error) {
        guard off >= 0, len >= 0, off <= count, len <= count - off else {
            throw .corrupted("\(what()): \(len) bytes at offset \(off) do not fit in \(count)")
        }
    }

    /// `base + stride * index`, or -1 (which no buffer holds) when that overflows.
    @inline(__always)
    static func offset(_ base: Int, _ stride: Int, _ index: Int) -> Int {
        let (m, o1) = stride.multipliedReportingOverflow(by: index)
        let (r, o2) = base.addingReportingOverflow(m)
        return o1 || o2 ? -1 : r
    }
}

// MARK: - Inode

/// One inode table slot ("struct ext4_inode"): the 128-byte original inode
/// followed, when the inode size is larger, by `i_extra_isize` bytes of extra
/// fields and the in-inode xattr area. Extra fields are read and written only
/// where `i_extra_isize` covers them; hi/lo halves are joined here.
struct InodeRecord: Sendable {
    /// The original (revision 0) inode.
    static let baseSize = 128
    /// Bytes of i_block (block map, extent root, fast symlink or inline data).
    static let blockBytes = 60

    enum Off {
        static let mode = 0x0, uidLo = 0x2, sizeLo = 0x4, atime = 0x8, ctime = 0xC, mtime = 0x10, dtime = 0x14
        static let gidLo = 0x18, linksCount = 0x1A, blocksLo = 0x1C, flags = 0x20, versionLo = 0x24, block = 0x28
        static let generation = 0x64, fileACLLo = 0x68, sizeHi = 0x6C
        static let blocksHi = 0x74, fileACLHi = 0x76, uidHi = 0x78, gidHi = 0x7A, checksumLo = 0x7C
        // Extra fields: present when 128 + i_extra_isize reaches past them.
        static let extraIsize = 0x80, checksumHi = 0x82
        static let ctimeExtra = 0x84, mtimeExtra = 0x88, atimeExtra = 0x8C
        static let crtime = 0x90, crtimeExtra = 0x94, versionHi = 0x98, projid = 0x9C
    }

    let ino: UInt32
    /// The slot's bytes, exactly `inodeSize` of them. Writing them directly
    /// bypasses the typed fields; only the in-inode xattr area is laid out
    /// that way (XattrWrite.swift).
    var b: [UInt8]
    let inodeSize: Int

    /// Decode the slot of inode `ino`: `bytes` must be one whole slot and
    /// i_extra_isize must stay inside it and be a multiple of 4.
    init(ino: UInt32, bytes: [UInt8], inodeSize: Int) throws(Ext4Error) {
        guard inodeSize >= InodeRecord.baseSize, bytes.count == inodeSize else {
            throw .corrupted("inode \(ino): a \(bytes.count)-byte record for \(inodeSize)-byte inodes")
        }
        if inodeSize > InodeRecord.baseSize {
            let extra = Int(bytes.le16(Off.extraIsize))
            guard extra <= inodeSize - InodeRecord.baseSize, extra & 3 == 0 else {
                throw .corrupted("inode \(ino): bad extra_isize \(extra)")
            }
        }
        self.ino = ino
        self.b = bytes
        self.inodeSize = inodeSize
    }

    /// A zeroed slot (a new inode) with i_extra_isize set to `extraIsize`,
    /// rounded down to a multiple of 4 and clipped to the slot.
    init(blank ino: UInt32, inodeSize: Int, extraIsize: Int) {
        self.ino = ino
        self.inodeSize = Swift.max(inodeSize, InodeRecord.baseSize)
        b = [UInt8](repeating: 0, count: self.inodeSize)
        if self.inodeSize > InodeRecord.baseSize {
            let e = Swift.min(Swift.max(extraIsize, 0), self.inodeSize - InodeRecord.baseSize) & ~3
            b.putLE16(Off.extraIsize, UInt16(clamping: e))
        }
    }

    /// Bytes of extra fields (0 for 128-byte inodes).
    var extraIsize: Int { inodeSize > InodeRecord.baseSize ? Int(b.le16(Off.extraIsize)) : 0 }

    /// Does i_extra_isize cover `[off, off + len)`?
    func hasExtra(_ off: Int, _ len: Int) -> Bool {
        inodeSize > InodeRecord.baseSize && off &+ len <= InodeRecord.baseSize + extraIsize && off &+ len <= b.count
    }

    /// Where the in-inode xattr area starts (nil when the slot has none).
    var ibodyXattrStart: Int? {
        let s = InodeRecord.baseSize + extraIsize
        return inodeSize > InodeRecord.baseSize && s + XattrIbodyHeader.size <= b.count ? s : nil
    }

    var mode: UInt16 { get { b.le16(Off.mode) } set { b.putLE16(Off.mode, newValue) } }
    var fileType: FileType { FileType(mode: mode) }
    var isDir: Bool { mode & 0xF000 == 0x4000 }

    var uid: UInt32 {
        get { UInt32(b.le16(Off.uidLo)) | UInt32(b.le16(Off.uidHi)) << 16 }
        set {
            b.putLE16(Off.uidLo, UInt16(truncatingIfNeeded: newValue))
            b.putLE16(Off.uidHi, UInt16(truncatingIfNeeded: newValue >> 16))
        }
    }
    var gid: UInt32 {
        get { UInt32(b.le16(Off.gidLo)) | UInt32(b.le16(Off.gidHi)) << 16 }
        set {
            b.putLE16(Off.gidLo, UInt16(truncatingIfNeeded: newValue))
            b.putLE16(Off.gidHi, UInt16(truncatingIfNeeded: newValue >> 16))
        }
    }
    var size: UInt64 {
        get { UInt64(b.le32(Off.sizeLo)) | UInt64(b.le32(Off.sizeHi)) << 32 }
        set {
            b.putLE32(Off.sizeLo, UInt32(truncatingIfNeeded: newValue))
            b.putLE32(Off.sizeHi, UInt32(truncatingIfNeeded: newValue >> 32))
        }
    }
    var links: UInt16 { get { b.le16(Off.linksCount) } set { b.putLE16(Off.linksCount, newValue) } }
    var flags: UInt32 { get { b.le32(Off.flags) } set { b.putLE32(Off.flags, newValue) } }
    /// i_dtime; the next inode of the orphan chain while the inode is on it.
    var dtime: UInt32 { get { b.le32(Off.dtime) } set { b.putLE32(Off.dtime, newValue) } }
    var generation: UInt32 { get { b.le32(Off.generation) } set { b.putLE32(Off.generation, newValue) } }
    var hasExtents: Bool { flags & InodeFlag.extents != 0 }
    var hasInline: Bool { flags & InodeFlag.inlineData != 0 }

    /// i_block, always 60 bytes; a shorter value is zero-padded, a longer one cut.
    var iBlock: [UInt8] {
        get { b.sub(Off.block, InodeRecord.blockBytes) ?? [UInt8](repeating: 0, count: InodeRecord.blockBytes) }
        set {
            var v = Array(newValue.prefix(InodeRecord.blockBytes))
            if v.count < InodeRecord.blockBytes { v += [UInt8](repeating: 0, count: InodeRecord.blockBytes - v.count) }
            b.putBytes(Off.block, v)
        }
    }

    /// i_file_acl (the xattr block); the high half only on 64-bit file systems.
    func fileACL(_ is64: Bool) -> UInt64 {
        UInt64(b.le32(Off.fileACLLo)) | (is64 ? UInt64(b.le16(Off.fileACLHi)) << 32 : 0)
    }
    mutating func setFileACL(_ v: UInt64) {
        b.putLE32(Off.fileACLLo, UInt32(truncatingIfNeeded: v))
        b.putLE16(Off.fileACLHi, UInt16(truncatingIfNeeded: v >> 32))
    }

    /// i_version: the low half in osd1, the high half when the extra fields hold it.
    var version: UInt64 {
        get {
            UInt64(b.le32(Off.versionLo)) | (hasExtra(Off.versionHi, 4) ? UInt64(b.le32(Off.versionHi)) << 32 : 0)
        }
        set {
            b.putLE32(Off.versionLo, UInt32(truncatingIfNeeded: newValue))
            if hasExtra(Off.versionHi, 4) { b.putLE32(Off.versionHi, UInt32(truncatingIfNeeded: newValue >> 32)) }
        }
    }
    mutating func bumpVersion() { version &+= 1 }

    // ---- timestamps ----

    enum TimeField { case atime, ctime, mtime, crtime }

    private static func timeOffsets(_ f: TimeField) -> (base: Int, extra: Int) {
        switch f {
        case .atime: return (Off.atime, Off.atimeExtra)
        case .ctime: return (Off.ctime, Off.ctimeExtra)
        case .mtime: return (Off.mtime, Off.mtimeExtra)
        case .crtime: return (Off.crtime, Off.crtimeExtra)
        }
    }

    /// Is there an i_crtime?
    var hasCrtime: Bool { hasExtra(Off.crtime, 4) }

    /// A timestamp: signed 32-bit seconds, extended by the two epoch bits and
    /// the nanoseconds of its `_extra` field when the extra fields hold it.
    /// An absent i_crtime reads as zero.
    func time(_ f: TimeField) -> Timespec {
        let (base, extra) = InodeRecord.timeOffsets(f)
        if f == .crtime && !hasCrtime { return Timespec(sec: 0, nsec: 0) }
        var sec = Int64(Int32(bitPattern: b.le32(base)))
        var nsec: UInt32 = 0
        if hasExtra(extra, 4) {
            let e = b.le32(extra)
            sec += Int64(e & 3) << 32
            nsec = e >> 2
        }
        return Timespec(sec: sec, nsec: nsec)
    }

    mutating func setTime(_ f: TimeField, _ t: Timespec) {
        let (base, extra) = InodeRecord.timeOffsets(f)
        if f == .crtime && !hasCrtime { return }
        b.putLE32(base, UInt32(truncatingIfNeeded: t.sec))
        if hasExtra(extra, 4) {
            let epoch = UInt32(truncatingIfNeeded: (t.sec &- Int64(Int32(truncatingIfNeeded: t.sec))) >> 32) & 3
            b.putLE32(extra, epoch | (Swift.min(t.nsec, 999_999_999) << 2))
        }
    }

    // ---- device numbers ----

    /// The device number of a character or block special file, kept in
    /// i_block: the old 8:8 encoding in its first word, else the new 12:20
    /// one in its second.
    var deviceNumber: (major: UInt32, minor: UInt32) {
        let old = b.le32(Off.block)
        if old != 0 { return ((old >> 8) & 0xFF, old & 0xFF) }
        let n = b.le32(Off.block + 4)
        return ((n & 0xFFF00) >> 8, (n & 0xFF) | ((n >> 12) & 0xFFF00))
    }

    mutating func setDeviceNumber(major: UInt32, minor: UInt32) {
        b.putLE32(Off.block, 0)
        b.putLE32(Off.block + 4, 0)
        if major < 256 && minor < 256 {
            b.putLE32(Off.block, (major << 8) | minor)
        } else {
            b.putLE32(Off.block + 4, (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12))
        }
    }

    // ---- i_blocks ----

    /// i_blocks as stored: 32 bits, 48 with huge_file.
    func blocksField(hugeFile: Bool) -> UInt64 {
        UInt64(b.le32(Off.blocksLo)) | (hugeFile ? UInt64(b.le16(Off.blocksHi)) << 32 : 0)
    }

    /// i_blocks in 512-byte units (an inode with the HUGE_FILE flag counts file-system blocks).
    func blocks512(hugeFile: Bool, blockSize: Int) -> UInt64 {
        let v = blocksField(hugeFile: hugeFile)
        if hugeFile && flags & InodeFlag.hugeFile != 0 { return v &* UInt64(Swift.max(1, blockSize / 512)) }
        return v
    }

    /// i_blocks in file-system blocks.
    func fsBlocks(hugeFile: Bool, blockSize: Int) -> UInt64 {
        let v = blocksField(hugeFile: hugeFile)
        if hugeFile && flags & InodeFlag.hugeFile != 0 { return v }
        return v / UInt64(Swift.max(1, blockSize / 512))
    }

    /// Set i_blocks to `n` file-system blocks: in 512-byte units while they
    /// fit (48 bits with huge_file), else in blocks with the HUGE_FILE flag.
    mutating func setFsBlocks(_ n: UInt64, hugeFile: Bool, blockSize: Int) throws(Ext4Error) {
        let (units, o) = n.multipliedReportingOverflow(by: UInt64(Swift.max(1, blockSize / 512)))
        var f = flags & ~InodeFlag.hugeFile
        let v: UInt64
        if !o && units < (1 << 32) {
            v = units
        } else if hugeFile && !o && units < (1 << 48) {
            v = units
        } else if hugeFile && n < (1 << 48) {
            f |= InodeFlag.hugeFile
            v = n
        } else {
            throw .fileTooBig
        }
        b.putLE32(Off.blocksLo, UInt32(truncatingIfNeeded: v))
        b.putLE16(Off.blocksHi, UInt16(truncatingIfNeeded: v >> 32))
        flags = f
    }

    // ---- checksum (metadata_csum) ----

    /// The per-inode checksum seed: crc32c of the inode number and generation
    /// over the file system's seed. Directory, extent and htree blocks of the
    /// inode are checksummed with it too.
    static func checksumSeed(fsSeed: UInt32, ino: UInt32, generation: UInt32) -> UInt32 {
        crc32c(crc32c(fsSeed, leBytes32(ino)), leBytes32(generation))
    }

    func checksumSeed(fsSeed: UInt32) -> UInt32 {
        InodeRecord.checksumSeed(fsSeed: fsSeed, ino: ino, generation: generation)
    }

    /// Is there an i_checksum_hi (i_extra_isize >= 4)?
    var hasChecksumHi: Bool { hasExtra(Off.checksumHi, 2) }

    var storedChecksum: UInt32 {
        get { UInt32(b.le16(Off.checksumLo)) | (hasChecksumHi ? UInt32(b.le16(Off.checksumHi)) << 16 : 0) }
        set {
            b.putLE16(Off.checksumLo, UInt16(truncatingIfNeeded: newValue))
            if hasChecksumHi { b.putLE16(Off.checksumHi, UInt16(truncatingIfNeeded: newValue >> 16)) }
        }
    }

    /// crc32c over the whole slot with both checksum fields taken as zero.
    func computedChecksum(seed: UInt32) -> UInt32 {
        var z = b
        z.putLE16(Off.checksumLo, 0)
        if hasChecksumHi { z.putLE16(Off.checksumHi, 0) }
        return crc32c(seed, z)
    }

    /// The stored checksum matches (only its low 16 bits without i_checksum_hi).
    func checksumMatches(seed: UInt32) -> Bool {
        let c = computedChecksum(seed: seed)
        if hasChecksumHi { return c == storedChecksum }
        return UInt16(truncatingIfNeeded: c) == UInt16(truncatingIfNeeded: storedChecksum)
    }

    mutating func sealChecksum(seed: UInt32) { storedChecksum = computedChecksum(seed: seed) }
}

// MARK: - Group descriptor

/// One block group descriptor ("struct ext4_group_desc"): 32 bytes, or
/// s_desc_size (64 or more) on 64-bit file systems, where the high halves of
/// the counters and block numbers live in the second 32 bytes.
struct GroupDescriptorRecord: Sendable {
    static let size32 = 32
    /// The first size with the high halves.
    static let size64 = 64

    enum Off {
        static let blockBitmapLo = 0x0, inodeBitmapLo = 0x4, inodeTableLo = 0x8
        static let freeBlocksLo = 0xC, freeInodesLo = 0xE, usedDirsLo = 0x10, flags = 0x12
        static let excludeBitmapLo = 0x14, blockBitmapCsumLo = 0x18, inodeBitmapCsumLo = 0x1A
        static let itableUnusedLo = 0x1C, checksum = 0x1E
        static let blockBitmapHi = 0x20, inodeBitmapHi = 0x24, inodeTableHi = 0x28
        static let freeBlocksHi = 0x2C, freeInodesHi = 0x2E, usedDirsHi = 0x30, itableUnusedHi = 0x32
        static let excludeBitmapHi = 0x34, blockBitmapCsumHi = 0x38, inodeBitmapCsumHi = 0x3A
    }

    /// bg_flags bits.
    enum Flag {
        static let inodeUninit: UInt16 = 0x1, blockUninit: UInt16 = 0x2, itableZeroed: UInt16 = 0x4
    }

    /// The descriptor's bytes (s_desc_size of them).
    private(set) var b: [UInt8]

    /// Decode one descriptor of `descSize` bytes (32, or 64 and up).
    init(_ bytes: [UInt8], descSize: Int) throws(Ext4Error) {
        guard descSize >= GroupDescriptorRecord.size32,
              descSize == GroupDescriptorRecord.size32 || descSize >= GroupDescriptorRecord.size64 else {
            throw .corrupted("invalid group descriptor size \(descSize)")
        }
        guard bytes.count == descSize else {
            throw .corrupted("group descriptor of \(bytes.count) bytes where \(descSize) expected")
        }
        b = bytes
    }

    /// Decode the descriptor at `offset` of a descriptor table block.
    init(block: [UInt8], offset: Int, descSize: Int) throws(Ext4Error) {
        try OnDisk.need(block.count, offset, descSize, "group descriptor")
        guard let d = block.sub(offset, descSize) else { throw .corrupted("group descriptor out of block") }
        try self.init(d, descSize: descSize)
    }

    var descSize: Int { b.count }
    /// Are the high halves there?
    var is64: Bool { b.count >= GroupDescriptorRecord.size64 }

    private func get64(_ lo: Int, _ hi: Int) -> UInt64 {
        UInt64(b.le32(lo)) | (is64 ? UInt64(b.le32(hi)) << 32 : 0)
    }
    private mutating func put64(_ lo: Int, _ hi: Int, _ v: UInt64) {
        b.putLE32(lo, UInt32(truncatingIfNeeded: v))
        if is64 { b.putLE32(hi, UInt32(truncatingIfNeeded: v >> 32)) }
    }
    private func get32(_ lo: Int, _ hi: Int) -> UInt32 {
        UInt32(b.le16(lo)) | (is64 ? UInt32(b.le16(hi)) << 16 : 0)
    }
    private mutating func put32(_ lo: Int, _ hi: Int, _ v: UInt32) {
        b.putLE16(lo, UInt16(truncatingIfNeeded: v))
        if is64 { b.putLE16(hi, UInt16(truncatingIfNeeded: v >> 16)) }
    }

    var blockBitmap: UInt64 {
        get { get64(Off.blockBitmapLo, Off.blockBitmapHi) }
        set { put64(Off.blockBitmapLo, Off.blockBitmapHi, newValue) }
    }
    var inodeBitmap: UInt64 {
        get { get64(Off.inodeBitmapLo, Off.inodeBitmapHi) }
        set { put64(Off.inodeBitmapLo, Off.inodeBitmapHi, newValue) }
    }
    var inodeTable: UInt64 {
        get { get64(Off.inodeTableLo, Off.inodeTableHi) }
        set { put64(Off.inodeTableLo, Off.inodeTableHi, newValue) }
    }
    var excludeBitmap: UInt64 {
        get { get64(Off.excludeBitmapLo, Off.excludeBitmapHi) }
        set { put64(Off.excludeBitmapLo, Off.excludeBitmapHi, newValue) }
    }
    var freeBlocks: UInt32 {
        get { get32(Off.freeBlocksLo, Off.freeBlocksHi) }
        set { put32(Off.freeBlocksLo, Off.freeBlocksHi, newValue) }
    }
    var freeInodes: UInt32 {
        get { get32(Off.freeInodesLo, Off.freeInodesHi) }
        set { put32(Off.freeInodesLo, Off.freeInodesHi, newValue) }
    }
    var usedDirs: UInt32 {
        get { get32(Off.usedDirsLo, Off.usedDirsHi) }
        set { put32(Off.usedDirsLo, Off.usedDirsHi, newValue) }
    }
    var itableUnused: UInt32 {
        get { get32(Off.itableUnusedLo, Off.itableUnusedHi) }
        set { put32(Off.itableUnusedLo, Off.itableUnusedHi, newValue) }
    }
    /// crc32c of the block bitmap (metadata_csum); the high half only in 64-bit descriptors.
    var blockBitmapChecksum: UInt32 {
        get { get32(Off.blockBitmapCsumLo, Off.blockBitmapCsumHi) }
        set { put32(Off.blockBitmapCsumLo, Off.blockBitmapCsumHi, newValue) }
    }
    var inodeBitmapChecksum: UInt32 {
        get { get32(Off.inodeBitmapCsumLo, Off.inodeBitmapCsumHi) }
        set { put32(Off.inodeBitmapCsumLo, Off.inodeBitmapCsumHi, newValue) }
    }
    var flags: UInt16 { get { b.le16(Off.flags) } set { b.putLE16(Off.flags, newValue) } }
    var checksum: UInt16 { get { b.le16(Off.checksum) } set { b.putLE16(Off.checksum, newValue) } }

    /// bg_checksum of group `group`: with metadata_csum the low 16 bits of
    /// crc32c(fs seed, group, descriptor with bg_checksum zero); with
    /// uninit_bg (gdt_csum) crc16 over the uuid, the group and the descriptor
    /// without bg_checksum.
    func computedChecksum(group: UInt32, metadataCsum: Bool, fsSeed: UInt32, uuid: [UInt8]) -> UInt16 {
        if metadataCsum {
            var z = b
            z.putLE16(Off.checksum, 0)
            return UInt16(truncatingIfNeeded: crc32c(crc32c(fsSeed, leBytes32(group)), z))
        }
        var c = crc16(0xFFFF, uuid[...])
        c = crc16(c, leBytes32(group)[...])
        c = crc16(c, b[0..<Off.checksum])
        let after = Off.checksum + 2
        if b.count > after { c = crc16(c, b[after..<b.count]) }
        return c
    }
}

// MARK: - Extent tree

/// The 12-byte header of every extent tree node ("struct ext4_extent_header"),
/// in i_block (the root, room for 4 entries) and in index and leaf blocks.
struct ExtentHeader: Sendable, Equatable {
    static let size = 12
    static let magicValue: UInt16 = 0xF30A
    /// Entries in the 60-byte root in i_block.
    static let rootCapacity = 4

    var magic: UInt16
    var entries: UInt16
    var max: UInt16
    var depth: UInt16
    var generation: UInt32

    init(entries: Int, max: Int, depth: Int) {
        magic = ExtentHeader.magicValue
        self.entries = UInt16(clamping: entries)
        self.max = UInt16(clamping: max)
        self.depth = UInt16(clamping: depth)
        generation = 0
    }

    /// Decode the header at the start of `node` (which must hold 12 bytes).
    init(decoding node: [UInt8]) throws(Ext4Error) {
        try OnDisk.need(node.count, 0, ExtentHeader.size, "extent header")
        magic = node.le16(0)
        entries = node.le16(2)
        max = node.le16(4)
        depth = node.le16(6)
        generation = node.le32(8)
    }

    func encode(into node: inout [UInt8]) {
        node.putLE16(0, magic)
        node.putLE16(2, entries)
        node.putLE16(4, max)
        node.putLE16(6, depth)
        node.putLE32(8, generation)
    }

    /// Entries a node of `nodeBytes` bytes has room for.
    static func capacity(nodeBytes: Int) -> Int { Swift.max(0, (nodeBytes - size) / ExtentLeafEntry.size) }

    /// Byte offset of entry `i` in a node.
    static func entryOffset(_ i: Int) -> Int { OnDisk.offset(size, ExtentLeafEntry.size, i) }

    /// The shape every node must have: the magic, eh_max within the node,
    /// eh_entries within eh_max, a depth within `maxDepth`.
    func isValid(nodeBytes: Int, maxDepth: Int) -> Bool {
        magic == ExtentHeader.magicValue && Int(max) <= ExtentHeader.capacity(nodeBytes: nodeBytes)
            && entries <= max && Int(depth) <= maxDepth
    }

    /// Offset of the checksum tail ("struct ext4_extent_tail") of a block
    /// node: right after eh_max entries.
    var tailOffset: Int { ExtentHeader.entryOffset(Int(max)) }

    /// crc32c (with the inode's seed) over the node up to its tail; nil when
    /// the node has no room for the tail.
    func tailChecksum(_ node: [UInt8], seed: UInt32) -> UInt32? {
        let t = tailOffset
        guard t &+ 4 <= node.count else { return nil }
        return crc32c(seed, node[0..<t])
    }

    /// Does the stored tail match?
    func tailMatches(_ node: [UInt8], seed: UInt32) -> Bool {
        guard let c = tailChecksum(node, seed: seed) else { return false }
        return c == node.le32(tailOffset)
    }

    /// Write the tail (when there is room for it).
    func sealTail(_ node: inout [UInt8], seed: UInt32) {
        if let c = tailChecksum(node, seed: seed) { node.putLE32(tailOffset, c) }
    }
}

/// A leaf entry ("struct ext4_extent"): 32-bit logical block, 16-bit length
/// (above 32768: unwritten, length - 32768), 48-bit physical start.
struct ExtentLeafEntry: Sendable, Equatable {
    static let size = 12
    /// Longest initialized extent; unwritten ones hold one block less.
    static let maxInitLength: UInt16 = 32768

    var logical: UInt32
    var rawLength: UInt16
    var start: UInt64

    init(logical: UInt32, rawLength: UInt16, start: UInt64) {
        self.logical = logical; self.rawLength = rawLength; self.start = start
    }

    /// The on-disk form of `x` (logical and length truncated to their widths;
    /// the write side keeps them in range).
    init(_ x: Extent) {
        logical = UInt32(truncatingIfNeeded: x.logical)
        rawLength = UInt16(truncatingIfNeeded: x.unwritten ? x.length &+ UInt64(ExtentLeafEntry.maxInitLength) : x.length)
        start = x.physical & 0xFFFF_FFFF_FFFF
    }

    /// Decode entry `index` of `node`.
    init(decoding node: [UInt8], index: Int) throws(Ext4Error) {
        try self.init(decoding: node, at: ExtentHeader.entryOffset(index))
    }

    /// Decode the entry at byte offset `o`.
    init(decoding node: [UInt8], at o: Int) throws(Ext4Error) {
        try OnDisk.need(node.count, o, ExtentLeafEntry.size, "extent entry")
        logical = node.le32(o)
        rawLength = node.le16(o &+ 4)
        start = UInt64(node.le16(o &+ 6)) << 32 | UInt64(node.le32(o &+ 8))
    }

    var isUnwritten: Bool { rawLength > ExtentLeafEntry.maxInitLength }
    var length: UInt64 { UInt64(isUnwritten ? rawLength - ExtentLeafEntry.maxInitLength : rawLength) }
    var extent: Extent { Extent(logical: UInt64(logical), physical: start, length: length, unwritten: isUnwritten) }

    func encode(into node: inout [UInt8], index: Int) { encode(into: &node, at: ExtentHeader.entryOffset(index)) }

    func encode(into node: inout [UInt8], at o: Int) {
        node.putLE32(o, logical)
        node.putLE16(o &+ 4, rawLength)
        node.putLE16(o &+ 6, UInt16(truncatingIfNeeded: start >> 32))
        node.putLE32(o &+ 8, UInt32(truncatingIfNeeded: start))
    }
}

/// An index entry ("struct ext4_extent_idx"): the first logical block its
/// subtree covers and the 48-bit block of the child node.
struct ExtentIndexEntry: Sendable, Equatable {
    static let size = 12

    var logical: UInt32
    var child: UInt64

    init(logical: UInt32, child: UInt64) {
        self.logical = logical; self.child = child & 0xFFFF_FFFF_FFFF
    }

    init(decoding node: [UInt8], index: Int) throws(Ext4Error) {
        try self.init(decoding: node, at: ExtentHeader.entryOffset(index))
    }

    init(decoding node: [UInt8], at o: Int) throws(Ext4Error) {
        try OnDisk.need(node.count, o, ExtentIndexEntry.size, "extent index")
        logical = node.le32(o)
        child = UInt64(node.le16(o &+ 8)) << 32 | UInt64(node.le32(o &+ 4))
    }

    func encode(into node: inout [UInt8], index: Int) { encode(into: &node, at: ExtentHeader.entryOffset(index)) }

    func encode(into node: inout [UInt8], at o: Int) {
        node.putLE32(o, logical)
        node.putLE32(o &+ 4, UInt32(truncatingIfNeeded: child))
        node.putLE16(o &+ 8, UInt16(truncatingIfNeeded: child >> 32))
        node.putLE16(o &+ 10, 0)
    }
}

// MARK: - Directory entries

/// The header of a directory entry ("struct ext4_dir_entry_2"): inode,
/// rec_len, name_len, file_type; the name follows. rec_len is stored in a
/// compact form on 64 KiB blocks.
struct DirEntryRecord: Sendable, Equatable {
    static let headerSize = 8
    /// The smallest record (an empty name, rounded up).
    static let minSize = 12

    var inode: UInt32
    /// Decoded rec_len in bytes.
    var recLen: Int
    var nameLen: Int
    var fileType: UInt8

    init(inode: UInt32, recLen: Int, nameLen: Int, fileType: UInt8) {
        self.inode = inode; self.recLen = recLen; self.nameLen = nameLen; self.fileType = fileType
    }

    /// Decode the header at `off` of `b`. Only checks that the header is
    /// there; `fits(at:end:)` checks the record's shape.
    init(decoding b: [UInt8], at off: Int, blockSize: Int) throws(Ext4Error) {
        try OnDisk.need(b.count, off, DirEntryRecord.headerSize, "directory entry header")
        inode = b.le32(off)
        recLen = DirEntryRecord.decodeRecLen(b.le16(off &+ 4), blockSize: blockSize)
        nameLen = Int(b.u8(off &+ 6))
        fileType = b.u8(off &+ 7)
    }

    /// Bytes a record for a name of `nameLen` bytes needs.
    static func size(nameLen: Int) -> Int { (headerSize + nameLen + 3) & ~3 }

    /// A record that starts at `off` and must end by `end`: rec_len at least
    /// 12, a multiple of 4, room for its name, and inside `[off, end)`.
    func fits(at off: Int, end: Int) -> Bool {
        recLen >= DirEntryRecord.minSize && recLen % 4 == 0 && recLen >= DirEntryRecord.size(nameLen: nameLen)
            && recLen <= end - off
    }

    static func decodeRecLen(_ v: UInt16, blockSize: Int) -> Int {
        if blockSize < 65536 { return Int(v) }
        if v == 65535 || v == 0 { return blockSize }
        return Int(v & 65532) | (Int(v & 3) << 16)
    }

    static func encodeRecLen(_ n: Int, blockSize: Int) -> UInt16 {
        if blockSize < 65536 { return UInt16(truncatingIfNeeded: n) }
        if n >= 65536 { return 65535 }
        return UInt16(truncatingIfNeeded: n & 65532) | UInt16(truncatingIfNeeded: (n >> 16) & 3)
    }

    /// The name of the record at `off` (nil when it does not fit in `b`).
    func name(in b: [UInt8], at off: Int) -> [UInt8]? { b.sub(off &+ DirEntryRecord.headerSize, nameLen) }

    /// Is the name of the record at `off` equal to `name`, compared in place?
    func nameEquals(_ name: [UInt8], in b: [UInt8], at off: Int) -> Bool {
        let s = off &+ DirEntryRecord.headerSize
        guard nameLen == name.count, s >= 0, s <= b.count, nameLen <= b.count - s else { return false }
        return b[s..<(s &+ nameLen)].elementsEqual(name)
    }

    /// Write the header at `off` (clipped to `b`).
    func encode(into b: inout [UInt8], at off: Int, blockSize: Int) {
        b.putLE32(off, inode)
        b.putLE16(off &+ 4, DirEntryRecord.encodeRecLen(recLen, blockSize: blockSize))
        b.putU8(off &+ 6, UInt8(truncatingIfNeeded: nameLen))
        b.putU8(off &+ 7, fileType)
    }

    /// Write a whole record at `off`: header, name, zero padding up to the
    /// name's rounded size (the rest of rec_len is left as it was).
    static func write(into b: inout [UInt8], at off: Int, inode: UInt32, recLen: Int, name: [UInt8],
                      fileType: UInt8, blockSize: Int) {
        DirEntryRecord(inode: inode, recLen: recLen, nameLen: name.count, fileType: fileType)
            .encode(into: &b, at: off, blockSize: blockSize)
        b.putBytes(off &+ headerSize, name)
        b.zeroRange(off &+ headerSize &+ name.count, size(nameLen: name.count) - headerSize - name.count)
    }
}

/// The checksum tail of a directory leaf block with metadata_csum ("struct
/// ext4_dir_entry_tail"): a 12-byte fake entry (inode 0, rec_len 12,
/// name_len 0, file_type 0xDE) holding crc32c of the block before it.
enum DirLeafTail {
    static let size = 12
    static let fileType: UInt8 = 0xDE

    /// Is there a well-formed tail at the end of `b` (a `blockSize` block)?
    static func isPresent(_ b: [UInt8], blockSize: Int) -> Bool {
        let t = blockSize - size
        guard t >= 0, blockSize <= b.count else { return false }
        return b.le32(t) == 0 && b.le16(t &+ 4) == UInt16(size) && b.u8(t &+ 6) == 0 && b.u8(t &+ 7) == fileType
    }

    static func checksum(_ b: [UInt8], blockSize: Int, seed: UInt32) -> UInt32 {
        let t = Swift.max(0, Swift.min(blockSize - size, b.count))
        return crc32c(seed, b[0..<t])
    }

    static func matches(_ b: [UInt8], blockSize: Int, seed: UInt32) -> Bool {
        isPresent(b, blockSize: blockSize) && checksum(b, blockSize: blockSize, seed: seed) == b.le32(blockSize - size + 8)
    }

    /// Write the tail and its checksum.
    static func seal(_ b: inout [UInt8], blockSize: Int, seed: UInt32) {
        let t = blockSize - size
        guard t >= 0, blockSize <= b.count else { return }
        b.putLE32(t, 0)
        b.putLE16(t &+ 4, UInt16(size))
        b.putU8(t &+ 6, 0)
        b.putU8(t &+ 7, fileType)
        b.putLE32(t &+ 8, checksum(b, blockSize: blockSize, seed: seed))
    }
}

// MARK: - Htree index

/// The index blocks of an htree directory (dir_index). Logical block 0 is
/// the root: a "." entry (rec_len 12), a ".." entry whose rec_len covers the
/// rest of the block, `dx_root_info` at 24 and the index entries at 32. An
/// interior node is one empty entry (inode 0) spanning the block, with the
/// entries at 8. The first 8 bytes of an entries array hold limit and count
/// (and entry 0's block); entry i > 0 is (hash, block). With metadata_csum a
/// `dx_tail` (reserved word, checksum) follows `limit` entries.
enum DxBlock {
    static let rootInfoOffset = 24
    static let rootEntries = 32
    static let nodeEntries = 8
    static let entrySize = 8
    static let tailSize = 8
    /// The block number is the low 28 bits of an entry's second word.
    static let blockMask: UInt32 = 0x0FFF_FFFF

    /// Is `b` an interior node: an empty entry spanning the whole block?
    static func isNode(_ b: [UInt8], blockSize: Int) -> Bool {
        guard let d = try? DirEntryRecord(decoding: b, at: 0, blockSize: blockSize) else { return false }
        return d.inode == 0 && d.recLen == blockSize
    }

    /// The limit of an entries array at `entries` (room for the tail with metadata_csum).
    static func limit(blockSize: Int, entries: Int, tail: Bool) -> Int {
        Swift.max(0, (blockSize - entries - (tail ? tailSize : 0)) / entrySize)
    }
}

/// `struct dx_root_info`: 8 bytes at offset 24 of the root.
struct DxRootInfo: Sendable, Equatable {
    static let length: UInt8 = 8

    var hashVersion: UInt8
    var infoLength: UInt8
    var indirectLevels: UInt8
    var unusedFlags: UInt8

    init(hashVersion: UInt8, indirectLevels: UInt8) {
        self.hashVersion = hashVersion; infoLength = DxRootInfo.length
        self.indirectLevels = indirectLevels; unusedFlags = 0
    }

    init(decoding root: [UInt8]) throws(Ext4Error) {
        try OnDisk.need(root.count, DxBlock.rootInfoOffset, Int(DxRootInfo.length), "htree root info")
        hashVersion = root.u8(DxBlock.rootInfoOffset + 4)
        infoLength = root.u8(DxBlock.rootInfoOffset + 5)
        indirectLevels = root.u8(DxBlock.rootInfoOffset + 6)
        unusedFlags = root.u8(DxBlock.rootInfoOffset + 7)
    }

    func encode(into root: inout [UInt8]) {
        root.putLE32(DxBlock.rootInfoOffset, 0)
        root.putU8(DxBlock.rootInfoOffset + 4, hashVersion)
        root.putU8(DxBlock.rootInfoOffset + 5, infoLength)
        root.putU8(DxBlock.rootInfoOffset + 6, indirectLevels)
        root.putU8(DxBlock.rootInfoOffset + 7, unusedFlags)
    }
}

/// `struct dx_countlimit` at the start of an entries array.
struct DxCountLimit: Sendable, Equatable {
    var limit: UInt16
    var count: UInt16

    init(limit: Int, count: Int) {
        self.limit = UInt16(clamping: limit); self.count = UInt16(clamping: count)
    }

    init(decoding b: [UInt8], at entries: Int) throws(Ext4Error) {
        try OnDisk.need(b.count, entries, 4, "htree count/limit")
        limit = b.le16(entries)
        count = b.le16(entries + 2)
    }

    func encode(into b: inout [UInt8], at entries: Int) {
        b.putLE16(entries, limit)
        b.putLE16(entries + 2, count)
    }
}

/// `struct dx_entry` number `index` of the array at `entries`: a hash (none
/// for entry 0, whose place count/limit takes) and a logical block.
struct DxEntry: Sendable, Equatable {
    var hash: UInt32
    var block: UInt32

    init(hash: UInt32, block: UInt32) { self.hash = hash; self.block = block & DxBlock.blockMask }

    init(decoding b: [UInt8], entries: Int, index: Int) throws(Ext4Error) {
        let o = OnDisk.offset(entries, DxBlock.entrySize, index)
        try OnDisk.need(b.count, o, DxBlock.entrySize, "htree entry \(index)")
        hash = index == 0 ? 0 : b.le32(o)
        block = b.le32(o &+ 4) & DxBlock.blockMask
    }

    func encode(into b: inout [UInt8], entries: Int, index: Int) {
        let o = OnDisk.offset(entries, DxBlock.entrySize, index)
        if index > 0 { b.putLE32(o, hash) }
        b.putLE32(o &+ 4, block)
    }
}

/// `struct dx_tail` after `limit` entries: crc32c (the inode's seed) over the
/// block up to the end of `count` entries, then over the tail with a zero
/// checksum.
enum DxTail {
    /// Where the tail of the array at `entries` lies, and the checksum it
    /// should hold; nil when count/limit put the tail or the entries outside `b`.
    static func expected(_ b: [UInt8], entries: Int, seed: UInt32) -> (offset: Int, checksum: UInt32)? {
        guard let cl = try? DxCountLimit(decoding: b, at: entries) else { return nil }
        let used = entries + DxBlock.entrySize * Int(cl.count)
        let t = entries + DxBlock.entrySize * Int(cl.limit)
        guard used <= b.count, t &+ DxBlock.tailSize <= b.count else { return nil }
        var c = crc32c(seed, b[0..<used])
        c = crc32c(c, b[t..<(t &+ 4)])
        c = crc32c(c, [0, 0, 0, 0])
        return (t, c)
    }

    static func matches(_ b: [UInt8], entries: Int, seed: UInt32) -> Bool {
        guard let (t, c) = expected(b, entries: entries, seed: seed) else { return false }
        return b.le32(t &+ 4) == c
    }

    /// Zero the reserved word and write the checksum (nothing when the tail does not fit).
    static func seal(_ b: inout [UInt8], entries: Int, seed: UInt32) {
        guard let cl = try? DxCountLimit(decoding: b, at: entries) else { return }
        let t = entries + DxBlock.entrySize * Int(cl.limit)
        guard t &+ DxBlock.tailSize <= b.count else { return }
        b.putLE32(t, 0)
        if let (_, c) = expected(b, entries: entries, seed: seed) { b.putLE32(t &+ 4, c) }
    }
}

// MARK: - Extended attributes

/// The header of an xattr block ("struct ext4_xattr_header"), 32 bytes;
/// entries follow it and value offsets count from the block's start.
struct XattrBlockHeader: Sendable, Equatable {
    static let size = 32
    static let magicValue: UInt32 = 0xEA02_0000
    static let checksumOffset = 0x10

    var magic: UInt32
    var refcount: UInt32
    /// h_blocks: always 1 (the kernel refuses anything else).
    var blocks: UInt32
    var hash: UInt32
    var checksum: UInt32

    init(refcount: UInt32, hash: UInt32) {
        magic = XattrBlockHeader.magicValue; self.refcount = refcount; blocks = 1; self.hash = hash; checksum = 0
    }

    init(decoding b: [UInt8]) throws(Ext4Error) {
        try OnDisk.need(b.count, 0, XattrBlockHeader.size, "xattr block header")
        magic = b.le32(0)
        refcount = b.le32(4)
        blocks = b.le32(8)
        hash = b.le32(0xC)
        checksum = b.le32(XattrBlockHeader.checksumOffset)
    }

    /// The magic and h_blocks == 1.
    var isValid: Bool { magic == XattrBlockHeader.magicValue && blocks == 1 }

    /// Write the header (h_reserved zeroed).
    func encode(into b: inout [UInt8]) {
        b.putLE32(0, magic)
        b.putLE32(4, refcount)
        b.putLE32(8, blocks)
        b.putLE32(0xC, hash)
        b.putLE32(XattrBlockHeader.checksumOffset, checksum)
        b.zeroRange(0x14, XattrBlockHeader.size - 0x14)
    }

    /// crc32c(fs seed, block number, block with h_checksum zero).
    static func computedChecksum(_ b: [UInt8], block: UInt64, fsSeed: UInt32) -> UInt32 {
        crc32c(crc32c(fsSeed, leBytes64(block)), b.zeroing(checksumOffset, 4))
    }

    static func seal(_ b: inout [UInt8], block: UInt64, fsSeed: UInt32) {
        b.putLE32(checksumOffset, computedChecksum(b, block: block, fsSeed: fsSeed))
    }
}

/// The in-inode xattr area after the extra fields starts with this 4-byte
/// header (the magic); entries follow it and value offsets count from the
/// first entry.
enum XattrIbodyHeader {
    static let size = 4
    static let magicValue: UInt32 = XattrBlockHeader.magicValue
}

/// An xattr entry ("struct ext4_xattr_entry"): 16 bytes and the name, padded
/// to 4. A zero 32-bit word where an entry would start ends the table.
struct XattrEntryRecord: Sendable, Equatable {
    static let headerSize = 16

    var nameLen: UInt8
    var nameIndex: UInt8
    var valueOffset: UInt16
    var valueInum: UInt32
    var valueSize: UInt32
    var hash: UInt32

    init(nameLen: UInt8, nameIndex: UInt8, valueOffset: UInt16, valueInum: UInt32, valueSize: UInt32, hash: UInt32) {
        self.nameLen = nameLen; self.nameIndex = nameIndex; self.valueOffset = valueOffset
        self.valueInum = valueInum; self.valueSize = valueSize; self.hash = hash
    }

    /// Decode the entry header at `off`; it must lie before `end`.
    init(decoding b: [UInt8], at off: Int, end: Int) throws(Ext4Error) {
        try OnDisk.need(Swift.min(end, b.count), off, XattrEntryRecord.headerSize, "xattr entry")
        nameLen = b.u8(off)
        nameIndex = b.u8(off &+ 1)
        valueOffset = b.le16(off &+ 2)
        valueInum = b.le32(off &+ 4)
        valueSize = b.le32(off &+ 8)
        hash = b.le32(off &+ 12)
    }

    /// Does the table end at `off` (a zero word, or no room for one)?
    static func isEnd(_ b: [UInt8], at off: Int) -> Bool { b.le32(off) == 0 }

    /// Bytes the entry takes in the table.
    var recordSize: Int { XattrEntryRecord.size(nameLen: Int(nameLen)) }
    static func size(nameLen: Int) -> Int { (headerSize + nameLen + 3) & ~3 }

    /// The entry's name, which must lie before `end`.
    func name(in b: [UInt8], at off: Int, end: Int) throws(Ext4Error) -> [UInt8] {
        try OnDisk.need(Swift.min(end, b.count), off &+ XattrEntryRecord.headerSize, Int(nameLen), "xattr name")
        return b.sub(off &+ XattrEntryRecord.headerSize, Int(nameLen)) ?? []
    }

    /// Write the entry header and `name` at `off`.
    func encode(into b: inout [UInt8], at off: Int, name: [UInt8]) {
        b.putU8(off, nameLen)
        b.putU8(off &+ 1, nameIndex)
        b.putLE16(off &+ 2, valueOffset)
        b.putLE32(off &+ 4, valueInum)
        b.putLE32(off &+ 8, valueSize)
        b.putLE32(off &+ 12, hash)
        b.putBytes(off &+ XattrEntryRecord.headerSize, name)
    }
}

// MARK: - superblock

/// The 1024-byte ext2/3/4 superblock. `Superblock` (Superblock.swift) parses
/// it once at mount through these offsets; the write side changes the few
/// fields a mount updates (free counts, state, needs_recovery, times, mount
/// count, the orphan chain head) through the setters and seals the checksum.
struct SuperblockRecord: Sendable {
    static let size = 1024
    /// Byte offset of the superblock on the device.
    static let deviceOffset: UInt64 = 1024

    enum Off {
        static let inodesCount = 0x0, blocksCountLo = 0x4, rBlocksCountLo = 0x8, freeBlocksLo = 0xC
        static let freeInodes = 0x10, firstDataBlock = 0x14, logBlockSize = 0x18, logClusterSize = 0x1C
        static let blocksPerGroup = 0x20, inodesPerGroup = 0x28, mtime = 0x2C, wtime = 0x30
        static let mntCount = 0x34, magic = 0x38, state = 0x3A, revLevel = 0x4C
        static let firstIno = 0x54, inodeSize = 0x58, featureCompat = 0x5C, featureIncompat = 0x60
        static let featureRoCompat = 0x64, uuid = 0x68, volumeName = 0x78, reservedGdtBlocks = 0xCE
        static let journalInum = 0xE0, lastOrphan = 0xE8, hashSeed = 0xEC, defHashVersion = 0xFC
        static let descSize = 0xFE, firstMetaBG = 0x104, blocksCountHi = 0x150, rBlocksCountHi = 0x154
        static let freeBlocksHi = 0x158, minExtraIsize = 0x15C, wantExtraIsize = 0x15E, flags = 0x160, checksumType = 0x175
        static let overheadClusters = 0x248, backupBGs = 0x24C, checksumSeed = 0x270
        static let mmpUpdateInterval = 0x166, mmpBlock = 0x168, orphanFileInum = 0x280, checksum = 0x3FC
    }

    /// s_state: cleanly unmounted.
    static let stateValid: UInt16 = 0x1

    private(set) var b: [UInt8]

    init(_ bytes: [UInt8]) throws(Ext4Error) {
        guard bytes.count >= SuperblockRecord.size else { throw .corrupted("short superblock") }
        b = Array(bytes.prefix(SuperblockRecord.size))
    }

    var incompat: UInt32 {
        get { b.le32(Off.featureIncompat) }
        set { b.putLE32(Off.featureIncompat, newValue) }
    }
    var roCompat: UInt32 {
        get { b.le32(Off.featureRoCompat) }
        set { b.putLE32(Off.featureRoCompat, newValue) }
    }
    var is64: Bool { incompat & Incompat.bit64 != 0 }
    var metadataCsum: Bool { roCompat & RoCompat.metadataCsum != 0 }

    /// s_free_blocks_count (the high half only with 64bit).
    var freeBlocks: UInt64 {
        get { UInt64(b.le32(Off.freeBlocksLo)) | (is64 ? UInt64(b.le32(Off.freeBlocksHi)) << 32 : 0) }
        set {
            b.putLE32(Off.freeBlocksLo, UInt32(truncatingIfNeeded: newValue))
            if is64 { b.putLE32(Off.freeBlocksHi, UInt32(truncatingIfNeeded: newValue >> 32)) }
        }
    }
    var freeInodes: UInt32 {
        get { b.le32(Off.freeInodes) }
        set { b.putLE32(Off.freeInodes, newValue) }
    }
    var state: UInt16 {
        get { b.le16(Off.state) }
        set { b.putLE16(Off.state, newValue) }
    }
    var mtime: UInt32 {
        get { b.le32(Off.mtime) }
        set { b.putLE32(Off.mtime, newValue) }
    }
    var wtime: UInt32 {
        get { b.le32(Off.wtime) }
        set { b.putLE32(Off.wtime, newValue) }
    }
    var mountCount: UInt16 {
        get { b.le16(Off.mntCount) }
        set { b.putLE16(Off.mntCount, newValue) }
    }
    /// s_volume_name: the label, NUL-padded to 16 bytes.
    var volumeName: [UInt8] {
        get { b.sub(Off.volumeName, 16) ?? [] }
        set {
            for i in 0..<16 { b[Off.volumeName + i] = i < newValue.count ? newValue[i] : 0 }
        }
    }
    /// s_last_orphan: the head of the orphan chain.
    var lastOrphan: UInt32 {
        get { b.le32(Off.lastOrphan) }
        set { b.putLE32(Off.lastOrphan, newValue) }
    }
    var needsRecovery: Bool {
        get { incompat & Incompat.recover != 0 }
        set { incompat = newValue ? incompat | Incompat.recover : incompat & ~Incompat.recover }
    }
    /// RO_COMPAT_ORPHAN_PRESENT: the orphan file may hold entries.
    var orphanPresent: Bool {
        get { roCompat & RoCompat.orphanPresent != 0 }
        set { roCompat = newValue ? roCompat | RoCompat.orphanPresent : roCompat & ~RoCompat.orphanPresent }
    }

    /// With metadata_csum, s_checksum over everything before it.
    mutating func seal() {
        if metadataCsum { b.putLE32(Off.checksum, crc32c(~0, b[0..<Off.checksum])) }
    }
}

/// One block of the orphan file (COMPAT_ORPHAN_FILE): little-endian inode
/// numbers (0 is a free slot), then an 8-byte tail of the magic 0x0b10ca04
/// and, with metadata_csum, a crc32c over the orphan file's inode seed (file
/// system seed, its inode number and generation), the block's physical number
/// as 64 bits little-endian, and the entries.
struct OrphanBlockRecord: Sendable {
    static let magic: UInt32 = 0x0B10_CA04
    static let tailSize = 8

    private(set) var b: [UInt8]
    /// The block's physical number (part of the checksum).
    let block: UInt64

    init(_ bytes: [UInt8], block: UInt64) throws(Ext4Error) {
        guard bytes.count >= 1024, bytes.count % 4 == 0 else { throw .corrupted("orphan file block \(block) has a bad size") }
        b = bytes
        self.block = block
        guard b.le32(b.count - 8) == OrphanBlockRecord.magic else {
            throw .corrupted("orphan file block \(block) has a bad magic number")
        }
    }

    var entryCount: Int { (b.count - OrphanBlockRecord.tailSize) / 4 }
    func entry(_ i: Int) -> UInt32 { b.le32(4 * i) }
    mutating func clear(_ i: Int) { b.putLE32(4 * i, 0) }

    func checksum(inodeSeed: UInt32) -> UInt32 {
        crc32c(crc32c(inodeSeed, leBytes64(block)), b[0..<(b.count - OrphanBlockRecord.tailSize)])
    }
    func checksumMatches(inodeSeed: UInt32) -> Bool { b.le32(b.count - 4) == checksum(inodeSeed: inodeSeed) }
    mutating func seal(inodeSeed: UInt32) { b.putLE32(b.count - 4, checksum(inodeSeed: inodeSeed)) }
}

/// The multi-mount protection block (INCOMPAT_MMP), struct mmp_struct at the
/// start of block s_mmp_block: a sequence number a mounted node changes every
/// interval, the time, node and device names (for the admin), the interval,
/// and, with metadata_csum, crc32c over the file system's seed and the first
/// 0x3FC bytes.
struct MMPRecord: Sendable {
    static let size = 1024
    static let magic: UInt32 = 0x004D_4D50
    /// Nobody holds the file system.
    static let seqClean: UInt32 = 0xFF4D_4D50
    /// e2fsck holds it.
    static let seqFsck: UInt32 = 0xE24D_4D50
    /// Largest sequence number a mount uses.
    static let seqMax: UInt32 = 0xE24D_4D4F

    enum Off {
        static let magic = 0x0, seq = 0x4, time = 0x8, nodeName = 0x10, deviceName = 0x50
        static let checkInterval = 0x70, checksum = 0x3FC
    }

    private(set) var b: [UInt8]

    init(_ bytes: [UInt8]) throws(Ext4Error) {
        guard bytes.count >= MMPRecord.size else { throw .corrupted("short MMP block") }
        b = Array(bytes.prefix(MMPRecord.size))
        guard b.le32(Off.magic) == MMPRecord.magic else { throw .corrupted("MMP block has a bad magic number") }
    }

    var seq: UInt32 {
        get { b.le32(Off.seq) }
        set { b.putLE32(Off.seq, newValue) }
    }
    var time: UInt64 {
        get { b.le64(Off.time) }
        set { b.putLE64(Off.time, newValue) }
    }
    var checkInterval: UInt16 {
        get { b.le16(Off.checkInterval) }
        set { b.putLE16(Off.checkInterval, newValue) }
    }
    /// A NUL-padded name field, read leniently (for messages).
    func name(_ off: Int, _ len: Int) -> String {
        let raw = b[off..<(off + len)].prefix { $0 != 0 }
        return String(decoding: raw, as: UTF8.self)
    }
    var nodeName: String { name(Off.nodeName, 64) }
    var deviceName: String { name(Off.deviceName, 32) }
    mutating func setNames(node: String, device: String) {
        for (off, len, s) in [(Off.nodeName, 64, node), (Off.deviceName, 32, device)] {
            let bytes = Array(s.utf8.prefix(len - 1))
            for i in 0..<len { b[off + i] = i < bytes.count ? bytes[i] : 0 }
        }
    }

    func checksumMatches(seed: UInt32) -> Bool { b.le32(Off.checksum) == crc32c(seed, b[0..<Off.checksum]) }
    mutating func seal(seed: UInt32) { b.putLE32(Off.checksum, crc32c(seed, b[0..<Off.checksum])) }
}
