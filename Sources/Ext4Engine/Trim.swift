import Glibc

/// FITRIM (fstrim): tell the device which blocks hold nothing, so a thin or
/// sparse device (a loop device over an image file punches them out of it)
/// can give the space back. As ext4's batched discard: byte range and
/// minimum run length from the caller, only blocks free in the bitmaps, and
/// never a block freed by a transaction that has not committed (a crash
/// would bring its owner back) or reserved for a preallocation window
/// (Reservations.swift). Each group is trimmed under its lock, so no
/// allocation takes a block while it is being discarded.
extension Ext4FileSystem {
    /// Discard the free runs of at least `minLength` bytes inside
    /// [start, start + length) (bytes); returns the bytes discarded.
    public func trim(start: UInt64, length: UInt64, minLength: UInt64) throws(Ext4Error) -> UInt64 {
        try checkAlive()
        let w = try wstate
        let bs = UInt64(blockSize)
        let first = start / bs
        guard length >= bs else { throw .invalid("trim length shorter than a block") }
        guard first < sb.blocksCount else { throw .invalid("trim start beyond the file system") }
        // Pages of freed blocks may still be dirty in the device's page cache
        // (data of deleted files not yet written back); the device refuses
        // to discard under dirty pages (EBUSY), so write them out first.
        try dev.flush()
        let minBlocks = max(1, (minLength + bs - 1) / bs)
        guard minBlocks <= UInt64(sb.blocksPerGroup) else { throw .invalid("trim minimum larger than a group") }
        let (endBytes, o) = start.addingReportingOverflow(length)
        let last = min(o ? sb.blocksCount : endBytes / bs, sb.blocksCount)   // exclusive
        guard last > first else { return 0 }
        var trimmed: UInt64 = 0
        var g = groupOf(block: max(first, UInt64(sb.firstDataBlock)))
        while g < groups.count {
            let gs = groupStart(g)
            if gs >= last { break }
            let nb = groupBlocks(g)
            try w.alloc.withGroup(g) { () throws(Ext4Error) in
                var view = try loadBlockBitmap(g)
                w.alloc.reservations.overlay(g, base: gs, nbits: nb, &view)
                var i = first > gs ? Int(first - gs) : 0
                let end = min(nb, Int(min(last - gs, UInt64(nb))))
                while i < end {
                    if bitGet(view, i) { i += 1; continue }
                    var j = i
                    while j < end && !bitGet(view, j) { j += 1 }
                    if UInt64(j - i) >= minBlocks {
                        let (off, n) = ((gs + UInt64(i)) * bs, UInt64(j - i) * bs)
                        do throws(Ext4Error) { try dev.discard(at: off, count: n) } catch .io(EBUSY) {
                            // Dirtied again since the flush: once more after another.
                            try dev.flush()
                            try dev.discard(at: off, count: n)
                        }
                        trimmed += n
                    }
                    i = j
                }
            }
            g += 1
        }
        return trimmed
    }
}
