import Ext4Engine
import Foundation
import Glibc
import Testing

/// Images captured while the kernel still had the file system mounted: the
/// journal holds committed, un-checkpointed transactions and needs_recovery is set.
@Suite("journal replay of kernel-written journals")
struct CrashReplayTests {
    @Test(arguments: [["-t", "ext4"], ["-t", "ext3"], ["-t", "ext4", "-O", "^metadata_csum", "-b", "4096"]])
    func replayLiveSnapshot(_ args: [String]) throws {
        guard getuid() == 0, FileManager.default.fileExists(atPath: "/dev/loop-control") else { return }
        let tmp = try TempDir()
        let img = tmp.sub("fs.img"), mnt = tmp.sub("mnt"), crash = tmp.sub("crash.img"), ref = tmp.sub("ref.img")
        try mkfs(img, tree: nil, args: args, sizeMB: 32)
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        guard (try? run("/usr/bin/mount", ["-o", "loop", img, mnt])) != nil else { return }
        var mounted = true
        defer { if mounted { _ = try? run("/usr/bin/umount", [mnt], allowFail: true) } }
        try FileManager.default.createDirectory(atPath: mnt + "/d", withIntermediateDirectories: true)
        for i in 0..<50 { try writeFile(mnt + "/d/f\(i)", pattern(1000 * i, seed: UInt32(i))) }
        try run("/usr/bin/setfattr", ["-n", "user.k", "-v", "kernel", mnt + "/d/f1"])
        for i in 0..<10 { unlink(mnt + "/d/f\(i * 3)") } // frees blocks: revoke records
        symlink("target", mnt + "/sl")
        try run("/usr/bin/sync", ["-f", mnt + "/d"])
        try FileManager.default.copyItem(atPath: img, toPath: crash)
        try run("/usr/bin/umount", [mnt])
        mounted = false

        // A read-only open replays into memory and never writes the device.
        let before = try readWhole(crash)
        let probe = try FileBlockDevice(path: crash, readOnly: true)
        let rofs = try Ext4FileSystem.open(device: probe, options: MountOptions())
        guard rofs.warnings.first?.hasPrefix("journal replayed in memory") == true else {
            // The kernel may have checkpointed everything already; then there is nothing to test.
            print("crash replay \(args): journal already clean")
            return
        }
        #expect(try readWhole(crash) == before, "a read-only open wrote the device")
        try FileManager.default.copyItem(atPath: crash, toPath: ref)
        let dev = try FileBlockDevice(path: crash, readOnly: false)
        let fs = try Ext4FileSystem.open(device: dev, options: MountOptions(readOnly: false))
        #expect(fs.warnings.first?.hasPrefix("journal recovered") == true, "\(fs.warnings)")
        print("crash replay \(args): \(fs.warnings.first ?? "-")")
        try run("/usr/sbin/e2fsck", ["-fy", "-E", "journal_only", ref], allowFail: true)
        let other = try openImage(ref)
        #expect(snapshot(fs) == snapshot(other))
        #expect(snapshot(rofs) == snapshot(other), "the in-memory replay differs from e2fsck's")
        // The recovered image is consistent for e2fsck and has the expected content.
        let out = try run("/usr/sbin/e2fsck", ["-fn", crash], allowFail: true)
        #expect(!out.contains("recovering journal"), "\(out)")
        for i in 0..<50 where i % 3 != 0 || i >= 30 {
            let ino = try resolve(fs, "d/f\(i)")
            let same = try fs.read(ino, offset: 0, count: 1 << 20) == pattern(1000 * i, seed: UInt32(i))
            #expect(same, "f\(i)")
        }
        #expect(throws: Ext4Error.notFound) { try resolve(fs, "d/f3") }
        #expect(try fs.getxattr(try resolve(fs, "d/f1"), name: Array("user.k".utf8)) == Array("kernel".utf8))
        #expect(try fs.readlink(try resolve(fs, "sl")) == Array("target".utf8))
    }
}
