import Foundation
import Logging
import Synchronization

/// Logs each distinct corruption message once (bounded memory).
final class CorruptionLog: Sendable {
    private let seen = Mutex(Set<String>())
    let logger: Logger
    init(logger: Logger) { self.logger = logger }

    func report(_ msg: String) {
        let first = seen.withLock { $0.count < 4096 && $0.insert(msg).inserted }
        if first { logger.error("ext4 corruption: \(msg)") }
    }
}

/// Read side of an ext4 file system. All methods are thread-safe: the
/// structure is immutable after `open` except for the metadata store (block
/// cache, dirty blocks, transactions) and the write state, both locked.
public final class Ext4FileSystem: @unchecked Sendable {
    public static let rootIno: UInt32 = 2

    let dev: any BlockDevice
    let sb: Superblock
    let groups: [GroupDescriptorRecord]
    /// The block cache, dirty metadata and transactions (MetadataStore.swift).
    let meta: MetadataStore
    let clog: CorruptionLog
    let csumSeed: UInt32
    let hashUnsigned: Bool
    let inodesPerBlock: Int
    /// Mutable state of a read-write mount (nil when read-only).
    let w: WriteState?
    /// FS_IOC_SHUTDOWN happened: every operation fails (JournalCommit.swift).
    let shutDown = Atomic<Bool>(false)
    /// Multi-mount protection held by this read-write mount (MMP.swift).
    let mmp = Mutex<MultiMountProtection?>(nil)

    public let blockSize: Int
    public let readOnly: Bool
    public let warnings: [String]
    public var uuid: [UInt8] { sb.uuid }
    public var volumeName: String { sb.volumeNameString }

    /// Test/diagnostic counters.
    let stats = Counters()
    final class Counters: Sendable {
        private let htreeLookups = Atomic<Int>(0)
        private let linearLookups = Atomic<Int>(0)
        func htree() { htreeLookups.wrappingAdd(1, ordering: .relaxed) }
        func linear() { linearLookups.wrappingAdd(1, ordering: .relaxed) }
        var snapshot: (htree: Int, linear: Int) {
            (htreeLookups.load(ordering: .relaxed), linearLookups.load(ordering: .relaxed))
        }
    }

    /// Number of lookups answered through the htree index vs. linear scans.
    public var lookupCounters: (htree: Int, linear: Int) { stats.snapshot }

    private init(dev: any BlockDevice, sb: Superblock, groups: [GroupDescriptorRecord], options: MountOptions,
                 readOnly: Bool, warnings: [String], clog: CorruptionLog, csumSeed: UInt32) {
        self.dev = dev
        self.sb = sb
        self.groups = groups
        self.meta = MetadataStore(cacheBlocks: options.cacheBlocks)
        self.clog = clog
        self.csumSeed = csumSeed
        self.blockSize = sb.blockSize
        self.readOnly = readOnly
        self.warnings = warnings
        self.inodesPerBlock = sb.blockSize / sb.inodeSize
        let first = UInt64(sb.firstDataBlock), bpg = UInt64(max(1, sb.blocksPerGroup)), ng = max(1, groups.count)
        self.w = readOnly ? nil : WriteState(sb: sb, groups: groups, groupOf: { b in
            b < first ? 0 : Int(min(UInt64(ng - 1), (b - first) / bpg))
        })
        if sb.flags & 0x2 != 0 {
            hashUnsigned = true
        } else {
            hashUnsigned = false // signed, or unset: x86 default (signed char)
        }
    }

    /// Build a `.corrupted` error and log it once.
    func corrupt(_ msg: String) -> Ext4Error {
        clog.report(msg)
        return .corrupted(msg)
    }

    /// Open a file system. Refuses unknown INCOMPAT features (and encrypt,
    /// casefold, compression, bigalloc, verity); unknown RO_COMPAT features force
    /// read-only (see `warnings`). A journal needing recovery is replayed:
    /// for read-only opens into memory over the device (which they never
    /// write), for read-write opens onto it; `noRecovery` skips it.
    public static func open(device: any BlockDevice, options: MountOptions) throws(Ext4Error) -> Ext4FileSystem {
        try open(device: device, options: options, replaying: false)
    }

    /// Convenience: open the image or block device at `path`.
    public static func open(path: String, options: MountOptions) throws(Ext4Error) -> Ext4FileSystem {
        let needWrite = !options.readOnly
        let dev = try FileBlockDevice(path: path, readOnly: !needWrite)
        return try open(device: dev, options: options)
    }

    static func open(device: any BlockDevice, options: MountOptions, replaying: Bool) throws(Ext4Error) -> Ext4FileSystem {
        let logger = Logger(label: "ext4engine")
        let clog = CorruptionLog(logger: logger)
        func fail(_ e: Ext4Error) -> Ext4Error {
            if case .corrupted(let m) = e { clog.report(m) }
            return e
        }
        var sbBytes = [UInt8](repeating: 0, count: 1024)
        guard device.size >= 2048 else { throw .invalid("device too small for an ext4 file system") }
        try readRaw(device, at: 1024, into: &sbBytes)
        let sb: Superblock
        do { sb = try Superblock(sbBytes) } catch { throw fail(error) }

        var warnings: [String] = []
        var ro = options.readOnly

        // ---- feature policy ---------------------------------------------------
        let unknownIncompat = sb.incompat & ~Incompat.supported
        if unknownIncompat != 0 {
            throw .unsupported("unsupported incompatible feature(s): \(featureNames(unknownIncompat, Incompat.names))")
        }
        let refusedRo = sb.roCompat & (RoCompat.bigalloc | RoCompat.verity | RoCompat.hasSnapshot)
        if refusedRo != 0 {
            throw .unsupported("unsupported feature(s): \(featureNames(refusedRo, RoCompat.names))")
        }
        let unknownRo = sb.roCompat & ~RoCompat.writable
        if unknownRo != 0 && !ro {
            ro = true
            warnings.append("mounting read-only: unsupported ro_compat feature(s) \(featureNames(unknownRo, RoCompat.names))")
        }
        if sb.revLevel > 1 && !ro {
            ro = true
            warnings.append("mounting read-only: revision level \(sb.revLevel) too high")
        }
        if sb.metadataCsum {
            guard sb.checksumType == 1 else { throw fail(.corrupted("unknown checksum type \(sb.checksumType)")) }
            let c = crc32c(~0, sbBytes[0..<0x3FC])
            guard c == sb.checksum else { throw fail(.corrupted("superblock checksum mismatch")) }
        }
        // Multi-mount protection before anything is written, the journal's
        // replay included; given back if the mount does not become read-write.
        var mmp: MultiMountProtection? = nil
        if !ro && !replaying && sb.has(incompat: Incompat.mmp) && Ext4FileSystem.writeRefusal(sb) == nil {
            mmp = try MultiMountProtection.acquire(dev: device, sb: sb, seed: sb.metadataCsum ? sb.metadataSeed : nil,
                                                   node: options.nodeName.isEmpty ? "ext4iomapd" : options.nodeName,
                                                   device: options.deviceName, logger: clog)
        }
        var mmpHandedOver = false
        defer { if !mmpHandedOver, let mmp { try? mmp.release() } }
        if sb.has(incompat: Incompat.recover) && !options.noRecovery {
            // Replay the journal, then start over: read-write, onto the
            // device; read-only, into memory over it (the device is never
            // written), so a crashed file system mounts read-only whole.
            let target: any BlockDevice = options.readOnly ? OverlayBlockDevice(base: device) : device
            var tmpOpts = options
            tmpOpts.readOnly = true
            tmpOpts.noRecovery = true
            tmpOpts.cacheBlocks = 64
            let tmp = try open(device: target, options: tmpOpts, replaying: true)
            let r = try tmp.replayJournal()
            var again = options
            again.noRecovery = true
            let fs = try open(device: target, options: again, replaying: true)
            guard !fs.sb.has(incompat: Incompat.recover) else { throw .corrupted("journal recovery did not complete") }
            var w = fs.warnings
            let how = options.readOnly ? "journal replayed in memory for this read-only mount, the device unchanged" : "journal recovered"
            w.insert("\(how): \(r.transactions) transaction(s), \(r.blocksWritten) block(s) written, \(r.blocksRevoked) revoked" + (r.badDataChecksums > 0 ? ", \(r.badDataChecksums) skipped for bad checksums" : ""), at: 0)
            let out = Ext4FileSystem(dev: target, sb: fs.sb, groups: fs.groups, options: options, readOnly: fs.readOnly,
                                     warnings: w, clog: fs.clog, csumSeed: fs.csumSeed)
            if !out.readOnly {
                try out.startWriting(commitInterval: options.effectiveCommitInterval)
                if let mmp { out.holdMMP(mmp); mmpHandedOver = true }
            }
            return out
        }
        if sb.has(incompat: Incompat.recover) && !replaying {
            ro = true
            warnings.append("journal needs recovery but noRecovery was given: mounting read-only, recent changes may be missing")
        }
        if !ro, let why = Ext4FileSystem.writeRefusal(sb) {
            ro = true
            warnings.append("mounting read-only: \(why)")
        }

        // ---- geometry ---------------------------------------------------------------
        let bs = UInt64(sb.blockSize)
        let fsBytes = try cmul(sb.blocksCount, bs, "block count")
        guard fsBytes <= device.size else {
            throw fail(.corrupted("bad geometry: block count \(sb.blocksCount) exceeds size of device (\(device.size / bs) blocks)"))
        }
        let ngroups = sb.groupCount
        guard ngroups <= UInt64(UInt32.max), ngroups * UInt64(sb.inodesPerGroup) == UInt64(sb.inodesCount) else {
            throw fail(.corrupted("inode count \(sb.inodesCount) does not match \(ngroups) groups x \(sb.inodesPerGroup)"))
        }
        let csumSeed = sb.metadataSeed

        // ---- group descriptors -----------------------------------------------------
        let descPerBlock = UInt64(sb.blockSize / sb.descSize)
        var groups: [GroupDescriptorRecord] = []
        groups.reserveCapacity(Int(ngroups))
        var cur: (UInt64, [UInt8])? = nil
        let itb = sb.inodeTableBlocksPerGroup
        var badCsum: [UInt64] = []
        for g in 0..<ngroups {
            let blk = sb.descriptorBlock(g)
            guard blk < sb.blocksCount else { throw fail(.corrupted("group descriptor block \(blk) beyond end of fs")) }
            if cur?.0 != blk {
                var b = [UInt8](repeating: 0, count: sb.blockSize)
                try readRaw(device, at: blk * bs, into: &b)
                cur = (blk, b)
            }
            guard let block = cur?.1 else { throw .io(5) }
            let gd: GroupDescriptorRecord
            do throws(Ext4Error) {
                gd = try GroupDescriptorRecord(block: block, offset: Int(g % descPerBlock) * sb.descSize, descSize: sb.descSize)
            } catch { throw fail(error) }
            if sb.metadataCsum || sb.gdtCsum {
                let c = gd.computedChecksum(group: UInt32(truncatingIfNeeded: g), metadataCsum: sb.metadataCsum,
                                            fsSeed: csumSeed, uuid: sb.uuid)
                if c != gd.checksum { badCsum.append(g) }
            }
            let first = UInt64(sb.firstDataBlock)
            for (what, b) in [("block bitmap", gd.blockBitmap), ("inode bitmap", gd.inodeBitmap)] {
                guard b >= first, b < sb.blocksCount else {
                    throw fail(.corrupted("group \(g): \(what) block \(b) not in file system"))
                }
            }
            let (itEnd, o) = gd.inodeTable.addingReportingOverflow(itb)
            guard gd.inodeTable >= first, !o, itEnd <= sb.blocksCount else {
                throw fail(.corrupted("group \(g): inode table at \(gd.inodeTable) not in file system"))
            }
            groups.append(gd)
        }
        if !badCsum.isEmpty {
            let msg = "group descriptor checksum mismatch in group(s) \(badCsum.prefix(8).map(String.init).joined(separator: ","))\(badCsum.count > 8 ? ",..." : "")"
            clog.report(msg)
            // The kernel accepts this on read-only mounts with a warning.
            warnings.append(msg)
        }
        if !ro && !badCsum.isEmpty {
            ro = true
            warnings.append("mounting read-only: group descriptor checksums are wrong (run e2fsck)")
        }
        let fs = Ext4FileSystem(dev: device, sb: sb, groups: groups, options: options, readOnly: ro,
                                warnings: warnings, clog: clog, csumSeed: csumSeed)
        if !ro && !replaying {
            try fs.startWriting(commitInterval: options.effectiveCommitInterval)
            if let mmp { fs.holdMMP(mmp); mmpHandedOver = true }
        }
        return fs
    }

    static func readRaw(_ dev: any BlockDevice, at off: UInt64, into buf: inout [UInt8]) throws(Ext4Error) {
        var err: Ext4Error? = nil
        buf.withUnsafeMutableBytes { p in
            do throws(Ext4Error) { try dev.read(at: off, into: p) } catch { err = error }
        }
        if let err { throw err }
    }

    static func writeRaw(_ dev: any BlockDevice, at off: UInt64, _ b: [UInt8]) throws(Ext4Error) {
        var err: Ext4Error? = nil
        b.withUnsafeBytes { p in
            do throws(Ext4Error) { try dev.write(at: off, from: p) } catch { err = error }
        }
        if let err { throw err }
    }

    // ---- block access -------------------------------------------------------------

    /// Read one metadata block through the cache. `n` must be inside the fs.
    func block(_ n: UInt64) throws(Ext4Error) -> [UInt8] {
        guard n < sb.blocksCount else { throw corrupt("block \(n) beyond end of file system") }
        let since = meta.epoch
        if let b = meta.lookup(n) { return b }
        var b = [UInt8](repeating: 0, count: blockSize)
        try Ext4FileSystem.readRaw(dev, at: n * UInt64(blockSize), into: &b)
        meta.fill(n, b, since: since)
        return b
    }

    /// Read `count` contiguous blocks through the cache; blocks missing from the
    /// cache are fetched with one positioned read (sequential readahead).
    func blockRun(_ start: UInt64, _ count: Int) throws(Ext4Error) -> [[UInt8]] {
        guard count > 0 else { return [] }
        guard validRun(start, UInt64(count)) else {
            throw corrupt("block run \(start)+\(count) beyond end of file system")
        }
        // Dirty metadata not yet on the device wins (looked up before the read:
        // a checkpoint forgets an entry only once the device has its bytes).
        let since = meta.epoch
        var out = meta.lookup(start, count)
        guard let firstMiss = out.firstIndex(where: { $0 == nil }),
              let lastMiss = out.lastIndex(where: { $0 == nil }) else {
            return out.compactMap { $0 }
        }
        let n = lastMiss - firstMiss + 1
        var buf = [UInt8](repeating: 0, count: n * blockSize)
        try Ext4FileSystem.readRaw(dev, at: (start + UInt64(firstMiss)) * UInt64(blockSize), into: &buf)
        for i in 0..<n where out[firstMiss + i] == nil {
            let b = Array(buf[(i * blockSize)..<((i + 1) * blockSize)])
            meta.fill(start + UInt64(firstMiss + i), b, since: since)
            out[firstMiss + i] = b
        }
        return out.compactMap { $0 }
    }

    /// Is a physical run completely inside the data area of the fs?
    func validRun(_ start: UInt64, _ len: UInt64) -> Bool {
        guard start >= UInt64(sb.firstDataBlock), len > 0 else { return false }
        let (end, o) = start.addingReportingOverflow(len)
        return !o && end <= sb.blocksCount
    }

    // ---- statfs ---------------------------------------------------------------------

    public func statfs() -> FsStats {
        var bfree: UInt64 = 0
        var ifree: UInt64 = 0
        if let w {
            (bfree, ifree) = w.alloc.totals()
        } else {
            for g in groups {
                bfree &+= UInt64(g.freeBlocks)
                ifree &+= UInt64(g.freeInodes)
            }
        }
        let overhead = computeOverhead()
        let blocks = sb.blocksCount > overhead ? sb.blocksCount - overhead : 0
        bfree = min(bfree, blocks)
        ifree = min(ifree, UInt64(sb.inodesCount))
        // Like the kernel, also hold back the reserved pool for extent-mapped
        // file systems: 2% of the blocks, at most 4096.
        let resv: UInt64 = sb.has(incompat: Incompat.extents) ? min(sb.blocksCount / 50, 4096) : 0
        let reserved = sb.rBlocksCount &+ resv
        let bavail = bfree > reserved ? bfree - reserved : 0
        return FsStats(blocks: blocks, bfree: bfree, bavail: bavail, files: UInt64(sb.inodesCount),
                       ffree: ifree, bsize: UInt32(blockSize), frsize: UInt32(blockSize), namelen: 255)
    }

    private func computeOverhead() -> UInt64 {
        if sb.overheadClusters != 0 && UInt64(sb.overheadClusters) < sb.blocksCount {
            return UInt64(sb.overheadClusters)
        }
        let ngroups = UInt64(groups.count)
        let descPerBlock = UInt64(blockSize / sb.descSize)
        let gdtBlocks = (ngroups + descPerBlock - 1) / descPerBlock
        var total = UInt64(sb.firstDataBlock)
        for g in 0..<ngroups where sb.groupHasSuper(g) {
            if sb.has(incompat: Incompat.metaBG) {
                total &+= 1 &+ 1
            } else {
                total &+= 1 &+ gdtBlocks &+ UInt64(sb.reservedGdtBlocks)
            }
        }
        total &+= ngroups &* (2 &+ sb.inodeTableBlocksPerGroup)
        if sb.has(compat: Compat.hasJournal), sb.journalInum != 0,
           let j = try? rawInode(sb.journalInum, checkLive: false) {
            total &+= j.pub.blocks512 / UInt64(blockSize / 512)
        }
        return min(total, sb.blocksCount)
    }
}
