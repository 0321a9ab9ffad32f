import Ext4Engine
import Foundation
import Glibc
@_exported import TestSupport

let longTarget = String(repeating: "long/path/component/", count: 10) + "end"
let manyCount = 3000

func manyName(_ i: Int) -> String {
    // Include non-ASCII bytes so signed/unsigned hash variants differ.
    i % 7 == 0 ? "é-entry-\(i)-ß" : "entry-number-\(i)"
}

/// Build the reference source tree that mkfs -d copies.
func buildTree(_ root: String, big: Bool = true, trailingHole: Bool = true) throws {
    let fm = FileManager.default
    try fm.createDirectory(atPath: root, withIntermediateDirectories: true)
    try writeFile(root + "/empty", [])
    try writeFile(root + "/small.txt", Array("hello world\n".utf8))
    try writeFile(root + "/multi.bin", pattern(100_000, seed: 1))
    try writeFile(root + "/tiny40", pattern(40, seed: 9))
    // Sparse file: holes around two data islands.
    try writeFile(root + "/sparse.bin", [])
    if trailingHole { truncate(root + "/sparse.bin", 10 << 20) }
    writeAt(root + "/sparse.bin", 1 << 20, pattern(5000, seed: 2))
    writeAt(root + "/sparse.bin", 7 << 20 + 123, pattern(9000, seed: 3))
    if big { try writeFile(root + "/big.bin", pattern(20 << 20, seed: 4)) }
    // Many small data islands: more extents than fit in the inode (extent tree depth >= 1).
    try writeFile(root + "/frag.bin", [])
    for i in 0..<200 { writeAt(root + "/frag.bin", i * 65536, pattern(100, seed: UInt32(100 + i))) }
    try fm.createDirectory(atPath: root + "/sub/dir", withIntermediateDirectories: true)
    try writeFile(root + "/sub/dir/nested.txt", Array("nested file\n".utf8))
    try fm.createDirectory(atPath: root + "/emptydir", withIntermediateDirectories: true)
    symlink("small.txt", root + "/link_short")
    symlink(longTarget, root + "/link_long")
    link(root + "/small.txt", root + "/hard")
    mkfifo(root + "/fifo", 0o644)
    try fm.createDirectory(atPath: root + "/many", withIntermediateDirectories: true)
    for i in 0..<manyCount {
        try writeFile(root + "/many/" + manyName(i), i % 100 == 0 ? Array("\(i)".utf8) : [])
    }
    try run("/usr/bin/setfattr", ["-n", "user.test", "-v", "hello", root + "/small.txt"])
    try run("/usr/bin/setfattr", ["-n", "user.second", "-v", "0x0001ff", root + "/small.txt"])
    try run("/usr/bin/setfattr", ["-n", "user.big", "-v", String(repeating: "x", count: 500), root + "/multi.bin"])
    try run("/usr/bin/setfattr", ["-n", "user.dir", "-v", "on-a-dir", root + "/sub"])
    try run("/usr/bin/setfacl", ["-m", "u:1234:rw,g:99:r", root + "/multi.bin"])
    try run("/usr/bin/setfacl", ["-d", "-m", "u:4321:rx", root + "/sub"])
    chmod(root + "/small.txt", 0o640)
}

func mkfs(_ image: String, tree: String?, args: [String], sizeMB: Int = 64) throws {
    var a = ["-q", "-F"] + args
    if let tree { a += ["-d", tree] }
    a += [image, "\(sizeMB)M"]
    try run("/usr/sbin/mkfs.ext4", a)
}

func openImage(_ path: String, _ opts: MountOptions = MountOptions()) throws -> Ext4FileSystem {
    let dev = try FileBlockDevice(path: path, readOnly: true)
    return try Ext4FileSystem.open(device: dev, options: opts)
}

func resolve(_ fs: Ext4FileSystem, _ path: String) throws -> UInt32 {
    var ino = Ext4FileSystem.rootIno
    for c in path.split(separator: "/") {
        ino = try fs.lookup(dir: ino, name: Array(c.utf8))
    }
    return ino
}

func listDir(_ fs: Ext4FileSystem, _ ino: UInt32) throws -> [DirEntry] {
    var out: [DirEntry] = []
    try fs.readDirectory(ino, from: 0) { out.append($0); return true }
    return out
}

struct WalkResult {
    var files = 0, dirs = 0, errors = 0, bytes = 0
}

/// Walk everything reachable from the root, exercising every read API.
/// Never throws on engine errors: counts them.
func walkAll(_ fs: Ext4FileSystem, deadline: Date, maxDepth: Int = 64) -> WalkResult {
    var r = WalkResult()
    var visited = Set<UInt32>()
    var stack: [(UInt32, Int)] = [(Ext4FileSystem.rootIno, 0)]
    _ = fs.statfs()
    while let (dir, depth) = stack.popLast() {
        if Date() > deadline { break }
        guard visited.insert(dir).inserted, depth <= maxDepth else { continue }
        r.dirs += 1
        var entries: [DirEntry] = []
        do {
            try fs.readDirectory(dir, from: 0) { e in entries.append(e); return entries.count < 100_000 }
        } catch { r.errors += 1 }
        for e in entries {
            if Date() > deadline { break }
            if e.name == [0x2E] || e.name == [0x2E, 0x2E] { continue }
            _ = try? fs.lookup(dir: dir, name: e.name)
            guard let ino = try? fs.inode(e.ino) else { r.errors += 1; continue }
            _ = try? fs.inodeFlags(e.ino)
            if let names = try? fs.listxattr(e.ino) {
                for n in names { _ = try? fs.getxattr(e.ino, name: n) }
            }
            _ = try? fs.mappings(e.ino, fromBlock: 0, maxBlocks: UInt64.max)
            switch ino.fileType {
            case .directory:
                stack.append((e.ino, depth + 1))
            case .symlink:
                if (try? fs.readlink(e.ino)) == nil { r.errors += 1 }
            case .regular:
                r.files += 1
                if visited.contains(e.ino) { continue }
                var off: UInt64 = 0
                while off < ino.size && off < 64 << 20 {
                    guard let d = try? fs.read(e.ino, offset: off, count: 1 << 20) else { r.errors += 1; break }
                    if d.isEmpty { break }
                    r.bytes += d.count
                    off += UInt64(d.count)
                }
            default: break
            }
        }
    }
    return r
}
