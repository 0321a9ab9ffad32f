// Seeded randomized differential test of the iomap write path: one random
// sequence of create / buffered and direct writes / truncate / punch /
// zero-range / unlink / rename runs through the test kernel against our
// server on one image, and through the kernel's own ext4 on a loop-mounted
// copy of the same image. Afterwards both images must be clean for e2fsck and
// hold the same trees (names, modes, sizes, bytes), read by the kernel's ext4
// from read-only loop mounts. On a failure the seed and the op list are printed.

import Ext4Engine
import Ext4Fuse
import Ext4Server
import Foundation
import FuseKernel
import Glibc
import Testing

enum DiffOp: CustomStringConvertible {
    case create(String)
    case write(String, UInt64, Int, seed: UInt32, direct: Bool)
    case truncate(String, UInt64)
    case fallocate(String, mode: UInt32, UInt64, UInt64)
    case unlink(String)
    case rename(String, String)
    case fsync(String)

    var description: String {
        switch self {
        case .create(let p): return "create \(p)"
        case .write(let p, let o, let n, let s, let d): return "\(d ? "dwrite" : "write") \(p) \(o)+\(n) seed \(s)"
        case .truncate(let p, let n): return "truncate \(p) \(n)"
        case .fallocate(let p, let m, let o, let n): return "fallocate \(p) mode 0x\(String(m, radix: 16)) \(o)+\(n)"
        case .unlink(let p): return "unlink \(p)"
        case .rename(let a, let b): return "rename \(a) \(b)"
        case .fsync(let p): return "fsync \(p)"
        }
    }
}

/// The op sequence for a seed: only valid names are used, sizes stay small.
func diffOps(seed: UInt64, count: Int, blockSize: UInt64) -> [DiffOp] {
    var rng = SplitMix(seed: seed)
    var files: [String: UInt64] = [:]  // name -> size (approximate is fine for choosing offsets)
    var next = 0
    var ops: [DiffOp] = []
    let dirs = ["", "d/"]
    func pick() -> String? {
        let names = files.keys.sorted()
        return names.isEmpty ? nil : names[Int(rng.below(UInt64(names.count)))]
    }
    for _ in 0..<count {
        let r = rng.below(100)
        if files.isEmpty || r < 8 || (files.count < 4 && r < 20) {
            let name = dirs[Int(rng.below(2))] + "f\(next)"
            next += 1
            files[name] = 0
            ops.append(.create(name))
            continue
        }
        guard let f = pick(), let size = files[f] else { continue }
        switch r {
        case 8..<45:
            let off = rng.below(size + 200_000)
            let n = Int(rng.below(rng.below(4) == 0 ? 600_000 : 20_000)) + 1
            ops.append(.write(f, off, n, seed: UInt32(truncatingIfNeeded: rng.next()), direct: false))
            files[f] = max(size, off + UInt64(n))
        case 45..<62:
            let blocks = rng.below(64) + 1
            let off = rng.below((size + 300_000) / blockSize + 1) * blockSize
            ops.append(.write(f, off, Int(blocks * blockSize), seed: UInt32(truncatingIfNeeded: rng.next()), direct: true))
            files[f] = max(size, off + blocks * blockSize)
        case 62..<72:
            let n = rng.below(size * 2 + 10_000)
            ops.append(.truncate(f, n))
            files[f] = n
        case 72..<80:
            let off = rng.below(size + 1), n = rng.below(300_000) + 1
            ops.append(.fallocate(f, mode: 3, off, n))
        case 80..<87:
            let off = rng.below(size + 50_000), n = rng.below(300_000) + 1
            let keep = rng.below(2) == 0
            ops.append(.fallocate(f, mode: keep ? 0x11 : 0x10, off, n))
            if !keep { files[f] = max(size, off + n) }
        case 87..<91:
            ops.append(.unlink(f))
            files[f] = nil
        case 91..<95:
            let to: String
            if rng.below(2) == 0, let other = pick(), other != f { to = other } else {
                to = dirs[Int(rng.below(2))] + "f\(next)"
                next += 1
            }
            ops.append(.rename(f, to))
            files[to] = files[f]
            files[f] = nil
        default:
            ops.append(.fsync(f))
        }
    }
    return ops
}

/// Run one op on the kernel's ext4 mounted at `root`; the errno (0 on success).
func kernelApply(_ op: DiffOp, root: String) -> Int32 {
    func openFile(_ p: String, _ flags: Int32) -> Int32 { open(root + "/" + p, flags | O_CLOEXEC, 0o644) }
    func result(_ r: Int) -> Int32 { r < 0 ? errno : 0 }
    switch op {
    case .create(let p):
        let fd = openFile(p, O_CREAT | O_EXCL | O_RDWR)
        if fd < 0 { return errno }
        close(fd); return 0
    case .write(let p, let off, let n, let seed, let direct):
        let fd = openFile(p, O_RDWR | (direct ? oDirect : 0))
        if fd < 0 { return errno }
        defer { close(fd) }
        let data = pattern(n, seed: seed)
        guard let buf = aligned(n) else { return ENOMEM }
        defer { free(buf) }
        data.withUnsafeBytes { if let src = $0.baseAddress { buf.copyMemory(from: src, byteCount: n) } }
        var done = 0
        while done < n {
            let w = pwrite(fd, buf + done, n - done, off_t(off) + off_t(done))
            if w < 0 { return errno }
            done += w
        }
        return 0
    case .truncate(let p, let n):
        return result(Int(Glibc.truncate(root + "/" + p, off_t(n))))
    case .fallocate(let p, let mode, let off, let n):
        let fd = openFile(p, O_RDWR)
        if fd < 0 { return errno }
        defer { close(fd) }
        guard let f = fallocateFn else { return ENOSYS }
        return result(Int(f(fd, Int32(mode), off_t(off), off_t(n))))
    case .unlink(let p):
        return result(Int(Glibc.unlink(root + "/" + p)))
    case .rename(let a, let b):
        return result(Int(Glibc.rename(root + "/" + a, root + "/" + b)))
    case .fsync(let p):
        let fd = openFile(p, O_RDWR)
        if fd < 0 { return errno }
        defer { close(fd) }
        return result(Int(Glibc.fsync(fd)))
    }
}

/// O_DIRECT (x86_64 and arm64 differ; Glibc does not export it to Swift).
#if arch(arm64)
let oDirect: Int32 = 0o200000
#else
let oDirect: Int32 = 0o40000
#endif

/// glibc's fallocate(2) wrapper, which the Glibc module does not export.
let fallocateFn: (@convention(c) (Int32, Int32, off_t, off_t) -> Int32)? = {
    guard let h = dlopen(nil, RTLD_NOW), let sym = dlsym(h, "fallocate") else { return nil }
    return unsafeBitCast(sym, to: (@convention(c) (Int32, Int32, off_t, off_t) -> Int32).self)
}()

private func aligned(_ n: Int) -> UnsafeMutableRawPointer? {
    var p: UnsafeMutableRawPointer? = nil
    guard posix_memalign(&p, 4096, max(n, 4096)) == 0 else { return nil }
    return p
}

/// The same op through the test kernel; the errno (0 on success).
func testKernelApply(_ op: DiffOp, _ k: IomapKernel) throws -> Int32 {
    do {
        switch op {
        case .create(let p): _ = try k.create(p)
        case .write(let p, let off, let n, let seed, let direct):
            let e = try k.lookup(p)
            if direct { try k.directWrite(e, offset: off, pattern(n, seed: seed)) }
            else { try k.bufferedWrite(e, offset: off, pattern(n, seed: seed)) }
        case .truncate(let p, let n): try k.truncate(try k.lookup(p), to: n)
        case .fallocate(let p, let mode, let off, let n):
            try k.fallocate(try k.lookup(p), mode: mode, offset: off, length: n)
        case .unlink(let p): try k.unlink(p)
        case .rename(let a, let b): try k.rename(a, b)
        case .fsync(let p): try k.fsync(try k.lookup(p))
        }
        return 0
    } catch let f as FuseFailure {
        return f.errno
    }
}

@Suite(.serialized) struct IomapDifferential {
    @Test(arguments: FsConfig.all, [1, 2, 3] as [UInt64])
    func againstKernelExt4(_ cfg: FsConfig, seed: UInt64) throws {
        guard isRoot else { print("skipped: needs root for loop mounts"); return }
        let dir = try TempDir()
        let tree = dir.sub("tree"), ours = dir.sub("ours.img"), theirs = dir.sub("kernel.img")
        try FileManager.default.createDirectory(atPath: tree + "/d", withIntermediateDirectories: true)
        try writeFile(tree + "/seed.bin", pattern(300_000, seed: 1))
        try makeImage(ours, tree: tree, type: cfg.type, args: ["-b", "\(cfg.blockSize)"] + cfg.args, sizeMB: 96)
        try FileManager.default.copyItem(atPath: ours, toPath: theirs)
        let ops = [DiffOp.write("seed.bin", 100, 5000, seed: 7, direct: false)]
            + diffOps(seed: seed &* 7919 &+ UInt64(cfg.blockSize), count: 200, blockSize: UInt64(cfg.blockSize))
        var log: [String] = []
        func fail(_ what: String) {
            let list = log.joined(separator: "\n")
            Issue.record(Comment(rawValue: "\(cfg) seed \(seed): \(what)\nops:\n\(list)"))
        }

        // The reference: the kernel's ext4.
        var kernelResults: [Int32] = []
        do {
            let m = try LoopMount(image: theirs, at: dir.sub("mnt-kernel"), options: "rw")
            defer { m.close() }
            for op in ops { kernelResults.append(kernelApply(op, root: m.dir)) }
        }
        // Ours, through the test kernel.
        do {
            let k = try rwKernel(ours)
            var finished = false
            defer { if !finished { _ = k.finish() } }
            for (i, op) in ops.enumerated() {
                log.append("\(i): \(op) -> kernel ext4 errno \(kernelResults[i])")
                let r: Int32
                do { r = try testKernelApply(op, k) } catch {
                    fail("op \(i) \(op): \(error)")
                    return
                }
                if r != kernelResults[i] {
                    fail("op \(i) \(op): errno \(r) here, \(kernelResults[i]) on the kernel's ext4")
                    return
                }
            }
            try k.unmount()
            finished = true
            #expect(k.finish())
        }
        do { try fsckClean(ours) } catch { fail("e2fsck of our image: \(error)") }
        do { try fsckClean(theirs) } catch { fail("e2fsck of the kernel's image: \(error)") }
        let m1 = try LoopMount(image: ours, at: dir.sub("ro-ours"), options: "ro")
        defer { m1.close() }
        let m2 = try LoopMount(image: theirs, at: dir.sub("ro-kernel"), options: "ro")
        defer { m2.close() }
        let a = try treeSnapshot(m1.dir), b = try treeSnapshot(m2.dir)
        let errs = kernelResults.filter { $0 != 0 }.count
        print("differential \(cfg) seed \(seed): \(ops.count) ops (\(errs) failing alike), \(a.count) entries, "
              + "\(a.values.reduce(0) { $0 + $1.bytes.count }) bytes compared")
        if Set(a.keys) != Set(b.keys) {
            fail("names differ: ours only \(Set(a.keys).subtracting(b.keys).sorted()), kernel only \(Set(b.keys).subtracting(a.keys).sorted())")
            return
        }
        for name in a.keys.sorted() {
            guard let x = a[name], let y = b[name] else { continue }
            if x.mode != y.mode { fail("\(name): mode \(String(x.mode, radix: 8)) vs \(String(y.mode, radix: 8))") }
            if x.bytes.count != y.bytes.count { fail("\(name): size \(x.bytes.count) vs \(y.bytes.count)") }
            else if x.bytes != y.bytes {
                let at = zip(x.bytes, y.bytes).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? -1
                fail("\(name): bytes differ first at \(at)")
            }
        }
    }
}
