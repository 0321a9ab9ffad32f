public struct MountOptions: Sendable {
    public var readOnly: Bool
    public var noRecovery: Bool
    /// Metadata block cache size, in blocks.
    public var cacheBlocks: Int
    /// Seconds between journal commits (`commit=`, as ext4; 0 means the default, 5).
    public var commitInterval: Double
    /// What a read-write mount writes into the multi-mount protection block
    /// for the admin of another node: this host's name and the source.
    public var nodeName: String
    public var deviceName: String
    public init(readOnly: Bool = true, noRecovery: Bool = false, cacheBlocks: Int = 8192, commitInterval: Double = 5,
                nodeName: String = "", deviceName: String = "") {
        self.readOnly = readOnly
        self.noRecovery = noRecovery
        self.cacheBlocks = cacheBlocks
        self.commitInterval = commitInterval
        self.nodeName = nodeName
        self.deviceName = deviceName
    }
}

extension MountOptions {
    var effectiveCommitInterval: Double {
        commitInterval > 0 && commitInterval.isFinite ? min(commitInterval, 86400) : Ext4FileSystem.commitIntervalDefault
    }
}

public struct FsStats: Sendable, Equatable {
    public var blocks: UInt64
    public var bfree: UInt64
    public var bavail: UInt64
    public var files: UInt64
    public var ffree: UInt64
    public var bsize: UInt32
    public var frsize: UInt32
    public var namelen: UInt32
}

public enum FileType: Sendable, Equatable {
    case regular, directory, symlink, charDevice, blockDevice, fifo, socket, unknown

    init(mode: UInt16) {
        switch mode & 0xF000 {
        case 0x8000: self = .regular
        case 0x4000: self = .directory
        case 0xA000: self = .symlink
        case 0x2000: self = .charDevice
        case 0x6000: self = .blockDevice
        case 0x1000: self = .fifo
        case 0xC000: self = .socket
        default: self = .unknown
        }
    }

    init(direntType t: UInt8) {
        switch t {
        case 1: self = .regular
        case 2: self = .directory
        case 3: self = .charDevice
        case 4: self = .blockDevice
        case 5: self = .fifo
        case 6: self = .socket
        case 7: self = .symlink
        default: self = .unknown
        }
    }
}

public struct Timespec: Sendable, Equatable {
    public var sec: Int64
    public var nsec: UInt32
    public init(sec: Int64, nsec: UInt32) { self.sec = sec; self.nsec = nsec }
}

public struct Inode: Sendable {
    public var ino: UInt32
    public var mode: UInt16
    public var uid: UInt32
    public var gid: UInt32
    public var size: UInt64
    public var links: UInt32
    /// i_blocks in 512-byte units (huge_file aware); for regular files with
    /// inline data plus their size in sectors, as the kernel reports st_blocks.
    public var blocks512: UInt64
    public var atime: Timespec
    public var mtime: Timespec
    public var ctime: Timespec
    public var crtime: Timespec?
    public var rdev: (major: UInt32, minor: UInt32)
    public var generation: UInt32
    public var flags: UInt32
    public var version: UInt64
    public var fileType: FileType
}

public struct DirEntry: Sendable, Equatable {
    public var ino: UInt32
    public var name: [UInt8]
    public var type: FileType
    /// Cookie to pass to `readDirectory(_:from:_:)` to continue after this entry.
    public var nextCookie: UInt64
}

public struct Extent: Sendable, Equatable {
    public var logical: UInt64
    public var physical: UInt64
    public var length: UInt64
    public var unwritten: Bool
    public init(logical: UInt64, physical: UInt64, length: UInt64, unwritten: Bool) {
        self.logical = logical; self.physical = physical; self.length = length; self.unwritten = unwritten
    }
}

extension Array where Element == Extent {
    /// The run that covers logical block `l`, for runs sorted by `logical`
    /// and not overlapping (a file's map); nil in a hole.
    func run(covering l: UInt64) -> Extent? {
        var lo = 0, hi = count
        while lo < hi {
            let mid = (lo + hi) / 2
            let m = self[mid]
            if l < m.logical { hi = mid } else if l - m.logical >= m.length { lo = mid + 1 } else { return m }
        }
        return nil
    }
}
