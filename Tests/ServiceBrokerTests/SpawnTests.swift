#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import ServiceBroker

@Suite(.serialized, .enabled(if: getuid() == 0, "needs root to sandbox"))
struct SpawnTests {
    let lock = RootTestLock()

    func readLink(_ p: String) -> String {
        var buf = [CChar](repeating: 0, count: 256)
        let n = readlink(p, &buf, 255)
        return n > 0 ? String(decoding: buf.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
    }

    @Test func spawnedServerIsSandboxed() throws {
        let body = """
        #!/bin/sh
        s=$(grep -E '^(Uid|Gid|Groups|CapEff|CapPrm|CapBnd|NoNewPrivs):' /proc/self/status | tr '\\t\\n' '  ')
        read -r me _ _ _ pgrp sid tty _ </proc/self/stat
        st="stat=$me pgrp=$pgrp sid=$sid tty=$tty"
        fds="fd0=$(readlink /proc/$me/fd/0) fd1=$(readlink /proc/$me/fd/1) fd2=$(readlink /proc/$me/fd/2)"
        printf '%s pid=%s net=%s %s %s args=%s' "$s" "$$" "$(readlink /proc/self/ns/net)" "$st" "$fds" "$*" >&3
        """
        let script = FakeServer(name: "fake-ext4iomapd", body: body)
        defer { script.remove() }

        let before = FD.openCount()
        let s = try ServerLauncher.spawn(serverPath: script.path)
        let d = try Transport.receive(s.socket, timeoutMs: 10_000, maxFDs: 0)
        let text = String(decoding: d.bytes, as: UTF8.self)
        #expect(ServerIDs.contains(s.uid) && s.gid == s.uid, "uid \(s.uid) gid \(s.gid)")
        #expect(text.contains("Uid: \(s.uid) \(s.uid) \(s.uid) \(s.uid)"), "\(text)")
        #expect(text.contains("Gid: \(s.gid) \(s.gid) \(s.gid) \(s.gid)"), "\(text)")
        #expect(text.contains("Groups: "), "\(text)")
        #expect(!text.contains("Groups: 0"), "no supplementary groups: \(text)")
        #expect(text.contains("CapEff: 0000000000000000"), "\(text)")
        #expect(text.contains("CapPrm: 0000000000000000"), "\(text)")
        #expect(text.contains("CapBnd: 0000000000000000"), "\(text)")
        #expect(text.contains("NoNewPrivs: 1"), "\(text)")
        #expect(text.contains("pid=1 "), "own PID namespace: \(text)")
        #expect(!text.contains("net=\(readLink("/proc/self/ns/net")) "), "own network namespace: \(text)")
        #expect(text.contains("args=--service-fd 3"), "\(text)")
        // Its own session without a terminal; stdin/stdout /dev/null, stderr the relay pipe.
        let fields = Dictionary(text.split(separator: " ").compactMap { w -> (String, String)? in
            guard let eq = w.firstIndex(of: "=") else { return nil }
            return (String(w[..<eq]), String(w[w.index(after: eq)...]))
        }, uniquingKeysWith: { a, _ in a })
        #expect(fields["sid"] != nil && fields["sid"] == fields["stat"], "own session: \(text)")
        #expect(fields["pgrp"] == fields["stat"], "own process group: \(text)")
        #expect(fields["tty"] == "0", "no controlling terminal: \(text)")
        #expect(fields["fd0"] == "/dev/null" && fields["fd1"] == "/dev/null", "\(text)")
        #expect(fields["fd2"]?.hasPrefix("pipe:") == true, "stderr is the relay pipe: \(text)")
        #expect(ServerLauncher.reap(s.pid, kill: false) == 0)
        close(s.socket)
        #expect(FD.openCount() == before)
    }

    /// Two servers alive at once never share a uid; a server's uid is free
    /// again once it has exited.
    @Test func concurrentServersGetTheirOwnIDs() throws {
        // Says hello, then stays until the helper closes its end.
        let body = "#!/bin/sh\nprintf up >&3\nread -r _ <&3 || true\n"
        let script = FakeServer(name: "fake-ext4iomapd", body: body)
        defer { script.remove() }

        let a = try ServerLauncher.spawn(serverPath: script.path)
        _ = try Transport.receive(a.socket, timeoutMs: 10_000, maxFDs: 0)
        let b = try ServerLauncher.spawn(serverPath: script.path)
        _ = try Transport.receive(b.socket, timeoutMs: 10_000, maxFDs: 0)
        #expect(ServerIDs.contains(a.uid) && ServerIDs.contains(b.uid))
        #expect(a.uid != b.uid, "two running servers share uid \(a.uid)")
        close(a.socket)
        close(b.socket)
        #expect(ServerLauncher.reap(a.pid, kill: false) == 0)
        #expect(ServerLauncher.reap(b.pid, kill: false) == 0)
        // Both exited: the lowest free id is handed out again (unless another
        // test process took it meanwhile, which the range allows).
        let c = try ServerLauncher.spawn(serverPath: script.path)
        _ = try Transport.receive(c.socket, timeoutMs: 10_000, maxFDs: 0)
        #expect(c.uid <= max(a.uid, b.uid))
        close(c.socket)
        #expect(ServerLauncher.reap(c.pid, kill: false) == 0)
    }

    /// emptyRoot leaves the server's namespace with one read-only tmpfs as
    /// its root and cwd, and nothing else; it refuses a shared namespace.
    @Test func emptyRootLeavesOneEmptyMount() throws {
        // Only shell builtins after the first message: nothing can be exec'ed any more.
        let body = "#!/bin/sh\nprintf up >&3\nread -r _ <&3\nprintf '%s %s' \"$(pwd)\" /* >&3\nread -r _ <&3 || true\n"
        let script = FakeServer(name: "fake-ext4iomapd", body: body)
        defer { script.remove() }

        let s = try ServerLauncher.spawn(serverPath: script.path)
        _ = try Transport.receive(s.socket, timeoutMs: 10_000, maxFDs: 0)
        try ServerLauncher.emptyRoot(of: s.pid)
        let mountinfo = (try? String(contentsOfProcFile: "/proc/\(s.pid)/mountinfo")) ?? ""
        let lines = mountinfo.split(separator: "\n")
        #expect(lines.count == 1, "\(mountinfo)")
        #expect(lines.first?.contains(" / / ro,nosuid,nodev,noexec") == true, "\(mountinfo)")
        #expect(lines.first?.contains(" - tmpfs ") == true, "\(mountinfo)")
        #expect(readLink("/proc/\(s.pid)/root") == "/")
        try Transport.send(s.socket, [0x0A])  // dash reads one byte per read(): one datagram
        let d = try Transport.receive(s.socket, timeoutMs: 10_000, maxFDs: 0)
        #expect(String(decoding: d.bytes, as: UTF8.self) == "/ /*", "cwd / and nothing in the root")
        close(s.socket)
        #expect(ServerLauncher.reap(s.pid, kill: false) == 0)
        // Our own namespace is never pivoted.
        let shared = try ServerLauncher.spawn(serverPath: script.path, sandbox: .init(namespaces: false))
        _ = try Transport.receive(shared.socket, timeoutMs: 10_000, maxFDs: 0)
        #expect(throws: BrokerError.self) { try ServerLauncher.emptyRoot(of: shared.pid) }
        close(shared.socket)
        ServerLauncher.reap(shared.pid, kill: true)
        var st = stat()
        #expect(stat("/proc/self/exe", &st) == 0, "the host root is intact")
    }

    /// reap(timeoutMs:) returns an exiting server's status, and kills one that
    /// does not exit in time.
    @Test func boundedReap() throws {
        let quick = try ServerLauncher.spawn(serverPath: "/bin/false")
        close(quick.socket)
        #expect(ServerLauncher.reap(quick.pid, timeoutMs: 5000) == 1)
        let body = "#!/bin/sh\nexec sleep 60\n"
        let script = FakeServer(name: "stuck-ext4iomapd", body: body)
        defer { script.remove() }
        let stuck = try ServerLauncher.spawn(serverPath: script.path)
        close(stuck.socket)
        let t0 = monotonicNanoseconds()
        #expect(ServerLauncher.reap(stuck.pid, timeoutMs: 300) == 128 + SIGKILL)
        let ms = (monotonicNanoseconds() - t0) / 1_000_000
        #expect(ms >= 300 && ms < 3000, "\(ms) ms")
        #expect(kill(stuck.pid, 0) != 0, "reaped")
    }

    @Test func spawnFailureIsReported() {
        #expect(throws: BrokerError.system(operation: "starting /nonexistent/ext4iomapd", errno: ENOENT)) {
            _ = try ServerLauncher.spawn(serverPath: "/nonexistent/ext4iomapd")
        }
        #expect(throws: BrokerError.self) {
            _ = try ServerLauncher.spawn(serverPath: "/bin/true", sandbox: .init(uid: 0, gid: 0))
        }
    }

    @Test func socketPathAndCheck() throws {
        #expect(throws: BrokerError.self) { _ = try ServerLauncher.socketPath(subtype: "../x") }
        #expect(throws: BrokerError.self) { _ = try ServerLauncher.socketPath(subtype: "") }
        #expect(throws: BrokerError.self) { _ = try ServerLauncher.socketPath(subtype: String(repeating: "a", count: 120)) }
        #expect(try ServerLauncher.socketPath(subtype: "ext4") == "/run/filesystems/ext4")
        #expect(!ServerLauncher.serviceSocketPresent(subtype: "nonexistent-subtype-\(getpid())"))
        #expect(ServerLauncher.candidateServerPaths(helperExecutable: "/opt/x/bin/mount.fuse.ext4").first
                == "/opt/x/bin/ext4iomapd")
    }

    /// The service-socket path: connect to a listening SOCK_SEQPACKET socket.
    @Test func connectServiceSocket() throws {
        var t = Array("/tmp/svcdir-XXXXXX".utf8CString)
        let dir = t.withUnsafeMutableBufferPointer { p in mkdtemp(p.baseAddress!) }.map { String(cString: $0) } ?? "/tmp"
        defer { rmdir(dir) }
        #expect(try ServerLauncher.connectService(subtype: "ext4", directory: dir) == nil)
        let l = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        defer { close(l) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let path = dir + "/ext4"
        defer { unlink(path) }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in path.utf8.enumerated() { raw[i] = b } }
        let len = socklen_t(MemoryLayout<sa_family_t>.size + path.utf8.count + 1)
        _ = withUnsafePointer(to: &addr) { p in p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(l, $0, len) } }
        // Bound but not listening: ECONNREFUSED means "spawn instead".
        #expect(try ServerLauncher.connectService(subtype: "ext4", directory: dir) == nil)
        #expect(ServerLauncher.serviceSocketPresent(subtype: "ext4", directory: dir))
        listen(l, 1)
        let c = try ServerLauncher.connectService(subtype: "ext4", directory: dir)
        #expect(c != nil)
        if let c { close(c) }
    }
}

extension String {
    /// A /proc file's text (size 0 in stat, so read until end of file).
    init(contentsOfProcFile path: String) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw BrokerError.system(operation: "open \(path)", errno: errno) }
        defer { close(fd) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(fd, &buf, buf.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            out += buf[0..<n]
        }
        self = String(decoding: out, as: UTF8.self)
    }
}

@Suite struct ServerIDsTests {
    @Test func rangeIsOutsideSystemdsRanges() {
        #expect(ServerIDs.first == 0x7E00_0000)
        #expect(ServerIDs.last < 0x7FFE_0000)          // systemd's foreign range and above
        #expect(ServerIDs.first > 1_879_048_191)       // systemd's container ranges end here
        #expect(ServerIDs.last < 0x8000_0000)          // never negative as a signed 32-bit id
    }

    @Test func statusLinesGiveTheIDsInUse() {
        let text = "Name:\tUid:\t2113929216\nUmask:\t0022\nState:\tS (sleeping)\n"
            + "Uid:\t2113929217\t2113929217\t2113929218\t0\nGid:\t65534\t2113929219\t2113929219\t2113933312\n"
            + "Groups:\t2113929220\n"
        #expect(ServerIDs.idsInRange(status: text).sorted() == [2113929217, 2113929217, 2113929218, 2113929219, 2113929219])
        #expect(ServerIDs.idsInRange(status: "").isEmpty)
        #expect(ServerIDs.idsInRange(status: "Uid:\t-1\t99999999999\tx\n").isEmpty)
    }

    @Test func firstFreeID() {
        #expect(ServerIDs.firstFree([]) == ServerIDs.first)
        #expect(ServerIDs.firstFree([ServerIDs.first, ServerIDs.first + 2]) == ServerIDs.first + 1)
        let all = Set((0..<ServerIDs.count).map { ServerIDs.first + $0 })
        #expect(ServerIDs.firstFree(all) == nil)
        #expect(ServerIDs.firstFree(all.subtracting([ServerIDs.last])) == ServerIDs.last)
    }
}

/// A shell script standing in for the server, in a scratch directory the
/// sandboxed uids can read.
struct FakeServer {
    let dir: String
    let path: String
    init(name: String, body: String) {
        var t = Array("/tmp/spawntest-XXXXXX".utf8CString)
        dir = t.withUnsafeMutableBufferPointer { p in p.baseAddress.flatMap { mkdtemp($0) } }.map { String(cString: $0) } ?? "/tmp"
        chmod(dir, 0o755)
        path = dir + "/" + name
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o755)
        _ = body.utf8.withContiguousStorageIfAvailable { write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }
    func remove() { unlink(path); rmdir(dir) }
}
