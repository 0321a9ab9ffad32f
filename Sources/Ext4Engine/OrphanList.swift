import Foundation
import Synchronization

/// The orphan list of a read-write mount (Orphans.swift): the in-memory
/// mirror of the on-disk chain (s_last_orphan, then each orphan's dtime) and
/// the kernel's references on inodes (LOOKUP and friends, dropped by FORGET).
///
/// Two locks, at their own places in the lock order (Locks.swift):
/// - `chainLock` (level 3, `orphanLock`) guards changes of the on-disk chain
///   and the reference counts. `add` and `remove` hold it across the disk
///   work their callers pass in (superblock and inode rewrites), so it stays
///   a lock of its own.
/// - The links (ino → next and ino → previous orphan) sit behind a `Mutex`
///   at level 7 (`orphanMapLock`): an inode's encoder reads them under the
///   metadata block stripes. Nothing is acquired while it is held.
final class OrphanList: @unchecked Sendable {
    /// orphanLock.
    private let chainLock = NSLock()
    /// Guarded by `chainLock`: references the kernel holds on each inode.
    private var refs: [UInt32: UInt64] = [:]

    private struct Links {
        /// ino → next orphan (the on-disk dtime of an orphan inode).
        var next: [UInt32: UInt32] = [:]
        /// ino → the orphan before it in the chain (none for the head).
        var prev: [UInt32: UInt32] = [:]
    }

    /// orphanMapLock.
    private let links = Mutex(Links())

    init() {}

    // ---- references (under chainLock) ---------------------------------------------

    /// Add `count` references to `ino`.
    func retain(_ ino: UInt32, count: UInt64) {
        chainLock.with { refs[ino, default: 0] &+= count }
    }

    /// Drop up to `count` references to `ino`. True when this dropped the last one.
    func release(_ ino: UInt32, count: UInt64) -> Bool {
        chainLock.with { () -> Bool in
            let c = refs[ino] ?? 0
            let n = c > count ? c - count : 0
            if n == 0 { refs[ino] = nil } else { refs[ino] = n }
            return n == 0 && c > 0
        }
    }

    /// Whether the kernel holds a reference on `ino`.
    func isReferenced(_ ino: UInt32) -> Bool {
        chainLock.with { (refs[ino] ?? 0) > 0 }
    }

    // ---- the chain ----------------------------------------------------------------

    /// Whether `ino` is on the chain.
    func isOrphan(_ ino: UInt32) -> Bool {
        links.withLock { $0.next[ino] != nil }
    }

    /// The orphan after `ino` (0 at the tail), nil when `ino` is not an orphan.
    func next(_ ino: UInt32) -> UInt32? {
        links.withLock { $0.next[ino] }
    }

    /// Some orphan, nil when the chain is empty.
    func any() -> UInt32? {
        links.withLock { $0.next.keys.first }
    }

    /// Put `ino` at the head of the chain, unless it is on it already:
    /// `head` reads the current head, `setHead` makes `ino` the new head on disk.
    /// Holds `chainLock` throughout.
    func add<E: Error>(_ ino: UInt32, head: () -> UInt32,
                       setHead: (UInt32) throws(E) -> Void) throws(E) {
        try chainLock.with { () throws(E) in
            if isOrphan(ino) { return }
            let h = head()
            links.withLock { l in
                l.next[ino] = h
                if h != 0 { l.prev[h] = ino }
            }
            try setHead(ino)
        }
    }

    /// Unlink `ino` from the chain, if it is on it: `setNext(pred, next)`
    /// points its predecessor past it on disk, `setHead(next)` does so when
    /// it was the head. Holds `chainLock` throughout.
    func remove<E: Error>(_ ino: UInt32, setNext: (_ pred: UInt32, _ next: UInt32) throws(E) -> Void,
                          setHead: (UInt32) throws(E) -> Void) throws(E) {
        try chainLock.with { () throws(E) in
            // The predecessor comes from the reverse map: O(1), however long the chain.
            let found: (next: UInt32, pred: UInt32?)? = links.withLock { l in
                guard let next = l.next[ino] else { return nil }
                let pred = l.prev[ino]
                l.next[ino] = nil
                l.prev[ino] = nil
                if let pred { l.next[pred] = next }
                if next != 0 { l.prev[next] = pred }
                return (next, pred)
            }
            guard let (next, pred) = found else { return }
            if let pred {
                try setNext(pred, next)
            } else {
                try setHead(next)
            }
        }
    }
}
