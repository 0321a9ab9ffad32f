// Helpers for the iomap write tests: a read-write test kernel on an image, a
// model of the expected file contents, e2fsck, reading files back with
// debugfs, and kernel loop mounts that are always undone.

import Ext4Engine
import Ext4Fuse
import Ext4Server
import Foundation
import FuseKernel
import Glibc
import Testing

func rwKernel(_ image: String, cache: Bool = true, real: Bool = false) throws -> IomapKernel {
    var o = ServerOptions()
    o.readOnly = false
    o.iomapCache = cache
    let k = real ? try IomapKernel(realServer: image, mountOptions: "rw,iomap_cache=\(cache ? 1 : 0)")
        : try IomapKernel(image: image, options: o)
    // The real server's engine is in its own process; the read-only one here
    // does not see its writes, so cache hits are not cross-checked.
    if real { k.verifyCache = false }
    try k.initialize()
    guard k.iomap else { throw CommandFailed(description: "iomap was not negotiated") }
    return k
}

/// An image of `cfg` made from an empty tree in `dir`; returns its path.
func emptyImage(_ dir: TempDir, _ cfg: FsConfig) throws -> String {
    let tree = dir.sub("tree"), image = dir.sub("image")
    try FileManager.default.createDirectory(atPath: tree, withIntermediateDirectories: true)
    try makeImage(image, tree: tree, type: cfg.type, args: ["-b", "\(cfg.blockSize)"] + cfg.args)
    return image
}

/// `e2fsck -fn`: must find nothing.
func fsckClean(_ image: String) throws {
    _ = try run("/usr/sbin/e2fsck", ["-fn", image])
}

/// A file's bytes as e2fsprogs reads them from the image.
func debugfsRead(_ image: String, _ path: String, tmp: TempDir) throws -> [UInt8] {
    let out = tmp.sub("dump-\(UUID().uuidString)")
    defer { try? FileManager.default.removeItem(atPath: out) }
    _ = try run("/usr/sbin/debugfs", ["-R", "dump -p /\(path) \(out)", image])
    guard FileManager.default.fileExists(atPath: out) else { throw CommandFailed(description: "debugfs: no /\(path)") }
    return try readWhole(out)
}

/// What the files should contain.
struct Model {
    var files: [String: [UInt8]] = [:]

    mutating func write(_ p: String, _ off: UInt64, _ d: [UInt8]) {
        var f = files[p] ?? []
        let end = Int(off) + d.count
        if f.count < end { f += [UInt8](repeating: 0, count: end - f.count) }
        f.replaceSubrange(Int(off)..<end, with: d)
        files[p] = f
    }

    mutating func truncate(_ p: String, _ n: UInt64) {
        var f = files[p] ?? []
        if f.count > Int(n) { f.removeSubrange(Int(n)...) } else { f += [UInt8](repeating: 0, count: Int(n) - f.count) }
        files[p] = f
    }

    /// Zero [off, off+len) inside the file; extend when `extend`.
    mutating func zero(_ p: String, _ off: UInt64, _ len: UInt64, extend: Bool) {
        var f = files[p] ?? []
        let end = Int(off + len)
        if extend && f.count < end { f += [UInt8](repeating: 0, count: end - f.count) }
        let s = min(Int(off), f.count), e = min(end, f.count)
        if s < e { f.replaceSubrange(s..<e, with: repeatElement(0, count: e - s)) }
        files[p] = f
    }
}

/// A kernel mount of an image on a fresh directory (`mount -o loop`, so the
/// loop device is released by umount). `close()` is idempotent; deinit calls
/// it, so a failing test never leaves the mount behind.
final class LoopMount {
    let dir: String
    private var mounted = false
    init(image: String, at dir: String, options: String) throws {
        self.dir = dir
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try run("/usr/bin/mount", ["-o", "loop," + options, image, dir])
        mounted = true
    }
    func close() {
        guard mounted else { return }
        mounted = false
        if (try? run("/usr/bin/umount", [dir])) == nil {
            _ = try? run("/usr/bin/umount", ["-l", dir])
        }
    }
    deinit { close() }
}

var isRoot: Bool { geteuid() == 0 }

/// Names, types, modes, sizes and bytes of every entry under `root` (lost+found skipped).
func treeSnapshot(_ root: String) throws -> [String: (mode: UInt32, bytes: [UInt8])] {
    var out: [String: (UInt32, [UInt8])] = [:]
    func walk(_ rel: String) throws {
        let full = rel.isEmpty ? root : root + "/" + rel
        for name in try FileManager.default.contentsOfDirectory(atPath: full).sorted() {
            if rel.isEmpty && name == "lost+found" { continue }
            let r = rel.isEmpty ? name : rel + "/" + name
            var st = stat()
            guard lstat(root + "/" + r, &st) == 0 else { throw FuseFailure(errno: errno) }
            if st.st_mode & S_IFMT == S_IFDIR {
                out[r + "/"] = (st.st_mode, [])
                try walk(r)
            } else {
                out[r] = (st.st_mode, try readWhole(root + "/" + r))
            }
        }
    }
    try walk("")
    return out
}
