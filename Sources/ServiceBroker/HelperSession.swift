#if canImport(Glibc)
import Glibc
#endif
import CShim
import LoopDevices

/// What the helper was asked to do, from its own command line only.
public struct HelperConfiguration: Sendable {
    /// "ext4" — from -t fuse.ext4 or argv[0].
    public var subtype: String
    public var source: String
    public var mountpoint: String
    /// The -o string (may be empty).
    public var options: String
    /// Arguments forwarded in the argv memfd after the subtype (source, mountpoint, -o ...).
    public var forwardedArgs: [String]
    /// -r / -o ro: read-only end to end.
    public var readOnly: Bool
    /// -n: do not write utab.
    public var noMtab: Bool
    /// -f: do everything except the mount system call.
    public var fake: Bool
    public var fuseDevicePath: String
    /// Per-message timeout while waiting for the server.
    public var receiveTimeoutMs: Int
    /// Block size given to loop devices when the server does not name one.
    public var defaultLoopBlockSize: UInt32

    public init(subtype: String, source: String, mountpoint: String, options: String = "",
                forwardedArgs: [String]? = nil, readOnly: Bool = false, noMtab: Bool = false, fake: Bool = false,
                fuseDevicePath: String = "/dev/fuse", receiveTimeoutMs: Int = 60_000,
                defaultLoopBlockSize: UInt32 = 0) {
        self.subtype = subtype
        self.source = source
        self.mountpoint = mountpoint
        self.options = options
        self.forwardedArgs = forwardedArgs ?? ([source, mountpoint] + (options.isEmpty ? [] : ["-o", options]))
        self.readOnly = readOnly || MountOptions.tokens(options).contains("ro")
        self.noMtab = noMtab
        self.fake = fake
        self.fuseDevicePath = fuseDevicePath
        self.receiveTimeoutMs = receiveTimeoutMs
        self.defaultLoopBlockSize = defaultLoopBlockSize
    }

    /// Paths the server may ask the helper to open: the source and every
    /// option value named on the command line.
    public var allowedOpenPaths: Set<String> {
        var s: Set<String> = [source]
        for t in MountOptions.tokens(options) {
            if let eq = t.firstIndex(of: "=") {
                let v = String(t[t.index(after: eq)...])
                if !v.isEmpty { s.insert(v) }
            }
        }
        return s
    }
}

/// Option-string helpers (comma-separated, no quoting beyond libmount's).
public enum MountOptions {
    public static func tokens(_ s: String) -> [String] {
        s.split(separator: ",", omittingEmptySubsequences: true).map(String.init)
    }
}

/// How a helper session ended.
public enum HelperOutcome: Equatable, Sendable {
    /// The server said goodbye with this exit code.
    case goodbye(exitCode: UInt32, mounted: Bool)
}

/// Linux mount flags the server may ask for in DOIT.
enum MS {
    static let rdonly: UInt32 = 1
    static let nosuid: UInt32 = 2
    static let nodev: UInt32 = 4
    static let noexec: UInt32 = 8
    static let synchronous: UInt32 = 16
    static let mandlock: UInt32 = 64
    static let dirsync: UInt32 = 128
    static let noatime: UInt32 = 1024
    static let nodiratime: UInt32 = 2048
    static let silent: UInt32 = 32768
    static let relatime: UInt32 = 1 << 21
    static let strictatime: UInt32 = 1 << 24
    static let lazytime: UInt32 = 1 << 25
    static let allowed: UInt32 = rdonly | nosuid | nodev | noexec | synchronous | dirsync | noatime
        | nodiratime | silent | relatime | strictatime | lazytime
}

/// The helper side of one connection. Single-threaded, blocking, bounded.
public final class HelperSession {
    public let config: HelperConfiguration
    let sock: Int32
    public private(set) var version: UInt16 = 0
    public private(set) var mounted = false
    /// Human-readable reason for the last refusal, for the helper's one error line.
    public private(set) var lastFailure: String?

    var fuseFD: Int32 = -1
    var mountpointFD: Int32 = -1
    var mountpointStat = stat()
    var fsopenFlags: FsopenFlags?
    var sourceName: String?
    var serverOptions: String?
    var mtabOptions: String?
    var iomapMandatoryFailure: String?
    var iomapTried = false
    let log: (String) -> Void
    /// Run once the server has answered HELLO, before the helper hands it any
    /// file (spawn mode empties the server's root here).
    public var afterHello: (() throws(BrokerError) -> Void)?

    /// `socket` stays owned by the caller.
    public init(socket: Int32, config: HelperConfiguration, log: @escaping (String) -> Void = { _ in }) {
        self.sock = socket
        self.config = config
        self.log = log
    }

    deinit {
        FD.close(fuseFD)
        FD.close(mountpointFD)
    }

    /// Run the whole conversation. On any error before a goodbye, a mount made
    /// in this session is detached again, so no half-made mount stays behind.
    public func run() throws(BrokerError) -> HelperOutcome {
        do {
            let outcome = try converse()
            close()
            return outcome
        } catch {
            undoMount()
            close()
            throw error
        }
    }

    func close() {
        FD.close(fuseFD); fuseFD = -1
        FD.close(mountpointFD); mountpointFD = -1
    }

    func undoMount() {
        guard mounted else { return }
        _ = umount2(config.mountpoint, Int32(MNT_DETACH))
        if !config.noMtab { Utab.remove(target: config.mountpoint) }
        mounted = false
    }

    func converse() throws(BrokerError) -> HelperOutcome {
        Transport.dropPassRights(sock)
        try Transport.send(sock, .hello(minVersion: ServiceProtocol.minVersion, maxVersion: ServiceProtocol.maxVersion,
                                        flags: getuid() == 0 ? [.allowOther, .fuseblk] : []))
        let reply = try receive()
        guard case .helloReply(let v) = reply else { throw .sequence("expected hello reply, got \(reply.magic)") }
        guard v >= ServiceProtocol.minVersion && v <= ServiceProtocol.maxVersion else {
            throw .sequence("server picked unsupported version \(v)")
        }
        version = v
        try afterHello?()

        // argv memfd
        let argvFD = try makeArgvMemfd()
        defer { FD.close(argvFD) }
        try Transport.send(sock, .file(error: 0, path: ServiceProtocol.argvName), fd: argvFD)

        fuseFD = try openFuseDevice()
        try Transport.send(sock, .file(error: 0, path: ServiceProtocol.fuseDevName), fd: fuseFD)

        while true {
            let m = try receive()
            if case .goodbye(let code) = m {
                return .goodbye(exitCode: code, mounted: mounted)
            }
            try handle(m)
        }
    }

    /// Receive and decode one message; fds from the server are never accepted.
    /// Malformed known commands are refused (EINVAL) and the loop carries on,
    /// up to a bound; unknown magics end the session.
    func receive() throws(BrokerError) -> ServiceMessage {
        var strikes = 0
        while true {
            let d = try Transport.receive(sock, timeoutMs: config.receiveTimeoutMs, maxFDs: 0)
            d.closeFDs()
            let carriedFDs = d.extraFDs > 0 || d.controlTruncated || !d.fds.isEmpty
            let decoded: Result<ServiceMessage, WireError>
            do throws(WireError) {
                decoded = .success(try ServiceCodec.decode(d.bytes, version: version))
            } catch {
                decoded = .failure(error)
            }
            switch decoded {
            case .success(let m):
                if !carriedFDs { return m }
                if case .goodbye = m { return m }
                lastFailure = "server tried to pass file descriptors"
                log("refusing \(m.magic): server tried to pass file descriptors")
                try replyFor(magic: m.magic.rawValue, errno: EPERM)
            case .failure(let error):
                if case .unknownMagic = error { throw .malformed(error) }
                if version == 0 { throw .malformed(error) }
                lastFailure = "malformed request: \(error)"
                log(lastFailure ?? "")
                try replyFor(magic: ServiceCodec.peekMagic(d.bytes) ?? 0, errno: error.errno)
            }
            strikes += 1
            if strikes > 64 { throw .sequence("too many malformed messages from server") }
        }
    }

    /// Send the refusal the server expects for a command with this magic.
    func replyFor(magic: UInt32, errno e: Int32) throws(BrokerError) {
        switch Magic(rawValue: magic) {
        case .open?, .openBlockDevice?:
            try Transport.send(sock, .file(error: UInt32(e), path: "?"))
        case .goodbye?:
            break
        case nil:
            throw .malformed(.unknownMagic(magic))
        default:
            try Transport.send(sock, .simpleReply(error: UInt32(e)))
        }
    }

    func reply(_ e: Int32) throws(BrokerError) {
        try Transport.send(sock, .simpleReply(error: UInt32(max(0, e))))
    }

    func fail(_ why: String, _ e: Int32) throws(BrokerError) {
        lastFailure = why
        log(why)
        try reply(e)
    }

    // MARK: commands

    func handle(_ m: ServiceMessage) throws(BrokerError) {
        switch m {
        case .open(let r):
            try handleOpen(r)
        case .iomap(let mode):
            try handleIomap(mode)
        case .fsopen(let f):
            if fsopenFlags != nil { return try fail("TYPE respecified", EINVAL) }
            if f.contains(.fuseblk) && getuid() != 0 { return try fail("fuseblk needs root", EPERM) }
            fsopenFlags = f
            try reply(0)
        case .source(let s):
            if sourceName != nil { return try fail("NAME respecified", EINVAL) }
            if s.isEmpty || s.utf8.count > 4096 { return try fail("bad source name", EINVAL) }
            sourceName = s
            try reply(0)
        case .options(let s):
            if serverOptions != nil { return try fail("OPTS respecified", EINVAL) }
            if let bad = MountOptions.tokens(s).first(where: { Self.reservedOption($0) }) {
                return try fail("server may not set mount option \(bad)", EPERM)
            }
            serverOptions = s
            try reply(0)
        case .mtab(let s):
            if mtabOptions != nil { return try fail("MTAB respecified", EINVAL) }
            mtabOptions = s
            try reply(0)
        case .mountpoint(let fmt, let path):
            try handleMountpoint(fmt, path)
        case .mount(let flags):
            try handleMount(flags)
        case .hello, .helloReply, .simpleReply, .file, .goodbye:
            throw .sequence("unexpected \(m.magic) from server")
        }
    }

    static func reservedOption(_ t: String) -> Bool {
        let key = t.split(separator: "=", maxSplits: 1).first.map(String.init) ?? t
        return ["fd", "rootmode", "user_id", "group_id", "subtype", "source"].contains(key)
    }

    func sendFile(error e: Int32, path: String, fd: Int32 = -1) throws(BrokerError) {
        try Transport.send(sock, .file(error: UInt32(e), path: path), fd: fd)
    }

    func handleOpen(_ r: OpenRequest) throws(BrokerError) {
        func refuse(_ why: String, _ e: Int32) throws(BrokerError) {
            lastFailure = "\(why): \(r.path)"
            if !r.requestFlags.contains(.quiet) { log("refused open of \(r.path): \(why)") }
            try sendFile(error: e, path: r.path)
        }
        if mountpointFD >= 0 { return try refuse("open after the mountpoint was sent", EPERM) }
        if !config.allowedOpenPaths.contains(r.path) { return try refuse("path not named on the command line", EPERM) }
        // Only access mode and a few harmless flags; never O_CREAT/O_TRUNC/etc.
        let allowedFlags = UInt32(O_ACCMODE | O_EXCL | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW) | UInt32(cshim_broker_O_DIRECT())
            | UInt32(O_SYNC) | UInt32(O_DSYNC) | 0o100000 /* O_LARGEFILE */
        if r.openFlags & ~allowedFlags != 0 { return try refuse("unsupported open flags", EINVAL) }
        let acc = Int32(r.openFlags) & O_ACCMODE
        if acc == O_ACCMODE { return try refuse("bad access mode", EINVAL) }
        if config.readOnly && acc != O_RDONLY { return try refuse("read-only mount", EROFS) }
        if r.blockSize != 0 && !BlockDevice.isValidBlockSize(r.blockSize) { return try refuse("bad block size", EINVAL) }

        var fd: Int32 = -1
        while true {
            fd = Glibc.open(r.path, Int32(bitPattern: r.openFlags) | O_CLOEXEC | O_NOCTTY)
            if fd >= 0 { break }
            let e = errno
            if e == EINTR { continue }
            return try refuse("open failed", e)
        }
        defer { FD.close(fd) }
        var st = stat()
        if fstat(fd, &st) != 0 { return try refuse("fstat failed", errno) }
        let isReg = (st.st_mode & S_IFMT) == S_IFREG
        let isBlk = (st.st_mode & S_IFMT) == S_IFBLK
        if !isReg && !isBlk { return try refuse("not a regular file or block device", EINVAL) }

        var sendFD = fd
        var loopFD: Int32 = -1
        defer { FD.close(loopFD) }
        if r.requestFlags.contains(.loopDevice) && isReg {
            do {
                let loop = try LoopDevice.attach(backingFD: fd, options: LoopAttachOptions(
                    readOnly: acc == O_RDONLY,
                    blockSize: r.blockSize != 0 ? r.blockSize : config.defaultLoopBlockSize))
                loopFD = loop.fd
                sendFD = loop.fd
                log("attached \(r.path) to \(loop.path)")
            } catch {
                if error.errno == EBUSY { return try refuse("\(error)", EBUSY) }
                // Any other loop failure: hand out the plain file; the server runs without a bdev.
                log("no loop device for \(r.path): \(error); passing the file")
            }
        }
        if r.kind == .blockDevice {
            if sendFD == fd && !isBlk { return try refuse("not a block device", ENOTBLK) }
            if r.blockSize != 0 && sendFD == fd {
                do { try BlockDevice.setBlockSize(fd: fd, r.blockSize) } catch {
                    return try refuse("BLKBSZSET failed", error.errno)
                }
            }
        }
        do {
            try sendFile(error: 0, path: r.path, fd: sendFD)
        } catch {
            if loopFD >= 0 { LoopDevice.detach(fd: loopFD) }
            throw error
        }
    }

    func handleIomap(_ mode: IomapMode) throws(BrokerError) {
        iomapTried = true
        switch Iomap.preapprove(fuseFD: fuseFD) {
        case .success:
            try reply(0)
        case .failure(let e):
            let why = "kernel has no FUSE iomap support (\(strerrorString(e)))"
            if mode == .mandatory {
                iomapMandatoryFailure = "iomap was required but " + why
                try fail(iomapMandatoryFailure ?? why, e)
            } else {
                // v2: the errno is reported in both modes; only mandatory mode
                // makes the mount fail later.
                log("iomap not available: \(why); continuing without it")
                try reply(e)
            }
        }
    }

    func handleMountpoint(_ fmt: UInt16, _ path: String) throws(BrokerError) {
        if mountpointFD >= 0 { return try fail("MNTP respecified", EINVAL) }
        if path != config.mountpoint { return try fail("mountpoint \(path) is not the one on the command line", EINVAL) }
        let fd = Glibc.open(path, cshim_broker_O_PATH() | O_CLOEXEC)
        if fd < 0 { return try fail("cannot open mountpoint \(path)", errno) }
        var st = stat()
        if fstat(fd, &st) != 0 { let e = errno; FD.close(fd); return try fail("fstat mountpoint", e) }
        let kind = st.st_mode & S_IFMT
        if kind != S_IFDIR && kind != S_IFREG { FD.close(fd); return try fail("mountpoint is not a directory or file", ENOTDIR) }
        if fmt == UInt16(S_IFDIR) && kind != S_IFDIR { FD.close(fd); return try fail("mountpoint \(path) is not a directory", ENOTDIR) }
        if fmt == UInt16(S_IFREG) && kind != S_IFREG { FD.close(fd); return try fail("mountpoint \(path) is a directory", EISDIR) }
        mountpointFD = fd
        mountpointStat = st
        try reply(0)
    }

    func handleMount(_ requested: UInt32) throws(BrokerError) {
        if mounted { return try fail("DOIT repeated", EINVAL) }
        guard let source = sourceName, mountpointFD >= 0 else { return try fail("DOIT without NAME or MNTP", EINVAL) }
        if requested & ~MS.allowed != 0 { return try fail("unsupported mount flags 0x\(String(requested, radix: 16))", EINVAL) }
        if let why = iomapMandatoryFailure { return try fail(why, EOPNOTSUPP) }
        if !iomapTried && version >= 2 {
            // No IOMA before DOIT: try once, optionally.
            iomapTried = true
            _ = Iomap.preapprove(fuseFD: fuseFD)
        }
        var flags = requested
        if config.readOnly { flags |= MS.rdonly }
        // The mountpoint must not have moved since it was pinned.
        var now = stat()
        if stat(config.mountpoint, &now) != 0 || now.st_dev != mountpointStat.st_dev || now.st_ino != mountpointStat.st_ino {
            return try fail("mountpoint \(config.mountpoint) moved during startup", EBUSY)
        }
        let request = KernelMount.Request(
            fuseblk: fsopenFlags?.contains(.fuseblk) ?? false, subtype: config.subtype, source: source,
            serverOptions: serverOptions ?? "", fuseFD: fuseFD, rootMode: UInt32(mountpointStat.st_mode & S_IFMT),
            uid: getuid(), gid: getgid(), msFlags: flags, targetFD: mountpointFD, targetPath: config.mountpoint)
        if config.fake {
            try reply(0)
            return
        }
        switch KernelMount.mount(request) {
        case .failure(let err):
            return try fail(err.description, err.errno)
        case .success:
            mounted = true
        }
        if !config.noMtab && !(mtabOptions.map { MountOptions.tokens($0).contains("-n") } ?? false) {
            Utab.add(source: source, target: config.mountpoint, fstype: request.fstype,
                     options: mtabOptions ?? "", log: log)
        }
        try reply(0)
    }

    func makeArgvMemfd() throws(BrokerError) -> Int32 {
        let bytes: [UInt8]
        do { bytes = try ArgvCodec.encode([config.subtype] + config.forwardedArgs) } catch {
            throw .malformed(error)
        }
        let fd = cshim_memfd_create("fuse service argv", 0x0001 | 0x0002) // MFD_CLOEXEC | MFD_ALLOW_SEALING
        if fd < 0 { throw .system(operation: "memfd_create", errno: -fd) }
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { p in pwrite(fd, p.baseAddress.map { $0 + off }, bytes.count - off, off_t(off)) }
            if n < 0 {
                if errno == EINTR { continue }
                let e = errno
                FD.close(fd)
                throw .system(operation: "write argv memfd", errno: e)
            }
            off += n
        }
        // F_ADD_SEALS(1033): SEAL_SHRINK|SEAL_GROW|SEAL_WRITE|SEAL_SEAL
        _ = fcntl(fd, 1033, Int32(0x0002 | 0x0004 | 0x0008 | 0x0001))
        return fd
    }

    func openFuseDevice() throws(BrokerError) -> Int32 {
        while true {
            let fd = Glibc.open(config.fuseDevicePath, O_RDWR | O_CLOEXEC)
            if fd >= 0 {
                var st = stat()
                if fstat(fd, &st) != 0 || (st.st_mode & S_IFMT) != S_IFCHR {
                    FD.close(fd)
                    throw .system(operation: "\(config.fuseDevicePath) is not a character device", errno: ENODEV)
                }
                return fd
            }
            if errno == EINTR { continue }
            throw .system(operation: "open \(config.fuseDevicePath)", errno: errno)
        }
    }
}

/// iomap pre-approval on /dev/fuse (kernel patch series v7 ioctls).
public enum Iomap {
    /// FUSE_DEV_IOC_IOMAP_SUPPORT = _IOR(229, 99, 16 bytes)
    static let supportIoctl: UInt = 0x8010_E563
    /// FUSE_DEV_IOC_ADD_IOMAP = _IO(229, 101)
    static let addIoctl: UInt = 0x0000_E565

    public enum Result: Equatable, Sendable { case success, failure(Int32) }

    public static func preapprove(fuseFD: Int32) -> Result {
        var buf = [UInt8](repeating: 0, count: 16)
        let s = buf.withUnsafeMutableBytes { p in cshim_ioctl_ptr(fuseFD, supportIoctl, p.baseAddress) }
        if s < 0 { return .failure(-s) }
        let r = cshim_ioctl_int(fuseFD, addIoctl, 0)
        if r < 0 { return .failure(-r) }
        return .success
    }
}
