// The FUSE face of the ext4 engine: node ids are ext4 inode numbers (the root
// is translated to FUSE_ROOT_ID), attributes are what the kernel's ext4 would
// report, and engine errors become errnos here, at the boundary.

import Ext4Engine
import FuseKernel
import Glibc
import Logging
import Synchronization

public final class Ext4FuseFS: FuseFileSystem, @unchecked Sendable {
    let fs: Ext4FileSystem
    let logger: Logger
    let options: ServerOptions
    let sourceName: String?
    /// The server owns the device exclusively, so cached entries and attributes
    /// stay valid until we change them ourselves.
    let timeout: UInt64 = 86_400
    let destroyed = Mutex(false)
    /// Whether INIT negotiated the writeback cache (the kernel then sends the
    /// times of the writes it cached with SETATTR).
    let writebackCacheNegotiated = Mutex(false)
    /// The iomap data path's connection state (Iomap.swift).
    public let iomapState = IomapState()

    /// `sourceName`: the short name of the device (the superblock's s_id for
    /// iomap), given by the caller, which can still look at /proc; nil: the
    /// volume label.
    public init(fs: Ext4FileSystem, options: ServerOptions, sourceName: String? = nil, logger: Logger) {
        self.fs = fs
        self.options = options
        self.sourceName = sourceName
        self.logger = logger
    }

    var readOnly: Bool { fs.readOnly }

    // MARK: ids and attributes

    static func ino(_ nodeid: UInt64) throws(FuseError) -> UInt32 {
        if nodeid == FuseABI.rootID { return Ext4FileSystem.rootIno }
        guard nodeid > 1, nodeid <= UInt64(UInt32.max) else { throw .inval }
        return UInt32(nodeid)
    }

    static func nodeid(_ ino: UInt32) -> UInt64 {
        ino == Ext4FileSystem.rootIno ? FuseABI.rootID : UInt64(ino)
    }

    /// Linux's new_encode_dev for st_rdev.
    static func encodeDev(_ major: UInt32, _ minor: UInt32) -> UInt32 {
        (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12)
    }

    static func direntType(_ t: FileType) -> UInt32 {
        switch t {
        case .regular: return UInt32(DT_REG)
        case .directory: return UInt32(DT_DIR)
        case .symlink: return UInt32(DT_LNK)
        case .charDevice: return UInt32(DT_CHR)
        case .blockDevice: return UInt32(DT_BLK)
        case .fifo: return UInt32(DT_FIFO)
        case .socket: return UInt32(DT_SOCK)
        case .unknown: return UInt32(DT_UNKNOWN)
        }
    }

    var writebackCacheOn: Bool { writebackCacheNegotiated.withLock { $0 } }

    func attr(_ i: Inode) -> FuseAttr {
        var flags = FuseAttrFlags()
        if i.isSync { flags.insert(.sync) }
        if i.isImmutable { flags.insert(.immutable) }
        if i.isAppendOnly { flags.insert(.append) }
        if !flags.isEmpty { flags.insert(.exclusive) }
        flags.formUnion(iomapAttrFlags(i))
        return FuseAttr(ino: UInt64(i.ino), size: i.size, blocks: i.blocks512,
                        atime: UInt64(bitPattern: i.atime.sec), mtime: UInt64(bitPattern: i.mtime.sec),
                        ctime: UInt64(bitPattern: i.ctime.sec),
                        atimensec: i.atime.nsec, mtimensec: i.mtime.nsec, ctimensec: i.ctime.nsec,
                        mode: UInt32(i.mode), nlink: i.links, uid: i.uid, gid: i.gid,
                        rdev: Self.encodeDev(i.rdev.major, i.rdev.minor), blksize: UInt32(fs.blockSize),
                        flags: flags.rawValue)
    }

    func entry(_ i: Inode) -> FuseEntryOut {
        FuseEntryOut(nodeid: Self.nodeid(i.ino), generation: UInt64(i.generation), entryValid: timeout,
                     attrValid: timeout, attr: attr(i))
    }

    /// Run an engine call, mapping its error to an errno in one place.
    @inline(__always)
    func engine<T>(_ body: () throws(Ext4Error) -> T) throws(FuseError) -> T {
        do { return try body() } catch { throw FuseError(error.errno) }
    }

    // MARK: connection

    public func negotiate(_ offer: FuseInitOffer) -> FuseInitWants {
        var w = FuseInitWants()
        w.flags.insert(.posixACL)
        w.flags.insert(.exportSupport)
        let iomap = iomapWanted(offer)
        if iomap {
            w.flags.insert(.iomap)
        } else {
            // Classic path: we clear set-user/group-ID on write, truncate and
            // chown (FUSE_WRITE_KILL_SUIDGID, FATTR_KILL_SUIDGID,
            // FUSE_OPEN_KILL_SUIDGID). In return the kernel sets SB_NOSEC and
            // stops asking for security.capability before every write.
            w.flags.insert(.handleKillprivV2)
            // No FUSE_ASYNC_DIO: the kernel completes an asynchronous direct
            // write without invalidating the page cache over it, so a
            // buffered read that raced with it (and cached the old bytes)
            // stays stale behind KEEP_CACHE (fstests generic/451). Sent
            // synchronously, the write returns through the VFS, which
            // invalidates the range after it, as for every other file system.
            w.flags.remove(.asyncDIO)
        }
        if !iomap && !readOnly && options.writebackCache {
            // Classic read-write path: buffered writes stay in the kernel's page
            // cache and come back in large WRITEs at writeback, fsync or close;
            // the kernel keeps size and times and sends them with SETATTR.
            w.flags.insert(.writebackCache)
        }
        return w
    }

    public func initialized(_ info: FuseConnectionInfo, channel: any FuseChannel) {
        writebackCacheNegotiated.withLock { $0 = info.flags.contains(.writebackCache) }
        iomapInitialized(info, channel: channel)
    }


    // MARK: read side

    public func lookup(_ c: FuseContext, parent: UInt64, name: FuseName) throws(FuseError) -> FuseEntryOut {
        if name == [0x2E] {
            // FUSE_EXPORT_SUPPORT: to turn a file handle back into a dentry
            // the kernel looks "." up on the handle's node, file or directory
            // (and compares the generation itself).
            guard parent <= UInt64(UInt32.max), let ino = try? Self.ino(parent) else { throw .stale }
            return referenced(try engine { () throws(Ext4Error) in try fs.inodeForHandle(ino) })
        }
        let dir = try Self.ino(parent)
        let i: Inode
        do { i = try fs.lookupInode(dir: dir, name: name) } catch {
            // Negative entries can be cached for as long as the file system is read-only.
            if error == .notFound && readOnly { return FuseEntryOut(nodeid: 0, entryValid: timeout) }
            if case .corrupted(let why) = error { logger.error("lookup in directory \(dir): \(why)") }
            throw FuseError(error.errno)
        }
        return referenced(i)
    }

    public func getattr(_ c: FuseContext, fh: UInt64?) throws(FuseError) -> FuseAttrOut {
        let ino = try Self.ino(c.nodeid)
        let i = try engine { () throws(Ext4Error) in try fs.inode(ino) }
        return FuseAttrOut(attrValid: timeout, attr: attr(i))
    }

    public func statx(_ c: FuseContext, _ a: FuseStatxIn) throws(FuseError) -> FuseStatxOut {
        let ino = try Self.ino(c.nodeid)
        let i = try engine { () throws(Ext4Error) in try fs.inode(ino) }
        let t = { (ts: Timespec) in FuseSxTime(tvSec: ts.sec, tvNsec: ts.nsec) }
        var mask = Statx.basicStats
        if i.crtime != nil { mask |= Statx.btime }
        let sx = FuseStatx(mask: mask, blksize: UInt32(fs.blockSize), attributes: Statx.attributes(i.attributes),
                           nlink: i.links, uid: i.uid, gid: i.gid, mode: i.mode, ino: UInt64(i.ino), size: i.size,
                           blocks: i.blocks512, attributesMask: Statx.attributes(InodeAttributes.supported),
                           atime: t(i.atime), btime: t(i.crtime ?? Timespec(sec: 0, nsec: 0)),
                           ctime: t(i.ctime), mtime: t(i.mtime), rdevMajor: i.rdev.major, rdevMinor: i.rdev.minor)
        return FuseStatxOut(attrValid: timeout, stat: sx)
    }

    public func readlink(_ c: FuseContext) throws(FuseError) -> [UInt8] {
        let ino = try Self.ino(c.nodeid)
        return try engine { () throws(Ext4Error) in try fs.readlink(ino) }
    }

    public func open(_ c: FuseContext, _ a: FuseOpenIn) throws(FuseError) -> FuseOpenOut {
        let ino = try Self.ino(c.nodeid)
        if readOnly && (a.flags & UInt32(O_ACCMODE) != UInt32(O_RDONLY) || a.flags & UInt32(O_TRUNC) != 0) {
            throw .rofs
        }
        // One engine operation: the inode flags' rules for this access and,
        // with FUSE_ATOMIC_O_TRUNC, the truncation of open(O_TRUNC), which
        // with FUSE_OPEN_KILL_SUIDGID also clears the set-ID bits.
        let writing = Self.forWriting(a.flags), appending = a.flags & UInt32(O_APPEND) != 0
        let truncate = a.flags & UInt32(O_TRUNC) != 0
        let kill = a.openFlags & FuseMiscFlags.openKillSuidgid != 0
        let i = try engine { () throws(Ext4Error) in
            try fs.open(ino, forWriting: writing, appending: appending, truncate: truncate, killSuidgid: kill,
                        callerGid: c.gid)
        }
        guard i.fileType != .directory else { throw .isdir }
        if !readOnly && i.fileType == .regular { fs.fileOpened(ino, forWriting: Self.forWriting(a.flags)) }
        return FuseOpenOut(fh: 0, openFlags: FuseOpenOutFlags.keepCache.rawValue)
    }

    /// Open flags with write access (O_WRONLY or O_RDWR).
    static func forWriting(_ flags: UInt32) -> Bool { flags & UInt32(O_ACCMODE) != UInt32(O_RDONLY) }

    public func read(_ c: FuseContext, _ a: FuseReadIn) throws(FuseError) -> [UInt8] {
        let ino = try Self.ino(c.nodeid)
        return try engine { () throws(Ext4Error) in try fs.read(ino, offset: a.offset, count: Int(a.size)) }
    }

    /// Nothing to do at close(2) (no POSIX locks, writes are synchronous once
    /// they reach us): ENOSYS tells the kernel to stop sending FLUSH at all.
    /// It still writes dirty pages back before each close.
    public func flush(_ c: FuseContext, _ a: FuseFlushIn) throws(FuseError) { throw .nosys }

    public func opendir(_ c: FuseContext, _ a: FuseOpenIn) throws(FuseError) -> FuseOpenOut {
        let ino = try Self.ino(c.nodeid)
        let i = try engine { () throws(Ext4Error) in try fs.inode(ino) }
        guard i.fileType == .directory else { throw .notdir }
        return FuseOpenOut(fh: 0, openFlags: (FuseOpenOutFlags.cacheDir.rawValue | FuseOpenOutFlags.keepCache.rawValue))
    }

    public func readdir(_ c: FuseContext, _ a: FuseReadIn, into buf: inout FuseDirBuffer) throws(FuseError) {
        let dir = try Self.ino(c.nodeid)
        var out = buf
        let plus = buf.plus
        do {
            try fs.readDirectory(dir, from: a.offset) { e in
                let dots = e.name == [0x2e] || e.name == [0x2e, 0x2e]
                var ent: FuseEntryOut? = nil
                if plus {
                    // "." and ".." are never instantiated from READDIRPLUS; an entry
                    // whose inode cannot be read is sent without attributes.
                    if !dots, e.ino > 1, let i = try? fs.inode(e.ino) { ent = entry(i) } else { ent = FuseEntryOut() }
                }
                guard out.add(name: e.name, ino: UInt64(e.ino), type: Self.direntType(e.type),
                              nextOffset: e.nextCookie, entry: ent) else { return false }
                if let ent, ent.nodeid != 0 { fs.retain(e.ino, count: 1); iomapNoteEntry(ent) }
                return true
            }
        } catch {
            // Entries already gathered are still valid; report the error only if there are none.
            if out.count == 0 { throw FuseError(error.errno) }
        }
        buf = out
    }

    public func releasedir(_ c: FuseContext, _ a: FuseReleaseIn) {}

    public func statfs(_ c: FuseContext) throws(FuseError) -> FuseKstatfs {
        let s = fs.statfs()
        return FuseKstatfs(blocks: s.blocks, bfree: s.bfree, bavail: s.bavail, files: s.files, ffree: s.ffree,
                           bsize: s.bsize, namelen: s.namelen, frsize: s.frsize)
    }

    public func getxattr(_ c: FuseContext, name: FuseName) throws(FuseError) -> [UInt8] {
        let ino = try Self.ino(c.nodeid)
        return try engine { () throws(Ext4Error) in try fs.getxattr(ino, name: name) }
    }

    public func listxattr(_ c: FuseContext) throws(FuseError) -> [UInt8] {
        let ino = try Self.ino(c.nodeid)
        let names = try engine { () throws(Ext4Error) in try fs.listxattr(ino) }
        return names.flatMap { $0 + [0] }
    }

    public func bmap(_ c: FuseContext, _ a: FuseBmapIn) throws(FuseError) -> UInt64 {
        let ino = try Self.ino(c.nodeid)
        guard a.blocksize == UInt32(fs.blockSize) else { throw .inval }
        return try engine { () throws(Ext4Error) in try fs.bmap(ino, block: a.block) }
    }

    public func lseek(_ c: FuseContext, _ a: FuseLseekIn) throws(FuseError) -> UInt64 {
        let ino = try Self.ino(c.nodeid)
        // SEEK_DATA, SEEK_HOLE.
        let seekData: UInt32 = 3, seekHole: UInt32 = 4
        guard a.whence == seekData || a.whence == seekHole else { throw .inval }
        let data = a.whence == seekData
        return try engine { () throws(Ext4Error) in try fs.seek(ino, from: a.offset, data: data) }
    }

    // MARK: ioctl

    static let fsIocGetflags: UInt32 = 0x8008_6601, fsIoc32Getflags: UInt32 = 0x8004_6601
    static let fsIocGetversion: UInt32 = 0x8008_7601, fsIoc32Getversion: UInt32 = 0x8004_7601
    static let fsIocFsgetxattr: UInt32 = 0x801c_581f, fsIocFssetxattr: UInt32 = 0x401c_5820
    static let fsIocSetflags: UInt32 = 0x4008_6602, fsIoc32Setflags: UInt32 = 0x4004_6602
    static let fsIocFiemap: UInt32 = 0xC020_660B
    /// FS_IOC_SHUTDOWN (XFS_IOC_GOINGDOWN), _IOR('X', 125, __u32).
    static let fsIocShutdown: UInt32 = 0x8004_587D
    /// FITRIM, _IOWR('X', 121, struct fstrim_range { u64 start, len, minlen }).
    static let fiTrim: UInt32 = 0xC018_5879
    /// FS_IOC_GETFSLABEL / SETFSLABEL, _IOR / _IOW(0x94, 49 / 50, char[FSLABEL_MAX = 256]).
    static let fsIocGetfslabel: UInt32 = 0x8100_9431, fsIocSetfslabel: UInt32 = 0x4100_9432
    static let fsLabelMax = 256

    public func ioctl(_ c: FuseContext, _ a: FuseIoctlIn, input: [UInt8]) throws(FuseError) -> FuseIoctlReply {
        let ino = try Self.ino(c.nodeid)
        var w = WireWriter()
        switch a.cmd {
        case Self.fsIocGetflags, Self.fsIoc32Getflags:
            w.u32(try engine { () throws(Ext4Error) in try fs.inodeFlags(ino) })
        case Self.fsIocGetversion, Self.fsIoc32Getversion:
            w.u32(try engine { () throws(Ext4Error) in try fs.inode(ino) }.generation)
        case Self.fsIocFsgetxattr:
            // struct fsxattr: fsx_xflags, then extent size hints, extent
            // count, project id, CoW hint and padding, all zero here.
            w.u32(try engine { () throws(Ext4Error) in try fs.inode(ino) }.fsxattrFlags); w.zeros(24)
        case Self.fsIocSetflags, Self.fsIoc32Setflags:
            try writable()
            let f = try Self.u32(input)
            // The kernel checked CAP_LINUX_IMMUTABLE (fileattr_set_prepare) before sending this.
            _ = try engine { () throws(Ext4Error) in try fs.setInodeFlags(ino, f, capLinuxImmutable: true) }
            attributesChanged(c.nodeid)
        case Self.fsIocFssetxattr:
            try writable()
            let x = try Self.u32(input)
            _ = try engine { () throws(Ext4Error) in try fs.setFsxattrFlags(ino, x, capLinuxImmutable: true) }
            attributesChanged(c.nodeid)
        case Self.fsIocShutdown:
            // As ext4, root only (CAP_SYS_ADMIN, which FUSE does not pass on).
            // The flag (flush the log or not) is the ioctl's input, which FUSE
            // does not send for an _IOR ioctl; the log is always flushed, so a
            // shutdown never loses more than a crash after a commit would.
            guard c.uid == 0 else { throw .perm }
            fs.shutdown(flushLog: true)
        case Self.fsIocFiemap:
            return FuseIoctlReply(result: 0, output: try fiemap(ino, input, outSize: Int(a.outSize)))
        case Self.fsIocGetfslabel:
            let l = fs.label
            w.append(l); w.zeros(Self.fsLabelMax - l.count)
        case Self.fsIocSetfslabel:
            // As the kernel: root only (CAP_SYS_ADMIN), a NUL within FSLABEL_MAX.
            guard c.uid == 0 else { throw .perm }
            guard let nul = input.prefix(Self.fsLabelMax).firstIndex(of: 0) else { throw .inval }
            try engine { () throws(Ext4Error) in try fs.setLabel(Array(input[..<nul])) }
        case Self.fiTrim:
            // As ext4, root only (CAP_SYS_ADMIN, which FUSE does not pass on).
            guard c.uid == 0 else { throw .perm }
            guard input.count >= 24 else { throw .inval }
            let (start, length, minLength) = (Self.le(input, 0, 8), Self.le(input, 8, 8), Self.le(input, 16, 8))
            let done = try engine { () throws(Ext4Error) in
                try fs.trim(start: start, length: length, minLength: minLength)
            }
            w.u64(start); w.u64(done); w.u64(minLength)
        default:
            throw .notty
        }
        guard w.count <= Int(a.outSize) else { throw .inval }
        return FuseIoctlReply(result: 0, output: w.bytes)
    }

    /// A flag ioctl changed the inode's ctime (and flags), but the kernel keeps
    /// its cached attributes after an ioctl: drop them (offset -1: attributes
    /// only), before the reply, so the caller's next stat asks again.
    func attributesChanged(_ nodeid: UInt64) {
        guard let ch = iomapState.state.withLock({ $0.channel }) else { return }
        _ = ch.notify(.invalInode, payload: FuseReplyEncoder.invalInode(ino: nodeid, offset: -1, length: 0))
    }

    /// `n` bytes of an ioctl argument at `off`, little-endian (the caller
    /// checked the length).
    static func le(_ input: [UInt8], _ off: Int, _ n: Int) -> UInt64 {
        (0..<n).reduce(UInt64(0)) { $0 | UInt64(input[off + $1]) << (8 * UInt64($1)) }
    }

    /// The first 4 bytes of an ioctl argument, little-endian.
    static func u32(_ input: [UInt8]) throws(FuseError) -> UInt32 {
        guard input.count >= 4 else { throw .inval }
        return UInt32(input[0]) | UInt32(input[1]) << 8 | UInt32(input[2]) << 16 | UInt32(input[3]) << 24
    }

    /// FS_IOC_FIEMAP: struct fiemap (32 bytes) then fiemap_extent records (56 bytes each).
    func fiemap(_ ino: UInt32, _ input: [UInt8], outSize: Int) throws(FuseError) -> [UInt8] {
        guard input.count >= 32 else { throw .inval }
        // Fixed little-endian fields at known offsets; the length was checked above.
        func le(_ off: Int, _ n: Int) -> UInt64 { Self.le(input, off, n) }
        let hdr = (start: le(0, 8), length: le(8, 8), flags: UInt32(le(16, 4)), count: UInt32(le(24, 4)))
        // Only FIEMAP_FLAG_SYNC is meaningful here; XATTR and CACHE are not supported.
        guard hdr.flags & ~Fiemap.flagSync == 0 else { throw .opnotsupp }
        let records = try engine { () throws(Ext4Error) in try fs.fiemap(ino, start: hdr.start, length: hdr.length) }
        var w = WireWriter()
        let room = max(0, (outSize - 32) / 56)
        let emit = hdr.count == 0 ? 0 : min(records.count, Int(hdr.count), room)
        w.u64(hdr.start); w.u64(hdr.length); w.u32(hdr.flags)
        w.u32(UInt32(hdr.count == 0 ? records.count : emit)); w.u32(hdr.count); w.u32(0)
        for r in records.prefix(emit) {
            w.u64(r.logical); w.u64(r.physical); w.u64(r.length); w.zeros(16); w.u32(Fiemap.flags(r)); w.zeros(12)
        }
        return w.bytes
    }
}

/// statx numbers (<linux/stat.h>): the VFS's, not ext4's.
enum Statx {
    /// STATX_BASIC_STATS.
    static let basicStats: UInt32 = 0x7ff
    static let btime: UInt32 = 0x800

    /// STATX_ATTR_* for an inode's attributes.
    static func attributes(_ a: InodeAttributes) -> UInt64 {
        var x: UInt64 = 0
        if a.contains(.compressed) { x |= 0x4 }
        if a.contains(.immutable) { x |= 0x10 }
        if a.contains(.appendOnly) { x |= 0x20 }
        if a.contains(.noDump) { x |= 0x40 }
        if a.contains(.encrypted) { x |= 0x800 }
        if a.contains(.verity) { x |= 0x100000 }
        return x
    }
}

/// FIEMAP numbers (<linux/fiemap.h>).
enum Fiemap {
    static let flagSync: UInt32 = 0x1
    static let extentLast: UInt32 = 0x1
    static let extentNotAligned: UInt32 = 0x100
    static let extentDataInline: UInt32 = 0x200
    static let extentUnwritten: UInt32 = 0x800
    static let extentMerged: UInt32 = 0x1000

    static func flags(_ r: FileExtentRecord) -> UInt32 {
        var f: UInt32 = 0
        if r.last { f |= extentLast }
        if r.inline { f |= extentDataInline | extentNotAligned }
        if r.unwritten { f |= extentUnwritten }
        if r.merged { f |= extentMerged }
        return f
    }
}
