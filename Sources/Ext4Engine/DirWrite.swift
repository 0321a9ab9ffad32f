import Foundation

/// Directory modification: linear blocks, htree (insert into the hashed leaf,
/// rebuild the index when a leaf is full), inline directories (converted to blocks).
/// One record of a directory block and where it starts.
struct DirRec {
    let off: Int
    let d: DirEntryRecord
    var ino: UInt32 { d.inode }
    var recLen: Int { d.recLen }
    var nameLen: Int { d.nameLen }
}

struct DirItem { var name: [UInt8]; var ino: UInt32; var ftype: UInt8; var hash: UInt32 }

extension Ext4FileSystem {
    func ftypeCode(_ mode: UInt16) -> UInt8 {
        guard sb.has(incompat: Incompat.filetype) else { return 0 }
        switch mode & 0xF000 {
        case 0x8000: return 1
        case 0x4000: return 2
        case 0x2000: return 3
        case 0x6000: return 4
        case 0x1000: return 5
        case 0xC000: return 6
        case 0xA000: return 7
        default: return 0
        }
    }

    func encodeRecLen(_ n: Int) -> UInt16 { DirEntryRecord.encodeRecLen(n, blockSize: blockSize) }

    var dirTail: Int { sb.metadataCsum ? DirLeafTail.size : 0 }

    static func recSize(_ nameLen: Int) -> Int { DirEntryRecord.size(nameLen: nameLen) }

    /// All records (including unused ones) of a leaf block.
    func records(_ b: [UInt8], start: Int = 0, end: Int, dir: UInt32) throws(Ext4Error) -> [DirRec] {
        var out: [DirRec] = []
        try walkDirRecords(b, start: start, end: end, what: "directory \(dir)") { off, d in
            out.append(DirRec(off: off, d: d))
            return true
        }
        return out
    }

    /// The record at `off` of a directory block (`off` from a validated walk).
    func dirRecord(_ b: [UInt8], at off: Int, dir: UInt32) throws(Ext4Error) -> DirEntryRecord {
        do { return try DirEntryRecord(decoding: b, at: off, blockSize: blockSize) } catch {
            throw corrupt("directory \(dir): no record at offset \(off)")
        }
    }

    func putRec(_ b: inout [UInt8], _ off: Int, ino: UInt32, recLen: Int, name: [UInt8], ftype: UInt8) {
        DirEntryRecord.write(into: &b, at: off, inode: ino, recLen: recLen, name: name, fileType: ftype, blockSize: blockSize)
    }

    func finishLeaf(_ dm: MInode, _ b: inout [UInt8]) {
        guard sb.metadataCsum else { return }
        DirLeafTail.seal(&b, blockSize: blockSize, seed: inodeSeed(dm.ino, dm.generation))
    }

    func finishDx(_ dm: MInode, _ b: inout [UInt8], entries: Int) {
        guard sb.metadataCsum else { return }
        DxTail.seal(&b, entries: entries, seed: inodeSeed(dm.ino, dm.generation))
    }

    func emptyLeaf(_ dm: MInode) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: blockSize)
        DirEntryRecord(inode: 0, recLen: blockSize - dirTail, nameLen: 0, fileType: 0).encode(into: &b, at: 0, blockSize: blockSize)
        finishLeaf(dm, &b)
        return b
    }

    /// Physical block of each logical directory block (holes are corruption).
    func dirBlocks(_ dm: MInode) throws(Ext4Error) -> [UInt64] {
        try blocksInOrder(dm, what: "directory")
    }

    /// The physical block of each logical block up to the inode's size, for
    /// metadata kept in a file (directories, the orphan file): a hole or an
    /// unwritten block there is corruption (`what` names the file).
    func blocksInOrder(_ m: MInode, what: String) throws(Ext4Error) -> [UInt64] {
        let n = (m.size + UInt64(blockSize) - 1) / UInt64(blockSize)
        var out: [UInt64] = []
        for x in try allExtents(m) where x.logical < n {
            guard x.logical == UInt64(out.count), !x.unwritten else { throw corrupt("\(what) \(m.ino) has a hole") }
            for k in 0..<min(x.length, n - x.logical) { out.append(x.physical + k) }
        }
        guard UInt64(out.count) == n else { throw corrupt("\(what) \(m.ino) has a hole") }
        return out
    }

    func nameHash(_ name: [UInt8]) -> UInt32 {
        var v = Int(sb.defHashVersion)
        if v > DirHash.tea { v = DirHash.halfMD4 }
        if hashUnsigned { v += 3 }
        return DirHash.hash(name, version: v, seed: sb.hashSeed) ?? 0
    }

    func dxVersion(_ root: [UInt8]) -> Int {
        var v = Int((try? DxRootInfo(decoding: root))?.hashVersion ?? 0)
        if hashUnsigned { v += 3 }
        return v
    }

    /// Is logical block `l` of an indexed directory an index block?
    func isDxNode(_ b: [UInt8]) -> Bool { DxBlock.isNode(b, blockSize: blockSize) }

    // ---- inline -> block conversion --------------------------------------------------

    func convertInlineDir(_ dm: inout MInode) throws(Ext4Error) {
        var items: [DirItem] = []
        var parent: UInt32 = 2
        try readDirectory(dm.ino, from: 0) { e in
            if e.name == [0x2E] { return true }
            if e.name == [0x2E, 0x2E] { parent = e.ino; return true }
            items.append(DirItem(name: e.name, ino: e.ino, ftype: 0, hash: 0))
            return true
        }
        // Recover file types from the raw inline dirents.
        for i in items.indices { items[i].ftype = ftypeCode((try? rawInode(items[i].ino).pub.mode) ?? 0) }
        try removeInlineData(&dm)
        dm.flags = (dm.flags & ~InodeFlag.inlineData) | (sb.has(incompat: Incompat.extents) ? InodeFlag.extents : 0)
        if dm.hasExtents { dm.iBlock = extentRootEmpty() } else { dm.iBlock = [] }
        dm.size = 0
        try setBlocks(&dm, fsBlocks: dm.fileACL(sb.is64) != 0 ? 1 : 0)
        let blk = try appendDirBlock(&dm, firstBlock: dotBlock(dm, parent: parent))
        _ = blk
        for it in items { try dirAdd(&dm, name: it.name, ino: it.ino, ftype: it.ftype) }
    }

    func extentRootEmpty() -> [UInt8] {
        var h = [UInt8](repeating: 0, count: ExtentHeader.size)
        ExtentHeader(entries: 0, max: ExtentHeader.rootCapacity, depth: 0).encode(into: &h)
        return h
    }

    func dotBlock(_ dm: MInode, parent: UInt32) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: blockSize)
        let ft = ftypeCode(0x4000)
        putRec(&b, 0, ino: dm.ino, recLen: 12, name: [0x2E], ftype: ft)
        putRec(&b, 12, ino: parent, recLen: blockSize - 12 - dirTail, name: [0x2E, 0x2E], ftype: ft)
        finishLeaf(dm, &b)
        return b
    }

    /// Append one block to a directory; returns its physical number.
    @discardableResult
    func appendDirBlock(_ dm: inout MInode, firstBlock: [UInt8]? = nil) throws(Ext4Error) -> UInt64 {
        let p = try appendDirBlocks(&dm, count: 1, firstBlock: firstBlock)
        guard let first = p.first else { throw corrupt("directory \(dm.ino): no block appended") }
        return first
    }

    /// Append `count` blocks to a directory, all or none: when one cannot be
    /// had (ENOSPC, also for the map's own blocks) those already taken are
    /// given back and `dm` and its map are as they were. The first block
    /// holds `firstBlock`, the others an empty leaf. Returns the physical
    /// numbers in logical order.
    @discardableResult
    func appendDirBlocks(_ dm: inout MInode, count: Int, firstBlock: [UInt8]? = nil) throws(Ext4Error) -> [UInt64] {
        guard count > 0 else { return [] }
        var exts = try allExtents(dm)
        let meta = try mapMetaBlocks(dm)
        let bs = UInt64(blockSize)
        var l = (dm.size + bs - 1) / bs
        var goal = exts.last.map { $0.physical + $0.length } ?? groupStart(Int(UInt64(dm.ino - 1) / UInt64(sb.inodesPerGroup)))
        var taken: [(start: UInt64, count: Int)] = []
        var out: [UInt64] = []
        do throws(Ext4Error) {
            while out.count < count {
                let (p, n) = try allocBlocks(goal: goal, count: count - out.count)
                taken.append((p, n))
                for i in 0..<n {
                    var b = out.isEmpty ? (firstBlock ?? emptyLeaf(dm)) : emptyLeaf(dm)
                    if out.isEmpty && firstBlock != nil { finishLeaf(dm, &b) }
                    try writeMeta(p + UInt64(i), b)
                    out.append(p + UInt64(i))
                }
                Ext4FileSystem.put(&exts, Extent(logical: l, physical: p, length: UInt64(n), unwritten: false))
                l += UInt64(n)
                goal = p + UInt64(n)
            }
            try storeMap(&dm, exts, oldMeta: meta)
        } catch {
            for r in taken { try? freeBlocks(r.start, UInt64(r.count)) }
            throw error
        }
        dm.size = l * bs
        return out
    }

    // ---- insert ------------------------------------------------------------------------

    /// Try to put an entry into a leaf block in memory. Returns false when full.
    func insertInLeaf(_ b: inout [UInt8], name: [UInt8], ino: UInt32, ftype: UInt8, start: Int = 0,
                      dir: UInt32) throws(Ext4Error) -> Bool {
        let need = Ext4FileSystem.recSize(name.count)
        for r in try records(b, start: start, end: blockSize - dirTail, dir: dir) {
            if r.ino == 0 && r.recLen >= need {
                putRec(&b, r.off, ino: ino, recLen: r.recLen, name: name, ftype: ftype)
                return true
            }
            let used = r.ino == 0 ? 0 : Ext4FileSystem.recSize(r.nameLen)
            if r.ino != 0 && r.recLen - used >= need {
                var shrunk = r.d
                shrunk.recLen = used
                shrunk.encode(into: &b, at: r.off, blockSize: blockSize)
                putRec(&b, r.off + used, ino: ino, recLen: r.recLen - used, name: name, ftype: ftype)
                return true
            }
        }
        return false
    }

    /// Add `name` -> `ino` to directory `dm` (caller holds its lock and checked for duplicates).
    func dirAdd(_ dm: inout MInode, name: [UInt8], ino: UInt32, ftype: UInt8) throws(Ext4Error) {
        if dm.hasInline { try convertInlineDir(&dm) }
        let blocks = try dirBlocks(dm)
        if isIndexedM(dm) {
            if let (l, _) = try dxLeaf(dm, blocks, hash: nameHash(name)), l < blocks.count {
                var b = try block(blocks[l])
                if try insertInLeaf(&b, name: name, ino: ino, ftype: ftype, dir: dm.ino) {
                    finishLeaf(dm, &b)
                    try writeMeta(blocks[l], b)
                    return
                }
            }
            try rebuildIndexed(&dm, adding: DirItem(name: name, ino: ino, ftype: ftype, hash: 0))
            return
        }
        for (l, p) in blocks.enumerated() {
            var b = try block(p)
            if try insertInLeaf(&b, name: name, ino: ino, ftype: ftype, start: 0, dir: dm.ino) {
                finishLeaf(dm, &b)
                try writeMeta(p, b)
                _ = l
                return
            }
        }
        if sb.has(compat: Compat.dirIndex) && blocks.count >= 1 {
            try rebuildIndexed(&dm, adding: DirItem(name: name, ino: ino, ftype: ftype, hash: 0))
            return
        }
        var nb = emptyLeaf(dm)
        _ = try insertInLeaf(&nb, name: name, ino: ino, ftype: ftype, dir: dm.ino)
        try appendDirBlock(&dm, firstBlock: nb)
    }

    func isIndexedM(_ dm: MInode) -> Bool { sb.has(compat: Compat.dirIndex) && dm.flags & InodeFlag.index != 0 }

    /// Follow the index to the leaf for `hash`: (logical leaf, levels) or nil if the index looks wrong.
    func dxLeaf(_ dm: MInode, _ blocks: [UInt64], hash: UInt32) throws(Ext4Error) -> (Int, Int)? {
        guard let p0 = blocks.first else { return nil }
        let root = try block(p0)
        guard let info = try? DxRootInfo(decoding: root), info.infoLength == DxRootInfo.length else { return nil }
        let levels = Int(info.indirectLevels)
        guard levels <= 2 else { return nil }
        var node = root
        var entries = DxBlock.rootEntries
        for depth in 0...levels {
            guard let cl = try? DxCountLimit(decoding: node, at: entries), cl.count >= 1 else { return nil }
            var best: DxEntry? = try? DxEntry(decoding: node, entries: entries, index: 0)
            for i in 1..<Int(cl.count) {
                guard let e = try? DxEntry(decoding: node, entries: entries, index: i) else { return nil }
                if e.hash <= hash { best = e }
            }
            guard let best, Int(best.block) < blocks.count else { return nil }
            let child = Int(best.block)
            if depth == levels { return (child, levels) }
            node = try block(blocks[child])
            guard isDxNode(node) else { return nil }
            entries = DxBlock.nodeEntries
        }
        return nil
    }

    /// Every live entry of a block directory except "." and "..".
    func dirItems(_ dm: MInode, _ blocks: [UInt64]) throws(Ext4Error) -> [DirItem] {
        var out: [DirItem] = []
        let indexed = isIndexedM(dm)
        for (l, p) in blocks.enumerated() {
            let b = try block(p)
            if indexed && (l == 0 || isDxNode(b)) {
                if l == 0 { continue }
                continue
            }
            for r in try records(b, end: blockSize - dirTail, dir: dm.ino) where r.ino != 0 && r.nameLen > 0 {
                guard let name = r.d.name(in: b, at: r.off) else { continue }
                if l == 0 && (name == [0x2E] || name == [0x2E, 0x2E]) { continue }
                out.append(DirItem(name: name, ino: r.ino, ftype: r.d.fileType, hash: 0))
            }
        }
        return out
    }

    /// Rebuild the directory as an htree holding every entry (plus `adding`).
    func rebuildIndexed(_ dm: inout MInode, adding: DirItem?) throws(Ext4Error) {
        var blocks = try dirBlocks(dm)
        guard let p0 = blocks.first else { throw corrupt("directory \(dm.ino) empty") }
        let b0 = try block(p0)
        let parent = try dirRecord(b0, at: DirEntryRecord.minSize, dir: dm.ino).inode  // ".."
        var items = try dirItems(dm, blocks)
        if let adding { items.append(adding) }
        for i in items.indices { items[i].hash = nameHash(items[i].name) }
        items.sort { $0.hash != $1.hash ? $0.hash < $1.hash : $0.name.lexicographicallyPrecedes($1.name) }
        let cap = blockSize - dirTail
        let csum = sb.metadataCsum ? 8 : 0
        let rootLimit = (blockSize - 32 - csum) / 8
        let nodeLimit = (blockSize - 8 - csum) / 8
        var total = 0
        for it in items { total += Ext4FileSystem.recSize(it.name.count) }
        // Leaves: fill to about 70%; never fewer than the blocks the directory already has.
        var nLeaves = max(1, (total * 10 / 7 + cap - 1) / cap)
        func layout(_ n: Int) -> (levels: Int, nodes: Int) {
            if n <= rootLimit { return (0, 0) }
            let l1 = (n + nodeLimit - 1) / nodeLimit
            if l1 <= rootLimit { return (1, l1) }
            let l2 = (l1 + nodeLimit - 1) / nodeLimit
            return (2, l1 + l2)
        }
        var (levels, nodes) = layout(nLeaves)
        if 1 + nodes + nLeaves < blocks.count {
            nLeaves = blocks.count - 1 - nodes
            (levels, nodes) = layout(nLeaves)
            if 1 + nodes + nLeaves > blocks.count { nLeaves = max(1, blocks.count - 1 - nodes) }
        }
        if levels == 2 && !sb.has(incompat: Incompat.largeDir) { throw .noSpace }
        let needBlocks = 1 + nodes + nLeaves
        // Everything that can fail comes before the first change: the
        // distribution, then the new blocks, all or none. A rebuild that
        // stopped halfway would leave blocks the index does not reference.
        // Distribute entries over leaves by size, keeping equal hashes mostly together.
        var leaves: [[DirItem]] = Array(repeating: [], count: nLeaves)
        var li = 0, used = 0
        let target = max(1, total / nLeaves + 1)
        var remainingLeaves = nLeaves
        for (i, it) in items.enumerated() {
            let sz = Ext4FileSystem.recSize(it.name.count)
            let mustMove = used + sz > cap
            let shouldMove = used >= target && remainingLeaves > 1 && (i == 0 || items[i - 1].hash != it.hash || used + sz > cap)
            if (mustMove || shouldMove) && li + 1 < nLeaves {
                li += 1; used = 0; remainingLeaves -= 1
            }
            guard used + sz <= cap else { throw .noSpace }
            leaves[li].append(it)
            used += sz
        }
        if blocks.count < needBlocks {
            try appendDirBlocks(&dm, count: needBlocks - blocks.count)
            blocks = try dirBlocks(dm)
            guard blocks.count >= needBlocks else { throw corrupt("directory \(dm.ino) did not grow") }
        }
        // Index keys.
        var keys: [UInt32] = []
        var lastHash: UInt32? = nil
        for lf in leaves {
            if let f = lf.first {
                var k = f.hash
                if let lh = lastHash, lh == f.hash { k |= 1 }
                keys.append(k)
            } else {
                keys.append(lastHash.map { $0 &+ 2 > $0 ? $0 &+ 2 : $0 } ?? 0)
            }
            if let l = lf.last { lastHash = l.hash }
        }
        // Keys must be strictly increasing after the first.
        for i in 1..<max(1, keys.count) where keys[i] <= keys[i - 1] { keys[i] = keys[i - 1] &+ 1 }
        let firstLeaf = 1 + nodes
        // Write leaves.
        for (i, lf) in leaves.enumerated() {
            var b = [UInt8](repeating: 0, count: blockSize)
            var off = 0
            for (j, it) in lf.enumerated() {
                let sz = Ext4FileSystem.recSize(it.name.count)
                let rl = j == lf.count - 1 ? cap - off : sz
                putRec(&b, off, ino: it.ino, recLen: rl, name: it.name, ftype: it.ftype)
                off += sz
            }
            if lf.isEmpty {
                DirEntryRecord(inode: 0, recLen: cap, nameLen: 0, fileType: 0).encode(into: &b, at: 0, blockSize: blockSize)
            }
            finishLeaf(dm, &b)
            try writeMeta(blocks[firstLeaf + i], b)
        }
        func dxEntries(_ b: inout [UInt8], at e: Int, limit: Int, pairs: [(UInt32, Int)]) {
            DxCountLimit(limit: limit, count: pairs.count).encode(into: &b, at: e)
            for (k, (h, blk)) in pairs.enumerated() {
                DxEntry(hash: h, block: UInt32(truncatingIfNeeded: blk)).encode(into: &b, entries: e, index: k)
            }
        }
        var level: [(UInt32, Int)] = keys.enumerated().map { ($0.element, firstLeaf + $0.offset) }
        var nextNode = 1
        for _ in 0..<levels {
            var up: [(UInt32, Int)] = []
            var i = 0
            while i < level.count {
                let chunk = Array(level[i..<min(level.count, i + nodeLimit)])
                var b = [UInt8](repeating: 0, count: blockSize)
                DirEntryRecord(inode: 0, recLen: blockSize, nameLen: 0, fileType: 0).encode(into: &b, at: 0, blockSize: blockSize)
                dxEntries(&b, at: DxBlock.nodeEntries, limit: nodeLimit, pairs: chunk)
                finishDx(dm, &b, entries: DxBlock.nodeEntries)
                try writeMeta(blocks[nextNode], b)
                up.append((chunk[0].0, nextNode))
                nextNode += 1
                i += nodeLimit
            }
            level = up
        }
        var root = [UInt8](repeating: 0, count: blockSize)
        let ft = ftypeCode(0x4000)
        putRec(&root, 0, ino: dm.ino, recLen: 12, name: [0x2E], ftype: ft)
        putRec(&root, 12, ino: parent, recLen: blockSize - 12, name: [0x2E, 0x2E], ftype: ft)
        var hv = Int(sb.defHashVersion)
        if hv > DirHash.tea { hv = DirHash.halfMD4 }
        DxRootInfo(hashVersion: UInt8(truncatingIfNeeded: hv), indirectLevels: UInt8(truncatingIfNeeded: levels)).encode(into: &root)
        dxEntries(&root, at: DxBlock.rootEntries, limit: rootLimit, pairs: level)
        finishDx(dm, &root, entries: DxBlock.rootEntries)
        try writeMeta(blocks[0], root)
        dm.flags |= InodeFlag.index
    }

    // ---- lookup / remove / replace -------------------------------------------------------

    /// Locate a name: (logical block, physical block, record offset, previous record offset or -1).
    func dirFind(_ dm: MInode, _ blocks: [UInt64], name: [UInt8]) throws(Ext4Error) -> (Int, UInt64, Int, Int, UInt32)? {
        let indexed = isIndexedM(dm)
        var order: [Int] = Array(blocks.indices)
        if indexed, let (l, _) = try dxLeaf(dm, blocks, hash: nameHash(name)) {
            order.removeAll { $0 == l }
            order.insert(l, at: 0)
        }
        for l in order {
            let p = blocks[l]
            let b = try block(p)
            if indexed && (l == 0 || isDxNode(b)) { continue }
            var prev = -1
            for r in try records(b, end: blockSize - dirTail, dir: dm.ino) {
                if r.ino != 0, r.d.nameEquals(name, in: b, at: r.off) {
                    return (l, p, r.off, prev, r.ino)
                }
                prev = r.off
            }
        }
        return nil
    }

    /// Remove `name`; returns the inode it pointed to.
    func dirRemove(_ dm: inout MInode, name: [UInt8]) throws(Ext4Error) -> UInt32 {
        if dm.hasInline { try convertInlineDir(&dm) }
        let blocks = try dirBlocks(dm)
        guard let (_, p, off, prev, ino) = try dirFind(dm, blocks, name: name) else { throw .notFound }
        var b = try block(p)
        var rec = try dirRecord(b, at: off, dir: dm.ino)
        if prev >= 0 {
            // The previous record absorbs this one.
            var pr = try dirRecord(b, at: prev, dir: dm.ino)
            pr.recLen += rec.recLen
            pr.encode(into: &b, at: prev, blockSize: blockSize)
            b.zeroRange(off, DirEntryRecord.headerSize)
        } else {
            rec.inode = 0
            rec.encode(into: &b, at: off, blockSize: blockSize)
        }
        finishLeaf(dm, &b)
        try writeMeta(p, b)
        return ino
    }

    /// Point an existing entry at another inode.
    func dirRetarget(_ dm: inout MInode, name: [UInt8], ino: UInt32, ftype: UInt8) throws(Ext4Error) {
        if dm.hasInline { try convertInlineDir(&dm) }
        let blocks = try dirBlocks(dm)
        if name == [0x2E, 0x2E], let p0 = blocks.first {
            var b = try block(p0)
            // ".." is the second record of block 0, after the 12-byte ".".
            let dotdotAt = DirEntryRecord.minSize
            guard var dd = try? DirEntryRecord(decoding: b, at: dotdotAt, blockSize: blockSize),
                  dd.nameEquals([0x2E, 0x2E], in: b, at: dotdotAt) else { throw corrupt("directory \(dm.ino): bad '..'") }
            dd.inode = ino
            dd.encode(into: &b, at: dotdotAt, blockSize: blockSize)
            if isIndexedM(dm) { finishDx(dm, &b, entries: DxBlock.rootEntries) } else { finishLeaf(dm, &b) }
            try writeMeta(p0, b)
            return
        }
        guard let (_, p, off, _, _) = try dirFind(dm, blocks, name: name) else { throw .notFound }
        var b = try block(p)
        var rec = try dirRecord(b, at: off, dir: dm.ino)
        rec.inode = ino
        rec.fileType = ftype
        rec.encode(into: &b, at: off, blockSize: blockSize)
        finishLeaf(dm, &b)
        try writeMeta(p, b)
    }

    func dirIsEmpty(_ dm: MInode) throws(Ext4Error) -> Bool {
        var empty = true
        try readDirectory(dm.ino, from: 0) { e in
            if e.name == [0x2E] || e.name == [0x2E, 0x2E] { return true }
            empty = false
            return false
        }
        return empty
    }
}
