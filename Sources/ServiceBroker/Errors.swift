#if canImport(Glibc)
import Glibc
#endif
import LoopDevices

/// Every failure in ServiceBroker. `errno` is the single errno mapping used
/// for REPL/FILE replies and exit-code decisions.
public enum BrokerError: Error, Equatable, CustomStringConvertible {
    /// A system call failed.
    case system(operation: String, errno: Int32)
    /// The peer sent something malformed.
    case malformed(WireError)
    /// The peer closed the connection.
    case peerClosed
    /// The peer did not answer in time.
    case timedOut(milliseconds: Int)
    /// The peer answered a request with an error.
    case refused(operation: String, errno: Int32)
    /// The helper's policy forbids this.
    case denied(String, errno: Int32)
    /// Loop/block device failure.
    case loop(LoopDeviceError)
    /// The kernel refused the mount.
    case mountFailed(String, errno: Int32)
    /// Protocol sequence error (wrong order, duplicate, missing step).
    case sequence(String)
    /// No usable server: neither a service socket nor a spawnable executable.
    case noServer(String)

    public var errno: Int32 {
        switch self {
        case .system(_, let e), .refused(_, let e), .denied(_, let e), .mountFailed(_, let e): return e
        case .malformed(let w): return w.errno
        case .peerClosed: return ECONNRESET
        case .timedOut: return ETIMEDOUT
        case .loop(let l): return l.errno
        case .sequence: return EINVAL
        case .noServer: return ENOENT
        }
    }

    public var description: String {
        switch self {
        case .system(let op, let e): return "\(op): \(strerrorString(e))"
        case .malformed(let w): return "malformed message from peer: \(w)"
        case .peerClosed: return "peer closed the connection without saying goodbye"
        case .timedOut(let ms): return "peer did not answer within \(ms) ms"
        case .refused(let op, let e): return "\(op) refused: \(strerrorString(e))"
        case .denied(let why, let e): return "\(why): \(strerrorString(e))"
        case .loop(let l): return "loop device: \(l)"
        case .mountFailed(let why, let e): return "mount failed: \(why): \(strerrorString(e))"
        case .sequence(let s): return "protocol error: \(s)"
        case .noServer(let s): return s
        }
    }
}

func strerrorString(_ e: Int32) -> String {
    String(cString: strerror(e))
}
