import Foundation

/// The write side's name for an inode record held in memory while it is
/// changed (the same typed view the read side decodes: `InodeRecord`).
typealias MInode = InodeRecord

extension Ext4FileSystem {
    func loadInode(_ ino: UInt32, checkLive: Bool = true) throws(Ext4Error) -> MInode {
        try rawInode(ino, checkLive: checkLive).rec
    }

    func inodeSeed(_ ino: UInt32, _ gen: UInt32) -> UInt32 {
        InodeRecord.checksumSeed(fsSeed: csumSeed, ino: ino, generation: gen)
    }

    /// Set i_blocks from a count of fs blocks.
    func setBlocks(_ m: inout MInode, fsBlocks: UInt64) throws(Ext4Error) {
        try m.setFsBlocks(fsBlocks, hugeFile: sb.has(roCompat: RoCompat.hugeFile), blockSize: blockSize)
    }

    /// Write an inode into its table block (read-modify-write under the block stripe lock).
    func storeInode(_ m: MInode) throws(Ext4Error) {
        let w = try wstate
        var r = m
        // The orphan chain owns dtime of orphan inodes.
        if let next = w.orphans.next(m.ino) { r.dtime = next }
        let (blk, off) = try inodeLocation(m.ino)
        try w.metaLocks.withLock(blk) { () throws(Ext4Error) in
            sealInodeChecksum(&r)
            var tb = try block(blk)
            guard off + sb.inodeSize <= tb.count, r.b.count == sb.inodeSize else {
                throw corrupt("inode \(m.ino) outside its table block")
            }
            tb.putBytes(off, r.b)
            try writeMeta(blk, tb)
        }
        noteInodeChanged(m.ino)
    }

    /// metadata_csum: recompute the inode checksum over its on-disk bytes.
    func sealInodeChecksum(_ r: inout InodeRecord) {
        guard sb.metadataCsum else { return }
        r.sealChecksum(seed: r.checksumSeed(fsSeed: csumSeed))
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
            guard let b = tb.sub(off, sb.inodeSize) else { throw corrupt("inode \(ino) outside its table block") }
            var r: InodeRecord
            do throws(Ext4Error) { r = try InodeRecord(ino: ino, bytes: b, inodeSize: sb.inodeSize) } catch { throw reported(error) }
            r.dtime = v
            sealInodeChecksum(&r)
            tb.putBytes(off, r.b)
            try writeMeta(blk, tb)
        }
    }

    /// Fresh inode bytes for a new inode.
    func newInodeBytes(_ ino: UInt32, mode: UInt16, uid: UInt32, gid: UInt32, now: Timespec) -> MInode {
        let want = max(Int(sb.minExtraIsize), Int(sb.wantExtraIsize), 32)
        var m = InodeRecord(blank: ino, inodeSize: sb.inodeSize, extraIsize: want)
        m.mode = mode
        m.uid = uid
        m.gid = gid
        var gen: UInt32 = 0
        arc4random_buf(&gen, 4)
        m.generation = gen
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
