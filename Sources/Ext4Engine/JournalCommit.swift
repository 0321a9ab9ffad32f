import CShim
import Foundation
import Synchronization
import Glibc

/// The journal's log as the commit path sees it: where the next transaction
/// goes, how much of the log holds transactions not yet known to be at
/// home, and the journal superblock. Only the commit path touches it,
/// under `WriteState.commitLock`.
final class JournalLog: @unchecked Sendable {
    var jsb: JournalSuperblock
    /// Physical block of each log block, as runs of the journal inode.
    let map: [Extent]
    let first: UInt64
    let maxLen: UInt64
    /// Next log block to write.
    var head: UInt64
    /// Log blocks holding live transactions (from the tail to `head`).
    var used: UInt64 = 0
    /// The on-disk superblock says the log is empty (s_start = 0).
    var emptyOnDisk = true
    /// Sequence number of the next transaction written to the log. Replay
    /// stops at the first gap, so only transactions that are written take
    /// a number: an empty commit (nothing changed) writes nothing and
    /// leaves it alone, while its transaction id moves on.
    var nextSeq: UInt32

    init(jsb: JournalSuperblock, map: [Extent]) {
        self.jsb = jsb
        self.map = map
        first = UInt64(jsb.first)
        // With fast commits the log wraps before their area, as the kernel's
        // replay expects it to.
        maxLen = UInt64(jsb.logEnd)
        head = first
        nextSeq = jsb.sequence
    }

    var capacity: UInt64 { maxLen - first }

    func next(_ l: UInt64) -> UInt64 { l + 1 >= maxLen ? first : l + 1 }

    func physical(_ l: UInt64) -> UInt64? {
        guard let m = map.run(covering: l) else { return nil }
        return m.physical + (l - m.logical)
    }
}

/// One closed transaction: the metadata blocks it changed (their contents
/// when it closed) and the blocks it revoked.
struct ClosedTransaction: Sendable {
    var tid: UInt64
    var blocks: [(block: UInt64, seq: UInt64, bytes: [UInt8])]
    var revokes: [UInt64]
}

/*
 The commit of a transaction, in order:
  1. close it (Transactions.close): no handle open, its blocks are copied out;
  2. write to the log: the journal superblock when the log was empty, the
     descriptor blocks with the block copies, the revoke blocks;
  3. flush the device: file data written by the transaction's operations
     (always written before their metadata) and the log are on the device;
  4. write the commit block and flush: the transaction is durable;
  5. checkpoint: write the copies to their home blocks. They become durable
     at the next flush; the log space of committed transactions is reused
     only after such a flush (`makeRoom`).
 Without a journal, steps 2-4 become: flush, write the blocks home, flush.
 A device error anywhere aborts: the mount turns read-only and nothing more
 is reported durable.
*/
extension Ext4FileSystem {
    static let commitIntervalDefault: Double = 5

    /// Open the journal for writing, or explain why it cannot be used.
    func openJournalLog() throws(Ext4Error) -> JournalLog {
        let jino = sb.journalInum
        guard sb.has(compat: Compat.hasJournal), jino != 0 else { throw .unsupported("no internal journal") }
        let ji = try rawInode(jino, checkLive: false)
        let bs = UInt64(blockSize)
        let jblocks = ji.pub.size / bs
        let map = try mapRange(ji, from: 0, count: jblocks)
        guard let p0 = map.first, p0.logical == 0 else { throw corrupt("journal block 0 not mapped") }
        var raw = [UInt8](repeating: 0, count: blockSize)
        try Ext4FileSystem.readRaw(dev, at: p0.physical * bs, into: &raw)
        var jsb = try JournalSuperblock(raw)
        guard jsb.version == 2 else { throw .unsupported("journal superblock v1") }
        guard UInt64(jsb.blockSize) == bs else { throw .unsupported("journal block size differs") }
        guard UInt64(jsb.maxLen) <= jblocks, jsb.first >= 1, UInt64(jsb.first) + 8 < UInt64(jsb.logEnd) else {
            throw corrupt("journal geometry invalid")
        }
        // Every log block must be mapped.
        var covered: UInt64 = 0
        for m in map where m.logical == covered { covered += m.length }
        guard covered >= UInt64(jsb.maxLen) else { throw corrupt("journal inode has holes") }
        guard jsb.start == 0 else { throw .unsupported("journal still holds transactions") }
        guard jsb.compat & JBD2.compatChecksumV1 == 0 else { throw .unsupported("journal checksum v1") }
        let writable = JBD2.incompatRevoke | JBD2.incompat64bit | JBD2.incompatCsumV2 | JBD2.incompatCsumV3
            | JBD2.incompatFastCommit
        guard jsb.incompat & ~writable == 0 else {
            throw .unsupported("journal features 0x\(String(jsb.incompat, radix: 16))")
        }
        if jsb.hasChecksums {
            guard jsb.checksumType == JBD2.checksumTypeCRC32C, jsb.checksumValid() else {
                throw corrupt("journal superblock checksum")
            }
        }
        guard jsb.is64 || sb.blocksCount <= UInt64(UInt32.max) else { throw .unsupported("32-bit journal on a 64-bit file system") }
        if !jsb.revoke {
            jsb.incompat |= JBD2.incompatRevoke
            try devWrite(p0.physical * bs, jsb.sealed())
        }
        let log = JournalLog(jsb: jsb, map: map)
        if jsb.fastCommit {
            // Only full commits from here on: no record left in the fast-commit
            // area may be taken for one of ours by a later replay.
            let zero = [UInt8](repeating: 0, count: blockSize)
            for l in UInt64(jsb.logEnd)..<UInt64(jsb.maxLen) {
                guard let p = log.physical(l) else { throw corrupt("journal block \(l) not mapped") }
                try devWrite(p * bs, zero)
            }
        }
        return log
    }

    // ---- the committer ---------------------------------------------------------------

    /// Start the thread that commits every `commitInterval` seconds, when a
    /// transaction grows past its soft limit, and when someone waits.
    func startCommitter() {
        guard let w else { return }
        w.committerState.with { w.committerRunning = true; w.stopCommitter = false }
        let interval = w.commitInterval
        let meta = self.meta
        let t = Thread { [weak self] in
            cshim_set_thread_name("ext4-commit")
            defer { w.committerDone.signal() }
            var last = Date()
            while true {
                let asked = meta.txn.sleepCommitter(timeout: min(0.2, interval))
                guard let fs = self, !w.committerState.with({ w.stopCommitter }) else { return }
                if meta.txn.isAborted != nil { continue }
                let size = meta.runningCount
                let due = Date().timeIntervalSince(last) >= interval
                guard asked || size >= w.softLimit || due else { continue }
                if due || size > 0 { last = Date() }
                do { try fs.commitOnce() } catch {
                    // commitOnce aborted the journal and logged it.
                }
            }
        }
        t.start()
    }

    /// Stop the committer and wait for it (its last commit finishes first).
    func stopCommitter() {
        guard let w else { return }
        let running = w.committerState.with { () -> Bool in
            w.stopCommitter = true
            defer { w.committerRunning = false }
            return w.committerRunning
        }
        if running {
            meta.txn.wake()
            _ = w.committerDone.wait(timeout: .now() + 60)
        }
    }

    var committerRunning: Bool {
        guard let w else { return false }
        return w.committerState.with { w.committerRunning }
    }

    // ---- one commit --------------------------------------------------------------------

    /// Close the running transaction and make it durable.
    func commitOnce() throws(Ext4Error) {
        let w = try wstate
        if meta.txn.isAborted != nil { throw .io(EIO) }
        try w.commitLock.with { () throws(Ext4Error) in
            let (tid, closed) = meta.txn.close { t -> ClosedTransaction in closeTransaction(w, t) }
            do throws(Ext4Error) {
                if closed.blocks.isEmpty && closed.revokes.isEmpty {
                    // No metadata changed; data written in place may still wait for a flush.
                    try dev.flush()
                } else if let log = w.log {
                    try writeTransaction(log, closed)
                    try checkpoint(w, closed)
                } else {
                    try writeBack(w, closed)
                }
            } catch {
                abortJournal(w, error)
                throw error
            }
            w.alloc.reservations.releaseFreed(through: tid)
            meta.pruneInodeTids(committed: tid)
            meta.txn.markCommitted(tid)
        }
    }

    /// With no handle open: copy out the transaction's blocks (the superblock,
    /// with the current free counts, among them) and its revokes.
    private func closeTransaction(_ w: WriteState, _ t: UInt64) -> ClosedTransaction {
        if meta.runningChanged { try? updateSuper() }
        // From now on, freeing one of these blocks needs a revoke record.
        let (blocks, rv) = meta.takeRunning(journaled: w.log != nil)
        return ClosedTransaction(tid: t, blocks: blocks, revokes: rv)
    }

    private func abortJournal(_ w: WriteState, _ e: Ext4Error) {
        if meta.txn.isAborted == nil {
            clog.logger.critical("ext4 journal aborted after a device error (\(e)); the file system is read-only from now on, changes not yet committed are lost")
        }
        meta.txn.abort(e)
    }

    // ---- shutdown ------------------------------------------------------------------------

    /// FS_IOC_SHUTDOWN: stop as a crash would. With `flushLog`, the running
    /// transaction is committed first (the log flushed); without it, it is
    /// lost. From then on every operation fails with EIO (`checkAlive`),
    /// nothing more is written, and unmount leaves the journal as it is, for
    /// the next mount (ours, the kernel's or e2fsck) to replay.
    public func shutdown(flushLog: Bool) {
        guard !shutDown.load(ordering: .acquiring) else { return }
        if flushLog, w != nil, meta.txn.isAborted == nil { try? commitAll() }
        shutDown.store(true, ordering: .releasing)
        clog.logger.warning("ext4: file system shut down\(flushLog ? " after committing the journal" : ""); every operation now fails with EIO, and the next mount replays the journal")
        if w != nil { meta.txn.abort(.io(EIO)) }
    }

    /// Whether `shutdown` happened.
    public var isShutDown: Bool { shutDown.load(ordering: .acquiring) }

    /// Where the kernel's ext4 checks for a shutdown: every change (withHandle),
    /// open, reads of data, symlinks and xattr values, fsync. Not lookups,
    /// stat, readdir or listxattr, which it still answers.
    @inline(__always)
    func checkAlive() throws(Ext4Error) {
        if shutDown.load(ordering: .acquiring) { throw .io(EIO) }
    }

    /// Log blocks a transaction needs: descriptors, copies, revoke blocks, commit.
    func logBlocksNeeded(_ log: JournalLog, blocks: Int, revokes: Int) -> UInt64 {
        let j = log.jsb
        let room = blockSize - 12 - j.tailBytes - 16
        let perDesc = max(1, room / j.tagBytes)
        let descs = (blocks + perDesc - 1) / perDesc
        let perRevoke = max(1, (blockSize - 16 - j.tailBytes) / (j.is64 ? 8 : 4))
        let rblocks = (revokes + perRevoke - 1) / perRevoke
        return UInt64(descs + blocks + rblocks + 1)
    }

    /// Steps 2-4 of a commit.
    private func writeTransaction(_ log: JournalLog, _ t: ClosedTransaction) throws(Ext4Error) {
        let w = try wstate
        let need = logBlocksNeeded(log, blocks: t.blocks.count, revokes: t.revokes.count)
        if need > log.capacity {
            // Larger than the whole log: write it in place, in order, and start the log afresh.
            clog.logger.warning("ext4 journal: a transaction of \(t.blocks.count) blocks exceeds the journal; written in place")
            try dev.flush()
            try writeHome(w, t.blocks)
            try dev.flush()
            try resetLog(log)
            return
        }
        // The log starts afresh below `t`, whose blocks stay journaled:
        // freeing one of them later needs a revoke.
        if log.used + need > log.capacity { try makeRoom(log, keeping: t.blocks.map(\.block)) }
        let seq = log.nextSeq
        let j = log.jsb
        var writes: [(UInt64, [UInt8])] = []   // (log block, bytes)
        let startBlock = log.head
        var l = log.head
        func put(_ b: [UInt8]) { writes.append((l, b)); l = log.next(l) }

        // Descriptors, each followed by the copies it describes.
        var i = 0
        while i < t.blocks.count {
            var desc = JBD2.header(.descriptor, seq, size: blockSize)
            var off = 12
            var copies: [[UInt8]] = []
            var firstTag = true
            var lastTagOff = -1
            while i < t.blocks.count {
                let extra = firstTag ? 16 : 0
                guard off + j.tagBytes + extra <= blockSize - j.tailBytes else { break }
                let (blk, _, bytes) = t.blocks[i]
                var copy = bytes
                var flags: UInt32 = firstTag ? 0 : JBD2.tagSameUUID
                if copy.be32(0) == JBD2.magic {
                    copy.putBE32(0, 0)
                    flags |= JBD2.tagEscaped
                }
                let cs = j.hasChecksums ? JournalTag.dataChecksum(copy, seq: seq, j) : 0
                JournalTag(fsBlock: blk, flags: flags, checksum: cs).encode(into: &desc, at: off, j)
                lastTagOff = off
                off += j.tagBytes
                if firstTag {
                    desc.putBytes(off, j.uuid)
                    off += 16
                    firstTag = false
                }
                copies.append(copy)
                i += 1
            }
            if lastTagOff >= 0 {
                let f = j.csumV3 ? desc.be32(lastTagOff + 4) : UInt32(desc.be16(lastTagOff + 6))
                let flags = f | JBD2.tagLast
                if j.csumV3 { desc.putBE32(lastTagOff + 4, flags) } else { desc.putBE16(lastTagOff + 6, UInt16(truncatingIfNeeded: flags)) }
            }
            j.sealTail(&desc)
            put(desc)
            for c in copies { put(c) }
        }
        // Revoke records.
        let rs = j.is64 ? 8 : 4
        var r = 0
        while r < t.revokes.count {
            var rb = JBD2.header(.revoke, seq, size: blockSize)
            var off = 16
            while r < t.revokes.count && off + rs <= blockSize - j.tailBytes {
                let v = t.revokes[r]
                if j.is64 {
                    rb.putBE32(off, UInt32(truncatingIfNeeded: v >> 32))
                    rb.putBE32(off + 4, UInt32(truncatingIfNeeded: v))
                } else {
                    rb.putBE32(off, UInt32(truncatingIfNeeded: v))
                }
                off += rs
                r += 1
            }
            rb.putBE32(12, UInt32(off))
            j.sealTail(&rb)
            put(rb)
        }
        if log.emptyOnDisk {
            log.jsb.start = UInt32(truncatingIfNeeded: startBlock)
            log.jsb.sequence = seq
            writes.append((0, log.jsb.sealed()))
        }
        try writeLog(log, writes)
        try dev.flush()
        log.emptyOnDisk = false
        let now = nowSpec()
        let commit = j.commitBlock(seq: seq, size: blockSize, sec: UInt64(max(0, now.sec)), nsec: now.nsec)
        try writeLog(log, [(l, commit)])
        try dev.flush()
        log.head = log.next(l)
        log.used += need
        log.nextSeq &+= 1
    }

    /// Write log blocks, coalescing runs that are contiguous on the device.
    private func writeLog(_ log: JournalLog, _ writes: [(UInt64, [UInt8])]) throws(Ext4Error) {
        var runs: [(UInt64, [UInt8])] = []
        for (l, bytes) in writes {
            guard let p = log.physical(l) else { throw corrupt("journal block \(l) not mapped") }
            if let lastRun = runs.last, lastRun.0 + UInt64(lastRun.1.count / blockSize) == p, lastRun.1.count < 1 << 20 {
                runs[runs.count - 1].1 += bytes
            } else {
                runs.append((p, bytes))
            }
        }
        for (p, bytes) in runs { try devWrite(p * UInt64(blockSize), bytes) }
    }

    /// Every committed transaction is checkpointed; once the device has its
    /// home blocks, the whole log is free again.
    private func makeRoom(_ log: JournalLog, keeping: [UInt64]) throws(Ext4Error) {
        try dev.flush()
        try resetLog(log, keeping: keeping)
    }

    /// Mark the log empty on disk; the next transaction written takes
    /// `log.nextSeq`. `keeping`: the blocks of the transaction about to be
    /// written, which were marked journaled when it closed.
    func resetLog(_ log: JournalLog, keeping: [UInt64] = []) throws(Ext4Error) {
        _ = try wstate
        log.jsb.start = 0
        log.jsb.sequence = log.nextSeq
        try writeLog(log, [(0, log.jsb.sealed())])
        try dev.flush()
        log.used = 0
        log.emptyOnDisk = true
        meta.forgetJournaled(except: keeping)
    }

    /// Step 5: write a committed transaction's copies home.
    private func checkpoint(_ w: WriteState, _ t: ClosedTransaction) throws(Ext4Error) {
        try writeHome(w, t.blocks)
    }

    /// Write blocks to their home locations in block order, coalescing
    /// neighbours, then forget dirty entries not changed since.
    private func writeHome(_ w: WriteState, _ blocks: [(block: UInt64, seq: UInt64, bytes: [UInt8])]) throws(Ext4Error) {
        guard !blocks.isEmpty else { return }
        try w.flushLock.with { () throws(Ext4Error) in
            // A block freed since the copy was taken is still written: its
            // blocks are not reused before the freeing transaction commits
            // (Reservations), which is after this.
            let list = blocks.sorted { $0.block < $1.block }
            let maxRun = max(1, (1 << 20) / blockSize)
            var i = 0
            while i < list.count {
                var j = i + 1
                while j < list.count && list[j].block == list[j - 1].block + 1 && j - i < maxRun { j += 1 }
                var buf: [UInt8] = []
                buf.reserveCapacity((j - i) * blockSize)
                for k in i..<j { buf += list[k].bytes }
                try devWrite(list[i].block * UInt64(blockSize), buf)
                i = j
            }
            meta.forgetWritten(list)
        }
    }

    /// A commit without a journal: data first, then the metadata in place.
    private func writeBack(_ w: WriteState, _ t: ClosedTransaction) throws(Ext4Error) {
        try dev.flush()
        try writeHome(w, t.blocks)
        try dev.flush()
    }
}
