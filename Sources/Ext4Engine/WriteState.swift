import Foundation

extension Array where Element == UInt8 {
    mutating func putLE16(_ o: Int, _ v: UInt16) {
        guard o >= 0, o <= count - 2 else { return }
        self[o] = UInt8(truncatingIfNeeded: v); self[o + 1] = UInt8(truncatingIfNeeded: v >> 8)
    }
    mutating func putLE64(_ o: Int, _ v: UInt64) {
        putLE32(o, UInt32(truncatingIfNeeded: v))
        putLE32(o + 4, UInt32(truncatingIfNeeded: v >> 32))
    }
    mutating func putBytes(_ o: Int, _ b: [UInt8]) {
        guard o >= 0, b.count <= count - o else { return }
        for (i, x) in b.enumerated() { self[o + i] = x }
    }
    mutating func zeroRange(_ o: Int, _ n: Int) {
        var i = Swift.max(0, o)
        let (end, overflow) = o.addingReportingOverflow(n)
        let e = Swift.min(count, overflow ? (n > 0 ? Int.max : Int.min) : end)
        while i < e { self[i] = 0; i += 1 }
    }
}

/// Mutable state of a read-write mount. See Locks.swift for the lock order.
final class WriteState: @unchecked Sendable {
    let renameLock = NSLock()
    let inodeLocks = InodeLocks(1024)
    let metaLocks = StripedLocks(256)
    /// Group locks, group descriptors, superblock bytes and free totals
    /// (gdLock), the in-memory block reservations.
    let alloc: BlockAllocator
    var wroteSomething = false

    /// The orphan chain and the kernel's references (orphanLock, orphanMapLock).
    let orphans = OrphanList()

    // preallocLock (a leaf lock: nothing else is taken while it is held)
    let preallocLock = NSLock()
    var prealloc: [UInt32: Prealloc] = [:]
    var openWriters: [UInt32: Int] = [:]
    /// Inodes whose extent tree has split leaves since it was last packed.
    var looseTrees: Set<UInt32> = []

    // Commits (MetaWriteback.swift, JournalCommit.swift); the dirty blocks and
    // the transactions are in the file system's MetadataStore. commitLock is
    // taken only outside handles; flushLock → the MetadataStore mutex are
    // below every other lock.
    let commitLock = NSLock()
    /// The journal's log; nil without a journal (ordered write-back).
    var log: JournalLog? = nil
    let flushLock = NSLock()
    var commitInterval: Double = Ext4FileSystem.commitIntervalDefault
    /// A transaction this large is committed soon; past `hardLimit` new operations wait.
    var softLimit = 4096
    var hardLimit = Int.max
    let committerState = NSLock()
    var stopCommitter = false
    var committerRunning = false
    let committerDone = DispatchSemaphore(value: 0)

    /// Xattr blocks by header hash, and the xattr refcount lock.
    let xattrShare = XattrShareIndex()

    init(sb: Superblock, groups: [GroupDescriptorRecord], groupOf: @escaping @Sendable (UInt64) -> Int) {
        alloc = BlockAllocator(superblock: sb.record, groupCount: groups.count, groupOf: groupOf)
    }
}

extension Ext4FileSystem {
    var wstate: WriteState {
        get throws(Ext4Error) {
            guard let w else { throw .readOnly }
            return w
        }
    }

    static func writeRefusal(_ sb: Superblock) -> String? {
        if sb.has(roCompat: RoCompat.quota) || sb.has(roCompat: RoCompat.project) {
            return "quota/project features not supported for writing"
        }
        if sb.has(incompat: Incompat.encrypt) || sb.has(incompat: Incompat.casefold) {
            return "encrypt/casefold not supported for writing"
        }
        if sb.has(incompat: Incompat.journalDev) { return "external journal device" }
        if sb.has(compat: Compat.hasJournal) == false && sb.has(incompat: Incompat.recover) {
            return "needs_recovery without a journal"
        }
        return nil
    }

    // ---- group geometry ----------------------------------------------------------

    var groupCount: Int { groups.count }
    func groupStart(_ g: Int) -> UInt64 { UInt64(sb.firstDataBlock) + UInt64(g) * UInt64(sb.blocksPerGroup) }
    func groupBlocks(_ g: Int) -> Int {
        let s = groupStart(g)
        let e = min(sb.blocksCount, s + UInt64(sb.blocksPerGroup))
        return e > s ? Int(e - s) : 0
    }
    func groupOf(block b: UInt64) -> Int {
        guard b >= UInt64(sb.firstDataBlock) else { return 0 }
        return Int(min(UInt64(groups.count - 1), (b - UInt64(sb.firstDataBlock)) / UInt64(sb.blocksPerGroup)))
    }

    // ---- metadata writes ---------------------------------------------------------

    func devWrite(_ off: UInt64, _ b: [UInt8]) throws(Ext4Error) {
        try Ext4FileSystem.writeRaw(dev, at: off, b)
    }

    // ---- group descriptors and superblock ------------------------------------------

    func loadWriteState(_ w: WriteState) throws(Ext4Error) {
        let descPerBlock = UInt64(blockSize / sb.descSize)
        var cur: (UInt64, [UInt8])? = nil
        var gd: [GroupDescriptorRecord] = [], gdBlock: [UInt64] = [], gdOffset: [Int] = []
        for gi in 0..<groups.count {
            let g = UInt64(gi)
            let blk = sb.descriptorBlock(g)
            if cur?.0 != blk { cur = (blk, try block(blk)) }
            guard let tb = cur?.1 else { throw .io(EIO) }
            let off = Int(g % descPerBlock) * sb.descSize
            let d: GroupDescriptorRecord
            do throws(Ext4Error) { d = try GroupDescriptorRecord(block: tb, offset: off, descSize: sb.descSize) } catch { throw reported(error) }
            gd.append(d)
            gdBlock.append(blk)
            gdOffset.append(off)
        }
        w.alloc.load(gd, blocks: gdBlock, offsets: gdOffset)
    }

    /// bg_checksum of group `g` as this file system computes it.
    func groupDescChecksum(_ d: GroupDescriptorRecord, _ g: Int) -> UInt16 {
        d.computedChecksum(group: UInt32(truncatingIfNeeded: g), metadataCsum: sb.metadataCsum,
                           fsSeed: csumSeed, uuid: sb.uuid)
    }

    /// Modify group descriptor `g` and write its table block. Takes gdLock.
    func updateGD(_ g: Int, _ body: (inout GroupDescriptorRecord) -> Void) throws(Ext4Error) {
        let w = try wstate
        let found = try w.alloc.updateDescriptor(g, { d in
            body(&d)
            if sb.metadataCsum || sb.gdtCsum { d.checksum = groupDescChecksum(d, g) }
        }, write: { (n: UInt64, off: Int, d: GroupDescriptorRecord) throws(Ext4Error) in
            var blk = try block(n)
            blk.putBytes(off, d.b)
            try writeMeta(n, blk)
        })
        guard found else { throw corrupt("group \(g) out of range") }
    }

    /// The current descriptor of group `g` (read-write mounts).
    func gdSnapshot(_ g: Int) throws(Ext4Error) -> GroupDescriptorRecord {
        let w = try wstate
        guard let d = w.alloc.descriptor(g) else {
            throw corrupt("group \(g) out of range")
        }
        return d
    }

    /// Update the superblock with current totals; `body` may change other
    /// fields. The block holding it joins the running transaction; with
    /// `writeThrough` it is also written to the device now (marking the file
    /// system in use at mount, clean at unmount). Takes gdLock.
    func updateSuper(writeThrough: Bool = false, _ body: (inout SuperblockRecord) -> Void = { _ in }) throws(Ext4Error) {
        let w = try wstate
        try w.alloc.updateSuperblock({ s, freeBlocks, freeInodes in
            body(&s)
            s.freeBlocks = freeBlocks
            s.freeInodes = UInt32(truncatingIfNeeded: freeInodes)
            s.seal()
        }, write: { (s: [UInt8]) throws(Ext4Error) in
            let sbBlock: UInt64 = blockSize == 1024 ? 1 : 0
            var blk = try block(sbBlock)
            blk.putBytes(blockSize == 1024 ? 0 : Int(SuperblockRecord.deviceOffset), s)
            try writeMeta(sbBlock, blk, superblock: true)
            if writeThrough {
                try w.flushLock.with { () throws(Ext4Error) in try devWrite(SuperblockRecord.deviceOffset, s) }
            }
        })
    }

    func nowSpec() -> Timespec {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Timespec(sec: Int64(ts.tv_sec), nsec: UInt32(clamping: ts.tv_nsec))
    }
}
