import Ext4Engine
import Foundation
import Testing

/// Snapshot of everything visible: path -> (mode, size, content hash / target, xattrs).
func snapshot(_ fs: Ext4FileSystem, budget: TimeInterval = 20) -> [String: String] {
    var out: [String: String] = [:]
    var stack: [(UInt32, String, Int)] = [(Ext4FileSystem.rootIno, "", 0)]
    var seen = Set<UInt32>()
    let deadline = Date().addingTimeInterval(budget)
    while let (dir, path, depth) = stack.popLast(), Date() < deadline {
        guard seen.insert(dir).inserted, depth < 32 else { continue }
        var entries: [DirEntry] = []
        do { try fs.readDirectory(dir, from: 0) { entries.append($0); return entries.count < 20000 } } catch {
            out[path + "/"] = "readdir error \(error)"
            continue
        }
        for e in entries where e.name != [0x2E] && e.name != [0x2E, 0x2E] {
            let p = path + "/" + String(decoding: e.name, as: UTF8.self)
            guard let n = try? fs.inode(e.ino) else { out[p] = "inode error"; continue }
            var desc = "mode=\(n.mode) size=\(n.size) links=\(n.links)"
            switch n.fileType {
            case .directory: stack.append((e.ino, p, depth + 1))
            case .regular:
                if let d = try? fs.read(e.ino, offset: 0, count: 4 << 20) {
                    var h: UInt64 = 1469598103934665603
                    for b in d { h = (h ^ UInt64(b)) &* 1099511628211 }
                    desc += " data=\(h)"
                } else { desc += " read error" }
            case .symlink: desc += " -> \((try? fs.readlink(e.ino)).map { String(decoding: $0, as: UTF8.self) } ?? "error")"
            default: break
            }
            out[p] = desc
        }
    }
    return out
}

@Suite("jbd2 journal replay")
struct JournalTests {
    @Test func replayMatchesE2fsck() throws {
        guard let corpus = corpusDir() else { return }
        let tmp = try TempDir()
        let cases = try FileManager.default.contentsOfDirectory(atPath: corpus).filter { $0.hasPrefix("j_") }.sorted()
        var replayed = 0
        for name in cases {
            let a = tmp.sub(name + ".a"), b = tmp.sub(name + ".b")
            guard (try? materialize(corpus + "/" + name, into: a)) == true else { continue }
            defer { try? FileManager.default.removeItem(atPath: a); try? FileManager.default.removeItem(atPath: b) }
            try FileManager.default.copyItem(atPath: a, toPath: b)
            let mustRecover = name.hasPrefix("j_recover_csum")
            // A read-only open replays into memory and leaves the device as it was.
            var roFS: Ext4FileSystem? = nil
            if let ro = try? FileBlockDevice(path: a, readOnly: true) {
                let before = try readWhole(a)
                roFS = try? Ext4FileSystem.open(device: ro, options: MountOptions(readOnly: true))
                if mustRecover {
                    #expect(roFS?.warnings.first?.hasPrefix("journal replayed in memory") == true,
                            "\(name): \(roFS?.warnings ?? ["read-only open failed"])")
                }
                #expect(try readWhole(a) == before, "\(name): a read-only open wrote the device")
            }
            let fsA: Ext4FileSystem
            do {
                let dev = try FileBlockDevice(path: a, readOnly: false)
                fsA = try Ext4FileSystem.open(device: dev, options: MountOptions(readOnly: false))
            } catch {
                if mustRecover { Issue.record("\(name): replay failed: \(error)") }
                continue
            }
            if mustRecover {
                #expect(fsA.warnings.first?.hasPrefix("journal recovered") == true, "\(name): \(fsA.warnings)")
            }
            // Ground truth: e2fsprogs' own journal replay.
            try run("/usr/sbin/e2fsck", ["-fy", "-E", "journal_only", b], allowFail: true)
            guard let fsB = try? openImage(b, MountOptions(readOnly: true, noRecovery: true)) else {
                if mustRecover { Issue.record("\(name): e2fsck-replayed image does not open") }
                continue
            }
            let sa = snapshot(fsA), sb = snapshot(fsB)
            print("\(name): \(fsA.warnings.first ?? "-") entries=\(sa.count)")
            #expect(sa == sb, "\(name): engine replay differs from e2fsck replay")
            if let roFS { #expect(snapshot(roFS) == sb, "\(name): the in-memory replay differs from e2fsck replay") }
            if mustRecover { replayed += 1 }
            // After a clean unmount, a second rw open finds nothing left to recover.
            try fsA.unmount()
            let dev2 = try FileBlockDevice(path: a, readOnly: false)
            let again = try Ext4FileSystem.open(device: dev2, options: MountOptions(readOnly: false))
            #expect(!again.warnings.contains { $0.hasPrefix("journal recovered") })
        }
        #expect(replayed >= 3)
    }
}

/// Our own commits: the log wraps many times, and a copy taken at any moment
/// after an fsync (what a crash leaves) replays to a clean file system that
/// holds every fsync'd file, through e2fsck and (as root) the kernel.
@Suite("jbd2 journal writing")
struct JournalWriteTests {
    @Test(arguments: [["-b", "4096", "-J", "size=4"], ["-b", "1024", "-J", "size=1"]])
    func wrapsAndReplays(_ args: [String]) throws {
        let tmp = try TempDir()
        let img = tmp.sub("fs.img")
        try mkfs(img, tree: nil, args: ["-t", "ext4"] + args, sizeMB: 64)
        let dev = try FileBlockDevice(path: img, readOnly: false)
        let fs = try Ext4FileSystem.open(device: dev, options: MountOptions(readOnly: false))
        let dir = try fs.mkdir(parent: Ext4FileSystem.rootIno, name: Array("d".utf8), dirMode)
        var copies = 0
        var expected: [String: [UInt8]] = [:]
        for i in 0..<1500 {
            let name = "f\(i)"
            let f = try fs.mknod(parent: dir.ino, name: Array(name.utf8), fileMode)
            let data = pattern(100 + (i * 37) % 9000, seed: UInt32(i))
            _ = try data.withUnsafeBytes { p in try fs.write(f.ino, offset: 0, data: p) }
            if i % 3 == 0 {
                try fs.setxattr(f.ino, name: Array("user.n".utf8), value: Array(name.utf8), flags: 0)
            }
            if i % 5 == 4 { _ = try fs.unlink(parent: dir.ino, name: Array("f\(i - 1)".utf8)); expected["f\(i - 1)"] = nil }
            try fs.fsync(f.ino, dataOnly: false)
            try fs.fsync(dir.ino, dataOnly: false)
            expected[name] = data
            if i % 500 == 499 {
                // What a crash leaves right now.
                let crash = tmp.sub("crash\(copies).img")
                try FileManager.default.copyItem(atPath: img, toPath: crash)
                copies += 1
                let out = try run("/usr/sbin/e2fsck", ["-fy", crash], allowFail: true)
                #expect(out.contains("recovering journal"), "\(args) copy \(copies): \(out)")
                let again = try run("/usr/sbin/e2fsck", ["-fn", crash], allowFail: true)
                #expect(!again.contains("Fix?") && !again.contains("UNEXPECTED"), "\(args) copy \(copies): \(again)")
                let view = try openImage(crash)
                let d = try resolve(view, "d")
                for (n, want) in expected {
                    let ino = try view.lookup(dir: d, name: Array(n.utf8))
                    #expect(try view.read(ino, offset: 0, count: 1 << 20) == want, "\(args) copy \(copies): \(n)")
                }
                try? FileManager.default.removeItem(atPath: crash)
            }
        }
        try fs.unmount()
        let out = try run("/usr/sbin/e2fsck", ["-fn", img], allowFail: true)
        #expect(!out.contains("Fix?") && !out.contains("recovering"), "\(out)")
        let dumped = try run("/usr/sbin/dumpe2fs", ["-h", img], allowFail: true)
        #expect(!dumped.contains("needs_recovery") && dumped.contains("clean"), "\(dumped)")
        #expect(copies == 3)
    }

    /// A commit with nothing to write (a sync with no change) must not leave
    /// a gap in the log's sequence numbers: replay stops at the first gap and
    /// would write the transactions before it over newer blocks at home.
    @Test func emptyCommitsLeaveNoSequenceGap() throws {
        let tmp = try TempDir()
        let img = tmp.sub("fs.img")
        try mkfs(img, tree: nil, args: ["-t", "ext4", "-b", "4096"], sizeMB: 32)
        let dev = try FileBlockDevice(path: img, readOnly: false)
        let fs = try Ext4FileSystem.open(device: dev, options: MountOptions(readOnly: false, commitInterval: 3600))
        let root = Ext4FileSystem.rootIno
        var expected: [String: [UInt8]] = [:]
        for i in 0..<6 {
            let name = "f\(i)"
            let f = try fs.mknod(parent: root, name: Array(name.utf8), fileMode)
            let data = pattern(5000 + i, seed: UInt32(i))
            _ = try data.withUnsafeBytes { p in try fs.write(f.ino, offset: 0, data: p) }
            try fs.fsync(f.ino, dataOnly: false)
            expected[name] = data
            try fs.sync()   // nothing changed since the fsync: an empty commit
            try fs.sync()
        }
        let crash = tmp.sub("crash.img")
        try FileManager.default.copyItem(atPath: img, toPath: crash)
        let out = try run("/usr/sbin/e2fsck", ["-fy", crash], allowFail: true)
        #expect(out.contains("recovering journal"), "\(out)")
        let again = try run("/usr/sbin/e2fsck", ["-fn", crash], allowFail: true)
        #expect(!again.contains("Fix?") && !again.contains("UNEXPECTED"), "\(again)")
        let view = try openImage(crash)
        for (n, want) in expected {
            let ino = try view.lookup(dir: root, name: Array(n.utf8))
            #expect(try view.read(ino, offset: 0, count: 1 << 20) == want, "\(n)")
        }
        try fs.unmount()
    }

    /// A metadata block freed while its copy is in the live log needs a
    /// revoke record, or a replay writes the old copy over the block's next
    /// owner. That holds for the transaction written first after the log
    /// filled and started afresh, too. On a full file system with one free
    /// block, each round: a directory takes the block in one commit, frees it
    /// in the next, a file's data takes it and is fsynced in the third; the
    /// small log wraps every few dozen rounds, at each of these steps. After
    /// every round, what a crash leaves must replay to the file's data.
    @Test func freedBlocksOfTheFirstTransactionAfterAWrapAreRevoked() throws {
        let tmp = try TempDir()
        let img = tmp.sub("fs.img"), crash = tmp.sub("crash.img")
        try mkfs(img, tree: nil, args: ["-t", "ext4", "-b", "1024", "-J", "size=1", "-N", "64", "-m", "0"], sizeMB: 8)
        let dev = try FileBlockDevice(path: img, readOnly: false)
        let fs = try Ext4FileSystem.open(device: dev, options: MountOptions(readOnly: false, commitInterval: 3600))
        let root = Ext4FileSystem.rootIno
        // Fill every block: one large file, then one-block files.
        let big = try fs.mknod(parent: root, name: Array("big".utf8), fileMode)
        let chunk = [UInt8](repeating: 0xEE, count: 1 << 16)
        var off: UInt64 = 0
        while true {
            do {
                let n = try chunk.withUnsafeBytes { p in try fs.write(big.ino, offset: off, data: p) }
                if n == 0 { break }
                off += UInt64(n)
            } catch let e as Ext4Error where e == .noSpace { break }
        }
        var small = 0
        while true {
            let f = try fs.mknod(parent: root, name: Array("s\(small)".utf8), fileMode)
            do {
                _ = try [UInt8](repeating: 0x55, count: 1024).withUnsafeBytes { p in try fs.write(f.ino, offset: 0, data: p) }
            } catch let e as Ext4Error where e == .noSpace { break }
            small += 1
        }
        #expect(small > 0 && small < 60)
        _ = try fs.unlink(parent: root, name: Array("s0".utf8))
        try fs.sync()
        #expect(fs.statfs().bfree == 1, "one free block")
        var reused = 0
        for round in 0..<200 {
            // Commits of varying number, so the log fills at every step of a round.
            for i in 0..<(round % 3) {
                try fs.setxattr(root, name: Array("user.r".utf8), value: Array("\(round).\(i)".utf8), flags: 0)
                try fs.sync()
            }
            let d = try fs.mkdir(parent: root, name: Array("d".utf8), dirMode)
            let dirBlock = try fs.bmap(d.ino, block: 0)
            try fs.sync()
            try fs.rmdir(parent: root, name: Array("d".utf8))
            try fs.sync()
            let f = try fs.mknod(parent: root, name: Array("f".utf8), fileMode)
            let data = pattern(1024, seed: UInt32(round + 1))
            _ = try data.withUnsafeBytes { p in try fs.write(f.ino, offset: 0, data: p) }
            try fs.fsync(f.ino, dataOnly: false)
            if try fs.bmap(f.ino, block: 0) == dirBlock { reused += 1 }
            // What a crash leaves now, replayed in memory by a read-only open.
            try? FileManager.default.removeItem(atPath: crash)
            try FileManager.default.copyItem(atPath: img, toPath: crash)
            let view = try Ext4FileSystem.open(device: try FileBlockDevice(path: crash, readOnly: true),
                                               options: MountOptions(readOnly: true))
            let got = try view.read(try view.lookup(dir: root, name: Array("f".utf8)), offset: 0, count: 4096)
            let same = got == data
            #expect(same, "round \(round): the file replays to other bytes (a directory block's copy?)")
            if !same { break }
            _ = try fs.unlink(parent: root, name: Array("f".utf8))
            try fs.sync()
        }
        // The scenario happened: the data took over the freed directory block.
        #expect(reused >= 190, "only \(reused) rounds reused the directory's block")
        try fs.unmount()
        let out = try run("/usr/sbin/e2fsck", ["-fn", img], allowFail: true)
        #expect(!out.contains("Fix?") && !out.contains("UNEXPECTED"), "\(out)")
    }

    /// Blocks freed by a transaction that has not committed yet cannot be
    /// reused (a crash would bring their old owner back), but they count:
    /// an operation that finds no other space commits and retries, as ext4
    /// does, instead of failing with ENOSPC. Every kind of allocating
    /// operation, not only writes.
    @Test func freedSpaceIsReusedAfterACommitInsteadOfENOSPC() throws {
        let tmp = try TempDir()
        let img = tmp.sub("fs.img")
        try mkfs(img, tree: nil, args: ["-t", "ext4", "-b", "1024", "-N", "256"], sizeMB: 8)
        let dev = try FileBlockDevice(path: img, readOnly: false)
        let fs = try Ext4FileSystem.open(device: dev, options: MountOptions(readOnly: false, commitInterval: 3600))
        let root = Ext4FileSystem.rootIno
        for round in 0..<3 {
            // Fill the file system to the last block.
            let big = try fs.mknod(parent: root, name: Array("big".utf8), fileMode)
            let chunk = [UInt8](repeating: UInt8(round + 1), count: 1 << 16)
            var off: UInt64 = 0
            while true {
                let n: Int
                do {
                    n = try chunk.withUnsafeBytes { p in try fs.write(big.ino, offset: off, data: p) }
                } catch let e as Ext4Error where e == .noSpace { break }
                if n == 0 { break }
                off += UInt64(n)
            }
            #expect(off > 4 << 20, "round \(round): filled only \(off) bytes")
            // Free it all in the running transaction, then allocate with
            // mkdir (a directory block), a slow symlink and an xattr block.
            _ = try fs.unlink(parent: root, name: Array("big".utf8))
            let target = [UInt8](repeating: 0x61, count: 300)
            for i in 0..<20 {
                let d = try fs.mkdir(parent: root, name: Array("r\(round)d\(i)".utf8), dirMode)
                _ = try fs.symlink(parent: d.ino, name: Array("s".utf8), target: target, uid: 0, gid: 0)
                try fs.setxattr(d.ino, name: Array("user.big".utf8), value: [UInt8](repeating: 7, count: 600), flags: 0)
            }
        }
        try fs.unmount()
        let out = try run("/usr/sbin/e2fsck", ["-fn", img], allowFail: true)
        #expect(!out.contains("Fix?") && !out.contains("UNEXPECTED"), "\(out)")
    }
}
