import Foundation

/// Writing a file's logical->physical map: the whole map is kept as a sorted
/// extent list and stored back either as an extent tree (growing or shrinking
/// its depth as needed, reusing the old tree's blocks) or as an ext2/3
/// indirect block map.
extension Ext4FileSystem {
    static let maxWrittenLen: UInt64 = 32768
    static let maxUnwrittenLen: UInt64 = 32767

    /// Every extent of the inode.
    func allExtents(_ m: MInode) throws(Ext4Error) -> [Extent] {
        if m.hasInline { return [] }
        let ri = try rawInodeFrom(m)
        guard hasBlockMap(ri) else { return [] }
        return try mapRange(ri, from: 0, count: UInt64.max)
    }

    /// The read side's view of an inode record held in memory (no checksum
    /// or liveness check: the record may be mid-change).
    func rawInodeFrom(_ m: MInode) throws(Ext4Error) -> RawInode {
        try decodeInode(m, verifyChecksum: false, checkLive: false)
    }

    /// Blocks used by the map itself (extent index/leaf blocks or indirect blocks).
    func mapMetaBlocks(_ m: MInode) throws(Ext4Error) -> [UInt64] {
        guard !m.hasInline else { return [] }
        let ri = try rawInodeFrom(m)
        guard hasBlockMap(ri) else { return [] }
        var out: [UInt64] = []
        if m.hasExtents {
            func walk(_ node: [UInt8], _ depth: Int) throws(Ext4Error) {
                guard depth > 0 else { return }
                guard let h = try? ExtentHeader(decoding: node),
                      h.isValid(nodeBytes: node.count, maxDepth: Ext4FileSystem.maxExtentDepth) else {
                    throw corrupt("inode \(m.ino): bad extent node")
                }
                for i in 0..<Int(h.entries) {
                    guard let ix = try? ExtentIndexEntry(decoding: node, index: i), validRun(ix.child, 1) else {
                        throw corrupt("inode \(m.ino): bad extent index")
                    }
                    out.append(ix.child)
                    if out.count > 1_000_000 { throw corrupt("inode \(m.ino): extent tree too large") }
                    try walk(try block(ix.child), depth - 1)
                }
            }
            let root = m.iBlock
            guard let rh = try? ExtentHeader(decoding: root), rh.magic == ExtentHeader.magicValue else {
                throw corrupt("inode \(m.ino): bad extent root")
            }
            try walk(root, min(Int(rh.depth), Ext4FileSystem.maxExtentDepth))
        } else {
            let ib = m.iBlock
            func walk(_ blk: UInt64, _ level: Int) throws(Ext4Error) {
                guard validRun(blk, 1) else { throw corrupt("inode \(m.ino): bad indirect block") }
                out.append(blk)
                if level > 1 {
                    let b = try block(blk)
                    for j in 0..<(blockSize / 4) {
                        let p = UInt64(b.le32(4 * j))
                        if p != 0 { try walk(p, level - 1) }
                    }
                }
            }
            for lv in 1...3 {
                let p = UInt64(ib.le32(4 * (11 + lv)))
                if p != 0 { try walk(p, lv) }
            }
        }
        return out
    }

    // ---- extent list editing -----------------------------------------------------------

    /// Remove [from, from+count) from the list; returns the removed pieces.
    @discardableResult
    static func cut(_ exts: inout [Extent], from: UInt64, count: UInt64) -> [Extent] {
        let end = from &+ count < from ? UInt64.max : from + count
        var out: [Extent] = []
        var removed: [Extent] = []
        for x in exts {
            let xe = x.logical + x.length
            if xe <= from || x.logical >= end { out.append(x); continue }
            if x.logical < from {
                out.append(Extent(logical: x.logical, physical: x.physical, length: from - x.logical, unwritten: x.unwritten))
            }
            let s = max(x.logical, from), e = min(xe, end)
            removed.append(Extent(logical: s, physical: x.physical + (s - x.logical), length: e - s, unwritten: x.unwritten))
            if xe > end {
                out.append(Extent(logical: end, physical: x.physical + (end - x.logical), length: xe - end, unwritten: x.unwritten))
            }
        }
        exts = out
        return removed
    }

    static func put(_ exts: inout [Extent], _ x: Extent) {
        cut(&exts, from: x.logical, count: x.length)
        var i = 0
        while i < exts.count && exts[i].logical < x.logical { i += 1 }
        exts.insert(x, at: i)
    }

    /// Merge adjacent extents and split over-long ones.
    static func normalize(_ exts: [Extent]) -> [Extent] {
        var merged: [Extent] = []
        for x in exts where x.length > 0 {
            if var l = merged.last, l.unwritten == x.unwritten, l.logical + l.length == x.logical,
               l.physical + l.length == x.physical {
                l.length += x.length
                merged[merged.count - 1] = l
            } else {
                merged.append(x)
            }
        }
        var out: [Extent] = []
        for var x in merged {
            let maxLen = x.unwritten ? maxUnwrittenLen : maxWrittenLen
            while x.length > maxLen {
                out.append(Extent(logical: x.logical, physical: x.physical, length: maxLen, unwritten: x.unwritten))
                x.logical += maxLen; x.physical += maxLen; x.length -= maxLen
            }
            out.append(x)
        }
        return out
    }

    // ---- storing the map ---------------------------------------------------------------

    /// Store `exts` as the inode's map, reusing `oldMeta` blocks; frees surplus
    /// meta blocks and sets i_blocks (data + map + xattr block). Does not store the inode.
    ///
    /// Failure-atomic: every block the new map needs is in hand before the
    /// first one is written. The new map is written over the old map's blocks,
    /// and a rewrite that ran out of space halfway would leave the inode's
    /// (unchanged) root pointing into a mix of old and new nodes, some naming
    /// blocks the failed operation then frees (fstests generic/300 found it).
    func storeMap(_ m: inout MInode, _ exts: [Extent], oldMeta: [UInt64]) throws(Ext4Error) {
        let list = Ext4FileSystem.normalize(exts)
        let reused = Set(oldMeta)
        let goal = list.first?.physical ?? groupStart(Int(UInt64(m.ino - 1) / UInt64(sb.inodesPerGroup)))
        let blockMap = m.hasExtents ? nil : try blockMapNodes(list)
        let need = blockMap?.count ?? extentTreeNodeCount(list.count)
        var blocks = Array(oldMeta.prefix(need))
        let surplus = oldMeta.dropFirst(need)
        var fresh: [UInt64] = []
        do throws(Ext4Error) {
            while blocks.count < need {
                let (b, n) = try allocBlocks(goal: fresh.last.map { $0 + 1 } ?? goal, count: need - blocks.count, mapBlock: true)
                for i in 0..<UInt64(n) { fresh.append(b + i); blocks.append(b + i) }
            }
        } catch {
            for b in fresh { try? freeBlocks(b, 1) }
            throw error
        }
        var next = 0
        func newBlock() throws(Ext4Error) -> UInt64 {
            guard next < blocks.count else { throw .io(EIO) }  // counted above; never short
            next += 1
            return blocks[next - 1]
        }
        var metaCount: UInt64 = 0
        do throws(Ext4Error) {
            if let nodes = blockMap {
                metaCount = try storeBlockMap(&m, list, nodes, newBlock, reused)
            } else {
                metaCount = try storeExtentTree(&m, list, newBlock, reused)
            }
        } catch {
            for b in fresh { try? freeBlocks(b, 1) }
            throw error
        }
        for b in surplus { try freeBlocks(b, 1) }
        var data: UInt64 = 0
        for x in list { data += x.length }
        let xb: UInt64 = m.fileACL(sb.is64) != 0 ? 1 : 0
        try setBlocks(&m, fsBlocks: data + metaCount + xb)
    }

    /// Blocks an extent tree of `entries` leaf entries needs below its root.
    func extentTreeNodeCount(_ entries: Int) -> Int {
        let per = ExtentHeader.capacity(nodeBytes: blockSize)
        var n = entries, total = 0
        while n > ExtentHeader.rootCapacity {
            n = (n + per - 1) / per
            total += n
        }
        return total
    }

    /// Write one block of a file's map. A block this map already owned (`reused`)
    /// has been metadata, written through writeMeta, for as long as the map has
    /// held it, so `block` (cache, dirty set or device) has its current bytes: skip the
    /// write when nothing changed. Rewriting a large map then costs one write
    /// per changed block instead of one per block.
    private func writeMapBlock(_ blk: UInt64, _ bytes: [UInt8], _ reused: Set<UInt64>) throws(Ext4Error) {
        if reused.contains(blk), try block(blk) == bytes { return }
        try writeMeta(blk, bytes)
    }

    private func storeExtentTree(_ m: inout MInode, _ list: [Extent], _ newBlock: () throws(Ext4Error) -> UInt64,
                                 _ reused: Set<UInt64>) throws(Ext4Error) -> UInt64 {
        for x in list where x.logical + x.length > (1 << 32) { throw .fileTooBig }
        var entries = extentLeafBytes(list)   // flat, 12 bytes per entry
        var firsts: [UInt32] = list.map { UInt32(truncatingIfNeeded: $0.logical) }
        let per = ExtentHeader.capacity(nodeBytes: blockSize)
        var depth = 0
        var meta: UInt64 = 0
        let seed = sb.metadataCsum ? inodeSeed(m.ino, m.generation) : 0
        while firsts.count > ExtentHeader.rootCapacity {
            var nextE: [UInt8] = []
            var nextF: [UInt32] = []
            var i = 0
            while i < firsts.count {
                let end = min(firsts.count, i + per)
                let node = extentNode(entries[(ExtentLeafEntry.size * i)..<(ExtentLeafEntry.size * end)], max: per, depth: depth, blockSized: true, seed: seed)
                let blk = try newBlock()
                try writeMapBlock(blk, node, reused)
                meta += 1
                nextE += extentIndexEntry(first: firsts[i], child: blk)
                nextF.append(firsts[i])
                i += per
            }
            entries = nextE
            firsts = nextF
            depth += 1
            if depth > Ext4FileSystem.maxExtentDepth { throw .fileTooBig }
        }
        m.iBlock = extentNode(entries, max: ExtentHeader.rootCapacity, depth: depth, blockSized: false, seed: seed)
        return meta
    }

    private struct NodeKey: Hashable { let level: Int; let base: UInt64 }

    /// The indirect blocks of a block map of `list`, by level and first
    /// logical block, with the entries each holds for level 1.
    private func blockMapNodes(_ list: [Extent]) throws(Ext4Error) -> [NodeKey: [UInt32]] {
        let p = UInt64(blockSize / 4)
        var nodes: [NodeKey: [UInt32]] = [:]
        for x in list {
            guard !x.unwritten else { throw .unsupported("unwritten extents in a block-mapped file") }
            guard x.physical + x.length <= (1 << 32) else { throw .noSpace }
            for k in 0..<x.length {
                let l = x.logical + k
                let phys = UInt32(x.physical + k)
                if l < 12 { continue }
                guard let top = blockMapTops.first(where: { l >= $0.1 && l < $0.1 + $0.2 }) else { throw .fileTooBig }
                var level = top.0, base = top.1, span = top.2
                while true {
                    let childSpan = span / p
                    let idx = Int((l - base) / childSpan)
                    let key = NodeKey(level: level, base: base)
                    var arr = nodes[key] ?? [UInt32](repeating: 0, count: Int(p))
                    if level == 1 { arr[idx] = phys }
                    nodes[key] = arr
                    if level == 1 { break }
                    base = base + UInt64(idx) * childSpan
                    span = childSpan
                    level -= 1
                }
            }
        }
        return nodes
    }

    /// (level, first logical block, blocks covered) of the single, double and triple indirect trees.
    private var blockMapTops: [(Int, UInt64, UInt64)] {
        let p = UInt64(blockSize / 4)
        return [(1, 12, p), (2, 12 + p, p * p), (3, 12 + p + p * p, p * p * p)]
    }

    private func storeBlockMap(_ m: inout MInode, _ list: [Extent], _ nodes: [NodeKey: [UInt32]],
                               _ newBlock: () throws(Ext4Error) -> UInt64, _ reused: Set<UInt64>) throws(Ext4Error) -> UInt64 {
        let p = UInt64(blockSize / 4)
        let tops = blockMapTops
        var direct = [UInt32](repeating: 0, count: 12)
        for x in list where x.logical < 12 {
            for k in 0..<min(x.length, 12 - x.logical) { direct[Int(x.logical + k)] = UInt32(truncatingIfNeeded: x.physical + k) }
        }
        var meta: UInt64 = 0
        var blockOf: [NodeKey: UInt64] = [:]
        for level in 1...3 {
            let keys = nodes.keys.filter { $0.level == level }.sorted { $0.base < $1.base }
            for key in keys {
                guard var arr = nodes[key] else { continue }
                if level > 1 {
                    let childSpan = (level == 2 ? p : p * p)
                    for (ck, cb) in blockOf where ck.level == level - 1 && ck.base >= key.base && ck.base < key.base + childSpan * p {
                        arr[Int((ck.base - key.base) / childSpan)] = UInt32(truncatingIfNeeded: cb)
                    }
                }
                let blk = try newBlock()
                guard blk < (1 << 32) else { throw .noSpace }
                var bytes = [UInt8](repeating: 0, count: blockSize)
                for (i, v) in arr.enumerated() where v != 0 { bytes.putLE32(4 * i, v) }
                try writeMapBlock(blk, bytes, reused)
                blockOf[key] = blk
                meta += 1
            }
        }
        var ib = [UInt8](repeating: 0, count: 60)
        for i in 0..<12 { ib.putLE32(4 * i, direct[i]) }
        for (lv, base, _) in tops {
            if let b = blockOf[NodeKey(level: lv, base: base)] { ib.putLE32(4 * (11 + lv), UInt32(truncatingIfNeeded: b)) }
        }
        m.iBlock = ib
        return meta
    }
}
