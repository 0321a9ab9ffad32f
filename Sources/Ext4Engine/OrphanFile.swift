/// The orphan file (COMPAT_ORPHAN_FILE, the default of e2fsprogs since 1.47):
/// an inode named by s_orphan_file_inum whose blocks (OrphanBlockRecord,
/// OnDisk.swift) list orphan inodes, in place of the chain through
/// s_last_orphan. RO_COMPAT_ORPHAN_PRESENT says it may hold entries.
///
/// This engine keeps its own orphans on the chain (Orphans.swift), which the
/// kernel's ext4 and e2fsck process on such file systems too (the kernel
/// falls back to it when the file is full), so it never adds entries. At a
/// read-write mount it releases the orphans a crash left in the file (the
/// kernel's, or e2fsck's to do), clears their slots, and clears
/// ORPHAN_PRESENT, all in the mount's first transaction.
extension Ext4FileSystem {
    func recoverOrphanFile() throws(Ext4Error) {
        guard sb.has(compat: Compat.orphanFile) else { return }
        let ino = sb.orphanFileInum
        guard ino >= 1, ino <= sb.inodesCount, ino != Ext4FileSystem.rootIno else {
            throw corrupt("orphan file inode \(ino) out of range")
        }
        let of = try loadInode(ino, checkLive: false)
        guard of.fileType == .regular else {
            throw corrupt("orphan file inode \(ino) is not a regular file")
        }
        let bs = UInt64(blockSize)
        guard of.size % bs == 0, of.size / bs <= 1 << 20 else { throw corrupt("orphan file size \(of.size) is not whole blocks") }
        let physical = try blocksInOrder(of, what: "orphan file")
        let seed = InodeRecord.checksumSeed(fsSeed: csumSeed, ino: ino, generation: of.generation)
        var seen = Set<UInt32>()
        for p in physical {
            var ob = try OrphanBlockRecord(try block(p), block: p)
            if sb.metadataCsum && !ob.checksumMatches(inodeSeed: seed) {
                throw corrupt("orphan file block \(p) checksum mismatch")
            }
            var changed = false
            for i in 0..<ob.entryCount {
                let o = ob.entry(i)
                guard o != 0 else { continue }
                guard o >= sb.firstIno, o <= sb.inodesCount, o != ino else {
                    throw corrupt("orphan file names inode \(o)")
                }
                if seen.insert(o).inserted {
                    var m = try loadInode(o, checkLive: false)
                    try releaseRecoveredOrphan(&m)
                }
                ob.clear(i)
                changed = true
            }
            if changed {
                if sb.metadataCsum { ob.seal(inodeSeed: seed) }
                try writeMeta(p, ob.b)
            }
        }
        if sb.has(roCompat: RoCompat.orphanPresent) {
            try updateSuper { s in s.orphanPresent = false }
        }
    }
}
