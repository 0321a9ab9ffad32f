// Where FUSE messages travel: the real /dev/fuse, or a SOCK_SEQPACKET socket
// on which a test plays the kernel (one message per datagram). See docs/TESTING.md.

import CShim
import Glibc
import Synchronization

public struct FuseTransportError: Error, Equatable, Sendable, CustomStringConvertible {
    public let errno: Int32
    public let what: String
    public init(_ errno: Int32, _ what: String) { self.errno = errno; self.what = what }
    public var description: String { "\(what): \(String(cString: strerror(errno)))" }
}

public protocol FuseTransport: FuseChannel {
    /// Read one message. Returns its length, or nil when the connection is gone
    /// (unmount, abort, peer closed): the worker then ends.
    func receive(into buf: UnsafeMutableRawBufferPointer) throws(FuseTransportError) -> Int?
    /// Send one message assembled from parts. Returns 0 or a negative errno.
    func send(_ parts: [[UInt8]]) -> Int32
    /// A channel for one more worker thread (CLONE on /dev/fuse; shared for sockets).
    func workerChannel() throws(FuseTransportError) -> any FuseTransport
    /// Wake every worker blocked in receive (used after DESTROY on sockets).
    func wakeAll()
    /// Close this channel's fd (idempotent).
    func close()
}

/// Shared pieces: the fd, closing, and writev.
public class FuseFDTransport: @unchecked Sendable {
    let fdBox: Mutex<Int32>
    let owns: Bool
    public init(fd: Int32, ownsFD: Bool) { fdBox = Mutex(fd); owns = ownsFD }
    public var fd: Int32 { fdBox.withLock { $0 } }

    public func close() {
        let old = fdBox.withLock { v -> Int32 in let o = v; v = -1; return o }
        if owns && old >= 0 { _ = Glibc.close(old) }
    }

    func writeParts(_ parts: [[UInt8]]) -> Int32 {
        let fd = self.fd
        guard fd >= 0 else { return -EBADF }
        var total = 0
        for p in parts { total += p.count }
        // Assemble into one buffer: a single write() is one message on both transports.
        var msg = [UInt8]()
        msg.reserveCapacity(total)
        for p in parts { msg.append(contentsOf: p) }
        while true {
            let n = msg.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if n >= 0 { return n == total ? 0 : -EIO }
            if errno == EINTR { continue }
            return -errno
        }
    }

    func ioctlPtr(_ req: UInt, _ arg: UnsafeMutableRawPointer?) -> Int32 {
        cshim_ioctl_ptr(fd, req, arg)
    }

    deinit { close() }
}

/// The real kernel: /dev/fuse, with per-worker clones.
public final class DevFuseTransport: FuseFDTransport, FuseTransport, @unchecked Sendable {
    public func receive(into buf: UnsafeMutableRawBufferPointer) throws(FuseTransportError) -> Int? {
        while true {
            let fd = self.fd
            guard fd >= 0 else { return nil }
            let n = Glibc.read(fd, buf.baseAddress, buf.count)
            if n >= 0 { return n == 0 ? nil : n }
            switch errno {
            case EINTR, EAGAIN, ENOENT: continue  // ENOENT: request aborted before we read it
            case ENODEV: return nil  // unmounted / aborted
            default: throw FuseTransportError(errno, "read /dev/fuse")
            }
        }
    }

    public func send(_ parts: [[UInt8]]) -> Int32 {
        let r = writeParts(parts)
        return r == -ENOENT ? 0 : r  // ENOENT: the request was interrupted; nothing to do
    }

    /// A cloned fd when /dev/fuse can be opened; otherwise (a sandboxed server
    /// has no /dev/fuse, or may not open it) the workers share this fd, which
    /// the kernel supports: each read() still returns a different request.
    public func workerChannel() throws(FuseTransportError) -> any FuseTransport {
        let nfd = Glibc.open("/dev/fuse", O_RDWR | O_CLOEXEC)
        guard nfd >= 0 else {
            let e = errno
            if e == EACCES || e == EPERM || e == ENOENT || e == ENXIO { return SharedDevFuseView(parent: self) }
            throw FuseTransportError(e, "open /dev/fuse for a worker")
        }
        var src = UInt32(bitPattern: fd)
        let r = cshim_ioctl_ptr(nfd, UInt(FuseDevIoctl.clone), &src)
        guard r >= 0 else {
            _ = Glibc.close(nfd)
            throw FuseTransportError(-r, "FUSE_DEV_IOC_CLONE")
        }
        return DevFuseTransport(fd: nfd, ownsFD: true)
    }

    public func wakeAll() {}

    public func notify(_ code: FuseNotifyCode, payload: [UInt8]) -> Int32 {
        send([FuseReplyEncoder.notificationHeader(code, payloadCount: payload.count), payload])
    }

    public func backingOpen(fd bfd: Int32, flags: UInt32) -> Int32 {
        var m = FuseBackingMap(fd: bfd, flags: flags).encoded
        return m.withUnsafeMutableBytes { ioctlPtr(FuseDevIoctl.backingOpen, $0.baseAddress) }
    }

    public func backingClose(id: UInt32) -> Int32 {
        var v = id
        return ioctlPtr(FuseDevIoctl.backingClose, &v)
    }

    public func iomapSetBlocksize(id: UInt32, blocksize: UInt32) -> Int32 {
        var m = FuseIomapBackingInfo(backingId: id, blocksize: blocksize).encoded
        return m.withUnsafeMutableBytes { ioctlPtr(FuseDevIoctl.iomapSetBlocksize, $0.baseAddress) }
    }
}

/// A SOCK_SEQPACKET socket whose peer plays the kernel. The /dev/fuse-only
/// ioctls are answered here the way the kernel would.
public final class SocketTransport: FuseFDTransport, FuseTransport, @unchecked Sendable {
    /// Registered backing devices: id -> the server's (borrowed) fd. Ids are 1, 2, ... in order.
    private let backings = Mutex<(next: UInt32, fds: [UInt32: Int32])>((1, [:]))

    public func receive(into buf: UnsafeMutableRawBufferPointer) throws(FuseTransportError) -> Int? {
        while true {
            let fd = self.fd
            guard fd >= 0 else { return nil }
            // MSG_TRUNC reports the real datagram size, so an oversized one is detected.
            let n = Glibc.recv(fd, buf.baseAddress, buf.count, Int32(MSG_TRUNC))
            if n > 0 { return n }
            if n == 0 { return nil }
            switch errno {
            case EINTR, EAGAIN: continue
            case ECONNRESET, ENOTCONN, EBADF, ESHUTDOWN: return nil
            default: throw FuseTransportError(errno, "recv on the FUSE socket")
            }
        }
    }

    public func send(_ parts: [[UInt8]]) -> Int32 {
        let r = writeParts(parts)
        return r == -EPIPE || r == -ECONNRESET ? -ENODEV : r
    }

    public func workerChannel() throws(FuseTransportError) -> any FuseTransport {
        // Datagrams are atomic; workers share the socket. The session holds this
        // transport, so the worker view does not own the fd.
        SharedSocketView(parent: self)
    }

    public func wakeAll() {
        let fd = self.fd
        if fd >= 0 { _ = Glibc.shutdown(fd, Int32(SHUT_RD)) }
    }

    public func notify(_ code: FuseNotifyCode, payload: [UInt8]) -> Int32 {
        send([FuseReplyEncoder.notificationHeader(code, payloadCount: payload.count), payload])
    }

    public func backingOpen(fd bfd: Int32, flags: UInt32) -> Int32 {
        let type = flags & FuseIomap.backingTypeMask
        guard type == FuseIomap.backingTypeIomap || type == FuseIomap.backingTypePassthrough else { return -EOPNOTSUPP }
        guard flags & ~FuseIomap.backingTypeMask == 0 else { return -EINVAL }
        // The fd is borrowed, not dup'ed: the server keeps its device open for
        // the whole session, and dup is not in the serving filter (the real
        // kernel takes its own reference inside the ioctl).
        var st = stat()
        guard fstat(bfd, &st) == 0 else { return -EBADF }
        return backings.withLock { st -> Int32 in
            let id = st.next
            st.next += 1
            st.fds[id] = bfd
            return Int32(id)
        }
    }

    public func backingClose(id: UInt32) -> Int32 {
        guard id > 0 else { return -EINVAL }
        let fd = backings.withLock { $0.fds.removeValue(forKey: id) }
        return fd == nil ? -ENOENT : 0
    }

    public func iomapSetBlocksize(id: UInt32, blocksize: UInt32) -> Int32 {
        guard let fd = backings.withLock({ $0.fds[id] }) else { return -ENOENT }
        var bs = Int32(bitPattern: blocksize)
        let r = cshim_ioctl_ptr(fd, cshim_BLKBSZSET(), &bs)
        return r < 0 ? r : 0
    }

    /// The fd registered under a backing id (tests use it to do the IO a kernel would).
    public func backingFD(_ id: UInt32) -> Int32? { backings.withLock { $0.fds[id] } }

    public override func close() {
        backings.withLock { $0.fds = [:] }
        super.close()
    }
}

/// A worker's view of a shared socket: same fd, does not close it.
final class SharedSocketView: FuseTransport, @unchecked Sendable {
    let parent: SocketTransport
    init(parent: SocketTransport) { self.parent = parent }
    func receive(into buf: UnsafeMutableRawBufferPointer) throws(FuseTransportError) -> Int? { try parent.receive(into: buf) }
    func send(_ parts: [[UInt8]]) -> Int32 { parent.send(parts) }
    func workerChannel() throws(FuseTransportError) -> any FuseTransport { SharedSocketView(parent: parent) }
    func wakeAll() { parent.wakeAll() }
    func close() {}
    func notify(_ code: FuseNotifyCode, payload: [UInt8]) -> Int32 { parent.notify(code, payload: payload) }
    func backingOpen(fd: Int32, flags: UInt32) -> Int32 { parent.backingOpen(fd: fd, flags: flags) }
    func backingClose(id: UInt32) -> Int32 { parent.backingClose(id: id) }
    func iomapSetBlocksize(id: UInt32, blocksize: UInt32) -> Int32 { parent.iomapSetBlocksize(id: id, blocksize: blocksize) }
}

/// A worker's view of a shared /dev/fuse fd: same fd, does not close it.
final class SharedDevFuseView: FuseTransport, @unchecked Sendable {
    let parent: DevFuseTransport
    init(parent: DevFuseTransport) { self.parent = parent }
    func receive(into buf: UnsafeMutableRawBufferPointer) throws(FuseTransportError) -> Int? { try parent.receive(into: buf) }
    func send(_ parts: [[UInt8]]) -> Int32 { parent.send(parts) }
    func workerChannel() throws(FuseTransportError) -> any FuseTransport { SharedDevFuseView(parent: parent) }
    func wakeAll() {}
    func close() {}
    func notify(_ code: FuseNotifyCode, payload: [UInt8]) -> Int32 { parent.notify(code, payload: payload) }
    func backingOpen(fd: Int32, flags: UInt32) -> Int32 { parent.backingOpen(fd: fd, flags: flags) }
    func backingClose(id: UInt32) -> Int32 { parent.backingClose(id: id) }
    func iomapSetBlocksize(id: UInt32, blocksize: UInt32) -> Int32 { parent.iomapSetBlocksize(id: id, blocksize: blocksize) }
}
