// IOEND for a failed IO, atomic (untorn) writes, and REPORT on a writable
// mount, through the test kernel against a read-write Ext4FuseFS:
//
// - an IOEND whose `error` is set (the IO failed) changes nothing: the
//   unwritten blocks the BEGIN allocated stay unwritten, the on-disk size
//   stays, reads there return zeroes even though bytes reached the device,
//   and the error is echoed (fuse-iomap-protocol.md §5.3); a successful
//   IOEND on the neighbouring range converts;
// - BEGIN with OP_ATOMIC answers one MAPPED or UNWRITTEN mapping with
//   F_ATOMIC_BIO (allocating a hole), never from the mapping cache (§12.8,
//   §10 rule 13); data written through it reads back and e2fsck is clean;
// - REPORT (FIEMAP, SEEK_DATA/HOLE) never allocates, even on a writable mount.

import Ext4Engine
import Ext4Fuse
import Ext4Server
import Foundation
import FuseKernel
import Glibc
import Testing

/// The engine's whole map of a file.
private func engineMap(_ k: IomapKernel, _ e: FuseEntryOut) throws -> [Extent] {
    try k.fs.mappings(UInt32(e.attr.ino), fromBlock: 0, maxBlocks: 1 << 24)
}

/// Is every block of [from, to) (in blocks) mapped, and unwritten (true) / written (false)?
private func mapState(_ map: [Extent], from: UInt64, to: UInt64) -> Bool? {
    var next = from
    var state: Bool? = nil
    for x in map where x.logical + x.length > from && x.logical < to {
        guard x.logical <= next else { return nil }  // a hole in between
        if let s = state, s != x.unwritten { return nil }
        state = x.unwritten
        next = x.logical + x.length
    }
    return next >= to ? state : nil
}

/// debugfs `ex`: the leaf extents of a file as e2fsprogs sees them (logical start, length, uninit).
private func debugfsExtents(_ image: String, _ path: String) throws -> [(logical: UInt64, length: UInt64, uninit: Bool)] {
    let out = try run("/usr/sbin/debugfs", ["-R", "ex /\(path)", image])
    var r: [(UInt64, UInt64, Bool)] = []
    // Leaves: " 0/ 0   1/  2     0 -     3 33796 - 33799      4 Uninit" (index nodes have one range only).
    let re = try NSRegularExpression(pattern: #"^\s*\d+/\s*\d+\s+\d+/\s*\d+\s+(\d+) -\s+\d+\s+\d+ -\s+\d+\s+(\d+)\s*(Uninit)?"#)
    for line in out.split(separator: "\n").map(String.init) {
        let ns = line as NSString
        guard let m = re.firstMatch(in: line, range: NSRange(location: 0, length: ns.length)),
              let lo = UInt64(ns.substring(with: m.range(at: 1))), let len = UInt64(ns.substring(with: m.range(at: 2)))
        else { continue }
        r.append((lo, len, m.range(at: 3).location != NSNotFound))
    }
    return r
}

private func freeBlocks(_ k: IomapKernel) throws -> UInt64 {
    try FuseStatfsOut.decode(try k.ok(.statfs, node: FuseABI.rootID)).st.bfree
}

private let extentConfigs = [FsConfig.all[0], FsConfig.all[1]]

@Suite(.serialized) struct IomapIoendAndAtomic {
    /// IOEND with `error` set after direct IO, writeback and a discarded folio,
    /// inside EOF and past it (APPEND): nothing converts, the size stays.
    @Test(arguments: extentConfigs)
    func failedIoendChangesNothing(_ cfg: FsConfig) throws {
        let dir = try TempDir()
        let image = try emptyImage(dir, cfg)
        let k = try rwKernel(image)
        var finished = false
        defer { if !finished { _ = k.finish() } }
        let bs = k.blockSize
        let n = Int(bs)
        let e = try k.create("f.bin")
        let ino = UInt32(e.attr.ino)
        var model = Model()
        try k.truncate(e, to: 32 * bs); model.truncate("f.bin", 32 * bs)
        #expect(try engineMap(k, e).isEmpty)
        func diskSize() throws -> UInt64 { try k.fs.inode(ino).size }

        // Direct write over [0, 8) blocks: BEGIN allocates one unwritten extent.
        let m = try k.begin(e, op: [.write, .direct], pos: 0, count: 8 * bs)
        #expect(m.type == MType.unwritten.rawValue && m.offset == 0 && m.length == 8 * bs, "\(m)")
        let good = pattern(4 * n, seed: 41), lost = pattern(4 * n, seed: 42)
        // Both halves reach the device; the second half's IO "fails".
        try k.writeDev(m.addr, good[...])
        try k.writeDev(m.addr + 4 * bs, lost[...])
        try k.ioend(e, flags: [.direct, .unwritten], pos: 0, written: 4 * bs, addr: FuseIomap.nullAddr)
        model.write("f.bin", 0, good)
        let r = try k.rawIoend(e, flags: [.direct, .unwritten], error: -EIO, pos: 4 * bs, written: 4 * bs)
        #expect(r.errno == EIO && r.newsize == nil, "failed IOEND answered \(r)")
        let pblk = m.addr / bs
        let want = [Extent(logical: 0, physical: pblk, length: 4, unwritten: false),
                    Extent(logical: 4, physical: pblk + 4, length: 4, unwritten: true)]
        #expect(try engineMap(k, e) == want, "after a good and a failed direct IOEND")
        #expect(try diskSize() == 32 * bs)

        // Every other flavour of failure over the same unwritten blocks, each
        // answered with the IO's error, none changing the map or the size.
        let flavours: [(FuseIomap.IoendFlags, Int32, UInt64, UInt32, Int32)] = [
            ([.writeback, .unwritten], -EIO, (m.addr + 4 * bs) / 512, 1, EIO),   // writeback bio failed
            ([], -EIO, FuseIomap.nullAddr, 0, EIO),                               // discarded dirty folio
            ([.direct, .unwritten], -ENOSPC, FuseIomap.nullAddr, 0, ENOSPC),      // echoed as is
            ([.direct, .unwritten, .append], -EIO, FuseIomap.nullAddr, 0, EIO),   // APPEND set, still nothing
        ]
        for (flags, err, addr, dev, echo) in flavours {
            let r = try k.rawIoend(e, flags: flags, error: err, pos: 4 * bs, written: 4 * bs, addr: addr, dev: dev)
            #expect(r.errno == echo, "IOEND flags \(flags.rawValue) error \(err): answered \(r)")
            #expect(try engineMap(k, e) == want, "IOEND flags \(flags.rawValue) error \(err) changed the map")
            #expect(try diskSize() == 32 * bs)
        }
        // A nonsense error value still fails and still changes nothing.
        let odd = try k.rawIoend(e, flags: [.direct, .unwritten], error: -100_000, pos: 4 * bs, written: 4 * bs)
        #expect(odd.errno != 0 && odd.newsize == nil, "\(odd)")
        #expect(try engineMap(k, e) == want)

        // What reads see: the failed half reads as zeroes although its bytes are on the device.
        #expect(try k.readDev(m.addr + 4 * bs, 4 * n) == lost)
        k.dropPageCache()
        #expect(try k.directRead(e, offset: 4 * bs, length: 4 * n) == [UInt8](repeating: 0, count: 4 * n))
        #expect(try k.bufferedRead(e, offset: 0, length: 8 * n) == Array(model.files["f.bin"]!.prefix(8 * n)))
        let fm = try k.fiemap(e)
        #expect(fm.map { $0.flags & 0x800 != 0 } == [false, true], "\(fm)")

        // Buffered write into the hole at [16, 20), then its writeback fails.
        let bdata = pattern(4 * n, seed: 43)
        try k.bufferedWrite(e, offset: 16 * bs, bdata)
        #expect(mapState(try engineMap(k, e), from: 16, to: 20) == true, "buffered BEGIN did not allocate unwritten")
        let wm = try k.begin(e, op: .writeback, pos: 16 * bs, count: 4 * bs)
        #expect(wm.type == MType.unwritten.rawValue, "\(wm)")
        let waddr = wm.addr + (16 * bs - wm.offset)
        try k.writeDev(waddr, bdata[...])
        let rw = try k.rawIoend(e, flags: [.writeback, .unwritten], error: -EIO, pos: 16 * bs, written: 4 * bs,
                                addr: waddr / 512, dev: 1)
        #expect(rw.errno == EIO, "\(rw)")
        // The kernel keeps the error on the mapping; here the pages are simply lost.
        k.dirty[e.nodeid] = []
        k.dropPageCache()
        #expect(mapState(try engineMap(k, e), from: 16, to: 20) == true, "failed writeback converted blocks")
        #expect(try diskSize() == 32 * bs)
        #expect(try k.bufferedRead(e, offset: 16 * bs, length: 4 * n) == [UInt8](repeating: 0, count: 4 * n))

        // Past EOF: [40, 44) allocated by a direct BEGIN, its IO fails with APPEND set.
        let pm = try k.begin(e, op: [.write, .direct], pos: 40 * bs, count: 4 * bs)
        #expect(pm.type == MType.unwritten.rawValue && pm.offset == 40 * bs, "\(pm)")
        try k.writeDev(pm.addr, pattern(4 * n, seed: 44)[...])
        for flags: FuseIomap.IoendFlags in [[.direct, .unwritten, .append], [.writeback, .unwritten, .append]] {
            let ra = try k.rawIoend(e, flags: flags, error: -EIO, pos: 40 * bs, written: 4 * bs,
                                    addr: flags.contains(.direct) ? FuseIomap.nullAddr : pm.addr / 512,
                                    dev: flags.contains(.direct) ? 0 : 1)
            #expect(ra.errno == EIO, "\(ra)")
            #expect(try diskSize() == 32 * bs, "a failed APPEND IOEND moved the on-disk size")
            #expect(try k.getattr(e).size == 32 * bs)
            #expect(mapState(try engineMap(k, e), from: 40, to: 44) == true)
        }
        // The neighbouring [44, 48) succeeds: it converts and the size follows.
        let nm = try k.begin(e, op: [.write, .direct], pos: 44 * bs, count: 4 * bs)
        #expect(nm.type == MType.unwritten.rawValue, "\(nm)")
        let tail = pattern(4 * n, seed: 45)
        try k.writeDev(nm.addr + (44 * bs - nm.offset), tail[...])
        try k.ioend(e, flags: [.direct, .unwritten], pos: 44 * bs, written: 4 * bs, addr: FuseIomap.nullAddr)
        model.write("f.bin", 44 * bs, tail)
        #expect(try diskSize() == 48 * bs)
        let final = try engineMap(k, e)
        #expect(mapState(final, from: 0, to: 4) == false && mapState(final, from: 4, to: 8) == true
                && mapState(final, from: 16, to: 20) == true && mapState(final, from: 40, to: 44) == true
                && mapState(final, from: 44, to: 48) == false, "\(final)")
        k.dropPageCache()
        #expect(try k.directRead(e, offset: 40 * bs, length: 8 * n) == [UInt8](repeating: 0, count: 4 * n) + tail)

        try k.unmount()
        finished = true
        #expect(k.finish())
        try fsckClean(image)
        #expect(try debugfsRead(image, "f.bin", tmp: dir) == model.files["f.bin"])
        let ex = try debugfsExtents(image, "f.bin")
        func uninit(_ b: UInt64) -> Bool? { ex.first { $0.logical <= b && b < $0.logical + $0.length }?.uninit }
        #expect(uninit(0) == false && uninit(3) == false && uninit(4) == true && uninit(7) == true
                && uninit(16) == true && uninit(19) == true && uninit(40) == true && uninit(43) == true
                && uninit(44) == false && uninit(47) == false && uninit(8) == nil && uninit(20) == nil,
                "debugfs extents: \(ex)")
    }

    /// RWF_ATOMIC direct writes (§12.8): one block, BEGIN(WRITE|DIRECT|ATOMIC)
    /// always reaches the server, which answers one MAPPED or UNWRITTEN mapping
    /// with F_ATOMIC_BIO (allocating a hole first) and never upserts it.
    @Test(arguments: [FsConfig.all[0], FsConfig.all[1], FsConfig.all[3]])
    func atomicWrites(_ cfg: FsConfig) throws {
        let dir = try TempDir()
        let tree = dir.sub("tree"), image = dir.sub("image")
        try buildTree(tree, bigMB: 1)
        try makeImage(image, tree: tree, type: cfg.type, args: ["-b", "\(cfg.blockSize)"] + cfg.args)
        var model = Model()
        for f in ["sparse.bin", "big.bin", "striped.bin"] { model.files[f] = try readWhole(tree + "/" + f) }
        let k = try rwKernel(image)
        var finished = false
        defer { if !finished { _ = k.finish() } }
        let bs = k.blockSize
        let n = Int(bs)
        let atomic: OpFlags = [.write, .direct, .atomic]
        let newType = cfg.extents ? MType.unwritten.rawValue : MType.mapped.rawValue
        let atomicBio = FuseIomap.MappingFlags.atomicBio.rawValue
        func counters() -> (alloc: Int, upserts: Int) {
            let u = k.fuse.iomapState.upcalls
            return (u.allocations, u.upserts)
        }
        func cached(_ e: FuseEntryOut, _ pos: UInt64) -> Bool {
            k.cache[e.nodeid]?.contains { $0.offset <= pos && pos < $0.offset + $0.length } ?? false
        }
        /// Write one block through an atomic mapping, then complete it as a direct write does.
        func writeThrough(_ e: FuseEntryOut, _ m: FuseIomapIo, _ pos: UInt64, _ d: [UInt8], _ path: String) throws {
            try k.writeDev(m.addr + (pos - m.offset), d[...])
            let flags: FuseIomap.IoendFlags = m.type == MType.unwritten.rawValue ? [.direct, .unwritten] : [.direct]
            try k.ioend(e, flags: flags, pos: pos, written: UInt64(d.count), addr: FuseIomap.nullAddr)
            model.write(path, pos, d)
        }

        // 1. A hole inside EOF: exactly that block is allocated.
        let sp = try k.lookup("sparse.bin")
        let hpos: UInt64 = 2 << 20
        let hb = hpos / bs
        #expect(try k.fs.mappings(UInt32(sp.attr.ino), fromBlock: hb - 8, maxBlocks: 17).isEmpty)
        var c0 = counters()
        let m1 = try k.begin(sp, op: atomic, pos: hpos, count: bs)
        #expect(m1.type == newType && m1.flags & atomicBio != 0 && m1.offset == hpos && m1.length == bs, "\(m1)")
        var c1 = counters()
        #expect(c1.alloc == c0.alloc + 1 && c1.upserts == c0.upserts, "allocations/upserts \(c0) -> \(c1)")
        #expect(!cached(sp, hpos), "an atomic mapping went into the mapping cache")
        let around = try k.fs.mappings(UInt32(sp.attr.ino), fromBlock: hb - 8, maxBlocks: 17)
        #expect(around.count == 1 && around[0].logical == hb && around[0].length == 1
                && around[0].unwritten == cfg.extents, "\(around)")
        try writeThrough(sp, m1, hpos, pattern(n, seed: 61), "sparse.bin")
        #expect(mapState(try engineMap(k, sp), from: hb, to: hb + 1) == false, "atomic IOEND did not convert")

        // 2. A written block: MAPPED, nothing allocated; asked twice, both upcalls.
        let big = try k.lookup("big.bin")
        let wpos = 5 * bs
        c0 = counters()
        let beginsBefore = k.upcalls["begin.atomic"] ?? 0
        let m2 = try k.begin(big, op: atomic, pos: wpos, count: bs)
        #expect(m2.type == MType.mapped.rawValue && m2.flags & atomicBio != 0
                && m2.offset <= wpos && m2.offset + m2.length >= wpos + bs, "\(m2)")
        // The kernel never consults its cache for ATOMIC (the test kernel's map() neither).
        let m2b = try k.map(big, op: atomic, pos: wpos, count: bs)
        #expect(m2b == m2 && k.upcalls["begin.atomic"] == beginsBefore + 2)
        c1 = counters()
        #expect(c1 == c0, "atomic BEGIN over written blocks allocated or upserted: \(c0) -> \(c1)")
        try writeThrough(big, m2, wpos, pattern(n, seed: 62), "big.bin")

        // 3. Preallocated (unwritten) blocks: UNWRITTEN, nothing allocated, converted at IOEND.
        if cfg.extents {
            let pre = try k.create("pre.bin")
            try k.fallocate(pre, mode: 0, offset: 0, length: 16 * bs)
            model.files["pre.bin"] = [UInt8](repeating: 0, count: 16 * n)
            c0 = counters()
            let m3 = try k.begin(pre, op: atomic, pos: 3 * bs, count: bs)
            #expect(m3.type == MType.unwritten.rawValue && m3.flags & atomicBio != 0
                    && m3.offset <= 3 * bs && m3.offset + m3.length >= 4 * bs, "\(m3)")
            #expect(counters() == c0)
            try writeThrough(pre, m3, 3 * bs, pattern(n, seed: 63), "pre.bin")
            let pm = try engineMap(k, pre)
            #expect(mapState(pm, from: 0, to: 3) == true && mapState(pm, from: 3, to: 4) == false
                    && mapState(pm, from: 4, to: 16) == true, "\(pm)")
        }

        // 4. Appending to an empty file: allocated, the size follows at IOEND.
        let app = try k.create("app.bin")
        model.files["app.bin"] = []
        let m4 = try k.begin(app, op: atomic, pos: 0, count: bs)
        #expect(m4.type == newType && m4.flags & atomicBio != 0 && m4.offset == 0 && m4.length == bs, "\(m4)")
        try writeThrough(app, m4, 0, pattern(n, seed: 64), "app.bin")
        #expect(try k.fs.inode(UInt32(app.attr.ino)).size == bs)

        // 5. Requests spanning two extents (the kernel only sends one block;
        //    fs/iomap refuses an atomic bio its mapping does not fully cover):
        //    one mapping for pos, ending at the extent boundary.
        let st = try k.lookup("striped.bin")
        let sino = UInt32(st.attr.ino)
        let edge: UInt64 = 64 << 10
        c0 = counters()
        let m5 = try k.begin(st, op: atomic, pos: edge - bs, count: 2 * bs)  // written block, then a hole
        #expect(m5.type == MType.mapped.rawValue && m5.flags & atomicBio != 0 && m5.offset + m5.length == edge, "\(m5)")
        #expect(counters() == c0, "nothing to allocate under pos")
        #expect(try k.fs.mappings(sino, fromBlock: edge / bs, maxBlocks: edge / bs).isEmpty, "the hole after pos was filled")
        let m6 = try k.begin(st, op: atomic, pos: 2 * edge - bs, count: 2 * bs)  // a hole block, then written data
        #expect(m6.type == newType && m6.flags & atomicBio != 0 && m6.offset == 2 * edge - bs
                && (cfg.extents ? m6.length == bs : m6.length >= bs), "\(m6)")
        c1 = counters()
        #expect(c1.alloc == c0.alloc + 1 && c1.upserts == c0.upserts)
        let hole = try k.fs.mappings(sino, fromBlock: edge / bs, maxBlocks: edge / bs)
        #expect(hole.count == 1 && hole[0].logical == 2 * edge / bs - 1 && hole[0].length == 1, "\(hole)")

        // 6. NOWAIT into a hole would allocate: EAGAIN, nothing allocated.
        c0 = counters()
        #expect(throws: FuseFailure(errno: EAGAIN)) { _ = try k.begin(sp, op: atomic.union(.nowait), pos: 3 << 20, count: bs) }
        let nowaitMap = try k.fs.mappings(UInt32(sp.attr.ino), fromBlock: (3 << 20) / bs, maxBlocks: 1)
        #expect(counters() == c0 && nowaitMap.isEmpty)

        // What the kernel reads back, then what e2fsprogs reads.
        try k.syncfs()
        k.dropPageCache()
        for (path, want) in model.files.sorted(by: { $0.key < $1.key }) {
            let e = try k.lookup(path)
            #expect(try k.bufferedRead(e, offset: 0, length: want.count + n) == want, "\(path) read back")
        }
        try k.unmount()
        finished = true
        #expect(k.finish())
        try fsckClean(image)
        for (path, want) in model.files {
            #expect(try debugfsRead(image, path, tmp: dir) == want, "\(cfg) \(path): e2fsprogs reads other bytes")
        }
    }

    /// ATOMIC is write-class: refused on a read-only mount, where reads still map.
    @Test func atomicOnReadOnlyMountIsEROFS() throws {
        let dir = try TempDir()
        let tree = dir.sub("tree"), image = dir.sub("image")
        try buildTree(tree, bigMB: 1)
        try makeImage(image, tree: tree)
        let k = try IomapKernel(image: image)
        defer { _ = k.finish() }
        try k.initialize()
        #expect(k.iomap)
        let big = try k.lookup("big.bin")
        #expect(try k.begin(big, op: .direct, pos: 0, count: k.blockSize).type == MType.mapped.rawValue)
        #expect(throws: FuseFailure(errno: EROFS)) { _ = try k.begin(big, op: [.write, .direct, .atomic], pos: 0, count: k.blockSize) }
        #expect(throws: FuseFailure(errno: EROFS)) { _ = try k.begin(big, op: .atomic, pos: 0, count: k.blockSize) }
    }

    /// REPORT (FIEMAP, SEEK_DATA/SEEK_HOLE) on a writable mount never allocates,
    /// never upserts, and answers HOLE wherever the engine has no block.
    @Test(arguments: [FsConfig.all[0], FsConfig.all[3]])
    func reportNeverAllocates(_ cfg: FsConfig) throws {
        let dir = try TempDir()
        let tree = dir.sub("tree"), image = dir.sub("image")
        try buildTree(tree, bigMB: 1)
        try makeImage(image, tree: tree, type: cfg.type, args: ["-b", "\(cfg.blockSize)"] + cfg.args)
        let k = try rwKernel(image)
        var finished = false
        defer { if !finished { _ = k.finish() } }
        let bs = k.blockSize
        let created = try k.create("hollow.bin")
        try k.truncate(created, to: 1 << 20)
        let names = ["sparse.bin", "holestart.bin", "tailonly.bin", "striped.bin", "hollow.bin", "empty"]
        var files: [(String, FuseEntryOut)] = []
        for p in names { files.append((p, try k.lookup(p))) }
        let before = try files.map { try engineMap(k, $0.1) }
        let free0 = try freeBlocks(k)
        let c0 = k.fuse.iomapState.upcalls
        #expect(before[4].isEmpty, "the truncated new file has blocks: \(before[4])")

        var holes = 0
        for (i, (path, e)) in files.enumerated() {
            let fm = try k.fiemap(e)
            #expect(fm.reduce(0) { $0 + $1.length } == before[i].reduce(0) { $0 + $1.length * bs }, "\(path): \(fm)")
            let size = e.attr.size
            for off in [0, bs, size / 3, size / 2, size > 0 ? size - 1 : 0] {
                _ = try k.seek(e, off, data: true)
                _ = try k.seek(e, off, data: false)
            }
            // Raw REPORT BEGINs every 64 KiB, and past EOF with a huge count.
            var pos: UInt64 = 0
            while pos <= size + (128 << 10) {
                let m = try k.begin(e, op: .report, pos: pos, count: .max - pos)
                if mapState(before[i], from: pos / bs, to: pos / bs + 1) == nil {
                    #expect(m.type == MType.hole.rawValue, "\(path) REPORT at \(pos) over a hole: \(m)")
                    holes += 1
                }
                pos += 64 << 10
            }
        }
        #expect(holes > 20)
        #expect(try k.fiemap(created).isEmpty)
        let after = try files.map { try engineMap(k, $0.1) }
        #expect(after == before, "REPORT changed a file's map")
        #expect(try freeBlocks(k) == free0, "REPORT allocated blocks")
        let c1 = k.fuse.iomapState.upcalls
        #expect(c1.allocations == c0.allocations && c1.upserts == c0.upserts, "\(c0) -> \(c1)")
        #expect((k.upcalls["begin.report"] ?? 0) > 0)

        try k.unmount()
        finished = true
        #expect(k.finish())
        try fsckClean(image)
        if cfg.extents {
            // e2fsprogs agrees: the hole-only file has no extent, sparse.bin its two.
            #expect(try debugfsExtents(image, "hollow.bin").isEmpty)
            #expect(try debugfsExtents(image, "sparse.bin").count == before[0].count, "\(before[0])")
        }
    }

    /// Block-mapped files get written zeroes at BEGIN; a failed direct write
    /// past EOF must not leave them beyond i_size (e2fsck would object).
    @Test(arguments: [FsConfig.all[3], FsConfig.all[4]])
    func failedIoendBlockMapped(_ cfg: FsConfig) throws {
        let dir = try TempDir()
        let image = try emptyImage(dir, cfg)
        let k = try rwKernel(image)
        var finished = false
        defer { if !finished { _ = k.finish() } }
        let bs = k.blockSize
        let n = Int(bs)
        let e = try k.create("f.bin")
        let ino = UInt32(e.attr.ino)
        let d = pattern(4 * n, seed: 51)
        try k.directWrite(e, offset: 0, d)
        #expect(try k.fs.inode(ino).size == 4 * bs)
        let m = try k.begin(e, op: [.write, .direct], pos: 8 * bs, count: 4 * bs)
        #expect(m.type == MType.mapped.rawValue, "\(m)")
        try k.writeDev(m.addr + (8 * bs - m.offset), pattern(4 * n, seed: 52)[...])
        let r = try k.rawIoend(e, flags: [.direct, .append], error: -EIO, pos: 8 * bs, written: 4 * bs)
        #expect(r.errno == EIO, "\(r)")
        #expect(try k.fs.inode(ino).size == 4 * bs, "a failed APPEND IOEND moved the size")
        #expect(try k.fs.mappings(ino, fromBlock: 4, maxBlocks: 64).isEmpty, "blocks past EOF stayed")
        try k.unmount()
        finished = true
        #expect(k.finish())
        let fsck = try execute("/usr/sbin/e2fsck", ["-fn", image])
        #expect(fsck.status == 0, "\(cfg): e2fsck -fn after a failed direct write past EOF: \(fsck.stdout)")
        #expect(try debugfsRead(image, "f.bin", tmp: dir) == d)
    }
}
