import CShim
import Glibc

/// Random-access storage holding the file system image.
public protocol BlockDevice: Sendable {
    var size: UInt64 { get }
    /// Fill `buffer` completely from `offset` or throw.
    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(Ext4Error)
    /// Write all of `buffer` at `offset` (journal replay). Default: `.readOnly`.
    func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(Ext4Error)
    /// Make previous writes durable. Default: no-op.
    func flush() throws(Ext4Error)
}

extension BlockDevice {
    public func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(Ext4Error) {
        throw .readOnly
    }
    public func flush() throws(Ext4Error) {}
}

/// A block device backed by a file descriptor (regular file or block device).
public final class FileBlockDevice: BlockDevice, @unchecked Sendable {
    // Immutable after init; pread is thread-safe.
    public let fd: Int32
    public let size: UInt64
    private let closeOnDeinit: Bool
    public let writable: Bool

    public init(fd: Int32, closeOnDeinit: Bool) throws(Ext4Error) {
        var st = stat()
        if fstat(fd, &st) != 0 { throw .io(Glibc.errno) }
        var sz: UInt64 = 0
        if (st.st_mode & S_IFMT) == S_IFBLK {
            let r = cshim_ioctl_ptr(fd, cshim_BLKGETSIZE64(), &sz)
            if r < 0 { throw .io(-r) }
        } else if (st.st_mode & S_IFMT) == S_IFREG {
            sz = UInt64(clamping: st.st_size)
        } else {
            throw .invalid("not a regular file or block device")
        }
        self.fd = fd
        self.size = sz
        let fl = fcntl(fd, F_GETFL)
        self.writable = fl >= 0 && (fl & O_ACCMODE) != O_RDONLY
        self.closeOnDeinit = closeOnDeinit
    }

    public convenience init(path: String, readOnly: Bool) throws(Ext4Error) {
        let fd = open(path, (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC)
        if fd < 0 { throw .io(Glibc.errno) }
        do {
            try self.init(fd: fd, closeOnDeinit: true)
        } catch {
            close(fd)
            throw error
        }
    }

    deinit {
        if closeOnDeinit { close(fd) }
    }

    public func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(Ext4Error) {
        guard writable else { throw .readOnly }
        try positioned(at: offset, count: buffer.count) { done, off in
            guard let base = buffer.baseAddress else { return 0 }
            return pwrite(fd, base + done, buffer.count - done, off)
        }
    }

    /// Move `count` bytes at `offset` with a positioned read or write, looping on
    /// short transfers and retrying EINTR; a range outside the device is EIO.
    private func positioned(at offset: UInt64, count: Int,
                            _ io: (_ done: Int, _ off: off_t) -> Int) throws(Ext4Error) {
        let (end, o) = offset.addingReportingOverflow(UInt64(count))
        if o || end > size { throw .io(EIO) }
        var done = 0
        while done < count {
            guard let off = off_t(exactly: offset + UInt64(done)) else { throw .io(EINVAL) }
            let n = io(done, off)
            if n < 0 {
                let e = Glibc.errno
                if e == EINTR { continue }
                throw .io(e)
            }
            if n == 0 { throw .io(EIO) }
            done += n
        }
    }

    public func flush() throws(Ext4Error) {
        guard writable else { return }
        // fdatasync: the image file's own timestamps need not be durable.
        while fdatasync(fd) != 0 {
            let e = Glibc.errno
            if e != EINTR { throw .io(e) }
        }
    }

    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(Ext4Error) {
        try positioned(at: offset, count: buffer.count) { done, off in
            guard let base = buffer.baseAddress else { return 0 }
            return pread(fd, base + done, buffer.count - done, off)
        }
    }
}

/// In-memory device (tests, small images).
public final class MemoryBlockDevice: BlockDevice, @unchecked Sendable {
    private let bytes: [UInt8]
    public var size: UInt64 { UInt64(bytes.count) }
    public init(bytes: [UInt8]) { self.bytes = bytes }
    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(Ext4Error) {
        guard let start = Int(exactly: offset), start <= bytes.count, buffer.count <= bytes.count - start else {
            throw .io(EIO)
        }
        bytes.withUnsafeBytes { src in
            guard let s = src.baseAddress, let d = buffer.baseAddress, buffer.count > 0 else { return }
            d.copyMemory(from: s + start, byteCount: buffer.count)
        }
    }
}
