import Ext4Engine
import Foundation
import Glibc
import Testing

/// File systems with an orphan file (COMPAT_ORPHAN_FILE, e2fsprogs' default
/// since 1.47, usually with metadata_csum_seed) mount read-write; orphans a
/// crash left in the orphan file are released at the mount.
@Suite("orphan file")
struct OrphanFileTests {
    static let features = ["-O", "orphan_file,metadata_csum_seed"]

    /// Writes, unlinks of open files (our orphans go on the s_last_orphan
    /// chain, which e2fsck and the kernel read on such file systems too), a
    /// crash with orphans pending, and e2fsck on every result.
    @Test func mountsReadWriteAndKeepsItsOrphansOnTheChain() throws {
        let tmp = try TempDir()
        let img = tmp.sub("fs.img"), crash = tmp.sub("crash.img")
        try mkfs(img, tree: nil, args: ["-t", "ext4"] + Self.features, sizeMB: 32)
        let fs = try Ext4FileSystem.open(device: try FileBlockDevice(path: img, readOnly: false),
                                         options: MountOptions(readOnly: false, commitInterval: 3600))
        #expect(!fs.readOnly, "\(fs.warnings)")
        var kept: [UInt32] = []
        for i in 0..<20 {
            let f = try fs.mknod(parent: Ext4FileSystem.rootIno, name: Array("f\(i)".utf8), fileMode)
            let data = pattern(5000 + 700 * i, seed: UInt32(i))
            _ = try data.withUnsafeBytes { p in try fs.write(f.ino, offset: 0, data: p) }
            if i % 2 == 0 {
                fs.retain(f.ino, count: 1)              // open
                _ = try fs.unlink(parent: Ext4FileSystem.rootIno, name: Array("f\(i)".utf8))
                kept.append(f.ino)
            }
        }
        try fs.sync()
        // A crash now leaves ten orphans on the chain.
        try FileManager.default.copyItem(atPath: img, toPath: crash)
        for ino in kept { try fs.release(ino, count: 1) }
        try fs.unmount()
        try fsckClean(img, "after a clean unmount")
        let again = try Ext4FileSystem.open(device: try FileBlockDevice(path: crash, readOnly: false),
                                            options: MountOptions(readOnly: false))
        for ino in kept { #expect(throws: (any Error).self) { _ = try again.inode(ino) } }
        try again.unmount()
        try fsckClean(crash, "after our mount released the crash's orphans")
    }

    /// The kernel's ext4 puts orphans in the orphan file. A copy taken while
    /// it holds unlinked files open (what a crash leaves) has entries there;
    /// our read-write mount frees those inodes, clears the slots (checksums
    /// kept) and ORPHAN_PRESENT, and e2fsck finds nothing to do.
    @Test func kernelOrphansInTheOrphanFileAreReleasedAtMount() throws {
        guard getuid() == 0, FileManager.default.fileExists(atPath: "/dev/loop-control") else { return }
        let tmp = try TempDir()
        let img = tmp.sub("fs.img"), mnt = tmp.sub("mnt"), crash = tmp.sub("crash.img")
        try mkfs(img, tree: nil, args: ["-t", "ext4", "-b", "4096"] + Self.features, sizeMB: 64)
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        guard (try? run("/usr/bin/mount", ["-o", "loop", img, mnt])) != nil else { return }
        var mounted = true
        var fds: [Int32] = []
        defer {
            for fd in fds { close(fd) }
            if mounted { _ = try? run("/usr/bin/umount", [mnt], allowFail: true) }
        }
        for i in 0..<12 {
            let p = mnt + "/o\(i)"
            try writeFile(p, pattern(40_000 + 1000 * i, seed: UInt32(i)))
            let fd = open(p, O_RDONLY)
            #expect(fd >= 0)
            fds.append(fd)
            unlink(p)
        }
        try writeFile(mnt + "/kept", pattern(3000, seed: 99))
        try run("/usr/bin/sync", ["-f", mnt])
        try FileManager.default.copyItem(atPath: img, toPath: crash)
        for fd in fds { close(fd) }
        fds = []
        try run("/usr/bin/umount", [mnt])
        mounted = false

        // The scenario: replayed (in memory, read-only), the orphan file names inodes.
        let view = try openImage(crash)
        #expect(try orphanEntries(crash, view) >= 12, "the kernel left no entries in the orphan file")

        let fs = try Ext4FileSystem.open(device: try FileBlockDevice(path: crash, readOnly: false),
                                         options: MountOptions(readOnly: false))
        #expect(!fs.readOnly, "\(fs.warnings)")
        #expect(try fs.read(try resolve(fs, "kept"), offset: 0, count: 1 << 16) == pattern(3000, seed: 99))
        try fs.unmount()
        try fsckClean(crash, "after our mount released the kernel's orphans")
        let after = try openImage(crash)
        #expect(try orphanEntries(crash, after) == 0)
        let dumped = try run("/usr/sbin/dumpe2fs", ["-h", crash], allowFail: true)
        #expect(!dumped.contains("orphan_present"), "\(dumped)")
    }

    /// Non-zero entries in the orphan file of the image at `path`.
    func orphanEntries(_ path: String, _ fs: Ext4FileSystem) throws -> Int {
        let sbBytes = Array(try readWhole(path)[1024..<2048])
        let ino = UInt32(sbBytes[0x280]) | UInt32(sbBytes[0x281]) << 8 | UInt32(sbBytes[0x282]) << 16 | UInt32(sbBytes[0x283]) << 24
        let data = try fs.read(ino, offset: 0, count: 1 << 20)
        let bs = 1024 << Int(sbBytes[0x18])
        var n = 0
        for blk in stride(from: 0, to: data.count, by: bs) {
            for i in stride(from: blk, to: blk + bs - 8, by: 4) where data[i] | data[i + 1] | data[i + 2] | data[i + 3] != 0 { n += 1 }
        }
        return n
    }
}
