import Synchronization

/// Blocks that are free in the bitmaps but that the allocator must not hand
/// out. Nothing here is ever written to the disk, so a crash forgets it:
/// - preallocation windows (Prealloc.swift), as the kernel keeps them;
/// - blocks freed by a transaction that has not committed yet. Until it
///   commits, a crash brings back the file that owned them, so they must
///   not hold someone else's data by then.
/// A leaf: no engine lock is taken while its mutex is held.
final class Reservations: Sendable {
    enum Owner: Hashable, Sendable {
        case window(UInt32)      // inode whose preallocation window it is
        case freedIn(UInt64)     // transaction that freed the blocks
    }

    struct Run: Sendable, Equatable {
        var start: UInt64
        var count: UInt64
        var owner: Owner
    }

    private struct State {
        var byGroup: [Int: [Run]] = [:]
        var freedBlocks: UInt64 = 0
    }

    private let state = Mutex(State())
    private let groupOf: @Sendable (UInt64) -> Int

    init(groupOf: @escaping @Sendable (UInt64) -> Int) { self.groupOf = groupOf }

    /// Reserve [start, start+count), which lies in one group.
    func add(_ start: UInt64, _ count: UInt64, _ owner: Owner) {
        guard count > 0 else { return }
        let g = groupOf(start)
        state.withLock { s in
            s.byGroup[g, default: []].append(Run(start: start, count: count, owner: owner))
            if case .freedIn = owner { s.freedBlocks &+= count }
        }
    }

    /// Drop the part of `owner`'s reservation inside [start, start+count).
    func remove(_ start: UInt64, _ count: UInt64, _ owner: Owner) {
        let g = groupOf(start)
        let end = start &+ count
        state.withLock { s in
            guard var runs = s.byGroup[g] else { return }
            var out: [Run] = []
            for r in runs {
                let re = r.start + r.count
                guard r.owner == owner, r.start < end, start < re else { out.append(r); continue }
                if r.start < start { out.append(Run(start: r.start, count: start - r.start, owner: r.owner)) }
                if end < re { out.append(Run(start: end, count: re - end, owner: r.owner)) }
            }
            runs = out
            s.byGroup[g] = runs.isEmpty ? nil : runs
        }
    }

    /// Forget every run freed by transactions up to and including `tid`.
    func releaseFreed(through tid: UInt64) {
        state.withLock { s in
            for (g, runs) in s.byGroup {
                var kept: [Run] = []
                for r in runs {
                    if case .freedIn(let t) = r.owner, t <= tid { s.freedBlocks &-= r.count } else { kept.append(r) }
                }
                s.byGroup[g] = kept.isEmpty ? nil : kept
            }
        }
    }

    /// Blocks waiting for their freeing transaction to commit.
    var pendingFreed: UInt64 { state.withLock { $0.freedBlocks } }

    /// Mark every reserved block of group `g` (first block `base`, `nbits`
    /// blocks) as used in a copy of its bitmap; `freed: false` leaves out
    /// the blocks of uncommitted frees (the last resort before ENOSPC).
    func overlay(_ g: Int, base: UInt64, nbits: Int, _ bm: inout [UInt8], freed: Bool = true) {
        let runs = state.withLock { $0.byGroup[g] ?? [] }
        for r in runs {
            if !freed, case .freedIn = r.owner { continue }
            var b = r.start
            while b < r.start + r.count {
                if b >= base, b - base < UInt64(nbits) { bitSet(&bm, Int(b - base)) }
                b += 1
            }
        }
    }
}
