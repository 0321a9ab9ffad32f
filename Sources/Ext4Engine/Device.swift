import CShim
import Glibc
import Synchronization

/// Random-access storage holding the file system image.
public protocol BlockDevice: Sendable {
    var size: UInt64 { get }
    /// Fill `buffer` completely from `offset` or throw.
    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(Ext4Error)
    /// Write all of `buffer` at `offset` (journal replay). Default: `.readOnly`.
    func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(Ext4Error)
    /// Make previous writes durable. Default: no-op.
    func flush() throws(Ext4Error)
    /// Forget what this host caches of [offset, offset+count), so the next
    /// read comes from the medium (a block another node writes). Default: no-op.
    func dropCached(at offset: UInt64, count: Int)
    /// Tell the medium that [offset, offset+count) holds nothing (FITRIM).
    /// Default: `.unsupported`.
    func discard(at offset: UInt64, count: UInt64) throws(Ext4Error)
}

extension BlockDevice {
    public func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(Ext4Error) {
        throw .readOnly
    }
    public func flush() throws(Ext4Error) {}
    public func dropCached(at offset: UInt64, count: Int) {}
    public func discard(at offset: UInt64, count: UInt64) throws(Ext4Error) { throw .unsupported("discard") }
}

/// A block device backed by a file descriptor (regular file or block device).
public final class FileBlockDevice: BlockDevice, @unchecked Sendable {
    // Immutable after init; pread is thread-safe.
    public let fd: Int32
    public let size: UInt64
    private let closeOnDeinit: Bool
    public let writable: Bool
    /// A block device (a loop device for an image), not a plain file.
    public let isBlockDevice: Bool

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
        self.isBlockDevice = (st.st_mode & S_IFMT) == S_IFBLK
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

    public func dropCached(at offset: UInt64, count: Int) {
        guard let off = off_t(exactly: offset), let len = off_t(exactly: count) else { return }
        _ = posix_fadvise(fd, off, len, POSIX_FADV_DONTNEED)
    }

    /// BLKDISCARD on a block device (a loop device punches the range out of
    /// its image file); a plain file is not discarded here.
    public func discard(at offset: UInt64, count: UInt64) throws(Ext4Error) {
        guard writable else { throw .readOnly }
        guard isBlockDevice else { throw .unsupported("discard on a plain file") }
        let (end, o) = offset.addingReportingOverflow(count)
        guard !o, end <= size else { throw .io(EIO) }
        var range: (UInt64, UInt64) = (offset, count)
        let r = withUnsafeMutablePointer(to: &range) { cshim_ioctl_ptr(fd, cshim_BLKDISCARD(), $0) }
        if r == 0 { return }
        if -r == EOPNOTSUPP { throw .unsupported("the device does not discard") }
        throw .io(-r)
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

/// A device whose writes stay in memory over a base it never writes: the
/// journal of a file system mounted read-only is replayed into one, so the
/// mount sees the recovered file system while the disk stays as it was (the
/// kernel's ext4 writes the replay even for a read-only mount). Writes must
/// be whole 1 KiB units at 1 KiB offsets, as every write of the replay is
/// (blocks of 1 KiB and more, the superblock at byte 1024).
final class OverlayBlockDevice: BlockDevice, Sendable {
    static let unit = 1024
    private let base: any BlockDevice
    private let units = Mutex<[UInt64: [UInt8]]>([:])
    var size: UInt64 { base.size }

    init(base: any BlockDevice) { self.base = base }

    /// Bytes held in memory.
    var overlayBytes: Int { units.withLock { $0.count * OverlayBlockDevice.unit } }

    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(Ext4Error) {
        try base.read(at: offset, into: buffer)
        let u = UInt64(OverlayBlockDevice.unit)
        guard buffer.count > 0, let dst = buffer.baseAddress else { return }
        let (end, o) = offset.addingReportingOverflow(UInt64(buffer.count))
        guard !o else { throw .io(EIO) }
        units.withLock { m in
            guard !m.isEmpty else { return }
            var k = offset / u
            while k * u < end {
                if let b = m[k] {
                    // The overlap of unit k with [offset, end).
                    let from = max(k * u, offset), to = min((k + 1) * u, end)
                    b.withUnsafeBytes { src in
                        guard let s = src.baseAddress else { return }
                        (dst + Int(from - offset)).copyMemory(from: s + Int(from - k * u), byteCount: Int(to - from))
                    }
                }
                k += 1
            }
        }
    }

    func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(Ext4Error) {
        let u = OverlayBlockDevice.unit
        guard offset % UInt64(u) == 0, buffer.count % u == 0 else { throw .io(EINVAL) }
        let (end, o) = offset.addingReportingOverflow(UInt64(buffer.count))
        guard !o, end <= size else { throw .io(EIO) }
        units.withLock { m in
            for i in 0..<(buffer.count / u) {
                m[offset / UInt64(u) + UInt64(i)] = Array(buffer[(i * u)..<((i + 1) * u)])
            }
        }
    }

    func flush() throws(Ext4Error) {}
}
