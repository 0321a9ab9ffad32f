#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import LoopDevices
@testable import ServiceBroker

/// glibc's dev_t layout for (major, minor), as stat(2) reports it.
func userDev(_ major: UInt64, _ minor: UInt64) -> dev_t {
    dev_t(((major & 0xfff) << 8) | ((major & ~0xfff) << 32) | (minor & 0xff) | ((minor & ~0xff) << 12))
}

/// The few superblock bytes the helper reads, the blksize it picks, and the
/// kernel's name for a connection: pure functions, untrusted input.
struct FuseblkRulesTests {
    func superblock(magic: UInt16 = 0xEF53, log: UInt32) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 1024)
        b[0x38] = UInt8(magic & 0xff); b[0x39] = UInt8(magic >> 8)
        for i in 0..<4 { b[0x18 + i] = UInt8(truncatingIfNeeded: log >> (8 * UInt32(i))) }
        return b
    }

    @Test func superblockBlockSize() {
        #expect(Ext4SuperblockProbe.blockSize(superblock: superblock(log: 0)) == 1024)
        #expect(Ext4SuperblockProbe.blockSize(superblock: superblock(log: 2)) == 4096)
        #expect(Ext4SuperblockProbe.blockSize(superblock: superblock(log: 6)) == 65536)
        #expect(Ext4SuperblockProbe.blockSize(superblock: superblock(log: 7)) == nil)
        #expect(Ext4SuperblockProbe.blockSize(superblock: superblock(log: .max)) == nil)
        #expect(Ext4SuperblockProbe.blockSize(superblock: superblock(magic: 0x53EF, log: 2)) == nil)
        #expect(Ext4SuperblockProbe.blockSize(superblock: Array(superblock(log: 2).prefix(0x39))) == nil)
        #expect(Ext4SuperblockProbe.blockSize(superblock: []) == nil)
    }

    @Test func superblockFromAFile() throws {
        let d = try TempDir()
        let path = d.sub("sb")
        var bytes = [UInt8](repeating: 0, count: 1024) + superblock(log: 1)
        try writeFile(path, bytes)
        var fd = open(path, O_RDONLY | O_CLOEXEC)
        #expect(Ext4SuperblockProbe.blockSize(fd: fd) == 2048)
        close(fd)
        bytes.removeLast(10)  // a short device: no superblock
        try writeFile(path, bytes)
        fd = open(path, O_RDONLY | O_CLOEXEC)
        #expect(Ext4SuperblockProbe.blockSize(fd: fd) == nil)
        close(fd)
    }

    @Test func mountBlockSizeFitsTheKernel() {
        #expect(FuseBlock.mountBlockSize(fsBlockSize: 4096, logicalSectorSize: 512, pageSize: 4096) == 4096)
        #expect(FuseBlock.mountBlockSize(fsBlockSize: 1024, logicalSectorSize: 512, pageSize: 4096) == 1024)
        // Larger than a page: the page size; smaller than a sector: the sector.
        #expect(FuseBlock.mountBlockSize(fsBlockSize: 65536, logicalSectorSize: 512, pageSize: 4096) == 4096)
        #expect(FuseBlock.mountBlockSize(fsBlockSize: 1024, logicalSectorSize: 4096, pageSize: 4096) == 4096)
        #expect(FuseBlock.mountBlockSize(fsBlockSize: 16384, logicalSectorSize: 512, pageSize: 65536) == 16384)
        #expect(FuseBlock.mountBlockSize(fsBlockSize: 4096, logicalSectorSize: 0, pageSize: 4096) == 4096)
        // Nothing fits.
        #expect(FuseBlock.mountBlockSize(fsBlockSize: 3000, logicalSectorSize: 512, pageSize: 4096) == nil)
        #expect(FuseBlock.mountBlockSize(fsBlockSize: 4096, logicalSectorSize: 8192, pageSize: 4096) == nil)
        #expect(FuseBlock.mountBlockSize(fsBlockSize: 4096, logicalSectorSize: 1000, pageSize: 4096) == nil)
        #expect(FuseBlock.mountBlockSize(fsBlockSize: 4096, logicalSectorSize: .max, pageSize: 4096) == nil)
    }

    @Test func writebackLimitRaisesOnlyALowerCap() throws {
        let s = Scratch()
        defer { s.cleanup() }
        // A mount on this scratch directory's file system stands in for the
        // FUSE mount: its device number names the fake bdi directory.
        let root = open(s.dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        defer { close(root) }
        guard let dev = DeviceNumber.of(fd: root) else { Issue.record("no device number"); return }
        #expect(WritebackLimit.bdiName(dev, fuseblk: true) == "\(dev.major):\(dev.minor)-fuseblk")
        #expect(WritebackLimit.bdiName(DeviceNumber(userDev(0, 52)), fuseblk: false) == "0:52")
        let sysfs = s.dir + "/bdi"
        let dir = sysfs + "/" + WritebackLimit.bdiName(dev, fuseblk: true)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let file = dir + "/max_bytes"
        // Missing (an older kernel): nothing happens.
        #expect(WritebackLimit.raise(mountFD: root, fuseblk: true, sysfs: sysfs) == nil)
        #expect(!FileManager.default.fileExists(atPath: file))
        // Below the target: raised.
        try "50331648\n".write(toFile: file, atomically: false, encoding: .utf8)
        #expect(WritebackLimit.raise(mountFD: root, fuseblk: true, sysfs: sysfs) != nil)
        #expect(WritebackLimit.readNumber(file) == WritebackLimit.targetBytes)
        // Already larger: left alone.
        try "1073741824\n".write(toFile: file, atomically: false, encoding: .utf8)
        #expect(WritebackLimit.raise(mountFD: root, fuseblk: true, sysfs: sysfs) == nil)
        #expect(WritebackLimit.readNumber(file) == 1 << 30)
    }

    @Test func connectionNames() {
        #expect(DeviceNumber(userDev(0, 52)).connectionName == "52")  // an anonymous fuse superblock
        #expect(DeviceNumber(userDev(7, 3)).connectionName == "7340035")  // loop3
        #expect(DeviceNumber(userDev(259, 1)).connectionName == String((259 << 20) | 1))
        #expect(DeviceNumber(userDev(7, 300)) == DeviceNumber(major: 7, minor: 300))
        #expect(DeviceNumber(userDev(7, 300)).connectionName == String((7 << 20) | 300))
        #expect(DeviceNumber(userDev(4096, 0)).connectionName == nil)
        #expect(DeviceNumber(userDev(1, 1 << 20)).connectionName == nil)
        #expect(DeviceNumber(dev_t.max).connectionName == nil)
    }
}

/// A block device source (here the helper's own loop device over an ext4
/// image) is mounted fuseblk: the helper keeps an exclusive claim until the
/// mount, the kernel holds one after it, and a mount the helper takes down
/// again has its connection aborted first, so the DESTROY the kernel sends
/// when the superblock goes never waits for a server that is not listening.
@Suite(.serialized, .enabled(if: getuid() == 0, "needs root, /dev/fuse, loop devices and mkfs.ext4"))
struct FuseblkSessionTests {
    let lock = RootTestLock()

    /// (mkfs through system(3): it leaves no fd behind, so fd counts stay exact.)
    func ext4Scratch() throws -> Scratch {
        let s = Scratch(imageSize: 16 << 20)
        let st = system("mkfs.ext4 -q -F -b 4096 '\(s.image)' >/dev/null 2>&1")
        if st != 0 { s.cleanup(); throw CommandFailed(description: "mkfs.ext4 \(s.image) exited \(st)") }
        return s
    }

    /// 0 if `path` opens exclusively now, else the errno.
    func exclusiveOpenError(_ path: String) -> Int32 {
        let fd = open(path, O_RDONLY | O_EXCL | O_CLOEXEC)
        if fd < 0 { return errno }
        close(fd)
        return 0
    }

    func loopPath(_ image: String) -> String? {
        var st = stat()
        guard stat(image, &st) == 0 else { return nil }
        return LoopDevice.findLoop(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
    }

    /// The helper thread finishes within `seconds`; if it does not, the test
    /// aborts the connection itself so that it is not stuck behind it.
    func finishes(_ thread: TestThread, _ result: Box<Result<HelperOutcome, BrokerError>?>, dev: dev_t,
                  seconds: Int = 10) -> Bool {
        for _ in 0..<(seconds * 50) {
            if result.value != nil { thread.join(); return true }
            usleep(20_000)
        }
        FuseBlock.abortConnection(dev: DeviceNumber(dev))
        thread.join()
        return false
    }

    /// After an abort, reading the server's /dev/fuse fd ends with ENODEV at
    /// once (a live connection would give EAGAIN or a request).
    func connectionAborted(_ fuse: Int32) -> Bool {
        _ = fcntl(fuse, F_SETFL, fcntl(fuse, F_GETFL) | O_NONBLOCK)
        var buf = [UInt8](repeating: 0, count: 1 << 20)
        let n = read(fuse, &buf, buf.count)
        return n < 0 && errno == ENODEV
    }

    @Test func fuseblkOnTheHelpersLoopDevice() throws {
        let s = try ext4Scratch()
        defer { s.cleanup() }
        let fdsBefore = FD.openCount()
        let (h, sv) = try Transport.socketPair()
        let (thread, result) = runHelper(h, s.config())
        do {
            let ep = try ServiceEndpoint(inheritedFD: sv, timeoutMs: 5000)
            try ep.hello()
            _ = try ep.receiveArgs()
            let fuse = try ep.receiveFuseDevice()
            let dev = try ep.requestBlockDevice(path: s.image, flags: O_RDWR, loop: true, readOnly: false, blockSize: 0)
            #expect(isBlockDevice(dev))
            let loop = loopPath(s.image) ?? "?"
            // The server's fd is not exclusive, but the helper holds the device until the mount.
            #expect(exclusiveOpenError(loop) == EBUSY)
            var zero = [UInt8](repeating: 0, count: 512)
            #expect(pwrite(dev, &zero, 512, 0) == 512, "the server's fd writes")
            ep.finishFileRequests()
            try ep.mount(fstype: "fuseblk.ext4test", source: s.image, mountpoint: s.mnt,
                         options: nil, mtabOptions: nil, flags: 0)
            let m = mountSource(s.mnt)
            #expect(m?.0 == loop && m?.1 == "fuseblk.ext4test", "\(String(describing: m))")
            #expect(superOptions(s.mnt).contains("blksize=4096"), "\(superOptions(s.mnt))")
            #expect(exclusiveOpenError(loop) == EBUSY, "the kernel claims the device for the mount")
            // The mount's writeback domain: its dirty-page cap raised, the strict limit kept.
            var st = stat()
            if stat(loop, &st) == 0 {
                let bdi = "/sys/class/bdi/" + WritebackLimit.bdiName(DeviceNumber(st.st_rdev), fuseblk: true)
                if FileManager.default.fileExists(atPath: bdi + "/max_bytes") {
                    #expect(WritebackLimit.readNumber(bdi + "/max_bytes").map { WritebackLimit.reached($0, WritebackLimit.targetBytes) } == true,
                            "\(bdi)/max_bytes: \(String(describing: WritebackLimit.readNumber(bdi + "/max_bytes")))")
                    #expect(WritebackLimit.readNumber(bdi + "/strict_limit") == 1)
                } else {
                    #expect(FileManager.default.fileExists(atPath: bdi), "no \(bdi) for the fuseblk mount")
                }
            } else {
                Issue.record("stat \(loop): errno \(errno)")
            }
            try ep.goodbye(status: 0)
            thread.join()
            #expect(result.value == .success(.goodbye(exitCode: 0, mounted: true)))
            // No server reads the connection: closing the last /dev/fuse fd
            // aborts it, so umount's DESTROY fails at once.
            close(fuse)
            close(dev)
            #expect(umount2(s.mnt, 0) == 0)
        }
        close(h)
        #expect(!isMounted(s.mnt))
        #expect(waitLoopGone(s.image))
        #expect(FD.openCount() == fdsBefore)
    }

    /// A plain image without an ext4 superblock still gets a loop device, and
    /// a plain fuse mount; TYPE fuseblk is refused for it.
    @Test func noSuperblockMeansPlainFuse() throws {
        let s = Scratch()
        defer { s.cleanup() }
        let (h, sv) = try Transport.socketPair()
        defer { close(h) }
        let (thread, result) = runHelper(h, s.config())
        let ep = try ServiceEndpoint(inheritedFD: sv, timeoutMs: 5000)
        try ep.hello()
        _ = try ep.receiveArgs()
        let fuse = try ep.receiveFuseDevice()
        let dev = try ep.requestBlockDevice(path: s.image, flags: O_RDWR, loop: true, readOnly: false, blockSize: 0)
        #expect(throws: BrokerError.refused(operation: "TYPE", errno: EOPNOTSUPP)) {
            try ep.command(.fsopen(flags: [.fuseblk]), "TYPE")
        }
        try ep.command(.fsopen(flags: []), "TYPE")
        try ep.command(.source(s.image), "NAME")
        try ep.command(.mountpoint(expectedFormat: UInt16(S_IFDIR), path: s.mnt), "MNTP")
        try ep.command(.mount(msFlags: 0), "DOIT")
        let m = mountSource(s.mnt)
        #expect(m?.0 == s.image && m?.1 == "fuse.ext4test", "\(String(describing: m))")
        try ep.goodbye(status: 0)
        thread.join()
        #expect(result.value == .success(.goodbye(exitCode: 0, mounted: true)))
        close(fuse)
        close(dev)
        _ = umount2(s.mnt, Int32(MNT_DETACH))
        #expect(waitLoopGone(s.image))
    }

    /// The connection drops after DOIT, while the server still holds /dev/fuse
    /// and never reads it: the helper must abort the connection before it lets
    /// go of the mount, or releasing the superblock would wait for DESTROY's
    /// answer for ever.
    @Test func undoAbortsTheConnectionFirst() throws {
        let s = try ext4Scratch()
        defer { s.cleanup() }
        let (h, sv) = try Transport.socketPair()
        defer { close(h) }
        let (thread, result) = runHelper(h, s.config())
        let ep = try ServiceEndpoint(inheritedFD: sv, timeoutMs: 5000)
        try ep.hello()
        _ = try ep.receiveArgs()
        let fuse = try ep.receiveFuseDevice()
        defer { close(fuse) }
        let dev = try ep.requestBlockDevice(path: s.image, flags: O_RDWR, loop: true, readOnly: false, blockSize: 0)
        var st = stat()
        _ = fstat(dev, &st)
        try ep.mount(fstype: "fuse.ext4test", source: s.image, mountpoint: s.mnt, options: nil, mtabOptions: nil, flags: 0)
        #expect(mountSource(s.mnt)?.1 == "fuseblk.ext4test")
        ep.close()  // no BYEE
        #expect(finishes(thread, result, dev: st.st_rdev), "the helper hung taking the mount down")
        #expect(result.value == .failure(.peerClosed))
        #expect(!isMounted(s.mnt))
        #expect(connectionAborted(fuse))
        close(dev)
        #expect(waitLoopGone(s.image))
    }

    /// BYEE with a failure after a successful DOIT: the mount is taken down
    /// the same way.
    @Test func failedGoodbyeAfterTheMountUndoesIt() throws {
        let s = try ext4Scratch()
        defer { s.cleanup() }
        let (h, sv) = try Transport.socketPair()
        defer { close(h) }
        let (thread, result) = runHelper(h, s.config())
        let ep = try ServiceEndpoint(inheritedFD: sv, timeoutMs: 5000)
        try ep.hello()
        _ = try ep.receiveArgs()
        let fuse = try ep.receiveFuseDevice()
        defer { close(fuse) }
        let dev = try ep.requestBlockDevice(path: s.image, flags: O_RDWR, loop: true, readOnly: false, blockSize: 0)
        var st = stat()
        _ = fstat(dev, &st)
        try ep.mount(fstype: "fuse.ext4test", source: s.image, mountpoint: s.mnt, options: nil, mtabOptions: nil, flags: 0)
        #expect(isMounted(s.mnt))
        try ep.goodbye(status: 1)
        #expect(finishes(thread, result, dev: st.st_rdev), "the helper hung taking the mount down")
        #expect(result.value == .success(.goodbye(exitCode: 1, mounted: false)))
        #expect(!isMounted(s.mnt))
        #expect(connectionAborted(fuse))
        close(dev)
        #expect(waitLoopGone(s.image))
    }
}
