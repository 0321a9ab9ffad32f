import Foundation
import CShim
import FuseKernel
import Glibc
import Logging
import Synchronization
import Testing

/// A real FUSE mount of MemoryFS through the kernel, as root.
final class RealMount: @unchecked Sendable {
    let dir: String
    let session: FuseSession
    let transport: DevFuseTransport
    let fs: MemoryFS
    private let done = DispatchSemaphore(value: 0)
    private var mounted = false

    init(workers: Int) throws {
        var tmpl = Array("/tmp/ext4iomap-fusetest-XXXXXX".utf8CString)
        guard let p = mkdtemp(&tmpl) else { throw FuseError(errno) }
        dir = String(cString: p)
        let fd = open("/dev/fuse", O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { let e = errno; rmdir(dir); throw FuseError(e) }
        transport = DevFuseTransport(fd: fd, ownsFD: true)
        let opts = "fd=\(fd),rootmode=40000,user_id=0,group_id=0,allow_other"
        guard Glibc.mount("memfs", dir, "fuse.memfs", UInt(MS_NOSUID | MS_NODEV), opts) == 0 else {
            let e = errno
            transport.close()
            rmdir(dir)
            throw FuseError(e)
        }
        mounted = true
        fs = MemoryFS()
        var logger = Logger(label: "mount-test")
        logger.logLevel = .warning
        session = FuseSession(transport: transport, fileSystem: fs, options: FuseSessionOptions(workers: workers), logger: logger)
        let t = Thread { [self] in
            try? session.run()
            done.signal()
        }
        t.start()
    }

    /// Unmount (lazily if asked) and wait for the session to end.
    func unmount(lazy: Bool = false) -> Bool {
        guard mounted else { return true }
        mounted = false
        if umount2(dir, lazy ? Int32(MNT_DETACH) : 0) != 0 {
            _ = umount2(dir, Int32(MNT_DETACH))
        }
        let ended = done.wait(timeout: .now() + 10) == .success
        transport.close()
        rmdir(dir)
        return ended
    }

    deinit { _ = unmount(lazy: true) }

    func path(_ name: String) -> String { dir + "/" + name }
}

func writeFile(_ path: String, _ bytes: [UInt8]) -> Bool {
    let fd = open(path, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    return bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == bytes.count
}

func readFile(_ path: String) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var out = [UInt8]()
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 { return nil }
        if n == 0 { return out }
        out += buf[0..<n]
    }
}

func listDir(_ path: String) -> [String]? {
    guard let d = opendir(path) else { return nil }
    defer { closedir(d) }
    var names: [String] = []
    while let e = readdir(d) {
        let name = withUnsafeBytes(of: e.pointee.d_name) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        names.append(name)
    }
    return names.sorted()
}

extension LiveSessions {
@Suite(.enabled(if: geteuid() == 0, "needs root for mount(2)"))
struct MountTests {
    @Test func operationsThroughTheKernel() throws {
        let m = try RealMount(workers: 4)
        defer { _ = m.unmount() }
        // create, write, read
        let payload = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        #expect(writeFile(m.path("a.bin"), payload))
        #expect(readFile(m.path("a.bin")) == payload)
        // mkdir, readdir
        #expect(mkdir(m.path("d"), 0o755) == 0)
        #expect(writeFile(m.path("d/x"), Array("x".utf8)))
        #expect(listDir(m.dir) == [".", "..", "a.bin", "d"])
        #expect(listDir(m.path("d")) == [".", "..", "x"])
        // rename across directories, unlink
        #expect(rename(m.path("a.bin"), m.path("d/b.bin")) == 0)
        #expect(readFile(m.path("d/b.bin")) == payload)
        #expect(access(m.path("a.bin"), F_OK) != 0 && errno == ENOENT)
        #expect(unlink(m.path("d/x")) == 0)
        #expect(listDir(m.path("d")) == [".", "..", "b.bin"])
        // xattrs
        let v: [UInt8] = [1, 2, 3, 4, 5]
        #expect(v.withUnsafeBytes { setxattr(m.path("d/b.bin"), "user.test", $0.baseAddress, 5, 0) } == 0)
        var got = [UInt8](repeating: 0, count: 16)
        let n = got.withUnsafeMutableBytes { getxattr(m.path("d/b.bin"), "user.test", $0.baseAddress, 16) }
        #expect(n == 5 && Array(got[0..<5]) == v)
        var list = [CChar](repeating: 0, count: 64)
        #expect(listxattr(m.path("d/b.bin"), &list, 64) == 10)
        #expect(removexattr(m.path("d/b.bin"), "user.test") == 0)
        #expect(getxattr(m.path("d/b.bin"), "user.test", nil, 0) == -1 && errno == ENODATA)
        // statfs
        var st = statvfs()
        #expect(statvfs(m.dir, &st) == 0)
        #expect(st.f_bsize == 4096 && st.f_blocks == 1000 && st.f_bavail == 400 && st.f_namemax == 255)
        // rmdir of a non-empty directory fails, then works once emptied
        #expect(rmdir(m.path("d")) == -1 && errno == ENOTEMPTY)
        #expect(unlink(m.path("d/b.bin")) == 0 && rmdir(m.path("d")) == 0)
        // The session negotiated with the real kernel.
        #expect(m.session.connection?.kernelMinor ?? 0 >= 31)
        #expect(m.session.connection?.iomap == false)
    }

    @Test func parallelWritersOnSeveralWorkers() throws {
        let m = try RealMount(workers: 4)
        defer { _ = m.unmount() }
        let ok = Mutex(0)
        DispatchQueue.concurrentPerform(iterations: 16) { i in
            let data = [UInt8](repeating: UInt8(i), count: 100_000 + i)
            if writeFile(m.path("f\(i)"), data), readFile(m.path("f\(i)")) == data { ok.withLock { $0 += 1 } }
        }
        #expect(ok.withLock { $0 } == 16)
        #expect(liveFuseWorkers() == 3)
    }

    @Test(arguments: [false, true])
    func unmountEndsTheSessionWithoutLeaks(lazy: Bool) throws {
        let m = try RealMount(workers: 4)
        #expect(writeFile(m.path("keep"), [1]))
        for _ in 0..<50 { if liveFuseWorkers() == 3 { break }; usleep(10000) }
        #expect(liveFuseWorkers() == 3)
        #expect(openFDs { $0 == "/dev/fuse" }.count == 4)
        #expect(m.unmount(lazy: lazy))
        #expect(liveFuseWorkers() == 0)
        #expect(openFDs { $0 == "/dev/fuse" }.isEmpty)
        let mounts = (try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)) ?? ""
        #expect(!mounts.contains(m.dir))
    }
}
}
