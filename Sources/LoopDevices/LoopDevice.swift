#if canImport(Glibc)
import Glibc
#endif
import CShim

/// A loop device attached by `LoopDevice.attach`. The caller owns `fd`;
/// the loop auto-clears when the last opener closes it.
public struct AttachedLoop: Sendable, Equatable {
    /// Open fd of /dev/loopN (close-on-exec; O_RDWR or O_RDONLY, plus O_EXCL).
    public let fd: Int32
    /// "/dev/loopN".
    public let path: String
    /// N.
    public let number: Int
    /// Whether LO_FLAGS_DIRECT_IO ended up set.
    public let directIO: Bool
    /// Whether the loop is read-only.
    public let readOnly: Bool
}

/// Options for `LoopDevice.attach`.
public struct LoopAttachOptions: Sendable {
    /// Make the loop read-only (LO_FLAGS_READ_ONLY) and open it O_RDONLY.
    public var readOnly: Bool
    /// Logical block size for the loop (0 = kernel default, 512).
    public var blockSize: UInt32
    /// Try LO_FLAGS_DIRECT_IO when the backing file accepts O_DIRECT.
    public var preferDirectIO: Bool
    /// How long to wait for a competing flock on the backing file.
    public var lockTimeoutMilliseconds: Int

    public init(readOnly: Bool = false, blockSize: UInt32 = 0, preferDirectIO: Bool = true,
                lockTimeoutMilliseconds: Int = 5000) {
        self.readOnly = readOnly
        self.blockSize = blockSize
        self.preferDirectIO = preferDirectIO
        self.lockTimeoutMilliseconds = lockTimeoutMilliseconds
    }
}

public enum LoopDevice {
    /// Attach a new loop device to the already-open regular file `backingFD`.
    /// `backingFD` is not consumed. Every failure path leaves no loop behind.
    public static func attach(backingFD: Int32, options: LoopAttachOptions = LoopAttachOptions())
        throws(LoopDeviceError) -> AttachedLoop
    {
        if options.blockSize != 0 && !BlockDevice.isValidBlockSize(options.blockSize) {
            throw .invalidBlockSize(options.blockSize)
        }
        let st = try Sys.fstat(backingFD)
        guard Sys.isS_IFMT(st.st_mode, S_IFREG) else { throw .notRegularFile }
        guard st.st_size >= 512 else { throw .tooSmall(size: Int64(st.st_size)) }

        // A read-write loop over a read-only fd would fail in the kernel; be explicit.
        let accmode = fcntl(backingFD, F_GETFL) & O_ACCMODE
        let readOnly = options.readOnly || accmode == O_RDONLY

        try lock(backingFD, timeoutMs: options.lockTimeoutMilliseconds)
        defer { _ = flock(backingFD, LOCK_UN) }

        if let existing = findLoop(device: UInt64(st.st_dev), inode: UInt64(st.st_ino)) {
            throw .alreadyAttached(loopPath: existing)
        }

        let wantDirect = options.preferDirectIO && allowsDirectIO(backingFD, readOnly: readOnly)
        var flags = cshim_broker_LO_FLAGS_AUTOCLEAR()
        if readOnly { flags |= cshim_broker_LO_FLAGS_READ_ONLY() }

        let ctl = try Sys.open("/dev/loop-control", O_RDONLY)
        defer { Sys.close(ctl) }

        // LOOP_CTL_GET_FREE can race with another attacher; retry a few times.
        var lastError = LoopDeviceError.system(operation: "LOOP_CONFIGURE", errno: EBUSY)
        for attempt in 0..<20 {
            if attempt > 0 { usleep(UInt32(5_000 * min(attempt, 10))) }
            let n = cshim_ioctl_int(ctl, cshim_LOOP_CTL_GET_FREE(), 0)
            if n < 0 { throw .system(operation: "LOOP_CTL_GET_FREE", errno: -n) }
            let path = "/dev/loop\(n)"
            let loopFD: Int32
            do {
                loopFD = try Sys.open(path, (readOnly ? O_RDONLY : O_RDWR) | O_EXCL)
            } catch {
                if error.errno == EBUSY { lastError = error; continue }
                throw error
            }
            var configured = false
            var usedDirect = false
            var err: Int32 = 0
            for direct in (wantDirect ? [true, false] : [false]) {
                let f = direct ? flags | cshim_broker_LO_FLAGS_DIRECT_IO() : flags
                err = -cshim_broker_loop_configure(loopFD, backingFD, options.blockSize, f)
                if err == 0 { configured = true; usedDirect = direct; break }
                if err != EINVAL { break }
            }
            if !configured {
                Sys.close(loopFD)
                lastError = .system(operation: "LOOP_CONFIGURE \(path)", errno: err)
                if err == EBUSY { continue }
                throw lastError
            }
            // Verify that the loop now really points at our file.
            var dev: UInt64 = 0, ino: UInt64 = 0, loFlags: UInt32 = 0
            let r = cshim_broker_loop_status(loopFD, &dev, &ino, &loFlags)
            if r < 0 || ino != UInt64(st.st_ino) || !sameDevice(dev, UInt64(st.st_dev)) {
                detach(fd: loopFD)
                Sys.close(loopFD)
                throw .system(operation: "LOOP_GET_STATUS64 \(path)", errno: r < 0 ? -r : EIO)
            }
            return AttachedLoop(fd: loopFD, path: path, number: Int(n),
                                directIO: usedDirect || (loFlags & cshim_broker_LO_FLAGS_DIRECT_IO()) != 0,
                                readOnly: readOnly)
        }
        throw lastError
    }

    /// LOOP_CLR_FD. Errors are ignored (used on cleanup paths; AUTOCLEAR also covers it).
    public static func detach(fd: Int32) {
        _ = cshim_ioctl_int(fd, cshim_LOOP_CLR_FD(), 0)
    }

    /// The /dev/loopN path whose backing file is (device, inode), if any.
    public static func findLoop(device: UInt64, inode: UInt64) -> String? {
        guard let dir = opendir("/sys/block") else { return nil }
        defer { closedir(dir) }
        while let ent = readdir(dir) {
            let name = withUnsafeBytes(of: ent.pointee.d_name) { raw -> String in
                let bytes = raw.prefix { $0 != 0 }
                return String(decoding: bytes, as: UTF8.self)
            }
            guard name.hasPrefix("loop"), Int(name.dropFirst(4)) != nil else { continue }
            guard let backing = Sys.readSmallFile("/sys/block/\(name)/loop/backing_file") else { continue }
            var p = backing
            while p.hasSuffix("\n") { p.removeLast() }
            if let bst = Sys.statPath(p), UInt64(bst.st_ino) == inode, UInt64(bst.st_dev) == device {
                return "/dev/\(name)"
            }
            // The path may be stale (renamed/deleted): ask the loop device itself.
            let lfd = Glibc.open("/dev/\(name)", O_RDONLY | O_CLOEXEC | O_NONBLOCK)
            if lfd >= 0 {
                defer { _ = Glibc.close(lfd) }
                var dev: UInt64 = 0, ino: UInt64 = 0, fl: UInt32 = 0
                if cshim_broker_loop_status(lfd, &dev, &ino, &fl) == 0, ino == inode, sameDevice(dev, device) {
                    return "/dev/\(name)"
                }
            }
        }
        return nil
    }

    /// lo_device is the kernel's huge_encode_dev; glibc's dev_t uses the same
    /// layout for every realistic major/minor. Compare major/minor explicitly.
    static func sameDevice(_ kernelDev: UInt64, _ statDev: UInt64) -> Bool {
        func split(_ d: UInt64) -> (UInt64, UInt64) {
            let major = ((d >> 8) & 0xfff) | ((d >> 32) & ~UInt64(0xfff))
            let minor = (d & 0xff) | ((d >> 12) & ~UInt64(0xff))
            return (major, minor)
        }
        let a = split(kernelDev), b = split(statDev)
        return a.0 == b.0 && a.1 == b.1
    }

    /// Whether the backing file can be opened with O_DIRECT (reopen through /proc/self/fd).
    static func allowsDirectIO(_ fd: Int32, readOnly: Bool) -> Bool {
        let f = Glibc.open("/proc/self/fd/\(fd)", O_RDONLY | O_CLOEXEC | cshim_broker_O_DIRECT())
        if f < 0 { return false }
        _ = Glibc.close(f)
        return true
    }

    static func lock(_ fd: Int32, timeoutMs: Int) throws(LoopDeviceError) {
        var waited = 0
        while true {
            if flock(fd, LOCK_EX | LOCK_NB) == 0 { return }
            let e = errno
            if e == EINTR { continue }
            if e != EWOULDBLOCK { throw .system(operation: "flock", errno: e) }
            if waited >= timeoutMs { throw .lockTimeout }
            usleep(100_000)
            waited += 100
        }
    }
}
