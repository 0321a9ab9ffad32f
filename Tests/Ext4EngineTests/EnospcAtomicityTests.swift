import Ext4Engine
import Foundation
import Testing

/// An operation that fails for want of space changes nothing: no block or
/// inode stays taken, no directory keeps half a change. (withHandle commits
/// and reruns an operation that met ENOSPC while uncommitted frees exist, so
/// a leftover would be committed.) fstests' generic/051 found an htree
/// directory with blocks its index did not reference after a rebuild that
/// ran out of space halfway, and leaked blocks beside it.
@Suite("write side: operations that run out of space leave nothing behind")
struct EnospcAtomicityTests {
    /// Names, directories, xattrs, links, renames, writes and punched holes on
    /// a file system kept full (`leave` blocks free after the fill); after
    /// every failed operation the free block and inode counts must be as
    /// before it, and e2fsck must find the file system clean at the end.
    @Test(arguments: [1, 6])
    func failedOperationsOnAFullFileSystemChangeNothing(_ leave: Int) throws {
        let tmp = try TempDir()
        let img = tmp.sub("fs.img")
        try mkfs(img, tree: nil, args: ["-t", "ext4", "-b", "1024", "-N", "4096", "-m", "0"], sizeMB: 8)
        let fs = try Ext4FileSystem.open(device: try FileBlockDevice(path: img, readOnly: false),
                                         options: MountOptions(readOnly: false, commitInterval: 3600))
        var rng = UInt64(leave) &* 0x9E37_79B9_7F4A_7C15 | 1
        func r(_ n: Int) -> Int {
            rng = rng &* 6364136223846793005 &+ 1442695040888963407
            return Int((rng >> 33) % UInt64(max(1, n)))
        }
        // Two directories with long names (they become htrees quickly).
        var dirs = [try fs.mkdir(parent: root, name: b("d"), dirMode).ino, try fs.mkdir(parent: root, name: b("e"), dirMode).ino]
        var names: [(dir: UInt32, name: [UInt8])] = []
        func longName(_ i: Int) -> [UInt8] { b(String(repeating: "n", count: 150 + r(100)) + "\(i)") }
        for i in 0..<60 {
            let n = longName(i)
            _ = try fs.mknod(parent: dirs[i % 2], name: n, fileMode)
            names.append((dirs[i % 2], n))
        }
        // Fill the file system up to `leave` free blocks.
        let big = try fs.mknod(parent: root, name: b("big"), fileMode)
        let chunk = [UInt8](repeating: 0xEE, count: 1024)
        var bigBlocks: UInt64 = 0
        while fs.statfs().bfree > UInt64(leave) {
            do { _ = try chunk.withUnsafeBytes { p in try fs.write(big.ino, offset: bigBlocks * 1024, data: p) } } catch { break }
            bigBlocks += 1
        }
        #expect(bigBlocks > 5000)
        var failures: [String: Int] = [:]
        var leaks: [String] = []
        for i in 0..<3000 {
            let dir = dirs[r(dirs.count)]
            let name = longName(1000 + i)
            let pick = r(names.count)
            let existing = names.isEmpty ? nil : names[pick]
            // A regular file among the names, resolved now (it may have been replaced).
            let file: UInt32? = existing.flatMap { e in
                guard let ino = try? fs.lookup(dir: e.dir, name: e.name), (try? fs.inode(ino))?.fileType == .regular else { return nil }
                return ino
            }
            let before = fs.statfs()
            let op = r(12)
            do {
                switch op {
                case 0, 1:
                    _ = try fs.mknod(parent: dir, name: name, fileMode); names.append((dir, name))
                case 2:
                    let d = try fs.mkdir(parent: dir, name: name, dirMode).ino
                    if dirs.count < 8 { dirs.append(d) }
                case 3:
                    _ = try fs.symlink(parent: dir, name: name, target: [UInt8](repeating: 0x61, count: 100 + r(900)), uid: 0, gid: 0)
                    names.append((dir, name))
                case 4:
                    guard let e = existing else { continue }
                    try fs.rename(parent: e.dir, name: e.name, newParent: dir, newName: name, flags: 0)
                    names[pick] = (dir, name)
                case 5:
                    guard let e = existing, let t = names.randomElement(), t.dir != e.dir || t.name != e.name else { continue }
                    try fs.rename(parent: e.dir, name: e.name, newParent: t.dir, newName: t.name, flags: 0)
                    names.remove(at: pick)
                case 6:
                    guard let f = file else { continue }
                    _ = try fs.link(f, parent: dir, name: name); names.append((dir, name))
                case 7:
                    guard let f = file else { continue }
                    try fs.setxattr(f, name: b("user.v\(r(4))"), value: [UInt8](repeating: UInt8(r(256)), count: 100 + r(900)), flags: 0)
                case 8:
                    guard let f = file else { continue }
                    _ = try chunk.withUnsafeBytes { p in try fs.write(f, offset: UInt64(r(64)) * 4096, data: p) }
                case 9:
                    _ = try fs.fallocate(big.ino, mode: 0x03, offset: UInt64(r(Int(bigBlocks))) * 1024, length: 1024)
                case 10:
                    guard let e = existing else { continue }
                    if (try? fs.inode(fs.lookup(dir: e.dir, name: e.name)))?.fileType == .directory { continue }
                    _ = try fs.unlink(parent: e.dir, name: e.name)
                    names.remove(at: pick)
                default:
                    _ = try chunk.withUnsafeBytes { p in try fs.write(big.ino, offset: UInt64(r(Int(bigBlocks))) * 1024 + 512, data: p) }
                }
            } catch {
                failures["\(error)", default: 0] += 1
                let after = fs.statfs()
                if after.bfree != before.bfree || after.ffree != before.ffree {
                    leaks.append("op \(i) (kind \(op)) failed with \(error): free blocks \(before.bfree) -> \(after.bfree), free inodes \(before.ffree) -> \(after.ffree)")
                }
            }
            if i % 500 == 499 { try fs.sync() }
        }
        #expect((failures["noSpace"] ?? 0) > 200, "the file system was not full: \(failures)")
        #expect(leaks.isEmpty, "\(leaks.count) failed operations changed the free counts:\n\(leaks.prefix(10).joined(separator: "\n"))")
        try fs.unmount()
        try fsckClean(img, "after operations failing on a full file system (leave \(leave))")
    }
}
