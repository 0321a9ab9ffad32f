// The serving loop: INIT negotiation, N worker threads (each on its own
// cloned /dev/fuse fd), dispatch to the FuseFileSystem, and clean shutdown on
// ENODEV / DESTROY / peer close with every thread joined and every fd closed.

import CShim
import Foundation
import Glibc
import Logging
import Synchronization

public struct FuseSessionOptions: Sendable {
    /// Worker threads, including the one that calls run().
    public var workers: Int
    /// Rings for FUSE over io_uring, made before the sandbox; offered at INIT
    /// when the kernel offers it (`fuse.enable_uring=1`) and the transport is /dev/fuse.
    public var uring: FuseUringRings?
    public init(workers: Int = 4, uring: FuseUringRings? = nil) {
        self.workers = max(1, min(workers, 64))
        self.uring = uring
    }
}

public enum FuseSessionError: Error, CustomStringConvertible, Sendable {
    case transport(FuseTransportError)
    case initFailed(String)
    public var description: String {
        switch self {
        case .transport(let e): return "FUSE transport failed: \(e)"
        case .initFailed(let why): return "FUSE INIT failed: \(why)"
        }
    }
}

public final class FuseSession: @unchecked Sendable {
    let transport: any FuseTransport
    let fs: any FuseFileSystem
    let options: FuseSessionOptions
    let logger: Logger

    struct State {
        var decode = FuseDecodeContext()
        var connection: FuseConnectionInfo?
        var stopping = false
        var uringUsable = false
        var loggedDecodeFailures = 0
    }
    private let state = Mutex(State())
    private let drained = NSCondition()
    private var inFlightCount = 0  // guarded by `drained`
    /// DESTROY has arrived: later requests are not run (guarded by `drained`).
    private var destroying = false

    public init(transport: any FuseTransport, fileSystem: any FuseFileSystem,
                options: FuseSessionOptions = FuseSessionOptions(), logger: Logger) {
        self.transport = transport
        self.fs = fileSystem
        self.options = options
        self.logger = logger
    }

    /// The negotiated connection, once INIT has been answered.
    public var connection: FuseConnectionInfo? { state.withLock { $0.connection } }

    /// Serve until the connection ends. Returns after every worker has exited.
    public func run() throws(FuseSessionError) {
        let bufSize = 1 << 20 + 64 * 1024
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: bufSize, alignment: 16)
        defer { buf.deallocate() }
        // Phase 0: the io_uring threads start and enable their rings now, so
        // that INIT offers io_uring only if every one of them can serve.
        var threads: [pthread_t] = []
        let gate = FuseUringGate()
        if let rings = options.uring, let dev = transport as? DevFuseTransport {
            let fd = dev.fd
            for index in rings.slots.indices {
                guard let t = spawn("fuse-uring", { [self] in uringLoop(rings, index, gate: gate, dev: dev, fuseFD: fd) }) else {
                    gate.threadFailed()
                    continue
                }
                threads.append(t)
            }
            let usable = gate.waitReady(threads: rings.threads)
            state.withLock { $0.uringUsable = usable }
            if !usable { logger.warning("FUSE over io_uring: a ring could not be enabled; serving through /dev/fuse") }
        }
        // Phase 1: INIT on the primary channel, before any clone exists.
        var initError: FuseTransportError?
        var ended = false
        while state.withLock({ $0.connection == nil && !$0.stopping }) {
            let n: Int?
            do { n = try transport.receive(into: buf) } catch { initError = error; break }
            guard let n else { ended = true; break }
            handle(UnsafeRawBufferPointer(rebasing: buf[0..<min(n, bufSize)]), on: transport)
        }
        if ended || initError != nil || state.withLock({ $0.stopping }) {
            // No INIT (or a failed one): the uring threads, if any, end unused.
            gate.decide(go: false)
            for t in threads { pthread_join(t, nil) }
            if let initError { throw .transport(initError) }
            return
        }
        // Phase 2: workers.
        var channels: [any FuseTransport] = []
        for _ in 1..<options.workers {
            do { channels.append(try transport.workerChannel()) } catch {
                logger.warning("could not add a FUSE worker channel: \(error); continuing with \(channels.count + 1) workers")
                break
            }
        }
        for ch in channels {
            if let t = spawn("fuse-worker", { [self] in workerLoop(ch) }) { threads.append(t) }
        }
        let uringOn = state.withLock { $0.connection?.flags.contains(.overIoUring) ?? false }
        gate.decide(go: uringOn)  // the INIT reply is written: registration may start
        if uringOn, let rings = options.uring {
            logger.info("FUSE over io_uring: \(rings.queues) queues, \(rings.threads) threads")
        }
        workerLoop(transport)
        // Whoever ends first wakes the rest (sockets need it; /dev/fuse ends for all).
        transport.wakeAll()
        for t in threads { pthread_join(t, nil) }
        for ch in channels { ch.close() }
    }

    final class ThreadBody: @unchecked Sendable {
        let name: String
        let body: @Sendable () -> Void
        init(name: String, body: @escaping @Sendable () -> Void) { self.name = name; self.body = body }
    }

    /// Start a named thread; nil (logged) when pthread_create fails.
    private func spawn(_ name: String, _ body: @escaping @Sendable () -> Void) -> pthread_t? {
        let box = Unmanaged.passRetained(ThreadBody(name: name, body: body))
        var tid = pthread_t()
        let rc = pthread_create(&tid, nil, { arg in
            guard let arg else { return nil }
            let b = Unmanaged<ThreadBody>.fromOpaque(arg).takeRetainedValue()
            cshim_set_thread_name(b.name)
            b.body()
            return nil
        }, box.toOpaque())
        guard rc == 0 else {
            box.release()
            logger.warning("pthread_create failed: \(rc)")
            return nil
        }
        return tid
    }

    func workerLoop(_ ch: any FuseTransport) {
        let bufSize = 1 << 20 + 64 * 1024
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: bufSize, alignment: 16)
        defer { buf.deallocate() }
        while !state.withLock({ $0.stopping }) {
            let n: Int?
            do { n = try ch.receive(into: buf) } catch {
                logger.error("\(error)")
                break
            }
            guard let n else { break }
            handle(UnsafeRawBufferPointer(rebasing: buf[0..<min(n, bufSize)]), on: ch)
        }
        state.withLock { $0.stopping = true }
        transport.wakeAll()
    }

    // MARK: - dispatch

    func handle(_ msg: UnsafeRawBufferPointer, on ch: any FuseTransport) {
        let ctx = state.withLock { $0.decode }
        switch FuseDecoder.decodeBorrowing(msg, context: ctx) {
        case .failure(let f):
            logDecodeFailure(f)
            if let h = f.header, FuseOpcode(rawValue: h.opcodeRaw)?.expectsReply ?? true {
                _ = ch.send([FuseReplyEncoder.error(unique: h.unique, errno: -f.errno)])
            }
        case .success(let (h, req)):
            // Once DESTROY is in, nothing else reaches the file system: what
            // was already running is waited for (`waitForOthers`), anything
            // later (a FORGET racing the unmount on another worker) would touch
            // a file system that is being, or has been, unmounted.
            drained.lock()
            let late = destroying
            if !late {
                inFlightCount += 1
                if case .request(.destroy) = req { destroying = true }
            }
            drained.unlock()
            if late {
                if h.opcode?.expectsReply ?? true { _ = ch.send([FuseReplyEncoder.error(unique: h.unique, errno: EIO)]) }
                return
            }
            let reply = dispatch(h, req)
            drained.lock(); inFlightCount -= 1; drained.broadcast(); drained.unlock()
            if let reply {
                let r = ch.send(reply)
                if r < 0 && r != -ENODEV {
                    logger.warning("reply to \(h.opcode.map { "\($0)" } ?? "?") #\(h.unique) rejected: \(String(cString: strerror(-r)))")
                }
            }
            if case .request(.destroy) = req {
                state.withLock { $0.stopping = true }
                transport.wakeAll()
            }
        }
    }

    private func logDecodeFailure(_ f: DecodeFailure) {
        let n = state.withLock { s -> Int in s.loggedDecodeFailures += 1; return s.loggedDecodeFailures }
        if n <= 16 { logger.warning("dropping malformed FUSE request: \(f.reason)") }
        if n == 16 { logger.warning("further malformed requests are not logged") }
    }

    /// Run one request; nil means "no reply allowed".
    func dispatch(_ h: FuseRequestHeader, _ decoded: FuseDecoded) -> [[UInt8]]? {
        let c = FuseContext(h)
        let u = h.unique
        func ok(_ s: some FuseWireStruct) -> [[UInt8]] { FuseReplyEncoder.ok(unique: u, s.encoded) }
        func empty() -> [[UInt8]] { FuseReplyEncoder.ok(unique: u) }
        do throws(FuseError) {
            if state.withLock({ $0.connection == nil }) {
                guard case .request(.initialize(let i)) = decoded else {
                    // Nothing but INIT is valid before INIT.
                    return h.opcode?.expectsReply == false ? nil : [FuseReplyEncoder.error(unique: u, errno: EIO)]
                }
                return try negotiate(u, i)
            }
            let req: FuseRequest
            switch decoded {
            case .write(let w, let data):
                let n = try fs.write(c, w, data: data)
                return ok(FuseWriteOut(size: min(n, w.size)))
            case .request(let r):
                req = r
            }
            switch req {
            case .initialize:
                throw .inval  // a second INIT
            case .lookup(let name): return ok(try fs.lookup(c, parent: h.nodeid, name: name))
            case .forget(let f):
                fs.forget(h.nodeid, nlookup: f.nlookup)
                return nil
            case .batchForget(let items):
                for i in items { fs.forget(i.nodeid, nlookup: i.nlookup) }
                return nil
            case .getattr(let g):
                let fh: UInt64? = g.getattrFlags & FuseMiscFlags.getattrFH != 0 ? g.fh : nil
                return ok(try fs.getattr(c, fh: fh))
            case .setattr(let s): return ok(try fs.setattr(c, s))
            case .readlink: return FuseReplyEncoder.ok(unique: u, try fs.readlink(c))
            case .symlink(let name, let target): return ok(try fs.symlink(c, name: name, target: target))
            case .mknod(let m, let name): return ok(try fs.mknod(c, name: name, m))
            case .mkdir(let m, let name): return ok(try fs.mkdir(c, name: name, m))
            case .unlink(let name): try fs.unlink(c, name: name); return empty()
            case .rmdir(let name): try fs.rmdir(c, name: name); return empty()
            case .rename(let newdir, let flags, let o, let n):
                try fs.rename(c, name: o, newParent: newdir, newName: n, flags: flags); return empty()
            case .link(let l, let name): return ok(try fs.link(c, oldNode: l.oldnodeid, name: name))
            case .open(let o): return ok(try fs.open(c, o))
            case .read(let r):
                let data = try fs.read(c, r)
                return FuseReplyEncoder.ok(unique: u, data.count > Int(r.size) ? Array(data.prefix(Int(r.size))) : data)
            case .write(let w, let data):
                // Decoded with a copy (`FuseDecoder.decode`); the session itself borrows.
                let n = try withBorrowed(data) { (p) throws(FuseError) in try fs.write(c, w, data: p) }
                return ok(FuseWriteOut(size: min(n, w.size)))
            case .statfs: return ok(FuseStatfsOut(st: try fs.statfs(c)))
            case .release(let r): fs.release(c, r); return empty()
            case .fsync(let f): try fs.fsync(c, f); return empty()
            case .setxattr(let s, let name, let value):
                try fs.setxattr(c, name: name, value: value, flags: s.flags, setxattrFlags: s.setxattrFlags); return empty()
            case .getxattr(let g, let name):
                return try sized(u, g.size, try fs.getxattr(c, name: name))
            case .listxattr(let g):
                return try sized(u, g.size, try fs.listxattr(c))
            case .removexattr(let name): try fs.removexattr(c, name: name); return empty()
            case .flush(let f): try fs.flush(c, f); return empty()
            case .opendir(let o): return ok(try fs.opendir(c, o))
            case .readdir(let r), .readdirplus(let r):
                var plus = false
                if case .readdirplus = req { plus = true }
                var buf = FuseDirBuffer(plus: plus, limit: Int(r.size))
                try fs.readdir(c, r, into: &buf)
                return FuseReplyEncoder.ok(unique: u, buf.bytes)
            case .releasedir(let r): fs.releasedir(c, r); return empty()
            case .fsyncdir(let f): try fs.fsyncdir(c, f); return empty()
            case .getlk(let l): return ok(FuseLkOut(lk: try fs.getlk(c, l)))
            case .setlk(let l, let wait): try fs.setlk(c, l, wait: wait); return empty()
            case .access(let a): try fs.access(c, mask: a.mask); return empty()
            case .create(let cr, let name):
                let (e, o) = try fs.create(c, name: name, cr)
                return FuseReplyEncoder.ok(unique: u, e.encoded + o.encoded)
            case .tmpfile(let cr, let name):
                let (e, o) = try fs.tmpfile(c, name: name, cr)
                return FuseReplyEncoder.ok(unique: u, e.encoded + o.encoded)
            case .interrupt:
                return nil  // requests run to completion; the kernel copes with a late reply
            case .bmap(let b): return ok(FuseBmapOut(block: try fs.bmap(c, b)))
            case .destroy:
                waitForOthers()
                fs.destroy()
                return empty()
            case .ioctl(let i, let input):
                let r = try fs.ioctl(c, i, input: input)
                guard r.output.count <= Int(i.outSize) else { throw .inval }
                return FuseReplyEncoder.ok(unique: u, FuseIoctlOut(result: r.result).encoded + r.output)
            case .poll(let p): return ok(FusePollOut(revents: try fs.poll(c, p)))
            case .notifyReply: return nil
            case .fallocate(let f): try fs.fallocate(c, f); return empty()
            case .lseek(let l): return ok(FuseLseekOut(offset: try fs.lseek(c, l)))
            case .copyFileRange(let cfr, let is64):
                let n = try fs.copyFileRange(c, cfr)
                if is64 { return ok(FuseCopyFileRangeOut(bytesCopied: n)) }
                return ok(FuseWriteOut(size: UInt32(clamping: n)))
            case .setupMapping, .removeMapping: throw .nosys
            case .syncfs: try fs.syncfs(c); return empty()
            case .statx(let s): return ok(try fs.statx(c, s))
            case .freezeFS(let f): try fs.freezeFS(c, unlinked: f.unlinked); return empty()
            case .unfreezeFS: try fs.unfreezeFS(c); return empty()
            case .shutdownFS(let s): fs.shutdownFS(c, flags: s.flags); return empty()
            case .iomapConfig(let cfg): return ok(try fs.iomapConfig(c, cfg))
            case .iomapBegin(let b): return ok(try fs.iomapBegin(c, b))
            case .iomapEnd(let e): try fs.iomapEnd(c, e); return empty()
            case .iomapIoend(let e): return ok(FuseIomapIoendOut(newsize: try fs.iomapIoend(c, e)))
            }
        } catch {
            guard h.opcode?.expectsReply ?? true else { return nil }
            return [FuseReplyEncoder.error(unique: u, errno: error.errno)]
        }
    }

    private func withBorrowed<R>(_ a: [UInt8], _ body: (UnsafeRawBufferPointer) throws(FuseError) -> R) throws(FuseError) -> R {
        var result: Result<R, FuseError>? = nil
        a.withUnsafeBytes { p in
            do throws(FuseError) { result = .success(try body(p)) } catch { result = .failure(error) }
        }
        guard let result else { throw .io }
        return try result.get()
    }

    /// GETXATTR/LISTXATTR: size 0 asks for the length, otherwise the value must fit.
    private func sized(_ u: UInt64, _ size: UInt32, _ value: [UInt8]) throws(FuseError) -> [[UInt8]] {
        if size == 0 { return FuseReplyEncoder.ok(unique: u, FuseGetxattrOut(size: UInt32(clamping: value.count)).encoded) }
        guard value.count <= Int(size) else { throw .range }
        return FuseReplyEncoder.ok(unique: u, value)
    }

    /// DESTROY must not be answered while other requests (RELEASEs) still run:
    /// its answer is what lets umount(2) return, so the file system is
    /// unmounted (`FuseFileSystem.destroy()`) only after they finished, and
    /// the answer goes out only after that.
    private func waitForOthers() {
        drained.lock()
        while inFlightCount > 1 { drained.wait() }
        drained.unlock()
    }

    // MARK: - INIT

    private func negotiate(_ u: UInt64, _ i: FuseInitIn) throws(FuseError) -> [[UInt8]] {
        guard i.major == FuseABI.kernelVersion else {
            if i.major > FuseABI.kernelVersion {
                // Tell a newer kernel which major we speak; it will retry with ours.
                logger.info("kernel speaks FUSE \(i.major).\(i.minor); answering with 7")
                return FuseReplyEncoder.ok(unique: u, FuseInitOut(major: FuseABI.kernelVersion, minor: FuseABI.baseMinor).encoded)
            }
            logger.error("unsupported FUSE major version \(i.major)")
            throw FuseError(EPROTO)
        }
        guard i.minor >= FuseABI.oldestMinor else {
            logger.error("kernel FUSE 7.\(i.minor) is older than the oldest we serve (7.\(FuseABI.oldestMinor))")
            throw FuseError(EPROTO)
        }
        var wants = fs.negotiate(Self.offer(from: i))
        if state.withLock({ $0.uringUsable }) { wants.flags.insert(.overIoUring) }
        let result = Self.negotiateInit(i, wants: wants)
        state.withLock {
            $0.connection = result.info
            $0.decode = FuseDecodeContext(minor: min(i.minor, result.info.minor),
                                          setxattrExt: result.info.flags.contains(.setxattrExt),
                                          maxWrite: Int(result.info.maxWrite))
        }
        logger.info("FUSE 7.\(i.minor) kernel; negotiated minor \(result.info.minor), iomap \(result.info.iomap ? "on" : "off"), writeback cache \(result.info.flags.contains(.writebackCache) ? "on" : "off"), io_uring \(result.info.flags.contains(.overIoUring) ? "on" : "off"), max_write \(result.info.maxWrite)")
        fs.initialized(result.info, channel: transport)
        return FuseReplyEncoder.ok(unique: u, result.reply.encoded)
    }

    public static func offer(from i: FuseInitIn) -> FuseInitOffer {
        let ext = i.flags & UInt32(truncatingIfNeeded: FuseInitFlags.initExt.rawValue) != 0
        return FuseInitOffer(major: i.major, minor: i.minor, maxReadahead: i.maxReadahead,
                             flags: FuseInitFlags(low: i.flags, high: ext ? i.flags2 : 0))
    }

    /// Pure negotiation: what the kernel offers ∩ what the file system wants.
    public static func negotiateInit(_ i: FuseInitIn, wants: FuseInitWants) -> (reply: FuseInitOut, info: FuseConnectionInfo) {
        let offer = offer(from: i)
        var flags = offer.flags.intersection(wants.flags)
        // flags2 is only honoured with INIT_EXT; keep it whenever we send high bits.
        if flags.high != 0 { flags.insert(.initExt) }
        let iomap = flags.contains(.iomap)
        let minor = iomap ? FuseABI.iomapMinor : FuseABI.baseMinor
        let maxWrite = max(4096, min(wants.maxWrite, 1 << 20))
        let maxPages = UInt16((maxWrite + 4095) / 4096)
        let ra = min(offer.maxReadahead, wants.maxReadahead)
        var out = FuseInitOut(major: FuseABI.kernelVersion, minor: minor, maxReadahead: ra,
                              flags: flags.low, maxBackground: wants.maxBackground,
                              congestionThreshold: wants.congestionThreshold, maxWrite: maxWrite,
                              timeGran: max(1, min(wants.timeGran, 1_000_000_000)),
                              maxPages: flags.contains(.maxPages) ? maxPages : 0,
                              flags2: flags.high)
        if !flags.contains(.initExt) { out.flags2 = 0 }
        let info = FuseConnectionInfo(kernelMinor: i.minor, minor: minor, flags: flags,
                                      maxWrite: maxWrite, maxReadahead: ra)
        return (out, info)
    }
}
