import Foundation
import Testing

@testable import Ext4Engine

@Suite("unit: hashes and cache")
struct UnitTests {
    func debugfsHash(_ alg: String, _ seed: String?, _ name: String, image: String) throws -> UInt32? {
        var cmd = "dx_hash -h \(alg)"
        if let seed { cmd += " -s \(seed)" }
        cmd += " \(name)"
        let out = try run("/usr/sbin/debugfs", ["-R", cmd, image])
        guard let r = out.range(of: " is 0x") else { return nil }
        return UInt32(out[r.upperBound...].prefix { $0.isHexDigit }, radix: 16)
    }

    @Test func dirHashesMatchDebugfs() throws {
        let tmp = try TempDir()
        let img = tmp.sub("fs.img")
        try mkfs(img, tree: nil, args: ["-t", "ext4"], sizeMB: 4)
        let seedStr = "01234567-89ab-cdef-0123-456789abcdef"
        let hex = seedStr.filter { $0 != "-" }
        var seedBytes: [UInt8] = []
        var it = hex.makeIterator()
        while let a = it.next(), let b = it.next() { seedBytes.append(UInt8(String([a, b]), radix: 16) ?? 0) }
        let seed = (0..<4).map { seedBytes.le32($0 * 4) }
        let names = ["a", "hello", "entry-number-1234", "é-entry-7-ß",
                     String(repeating: "0123456789", count: 7), String(repeating: "x", count: 255)]
        for (alg, version) in [("legacy", DirHash.legacy), ("half_md4", DirHash.halfMD4), ("tea", DirHash.tea)] {
            for name in names {
                for s in [nil, seedStr] {
                    guard let want = try debugfsHash(alg, s, name, image: img) else {
                        Issue.record("no debugfs hash for \(alg) \(name)"); continue
                    }
                    let got = DirHash.hash(Array(name.utf8), version: version, seed: s == nil ? [0, 0, 0, 0] : seed)
                    #expect(got == want & ~1, "\(alg) seed=\(s ?? "-") \(name)")
                }
            }
        }
        // Unsigned variants agree with the signed ones on ASCII and differ on high bytes.
        for (s, u) in [(DirHash.legacy, DirHash.legacyUnsigned), (DirHash.halfMD4, DirHash.halfMD4Unsigned),
                       (DirHash.tea, DirHash.teaUnsigned)] {
            #expect(DirHash.hash(Array("ascii".utf8), version: s, seed: seed) ==
                    DirHash.hash(Array("ascii".utf8), version: u, seed: seed))
            #expect(DirHash.hash(Array("é".utf8), version: s, seed: seed) !=
                    DirHash.hash(Array("é".utf8), version: u, seed: seed))
        }
        #expect(DirHash.hash([0x61], version: 6, seed: seed) == nil)
    }

    @Test func blockCacheIsBoundedLRU() {
        let c = BlockCache(capacity: 8, shardCount: 1)
        for i in 0..<8 { c.wrote(UInt64(i), [UInt8(i)]) }
        #expect(c.count == 8)
        _ = c.get(0) // 0 becomes most recent; 1 is now the LRU
        c.wrote(100, [100])
        #expect(c.count == 8)
        #expect(c.get(1) == nil)
        #expect(c.get(0) == [0])
        #expect(c.get(100) == [100])
        for i in 200..<1000 { c.wrote(UInt64(i), [1]) }
        #expect(c.count <= c.capacity)
        let sharded = BlockCache(capacity: 8192)
        for i in 0..<20000 { sharded.wrote(UInt64(i), [0]) }
        #expect(sharded.count <= sharded.capacity && sharded.capacity >= 8192 && sharded.capacity < 8192 + 64)
    }

    @Test func blockCacheFillNeverWinsOverAWrite() {
        let c = BlockCache(capacity: 8, shardCount: 1)
        // A device read that started before a write must not be cached.
        let before = c.epoch
        c.wrote(1, [9])
        c.fill(2, [1], since: before)
        #expect(c.get(2) == nil)
        // Nor may a fill replace what a writer put there.
        c.fill(1, [1], since: c.epoch)
        #expect(c.get(1) == [9])
        c.fill(3, [3], since: c.epoch)
        #expect(c.get(3) == [3])
    }

    @Test func boundedReaders() {
        let b: [UInt8] = [1, 2, 3]
        #expect(b.le32(0) == 0 && b.le16(2) == 0 && b.le16(1) == 0x0302 && b.u8(-1) == 0 && b.u8(3) == 0)
        #expect(b.sub(2, 5) == nil && b.sub(-1, 1) == nil && b.sub(1, 2) == [2, 3])
        #expect(b.zeroing(1, 100) == [1, 0, 0])
    }
}
