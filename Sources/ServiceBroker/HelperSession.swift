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
    /// Per-message timeout while waiting for the server; also the send timeout.
    public var receiveTimeoutMs: Int
    /// Bound on the whole conversation, however chatty the server is.
    public var sessionTimeoutMs: Int
    /// Bound on the number of messages the server may send in one session.
    public var maxMessages: Int
    /// Block size given to loop devices when the server does not name one.
    public var defaultLoopBlockSize: UInt32

    public init(subtype: String, source: String, mountpoint: String, options: String = "",
                forwardedArgs: [String]? = nil, readOnly: Bool = false, noMtab: Bool = false, fake: Bool = false,
                fuseDevicePath: String = "/dev/fuse", receiveTimeoutMs: Int = 60_000,
                sessionTimeoutMs: Int = 300_000, maxMessages: Int = 256,
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
        self.sessionTimeoutMs = sessionTimeoutMs
        self.maxMessages = maxMessages
        self.defaultLoopBlockSize = defaultLoopBlockSize
    }

    /// Option keys whose value names a file the server may ask the helper to
    /// open (an external journal). No other option value is ever opened.
    public static let fileOptionKeys: Set<String> = ["journal_path"]

    /// The `-o key=value` pairs whose key names a file, in command-line order.
    public var fileOptions: [(key: String, value: String)] {
        MountOptions.tokens(options).compactMap { t in
            guard let eq = t.firstIndex(of: "=") else { return nil }
            let k = String(t[..<eq]), v = String(t[t.index(after: eq)...])
            return Self.fileOptionKeys.contains(k) ? (k, v) : nil
        }
    }

    /// Mount flags the helper imposes from its own command line, whatever the
    /// server asks: nosuid and nodev unless the admin said `suid` / `dev`,
    /// and the admin's restrictions (ro, noexec, noatime, ...).
    public var imposedMountFlags: UInt32 {
        let t = Set(MountOptions.tokens(options))
        var f: UInt32 = 0
        if !t.contains("suid") { f |= MS.nosuid }
        if !t.contains("dev") { f |= MS.nodev }
        if readOnly { f |= MS.rdonly }
        let named: [String: UInt32] = ["nosuid": MS.nosuid, "nodev": MS.nodev, "noexec": MS.noexec,
                                       "noatime": MS.noatime, "nodiratime": MS.nodiratime,
                                       "sync": MS.synchronous, "dirsync": MS.dirsync]
        for (k, v) in named where t.contains(k) { f |= v }
        return f
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
///
/// The helper is the security boundary: nothing the server says widens what
/// it gets. The source, the files named by file options and the mountpoint are
/// pinned by inode before the server is involved (`PinnedResources`); every
/// open is served from those pins, each at most once; the mount's source,
/// type, mandatory flags and access options come from the helper's own
/// configuration; the mount made here is undone through its own fd.
public final class HelperSession {
    public let config: HelperConfiguration
    let sock: Int32
    public private(set) var version: UInt16 = 0
    public private(set) var mounted = false
    /// Human-readable reason for the last refusal, for the helper's one error line.
    public private(set) var lastFailure: String?

    var pinned: PinnedResources?
    var fuseFD: Int32 = -1
    /// The mount this session made (fsmount fd, or an O_PATH fd on its root).
    var mountFD: Int32 = -1
    /// The source as handed to the server, when it went out as a block device
    /// (the device itself, or this helper's loop device over the image) with
    /// an ext4 superblock: the mount is then `fuseblk` on it.
    var sourceBlock: BlockSource?
    /// The helper's own exclusive open of that device, held from the hand-out
    /// until just before the mount, when the kernel claims it for the mount
    /// (the server's fd is not exclusive: the kernel's claim would fail).
    var sourceClaimFD: Int32 = -1
    /// A non-exclusive fd on this helper's loop device, to detach it when the
    /// mount is undone.
    var loopFD: Int32 = -1
    var undone = false
    var mountpointGiven = false
    var fsopenSeen = false
    var sourceSeen = false
    var serverOptions: String?
    var mtabOptions: String?
    /// Paths already handed to the server: each pinned file goes out once.
    var handedOut: Set<String> = []
    var iomapMandatoryFailure: String?
    var iomapTried = false
    var messages = 0
    var deadline: Int64 = 0
    let log: (String) -> Void
    /// Run once the server has answered HELLO, before the helper hands it any
    /// file (spawn mode empties the server's root here).
    public var afterHello: (() throws(BrokerError) -> Void)?

    /// A connected SOCK_SEQPACKET socket handed over as "fusedev" instead of a
    /// fresh /dev/fuse fd, for test programs that play the kernel against the
    /// real server (with `fake`, no mount is made). fuservicemount never sets it.
    let fuseChannel: Int32

    /// `socket` stays owned by the caller. `pinned`: the resources pinned at
    /// start-up, before any server was started or contacted (pinned here when nil).
    public init(socket: Int32, config: HelperConfiguration, pinned: PinnedResources? = nil,
                fuseChannel: Int32 = -1, log: @escaping (String) -> Void = { _ in }) {
        self.sock = socket
        self.config = config
        self.pinned = pinned
        self.fuseChannel = fuseChannel
        self.log = log
    }

    deinit { close() }

    /// Run the whole conversation. On any error before a goodbye, a mount made
    /// in this session is detached again, so no half-made mount stays behind.
    public func run() throws(BrokerError) -> HelperOutcome {
        do {
            var outcome = try converse()
            if case .goodbye(let code, true) = outcome, code != 0 {
                // The server failed after the mount was made: take it down.
                undoMount()
                outcome = .goodbye(exitCode: code, mounted: false)
            }
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
        // The last reference to an undone mount goes here: its superblock is
        // released (and the kernel's claim on the device with it).
        FD.close(mountFD); mountFD = -1
        FD.close(sourceClaimFD); sourceClaimFD = -1
        if loopFD >= 0 && undone { LoopDevice.detach(fd: loopFD) }
        FD.close(loopFD); loopFD = -1
        pinned = nil
    }

    /// Detach the mount this session made, through its own fd: a path swapped
    /// since cannot make the helper detach anything else. The FUSE connection
    /// is aborted first: releasing a fuseblk superblock sends DESTROY and
    /// waits for the answer, which a failed (or hostile) server may never
    /// give. The loop device is detached in `close()`, once the mount's last
    /// reference is gone.
    func undoMount() {
        guard mounted else { return }
        if mountFD >= 0 {
            if let dev = DeviceNumber.of(fd: mountFD) {
                let e = FuseBlock.abortConnection(dev: dev)
                if e != 0 { log("could not abort the FUSE connection \(dev) of the half-made mount: \(strerrorString(e))") }
            }
            let r = cshim_pin_umount_fd(mountFD, Int32(MNT_DETACH))
            if r < 0 { log("could not detach the half-made mount: \(strerrorString(-r))") }
        }
        if !config.noMtab { Utab.remove(target: config.mountpoint) }
        mounted = false
        undone = true
    }

    static func monotonicMs() -> Int64 { Int64(monotonicNanoseconds() / 1_000_000) }

    /// The whole-session deadline has passed.
    func sessionExpired() -> BrokerError {
        lastFailure = "the server did not finish within \(config.sessionTimeoutMs / 1000) s"
        return .timedOut(milliseconds: config.sessionTimeoutMs)
    }

    func converse() throws(BrokerError) -> HelperOutcome {
        deadline = Self.monotonicMs() + Int64(max(1, config.sessionTimeoutMs))
        if pinned == nil { pinned = try PinnedResources(config) }
        Transport.dropPassRights(sock)
        // A server that stops reading cannot park the helper in sendmsg.
        _ = cshim_pin_send_timeout(sock, Int32(clamping: max(1, config.receiveTimeoutMs)))
        // FUSEBLK is not offered: the helper itself decides when a mount is
        // fuseblk (the source handed out as a block device), and a server's
        // TYPE only gets an error for any other source.
        try Transport.send(sock, .hello(minVersion: ServiceProtocol.minVersion, maxVersion: ServiceProtocol.maxVersion,
                                        flags: getuid() == 0 ? [.allowOther] : []))
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
    /// up to a bound; unknown magics end the session. Every message counts
    /// against the session's message cap and deadline.
    func receive() throws(BrokerError) -> ServiceMessage {
        var strikes = 0
        while true {
            let left = deadline - Self.monotonicMs()
            if left <= 0 { throw sessionExpired() }
            let wait = Int(min(Int64(config.receiveTimeoutMs), left))
            let d: Datagram
            do throws(BrokerError) {
                d = try Transport.receive(sock, timeoutMs: wait, maxFDs: 0)
            } catch {
                if case .timedOut = error, wait < config.receiveTimeoutMs { throw sessionExpired() }
                throw error
            }
            d.closeFDs()
            messages += 1
            if messages > config.maxMessages {
                lastFailure = "the server sent more than \(config.maxMessages) messages"
                throw .sequence(lastFailure ?? "too many messages")
            }
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
            if fsopenSeen { return try fail("TYPE respecified", EINVAL) }
            // The helper decides the mount type: fuseblk exactly when the
            // source went out as a block device (its own loop device included),
            // and the kernel's source is then that device, never a name the
            // server chose. Asking for fuseblk on any other source is refused.
            if f.contains(.fuseblk) && sourceBlock == nil {
                return try fail("fuseblk needs the source handed out as a block device first", EOPNOTSUPP)
            }
            fsopenSeen = true
            try reply(0)
        case .source(let s):
            if sourceSeen { return try fail("NAME respecified", EINVAL) }
            // The kernel's source is always the helper's own (config.source); the
            // server's name is accepted for the protocol's sake and never used.
            if s.isEmpty || s.utf8.count > 4096 { return try fail("bad source name", EINVAL) }
            if s != config.source { log("server named the source \(Self.shown(s)); the mount's source stays \(config.source)") }
            sourceSeen = true
            try reply(0)
        case .options(let s):
            if serverOptions != nil { return try fail("OPTS respecified", EINVAL) }
            if let bad = MountOptions.tokens(s).first(where: { !Self.serverMayAsk($0) }) {
                return try fail("server may not set mount option \(Self.shown(bad))", EPERM)
            }
            serverOptions = s
            try reply(0)
        case .mtab(let s):
            if mtabOptions != nil { return try fail("MTAB respecified", EINVAL) }
            if let bad = MountOptions.tokens(s).first(where: { $0 != "ro" && $0 != "rw" }) {
                return try fail("utab option \(Self.shown(bad)) is not allowed (only ro or rw)", EINVAL)
            }
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

    /// A string the server chose, made safe for the admin's terminal and log:
    /// every `isTerminalControl` character (so every escape sequence's start)
    /// becomes a \u{..} escape, and it is cut at 256 characters.
    static func shown(_ s: String) -> String {
        var out = ""
        for (i, u) in s.unicodeScalars.enumerated() {
            if i == 256 { out += "..."; break }
            if isTerminalControl(u.value) {
                out += "\\u{" + String(u.value, radix: 16) + "}"
            } else {
                out.unicodeScalars.append(u)
            }
        }
        return out
    }

    /// The FUSE mount options a server may ask for: tuning only. The helper
    /// decides access (allow_other, default_permissions) itself; a server
    /// naming those is tolerated and changes nothing.
    static func serverMayAsk(_ t: String) -> Bool {
        if t == "allow_other" || t == "default_permissions" { return true }
        let kv = t.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
        guard kv.count == 2, kv[0] == "max_read" else { return false }
        return !kv[1].isEmpty && kv[1].count <= 10 && kv[1].allSatisfy { $0 >= "0" && $0 <= "9" }
    }

    /// What the helper hands the kernel as FUSE options of its own.
    static let helperAccessOptions = ["allow_other", "default_permissions"]

    func sendFile(error e: Int32, path: String, fd: Int32 = -1) throws(BrokerError) {
        try Transport.send(sock, .file(error: UInt32(e), path: path), fd: fd)
    }

    func handleOpen(_ r: OpenRequest) throws(BrokerError) {
        func refuse(_ why: String, _ e: Int32) throws(BrokerError) {
            lastFailure = "\(why): \(Self.shown(r.path))"
            if !r.requestFlags.contains(.quiet) { log("refused open of \(Self.shown(r.path)): \(why)") }
            try sendFile(error: e, path: r.path)
        }
        if mountpointGiven { return try refuse("open after the mountpoint was sent", EPERM) }
        guard let file = pinned?.file(named: r.path) else {
            return try refuse("path not named on the command line as the source or a file option", EPERM)
        }
        if handedOut.contains(r.path) { return try refuse("already handed out once", EPERM) }
        // Only access mode and a few harmless flags; never O_CREAT/O_TRUNC/etc.
        let allowedFlags = UInt32(O_ACCMODE | O_EXCL | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW) | UInt32(cshim_broker_O_DIRECT())
            | UInt32(O_SYNC) | UInt32(O_DSYNC) | 0o100000 /* O_LARGEFILE */
        if r.openFlags & ~allowedFlags != 0 { return try refuse("unsupported open flags", EINVAL) }
        let acc = Int32(r.openFlags) & O_ACCMODE
        if acc == O_ACCMODE { return try refuse("bad access mode", EINVAL) }
        if (config.readOnly || !file.writable) && acc != O_RDONLY { return try refuse("read-only source", EROFS) }
        if r.blockSize != 0 && !BlockDevice.isValidBlockSize(r.blockSize) { return try refuse("bad block size", EINVAL) }

        // O_NOFOLLOW and O_EXCL mean nothing for a pinned inode; the rest is the request's.
        let passFlags = Int32(bitPattern: r.openFlags) & ~(O_NOFOLLOW | O_EXCL | O_CLOEXEC)
        // Block devices are opened exclusively: a device in use (mounted,
        // claimed) is refused here, and nobody can claim it after.
        let fd = file.open(flags: passFlags)
        if fd < 0 {
            if -fd == EBUSY { return try refuse("device is busy (mounted or in exclusive use)", EBUSY) }
            if -fd == ESTALE { return try refuse("the pinned file changed", ESTALE) }
            return try refuse("open failed", -fd)
        }
        // fds this call opened and still owns when it returns.
        var owned: [Int32] = [fd]
        defer { for f in owned { FD.close(f) } }

        var sendFD = fd
        var loop: AttachedLoop?
        if r.requestFlags.contains(.loopDevice) && file.isRegular {
            do {
                let l = try LoopDevice.attach(backingFD: fd, options: LoopAttachOptions(
                    readOnly: acc == O_RDONLY,
                    blockSize: r.blockSize != 0 ? r.blockSize : config.defaultLoopBlockSize))
                owned.append(l.fd)
                loop = l
                sendFD = l.fd
                log("attached \(r.path) to \(l.path)")
            } catch {
                if error.errno == EBUSY { return try refuse("\(error)", EBUSY) }
                // Any other loop failure: hand out the plain file; the server runs without a bdev.
                log("no loop device for \(r.path): \(error); passing the file")
            }
        }
        if r.kind == .blockDevice {
            if loop == nil && !file.isBlockDevice { return try refuse("not a block device", ENOTBLK) }
            if r.blockSize != 0 && loop == nil {
                do { try BlockDevice.setBlockSize(fd: fd, r.blockSize) } catch {
                    return try refuse("BLKBSZSET failed", error.errno)
                }
            }
        }
        // The source as a block device: the mount will be fuseblk on it. The
        // helper keeps the exclusive fd (sendFD) as its claim until the mount,
        // and the server gets a non-exclusive one, as the kernel opens the
        // device exclusively itself when it mounts.
        var block: BlockSource?
        var claim: Int32 = -1
        if file === pinned?.source && (loop != nil || file.isBlockDevice) {
            switch FuseBlock.source(path: loop?.path ?? file.path, fd: sendFD) {
            case .success(let b):
                let shared = cshim_pin_reopen(sendFD, passFlags)
                if shared >= 0 {
                    owned.append(shared)
                    block = b
                    claim = sendFD
                    sendFD = shared
                } else {
                    log("\(b.path): no second, non-exclusive open (\(strerrorString(-shared))); mounting as plain fuse")
                }
            case .failure(let why):
                log("\(loop?.path ?? file.path): \(why); mounting as plain fuse (umount will not wait for the server)")
            }
        }
        do {
            try sendFile(error: 0, path: r.path, fd: sendFD)
            handedOut.insert(r.path)
        } catch {
            if let l = loop { LoopDevice.detach(fd: l.fd) }
            throw error
        }
        if let b = block {
            sourceBlock = b
            sourceClaimFD = claim
            owned.removeAll { $0 == claim }
            if loop != nil {
                loopFD = sendFD
                owned.removeAll { $0 == sendFD }
            }
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
        if mountpointGiven { return try fail("MNTP respecified", EINVAL) }
        guard let mp = pinned?.mountpoint else { return try fail("no pinned mountpoint", EINVAL) }
        if path != config.mountpoint { return try fail("mountpoint \(Self.shown(path)) is not the one on the command line", EINVAL) }
        if fmt == UInt16(S_IFDIR) && !mp.isDirectory { return try fail("mountpoint \(path) is not a directory", ENOTDIR) }
        if fmt == UInt16(S_IFREG) && mp.isDirectory { return try fail("mountpoint \(path) is a directory", EISDIR) }
        if !mp.stillInPlace() { return try fail("mountpoint \(path) was moved or replaced since start-up", EBUSY) }
        mountpointGiven = true
        try reply(0)
    }

    func handleMount(_ requested: UInt32) throws(BrokerError) {
        if mounted { return try fail("DOIT repeated", EINVAL) }
        guard let mp = pinned?.mountpoint, mountpointGiven, sourceSeen else { return try fail("DOIT without NAME or MNTP", EINVAL) }
        if requested & ~MS.allowed != 0 { return try fail("unsupported mount flags 0x\(String(requested, radix: 16))", EINVAL) }
        if let why = iomapMandatoryFailure { return try fail(why, EOPNOTSUPP) }
        if !iomapTried && version >= 2 {
            // No IOMA before DOIT: try once, optionally.
            iomapTried = true
            _ = Iomap.preapprove(fuseFD: fuseFD)
        }
        // The server may only add restrictions to the helper's own.
        let flags = requested | config.imposedMountFlags
        // The mountpoint must still be where it was pinned.
        if !mp.stillInPlace() {
            return try fail("mountpoint \(config.mountpoint) was moved or replaced since start-up", EBUSY)
        }
        let tuning = MountOptions.tokens(serverOptions ?? "").filter { !Self.helperAccessOptions.contains($0) }
        let request = KernelMount.Request(
            subtype: config.subtype, source: sourceBlock?.path ?? config.source,
            options: tuning + Self.helperAccessOptions, fuseFD: fuseFD,
            rootMode: UInt32(mp.stat.st_mode & S_IFMT),
            uid: getuid(), gid: getgid(), msFlags: flags, targetFD: mp.fd, targetPath: config.mountpoint,
            blockDevice: sourceBlock)
        if config.fake {
            try reply(0)
            return
        }
        // The kernel claims a fuseblk source exclusively for the mount: let go
        // of the helper's claim now (a claim taken by someone else in between
        // makes the mount fail with EBUSY).
        FD.close(sourceClaimFD)
        sourceClaimFD = -1
        switch KernelMount.mount(request) {
        case .failure(let err):
            return try fail(err.description, err.errno)
        case .success(let fd):
            mounted = true
            mountFD = fd
        }
        // A read-write mount may hold more dirty pages than FUSE's default
        // (WritebackLimit.swift); the cap stays, and bounded.
        if flags & MS.rdonly == 0 && mountFD >= 0,
           let did = WritebackLimit.raise(mountFD: mountFD, fuseblk: request.blockDevice != nil) {
            log(did)
        }
        if !config.noMtab {
            Utab.add(source: request.source, target: config.mountpoint, fstype: request.fstype,
                     options: mtabOptions ?? (flags & MS.rdonly != 0 ? "ro" : "rw"), log: log)
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
        if fuseChannel >= 0 {
            let fd = fcntl(fuseChannel, F_DUPFD_CLOEXEC, 3)
            if fd < 0 { throw .system(operation: "dup of the FUSE channel", errno: errno) }
            return fd
        }
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
