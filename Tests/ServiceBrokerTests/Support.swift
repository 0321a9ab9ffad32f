#if canImport(Glibc)
import Glibc
#endif
import ServiceBroker
import LoopDevices
@_exported import TestSupport

/// Run a helper session against `socket` on a thread.
func runHelper(_ sock: Int32, _ config: HelperConfiguration) -> (TestThread, Box<Result<HelperOutcome, BrokerError>?>) {
    let box = Box<Result<HelperOutcome, BrokerError>?>(nil)
    let t = TestThread {
        let s = HelperSession(socket: sock, config: config)
        do throws(BrokerError) { box.value = .success(try s.run()) } catch { box.value = .failure(error) }
    }
    return (t, box)
}

struct Scratch {
    let dir: String
    let image: String
    let mnt: String
    init(imageSize: Int = 4 << 20) {
        var t = Array("/tmp/brokertest-XXXXXX".utf8CString)
        let d = t.withUnsafeMutableBufferPointer { p in mkdtemp(p.baseAddress!) }
        dir = d.map { String(cString: $0) } ?? "/tmp/brokertest-fallback"
        image = dir + "/disk.img"
        mnt = dir + "/mnt"
        mkdir(mnt, 0o755)
        let fd = open(image, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        _ = ftruncate(fd, off_t(imageSize))
        close(fd)
    }
    func config(_ subtype: String = "ext4test", options: String = "", timeoutMs: Int = 5000,
                readOnly: Bool = false, sessionTimeoutMs: Int = 300_000, maxMessages: Int = 256) -> HelperConfiguration {
        HelperConfiguration(subtype: subtype, source: image, mountpoint: mnt, options: options,
                            readOnly: readOnly, noMtab: true, receiveTimeoutMs: timeoutMs,
                            sessionTimeoutMs: sessionTimeoutMs, maxMessages: maxMessages)
    }
    func cleanup() {
        _ = umount2(mnt, Int32(MNT_DETACH))
        unlink(image)
        rmdir(mnt)
        rmdir(dir)
    }
}

func mountinfoLines() -> [[Substring]] {
    let fd = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return [] }
    defer { close(fd) }
    var all: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = read(fd, &buf, buf.count)
        if n <= 0 { break }
        all += buf.prefix(n)
    }
    return String(decoding: all, as: UTF8.self).split(separator: "\n").map { $0.split(separator: " ") }
}

func isMounted(_ path: String) -> Bool {
    mountinfoLines().contains { $0.count > 4 && $0[4] == path }
}

func mountOptions(_ path: String) -> String? {
    mountinfoLines().first { $0.count > 5 && $0[4] == path }.map { String($0[5]) }
}

/// The super options (after the " - fstype source" separator) of the mount at `path`.
func superOptions(_ path: String) -> [String] {
    guard let l = mountinfoLines().first(where: { $0.count > 5 && $0[4] == path }),
          let sep = l.firstIndex(of: "-"), sep + 3 < l.count else { return [] }
    return l[sep + 3].split(separator: ",").map(String.init)
}

/// (source, fstype) of the mount at `path`.
func mountSource(_ path: String) -> (String, String)? {
    guard let l = mountinfoLines().first(where: { $0.count > 5 && $0[4] == path }),
          let sep = l.firstIndex(of: "-"), sep + 2 < l.count else { return nil }
    return (String(l[sep + 2]), String(l[sep + 1]))
}


func isBlockDevice(_ fd: Int32) -> Bool {
    var st = stat()
    return fstat(fd, &st) == 0 && (st.st_mode & S_IFMT) == S_IFBLK
}

/// Same lock as LoopDevicesTests.RootTestLock: serialises root tests across targets.
final class RootTestLock {
    /// A per-process named semaphore: shared by both test targets, holds no fd.
    nonisolated(unsafe) static let sem: UnsafeMutablePointer<sem_t>? = {
        let name = "/ext4iomap-roottests-\(getpid())"
        let s = sem_open(name, O_CREAT, 0o600, 1)
        atexit { sem_unlink("/ext4iomap-roottests-\(getpid())") }
        return s == SEM_FAILED ? nil : s
    }()
    init() {
        if let s = Self.sem { while sem_wait(s) != 0 && errno == EINTR {} }
    }
    deinit { if let s = Self.sem { sem_post(s) } }
}
