// FUSE over io_uring (kernel 6.14+, `fuse.enable_uring=1`): the kernel keeps
// one request queue per CPU and hands each request to a ring entry registered
// on the queue of the CPU the caller runs on. A server thread pinned to that
// CPU answers it there, so a request costs no cross-CPU wakeup: on a small VM
// that is most of a classic /dev/fuse round trip (see docs/BENCHMARKS.md).
//
// Shape: `FuseUringRings.create` makes the rings (one per thread, restricted
// to IORING_OP_URING_CMD) while io_uring_setup is still allowed, before the
// sandbox. The session starts their threads before INIT; each pins itself to
// its queue's CPU and enables its ring (becoming its only submitter), and
// FUSE_OVER_IO_URING is offered only when all of them could. After the INIT
// reply every thread registers one entry (a 288-byte
// header buffer and a payload buffer) on its queue, then loops: wait for a
// request, rebuild it as the classic message, run it through the same
// dispatch as /dev/fuse, write the reply into the entry, COMMIT_AND_FETCH.
// FORGET, INTERRUPT and notifications stay on /dev/fuse (the kernel sends
// them there), so the classic workers keep running. If registration fails
// the kernel falls back to /dev/fuse by itself.
//
// Every length in the entry header comes from the kernel and is checked
// before use; a request that does not add up is answered with EIO.

import CShim
import Foundation
import Glibc
import Logging
import Synchronization

/// Layout of `struct fuse_uring_req_header` (linux/fuse.h, 7.42).
public enum FuseUringABI {
    static let opInOffset = 128
    public static let opInSize = 128
    static let entInOutOffset = 256
    public static let headerSize = 288  // in_out + op_in + fuse_uring_ent_in_out (32)
    static let commitIdOffset = entInOutOffset + 8
    public static let payloadSzOffset = entInOutOffset + 16
    static let cmdRegister: UInt32 = 1
    static let cmdCommitAndFetch: UInt32 = 2
}

/// Rings made ahead of the sandbox: `threadsPerQueue` per possible CPU.
public final class FuseUringRings: @unchecked Sendable {
    struct Slot {
        let ring: UnsafeMutablePointer<cshim_uring>
        let qid: UInt16
    }
    let slots: [Slot]
    public let queues: Int
    public var threads: Int { slots.count }
    /// Malformed ring entries are logged once per mount.
    let loggedMalformed = Atomic<Bool>(false)

    private init(slots: [Slot], queues: Int) { self.slots = slots; self.queues = queues }

    /// The kernel makes one queue per possible CPU and must see an entry on
    /// every one of them before it switches over.
    public static func possibleCPUs() -> Int { max(1, sysconf(Int32(_SC_NPROCESSORS_CONF))) }

    /// Create the rings, or say why not (io_uring disabled by sysctl, old kernel...).
    /// `queues`: the number of possible CPUs, counted while /sys was still
    /// reachable (glibc reads it from /sys/devices/system/cpu/possible).
    public static func create(threadsPerQueue: Int, queues: Int = possibleCPUs()) -> Result<FuseUringRings, FuseTransportError> {
        guard queues >= 1 else { return .failure(FuseTransportError(EINVAL, "io_uring: no CPUs")) }
        guard queues <= Int(UInt16.max) else { return .failure(FuseTransportError(EINVAL, "io_uring: too many CPUs")) }
        let per = max(1, min(threadsPerQueue, 16))
        var slots: [Slot] = []
        for q in 0..<queues {
            for _ in 0..<per {
                let r = UnsafeMutablePointer<cshim_uring>.allocate(capacity: 1)
                let rc = cshim_uring_open(r, 4)
                guard rc == 0 else {
                    r.deallocate()
                    for s in slots { cshim_uring_close(s.ring); s.ring.deallocate() }
                    return .failure(FuseTransportError(-rc, "io_uring_setup"))
                }
                slots.append(Slot(ring: r, qid: UInt16(q)))
            }
        }
        return .success(FuseUringRings(slots: slots, queues: queues))
    }

    deinit {
        for s in slots { cshim_uring_close(s.ring); s.ring.deallocate() }
    }
}

/// Where the session and its uring threads meet before INIT: each thread
/// reports whether it enabled its ring, then waits for the verdict (go after
/// an INIT reply that accepted io_uring; anything else ends the thread).
final class FuseUringGate: @unchecked Sendable {
    private let cond = NSCondition()
    private var ready = 0, failed = 0
    private var verdict: Bool?

    func threadFailed() { cond.lock(); failed += 1; cond.broadcast(); cond.unlock() }

    /// Report ready and wait for the verdict.
    func readyAndWait() -> Bool {
        cond.lock()
        defer { cond.unlock() }
        ready += 1
        cond.broadcast()
        while verdict == nil { cond.wait() }
        return verdict ?? false
    }

    /// Wait until every thread has reported; true when none failed.
    func waitReady(threads: Int) -> Bool {
        cond.lock()
        defer { cond.unlock() }
        while ready + failed < threads { cond.wait() }
        return failed == 0
    }

    /// The first call decides; later calls change nothing.
    func decide(go: Bool) {
        cond.lock()
        if verdict == nil { verdict = go }
        cond.broadcast()
        cond.unlock()
    }
}

/// What a uring thread hands to the shared dispatch as its channel: replies
/// are captured (then written into the ring entry); notifications and the
/// /dev/fuse ioctls go to the real device.
final class FuseUringReplySink: FuseTransport, @unchecked Sendable {
    let dev: any FuseTransport
    var reply: [[UInt8]]?
    init(dev: any FuseTransport) { self.dev = dev }

    func receive(into buf: UnsafeMutableRawBufferPointer) throws(FuseTransportError) -> Int? { nil }
    func send(_ parts: [[UInt8]]) -> Int32 { reply = parts; return 0 }
    func workerChannel() throws(FuseTransportError) -> any FuseTransport { throw FuseTransportError(EINVAL, "uring sink") }
    func wakeAll() {}
    func close() {}
    func notify(_ code: FuseNotifyCode, payload: [UInt8]) -> Int32 { dev.notify(code, payload: payload) }
    func backingOpen(fd: Int32, flags: UInt32) -> Int32 { dev.backingOpen(fd: fd, flags: flags) }
    func backingClose(id: UInt32) -> Int32 { dev.backingClose(id: id) }
    func iomapSetBlocksize(id: UInt32, blocksize: UInt32) -> Int32 { dev.iomapSetBlocksize(id: id, blocksize: blocksize) }
}

/// Rebuilding the classic message from a ring entry, and placing a reply in
/// one (pure, unit-tested).
public enum FuseUringMessage {
    /// Room kept in front of the payload so header + op header + payload are
    /// one contiguous message without copying the payload.
    public static let headroom = FuseInHeader.wireSize + FuseUringABI.opInSize

    /// Where the message starts inside the payload allocation (`headroom`
    /// bytes in front of the payload), or nil when the kernel's lengths do not
    /// add up. `len` is fuse_in_header.len, `payloadSize` the entry's
    /// payload_sz, `capacity` the payload buffer size.
    public static func layout(len: UInt32, payloadSize: UInt32, capacity: Int) -> (opSize: Int, start: Int)? {
        let l = Int(len), p = Int(payloadSize)
        guard p <= capacity, l >= FuseInHeader.wireSize + p else { return nil }
        let op = l - FuseInHeader.wireSize - p
        guard op <= FuseUringABI.opInSize else { return nil }
        return (op, headroom - op - FuseInHeader.wireSize)
    }

    /// The reply's first 16 bytes (fuse_out_header) go to the entry header,
    /// the rest to the payload buffer, its size to payload_sz. A reply too
    /// big for the buffer becomes EIO.
    public static func writeReply(_ parts: [[UInt8]], unique: UInt64, header: UnsafeMutableRawBufferPointer,
                           payload: UnsafeMutableRawBufferPointer) {
        var total = 0
        for p in parts { total += p.count }
        var parts = parts
        if total < FuseOutHeader.wireSize || total - FuseOutHeader.wireSize > payload.count {
            parts = [FuseReplyEncoder.error(unique: unique, errno: EIO)]
        }
        var hdrFill = 0, bodyFill = 0
        for p in parts {
            p.withUnsafeBytes { src in
                var off = 0
                if hdrFill < FuseOutHeader.wireSize {
                    let n = min(FuseOutHeader.wireSize - hdrFill, src.count)
                    UnsafeMutableRawBufferPointer(rebasing: header[hdrFill..<(hdrFill + n)])
                        .copyMemory(from: UnsafeRawBufferPointer(rebasing: src[0..<n]))
                    hdrFill += n
                    off = n
                }
                let rest = src.count - off
                if rest > 0 {
                    UnsafeMutableRawBufferPointer(rebasing: payload[bodyFill..<(bodyFill + rest)])
                        .copyMemory(from: UnsafeRawBufferPointer(rebasing: src[off...]))
                    bodyFill += rest
                }
            }
        }
        header.storeBytes(of: UInt32(truncatingIfNeeded: bodyFill), toByteOffset: FuseUringABI.payloadSzOffset, as: UInt32.self)
    }
}

extension FuseSession {
    /// One uring thread: register, then serve requests until the connection ends.
    func uringLoop(_ rings: FuseUringRings, _ index: Int, gate: FuseUringGate, dev: any FuseTransport, fuseFD: Int32) {
        let ring = rings.slots[index].ring, qid = rings.slots[index].qid
        _ = cshim_pin_thread_to_cpu(Int32(qid))  // an offline CPU just means no pinning
        // Enabling makes this thread the ring's only submitter.
        let en = cshim_uring_enable(ring)
        guard en == 0 else {
            logger.warning("io_uring queue \(qid): enabling the ring failed: \(String(cString: strerror(-en)))")
            gate.threadFailed()
            return
        }
        guard gate.readyAndWait() else { return }  // INIT went without io_uring
        let payloadCap = (1 << 20) + 64 * 1024
        let header = UnsafeMutableRawBufferPointer.allocate(byteCount: FuseUringABI.headerSize, alignment: 64)
        let area = UnsafeMutableRawBufferPointer.allocate(byteCount: FuseUringMessage.headroom + payloadCap, alignment: 64)
        let iov = UnsafeMutablePointer<iovec>.allocate(capacity: 2)
        defer { header.deallocate(); area.deallocate(); iov.deallocate() }
        header.initializeMemory(as: UInt8.self, repeating: 0)
        iov[0] = iovec(iov_base: header.baseAddress, iov_len: FuseUringABI.headerSize)
        iov[1] = iovec(iov_base: area.baseAddress.map { $0 + FuseUringMessage.headroom }, iov_len: payloadCap)
        let payload = UnsafeMutableRawBufferPointer(rebasing: area[FuseUringMessage.headroom...])
        let sink = FuseUringReplySink(dev: dev)

        func register() -> Bool {
            cshim_uring_fuse_cmd(ring, fuseFD, FuseUringABI.cmdRegister, qid, 0, iov, 0) == 0
        }
        guard register() else { return }
        var registered = false
        while true {
            var userData: UInt64 = 0
            var res: Int32 = 0
            let rc = cshim_uring_submit_wait(ring, &userData, &res)
            if rc < 0 {
                logger.error("io_uring queue \(qid): io_uring_enter: \(String(cString: strerror(-rc)))")
                return
            }
            if res < 0 {
                switch -res {
                case ENOTCONN, ECONNABORTED, ECANCELED, ENODEV:
                    return  // the connection is gone (unmount, abort)
                case ENOENT where registered:
                    // The kernel no longer knew the request we committed; the
                    // entry is lost with it. Register a fresh one.
                    logger.warning("io_uring queue \(qid): commit not found; registering the entry again")
                    guard register() else { return }
                    continue
                default:
                    logger.warning("io_uring queue \(qid): \(registered ? "commit" : "register") failed: \(String(cString: strerror(-res))); this thread stops (requests fall back to /dev/fuse if no entry is left)")
                    return
                }
            }
            registered = true
            let len = header.load(fromByteOffset: 0, as: UInt32.self)
            let unique = header.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
            let commitId = header.loadUnaligned(fromByteOffset: FuseUringABI.commitIdOffset, as: UInt64.self)
            let payloadSz = header.loadUnaligned(fromByteOffset: FuseUringABI.payloadSzOffset, as: UInt32.self)
            var reply: [[UInt8]]
            if let (opSize, start) = FuseUringMessage.layout(len: len, payloadSize: payloadSz, capacity: payloadCap) {
                // fuse_in_header, then the op header, then the payload already in place.
                let dst = area.baseAddress.map { $0 + start }
                if let dst, let src = header.baseAddress {
                    dst.copyMemory(from: src, byteCount: FuseInHeader.wireSize)
                    (dst + FuseInHeader.wireSize).copyMemory(from: src + FuseUringABI.opInOffset, byteCount: opSize)
                }
                sink.reply = nil
                handle(UnsafeRawBufferPointer(rebasing: area[start..<(start + Int(len))]), on: sink)
                reply = sink.reply ?? [FuseReplyEncoder.error(unique: unique, errno: EIO)]
            } else {
                if !rings.loggedMalformed.exchange(true, ordering: .relaxed) {
                    logger.warning("io_uring queue \(qid): malformed request (len \(len), payload \(payloadSz)); answered EIO (logged once)")
                }
                reply = [FuseReplyEncoder.error(unique: unique, errno: EIO)]
            }
            FuseUringMessage.writeReply(reply, unique: unique, header: header, payload: payload)
            guard cshim_uring_fuse_cmd(ring, fuseFD, FuseUringABI.cmdCommitAndFetch, qid, commitId, nil, 0) == 0 else {
                logger.error("io_uring queue \(qid): submission queue full")
                return
            }
        }
    }
}
