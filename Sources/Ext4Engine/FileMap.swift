/// Where a file's bytes are, for the callers that ask about the map rather
/// than the data: FIEMAP records, SEEK_DATA / SEEK_HOLE, BMAP, and the
/// one-mapping-at-a-time answers of a block-mapping (iomap) data path. Each
/// is answered under one read lock of the inode, from a consistent map.

/// One mapping around a file block: what a block-mapping data path hands the
/// kernel for one request.
public enum FileMapping: Sendable, Equatable {
    /// File blocks [start, end) hold no data (they read as zeroes).
    case hole(start: UInt64, end: UInt64)
    /// One extent, or one contiguous run of a block map (`merged` when that
    /// run is several block pointers reported as one).
    case mapped(Extent, merged: Bool)
    /// The data lives in the inode (inline data); only block 0 is this.
    case inline
}

/// One FIEMAP record, in bytes.
public struct FileExtentRecord: Sendable, Equatable {
    public var logical: UInt64
    public var physical: UInt64
    public var length: UInt64
    /// Allocated but unwritten (reads as zeroes).
    public var unwritten = false
    /// The data is inside the inode: its address is not block aligned.
    public var inline = false
    /// Several block-map pointers reported as one run.
    public var merged = false
    /// The last record of the range asked for.
    public var last = false
}

extension Ext4FileSystem {
    /// The largest extent, in blocks: a window this long from a block never
    /// cuts the extent that holds it.
    static let maxExtentBlocks: UInt64 = 32768
    /// How far ahead a block map is scanned for one mapping.
    static let blockMapWindow: UInt64 = 4096
    /// Logical block numbers are 32 bits.
    static let logicalBlockLimit: UInt64 = 1 << 32

    /// The map of [fromBlock, fromBlock+count), or nothing for inodes without one.
    private func mapOf(_ ri: RawInode, from: UInt64, count: UInt64) throws(Ext4Error) -> [Extent] {
        guard hasBlockMap(ri) else { return [] }
        return try mapRange(ri, from: from, count: count)
    }

    // MARK: FIEMAP

    /// FIEMAP over bytes [start, start+length): every mapped run as the
    /// kernel's ext4 reports it. Block-mapped files report runs merged from
    /// several blocks; an inline-data file reports one record at the byte
    /// address of its inode's data; the last record is marked.
    public func fiemap(_ ino: UInt32, start: UInt64, length: UInt64) throws(Ext4Error) -> [FileExtentRecord] {
        try withReadLock(ino) { () throws(Ext4Error) -> [FileExtentRecord] in
            let ri = try rawInode(ino)
            let size = ri.pub.size
            if ri.hasInline {
                guard size > 0, start < size else { return [] }
                let addr = try inlineDataAddress(ino)
                return [FileExtentRecord(logical: 0, physical: addr, length: size, inline: true, last: true)]
            }
            guard length > 0 else { return [] }
            let bs = UInt64(blockSize)
            let (endByte, ovf) = start.addingReportingOverflow(length)
            let end = ovf ? UInt64.max : endByte
            let first = start / bs
            let last = min(end / bs + (end % bs == 0 ? 0 : 1), Ext4FileSystem.logicalBlockLimit)
            guard last > first else { return [] }
            var out = try mapOf(ri, from: first, count: last - first).map { x in
                FileExtentRecord(logical: x.logical * bs, physical: x.physical * bs, length: x.length * bs,
                                 unwritten: x.unwritten, merged: !ri.hasExtents)
            }
            if !out.isEmpty { out[out.count - 1].last = true }
            return out
        }
    }

    // MARK: SEEK_DATA, SEEK_HOLE

    /// lseek SEEK_DATA (`data`) or SEEK_HOLE from `offset`: the first byte of
    /// written data, or of a hole (the end of the file counts as one), at or
    /// after it. Unwritten extents are holes. `.noSuchOffset` past the end,
    /// or when no data follows.
    public func seek(_ ino: UInt32, from offset: UInt64, data: Bool) throws(Ext4Error) -> UInt64 {
        try withReadLock(ino) { () throws(Ext4Error) -> UInt64 in
            let ri = try rawInode(ino)
            let size = ri.pub.size
            guard offset < size else { throw .noSuchOffset }
            if ri.hasInline { return data ? offset : size }
            let bs = UInt64(blockSize)
            var block = offset / bs
            let lastBlock = (size - 1) / bs
            // The written extents from the offset's block on, a window at a time.
            while block <= lastBlock {
                let window = min(lastBlock - block + 1, 1 << 20)
                let maps = try mapOf(ri, from: block, count: window).filter { !$0.unwritten }
                var cursor = block
                for x in maps {
                    let end = x.logical + x.length
                    guard end > cursor else { continue }
                    if x.logical > cursor && !data { return max(offset, cursor * bs) }  // a hole at [cursor, x.logical)
                    if data { return max(offset, max(x.logical, cursor) * bs) }
                    cursor = end
                }
                let windowEnd = block + window
                if cursor < windowEnd && !data { return min(size, max(offset, cursor * bs)) }
                block = windowEnd
            }
            if !data { return size }
            throw .noSuchOffset
        }
    }

    // MARK: BMAP

    /// The device block holding file block `block`; 0 for a hole or an
    /// unwritten block.
    public func bmap(_ ino: UInt32, block: UInt64) throws(Ext4Error) -> UInt64 {
        try withReadLock(ino) { () throws(Ext4Error) -> UInt64 in
            let ri = try rawInode(ino)
            guard let x = try mapOf(ri, from: block, count: 1).first, x.logical <= block, block - x.logical < x.length,
                  !x.unwritten else { return 0 }
            return x.physical + (block - x.logical)
        }
    }

    // MARK: one mapping (iomap)

    /// The mapping around byte `pos` of a regular file, for a request of
    /// `count` bytes; `limit` is the largest file size the caller allows
    /// (`pos` is below it). Returns the inode too.
    public func mapping(_ ino: UInt32, at pos: UInt64, count: UInt64, limit: UInt64) throws(Ext4Error) -> (Inode, FileMapping) {
        try withReadLock(ino) { () throws(Ext4Error) -> (Inode, FileMapping) in
            let ri = try rawInode(ino)
            guard ri.pub.fileType == .regular else { throw .invalid("not a regular file") }
            return (ri.pub, try fileMapping(ri, at: pos, count: count, limit: limit))
        }
    }

    /// Where the data at `pos` lives: one extent (or one contiguous run of a
    /// block map), or the hole up to the next one; past the last one, the
    /// hole up to max(pos+count, size) rounded up to a block.
    func fileMapping(_ ri: RawInode, at pos: UInt64, count: UInt64, limit: UInt64) throws(Ext4Error) -> FileMapping {
        let bs = UInt64(blockSize)
        guard limit > 0, pos < limit else { throw .fileTooBig }
        let b = pos / bs
        let maxBlock = Ext4FileSystem.logicalBlockLimit
        let (reqEnd, ro) = pos.addingReportingOverflow(count)
        let eofBytes = max(ro ? UInt64.max : reqEnd, ri.pub.size)
        let capBlocks = (limit - 1) / bs + 1  // pos < limit, so b < capBlocks
        let eofBlock = min(max(eofBytes / bs + (eofBytes % bs == 0 ? 0 : 1), b + 1), capBlocks)
        if ri.hasInline { return b == 0 ? .inline : .hole(start: b, end: eofBlock) }
        guard b < maxBlock else { return .hole(start: b, end: eofBlock) }
        let extents = ri.hasExtents
        let countBlocks = max(1, min(eofBlock, maxBlock) - b)
        // An extent is at most maxExtentBlocks long, so such a window never
        // cuts the extent at `b`; block maps are scanned a shorter way ahead.
        let window = min(countBlocks, extents ? Ext4FileSystem.maxExtentBlocks : Ext4FileSystem.blockMapWindow,
                         maxBlock - b)
        var maps = try mapOf(ri, from: b, count: window)
        if extents, let x = maps.first, x.logical == b {
            // The whole extent under b, not just its part from b on (what a
            // mapping cache wants to hold): it starts no earlier than this.
            let lo = b - min(b, Ext4FileSystem.maxExtentBlocks - 1)
            let w = min(b - lo + Ext4FileSystem.maxExtentBlocks, maxBlock - lo)
            let around = try mapOf(ri, from: lo, count: w)
            if let y = around.first(where: { $0.logical <= b && b < $0.logical + $0.length }) { maps = [y] }
        }
        if let x = maps.first {
            if x.logical > b { return .hole(start: b, end: x.logical) }
            guard x.length > 0 else { throw corrupt("inode \(ri.ino): empty mapping at block \(b)") }
            return .mapped(x, merged: !extents && x.length > 1)
        }
        // A hole at b: where the next mapped block starts, in windows of
        // doubling size, no further than the hole-to-EOF end.
        var lo = b + window
        var w = window
        let end = min(eofBlock, maxBlock)
        while lo < end {
            w = min(w * 2, 1 << 22, end - lo)
            if let x = try mapOf(ri, from: lo, count: w).first { return .hole(start: b, end: x.logical) }
            lo += w
        }
        return .hole(start: b, end: max(eofBlock, b + 1))
    }
}
