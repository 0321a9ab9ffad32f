// Ext4FuseFS driven through a socket test kernel, on images built at test time,
// checked against e2fsprogs' own view of the same image (debugfs) and, when
// running as root, against the kernel's ext4 on a loop mount of the same image.

import CShim
import Ext4Engine
import Ext4Fuse
import Ext4Server
import Foundation
import FuseKernel
import Glibc
import Testing

let fiemapCmd: UInt32 = 0xC020_660B
let getflagsCmd: UInt32 = 0x8008_6601
let fsgetxattrCmd: UInt32 = 0x801C_581F
/// EXT4_FL_USER_VISIBLE: what FS_IOC_GETFLAGS reports of i_flags.
let userVisibleFlags: UInt32 = 0x705B_DFFF

extension ServedImage {
    func ioctl(_ node: UInt64, cmd: UInt32, input: [UInt8] = [], outSize: UInt32) throws -> (error: Int32, out: [UInt8]) {
        let (e, p) = try kernel.call(.ioctl(FuseIoctlIn(fh: 0, flags: 0, cmd: cmd, arg: 0, inSize: UInt32(input.count),
                                                        outSize: outSize), input: input), node: node)
        guard e == 0 else { return (e, []) }
        let head = try FuseIoctlOut.decode(Array(p.prefix(16)))
        return (head.result < 0 ? head.result : 0, Array(p.dropFirst(16)))
    }

    /// The default length is not FIEMAP_MAX_OFFSET (~0, what filefrag sends): that one is
    /// checked separately, in a child process (see fiemapWithMaxLength).
    func fiemap(_ path: String, count: UInt32 = 1024, start: UInt64 = 0, length: UInt64 = 1 << 62) throws -> (error: Int32, mapped: UInt32, extents: [FiemapExtent]) {
        let n = try node(path)
        let (e, out) = try ioctl(n, cmd: fiemapCmd, input: fiemapRequest(start: start, length: length, count: count),
                                 outSize: 32 + 56 * count)
        let r = parseFiemap(out)
        return (e, r.mapped, r.extents)
    }

    func open(_ n: UInt64) throws {
        let (e, _) = try kernel.call(.open(FuseOpenIn(flags: UInt32(O_RDONLY))), node: n)
        guard e == 0 else { throw FuseError(-e) }
    }

    func readAll(_ path: String, size: Int) throws -> [UInt8] {
        let n = try node(path)
        try open(n)
        var out: [UInt8] = []
        while out.count < size + 1 {
            let (e, p) = try kernel.call(.read(FuseReadIn(fh: 0, offset: UInt64(out.count), size: 1 << 17)), node: n)
            guard e == 0 else { throw FuseError(-e) }
            if p.isEmpty { break }
            out += p
        }
        return out
    }

    func lseek(_ n: UInt64, _ off: UInt64, whence: UInt32) throws -> (error: Int32, offset: UInt64) {
        let (e, p) = try kernel.call(.lseek(FuseLseekIn(fh: 0, offset: off, whence: whence)), node: n)
        guard e == 0 else { return (e, 0) }
        return (0, try FuseLseekOut.decode(p).offset)
    }

    func attr(_ n: UInt64) throws -> FuseAttr {
        let (e, p) = try kernel.call(.getattr(FuseGetattrIn()), node: n)
        guard e == 0 else { throw FuseError(-e) }
        return try FuseAttrOut.decode(p).attr
    }
}

/// debugfs "stat" fields.
func debugfsFlags(_ s: ServedImage, _ path: String) throws -> UInt32 {
    let out = try s.debugfs("stat \(path)")
    guard let r = out.range(of: "Flags: 0x") else { throw ToolError(description: "no flags for \(path): \(out)") }
    let hex = out[r.upperBound...].prefix { $0.isHexDigit }
    return UInt32(hex, radix: 16) ?? 0
}

@Suite(.serialized, .enabled(if: haveE2fsprogs, "needs mkfs.ext4 and debugfs"))
struct Ext4ServerTests {

    // MARK: FIEMAP against debugfs

    static func fiemapImage(blockSize: Int) throws -> ServedImage {
        try ServedImage(mkfs: ["-b", "\(blockSize)"], size: "128M") { d in
            try d.write("tree/small", pattern(100, seed: 1))
            try d.write("tree/empty", [])
            try d.write("tree/big", bulk(40 << 20, seed: 2))  // more than one extent at 1 KiB
            try d.sparse("tree/islands", pieces: (0..<400).map { (offset: $0 * 2 * blockSize * 2, length: blockSize) },
                         size: 400 * 4 * blockSize)  // 400 extents: an extent tree of depth 1 or 2
            try d.sparse("tree/holes", pieces: [(1 << 20, 3 * blockSize), (5 << 20, 10000)], size: 8 << 20)
            try d.sparse("tree/allhole", pieces: [], size: 3 << 20)
        }
    }

    func checkFiemap(_ s: ServedImage, _ path: String) throws {
        let truth = try debugfsExtents(s, path)
        let bs = UInt64(s.blockSize)
        let r = try s.fiemap(path)
        #expect(r.error == 0, "\(path): FIEMAP error \(r.error)")
        let want = truth.enumerated().map { i, t in
            FiemapExtent(logical: t.0 * bs, physical: t.1 * bs, length: t.2 * bs,
                         flags: (t.3 ? 0x800 : 0) | (i == truth.count - 1 ? 0x1 : 0))
        }
        #expect(r.extents == want, "\(path): FIEMAP \(r.extents.prefix(8)) vs debugfs \(want.prefix(8))")
        #expect(r.mapped == UInt32(want.count))
        // fm_extent_count 0: only the number of extents.
        let c = try s.fiemap(path, count: 0)
        #expect(c.error == 0 && c.mapped == UInt32(want.count) && c.extents.isEmpty, "\(path): count-only query gave \(c.mapped)")
        // A window inside an extent: the kernel's ext4 (iomap) answers with the window,
        // block-aligned, not the whole extent, and flags the last record it emits LAST.
        if let mid = want.dropFirst(want.count / 2).first {
            let inner = mid.length > bs ? bs : 0
            let w = try s.fiemap(path, start: mid.logical + inner + 5, length: 1)
            let expect = FiemapExtent(logical: mid.logical + inner, physical: mid.physical + inner, length: bs, flags: mid.flags | 0x1)
            #expect(w.extents == [expect], "\(path): window at \(mid.logical + inner + 5) gave \(w.extents), want [\(expect)]")
        }
        // Too little room: fm_mapped_extents is what was copied.
        if want.count > 3 {
            let t = try s.fiemap(path, count: 3)
            #expect(t.mapped == 3 && Array(t.extents) == Array(want.prefix(3)), "\(path): 3-slot query gave \(t.mapped)")
        }
    }

    @Test(arguments: [1024, 4096])
    func fiemapMatchesDebugfs(blockSize: Int) throws {
        let s = try Self.fiemapImage(blockSize: blockSize)
        for p in ["small", "empty", "big", "islands", "holes", "allhole"] { try checkFiemap(s, p) }
    }

    /// filefrag and every other FIEMAP user ask for fm_start 0, fm_length ~0
    /// (FIEMAP_MAX_OFFSET). The server must answer, not trap; run in a child process
    /// so that a crash fails this test only.
    @Test func fiemapWithMaxLength() async throws {
        // The child's image lives in our scratch directory, removed even if the child crashes.
        let parent = try Scratch()
        setenv("EXT4SERVER_TEST_TMPDIR", parent.path, 1)
        defer { unsetenv("EXT4SERVER_TEST_TMPDIR") }
        await #expect(processExitsWith: .success, "FIEMAP with fm_length = ~0 must not crash the server") {
            let s = try Self.fiemapImage(blockSize: 4096)
            for (path, start) in [("big", UInt64(0)), ("holes", UInt64(0)), ("small", UInt64(0)), ("big", UInt64(4096))] {
                let r = try s.fiemap(path, start: start, length: .max)
                guard r.error == 0, !r.extents.isEmpty, r.extents.last?.flags ?? 0 & 1 == 1 else { exit(3) }
            }
        }
    }

    // MARK: FIEMAP against the kernel's ext4 (root)

    @Test(.enabled(if: isRoot, "mounts a loop device"))
    func fiemapMatchesKernel() throws {
        for (mkfs, files) in [(["-b", "1024"], ["small", "big", "islands", "holes", "allhole", "empty"]),
                              (["-b", "4096", "-O", "inline_data"], ["tiny", "small", "empty"]),
                              (["-t", "ext2", "-b", "1024"], ["small", "big", "holes"])] {
            let s = try ServedImage(mkfs: mkfs, size: "128M") { d in
                try d.write("tree/tiny", pattern(40, seed: 9))
                try d.write("tree/small", pattern(100, seed: 1))
                try d.write("tree/empty", [])
                try d.write("tree/big", bulk(12 << 20, seed: 2))
                try d.sparse("tree/islands", pieces: (0..<300).map { (offset: $0 * 8192, length: 1024) }, size: 300 * 8192)
                try d.sparse("tree/holes", pieces: [(1 << 20, 5000), (5 << 20, 10000)], size: 8 << 20)
                try d.sparse("tree/allhole", pieces: [], size: 3 << 20)
            }
            let mnt = s.dir.path + "/mnt"
            try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
            try tool(["mount", "-t", "ext4", "-o", "ro,loop", s.image, mnt])
            defer {
                _ = try? tool(["umount", mnt], allowFailure: true)
                // Only this image's loop device (autoclear normally releases it already).
                let loops = (try? tool(["losetup", "-j", s.image], allowFailure: true)) ?? ""
                for l in loops.split(separator: "\n") {
                    if let dev = l.split(separator: ":").first { _ = try? tool(["losetup", "-d", String(dev)], allowFailure: true) }
                }
            }
            for f in files {
                let fd = Glibc.open(mnt + "/" + f, O_RDONLY)
                #expect(fd >= 0)
                defer { close(fd) }
                var buf = fiemapRequest(count: 1024) + [UInt8](repeating: 0, count: 56 * 1024)
                let rc = buf.withUnsafeMutableBytes { cshim_ioctl_ptr(fd, UInt(fiemapCmd), $0.baseAddress) }
                #expect(rc == 0, "kernel FIEMAP failed on \(f)")
                let kernel = parseFiemap(buf)
                let ours = try s.fiemap(f)
                #expect(ours.extents == kernel.extents,
                        "\(mkfs) \(f): served \(ours.extents.prefix(6)) kernel \(kernel.extents.prefix(6))")
                #expect(ours.mapped == kernel.mapped)
                // A window in the middle of the file.
                var st = stat()
                _ = fstat(fd, &st)
                let start = UInt64(st.st_size) / 3 + 7, length = UInt64(st.st_size) / 3 + 1
                var wbuf = fiemapRequest(start: start, length: length, count: 64) + [UInt8](repeating: 0, count: 56 * 64)
                _ = wbuf.withUnsafeMutableBytes { cshim_ioctl_ptr(fd, UInt(fiemapCmd), $0.baseAddress) }
                let kw = parseFiemap(wbuf)
                let ow = try s.fiemap(f, count: 64, start: start, length: length)
                #expect(ow.extents == kw.extents, "\(mkfs) \(f) window \(start)+\(length): served \(ow.extents.prefix(4)) kernel \(kw.extents.prefix(4))")
            }
        }
    }

    // MARK: BMAP

    @Test func bmapMatchesDebugfs() throws {
        let s = try ServedImage(mkfs: ["-t", "ext2", "-b", "1024"], size: "96M") { d in
            try d.write("tree/double", bulk(3 << 20, seed: 3))  // direct, single and double indirect
            try d.sparse("tree/holes", pieces: [(20 << 10, 4096), (300 << 10, 2048), (70 << 20, 1024)], size: 71 << 20)
        }
        let extents = try ServedImage(mkfs: ["-b", "4096"], size: "64M") { d in
            try d.write("tree/file", bulk(1 << 20, seed: 4))
            try d.sparse("tree/holes", pieces: [(1 << 20, 4096)], size: 2 << 20)
        }
        for (img, path, blocks) in [(s, "double", Array(0..<20) + [267, 268, 269, 1000, 3071, 3072, 3073]),
                                    (s, "holes", [0, 19, 20, 23, 24, 299, 300, 301, 302, 71679, 71680, 71681, 72703]),
                                    (extents, "file", [0, 1, 100, 255, 256]),
                                    (extents, "holes", [0, 255, 256, 257, 511])] {
            let n = try img.node(path)
            for b in blocks {
                let truth = UInt64(try img.debugfs("bmap \(path) \(b)").trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
                let (e, p) = try img.kernel.call(.bmap(FuseBmapIn(block: UInt64(b), blocksize: UInt32(img.blockSize))), node: n)
                #expect(e == 0, "\(path) block \(b): BMAP error \(e)")
                if e == 0 {
                    #expect(try FuseBmapOut.decode(p).block == truth, "\(path) block \(b): BMAP vs debugfs \(truth)")
                }
            }
        }
    }

    // MARK: flags, statx

    @Test func inodeFlagsAndStatx() throws {
        let crtimes: [(String, Int64, UInt32)] = [("plain", 1_400_000_000, 999_999_999), ("immutable", -123_456_789, 5),
                                                 ("append", 8_589_934_591, 314_159_265)]
        var cmds: [String] = []
        for (f, sec, nsec) in crtimes {
            let low = Int64(Int32(truncatingIfNeeded: sec))
            let epoch = UInt32(((sec - low) >> 32) & 3)
            cmds += ["sif /\(f) crtime @\(sec)", "sif /\(f) crtime_extra \(nsec << 2 | epoch)"]
        }
        cmds += ["sif /immutable flags 0x80010", "sif /append flags 0x80020", "sif /sync flags 0x80008",
                 "sif /nodump flags 0x80040", "sif /noatime flags 0x80080", "sif /dir flags 0x80010"]
        let s = try ServedImage(mkfs: ["-b", "4096"], debugfs: cmds) { d in
            for f in ["plain", "immutable", "append", "sync", "nodump", "noatime"] { try d.write("tree/\(f)", Array(f.utf8)) }
            try d.write("tree/dir/inside", [1])
        }
        let xflag: [String: UInt32] = ["plain": 0, "immutable": 0x8, "append": 0x10, "sync": 0x20, "nodump": 0x80,
                                       "noatime": 0x40, "dir": 0x8]
        for f in ["plain", "immutable", "append", "sync", "nodump", "noatime", "dir"] {
            let n = try s.node(f)
            let truth = try debugfsFlags(s, "/" + f)
            let g = try s.ioctl(n, cmd: getflagsCmd, outSize: 8)
            #expect(g.error == 0 && g.out.count >= 4, "\(f): FS_IOC_GETFLAGS error \(g.error)")
            if g.out.count >= 4 {
                #expect(UInt32(g.out.le(0, 4)) == truth & userVisibleFlags, "\(f): GETFLAGS vs debugfs 0x\(String(truth, radix: 16))")
            }
            let x = try s.ioctl(n, cmd: fsgetxattrCmd, outSize: 28)
            #expect(x.error == 0 && x.out.count >= 4, "\(f): FS_IOC_FSGETXATTR error \(x.error)")
            if x.out.count >= 4 { #expect(UInt32(x.out.le(0, 4)) == xflag[f], "\(f): fsx_xflags") }
            // STATX: attributes mirror the flags.
            let (e, p) = try s.kernel.call(.statx(FuseStatxIn(sxFlags: 0, sxMask: 0xFFF)), node: n)
            #expect(e == 0)
            let sx = try FuseStatxOut.decode(p).stat
            let wantAttrs: UInt64 = (truth & 0x10 != 0 ? 0x10 : 0) | (truth & 0x20 != 0 ? 0x20 : 0) | (truth & 0x40 != 0 ? 0x40 : 0)
            #expect(sx.attributes & 0x70 == wantAttrs, "\(f): statx attributes 0x\(String(sx.attributes, radix: 16))")
            #expect(sx.attributesMask & 0x70 == 0x70)
            if let c = crtimes.first(where: { $0.0 == f }) {
                #expect(sx.mask & 0x800 != 0, "\(f): STATX_BTIME missing")
                #expect(sx.btime.tvSec == c.1 && sx.btime.tvNsec == c.2, "\(f): btime \(sx.btime) vs \(c.1).\(c.2)")
            }
            let a = try s.attr(n)
            #expect(Int64(bitPattern: a.mtime) == sx.mtime.tvSec && a.mtimensec == sx.mtime.tvNsec)
        }
        // 128-byte inodes carry no creation time.
        let small = try ServedImage(mkfs: ["-b", "4096", "-I", "128"]) { d in try d.write("tree/f", [1]) }
        let (e, p) = try small.kernel.call(.statx(FuseStatxIn(sxMask: 0xFFF)), node: try small.node("f"))
        #expect(e == 0)
        #expect(try FuseStatxOut.decode(p).stat.mask & 0x800 == 0, "btime reported for a 128-byte inode")
    }

    // MARK: read-only

    @Test func modifyingRequestsAnswerEROFS() throws {
        let s = try ServedImage(mkfs: ["-b", "4096"]) { d in
            try d.write("tree/file", [1, 2, 3])
            try d.write("tree/dir/x", [])
        }
        let f = try s.node("file"), root = FuseABI.rootID
        let n: (String) -> [UInt8] = { Array($0.utf8) }
        let requests: [(String, FuseRequest, UInt64)] = [
            ("setattr", .setattr(FuseSetattrIn(valid: 1 << 0, mode: 0o777)), f),
            ("mkdir", .mkdir(FuseMkdirIn(mode: 0o755), name: n("new")), root),
            ("mknod", .mknod(FuseMknodIn(mode: UInt32(S_IFREG) | 0o644), name: n("new")), root),
            ("symlink", .symlink(name: n("new"), target: n("file")), root),
            ("unlink", .unlink(name: n("file")), root),
            ("rmdir", .rmdir(name: n("dir")), root),
            ("rename", .rename(newdir: root, flags: 0, oldName: n("file"), newName: n("moved")), root),
            ("rename2", .rename(newdir: root, flags: 1, oldName: n("file"), newName: n("moved")), root),
            ("link", .link(FuseLinkIn(oldnodeid: f), name: n("hard")), root),
            ("create", .create(FuseCreateIn(flags: UInt32(O_CREAT | O_WRONLY), mode: 0o644), name: n("new")), root),
            ("open for writing", .open(FuseOpenIn(flags: UInt32(O_WRONLY))), f),
            ("open O_RDWR", .open(FuseOpenIn(flags: UInt32(O_RDWR))), f),
            ("open O_TRUNC", .open(FuseOpenIn(flags: UInt32(O_RDONLY | O_TRUNC))), f),
            ("write", .write(FuseWriteIn(fh: 0, offset: 0, size: 3), data: [9, 9, 9]), f),
            ("setxattr", .setxattr(FuseSetxattrIn(size: 1), name: n("user.x"), value: [1]), f),
            ("removexattr", .removexattr(name: n("user.x")), f),
            ("fallocate", .fallocate(FuseFallocateIn(fh: 0, offset: 0, length: 4096)), f),
            ("tmpfile", .tmpfile(FuseCreateIn(flags: UInt32(O_RDWR), mode: 0o600), name: n("t")), root),
            ("copy_file_range", .copyFileRange(FuseCopyFileRangeIn(fhIn: 0, offIn: 0, nodeidOut: f, fhOut: 0, offOut: 0, len: 3), is64: false), f),
        ]
        for (what, req, node) in requests {
            let (e, _) = try s.kernel.call(req, node: node)
            #expect(e == -EROFS, "\(what): got \(e), want -EROFS")
        }
        // Nothing changed.
        #expect(try s.readAll("file", size: 3) == [1, 2, 3])
        #expect(try s.debugfs("ls -p /").contains("/file/"))
    }

    // MARK: lookup

    @Test func lookupOfMissingAndOverlongNames() throws {
        let s = try ServedImage(mkfs: ["-b", "4096"]) { d in
            try d.write("tree/present", [1])
            try d.write("tree/dir/inner", [2])
        }
        for (dir, name) in [(FuseABI.rootID, "absent"), (try s.node("dir"), "absent"), (FuseABI.rootID, "presen"),
                            (FuseABI.rootID, "present2"), (FuseABI.rootID, "PRESENT")] {
            let (e, p) = try s.kernel.call(.lookup(name: Array(name.utf8)), node: dir)
            if e == 0 {
                let entry = try FuseEntryOut.decode(p)
                #expect(entry.nodeid == 0, "\(name): a missing name resolved to node \(entry.nodeid)")
            } else {
                #expect(e == -ENOENT, "\(name): \(e)")
            }
        }
        let (e, _) = try s.kernel.call(.lookup(name: [UInt8](repeating: 0x61, count: 256)))
        #expect(e == -ENAMETOOLONG)
        // LOOKUP in a regular file.
        let (e2, _) = try s.kernel.call(.lookup(name: Array("x".utf8)), node: try s.node("present"))
        #expect(e2 == -ENOTDIR)
        // A found name: node id = inode number, attributes as debugfs has them.
        let n = try s.node("dir/inner")
        let ino = try s.debugfs("stat /dir/inner")
        #expect(ino.contains("Inode: \(n) "), "node id \(n) is not the inode number")
    }

    // MARK: READDIRPLUS

    struct PlusEntry { var name: String; var ino: UInt64; var off: UInt64; var type: UInt32; var entry: FuseEntryOut }

    func readdir(_ s: ServedImage, _ node: UInt64, plus: Bool, size: UInt32 = 4096) throws -> [PlusEntry] {
        let (oe, _) = try s.kernel.call(.opendir(FuseOpenIn()), node: node)
        #expect(oe == 0)
        var out: [PlusEntry] = []
        var off: UInt64 = 0
        for _ in 0..<100_000 {
            let r = FuseReadIn(fh: 0, offset: off, size: size)
            let (e, p) = try s.kernel.call(plus ? .readdirplus(r) : .readdir(r), node: node)
            guard e == 0 else { throw FuseError(-e) }
            if p.isEmpty { break }
            var at = 0
            while at < p.count {
                var entry = FuseEntryOut()
                if plus {
                    entry = try FuseEntryOut.decode(Array(p[at..<(at + 128)]))
                    at += 128
                }
                let ino = p.le(at, 8), next = p.le(at + 8, 8), nl = Int(p.le(at + 16, 4)), type = UInt32(p.le(at + 20, 4))
                let name = String(decoding: p[(at + 24)..<(at + 24 + nl)], as: UTF8.self)
                out.append(PlusEntry(name: name, ino: ino, off: next, type: type, entry: entry))
                at += (24 + nl + 7) & ~7
                off = next
            }
        }
        _ = try s.kernel.call(.releasedir(FuseReleaseIn()), node: node)
        return out
    }

    @Test func readdirplusEntries() throws {
        let s = try ServedImage(mkfs: ["-b", "1024"]) { d in
            for i in 0..<300 { try d.write("tree/dir/file-\(i)-\(String(repeating: "n", count: i % 37))", pattern(i * 13, seed: UInt64(i))) }
            try FileManager.default.createDirectory(atPath: d.path + "/tree/dir/sub", withIntermediateDirectories: true)
            try FileManager.default.createSymbolicLink(atPath: d.path + "/tree/dir/link", withDestinationPath: "file-1-n")
        }
        let dir = try s.node("dir")
        let plus = try readdir(s, dir, plus: true, size: 4096)
        let plain = try readdir(s, dir, plus: false, size: 1000)
        // debugfs ls -p: /ino/mode/uid/gid/name/size/
        var truth: [String: (ino: UInt64, mode: UInt32, size: UInt64)] = [:]
        for line in try s.debugfs("ls -p /dir").split(separator: "\n") {
            let f = line.split(separator: "/", omittingEmptySubsequences: false)
            guard f.count >= 7, let ino = UInt64(f[1]), let mode = UInt32(f[2], radix: 8) else { continue }
            truth[String(f[5])] = (ino, mode, UInt64(f[6]) ?? 0)
        }
        #expect(Set(plus.map(\.name)) == Set(truth.keys), "READDIRPLUS names differ from debugfs")
        #expect(Set(plain.map(\.name)) == Set(truth.keys), "READDIR names differ from debugfs")
        #expect(plus.count == truth.count && plain.count == truth.count, "duplicates: \(plus.count) \(plain.count) vs \(truth.count)")
        #expect(Set(plus.map(\.off)).count == plus.count, "offsets are not unique")
        for e in plus {
            guard let t = truth[e.name] else { continue }
            #expect(e.ino == t.ino, "\(e.name): d_ino \(e.ino) vs \(t.ino)")
            let wantType: UInt32 = (t.mode & 0o170000) >> 12
            #expect(e.type == wantType, "\(e.name): d_type \(e.type)")
            if e.name == "." || e.name == ".." {
                #expect(e.entry.nodeid == 0, "\(e.name) must not be instantiated")
                continue
            }
            #expect(e.entry.nodeid == t.ino && e.entry.attr.ino == t.ino, "\(e.name): entry node \(e.entry.nodeid)")
            #expect(e.entry.attr.mode == t.mode, "\(e.name): mode")
            if t.mode & 0o170000 == 0o100000 { #expect(e.entry.attr.size == t.size, "\(e.name): size") }
            #expect(e.entry.attr == (try s.attr(e.entry.nodeid)), "\(e.name): READDIRPLUS attr differs from GETATTR")
            #expect(e.entry.entryValid > 0 && e.entry.attrValid > 0)
        }
        // Resuming from every offset yields the rest, without repeats.
        if plain.count > 10 {
            let (_, p) = try s.kernel.call(.readdir(FuseReadIn(fh: 0, offset: plain[9].off, size: 1 << 16)), node: dir)
            #expect(p.count > 0)
            let firstName = String(decoding: p[24..<(24 + Int(p.le(16, 4)))], as: UTF8.self)
            #expect(firstName == plain[10].name, "resume at offset \(plain[9].off) gave \(firstName), want \(plain[10].name)")
        }
    }

    // MARK: READ and LSEEK

    @Test func readAndSeekMatchDebugfs() throws {
        let s = try ServedImage(mkfs: ["-b", "4096"]) { d in
            try d.write("tree/data", pattern(300_001, seed: 7))
            try d.sparse("tree/sparse", pieces: [(1 << 20, 4096), (3 << 20, 10000)], size: 6 << 20)
        }
        let dump = s.dir.path + "/dump"
        try tool(["debugfs", "-R", "dump /data \(dump)", s.image])
        #expect(try s.readAll("data", size: 300_001) == Array(try Data(contentsOf: URL(fileURLWithPath: dump))))
        let n = try s.node("sparse")
        let seekData: UInt32 = 3, seekHole: UInt32 = 4
        #expect(try s.lseek(n, 0, whence: seekData).offset == 1 << 20)
        #expect(try s.lseek(n, 0, whence: seekHole).offset == 0)
        #expect(try s.lseek(n, 1 << 20, whence: seekHole).offset == (1 << 20) + 4096)
        #expect(try s.lseek(n, (1 << 20) + 4096, whence: seekData).offset == 3 << 20)
        #expect(try s.lseek(n, 3 << 20, whence: seekHole).offset == (3 << 20) + 12288)
        #expect(try s.lseek(n, (3 << 20) + 12288, whence: seekData).error == -ENXIO)
        #expect(try s.lseek(n, (6 << 20) - 1, whence: seekHole).offset == (6 << 20) - 1)
        #expect(try s.lseek(n, 6 << 20, whence: seekHole).error == -ENXIO)
    }
}
