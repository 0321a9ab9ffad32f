import Foundation
import Glibc
import Testing

@testable import Ext4Engine

/// Multi-mount protection (INCOMPAT_MMP) on read-write mounts, against the
/// kernel's ext4 as the other node where the test runs as root. Each mount
/// waits out the protocol's interval (11 s at the smallest), so this suite
/// takes about a minute.
@Suite("multi-mount protection", .serialized)
struct MMPTests {
    static func image(_ tmp: TempDir) throws -> String {
        let img = tmp.sub("mmp.img")
        try mkfs(img, tree: nil, args: ["-t", "ext4", "-O", "mmp", "-E", "mmp_update_interval=1"], sizeMB: 32)
        return img
    }

    static func record(_ img: String) throws -> MMPRecord {
        let sb = try Superblock(Array(try readWhole(img)[1024..<2048]))
        let all = try readWhole(img)
        let off = Int(sb.mmpBlock) * sb.blockSize
        return try MMPRecord(Array(all[off..<(off + MMPRecord.size)]))
    }

    static func seed(_ img: String) throws -> UInt32 {
        let sb = try Superblock(Array(try readWhole(img)[1024..<2048]))
        return sb.metadataSeed
    }

    /// Ours takes the block (our sequence, node and device names), keeps the
    /// sequence moving, keeps the kernel's ext4 out while mounted, and leaves
    /// the block clean and checksummed at unmount.
    @Test func aReadWriteMountHoldsTheFileSystem() throws {
        let tmp = try TempDir()
        let img = try Self.image(tmp)
        let t0 = Date()
        let fs = try Ext4FileSystem.open(device: try FileBlockDevice(path: img, readOnly: false),
                                         options: MountOptions(readOnly: false, nodeName: "node-a", deviceName: "/dev/test"))
        #expect(!fs.readOnly, "\(fs.warnings)")
        #expect(Date().timeIntervalSince(t0) >= 10, "the mount did not wait out the interval")
        let held = try Self.record(img)
        #expect(held.seq != MMPRecord.seqClean && held.seq <= MMPRecord.seqMax)
        #expect(held.nodeName == "node-a" && held.deviceName == "/dev/test")
        #expect(held.checksumMatches(seed: try Self.seed(img)))
        _ = try fs.mkdir(parent: Ext4FileSystem.rootIno, name: Array("d".utf8), dirMode)
        Thread.sleep(forTimeInterval: 2.5)
        #expect(try Self.record(img).seq != held.seq, "the sequence did not move")
        if getuid() == 0 && FileManager.default.fileExists(atPath: "/dev/loop-control") {
            let mnt = tmp.sub("mnt")
            try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
            let r = try execute("/usr/bin/mount", ["-o", "loop", "-t", "ext4", img, mnt])
            if r.status == 0 { _ = try? run("/usr/bin/umount", [mnt], allowFail: true) }
            #expect(r.status != 0, "the kernel's ext4 mounted a file system ours holds")
        }
        try fs.unmount()
        let clean = try Self.record(img)
        #expect(clean.seq == MMPRecord.seqClean)
        #expect(clean.checksumMatches(seed: try Self.seed(img)))
        try fsckClean(img, "after a read-write mount with MMP")
    }

    /// e2fsck's sequence refuses at once; a crash's leftover sequence that no
    /// one updates is waited out and taken over; a read-only mount takes
    /// nothing.
    @Test func fsckRefusesAndACrashIsWaitedOut() throws {
        let tmp = try TempDir()
        let img = try Self.image(tmp)
        let sb = try Superblock(Array(try readWhole(img)[1024..<2048]))
        let off = Int(sb.mmpBlock) * sb.blockSize
        func put(_ seq: UInt32) throws {
            var r = try Self.record(img)
            r.seq = seq
            r.seal(seed: try Self.seed(img))
            writeAt(img, off, r.b)
        }
        try put(MMPRecord.seqFsck)
        let t0 = Date()
        #expect(throws: Ext4Error.self) {
            _ = try Ext4FileSystem.open(device: try FileBlockDevice(path: img, readOnly: false),
                                        options: MountOptions(readOnly: false))
        }
        #expect(Date().timeIntervalSince(t0) < 5, "refusing for e2fsck should not wait")
        let ro = try Ext4FileSystem.open(device: try FileBlockDevice(path: img, readOnly: true), options: MountOptions())
        #expect(try Self.record(img).seq == MMPRecord.seqFsck, "a read-only mount wrote the MMP block")
        _ = ro
        try put(12345)   // what a crashed node leaves
        let fs = try Ext4FileSystem.open(device: try FileBlockDevice(path: img, readOnly: false),
                                         options: MountOptions(readOnly: false))
        #expect(Date().timeIntervalSince(t0) >= 20, "the leftover sequence was not waited out")
        #expect(!fs.readOnly)
        try fs.unmount()
        #expect(try Self.record(img).seq == MMPRecord.seqClean)
        try fsckClean(img, "after taking over a crashed node's MMP block")
    }

    /// The kernel's ext4 holds the file system: our read-write mount is
    /// refused with EBUSY and says who holds it.
    @Test func theKernelHoldingItKeepsUsOut() throws {
        guard getuid() == 0, FileManager.default.fileExists(atPath: "/dev/loop-control") else { return }
        let tmp = try TempDir()
        let img = try Self.image(tmp)
        let mnt = tmp.sub("mnt")
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        guard (try? run("/usr/bin/mount", ["-o", "loop", "-t", "ext4", img, mnt])) != nil else { return }
        defer { _ = try? run("/usr/bin/umount", [mnt], allowFail: true) }
        do {
            _ = try Ext4FileSystem.open(device: try FileBlockDevice(path: img, readOnly: false),
                                        options: MountOptions(readOnly: false))
            Issue.record("mounted read-write while the kernel's ext4 holds the file system")
        } catch let e {
            #expect(e.errno == EBUSY, "\(e)")
            if case .inUse(let why) = e { #expect(why.contains("another node"), "\(why)") } else { Issue.record("\(e)") }
        }
    }
}
