import CShim
import Ext4Engine
import Foundation
import Glibc
import Testing

/// Kernel FIEMAP for a path, as (logical, physical, length, unwritten) byte ranges.
func kernelFiemap(_ path: String) -> [(UInt64, UInt64, UInt64, Bool)]? {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    let maxExt = 512
    var buf = [UInt8](repeating: 0, count: 32 + 56 * maxExt)
    func put64(_ o: Int, _ v: UInt64) { for i in 0..<8 { buf[o + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) } }
    func put32(_ o: Int, _ v: UInt32) { for i in 0..<4 { buf[o + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) } }
    put64(0, 0); put64(8, UInt64.max); put32(16, 1 /* FIEMAP_FLAG_SYNC */); put32(24, UInt32(maxExt))
    let r = buf.withUnsafeMutableBytes { cshim_ioctl_ptr(fd, cshim_FS_IOC_FIEMAP(), $0.baseAddress) }
    guard r == 0 else { return nil }
    func get64(_ o: Int) -> UInt64 { (0..<8).reduce(UInt64(0)) { $0 | UInt64(buf[o + $1]) << (8 * UInt64($1)) } }
    func get32(_ o: Int) -> UInt32 { (0..<4).reduce(UInt32(0)) { $0 | UInt32(buf[o + $1]) << (8 * UInt32($1)) } }
    let n = Int(get32(20))
    return (0..<n).map { i in
        let o = 32 + 56 * i
        return (get64(o), get64(o + 8), get64(o + 16), get32(o + 40) & 0x800 != 0)
    }
}

/// Merge touching ranges with the same state and contiguous physical placement.
func normalize(_ xs: [(UInt64, UInt64, UInt64, Bool)]) -> [String] {
    var out: [(UInt64, UInt64, UInt64, Bool)] = []
    for x in xs.sorted(by: { $0.0 < $1.0 }) {
        if let l = out.last, l.0 + l.2 == x.0, l.1 + l.2 == x.1, l.3 == x.3 {
            out[out.count - 1].2 += x.2
        } else { out.append(x) }
    }
    return out.map { "\($0.0)+\($0.2)->\($0.1)\($0.3 ? " u" : "")" }
}

@Suite("unwritten extents and FIEMAP vs kernel")
struct UnwrittenTests {
    @Test func preallocatedFiles() throws {
        guard getuid() == 0, FileManager.default.fileExists(atPath: "/dev/loop-control") else { return }
        let tmp = try TempDir()
        let img = tmp.sub("fs.img"), mnt = tmp.sub("mnt")
        try mkfs(img, tree: nil, args: ["-t", "ext4"], sizeMB: 32)
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        guard (try? run("/usr/bin/mount", ["-o", "loop", "-t", "ext4", img, mnt])) != nil else { return }
        var mounted = true
        defer { if mounted { _ = try? run("/usr/bin/umount", [mnt], allowFail: true) } }
        try run("/usr/bin/fallocate", ["-l", "1M", mnt + "/prealloc"])
        try run("/usr/bin/dd", ["if=/dev/urandom", "of=\(mnt)/prealloc", "bs=4096", "seek=16", "count=2",
                                "conv=notrunc,fsync", "status=none"])
        try writeFile(mnt + "/keepsize", Array("abc".utf8))
        try run("/usr/bin/fallocate", ["-n", "-o", "4096", "-l", "512K", mnt + "/keepsize"]) // beyond EOF
        try writeFile(mnt + "/plain", pattern(300_000, seed: 11))
        let written = [UInt8](try Data(contentsOf: URL(fileURLWithPath: mnt + "/prealloc")))
        try run("/usr/bin/umount", [mnt])
        mounted = false

        let fs = try openImage(img)
        let pre = try resolve(fs, "prealloc")
        let data = try fs.read(pre, offset: 0, count: 2 << 20)
        #expect(data.count == 1 << 20)
        let same = data == written
        #expect(same)
        #expect(data[0..<65536].allSatisfy { $0 == 0 } && data[(65536 + 8192)...].allSatisfy { $0 == 0 })
        let maps = try fs.mappings(pre, fromBlock: 0, maxBlocks: UInt64.max)
        #expect(maps.contains { $0.unwritten } && maps.contains { !$0.unwritten })
        #expect(maps.filter { !$0.unwritten }.reduce(UInt64(0)) { $0 + $1.length } * UInt64(fs.blockSize) == 8192)
        let keep = try resolve(fs, "keepsize")
        #expect(try fs.read(keep, offset: 0, count: 100) == Array("abc".utf8))
        #expect(try fs.inode(keep).size == 3)

        // Same extents as the kernel's FIEMAP.
        guard (try? run("/usr/bin/mount", ["-o", "loop,ro", "-t", "ext4", img, mnt])) != nil else { return }
        mounted = true
        let bs = UInt64(fs.blockSize)
        for name in ["prealloc", "keepsize", "plain"] {
            guard let k = kernelFiemap(mnt + "/" + name) else { Issue.record("fiemap \(name)"); continue }
            let ours = try fs.mappings(try resolve(fs, name), fromBlock: 0, maxBlocks: UInt64.max)
                .map { ($0.logical * bs, $0.physical * bs, $0.length * bs, $0.unwritten) }
            #expect(normalize(ours) == normalize(k), "\(name)")
        }
    }
}
