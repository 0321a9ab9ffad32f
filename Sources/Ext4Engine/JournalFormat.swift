/// The jbd2 on-disk format, as typed views shared by recovery (Journal.swift)
/// and the commit path (JournalCommit.swift). Written from the jbd2 format
/// description: every field is big-endian; each log block but a data copy
/// starts with a 12-byte header (magic, block type, transaction sequence).
enum JBD2 {
    static let magic: UInt32 = 0xC03B_3998

    enum BlockType: UInt32 {
        case descriptor = 1, commit = 2, superblockV1 = 3, superblockV2 = 4, revoke = 5
    }

    /// Tag flags.
    static let tagEscaped: UInt32 = 1, tagSameUUID: UInt32 = 2, tagDeleted: UInt32 = 4, tagLast: UInt32 = 8

    /// Superblock feature bits.
    static let compatChecksumV1: UInt32 = 0x1
    static let incompatRevoke: UInt32 = 0x1, incompat64bit: UInt32 = 0x2, incompatAsyncCommit: UInt32 = 0x4
    static let incompatCsumV2: UInt32 = 0x8, incompatCsumV3: UInt32 = 0x10, incompatFastCommit: UInt32 = 0x20
    /// Incompat features recovery understands (fast commit: the area it
    /// reserves; records in it are refused, `FastCommitArea`).
    static let incompatKnown: UInt32 = 0x3F
    /// Fast-commit blocks when the superblock does not say (the kernel's default).
    static let defaultFastCommitBlocks: UInt32 = 256
    static let checksumTypeCRC32C: UInt8 = 4

    static func header(_ type: BlockType, _ seq: UInt32, size: Int) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: size)
        b.putBE32(0, magic)
        b.putBE32(4, type.rawValue)
        b.putBE32(8, seq)
        return b
    }
}

/// The journal superblock (log block 0): geometry, where the log starts, features.
struct JournalSuperblock: Sendable {
    var raw: [UInt8]

    init(_ raw: [UInt8]) throws(Ext4Error) {
        guard raw.count >= 1024, raw.be32(0) == JBD2.magic else { throw .corrupted("journal superblock has bad magic") }
        self.raw = raw
        guard version == 1 || version == 2 else { throw .corrupted("journal superblock has bad type \(raw.be32(4))") }
    }

    /// 1 or 2 (block types 3 and 4).
    var version: Int { raw.be32(4) == JBD2.BlockType.superblockV2.rawValue ? 2 : (raw.be32(4) == 3 ? 1 : 0) }
    var blockSize: UInt32 { raw.be32(0xC) }
    var maxLen: UInt32 { raw.be32(0x10) }
    var first: UInt32 { raw.be32(0x14) }
    /// The sequence of the first transaction expected in the log.
    var sequence: UInt32 {
        get { raw.be32(0x18) }
        set { raw.putBE32(0x18, newValue) }
    }
    /// Log block of the first transaction; 0 when the log is empty.
    var start: UInt32 {
        get { raw.be32(0x1C) }
        set { raw.putBE32(0x1C, newValue) }
    }
    var errno: Int32 { Int32(bitPattern: raw.be32(0x20)) }
    var compat: UInt32 { version == 2 ? raw.be32(0x24) : 0 }
    var incompat: UInt32 {
        get { version == 2 ? raw.be32(0x28) : 0 }
        set { raw.putBE32(0x28, newValue) }
    }
    var uuid: [UInt8] { raw.sub(0x30, 16) ?? [] }
    var checksumType: UInt8 { raw.u8(0x50) }
    /// s_num_fc_blks: the fast-commit area at the end of the journal.
    var fastCommitBlocks: UInt32 {
        let n = raw.be32(0x54)
        return n == 0 ? JBD2.defaultFastCommitBlocks : n
    }
    var fastCommit: Bool { incompat & JBD2.incompatFastCommit != 0 }
    /// One past the last block of the log proper: with fast commits the log
    /// wraps before it, the block there is unused, and the fast-commit area
    /// is the rest (from `logEnd + 1`), as the kernel's jbd2 lays it out.
    var logEnd: UInt32 {
        guard fastCommit else { return maxLen }
        let fc = fastCommitBlocks
        return fc < maxLen ? maxLen - fc : 0
    }
    var storedChecksum: UInt32 { raw.be32(0xFC) }

    var revoke: Bool { incompat & JBD2.incompatRevoke != 0 }
    var is64: Bool { incompat & JBD2.incompat64bit != 0 }
    var csumV2: Bool { incompat & JBD2.incompatCsumV2 != 0 }
    var csumV3: Bool { incompat & JBD2.incompatCsumV3 != 0 }
    var hasChecksums: Bool { csumV2 || csumV3 }
    /// Seed of every block checksum: crc32c over the journal's UUID.
    var checksumSeed: UInt32 { crc32c(~0, uuid) }

    /// Bytes of one block tag in a descriptor block.
    var tagBytes: Int { csumV3 ? 16 : (12 + (csumV2 ? 2 : 0) - (is64 ? 0 : 4)) }
    /// Bytes of the checksum tail of descriptor and revoke blocks.
    var tailBytes: Int { hasChecksums ? 4 : 0 }

    func checksumValid() -> Bool {
        guard hasChecksums else { return true }
        return crc32c(~0, Array(raw[0..<1024]).zeroing(0xFC, 4)) == storedChecksum
    }

    /// The bytes to write back, checksummed when the journal uses checksums.
    func sealed() -> [UInt8] {
        var r = raw
        if hasChecksums {
            r.putBE32(0xFC, 0)
            r.putBE32(0xFC, crc32c(~0, Array(r[0..<1024])))
        }
        return r
    }
}

/// One block tag of a descriptor block.
struct JournalTag: Sendable, Equatable {
    var fsBlock: UInt64
    var flags: UInt32
    var checksum: UInt32

    /// Decode the tag at `off`; nil when it does not fit before the tail.
    static func decode(_ b: [UInt8], at off: Int, _ j: JournalSuperblock) -> JournalTag? {
        guard off >= 0, off + j.tagBytes <= b.count - j.tailBytes else { return nil }
        var fsb = UInt64(b.be32(off))
        let flags: UInt32 = j.csumV3 ? b.be32(off + 4) : UInt32(b.be16(off + 6))
        if j.is64 { fsb |= UInt64(b.be32(off + 8)) << 32 }
        let cs: UInt32 = j.csumV3 ? b.be32(off + 12) : UInt32(b.be16(off + 4))
        return JournalTag(fsBlock: fsb, flags: flags, checksum: cs)
    }

    func encode(into b: inout [UInt8], at off: Int, _ j: JournalSuperblock) {
        b.putBE32(off, UInt32(truncatingIfNeeded: fsBlock))
        if j.csumV3 {
            b.putBE32(off + 4, flags)
            b.putBE32(off + 8, UInt32(truncatingIfNeeded: fsBlock >> 32))
            b.putBE32(off + 12, checksum)
        } else {
            b.putBE16(off + 4, UInt16(truncatingIfNeeded: checksum))
            b.putBE16(off + 6, UInt16(truncatingIfNeeded: flags))
            if j.is64 { b.putBE32(off + 8, UInt32(truncatingIfNeeded: fsBlock >> 32)) }
        }
    }

    /// Checksum of a data block copy as tags carry it (v3: 32 bits, v2: low 16).
    static func dataChecksum(_ data: [UInt8], seq: UInt32, _ j: JournalSuperblock) -> UInt32 {
        var s = [UInt8](repeating: 0, count: 4)
        s.putBE32(0, seq)
        let c = crc32c(crc32c(j.checksumSeed, s), data)
        return j.csumV3 ? c : c & 0xFFFF
    }
}

extension JournalSuperblock {
    /// Does the checksum tail of a descriptor or revoke block match?
    func tailValid(_ b: [UInt8]) -> Bool {
        guard hasChecksums else { return true }
        let t = b.count - 4
        return crc32c(checksumSeed, b.zeroing(t, 4)) == b.be32(t)
    }

    func sealTail(_ b: inout [UInt8]) {
        guard hasChecksums else { return }
        let t = b.count - 4
        b.putBE32(t, 0)
        b.putBE32(t, crc32c(checksumSeed, b))
    }

    /// Does a commit block's checksum (v2/v3: h_chksum[0] over the whole block) match?
    func commitValid(_ b: [UInt8]) -> Bool {
        guard hasChecksums else { return true }
        return crc32c(checksumSeed, b.zeroing(0x10, 4)) == b.be32(0x10)
    }

    /// A commit block for transaction `seq`, written at `sec`.`nsec`.
    func commitBlock(seq: UInt32, size: Int, sec: UInt64, nsec: UInt32) -> [UInt8] {
        var b = JBD2.header(.commit, seq, size: size)
        b.putBE32(0x30, UInt32(truncatingIfNeeded: sec >> 32))
        b.putBE32(0x34, UInt32(truncatingIfNeeded: sec))
        b.putBE32(0x38, nsec)
        if hasChecksums {
            b.putBE32(0x10, crc32c(checksumSeed, b))
        }
        return b
    }
}

extension Array where Element == UInt8 {
    mutating func putBE16(_ o: Int, _ v: UInt16) {
        guard o >= 0, o <= count - 2 else { return }
        self[o] = UInt8(truncatingIfNeeded: v >> 8); self[o + 1] = UInt8(truncatingIfNeeded: v)
    }
}

/// The fast-commit area (with JBD2 incompat FAST_COMMIT, the journal's blocks
/// from `logEnd + 1` to its end): tag-length-value records (le16 tag, le16
/// length) that the kernel's ext4 writes between full commits, opened by a
/// HEAD record (tag 9: le32 features, le32 transaction id). This engine
/// writes only full commits and cannot replay these records: a HEAD for the
/// transaction after the last full commit means some are pending.
enum FastCommitArea {
    static let tagHead: UInt16 = 0x0009

    /// Whether `block`, the area's first block, opens fast commits for
    /// transaction `tid`.
    static func pending(_ block: [UInt8], tid: UInt32) -> Bool {
        guard block.count >= 12, block.le16(0) == tagHead, block.le16(2) >= 8 else { return false }
        return block.le32(8) == tid
    }
}
