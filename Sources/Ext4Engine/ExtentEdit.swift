/// Incremental extent-tree updates: change the extents of the one leaf that
/// covers a small logical range, instead of rewriting the whole map. Random
/// writes into unwritten (fallocated) space and appends take this path; a
/// change that does not fit its shape (it crosses leaves, would move a leaf's
/// first key, or overflows a leaf whose parent is full) falls back to
/// `storeMap`, which rewrites the tree.
extension Ext4FileSystem {
    /// i_blocks in file-system blocks.
    func fsBlockCount(_ m: MInode) -> UInt64 {
        m.fsBlocks(hugeFile: sb.has(roCompat: RoCompat.hugeFile), blockSize: blockSize)
    }

    /// On-disk leaf entries (12 bytes each), one buffer.
    func extentLeafBytes<C: Collection>(_ list: C) -> [UInt8] where C.Element == Extent {
        var e = [UInt8](repeating: 0, count: ExtentLeafEntry.size * list.count)
        for (i, x) in list.enumerated() { ExtentLeafEntry(x).encode(into: &e, at: ExtentLeafEntry.size * i) }
        return e
    }

    /// One on-disk index entry.
    func extentIndexEntry(first: UInt32, child: UInt64) -> [UInt8] {
        var e = [UInt8](repeating: 0, count: ExtentIndexEntry.size)
        ExtentIndexEntry(logical: first, child: child).encode(into: &e, at: 0)
        return e
    }

    /// An extent node holding `entries` (12 bytes each, flat) with room for
    /// `max`; a block-sized node carries the checksum tail.
    func extentNode<C: Collection>(_ entries: C, max: Int, depth: Int, blockSized: Bool, seed: UInt32) -> [UInt8]
        where C.Element == UInt8 {
        let count = entries.count / ExtentLeafEntry.size
        let bytes = ExtentHeader.size + entries.count
        var node = [UInt8](repeating: 0, count: blockSized ? Swift.max(blockSize, bytes) : bytes)
        let h = ExtentHeader(entries: count, max: max, depth: depth)
        h.encode(into: &node)
        node.replaceSubrange(ExtentHeader.size..<bytes, with: entries)
        if blockSized && sb.metadataCsum { h.sealTail(&node, seed: seed) }
        return node
    }

    private struct Step {
        let blk: UInt64?   // nil: the inode's i_block
        let node: [UInt8]
        let header: ExtentHeader
        let idx: Int       // index entry taken at this (interior) node
    }

    /// Replace whatever `changes` overlap with `changes` inside the leaf that
    /// covers [l0, l1). Updates the map blocks and, for a split, i_blocks; the
    /// caller accounts for data blocks and stores the inode. Returns false,
    /// having changed nothing, when the change needs a full rewrite.
    func editExtentLeaf(_ m: inout MInode, from l0: UInt64, to l1: UInt64, put changes: [Extent]) throws(Ext4Error) -> Bool {
        guard m.hasExtents, !m.hasInline, l0 < l1, l1 <= (1 << 32) else { return false }
        for x in changes where x.logical < l0 || x.logical + x.length > l1 { return false }
        let seed = sb.metadataCsum ? inodeSeed(m.ino, m.generation) : 0
        let perBlock = ExtentHeader.capacity(nodeBytes: blockSize)
        var path: [Step] = []
        var node = m.iBlock
        var blk: UInt64? = nil
        var lo: UInt64 = 0, hi: UInt64 = 1 << 32
        var keyOfLeaf: UInt64? = nil
        var h = ExtentHeader(entries: 0, max: 0, depth: 0)
        // A node or entry that does not decode is left to the full rewrite, whose walk reports it.
        func index(_ i: Int) -> ExtentIndexEntry? { try? ExtentIndexEntry(decoding: node, index: i) }
        while true {
            guard let hh = try? ExtentHeader(decoding: node),
                  hh.isValid(nodeBytes: node.count, maxDepth: Ext4FileSystem.maxExtentDepth) else { return false }
            h = hh
            if let b = blk, sb.metadataCsum, !h.tailMatches(node, seed: seed) {
                throw corrupt("inode \(m.ino): extent block \(b) checksum mismatch")
            }
            if h.depth == 0 { break }
            let n = Int(h.entries)
            guard n > 0, path.count < Ext4FileSystem.maxExtentDepth else { return false }
            var i = 0
            while i + 1 < n, let next = index(i + 1), UInt64(next.logical) <= l0 { i += 1 }
            guard let ix = index(i) else { return false }
            let key = UInt64(ix.logical)
            guard key <= l0 else { return false }
            lo = Swift.max(lo, key)
            if i + 1 < n {
                guard let next = index(i + 1) else { return false }
                hi = Swift.min(hi, UInt64(next.logical))
            }
            let child = ix.child
            guard validRun(child, 1) else { throw corrupt("inode \(m.ino): extent index -> \(child) outside fs") }
            path.append(Step(blk: blk, node: node, header: h, idx: i))
            keyOfLeaf = key
            blk = child
            node = try block(child)
        }
        guard l0 >= lo, l1 <= hi else { return false }
        // Decode the leaf.
        let n = Int(h.entries), leafMax = Int(h.max)
        var list: [Extent] = []
        list.reserveCapacity(n + changes.count + 2)
        var prevEnd: UInt64 = 0
        for i in 0..<n {
            guard let e = try? ExtentLeafEntry(decoding: node, index: i) else { return false }
            let x = e.extent
            guard x.length > 0, x.logical >= prevEnd, x.logical >= lo, x.logical + x.length <= hi,
                  validRun(x.physical, x.length) else {
                throw corrupt("inode \(m.ino): bad extent leaf entry at logical \(x.logical)")
            }
            prevEnd = x.logical + x.length
            list.append(x)
        }
        let oldFirst = list.first?.logical
        for x in changes { Ext4FileSystem.put(&list, x) }
        list = Ext4FileSystem.normalize(list)
        guard !list.isEmpty else { return false }
        // An interior key must equal its child's first logical block (e2fsck checks it).
        if let key = keyOfLeaf, list.first?.logical != key || oldFirst != key { return false }
        for x in list where x.logical < lo || x.logical + x.length > hi { return false }
        let entries = extentLeafBytes(list)
        guard let leafBlk = blk else {
            // The leaf is the inode's root.
            guard list.count <= ExtentHeader.rootCapacity else { return false }
            m.iBlock = extentNode(entries, max: ExtentHeader.rootCapacity, depth: 0, blockSized: false, seed: seed)
            return true
        }
        if list.count <= leafMax {
            try writeMeta(leafBlk, extentNode(entries, max: leafMax, depth: 0, blockSized: true, seed: seed))
            return true
        }
        // Split the leaf in two, if the parent has room for one more index entry.
        guard let parent = path.last, list.count <= 2 * perBlock else { return false }
        let pn = Int(parent.header.entries), pmax = Int(parent.header.max), pdepth = Int(parent.header.depth)
        guard pn < pmax, ExtentHeader.entryOffset(pn) <= parent.node.count else { return false }
        let half = list.count / 2
        let (newBlk, _) = try allocBlocks(goal: leafBlk + 1, count: 1, mapBlock: true)
        do throws(Ext4Error) {
            try writeMeta(newBlk, extentNode(entries[(ExtentLeafEntry.size * half)...], max: perBlock, depth: 0, blockSized: true, seed: seed))
            let ie = extentIndexEntry(first: UInt32(truncatingIfNeeded: list[half].logical), child: newBlk)
            var pEntries = Array(parent.node[ExtentHeader.size..<ExtentHeader.entryOffset(pn)])
            pEntries.insert(contentsOf: ie, at: ExtentIndexEntry.size * (parent.idx + 1))
            try setBlocks(&m, fsBlocks: fsBlockCount(m) + 1)
            if let pb = parent.blk {
                try writeMeta(pb, extentNode(pEntries, max: pmax, depth: pdepth, blockSized: true, seed: seed))
            } else {
                m.iBlock = extentNode(pEntries, max: pmax, depth: pdepth, blockSized: false, seed: seed)
            }
        } catch {
            try? freeBlocks(newBlk, 1)
            throw error
        }
        try writeMeta(leafBlk, extentNode(entries[..<(ExtentLeafEntry.size * half)], max: leafMax, depth: 0, blockSized: true, seed: seed))
        if let w { w.preallocLock.with { _ = w.looseTrees.insert(m.ino) } }
        return true
    }

    /// Put `changes` (all inside [l0, l1)) into the map of `m`: one leaf edit
    /// when it fits, else the whole map rewritten. `newBlocks`: data blocks the
    /// changes add (freshly allocated), for i_blocks.
    func putExtents(_ m: inout MInode, _ changes: [Extent], from l0: UInt64, to l1: UInt64,
                    newBlocks: UInt64) throws(Ext4Error) {
        guard !changes.isEmpty else { return }
        if try editExtentLeaf(&m, from: l0, to: l1, put: changes) {
            if newBlocks > 0 { try setBlocks(&m, fsBlocks: fsBlockCount(m) + newBlocks) }
            return
        }
        var exts = try allExtents(m)
        let meta = try mapMetaBlocks(m)
        for x in changes { Ext4FileSystem.put(&exts, x) }
        try storeMap(&m, exts, oldMeta: meta)
    }

    /// Split leaves are half full; e2fsck calls such a tree one that "could be
    /// narrower". Repack the tree of an inode whose leaves were split (on the
    /// last writer's close and at unmount). Caller holds the inode lock.
    func packExtentTree(_ ino: UInt32) throws(Ext4Error) {
        guard let w, w.preallocLock.with({ w.looseTrees.remove(ino) }) != nil else { return }
        var m = try loadInode(ino, checkLive: false)
        guard m.hasExtents, !m.hasInline, m.links > 0 else { return }
        let exts = try allExtents(m)
        let meta = try mapMetaBlocks(m)
        try storeMap(&m, exts, oldMeta: meta)
        try storeInode(m)
    }

    /// Repack every loose tree (unmount).
    func packAllExtentTrees() throws(Ext4Error) {
        guard let w else { return }
        let all = w.preallocLock.with { Array(w.looseTrees) }
        for ino in all {
            try w.inodeLocks.withLock(UInt64(ino)) { () throws(Ext4Error) in try packExtentTree(ino) }
        }
    }
}
