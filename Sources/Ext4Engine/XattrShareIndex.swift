import Foundation
import Synchronization

/// Xattr blocks that inodes may share (XattrWrite.swift), and the lock that
/// serialises every change of an xattr block's refcount.
///
/// Two pieces, because they are held for different spans:
/// - `withRefcountChange` is a real lock at level 3 of the lock order (with
///   `orphanLock`, never held together with it). It is held across disk
///   work (reading the block, allocating, freeing, writing it), so deciding
///   "this block is mine alone" and freeing or rewriting it cannot race with
///   another inode starting to share it.
/// - The hash → blocks index sits behind a `Mutex`, a leaf: nothing else is
///   taken while it is held, so it may be read or changed with or without
///   the refcount lock.
final class XattrShareIndex: Sendable {
    private let refcountLock = NSLock()
    /// Header hash → xattr blocks with that hash (candidates for sharing).
    private let index = Mutex<[UInt32: Set<UInt64>]>([:])

    init() {}

    /// Run `body` as the one change of xattr refcounts in progress.
    func withRefcountChange<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        try refcountLock.with(body)
    }

    /// Remember `blk` as a block whose header hash is `hash`.
    func note(_ blk: UInt64, hash: UInt32) {
        index.withLock { _ = $0[hash, default: []].insert(blk) }
    }

    /// The blocks remembered under `hash` (a snapshot), nil when none.
    func candidates(_ hash: UInt32) -> Set<UInt64>? {
        index.withLock { $0[hash] }
    }

    /// Forget `blk` under `hash` only (its header hash has changed).
    func remove(_ blk: UInt64, hash: UInt32) {
        index.withLock { _ = $0[hash]?.remove(blk) }
    }

    /// Forget `blk` under every hash (it is freed or about to be rewritten).
    func forget(_ blk: UInt64) {
        index.withLock { m in
            for (h, var set) in m where set.contains(blk) {
                set.remove(blk)
                m[h] = set.isEmpty ? nil : set
            }
        }
    }
}
