import Glibc

/// Errors produced by the ext4 engine. `errno` is the single place where
/// engine errors are translated to POSIX error numbers.
public enum Ext4Error: Error, Equatable, Sendable {
    case corrupted(String)
    case io(Int32)
    case notFound
    case notDirectory
    case isDirectory
    case notSymlink
    case noData
    case rangeTooLarge
    case unsupported(String)
    case invalid(String)
    case readOnly
    case exists
    case notEmpty
    case noSpace
    case tooManyLinks
    case nameTooLong
    case fileTooBig
    case permission
    case busy
    /// Another node or e2fsck holds the file system (multi-mount protection).
    case inUse(String)
    case crossDevice
    /// The operation would have to wait (allocate, do IO) and was asked not to.
    case wouldBlock
    /// SEEK_DATA / SEEK_HOLE: no such offset at or past the one asked for.
    case noSuchOffset
    /// A file handle names an inode that no longer exists (or never did).
    case stale

    public var errno: Int32 {
        switch self {
        case .corrupted: return 117 // EUCLEAN (EFSCORRUPTED)
        case .io(let e): return e
        case .notFound: return ENOENT
        case .notDirectory: return ENOTDIR
        case .isDirectory: return EISDIR
        case .notSymlink: return EINVAL
        case .noData: return ENODATA
        case .rangeTooLarge: return ERANGE
        case .unsupported: return EOPNOTSUPP
        case .invalid: return EINVAL
        case .readOnly: return EROFS
        case .exists: return EEXIST
        case .notEmpty: return ENOTEMPTY
        case .noSpace: return ENOSPC
        case .tooManyLinks: return EMLINK
        case .nameTooLong: return ENAMETOOLONG
        case .fileTooBig: return EFBIG
        case .permission: return EPERM
        case .busy, .inUse: return EBUSY
        case .crossDevice: return EXDEV
        case .wouldBlock: return EAGAIN
        case .noSuchOffset: return ENXIO
        case .stale: return ESTALE
        }
    }
}

/// Checked arithmetic helpers: disk values never trap, they throw `.corrupted`.
@inline(__always)
func cadd(_ a: UInt64, _ b: UInt64, _ what: @autoclosure () -> String) throws(Ext4Error) -> UInt64 {
    let (r, o) = a.addingReportingOverflow(b)
    if o { throw .corrupted("arithmetic overflow: \(what())") }
    return r
}

@inline(__always)
func cmul(_ a: UInt64, _ b: UInt64, _ what: @autoclosure () -> String) throws(Ext4Error) -> UInt64 {
    let (r, o) = a.multipliedReportingOverflow(by: b)
    if o { throw .corrupted("arithmetic overflow: \(what())") }
    return r
}

/// Convert a (validated-small) UInt64 to Int without trapping.
@inline(__always)
func toInt(_ v: UInt64, _ what: @autoclosure () -> String) throws(Ext4Error) -> Int {
    guard let i = Int(exactly: v) else { throw .corrupted("value out of range: \(what())") }
    return i
}
