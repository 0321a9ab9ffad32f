/// Inode as read from disk: the raw bytes plus parsed fields.
struct RawInode: Sendable {
    let ino: UInt32
    let bytes: [UInt8]
    let pub: Inode
    let flags: UInt32
    let fileACL: UInt64
    let extraIsize: Int
    /// Per-inode checksum seed (metadata_csum).
    let seed: UInt32
    var iBlock: [UInt8] { bytes.sub(0x28, 60) ?? [UInt8](repeating: 0, count: 60) }
    var isDir: Bool { pub.fileType == .directory }
    var hasInline: Bool { flags & InodeFlag.inlineData != 0 }
    var hasExtents: Bool { flags & InodeFlag.extents != 0 }
}

extension Ext4FileSystem {
    public func inode(_ ino: UInt32) throws(Ext4Error) -> Inode {
        try withReadLock(ino) { () throws(Ext4Error) -> Inode in
            try rawInode(ino).pub
        }
    }

    public func inodeFlags(_ ino: UInt32) throws(Ext4Error) -> UInt32 {
        try withReadLock(ino) { () throws(Ext4Error) -> UInt32 in
            try rawInode(ino).flags & InodeFlag.userVisible
        }
    }

    func decodeTime(_ b: [UInt8], _ base: Int, _ extra: Int?, _ extraIsize: Int) -> Timespec {
        var sec = Int64(Int32(bitPattern: b.le32(base)))
        var nsec: UInt32 = 0
        if let extra, sb.inodeSize > 128, 128 + extraIsize >= extra + 4 {
            let e = b.le32(extra)
            sec += Int64(e & 3) << 32
            nsec = e >> 2
        }
        return Timespec(sec: sec, nsec: nsec)
    }

    /// Load and validate an inode. `checkLive` rejects deleted inodes the way
    /// the kernel's iget does (stale references are corruption).
    func rawInode(_ ino: UInt32, checkLive: Bool = true) throws(Ext4Error) -> RawInode {
        guard ino >= 1, ino <= sb.inodesCount else {
            throw .invalid("inode number \(ino) out of range")
        }
        let idx = UInt64(ino - 1)
        let group = idx / UInt64(sb.inodesPerGroup)
        let inGroup = idx % UInt64(sb.inodesPerGroup)
        guard group < UInt64(groups.count) else { throw corrupt("inode \(ino) in missing group \(group)") }
        let gd = groups[Int(group)]
        let blk = gd.inodeTable + inGroup / UInt64(inodesPerBlock)
        let off = Int(inGroup % UInt64(inodesPerBlock)) * sb.inodeSize
        let block = try self.block(blk)
        guard let b = block.sub(off, sb.inodeSize) else { throw corrupt("inode \(ino) outside its table block") }

        var extra = 0
        if sb.inodeSize > 128 {
            extra = Int(b.le16(0x80))
            guard 128 + extra <= sb.inodeSize, extra & 3 == 0 else {
                throw corrupt("inode \(ino): bad extra_isize \(extra)")
            }
        }
        let gen = b.le32(0x64)
        var seed: UInt32 = 0
        if sb.metadataCsum {
            seed = crc32c(crc32c(csumSeed, leBytes32(ino)), leBytes32(gen))
            let hasHi = sb.inodeSize > 128 && extra >= 4
            var z = b.zeroing(0x7C, 2)
            if hasHi { z = z.zeroing(0x82, 2) }
            let c = crc32c(seed, z)
            let stored = UInt32(b.le16(0x7C)) | (hasHi ? UInt32(b.le16(0x82)) << 16 : 0)
            let ok = hasHi ? c == stored : UInt16(truncatingIfNeeded: c) == UInt16(truncatingIfNeeded: stored)
            if !ok { throw corrupt("inode \(ino): checksum mismatch") }
        }

        let mode = b.le16(0)
        let links = UInt32(b.le16(0x1A))
        if checkLive && links == 0 && !isOrphan(ino) {
            throw corrupt("deleted inode \(ino) referenced")
        }
        let flags = b.le32(0x20)
        let size = UInt64(b.le32(0x4)) | (UInt64(b.le32(0x6C)) << 32)
        guard size <= UInt64(Int64.max) else { throw corrupt("inode \(ino): negative size") }
        var blocks = UInt64(b.le32(0x1C))
        if sb.has(roCompat: RoCompat.hugeFile) {
            blocks |= UInt64(b.le16(0x74)) << 32
            if flags & InodeFlag.hugeFile != 0 { blocks = blocks &* UInt64(blockSize / 512) }
        }
        if flags & InodeFlag.inlineData != 0 && mode & 0xF000 == 0x8000 {
            // As the kernel's file getattr: report the sectors the inline data occupies.
            blocks = blocks &+ ((size &+ 511) >> 9)
        }
        var fileACL = UInt64(b.le32(0x68))
        if sb.is64 { fileACL |= UInt64(b.le16(0x76)) << 32 }
        if fileACL != 0 && !validRun(fileACL, 1) {
            throw corrupt("inode \(ino): xattr block \(fileACL) not in file system")
        }
        if flags & InodeFlag.extents != 0 && flags & InodeFlag.inlineData != 0 {
            throw corrupt("inode \(ino): both extents and inline data flags set")
        }
        if flags & InodeFlag.inlineData != 0 && !sb.has(incompat: Incompat.inlineData) {
            throw corrupt("inode \(ino): inline data flag without inline_data feature")
        }
        let type = FileType(mode: mode)
        var rdev: (UInt32, UInt32) = (0, 0)
        if type == .charDevice || type == .blockDevice {
            let old = b.le32(0x28)
            if old != 0 {
                rdev = ((old >> 8) & 0xFF, old & 0xFF)
            } else {
                let n = b.le32(0x2C)
                rdev = ((n & 0xFFF00) >> 8, (n & 0xFF) | ((n >> 12) & 0xFFF00))
            }
        }
        var version = UInt64(b.le32(0x24))
        if sb.inodeSize > 128 && 128 + extra >= 0x98 + 4 {
            version |= UInt64(b.le32(0x98)) << 32
        }
        var crtime: Timespec? = nil
        if sb.inodeSize > 128 && 128 + extra >= 0x90 + 4 {
            crtime = decodeTime(b, 0x90, 0x94, extra)
        }
        let pub = Inode(
            ino: ino, mode: mode,
            uid: UInt32(b.le16(0x2)) | (UInt32(b.le16(0x78)) << 16),
            gid: UInt32(b.le16(0x18)) | (UInt32(b.le16(0x7A)) << 16),
            size: size, links: links, blocks512: blocks,
            atime: decodeTime(b, 0x8, 0x8C, extra),
            mtime: decodeTime(b, 0x10, 0x88, extra),
            ctime: decodeTime(b, 0xC, 0x84, extra),
            crtime: crtime, rdev: rdev, generation: gen, flags: flags, version: version, fileType: type)
        return RawInode(ino: ino, bytes: b, pub: pub, flags: flags, fileACL: fileACL, extraIsize: extra, seed: seed)
    }
}
