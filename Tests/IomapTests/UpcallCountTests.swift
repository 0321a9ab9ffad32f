// Upcall counts of the iomap read path (the numbers in docs/BENCHMARKS.md):
// how many FUSE_IOMAP_BEGIN round trips the kernel makes per GiB of data.

import Ext4Engine
import Ext4Fuse
import Ext4Server
import Foundation
import FuseKernel
import Glibc
import Testing

@Suite(.serialized) struct IomapUpcallCounts {
    @Test(arguments: [("ext4", 4096, true), ("ext4", 4096, false), ("ext2", 4096, true), ("ext2", 4096, false)])
    func perGiB(type: String, blockSize: Int, cache: Bool) throws {
        let dir = try TempDir()
        let tree = dir.sub("tree"), image = dir.sub("image")
        try FileManager.default.createDirectory(atPath: tree, withIntermediateDirectories: true)
        let fileMB = 64
        try writeFile(tree + "/seq.bin", pattern(fileMB << 20, seed: 42))
        try makeImage(image, tree: tree, type: type, args: ["-b", "\(blockSize)"], sizeMB: fileMB + 48)
        var o = ServerOptions()
        o.readOnly = true
        o.iomapCache = cache
        let k = try IomapKernel(image: image, options: o)
        k.useCache = cache
        defer { #expect(k.finish()) }
        try k.initialize()
        let e = try k.lookup("seq.bin")
        let extents = try k.fs.mappings(UInt32(e.attr.ino), fromBlock: 0, maxBlocks: 1 << 32).count
        let gib = Double(1 << 30) / Double(fileMB << 20)
        var report: [String] = []
        for ra: UInt64 in [128 << 10, 1 << 20] {
            k.readahead = ra
            k.dropPageCache()
            k.cache = [:]  // each pass starts as a freshly instantiated inode
            let before = k.upcalls["begin.read"] ?? 0
            var off: UInt64 = 0
            while off < e.attr.size {
                _ = try k.bufferedRead(e, offset: off, length: 1 << 20)
                off += 1 << 20
            }
            let n = (k.upcalls["begin.read"] ?? 0) - before
            // One BEGIN per readahead batch (the mapping covers the batch), never more.
            #expect(n <= Int(e.attr.size / ra) + extents + 1)
            report.append("sequential buffered read, readahead \(ra >> 10) KiB: \(Int(Double(n) * gib)) BEGIN/GiB")
        }
        var rng = SplitMix(seed: 7)
        k.cache = [:]
        let reads = 2048
        let before = k.upcalls["begin.directread"] ?? 0
        for _ in 0..<reads {
            let off = rng.below(e.attr.size / 4096) * 4096
            _ = try k.directRead(e, offset: off, length: 4096)
        }
        let n = (k.upcalls["begin.directread"] ?? 0) - before
        // Without the cache one BEGIN per direct IO; with it, a few per extent or block-map run.
        #expect(cache ? n <= 4 * extents + 8 : n == reads)
        report.append("4 KiB random direct read: \(Int(Double(n) / Double(reads) * Double(1 << 18))) BEGIN/GiB")
        print("iomap upcalls (cache \(cache ? "on" : "off")), \(type) \(blockSize)-byte blocks, \(extents) extents/runs in a \(fileMB) MiB file:\n  "
              + report.joined(separator: "\n  "))
    }

    /// The write side, with and without the kernel mapping cache: upcalls
    /// (BEGIN + END + IOEND) per GiB for sequential buffered writes (1 MiB
    /// write(2)s, then writeback), reading the file back (readahead 1 MiB,
    /// cold page cache), and 4 KiB random direct writes into a sparse file
    /// (every write allocates) and over written blocks.
    @Test(arguments: [("ext4", 4096), ("ext2", 4096)])
    func writePerGiB(type: String, blockSize: Int) throws {
        var lines: [String] = []
        for cache in [true, false] {
            let dir = try TempDir()
            let tree = dir.sub("tree"), image = dir.sub("image")
            try FileManager.default.createDirectory(atPath: tree, withIntermediateDirectories: true)
            try makeImage(image, tree: tree, type: type, args: ["-b", "\(blockSize)"], sizeMB: 256)
            let k = try rwKernel(image, cache: cache)
            var finished = false
            defer { if !finished { _ = k.finish() } }
            k.useCache = cache
            let fileMB = 64
            let gib = Double(1 << 30) / Double(fileMB << 20)
            func iomapUpcalls() -> Int {
                ["iomapBegin", "iomapEnd", "iomapIoend"].reduce(0) { $0 + (k.upcalls[$1] ?? 0) }
            }
            func detail(_ before: [String: Int]) -> String {
                ["iomapBegin", "iomapEnd", "iomapIoend"].map { n in
                    "\(n.dropFirst(5)) \(Int(Double((k.upcalls[n] ?? 0) - (before[n] ?? 0)) * gib))"
                }.joined(separator: ", ")
            }
            // Sequential buffered write + writeback.
            let e = try k.create("seq.bin")
            var before = k.upcalls
            var n0 = iomapUpcalls()
            let chunk = pattern(1 << 20, seed: 3)
            for m in 0..<fileMB { try k.bufferedWrite(e, offset: UInt64(m) << 20, chunk) }
            try k.fsync(e)
            lines.append("cache \(cache ? "on " : "off"): sequential buffered write: \(Int(Double(iomapUpcalls() - n0) * gib))/GiB (\(detail(before)))")
            // Sequential buffered read from a cold cache.
            k.dropPageCache()
            k.readahead = 1 << 20
            before = k.upcalls
            n0 = iomapUpcalls()
            var off: UInt64 = 0
            while off < UInt64(fileMB) << 20 {
                let got = try k.bufferedRead(e, offset: off, length: 1 << 20)
                #expect(got == chunk)
                off += 1 << 20
            }
            lines.append("cache \(cache ? "on " : "off"): sequential buffered read:  \(Int(Double(iomapUpcalls() - n0) * gib))/GiB (\(detail(before)))")
            // 4 KiB random direct writes: into a sparse file, then over written blocks.
            var rng = SplitMix(seed: 11)
            let writes = 2048
            let perGiB = Double(1 << 18) / Double(writes)
            let sparse = try k.create("sparse.bin")
            try k.truncate(sparse, to: UInt64(fileMB) << 20)
            for target in [sparse, e] {
                before = k.upcalls
                n0 = iomapUpcalls()
                for i in 0..<writes {
                    let o = rng.below(UInt64(fileMB) << 8) << 12
                    try k.directWrite(target, offset: o, pattern(4096, seed: UInt32(i)))
                }
                let what = target.nodeid == sparse.nodeid ? "into holes" : "overwrite "
                let d = ["iomapBegin", "iomapEnd", "iomapIoend"].map { n in
                    "\(n.dropFirst(5)) \(Int(Double((k.upcalls[n] ?? 0) - (before[n] ?? 0)) * perGiB))"
                }.joined(separator: ", ")
                lines.append("cache \(cache ? "on " : "off"): 4 KiB random direct write \(what): \(Int(Double(iomapUpcalls() - n0) * perGiB))/GiB (\(d))")
            }
            try k.unmount()
            finished = true
            #expect(k.finish())
            try fsckClean(image)
        }
        print("iomap write upcalls, \(type) \(blockSize)-byte blocks:\n  " + lines.joined(separator: "\n  "))
    }
}
