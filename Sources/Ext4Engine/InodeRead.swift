/// An inode as the engine uses it: its on-disk record (the one typed view,
/// `InodeRecord`, shared with the write side) and what one decode derived
/// from it: the public attributes, the validated xattr block and the
/// checksum seed.
struct RawInode: Sendable {
    let rec: InodeRecord
    let pub: Inode
    /// The xattr block, checked to lie inside the file system (0: none).
    let fileACL: UInt64
    /// Per-inode checksum seed (metadata_csum; 0 without it).
    let seed: UInt32

    var ino: UInt32 { rec.ino }
    var flags: UInt32 { rec.flags }
    var extraIsize: Int { rec.extraIsize }
    var iBlock: [UInt8] { rec.iBlock }
    var isDir: Bool { pub.fileType == .directory }
    var hasInline: Bool { rec.hasInline }
    var hasExtents: Bool { rec.hasExtents }
}

extension Ext4FileSystem {
    public func inode(_ ino: UInt32) throws(Ext4Error) -> Inode {
        try withReadLock(ino) { () throws(Ext4Error) -> Inode in
            try rawInode(ino).pub
        }
    }

    /// The inode a file handle names (name_to_handle_at / open_by_handle_at,
    /// which reach us as a lookup of "." on the handle's inode number). As
    /// the kernel's ext4 answers handles: ESTALE for a number outside the
    /// inode table or reserved, for a free inode, and for one without a name
    /// left (links 0, even while still open). The caller compares the
    /// generation.
    public func inodeForHandle(_ ino: UInt32) throws(Ext4Error) -> Inode {
        guard ino == Ext4FileSystem.rootIno || (ino >= sb.firstIno && ino <= sb.inodesCount) else { throw .stale }
        return try withReadLock(ino) { () throws(Ext4Error) -> Inode in
            let r: RawInode
            do throws(Ext4Error) { r = try rawInode(ino, checkLive: false) } catch {
                if case .corrupted = error { throw .stale }  // a free slot holds anything
                throw error
            }
            guard r.pub.links > 0, r.pub.mode & 0xF000 != 0 else { throw .stale }
            return r.pub
        }
    }

    public func inodeFlags(_ ino: UInt32) throws(Ext4Error) -> UInt32 {
        try withReadLock(ino) { () throws(Ext4Error) -> UInt32 in
            try rawInode(ino).flags & InodeFlag.userVisible
        }
    }

    /// Log a corruption error once (errors from the typed records carry no
    /// file system to log them).
    func reported(_ e: Ext4Error) -> Ext4Error {
        if case .corrupted(let m) = e { clog.report(m) }
        return e
    }

    /// The inode table slot of `ino`, decoded.
    func inodeRecord(_ ino: UInt32) throws(Ext4Error) -> InodeRecord {
        let (blk, off) = try inodeLocation(ino)
        let block = try self.block(blk)
        guard let b = block.sub(off, sb.inodeSize) else { throw corrupt("inode \(ino) outside its table block") }
        do throws(Ext4Error) { return try InodeRecord(ino: ino, bytes: b, inodeSize: sb.inodeSize) } catch { throw reported(error) }
    }

    /// Inode table block and byte offset of an inode.
    func inodeLocation(_ ino: UInt32) throws(Ext4Error) -> (block: UInt64, offset: Int) {
        guard ino >= 1, ino <= sb.inodesCount else {
            throw .invalid("inode number \(ino) out of range")
        }
        let idx = UInt64(ino - 1)
        let group = idx / UInt64(sb.inodesPerGroup)
        let inGroup = idx % UInt64(sb.inodesPerGroup)
        guard group < UInt64(groups.count) else { throw corrupt("inode \(ino) in missing group \(group)") }
        // The table lies inside the file system (checked at open), so this cannot overflow.
        return (groups[Int(group)].inodeTable + inGroup / UInt64(inodesPerBlock),
                Int(inGroup % UInt64(inodesPerBlock)) * sb.inodeSize)
    }

    /// Load and validate an inode. `checkLive` rejects deleted inodes the way
    /// the kernel's iget does (stale references are corruption).
    func rawInode(_ ino: UInt32, checkLive: Bool = true) throws(Ext4Error) -> RawInode {
        try decodeInode(try inodeRecord(ino), verifyChecksum: sb.metadataCsum, checkLive: checkLive)
    }

    /// The one decode of an inode record: checksum (when asked), liveness
    /// (when asked), field consistency, and the public attributes. The write
    /// side decodes the record it holds in memory with neither check.
    func decodeInode(_ r: InodeRecord, verifyChecksum: Bool, checkLive: Bool) throws(Ext4Error) -> RawInode {
        let ino = r.ino
        let seed = sb.metadataCsum ? r.checksumSeed(fsSeed: csumSeed) : 0
        if verifyChecksum && !r.checksumMatches(seed: seed) { throw corrupt("inode \(ino): checksum mismatch") }
        let links = UInt32(r.links)
        if checkLive && links == 0 && !isOrphan(ino) {
            throw corrupt("deleted inode \(ino) referenced")
        }
        let flags = r.flags
        let mode = r.mode
        let size = r.size
        guard size <= UInt64(Int64.max) else { throw corrupt("inode \(ino): negative size") }
        var blocks = r.blocks512(hugeFile: sb.has(roCompat: RoCompat.hugeFile), blockSize: blockSize)
        if flags & InodeFlag.inlineData != 0 && mode & 0xF000 == 0x8000 {
            // As the kernel's file getattr: report the sectors the inline data occupies.
            blocks = blocks &+ ((size &+ 511) >> 9)
        }
        let fileACL = r.fileACL(sb.is64)
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
        let rdev: (UInt32, UInt32) = type == .charDevice || type == .blockDevice ? r.deviceNumber : (0, 0)
        let pub = Inode(
            ino: ino, mode: mode, uid: r.uid, gid: r.gid,
            size: size, links: links, blocks512: blocks,
            atime: r.time(.atime), mtime: r.time(.mtime), ctime: r.time(.ctime),
            crtime: r.hasCrtime ? r.time(.crtime) : nil, rdev: rdev, generation: r.generation,
            flags: flags, version: r.version, fileType: type)
        return RawInode(rec: r, pub: pub, fileACL: fileACL, seed: seed)
    }
}
