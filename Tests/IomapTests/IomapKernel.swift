// A test "kernel" for the iomap data path. It speaks FUSE to a real
// Ext4FuseFS over the socket transport, offers iomap at minor 99, owns the
// device fd the server registers with BACKING_OPEN, and does file IO from the
// server's mappings the way fs/iomap does: buffered reads through its own page
// cache, direct reads, FIEMAP and SEEK_DATA/SEEK_HOLE from REPORT mappings,
// and (IomapKernelWrite.swift) buffered writes and writeback, direct writes,
// truncate and fallocate. It keeps a mapping cache filled by UPSERT
// notifications and consults it before every BEGIN (§11.2). Every mapping is
// checked against the kernel's validation rules (fuse-iomap-protocol.md §10);
// any violation fails the test, and every cache hit is checked against the
// engine's map (a stale cached mapping fails the test too).

import Ext4Engine
import Ext4Fuse
import Ext4Server
import Foundation
import FuseKernel
import Glibc
import Logging

struct MappingRejected: Error, CustomStringConvertible {
    let description: String
}

struct FuseFailure: Error, CustomStringConvertible, Equatable {
    let errno: Int32
    var description: String { "errno \(errno) (\(String(cString: strerror(errno))))" }
}

typealias OpFlags = FuseIomap.OpFlags
typealias MType = FuseIomap.MappingType

final class IomapKernel: @unchecked Sendable {
    static let pageSize: UInt64 = 4096

    let kernelFD: Int32
    /// Who serves: an Ext4FuseFS in this process, or the real sandboxed ext4iomapd.
    enum Backend {
        case inProcess(fuse: Ext4FuseFS, session: FuseSession, transport: SocketTransport)
        case real(RealServer)
    }
    let backend: Backend
    /// The engine: the server's own in process; for the real server, a second,
    /// read-only engine on the same image (exact for read-only scenarios).
    let fs: Ext4FileSystem
    var transport: SocketTransport {
        guard case .inProcess(_, _, let t) = backend else { fatalError("the real server's transport is in its process") }
        return t
    }
    var fuse: Ext4FuseFS {
        guard case .inProcess(let f, _, _) = backend else { fatalError("the real server's adapter is in its process") }
        return f
    }
    /// The fd a kernel would do IO on for a backing id.
    func backingFD(_ id: UInt32) -> Int32? {
        switch backend {
        case .inProcess(_, _, let t): return t.backingFD(id)
        case .real(let r): return id == 1 && r.registeredDevice ? r.deviceFD : nil
        }
    }
    private let done = DispatchSemaphore(value: 0)
    private var unique: UInt64 = 0

    // Negotiated state.
    private(set) var initOut = FuseInitOut()
    private(set) var config = FuseIomapConfigOut()
    var iomap: Bool { initOut.flags2 & UInt32(truncatingIfNeeded: FuseInitFlags.iomap.rawValue >> 32) != 0 }
    var blockSize: UInt64 { UInt64(config.sBlocksize) }
    var maxBytes: UInt64 { UInt64(max(0, config.sMaxbytes)) }

    /// Upcalls the kernel made, by opcode name and by BEGIN op class.
    private(set) var upcalls: [String: Int] = [:]
    /// Notifications received, by code.
    private(set) var notifications: [Int32: Int] = [:]
    /// Inodes with a mapping cache (after a successful upsert), and their cached read mappings.
    var cache: [UInt64: [FuseIomapIo]] = [:]
    /// Consult the mapping cache before BEGIN (§11.2); off: every lookup is an upcall.
    var useCache = true
    /// Check every cache hit against the engine's map.
    var verifyCache = true
    /// Page cache: (nodeid, page index) -> 4 KiB page.
    var pages: [UInt64: [UInt64: [UInt8]]] = [:]
    /// Dirty pages by node.
    var dirty: [UInt64: Set<UInt64>] = [:]
    /// The kernel's inode cache: state of each instantiated inode.
    struct KInode {
        var attrIno: UInt64
        var mode: UInt32
        var iomap: Bool
        /// In-core size (kernel-owned for iomap inodes) and the on-disk size as the kernel knows it.
        var isize: UInt64
        var diskSize: UInt64
        var nlookup: UInt64
    }
    var inodes: [UInt64: KInode] = [:]
    /// DEV_INVAL ranges received.
    var devInvals: [FuseRange] = []
    /// The server answered ENOSYS to END / IOEND: never sent again.
    var noEnd = false, noIoend = false
    /// Dirty bytes that trigger writeback of everything (balance_dirty_pages).
    var dirtyLimit: UInt64 = 32 << 20
    /// Readahead window for buffered reads.
    var readahead: UInt64 = 128 << 10

    /// `options`: server options; `allowRegularFile`: let the image file stand in for a block device.
    init(image: String, options: ServerOptions = { var o = ServerOptions(); o.readOnly = true; return o }(),
         allowRegularFile: Bool = true, workers: Int = 2) throws {
        let fd = open(image, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw FuseFailure(errno: errno) }
        let dev = try FileBlockDevice(fd: fd, closeOnDeinit: true)
        fs = try Ext4FileSystem.open(device: dev, options: MountOptions(readOnly: options.readOnly))
        var logger = Logger(label: "iomap-test")
        logger.logLevel = .warning
        let fuse = Ext4FuseFS(fs: fs, options: options, logger: logger)
        if allowRegularFile { fuse.iomapState.allowRegularFileDevice() }
        var sv: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &sv) == 0 else {
            throw FuseFailure(errno: errno)
        }
        kernelFD = sv[0]
        let transport = SocketTransport(fd: sv[1], ownsFD: true)
        let session = FuseSession(transport: transport, fileSystem: fuse, options: FuseSessionOptions(workers: workers),
                                  logger: logger)
        backend = .inProcess(fuse: fuse, session: session, transport: transport)
        let t = Thread { [self] in
            _ = try? session.run()
            done.signal()
        }
        t.start()
    }

    /// The production ext4iomapd, spawned and sandboxed exactly as in spawn
    /// mode, given its device by the real helper session (a loop device over
    /// `image`; no mount is made) and a socket in place of /dev/fuse, whose
    /// other end this test kernel holds.
    init(realServer image: String, mountOptions: String, workers: Int = 2) throws {
        let real = try RealServer(image: image, mountOptions: mountOptions)
        kernelFD = real.kernelFD
        backend = .real(real)
        let fd = open(image, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw FuseFailure(errno: errno) }
        let dev = try FileBlockDevice(fd: fd, closeOnDeinit: true)
        // The server has the image mounted read-write: needs_recovery is set while it runs.
        fs = try Ext4FileSystem.open(device: dev, options: MountOptions(readOnly: true, noRecovery: true))
        let t = Thread { [real, done] in
            real.waitExit()
            done.signal()
        }
        t.start()
    }

    /// Send a request that gets no reply (FORGET).
    func post(_ req: FuseRequest, node: UInt64) {
        unique += 2
        let msg = FuseRequestEncoder.encode(FuseRequestHeader(opcodeRaw: 0, unique: unique, nodeid: node), req)
        _ = msg.withUnsafeBytes { Glibc.send(kernelFD, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    func finish() -> Bool {
        _ = Glibc.shutdown(kernelFD, Int32(SHUT_RDWR))
        let ok = done.wait(timeout: .now() + 10) == .success
        _ = Glibc.close(kernelFD)
        switch backend {
        case .inProcess(_, _, let t): t.close()
        case .real(let r): r.close()
        }
        return ok
    }

    // MARK: wire

    private func receive(timeout: Int32 = 10_000) -> [UInt8]? {
        var p = pollfd(fd: kernelFD, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, timeout) == 1 else { return nil }
        var buf = [UInt8](repeating: 0, count: 1 << 21)
        let n = buf.withUnsafeMutableBytes { Glibc.recv(kernelFD, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { return nil }
        return Array(buf[0..<n])
    }

    /// Send one request and wait for its reply, handling notifications on the way.
    func call(_ req: FuseRequest, node: UInt64) throws -> (error: Int32, payload: [UInt8]) {
        unique += 2
        let u = unique
        let msg = FuseRequestEncoder.encode(FuseRequestHeader(opcodeRaw: 0, unique: u, nodeid: node), req)
        let name = FuseOpcode(rawValue: msg.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 4, as: UInt32.self) })
        upcalls["\(name.map { "\($0)" } ?? "?")", default: 0] += 1
        _ = msg.withUnsafeBytes { Glibc.send(kernelFD, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        while true {
            guard let r = receive() else { throw FuseFailure(errno: ETIMEDOUT) }
            let h = try FuseOutHeader.decode(Array(r.prefix(16)))
            guard Int(h.len) == r.count else { throw MappingRejected(description: "reply length \(h.len) != datagram \(r.count)") }
            if h.unique == 0 {
                try notification(code: h.error, Array(r.dropFirst(16)))
                continue
            }
            guard h.unique == u else { throw FuseFailure(errno: EPROTO) }
            if h.error != 0 && r.count != 16 { throw MappingRejected(description: "error reply with a payload") }
            return (h.error, Array(r.dropFirst(16)))
        }
    }

    func ok(_ req: FuseRequest, node: UInt64) throws -> [UInt8] {
        let (e, p) = try call(req, node: node)
        guard e == 0 else { throw FuseFailure(errno: -e) }
        return p
    }

    private func notification(code: Int32, _ p: [UInt8]) throws {
        notifications[code, default: 0] += 1
        switch FuseNotifyCode(rawValue: code) {
        case .iomapUpsertMappings?:
            guard p.count == 80 else { throw MappingRejected(description: "UPSERT payload \(p.count) bytes") }
            let u = try FuseIomapUpsertMappingsOut.decode(p)
            guard u.read.type != MType.retryCache.rawValue, u.write.type != MType.retryCache.rawValue else {
                throw MappingRejected(description: "RETRY_CACHE in an upsert")
            }
            if u.read.type != MType.noCache.rawValue {
                try validate(u.read, pos: u.read.offset, half: "upsert read", begin: false)
                guard let k = inodes[u.nodeid] else { throw MappingRejected(description: "UPSERT for an inode not in the icache (ESTALE)") }
                guard k.attrIno == u.attrIno else { throw MappingRejected(description: "UPSERT attr_ino \(u.attrIno) != \(k.attrIno)") }
                guard k.iomap else { throw MappingRejected(description: "UPSERT for a non-iomap inode") }
                // Budget: 256 KiB of 32-byte records per tree; over it, the tree is discarded.
                if (cache[u.nodeid]?.count ?? 0) * 32 > Int(262_144) { cache[u.nodeid] = [] }
                cache[u.nodeid, default: []].removeAll { $0.offset < u.read.offset + u.read.length && u.read.offset < $0.offset + $0.length }
                cache[u.nodeid, default: []].append(u.read)
            }
            if u.write.type != MType.noCache.rawValue && u.write.type != MType.pureOverwrite.rawValue {
                throw MappingRejected(description: "ext4 must never upsert write mappings")
            }
        case .iomapDevInval?:
            guard p.count == 24 else { throw MappingRejected(description: "DEV_INVAL payload \(p.count) bytes") }
            let d = try FuseIomapDevInvalOut.decode(p)
            guard d.dev != 0, d.reserved == 0, backingFD(d.dev) != nil else {
                throw MappingRejected(description: "bad DEV_INVAL \(d)")
            }
            let devSize = UInt64(max(0, lseek(deviceFD, 0, SEEK_END)))
            let (_, o) = d.range.offset.addingReportingOverflow(d.range.length)
            guard d.range.offset < devSize, !o else { throw MappingRejected(description: "DEV_INVAL outside the device \(d)") }
            devInvals.append(d.range)
        case .iomapInvalMappings?:
            guard p.count == 48 else { throw MappingRejected(description: "INVAL payload \(p.count) bytes") }
            let m = try FuseIomapInvalMappingsOut.decode(p)
            for r in [m.read, m.write] where r.length != 0 && r.length != FuseIomap.invalToEOF {
                guard r.offset % blockSize == 0, r.length % blockSize == 0, r.offset < maxBytes else {
                    throw MappingRejected(description: "INVAL range not block aligned \(r)")
                }
            }
            if m.read.length != 0 { invalidate(m.nodeid, from: m.read.offset, length: m.read.length) }
        default:
            break
        }
    }

    // MARK: connection

    func initialize(offerIomap: Bool = true) throws {
        var flags: FuseInitFlags = [.asyncRead, .bigWrites, .initExt, .maxPages, .posixACL, .exportSupport,
                                    .doReaddirplus, .parallelDirops]
        if offerIomap { flags.insert(.iomap) }
        let i = FuseInitIn(major: 7, minor: offerIomap ? 99 : 45, maxReadahead: 131072, flags: flags.low, flags2: flags.high)
        initOut = try FuseInitOut.decode(try ok(.initialize(i), node: 0))
        if iomap {
            guard initOut.minor == 99 else { throw MappingRejected(description: "iomap without minor 99") }
            try configure()
        }
    }

    /// IOMAP_CONFIG, checked the way fuse_iomap_config_reply does.
    private func configure() throws {
        let a = FuseIomapConfigIn(flags: 0x7f, maxbytes: Int64.max, cacheMaxbytes: 262_144)
        let p = try ok(.iomapConfig(a), node: 0)
        guard p.count <= 104 else { throw MappingRejected(description: "CONFIG reply \(p.count) > 104 bytes") }
        let c = try FuseIomapConfigOut.decode(p + [UInt8](repeating: 0, count: 104 - p.count))
        func bad(_ s: String) -> MappingRejected { MappingRejected(description: "IOMAP_CONFIG: \(s)") }
        guard c.flags & ~0x7f == 0 else { throw bad("unknown flags \(c.flags)") }
        guard c.sUuidLen <= 16 else { throw bad("uuid_len \(c.sUuidLen)") }
        guard p.count < 60 || (p[57] == 0 && p[58] == 0 && p[59] == 0) else { throw bad("s_pad not zero") }
        let f = FuseIomap.ConfigFlags(rawValue: c.flags)
        guard f.contains(.blocksize) else { throw bad("no block size") }
        let bs = c.sBlocksize
        guard bs >= 512, bs <= 65536, bs & (bs - 1) == 0 else { throw bad("block size \(bs)") }
        if f.contains(.time) {
            guard c.sTimeGran >= 1, c.sTimeGran <= 1_000_000_000, c.sTimeMin <= c.sTimeMax else { throw bad("time") }
        }
        if f.contains(.maxbytes) { guard c.sMaxbytes > 0 else { throw bad("maxbytes \(c.sMaxbytes)") } }
        if f.contains(.sid) { guard c.sId.contains(0) else { throw bad("s_id not NUL-terminated") } }
        config = c
        guard backingFD(1) != nil else { throw bad("no backing device registered") }
    }

    /// The device fd the server registered (backing id 1).
    var deviceFD: Int32 { backingFD(1) ?? -1 }

    // MARK: namespace

    func lookup(_ path: String) throws -> FuseEntryOut {
        var node = FuseABI.rootID
        var e = FuseEntryOut()
        for comp in path.split(separator: "/") {
            e = try FuseEntryOut.decode(try ok(.lookup(name: Array(comp.utf8)), node: node))
            guard e.nodeid != 0 else { throw FuseFailure(errno: ENOENT) }
            instantiate(e)
            node = e.nodeid
        }
        return e
    }

    /// An entry reply: the first one brings the inode into the icache and its
    /// attribute flags decide the data path until FORGET (§7).
    func instantiate(_ e: FuseEntryOut) {
        guard e.nodeid != 0 else { return }
        if var k = inodes[e.nodeid] {
            k.nlookup += 1
            inodes[e.nodeid] = k
            return
        }
        inodes[e.nodeid] = KInode(attrIno: e.attr.ino, mode: e.attr.mode, iomap: isIomapInode(e),
                                  isize: e.attr.size, diskSize: e.attr.size, nlookup: 1)
    }

    /// The kernel drops an inode: FORGET with its whole lookup count, caches die with it.
    func evict(_ node: UInt64) {
        guard let k = inodes.removeValue(forKey: node) else { return }
        pages[node] = nil
        dirty[node] = nil
        cache[node] = nil
        post(.forget(FuseForgetIn(nlookup: k.nlookup)), node: node)
    }

    /// The size the kernel believes (in-core for iomap inodes).
    func size(_ e: FuseEntryOut) -> UInt64 { inodes[e.nodeid]?.isize ?? e.attr.size }

    /// Drop cached mappings overlapping [from, from+length) (length ~0: to EOF), block-rounded.
    func invalidate(_ node: UInt64, from: UInt64, length: UInt64) {
        let bs = max(blockSize, 1)
        let lo = from / bs * bs
        let end: UInt64
        if length == FuseIomap.invalToEOF { end = .max } else {
            let (e, o) = from.addingReportingOverflow(length)
            end = o ? .max : (e % bs == 0 ? e : (e / bs + 1) * bs)
        }
        cache[node]?.removeAll { x in x.offset < end && lo < x.offset + x.length }
    }

    func isIomapInode(_ e: FuseEntryOut) -> Bool {
        let f = FuseAttrFlags(rawValue: e.attr.flags)
        return iomap && initOut.minor >= 99 && f.contains(.iomap) && f.contains(.exclusive)
            && e.attr.mode & 0xF000 == 0x8000
    }

    // MARK: BEGIN with validation

    /// A mapping for `pos`: from the mapping cache if it has a usable record
    /// (§11.2), else from a BEGIN upcall.
    func map(_ e: FuseEntryOut, op: OpFlags, pos: UInt64, count: UInt64) throws -> FuseIomapIo {
        if useCache, !op.contains(.atomic), !op.contains(.swapfile),
           let hit = cache[e.nodeid]?.first(where: { $0.offset <= pos && pos < $0.offset + $0.length }) {
            var usable = true
            if op.isWriteClass && hit.type == MType.hole.rawValue && !op.contains(.zero) && !op.contains(.unshare) { usable = false }
            if hit.type == MType.delalloc.rawValue && (op.contains(.direct) || op.contains(.writeback)) { usable = false }
            if usable {
                upcalls["hit.\(Self.opName(op))", default: 0] += 1
                // Trimmed to the block-rounded request.
                let bs = blockSize
                let lo = max(hit.offset, pos / bs * bs)
                let (re, o) = pos.addingReportingOverflow(max(count, 1))
                let reqEnd = o ? UInt64.max - bs + 1 : (re % bs == 0 ? re : (re / bs + 1) * bs)
                let hi = min(hit.offset + hit.length, max(reqEnd, lo + bs))
                var m = hit
                m.offset = lo
                m.length = hi - lo
                if m.addr != FuseIomap.nullAddr { m.addr = hit.addr + (lo - hit.offset) }
                if verifyCache { try checkAgainstEngine(e, m) }
                return m
            }
        }
        return try begin(e, op: op, pos: pos, count: count)
    }

    /// A cached mapping must still describe the engine's map exactly.
    func checkAgainstEngine(_ e: FuseEntryOut, _ m: FuseIomapIo) throws {
        let bs = blockSize
        let maps = try fs.mappings(UInt32(e.attr.ino), fromBlock: m.offset / bs, maxBlocks: m.length / bs)
        let stale = MappingRejected(description: "stale cached mapping \(m): the engine has \(maps)")
        switch MType(rawValue: m.type) {
        case .hole?:
            guard maps.isEmpty else { throw stale }
        case .mapped?, .unwritten?:
            let unwritten = m.type == MType.unwritten.rawValue
            var next = m.offset / bs
            for x in maps {
                guard x.logical == next, x.unwritten == unwritten,
                      x.physical * bs == m.addr + (x.logical * bs - m.offset) else { throw stale }
                next = x.logical + x.length
            }
            guard next == (m.offset + m.length) / bs else { throw stale }
        default:
            break
        }
    }

    /// One FUSE_IOMAP_BEGIN, validated like fuse_iomap_begin_validate.
    func begin(_ e: FuseEntryOut, op: OpFlags, pos: UInt64, count: UInt64) throws -> FuseIomapIo {
        upcalls["begin.\(Self.opName(op))", default: 0] += 1
        let a = FuseIomapBeginIn(opflags: op.rawValue, attrIno: e.attr.ino, pos: pos, count: count)
        let p = try ok(.iomapBegin(a), node: e.nodeid)
        guard p.count == 64 else { throw MappingRejected(description: "BEGIN reply \(p.count) bytes, not 64") }
        let out = try FuseIomapBeginOut.decode(p)
        try validate(out.read, pos: pos, half: "read", begin: true, op: op, node: e.nodeid)
        try validate(out.write, pos: pos, half: "write", begin: true, op: op, node: e.nodeid)
        if out.write.type == MType.pureOverwrite.rawValue {
            guard out.write.offset == out.read.offset, out.write.length == out.read.length else {
                throw MappingRejected(description: "PURE_OVERWRITE differs from the read mapping")
            }
        } else {
            throw MappingRejected(description: "ext4 must answer PURE_OVERWRITE in the write half, got type \(out.write.type)")
        }
        var m = out.read
        // Every mapping the server hands out must describe the engine's map.
        if verifyCache && m.type != MType.retryCache.rawValue && m.type != MType.inline.rawValue { try checkAgainstEngine(e, m) }
        if m.type == MType.retryCache.rawValue {
            guard let hit = cache[e.nodeid]?.first(where: { $0.offset <= pos && pos < $0.offset + $0.length }) else {
                throw MappingRejected(description: "RETRY_CACHE but the cache has nothing at \(pos) (would loop)")
            }
            m = hit
        }
        // Behaviour (not validation) rules that still break things.
        if op.contains(.atomic) {
            guard m.flags & FuseIomap.MappingFlags.atomicBio.rawValue != 0 else {
                throw MappingRejected(description: "ATOMIC write mapping without F_ATOMIC_BIO")
            }
        }
        if op.contains(.write) || op.contains(.writeback) {
            guard m.type == MType.mapped.rawValue || m.type == MType.unwritten.rawValue else {
                throw MappingRejected(description: "write-class op got type \(m.type), would lose data")
            }
        }
        if op.contains(.report), m.type == MType.inline.rawValue {
            throw MappingRejected(description: "INLINE mapping for an iomap inode")
        }
        return m
    }

    static func opName(_ op: OpFlags) -> String {
        if op.contains(.report) { return "report" }
        if op.contains(.writeback) { return "writeback" }
        if op.contains(.atomic) { return "atomic" }
        if op.contains(.zero) { return "zero" }
        if op.contains(.write) { return op.contains(.direct) ? "directwrite" : "write" }
        return op.contains(.direct) ? "directread" : "read"
    }

    /// §10, both halves, post-v7 strictness.
    func validate(_ m: FuseIomapIo, pos: UInt64, half: String, begin: Bool, op: OpFlags = [], node: UInt64 = 0) throws {
        func bad(_ s: String) -> MappingRejected {
            MappingRejected(description: "\(half) mapping \(m) at pos \(pos): \(s)")
        }
        guard let type = MType(rawValue: m.type) else { throw bad("unknown type") }
        guard m.flags & ~FuseIomap.MappingFlags.serverMask == 0 else { throw bad("kernel-only flags") }
        switch type {
        case .noCache:
            if begin { throw bad("NOCACHE in a BEGIN reply") }
            fallthrough
        case .retryCache, .pureOverwrite:
            guard m.flags == 0, m.dev == FuseIomap.devNull, m.addr == FuseIomap.nullAddr else { throw bad("special type with flags/dev/addr") }
            if type == .pureOverwrite && half != "write" { throw bad("PURE_OVERWRITE in the read half") }
            if type == .retryCache {
                if half == "write" { throw bad("RETRY_CACHE in the write half") }
                if cache[node] == nil { throw bad("RETRY_CACHE without a mapping cache") }
                if op.contains(.atomic) || op.contains(.swapfile) { throw bad("RETRY_CACHE for atomic/swapfile") }
            }
        default: break
        }
        guard m.length != 0 else { throw bad("zero length") }
        let bs = blockSize
        guard m.offset % bs == 0, m.length % bs == 0 else { throw bad("not aligned to block size \(bs)") }
        let (end, o) = m.offset.addingReportingOverflow(m.length)
        guard !o else { throw bad("offset+length overflows") }
        guard m.offset < maxBytes else { throw bad("offset beyond s_maxbytes \(maxBytes)") }
        switch type {
        case .mapped, .unwritten:
            guard m.dev != FuseIomap.devNull, m.addr != FuseIomap.nullAddr else { throw bad("mapped without dev/addr") }
            guard backingFD(m.dev) != nil else { throw bad("dev \(m.dev) not a registered backing") }
            let (dend, o2) = m.addr.addingReportingOverflow(m.length)
            guard !o2 else { throw bad("addr+length overflows") }
            guard m.addr % bs == 0 else { throw bad("addr not block aligned") }
            let devSize = lseek(backingFD(m.dev) ?? -1, 0, SEEK_END)
            guard devSize > 0, dend <= UInt64(devSize) else { throw bad("beyond the device") }
        case .hole, .delalloc, .inline:
            guard m.dev == FuseIomap.devNull, m.addr == FuseIomap.nullAddr else { throw bad("hole/delalloc/inline with dev or addr") }
        default: break
        }
        if begin {
            guard m.offset <= pos, pos < end else { throw bad("does not cover pos") }
        }
    }

    // MARK: data IO the way fs/iomap does it

    private func readDevice(_ addr: UInt64, _ n: Int) throws -> [UInt8] {
        var buf = [UInt8](repeating: 0, count: n)
        let r = buf.withUnsafeMutableBytes { pread(deviceFD, $0.baseAddress, n, off_t(addr)) }
        guard r == n else { throw FuseFailure(errno: EIO) }
        return buf
    }

    /// Fill blocks [pos, end) into `dst` (offset by `base`) from mappings; blocks at or
    /// past `size` are zeroed without asking, as iomap_block_needs_zeroing does.
    private func mapAndRead(_ e: FuseEntryOut, op: OpFlags, pos start: UInt64, end: UInt64, size: UInt64,
                            into dst: inout [UInt8], base: UInt64) throws {
        var pos = start
        while pos < end {
            let m = try map(e, op: op, pos: pos, count: end - pos)
            let stop = min(m.offset + m.length, end)
            var p = pos
            while p < stop {
                let bend = min((p / blockSize + 1) * blockSize, stop)
                let n = Int(bend - p)
                let at = Int(p - base)
                if p < size && m.type == MType.mapped.rawValue {
                    let bytes = try readDevice(m.addr + (p - m.offset), n)
                    dst.replaceSubrange(at..<(at + n), with: bytes)
                } else {
                    dst.replaceSubrange(at..<(at + n), with: repeatElement(0, count: n))
                }
                p = bend
            }
            pos = stop
        }
    }

    /// read(2) on a buffered iomap file: missing pages are read in readahead
    /// batches (one iomap iteration per batch), then copied from the page cache.
    func bufferedRead(_ e: FuseEntryOut, offset: UInt64, length: Int) throws -> [UInt8] {
        let size = size(e)
        guard offset < size, length > 0 else { return [] }
        let end = min(size, offset + UInt64(length))
        let ps = Self.pageSize
        var pg = offset / ps
        let lastPage = (end - 1) / ps
        while pg <= lastPage {
            if pages[e.nodeid]?[pg] != nil { pg += 1; continue }
            // A run of missing pages, at most one readahead window, not past EOF's page.
            var runEnd = pg
            let maxPages = max(1, readahead / ps)
            let eofPage = (size - 1) / ps
            while runEnd + 1 <= eofPage && runEnd + 1 - pg < maxPages && pages[e.nodeid]?[runEnd + 1] == nil { runEnd += 1 }
            let from = pg * ps, to = (runEnd + 1) * ps
            var buf = [UInt8](repeating: 0, count: Int(to - from))
            try mapAndRead(e, op: [], pos: from, end: to, size: size, into: &buf, base: from)
            for k in pg...runEnd {
                let o = Int((k - pg) * ps)
                pages[e.nodeid, default: [:]][k] = Array(buf[o..<(o + Int(ps))])
            }
            pg = runEnd + 1
        }
        var out = [UInt8]()
        out.reserveCapacity(Int(end - offset))
        var p = offset
        while p < end {
            let k = p / ps
            guard let page = pages[e.nodeid]?[k] else { throw FuseFailure(errno: EIO) }
            let o = Int(p - k * ps)
            let n = Int(min(end - p, ps - UInt64(o)))
            out.append(contentsOf: page[o..<(o + n)])
            p += UInt64(n)
        }
        return out
    }

    /// Drop every clean page (dirty ones stay, as drop_caches does).
    func dropPageCache() {
        for (node, pg) in pages {
            let d = dirty[node] ?? []
            pages[node] = d.isEmpty ? nil : pg.filter { d.contains($0.key) }
        }
    }

    /// O_DIRECT read: block-aligned, bios straight from the mappings, result clipped to EOF.
    func directRead(_ e: FuseEntryOut, offset: UInt64, length: Int) throws -> [UInt8] {
        let size = size(e)
        // Dirty page cache over the range is written back first.
        try writeback(e, from: offset, to: offset + UInt64(length))
        guard offset % blockSize == 0, UInt64(length) % blockSize == 0 else { throw FuseFailure(errno: EINVAL) }
        guard offset < size, length > 0 else { return [] }
        let end = offset + UInt64(length)
        var buf = [UInt8](repeating: 0, count: length)
        // Direct IO reads whole blocks from the device even past EOF, then clips.
        try mapAndRead(e, op: .direct, pos: offset, end: end, size: UInt64.max, into: &buf, base: offset)
        return Array(buf.prefix(Int(min(UInt64(length), size - offset))))
    }

    /// The classic path: FUSE_READ.
    func classicRead(_ e: FuseEntryOut, offset: UInt64, length: Int) throws -> [UInt8] {
        try ok(.read(FuseReadIn(fh: 0, offset: offset, size: UInt32(length))), node: e.nodeid)
    }

    struct FiemapExtent: Equatable, CustomStringConvertible {
        var logical: UInt64, physical: UInt64, length: UInt64, flags: UInt32
        var description: String { "[\(logical)+\(length) -> \(physical) f\(String(flags, radix: 16))]" }
    }

    /// iomap_fiemap: REPORT iterations over [start, start+len); holes are skipped,
    /// the final extent gets FIEMAP_EXTENT_LAST.
    func fiemap(_ e: FuseEntryOut, start: UInt64 = 0, length: UInt64 = .max) throws -> [FiemapExtent] {
        var len = length
        if start >= maxBytes { return [] }
        len = min(len, maxBytes - start)
        var out: [FiemapExtent] = []
        var pos = start
        let end = start + len
        var iterations = 0
        while pos < end {
            iterations += 1
            guard iterations < 100_000 else { throw MappingRejected(description: "FIEMAP does not terminate") }
            let m = try begin(e, op: .report, pos: pos, count: end - pos)
            var flags: UInt32 = 0
            switch MType(rawValue: m.type) {
            case .hole?: break
            case .unwritten?: flags |= 0x800
            case .delalloc?: flags |= 0x4 | 0x2
            case .inline?: flags |= 0x200 | 0x100
            default: break
            }
            if m.flags & FuseIomap.MappingFlags.merged.rawValue != 0 { flags |= 0x1000 }
            if m.flags & FuseIomap.MappingFlags.shared.rawValue != 0 { flags |= 0x2000 }
            if m.type != MType.hole.rawValue {
                out.append(FiemapExtent(logical: m.offset, physical: m.addr, length: m.length, flags: flags))
            }
            pos = m.offset + m.length
        }
        if !out.isEmpty { out[out.count - 1].flags |= 0x1 }
        return out
    }

    /// iomap_seek_data / iomap_seek_hole with no dirty pages: UNWRITTEN reads as a hole.
    func seek(_ e: FuseEntryOut, _ offset: UInt64, data: Bool) throws -> UInt64? {
        let size = e.attr.size
        guard offset < size else { return nil }
        var pos = offset
        while pos < size {
            let m = try begin(e, op: .report, pos: pos, count: size - pos)
            let isData = m.type == MType.mapped.rawValue
            if isData == data { return max(pos, offset) }
            pos = m.offset + m.length
        }
        return data ? nil : size
    }

    /// The classic path: FUSE_LSEEK.
    func classicSeek(_ e: FuseEntryOut, _ offset: UInt64, data: Bool) throws -> UInt64? {
        let (err, p) = try call(.lseek(FuseLseekIn(fh: 0, offset: offset, whence: data ? 3 : 4)), node: e.nodeid)
        if err == -ENXIO { return nil }
        guard err == 0 else { throw FuseFailure(errno: -err) }
        return try FuseLseekOut.decode(p).offset
    }
}
