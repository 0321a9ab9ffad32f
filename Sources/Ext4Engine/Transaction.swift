import Foundation
import Glibc

/// Transactions and handles. Every engine operation that changes metadata
/// runs inside one handle (`withHandle`), taken before any other engine lock.
/// All changes made under handles of the running transaction are committed
/// together (JournalCommit.swift): the commit closes the transaction by
/// waiting until no handle is open, takes its blocks, and lets the next
/// transaction start. A transaction therefore never holds half of an
/// operation. Handles nest on one thread (an operation calling another).
///
/// Nothing waits for a commit while holding a handle: a commit waits for
/// every handle, so that would deadlock. Waiting for a commit (fsync, sync,
/// a full transaction) happens before a handle is taken or after it ends.
final class Transactions: @unchecked Sendable {
    private let cond = NSCondition()
    // cond
    private var handles = 0
    private var closing = false
    private(set) var running: UInt64 = 1
    /// Highest transaction whose commit is durable (or that had nothing to commit).
    private(set) var committed: UInt64 = 0
    /// Highest transaction someone waits for.
    private var wanted: UInt64 = 0
    private var aborted: Ext4Error? = nil
    private var wakeCommitter = false
    /// Outermost handles opened so far (tests count them per request).
    private var begun = 0

    private var depthKey = pthread_key_t()

    init(firstTid: UInt64) {
        running = max(1, firstTid)
        committed = running - 1
        pthread_key_create(&depthKey, nil)
    }

    deinit { pthread_key_delete(depthKey) }

    /// Before anything ran: continue the journal's sequence.
    func restart(at tid: UInt64) {
        cond.lock()
        running = max(1, tid)
        committed = running - 1
        cond.unlock()
    }

    private var depth: Int {
        get { Int(bitPattern: pthread_getspecific(depthKey)) }
        set { pthread_setspecific(depthKey, UnsafeRawPointer(bitPattern: newValue)) }
    }

    var isAborted: Ext4Error? { cond.lock(); defer { cond.unlock() }; return aborted }

    /// Open a handle on the running transaction; returns its tid.
    func begin() throws(Ext4Error) -> UInt64 {
        if depth > 0 {
            depth += 1
            cond.lock(); defer { cond.unlock() }
            return running
        }
        cond.lock()
        while closing && aborted == nil { cond.wait() }
        if aborted != nil { cond.unlock(); throw .readOnly }
        handles += 1
        begun += 1
        let t = running
        cond.unlock()
        depth = 1
        return t
    }

    func end() {
        let d = depth - 1
        depth = d
        guard d == 0 else { return }
        cond.lock()
        handles -= 1
        // Only a closing commit waits for the last handle; waking everyone
        // on the condition (the committer, fsync waiters) after every
        // operation cost a context switch per request.
        if handles == 0 && closing { cond.broadcast() }
        cond.unlock()
    }

    var inHandle: Bool { depth > 0 }

    /// Close the running transaction: wait until no handle is open, then run
    /// `take` (which moves the transaction's blocks out) with new handles held
    /// off, and start the next transaction. Returns the closed tid.
    func close<R>(_ take: (UInt64) -> R) -> (UInt64, R) {
        cond.lock()
        while closing { cond.wait() }
        closing = true
        while handles > 0 { cond.wait() }
        let t = running
        cond.unlock()
        // New handles wait for `closing`; `take` may take engine locks.
        let r = take(t)
        cond.lock()
        running = t + 1
        closing = false
        cond.broadcast()
        cond.unlock()
        return (t, r)
    }

    /// Transaction `t` is durable.
    func markCommitted(_ t: UInt64) {
        cond.lock()
        if t > committed { committed = t }
        cond.broadcast()
        cond.unlock()
    }

    /// Stop everything: no new handle, waiters get EIO.
    func abort(_ e: Ext4Error) {
        cond.lock()
        if aborted == nil { aborted = e }
        closing = false
        cond.broadcast()
        cond.unlock()
    }

    /// Ask the committer to commit up to `t`.
    func request(_ t: UInt64) {
        cond.lock()
        if t > wanted { wanted = t }
        wakeCommitter = true
        cond.broadcast()
        cond.unlock()
    }

    /// Wait until `t` is committed (or the journal aborted).
    func wait(for t: UInt64) throws(Ext4Error) {
        cond.lock(); defer { cond.unlock() }
        while committed < t && aborted == nil { cond.wait() }
        if committed < t { throw .io(EIO) }
    }

    /// The committer sleeps here until asked or until `timeout` passes;
    /// returns whether someone asked.
    func sleepCommitter(timeout: Double) -> Bool {
        cond.lock(); defer { cond.unlock() }
        let deadline = Date().addingTimeInterval(timeout)
        while !wakeCommitter {
            if !cond.wait(until: deadline) { break }
        }
        let woke = wakeCommitter
        wakeCommitter = false
        return woke
    }

    func wake() {
        cond.lock()
        wakeCommitter = true
        cond.broadcast()
        cond.unlock()
    }

    var wantedTid: UInt64 { cond.lock(); defer { cond.unlock() }; return wanted }
    var committedTid: UInt64 { cond.lock(); defer { cond.unlock() }; return committed }
    var runningTid: UInt64 { cond.lock(); defer { cond.unlock() }; return running }
    var handlesBegun: Int { cond.lock(); defer { cond.unlock() }; return begun }
}

extension Ext4FileSystem {
    /// Run `body` as one operation of the running transaction. When the
    /// transaction is too large, first wait for it to commit. An ENOSPC
    /// while blocks freed by uncommitted transactions exist commits them
    /// and runs `body` once more (those blocks are free once the commit
    /// that frees them is durable). Every operation undoes its own partial
    /// allocations before it throws, so the rerun starts from the same state.
    func withHandle<R>(_ body: () throws(Ext4Error) -> R) throws(Ext4Error) -> R {
        try checkAlive()
        let w = try wstate
        let tx = meta.txn
        if !tx.inHandle { try throttle(w) }
        _ = try tx.begin()
        do {
            defer { tx.end() }
            return try body()
        } catch .noSpace where !tx.inHandle && w.alloc.reservations.pendingFreed > 0 {
            try commitAndWait()
            _ = try tx.begin()
            defer { tx.end() }
            return try body()
        }
    }

    /// Hold a new operation back while the running transaction is over its hard limit.
    private func throttle(_ w: WriteState) throws(Ext4Error) {
        var spins = 0
        while meta.runningCount > w.hardLimit {
            try commitAndWait()
            spins += 1
            if spins > 3 { break }
        }
    }

    /// Commit the running transaction and wait for it. Never called under a handle.
    func commitAndWait() throws(Ext4Error) {
        _ = try wstate
        guard committerRunning else { return try commitOnce() }
        let t = meta.txn.runningTid
        meta.txn.request(t)
        try meta.txn.wait(for: t)
    }

    /// Record that `ino` changed in the running transaction (for fsync).
    func noteInodeChanged(_ ino: UInt32) {
        guard w != nil else { return }
        let t = meta.txn.runningTid
        meta.noteInode(ino, tid: t)
    }
}

extension Ext4FileSystem {
    /// Tests: outermost transaction handles opened and inode-lock sections
    /// begun so far, by every thread (zero on read-only mounts).
    var operationCounts: (handles: Int, lockSections: Int) {
        guard let w else { return (0, 0) }
        return (meta.txn.handlesBegun, w.inodeLocks.sections)
    }
}
