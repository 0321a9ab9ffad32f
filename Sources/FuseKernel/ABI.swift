// Every number of the FUSE kernel ABI this project uses lives in this file:
// base protocol 7.45 plus the experimental iomap extension (minor 99).
// Written from the protocol specification (docs/ and ../shared/docs/fuse-iomap-protocol.md).

public enum FuseABI {
    public static let kernelVersion: UInt32 = 7
    /// Highest base minor we implement.
    public static let baseMinor: UInt32 = 45
    /// Experimental minor that switches on the iomap extension (per-inode EXCLUSIVE/IOMAP).
    public static let iomapMinor: UInt32 = 99
    /// Oldest kernel minor we serve (Linux 5.x era, has fuse_init_in of 64 bytes from 36 on).
    public static let oldestMinor: UInt32 = 31
    public static let rootID: UInt64 = 1
    public static let minReadBuffer = 8192
    public static let uniqueResend: UInt64 = 1 << 63
    public static let nameMax = 1024
    public static let xattrNameMax = 255
    public static let xattrSizeMax = 65536
    public static let ioctlMaxIOV = 256
    public static let direntNameOffset = 24
    public static let direntplusNameOffset = 152
}

/// Opcodes the kernel sends (kernel → server requests).
public enum FuseOpcode: UInt32, Sendable, CaseIterable {
    case lookup = 1, forget = 2, getattr = 3, setattr = 4, readlink = 5, symlink = 6
    case mknod = 8, mkdir = 9, unlink = 10, rmdir = 11, rename = 12, link = 13
    case open = 14, read = 15, write = 16, statfs = 17, release = 18
    case fsync = 20, setxattr = 21, getxattr = 22, listxattr = 23, removexattr = 24
    case flush = 25, initialize = 26, opendir = 27, readdir = 28, releasedir = 29
    case fsyncdir = 30, getlk = 31, setlk = 32, setlkw = 33, access = 34, create = 35
    case interrupt = 36, bmap = 37, destroy = 38, ioctl = 39, poll = 40
    case notifyReply = 41, batchForget = 42, fallocate = 43, readdirplus = 44
    case rename2 = 45, lseek = 46, copyFileRange = 47, setupMapping = 48
    case removeMapping = 49, syncfs = 50, tmpfile = 51, statx = 52, copyFileRange64 = 53
    // iomap extension (series v7)
    case freezeFS = 4089, unfreezeFS = 4090, shutdownFS = 4091
    case iomapConfig = 4092, iomapIoend = 4093, iomapBegin = 4094, iomapEnd = 4095
    case cuseInit = 4096

    /// Requests the kernel never waits a reply for.
    public var expectsReply: Bool {
        switch self {
        case .forget, .batchForget, .interrupt, .notifyReply: return false
        default: return true
        }
    }
}

/// Server → kernel notification codes (sent with unique = 0, error = code).
public enum FuseNotifyCode: Int32, Sendable, CaseIterable {
    case poll = 1, invalInode = 2, invalEntry = 3, store = 4, retrieve = 5, delete = 6
    case resend = 7, incEpoch = 8, prune = 9
    case iomapDevInval = 99, iomapUpsertMappings = 100, iomapInvalMappings = 101
}

/// INIT capability bits as one 64-bit word (flags | flags2 << 32).
public struct FuseInitFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public static let asyncRead = Self(rawValue: 1 << 0)
    public static let posixLocks = Self(rawValue: 1 << 1)
    public static let fileOps = Self(rawValue: 1 << 2)
    public static let atomicOTrunc = Self(rawValue: 1 << 3)
    public static let exportSupport = Self(rawValue: 1 << 4)
    public static let bigWrites = Self(rawValue: 1 << 5)
    public static let dontMask = Self(rawValue: 1 << 6)
    public static let spliceWrite = Self(rawValue: 1 << 7)
    public static let spliceMove = Self(rawValue: 1 << 8)
    public static let spliceRead = Self(rawValue: 1 << 9)
    public static let flockLocks = Self(rawValue: 1 << 10)
    public static let hasIoctlDir = Self(rawValue: 1 << 11)
    public static let autoInvalData = Self(rawValue: 1 << 12)
    public static let doReaddirplus = Self(rawValue: 1 << 13)
    public static let readdirplusAuto = Self(rawValue: 1 << 14)
    public static let asyncDIO = Self(rawValue: 1 << 15)
    public static let writebackCache = Self(rawValue: 1 << 16)
    public static let noOpenSupport = Self(rawValue: 1 << 17)
    public static let parallelDirops = Self(rawValue: 1 << 18)
    public static let handleKillpriv = Self(rawValue: 1 << 19)
    public static let posixACL = Self(rawValue: 1 << 20)
    public static let abortError = Self(rawValue: 1 << 21)
    public static let maxPages = Self(rawValue: 1 << 22)
    public static let cacheSymlinks = Self(rawValue: 1 << 23)
    public static let noOpendirSupport = Self(rawValue: 1 << 24)
    public static let explicitInvalData = Self(rawValue: 1 << 25)
    public static let mapAlignment = Self(rawValue: 1 << 26)
    public static let submounts = Self(rawValue: 1 << 27)
    public static let handleKillprivV2 = Self(rawValue: 1 << 28)
    public static let setxattrExt = Self(rawValue: 1 << 29)
    public static let initExt = Self(rawValue: 1 << 30)
    public static let initReserved = Self(rawValue: 1 << 31)
    public static let securityCtx = Self(rawValue: 1 << 32)
    public static let hasInodeDAX = Self(rawValue: 1 << 33)
    public static let createSuppGroup = Self(rawValue: 1 << 34)
    public static let hasExpireOnly = Self(rawValue: 1 << 35)
    public static let directIOAllowMmap = Self(rawValue: 1 << 36)
    public static let passthrough = Self(rawValue: 1 << 37)
    public static let noExportSupport = Self(rawValue: 1 << 38)
    public static let hasResend = Self(rawValue: 1 << 39)
    public static let allowIdmap = Self(rawValue: 1 << 40)
    public static let overIoUring = Self(rawValue: 1 << 41)
    public static let requestTimeout = Self(rawValue: 1 << 42)
    /// Experimental (series v7): bit 11 of flags2.
    public static let iomap = Self(rawValue: 1 << 43)

    public var low: UInt32 { UInt32(truncatingIfNeeded: rawValue) }
    public var high: UInt32 { UInt32(truncatingIfNeeded: rawValue >> 32) }
    public init(low: UInt32, high: UInt32) { self.rawValue = UInt64(low) | (UInt64(high) << 32) }
}

/// SETATTR `valid` bits.
public struct FuseSetattrValid: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let mode = Self(rawValue: 1 << 0)
    public static let uid = Self(rawValue: 1 << 1)
    public static let gid = Self(rawValue: 1 << 2)
    public static let size = Self(rawValue: 1 << 3)
    public static let atime = Self(rawValue: 1 << 4)
    public static let mtime = Self(rawValue: 1 << 5)
    public static let fh = Self(rawValue: 1 << 6)
    public static let atimeNow = Self(rawValue: 1 << 7)
    public static let mtimeNow = Self(rawValue: 1 << 8)
    public static let lockOwner = Self(rawValue: 1 << 9)
    public static let ctime = Self(rawValue: 1 << 10)
    public static let killSuidgid = Self(rawValue: 1 << 11)
}

/// OPEN/CREATE reply `open_flags`.
public struct FuseOpenOutFlags: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let directIO = Self(rawValue: 1 << 0)
    public static let keepCache = Self(rawValue: 1 << 1)
    public static let nonseekable = Self(rawValue: 1 << 2)
    public static let cacheDir = Self(rawValue: 1 << 3)
    public static let stream = Self(rawValue: 1 << 4)
    public static let noFlush = Self(rawValue: 1 << 5)
    public static let parallelDirectWrites = Self(rawValue: 1 << 6)
    public static let passthrough = Self(rawValue: 1 << 7)
}

/// `fuse_attr.flags`: base bits plus the iomap series' per-inode bits.
public struct FuseAttrFlags: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let submount = Self(rawValue: 0x01)
    public static let dax = Self(rawValue: 0x02)
    public static let exclusive = Self(rawValue: 0x04)
    public static let iomap = Self(rawValue: 0x08)
    public static let atomic = Self(rawValue: 0x10)
    public static let sync = Self(rawValue: 0x20)
    public static let immutable = Self(rawValue: 0x40)
    public static let append = Self(rawValue: 0x80)
}

public enum FuseMiscFlags {
    public static let getattrFH: UInt32 = 1
    public static let releaseFlush: UInt32 = 1
    public static let releaseFlockUnlock: UInt32 = 2
    public static let lkFlock: UInt32 = 1
    public static let writeCache: UInt32 = 1
    public static let writeLockOwner: UInt32 = 2
    public static let writeKillSuidgid: UInt32 = 4
    public static let readLockOwner: UInt32 = 2
    public static let fsyncFdatasync: UInt32 = 1
    public static let openKillSuidgid: UInt32 = 1
    public static let setxattrACLKillSgid: UInt32 = 1
    public static let pollScheduleNotify: UInt32 = 1
    public static let expireOnly: UInt32 = 1
    public static let renameNoreplace: UInt32 = 1
    public static let renameExchange: UInt32 = 2
    public static let renameWhiteout: UInt32 = 4
    public static let ioctlCompat: UInt32 = 1
    public static let ioctlUnrestricted: UInt32 = 2
    public static let ioctlRetry: UInt32 = 4
    public static let ioctl32Bit: UInt32 = 8
    public static let ioctlDir: UInt32 = 16
    public static let ioctlCompatX32: UInt32 = 32
    /// Request extension types (fuse_ext_header.type).
    public static let extSecctx: UInt32 = 31
    public static let extGroups: UInt32 = 32
}

/// Iomap extension constants (series v7).
public enum FuseIomap {
    public static let nullAddr: UInt64 = .max
    public static let devNull: UInt32 = 0
    public static let invalToEOF: UInt64 = .max

    public enum MappingType: UInt16, Sendable {
        case hole = 0, delalloc = 1, mapped = 2, unwritten = 3, inline = 4
        case noCache = 253, retryCache = 254, pureOverwrite = 255
    }

    public struct MappingFlags: OptionSet, Sendable {
        public let rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        public static let new = Self(rawValue: 0x0001)
        public static let dirty = Self(rawValue: 0x0002)
        public static let shared = Self(rawValue: 0x0004)
        public static let merged = Self(rawValue: 0x0008)
        public static let boundary = Self(rawValue: 0x0010)
        public static let anonWrite = Self(rawValue: 0x0020)
        public static let atomicBio = Self(rawValue: 0x0040)
        public static let wantIomapEnd = Self(rawValue: 0x0080)
        public static let sizeChanged = Self(rawValue: 0x0100)
        public static let stale = Self(rawValue: 0x0200)
        /// Bits a server may send.
        public static let serverMask: UInt16 = 0x00ff
    }

    public struct OpFlags: OptionSet, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let write = Self(rawValue: 0x0000_0001)
        public static let zero = Self(rawValue: 0x0000_0002)
        public static let report = Self(rawValue: 0x0000_0004)
        public static let fault = Self(rawValue: 0x0000_0008)
        public static let direct = Self(rawValue: 0x0000_0010)
        public static let nowait = Self(rawValue: 0x0000_0020)
        public static let overwriteOnly = Self(rawValue: 0x0000_0040)
        public static let unshare = Self(rawValue: 0x0000_0080)
        public static let dax = Self(rawValue: 0x0000_0100)
        public static let atomic = Self(rawValue: 0x0000_0200)
        public static let dontCache = Self(rawValue: 0x0000_0400)
        public static let swapfile = Self(rawValue: 0x4000_0000)
        public static let writeback = Self(rawValue: 0x8000_0000)
        /// WRITE, ZERO, UNSHARE or WRITEBACK.
        public var isWriteClass: Bool { !isDisjoint(with: [.write, .zero, .unshare, .writeback]) }
    }

    public struct IoendFlags: OptionSet, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let shared = Self(rawValue: 0x01)
        public static let unwritten = Self(rawValue: 0x02)
        public static let boundary = Self(rawValue: 0x04)
        public static let direct = Self(rawValue: 0x08)
        public static let append = Self(rawValue: 0x10)
        public static let writeback = Self(rawValue: 0x20)
        public static let swapoff = Self(rawValue: 0x40)
    }

    public struct ConfigFlags: OptionSet, Sendable {
        public let rawValue: UInt64
        public init(rawValue: UInt64) { self.rawValue = rawValue }
        public static let sid = Self(rawValue: 0x01)
        public static let uuid = Self(rawValue: 0x02)
        public static let blocksize = Self(rawValue: 0x04)
        public static let maxLinks = Self(rawValue: 0x08)
        public static let time = Self(rawValue: 0x10)
        public static let maxbytes = Self(rawValue: 0x20)
        public static let cacheMaxbytes = Self(rawValue: 0x40)
        public static let all: Self = Self(rawValue: 0x7f)
    }

    public static let backingTypeMask: UInt32 = 0xff
    public static let backingTypePassthrough: UInt32 = 0
    public static let backingTypeIomap: UInt32 = 1
    public static let supportFileIO: UInt64 = 1 << 0
    public static let supportAtomic: UInt64 = 1 << 1
}

/// /dev/fuse ioctl request numbers (generic _IOC encoding, magic 229).
public enum FuseDevIoctl {
    public static let clone: UInt = 0x8004_E500
    public static let backingOpen: UInt = 0x4010_E501
    public static let backingClose: UInt = 0x4004_E502
    public static let syncInit: UInt = 0x0000_E503
    public static let iomapSupport: UInt = 0x8010_E563
    public static let setNoFS: UInt = 0x4004_E564
    public static let addIomap: UInt = 0x0000_E565
    public static let iomapSetBlocksize: UInt = 0x4008_E566
}
