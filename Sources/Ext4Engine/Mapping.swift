/// Logical -> physical block mapping: extent trees and indirect block maps.
extension Ext4FileSystem {
    static let maxExtentDepth = 5
    static let maxMappingResults = 1 << 20

    public func mappings(_ ino: UInt32, fromBlock: UInt64, maxBlocks: UInt64) throws(Ext4Error) -> [Extent] {
        try withReadLock(ino) { () throws(Ext4Error) -> [Extent] in
            let ri = try rawInode(ino)
            guard hasBlockMap(ri) else { return [] }
            return try mapRange(ri, from: fromBlock, count: maxBlocks)
        }
    }

    func isFastSymlink(_ ri: RawInode) -> Bool {
        guard ri.pub.fileType == .symlink, !ri.hasInline else { return false }
        if ri.flags & InodeFlag.eaInode != 0 {
            return ri.pub.size > 0 && ri.pub.size < 60
        }
        let eaBlocks: UInt64 = ri.fileACL != 0 ? UInt64(blockSize / 512) : 0
        return ri.pub.blocks512 == eaBlocks
    }

    /// Does the inode's i_block hold a block map / extent tree?
    func hasBlockMap(_ ri: RawInode) -> Bool {
        if ri.hasInline { return false }
        switch ri.pub.fileType {
        case .regular, .directory: return true
        case .symlink: return !isFastSymlink(ri)
        default: return false
        }
    }

    /// Mapped ranges intersecting [from, from+count), clipped to it, sorted.
    func mapRange(_ ri: RawInode, from: UInt64, count: UInt64) throws(Ext4Error) -> [Extent] {
        guard count > 0 else { return [] }
        let (e, o) = from.addingReportingOverflow(count)
        let end = o ? UInt64.max : e
        var out: [Extent] = []
        if ri.hasExtents {
            var visited = 0
            try walkExtentNode(ri, node: ri.iBlock, isRoot: true, blockNr: 0, expectDepth: nil,
                               from: from, end: end, out: &out, visited: &visited)
        } else {
            try walkBlockMap(ri, from: from, end: end, out: &out)
        }
        // Clip to the query.
        var clipped: [Extent] = []
        clipped.reserveCapacity(out.count)
        for var x in out {
            let xEnd = x.logical + x.length
            if xEnd <= from || x.logical >= end { continue }
            if x.logical < from {
                let d = from - x.logical
                x.logical = from; x.physical += d; x.length -= d
            }
            if x.logical + x.length > end { x.length = end - x.logical }
            clipped.append(x)
        }
        return clipped
    }

    private func walkExtentNode(_ ri: RawInode, node: [UInt8], isRoot: Bool, blockNr: UInt64, expectDepth: Int?,
                                from: UInt64, end: UInt64, out: inout [Extent], visited: inout Int) throws(Ext4Error) {
        visited += 1
        if visited > 1_000_000 { throw corrupt("inode \(ri.ino): extent tree too large") }
        let where_ = isRoot ? "root" : "block \(blockNr)"
        let h: ExtentHeader
        do { h = try ExtentHeader(decoding: node) } catch { throw corrupt("inode \(ri.ino): short extent node in \(where_)") }
        guard h.magic == ExtentHeader.magicValue else { throw corrupt("inode \(ri.ino): bad extent magic in \(where_)") }
        let entries = Int(h.entries)
        let depth = Int(h.depth)
        guard h.isValid(nodeBytes: node.count, maxDepth: Ext4FileSystem.maxExtentDepth) else {
            throw corrupt("inode \(ri.ino): bad extent header in \(where_) (entries \(entries) max \(h.max) depth \(depth))")
        }
        if !isRoot && h.max == 0 { throw corrupt("inode \(ri.ino): empty extent node \(blockNr)") }
        if let expectDepth, depth != expectDepth {
            throw corrupt("inode \(ri.ino): extent depth \(depth) where \(expectDepth) expected in \(where_)")
        }
        if !isRoot && sb.metadataCsum {
            guard h.tailChecksum(node, seed: ri.seed) != nil else {
                throw corrupt("inode \(ri.ino): no room for extent tail in \(blockNr)")
            }
            if !h.tailMatches(node, seed: ri.seed) {
                throw corrupt("inode \(ri.ino): extent block \(blockNr) checksum mismatch")
            }
        }
        // isValid keeps every entry inside the node; a decode error would be corruption all the same.
        func leaf(_ i: Int) throws(Ext4Error) -> ExtentLeafEntry {
            do { return try ExtentLeafEntry(decoding: node, index: i) } catch {
                throw corrupt("inode \(ri.ino): extent entry \(i) outside the node in \(where_)")
            }
        }
        func index(_ i: Int) throws(Ext4Error) -> ExtentIndexEntry {
            do { return try ExtentIndexEntry(decoding: node, index: i) } catch {
                throw corrupt("inode \(ri.ino): extent index \(i) outside the node in \(where_)")
            }
        }
        if depth == 0 {
            var prevEnd: UInt64 = 0
            for i in 0..<entries {
                let e = try leaf(i)
                let lblk = UInt64(e.logical)
                let len = e.length
                let start = e.start
                guard len > 0 else { throw corrupt("inode \(ri.ino): zero-length extent") }
                guard lblk >= prevEnd, lblk + len <= (1 << 32) else {
                    throw corrupt("inode \(ri.ino): overlapping or unsorted extents at logical \(lblk)")
                }
                guard validRun(start, len) else {
                    throw corrupt("inode \(ri.ino): extent \(lblk)+\(len) -> \(start) outside file system")
                }
                prevEnd = lblk + len
                if lblk >= end { break }
                if lblk + len <= from { continue }
                out.append(e.extent)
                if out.count > Ext4FileSystem.maxMappingResults { throw corrupt("inode \(ri.ino): too many extents") }
            }
        } else {
            var prev: UInt64? = nil
            for i in 0..<entries {
                let ix = try index(i)
                let nextStart: UInt64 = try i + 1 < entries ? UInt64(index(i + 1).logical) : (1 << 32)
                let lblk = UInt64(ix.logical)
                if let prev, lblk <= prev { throw corrupt("inode \(ri.ino): unsorted extent index") }
                prev = lblk
                if lblk >= end { break }
                if nextStart <= from { continue }
                let child = ix.child
                guard validRun(child, 1) else { throw corrupt("inode \(ri.ino): extent index -> \(child) outside fs") }
                let cb = try block(child)
                try walkExtentNode(ri, node: cb, isRoot: false, blockNr: child, expectDepth: depth - 1,
                                   from: from, end: end, out: &out, visited: &visited)
                // Children must stay inside the index range.
                if let last = out.last, last.logical + last.length > nextStart, i + 1 < entries {
                    throw corrupt("inode \(ri.ino): extent beyond its index range")
                }
            }
        }
    }

    private func walkBlockMap(_ ri: RawInode, from: UInt64, end: UInt64, out: inout [Extent]) throws(Ext4Error) {
        let ib = ri.iBlock
        let p = UInt64(blockSize / 4)
        func add(_ l: UInt64, _ phys: UInt64, _ out: inout [Extent]) throws(Ext4Error) {
            guard validRun(phys, 1) else { throw corrupt("inode \(ri.ino): block pointer \(phys) outside fs") }
            if var last = out.last, last.logical + last.length == l, last.physical + last.length == phys {
                last.length += 1
                out[out.count - 1] = last
            } else {
                out.append(Extent(logical: l, physical: phys, length: 1, unwritten: false))
                if out.count > Ext4FileSystem.maxMappingResults { throw corrupt("inode \(ri.ino): too many mappings") }
            }
        }
        func indirect(_ blk: UInt64, level: Int, base: UInt64) throws(Ext4Error) {
            guard validRun(blk, 1) else { throw corrupt("inode \(ri.ino): indirect block \(blk) outside fs") }
            let b = try block(blk)
            var childSpan: UInt64 = 1
            for _ in 1..<level { childSpan *= p }
            for j in 0..<Int(p) {
                let cbase = base + UInt64(j) * childSpan
                if cbase >= end { return }
                if cbase + childSpan <= from { continue }
                let ptr = UInt64(b.le32(4 * j))
                if ptr == 0 { continue }
                if level == 1 {
                    try add(cbase, ptr, &out)
                } else {
                    try indirect(ptr, level: level - 1, base: cbase)
                }
            }
        }
        for i in 0..<12 {
            let l = UInt64(i)
            if l >= end { return }
            let ptr = UInt64(ib.le32(4 * i))
            if l >= from && ptr != 0 { try add(l, ptr, &out) }
        }
        var base: UInt64 = 12
        var span = p
        for level in 1...3 {
            if base >= end { return }
            let ptr = UInt64(ib.le32(4 * (11 + level)))
            if ptr != 0 && base + span > from {
                try indirect(ptr, level: level, base: base)
            }
            base += span
            span *= p
        }

    }
}
