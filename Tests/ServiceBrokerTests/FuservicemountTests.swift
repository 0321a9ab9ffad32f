#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import ServiceBroker

/// End-to-end: the built fuservicemount binary, spawn mode, a version-1-only server.
@Suite(.serialized, .enabled(if: getuid() == 0, "needs root, /dev/fuse"))
struct FuservicemountTests {
    let lock = RootTestLock()

    static var binary: String? {
        guard let exe = ServerLauncher.selfExecutable(), let slash = exe.lastIndex(of: "/") else { return nil }
        let p = String(exe[..<slash]) + "/fuservicemount"
        return access(p, X_OK) == 0 ? p : nil
    }

    static var v1Server: String {
        let here = #filePath
        let dir = here.lastIndex(of: "/").map { String(here[..<$0]) } ?? "."
        return dir + "/Resources/v1-server.py"
    }

    /// Runs a shell command, returns its exit status and stderr.
    func run(_ cmd: String) -> (Int32, String) {
        let errFile = "/tmp/fsm-test-stderr-\(getpid())"
        defer { unlink(errFile) }
        let st = system("\(cmd) 2>\(errFile)")
        let fd = open(errFile, O_RDONLY | O_CLOEXEC)
        var buf = [UInt8](repeating: 0, count: 4096)
        let n = fd >= 0 ? read(fd, &buf, buf.count) : 0
        if fd >= 0 { close(fd) }
        let code = (st >> 8) & 0xff
        return (code, String(decoding: buf.prefix(max(0, n)), as: UTF8.self))
    }

    @Test(.enabled(if: FileManagerless.exists("/usr/bin/python3")))
    func mountsAVersion1ServerInSpawnMode() throws {
        guard let bin = Self.binary else { Issue.record("fuservicemount not built"); return }
        let s = Scratch()
        defer { s.cleanup() }
        chmod(s.dir, 0o755)
        chmod(s.image, 0o644)
        let server = s.dir + "/v1-server"
        #expect(run("cp '\(Self.v1Server)' '\(server)' && chmod 755 '\(server)'").0 == 0)
        defer { unlink(server) }
        let (rc, err) = run("'\(bin)' '\(s.image)' '\(s.mnt)' -t fuse.ext4 -o ro --server '\(server)'")
        #expect(rc == 0, "\(err)")
        #expect(isMounted(s.mnt))
        #expect(mountOptions(s.mnt)?.hasPrefix("ro") == true)
        #expect(run("findmnt -n -o FSTYPE '\(s.mnt)' | grep -qx fuse.ext4").0 == 0)
        #expect(run("umount '\(s.mnt)'").0 == 0)
        #expect(!isMounted(s.mnt))
        #expect(waitLoopGone(s.image))
    }

    @Test func failureExitCodesAndMessages() throws {
        guard let bin = Self.binary else { Issue.record("fuservicemount not built"); return }
        let s = Scratch()
        defer { s.cleanup() }
        var r = run("'\(bin)' /nonexistent/img '\(s.mnt)' -t fuse.ext4")
        #expect(r.0 == 32 && r.1.contains("/nonexistent/img"), "\(r)")  // mount failure, as mount(8)
        r = run("'\(bin)' '\(s.image)' '\(s.image)x' -t fuse.ext4")
        #expect(r.0 == 32 && r.1.contains("mountpoint"), "\(r)")  // mount(8): "mount point does not exist", 32
        r = run("'\(bin)' '\(s.image)' '\(s.mnt)'")
        #expect(r.0 == 1 && r.1.contains("type"), "\(r)")
        // A server that exits at once: mount failure, nothing mounted.
        r = run("'\(bin)' '\(s.image)' '\(s.mnt)' -t fuse.ext4 --server /bin/true")
        #expect(r.0 == 32 && r.1.contains("without saying goodbye"), "\(r)")
        #expect(!isMounted(s.mnt))
        r = run("'\(bin)' -t fuse.ext4 --check --bogus")
        #expect(r.0 == 1, "\(r)")
        r = run("'\(bin)' -t 'fuse../x' --check")
        #expect(r.0 == 1, "\(r)")
        r = run("setpriv --reuid 65534 --regid 65534 --clear-groups '\(bin)' -t fuse.ext4 --check")
        #expect(r.0 == 1 && r.1.contains("root"), "\(r)")
        #expect(run("'\(bin)' --help >/dev/null").0 == 0)
    }
}

enum FileManagerless {
    static func exists(_ p: String) -> Bool { access(p, F_OK) == 0 }
}
