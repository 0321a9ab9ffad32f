#if canImport(Glibc)
import Glibc
#endif

/// Small syscall wrappers: retry EINTR, throw typed errors.
enum Sys {
    static func open(_ path: String, _ flags: Int32, _ mode: mode_t = 0) throws(LoopDeviceError) -> Int32 {
        while true {
            let fd = Glibc.open(path, flags | O_CLOEXEC, mode)
            if fd >= 0 { return fd }
            let e = errno
            if e == EINTR { continue }
            throw .system(operation: "open \(path)", errno: e)
        }
    }

    static func fstat(_ fd: Int32) throws(LoopDeviceError) -> Glibc.stat {
        var st = Glibc.stat()
        if Glibc.fstat(fd, &st) != 0 { throw .system(operation: "fstat", errno: errno) }
        return st
    }

    static func statPath(_ path: String) -> Glibc.stat? {
        var st = Glibc.stat()
        if stat(path, &st) != 0 { return nil }
        return st
    }

    static func close(_ fd: Int32) {
        if fd >= 0 { _ = Glibc.close(fd) }
    }

    static func readSmallFile(_ path: String, limit: Int = 4096) -> String? {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { return nil }
        defer { _ = Glibc.close(fd) }
        return readText(fd: fd, limit: limit)
    }

    static func isS_IFMT(_ mode: mode_t, _ kind: mode_t) -> Bool { (mode & S_IFMT) == kind }
}

/// A small sysfs or procfs file's contents (up to 4 KiB), or nil when it cannot be read.
public func readSysfsValue(_ path: String) -> String? { Sys.readSmallFile(path) }

/// Up to `limit` bytes of an open file from its current offset, as text
/// (EINTR retried); nil on a read error. The caller keeps the fd.
public func readText(fd: Int32, limit: Int = 4096) -> String? {
    var buf = [UInt8](repeating: 0, count: max(0, limit))
    var total = 0
    while total < buf.count {
        let n = buf.withUnsafeMutableBytes { p -> Int in
            guard let base = p.baseAddress else { return -1 }
            return Glibc.read(fd, base + total, p.count - total)
        }
        if n < 0 {
            if errno == EINTR { continue }
            return nil
        }
        if n == 0 { break }
        total += n
    }
    return String(decoding: buf[0..<total], as: UTF8.self)
}
