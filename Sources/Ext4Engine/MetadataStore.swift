import Synchronization

/// The metadata of a mount: the block cache, the dirty blocks and the
/// transactions.
/// - `cache` (BlockCache.swift): recently read and written metadata blocks,
///   bounded; read-only mounts use only this part.
/// - the dirty state, one `Mutex<State>`: the newest contents of every block
///   not yet written home, the running transaction's block and revoke sets,
///   the blocks with a copy in the live log, and the transaction that last
///   changed each inode. It sits where `dirtyLock` used to in the lock order:
///   after `flushLock`, below every other engine lock; nothing is acquired
///   while it is held.
/// - `txn` (Transaction.swift): handles, the running transaction's id, commits
///   waited for.
/// Reads look in the cache, then the dirty set, then the device; a write
/// updates the dirty set and the cache together. MetaWriteback.swift and
/// JournalCommit.swift describe the rules.
final class MetadataStore: Sendable {
    typealias Entry = (seq: UInt64, bytes: [UInt8])
    typealias Copy = (block: UInt64, seq: UInt64, bytes: [UInt8])

    private struct State {
        /// Newest contents of every metadata block not yet written home.
        var dirty: [UInt64: Entry] = [:]
        var dirtySeq: UInt64 = 0
        /// Blocks changed by the running transaction.
        var running: Set<UInt64> = []
        /// Blocks the running transaction revokes (freed, with a copy in the live log).
        var revokes: Set<UInt64> = []
        /// Blocks with a copy in a live transaction of the log.
        var journaled: Set<UInt64> = []
        /// The transaction that last changed each inode (fsync waits for it).
        var inodeTid: [UInt32: UInt64] = [:]
    }

    private let state = Mutex(State())
    private let cache: BlockCache
    /// Handles and commits of this mount's transactions.
    let txn: Transactions

    init(cacheBlocks: Int) {
        cache = BlockCache(capacity: max(16, cacheBlocks))
        txn = Transactions(firstTid: 1)
    }

    // ---- reads ----------------------------------------------------------------------

    /// The write epoch; take it before looking a block up, and pass it to
    /// `fill` with what the device returned.
    var epoch: UInt64 { cache.epoch }

    /// Block `n` as known in memory: cached, else dirty.
    func lookup(_ n: UInt64) -> [UInt8]? {
        if let b = cache.get(n) { return b }
        return state.withLock { $0.dirty[n]?.bytes }
    }

    /// Blocks [start, start+count) as known in memory, by index; nil where the
    /// device must be read.
    func lookup(_ start: UInt64, _ count: Int) -> [[UInt8]?] {
        var out: [[UInt8]?] = (0..<count).map { cache.get(start + UInt64($0)) }
        guard out.contains(where: { $0 == nil }) else { return out }
        state.withLock { s in
            guard !s.dirty.isEmpty else { return }
            for i in 0..<count where out[i] == nil {
                if let d = s.dirty[start + UInt64(i)] { out[i] = d.bytes }
            }
        }
        return out
    }

    /// Cache what the device returned for block `n`, unless a write to any
    /// block happened since `since` (an `epoch` taken before the lookup).
    func fill(_ n: UInt64, _ b: [UInt8], since: UInt64) {
        cache.fill(n, b, since: since)
    }

    // ---- the running transaction --------------------------------------------------------

    /// Keep `b` as the newest contents of block `n`, in the running
    /// transaction. Returns the number of blocks the transaction has changed.
    func write(_ n: UInt64, _ b: [UInt8]) -> Int {
        defer { cache.wrote(n, b) }
        return state.withLock { s in
            s.dirtySeq &+= 1
            s.dirty[n] = (s.dirtySeq, b)
            s.running.insert(n)
            // Written again after being freed: its new copy must replay.
            if !s.revokes.isEmpty { s.revokes.remove(n) }
            return s.running.count
        }
    }

    /// Blocks [start, start+count) were freed: forget their dirty contents,
    /// and revoke those with a copy in the live log. Caller holds `flushLock`.
    func drop(_ start: UInt64, _ count: UInt64) {
        state.withLock { s in
            if count <= UInt64(s.dirty.count) {
                for i in 0..<count where s.dirty.removeValue(forKey: start + i) != nil { s.running.remove(start + i) }
            } else if !s.dirty.isEmpty {
                for k in s.dirty.keys where k >= start && k - start < count { s.dirty[k] = nil; s.running.remove(k) }
            }
            if s.journaled.isEmpty { return }
            if count <= UInt64(s.journaled.count) {
                for i in 0..<count where s.journaled.contains(start + i) { s.revokes.insert(start + i) }
            } else {
                for k in s.journaled where k >= start && k - start < count { s.revokes.insert(k) }
            }
        }
    }

    /// Blocks changed by the running transaction.
    var runningCount: Int { state.withLock { $0.running.count } }

    /// Whether the running transaction changed or revoked anything.
    var runningChanged: Bool { state.withLock { !$0.running.isEmpty || !$0.revokes.isEmpty } }

    /// Close the running transaction: copy out its blocks in block order and
    /// its revokes, and start an empty one. With `journaled`, the copies go
    /// to the log, so freeing one of these blocks from now on needs a revoke.
    func takeRunning(journaled: Bool) -> (blocks: [Copy], revokes: [UInt64]) {
        state.withLock { s in
            var blocks: [Copy] = []
            blocks.reserveCapacity(s.running.count)
            for b in s.running.sorted() {
                if let e = s.dirty[b] { blocks.append((b, e.seq, e.bytes)) }
            }
            let rv = s.revokes.sorted()
            if journaled { for b in blocks { s.journaled.insert(b.block) } }
            s.running = []
            s.revokes = []
            return (blocks, rv)
        }
    }

    /// `list` is written home: forget each entry not changed since its copy
    /// was taken and not in the running transaction. Caller holds `flushLock`.
    func forgetWritten(_ list: [Copy]) {
        state.withLock { s in
            for e in list where s.dirty[e.block]?.seq == e.seq && !s.running.contains(e.block) {
                s.dirty[e.block] = nil
            }
        }
    }

    /// The log is empty: no block has a copy in it but `except`, the blocks
    /// of a closed transaction that is yet to be written to it.
    func forgetJournaled(except: [UInt64] = []) {
        state.withLock { $0.journaled = Set(except) }
    }

    /// Forget every dirty block and the running transaction's blocks (unmount).
    func discardDirty() {
        state.withLock { $0.dirty = [:]; $0.running = [] }
    }

    /// Record that `ino` changed in transaction `tid`.
    func noteInode(_ ino: UInt32, tid: UInt64) {
        state.withLock { $0.inodeTid[ino] = tid }
    }

    /// The transaction that last changed `ino`, 0 when none is known.
    func inodeTid(_ ino: UInt32) -> UInt64 {
        state.withLock { $0.inodeTid[ino] ?? 0 }
    }

    /// Transaction `tid` committed: past 4096 inodes, forget those it covers.
    func pruneInodeTids(committed tid: UInt64) {
        state.withLock { s in
            if s.inodeTid.count > 4096 { s.inodeTid = s.inodeTid.filter { $0.value > tid } }
        }
    }
}
