#if canImport(Glibc)
import Glibc
#endif
import Testing
import CShim
@testable import LoopDevices
import TestSupport

/// A temporary backing file of `size` bytes, removed by `remove()`.
struct TempImage {
    let path: String
    init(size: Int, name: String = "img") throws {
        var template = Array("/tmp/loopdevtest-\(name)-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { p in mkstemp(p.baseAddress!) }
        guard fd >= 0 else { throw LoopDeviceError.system(operation: "mkstemp", errno: errno) }
        path = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        _ = ftruncate(fd, off_t(size))
        close(fd)
    }
    func open(_ flags: Int32) throws -> Int32 {
        let fd = Glibc.open(path, flags | O_CLOEXEC)
        guard fd >= 0 else { throw LoopDeviceError.system(operation: "open", errno: errno) }
        return fd
    }
    func remove() { unlink(path) }
}

func openFDCount() -> Int {
    guard let d = opendir("/proc/self/fd") else { return -1 }
    defer { closedir(d) }
    var n = 0
    while readdir(d) != nil { n += 1 }
    return n
}


let isRoot = getuid() == 0

@Suite(.serialized, .enabled(if: getuid() == 0, "needs root and loop devices"))
struct LoopDeviceTests {
    let lock = RootTestLock()
    @Test func attachReadWriteAndSize() throws {
        let img = try TempImage(size: 4 << 20)
        defer { img.remove() }
        let fd = try img.open(O_RDWR)
        defer { close(fd) }
        let before = openFDCount()
        do {
            let loop = try LoopDevice.attach(backingFD: fd, options: LoopAttachOptions(blockSize: 4096))
            defer { close(loop.fd) }
            #expect(loop.path.hasPrefix("/dev/loop"))
            #expect(!loop.readOnly)
            #expect(try BlockDevice.size(fd: loop.fd) == 4 << 20)
            #expect(try BlockDevice.logicalSectorSize(fd: loop.fd) == 4096)
            #expect(try BlockDevice.isReadOnly(fd: loop.fd) == false)
            // The loop must really be autoclear.
            var dev: UInt64 = 0, ino: UInt64 = 0, fl: UInt32 = 0
            #expect(cshim_broker_loop_status(loop.fd, &dev, &ino, &fl) == 0)
            #expect(fl & cshim_broker_LO_FLAGS_AUTOCLEAR() != 0)
            // Write through the loop, read back through the file.
            var block = [UInt8](repeating: 0xA5, count: 4096)
            #expect(pwrite(loop.fd, &block, 4096, 8192) == 4096)
            #expect(fsync(loop.fd) == 0)
            var back = [UInt8](repeating: 0, count: 4096)
            #expect(pread(fd, &back, 4096, 8192) == 4096)
            #expect(back == block)
            #expect(loopExists(for: img.path))
        }
        #expect(waitLoopGone(img.path), "autoclear must detach the loop on last close")
        #expect(openFDCount() == before)
    }

    @Test func readOnlyAttach() throws {
        let img = try TempImage(size: 1 << 20)
        defer { img.remove() }
        let fd = try img.open(O_RDONLY)
        defer { close(fd) }
        do {
            let loop = try LoopDevice.attach(backingFD: fd, options: LoopAttachOptions(readOnly: true))
            defer { close(loop.fd) }
            #expect(loop.readOnly)
            #expect(try BlockDevice.isReadOnly(fd: loop.fd))
            #expect(fcntl(loop.fd, F_GETFL) & O_ACCMODE == O_RDONLY)
            // Even a fresh O_RDWR open must not be able to write.
            let w = Glibc.open(loop.path, O_RDWR | O_CLOEXEC)
            if w >= 0 {
                defer { close(w) }
                var b = [UInt8](repeating: 1, count: 512)
                #expect(pwrite(w, &b, 512, 0) < 0)
            }
        }
        #expect(waitLoopGone(img.path))
    }

    @Test func readOnlyFDForcesReadOnlyLoop() throws {
        let img = try TempImage(size: 1 << 20)
        defer { img.remove() }
        let fd = try img.open(O_RDONLY)
        defer { close(fd) }
        do {
            let loop = try LoopDevice.attach(backingFD: fd, options: LoopAttachOptions(readOnly: false))
            defer { close(loop.fd) }
            #expect(loop.readOnly)
        }
        #expect(waitLoopGone(img.path))
    }

    @Test func secondAttachIsBusy() throws {
        let img = try TempImage(size: 1 << 20)
        defer { img.remove() }
        let fd = try img.open(O_RDWR)
        defer { close(fd) }
        let fd2 = try img.open(O_RDWR)
        defer { close(fd2) }
        do {
            let loop = try LoopDevice.attach(backingFD: fd)
            defer { close(loop.fd) }
            let before = openFDCount()
            #expect(throws: LoopDeviceError.alreadyAttached(loopPath: loop.path)) {
                _ = try LoopDevice.attach(backingFD: fd2)
            }
            #expect(openFDCount() == before)
            #expect(LoopDeviceError.alreadyAttached(loopPath: loop.path).errno == EBUSY)
        }
        #expect(waitLoopGone(img.path))
    }

    @Test func refusesBadInputWithoutLeaks() throws {
        let small = try TempImage(size: 100, name: "small")
        defer { small.remove() }
        let fd = try small.open(O_RDWR)
        defer { close(fd) }
        let before = openFDCount()
        #expect(throws: LoopDeviceError.tooSmall(size: 100)) { _ = try LoopDevice.attach(backingFD: fd) }
        let big = try TempImage(size: 1 << 20, name: "big")
        defer { big.remove() }
        let bfd = try big.open(O_RDWR)
        defer { close(bfd) }
        #expect(throws: LoopDeviceError.invalidBlockSize(1000)) {
            _ = try LoopDevice.attach(backingFD: bfd, options: LoopAttachOptions(blockSize: 1000))
        }
        let dfd = Glibc.open("/tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        defer { close(dfd) }
        #expect(throws: LoopDeviceError.notRegularFile) { _ = try LoopDevice.attach(backingFD: dfd) }
        #expect(throws: LoopDeviceError.self) { _ = try LoopDevice.attach(backingFD: 9999) }
        #expect(openFDCount() == before + 2)
        #expect(!loopExists(for: big.path))
    }

    @Test func blockSizeGetSet() throws {
        let img = try TempImage(size: 1 << 20)
        defer { img.remove() }
        let fd = try img.open(O_RDWR)
        defer { close(fd) }
        do {
            let loop = try LoopDevice.attach(backingFD: fd, options: LoopAttachOptions(blockSize: 1024))
            defer { close(loop.fd) }
            try BlockDevice.setBlockSize(fd: loop.fd, 4096)
            #expect(try BlockDevice.blockSize(fd: loop.fd) == 4096)
            #expect(throws: LoopDeviceError.invalidBlockSize(3000)) { try BlockDevice.setBlockSize(fd: loop.fd, 3000) }
        }
        #expect(waitLoopGone(img.path))
    }

    @Test func blockIoctlsOnRegularFileFail() throws {
        let img = try TempImage(size: 1 << 20)
        defer { img.remove() }
        let fd = try img.open(O_RDWR)
        defer { close(fd) }
        #expect(throws: LoopDeviceError.self) { _ = try BlockDevice.size(fd: fd) }
    }

    @Test func deviceNumberCompare() {
        #expect(LoopDevice.sameDevice(0x0803, 0x0803))
        #expect(!LoopDevice.sameDevice(0x0803, 0x0804))
        #expect(LoopDevice.sameDevice(UInt64(259) << 8 | 3, UInt64(259) << 8 | 3))
    }
}

/// Root tests in both test targets attach loop devices and count fds; they
/// take this process-wide lock (flock on a per-call open file description).
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
