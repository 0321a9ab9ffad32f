#if canImport(Glibc)
import Glibc
#endif
import CShim

/// Finds or starts the server for a subtype: the systemd service socket at
/// /run/filesystems/<subtype>, else a sandboxed child over a socketpair.
public enum ServerLauncher {
    public static let defaultSocketDirectory = "/run/filesystems"

    /// Where a server executable is looked for, in order.
    public static func candidateServerPaths(helperExecutable: String? = nil) -> [String] {
        var out: [String] = []
        let exe = helperExecutable ?? selfExecutable()
        if let exe, let slash = exe.lastIndex(of: "/") {
            out.append(String(exe[..<slash]) + "/ext4iomapd")
        }
        out.append("/usr/local/libexec/ext4iomap/ext4iomapd")
        out.append("/usr/libexec/ext4iomap/ext4iomapd")
        return out
    }

    public static func selfExecutable() -> String? {
        var buf = [UInt8](repeating: 0, count: 4096)
        let n = buf.withUnsafeMutableBytes { p -> Int in
            guard let base = p.baseAddress else { return -1 }
            return readlink("/proc/self/exe", base.assumingMemoryBound(to: CChar.self), p.count - 1)
        }
        return n > 0 ? String(decoding: buf.prefix(n), as: UTF8.self) : nil
    }

    /// The first executable candidate.
    public static func resolveServer(explicit: String? = nil) -> String? {
        if let e = explicit { return access(e, X_OK) == 0 ? e : nil }
        return candidateServerPaths().first { access($0, X_OK) == 0 }
    }

    /// Validate a subtype and build its socket path.
    public static func socketPath(subtype: String, directory: String = defaultSocketDirectory) throws(BrokerError) -> String {
        if subtype.isEmpty || subtype.contains("/") || subtype == "." || subtype == ".." || subtype.utf8.contains(0) {
            throw .denied("invalid file system subtype \"\(subtype)\"", errno: EINVAL)
        }
        let p = directory + "/" + subtype
        if p.utf8.count >= 108 { throw .denied("service socket path too long", errno: ENAMETOOLONG) }
        return p
    }

    /// `--check`: a socket file exists at the service path (no connect).
    public static func serviceSocketPresent(subtype: String, directory: String = defaultSocketDirectory) -> Bool {
        guard let p = try? socketPath(subtype: subtype, directory: directory) else { return false }
        var st = stat()
        guard stat(p, &st) == 0, (st.st_mode & S_IFMT) == S_IFSOCK else { return false }
        return access(p, W_OK) == 0
    }

    /// Connect to the service socket. nil when nothing is listening (missing,
    /// not a socket, ECONNREFUSED): the caller then spawns.
    public static func connectService(subtype: String, directory: String = defaultSocketDirectory) throws(BrokerError) -> Int32? {
        let path = try socketPath(subtype: subtype, directory: directory)
        var st = stat()
        if lstat(path, &st) != 0 || (st.st_mode & S_IFMT) != S_IFSOCK { return nil }
        try checkTrusted(socketPath: path, directory: directory)
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { throw .system(operation: "socket", errno: errno) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in path.utf8.enumerated() where i < raw.count - 1 { raw[i] = b }
        }
        let len = socklen_t(MemoryLayout<sa_family_t>.size + path.utf8.count + 1)
        while true {
            let r = withUnsafePointer(to: &addr) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, len) }
            }
            if r == 0 { break }
            let e = errno
            if e == EINTR { continue }
            FD.close(fd)
            if e == ENOENT || e == ECONNREFUSED { return nil }
            throw .system(operation: "connect \(path)", errno: e)
        }
        Transport.dropPassRights(fd)
        return fd
    }

    /// The service socket is trusted only when nobody but root could have put
    /// it there: the directory and the socket are root-owned, neither is a
    /// symlink, and neither is writable by group or others.
    public static func checkTrusted(socketPath path: String, directory: String) throws(BrokerError) {
        var d = stat()
        if lstat(directory, &d) != 0 { throw .system(operation: "service socket directory \(directory)", errno: errno) }
        if (d.st_mode & S_IFMT) != S_IFDIR || d.st_uid != 0 || (d.st_mode & 0o022) != 0 {
            throw .denied("service socket directory \(directory) is not a root-owned directory writable only by root",
                          errno: EPERM)
        }
        var s = stat()
        if lstat(path, &s) != 0 { throw .system(operation: "service socket \(path)", errno: errno) }
        if (s.st_mode & S_IFMT) != S_IFSOCK || s.st_uid != 0 {
            throw .denied("service socket \(path) is not a root-owned socket", errno: EPERM)
        }
        if (s.st_mode & 0o022) != 0 {
            throw .denied("service socket \(path) is writable by group or others (mode \(String(s.st_mode & 0o777, radix: 8))); only root may connect to a file system server",
                          errno: EPERM)
        }
    }

    /// Sandbox settings for a spawned server.
    public struct Sandbox: Sendable {
        /// nil: a uid and gid of its own from `ServerIDs` (the default).
        public var uid: uid_t?
        public var gid: gid_t?
        /// New mount, network, IPC and PID namespaces.
        public var namespaces: Bool
        public init(uid: uid_t? = nil, gid: gid_t? = nil, namespaces: Bool = true) {
            self.uid = uid
            self.gid = gid
            self.namespaces = namespaces
        }
    }

    /// A spawned server: our end of the socketpair, the child pid and the
    /// uid/gid it runs as.
    public struct Spawned: Sendable {
        public let socket: Int32
        public let pid: pid_t
        public let uid: uid_t
        public let gid: gid_t
    }

    /// Spawn `path --service-fd 3 [extraArgs]` with the socket as fd 3, sandboxed,
    /// as a uid and gid of its own unless `sandbox` names them.
    public static func spawn(serverPath path: String, extraArgs: [String] = [],
                             sandbox: Sandbox = Sandbox()) throws(BrokerError) -> Spawned {
        if sandbox.uid == 0 || sandbox.gid == 0 {
            throw .denied("refusing to run the server as root", errno: EPERM)
        }
        if let uid = sandbox.uid {
            return try spawn(serverPath: path, extraArgs: extraArgs, uid: uid, gid: sandbox.gid ?? uid,
                             namespaces: sandbox.namespaces)
        }
        // The lock is held until the child runs as the id (spawn returns once it has exec'ed).
        return try ServerIDs.withFreeID { id throws(BrokerError) in
            try spawn(serverPath: path, extraArgs: extraArgs, uid: uid_t(id), gid: sandbox.gid ?? gid_t(id),
                      namespaces: sandbox.namespaces)
        }
    }

    static func spawn(serverPath path: String, extraArgs: [String], uid: uid_t, gid: gid_t,
                      namespaces: Bool) throws(BrokerError) -> Spawned {
        if uid == 0 || gid == 0 { throw .denied("refusing to run the server as root", errno: EPERM) }
        let (mine, theirs) = try Transport.socketPair()
        defer { FD.close(theirs) }
        // The server's stderr: a pipe whose lines the relay copies, sanitised, to ours.
        var errPipe: [Int32] = [-1, -1]
        let pr = cshim_broker_pipe2(&errPipe, O_CLOEXEC)
        if pr != 0 {
            let e = -pr
            FD.close(mine)
            throw .system(operation: "pipe2", errno: e)
        }
        let relay: StderrRelay
        do { relay = try StderrRelay.start(reading: errPipe[0]) } catch {
            FD.close(errPipe[1])
            FD.close(mine)
            throw error
        }
        let argv = [path, "--service-fd", "3"] + extraArgs
        let env = ["EXT4IOMAP_SERVICE_FD=3", "PATH=/usr/bin:/bin", "LANG=C.UTF-8"]
        var ns: Int32 = 0
        if namespaces {
            ns = cshim_broker_CLONE_NEWNS() | cshim_broker_CLONE_NEWNET() | cshim_broker_CLONE_NEWIPC()
                | cshim_broker_CLONE_NEWPID()
        }
        let pid = withCStrings(argv) { a in
            withCStrings(env) { e in
                cshim_broker_spawn_sandboxed(path, a, e, theirs, errPipe[1], uid, gid, ns)
            }
        }
        FD.close(errPipe[1])  // the server holds the only write end now
        if pid < 0 {
            relay.finish(timeoutMs: 0)
            FD.close(mine)
            throw .system(operation: "starting \(path)", errno: -pid)
        }
        StderrRelays.shared.add(relay, pid: pid)
        return Spawned(socket: mine, pid: pid, uid: uid, gid: gid)
    }

    /// Reap a spawned server; with `kill`, SIGKILL it first. Everything it
    /// wrote to stderr has been relayed when this returns.
    @discardableResult
    public static func reap(_ pid: pid_t, kill doKill: Bool) -> Int32? {
        if doKill { _ = kill(pid, SIGKILL) }
        var st: Int32 = 0
        let r = cshim_broker_waitpid(pid, &st, 0)
        StderrRelays.shared.finish(pid: pid, timeoutMs: 1000)
        return r < 0 ? nil : exitStatus(st)
    }

    /// A wait status as a shell would report it: the exit code, or 128 + the signal.
    static func exitStatus(_ st: Int32) -> Int32 {
        cshim_broker_wifexited(st) != 0 ? cshim_broker_wexitstatus(st) : 128 + cshim_broker_wtermsig(st)
    }

    /// Wait at most `timeoutMs` for a spawned server to exit, then SIGKILL it;
    /// reap it either way. Returns its exit status (128 + signal when killed
    /// by one), nil when `pid` is not our child. Everything it wrote to stderr
    /// has been relayed when this returns.
    @discardableResult
    public static func reap(_ pid: pid_t, timeoutMs: Int) -> Int32? {
        let deadline = monotonicNanoseconds() + UInt64(max(0, timeoutMs)) * 1_000_000
        while true {
            var st: Int32 = 0
            let r = cshim_broker_waitpid(pid, &st, WNOHANG)
            if r < 0 {
                StderrRelays.shared.finish(pid: pid, timeoutMs: 1000)
                return nil
            }
            if r == pid {
                StderrRelays.shared.finish(pid: pid, timeoutMs: 1000)
                return exitStatus(st)
            }
            if monotonicNanoseconds() >= deadline { return reap(pid, kill: true) }
            usleep(10_000)
        }
    }

    /// Non-blocking: has the child exited? Returns its status if so (and then
    /// everything it wrote to stderr has been relayed).
    public static func exited(_ pid: pid_t) -> Int32? {
        var st: Int32 = 0
        let r = cshim_broker_waitpid(pid, &st, WNOHANG)
        if r <= 0 { return nil }
        StderrRelays.shared.finish(pid: pid, timeoutMs: 1000)
        return exitStatus(st)
    }
}

extension ServerLauncher {
    /// Replace the root of a spawned server's mount namespace by an empty,
    /// read-only tmpfs, so the server neither sees nor pins any mount of the
    /// host (a copy of another mount in its namespace would keep that file
    /// system, its server and its loop device alive after umount). Call it
    /// once the server has answered HELLO (it has opened what it needs) and
    /// before it is handed any file: `HelperSession.afterHello`. Fails closed.
    public static func emptyRoot(of pid: pid_t, timeoutMs: Int = 5000) throws(BrokerError) {
        let r = cshim_broker_empty_root(pid, Int32(clamping: timeoutMs))
        if r < 0 {
            let why: String
            switch -r {
            case EINVAL: why = "emptying the server's root: it shares our mount namespace"
            case EXDEV: why = "emptying the server's root: its root or working directory did not move"
            case ETIMEDOUT: why = "emptying the server's root: no answer within \(timeoutMs) ms"
            default: why = "emptying the server's root (pivot_root in its mount namespace)"
            }
            throw .system(operation: why, errno: -r)
        }
    }

    /// Enter a mount namespace given as a pid or a path (mount -N).
    public static func enterMountNamespace(_ ns: String) throws(BrokerError) {
        let path = !ns.isEmpty && ns.allSatisfy({ $0.isNumber }) ? "/proc/\(ns)/ns/mnt" : ns
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { throw .system(operation: "open namespace \(path)", errno: errno) }
        defer { FD.close(fd) }
        let r = cshim_broker_setns_mnt(fd)
        if r < 0 { throw .system(operation: "enter namespace \(path)", errno: -r) }
    }
}

func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
    var ptrs: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
    ptrs.append(nil)
    defer { for p in ptrs { free(p) } }
    return ptrs.withUnsafeBufferPointer { p in
        // Never empty: it always holds the terminating nil.
        guard let base = p.baseAddress else { preconditionFailure("empty argv buffer") }
        return body(base)
    }
}
