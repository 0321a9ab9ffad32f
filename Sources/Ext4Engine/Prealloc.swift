/// Per-file preallocation. An append that allocates also reserves a window
/// of blocks right after the ones it needs, in memory only (Reservations:
/// the bitmap still shows them free, the allocator skips them); the next
/// appends of the same file take their blocks from it, so files written side
/// by side stay contiguous. The window is given back when the last writer
/// closes the file, when the file is freed, at unmount, and whenever an
/// allocation would otherwise fail with ENOSPC. A crash forgets it.
struct Prealloc: Sendable {
    var logical: UInt64   // the next logical block the window serves
    var physical: UInt64  // where that block goes
    var count: UInt64     // blocks left in the window
}

extension Ext4FileSystem {
    /// Files smaller than this (in blocks) get no window (the kernel's stream threshold).
    static let preallocMinFileBlocks: UInt64 = 16
    /// Largest window, in bytes.
    static let preallocMaxBytes: UInt64 = 8 << 20

    /// Blocks for logical block `l` of `m` (up to `count`, contiguous), from
    /// the file's window when it serves `l`, else from the allocator. Appends
    /// (at or past the last block of the file) open a new window.
    func allocData(_ m: MInode, logical l: UInt64, goal: UInt64, count: Int) throws(Ext4Error) -> (UInt64, Int) {
        let w = try wstate
        let want = UInt64(max(1, count))
        let taken: (UInt64, Int)? = w.preallocLock.with {
            guard var p = w.prealloc[m.ino], p.logical == l, p.count > 0 else { return nil }
            let k = min(want, p.count)
            let r = (p.physical, Int(k))
            p.logical += k; p.physical += k; p.count -= k
            w.prealloc[m.ino] = p.count > 0 ? p : nil
            return r
        }
        if let taken {
            try claimWindowBlocks(m.ino, taken.0, UInt64(taken.1))
            return taken
        }
        let bs = UInt64(blockSize)
        let sizeBlocks = m.size / bs + (m.size % bs == 0 ? 0 : 1)
        let endAfter = l + want
        var extra: UInt64 = 0
        if l + 1 >= sizeBlocks && endAfter >= Ext4FileSystem.preallocMinFileBlocks {
            // Window about as large as the file so far, capped.
            var win: UInt64 = Ext4FileSystem.preallocMinFileBlocks
            while win < endAfter && win < Ext4FileSystem.preallocMaxBytes / bs { win *= 2 }
            extra = min(win, Ext4FileSystem.preallocMaxBytes / bs)
        }
        let windowOwner: UInt32? = extra > 0 ? m.ino : nil
        let (p, got) = try allocBlocksOrReclaim(goal: goal, count: Int(want + extra), mark: Int(want), window: windowOwner)
        let used = min(UInt64(got), want)
        if UInt64(got) > used {
            let window = Prealloc(logical: l + used, physical: p + used, count: UInt64(got) - used)
            let old: Prealloc? = w.preallocLock.with {
                let o = w.prealloc[m.ino]
                w.prealloc[m.ino] = window
                return o
            }
            if let old { w.alloc.reservations.remove(old.physical, old.count, .window(m.ino)) }
        }
        return (p, Int(used))
    }

    /// allocBlocks, retried once after giving back every window on ENOSPC.
    func allocBlocksOrReclaim(goal: UInt64, count: Int, mark: Int = Int.max, window: UInt32? = nil) throws(Ext4Error) -> (UInt64, Int) {
        do throws(Ext4Error) {
            return try allocBlocks(goal: goal, count: count, mark: mark, window: window)
        } catch .noSpace {
            guard try dropAllPreallocations() > 0 else { throw .noSpace }
            return try allocBlocks(goal: goal, count: count, mark: mark, window: window)
        }
    }

    /// Give back `ino`'s window, if any.
    func dropPreallocation(_ ino: UInt32) throws(Ext4Error) {
        guard let w else { return }
        let old = w.preallocLock.with { w.prealloc.removeValue(forKey: ino) }
        if let old { w.alloc.reservations.remove(old.physical, old.count, .window(ino)) }
    }

    /// Give back every window; returns how many blocks came back.
    @discardableResult
    func dropAllPreallocations() throws(Ext4Error) -> UInt64 {
        guard let w else { return 0 }
        let all = w.preallocLock.with { () -> [(UInt32, Prealloc)] in
            let v = w.prealloc.map { ($0.key, $0.value) }
            w.prealloc = [:]
            return v
        }
        var n: UInt64 = 0
        for (ino, p) in all {
            w.alloc.reservations.remove(p.physical, p.count, .window(ino))
            n += p.count
        }
        return n
    }

    /// Blocks currently held in preallocation windows.
    public var preallocatedBlocks: UInt64 {
        guard let w else { return 0 }
        return w.preallocLock.with { w.prealloc.values.reduce(0) { $0 + $1.count } }
    }

    /// A file was opened; `forWriting`: with write access.
    public func fileOpened(_ ino: UInt32, forWriting: Bool) {
        guard let w, forWriting else { return }
        w.preallocLock.with { w.openWriters[ino, default: 0] += 1 }
    }

    /// A file handle was closed. When the last writer goes, the file's
    /// preallocation window is trimmed away and its extent tree repacked.
    public func fileClosed(_ ino: UInt32, forWriting: Bool) {
        guard let w, forWriting else { return }
        let last = w.preallocLock.with { () -> Bool in
            let n = (w.openWriters[ino] ?? 0) - 1
            w.openWriters[ino] = n > 0 ? n : nil
            return n <= 0
        }
        guard last else { return }
        do throws(Ext4Error) {
            try withHandle { () throws(Ext4Error) in
                try w.inodeLocks.withLock(UInt64(ino)) { () throws(Ext4Error) in
                    try dropPreallocation(ino)
                    try packExtentTree(ino)
                }
            }
        } catch {
            clog.report("inode \(ino): giving back preallocated blocks: \(error)")
        }
    }
}
