/// Feature bits (ext4 on-disk format).
enum Compat {
    static let hasJournal: UInt32 = 0x4
    static let extAttr: UInt32 = 0x8
    static let resizeInode: UInt32 = 0x10
    static let dirIndex: UInt32 = 0x20
    static let sparseSuper2: UInt32 = 0x200
    static let fastCommit: UInt32 = 0x400
    static let orphanFile: UInt32 = 0x1000
}

enum Incompat {
    static let compression: UInt32 = 0x1
    static let filetype: UInt32 = 0x2
    static let recover: UInt32 = 0x4
    static let journalDev: UInt32 = 0x8
    static let metaBG: UInt32 = 0x10
    static let extents: UInt32 = 0x40
    static let bit64: UInt32 = 0x80
    static let mmp: UInt32 = 0x100
    static let flexBG: UInt32 = 0x200
    static let eaInode: UInt32 = 0x400
    static let dirData: UInt32 = 0x1000
    static let csumSeed: UInt32 = 0x2000
    static let largeDir: UInt32 = 0x4000
    static let inlineData: UInt32 = 0x8000
    static let encrypt: UInt32 = 0x10000
    static let casefold: UInt32 = 0x20000

    static let names: [(UInt32, String)] = [
        (compression, "compression"), (filetype, "filetype"), (recover, "needs_recovery"),
        (journalDev, "journal_dev"), (metaBG, "meta_bg"), (extents, "extent"), (bit64, "64bit"),
        (mmp, "mmp"), (flexBG, "flex_bg"), (eaInode, "ea_inode"), (dirData, "dirdata"),
        (csumSeed, "metadata_csum_seed"), (largeDir, "large_dir"), (inlineData, "inline_data"),
        (encrypt, "encrypt"), (casefold, "casefold"),
    ]
    /// What this engine can read.
    static let supported: UInt32 = filetype | recover | metaBG | extents | bit64 | mmp | flexBG
        | eaInode | csumSeed | largeDir | inlineData
}

enum RoCompat {
    static let sparseSuper: UInt32 = 0x1
    static let largeFile: UInt32 = 0x2
    static let btreeDir: UInt32 = 0x4
    static let hugeFile: UInt32 = 0x8
    static let gdtCsum: UInt32 = 0x10
    static let dirNlink: UInt32 = 0x20
    static let extraIsize: UInt32 = 0x40
    static let hasSnapshot: UInt32 = 0x80
    static let quota: UInt32 = 0x100
    static let bigalloc: UInt32 = 0x200
    static let metadataCsum: UInt32 = 0x400
    static let replica: UInt32 = 0x800
    static let readonly: UInt32 = 0x1000
    static let project: UInt32 = 0x2000
    static let sharedBlocks: UInt32 = 0x4000
    static let verity: UInt32 = 0x8000
    static let orphanPresent: UInt32 = 0x10000

    static let names: [(UInt32, String)] = [
        (sparseSuper, "sparse_super"), (largeFile, "large_file"), (btreeDir, "btree_dir"),
        (hugeFile, "huge_file"), (gdtCsum, "uninit_bg"), (dirNlink, "dir_nlink"),
        (extraIsize, "extra_isize"), (hasSnapshot, "snapshot"), (quota, "quota"),
        (bigalloc, "bigalloc"), (metadataCsum, "metadata_csum"), (replica, "replica"),
        (readonly, "read-only"), (project, "project"), (sharedBlocks, "shared_blocks"),
        (verity, "verity"), (orphanPresent, "orphan_present"),
    ]
    /// Features that allow a read-write mount (once writing exists).
    static let writable: UInt32 = sparseSuper | largeFile | btreeDir | hugeFile | gdtCsum | dirNlink
        | extraIsize | metadataCsum | orphanPresent
}

func featureNames(_ bits: UInt32, _ table: [(UInt32, String)]) -> String {
    var out: [String] = []
    var rest = bits
    for (b, n) in table where bits & b != 0 {
        out.append(n)
        rest &= ~b
    }
    var bit: UInt32 = 1
    while bit != 0 {
        if rest & bit != 0 { out.append(String(format0x: bit)) }
        bit <<= 1
    }
    return out.joined(separator: ", ")
}

extension String {
    init(format0x v: UInt32) { self = "0x" + String(v, radix: 16) }
}

/// Parsed and validated superblock.
struct Superblock: Sendable {
    /// The bytes, as the write side changes them.
    let record: SuperblockRecord
    let inodesCount: UInt32
    let blocksCount: UInt64
    let rBlocksCount: UInt64
    let freeBlocksCount: UInt64
    let freeInodesCount: UInt32
    let firstDataBlock: UInt32
    let logBlockSize: UInt32
    let blockSize: Int
    let blocksPerGroup: UInt32
    let inodesPerGroup: UInt32
    let magic: UInt16
    let state: UInt16
    let revLevel: UInt32
    let firstIno: UInt32
    let inodeSize: Int
    let compat: UInt32
    let incompat: UInt32
    let roCompat: UInt32
    let uuid: [UInt8]
    let volumeName: [UInt8]
    let reservedGdtBlocks: UInt16
    let journalInum: UInt32
    let hashSeed: [UInt32]
    let defHashVersion: UInt8
    let descSize: Int
    let firstMetaBG: UInt32
    let minExtraIsize: UInt16
    let wantExtraIsize: UInt16
    let flags: UInt32
    let checksumType: UInt8
    let checksumSeed: UInt32
    /// s_orphan_file_inum (with COMPAT_ORPHAN_FILE).
    let orphanFileInum: UInt32
    /// s_mmp_block and s_mmp_update_interval (with INCOMPAT_MMP).
    let mmpBlock: UInt64
    let mmpUpdateInterval: UInt16
    let overheadClusters: UInt32
    let backupBGs: (UInt32, UInt32)
    let checksum: UInt32

    func has(compat b: UInt32) -> Bool { compat & b != 0 }
    func has(incompat b: UInt32) -> Bool { incompat & b != 0 }
    func has(roCompat b: UInt32) -> Bool { roCompat & b != 0 }
    var metadataCsum: Bool { has(roCompat: RoCompat.metadataCsum) }
    var gdtCsum: Bool { !metadataCsum && has(roCompat: RoCompat.gdtCsum) }
    var is64: Bool { has(incompat: Incompat.bit64) }
    /// The seed of every metadata checksum: s_checksum_seed with
    /// metadata_csum_seed, else crc32c of the UUID.
    var metadataSeed: UInt32 { has(incompat: Incompat.csumSeed) ? checksumSeed : crc32c(~0, uuid) }

    /// Parse the 1024-byte superblock. Throws on anything not an ext2/3/4 fs.
    init(_ b: [UInt8]) throws(Ext4Error) {
        guard b.count >= SuperblockRecord.size else { throw .corrupted("short superblock") }
        typealias O = SuperblockRecord.Off
        record = try SuperblockRecord(b)
        magic = b.le16(O.magic)
        guard magic == 0xEF53 else { throw .invalid("bad magic number in superblock (not ext2/3/4)") }
        inodesCount = b.le32(O.inodesCount)
        incompat = b.le32(O.featureIncompat)
        compat = b.le32(O.featureCompat)
        roCompat = b.le32(O.featureRoCompat)
        let is64 = incompat & Incompat.bit64 != 0
        blocksCount = UInt64(b.le32(O.blocksCountLo)) | (is64 ? UInt64(b.le32(O.blocksCountHi)) << 32 : 0)
        rBlocksCount = UInt64(b.le32(O.rBlocksCountLo)) | (is64 ? UInt64(b.le32(O.rBlocksCountHi)) << 32 : 0)
        freeBlocksCount = UInt64(b.le32(O.freeBlocksLo)) | (is64 ? UInt64(b.le32(O.freeBlocksHi)) << 32 : 0)
        freeInodesCount = b.le32(O.freeInodes)
        firstDataBlock = b.le32(O.firstDataBlock)
        logBlockSize = b.le32(O.logBlockSize)
        guard logBlockSize <= 6 else { throw .corrupted("invalid log block size \(logBlockSize)") }
        blockSize = 1024 << Int(logBlockSize)
        let logCluster = b.le32(O.logClusterSize)
        blocksPerGroup = b.le32(O.blocksPerGroup)
        inodesPerGroup = b.le32(O.inodesPerGroup)
        state = b.le16(O.state)
        revLevel = b.le32(O.revLevel)
        if revLevel == 0 {
            firstIno = 11
            inodeSize = 128
        } else {
            firstIno = b.le32(O.firstIno)
            inodeSize = Int(b.le16(O.inodeSize))
        }
        uuid = b.sub(O.uuid, 16) ?? []
        volumeName = b.sub(O.volumeName, 16) ?? []
        reservedGdtBlocks = b.le16(O.reservedGdtBlocks)
        journalInum = b.le32(O.journalInum)
        hashSeed = (0..<4).map { b.le32(O.hashSeed + 4 * $0) }
        defHashVersion = b.u8(O.defHashVersion)
        let ds = Int(b.le16(O.descSize))
        firstMetaBG = b.le32(O.firstMetaBG)
        minExtraIsize = b.le16(O.minExtraIsize)
        wantExtraIsize = b.le16(O.wantExtraIsize)
        flags = b.le32(O.flags)
        checksumType = b.u8(O.checksumType)
        backupBGs = (b.le32(O.backupBGs), b.le32(O.backupBGs + 4))
        overheadClusters = b.le32(O.overheadClusters)
        checksumSeed = b.le32(O.checksumSeed)
        orphanFileInum = b.le32(O.orphanFileInum)
        mmpBlock = b.le64(O.mmpBlock)
        mmpUpdateInterval = b.le16(O.mmpUpdateInterval)
        checksum = b.le32(O.checksum)

        // ---- sanity checks -------------------------------------------------
        if roCompat & RoCompat.bigalloc == 0 {
            guard logCluster == logBlockSize else {
                throw .corrupted("cluster size (\(logCluster)) != block size (\(logBlockSize)) without bigalloc")
            }
        }
        guard inodeSize >= 128, inodeSize <= blockSize, inodeSize & (inodeSize - 1) == 0 else {
            throw .corrupted("invalid inode size \(inodeSize)")
        }
        guard firstIno >= 11, firstIno <= inodesCount else { throw .corrupted("invalid first inode \(firstIno)") }
        guard blocksPerGroup >= 8, UInt64(blocksPerGroup) <= UInt64(blockSize) * 8 else {
            throw .corrupted("invalid blocks per group \(blocksPerGroup)")
        }
        let inodesPerBlock = UInt32(blockSize / inodeSize)
        guard inodesPerGroup >= inodesPerBlock, UInt64(inodesPerGroup) <= UInt64(blockSize) * 8,
              inodesPerGroup % inodesPerBlock == 0 else {
            throw .corrupted("invalid inodes per group \(inodesPerGroup)")
        }
        guard blocksCount > UInt64(firstDataBlock) else { throw .corrupted("first data block beyond block count") }
        if blockSize == 1024 && firstDataBlock == 0 {
            throw .corrupted("bad geometry: first data block is 0 with 1k blocks")
        }
        if blockSize > 1024 && firstDataBlock != 0 {
            throw .corrupted("bad geometry: first data block \(firstDataBlock) with \(blockSize)-byte blocks")
        }
        guard Int(reservedGdtBlocks) <= blockSize / 4 else {
            throw .corrupted("reserved GDT blocks \(reservedGdtBlocks) too large")
        }
        if is64 {
            guard ds >= 64, ds <= 1024, ds & (ds - 1) == 0 else { throw .corrupted("invalid descriptor size \(ds)") }
            descSize = ds
        } else {
            descSize = 32
        }
        guard inodesCount > 0 else { throw .corrupted("zero inode count") }
    }

    var groupCount: UInt64 {
        let data = blocksCount > UInt64(firstDataBlock) ? blocksCount - UInt64(firstDataBlock) : 0
        let bpg = UInt64(max(blocksPerGroup, 1))
        return data / bpg + (data % bpg != 0 ? 1 : 0)
    }

    var inodeTableBlocksPerGroup: UInt64 {
        (UInt64(inodesPerGroup) * UInt64(inodeSize) + UInt64(blockSize) - 1) / UInt64(blockSize)
    }

    /// The block holding group `g`'s descriptor: right after the superblock,
    /// or, with meta_bg, in the first block (after any backup superblock) of
    /// its meta group.
    func descriptorBlock(_ g: UInt64) -> UInt64 {
        let descPerBlock = UInt64(blockSize / descSize)
        let metaIndex = g / descPerBlock
        if has(incompat: Incompat.metaBG) && metaIndex >= UInt64(firstMetaBG) {
            let first = metaIndex * descPerBlock
            let gstart = UInt64(firstDataBlock) + first * UInt64(blocksPerGroup)
            return gstart + (groupHasSuper(first) ? 1 : 0)
        }
        return UInt64(firstDataBlock) + 1 + metaIndex
    }

    func groupHasSuper(_ g: UInt64) -> Bool {
        if g == 0 { return true }
        if has(compat: Compat.sparseSuper2) {
            return g == UInt64(backupBGs.0) || g == UInt64(backupBGs.1)
        }
        if g <= 1 || !has(roCompat: RoCompat.sparseSuper) { return true }
        if g & 1 == 0 { return false }
        for base: UInt64 in [3, 5, 7] {
            var p = base
            while p < g { p *= base }
            if p == g { return true }
        }
        return false
    }

    var volumeNameString: String {
        let trimmed = volumeName.prefix { $0 != 0 }
        return String(decoding: trimmed, as: UTF8.self)
    }
}
