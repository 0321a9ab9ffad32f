// The typed, file-system-facing API: the session decodes requests, calls one
// method per operation, and encodes what it returns. Default implementations
// answer the way libfuse-less kernels expect (ENOSYS, or success where the
// kernel requires it).

import Glibc

/// A positive errno carried by a failed operation.
public struct FuseError: Error, Equatable, Sendable, CustomStringConvertible {
    public let errno: Int32
    public init(_ errno: Int32) { self.errno = errno }
    public static let perm = FuseError(EPERM)
    public static let noent = FuseError(ENOENT)
    public static let io = FuseError(EIO)
    public static let badf = FuseError(EBADF)
    public static let stale = FuseError(ESTALE)
    public static let access = FuseError(EACCES)
    public static let exist = FuseError(EEXIST)
    public static let notdir = FuseError(ENOTDIR)
    public static let isdir = FuseError(EISDIR)
    public static let inval = FuseError(EINVAL)
    public static let fbig = FuseError(EFBIG)
    public static let nospc = FuseError(ENOSPC)
    public static let rofs = FuseError(EROFS)
    public static let range = FuseError(ERANGE)
    public static let nosys = FuseError(ENOSYS)
    public static let notempty = FuseError(ENOTEMPTY)
    public static let nodata = FuseError(ENODATA)
    public static let notty = FuseError(ENOTTY)
    public static let opnotsupp = FuseError(EOPNOTSUPP)
    public static let nametoolong = FuseError(ENAMETOOLONG)
    public static let uclean = FuseError(117)  // EUCLEAN, "structure needs cleaning"
    public var description: String { String(cString: strerror(errno)) }
}

/// Who is asking, for which node.
public struct FuseContext: Sendable {
    public var unique: UInt64
    public var nodeid: UInt64
    public var uid: UInt32
    public var gid: UInt32
    public var pid: UInt32
    public init(_ h: FuseRequestHeader) {
        unique = h.unique; nodeid = h.nodeid; uid = h.uid; gid = h.gid; pid = h.pid
    }
}

/// What the kernel offered in INIT.
public struct FuseInitOffer: Sendable, Equatable {
    public var major: UInt32
    public var minor: UInt32
    public var maxReadahead: UInt32
    public var flags: FuseInitFlags
}

/// What the file system asks for in return.
public struct FuseInitWants: Sendable {
    public var flags: FuseInitFlags
    public var maxWrite: UInt32
    public var maxReadahead: UInt32
    public var maxBackground: UInt16
    public var congestionThreshold: UInt16
    public var timeGran: UInt32
    public init(flags: FuseInitFlags = FuseInitWants.defaultFlags, maxWrite: UInt32 = 1 << 20,
                maxReadahead: UInt32 = 1 << 20, maxBackground: UInt16 = 64,
                congestionThreshold: UInt16 = 48, timeGran: UInt32 = 1) {
        self.flags = flags; self.maxWrite = maxWrite; self.maxReadahead = maxReadahead
        self.maxBackground = maxBackground; self.congestionThreshold = congestionThreshold
        self.timeGran = timeGran
    }
    public static let defaultFlags: FuseInitFlags = [
        .asyncRead, .atomicOTrunc, .bigWrites, .dontMask, .autoInvalData, .doReaddirplus,
        .readdirplusAuto, .asyncDIO, .parallelDirops, .maxPages, .cacheSymlinks, .initExt,
        .setxattrExt, .hasIoctlDir,
    ]
}

/// The outcome of INIT, handed to the file system once negotiated.
public struct FuseConnectionInfo: Sendable {
    public var kernelMinor: UInt32
    /// The minor we replied with (99 when iomap is on).
    public var minor: UInt32
    public var flags: FuseInitFlags
    public var maxWrite: UInt32
    public var maxReadahead: UInt32
    public var iomap: Bool { flags.contains(.iomap) }
}

/// Reply to an IOCTL: the result code plus output bytes.
public struct FuseIoctlReply: Sendable, Equatable {
    public var result: Int32
    public var output: [UInt8]
    public init(result: Int32 = 0, output: [UInt8] = []) { self.result = result; self.output = output }
}

/// Builds a READDIR/READDIRPLUS reply without exceeding the kernel's buffer.
public struct FuseDirBuffer: Sendable {
    public let plus: Bool
    public let limit: Int
    public private(set) var bytes: [UInt8] = []
    public private(set) var count = 0

    public init(plus: Bool, limit: Int) {
        self.plus = plus
        self.limit = max(0, limit)
        bytes.reserveCapacity(min(self.limit, 1 << 16))
    }

    /// Append one entry. `nextOffset` is the cookie the kernel will send back to
    /// continue after this entry. Returns false (and adds nothing) when it does not fit.
    /// In plus mode pass the entry attributes; the kernel takes one lookup
    /// reference for it unless it is "." or "..".
    public mutating func add(name: [UInt8], ino: UInt64, type: UInt32, nextOffset: UInt64,
                             entry: FuseEntryOut? = nil) -> Bool {
        guard !name.isEmpty, name.count <= FuseABI.nameMax else { return false }
        let base = plus ? FuseABI.direntplusNameOffset : FuseABI.direntNameOffset
        let size = (base + name.count + 7) & ~7
        guard bytes.count + size <= limit else { return false }
        var w = WireWriter(capacity: size)
        if plus { (entry ?? FuseEntryOut()).encode(to: &w) }
        FuseDirent(ino: ino, off: nextOffset, namelen: UInt32(name.count), type: type).encode(to: &w)
        w.append(name)
        w.align(8)
        bytes.append(contentsOf: w.bytes)
        count += 1
        return true
    }
}

/// Server-side handle on the connection, for notifications and /dev/fuse ioctls.
public protocol FuseChannel: AnyObject, Sendable {
    /// Send a notification; returns 0 or a negative errno (the kernel's verdict).
    func notify(_ code: FuseNotifyCode, payload: [UInt8]) -> Int32
    /// FUSE_DEV_IOC_BACKING_OPEN: returns the backing id or a negative errno.
    func backingOpen(fd: Int32, flags: UInt32) -> Int32
    /// FUSE_DEV_IOC_BACKING_CLOSE: 0 or a negative errno.
    func backingClose(id: UInt32) -> Int32
    /// FUSE_DEV_IOC_IOMAP_SET_BLOCKSIZE: 0 or a negative errno.
    func iomapSetBlocksize(id: UInt32, blocksize: UInt32) -> Int32
}

public protocol FuseFileSystem: AnyObject, Sendable {
    func negotiate(_ offer: FuseInitOffer) -> FuseInitWants
    func initialized(_ info: FuseConnectionInfo, channel: any FuseChannel)
    func destroy()

    func lookup(_ c: FuseContext, parent: UInt64, name: FuseName) throws(FuseError) -> FuseEntryOut
    func forget(_ nodeid: UInt64, nlookup: UInt64)
    func getattr(_ c: FuseContext, fh: UInt64?) throws(FuseError) -> FuseAttrOut
    func setattr(_ c: FuseContext, _ a: FuseSetattrIn) throws(FuseError) -> FuseAttrOut
    func readlink(_ c: FuseContext) throws(FuseError) -> [UInt8]
    func symlink(_ c: FuseContext, name: FuseName, target: [UInt8]) throws(FuseError) -> FuseEntryOut
    func mknod(_ c: FuseContext, name: FuseName, _ a: FuseMknodIn) throws(FuseError) -> FuseEntryOut
    func mkdir(_ c: FuseContext, name: FuseName, _ a: FuseMkdirIn) throws(FuseError) -> FuseEntryOut
    func unlink(_ c: FuseContext, name: FuseName) throws(FuseError)
    func rmdir(_ c: FuseContext, name: FuseName) throws(FuseError)
    func rename(_ c: FuseContext, name: FuseName, newParent: UInt64, newName: FuseName, flags: UInt32) throws(FuseError)
    func link(_ c: FuseContext, oldNode: UInt64, name: FuseName) throws(FuseError) -> FuseEntryOut
    func open(_ c: FuseContext, _ a: FuseOpenIn) throws(FuseError) -> FuseOpenOut
    func read(_ c: FuseContext, _ a: FuseReadIn) throws(FuseError) -> [UInt8]
    /// `data` lies in the session's receive buffer: valid only during the call.
    func write(_ c: FuseContext, _ a: FuseWriteIn, data: UnsafeRawBufferPointer) throws(FuseError) -> UInt32
    func statfs(_ c: FuseContext) throws(FuseError) -> FuseKstatfs
    func release(_ c: FuseContext, _ a: FuseReleaseIn)
    func fsync(_ c: FuseContext, _ a: FuseFsyncIn) throws(FuseError)
    /// `flags`: XATTR_CREATE/XATTR_REPLACE; `setxattrFlags`: FUSE_SETXATTR_* (ACL_KILL_SGID).
    func setxattr(_ c: FuseContext, name: FuseName, value: [UInt8], flags: UInt32, setxattrFlags: UInt32) throws(FuseError)
    func getxattr(_ c: FuseContext, name: FuseName) throws(FuseError) -> [UInt8]
    /// The names, each followed by a NUL byte.
    func listxattr(_ c: FuseContext) throws(FuseError) -> [UInt8]
    func removexattr(_ c: FuseContext, name: FuseName) throws(FuseError)
    func flush(_ c: FuseContext, _ a: FuseFlushIn) throws(FuseError)
    func opendir(_ c: FuseContext, _ a: FuseOpenIn) throws(FuseError) -> FuseOpenOut
    func readdir(_ c: FuseContext, _ a: FuseReadIn, into buf: inout FuseDirBuffer) throws(FuseError)
    func releasedir(_ c: FuseContext, _ a: FuseReleaseIn)
    func fsyncdir(_ c: FuseContext, _ a: FuseFsyncIn) throws(FuseError)
    func getlk(_ c: FuseContext, _ a: FuseLkIn) throws(FuseError) -> FuseFileLock
    func setlk(_ c: FuseContext, _ a: FuseLkIn, wait: Bool) throws(FuseError)
    func access(_ c: FuseContext, mask: UInt32) throws(FuseError)
    func create(_ c: FuseContext, name: FuseName, _ a: FuseCreateIn) throws(FuseError) -> (FuseEntryOut, FuseOpenOut)
    func tmpfile(_ c: FuseContext, name: FuseName, _ a: FuseCreateIn) throws(FuseError) -> (FuseEntryOut, FuseOpenOut)
    func bmap(_ c: FuseContext, _ a: FuseBmapIn) throws(FuseError) -> UInt64
    func ioctl(_ c: FuseContext, _ a: FuseIoctlIn, input: [UInt8]) throws(FuseError) -> FuseIoctlReply
    func poll(_ c: FuseContext, _ a: FusePollIn) throws(FuseError) -> UInt32
    func fallocate(_ c: FuseContext, _ a: FuseFallocateIn) throws(FuseError)
    func lseek(_ c: FuseContext, _ a: FuseLseekIn) throws(FuseError) -> UInt64
    func copyFileRange(_ c: FuseContext, _ a: FuseCopyFileRangeIn) throws(FuseError) -> UInt64
    func syncfs(_ c: FuseContext) throws(FuseError)
    func statx(_ c: FuseContext, _ a: FuseStatxIn) throws(FuseError) -> FuseStatxOut
    func freezeFS(_ c: FuseContext, unlinked: UInt64) throws(FuseError)
    func unfreezeFS(_ c: FuseContext) throws(FuseError)
    func shutdownFS(_ c: FuseContext, flags: UInt64)
    func iomapConfig(_ c: FuseContext, _ a: FuseIomapConfigIn) throws(FuseError) -> FuseIomapConfigOut
    func iomapBegin(_ c: FuseContext, _ a: FuseIomapBeginIn) throws(FuseError) -> FuseIomapBeginOut
    func iomapEnd(_ c: FuseContext, _ a: FuseIomapEndIn) throws(FuseError)
    func iomapIoend(_ c: FuseContext, _ a: FuseIomapIoendIn) throws(FuseError) -> UInt64
}

extension FuseFileSystem {
    public func negotiate(_ offer: FuseInitOffer) -> FuseInitWants { FuseInitWants() }
    public func initialized(_ info: FuseConnectionInfo, channel: any FuseChannel) {}
    public func destroy() {}
    public func lookup(_ c: FuseContext, parent: UInt64, name: FuseName) throws(FuseError) -> FuseEntryOut { throw .nosys }
    public func forget(_ nodeid: UInt64, nlookup: UInt64) {}
    public func getattr(_ c: FuseContext, fh: UInt64?) throws(FuseError) -> FuseAttrOut { throw .nosys }
    public func setattr(_ c: FuseContext, _ a: FuseSetattrIn) throws(FuseError) -> FuseAttrOut { throw .nosys }
    public func readlink(_ c: FuseContext) throws(FuseError) -> [UInt8] { throw .nosys }
    public func symlink(_ c: FuseContext, name: FuseName, target: [UInt8]) throws(FuseError) -> FuseEntryOut { throw .nosys }
    public func mknod(_ c: FuseContext, name: FuseName, _ a: FuseMknodIn) throws(FuseError) -> FuseEntryOut { throw .nosys }
    public func mkdir(_ c: FuseContext, name: FuseName, _ a: FuseMkdirIn) throws(FuseError) -> FuseEntryOut { throw .nosys }
    public func unlink(_ c: FuseContext, name: FuseName) throws(FuseError) { throw .nosys }
    public func rmdir(_ c: FuseContext, name: FuseName) throws(FuseError) { throw .nosys }
    public func rename(_ c: FuseContext, name: FuseName, newParent: UInt64, newName: FuseName, flags: UInt32) throws(FuseError) { throw .nosys }
    public func link(_ c: FuseContext, oldNode: UInt64, name: FuseName) throws(FuseError) -> FuseEntryOut { throw .nosys }
    public func open(_ c: FuseContext, _ a: FuseOpenIn) throws(FuseError) -> FuseOpenOut { FuseOpenOut() }
    public func read(_ c: FuseContext, _ a: FuseReadIn) throws(FuseError) -> [UInt8] { throw .nosys }
    public func write(_ c: FuseContext, _ a: FuseWriteIn, data: UnsafeRawBufferPointer) throws(FuseError) -> UInt32 { throw .nosys }
    public func statfs(_ c: FuseContext) throws(FuseError) -> FuseKstatfs { FuseKstatfs(bsize: 512, namelen: 255) }
    public func release(_ c: FuseContext, _ a: FuseReleaseIn) {}
    public func fsync(_ c: FuseContext, _ a: FuseFsyncIn) throws(FuseError) { throw .nosys }
    public func setxattr(_ c: FuseContext, name: FuseName, value: [UInt8], flags: UInt32, setxattrFlags: UInt32) throws(FuseError) { throw .nosys }
    public func getxattr(_ c: FuseContext, name: FuseName) throws(FuseError) -> [UInt8] { throw .nosys }
    public func listxattr(_ c: FuseContext) throws(FuseError) -> [UInt8] { throw .nosys }
    public func removexattr(_ c: FuseContext, name: FuseName) throws(FuseError) { throw .nosys }
    public func flush(_ c: FuseContext, _ a: FuseFlushIn) throws(FuseError) { throw .nosys }
    public func opendir(_ c: FuseContext, _ a: FuseOpenIn) throws(FuseError) -> FuseOpenOut { FuseOpenOut() }
    public func readdir(_ c: FuseContext, _ a: FuseReadIn, into buf: inout FuseDirBuffer) throws(FuseError) { throw .nosys }
    public func releasedir(_ c: FuseContext, _ a: FuseReleaseIn) {}
    public func fsyncdir(_ c: FuseContext, _ a: FuseFsyncIn) throws(FuseError) { throw .nosys }
    public func getlk(_ c: FuseContext, _ a: FuseLkIn) throws(FuseError) -> FuseFileLock { throw .nosys }
    public func setlk(_ c: FuseContext, _ a: FuseLkIn, wait: Bool) throws(FuseError) { throw .nosys }
    public func access(_ c: FuseContext, mask: UInt32) throws(FuseError) { throw .nosys }
    public func create(_ c: FuseContext, name: FuseName, _ a: FuseCreateIn) throws(FuseError) -> (FuseEntryOut, FuseOpenOut) { throw .nosys }
    public func tmpfile(_ c: FuseContext, name: FuseName, _ a: FuseCreateIn) throws(FuseError) -> (FuseEntryOut, FuseOpenOut) { throw .nosys }
    public func bmap(_ c: FuseContext, _ a: FuseBmapIn) throws(FuseError) -> UInt64 { throw .nosys }
    public func ioctl(_ c: FuseContext, _ a: FuseIoctlIn, input: [UInt8]) throws(FuseError) -> FuseIoctlReply { throw .nosys }
    public func poll(_ c: FuseContext, _ a: FusePollIn) throws(FuseError) -> UInt32 { throw .nosys }
    public func fallocate(_ c: FuseContext, _ a: FuseFallocateIn) throws(FuseError) { throw .nosys }
    public func lseek(_ c: FuseContext, _ a: FuseLseekIn) throws(FuseError) -> UInt64 { throw .nosys }
    public func copyFileRange(_ c: FuseContext, _ a: FuseCopyFileRangeIn) throws(FuseError) -> UInt64 { throw .nosys }
    public func syncfs(_ c: FuseContext) throws(FuseError) { throw .nosys }
    public func statx(_ c: FuseContext, _ a: FuseStatxIn) throws(FuseError) -> FuseStatxOut { throw .nosys }
    public func freezeFS(_ c: FuseContext, unlinked: UInt64) throws(FuseError) { throw .nosys }
    public func unfreezeFS(_ c: FuseContext) throws(FuseError) { throw .nosys }
    public func shutdownFS(_ c: FuseContext, flags: UInt64) {}
    public func iomapConfig(_ c: FuseContext, _ a: FuseIomapConfigIn) throws(FuseError) -> FuseIomapConfigOut { throw .nosys }
    public func iomapBegin(_ c: FuseContext, _ a: FuseIomapBeginIn) throws(FuseError) -> FuseIomapBeginOut { throw .nosys }
    public func iomapEnd(_ c: FuseContext, _ a: FuseIomapEndIn) throws(FuseError) { throw .nosys }
    public func iomapIoend(_ c: FuseContext, _ a: FuseIomapIoendIn) throws(FuseError) -> UInt64 { throw .nosys }
}
