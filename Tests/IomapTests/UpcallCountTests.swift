// Upcall counts of the iomap read path (the numbers in docs/BENCHMARKS.md):
// how many FUSE_IOMAP_BEGIN round trips the kernel makes per GiB of data.

import Ext4Engine
import Ext4Server
import Foundation
import FuseKernel
import Glibc
import Testing

@Suite(.serialized) struct IomapUpcallCounts {
    @Test(arguments: [("ext4", 4096), ("ext2", 4096)])
    func perGiB(type: String, blockSize: Int) throws {
        let dir = try TempDir()
        let tree = dir.sub("tree"), image = dir.sub("image")
        try FileManager.default.createDirectory(atPath: tree, withIntermediateDirectories: true)
        let fileMB = 64
        try writeFile(tree + "/seq.bin", pattern(fileMB << 20, seed: 42))
        try makeImage(image, tree: tree, type: type, args: ["-b", "\(blockSize)"], sizeMB: fileMB + 48)
        let k = try IomapKernel(image: image)
        defer { #expect(k.finish()) }
        try k.initialize()
        let e = try k.lookup("seq.bin")
        let extents = try k.fs.mappings(UInt32(e.attr.ino), fromBlock: 0, maxBlocks: 1 << 32).count
        let gib = Double(1 << 30) / Double(fileMB << 20)
        var report: [String] = []
        for ra: UInt64 in [128 << 10, 1 << 20] {
            k.readahead = ra
            k.dropPageCache()
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
        var rng = SplitMix(s: 7)
        let reads = 2048
        let before = k.upcalls["begin.directread"] ?? 0
        for _ in 0..<reads {
            let off = rng.below(e.attr.size / 4096) * 4096
            _ = try k.directRead(e, offset: off, length: 4096)
        }
        let n = (k.upcalls["begin.directread"] ?? 0) - before
        #expect(n == reads)
        report.append("4 KiB random direct read: \(Int(Double(n) / Double(reads) * Double(1 << 18))) BEGIN/GiB")
        print("iomap upcalls, \(type) \(blockSize)-byte blocks, \(extents) extents/runs in a \(fileMB) MiB file:\n  "
              + report.joined(separator: "\n  "))
    }
}
