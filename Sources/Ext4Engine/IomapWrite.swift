import Foundation

/// The engine's side of a block-mapping (iomap) write path, where the kernel
/// writes file data to the device itself and the engine only manages the
/// map: allocate space before the data is written (unwritten extents, or
/// zeroed blocks in a block map), make it written once the data is on the
/// device, and commit the size. No FUSE knowledge.
///
/// Unlike the classic write path, none of these functions read or write file
/// data blocks (besides zeroing freshly allocated blocks of block-mapped
/// files): the kernel owns the bytes and zeroes partial blocks itself.
extension Ext4FileSystem {
    /// Call `observer(start, count)` after every run of blocks the engine frees
    /// (file data, map blocks, xattr blocks, directories), with no engine lock
    /// of the allocator held (an inode lock may be). nil removes it.
    public func setFreedBlocksObserver(_ observer: (@Sendable (UInt64, UInt64) -> Void)?) {
        guard let w else { return }
        w.alloc.freedObserver = observer
    }

    /// Make every block of [offset, offset+length) (rounded out to blocks, at most
    /// `maxBlocks` blocks from the first one) backed by storage, without changing
    /// the size. Extent-mapped files get unwritten extents over their holes (they
    /// read as zeroes until `convertUnwritten`); block-mapped files cannot
    /// describe unwritten blocks, so their new blocks are written with zeroes and
    /// flushed to the device before the map names them. Returns the runs that
    /// were allocated (empty when nothing was a hole).
    public func allocateForWrite(_ ino: UInt32, offset: UInt64, length: UInt64,
                                 maxBlocks: UInt64 = 32767) throws(Ext4Error) -> [Extent] {
        return try withHandle { () throws(Ext4Error) -> [Extent] in
            let w = try wstate
            return try w.inodeLocks.withLock(UInt64(ino)) { () throws(Ext4Error) -> [Extent] in
                var m = try loadInode(ino)
                guard m.fileType == .regular else { throw m.isDir ? .isDirectory : .invalid("not a regular file") }
                try m.mayAllocate()
                return try allocateLocked(&m, offset: offset, length: length, maxBlocks: maxBlocks)
            }
        }
    }

    /// `allocateForWrite` on a loaded regular file; stores `m` when it
    /// allocated. Caller holds the lock and a handle.
    func allocateLocked(_ m: inout MInode, offset: UInt64, length: UInt64, maxBlocks: UInt64) throws(Ext4Error) -> [Extent] {
        guard length > 0, maxBlocks > 0 else { return [] }
        let (end, o) = offset.addingReportingOverflow(length)
        guard !o, offset < maxFileSize else { throw .fileTooBig }
        let bs = UInt64(blockSize)
        let first = offset / bs
        let lastByte = min(end, maxFileSize) - 1
        let last = min(lastByte / bs, first + maxBlocks - 1)
        guard !m.hasInline else { throw .invalid("inline-data file has no block map") }
        // Only the range is looked up; new blocks continue the mapping before it.
        let ri = try rawInodeFrom(m)
        var local = try mapRange(ri, from: first, count: last - first + 1)
        let goal = try goalBefore(ri, first, m)
        let allocated = try allocateHoles(m, &local, first: first, last: last, unwritten: m.hasExtents,
                                          fallbackGoal: goal)
        guard !allocated.isEmpty else { return [] }
        do throws(Ext4Error) {
            if !m.hasExtents {
                // The zeroes must be on the device before the map points at
                // the blocks: a crash then exposes zeroes, never stale data.
                for x in allocated { try zeroBlocks(x.physical, x.length) }
                try dev.flush()
            }
            try putExtents(&m, allocated, from: first, to: last + 1, newBlocks: allocated.reduce(0) { $0 + $1.length })
        } catch {
            for x in allocated { try? freeBlocks(x.physical, x.length) }
            throw error
        }
        m.bumpVersion()
        try storeInode(m)
        return allocated
    }

    /// What a write-class mapping request got.
    public struct WriteMapping: Sendable {
        public var mapping: FileMapping
        /// The runs allocated for it (empty when nothing was a hole).
        public var allocated: [Extent] = []
        /// The allocated blocks were zeroed through the device (block maps
        /// cannot describe unwritten blocks) and flushed.
        public var zeroedOnDevice = false
    }

    /// The most one write mapping allocates on a block-mapped file (its new
    /// blocks are zeroed on the device before the map names them).
    static let maxZeroedAllocation: UInt64 = 8 << 20

    /// A write-class iomap BEGIN as one operation: the mapping at `pos` for a
    /// write of `count` bytes, after making storage there when `allocate` and
    /// `pos` is in a hole: exactly the hole's part of the range, at most one
    /// maximal unwritten extent (block maps: `maxZeroedAllocation` bytes of
    /// zeroed blocks). `nowait`: `.wouldBlock` instead of allocating. Without
    /// `allocate` (zeroing, unsharing) nothing changes and no handle is taken.
    /// Immutable files refuse; appends to append-only ones are the caller's
    /// to check. Returns the mapping and the runs allocated.
    public func mapForWrite(_ ino: UInt32, at pos: UInt64, count: UInt64, limit: UInt64, allocate: Bool,
                            nowait: Bool) throws(Ext4Error) -> WriteMapping {
        guard allocate else {
            return try withReadLock(ino) { () throws(Ext4Error) -> WriteMapping in
                let ri = try rawInode(ino)
                guard ri.pub.fileType == .regular else { throw .invalid("not a regular file") }
                if ri.flags & InodeFlag.immutable != 0 { throw .permission }
                guard pos < maxFileBytes(extents: ri.hasExtents) else { throw .fileTooBig }
                return WriteMapping(mapping: try fileMapping(ri, at: pos, count: count, limit: limit))
            }
        }
        return try withHandle { () throws(Ext4Error) -> WriteMapping in
            let w = try wstate
            return try w.inodeLocks.withLock(UInt64(ino)) { () throws(Ext4Error) -> WriteMapping in
                var m = try loadInode(ino)
                guard m.fileType == .regular else { throw .invalid("not a regular file") }
                try m.mayAllocate()
                guard pos < maxFileBytes(extents: m.hasExtents) else { throw .fileTooBig }
                let before = try fileMapping(try rawInodeFrom(m), at: pos, count: count, limit: limit)
                guard case .hole(_, let holeEnd) = before else { return WriteMapping(mapping: before) }
                if nowait { throw .wouldBlock }
                let bs = UInt64(blockSize)
                let (reqEnd, o) = pos.addingReportingOverflow(max(count, 1))
                let (holeEndByte, o2) = holeEnd.multipliedReportingOverflow(by: bs)
                let stop = min(o2 ? UInt64.max : holeEndByte, o ? UInt64.max : reqEnd)
                guard stop > pos else { return WriteMapping(mapping: before) }
                let cap = m.hasExtents ? Ext4FileSystem.maxUnwrittenLen : max(1, Ext4FileSystem.maxZeroedAllocation / bs)
                let runs = try allocateLocked(&m, offset: pos, length: stop - pos, maxBlocks: cap)
                guard !runs.isEmpty else { return WriteMapping(mapping: before) }
                return WriteMapping(mapping: try fileMapping(try rawInodeFrom(m), at: pos, count: count, limit: limit),
                                    allocated: runs, zeroedOnDevice: !m.hasExtents)
            }
        }
    }

    /// An iomap END for a buffered write that grew a block-mapped file to
    /// `end`: its new blocks are written (zeroed) ones, and e2fsck forbids
    /// those past i_size, so the size is committed now. Extent files (their
    /// new blocks are unwritten, the size comes at IOEND) and inline files
    /// are left alone. One operation.
    public func endBufferedWrite(_ ino: UInt32, end: UInt64) throws(Ext4Error) {
        try withHandle { () throws(Ext4Error) -> Void in
            let w = try wstate
            guard end <= maxFileSize else { throw .fileTooBig }
            try w.inodeLocks.withLock(UInt64(ino)) { () throws(Ext4Error) in
                var m = try loadInode(ino)
                guard m.fileType == .regular, !m.hasExtents, !m.hasInline, end > m.size else { return }
                m.size = end
                m.bumpVersion()
                try storeInode(m)
            }
        }
    }

    /// IO completion: mark unwritten blocks of [offset, offset+length) (rounded
    /// out to blocks) written, splitting and merging extents as needed, and raise
    /// the size to `newSize` if that is larger. Blocks that are holes or already
    /// written are left alone (the mapping may have changed meanwhile). Returns
    /// the size afterwards.
    public func convertUnwritten(_ ino: UInt32, offset: UInt64, length: UInt64,
                                 newSize: UInt64?) throws(Ext4Error) -> UInt64 {
        return try withHandle { () throws(Ext4Error) -> UInt64 in
            let w = try wstate
            let bs = UInt64(blockSize)
            let (end, o) = offset.addingReportingOverflow(length)
            guard !o else { throw .invalid("range overflows") }
            if let s = newSize, s > maxFileSize { throw .fileTooBig }
            return try w.inodeLocks.withLock(UInt64(ino)) { () throws(Ext4Error) -> UInt64 in
                var m = try loadInode(ino)
                guard m.fileType == .regular else { throw m.isDir ? .isDirectory : .invalid("not a regular file") }
                var changed = false
                if length > 0 && m.hasExtents && !m.hasInline {
                    let first = offset / bs
                    let stop = end / bs + (end % bs == 0 ? 0 : 1)
                    let ri = try rawInodeFrom(m)
                    let pieces = try mapRange(ri, from: first, count: stop - first).filter { $0.unwritten }
                    if !pieces.isEmpty {
                        let written = pieces.map { Extent(logical: $0.logical, physical: $0.physical, length: $0.length, unwritten: false) }
                        try putExtents(&m, written, from: first, to: stop, newBlocks: 0)
                        changed = true
                    }
                }
                if let s = newSize, s > m.size {
                    m.size = s
                    changed = true
                }
                if changed {
                    m.bumpVersion()
                    try storeInode(m)
                }
                return m.size
            }
        }
    }

    /// A write into [offset, offset+length) failed. On a block-mapped file the
    /// blocks BEGIN allocated there (written zeroes) that lie wholly past the
    /// size would stay beyond EOF: free them. Extent files keep their unwritten
    /// extents (they read as zeroes and e2fsck accepts them past EOF).
    public func dropBlocksPastSize(_ ino: UInt32, offset: UInt64, length: UInt64) throws(Ext4Error) {
        try withHandle { () throws(Ext4Error) -> Void in
            let w = try wstate
            let (end, o) = offset.addingReportingOverflow(length)
            guard !o, length > 0 else { return }
            try w.inodeLocks.withLock(UInt64(ino)) { () throws(Ext4Error) in
                var m = try loadInode(ino)
                guard m.fileType == .regular, !m.hasExtents, !m.hasInline else { return }
                let bs = UInt64(blockSize)
                let keep = m.size / bs + (m.size % bs == 0 ? 0 : 1)
                let from = max(keep, offset / bs)
                let stop = end / bs + (end % bs == 0 ? 0 : 1)
                guard stop > from else { return }
                var exts = try allExtents(m)
                let meta = try mapMetaBlocks(m)
                let removed = Ext4FileSystem.cut(&exts, from: from, count: stop - from)
                guard !removed.isEmpty else { return }
                try storeMap(&m, exts, oldMeta: meta)
                for x in removed { try freeBlocks(x.physical, x.length) }
                try storeInode(m)
            }
        }
    }

    /// Set the size of a file whose partial blocks the caller zeroes itself:
    /// like a truncate, but no data block is read or written. Blocks past the
    /// new end are freed when shrinking. Caller holds the lock and stores `m`.
    func truncateMapOnly(_ m: inout MInode, _ newSize: UInt64) throws(Ext4Error) {
        if m.hasInline { return try truncateInode(&m, newSize) }
        if newSize < m.size {
            let bs = UInt64(blockSize)
            var exts = try allExtents(m)
            let meta = try mapMetaBlocks(m)
            let keep = newSize / bs + (newSize % bs == 0 ? 0 : 1)
            let removed = Ext4FileSystem.cut(&exts, from: keep, count: UInt64.max - keep)
            if !removed.isEmpty {
                try storeMap(&m, exts, oldMeta: meta)
                for x in removed { try freeBlocks(x.physical, x.length) }
            }
        }
        m.size = newSize
    }

    /// fallocate for a file whose partial blocks the kernel zeroes itself:
    /// PUNCH_HOLE and ZERO_RANGE act on whole blocks only (punch frees them,
    /// zero makes them unwritten, and zero also allocates unwritten space over
    /// holes of the range, partial edge blocks included). Other modes are the
    /// engine's `fallocate`, which touches no data.
    func fallocateMapped(_ ino: UInt32, mode: UInt32, offset: UInt64, length: UInt64) throws(Ext4Error) {
        try withHandle { () throws(Ext4Error) -> Void in
            guard mode & 0x12 != 0 else { try fallocate(ino, mode: mode, offset: offset, length: length); return }
            let w = try wstate
            let (end, keepSize, punch, zero) = try checkFallocate(mode: mode, offset: offset, length: length)
            try w.inodeLocks.withLock(UInt64(ino)) { () throws(Ext4Error) in
                var m = try loadForFallocate(ino, mode: mode)
                if m.hasInline {
                    // Not an iomap file: the classic fallocate converts and zeroes.
                    try fallocate(ino, mode: mode, offset: offset, length: length)
                    return
                }
                guard m.hasExtents || punch else { throw .unsupported("fallocate mode \(mode) on a block-mapped file") }
                let bs = UInt64(blockSize)
                var exts = try allExtents(m)
                let meta = try mapMetaBlocks(m)
                let fb = offset / bs + (offset % bs == 0 ? 0 : 1), lb = end / bs
                var removed: [Extent] = []
                if lb > fb { removed = Ext4FileSystem.cut(&exts, from: fb, count: lb - fb) }
                var allocated: [Extent] = []
                if zero {
                    // Reuse the blocks as unwritten extents, then fill the holes.
                    for var x in removed { x.unwritten = true; Ext4FileSystem.put(&exts, x) }
                    removed = []
                    allocated = try allocateHoles(m, &exts, first: offset / bs, last: (end - 1) / bs, unwritten: true)
                }
                do throws(Ext4Error) {
                    try storeMap(&m, exts, oldMeta: meta)
                } catch {
                    for x in allocated { try? freeBlocks(x.physical, x.length) }
                    throw error
                }
                for x in removed { try freeBlocks(x.physical, x.length) }
                if zero && !keepSize && end > m.size { m.size = end }
                let now = nowSpec()
                m.setTime(.mtime, now); m.setTime(.ctime, now)
                m.bumpVersion()
                try storeInode(m)
            }
        }
    }

    // ---- helpers -----------------------------------------------------------------

    /// Allocate the holes of blocks [first, last] into `exts` (as unwritten or
    /// written extents). On failure nothing stays allocated.
    /// `fallbackGoal`: where to allocate when `exts` has nothing before a hole.
    func allocateHoles(_ m: MInode, _ exts: inout [Extent], first: UInt64, last: UInt64,
                       unwritten: Bool, fallbackGoal: UInt64? = nil) throws(Ext4Error) -> [Extent] {
        guard first <= last else { return [] }
        let sorted = exts.sorted { $0.logical < $1.logical }
        var holes: [(UInt64, UInt64)] = []
        var cur = first
        for x in sorted {
            let xe = x.logical + x.length
            if xe <= cur { continue }
            if x.logical > last { break }
            if x.logical > cur { holes.append((cur, x.logical)) }
            cur = xe
            if cur > last { break }
        }
        if cur <= last { holes.append((cur, last + 1)) }
        let maxLen = unwritten ? Ext4FileSystem.maxUnwrittenLen : Ext4FileSystem.maxWrittenLen
        var allocated: [Extent] = []
        do throws(Ext4Error) {
            for (hs, he) in holes {
                var c = hs
                while c < he {
                    let before = exts.contains { $0.logical < c }
                    let goal = before ? goalFor(exts, c, m) : (fallbackGoal ?? goalFor(exts, c, m))
                    let (p, got) = try allocBlocks(goal: goal, count: Int(min(he - c, maxLen)))
                    let x = Extent(logical: c, physical: p, length: UInt64(got), unwritten: unwritten)
                    allocated.append(x)
                    Ext4FileSystem.put(&exts, x)
                    c += UInt64(got)
                }
            }
        } catch {
            for x in allocated { try? freeBlocks(x.physical, x.length) }
            throw error
        }
        return allocated
    }

    /// Write zeroes over `count` blocks at `start` (at most 1 MiB per write).
    func zeroBlocks(_ start: UInt64, _ count: UInt64) throws(Ext4Error) {
        guard validRun(start, count) else { throw corrupt("zeroing blocks \(start)+\(count) outside fs") }
        let bs = UInt64(blockSize)
        let chunk = max(1, (1 << 20) / bs)
        let zeros = [UInt8](repeating: 0, count: Int(min(count, chunk) * bs))
        var b = start
        let end = start + count
        while b < end {
            let n = min(end - b, chunk)
            try devWrite(b * bs, n == min(count, chunk) ? zeros : Array(zeros.prefix(Int(n * bs))))
            b += n
        }
    }
}
