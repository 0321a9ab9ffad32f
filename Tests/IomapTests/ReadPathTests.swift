// The iomap read side end to end: real images, a real Ext4FuseFS, the test
// kernel doing the IO from the server's mappings. Every byte read through
// iomap is compared with the source tree and with the classic READ path.

import Ext4Engine
import Ext4Fuse
import Ext4Server
import Foundation
import FuseKernel
import Glibc
import Testing

/// A built image with its source tree.
final class Fixture {
    let dir: TempDir
    let tree: String
    let image: String
    init(type: String = "ext4", args: [String] = [], bigMB: Int = 12, extra: ((String) throws -> Void)? = nil) throws {
        dir = try TempDir()
        tree = dir.sub("tree")
        image = dir.sub("image")
        try buildTree(tree, bigMB: bigMB)
        try extra?(tree)
        try makeImage(image, tree: tree, type: type, args: args)
    }
}

/// Everything the read side promises, for every file of the tree.
func checkAllFiles(_ k: IomapKernel, tree: String, files: [String] = treeFiles, inline: Set<String> = [],
                   seed: UInt64 = 1) throws {
    var rng = SplitMix(seed: seed)
    for path in files {
        let src = try readWhole(tree + "/" + path)
        let e = try k.lookup(path)
        #expect(e.attr.size == UInt64(src.count), "\(path): size")
        // Classic READ path (served for every file, iomap or not).
        var classic = [UInt8]()
        while classic.count < src.count {
            let chunk = try k.classicRead(e, offset: UInt64(classic.count), length: 128 << 10)
            if chunk.isEmpty { break }
            classic += chunk
        }
        let classicSame = classic == src
        #expect(classicSame, "\(path): classic READ differs from the source")
        if inline.contains(path) {
            #expect(!k.isIomapInode(e), "\(path): inline-data file offered iomap")
            continue
        }
        #expect(k.isIomapInode(e), "\(path): regular file without FUSE_ATTR_IOMAP|EXCLUSIVE")
        guard k.isIomapInode(e) else { continue }

        // Buffered: whole file, then random ranges from a cold cache.
        k.dropPageCache()
        let bufSame = try k.bufferedRead(e, offset: 0, length: src.count) == src
        #expect(bufSame, "\(path): buffered iomap read differs")
        k.dropPageCache()
        for _ in 0..<12 where !src.isEmpty {
            let off = Int(rng.below(UInt64(src.count)))
            let len = Int(rng.below(UInt64(min(300_000, src.count - off)))) + 1
            let got = try k.bufferedRead(e, offset: UInt64(off), length: len)
            let same = got == Array(src[off..<(off + len)])
            #expect(same, "\(path): buffered read at \(off)+\(len)")
        }
        // Direct: whole file in aligned chunks, then random aligned ranges.
        let bs = Int(k.blockSize)
        var direct = [UInt8]()
        while direct.count < src.count {
            let chunk = try k.directRead(e, offset: UInt64(direct.count), length: 64 << 10)
            if chunk.isEmpty { break }
            direct += chunk
        }
        let directSame = direct == src
        #expect(directSame, "\(path): direct iomap read differs")
        for _ in 0..<6 where !src.isEmpty {
            let off = Int(rng.below(UInt64(src.count))) / bs * bs
            let len = (Int(rng.below(200_000)) / bs + 1) * bs
            let got = try k.directRead(e, offset: UInt64(off), length: len)
            let same = got == Array(src[off..<min(src.count, off + len)])
            #expect(same, "\(path): direct read at \(off)+\(len)")
        }

        // FIEMAP from REPORT mappings == the engine's extents, and the data is where it says.
        let ino = UInt32(e.attr.ino)
        let fie = try k.fiemap(e)
        let engine = try k.fs.mappings(ino, fromBlock: 0, maxBlocks: 1 << 32)
        var fromFiemap: [UInt64: (UInt64, Bool)] = [:]
        for x in fie {
            for b in 0..<(x.length / k.blockSize) {
                fromFiemap[x.logical / k.blockSize + b] = (x.physical / k.blockSize + b, x.flags & 0x800 != 0)
            }
        }
        var fromEngine: [UInt64: (UInt64, Bool)] = [:]
        for x in engine { for b in 0..<x.length { fromEngine[x.logical + b] = (x.physical + b, x.unwritten) } }
        #expect(fromFiemap.count == fromEngine.count, "\(path): FIEMAP covers \(fromFiemap.count) blocks, engine \(fromEngine.count)")
        for (l, v) in fromEngine {
            #expect(fromFiemap[l].map { $0.0 == v.0 && $0.1 == v.1 } == true, "\(path): block \(l) FIEMAP \(String(describing: fromFiemap[l])) engine \(v)")
        }
        // SEEK_DATA / SEEK_HOLE agree with the classic LSEEK at many offsets.
        var offsets: Set<UInt64> = [0, 1, UInt64(bs - 1), UInt64(bs)]
        var o: UInt64 = 0
        while o < UInt64(src.count) { offsets.insert(o); offsets.insert(o + 4095); o += 64 << 10 }
        for _ in 0..<10 { offsets.insert(rng.below(UInt64(max(1, src.count)))) }
        for off in offsets.sorted() where off < UInt64(src.count) {
            for data in [true, false] {
                let viaIomap = try k.seek(e, off, data: data)
                let viaClassic = try k.classicSeek(e, off, data: data)
                #expect(viaIomap == viaClassic, "\(path): SEEK_\(data ? "DATA" : "HOLE")(\(off)) iomap \(String(describing: viaIomap)) classic \(String(describing: viaClassic))")
            }
        }
    }
}

@Suite(.serialized) struct IomapReadPath {
    @Test func ext4FourKiBBlocks() throws {
        let f = try Fixture(args: ["-b", "4096"])
        let k = try IomapKernel(image: f.image)
        defer { #expect(k.finish()) }
        try k.initialize()
        #expect(k.iomap)
        #expect(k.blockSize == 4096)
        try checkAllFiles(k, tree: f.tree)
    }

    @Test func ext4OneKiBBlocks() throws {
        let f = try Fixture(args: ["-b", "1024"])
        let k = try IomapKernel(image: f.image)
        defer { #expect(k.finish()) }
        try k.initialize()
        #expect(k.blockSize == 1024)
        try checkAllFiles(k, tree: f.tree, seed: 2)
    }

    @Test(arguments: [1024, 4096]) func ext2BlockMaps(blockSize: Int) throws {
        // Block-mapped files up to double/triple indirection (12 MiB at 1 KiB blocks).
        let f = try Fixture(type: "ext2", args: ["-b", "\(blockSize)"])
        let k = try IomapKernel(image: f.image)
        defer { #expect(k.finish()) }
        try k.initialize()
        #expect(k.blockSize == UInt64(blockSize))
        try checkAllFiles(k, tree: f.tree, seed: UInt64(blockSize))
        // Runs of a block map come back as coalesced MERGED mappings.
        let e = try k.lookup("big.bin")
        let m = try k.begin(e, op: [], pos: 0, count: 1 << 20)
        #expect(m.type == MType.mapped.rawValue && m.length > UInt64(blockSize))
        #expect(m.flags & FuseIomap.MappingFlags.merged.rawValue != 0)
    }

    @Test func ext3WithoutExtents() throws {
        let f = try Fixture(type: "ext3", args: ["-b", "4096"], bigMB: 6)
        let k = try IomapKernel(image: f.image)
        defer { #expect(k.finish()) }
        try k.initialize()
        try checkAllFiles(k, tree: f.tree, seed: 3)
    }

    @Test func unwrittenExtentsReadAsZeroes() throws {
        // debugfs fallocate inside i_size makes unwritten extents; then fill
        // those blocks on the device with junk: iomap must still read zeroes.
        let f = try Fixture(bigMB: 2) { tree in
            try writeFile(tree + "/prealloc.bin", [])
            truncate(tree + "/prealloc.bin", 1 << 20)
            writeAt(tree + "/prealloc.bin", 512 << 10, pattern(10_000, seed: 77))
        }
        try run("/usr/sbin/debugfs", ["-w", "-R", "fallocate /prealloc.bin 0 100", f.image])
        try run("/usr/sbin/debugfs", ["-w", "-R", "fallocate /prealloc.bin 200 255", f.image])
        let k = try IomapKernel(image: f.image)
        defer { #expect(k.finish()) }
        try k.initialize()
        let e = try k.lookup("prealloc.bin")
        let ext = try k.fs.mappings(UInt32(e.attr.ino), fromBlock: 0, maxBlocks: 1 << 32)
        #expect(ext.contains { $0.unwritten }, "debugfs made no unwritten extent: \(ext)")
        let fd = open(f.image, O_WRONLY)
        let bs = k.blockSize
        for x in ext where x.unwritten {
            let junk = [UInt8](repeating: 0xEE, count: Int(x.length * bs))
            _ = junk.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(x.physical * bs)) }
        }
        close(fd)
        // Report says UNWRITTEN exactly where the engine has unwritten extents.
        let fie = try k.fiemap(e)
        let reportedUnwritten: UInt64 = fie.filter { $0.flags & 0x800 != 0 }.reduce(0) { $0 + $1.length / bs }
        let engineUnwritten: UInt64 = ext.filter { $0.unwritten }.reduce(0) { $0 + $1.length }
        #expect(reportedUnwritten == engineUnwritten)
        let m = try k.begin(e, op: [], pos: 0, count: bs)
        #expect(m.type == MType.unwritten.rawValue)
        let zeroes = try k.bufferedRead(e, offset: 0, length: 4096) == [UInt8](repeating: 0, count: 4096)
        #expect(zeroes)
        try checkAllFiles(k, tree: f.tree, files: ["prealloc.bin", "multi.bin", "sparse.bin"], seed: 4)
    }

    @Test func inlineDataFilesStayClassic() throws {
        let f = try Fixture(args: ["-O", "inline_data", "-I", "256"], bigMB: 1)
        let k = try IomapKernel(image: f.image)
        defer { #expect(k.finish()) }
        try k.initialize()
        // (mke2fs -d drops trailing holes (sparse.bin, striped.bin) with inline_data; it is left out.)
        // Files of up to ~60 bytes (+ in-inode xattr space) are stored inline.
        let inline: Set<String> = ["one", "small.txt", "sub/dir/nested.txt"]
        for p in inline {
            let ino = UInt32(try k.lookup(p).attr.ino)
            #expect(try k.fs.inode(ino).flags & 0x1000_0000 != 0, "\(p) is not inline in the image")
        }
        try checkAllFiles(k, tree: f.tree, files: treeFiles.filter { !["empty", "sparse.bin", "striped.bin"].contains($0) }, inline: inline, seed: 5)
    }

    @Test func hugeReportTerminatesQuickly() throws {
        // FIEMAP over the whole s_maxbytes range: the hole after the last
        // extent must run to the end of the request, not one window at a time.
        let f = try Fixture(bigMB: 1)
        let k = try IomapKernel(image: f.image)
        defer { #expect(k.finish()) }
        try k.initialize()
        for p in ["tailonly.bin", "sparse.bin", "empty", "striped.bin"] {
            let e = try k.lookup(p)
            let before = k.upcalls["begin.report"] ?? 0
            _ = try k.fiemap(e)
            let used = (k.upcalls["begin.report"] ?? 0) - before
            #expect(used <= 40, "\(p): FIEMAP took \(used) BEGIN upcalls")
        }
    }
}

/// The same scenarios against the production binary under its real sandbox:
/// the iomap opcodes (CONFIG, BEGIN, END, IOEND, REPORT) run under the serving
/// seccomp filter, as in service mode.
@Suite(.serialized, .enabled(if: RealServer.available, "needs root and a built ext4iomapd"))
struct IomapRealServer {
    @Test func readSideOnTheSandboxedBinary() throws {
        let f = try Fixture(args: ["-b", "4096"])
        let k = try IomapKernel(realServer: f.image, mountOptions: "ro")
        defer { #expect(k.finish()) }
        try k.initialize()
        #expect(k.iomap, "the real server negotiated iomap over the socket")
        #expect(k.blockSize == 4096)
        #expect(String(decoding: k.config.sId.prefix { $0 != 0 }, as: UTF8.self).hasPrefix("loop"),
                "s_id is the loop device's name, given at construction")
        try checkAllFiles(k, tree: f.tree)
    }
}
