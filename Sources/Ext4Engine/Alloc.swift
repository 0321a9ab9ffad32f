import Foundation

@inline(__always) func bitGet(_ b: [UInt8], _ i: Int) -> Bool { b[i >> 3] & (1 << UInt8(i & 7)) != 0 }
@inline(__always) func bitSet(_ b: inout [UInt8], _ i: Int) { b[i >> 3] |= (1 << UInt8(i & 7)) }
@inline(__always) func bitClear(_ b: inout [UInt8], _ i: Int) { b[i >> 3] &= ~(1 << UInt8(i & 7)) }

/// Block and inode allocation: bitmaps, counters, checksums.
extension Ext4FileSystem {
    // ---- block bitmaps ---------------------------------------------------------------

    /// Blocks of group `g` used by fixed metadata (superblock, GDT, bitmaps, inode tables).
    func fixedMetadata(_ g: Int) -> [(UInt64, UInt64)] {
        var out: [(UInt64, UInt64)] = []
        let start = groupStart(g)
        let descPerBlock = UInt64(blockSize / sb.descSize)
        let ng = UInt64(groups.count)
        if sb.groupHasSuper(UInt64(g)) {
            // superblock (for 1K block fs group 0 also has block 0 = boot, before firstDataBlock)
            out.append((start, 1))
            if !sb.has(incompat: Incompat.metaBG) {
                let gdt = (ng + descPerBlock - 1) / descPerBlock
                out.append((start + 1, gdt + UInt64(sb.reservedGdtBlocks)))
            } else {
                let firstMeta = UInt64(sb.firstMetaBG)
                if firstMeta > 0 { out.append((start + 1, min(firstMeta, (ng + descPerBlock - 1) / descPerBlock) + UInt64(sb.reservedGdtBlocks))) }
            }
        }
        if sb.has(incompat: Incompat.metaBG) {
            let gg = UInt64(g)
            let mi = gg / descPerBlock
            if mi >= UInt64(sb.firstMetaBG) {
                let r = gg % descPerBlock
                if r == 0 || r == 1 || r == descPerBlock - 1 {
                    out.append((start + (sb.groupHasSuper(gg) ? 1 : 0), 1))
                }
            }
        }
        let end = start + UInt64(groupBlocks(g))
        for h in groups {
            for (b, n) in [(h.blockBitmap, UInt64(1)), (h.inodeBitmap, 1), (h.inodeTable, sb.inodeTableBlocksPerGroup)] {
                let s = max(b, start), e = min(b + n, end)
                if s < e { out.append((s, e - s)) }
            }
        }
        return out
    }

    /// Load group `g`'s block bitmap (initializing BLOCK_UNINIT groups). Caller holds the group lock.
    func loadBlockBitmap(_ g: Int) throws(Ext4Error) -> [UInt8] {
        let d = try gdSnapshot(g)
        if (sb.metadataCsum || sb.gdtCsum) && d.flags & GroupDescriptorRecord.Flag.blockUninit != 0 {
            var bm = [UInt8](repeating: 0, count: blockSize)
            let start = groupStart(g)
            for (s, n) in fixedMetadata(g) {
                var i = s
                while i < s + n { bitSet(&bm, Int(i - start)); i += 1 }
            }
            var i = groupBlocks(g)
            while i < blockSize * 8 { bitSet(&bm, i); i += 1 }
            // Cross-check against the descriptor before trusting it.
            var used = 0
            for k in 0..<groupBlocks(g) where bitGet(bm, k) { used += 1 }
            guard groupBlocks(g) - used == Int(d.freeBlocks) else {
                throw corrupt("group \(g): uninitialized block bitmap does not match free count")
            }
            return bm
        }
        return try block(groups[g].blockBitmap)
    }

    func storeBlockBitmap(_ g: Int, _ bm: [UInt8], freeDelta: Int) throws(Ext4Error) {
        try writeMeta(groups[g].blockBitmap, bm)
        let csum = crc32c(csumSeed, bm[0..<(Int(sb.blocksPerGroup) / 8)])
        try updateGD(g) { d in
            var f = Int64(d.freeBlocks) + Int64(freeDelta)
            if f < 0 { f = 0 }
            d.freeBlocks = UInt32(clamping: f)
            d.flags &= ~GroupDescriptorRecord.Flag.blockUninit
            if sb.metadataCsum { d.blockBitmapChecksum = csum }
        }
    }

    /// Check and reserve `n` blocks against the free total, keeping the
    /// reserved pool (s_r_blocks_count) unless `mapBlock`.
    func reserveBlocks(_ n: UInt64, mapBlock: Bool = false) throws(Ext4Error) {
        let w = try wstate
        let free = w.alloc.freeBlocks
        let keep = mapBlock ? 0 : sb.rBlocksCount
        guard free >= n, free - n >= keep else { throw .noSpace }
    }

    /// Allocate up to `count` contiguous blocks, preferring `goal`. Returns
    /// (start, length >= 1). Blocks reserved in memory (Reservations.swift) are
    /// skipped. With `window`, only the first `mark` blocks are taken in the
    /// bitmap; the rest of the run becomes that inode's preallocation window.
    /// `mapBlock`: a block of an extent tree that an operation needs to keep
    /// its promise on a full file system (punching a hole or writing into
    /// preallocated space splits extents). As the kernel's ext4 lets such
    /// metadata use its reserve, it may take the blocks the reserved pool
    /// keeps back from everything else.
    func allocBlocks(goal: UInt64, count: Int, mark: Int = Int.max, window: UInt32? = nil,
                     mapBlock: Bool = false) throws(Ext4Error) -> (UInt64, Int) {
        let w = try wstate
        let want = max(1, count)
        try reserveBlocks(1, mapBlock: mapBlock)
        let free = w.alloc.freeBlocks
        let keep = mapBlock ? 0 : sb.rBlocksCount
        let allowed = Int(min(UInt64(want), free > keep ? free - keep : 0))
        guard allowed >= 1 else { throw .noSpace }
        let ng = groups.count
        let goal = (goal >= UInt64(sb.firstDataBlock) && goal < sb.blocksCount) ? goal : UInt64(sb.firstDataBlock)
        let g0 = groupOf(block: goal)
        // Two passes: first look for a run of `allowed` blocks (or at the goal), then any free block.
        for pass in 0..<2 {
            for k in 0..<ng {
                let g = (g0 + k) % ng
                if try gdSnapshot(g).freeBlocks == 0 { continue }
                if let r = try w.alloc.withGroup(g, { () throws(Ext4Error) -> (UInt64, Int)? in
                    var bm = try loadBlockBitmap(g)
                    let nb = groupBlocks(g)
                    var view = bm
                    w.alloc.reservations.overlay(g, base: groupStart(g), nbits: nb, &view)
                    let startBit = (g == g0 && k == 0) ? Int(goal - groupStart(g)) : 0
                    let atGoal = k == 0 && pass == 0 && startBit < nb && !bitGet(view, startBit)
                    guard let (s, n) = findRun(view, from: startBit, limit: nb, want: allowed,
                                                needFull: pass == 0 && !atGoal) else { return nil }
                    let taken = window == nil ? n : min(n, max(1, mark))
                    for i in s..<(s + taken) { bitSet(&bm, i) }
                    try storeBlockBitmap(g, bm, freeDelta: -taken)
                    if let window, taken < n {
                        w.alloc.reservations.add(groupStart(g) + UInt64(s + taken), UInt64(n - taken), .window(window))
                    }
                    return (groupStart(g) + UInt64(s), n)
                }) {
                    return r
                }
            }
        }
        throw .noSpace
    }

    /// Find a free run in `bm[from..<limit]` (wrapping to 0 once). When `needFull`,
    /// only a run of length `want` qualifies; otherwise the first free block starts it.
    func findRun(_ bm: [UInt8], from: Int, limit: Int, want: Int, needFull: Bool) -> (Int, Int)? {
        func scan(_ a: Int, _ b: Int) -> (Int, Int)? {
            var i = a
            var best: (Int, Int)? = nil
            while i < b {
                if i & 7 == 0 && i + 8 <= b && bm[i >> 3] == 0xFF { i += 8; continue }
                if bitGet(bm, i) { i += 1; continue }
                var j = i
                while j < b && j - i < want && !bitGet(bm, j) { j += 1 }
                if j - i >= want || !needFull { return (i, j - i) }
                if best == nil || (best?.1 ?? 0) < j - i { best = (i, j - i) }
                i = j
            }
            return needFull ? nil : best
        }
        let f = min(max(0, from), limit)
        if let r = scan(f, limit) { return r }
        if f > 0, let r = scan(0, f) { return r }
        return nil
    }

    /// Free `count` blocks starting at `start` (may cross groups).
    func freeBlocks(_ start: UInt64, _ count: UInt64) throws(Ext4Error) {
        let w = try wstate
        guard count > 0 else { return }
        guard validRun(start, count) else { throw corrupt("freeing blocks \(start)+\(count) outside fs") }
        // Metadata changes not yet written must never land on the blocks' next owner.
        dropDirty(start, count)
        var b = start
        let end = start + count
        while b < end {
            let g = groupOf(block: b)
            let gs = groupStart(g)
            let ge = gs + UInt64(groupBlocks(g))
            let e = min(end, ge)
            try w.alloc.withGroup(g) { () throws(Ext4Error) in
                var bm = try loadBlockBitmap(g)
                var n = 0
                var i = b
                while i < e {
                    let bit = Int(i - gs)
                    if bitGet(bm, bit) { bitClear(&bm, bit); n += 1 } else {
                        clog.report("freeing already free block \(i)")
                    }
                    i += 1
                }
                // Not reused before this transaction commits: until then a
                // crash brings back their owner. Reserved before the group's
                // lock is let go, or an allocation on another thread could
                // take the blocks between the bitmap and the reservation.
                w.alloc.reservations.add(b, e - b, .freedIn(meta.txn.runningTid))
                try storeBlockBitmap(g, bm, freeDelta: n)
            }
            b = e
        }
        if let observe = w.alloc.freedObserver { observe(start, count) }
    }

    /// Take blocks [start, start+count) of `ino`'s preallocation window in the
    /// bitmap (one group: windows never cross one).
    func claimWindowBlocks(_ ino: UInt32, _ start: UInt64, _ count: UInt64) throws(Ext4Error) {
        let w = try wstate
        guard validRun(start, count) else { throw corrupt("window \(start)+\(count) outside fs") }
        let g = groupOf(block: start)
        let gs = groupStart(g)
        guard start + count <= gs + UInt64(groupBlocks(g)) else { throw corrupt("window crosses a group") }
        try w.alloc.withGroup(g) { () throws(Ext4Error) in
            var bm = try loadBlockBitmap(g)
            for i in start..<(start + count) where bitGet(bm, Int(i - gs)) {
                throw corrupt("preallocated block \(i) already in use")
            }
            for i in start..<(start + count) { bitSet(&bm, Int(i - gs)) }
            try storeBlockBitmap(g, bm, freeDelta: -Int(count))
            w.alloc.reservations.remove(start, count, .window(ino))
        }
    }

    // ---- inodes ------------------------------------------------------------------------

    func loadInodeBitmap(_ g: Int) throws(Ext4Error) -> [UInt8] {
        let d = try gdSnapshot(g)
        if (sb.metadataCsum || sb.gdtCsum) && d.flags & GroupDescriptorRecord.Flag.inodeUninit != 0 {
            var bm = [UInt8](repeating: 0, count: blockSize)
            var i = Int(sb.inodesPerGroup)
            while i < blockSize * 8 { bitSet(&bm, i); i += 1 }
            return bm
        }
        return try block(groups[g].inodeBitmap)
    }

    /// Allocate an inode. Directories are spread (Orlov-like), files stay near their parent.
    func allocInode(parent: UInt32, isDir: Bool) throws(Ext4Error) -> UInt32 {
        let w = try wstate
        let ng = groups.count
        let ipg = UInt64(sb.inodesPerGroup)
        let pg = parent >= 1 ? Int(min(UInt64(ng - 1), UInt64(parent - 1) / ipg)) : 0
        var order: [Int] = []
        if isDir && ng > 1 {
            // Prefer groups with above-average free inodes and blocks and few directories.
            let (fb, fi) = w.alloc.totals()
            let avgI = fi / UInt64(ng), avgB = fb / UInt64(ng)
            var cands: [(Int, UInt32)] = []
            for g in 0..<ng {
                let d = try gdSnapshot(g)
                if UInt64(d.freeInodes) >= max(avgI, 1) && UInt64(d.freeBlocks) >= avgB {
                    cands.append((g, d.usedDirs))
                }
            }
            let rot = w.alloc.nextDirRotor(ng)
            cands.sort { a, b in a.1 != b.1 ? a.1 < b.1 : (a.0 + ng - rot) % ng < (b.0 + ng - rot) % ng }
            order = cands.map { $0.0 }
        }
        for k in 0..<ng { order.append((pg + k) % ng) }
        var tried = Set<Int>()
        for g in order where tried.insert(g).inserted {
            if try gdSnapshot(g).freeInodes == 0 { continue }
            if let ino = try w.alloc.withGroup(g, { () throws(Ext4Error) -> UInt32? in
                var bm = try loadInodeBitmap(g)
                let first = g == 0 ? Int(sb.firstIno) - 1 : 0
                var idx: Int? = nil
                var i = max(0, first)
                while i < Int(ipg) {
                    if i & 7 == 0 && i + 8 <= Int(ipg) && bm[i >> 3] == 0xFF { i += 8; continue }
                    if !bitGet(bm, i) { idx = i; break }
                    i += 1
                }
                guard let idx else { return nil }
                bitSet(&bm, idx)
                try writeMeta(groups[g].inodeBitmap, bm)
                let csum = crc32c(csumSeed, bm[0..<(Int(ipg) / 8)])
                try updateGD(g) { d in
                    let f = d.freeInodes
                    d.freeInodes = f > 0 ? f - 1 : 0
                    if isDir { d.usedDirs &+= 1 }
                    d.flags &= ~GroupDescriptorRecord.Flag.inodeUninit
                    if sb.metadataCsum || sb.gdtCsum {
                        let hw = UInt32(ipg) - UInt32(min(UInt64(d.itableUnused), ipg))
                        if UInt32(idx) >= hw { d.itableUnused = UInt32(ipg) - UInt32(idx) - 1 }
                    }
                    if sb.metadataCsum { d.inodeBitmapChecksum = csum }
                }
                return UInt32(UInt64(g) * ipg + UInt64(idx) + 1)
            }) {
                return ino
            }
        }
        throw .noSpace
    }

    func freeInodeBit(_ ino: UInt32, isDir: Bool) throws(Ext4Error) {
        let w = try wstate
        let ipg = UInt64(sb.inodesPerGroup)
        guard ino >= 1 else { return }
        let g = Int(UInt64(ino - 1) / ipg)
        let idx = Int(UInt64(ino - 1) % ipg)
        guard g < groups.count else { throw corrupt("freeing inode \(ino) beyond groups") }
        try w.alloc.withGroup(g) { () throws(Ext4Error) in
            var bm = try loadInodeBitmap(g)
            guard bitGet(bm, idx) else { clog.report("freeing free inode \(ino)"); return }
            bitClear(&bm, idx)
            try writeMeta(groups[g].inodeBitmap, bm)
            let csum = crc32c(csumSeed, bm[0..<(Int(ipg) / 8)])
            try updateGD(g) { d in
                d.freeInodes &+= 1
                if isDir {
                    let u = d.usedDirs
                    d.usedDirs = u > 0 ? u - 1 : 0
                }
                if sb.metadataCsum { d.inodeBitmapChecksum = csum }
            }
        }
    }
}
