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

    // ext4 i_flags bits that the VFS mirrors.
    static let syncFL: UInt32 = 0x8, immutableFL: UInt32 = 0x10, appendFL: UInt32 = 0x20
    static let nodumpFL: UInt32 = 0x40, noatimeFL: UInt32 = 0x80, inlineDataFL: UInt32 = 0x1000_0000

    func attr(_ i: Inode) -> FuseAttr {
        var flags = FuseAttrFlags()
        if i.flags & Self.syncFL != 0 { flags.insert(.sync) }
        if i.flags & Self.immutableFL != 0 { flags.insert(.immutable) }
        if i.flags & Self.appendFL != 0 { flags.insert(.append) }
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
        iomapInitialized(info, channel: channel)
    }


    // MARK: read side

    public func lookup(_ c: FuseContext, parent: UInt64, name: FuseName) throws(FuseError) -> FuseEntryOut {
        let dir = try Self.ino(parent)
        guard name.count <= 255 else { throw .nametoolong }
        let ino: UInt32
        do { ino = try fs.lookup(dir: dir, name: name) } catch {
            // Negative entries can be cached for as long as the file system is read-only.
            if error == .notFound && readOnly { return FuseEntryOut(nodeid: 0, entryValid: timeout) }
            throw FuseError(error.errno)
        }
        guard ino != 1 else {
            logger.error("directory \(dir) names inode 1 (the bad-blocks inode)")
            throw .uclean
        }
        let i = try engine { () throws(Ext4Error) in try fs.inode(ino) }
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
        // STATX_BASIC_STATS (0x7ff) plus STATX_BTIME (0x800) when the inode has a creation time.
        var mask: UInt32 = 0x7ff
        if i.crtime != nil { mask |= 0x800 }
        var attributes: UInt64 = 0
        if i.flags & Self.immutableFL != 0 { attributes |= 0x10 }  // STATX_ATTR_IMMUTABLE
        if i.flags & Self.appendFL != 0 { attributes |= 0x20 }  // STATX_ATTR_APPEND
        if i.flags & Self.nodumpFL != 0 { attributes |= 0x40 }  // STATX_ATTR_NODUMP
        let sx = FuseStatx(mask: mask, blksize: UInt32(fs.blockSize), attributes: attributes, nlink: i.links,
                           uid: i.uid, gid: i.gid, mode: i.mode, ino: UInt64(i.ino), size: i.size,
                           blocks: i.blocks512, attributesMask: 0x10 | 0x20 | 0x40 | 0x4 | 0x800 | 0x100000,
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
        let i = try engine { () throws(Ext4Error) in try fs.inode(ino) }
        guard i.fileType != .directory else { throw .isdir }
        // FUSE_ATOMIC_O_TRUNC: the truncation of open(O_TRUNC) is ours to do.
        // With FUSE_OPEN_KILL_SUIDGID the same change also clears set-ID bits.
        if a.flags & UInt32(O_TRUNC) != 0 && i.fileType == .regular {
            var ch = AttrChange()
            if i.size > 0 { ch.size = 0 }
            if a.openFlags & Self.openKillSuidgid != 0 { ch.mode = Self.suidgidKilled(i.mode) }
            if ch.size != nil || ch.mode != nil {
                try mutable(i)
                _ = try engine { () throws(Ext4Error) in try fs.setattr(ino, ch) }
            }
        }
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
        let m = try engine { () throws(Ext4Error) in try fs.mappings(ino, fromBlock: a.block, maxBlocks: 1) }
        guard let x = m.first, x.logical <= a.block, a.block - x.logical < x.length, !x.unwritten else { return 0 }
        return x.physical + (a.block - x.logical)
    }

    public func lseek(_ c: FuseContext, _ a: FuseLseekIn) throws(FuseError) -> UInt64 {
        let ino = try Self.ino(c.nodeid)
        let i = try engine { () throws(Ext4Error) in try fs.inode(ino) }
        let seekData: UInt32 = 3, seekHole: UInt32 = 4
        guard a.whence == seekData || a.whence == seekHole else { throw .inval }
        guard a.offset < i.size else { throw FuseError(ENXIO) }
        if i.flags & Self.inlineDataFL != 0 {
            return a.whence == seekData ? a.offset : i.size
        }
        let bs = UInt64(fs.blockSize)
        var block = a.offset / bs
        let lastBlock = (i.size - 1) / bs
        // Walk the written extents from the offset's block on, a window at a time.
        while block <= lastBlock {
            let window = min(lastBlock - block + 1, 1 << 20)
            let maps = try engine { () throws(Ext4Error) in try fs.mappings(ino, fromBlock: block, maxBlocks: window) }
                .filter { !$0.unwritten }
            var cursor = block
            for x in maps {
                let end = x.logical + x.length
                guard end > cursor else { continue }
                if x.logical > cursor {
                    // A hole lies at [cursor, x.logical).
                    if a.whence == seekHole { return max(a.offset, cursor * bs) }
                }
                if a.whence == seekData { return max(a.offset, max(x.logical, cursor) * bs) }
                cursor = end
            }
            let windowEnd = block + window
            if cursor < windowEnd {
                if a.whence == seekHole { return min(i.size, max(a.offset, cursor * bs)) }
            }
            block = windowEnd
        }
        if a.whence == seekHole { return i.size }
        throw FuseError(ENXIO)
    }

    // MARK: ioctl

    static let fsIocGetflags: UInt32 = 0x8008_6601, fsIoc32Getflags: UInt32 = 0x8004_6601
    static let fsIocGetversion: UInt32 = 0x8008_7601, fsIoc32Getversion: UInt32 = 0x8004_7601
    static let fsIocFsgetxattr: UInt32 = 0x801c_581f, fsIocFssetxattr: UInt32 = 0x401c_5820
    static let fsIocSetflags: UInt32 = 0x4008_6602, fsIoc32Setflags: UInt32 = 0x4004_6602
    static let fsIocFiemap: UInt32 = 0xC020_660B

    public func ioctl(_ c: FuseContext, _ a: FuseIoctlIn, input: [UInt8]) throws(FuseError) -> FuseIoctlReply {
        let ino = try Self.ino(c.nodeid)
        var w = WireWriter()
        switch a.cmd {
        case Self.fsIocGetflags, Self.fsIoc32Getflags:
            w.u32(try engine { () throws(Ext4Error) in try fs.inodeFlags(ino) })
        case Self.fsIocGetversion, Self.fsIoc32Getversion:
            w.u32(try engine { () throws(Ext4Error) in try fs.inode(ino) }.generation)
        case Self.fsIocFsgetxattr:
            let f = try engine { () throws(Ext4Error) in try fs.inodeFlags(ino) }
            var x: UInt32 = 0
            if f & Self.syncFL != 0 { x |= 0x20 }
            if f & Self.immutableFL != 0 { x |= 0x8 }
            if f & Self.appendFL != 0 { x |= 0x10 }
            if f & Self.nodumpFL != 0 { x |= 0x80 }
            if f & Self.noatimeFL != 0 { x |= 0x40 }
            if f & 0x2000_0000 != 0 { x |= 0x200 }  // PROJINHERIT
            w.u32(x); w.zeros(24)
        case Self.fsIocSetflags, Self.fsIoc32Setflags:
            try writable()
            guard input.count >= 4 else { throw .inval }
            let f = UInt32(input[0]) | UInt32(input[1]) << 8 | UInt32(input[2]) << 16 | UInt32(input[3]) << 24
            _ = try engine { () throws(Ext4Error) in try fs.setInodeFlags(ino, f) }
        case Self.fsIocFssetxattr:
            try writable()
            guard input.count >= 4 else { throw .inval }
            let x = UInt32(input[0]) | UInt32(input[1]) << 8 | UInt32(input[2]) << 16 | UInt32(input[3]) << 24
            // Keep the flags that fsxattr does not describe; map the ones it does.
            let old = try engine { () throws(Ext4Error) in try fs.inodeFlags(ino) }
            let described = Self.syncFL | Self.immutableFL | Self.appendFL | Self.nodumpFL | Self.noatimeFL | 0x2000_0000
            var f = old & ~described
            if x & 0x20 != 0 { f |= Self.syncFL }
            if x & 0x8 != 0 { f |= Self.immutableFL }
            if x & 0x10 != 0 { f |= Self.appendFL }
            if x & 0x80 != 0 { f |= Self.nodumpFL }
            if x & 0x40 != 0 { f |= Self.noatimeFL }
            if x & 0x200 != 0 { f |= 0x2000_0000 }
            _ = try engine { () throws(Ext4Error) in try fs.setInodeFlags(ino, f) }
        case Self.fsIocFiemap:
            return FuseIoctlReply(result: 0, output: try fiemap(ino, input, outSize: Int(a.outSize)))
        default:
            throw .notty
        }
        guard w.count <= Int(a.outSize) else { throw .inval }
        return FuseIoctlReply(result: 0, output: w.bytes)
    }

    /// FS_IOC_FIEMAP: struct fiemap (32 bytes) then fiemap_extent records (56 bytes each).
    func fiemap(_ ino: UInt32, _ input: [UInt8], outSize: Int) throws(FuseError) -> [UInt8] {
        guard input.count >= 32 else { throw .inval }
        // Fixed little-endian fields at known offsets; the length was checked above.
        func le(_ off: Int, _ n: Int) -> UInt64 {
            (0..<n).reduce(UInt64(0)) { $0 | UInt64(input[off + $1]) << (8 * UInt64($1)) }
        }
        let hdr = (start: le(0, 8), length: le(8, 8), flags: UInt32(le(16, 4)), count: UInt32(le(24, 4)))
        // Only FIEMAP_FLAG_SYNC (1) is meaningful here; XATTR (2) and CACHE (4) are not supported.
        guard hdr.flags & ~UInt32(1) == 0 else { throw .opnotsupp }
        let i = try engine { () throws(Ext4Error) in try fs.inode(ino) }
        let bs = UInt64(fs.blockSize)
        var records: [(UInt64, UInt64, UInt64, UInt32)] = []
        if i.flags & Self.inlineDataFL != 0 {
            // DATA_INLINE | NOT_ALIGNED | LAST, at the byte address of the inode's i_block.
            if i.size > 0 && hdr.start < i.size {
                let addr = try engine { () throws(Ext4Error) in try fs.inlineDataAddress(ino) }
                records.append((0, addr, i.size, 0x200 | 0x100 | 0x1))
            }
        } else if hdr.length > 0 {
            // ext4 logical block numbers are 32-bit; the request may ask for up to ~0.
            let maxBlocks = UInt64(UInt32.max) + 1
            let (endByte, ovf) = hdr.start.addingReportingOverflow(hdr.length)
            let end = ovf ? UInt64.max : endByte
            let first = hdr.start / bs
            let last = min(end / bs + (end % bs == 0 ? 0 : 1), maxBlocks)
            if last > first {
                let maps = try engine { () throws(Ext4Error) in try fs.mappings(ino, fromBlock: first, maxBlocks: last - first) }
                // Block-mapped files report runs merged from several blocks, as the kernel does.
                let merged: UInt32 = i.flags & 0x80000 == 0 ? 0x1000 : 0
                for x in maps {
                    records.append((x.logical * bs, x.physical * bs, x.length * bs, (x.unwritten ? 0x800 : 0) | merged))
                }
                // Like the kernel, the last record reported for the range is flagged LAST.
                if !records.isEmpty { records[records.count - 1].3 |= 0x1 }
            }
        }
        var w = WireWriter()
        let room = max(0, (outSize - 32) / 56)
        let emit = hdr.count == 0 ? 0 : min(records.count, Int(hdr.count), room)
        w.u64(hdr.start); w.u64(hdr.length); w.u32(hdr.flags)
        w.u32(UInt32(hdr.count == 0 ? records.count : emit)); w.u32(hdr.count); w.u32(0)
        for r in records.prefix(emit) {
            w.u64(r.0); w.u64(r.1); w.u64(r.2); w.zeros(16); w.u32(r.3); w.zeros(12)
        }
        return w.bytes
    }
}
