// The FUSE iomap data path: instead of moving file bytes through READ/WRITE,
// the server hands the kernel block mappings (file range -> device range) and
// the kernel does the IO on the device itself. Wire rules:
// ../shared/docs/fuse-iomap-protocol.md (§5 per-opcode semantics, §10 the
// kernel's validation of every mapping). docs/ARCHITECTURE.md explains how a
// request chooses between this path and the classic one.

import Ext4Engine
import FuseKernel
import Glibc
import Logging
import Synchronization

/// Per-connection iomap state of one `Ext4FuseFS`.
public final class IomapState: Sendable {
    struct Snapshot: Sendable {
        var negotiated = false
        var channel: (any FuseChannel)? = nil
        /// Backing id of the registered device; nil: every file uses the classic path.
        var deviceID: UInt32? = nil
        var blockSize: UInt64 = 0
        var maxBytes: UInt64 = 0
        var deviceSize: UInt64 = 0
        var frozen = false
        var shutdown = false
        var allowRegularFile = false
        /// UPSERT read mappings and answer RETRY_CACHE (§11.5); off with `iomap_cache=0`.
        var cache = true
        var upcalls = IomapUpcalls()
    }
    let state = Mutex(Snapshot())
    /// What the kernel was told about each inode it holds: its lookup count and
    /// whether the entry that instantiated it carried FUSE_ATTR_IOMAP. The
    /// kernel consumes that flag only at instantiation, so an inode that was
    /// inline when it came in stays on the classic path until FORGET.
    let entries = Mutex([UInt32: (count: UInt64, iomap: Bool)]())

    public init() {}

    /// Tests only: accept a regular image file as the iomap device (the socket
    /// transport's BACKING_OPEN registers any fd; the real kernel wants a block device).
    public func allowRegularFileDevice() { state.withLock { $0.allowRegularFile = true } }

    /// How many iomap upcalls the server has answered, by kind.
    public var upcalls: IomapUpcalls { state.withLock { $0.upcalls } }

    var snapshot: Snapshot { state.withLock { $0 } }
}

public struct IomapUpcalls: Sendable, Equatable {
    public var begin = 0, end = 0, ioend = 0, config = 0
    /// Notifications sent: UPSERT_MAPPINGS, INVAL_MAPPINGS, DEV_INVAL.
    public var upserts = 0, invals = 0, devInvals = 0
    /// Write-class BEGINs that allocated blocks.
    public var allocations = 0
}

/// Refuse `iomap=1` before mounting when it cannot be honoured: the source must
/// be a block device (loop devices included) and the kernel must offer iomap
/// on this /dev/fuse fd (FUSE_DEV_IOC_IOMAP_SUPPORT).
extension Ext4FuseFS {
    // MARK: negotiation hooks (called from Ext4FuseFS)

    /// The device fd iomap would register, or nil with the reason why not.
    func iomapDevice() -> (fd: Int32?, why: String) {
        if options.iomap == false { return (nil, "iomap=0") }
        guard let dev = fs.blockDevice as? FileBlockDevice else { return (nil, "the device is not a file descriptor") }
        var st = stat()
        guard fstat(dev.fd, &st) == 0 else { return (nil, "cannot stat the device") }
        if st.st_mode & S_IFMT == S_IFBLK { return (dev.fd, "block device") }
        if st.st_mode & S_IFMT == S_IFREG && iomapState.state.withLock({ $0.allowRegularFile }) {
            return (dev.fd, "image file (test mode)")
        }
        return (nil, "the source is not a block device")
    }

    /// Whether to ask for iomap in INIT.
    func iomapWanted(_ offer: FuseInitOffer) -> Bool {
        offer.flags.contains(.iomap) && iomapDevice().fd != nil
    }

    func iomapInitialized(_ info: FuseConnectionInfo, channel: any FuseChannel) {
        let cache = options.iomapCache
        iomapState.state.withLock { $0.negotiated = info.iomap; $0.channel = channel; $0.cache = cache }
        if info.iomap {
            logger.info("data path: iomap negotiated (FUSE 7.\(info.minor)); the device is registered at IOMAP_CONFIG")
        } else {
            let why = iomapDevice().fd == nil ? iomapDevice().why : "the kernel did not offer iomap"
            if options.iomap == true {
                logger.error("iomap=1 requested, but iomap was not negotiated (\(why)); file data uses the classic path")
            }
            logger.info("data path: classic FUSE READ/WRITE (\(why))")
        }
    }

    /// FUSE_ATTR_IOMAP|EXCLUSIVE for regular files whose data is in blocks.
    func iomapAttrFlags(_ i: Inode) -> FuseAttrFlags {
        guard i.fileType == .regular, !i.hasInlineData else { return [] }
        let on = iomapState.state.withLock { $0.negotiated && $0.deviceID != nil && !$0.shutdown }
        return on ? [.iomap, .exclusive] : []
    }

    /// An entry reply is about to bring (or keep) `e` in the kernel's inode
    /// cache: the first one decides the inode's data path for as long as the
    /// kernel holds it.
    func iomapNoteEntry(_ e: FuseEntryOut) {
        guard e.nodeid != 0, let ino = try? Self.ino(e.nodeid) else { return }
        let iomap = FuseAttrFlags(rawValue: e.attr.flags).contains(.iomap)
        iomapState.entries.withLock { m in
            if let x = m[ino] { m[ino] = (x.count &+ 1, x.iomap) } else { m[ino] = (1, iomap) }
        }
    }

    func iomapNoteForget(_ ino: UInt32, _ nlookup: UInt64) {
        iomapState.entries.withLock { m in
            guard let x = m[ino] else { return }
            if x.count <= nlookup { m[ino] = nil } else { m[ino] = (x.count - nlookup, x.iomap) }
        }
    }

    /// Whether the kernel does this inode's file IO itself (it was instantiated
    /// with FUSE_ATTR_IOMAP): then it also zeroes partial blocks on truncate
    /// and fallocate, and the server must not touch data blocks.
    func kernelDoesIO(_ ino: UInt32) -> Bool {
        iomapState.entries.withLock { $0[ino]?.iomap ?? false }
    }

    // MARK: notifications

    /// FUSE_NOTIFY_IOMAP_DEV_INVAL for blocks the engine freed: drop the device's
    /// page cache over them, so no stale cached page of ours (a freed map block,
    /// a zeroed block) is ever written over what the kernel writes there later.
    func iomapDevInval(_ start: UInt64, _ count: UInt64) {
        let st = iomapState.snapshot
        guard st.negotiated, let dev = st.deviceID, let ch = st.channel, st.blockSize > 0 else { return }
        let (off, o1) = start.multipliedReportingOverflow(by: st.blockSize)
        let (len, o2) = count.multipliedReportingOverflow(by: st.blockSize)
        guard !o1, !o2, count > 0, off < st.deviceSize else { return }
        let n = min(len, st.deviceSize - off)
        let p = FuseIomapDevInvalOut(dev: dev, reserved: 0, range: FuseRange(offset: off, length: n)).encoded
        let r = ch.notify(.iomapDevInval, payload: p)
        iomapState.state.withLock { $0.upcalls.devInvals += 1 }
        if r < 0 && r != -ENOTCONN && r != -ENODEV {
            logger.notice("IOMAP_DEV_INVAL \(off)+\(n): \(String(cString: strerror(-r)))")
        }
    }

    /// UPSERT_MAPPINGS: cache `m` as the read mapping; never a write mapping (ext4 is not COW).
    func iomapUpsert(_ ch: any FuseChannel, nodeid: UInt64, ino: UInt32, _ m: FuseIomapIo) -> Bool {
        let nocache = FuseIomapIo(offset: m.offset, length: m.length, addr: FuseIomap.nullAddr,
                                  type: FuseIomap.MappingType.noCache.rawValue, flags: 0, dev: FuseIomap.devNull)
        let p = FuseIomapUpsertMappingsOut(nodeid: nodeid, attrIno: UInt64(ino), read: m, write: nocache).encoded
        let r = ch.notify(.iomapUpsertMappings, payload: p)
        iomapState.state.withLock { $0.upcalls.upserts += 1 }
        return r == 0
    }

    /// INVAL_MAPPINGS over a block range of the read cache (and the write cache, which we never fill).
    func iomapInval(_ ch: any FuseChannel, nodeid: UInt64, ino: UInt32, offset: UInt64, length: UInt64) {
        let r = FuseRange(offset: offset, length: length)
        let p = FuseIomapInvalMappingsOut(nodeid: nodeid, attrIno: UInt64(ino), read: r, write: r).encoded
        _ = ch.notify(.iomapInvalMappings, payload: p)
        iomapState.state.withLock { $0.upcalls.invals += 1 }
    }

    // MARK: IOMAP_CONFIG

    public func iomapConfig(_ c: FuseContext, _ a: FuseIomapConfigIn) throws(FuseError) -> FuseIomapConfigOut {
        let st = iomapState.snapshot
        guard st.negotiated, let channel = st.channel else { throw .nosys }
        let bs = UInt64(fs.blockSize)
        var maxBytes = fs.maxFileBytes(extents: fs.hasExtentsFeature)
        if a.maxbytes > 0 { maxBytes = min(maxBytes, UInt64(a.maxbytes)) }
        maxBytes = min(maxBytes, UInt64(Int64.max))

        // Register the device the kernel will do the file IO on.
        var deviceID: UInt32? = st.deviceID  // a repeated CONFIG keeps the registration
        let (fd, kind) = iomapDevice()
        if deviceID == nil, let fd {
            let id = channel.backingOpen(fd: fd, flags: FuseIomap.backingTypeIomap)
            if id > 0 {
                deviceID = UInt32(id)
                let r = channel.iomapSetBlocksize(id: UInt32(id), blocksize: UInt32(bs))
                if r < 0 {
                    logger.notice("IOMAP_SET_BLOCKSIZE \(bs) on backing \(id): \(String(cString: strerror(-r))); the device keeps its block size")
                }
            } else {
                logger.error("BACKING_OPEN of the \(kind) failed: \(String(cString: strerror(-id)))")
            }
        }
        if deviceID == nil && options.iomap == true {
            logger.error("iomap=1 requested, but the device could not be registered; failing the connection")
            throw .io
        }
        let devSize = fs.blockDevice.size
        iomapState.state.withLock {
            $0.deviceID = deviceID; $0.blockSize = bs; $0.maxBytes = maxBytes; $0.deviceSize = devSize
            $0.upcalls.config += 1
        }
        if deviceID != nil && !readOnly {
            // Every block the engine frees from now on is dropped from the device's page cache.
            fs.setFreedBlocksObserver { [weak self] start, count in self?.iomapDevInval(start, count) }
        }
        if let deviceID {
            logger.info("data path: iomap for regular files (backing id \(deviceID), \(kind), block size \(bs)); inline-data files use READ/WRITE")
        } else {
            logger.info("data path: classic FUSE READ/WRITE for all files (no iomap device)")
        }

        // Geometry. Only fields whose flag the kernel understands.
        var flags: FuseIomap.ConfigFlags = [.blocksize, .time, .maxbytes, .uuid, .sid]
        if a.flags != 0 { flags.formIntersection(FuseIomap.ConfigFlags(rawValue: a.flags)) }
        var out = FuseIomapConfigOut(flags: flags.rawValue)
        out.sBlocksize = UInt32(bs)
        let uuid = fs.uuid
        if uuid.count == 16 { out.sUuid = uuid; out.sUuidLen = 16 } else { out.flags &= ~FuseIomap.ConfigFlags.uuid.rawValue }
        var sid = Array(iomapSourceName().utf8.prefix(31))
        sid += [UInt8](repeating: 0, count: 32 - sid.count)
        out.sId = sid
        let times = fs.timestampLimits
        out.sTimeGran = times.granularity
        out.sTimeMin = times.min
        out.sTimeMax = times.max
        out.sMaxbytes = Int64(maxBytes)
        return out
    }

    /// A short name for the superblock's s_id: the device's name given at
    /// construction, else the volume label. (No /proc lookup here: this runs
    /// under the serving filter.)
    func iomapSourceName() -> String {
        if let n = sourceName, !n.isEmpty { return n }
        return fs.volumeName.isEmpty ? "ext4" : fs.volumeName
    }

    // MARK: IOMAP_BEGIN

    public func iomapBegin(_ c: FuseContext, _ a: FuseIomapBeginIn) throws(FuseError) -> FuseIomapBeginOut {
        let st = iomapState.state.withLock { s -> IomapState.Snapshot in s.upcalls.begin += 1; return s }
        guard st.negotiated, let dev = st.deviceID, st.blockSize > 0 else { throw .io }
        guard !st.shutdown else { throw .io }
        let ino = try Self.ino(c.nodeid)
        guard a.attrIno == UInt64(ino) else { throw .inval }
        let op = FuseIomap.OpFlags(rawValue: a.opflags)
        let bs = st.blockSize
        let writeClass = op.isWriteClass || op.contains(.atomic)
        var flags: FuseIomap.MappingFlags = []
        var allocated: (first: UInt64, end: UInt64)? = nil
        let mapping: FileMapping
        let pos = a.pos, count = a.count, limit = st.maxBytes
        if writeClass {
            if readOnly { throw .rofs }
            // One engine operation. ZERO and UNSHARE take what is there (the
            // kernel skips holes and unwritten blocks when zeroing; ext4
            // shares nothing); every other write-class op needs storage under
            // `pos` before the data moves, allocated by the engine when it is
            // a hole (NOWAIT: EAGAIN instead).
            let allocate = !op.contains(.zero) && !op.contains(.unshare)
            let nowait = op.contains(.nowait)
            let w = try engine { () throws(Ext4Error) in
                try fs.mapForWrite(ino, at: pos, count: count, limit: limit, allocate: allocate, nowait: nowait)
            }
            mapping = w.mapping
            if let lo = w.allocated.map(\.logical).min(), let hi = w.allocated.map({ $0.logical + $0.length }).max() {
                flags.insert(.dirty)
                allocated = (lo, hi)
                iomapState.state.withLock { $0.upcalls.allocations += 1 }
                if w.zeroedOnDevice {
                    // Zeroed through the device's page cache and flushed: drop those pages.
                    for r in w.allocated { iomapDevInval(r.physical, r.length) }
                }
            }
        } else {
            mapping = try engine { () throws(Ext4Error) in try fs.mapping(ino, at: pos, count: count, limit: limit) }.1
        }
        var m = try Self.iomapIo(mapping, blockSize: bs, dev: dev)
        m.flags |= flags.rawValue
        if writeClass && !op.contains(.zero) && !op.contains(.unshare) {
            // Writes, writeback and direct writes into a hole would lose data.
            guard m.type == FuseIomap.MappingType.mapped.rawValue || m.type == FuseIomap.MappingType.unwritten.rawValue else {
                logger.error("inode \(ino): no storage at \(a.pos) after allocation (type \(m.type))")
                throw .io
            }
        }
        if op.contains(.atomic) {
            // One block, one bio (§12.8).
            guard m.type == FuseIomap.MappingType.mapped.rawValue || m.type == FuseIomap.MappingType.unwritten.rawValue
            else { throw .io }
            m.flags |= FuseIomap.MappingFlags.atomicBio.rawValue
        }
        // Never hand out a mapping the kernel would reject (§10).
        guard Self.iomapMappingValid(m, pos: a.pos, blockSize: bs, maxBytes: st.maxBytes,
                                     deviceSize: st.deviceSize) else {
            logger.error("inode \(ino): computed an invalid mapping at \(a.pos): offset \(m.offset) length \(m.length) type \(m.type)")
            throw .uclean
        }
        // The kernel's mapping cache (§11.5): upsert what we computed and let
        // the kernel find it there; reports, atomic and swapfile ops never.
        if let ch = st.channel {
            if let (lo, hi) = allocated {
                // Blocks that were holes may be cached as HOLE: forget them.
                let (off, o1) = lo.multipliedReportingOverflow(by: bs)
                let (end, o2) = hi.multipliedReportingOverflow(by: bs)
                if !o1 && !o2 && end > off { iomapInval(ch, nodeid: c.nodeid, ino: ino, offset: off, length: end - off) }
            }
            if st.cache && !op.contains(.report) && !op.contains(.atomic) && !op.contains(.swapfile),
               iomapUpsert(ch, nodeid: c.nodeid, ino: ino, m) {
                let retry = FuseIomapIo(offset: m.offset, length: m.length, addr: FuseIomap.nullAddr,
                                        type: FuseIomap.MappingType.retryCache.rawValue, flags: 0, dev: FuseIomap.devNull)
                return FuseIomapBeginOut(read: retry, write: Self.pureOverwrite(m))
            }
        }
        return FuseIomapBeginOut(read: m, write: Self.pureOverwrite(m))
    }

    static func pureOverwrite(_ m: FuseIomapIo) -> FuseIomapIo {
        FuseIomapIo(offset: m.offset, length: m.length, addr: FuseIomap.nullAddr,
                    type: FuseIomap.MappingType.pureOverwrite.rawValue, flags: 0, dev: FuseIomap.devNull)
    }

    /// The server-side copy of the kernel's checks on a BEGIN mapping.
    static func iomapMappingValid(_ m: FuseIomapIo, pos: UInt64, blockSize bs: UInt64, maxBytes: UInt64,
                                  deviceSize: UInt64) -> Bool {
        guard m.flags & ~FuseIomap.MappingFlags.serverMask == 0, m.length > 0 else { return false }
        guard m.offset % bs == 0, m.length % bs == 0, m.offset < maxBytes else { return false }
        let (end, o) = m.offset.addingReportingOverflow(m.length)
        guard !o, m.offset <= pos, pos < end else { return false }
        switch FuseIomap.MappingType(rawValue: m.type) {
        case .mapped?, .unwritten?:
            guard m.dev != FuseIomap.devNull, m.addr != FuseIomap.nullAddr, m.addr % bs == 0 else { return false }
            let (dend, o2) = m.addr.addingReportingOverflow(m.length)
            return !o2 && dend <= deviceSize
        case .hole?, .delalloc?, .inline?:
            return m.dev == FuseIomap.devNull && m.addr == FuseIomap.nullAddr
        default:
            return false
        }
    }

    /// The wire form of an engine mapping.
    static func iomapIo(_ m: FileMapping, blockSize bs: UInt64, dev: UInt32) throws(FuseError) -> FuseIomapIo {
        switch m {
        case .inline:
            // Not offered iomap (no FUSE_ATTR_IOMAP), answered sanely anyway.
            return FuseIomapIo(offset: 0, length: bs, addr: FuseIomap.nullAddr,
                               type: FuseIomap.MappingType.inline.rawValue, flags: 0, dev: FuseIomap.devNull)
        case .hole(let start, let end):
            let (o, o1) = start.multipliedReportingOverflow(by: bs), (e, o2) = end.multipliedReportingOverflow(by: bs)
            guard !o1, !o2, e > o else { throw .uclean }
            return FuseIomapIo(offset: o, length: e - o, addr: FuseIomap.nullAddr,
                               type: FuseIomap.MappingType.hole.rawValue, flags: 0, dev: FuseIomap.devNull)
        case .mapped(let x, let merged):
            let (addr, o1) = x.physical.multipliedReportingOverflow(by: bs)
            let (off, o2) = x.logical.multipliedReportingOverflow(by: bs)
            let (len, o3) = x.length.multipliedReportingOverflow(by: bs)
            guard !o1, !o2, !o3, len > 0 else { throw .uclean }
            let flags: FuseIomap.MappingFlags = merged ? [.merged] : []
            let type: FuseIomap.MappingType = x.unwritten ? .unwritten : .mapped
            return FuseIomapIo(offset: off, length: len, addr: addr, type: type.rawValue, flags: flags.rawValue, dev: dev)
        }
    }

    // MARK: IOMAP_END, IOMAP_IOEND

    /// The kernel is done with a mapping: sent for write-class ops that grew
    /// i_size (SIZE_CHANGED) or were short. Extent files need nothing: their new
    /// blocks are unwritten and the size is committed at IOEND, once the data
    /// is on the device. Block-mapped files hold zeroed written blocks instead,
    /// and e2fsck forbids written blocks past i_size, so a buffered write that
    /// grew the file commits its size now (a crash before writeback then shows
    /// zeroes, never stale data).
    public func iomapEnd(_ c: FuseContext, _ a: FuseIomapEndIn) throws(FuseError) {
        iomapState.state.withLock { $0.upcalls.end += 1 }
        let ino = try Self.ino(c.nodeid)
        let op = FuseIomap.OpFlags(rawValue: a.opflags)
        let mflags = FuseIomap.MappingFlags(rawValue: a.map.flags)
        guard !readOnly, op.contains(.write), !op.contains(.direct), mflags.contains(.sizeChanged), a.written > 0
        else { return }
        let (end, o) = a.pos.addingReportingOverflow(UInt64(a.written))
        guard !o else { throw .inval }
        try engine { () throws(Ext4Error) in try fs.endBufferedWrite(ino, end: end) }
    }

    /// Write IO completion: make the unwritten blocks under [pos, pos+written)
    /// written, raise the on-disk size to pos+written if that is larger (the
    /// kernel clamps `written` to its in-core EOF), reply with the on-disk size.
    /// A failed IO changes nothing.
    public func iomapIoend(_ c: FuseContext, _ a: FuseIomapIoendIn) throws(FuseError) -> UInt64 {
        iomapState.state.withLock { $0.upcalls.ioend += 1 }
        let ino = try Self.ino(c.nodeid)
        // A failed IO changes nothing; echo its error (the kernel keeps the original anyway).
        // Block-mapped files are the exception: their blocks past EOF were allocated
        // as written zeroes at BEGIN and would stay beyond i_size, so they go.
        if a.error != 0 {
            let e = a.error < 0 && a.error > -4096 ? -a.error : EIO
            if !readOnly, a.attrIno == UInt64(ino), a.written > 0 {
                let pos = a.pos, written = a.written
                do throws(Ext4Error) {
                    try fs.dropBlocksPastSize(ino, offset: pos, length: written)
                } catch {
                    logger.error("inode \(ino): freeing blocks of a failed write past EOF: \(error)")
                }
            }
            throw FuseError(e)
        }
        guard a.attrIno == UInt64(ino) else { throw .inval }
        let flags = FuseIomap.IoendFlags(rawValue: a.flags)
        if flags.contains(.swapoff) || a.written == 0 {
            return try engine { () throws(Ext4Error) in try fs.inode(ino) }.size
        }
        guard !readOnly else { throw .rofs }
        if flags.contains(.shared) {
            logger.error("inode \(ino): IOEND for an out-of-place write; ext4 shares no blocks")
            throw .uclean
        }
        let (end, o) = a.pos.addingReportingOverflow(a.written)
        guard !o, end <= iomapState.snapshot.maxBytes else { throw .fbig }
        let pos = a.pos, written = a.written
        let convert = flags.contains(.unwritten)
        return try engine { () throws(Ext4Error) in
            try fs.convertUnwritten(ino, offset: pos, length: convert ? written : 0, newSize: end)
        }
    }

    // MARK: freeze, thaw, shutdown

    public func freezeFS(_ c: FuseContext, unlinked: UInt64) throws(FuseError) {
        // The kernel has written back the data; write the metadata (superblock
        // totals) and flush the device before the snapshot is taken.
        if !readOnly { try engine { () throws(Ext4Error) in try fs.sync() } }
        iomapState.state.withLock { $0.frozen = true }
        logger.info("frozen (\(unlinked) unlinked inodes still open)")
    }

    public func unfreezeFS(_ c: FuseContext) throws(FuseError) {
        iomapState.state.withLock { $0.frozen = false }
        logger.info("thawed")
    }

    public func shutdownFS(_ c: FuseContext, flags: UInt64) {
        iomapState.state.withLock { $0.shutdown = true }
        logger.warning("the kernel shut the file system down (flags \(flags)); iomap requests now fail with EIO")
    }
}
