#if canImport(Glibc)
import Glibc
#endif
import CShim

/// One received datagram. The caller owns `fds`.
public struct Datagram: Sendable {
    public var bytes: [UInt8]
    public var fds: [Int32]
    /// fds beyond the first few that were closed on arrival.
    public var extraFDs: Int
    /// The control data was truncated (an fd may have been dropped).
    public var controlTruncated: Bool

    public func closeFDs() { for fd in fds { FD.close(fd) } }
}

/// fd helpers: close and count.
public enum FD {
    public static func close(_ fd: Int32) {
        if fd >= 0 { _ = Glibc.close(fd) }
    }
    /// Number of open fds of this process (/proc/self/fd), for leak checks.
    public static func openCount() -> Int {
        guard let d = opendir("/proc/self/fd") else { return -1 }
        defer { closedir(d) }
        var n = 0
        while readdir(d) != nil { n += 1 }
        return n
    }
}

/// CLOCK_MONOTONIC in nanoseconds: every deadline of the helper is measured on it.
func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// SOCK_SEQPACKET datagram I/O: one message per datagram, bounded, with timeouts.
public enum Transport {
    /// Send one datagram with at most one fd.
    public static func send(_ sock: Int32, _ bytes: [UInt8], fd: Int32 = -1) throws(BrokerError) {
        let r = bytes.withUnsafeBytes { p in cshim_broker_send(sock, p.baseAddress, p.count, fd) }
        if r < 0 {
            let e = Int32(clamping: -r)
            if e == EPIPE || e == ECONNRESET { throw .peerClosed }
            // SO_SNDTIMEO ran out: the peer stopped reading.
            if e == EAGAIN || e == EWOULDBLOCK { throw .system(operation: "sendmsg (peer is not reading)", errno: ETIMEDOUT) }
            throw .system(operation: "sendmsg", errno: e)
        }
        if r != bytes.count { throw .system(operation: "sendmsg (short)", errno: EMSGSIZE) }
    }

    public static func send(_ sock: Int32, _ m: ServiceMessage, fd: Int32 = -1) throws(BrokerError) {
        try send(sock, ServiceCodec.encode(m), fd: fd)
    }

    /// Receive one datagram of at most `ServiceProtocol.maxMessageSize` bytes,
    /// waiting at most `timeoutMs` (-1 = forever). At most `maxFDs` fds are kept;
    /// any more are closed. EOF throws `.peerClosed`; an oversize datagram throws
    /// `.malformed(.tooLong)` after closing any fds it carried.
    public static func receive(_ sock: Int32, timeoutMs: Int, maxFDs: Int = 1) throws(BrokerError) -> Datagram {
        let cap = ServiceProtocol.maxMessageSize
        var buf = [UInt8](repeating: 0, count: cap)
        var fds = [Int32](repeating: -1, count: 4)
        var nfds: Int32 = 0, extra: Int32 = 0, flags: Int32 = 0
        let keep = Int32(max(0, min(maxFDs, 4)))
        let r = buf.withUnsafeMutableBytes { p in
            fds.withUnsafeMutableBufferPointer { f in
                cshim_broker_recv(sock, p.baseAddress, p.count, Int32(clamping: timeoutMs),
                                  f.baseAddress, keep, &nfds, &extra, &flags)
            }
        }
        if r < 0 {
            let e = Int32(clamping: -r)
            if e == ETIMEDOUT { throw .timedOut(milliseconds: timeoutMs) }
            if e == ECONNRESET { throw .peerClosed }
            throw .system(operation: "recvmsg", errno: e)
        }
        let got = Array(fds.prefix(Int(max(0, min(nfds, keep)))))
        if r == 0 {
            for fd in got { FD.close(fd) }
            throw .peerClosed
        }
        if r > cap {
            for fd in got { FD.close(fd) }
            throw .malformed(.tooLong(r))
        }
        return Datagram(bytes: Array(buf.prefix(r)), fds: got, extraFDs: Int(extra),
                        controlTruncated: (flags & Int32(MSG_CTRUNC)) != 0)
    }

    /// Create a connected SOCK_SEQPACKET pair (close-on-exec).
    public static func socketPair() throws(BrokerError) -> (Int32, Int32) {
        var sv: [Int32] = [-1, -1]
        let r = sv.withUnsafeMutableBufferPointer { p in
            socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, p.baseAddress)
        }
        if r != 0 { throw .system(operation: "socketpair", errno: errno) }
        return (sv[0], sv[1])
    }

    /// Refuse fds from the peer (SO_PASSRIGHTS=0); ENOPROTOOPT on older kernels is fine.
    public static func dropPassRights(_ sock: Int32) {
        _ = cshim_broker_drop_passrights(sock)
    }
}
