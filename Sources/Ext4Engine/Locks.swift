import Foundation
import Glibc

/*
 Lock order of the ext4 engine's write side, outermost first. A thread may
 only acquire a lock that comes later in this list than every lock it holds.

  0. the transaction handle (Transaction.swift) – opened before any lock
                       below; a commit waits for every handle, so nothing
                       waits for a commit while holding one. commitLock is
                       taken only with no handle open.

  1. renameLock      – serializes RENAME (tree-ancestry check, multi-dir moves).
  2. inode locks     – striped per inode number (`InodeLocks`, 1024 stripes);
                       several are always taken in one call, sorted by stripe
                       index and de-duplicated (`withInodes`), never one after
                       another. Protects the inode's bytes, its block map /
                       extent tree, directory blocks, xattr block contents it owns.
  3. orphanLock      – the on-disk orphan chain and the in-memory reference
                       counts (`OrphanList`'s chain lock, held by its `add`
                       and `remove` across the disk work, and its refcounts).
     xattr refcount lock (`XattrShareIndex.withRefcountChange`) – same
                       level, never held with orphanLock: every change of an
                       xattr block's refcount.
  4. group locks     – one per block group (`BlockAllocator.withGroup`), taken
                       one at a time by the allocators; protects that group's
                       bitmaps and counters.
  5. gdLock          – `BlockAllocator`'s lock: group descriptor table blocks +
                       superblock bytes (descriptor rewrite, s_free_* totals,
                       s_last_orphan), the directory rotor. Held by its
                       `updateDescriptor` and `updateSuperblock` across writing
                       the block.
  6. metadata block stripes – read-modify-write of one metadata block shared by
                       several owners (inode table blocks, shared xattr blocks).
  7. orphanMapLock   – the `OrphanList` links' `Mutex`, read while an inode is
                       being encoded; nothing is taken while it is held.
  8. the block cache's shard mutexes (BlockCache, inside MetadataStore), leaf.
  Below all of these: flushLock → the MetadataStore dirty-state mutex
  (MetaWriteback.swift, MetadataStore.swift). Leaves:
  preallocLock, the Reservations mutex, the XattrShareIndex mutex (the hash →
  block index), the multi-mount protection state (MMP.swift), the
  Transactions condition.
*/


/// A fixed set of striped locks. `StripedLocks` uses plain mutexes;
/// `RecursiveStripedLocks` (inode locks) lets a thread that holds a stripe
/// re-enter it (readers and writers on one thread).
final class Striped<Lock: NSLocking & AnyObject>: @unchecked Sendable {
    private let locks: [Lock]
    init(_ n: Int, make: () -> Lock) { locks = (0..<max(1, n)).map { _ in make() } }

    func stripe(_ key: UInt64) -> Int {
        Int(((key &* 0x9E37_79B9_7F4A_7C15) >> 40) % UInt64(locks.count))
    }

    /// Lock every key's stripe in ascending stripe order (deadlock-free).
    func withLocks<R, E: Error>(_ keys: [UInt64], _ body: () throws(E) -> R) throws(E) -> R {
        let stripes = Array(Set(keys.map(stripe))).sorted()
        for s in stripes { locks[s].lock() }
        defer { for s in stripes.reversed() { locks[s].unlock() } }
        return try body()
    }

    func withLock<R, E: Error>(_ key: UInt64, _ body: () throws(E) -> R) throws(E) -> R {
        let l = locks[stripe(key)]
        l.lock()
        defer { l.unlock() }
        return try body()
    }
}

typealias StripedLocks = Striped<NSLock>
typealias RecursiveStripedLocks = Striped<NSRecursiveLock>

/// The inode locks: recursive stripes that also count lock sections, the
/// times a thread holding no inode lock takes one or several (re-entering a
/// held stripe is not a new section). One request is one engine operation
/// when it makes one section; tests read the count.
final class InodeLocks: @unchecked Sendable {
    private let stripes: RecursiveStripedLocks
    private var depthKey = pthread_key_t()
    private let counter = NSLock()
    // counter
    private var count = 0

    init(_ n: Int) {
        stripes = RecursiveStripedLocks(n)
        pthread_key_create(&depthKey, nil)
    }

    deinit { pthread_key_delete(depthKey) }

    private func enter() {
        let d = Int(bitPattern: pthread_getspecific(depthKey))
        if d == 0 { counter.with { count += 1 } }
        pthread_setspecific(depthKey, UnsafeRawPointer(bitPattern: d + 1))
    }

    private func leave() {
        let d = Int(bitPattern: pthread_getspecific(depthKey))
        pthread_setspecific(depthKey, UnsafeRawPointer(bitPattern: max(0, d - 1)))
    }

    /// Lock sections begun so far, by all threads.
    var sections: Int { counter.with { count } }

    func withLocks<R, E: Error>(_ keys: [UInt64], _ body: () throws(E) -> R) throws(E) -> R {
        try stripes.withLocks(keys) { () throws(E) -> R in
            enter()
            defer { leave() }
            return try body()
        }
    }

    func withLock<R, E: Error>(_ key: UInt64, _ body: () throws(E) -> R) throws(E) -> R {
        try stripes.withLock(key) { () throws(E) -> R in
            enter()
            defer { leave() }
            return try body()
        }
    }
}

extension Striped where Lock == NSLock {
    convenience init(_ n: Int) { self.init(n, make: { NSLock() }) }
}

extension Striped where Lock == NSRecursiveLock {
    convenience init(_ n: Int) { self.init(n, make: { NSRecursiveLock() }) }
}

extension NSLock {
    @inline(__always)
    func with<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        lock()
        defer { unlock() }
        return try body()
    }
}

extension Ext4FileSystem {
    /// Public read entry points take the inode's lock on read-write mounts so they
    /// never observe a half-rewritten map or directory. Readers hold one lock only.
    @inline(__always)
    func withReadLock<R>(_ ino: UInt32, _ body: () throws(Ext4Error) -> R) throws(Ext4Error) -> R {
        guard let w else { return try body() }
        return try w.inodeLocks.withLock(UInt64(ino), body)
    }
}
