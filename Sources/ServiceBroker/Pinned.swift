#if canImport(Glibc)
import Glibc
#endif
import CShim

/// fstat of a freshly pinned fd; on failure the fd is closed.
func fstatOrClose(_ fd: Int32, _ what: String) throws(BrokerError) -> stat {
    var st = stat()
    if fstat(fd, &st) != 0 {
        let e = errno
        FD.close(fd)
        throw .system(operation: "fstat \(what)", errno: e)
    }
    return st
}

/// A file the helper pinned by inode at start-up: an O_PATH fd and what fstat
/// said of it then. Later opens go through this fd (never through the path
/// again), so a path swapped after start-up cannot redirect the helper.
public final class PinnedFile {
    /// The path as named on the helper's command line (absolute).
    public let path: String
    let pathFD: Int32
    let stat: stat
    /// False when only a read-only open was possible (write-protected file or
    /// read-only medium): a write-mode request then gets EROFS.
    public let writable: Bool

    public var isBlockDevice: Bool { (stat.st_mode & S_IFMT) == S_IFBLK }
    public var isRegular: Bool { (stat.st_mode & S_IFMT) == S_IFREG }

    /// Open `path` O_PATH (this never blocks and reads nothing), accept only a
    /// regular file or a block device, and check once that it can be opened in
    /// the mode the mount needs; a block device must be free for an exclusive
    /// open (not mounted, not held by another exclusive user).
    public init(path: String, readOnly: Bool) throws(BrokerError) {
        guard path.hasPrefix("/") else { throw .denied("\(path) is not an absolute path", errno: EINVAL) }
        let fd = Glibc.open(path, cshim_broker_O_PATH() | O_CLOEXEC)
        if fd < 0 { throw .system(operation: "cannot open \(path)", errno: errno) }
        let st = try fstatOrClose(fd, path)
        let kind = st.st_mode & S_IFMT
        if kind != S_IFREG && kind != S_IFBLK {
            FD.close(fd)
            let what = kind == S_IFDIR ? "a directory" : kind == S_IFIFO ? "a FIFO"
                : kind == S_IFCHR ? "a character device" : kind == S_IFSOCK ? "a socket" : "not a regular file"
            throw .denied("\(path) is \(what), not an image file or a block device", errno: kind == S_IFDIR ? EISDIR : ENOTBLK)
        }
        // A trial open in the mode the mount needs: fail now, before any server
        // is involved, on a busy device or a file we may not write.
        let excl = kind == S_IFBLK ? O_EXCL : 0
        var canWrite = !readOnly
        var probe = readOnly ? -EROFS : cshim_pin_reopen(fd, O_RDWR | excl | O_NONBLOCK)
        if probe == -EROFS || probe == -EACCES || probe == -EPERM {
            canWrite = false
            probe = cshim_pin_reopen(fd, O_RDONLY | excl | O_NONBLOCK)
        }
        if probe < 0 {
            FD.close(fd)
            if -probe == EBUSY {
                throw .denied("\(path) is busy (mounted, or held open exclusively by another user)", errno: EBUSY)
            }
            throw .system(operation: "cannot open \(path)", errno: -probe)
        }
        FD.close(probe)
        self.path = path
        pathFD = fd
        stat = st
        writable = canWrite
    }

    deinit { FD.close(pathFD) }

    /// Open the pinned inode with `flags` (block devices always exclusively)
    /// and check it is still the same file. Returns the fd or -errno.
    func open(flags: Int32) -> Int32 {
        let excl = isBlockDevice ? O_EXCL : 0
        let fd = cshim_pin_reopen(pathFD, flags | excl)
        if fd < 0 { return fd }
        var now = Glibc.stat()
        if fstat(fd, &now) != 0 || now.st_dev != stat.st_dev || now.st_ino != stat.st_ino
            || (now.st_mode & S_IFMT) != (stat.st_mode & S_IFMT) || now.st_rdev != stat.st_rdev {
            FD.close(fd)
            return -ESTALE
        }
        return fd
    }
}

/// The mountpoint, pinned at start-up without following any symlink.
public final class PinnedMountpoint {
    public let path: String
    let fd: Int32
    let stat: stat

    public init(path: String) throws(BrokerError) {
        guard path.hasPrefix("/") else { throw .denied("mountpoint \(path) is not an absolute path", errno: EINVAL) }
        let fd = cshim_pin_open_nosymlinks(AT_FDCWD, path, cshim_broker_O_PATH())
        if fd < 0 {
            if -fd == ELOOP || -fd == EXDEV {
                throw .denied("mountpoint \(path) has a symbolic link in its path", errno: ELOOP)
            }
            throw .system(operation: "mountpoint \(path)", errno: -fd)
        }
        let st = try fstatOrClose(fd, "mountpoint " + path)
        let kind = st.st_mode & S_IFMT
        if kind != S_IFDIR && kind != S_IFREG {
            FD.close(fd)
            throw .denied("mountpoint \(path) is not a directory", errno: ENOTDIR)
        }
        self.path = path
        self.fd = fd
        stat = st
    }

    deinit { FD.close(fd) }

    public var isDirectory: Bool { (stat.st_mode & S_IFMT) == S_IFDIR }

    /// Does `path` still name the pinned inode, with no symlink on the way?
    func stillInPlace() -> Bool {
        let now = cshim_pin_open_nosymlinks(AT_FDCWD, path, cshim_broker_O_PATH())
        if now < 0 { return false }
        defer { FD.close(now) }
        var st = Glibc.stat()
        return fstat(now, &st) == 0 && st.st_dev == stat.st_dev && st.st_ino == stat.st_ino
    }
}

/// Everything the helper pins before it starts or contacts a server: the
/// source, the files named by file-naming options, and the mountpoint.
public final class PinnedResources {
    public let source: PinnedFile
    public let optionFiles: [String: PinnedFile]
    public let mountpoint: PinnedMountpoint

    public init(_ config: HelperConfiguration) throws(BrokerError) {
        source = try PinnedFile(path: config.source, readOnly: config.readOnly)
        var files: [String: PinnedFile] = [:]
        for (key, value) in config.fileOptions {
            guard value.hasPrefix("/") else {
                throw .denied("-o \(key)=\(value): a file option needs an absolute path", errno: EINVAL)
            }
            files[value] = try PinnedFile(path: value, readOnly: config.readOnly)
        }
        optionFiles = files
        mountpoint = try PinnedMountpoint(path: config.mountpoint)
    }

    /// The pinned file for a path a server asked to open, if it is one.
    func file(named path: String) -> PinnedFile? {
        path == source.path ? source : optionFiles[path]
    }
}
