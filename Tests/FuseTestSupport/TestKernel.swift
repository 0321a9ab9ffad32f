// The test "kernel" shared by the test targets: plays the kernel's side of the
// FUSE protocol over a SOCK_SEQPACKET socketpair against a real FuseSession
// (see docs/TESTING.md).

import Foundation
import FuseKernel
import Glibc
import Logging

public final class TestKernel: @unchecked Sendable {
    public let kernelFD: Int32
    public let transport: SocketTransport
    public let session: FuseSession
    private let done = DispatchSemaphore(value: 0)
    public private(set) var runError: (any Error)?
    private var unique: UInt64 = 0
    /// Notifications (unique 0) the server sent while a call waited for its
    /// reply: (code, payload), oldest first.
    public private(set) var notifications: [(code: Int32, payload: [UInt8])] = []

    public init(fs: any FuseFileSystem, workers: Int = 3, logLevel: Logger.Level = .warning) throws {
        var sv: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &sv) == 0 else {
            throw FuseError(errno)
        }
        kernelFD = sv[0]
        transport = SocketTransport(fd: sv[1], ownsFD: true)
        var logger = Logger(label: "test-kernel")
        logger.logLevel = logLevel
        session = FuseSession(transport: transport, fileSystem: fs, options: FuseSessionOptions(workers: workers), logger: logger)
        let t = Thread { [self] in
            do { try session.run() } catch { runError = error }
            done.signal()
        }
        t.start()
    }

    public func sendRaw(_ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { Glibc.send(kernelFD, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    /// Next message from the server, or nil after `timeout` seconds.
    public func receive(timeout: Int32 = 5000) -> [UInt8]? {
        var p = pollfd(fd: kernelFD, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, timeout) == 1 else { return nil }
        var buf = [UInt8](repeating: 0, count: 1 << 21)
        let n = buf.withUnsafeMutableBytes { Glibc.recv(kernelFD, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { return nil }
        return Array(buf[0..<n])
    }

    /// Send a request and wait for its reply: (errno as sent, payload).
    public func call(_ req: FuseRequest, node: UInt64 = FuseABI.rootID) throws -> (error: Int32, payload: [UInt8]) {
        unique += 2
        let u = unique
        sendRaw(FuseRequestEncoder.encode(FuseRequestHeader(opcodeRaw: 0, unique: u, nodeid: node), req))
        while true {
            guard let r = receive() else { throw FuseError(ETIMEDOUT) }
            let h = try FuseOutHeader.decode(Array(r.prefix(16)))
            guard Int(h.len) == r.count else { throw FuseError(EPROTO) }
            if h.unique == 0 {
                notifications.append((h.error, Array(r.dropFirst(16))))
                continue
            }
            guard h.unique == u else { throw FuseError(EPROTO) }
            return (h.error, Array(r.dropFirst(16)))
        }
    }

    public func initialize(minor: UInt32 = 45, flags: FuseInitFlags) throws -> FuseInitOut {
        let i = FuseInitIn(major: 7, minor: minor, maxReadahead: 131072, flags: flags.low, flags2: flags.high)
        let (e, p) = try call(.initialize(i), node: 0)
        guard e == 0 else { throw FuseError(-e) }
        return try FuseInitOut.decode(p)
    }

    /// Close the kernel side (like an unmount) and wait for the session to end.
    public func finish(timeout: Double = 10) -> Bool {
        _ = Glibc.shutdown(kernelFD, Int32(SHUT_RDWR))
        let ok = done.wait(timeout: .now() + timeout) == .success
        _ = Glibc.close(kernelFD)
        transport.close()
        return ok
    }

    public func waitForEnd(timeout: Double = 10) -> Bool { done.wait(timeout: .now() + timeout) == .success }
}
