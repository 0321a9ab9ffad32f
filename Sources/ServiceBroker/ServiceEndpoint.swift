#if canImport(Glibc)
import Glibc
#endif
import CShim

/// The server side of the helper<->server protocol. The helper is untrusted
/// too: every message and the argv memfd are bounded and validated.
public final class ServiceEndpoint {
    public let socket: Int32
    /// Negotiated version (0 before `hello()`).
    public private(set) var version: UInt16 = 0
    /// HELLO flags offered by the helper.
    public private(set) var helperFlags: HelloFlags = []
    /// How long to wait for each helper reply.
    public var timeoutMs: Int
    /// Highest version this endpoint speaks (tests lower it to act as a v1 server).
    public var supportedMaxVersion: UInt16
    private var ownsSocket: Bool
    private var said = false

    /// Use an inherited connected SOCK_SEQPACKET socket (socketpair or fd 3).
    /// The endpoint owns and closes it.
    public init(inheritedFD fd: Int32, timeoutMs: Int = 60_000,
                supportedMaxVersion: UInt16 = ServiceProtocol.maxVersion) throws(BrokerError) {
        var type: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        if getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 {
            throw .system(operation: "fd \(fd) is not a socket", errno: errno == EBADF ? EBADF : ENOTSOCK)
        }
        if type != Int32(SOCK_SEQPACKET.rawValue) {
            throw .system(operation: "fd \(fd) is not a SOCK_SEQPACKET socket", errno: EPROTOTYPE)
        }
        var sa = sockaddr_storage()
        var salen = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let ok = withUnsafeMutablePointer(to: &sa) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &salen) }
        }
        if ok != 0 || sa.ss_family != sa_family_t(AF_UNIX) {
            throw .system(operation: "fd \(fd) is not an AF_UNIX socket", errno: EAFNOSUPPORT)
        }
        let fl = fcntl(fd, F_GETFD)
        if fl >= 0 { _ = fcntl(fd, F_SETFD, fl | FD_CLOEXEC) }
        socket = fd
        self.timeoutMs = timeoutMs
        self.supportedMaxVersion = supportedMaxVersion
        ownsSocket = true
    }

    /// systemd socket activation: LISTEN_PID == getpid(), LISTEN_FDS == 1, fd 3.
    /// Returns nil when not socket-activated. Also accepts EXT4IOMAP_SERVICE_FD
    /// (spawn mode) as an inherited socket.
    public static func fromSocketActivation(timeoutMs: Int = 60_000) throws(BrokerError) -> ServiceEndpoint? {
        if let pidS = env("LISTEN_PID"), let fdsS = env("LISTEN_FDS") {
            guard let pid = Int32(pidS), pid == getpid() else { return nil }
            guard let n = Int(fdsS) else { return nil }
            if n != 1 { throw .system(operation: "LISTEN_FDS=\(n), expected 1", errno: E2BIG) }
            unsetenv("LISTEN_PID"); unsetenv("LISTEN_FDS"); unsetenv("LISTEN_FDNAMES")
            return try ServiceEndpoint(inheritedFD: 3, timeoutMs: timeoutMs)
        }
        if let s = env("EXT4IOMAP_SERVICE_FD"), let fd = Int32(s), fd >= 0 {
            unsetenv("EXT4IOMAP_SERVICE_FD")
            return try ServiceEndpoint(inheritedFD: fd, timeoutMs: timeoutMs)
        }
        return nil
    }

    static func env(_ name: String) -> String? {
        guard let p = getenv(name) else { return nil }
        return String(cString: p)
    }

    deinit {
        if ownsSocket { FD.close(socket) }
    }

    /// Close the socket now (after goodbye, FUSE traffic uses /dev/fuse only).
    public func close() {
        if ownsSocket { FD.close(socket); ownsSocket = false }
    }

    // MARK: handshake

    /// Wait for HELLO, pick a version, reply. Returns the version.
    @discardableResult
    public func hello() throws(BrokerError) -> UInt16 {
        let m = try receiveMessage(expectFD: false).0
        guard case .hello(let lo, let hi, let flags) = m else { throw .sequence("expected HELLO, got \(m.magic)") }
        guard let v = ServiceCodec.negotiate(offeredMin: lo, offeredMax: hi, supportedMax: supportedMaxVersion) else {
            throw .sequence("helper offers versions \(lo)...\(hi); we speak 1...\(supportedMaxVersion)")
        }
        try Transport.send(socket, .helloReply(version: v))
        version = v
        helperFlags = flags
        return v
    }

    /// Receive FILE "argv" and decode the memfd: [subtype, helper args...].
    public func receiveArgs() throws(BrokerError) -> [String] {
        let fd = try receiveFile(expecting: ServiceProtocol.argvName)
        defer { FD.close(fd) }
        var st = stat()
        if fstat(fd, &st) != 0 { throw .system(operation: "fstat argv memfd", errno: errno) }
        if (st.st_mode & S_IFMT) != S_IFREG { throw .malformed(.badValue("argv is not a regular file")) }
        let size = Int(st.st_size)
        if size < 8 || size > ServiceProtocol.maxArgvSize { throw .malformed(.badValue("argv memfd size \(size)")) }
        var buf = [UInt8](repeating: 0, count: size)
        var off = 0
        while off < size {
            let n = buf.withUnsafeMutableBytes { p in pread(fd, p.baseAddress.map { $0 + off }, size - off, off_t(off)) }
            if n < 0 { if errno == EINTR { continue }; throw .system(operation: "read argv memfd", errno: errno) }
            if n == 0 { break }
            off += n
        }
        do { return try ArgvCodec.decode(Array(buf.prefix(off))) } catch { throw .malformed(error) }
    }

    /// Receive FILE "fusedev": the /dev/fuse fd (caller owns it). The helper is
    /// trusted to hand over the kernel's channel; a test helper may hand over a
    /// connected AF_UNIX SOCK_SEQPACKET socket whose peer plays the kernel.
    public func receiveFuseDevice() throws(BrokerError) -> Int32 {
        let fd = try receiveFile(expecting: ServiceProtocol.fuseDevName)
        var st = stat()
        if fstat(fd, &st) == 0 && (st.st_mode & S_IFMT) == S_IFCHR { return fd }
        if fstat(fd, &st) == 0 && (st.st_mode & S_IFMT) == S_IFSOCK && Self.isSeqpacketUnix(fd) { return fd }
        FD.close(fd)
        throw .malformed(.badValue("fusedev is not a character device"))
    }

    /// Is `fd` a connected AF_UNIX SOCK_SEQPACKET socket?
    public static func isSeqpacketUnix(_ fd: Int32) -> Bool {
        var type: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0, type == Int32(SOCK_SEQPACKET.rawValue) else {
            return false
        }
        var sa = sockaddr_storage()
        var salen = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let ok = withUnsafeMutablePointer(to: &sa) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &salen) }
        }
        return ok == 0 && sa.ss_family == sa_family_t(AF_UNIX)
    }

    // MARK: resources

    /// OPEN: ask the helper to open a file named on its command line.
    public func requestFile(path: String, flags: Int32, createMode: UInt32 = 0, quiet: Bool = false,
                            loop: Bool = false, blockSize: UInt32 = 0) throws(BrokerError) -> Int32 {
        try request(OpenRequest(kind: .file, openFlags: UInt32(bitPattern: flags), createMode: createMode,
                                requestFlags: requestFlags(quiet: quiet, loop: loop), blockSize: blockSize, path: path))
    }

    /// BDEV: ask for a block device (or, with `loop` on v2, a loop device over an
    /// image file). `readOnly` forces O_RDONLY. Returns the fd (caller owns it).
    public func requestBlockDevice(path: String, flags: Int32, loop: Bool, readOnly: Bool,
                                   blockSize: UInt32) throws(BrokerError) -> Int32 {
        var f = flags
        if readOnly { f = (f & ~O_ACCMODE) | O_RDONLY }
        return try request(OpenRequest(kind: .blockDevice, openFlags: UInt32(bitPattern: f), createMode: 0,
                                       requestFlags: requestFlags(quiet: false, loop: loop), blockSize: blockSize,
                                       path: path))
    }

    func requestFlags(quiet: Bool, loop: Bool) -> OpenRequestFlags {
        var r: OpenRequestFlags = quiet ? [.quiet] : []
        if loop && version >= 2 { r.insert(.loopDevice) }
        return r
    }

    func request(_ r: OpenRequest) throws(BrokerError) -> Int32 {
        if r.path.isEmpty || r.path.utf8.count > 4096 { throw .malformed(.badValue("bad path")) }
        try Transport.send(socket, .open(r))
        return try receiveFile(expecting: r.path)
    }

    /// IOMA (v2): pre-approve iomap. Returns true when the helper approved it.
    /// Optional mode never fails on a kernel without iomap; mandatory mode throws.
    @discardableResult
    public func requestIomap(mandatory: Bool) throws(BrokerError) -> Bool {
        if version < 2 {
            if mandatory { throw .refused(operation: "iomap (helper speaks only version 1)", errno: EOPNOTSUPP) }
            return false
        }
        try Transport.send(socket, .iomap(mode: mandatory ? .mandatory : .optional))
        let e = try simpleReply()
        if e != 0 {
            if mandatory { throw .refused(operation: "iomap pre-approval", errno: e) }
            return false
        }
        return true
    }

    /// Stop accepting fds from the helper (after all files arrived).
    public func finishFileRequests() {
        Transport.dropPassRights(socket)
    }

    // MARK: mount

    /// TYPE NAME MNTP OPTS MTAB DOIT. `fstype` "fuseblk.*" sets the FUSEBLK flag;
    /// the helper builds the real fstype from its own command line.
    public func mount(fstype: String, source: String, mountpoint: String, options: String?,
                      mtabOptions: String?, flags: UInt32, expectedFormat: UInt16 = UInt16(S_IFDIR)) throws(BrokerError) {
        try command(.fsopen(flags: fstype.hasPrefix("fuseblk") ? [.fuseblk] : []), "TYPE")
        try command(.source(source), "NAME")
        try command(.mountpoint(expectedFormat: expectedFormat, path: mountpoint), "MNTP")
        if let o = options, !o.isEmpty { try command(.options(o), "OPTS") }
        if let m = mtabOptions, !m.isEmpty { try command(.mtab(m), "MTAB") }
        try command(.mount(msFlags: flags), "DOIT")
    }

    func command(_ m: ServiceMessage, _ name: String) throws(BrokerError) {
        try Transport.send(socket, m)
        let e = try simpleReply()
        if e != 0 { throw .refused(operation: name, errno: e) }
    }

    /// BYEE: the last message. The helper exits with `status`.
    public func goodbye(status: UInt32) throws(BrokerError) {
        if said { return }
        said = true
        try Transport.send(socket, .goodbye(exitCode: status))
    }

    // MARK: receiving

    func simpleReply() throws(BrokerError) -> Int32 {
        let (m, _) = try receiveMessage(expectFD: false)
        guard case .simpleReply(let e) = m else { throw .sequence("expected REPL, got \(m.magic)") }
        return Int32(clamping: e)
    }

    /// FILE with `path`: returns the fd, or throws `.refused` with the helper's errno.
    func receiveFile(expecting path: String) throws(BrokerError) -> Int32 {
        let (m, fd) = try receiveMessage(expectFD: true)
        guard case .file(let e, let p) = m else {
            FD.close(fd)
            throw .sequence("expected FILE, got \(m.magic)")
        }
        if e != 0 {
            FD.close(fd)
            throw .refused(operation: "open \(path)", errno: Int32(clamping: e))
        }
        if p != path {
            FD.close(fd)
            throw .sequence("FILE for \(p), expected \(path)")
        }
        if fd < 0 { throw .sequence("FILE \(path) without a file descriptor") }
        return fd
    }

    /// One message; at most one fd, and only when expected. Extra fds are closed
    /// and make the message invalid.
    func receiveMessage(expectFD: Bool) throws(BrokerError) -> (ServiceMessage, Int32) {
        let d = try Transport.receive(socket, timeoutMs: timeoutMs, maxFDs: expectFD ? 1 : 0)
        let fd = d.fds.first ?? -1
        if d.extraFDs > 0 || d.controlTruncated {
            d.closeFDs()
            throw .sequence(expectFD ? "more than one file descriptor in a message" : "unexpected file descriptor")
        }
        do {
            return (try ServiceCodec.decode(d.bytes, version: version), fd)
        } catch {
            FD.close(fd)
            throw .malformed(error)
        }
    }
}
