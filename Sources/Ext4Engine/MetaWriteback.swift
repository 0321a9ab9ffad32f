import Foundation

/// Changed metadata. `writeMeta` keeps a changed block in memory (the
/// MetadataStore's dirty set and its cache) as part of the running transaction; commits
/// (JournalCommit.swift) make transactions durable, through the journal when
/// the file system has one, else by ordered write-back in place.
///
/// Coherence rules:
/// - a dirty block is found by `block`/`blockRun` before the device is read
///   (the LRU cache may have dropped it);
/// - a checkpoint removes an entry only after its bytes are on the device, and
///   only if it was not changed again meanwhile;
/// - freeing blocks drops their dirty entries (under `flushLock`, so a
///   checkpoint in progress finishes first) and, for blocks with a copy in the
///   live log, adds revoke records to the running transaction.
///
/// The state lives in `MetadataStore` (MetadataStore.swift).
///
/// Lock order: every other engine lock → `flushLock` → the store's mutex.
extension Ext4FileSystem {
    /// Keep `b` as the new contents of metadata block `n` in the running transaction.
    func writeMeta(_ n: UInt64, _ b: [UInt8], superblock: Bool = false) throws(Ext4Error) {
        let sbBlock: UInt64 = blockSize == 1024 ? 1 : 0
        guard n < sb.blocksCount, n >= UInt64(sb.firstDataBlock), n != sbBlock || superblock, b.count == blockSize else {
            throw .corrupted("metadata write to bad block \(n)")
        }
        let w = try wstate
        let count = meta.write(n, b)
        if count == w.softLimit { meta.txn.wake() }
    }

    /// Blocks [start, start+count) were freed: forget their dirty contents,
    /// and revoke those with a copy in the live log.
    func dropDirty(_ start: UInt64, _ count: UInt64) {
        guard let w else { return }
        w.flushLock.with { meta.drop(start, count) }
    }

    /// Commit everything changed so far and wait for it (fsync of a whole
    /// file system, syncfs, FREEZE). Never called under a handle.
    func commitAll() throws(Ext4Error) {
        _ = try wstate
        try commitAndWait()
        if meta.txn.isAborted != nil { throw .io(EIO) }
    }

    /// Make what changed `ino` durable: wait for the transaction that last
    /// changed it, or (already committed) flush the device for its data.
    func commitInode(_ ino: UInt32) throws(Ext4Error) {
        _ = try wstate
        let t = meta.inodeTid(ino)
        if t > meta.txn.committedTid {
            if committerRunning {
                meta.txn.request(t)
                try meta.txn.wait(for: t)
            } else {
                try commitOnce()
            }
        } else {
            if meta.txn.isAborted != nil { throw .io(EIO) }
            try dev.flush()
        }
    }
}
