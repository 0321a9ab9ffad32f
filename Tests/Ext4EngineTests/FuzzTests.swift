import Ext4Engine
import Foundation
import Testing

@Suite("corrupted metadata never crashes")
struct FuzzTests {
    struct Rng {
        var s: UInt64
        mutating func next() -> UInt64 {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17
            return s
        }
    }

    @Test(arguments: [["-O", "^metadata_csum", "-b", "1024"], ["-O", "^metadata_csum,inline_data", "-b", "4096"],
                      ["-t", "ext3", "-b", "1024"]])
    func bitFlipsInMetadata(_ args: [String]) throws {
        let tmp = try TempDir()
        let tree = tmp.sub("tree")
        let fm = FileManager.default
        try fm.createDirectory(atPath: tree + "/big/sub", withIntermediateDirectories: true)
        for i in 0..<400 { try writeFile(tree + "/big/file-with-a-long-name-\(i)", i % 10 == 0 ? pattern(3000, seed: UInt32(i)) : []) }
        try writeFile(tree + "/data", pattern(300_000, seed: 1))
        try writeFile(tree + "/small", Array("tiny".utf8))
        symlink(String(repeating: "x/", count: 40), tree + "/long")
        symlink("s", tree + "/short")
        try run("/usr/bin/setfattr", ["-n", "user.a", "-v", String(repeating: "v", count: 300), tree + "/small"])
        try run("/usr/bin/setfacl", ["-m", "u:7:r", tree + "/data"])
        let img = tmp.sub("fs.img")
        try mkfs(img, tree: tree, args: args.contains("-t") ? args : ["-t", "ext4"] + args, sizeMB: 8)
        let pristine = [UInt8](try Data(contentsOf: URL(fileURLWithPath: img)))
        // Find metadata-ish blocks: everything that is not all-zero in the first 2 MiB.
        let bs = args.contains("4096") ? 4096 : 1024
        let limit = min(pristine.count, 2 << 20) / bs
        var candidates: [Int] = []
        for b in 0..<limit where pristine[(b * bs)..<((b + 1) * bs)].contains(where: { $0 != 0 }) {
            candidates.append(b)
        }
        #expect(candidates.count > 10)
        var rng = Rng(s: 0x9E37_79B9_7F4A_7C15 ^ UInt64(args.count))
        var opened = 0, refused = 0
        for _ in 0..<150 {
            var bytes = pristine
            for _ in 0..<8 {
                let blk = candidates[Int(rng.next() % UInt64(candidates.count))]
                let off = blk * bs + Int(rng.next() % UInt64(bs))
                bytes[off] ^= UInt8(truncatingIfNeeded: rng.next() | 1)
            }
            let dev = MemoryBlockDevice(bytes: bytes)
            guard let fs = try? Ext4FileSystem.open(device: dev, options: MountOptions(cacheBlocks: 64)) else {
                refused += 1
                continue
            }
            opened += 1
            let r = walkAll(fs, deadline: Date().addingTimeInterval(10))
            _ = r
        }
        #expect(opened + refused == 150)
        #expect(opened > 0)
    }
}
