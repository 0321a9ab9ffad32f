import CShim
import Ext4Engine
import Foundation
import Glibc
import Testing

// Power-cut tests in the idea of dm-log-writes: a workload runs through the
// engine on a `RecordingDevice`; the recorded writes are then replayed onto
// copies of the starting image, cut at flush points (and, within one flush
// epoch, with an arbitrary subset of the writes having reached the disk). Every
// such image must be one the kernel mounts (replaying the journal), that
// e2fsck then finds clean, and that holds every file the workload had been told
// was durable (fsync of the file and of its parent returned).

struct PCVariant: CustomStringConvertible, Sendable {
    let name: String
    let mkfsArgs: [String]
    /// Set journal_64bit + journal_checksum_v3 in the journal superblock
    /// (mkfs leaves the journal features empty; the kernel sets them at mount).
    let journalCsumV3: Bool
    let extents: Bool
    var description: String { name }
}

let powerCutVariants: [PCVariant] = [
    PCVariant(name: "ext4-4k-csum-v3", mkfsArgs: ["-t", "ext4", "-b", "4096", "-O", "metadata_csum"],
              journalCsumV3: true, extents: true),
    PCVariant(name: "ext4-1k", mkfsArgs: ["-t", "ext4", "-b", "1024"], journalCsumV3: false, extents: true),
    PCVariant(name: "ext3-blockmap", mkfsArgs: ["-t", "ext3", "-b", "4096"], journalCsumV3: false, extents: false),
]

/// A durability promise: from the flush at log index `flush` on, `path` holds
/// `data` and exactly the user.* xattrs `xattrs`, until log index `invalidAt`
/// where a later change to the file or to its name began.
struct PCAck {
    let path: String
    let ino: UInt32
    let data: [UInt8]
    let xattrs: [String: [UInt8]]
    let flush: Int
    var invalidAt = Int.max
}

/// The deterministic workload and a model of what it did.
final class PowerCutWorkload {
    struct FileModel {
        var data: [UInt8] = []
        var xattrs: [String: [UInt8]] = [:]
    }

    let fs: Ext4FileSystem
    let dev: RecordingDevice
    let bs: Int
    var files: [UInt32: FileModel] = [:]
    var names: [String: UInt32] = [:]
    var dirs: [String: UInt32] = ["": Ext4FileSystem.rootIno]
    var acks: [PCAck] = []
    private var seed: UInt32 = 5000

    init(fs: Ext4FileSystem, dev: RecordingDevice) {
        self.fs = fs
        self.dev = dev
        bs = Int(fs.statfs().bsize)
    }

    private func fail(_ s: String) -> CommandFailed { CommandFailed(description: "workload: " + s) }

    func bytes(_ n: Int) -> [UInt8] {
        seed += 1
        return pattern(n, seed: seed)
    }

    func split(_ path: String) throws -> (parent: UInt32, name: [UInt8]) {
        let parts = path.split(separator: "/")
        guard let last = parts.last, let p = dirs[parts.dropLast().joined(separator: "/")] else {
            throw fail("no parent directory for \(path)")
        }
        return (p, Array(last.utf8))
    }

    func ino(_ path: String) throws -> UInt32 {
        guard let i = names[path] else { throw fail("no file \(path)") }
        return i
    }

    // A change starting now ends the promises about `ino` / `path` (and below it).
    func invalidate(ino: UInt32) {
        let at = dev.count
        for i in acks.indices where acks[i].ino == ino && acks[i].invalidAt == .max { acks[i].invalidAt = at }
    }

    func invalidate(path: String) {
        let at = dev.count
        for i in acks.indices where acks[i].invalidAt == .max
            && (acks[i].path == path || acks[i].path.hasPrefix(path + "/")) {
            acks[i].invalidAt = at
        }
    }

    func mkdir(_ path: String) throws {
        let (p, n) = try split(path)
        dirs[path] = try fs.mkdir(parent: p, name: n, dirMode).ino
    }

    func rmdir(_ path: String) throws {
        let (p, n) = try split(path)
        invalidate(path: path)
        try fs.rmdir(parent: p, name: n)
        dirs[path] = nil
    }

    func create(_ path: String) throws {
        let (p, n) = try split(path)
        invalidate(path: path)
        let i = try fs.mknod(parent: p, name: n, fileMode).ino
        files[i] = FileModel()
        names[path] = i
    }

    func write(_ path: String, at off: Int, _ d: [UInt8]) throws {
        let i = try ino(path)
        invalidate(ino: i)
        try fs.put(i, UInt64(off), d)
        var m = files[i] ?? FileModel()
        if m.data.count < off + d.count { m.data += [UInt8](repeating: 0, count: off + d.count - m.data.count) }
        m.data.replaceSubrange(off..<(off + d.count), with: d)
        files[i] = m
    }

    func append(_ path: String, _ n: Int) throws {
        try write(path, at: files[try ino(path)]?.data.count ?? 0, bytes(n))
    }

    func truncate(_ path: String, _ size: Int) throws {
        let i = try ino(path)
        invalidate(ino: i)
        var c = AttrChange()
        c.size = UInt64(size)
        _ = try fs.setattr(i, c)
        var m = files[i] ?? FileModel()
        if size < m.data.count { m.data.removeLast(m.data.count - size) } else {
            m.data += [UInt8](repeating: 0, count: size - m.data.count)
        }
        files[i] = m
    }

    /// FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE.
    func punch(_ path: String, _ off: Int, _ len: Int) throws {
        let i = try ino(path)
        invalidate(ino: i)
        try fs.fallocate(i, mode: 3, offset: UInt64(off), length: UInt64(len))
        var m = files[i] ?? FileModel()
        let end = min(off + len, m.data.count)
        if off < end { m.data.replaceSubrange(off..<end, with: [UInt8](repeating: 0, count: end - off)) }
        files[i] = m
    }

    /// FALLOC_FL_KEEP_SIZE: blocks beyond EOF, contents unchanged.
    func preallocate(_ path: String, _ off: Int, _ len: Int) throws {
        let i = try ino(path)
        invalidate(ino: i)
        try fs.fallocate(i, mode: 1, offset: UInt64(off), length: UInt64(len))
    }

    func setx(_ path: String, _ name: String, _ value: [UInt8]) throws {
        let i = try ino(path)
        invalidate(ino: i)
        try fs.setxattr(i, name: Array(name.utf8), value: value, flags: 0)
        files[i, default: FileModel()].xattrs[name] = value
    }

    func removex(_ path: String, _ name: String) throws {
        let i = try ino(path)
        invalidate(ino: i)
        try fs.removexattr(i, name: Array(name.utf8))
        files[i, default: FileModel()].xattrs[name] = nil
    }

    func rename(_ from: String, _ to: String) throws {
        let (p, n) = try split(from), (np, nn) = try split(to)
        invalidate(path: from)
        invalidate(path: to)
        try fs.rename(parent: p, name: n, newParent: np, newName: nn, flags: 0)
        if dirs[from] != nil {
            for (k, v) in dirs where k == from || k.hasPrefix(from + "/") {
                dirs[k] = nil
                dirs[to + k.dropFirst(from.count)] = v
            }
            for (k, v) in names where k.hasPrefix(from + "/") {
                names[k] = nil
                names[to + k.dropFirst(from.count)] = v
            }
        } else {
            names[to] = names.removeValue(forKey: from)
        }
    }

    func unlink(_ path: String) throws {
        let (p, n) = try split(path)
        invalidate(path: path)
        _ = try fs.unlink(parent: p, name: n)
        names[path] = nil
    }

    func link(_ existing: String, _ new: String) throws {
        let i = try ino(existing), (p, n) = try split(new)
        invalidate(path: new)
        _ = try fs.link(i, parent: p, name: n)
        names[new] = i
    }

    func symlink(_ path: String, _ target: String) throws {
        let (p, n) = try split(path)
        _ = try fs.symlink(parent: p, name: n, target: Array(target.utf8), uid: 1000, gid: 1000)
    }

    /// fsync(file), fsync(parent): from the latest flush on, the file must survive.
    func ack(_ path: String) throws {
        let i = try ino(path), (p, _) = try split(path)
        try fs.fsync(i, dataOnly: false)
        try fs.fsync(p, dataOnly: false)
        guard let f = dev.lastFlush else { throw fail("fsync of \(path) returned without a device flush") }
        let m = files[i] ?? FileModel()
        acks.append(PCAck(path: path, ino: i, data: m.data, xattrs: m.xattrs, flush: f))
    }

    /// After unmount every file is durable as it is now.
    func ackEverything() throws {
        guard let f = dev.lastFlush else { throw fail("unmount returned without a device flush") }
        for (path, i) in names.sorted(by: { $0.key < $1.key }) {
            let m = files[i] ?? FileModel()
            acks.append(PCAck(path: path, ino: i, data: m.data, xattrs: m.xattrs, flush: f))
        }
    }

    /// Creates, small and multi-block writes, appends, overwrites, truncates
    /// (down and up), holes, renames (over a file too, and of a directory),
    /// unlinks, hard and symbolic links, xattrs in the inode and in a block,
    /// mkdir/rmdir, fsyncs. Deterministic.
    func run(extents: Bool) throws {
        try mkdir("a")
        try mkdir("b")
        try mkdir("a/sub")
        try create("b/log")
        for r in 0..<6 {
            let s = "a/s\(r)", m = "b/m\(r)"
            try create(s)
            try write(s, at: 0, bytes(100 + 37 * r))
            try ack(s)
            try create(m)
            try write(m, at: 0, bytes(3 * bs + 500))
            try append(m, 5 * bs + 7)
            if r % 2 == 0 { try ack(m) }
            try setx(s, "user.small", bytes(16))
            if r % 2 == 0 { try setx(s, "user.big\(r)", bytes(700)) }
            try ack(s)
            if r >= 1 {
                let k = r - 1
                try append("a/s\(k)", bs + 13)
                if k % 3 == 0 { try ack("a/s\(k)") }
                try write("b/m\(k)", at: bs / 2, bytes(2 * bs))
                if k % 2 == 1 { try ack("b/m\(k)") }
            }
            if r >= 2 {
                let k = r - 2
                try truncate("a/s\(k)", 50 + k)
                try ack("a/s\(k)")
                try rename("b/m\(k)", "a/sub/moved\(k)")
                try ack("a/sub/moved\(k)")
            }
            if r >= 3 {
                let k = r - 3
                try removex("a/s\(k)", "user.small")
                if k % 2 == 1 { try unlink("a/sub/moved\(k)") }
                try truncate("a/s\(k)", 3 * bs + 11) // grows with a hole
                if k == 0 { try ack("a/s\(k)") }
            }
            try append("b/log", 4 * bs + 100 * r)
            if r % 2 == 1 { try ack("b/log") }
            try mkdir("a/d\(r)")
            if r >= 1 { try rmdir("a/d\(r - 1)") }
            switch r {
            case 2:
                try symlink("a/ln", "s0")
                try link("a/s1", "b/hard1")
                try ack("b/hard1")
            case 3:
                // Write a replacement, make it durable, rename it over the original.
                try create("a/tmp")
                try write("a/tmp", at: 0, bytes(2 * bs + 77))
                try setx("a/tmp", "user.replaced", bytes(8))
                try ack("a/tmp")
                try rename("a/tmp", "a/s0")
                try ack("a/s0")
                if extents { try preallocate("b/log", 40 * bs, 8 * bs) }
            case 4:
                try punch("b/log", bs + 5, 3 * bs)
                try ack("b/log")
                try unlink("a/s1") // b/hard1 keeps it
            default:
                break
            }
        }
        try rename("a/sub", "b/sub2")
        try ack("b/sub2/moved2")
        try truncate("b/log", 0)
        try append("b/log", 2 * bs + 1)
        try ack("b/log")
        try write("b/m5", at: 0, bytes(bs)) // never acknowledged before unmount
    }
}

/// One image to check: all log events with index < `base` applied, then the
/// writes at the indices `extra` (all < `end`).
struct PCCheckpoint {
    let label: String
    let base: Int
    let extra: [Int]
    let end: Int
    var isFinal = false
}

@Suite("power cut: replay of recorded device writes at flush points")
struct PowerCutTests {
    static let maxFlushPoints = 40
    /// POWERCUT_REORDER_CASES, POWERCUT_SEED and POWERCUT_COMMIT_INTERVAL
    /// widen the search when hunting a rare failure (the committer's timer
    /// commits between operations at moments that vary from run to run).
    static let env = ProcessInfo.processInfo.environment
    static let reorderCases = Int(env["POWERCUT_REORDER_CASES"] ?? "") ?? 40
    static let seed = UInt64(env["POWERCUT_SEED"] ?? "") ?? 0
    static let commitInterval = Double(env["POWERCUT_COMMIT_INTERVAL"] ?? "") ?? 5

    @Test(arguments: powerCutVariants)
    func powerCut(_ v: PCVariant) throws {
        let fm = FileManager.default
        for tool in ["/usr/sbin/mkfs.ext4", "/usr/sbin/e2fsck", "/usr/sbin/debugfs", "/usr/sbin/dumpe2fs"]
            where !fm.isExecutableFile(atPath: tool) {
            print("power cut \(v): skipped, \(tool) missing")
            return
        }
        let t0 = Date()
        let tmp = try TempDir(prefix: "powercut")
        let start = tmp.sub("start.img"), scratch = tmp.sub("scratch.img"), check = tmp.sub("check.img")
        let mnt = tmp.sub("mnt")
        try fm.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        try run("/usr/sbin/mkfs.ext4", ["-q", "-F"] + v.mkfsArgs + [start, "32M"])
        if v.journalCsumV3 {
            let cmd = tmp.sub("jcsum.cmd")
            try writeFile(cmd, Array("jo -c\njc\n".utf8))
            try run("/usr/sbin/debugfs", ["-w", "-f", cmd, start])
            let h = try run("/usr/sbin/dumpe2fs", ["-h", start], allowFail: true)
            guard h.contains("journal_checksum_v3") else {
                Issue.record("could not set journal_checksum_v3 on the starting image:\n\(h)")
                return
            }
        }
        try fm.copyItem(atPath: start, toPath: scratch)

        // ---- the workload -------------------------------------------------------
        let dev = try RecordingDevice(path: scratch)
        let fs = try Ext4FileSystem.open(device: dev, options: MountOptions(readOnly: false, commitInterval: Self.commitInterval))
        guard !fs.readOnly else {
            print("power cut \(v): skipped, the engine opened the image read-only: \(fs.warnings)")
            return
        }
        let w = PowerCutWorkload(fs: fs, dev: dev)
        try w.run(extents: v.extents)
        try fs.unmount()
        try w.ackEverything()
        let log = dev.log
        let tWorkload = Date().timeIntervalSince(t0)

        // The scratch image itself (everything written, no cut) must be clean.
        try fsckClean(scratch, "\(v) scratch image after unmount")

        // ---- checkpoints ----------------------------------------------------------
        let flushes = log.indices.filter { if case .flush = log[$0] { return true } else { return false } }
        guard let lastFlush = flushes.last, lastFlush == log.count - 1 else {
            Issue.record("\(v): the log does not end with a flush (\(flushes.count) flushes, \(log.count) events)")
            return
        }
        var cps: [PCCheckpoint] = []
        let chosen: [Int] // indices into `flushes`
        if flushes.count <= Self.maxFlushPoints {
            chosen = Array(flushes.indices)
        } else {
            let n = Self.maxFlushPoints
            chosen = (0..<n).map { $0 * (flushes.count - 1) / (n - 1) }
        }
        for k in Set(chosen).sorted() {
            let f = flushes[k]
            let final = f == lastFlush
            cps.append(PCCheckpoint(label: final ? "final flush \(k + 1)/\(flushes.count) (after unmount), log event \(f)"
                                        : "flush \(k + 1)/\(flushes.count), log event \(f) of \(log.count)",
                                    base: f, extra: [], end: f, isFinal: final))
        }
        // Reorder windows: after flush k (or from the start, k = -1) up to the next flush.
        var windows: [(k: Int, from: Int, to: Int, writes: [Int])] = []
        for k in -1..<(flushes.count - 1) {
            let from = k < 0 ? 0 : flushes[k], to = flushes[k + 1]
            let ws = (from..<to).filter { if case .write = log[$0] { return true } else { return false } }
            if ws.count >= 2 { windows.append((k, from, to, ws)) }
        }
        var rng = SplitMix(seed: 0x5EED_0000 &+ Self.seed &* 0x1_0000_0000 &+ UInt64(v.name.utf8.reduce(0) { $0 &* 31 &+ Int($1) }.magnitude))
        if !windows.isEmpty {
            for c in 0..<Self.reorderCases {
                let win = windows[Int(rng.below(UInt64(windows.count)))]
                var subset = win.writes.filter { _ in rng.below(2) == 0 }
                if subset.isEmpty { subset = [win.writes[Int(rng.below(UInt64(win.writes.count)))]] }
                if subset.count == win.writes.count { subset.removeLast() }
                let after = win.k < 0 ? "the start" : "flush \(win.k + 1)/\(flushes.count) (log event \(win.from))"
                cps.append(PCCheckpoint(label: "reorder case \(c): after \(after), \(subset.count) of the \(win.writes.count) writes before the next flush (log event \(win.to)): \(compactList(subset))",
                                        base: win.from, extra: subset, end: win.to))
            }
        }
        cps.sort { $0.base < $1.base }

        // ---- replay and check ------------------------------------------------------
        let kernel = ProcessInfo.processInfo.environment["POWERCUT_NO_KERNEL"] == nil ? try kernelUsable(start, mnt) : false
        if !kernel { print("power cut \(v): not root or loop mount unavailable: e2fsck replays the journal, the engine reads") }
        var image = try readWhole(start)
        var cursor = 0
        var failures: [(label: String, problems: [String], reorder: Bool)] = []
        var finalProblems: [String] = []
        for cp in cps {
            while cursor < cp.base {
                if case .write(let off, let bytes) = log[cursor] {
                    let o = Int(off)
                    image.replaceSubrange(o..<(o + bytes.count), with: bytes)
                }
                cursor += 1
            }
            try writeImage(image, check)
            let fd = open(check, O_WRONLY | O_CLOEXEC)
            guard fd >= 0 else { throw CommandFailed(description: "open \(check): errno \(errno)") }
            for i in cp.extra {
                if case .write(let off, let bytes) = log[i] { try pwriteAll(fd, bytes, off) }
            }
            close(fd)
            let acks = w.acks.filter { $0.flush <= cp.base && $0.invalidAt >= cp.end }
            let problems = kernel ? try checkWithKernel(check, mnt, acks) : try checkWithEngine(check, acks)
            if !problems.isEmpty {
                failures.append((cp.label, problems, !cp.extra.isEmpty))
                if cp.isFinal { finalProblems = problems }
            }
        }

        // ---- report -------------------------------------------------------------------
        let elapsed = Date().timeIntervalSince(t0)
        print("power cut \(v): \(log.count) log events, \(flushes.count) flushes, \(w.acks.count) promises; "
              + "checked \(cps.count - cps.filter { !$0.extra.isEmpty }.count) flush points + \(cps.filter { !$0.extra.isEmpty }.count) reorder cases "
              + "(\(kernel ? "kernel mount" : "e2fsck replay + engine")): \(failures.count) failed; "
              + String(format: "workload %.1f s, total %.1f s", tWorkload, elapsed))
        #expect(finalProblems.isEmpty,
                "\(v): the full log (after unmount) does not replay to a clean, complete image:\n\(finalProblems.joined(separator: "\n"))")
        // In detail: the first few failing cuts at flush points, then the first few reorder cases.
        let detailed = 6
        failures = failures.filter { !$0.reorder } + failures.filter(\.reorder)
        let plainFailed = failures.filter { !$0.reorder }.count
        for f in failures.filter({ !$0.reorder }).prefix(3) + failures.filter(\.reorder).prefix(detailed - min(3, plainFailed)) {
            Issue.record("power cut \(v), \(f.label):\n\(f.problems.joined(separator: "\n"))")
        }
        let shown = Set(failures.filter { !$0.reorder }.prefix(3).map(\.label)
                        + failures.filter(\.reorder).prefix(detailed - min(3, plainFailed)).map(\.label))
        if failures.count > shown.count {
            let rest = failures.filter { !shown.contains($0.label) }.map { "  \($0.label): \($0.problems.first?.split(separator: "\n").first ?? "")" }
            Issue.record("power cut \(v): \(failures.count - shown.count) more failing cut(s):\n\(rest.joined(separator: "\n"))")
        }
    }
}

// MARK: helpers

private func compactList(_ xs: [Int]) -> String {
    xs.count <= 12 ? xs.map(String.init).joined(separator: ",")
        : xs.prefix(12).map(String.init).joined(separator: ",") + ",… (\(xs.count))"
}

private func clip(_ s: String, lines: Int = 40) -> String {
    let ls = s.split(separator: "\n", omittingEmptySubsequences: false)
    return ls.count <= lines ? s : ls.prefix(lines).joined(separator: "\n") + "\n… (\(ls.count - lines) more lines)"
}

private func pwriteAll(_ fd: Int32, _ bytes: [UInt8], _ off: UInt64) throws {
    var done = 0
    try bytes.withUnsafeBytes { p in
        while done < p.count {
            let n = pwrite(fd, p.baseAddress! + done, p.count - done, off_t(off) + off_t(done))
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw CommandFailed(description: "pwrite: errno \(errno)") }
            done += n
        }
    }
}

private func writeImage(_ image: [UInt8], _ path: String) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else { throw CommandFailed(description: "create \(path): errno \(errno)") }
    defer { close(fd) }
    try pwriteAll(fd, image, 0)
}

private func mismatch(_ got: [UInt8], _ want: [UInt8]) -> String? {
    if got == want { return nil }
    let n = min(got.count, want.count)
    var i = 0
    while i < n && got[i] == want[i] { i += 1 }
    return "\(got.count) bytes, want \(want.count), first difference at byte \(i)"
}

/// Root with loop devices: can the kernel mount the starting image?
private func kernelUsable(_ start: String, _ mnt: String) throws -> Bool {
    guard getuid() == 0, FileManager.default.fileExists(atPath: "/dev/loop-control"),
          FileManager.default.isExecutableFile(atPath: "/usr/bin/mount") else { return false }
    let probe = start + ".probe"
    try FileManager.default.copyItem(atPath: start, toPath: probe)
    defer { try? FileManager.default.removeItem(atPath: probe) }
    guard try execute("/usr/bin/mount", ["-o", "loop", probe, mnt]).status == 0 else { return false }
    _ = try execute("/usr/bin/umount", [mnt])
    return true
}

private func e2fsckClean(_ img: String) throws -> String? {
    let r = try execute("/usr/sbin/e2fsck", ["-fn", img])
    return r.status == 0 ? nil : "e2fsck -fn exit \(r.status):\n" + clip(r.stdout + r.stderr)
}

/// Mount with the kernel (which replays the journal and the orphan list), read
/// the promised files, unmount, then e2fsck -fn.
private func checkWithKernel(_ img: String, _ mnt: String, _ acks: [PCAck]) throws -> [String] {
    var problems: [String] = []
    let m = try execute("/usr/bin/mount", ["-o", "loop", img, mnt])
    if m.status != 0 {
        let dmesg = (try? execute("/usr/bin/dmesg", []).stdout) ?? ""
        problems.append("kernel mount failed (exit \(m.status)): \(m.stderr)"
                        + "\ndmesg tail:\n" + dmesg.split(separator: "\n").suffix(8).joined(separator: "\n"))
    } else {
        for a in acks {
            let p = mnt + "/" + a.path
            guard let got = try? readWhole(p) else { problems.append("\(a.path): missing"); continue }
            if let d = mismatch(got, a.data) { problems.append("\(a.path): content: \(d)") }
            if let d = xattrMismatch(kernelXattrs(p), a.xattrs) { problems.append("\(a.path): xattrs: \(d)") }
        }
        let u = try execute("/usr/bin/umount", [mnt])
        if u.status != 0 {
            problems.append("umount failed: \(u.stderr)")
            _ = try execute("/usr/bin/umount", ["-l", mnt])
        }
    }
    if let e = try e2fsckClean(img) { problems.append(e) }
    return problems
}

/// Without the kernel: e2fsck replays the journal, must then find the image
/// clean, and the engine reads the promised files.
private func checkWithEngine(_ img: String, _ acks: [PCAck]) throws -> [String] {
    let r = try execute("/usr/sbin/e2fsck", ["-y", "-E", "journal_only", img])
    if r.status > 1 { return ["e2fsck -E journal_only exit \(r.status):\n" + clip(r.stdout + r.stderr)] }
    var problems: [String] = []
    if let e = try e2fsckClean(img) { problems.append(e) }
    let fs: Ext4FileSystem
    do { fs = try openImage(img) } catch {
        return problems + ["engine open failed: \(error)"]
    }
    for a in acks {
        do {
            let ino = try resolve(fs, a.path)
            let size = try fs.inode(ino).size
            var got: [UInt8] = []
            while UInt64(got.count) < size {
                let d = try fs.read(ino, offset: UInt64(got.count), count: Int(size) - got.count)
                if d.isEmpty { break }
                got += d
            }
            if let d = mismatch(got, a.data) { problems.append("\(a.path): content: \(d)") }
            var xs: [String: [UInt8]] = [:]
            for n in try fs.listxattr(ino) {
                let s = String(decoding: n, as: UTF8.self)
                if s.hasPrefix("user.") { xs[s] = try fs.getxattr(ino, name: n) }
            }
            if let d = xattrMismatch(xs, a.xattrs) { problems.append("\(a.path): xattrs: \(d)") }
        } catch {
            problems.append("\(a.path): \(error)")
        }
    }
    return problems
}

private func kernelXattrs(_ path: String) -> [String: [UInt8]] {
    var out: [String: [UInt8]] = [:]
    let n = listxattr(path, nil, 0)
    guard n > 0 else { return out }
    var buf = [CChar](repeating: 0, count: n)
    let got = listxattr(path, &buf, n)
    guard got > 0 else { return out }
    let names = buf.prefix(got).split(separator: 0).map { String(decoding: $0.map { UInt8(bitPattern: $0) }, as: UTF8.self) }
    for name in names where name.hasPrefix("user.") {
        let len = getxattr(path, name, nil, 0)
        guard len >= 0 else { continue }
        var v = [UInt8](repeating: 0, count: len)
        let r = len == 0 ? 0 : getxattr(path, name, &v, len)
        if r >= 0 { out[name] = Array(v.prefix(r)) }
    }
    return out
}

private func xattrMismatch(_ got: [String: [UInt8]], _ want: [String: [UInt8]]) -> String? {
    if got == want { return nil }
    let missing = want.keys.filter { got[$0] == nil }.sorted()
    let extra = got.keys.filter { want[$0] == nil }.sorted()
    let differ = want.keys.filter { got[$0] != nil && got[$0] != want[$0] }.sorted()
    return "missing \(missing), unexpected \(extra), different \(differ)"
}
