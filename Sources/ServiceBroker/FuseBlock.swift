#if canImport(Glibc)
import Glibc
#endif
import CShim
import LoopDevices

// What a `fuseblk` mount needs from the helper, and how the helper takes one
// down when it cannot be finished.
//
// Why fuseblk: the kernel sends FUSE_DESTROY only to fuseblk connections, and
// its umount waits for the answer. The server unmounts its engine (commit,
// flush, journal emptied, clean) before it answers, so when umount(2) returns
// the device holds the whole file system. A plain `fuse` umount sends nothing
// and returns while the server may still be writing.

/// The block device a fuseblk mount is made on: the source the helper handed
/// to the server (a block device, or the helper's own loop device over an
/// image file). The kernel opens `path` itself, exclusively, for the mount.
struct BlockSource: Equatable {
    /// What the kernel opens and mountinfo shows: the command line's block
    /// device, or "/dev/loopN".
    var path: String
    /// The device number it must have (checked before and after the mount).
    var device: DeviceNumber
    /// The mount's `blksize=`: from the ext4 superblock, fitted to what the
    /// kernel accepts for this device.
    var blockSize: UInt32
}

/// A device number as major and minor.
struct DeviceNumber: Equatable, CustomStringConvertible {
    var major: UInt32
    var minor: UInt32

    init(major: UInt32, minor: UInt32) {
        self.major = major
        self.minor = minor
    }

    /// From glibc's dev_t layout (st_dev, st_rdev).
    init(_ dev: dev_t) {
        let d = UInt64(dev)
        major = UInt32(truncatingIfNeeded: ((d >> 8) & 0xfff) | ((d >> 32) & ~UInt64(0xfff)))
        minor = UInt32(truncatingIfNeeded: (d & 0xff) | ((d >> 12) & ~UInt64(0xff)))
    }

    /// The device of the file system `fd` is on. Asks a FUSE server nothing
    /// (statx with AT_STATX_DONT_SYNC), so it never waits for one.
    static func of(fd: Int32) -> DeviceNumber? {
        var ma: UInt32 = 0, mi: UInt32 = 0
        return cshim_pin_dev(fd, &ma, &mi) == 0 ? DeviceNumber(major: ma, minor: mi) : nil
    }

    /// The kernel's name for the FUSE connection of a superblock with this
    /// device number: its value in the kernel's own encoding (major << 20 |
    /// minor), in decimal, as /sys/fs/fuse/connections lists it. For fuseblk
    /// that is the block device's number, for fuse an anonymous 0:N. nil for
    /// numbers the kernel cannot have.
    var connectionName: String? {
        guard major < (1 << 12), minor < (1 << 20) else { return nil }
        return String((major << 20) | minor)
    }

    var description: String { "\(major):\(minor)" }
}

/// The two superblock fields the helper reads: it parses no other byte of the
/// file system, and treats these as untrusted input.
enum Ext4SuperblockProbe {
    /// The superblock starts 1024 bytes into the device.
    static let offset: off_t = 1024
    static let magicOffset = 0x38
    static let logBlockSizeOffset = 0x18
    static let magic: UInt16 = 0xEF53

    /// The file system block size from the superblock bytes, or nil when they
    /// are no ext2/3/4 superblock or name a block size outside 1 KiB...64 KiB.
    static func blockSize(superblock b: [UInt8]) -> UInt32? {
        guard b.count >= 0x3A else { return nil }
        let m = UInt16(b[magicOffset]) | UInt16(b[magicOffset + 1]) << 8
        guard m == magic else { return nil }
        var log: UInt32 = 0
        for i in 0..<4 { log |= UInt32(b[logBlockSizeOffset + i]) << (8 * UInt32(i)) }
        // s_log_block_size: block size = 1024 << n; ext4 allows n = 0...6.
        guard log <= 6 else { return nil }
        return UInt32(1024) << log
    }

    /// Read the superblock from an open device and return its block size.
    static func blockSize(fd: Int32) -> UInt32? {
        var buf = [UInt8](repeating: 0, count: 1024)
        var done = 0
        while done < buf.count {
            let n = buf.withUnsafeMutableBytes { p -> Int in
                guard let base = p.baseAddress else { return -1 }
                return pread(fd, base + done, p.count - done, offset + off_t(done))
            }
            if n < 0 {
                if errno == EINTR { continue }
                return nil
            }
            if n == 0 { return nil }
            done += n
        }
        return blockSize(superblock: buf)
    }
}

enum FuseBlock {
    /// Why a block device source is mounted as plain fuse after all.
    struct NotFuseblk: Error, CustomStringConvertible {
        var description: String
    }

    /// The `blksize=` for a fuseblk mount of a file system with block size
    /// `fsBlockSize` on a device with `logicalSectorSize`: the kernel accepts
    /// a power of two from the device's logical sector size up to the page
    /// size, so larger file system blocks get the page size and smaller ones
    /// the sector size (the value sizes the kernel's own buffers only; the
    /// server does all IO). nil when no value fits.
    static func mountBlockSize(fsBlockSize: UInt32, logicalSectorSize: UInt32, pageSize: Int) -> UInt32? {
        guard BlockDevice.isValidBlockSize(fsBlockSize), pageSize >= 512, pageSize <= 65536 else { return nil }
        let page = UInt32(pageSize)
        let low = max(512, logicalSectorSize)
        guard BlockDevice.isValidBlockSize(low), low <= page else { return nil }
        return min(max(fsBlockSize, low), page)
    }

    /// The source for a fuseblk mount over the open block device `fd`, or nil
    /// (with the reason) when it cannot be one: no ext2/3/4 superblock, or no
    /// block size the kernel would take.
    static func source(path: String, fd: Int32) -> Result<BlockSource, NotFuseblk> {
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFBLK else { return .failure(NotFuseblk(description: "not a block device")) }
        guard let fsBlock = Ext4SuperblockProbe.blockSize(fd: fd) else {
            return .failure(NotFuseblk(description: "no ext2/3/4 superblock with a valid block size"))
        }
        let sector = (try? LoopDevices.BlockDevice.logicalSectorSize(fd: fd)) ?? 512
        guard let bs = mountBlockSize(fsBlockSize: fsBlock, logicalSectorSize: sector,
                                      pageSize: Int(getpagesize()))
        else { return .failure(NotFuseblk(description: "block size \(fsBlock) does not fit a device with \(sector)-byte sectors")) }
        return .success(BlockSource(path: path, device: DeviceNumber(st.st_rdev), blockSize: bs))
    }

    /// Does `path` name a block device with number `device` now? The kernel
    /// opens the fuseblk source by path, so it is checked right before the mount.
    static func pathNames(_ path: String, device: DeviceNumber) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFBLK && DeviceNumber(st.st_rdev) == device
    }

    /// Abort the FUSE connection whose superblock has device number `dev`,
    /// as `echo 1 > /sys/fs/fuse/connections/N/abort` does: every waiting
    /// request fails, the server's reads end, and the DESTROY that releasing
    /// the superblock sends fails at once instead of waiting for a server
    /// that may never answer. Without fusectl mounted at
    /// /sys/fs/fuse/connections, a private instance is made with the new mount
    /// API and never attached anywhere. Returns 0 or a positive errno.
    @discardableResult
    static func abortConnection(dev: DeviceNumber) -> Int32 {
        guard let name = dev.connectionName else { return EINVAL }
        var r = writeAbort(dirFD: AT_FDCWD, path: "/sys/fs/fuse/connections/\(name)/abort")
        if r != ENOENT { return r }
        let fsfd = cshim_fsopen("fusectl", 1)  // FSOPEN_CLOEXEC
        if fsfd < 0 { return -fsfd }
        defer { FD.close(fsfd) }
        let c = cshim_fsconfig(fsfd, 6, nil, nil, 0)  // FSCONFIG_CMD_CREATE
        if c < 0 { return -c }
        let mfd = cshim_fsmount(fsfd, 1, 0)  // FSMOUNT_CLOEXEC; detached, never attached
        if mfd < 0 { return -mfd }
        defer { FD.close(mfd) }
        r = writeAbort(dirFD: mfd, path: "\(name)/abort")
        return r
    }

    private static func writeAbort(dirFD: Int32, path: String) -> Int32 {
        var fd: Int32
        repeat { fd = openat(dirFD, path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW) } while fd < 0 && errno == EINTR
        if fd < 0 { return errno }
        defer { FD.close(fd) }
        let one: [UInt8] = [0x31, 0x0A]
        while true {
            let n = one.withUnsafeBytes { p in write(fd, p.baseAddress, p.count) }
            if n >= 0 { return 0 }
            if errno != EINTR { return errno }
        }
    }
}
