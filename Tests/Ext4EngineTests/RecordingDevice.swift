import Ext4Engine
import Foundation
import Glibc

/// One entry of a recorded device log: a write (offset and the bytes written)
/// or a cache flush (a durability barrier).
enum DeviceEvent: Sendable {
    case write(offset: UInt64, bytes: [UInt8])
    case flush
}

/// A `BlockDevice` in the idea of dm-log-writes: reads and writes go to a
/// `FileBlockDevice` over a scratch image, and every write and every flush is
/// appended, in the order the device saw them, to a log that can later be
/// replayed (whole or in part) onto a copy of the starting image.
final class RecordingDevice: BlockDevice, @unchecked Sendable {
    private let inner: FileBlockDevice
    /// Whether `flush()` also fsyncs the scratch image (its durability does not
    /// matter to a replay, so by default it does not).
    private let passFlush: Bool
    private let lock = NSLock()
    // Guarded by `lock`.
    private var events: [DeviceEvent] = []
    private var flushes: [Int] = []
    /// The unit a disk writes atomically, as this test assumes it.
    static let unit = 1024

    init(path: String, passFlush: Bool = false) throws {
        inner = try FileBlockDevice(path: path, readOnly: false)
        self.passFlush = passFlush
    }

    var size: UInt64 { inner.size }

    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(Ext4Error) {
        try inner.read(at: offset, into: buffer)
    }

    func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(Ext4Error) {
        // The write and its log entry happen under one lock, so the log order is
        // the order in which the scratch image changed.
        lock.lock()
        defer { lock.unlock() }
        try inner.write(at: offset, from: buffer)
        // One event per 1 KiB: a disk may persist part of a multi-block write.
        let bytes = [UInt8](buffer)
        var o = 0
        while o < bytes.count {
            let n = min(Self.unit - Int((offset + UInt64(o)) % UInt64(Self.unit)), bytes.count - o)
            events.append(.write(offset: offset + UInt64(o), bytes: Array(bytes[o..<(o + n)])))
            o += n
        }
    }

    func flush() throws(Ext4Error) {
        lock.lock()
        defer { lock.unlock() }
        if passFlush { try inner.flush() }
        flushes.append(events.count)
        events.append(.flush)
    }

    /// A copy of the log so far.
    var log: [DeviceEvent] {
        lock.lock()
        defer { lock.unlock() }
        return events
    }

    /// Number of events logged so far (the index the next event will get).
    var count: Int {
        lock.lock()
        defer { lock.unlock() }
        return events.count
    }

    /// Log index of the latest flush, or nil before the first.
    var lastFlush: Int? {
        lock.lock()
        defer { lock.unlock() }
        return flushes.last
    }
}
