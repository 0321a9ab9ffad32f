import Foundation
import Glibc
import Testing

@testable import Ext4Engine

/// File systems with fast_commit mount read-write: the engine writes full
/// commits only, wraps its log before the fast-commit area (as the kernel's
/// replay expects once the journal has the feature), and refuses, before
/// writing anything, a journal whose fast-commit records are pending.
/// The kernel's ext4 is the other party; these tests need root and loop
/// devices and return early without them.
@Suite("fast_commit", .serialized)
struct FastCommitTests {
    static var canMount: Bool { getuid() == 0 && FileManager.default.fileExists(atPath: "/dev/loop-control") }

    /// The journal superblock of `img` (through our own reader).
    static func journalSuperblock(_ img: String) throws -> JournalSuperblock {
        let fs = try openImage(img, MountOptions(readOnly: true, noRecovery: true))
        let ji = try fs.rawInode(fs.sb.journalInum, checkLive: false)
        let map = try fs.mapRange(ji, from: 0, count: 1)
        guard let p = map.first?.physical else { throw Ext4Error.corrupted("journal not mapped") }
        return try JournalSuperblock(try fs.block(p))
    }

    /// Journal blocks [from, to) of `img`, read now.
    static func journalBlocks(_ img: String, from: UInt64, to: UInt64) throws -> [[UInt8]] {
        let fs = try openImage(img, MountOptions(readOnly: true, noRecovery: true))
        let ji = try fs.rawInode(fs.sb.journalInum, checkLive: false)
        let map = try fs.mapRange(ji, from: 0, count: to)
        var out: [[UInt8]] = []
        for l in from..<to {
            guard let x = map.first(where: { l >= $0.logical && l < $0.logical + $0.length }) else {
                throw Ext4Error.corrupted("journal block \(l) not mapped")
            }
            out.append(try fs.block(x.physical + (l - x.logical)))
        }
        return out
    }

    static func kernelCycle(_ img: String, _ mnt: String, _ body: () throws -> Void) throws {
        try run("/usr/bin/mount", ["-o", "loop", "-t", "ext4", img, mnt])
        defer { _ = try? run("/usr/bin/umount", [mnt], allowFail: true) }
        try body()
    }

    /// After the kernel's ext4 has used the file system (so the journal has
    /// the fast-commit feature and its area), our mount writes through many
    /// wraps of a small log; what a crash leaves at any fsync replays in the
    /// kernel's ext4 to every fsync'd file, and e2fsck is clean.
    @Test func writesFullCommitsBesideTheFastCommitArea() throws {
        guard Self.canMount else { return }
        let tmp = try TempDir()
        let img = tmp.sub("fc.img"), mnt = tmp.sub("mnt"), crash = tmp.sub("crash.img")
        let fresh = tmp.sub("fresh.img")
        try mkfs(fresh, tree: nil, args: ["-t", "ext4", "-b", "4096", "-O", "fast_commit", "-J", "size=4"], sizeMB: 128)
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        // A copy taken while the kernel has it mounted, after a full commit:
        // the journal has the fast-commit feature on (a clean unmount turns
        // it off) and nothing is pending.
        try Self.kernelCycle(fresh, mnt) {
            try writeFile(mnt + "/k", pattern(10_000, seed: 7))
            try run("/usr/bin/sync", ["-f", mnt])
            try FileManager.default.copyItem(atPath: fresh, toPath: img)
        }
        let jsb = try Self.journalSuperblock(img)
        #expect(jsb.fastCommit, "the kernel's mount did not turn the journal's fast commits on")
        #expect(jsb.logEnd < jsb.maxLen)

        let fs = try Ext4FileSystem.open(device: try FileBlockDevice(path: img, readOnly: false),
                                         options: MountOptions(readOnly: false, commitInterval: 3600))
        #expect(!fs.readOnly, "\(fs.warnings)")
        let dir = try fs.mkdir(parent: Ext4FileSystem.rootIno, name: Array("d".utf8), dirMode)
        var expected: [String: [UInt8]] = [:]
        var checks = 0
        for i in 0..<900 {
            let f = try fs.mknod(parent: dir.ino, name: Array("f\(i)".utf8), fileMode)
            let data = pattern(200 + (i * 53) % 7000, seed: UInt32(i))
            _ = try data.withUnsafeBytes { p in try fs.write(f.ino, offset: 0, data: p) }
            try fs.fsync(f.ino, dataOnly: false)
            try fs.fsync(dir.ino, dataOnly: false)
            expected["f\(i)"] = data
            if i % 300 == 299 {
                try? FileManager.default.removeItem(atPath: crash)
                try FileManager.default.copyItem(atPath: img, toPath: crash)
                try Self.kernelCycle(crash, mnt) {
                    for (n, want) in expected {
                        let same = try readWhole(mnt + "/d/" + n) == want
                        #expect(same, "copy at \(i): \(n)")
                    }
                }
                try fsckClean(crash, "a crash copy of our fast_commit mount, replayed by the kernel")
                checks += 1
            }
        }
        #expect(checks == 3)
        // Five times round the log, and nothing of ours past its end: the
        // kernel's replay wraps there.
        let tail = try Self.journalBlocks(img, from: UInt64(jsb.logEnd), to: UInt64(jsb.maxLen))
        #expect(tail.allSatisfy { $0.allSatisfy { $0 == 0 } }, "our log wrote into the fast-commit area")
        try fs.unmount()
        try fsckClean(img, "after our clean unmount")
        try Self.kernelCycle(img, mnt) {
            let k = try readWhole(mnt + "/k") == pattern(10_000, seed: 7)
            let last = try readWhole(mnt + "/d/f899") == expected["f899"]
            #expect(k && last)
        }
        try fsckClean(img, "after the kernel's mount that followed ours")
    }

    /// A copy taken while the kernel's ext4 has fast commits after its last
    /// full commit: our mount refuses before writing a byte (read-write and
    /// read-only alike); norecovery shows the last full commit.
    @Test func pendingFastCommitsAreRefused() throws {
        guard Self.canMount else { return }
        let tmp = try TempDir()
        let img = tmp.sub("fc.img"), mnt = tmp.sub("mnt"), crash = tmp.sub("crash.img")
        try mkfs(img, tree: nil, args: ["-t", "ext4", "-b", "4096", "-O", "fast_commit"], sizeMB: 128)
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        try Self.kernelCycle(img, mnt) {
            try run("/usr/bin/sync", ["-f", mnt])
            for i in 0..<8 {
                let p = mnt + "/s\(i)"
                let fd = open(p, O_CREAT | O_WRONLY, 0o644)
                #expect(fd >= 0)
                let data = pattern(3000, seed: UInt32(i))
                _ = data.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
                #expect(fsync(fd) == 0)
                close(fd)
            }
            try FileManager.default.copyItem(atPath: img, toPath: crash)
        }
        let jsb = try Self.journalSuperblock(crash)
        let before = try readWhole(crash)
        #expect(jsb.start != 0 && jsb.fastCommit, "the copy's journal is empty or has no fast commits")
        for ro in [false, true] {
            do {
                _ = try Ext4FileSystem.open(device: try FileBlockDevice(path: crash, readOnly: ro),
                                            options: MountOptions(readOnly: ro))
                Issue.record("opened (read-only: \(ro)) a journal with pending fast commits")
            } catch let e {
                guard case .unsupported(let why) = e else { Issue.record("\(e)"); continue }
                #expect(why.contains("fast-commit"), "\(why)")
            }
        }
        let unchanged = try readWhole(crash) == before
        #expect(unchanged, "a refused open wrote the device")
        let nr = try Ext4FileSystem.open(device: try FileBlockDevice(path: crash, readOnly: true),
                                         options: MountOptions(readOnly: true, noRecovery: true))
        #expect(nr.readOnly)
    }
}
