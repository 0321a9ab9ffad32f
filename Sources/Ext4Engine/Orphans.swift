import Foundation

/// Mount/unmount of a read-write file system, the orphan list, inode lifetime.
extension Ext4FileSystem {
    /// Called by `open` for read-write mounts: choose journal or ordered
    /// write-back, mark the file system in use, clean up orphans left by a
    /// crash, and start the committer.
    func startWriting(commitInterval: Double) throws(Ext4Error) {
        let w = try wstate
        try loadWriteState(w)
        w.commitInterval = commitInterval
        if sb.has(compat: Compat.hasJournal) {
            do {
                let log = try openJournalLog()
                w.log = log
                w.softLimit = max(16, Int(log.capacity / 4))
                w.hardLimit = max(32, Int(log.capacity / 2))
                meta.txn.restart(at: UInt64(log.jsb.sequence))
            } catch {
                clog.logger.warning("ext4: not writing the journal (\(error)); metadata is written back in order without it")
            }
        }
        let now = UInt32(truncatingIfNeeded: nowSpec().sec)
        try updateSuper(writeThrough: true) { s in
            s.state &= ~SuperblockRecord.stateValid  // not clean while mounted
            if w.log != nil { s.needsRecovery = true }
            s.mtime = now
            s.mountCount &+= 1
        }
        try dev.flush()
        try withHandle { () throws(Ext4Error) in
            try recoverOrphans()
            try recoverOrphanFile()
        }
        try commitOnce()
        startCommitter()
    }

    var lastOrphan: UInt32 { wstateOrNil?.alloc.lastOrphan ?? 0 }
    var wstateOrNil: WriteState? { w }

    func isOrphan(_ ino: UInt32) -> Bool {
        guard let w else { return false }
        return w.orphans.isOrphan(ino)
    }

    /// Free (or truncate) every inode on the on-disk orphan chain left by a crash.
    func recoverOrphans() throws(Ext4Error) {
        var ino = lastOrphan
        var seen = Set<UInt32>()
        while ino != 0 {
            guard ino >= 1, ino <= sb.inodesCount, seen.insert(ino).inserted, seen.count <= 1_000_000 else {
                throw corrupt("orphan list is corrupt at inode \(ino)")
            }
            var m = try loadInode(ino, checkLive: false)
            let next = m.dtime
            m.dtime = 0
            try releaseRecoveredOrphan(&m)
            ino = next
        }
        try updateSuper { s in s.lastOrphan = 0 }
    }

    /// An orphan left by a crash: freed when no name links it, else cut back
    /// to its size (blocks past it were allocated by an extension or a
    /// truncate that did not finish).
    func releaseRecoveredOrphan(_ m: inout MInode) throws(Ext4Error) {
        if m.links == 0 {
            try destroyInode(&m)
        } else {
            if m.fileType == .regular { try truncateInode(&m, m.size) }
            try storeInode(m)
        }
    }

    /// Put `ino` at the head of the orphan chain. The caller stores the inode afterwards.
    func addOrphan(_ ino: UInt32) throws(Ext4Error) {
        let w = try wstate
        try w.orphans.add(ino, head: { w.alloc.lastOrphan }) { (h: UInt32) throws(Ext4Error) in
            try updateSuper { s in s.lastOrphan = h }
        }
    }

    /// Unlink `ino` from the orphan chain. The caller stores the inode (dtime 0) afterwards.
    func removeOrphan(_ ino: UInt32) throws(Ext4Error) {
        let w = try wstate
        try w.orphans.remove(ino, setNext: { (pred: UInt32, next: UInt32) throws(Ext4Error) in
            try patchDtime(pred, next)
        }, setHead: { (next: UInt32) throws(Ext4Error) in
            try updateSuper { s in s.lastOrphan = next }
        })
    }

    public func retain(_ ino: UInt32, count: UInt64) {
        guard let w, count > 0 else { return }
        w.orphans.retain(ino, count: count)
    }

    public func release(_ ino: UInt32, count: UInt64) throws(Ext4Error) {
        try withHandle { () throws(Ext4Error) -> Void in
            let w = try wstate
            let last = w.orphans.release(ino, count: count)
            guard last, isOrphan(ino) else { return }
            try w.inodeLocks.withLock(UInt64(ino)) { () throws(Ext4Error) in
                guard isOrphan(ino), !w.orphans.isReferenced(ino) else { return }
                var m = try loadInode(ino, checkLive: false)
                guard m.links == 0 else { return }
                try removeOrphan(ino)
                m.dtime = 0
                try destroyInode(&m)
            }
        }
    }

    /// The transaction that last changed `ino` is durable, and so is its data.
    public func fsync(_ ino: UInt32, dataOnly: Bool) throws(Ext4Error) {
        try commitInode(ino)
    }

    /// Everything is durable (syncfs, FREEZE).
    public func sync() throws(Ext4Error) {
        try commitAll()
    }

    /// Give back what lives only in memory, free the orphans, commit, write
    /// every block home, empty the journal and mark the file system clean.
    public func unmount() throws(Ext4Error) {
        let w = try wstate
        if meta.txn.isAborted != nil { stopCommitter(); try? releaseMMP(); throw .io(EIO) }
        try withHandle { () throws(Ext4Error) in
            try dropAllPreallocations()
            try packAllExtentTrees()
        }
        // Free every remaining orphan, referenced or not.
        while true {
            let ino = w.orphans.any()
            guard let ino else { break }
            try withHandle { () throws(Ext4Error) in
                try w.inodeLocks.withLock(UInt64(ino)) { () throws(Ext4Error) in
                    var m = try loadInode(ino, checkLive: false)
                    try removeOrphan(ino)
                    m.dtime = 0
                    if m.links == 0 { try destroyInode(&m) } else { try storeInode(m) }
                }
            }
        }
        stopCommitter()
        try commitOnce()
        try w.commitLock.with { () throws(Ext4Error) in
            try dev.flush()
            if let log = w.log { try resetLog(log) }
        }
        let now = UInt32(truncatingIfNeeded: nowSpec().sec)
        try updateSuper(writeThrough: true) { s in
            s.state |= SuperblockRecord.stateValid
            s.needsRecovery = false
            s.wtime = now
        }
        try dev.flush()
        // The superblock's block is still dirty in memory; nothing writes it again.
        meta.discardDirty()
        try releaseMMP()
    }
}
