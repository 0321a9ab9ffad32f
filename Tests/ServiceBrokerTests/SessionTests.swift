#if canImport(Glibc)
import Glibc
#endif
import Testing
import LoopDevices
@testable import ServiceBroker

@Suite(.serialized, .enabled(if: getuid() == 0, "needs root, /dev/fuse and loop devices"))
struct SessionTests {
    let lock = RootTestLock()
    /// The whole designed path: handshake, argv, fusedev, loop BDEV, IOMA, mount, goodbye.
    @Test func fullMountV2WithLoop() throws {
        let s = Scratch()
        defer { s.cleanup() }
        let fdsBefore = FD.openCount()
        let (h, sv) = try Transport.socketPair()
        let (thread, result) = runHelper(h, s.config(options: "noatime"))
        do {
            let ep = try ServiceEndpoint(inheritedFD: sv, timeoutMs: 5000)
            #expect(try ep.hello() == 2)
            #expect(ep.helperFlags == [.allowOther])
            #expect(try ep.receiveArgs() == ["ext4test", s.image, s.mnt, "-o", "noatime"])
            let fuse = try ep.receiveFuseDevice()
            let dev = try ep.requestBlockDevice(path: s.image, flags: O_RDWR | O_EXCL, loop: true,
                                                readOnly: false, blockSize: 4096)
            #expect(isBlockDevice(dev))
            #expect(try BlockDevice.logicalSectorSize(fd: dev) == 4096)
            #expect(try BlockDevice.size(fd: dev) == 4 << 20)
            #expect(try ep.requestIomap(mandatory: false) == false)
            ep.finishFileRequests()
            try ep.mount(fstype: "fuse.ext4test", source: s.image, mountpoint: s.mnt,
                         options: "default_permissions", mtabOptions: nil, flags: 0)
            #expect(isMounted(s.mnt))
            try ep.goodbye(status: 0)
            thread.join()
            #expect(result.value == .success(.goodbye(exitCode: 0, mounted: true)))
            // The server goes away: abort the connection, unmount, loop auto-clears.
            close(fuse)
            close(dev)
            #expect(umount2(s.mnt, Int32(MNT_DETACH)) == 0)
        }
        close(h)
        #expect(!isMounted(s.mnt))
        #expect(waitLoopGone(s.image))
        #expect(FD.openCount() == fdsBefore)
    }

    @Test func readOnlyEndToEnd() throws {
        let s = Scratch()
        defer { s.cleanup() }
        let (h, sv) = try Transport.socketPair()
        defer { close(h) }
        let (thread, result) = runHelper(h, s.config(options: "ro"))
        let ep = try ServiceEndpoint(inheritedFD: sv, timeoutMs: 5000)
        try ep.hello()
        _ = try ep.receiveArgs()
        let fuse = try ep.receiveFuseDevice()
        defer { close(fuse) }
        // A read-write request is refused with EROFS; read-only gets a read-only loop.
        #expect(throws: BrokerError.refused(operation: "open \(s.image)", errno: EROFS)) {
            _ = try ep.requestBlockDevice(path: s.image, flags: O_RDWR, loop: true, readOnly: false, blockSize: 0)
        }
        let dev = try ep.requestBlockDevice(path: s.image, flags: O_RDWR, loop: true, readOnly: true, blockSize: 0)
        #expect(try BlockDevice.isReadOnly(fd: dev))
        try ep.mount(fstype: "fuse.ext4test", source: s.image, mountpoint: s.mnt, options: nil, mtabOptions: nil, flags: 0)
        #expect(mountOptions(s.mnt)?.hasPrefix("ro") == true)
        try ep.goodbye(status: 0)
        thread.join()
        #expect(result.value == .success(.goodbye(exitCode: 0, mounted: true)))
        close(dev)
        close(fuse)
        _ = umount2(s.mnt, Int32(MNT_DETACH))
        #expect(waitLoopGone(s.image))
    }

    @Test func openPolicy() throws {
        let s = Scratch()
        defer { s.cleanup() }
        let fdsBefore = FD.openCount()
        let (h, sv) = try Transport.socketPair()
        let (thread, result) = runHelper(h, s.config(options: "journal=/etc/hostname,journal_path=/etc/hostname"))
        do {
            let ep = try ServiceEndpoint(inheritedFD: sv, timeoutMs: 5000)
            try ep.hello()
            _ = try ep.receiveArgs()
            let fuse = try ep.receiveFuseDevice()
            defer { close(fuse) }
            #expect(throws: BrokerError.refused(operation: "open /etc/passwd", errno: EPERM)) {
                _ = try ep.requestFile(path: "/etc/passwd", flags: O_RDONLY)
            }
            #expect(throws: BrokerError.refused(operation: "open /etc/passwd", errno: EPERM)) {
                _ = try ep.requestBlockDevice(path: "/etc/passwd", flags: O_RDONLY, loop: false, readOnly: true, blockSize: 0)
            }
            #expect(throws: BrokerError.refused(operation: "open \(s.image)", errno: ENOTBLK)) {
                _ = try ep.requestBlockDevice(path: s.image, flags: O_RDWR, loop: false, readOnly: false, blockSize: 0)
            }
            #expect(throws: BrokerError.refused(operation: "open \(s.image)", errno: EINVAL)) {
                _ = try ep.requestFile(path: s.image, flags: O_RDWR | O_CREAT | O_TRUNC)
            }
            // The value of a file-naming option may be opened, once.
            let j = try ep.requestFile(path: "/etc/hostname", flags: O_RDONLY)
            close(j)
            #expect(throws: BrokerError.refused(operation: "open /etc/hostname", errno: EPERM)) {
                _ = try ep.requestFile(path: "/etc/hostname", flags: O_RDONLY)
            }
            let f = try ep.requestFile(path: s.image, flags: O_RDWR)
            close(f)
            #expect(throws: BrokerError.refused(operation: "open \(s.image)", errno: EPERM)) {
                _ = try ep.requestFile(path: s.image, flags: O_RDWR)
            }
            // Mountpoint checks.
            #expect(throws: BrokerError.refused(operation: "MNTP", errno: EINVAL)) {
                try ep.command(.mountpoint(expectedFormat: UInt16(S_IFDIR), path: "/tmp"), "MNTP")
            }
            #expect(throws: BrokerError.refused(operation: "MNTP", errno: EISDIR)) {
                try ep.command(.mountpoint(expectedFormat: UInt16(S_IFREG), path: s.mnt), "MNTP")
            }
            try ep.command(.mountpoint(expectedFormat: UInt16(S_IFDIR), path: s.mnt), "MNTP")
            #expect(throws: BrokerError.refused(operation: "MNTP", errno: EINVAL)) {
                try ep.command(.mountpoint(expectedFormat: UInt16(S_IFDIR), path: s.mnt), "MNTP")
            }
            // Any open after MNTP is refused.
            #expect(throws: BrokerError.refused(operation: "open \(s.image)", errno: EPERM)) {
                _ = try ep.requestFile(path: s.image, flags: O_RDONLY)
            }
            // DOIT without NAME.
            #expect(throws: BrokerError.refused(operation: "DOIT", errno: EINVAL)) {
                try ep.command(.mount(msFlags: 0), "DOIT")
            }
            // Reserved options and bad flags.
            #expect(throws: BrokerError.refused(operation: "OPTS", errno: EPERM)) {
                try ep.command(.options("fd=0"), "OPTS")
            }
            // The server's source name is accepted and ignored (the mount's
            // source is the helper's own: doitCannotDropNosuidNodevOrAccessOptions).
            try ep.command(.source("/dev/loop0"), "NAME")
            #expect(throws: BrokerError.refused(operation: "TYPE", errno: EOPNOTSUPP)) {
                try ep.command(.fsopen(flags: [.fuseblk]), "TYPE")
            }
            #expect(throws: BrokerError.refused(operation: "MTAB", errno: EINVAL)) {
                try ep.command(.mtab("rw,user=evil"), "MTAB")
            }
            #expect(throws: BrokerError.refused(operation: "OPTS", errno: EPERM)) {
                try ep.command(.options("max_read=4096,blksize=512"), "OPTS")
            }
            #expect(throws: BrokerError.refused(operation: "DOIT", errno: EINVAL)) {
                try ep.command(.mount(msFlags: 0x1000 /* MS_BIND */), "DOIT")
            }
            try ep.goodbye(status: 7)
            thread.join()
            #expect(result.value == .success(.goodbye(exitCode: 7, mounted: false)))
        }
        close(h)
        #expect(!isMounted(s.mnt))
        #expect(FD.openCount() == fdsBefore)
    }

    @Test func version1ServerInterop() throws {
        let s = Scratch()
        defer { s.cleanup() }
        let (h, sv) = try Transport.socketPair()
        defer { close(h) }
        let (thread, result) = runHelper(h, s.config())
        let ep = try ServiceEndpoint(inheritedFD: sv, timeoutMs: 5000, supportedMaxVersion: 1)
        #expect(try ep.hello() == 1)
        _ = try ep.receiveArgs()
        let fuse = try ep.receiveFuseDevice()
        defer { close(fuse) }
        // No loop flag and no IOMA on v1: the plain file comes back.
        #expect(throws: BrokerError.refused(operation: "open \(s.image)", errno: ENOTBLK)) {
            _ = try ep.requestBlockDevice(path: s.image, flags: O_RDWR, loop: true, readOnly: false, blockSize: 0)
        }
        let f = try ep.requestFile(path: s.image, flags: O_RDWR, loop: true)
        #expect(!isBlockDevice(f))
        close(f)
        #expect(try ep.requestIomap(mandatory: false) == false)
        #expect(throws: BrokerError.self) { try ep.requestIomap(mandatory: true) }
        try ep.goodbye(status: 0)
        thread.join()
        #expect(result.value == .success(.goodbye(exitCode: 0, mounted: false)))
        #expect(!loopExists(for: s.image))
    }

    @Test func mandatoryIomapFailsTheMount() throws {
        let s = Scratch()
        defer { s.cleanup() }
        let (h, sv) = try Transport.socketPair()
        defer { close(h) }
        let (thread, result) = runHelper(h, s.config())
        let ep = try ServiceEndpoint(inheritedFD: sv, timeoutMs: 5000)
        try ep.hello()
        _ = try ep.receiveArgs()
        let fuse = try ep.receiveFuseDevice()
        defer { close(fuse) }
        #expect(throws: BrokerError.self) { try ep.requestIomap(mandatory: true) }
        #expect(throws: BrokerError.self) {
            try ep.mount(fstype: "fuse.ext4test", source: s.image, mountpoint: s.mnt, options: nil, mtabOptions: nil, flags: 0)
        }
        #expect(!isMounted(s.mnt))
        try ep.goodbye(status: 1)
        thread.join()
        #expect(result.value == .success(.goodbye(exitCode: 1, mounted: false)))
    }

    @Test func duplicateLoopIsBusy() throws {
        let s = Scratch()
        defer { s.cleanup() }
        let bfd = open(s.image, O_RDWR | O_CLOEXEC)
        defer { close(bfd) }
        let existing = try LoopDevice.attach(backingFD: bfd)
        defer { close(existing.fd) }
        let (h, sv) = try Transport.socketPair()
        defer { close(h) }
        let (thread, _) = runHelper(h, s.config())
        let ep = try ServiceEndpoint(inheritedFD: sv, timeoutMs: 5000)
        try ep.hello()
        _ = try ep.receiveArgs()
        let fuse = try ep.receiveFuseDevice()
        defer { close(fuse) }
        #expect(throws: BrokerError.refused(operation: "open \(s.image)", errno: EBUSY)) {
            _ = try ep.requestBlockDevice(path: s.image, flags: O_RDWR, loop: true, readOnly: false, blockSize: 0)
        }
        try ep.goodbye(status: 0)
        thread.join()
    }
}

