// Images built at test time with mkfs.ext4/debugfs, and a served Ext4FuseFS on them.

import Ext4Engine
import Ext4Fuse
import Ext4Server
import Foundation
import FuseKernel
import FuseTestSupport
import Glibc
import Logging
import TestSupport

struct ToolError: Error, CustomStringConvertible {
    let description: String
}

/// Runs a tool found on PATH (sbin included); returns stdout. Throws with stderr on a non-zero exit.
@discardableResult
func tool(_ argv: [String], allowFailure: Bool = false) throws -> String {
    let r = try execute("/usr/bin/env", argv)
    if r.status != 0 && !allowFailure {
        throw ToolError(description: "\(argv.joined(separator: " ")): exit \(r.status): \(r.stderr)")
    }
    return r.stdout
}

func haveTool(_ name: String) -> Bool {
    ["/usr/sbin/", "/sbin/", "/usr/bin/", "/bin/"].contains { access($0 + name, X_OK) == 0 }
}

let haveE2fsprogs = haveTool("mkfs.ext4") && haveTool("debugfs")
let isRoot = geteuid() == 0

/// A scratch directory removed on deinit.
final class Scratch {
    let path: String
    /// Under $EXT4SERVER_TEST_TMPDIR when set (an exit test's child, whose crash
    /// would otherwise leave its directory behind), else under /tmp.
    init() throws {
        let base = ProcessInfo.processInfo.environment["EXT4SERVER_TEST_TMPDIR"] ?? "/tmp"
        var t = Array("\(base)/ext4server-test.XXXXXX".utf8CString)
        guard let p = t.withUnsafeMutableBufferPointer({ b -> UnsafeMutablePointer<CChar>? in
            guard let base = b.baseAddress else { return nil }
            return mkdtemp(base)
        }) else { throw FuseError(errno) }
        path = String(cString: p)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }

    func write(_ rel: String, _ bytes: [UInt8]) throws {
        let url = URL(fileURLWithPath: path + "/" + rel)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data(bytes).write(to: url)
    }

    /// A sparse file: pieces of pseudo-random data at the given offsets, then truncated to size.
    func sparse(_ rel: String, pieces: [(offset: Int, length: Int)], size: Int) throws {
        try write(rel, [])
        let fd = open(path + "/" + rel, O_WRONLY)
        defer { close(fd) }
        for (o, n) in pieces {
            let b = pattern(n, seed: UInt64(o))
            _ = b.withUnsafeBytes { pwrite(fd, $0.baseAddress, n, off_t(o)) }
        }
        _ = ftruncate(fd, off_t(size))
    }
}

/// Deterministic non-zero bytes.
func pattern(_ n: Int, seed: UInt64) -> [UInt8] {
    var x = seed &* 6364136223846793005 &+ 1442695040888963407
    return (0..<n).map { _ in
        x = x &* 6364136223846793005 &+ 1442695040888963407
        return UInt8(truncatingIfNeeded: (x >> 33) | 1)
    }
}

/// Large contents cheaply: a 64 KiB pattern, each copy stamped with its index.
func bulk(_ n: Int, seed: UInt64) -> [UInt8] {
    let unit = pattern(1 << 16, seed: seed)
    var out = [UInt8]()
    out.reserveCapacity(n + unit.count)
    var i: UInt32 = 0
    while out.count < n {
        out += withUnsafeBytes(of: i.littleEndian) { Array($0) }
        out += unit.dropFirst(4)
        i += 1
    }
    return Array(out.prefix(n))
}

/// An image built from a tree, plus debugfs edits, served by Ext4FuseFS over a test kernel.
final class ServedImage {
    let dir: Scratch
    let image: String
    let blockSize: Int
    let kernel: TestKernel

    /// `build` fills the source tree (dir.path + "/tree").
    init(mkfs: [String], size: String = "64M", debugfs: [String] = [], build: (Scratch) throws -> Void) throws {
        dir = try Scratch()
        try FileManager.default.createDirectory(atPath: dir.path + "/tree", withIntermediateDirectories: true)
        try build(dir)
        image = dir.path + "/fs.img"
        try tool(["mkfs.ext4", "-q", "-F"] + mkfs + ["-d", dir.path + "/tree", image, size])
        if !debugfs.isEmpty {
            try debugfs.joined(separator: "\n").write(toFile: dir.path + "/cmds", atomically: true, encoding: .utf8)
            try tool(["debugfs", "-w", "-f", dir.path + "/cmds", image])
        }
        let dev = try FileBlockDevice(path: image, readOnly: true)
        let fs = try Ext4FileSystem.open(device: dev, options: MountOptions(readOnly: true))
        blockSize = fs.blockSize
        var opts = ServerOptions()
        opts.readOnly = true
        var logger = Logger(label: "ext4-server-test")
        logger.logLevel = .critical
        kernel = try TestKernel(fs: Ext4FuseFS(fs: fs, options: opts, logger: logger), workers: 2, logLevel: .critical)
        _ = try kernel.initialize()
    }

    deinit { _ = kernel.finish() }

    func debugfs(_ cmd: String) throws -> String {
        try tool(["debugfs", "-R", cmd, image])
    }

    /// Node id of a path, by LOOKUP from the root.
    func node(_ path: String) throws -> UInt64 {
        var n = FuseABI.rootID
        for comp in path.split(separator: "/") {
            let (e, p) = try kernel.call(.lookup(name: Array(comp.utf8)), node: n)
            guard e == 0 else { throw FuseError(-e) }
            let entry = try FuseEntryOut.decode(p)
            guard entry.nodeid != 0 else { throw FuseError(ENOENT) }
            n = entry.nodeid
        }
        return n
    }

    func ino(_ path: String) throws -> UInt32 {
        let n = try node(path)
        return n == FuseABI.rootID ? 2 : UInt32(n)
    }
}

// MARK: little-endian reading

extension Array where Element == UInt8 {
    func le(_ off: Int, _ n: Int) -> UInt64 {
        (0..<n).reduce(UInt64(0)) { $0 | UInt64(self[off + $1]) << (8 * UInt64($1)) }
    }
}

/// One FIEMAP record.
struct FiemapExtent: Equatable, CustomStringConvertible {
    var logical: UInt64, physical: UInt64, length: UInt64, flags: UInt32
    var description: String { "(\(logical) \(physical) \(length) 0x\(String(flags, radix: 16)))" }
}

/// `struct fiemap` for the whole file, room for `count` extents.
func fiemapRequest(start: UInt64 = 0, length: UInt64 = UInt64.max, flags: UInt32 = 0, count: UInt32) -> [UInt8] {
    var w = WireWriter()
    w.u64(start); w.u64(length); w.u32(flags); w.u32(0); w.u32(count); w.u32(0)
    return w.bytes
}

func parseFiemap(_ out: [UInt8]) -> (mapped: UInt32, extents: [FiemapExtent]) {
    guard out.count >= 32 else { return (0, []) }
    let mapped = UInt32(out.le(20, 4))
    var ex: [FiemapExtent] = []
    var off = 32
    while off + 56 <= out.count && ex.count < Int(mapped) {
        ex.append(FiemapExtent(logical: out.le(off, 8), physical: out.le(off + 8, 8), length: out.le(off + 16, 8),
                               flags: UInt32(out.le(off + 40, 4))))
        off += 56
    }
    return (mapped, ex)
}

/// Leaf extents from `debugfs -R "ex PATH"`: (logical, physical, length, uninit), in blocks.
func debugfsExtents(_ s: ServedImage, _ path: String) throws -> [(UInt64, UInt64, UInt64, Bool)] {
    let out = try s.debugfs("ex \(path)")
    var leaves: [(UInt64, UInt64, UInt64, Bool)] = []
    var maxLevel = 0
    var rows: [(Int, [String], Bool)] = []
    for line in out.split(separator: "\n") {
        let t = line.replacingOccurrences(of: "/", with: " / ").replacingOccurrences(of: "-", with: " - ")
        let f = t.split(separator: " ").map(String.init)
        // level / max entry / count logical - logical physical - physical length [Uninit]
        guard f.count >= 13, let level = Int(f[0]), f[1] == "/", let depth = Int(f[2]) else { continue }
        maxLevel = depth
        rows.append((level, f, line.contains("Uninit")))
    }
    for (level, f, uninit) in rows where level == maxLevel {
        guard let l = UInt64(f[6]), let p = UInt64(f[9]), let n = UInt64(f[12]) else { continue }
        leaves.append((l, p, n, uninit))
    }
    return leaves
}
