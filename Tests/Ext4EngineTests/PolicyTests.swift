import CShim
import Ext4Engine
import Foundation
import Testing

func patch(_ path: String, at off: UInt64, _ bytes: [UInt8]) throws {
    let h = try FileHandle(forUpdating: URL(fileURLWithPath: path))
    defer { try? h.close() }
    try h.seek(toOffset: off)
    try h.write(contentsOf: Data(bytes))
}

func readBytes(_ path: String, at off: UInt64, _ n: Int) throws -> [UInt8] {
    let h = try FileHandle(forReadingFrom: URL(fileURLWithPath: path))
    defer { try? h.close() }
    try h.seek(toOffset: off)
    return [UInt8](try h.read(upToCount: n) ?? Data())
}

/// Rewrite the superblock checksum after editing it by hand.
func fixSuperblockCsum(_ img: String) throws {
    var sb = try readBytes(img, at: 1024, 1024)
    let c = sb.withUnsafeBytes { cshim_crc32c(~0, $0.baseAddress, 1020) }
    sb[1020] = UInt8(truncatingIfNeeded: c); sb[1021] = UInt8(truncatingIfNeeded: c >> 8)
    sb[1022] = UInt8(truncatingIfNeeded: c >> 16); sb[1023] = UInt8(truncatingIfNeeded: c >> 24)
    try patch(img, at: 1024, sb)
}

func setLE32(_ img: String, _ off: UInt64, orMask: UInt32) throws {
    let b = try readBytes(img, at: off, 4)
    var v = UInt32(b[0]) | UInt32(b[1]) << 8 | UInt32(b[2]) << 16 | UInt32(b[3]) << 24
    v |= orMask
    try patch(img, at: off, [UInt8(truncatingIfNeeded: v), UInt8(truncatingIfNeeded: v >> 8),
                             UInt8(truncatingIfNeeded: v >> 16), UInt8(truncatingIfNeeded: v >> 24)])
}

@Suite("feature policy and corruption handling")
struct PolicyTests {
    func smallImage(_ tmp: TempDir, _ args: [String] = ["-t", "ext4"]) throws -> String {
        let tree = tmp.sub("tree")
        try FileManager.default.createDirectory(atPath: tree + "/d", withIntermediateDirectories: true)
        try writeFile(tree + "/f", pattern(10_000, seed: 7))
        let img = tmp.sub("fs.img")
        try mkfs(img, tree: tree, args: args, sizeMB: 8)
        return img
    }

    @Test func unknownIncompatRefused() throws {
        let tmp = try TempDir()
        let img = try smallImage(tmp)
        try setLE32(img, 1024 + 0x60, orMask: 0x0100_0000)
        try fixSuperblockCsum(img)
        #expect(throws: Ext4Error.self) { try openImage(img) }
        do { _ = try openImage(img) } catch let e as Ext4Error {
            guard case .unsupported(let m) = e else { Issue.record("wrong error \(e)"); return }
            #expect(m.contains("0x1000000"))
        }
    }

    @Test func casefoldAndEncryptRefusedByName() throws {
        for (bit, name) in [(UInt32(0x20000), "casefold"), (UInt32(0x10000), "encrypt")] {
            let tmp = try TempDir()
            let img = try smallImage(tmp)
            try setLE32(img, 1024 + 0x60, orMask: bit)
            try fixSuperblockCsum(img)
            do {
                _ = try openImage(img)
                Issue.record("\(name) mounted")
            } catch let e as Ext4Error {
                guard case .unsupported(let m) = e else { Issue.record("wrong error \(e)"); continue }
                #expect(m.contains(name))
            }
        }
    }

    @Test func unknownRoCompatForcesReadOnly() throws {
        let tmp = try TempDir()
        let img = try smallImage(tmp)
        try setLE32(img, 1024 + 0x64, orMask: 0x0080_0000)
        try fixSuperblockCsum(img)
        let fs = try openImage(img, MountOptions(readOnly: false))
        #expect(fs.readOnly)
        #expect(fs.warnings.contains { $0.contains("ro_compat") && $0.contains("0x800000") })
        #expect(try fs.read(try resolve(fs, "f"), offset: 0, count: 10) == Array(pattern(10_000, seed: 7)[0..<10]))
    }

    @Test func superblockChecksumMismatchRefused() throws {
        let tmp = try TempDir()
        let img = try smallImage(tmp)
        try patch(img, at: 1024 + 0x78, Array("tampered".utf8)) // volume name, checksum now stale
        #expect(throws: Ext4Error.corrupted("superblock checksum mismatch")) { try openImage(img) }
    }

    @Test func needsRecovery() throws {
        let tmp = try TempDir()
        let img = try smallImage(tmp)
        try run("/usr/sbin/debugfs", ["-w", "-R", "feature needs_recovery", img])
        // Read-only: replayed in memory, the image untouched (still needs recovery).
        let before = try readWhole(img)
        let ro = try openImage(img)
        #expect(ro.readOnly && ro.warnings.first?.hasPrefix("journal replayed in memory") == true, "\(ro.warnings)")
        #expect(try readWhole(img) == before)
        // Read-write open wants to replay; a read-only device cannot take the writes.
        #expect(throws: Ext4Error.readOnly) { try openImage(img, MountOptions(readOnly: false)) }
        let fs = try openImage(img, MountOptions(readOnly: true, noRecovery: true))
        #expect(fs.readOnly)
        #expect(fs.warnings.contains { $0.contains("noRecovery") })
        // With a writable device the (empty) journal is replayed and the flag cleared.
        let dev = try FileBlockDevice(path: img, readOnly: false)
        let rw = try Ext4FileSystem.open(device: dev, options: MountOptions(readOnly: false))
        #expect(rw.warnings.first == "journal recovered: 0 transaction(s), 0 block(s) written, 0 revoked")
        #expect(!rw.readOnly)
        try rw.unmount()
        let clean = try openImage(img)
        #expect(try clean.inode(try resolve(clean, "f")).size == 10_000)
        let e2 = try run("/usr/sbin/e2fsck", ["-fn", img], allowFail: true)
        #expect(!e2.contains("needs_recovery") && !e2.contains("recovering journal"), "\(e2)")
    }

    @Test func inodeChecksumMismatch() throws {
        let tmp = try TempDir()
        let img = try smallImage(tmp)
        let fs0 = try openImage(img)
        let ino = try resolve(fs0, "f")
        // debugfs imap: "Inode N is part of block group G\n\tlocated at block B, offset 0xOFF"
        let out = try run("/usr/sbin/debugfs", ["-R", "imap <\(ino)>", img])
        guard let r = out.range(of: "located at block "),
              let comma = out[r.upperBound...].firstIndex(of: ","),
              let blk = UInt64(out[r.upperBound..<comma]),
              let o = out.range(of: "offset 0x") else { Issue.record("imap parse: \(out)"); return }
        let hex = out[o.upperBound...].prefix { $0.isHexDigit }
        guard let off = UInt64(hex, radix: 16) else { Issue.record("offset parse"); return }
        let pos = blk * UInt64(fs0.blockSize) + off + 0x10 // i_mtime
        let old = try readBytes(img, at: pos, 1)
        try patch(img, at: pos, [old[0] ^ 0x55])
        let fs = try openImage(img)
        #expect(throws: Ext4Error.self) { try fs.inode(ino) }
        do throws(Ext4Error) { _ = try fs.inode(ino) } catch let e {
            #expect(e.errno == 117)
            if case .corrupted(let m) = e { #expect(m.contains("checksum")) } else { Issue.record("\(e)") }
        }
        // Other inodes still fine.
        #expect(try fs.inode(Ext4FileSystem.rootIno).fileType == .directory)
    }

    @Test func errnoMapping() {
        #expect(Ext4Error.corrupted("x").errno == 117)
        #expect(Ext4Error.notFound.errno == ENOENT)
        #expect(Ext4Error.noData.errno == ENODATA)
        #expect(Ext4Error.rangeTooLarge.errno == ERANGE)
        #expect(Ext4Error.unsupported("x").errno == EOPNOTSUPP)
        #expect(Ext4Error.readOnly.errno == EROFS)
        #expect(Ext4Error.io(5).errno == 5)
        #expect(Ext4Error.notSymlink.errno == EINVAL)
    }

    @Test func truncatedDeviceRefused() throws {
        let tmp = try TempDir()
        let img = try smallImage(tmp)
        let bytes = try readBytes(img, at: 0, 3 << 20)
        let dev = MemoryBlockDevice(bytes: bytes)
        #expect(throws: Ext4Error.self) { try Ext4FileSystem.open(device: dev, options: MountOptions()) }
        #expect(throws: Ext4Error.invalid("bad magic number in superblock (not ext2/3/4)")) {
            try Ext4FileSystem.open(device: MemoryBlockDevice(bytes: [UInt8](repeating: 0, count: 8192)),
                                    options: MountOptions())
        }
    }

    @Test func concurrentReadsWithTinyCache() async throws {
        let tmp = try TempDir()
        let tree = tmp.sub("tree")
        try FileManager.default.createDirectory(atPath: tree, withIntermediateDirectories: true)
        for i in 0..<40 { try writeFile(tree + "/f\(i)", pattern(50_000 + i * 997, seed: UInt32(i))) }
        let img = tmp.sub("fs.img")
        try mkfs(img, tree: tree, args: ["-t", "ext4", "-b", "1024"], sizeMB: 16)
        let fs = try openImage(img, MountOptions(readOnly: true, noRecovery: false, cacheBlocks: 16))
        try await withThrowingTaskGroup(of: Bool.self) { g in
            for i in 0..<40 {
                g.addTask {
                    let ino = try resolve(fs, "f\(i)")
                    let d = try fs.read(ino, offset: 0, count: 1 << 20)
                    return d == pattern(50_000 + i * 997, seed: UInt32(i))
                }
            }
            for try await ok in g { #expect(ok) }
        }
    }
}
