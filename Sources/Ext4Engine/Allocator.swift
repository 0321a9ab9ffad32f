import Foundation

/// The allocator's state of a read-write mount (Alloc.swift): the group
/// locks, the group descriptors with the tables' blocks they live in, the
/// superblock bytes with the free totals, the directory rotor, and the
/// in-memory block reservations.
///
/// Its locks keep their places in the lock order (Locks.swift):
/// - `withGroup` takes a group lock (level 4), one at a time: that group's
///   bitmaps and counters. Held across reading and writing them.
/// - `gdLock` (level 5) guards every other field here. `updateDescriptor`
///   and `updateSuperblock` hold it across writing the table block or the
///   superblock's block (the disk work their callers pass in), so it stays a
///   lock of its own.
final class BlockAllocator: @unchecked Sendable {
    private let groupLocks: [NSLock]
    private let gdLock = NSLock()

    // gdLock
    private var gd: [GroupDescriptorRecord] = []
    private var gdBlock: [UInt64] = []
    private var gdOffset: [Int] = []
    private var sb: SuperblockRecord
    private var freeBlocksTotal: UInt64 = 0
    private var freeInodesTotal: UInt64 = 0
    private var dirRotor: Int = 0
    /// IomapWrite.swift: told about every run of freed blocks.
    private var freedBlocksObserver: (@Sendable (UInt64, UInt64) -> Void)? = nil

    /// In-memory reservations (preallocation windows, uncommitted frees).
    let reservations: Reservations

    init(superblock: SuperblockRecord, groupCount: Int, groupOf: @escaping @Sendable (UInt64) -> Int) {
        sb = superblock
        groupLocks = (0..<groupCount).map { _ in NSLock() }
        reservations = Reservations(groupOf: groupOf)
    }

    /// Take the descriptors read at mount: group g's is at `offsets[g]` of block `blocks[g]`.
    func load(_ descriptors: [GroupDescriptorRecord], blocks: [UInt64], offsets: [Int]) {
        gdLock.with {
            gd = descriptors
            gdBlock = blocks
            gdOffset = offsets
            var fb: UInt64 = 0, fi: UInt64 = 0
            for d in descriptors {
                fb += UInt64(d.freeBlocks)
                fi += UInt64(d.freeInodes)
            }
            freeBlocksTotal = fb
            freeInodesTotal = fi
        }
    }

    /// Run `body` holding group `g`'s lock.
    func withGroup<R, E: Error>(_ g: Int, _ body: () throws(E) -> R) throws(E) -> R {
        try groupLocks[g].with(body)
    }

    /// (free blocks, free inodes).
    func totals() -> (UInt64, UInt64) {
        gdLock.with { (freeBlocksTotal, freeInodesTotal) }
    }

    var freeBlocks: UInt64 { gdLock.with { freeBlocksTotal } }

    /// The current descriptor of group `g`, nil when out of range.
    func descriptor(_ g: Int) -> GroupDescriptorRecord? {
        gdLock.with { g >= 0 && g < gd.count ? gd[g] : nil }
    }

    /// Change descriptor `g` with `modify`, keep it and the totals, then
    /// `write(block, offset, descriptor)` its table block, all under gdLock.
    /// False when `g` is out of range.
    func updateDescriptor<E: Error>(_ g: Int, _ modify: (inout GroupDescriptorRecord) -> Void,
                                    write: (UInt64, Int, GroupDescriptorRecord) throws(E) -> Void) throws(E) -> Bool {
        try gdLock.with { () throws(E) -> Bool in
            guard g >= 0, g < gd.count else { return false }
            var d = gd[g]
            let oldB = d.freeBlocks, oldI = d.freeInodes
            modify(&d)
            gd[g] = d
            freeBlocksTotal = freeBlocksTotal &+ UInt64(d.freeBlocks) &- UInt64(oldB)
            freeInodesTotal = freeInodesTotal &+ UInt64(d.freeInodes) &- UInt64(oldI)
            try write(gdBlock[g], gdOffset[g], d)
            return true
        }
    }

    /// Change the superblock with `modify(&record, freeBlocks, freeInodes)`,
    /// keep it, then `write` its bytes, all under gdLock.
    func updateSuperblock<E: Error>(_ modify: (inout SuperblockRecord, UInt64, UInt64) -> Void,
                                    write: ([UInt8]) throws(E) -> Void) throws(E) {
        try gdLock.with { () throws(E) in
            var s = sb
            modify(&s, freeBlocksTotal, freeInodesTotal)
            sb = s
            try write(s.b)
        }
    }

    /// s_last_orphan: the head of the on-disk orphan chain.
    var lastOrphan: UInt32 { gdLock.with { sb.lastOrphan } }

    /// The superblock as this mount last wrote it.
    var superblockRecord: SuperblockRecord { gdLock.with { sb } }

    /// The next group to start a directory search at, of `groupCount`.
    func nextDirRotor(_ groupCount: Int) -> Int {
        gdLock.with { () -> Int in dirRotor = (dirRotor + 1) % groupCount; return dirRotor }
    }

    var freedObserver: (@Sendable (UInt64, UInt64) -> Void)? {
        get { gdLock.with { freedBlocksObserver } }
        set { gdLock.with { freedBlocksObserver = newValue } }
    }
}
