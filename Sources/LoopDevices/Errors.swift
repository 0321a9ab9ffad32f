#if canImport(Glibc)
import Glibc
#endif

/// Errors from loop-device and block-device operations. `errno` is the one
/// place where each case maps to the errno reported to a peer.
public enum LoopDeviceError: Error, Equatable, CustomStringConvertible {
    /// Another loop device already uses this backing file.
    case alreadyAttached(loopPath: String)
    /// The backing fd is not a regular file.
    case notRegularFile
    /// The backing file is smaller than one 512-byte sector.
    case tooSmall(size: Int64)
    /// The requested block size is not a power of two in 512...65536.
    case invalidBlockSize(UInt32)
    /// The file stayed locked by someone else (flock) for the whole wait.
    case lockTimeout
    /// A system call failed.
    case system(operation: String, errno: Int32)

    public var errno: Int32 {
        switch self {
        case .alreadyAttached: return EBUSY
        case .notRegularFile: return EINVAL
        case .tooSmall: return EINVAL
        case .invalidBlockSize: return EINVAL
        case .lockTimeout: return EWOULDBLOCK
        case .system(_, let e): return e
        }
    }

    public var description: String {
        switch self {
        case .alreadyAttached(let p): return "backing file is already attached to \(p)"
        case .notRegularFile: return "backing file is not a regular file"
        case .tooSmall(let s): return "backing file is too small for a loop device (\(s) bytes)"
        case .invalidBlockSize(let b): return "invalid block size \(b)"
        case .lockTimeout: return "backing file stayed locked by another process"
        case .system(let op, let e): return "\(op): \(String(cString: strerror(e)))"
        }
    }
}
