// The server's own sandbox: final privilege checks, no_new_privs, a landlock
// domain without any file system access, and a seccomp allow-list (libseccomp)
// installed in two stages:
//
//   1. setup:   after the helper handed over the device, before the engine
//               parses any on-disk data; no_new_privs and landlock, then a
//               filter that still allows the rest of the handshake
//               (sendmsg/recvmsg/poll on the service socket).
//   2. serving: after the goodbye, before the first FUSE request; only what
//               serving /dev/fuse needs.
//
// Filters stack, so stage 2 can only narrow stage 1. Everything not allowed
// traps: a SIGSYS handler makes the call fail with EPERM and logs the syscall
// name once to stderr (journal or the helper's terminal). Where the trap cannot
// set the return register (an unknown architecture) the default is plain EPERM.
// A few expected denials are quiet: open*() gives EPERM (the FUSE layer then
// shares one /dev/fuse fd across workers) and clone3() gives ENOSYS (glibc then
// uses clone(), whose flags must be exactly pthread_create's).
//
// The allow-list was measured with `strace -f` over mount, full tree walk,
// reads, xattrs, statfs and umount (tests/tools/syscall-profile.sh).

import CSeccomp
import CShim
import FuseKernel
import Ext4Fuse
import Glibc
import Logging

/// `-o seccomp=`: 1 (default) enforce, 0 off (debugging only), log = allow
/// everything but have the kernel audit-log what would have been denied.
public enum LockdownStage: Sendable {
    /// Service mode, before the file system is opened: the handshake continues.
    case setup
    /// Service mode, serving FUSE.
    case serving
    /// Standalone (root, development): serving, plus umount2 for the signal thread.
    case standalone
}

public struct LockdownError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

public enum Lockdown {
    /// Capabilities and flags of this process, from /proc/self/status.
    public struct Status: Sendable, Equatable {
        public var capEff: UInt64 = 0
        public var capPrm: UInt64 = 0
        public var capBnd: UInt64 = 0
        public var noNewPrivs = false
        /// 0 none, 1 strict, 2 filter.
        public var seccomp = 0
        public var seccompFilters = 0
        public var threads = 0
    }

    /// Parse the lines of /proc/PID/status we care about.
    public static func parseStatus(_ text: String) -> Status {
        var s = Status()
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1)
            guard parts.count == 2 else { continue }
            let v = parts[1].trimmingSpaces()
            switch parts[0] {
            case "CapEff": s.capEff = UInt64(v, radix: 16) ?? .max
            case "CapPrm": s.capPrm = UInt64(v, radix: 16) ?? .max
            case "CapBnd": s.capBnd = UInt64(v, radix: 16) ?? .max
            case "NoNewPrivs": s.noNewPrivs = v == "1"
            case "Seccomp": s.seccomp = Int(v) ?? 0
            case "Seccomp_filters": s.seccompFilters = Int(v) ?? 0
            case "Threads": s.threads = Int(v) ?? 0
            default: break
            }
        }
        return s
    }

    /// Read an already-open /proc status fd from offset 0 (procfs regenerates it).
    static func readStatus(fd: Int32) throws(LockdownError) -> Status {
        var buf = [UInt8](repeating: 0, count: 8192)
        var total = 0
        while total < buf.count {
            let n = buf.withUnsafeMutableBytes { p -> Int in
                guard let base = p.baseAddress else { return -1 }
                return pread(fd, base + total, p.count - total, off_t(total))
            }
            if n < 0 {
                if errno == EINTR { continue }
                throw LockdownError("cannot read /proc/self/status: \(String(cString: strerror(errno)))")
            }
            if n == 0 { break }
            total += n
        }
        return parseStatus(String(decoding: buf[0..<total], as: UTF8.self))
    }

    static func openStatus() throws(LockdownError) -> Int32 {
        while true {
            let fd = Glibc.open("/proc/self/status", O_RDONLY | O_CLOEXEC)
            if fd >= 0 { return fd }
            if errno == EINTR { continue }
            throw LockdownError("cannot read /proc/self/status to verify the sandbox: \(String(cString: strerror(errno)))")
        }
    }

    /// /proc/self/status, opened for a `ServerSandbox` made later (service
    /// mode opens it before HELLO: a spawned server's root is emptied then).
    public static func openStatusEarly() throws(LockdownError) -> Int32 { try openStatus() }

    /// The process's current status (opens /proc/self/status).
    public static func currentStatus() throws(LockdownError) -> Status {
        let fd = try openStatus()
        defer { _ = Glibc.close(fd) }
        return try readStatus(fd: fd)
    }

    /// Service mode must not hold any capability: fuservicemount's spawn
    /// sandbox and the systemd unit both drop them all. Standalone mode (root,
    /// mounting by itself) is exempt.
    public static func refuseCapabilities() throws(LockdownError) {
        let s = try currentStatus()
        if s.capEff != 0 || s.capPrm != 0 {
            throw LockdownError(
                "refusing to serve: service mode must run without capabilities, but this process has "
                    + "CapEff=\(hex(s.capEff)) CapPrm=\(hex(s.capPrm)); start it through fuservicemount "
                    + "(mount -t fuse.ext4) or the ext4iomap@.service unit")
        }
    }

    /// The first thing the server does, in every mode, before it reads a byte
    /// from a peer or an image. Not dumpable: no core dumps, /proc/PID owned by
    /// root, and no ptrace, pidfd_getfd or /proc/PID/mem for other processes,
    /// even those of its own uid. SIGPIPE ignored: a write to a pipe whose
    /// reader is gone (fuservicemount relays the spawned server's stderr
    /// through one) fails with EPIPE instead of killing the server.
    public static func hardenProcess() throws(LockdownError) {
        let r = cshim_set_dumpable(0)
        if r < 0 { throw LockdownError("cannot make the process non-dumpable: \(String(cString: strerror(-r)))") }
        guard cshim_get_dumpable() == 0 else { throw LockdownError("the process is still dumpable after PR_SET_DUMPABLE 0") }
        _ = signal(SIGPIPE, SIG_IGN)
    }

    static func hex(_ v: UInt64) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: max(0, 16 - s.count)) + s
    }
}

/// Applies the lockdown stages. Holds /proc/self/status open from the start,
/// because after the first stage the server can no longer open any path.
public final class ServerSandbox {
    public let setting: SeccompSetting
    let logger: Logger
    private var statusFD: Int32 = -1
    /// The landlock ABI in force, nil when the kernel offers none.
    public private(set) var landlockABI: Int?

    public init(setting: SeccompSetting, logger: Logger) throws(LockdownError) {
        self.setting = setting
        self.logger = logger
        if setting != .off { statusFD = try Lockdown.openStatus() }
    }

    /// With /proc/self/status opened earlier (`Lockdown.openStatusEarly()`):
    /// a spawned server can no longer open paths once the helper has emptied
    /// its root. Takes the fd over; closes it at once when `setting` is `.off`.
    public init(setting: SeccompSetting, logger: Logger, statusFD fd: Int32) {
        self.setting = setting
        self.logger = logger
        if setting != .off { statusFD = fd } else if fd >= 0 { _ = Glibc.close(fd) }
    }

    deinit { if statusFD >= 0 { _ = Glibc.close(statusFD) } }

    /// Set no_new_privs and enter landlock (setup stage), load the seccomp
    /// filter for `stage`, then re-read /proc/self/status to prove
    /// NoNewPrivs=1 and Seccomp=2.
    public func apply(_ stage: LockdownStage) throws(LockdownError) {
        guard setting != .off else {
            if stage != .setup {
                logger.warning("seccomp disabled (-o seccomp=0): the server is not confined by its own filter")
            }
            return
        }
        let before = try Lockdown.readStatus(fd: statusFD)
        if stage != .serving { try Lockdown.setNoNewPrivs() }
        // Not standalone: landlock also forbids umount, which its signal thread needs.
        if stage == .setup {
            landlockABI = try Lockdown.restrictFileSystem()
            if landlockABI == nil { logger.debug("landlock not available; relying on seccomp to deny opening paths") }
        }
        if setting == .enforce { Lockdown.installTrapHandler() }
        let filter = try Lockdown.build(stage, setting: setting, threads: before.threads)
        defer { seccomp_release(filter) }
        let rc = seccomp_load(filter)
        if rc < 0 { throw LockdownError("cannot install the seccomp filter: \(String(cString: strerror(-rc)))") }
        let after = try Lockdown.readStatus(fd: statusFD)
        guard after.noNewPrivs else { throw LockdownError("no_new_privs is not set after loading the seccomp filter") }
        guard after.seccomp == 2, after.seccompFilters > before.seccompFilters else {
            throw LockdownError("the seccomp filter is not active (Seccomp: \(after.seccomp), filters \(after.seccompFilters))")
        }
        if stage == .setup {
            logger.debug("seccomp setup filter active (\(after.seccompFilters) filters)")
        } else {
            let ll = landlockABI.map { "landlock ABI \($0)" } ?? (stage == .standalone ? "no landlock (standalone)" : "no landlock")
            logger.info("sandboxed: no_new_privs, \(ll), seccomp allow-list of \(Lockdown.allowedCount(stage)) syscalls (\(after.seccompFilters) filters)")
        }
    }

    var statusFDForSelftest: Int32 { statusFD }

    /// Close the status fd once the last stage is in place.
    public func finish() {
        if statusFD >= 0 { _ = Glibc.close(statusFD); statusFD = -1 }
    }
}

// MARK: - no_new_privs and landlock (raw syscalls)

/// libc's syscall(), resolved once before any lockdown. It is variadic, which
/// Swift cannot call directly; on the Linux ABIs we build for (x86_64, arm64)
/// integer arguments travel in the same registers either way.
typealias RawSyscall = @convention(c) (Int, Int, Int, Int, Int, Int, Int) -> Int
let rawSyscall: RawSyscall? = {
    guard let sym = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "syscall") else { return nil }
    return unsafeBitCast(sym, to: RawSyscall.self)
}()

extension Lockdown {
    static func sys(_ name: String, _ a: Int = 0, _ b: Int = 0, _ c: Int = 0, _ d: Int = 0, _ e: Int = 0) -> (Int, Int32) {
        let nr = Int(seccomp_syscall_resolve_name(name))
        guard nr >= 0, let raw = rawSyscall else { return (-1, ENOSYS) }
        while true {
            errno = 0
            let r = raw(nr, a, b, c, d, e, 0)
            if r == -1 && errno == EINTR { continue }
            return (r, r == -1 ? errno : 0)
        }
    }

    /// PR_SET_NO_NEW_PRIVS, explicitly (libseccomp would set it on load too).
    static func setNoNewPrivs() throws(LockdownError) {
        let (r, e) = sys("prctl", Int(K.prSetNoNewPrivs), 1, 0, 0, 0)
        if r != 0 { throw LockdownError("cannot set no_new_privs: \(String(cString: strerror(e)))") }
    }

    /// Landlock: a ruleset that handles every file system access right (and, on
    /// newer kernels, TCP and signal/abstract-socket scoping) with no rule
    /// granting any, so no path can be opened, created or executed. The fds the
    /// helper passed were opened outside the domain and keep working.
    /// Returns the ABI version, or nil when the kernel (or a filter above us)
    /// does not offer landlock; seccomp still denies every open then.
    static func restrictFileSystem() throws(LockdownError) -> Int? {
        let (abi, e) = sys("landlock_create_ruleset", 0, 0, 1 /* LANDLOCK_CREATE_RULESET_VERSION */)
        if abi < 1 {
            if e == ENOSYS || e == EOPNOTSUPP || e == EPERM || e == 76 /* EL3RST: systemd's filter */ { return nil }
            throw LockdownError("landlock: \(String(cString: strerror(e)))")
        }
        var fsRights: UInt64 = (1 << 13) - 1                     // ABI 1: EXECUTE ... MAKE_SYM
        if abi >= 2 { fsRights |= 1 << 13 }                      // REFER
        if abi >= 3 { fsRights |= 1 << 14 }                      // TRUNCATE
        if abi >= 5 { fsRights |= 1 << 15 }                      // IOCTL_DEV (files opened later)
        let netRights: UInt64 = abi >= 4 ? 0b11 : 0              // BIND_TCP, CONNECT_TCP
        let scoped: UInt64 = abi >= 6 ? 0b11 : 0                 // ABSTRACT_UNIX_SOCKET, SIGNAL
        var attr: (UInt64, UInt64, UInt64) = (fsRights, netRights, scoped)
        let size = abi >= 6 ? 24 : abi >= 4 ? 16 : 8
        let (fd, e2) = withUnsafeMutableBytes(of: &attr) { p in
            sys("landlock_create_ruleset", Int(bitPattern: p.baseAddress), size, 0)
        }
        if fd < 0 { throw LockdownError("landlock: create ruleset: \(String(cString: strerror(e2)))") }
        defer { _ = Glibc.close(Int32(truncatingIfNeeded: fd)) }
        let (r, e3) = sys("landlock_restrict_self", fd, 0)
        if r != 0 { throw LockdownError("landlock: restrict: \(String(cString: strerror(e3)))") }
        return abi
    }
}

// MARK: - the allow-list

extension Lockdown {
    /// A rule: a syscall name and optional argument conditions (all must hold).
    struct Rule {
        var name: String
        var args: [scmp_arg_cmp] = []
        init(_ name: String, _ args: [scmp_arg_cmp] = []) { self.name = name; self.args = args }
    }

    static func eq(_ arg: UInt32, _ value: UInt64) -> scmp_arg_cmp {
        scmp_arg_cmp(arg: arg, op: SCMP_CMP_EQ, datum_a: value, datum_b: 0)
    }
    /// (arg & mask) == value
    static func masked(_ arg: UInt32, _ mask: UInt64, _ value: UInt64) -> scmp_arg_cmp {
        scmp_arg_cmp(arg: arg, op: SCMP_CMP_MASKED_EQ, datum_a: mask, datum_b: value)
    }

    /// ioctl requests the server issues on the /dev/fuse and block device fds.
    static let ioctls: [UInt64] = [
        0x8008_1272,  // BLKGETSIZE64
        0x0000_1268,  // BLKSSZGET
        0x8008_1270,  // BLKBSZGET
        0x4008_1271,  // BLKBSZSET
        0x0000_127B,  // BLKPBSZGET
        0x0000_1261,  // BLKFLSBUF
        0x0000_1277,  // BLKDISCARD (FITRIM)
        0x0000_5401,  // TCGETS (isatty from stdio)
        UInt64(FuseDevIoctl.clone),
        UInt64(FuseDevIoctl.backingOpen),
        UInt64(FuseDevIoctl.backingClose),
        UInt64(FuseDevIoctl.iomapSetBlocksize),
    ]

    /// Linux ABI constants Swift's Glibc does not surface (not exported without _GNU_SOURCE).
    enum K {
        static let cloneThread: UInt64 = 0x0001_0000     // CLONE_THREAD
        /// The exact flags glibc's pthread_create passes to clone() (and
        /// clone3(), which the filter answers ENOSYS): CLONE_VM | CLONE_FS |
        /// CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM |
        /// CLONE_SETTLS | CLONE_PARENT_SETTID | CLONE_CHILD_CLEARTID, exit
        /// signal 0 (strace -f -e clone,clone3 of a serving ext4iomapd).
        static let pthreadCloneFlags: UInt64 = 0x0000_0100 | 0x0000_0200 | 0x0000_0400 | 0x0000_0800
            | 0x0001_0000 | 0x0004_0000 | 0x0008_0000 | 0x0010_0000 | 0x0020_0000
        static let atEmptyPath: UInt64 = 0x1000          // AT_EMPTY_PATH
        static let prSetName: UInt64 = 15                // PR_SET_NAME
        static let prGetName: UInt64 = 16                // PR_GET_NAME
        static let prSetNoNewPrivs: UInt64 = 38          // PR_SET_NO_NEW_PRIVS
        static let ioringRegisterEnableRings: UInt64 = 12 // IORING_REGISTER_ENABLE_RINGS
    }

    static func rules(_ stage: LockdownStage) -> [Rule] {
        let noExec = masked(2, UInt64(PROT_EXEC), 0)
        var r: [Rule] = []
        // data and fds
        for n in ["read", "write", "pread64", "pwrite64", "readv", "writev", "preadv", "pwritev",
                  "preadv2", "pwritev2", "close", "lseek", "fsync", "fdatasync"] { r.append(Rule(n)) }
        // memory, never executable
        r.append(Rule("mmap", [noExec]))
        r.append(Rule("mprotect", [noExec]))
        for n in ["munmap", "mremap", "madvise", "brk"] { r.append(Rule(n)) }
        // threads (glibc pthreads); clone only for threads
        for n in ["futex", "set_robust_list", "get_robust_list", "rseq", "exit", "exit_group",
                  "gettid", "getpid", "sched_yield", "sched_getaffinity"] { r.append(Rule(n)) }
        // FUSE over io_uring: the rings exist before the lockdown and only take
        // IORING_OP_URING_CMD (registered restriction); setup stays forbidden
        // and register is allowed for ENABLE_RINGS alone, which each serving
        // thread calls once. The threads pin themselves to their CPU.
        r.append(Rule("io_uring_enter"))
        r.append(Rule("io_uring_register", [eq(1, K.ioringRegisterEnableRings)]))
        r.append(Rule("sched_setaffinity", [eq(0, 0)]))
        // Threads only, made exactly as pthread_create makes them. The kernel
        // reads the low 32 bits of the flags, so the high ones are ignored here too.
        r.append(Rule("clone", [masked(0, 0xFFFF_FFFF, K.pthreadCloneFlags)]))
        r.append(Rule("tgkill", [eq(0, UInt64(UInt32(bitPattern: getpid())))]))
        // signals (abort, the Swift runtime's crash handlers, the SIGSYS trap)
        for n in ["rt_sigreturn", "rt_sigprocmask", "rt_sigaction", "sigaltstack", "restart_syscall"] {
            r.append(Rule(n))
        }
        // time
        for n in ["clock_gettime", "clock_getres", "gettimeofday", "time", "nanosleep", "clock_nanosleep"] {
            r.append(Rule(n))
        }
        // fd metadata only (glibc's fstat is newfstatat(fd, "", AT_EMPTY_PATH))
        r.append(Rule("fstat"))
        r.append(Rule("newfstatat", [masked(3, K.atEmptyPath, K.atEmptyPath)]))
        r.append(Rule("statx", [masked(2, K.atEmptyPath, K.atEmptyPath)]))
        for cmd in [F_GETFL, F_SETFL, F_GETFD, F_SETFD] { r.append(Rule("fcntl", [eq(1, UInt64(cmd))])) }
        r.append(Rule("prctl", [eq(0, K.prSetName)]))
        r.append(Rule("prctl", [eq(0, K.prGetName)]))
        r.append(Rule("getrandom"))
        // Multi-mount protection rereads its block from the medium: drop the
        // cached copy first (POSIX_FADV_DONTNEED only).
        r.append(Rule("fadvise64", [eq(3, UInt64(POSIX_FADV_DONTNEED))]))
        // A test helper may hand a socket in place of /dev/fuse: its peer plays
        // the kernel, and the transport reads with recv(MSG_TRUNC) so that an
        // oversized message is seen. Nothing else in the server calls recvfrom.
        r.append(Rule("recvfrom", [eq(3, UInt64(MSG_TRUNC))]))
        for req in ioctls { r.append(Rule("ioctl", [masked(1, 0xFFFF_FFFF, req)])) }
        switch stage {
        case .setup:
            // The rest of the handshake, and loading the stage-2 filter.
            for n in ["sendmsg", "recvmsg", "poll", "ppoll", "shutdown", "seccomp"] { r.append(Rule(n)) }
            // Spawn mode: stderr is replaced by /dev/null once the mount is made.
            r.append(Rule("dup2", [eq(1, 2)]))
            r.append(Rule("dup3", [eq(1, 2)]))
            r.append(Rule("setsockopt", [eq(1, UInt64(SOL_SOCKET))]))
            r.append(Rule("getsockopt", [eq(1, UInt64(SOL_SOCKET))]))
            r.append(Rule("prctl", [eq(0, K.prSetNoNewPrivs)]))
        case .standalone:
            r.append(Rule("umount2"))
            r.append(Rule("rt_sigtimedwait"))
        case .serving:
            // The socket transport wakes its workers with shutdown(SHUT_RD) after DESTROY.
            r.append(Rule("shutdown", [eq(1, UInt64(SHUT_RD))]))
            // libsystemd's journal socket was opened before the lockdown.
            if journalLogging { r.append(Rule("sendmsg")) }
            // Spawn mode: stderr becomes /dev/null right after this filter is loaded.
            r.append(Rule("dup2", [eq(1, 2)]))
            r.append(Rule("dup3", [eq(1, 2)]))
        }
        return r
    }

    static func allowedCount(_ stage: LockdownStage) -> Int {
        Set(rules(stage).map(\.name)).count
    }

    static func errnoAction(_ e: Int32) -> UInt32 { 0x0005_0000 | (UInt32(bitPattern: e) & 0xFFFF) }

    static func build(_ stage: LockdownStage, setting: SeccompSetting, threads: Int) throws(LockdownError) -> scmp_filter_ctx {
        let defaultAction: UInt32
        switch setting {
        case .log: defaultAction = SCMP_ACT_LOG
        case .enforce, .off: defaultAction = trapSupported ? SCMP_ACT_TRAP : errnoAction(EPERM)
        }
        guard let ctx = seccomp_init(defaultAction) else { throw LockdownError("seccomp_init failed") }
        func check(_ rc: Int32, _ what: String) throws(LockdownError) {
            if rc < 0 {
                seccomp_release(ctx)
                throw LockdownError("seccomp: \(what): \(String(cString: strerror(-rc)))")
            }
        }
        try check(seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 1), "no_new_privs")
        // Thread sync needs the seccomp() syscall; under a filter that denies it
        // (systemd's SystemCallFilter without "seccomp") libseccomp falls back to
        // prctl(PR_SET_SECCOMP), which only covers the calling thread: acceptable
        // only while the process has a single thread.
        if seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1) < 0, threads != 1 {
            seccomp_release(ctx)
            throw LockdownError("seccomp: cannot synchronise the filter across \(threads) threads (is the seccomp() syscall blocked?)")
        }
        if setting == .log { try check(seccomp_attr_set(ctx, SCMP_FLTATR_CTL_LOG, 1), "log") }
        for rule in rules(stage) {
            let nr = seccomp_syscall_resolve_name(rule.name)
            if nr == __NR_SCMP_ERROR { continue }  // not on this architecture
            let rc = rule.args.withUnsafeBufferPointer { p in
                seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, UInt32(p.count), p.baseAddress)
            }
            try check(rc, "allow \(rule.name)")
        }
        if setting == .enforce {
            // Expected, quiet denials.
            for name in ["open", "openat", "openat2", "creat"] {
                let nr = seccomp_syscall_resolve_name(name)
                if nr != __NR_SCMP_ERROR { try check(seccomp_rule_add_array(ctx, errnoAction(EPERM), nr, 0, nil), name) }
            }
            let clone3 = seccomp_syscall_resolve_name("clone3")
            if clone3 != __NR_SCMP_ERROR {
                try check(seccomp_rule_add_array(ctx, errnoAction(ENOSYS), clone3, 0, nil), "clone3")
            }
        }
        return ctx
    }
}

// MARK: - SIGSYS: deny with EPERM and log each syscall once

#if arch(x86_64) || arch(arm64)
let trapSupported = true
#else
let trapSupported = false
#endif

/// Syscall names, precomputed so the signal handler never allocates.
private let nameSlots = 1024
private let nameWidth = 32
nonisolated(unsafe) private var syscallNames: UnsafeMutablePointer<UInt8>? = nil
nonisolated(unsafe) private var loggedSyscalls: UnsafeMutablePointer<UInt64>? = nil

extension Lockdown {
    static func installTrapHandler() {
        guard trapSupported else { return }
        if syscallNames == nil {
            let names = UnsafeMutablePointer<UInt8>.allocate(capacity: nameSlots * nameWidth)
            names.initialize(repeating: 0, count: nameSlots * nameWidth)
            let arch = seccomp_arch_native()
            for nr in 0..<nameSlots {
                guard let p = seccomp_syscall_resolve_num_arch(arch, Int32(nr)) else { continue }
                let len = min(strlen(p), nameWidth - 1)
                p.withMemoryRebound(to: UInt8.self, capacity: len) { src in
                    (names + nr * nameWidth).update(from: src, count: len)
                }
                free(p)
            }
            let bits = UnsafeMutablePointer<UInt64>.allocate(capacity: nameSlots / 64)
            bits.initialize(repeating: 0, count: nameSlots / 64)
            syscallNames = names
            loggedSyscalls = bits
        }
        var sa = sigaction()
        sa.__sigaction_handler.sa_sigaction = sigsysHandler
        sa.sa_flags = SA_SIGINFO
        sigemptyset(&sa.sa_mask)
        _ = sigaction(SIGSYS, &sa, nil)
    }
}

private let sigsysHandler: @convention(c) (Int32, UnsafeMutablePointer<siginfo_t>?, UnsafeMutableRawPointer?) -> Void = {
    _, info, context in
    guard let info, let context else { return }
    let nr = Int(info.pointee._sifields._sigsys._syscall)
    let uc = context.assumingMemoryBound(to: ucontext_t.self)
    let result = Int64(-EPERM)
    #if arch(x86_64)
    withUnsafeMutableBytes(of: &uc.pointee.uc_mcontext.gregs) { regs in
        regs.storeBytes(of: result, toByteOffset: 13 * 8, as: Int64.self)  // REG_RAX
    }
    #elseif arch(arm64)
    uc.pointee.uc_mcontext.regs.0 = UInt64(bitPattern: result)
    #endif
    guard nr >= 0, nr < nameSlots, let bits = loggedSyscalls, let names = syscallNames else { return }
    let bit = UInt64(1) << UInt64(nr % 64)
    if bits[nr / 64] & bit != 0 { return }
    bits[nr / 64] |= bit
    // "ext4iomapd: seccomp: denied <name> (syscall <nr>), returning EPERM\n", without allocating.
    var line = (UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0),
                UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0))
    withUnsafeMutableBytes(of: &line) { out in
        var n = 0
        func put(_ b: UInt8) { if n < out.count { out[n] = b; n += 1 } }
        func put(_ s: StaticString) {
            s.withUTF8Buffer { for b in $0 { put(b) } }
        }
        put("ext4iomapd: seccomp: denied ")
        var i = 0
        while i < nameWidth, names[nr * nameWidth + i] != 0 { put(names[nr * nameWidth + i]); i += 1 }
        put(" (syscall ")
        var digits: (UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0)
        var v = nr, d = 0
        withUnsafeMutableBytes(of: &digits) { dig in
            repeat { dig[d] = UInt8(48 + v % 10); v /= 10; d += 1 } while v > 0 && d < 4
            while d > 0 { d -= 1; put(dig[d]) }
        }
        put("), returning EPERM\n")
        if let base = out.baseAddress { _ = Glibc.write(2, base, n) }
    }
}

extension Substring {
    func trimmingSpaces() -> String {
        var s = self[...]
        while let f = s.first, f == " " || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        return String(s)
    }
}

// MARK: - --sandbox-selftest

extension Lockdown {
    /// One forbidden action and what happened.
    public struct SelftestResult: Sendable {
        public let action: String
        public let denied: Bool
        public let detail: String
    }

    /// Apply exactly the service sandbox (both stages), then try what a
    /// compromised server would: open a path, create sockets, mount, ptrace,
    /// execve, fork, unshare, setuid, kill another process. Every one must fail.
    /// Runs in the calling process; call it last (the process stays locked down).
    public static func selftest(logger: Logger) throws(LockdownError) -> [SelftestResult] {
        guard rawSyscall != nil else { throw LockdownError("selftest: cannot resolve syscall()") }
        let dumpable = cshim_get_dumpable()  // before the filter, which refuses PR_GET_DUMPABLE
        let sandbox = try ServerSandbox(setting: .enforce, logger: logger)
        try sandbox.apply(.setup)
        try sandbox.apply(.serving)
        let status = try Lockdown.readStatus(fd: sandbox.statusFDForSelftest)
        let landlock = sandbox.landlockABI
        sandbox.finish()

        var out: [SelftestResult] = []
        func record(_ action: String, _ rc: Int, _ err: Int32, cleanup: (Int) -> Void = { _ in }) {
            if rc >= 0 {
                cleanup(rc)
                out.append(SelftestResult(action: action, denied: false, detail: "ALLOWED (returned \(rc))"))
            } else {
                out.append(SelftestResult(action: action, denied: true, detail: "denied: \(String(cString: strerror(err)))"))
            }
        }
        func sys(_ name: String, _ a: Int = 0, _ b: Int = 0, _ c: Int = 0, _ d: Int = 0, _ e: Int = 0) -> (Int, Int32) {
            Lockdown.sys(name, a, b, c, d, e)
        }
        let closeFD: (Int) -> Void = { _ = Glibc.close(Int32(truncatingIfNeeded: $0)) }
        var r = (Glibc.open("/etc/passwd", O_RDONLY), errno)
        record("open /etc/passwd", Int(r.0), r.1, cleanup: closeFD)
        r = (Glibc.open("/proc/self/status", O_RDONLY), errno)
        record("open /proc/self/status", Int(r.0), r.1, cleanup: closeFD)
        var rr = sys("socket", Int(AF_UNIX), Int(SOCK_STREAM.rawValue), 0)
        record("socket(AF_UNIX)", rr.0, rr.1, cleanup: closeFD)
        rr = sys("socket", Int(AF_INET), Int(SOCK_STREAM.rawValue), 0)
        record("socket(AF_INET)", rr.0, rr.1, cleanup: closeFD)
        rr = (Int(Glibc.mount("none", "/tmp", "tmpfs", 0, nil)), errno)
        record("mount tmpfs", rr.0, rr.1)
        rr = sys("ptrace", 0 /* PTRACE_TRACEME */)
        record("ptrace(PTRACE_TRACEME)", rr.0, rr.1)
        rr = sys("unshare", 0x1000_0000 /* CLONE_NEWUSER */)
        record("unshare(CLONE_NEWUSER)", rr.0, rr.1)
        rr = sys("setuid", 0)
        record("setuid(0)", rr.0, rr.1)
        rr = sys("kill", 1, 0)
        record("kill(1, 0)", rr.0, rr.1)
        rr = sys("clone", Int(SIGCHLD), 0, 0, 0, 0)  // fork
        if rr.0 == 0 { _exit(0) }                     // a child that escaped: leave at once
        record("fork (clone without CLONE_THREAD)", rr.0, rr.1)
        // pthread_create's flags plus CLONE_NEWNS: the kernel itself refuses
        // CLONE_NEWNS with CLONE_FS (EINVAL), so only EPERM proves the filter did.
        rr = sys("clone", Int(K.pthreadCloneFlags) | 0x0002_0000 /* CLONE_NEWNS */, 0, 0, 0, 0)
        if rr.0 == 0 { _exit(0) }
        out.append(SelftestResult(action: "clone(thread flags | CLONE_NEWNS)", denied: rr.0 < 0 && rr.1 == EPERM,
                                  detail: rr.0 < 0 ? "denied: \(String(cString: strerror(rr.1)))" : "ALLOWED (returned \(rr.0))"))
        let argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/true"), nil]
        rr = (Int(execve("/bin/true", argv, argv)), errno)
        record("execve /bin/true", rr.0, rr.1)
        var prot = mmap(nil, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        rr = (prot == MAP_FAILED ? -1 : 0, errno)
        record("mmap PROT_EXEC", rr.0, rr.1, cleanup: { _ in _ = munmap(prot, 4096) })
        prot = nil
        out.insert(SelftestResult(action: "no_new_privs", denied: status.noNewPrivs, detail: "NoNewPrivs: \(status.noNewPrivs ? 1 : 0)"), at: 0)
        out.insert(SelftestResult(action: "seccomp", denied: status.seccomp == 2, detail: "Seccomp: \(status.seccomp), filters \(status.seccompFilters)"), at: 1)
        out.insert(SelftestResult(action: "landlock", denied: true,
                                  detail: landlock.map { "ABI \($0): no file system access" } ?? "not offered by this kernel (seccomp still denies open)"), at: 2)
        out.insert(SelftestResult(action: "not dumpable", denied: dumpable == 0, detail: "PR_GET_DUMPABLE: \(dumpable)"), at: 3)
        return out
    }
}
