import Foundation

/// A mutable on-disk inode (the raw bytes of its table slot).
struct MInode {
    let ino: UInt32
    var b: [UInt8]
    let inodeSize: Int

    var mode: UInt16 { get { b.le16(0) } set { b.putLE16(0, newValue) } }
    var fileType: FileType { FileType(mode: mode) }
    var isDir: Bool { mode & 0xF000 == 0x4000 }
    var uid: UInt32 {
        get { UInt32(b.le16(2)) | UInt32(b.le16(0x78)) << 16 }
        set { b.putLE16(2, UInt16(truncatingIfNeeded: newValue)); b.putLE16(0x78, UInt16(truncatingIfNeeded: newValue >> 16)) }
    }
    var gid: UInt32 {
        get { UInt32(b.le16(0x18)) | UInt32(b.le16(0x7A)) << 16 }
        set { b.putLE16(0x18, UInt16(truncatingIfNeeded: newValue)); b.putLE16(0x7A, UInt16(truncatingIfNeeded: newValue >> 16)) }
    }
    var size: UInt64 {
        get { UInt64(b.le32(4)) | UInt64(b.le32(0x6C)) << 32 }
        set { b.putLE32(4, UInt32(truncatingIfNeeded: newValue)); b.putLE32(0x6C, UInt32(truncatingIfNeeded: newValue >> 32)) }
    }
    var links: UInt16 { get { b.le16(0x1A) } set { b.putLE16(0x1A, newValue) } }
    var flags: UInt32 { get { b.le32(0x20) } set { b.putLE32(0x20, newValue) } }
    var dtime: UInt32 { get { b.le32(0x14) } set { b.putLE32(0x14, newValue) } }
    var generation: UInt32 { b.le32(0x64) }
    var iBlock: [UInt8] {
        get { b.sub(0x28, 60) ?? [UInt8](repeating: 0, count: 60) }
        set { b.putBytes(0x28, Array(newValue.prefix(60)) + [UInt8](repeating: 0, count: max(0, 60 - newValue.count))) }
    }
    var extraIsize: Int { inodeSize > 128 ? Int(b.le16(0x80)) : 0 }
    var hasExtents: Bool { flags & InodeFlag.extents != 0 }
    var hasInline: Bool { flags & InodeFlag.inlineData != 0 }

    func fileACL(_ is64: Bool) -> UInt64 { UInt64(b.le32(0x68)) | (is64 ? UInt64(b.le16(0x76)) << 32 : 0) }
    mutating func setFileACL(_ v: UInt64) {
        b.putLE32(0x68, UInt32(truncatingIfNeeded: v)); b.putLE16(0x76, UInt16(truncatingIfNeeded: v >> 32))
    }

    enum TimeField { case atime, ctime, mtime, crtime }
    mutating func setTime(_ f: TimeField, _ t: Timespec) {
        let (base, extra): (Int, Int)
        switch f {
        case .atime: (base, extra) = (0x8, 0x8C)
        case .ctime: (base, extra) = (0xC, 0x84)
        case .mtime: (base, extra) = (0x10, 0x88)
        case .crtime: (base, extra) = (0x90, 0x94)
        }
        let hasExtra = inodeSize > 128 && 128 + extraIsize >= extra + 4
        if f == .crtime && !hasExtra { return }
        b.putLE32(base, UInt32(truncatingIfNeeded: t.sec))
        if hasExtra {
            let epoch = UInt32(truncatingIfNeeded: (t.sec - Int64(Int32(truncatingIfNeeded: t.sec))) >> 32) & 3
            b.putLE32(extra, epoch | (min(t.nsec, 999_999_999) << 2))
        }
    }

    mutating func bumpVersion() {
        var v = UInt64(b.le32(0x24))
        let hiOK = inodeSize > 128 && 128 + extraIsize >= 0x98 + 4
        if hiOK { v |= UInt64(b.le32(0x98)) << 32 }
        v &+= 1
        b.putLE32(0x24, UInt32(truncatingIfNeeded: v))
        if hiOK { b.putLE32(0x98, UInt32(truncatingIfNeeded: v >> 32)) }
    }
}

extension Ext4FileSystem {
    func loadInode(_ ino: UInt32, checkLive: Bool = true) throws(Ext4Error) -> MInode {
        let ri = try rawInode(ino, checkLive: checkLive)
        return MInode(ino: ino, b: ri.bytes, inodeSize: sb.inodeSize)
    }

    func inodeSeed(_ ino: UInt32, _ gen: UInt32) -> UInt32 {
        crc32c(crc32c(csumSeed, leBytes32(ino)), leBytes32(gen))
    }

    /// Set i_blocks from a count of fs blocks.
    func setBlocks(_ m: inout MInode, fsBlocks: UInt64) throws(Ext4Error) {
        let units = fsBlocks &* UInt64(blockSize / 512)
        var f = m.flags & ~InodeFlag.hugeFile
        if units < (1 << 32) {
            m.b.putLE32(0x1C, UInt32(units)); m.b.putLE16(0x74, 0)
        } else if sb.has(roCompat: RoCompat.hugeFile) && units < (1 << 48) {
            m.b.putLE32(0x1C, UInt32(truncatingIfNeeded: units)); m.b.putLE16(0x74, UInt16(truncatingIfNeeded: units >> 32))
        } else if sb.has(roCompat: RoCompat.hugeFile) && fsBlocks < (1 << 48) {
            f |= InodeFlag.hugeFile
            m.b.putLE32(0x1C, UInt32(truncatingIfNeeded: fsBlocks)); m.b.putLE16(0x74, UInt16(truncatingIfNeeded: fsBlocks >> 32))
        } else {
            throw .fileTooBig
        }
        m.flags = f
    }

    /// Write an inode into its table block (read-modify-write under the block stripe lock).
    func storeInode(_ m: MInode) throws(Ext4Error) {
        let w = try wstate
        var b = m.b
        // The orphan chain owns dtime of orphan inodes.
        if let next = w.orphanMapLock.with({ w.orphanNext[m.ino] }) { b.putLE32(0x14, next) }
        let (blk, off) = try inodeLocation(m.ino)
        try w.metaLocks.withLock(blk) { () throws(Ext4Error) in
            sealInodeChecksum(&b, m.ino)
            var tb = try block(blk)
            tb.putBytes(off, b)
            try writeMeta(blk, tb)
        }
        noteInodeChanged(m.ino)
    }

    /// Inode table block and byte offset of an inode.
    func inodeLocation(_ ino: UInt32) throws(Ext4Error) -> (block: UInt64, offset: Int) {
        let idx = UInt64(ino - 1)
        let g = Int(idx / UInt64(sb.inodesPerGroup))
        guard g < groups.count else { throw corrupt("inode \(ino) beyond groups") }
        let inGroup = idx % UInt64(sb.inodesPerGroup)
        return (groups[g].inodeTable + inGroup / UInt64(inodesPerBlock),
                Int(inGroup % UInt64(inodesPerBlock)) * sb.inodeSize)
    }

    /// metadata_csum: recompute the inode checksum over its on-disk bytes.
    func sealInodeChecksum(_ b: inout [UInt8], _ ino: UInt32) {
        guard sb.metadataCsum else { return }
        let extra = sb.inodeSize > 128 ? Int(b.le16(0x80)) : 0
        let hasHi = sb.inodeSize > 128 && extra >= 4
        b.putLE16(0x7C, 0)
        if hasHi { b.putLE16(0x82, 0) }
        let c = crc32c(inodeSeed(ino, b.le32(0x64)), b)
        b.putLE16(0x7C, UInt16(truncatingIfNeeded: c))
        if hasHi { b.putLE16(0x82, UInt16(truncatingIfNeeded: c >> 16)) }
    }

    /// Patch only the dtime (orphan link) of an inode already on disk, in place
    /// in its inode table block. The orphan code calls this for inodes whose own
    /// lock it does not hold (lock order), so it must not write back any other
    /// field: a full load-and-store here could undo a concurrent update of the
    /// same inode (a link count, a size) made under that inode's lock.
    func patchDtime(_ ino: UInt32, _ v: UInt32) throws(Ext4Error) {
        let w = try wstate
        let (blk, off) = try inodeLocation(ino)
        try w.metaLocks.withLock(blk) { () throws(Ext4Error) in
            var tb = try block(blk)
            guard off + sb.inodeSize <= tb.count else { throw corrupt("inode \(ino) outside its table block") }
            var b = Array(tb[off..<(off + sb.inodeSize)])
            b.putLE32(0x14, v)
            sealInodeChecksum(&b, ino)
            tb.putBytes(off, b)
            try writeMeta(blk, tb)
        }
    }

    /// Fresh inode bytes for a new inode.
    func newInodeBytes(_ ino: UInt32, mode: UInt16, uid: UInt32, gid: UInt32, now: Timespec) -> MInode {
        var m = MInode(ino: ino, b: [UInt8](repeating: 0, count: sb.inodeSize), inodeSize: sb.inodeSize)
        m.mode = mode
        m.uid = uid
        m.gid = gid
        if sb.inodeSize > 128 {
            let want = max(Int(sb.minExtraIsize), Int(sb.raw.le16(0x15E)), 32)
            m.b.putLE16(0x80, UInt16(min(want, sb.inodeSize - 128) & ~3))
        }
        var gen: UInt32 = 0
        arc4random_buf(&gen, 4)
        m.b.putLE32(0x64, gen)
        for f: MInode.TimeField in [.atime, .ctime, .mtime, .crtime] { m.setTime(f, now) }
        return m
    }

    var maxFileSize: UInt64 {
        let bs = UInt64(blockSize)
        if sb.has(incompat: Incompat.extents) {
            return min(0xFFFF_FFFF * bs, sb.has(roCompat: RoCompat.hugeFile) ? UInt64.max : (1 << 32) * 512 - bs)
        }
        let p = bs / 4
        let blocks = 12 + p + p * p + p * p * p
        let byUnits = sb.has(roCompat: RoCompat.hugeFile) ? UInt64.max : ((1 << 32) * 512) / bs - (p * p + p + 1) - 1
        return min(blocks, byUnits, 0xFFFF_FFFF) * bs
    }
}
