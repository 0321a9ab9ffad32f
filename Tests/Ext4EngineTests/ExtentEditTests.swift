import Ext4Engine
import Foundation
import Glibc
import Testing

/// Extent count and tree depth of `path`, from debugfs.
func extentShape(_ img: String, _ path: String) throws -> (extents: Int, depth: Int) {
    let out = try debugfs(img, "ex \(path)")
    var extents = 0, depth = 0
    // Lines look like " 1/ 2   3/ 85     0 -  4095 ...": level/deepest-level, entry/entries, ...
    for line in out.split(separator: "\n") {
        let parts = line.split(separator: "/", maxSplits: 1)
        guard parts.count == 2, let level = Int(parts[0].trimmingCharacters(in: .whitespaces)),
              let deepest = Int(parts[1].split(separator: " ").first ?? "") else { continue }
        depth = max(depth, deepest)
        if level == deepest { extents += 1 }
    }
    return (extents, depth)
}

let editVariants: [WVariant] = [
    WVariant(name: "ext4-4k", fsType: "ext4", args: ["-b", "4096"]),
    WVariant(name: "ext4-4k-nocsum", fsType: "ext4", args: ["-b", "4096", "-O", "^metadata_csum"]),
    WVariant(name: "ext4-1k", fsType: "ext4", args: ["-b", "1024"]),
    WVariant(name: "ext2-4k", fsType: "ext2", args: ["-b", "4096"]),
]

/// e2fsck -fn prints nothing but its pass headers and summary: not even an
/// optimisation hint such as "could be narrower".
func fsckSilent(_ img: String, _ ctx: String) throws {
    try fsckClean(img, ctx)
    let out = try run("/usr/sbin/e2fsck", ["-fn", img], allowFail: true)
    let noise = out.split(separator: "\n").filter {
        !$0.hasPrefix("Pass ") && !$0.hasPrefix("e2fsck ") && !$0.contains(" files (") && !$0.isEmpty
    }
    #expect(noise.isEmpty, "e2fsck \(ctx):\n\(out)")
}

@Suite("incremental extent updates and preallocation")
struct ExtentEditTests {
    /// Random single-block writes into fallocated space: every write splits an
    /// unwritten extent, the leaves split, the tree grows a level; the content,
    /// e2fsck and debugfs must agree with a model.
    @Test(arguments: Array(editVariants[0..<3]))
    func randomWritesIntoUnwritten(_ v: WVariant) throws {
        let tmp = try TempDir()
        let img = try makeImage(tmp, v, sizeMB: 64)
        let fs = try openRW(img)
        let f = try fs.mknod(parent: root, name: b("rand"), fileMode)
        let bs = UInt64(fs.blockSize)
        let blocks: UInt64 = 4096
        try fs.fallocate(f.ino, mode: 0, offset: 0, length: blocks * bs)
        var model = [UInt8](repeating: 0, count: Int(blocks * bs))
        var rng = SplitMix(seed: 42)
        for i in 0..<2500 {
            let blk = UInt64.random(in: 0..<blocks, using: &rng)
            // Mostly whole blocks, sometimes a partial one (zero-around of unwritten blocks).
            let partial = i % 7 == 0
            let off = blk * bs + (partial ? UInt64.random(in: 0..<(bs / 2), using: &rng) : 0)
            let len = partial ? Int(bs / 3) : Int(bs)
            let data = pattern(len, seed: UInt32(i))
            try fs.put(f.ino, off, data)
            model.replaceSubrange(Int(off)..<(Int(off) + len), with: data)
        }
        #expect(try fs.readAll(f.ino) == model)
        let st = try fs.inode(f.ino)
        #expect(st.size == blocks * bs)
        try fs.unmount()
        try fsckSilent(img, v.name)
        #expect(try debugfsCat(img, "/rand") == model)
        let shape = try extentShape(img, "/rand")
        #expect(shape.depth >= 1, "the tree should have grown: \(shape)")
        #expect(shape.extents > 100, "random writes should have split the unwritten extents: \(shape)")
    }

    /// Random writes into a sparse file: holes filled one at a time.
    @Test(arguments: [editVariants[0], editVariants[2], editVariants[3]])
    func randomWritesIntoHoles(_ v: WVariant) throws {
        let tmp = try TempDir()
        let img = try makeImage(tmp, v, sizeMB: 64)
        let fs = try openRW(img)
        let f = try fs.mknod(parent: root, name: b("holes"), fileMode)
        let bs = UInt64(fs.blockSize)
        let blocks: UInt64 = 3000
        var model = [UInt8](repeating: 0, count: 0)
        var rng = SplitMix(seed: 7)
        for i in 0..<1200 {
            let blk = UInt64.random(in: 0..<blocks, using: &rng) * 2
            let data = pattern(Int(bs), seed: UInt32(i))
            try fs.put(f.ino, blk * bs, data)
            let end = Int((blk + 1) * bs)
            if model.count < end { model += [UInt8](repeating: 0, count: end - model.count) }
            model.replaceSubrange(Int(blk * bs)..<end, with: data)
        }
        #expect(try fs.readAll(f.ino) == model)
        try fs.unmount()
        try fsckSilent(img, v.name)
        #expect(try debugfsCat(img, "/holes") == model)
    }

    /// Two files appended in turn stay contiguous thanks to their windows; the
    /// windows are given back on the last close, and at unmount.
    @Test(arguments: [editVariants[0], editVariants[2], editVariants[3]])
    func preallocationKeepsFilesContiguousAndIsTrimmed(_ v: WVariant) throws {
        let tmp = try TempDir()
        let img = try makeImage(tmp, v, sizeMB: 64)
        let fs = try openRW(img)
        let free0 = fs.statfs().bfree
        let a = try fs.mknod(parent: root, name: b("a"), fileMode)
        let c = try fs.mknod(parent: root, name: b("c"), fileMode)
        fs.fileOpened(a.ino, forWriting: true)
        fs.fileOpened(c.ino, forWriting: true)
        fs.fileOpened(c.ino, forWriting: true)   // a second writer of c
        let chunk = 16 << 10
        var da: [UInt8] = [], dc: [UInt8] = []
        for i in 0..<128 {
            let x = pattern(chunk, seed: UInt32(2 * i)), y = pattern(chunk, seed: UInt32(2 * i + 1))
            try fs.put(a.ino, UInt64(da.count), x); da += x
            try fs.put(c.ino, UInt64(dc.count), y); dc += y
        }
        #expect(fs.preallocatedBlocks > 0)
        fs.fileClosed(a.ino, forWriting: true)
        fs.fileClosed(c.ino, forWriting: false)   // a reader's close trims nothing
        fs.fileClosed(c.ino, forWriting: true)
        #expect(fs.preallocatedBlocks > 0, "c still has a writer")
        let bs = UInt64(fs.blockSize)
        let dataBlocks = UInt64(da.count + dc.count) / bs
        // a is closed: only c's window (and map blocks) are extra.
        fs.fileClosed(c.ino, forWriting: true)
        #expect(fs.preallocatedBlocks == 0)
        let used = free0 - fs.statfs().bfree
        #expect(used >= dataBlocks && used <= dataBlocks + 64, "used \(used), data \(dataBlocks)")
        // A window left open is given back at unmount.
        fs.fileOpened(a.ino, forWriting: true)
        let more = pattern(64 << 10, seed: 99)
        try fs.put(a.ino, UInt64(da.count), more); da += more
        #expect(fs.preallocatedBlocks > 0)
        #expect(try fs.readAll(a.ino) == da)
        #expect(try fs.readAll(c.ino) == dc)
        try fs.unmount()
        try fsckSilent(img, v.name)
        #expect(try debugfsCat(img, "/a") == da)
        #expect(try debugfsCat(img, "/c") == dc)
        if v.fsType == "ext4" {
            // 2 MiB each, written in 128 alternating 16 KiB turns: without windows every
            // turn would start a new extent; windows double (16 blocks, 32, ... 8 MiB).
            let sa = try extentShape(img, "/a"), sc = try extentShape(img, "/c")
            #expect(sa.extents <= 12 && sc.extents <= 12, "a \(sa), c \(sc)")
        }
    }

    /// ENOSPC gives the windows back before failing.
    @Test func preallocationReclaimedAtENOSPC() throws {
        let tmp = try TempDir()
        let img = try makeImage(tmp, editVariants[0], sizeMB: 16)
        let fs = try openRW(img)
        let a = try fs.mknod(parent: root, name: b("a"), fileMode)
        fs.fileOpened(a.ino, forWriting: true)
        try fs.put(a.ino, 0, pattern(1 << 20, seed: 1))
        #expect(fs.preallocatedBlocks > 0)
        let f = try fs.mknod(parent: root, name: b("fill"), fileMode)
        var off: UInt64 = 0
        let chunk = pattern(64 << 10, seed: 2)
        do {
            while true { try fs.put(f.ino, off, chunk); off += UInt64(chunk.count) }
        } catch let e as Ext4Error {
            #expect(e == .noSpace)
        }
        #expect(fs.preallocatedBlocks == 0)
        fs.fileClosed(a.ino, forWriting: true)
        try fs.unmount()
        try fsckSilent(img, "enospc")
    }
}
