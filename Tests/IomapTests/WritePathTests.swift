// The iomap write side end to end: a read-write Ext4FuseFS, the test kernel
// doing buffered and direct writes, writeback, truncate and fallocate from the
// server's mappings. Afterwards the session ends with DESTROY, e2fsck must
// find the image clean, and e2fsprogs must read back what was written.

import Ext4Engine
import Ext4Fuse
import Ext4Server
import Foundation
import FuseKernel
import Glibc
import Testing

struct FsConfig: CustomStringConvertible, Sendable {
    var type: String
    var blockSize: Int
    var args: [String] = []
    var extents: Bool
    var description: String { "\(type) \(blockSize)\(args.isEmpty ? "" : " " + args.joined(separator: " "))" }

    static let all: [FsConfig] = [
        FsConfig(type: "ext4", blockSize: 4096, extents: true),
        FsConfig(type: "ext4", blockSize: 1024, extents: true),
        FsConfig(type: "ext4", blockSize: 4096, args: ["-O", "^extents,^64bit"], extents: false),
        FsConfig(type: "ext2", blockSize: 1024, extents: false),
        FsConfig(type: "ext3", blockSize: 4096, extents: false),
        // e2fsprogs 1.47's defaults.
        FsConfig(type: "ext4", blockSize: 4096, args: ["-O", "orphan_file,metadata_csum_seed"], extents: true),
    ]
}

@Suite(.serialized) struct IomapWritePath {
    @Test(arguments: FsConfig.all)
    func scenario(_ cfg: FsConfig) throws {
        try writeScenario(cfg, real: false)
    }

    /// The same scenario against the production binary in its real sandbox:
    /// IOMAP_BEGIN/END/IOEND and the notifications under the serving filter.
    @Test(.enabled(if: RealServer.available, "needs root and a built ext4iomapd"))
    func scenarioOnTheSandboxedBinary() throws {
        try writeScenario(FsConfig.all[0], real: true)
    }

    func writeScenario(_ cfg: FsConfig, real: Bool) throws {
        let dir = try TempDir()
        let tree = dir.sub("tree"), image = dir.sub("image")
        try buildTree(tree, bigMB: 4)
        try makeImage(image, tree: tree, type: cfg.type, args: ["-b", "\(cfg.blockSize)"] + cfg.args)
        var model = Model()
        for f in treeFiles { model.files[f] = try readWhole(tree + "/" + f) }

        let k = try rwKernel(image, real: real)
        var finished = false
        defer { if !finished { _ = k.finish() } }
        let bs = k.blockSize

        // Buffered: a new file, an unaligned write, an append, a partial overwrite.
        let a = try k.create("new.bin")
        #expect(k.isIomapInode(a), "created file without FUSE_ATTR_IOMAP")
        let d1 = pattern(100_001, seed: 21)
        try k.bufferedWrite(a, offset: 0, d1); model.write("new.bin", 0, d1)
        let d2 = pattern(5000, seed: 22)
        try k.bufferedWrite(a, offset: 100_001, d2); model.write("new.bin", 100_001, d2)
        let d3 = pattern(3000, seed: 23)
        try k.bufferedWrite(a, offset: 1234, d3); model.write("new.bin", 1234, d3)
        // Past EOF: the gap is zeroed.
        let d4 = pattern(777, seed: 24)
        try k.bufferedWrite(a, offset: 300_000, d4); model.write("new.bin", 300_000, d4)
        let beforeSync = try k.bufferedRead(a, offset: 0, length: 400_000)
        #expect(beforeSync == model.files["new.bin"], "page cache differs before writeback")
        try k.fsync(a)

        // Direct: aligned writes, with a hole in front of the second one, and an overwrite.
        let b = try k.create("direct.bin")
        let d5 = pattern(64 << 10, seed: 25)
        try k.directWrite(b, offset: 0, d5); model.write("direct.bin", 0, d5)
        let d6 = pattern(16 << 10, seed: 26)
        try k.directWrite(b, offset: 1 << 20, d6); model.write("direct.bin", 1 << 20, d6)
        let d7 = pattern(Int(bs) * 3, seed: 27)
        try k.directWrite(b, offset: bs, d7); model.write("direct.bin", bs, d7)

        // Overwrite of existing written blocks (no IOEND expected) and of unwritten ones.
        let big = try k.lookup("big.bin")
        let d8 = pattern(70_000, seed: 28)
        try k.bufferedWrite(big, offset: 1_000_000, d8); model.write("big.bin", 1_000_000, d8)
        let d9 = pattern(Int(bs) * 4, seed: 29)
        try k.directWrite(big, offset: bs * 100, d9); model.write("big.bin", bs * 100, d9)
        if cfg.extents {
            let p = try k.create("prealloc.bin")
            try k.fallocate(p, mode: 1, offset: 0, length: 256 << 10)  // KEEP_SIZE: unwritten, size 0
            #expect(try k.fiemap(p).allSatisfy { $0.flags & 0x800 != 0 }, "preallocated blocks not unwritten")
            let d10 = pattern(10_000, seed: 30)
            try k.bufferedWrite(p, offset: 5000, d10); model.write("prealloc.bin", 5000, d10)
            let d11 = pattern(8192, seed: 31)
            try k.directWrite(p, offset: 128 << 10, d11); model.write("prealloc.bin", 128 << 10, d11)
            try k.fsync(p)
            let ext = try k.fiemap(p)
            // Written back pages (whole pages around 5000..15000, and the direct write) are written now.
            #expect(ext.contains { $0.flags & 0x800 == 0 && $0.logical <= 5000 && $0.logical + $0.length >= 15000 },
                    "written part still unwritten: \(ext)")
            #expect(ext.contains { $0.flags & 0x800 == 0 && $0.logical <= 128 << 10 && $0.logical + $0.length >= 136 << 10 },
                    "direct write still unwritten: \(ext)")
            #expect(ext.contains { $0.flags & 0x800 != 0 }, "untouched preallocation converted: \(ext)")
        } else {
            let p = try k.create("prealloc.bin")
            #expect(throws: FuseFailure(errno: EOPNOTSUPP)) { try k.fallocate(p, mode: 1, offset: 0, length: 1 << 16) }
            model.files["prealloc.bin"] = []
        }

        // Truncate down (unaligned), then up, with dirty pages around.
        try k.bufferedWrite(a, offset: 40_000, pattern(20_000, seed: 32)); model.write("new.bin", 40_000, pattern(20_000, seed: 32))
        try k.truncate(a, to: 50_001); model.truncate("new.bin", 50_001)
        try k.truncate(a, to: 200_000); model.truncate("new.bin", 200_000)
        try k.bufferedWrite(a, offset: 199_000, pattern(500, seed: 33)); model.write("new.bin", 199_000, pattern(500, seed: 33))

        // Punch and zero range (ZERO_RANGE is extent-only, as on the kernel's ext4).
        try k.fallocate(a, mode: 3, offset: 10_000, length: 30_000); model.zero("new.bin", 10_000, 30_000, extend: false)
        if cfg.extents {
            try k.fallocate(a, mode: 0x10, offset: 3000, length: 6000); model.zero("new.bin", 3000, 6000, extend: true)
            try k.fallocate(a, mode: 0x10, offset: 190_000, length: 20_000); model.zero("new.bin", 190_000, 20_000, extend: true)
        } else {
            #expect(throws: FuseFailure(errno: EOPNOTSUPP)) { try k.fallocate(a, mode: 0x10, offset: 3000, length: 6000) }
        }
        try k.fallocate(big, mode: 3, offset: 2 << 20, length: 1 << 20); model.zero("big.bin", 2 << 20, 1 << 20, extend: false)

        // Unlink frees blocks: DEV_INVAL.
        let invalsBefore = k.devInvals.count
        try k.unlink("multi.bin"); model.files["multi.bin"] = nil
        try k.waitFor { k.devInvals.count > invalsBefore }
        #expect(k.devInvals.count > invalsBefore, "no DEV_INVAL after freeing blocks")

        // What the kernel reads back through iomap, from the device.
        try k.syncfs()
        k.dropPageCache()
        for (path, want) in model.files.sorted(by: { $0.key < $1.key }) {
            let e = try k.lookup(path)
            #expect(k.size(e) == UInt64(want.count), "\(path): size \(k.size(e)) != \(want.count)")
            guard k.isIomapInode(e) else { continue }
            let got = try k.bufferedRead(e, offset: 0, length: want.count)
            #expect(got == want, "\(path): iomap read after writeback differs")
        }
        if real {
            #expect((k.upcalls["iomapIoend"] ?? 0) > 0 && (k.upcalls["iomapEnd"] ?? 0) > 0, "\(k.upcalls)")
        } else {
            let u = k.fuse.iomapState.upcalls
            #expect(u.ioend > 0 && u.allocations > 0 && u.end > 0, "\(u)")
        }

        try k.unmount()
        finished = true
        #expect(k.finish())
        try fsckClean(image)
        for (path, want) in model.files {
            let got = try debugfsRead(image, path, tmp: dir)
            #expect(got == want, "\(cfg) \(path): e2fsprogs reads \(got.count) bytes, differs from what was written")
        }
    }

    /// Buffered writes that never reach writeback, then a "crash" (the session
    /// ends without writeback): e2fsck must be clean or only trim, and the
    /// files must never show the stale bytes of freed blocks.
    @Test(arguments: [FsConfig.all[0], FsConfig.all[3]])
    func crashNeverExposesStaleBlocks(_ cfg: FsConfig) throws {
        let dir = try TempDir()
        let tree = dir.sub("tree"), image = dir.sub("image")
        try FileManager.default.createDirectory(atPath: tree, withIntermediateDirectories: true)
        // Fill most of the free space with a recognisable pattern, then free it.
        let junk = [UInt8](repeating: 0xA5, count: 40 << 20)
        try writeFile(tree + "/junk", junk)
        try makeImage(image, tree: tree, type: cfg.type, args: ["-b", "\(cfg.blockSize)"] + cfg.args, sizeMB: 48)
        do {
            let k = try rwKernel(image)
            defer { _ = k.finish() }
            try k.unlink("junk")
            let e = try k.create("victim")
            k.dirtyLimit = .max
            try k.bufferedWrite(e, offset: 0, pattern(3 << 20, seed: 5))
            try k.bufferedWrite(e, offset: 5 << 20, pattern(1000, seed: 6))
            // No writeback, no DESTROY: the socket closes (the server still ends its session).
        }
        _ = try? run("/usr/sbin/e2fsck", ["-fy", image])
        try fsckClean(image)
        let got = (try? debugfsRead(image, "victim", tmp: dir)) ?? []
        #expect(got.allSatisfy { $0 == 0 }, "\(cfg): unwritten-back data must read as zeroes, got non-zero bytes")
    }

    /// An inline-data file grows past its inline capacity through FUSE_WRITE:
    /// the engine converts it to blocks; the kernel keeps it on the classic
    /// path (flags are consumed at instantiation) until it forgets the inode,
    /// and the next lookup brings it in as an iomap inode.
    @Test func inlineFileConvertsThenGetsIomapAfterEviction() throws {
        let dir = try TempDir()
        let tree = dir.sub("tree"), image = dir.sub("image")
        try FileManager.default.createDirectory(atPath: tree, withIntermediateDirectories: true)
        try writeFile(tree + "/tiny", Array("tiny inline file\n".utf8))
        try makeImage(image, tree: tree, type: "ext4", args: ["-O", "inline_data", "-I", "256"])
        let k = try rwKernel(image)
        var finished = false
        defer { if !finished { _ = k.finish() } }
        let e = try k.lookup("tiny")
        #expect(!k.isIomapInode(e))
        let more = pattern(20_000, seed: 9)
        try k.bufferedWrite(e, offset: 17, more)  // classic FUSE_WRITE: converts
        let attr = try k.getattr(e)
        #expect(FuseAttrFlags(rawValue: attr.flags).contains(.iomap), "converted file not offered iomap")
        #expect(k.inodes[e.nodeid]?.iomap == false, "the kernel keeps the classic path until eviction")
        // A truncate on the classic path: the server zeroes the partial block itself.
        try k.truncate(e, to: 10_000)
        k.evict(e.nodeid)
        let e2 = try k.lookup("tiny")
        #expect(k.isIomapInode(e2) && k.inodes[e2.nodeid]?.iomap == true)
        var want = Array("tiny inline file\n".utf8) + more
        want = Array(want.prefix(10_000))
        let got = try k.bufferedRead(e2, offset: 0, length: 20_000)
        #expect(got == want)
        try k.bufferedWrite(e2, offset: 10_000, pattern(5000, seed: 10))
        want += pattern(5000, seed: 10)
        try k.unmount()
        finished = true
        #expect(k.finish())
        try fsckClean(image)
        #expect(try debugfsRead(image, "tiny", tmp: dir) == want)
    }

    /// The mapping cache is exact: with the cache on, every hit is checked
    /// against the engine's map (IomapKernel.verifyCache); with it off, there
    /// are no upserts and no RETRY_CACHE, and the same data results.
    @Test(arguments: [true, false])
    func mappingCacheOnOff(_ cache: Bool) throws {
        let dir = try TempDir()
        let tree = dir.sub("tree"), image = dir.sub("image")
        try buildTree(tree, bigMB: 2)
        try makeImage(image, tree: tree, type: "ext4", args: ["-b", "1024"])
        let k = try rwKernel(image, cache: cache)
        var finished = false
        defer { if !finished { _ = k.finish() } }
        let e = try k.create("c.bin")
        var model = Model()
        var rng = SplitMix(seed: 99)
        for i in 0..<60 {
            let off = rng.below(1 << 20)
            let len = Int(rng.below(40_000)) + 1
            let d = pattern(len, seed: UInt32(i))
            if i % 3 == 0 {
                let a = off / 1024 * 1024
                let dd = Array(d.prefix(max(1024, len / 1024 * 1024)))
                let pad = dd.count < 1024 ? dd + [UInt8](repeating: 0, count: 1024 - dd.count) : dd
                try k.directWrite(e, offset: a, pad); model.write("c.bin", a, pad)
            } else {
                try k.bufferedWrite(e, offset: off, d); model.write("c.bin", off, d)
            }
            if i % 7 == 0 { try k.fsync(e) }
            if i % 11 == 0 {
                let t = rng.below(1 << 20)
                try k.truncate(e, to: t); model.truncate("c.bin", t)
            }
        }
        try k.fsync(e)
        k.dropPageCache()
        #expect(try k.bufferedRead(e, offset: 0, length: 2 << 20) == model.files["c.bin"])
        let u = k.fuse.iomapState.upcalls
        if cache { #expect(u.upserts > 0 && (k.upcalls.filter { $0.key.hasPrefix("hit.") }.values.reduce(0, +)) > 0) }
        else { #expect(u.upserts == 0 && k.cache.isEmpty) }
        try k.unmount()
        finished = true
        #expect(k.finish())
        try fsckClean(image)
        #expect(try debugfsRead(image, "c.bin", tmp: dir) == model.files["c.bin"])
    }
}
