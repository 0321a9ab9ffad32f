/// jbd2 journal recovery (v2/v3 superblocks, 64-bit tags, checksums v2/v3,
/// revoke records), written from the jbd2 on-disk format description.
/// Used only when a read-write open finds INCOMPAT_RECOVER set.

extension Array where Element == UInt8 {
    @inline(__always)
    func be32(_ o: Int) -> UInt32 {
        guard o >= 0, o <= count - 4 else { return 0 }
        return (UInt32(self[o]) << 24) | (UInt32(self[o + 1]) << 16) | (UInt32(self[o + 2]) << 8) | UInt32(self[o + 3])
    }
    @inline(__always)
    func be16(_ o: Int) -> UInt16 {
        guard o >= 0, o <= count - 2 else { return 0 }
        return (UInt16(self[o]) << 8) | UInt16(self[o + 1])
    }
    mutating func putBE32(_ o: Int, _ v: UInt32) {
        guard o >= 0, o <= count - 4 else { return }
        self[o] = UInt8(truncatingIfNeeded: v >> 24); self[o + 1] = UInt8(truncatingIfNeeded: v >> 16)
        self[o + 2] = UInt8(truncatingIfNeeded: v >> 8); self[o + 3] = UInt8(truncatingIfNeeded: v)
    }
    mutating func putLE32(_ o: Int, _ v: UInt32) {
        guard o >= 0, o <= count - 4 else { return }
        self[o] = UInt8(truncatingIfNeeded: v); self[o + 1] = UInt8(truncatingIfNeeded: v >> 8)
        self[o + 2] = UInt8(truncatingIfNeeded: v >> 16); self[o + 3] = UInt8(truncatingIfNeeded: v >> 24)
    }
}

struct JournalReplayResult: Sendable {
    var transactions = 0
    var blocksWritten = 0
    var blocksRevoked = 0
    var badDataChecksums = 0
}

extension Ext4FileSystem {
    func replayJournal() throws(Ext4Error) -> JournalReplayResult {
        var result = JournalReplayResult()
        let jino = sb.journalInum
        guard sb.has(compat: Compat.hasJournal), jino != 0 else {
            throw .unsupported("journal needs recovery but the journal is external or missing")
        }
        let ji = try rawInode(jino, checkLive: false)
        let bs = UInt64(blockSize)
        let jblocks = ji.pub.size / bs
        guard jblocks >= 2 else { throw corrupt("journal inode too small") }
        let maps = try mapRange(ji, from: 0, count: jblocks)
        func phys(_ l: UInt64) throws(Ext4Error) -> UInt64 {
            guard let m = maps.run(covering: l) else { throw corrupt("journal block \(l) not mapped") }
            return m.physical + (l - m.logical)
        }
        func jread(_ l: UInt64) throws(Ext4Error) -> [UInt8] {
            var b = [UInt8](repeating: 0, count: blockSize)
            try Ext4FileSystem.readRaw(dev, at: try phys(l) * bs, into: &b)
            return b
        }

        // ---- journal superblock --------------------------------------------------------
        var jsb = try JournalSuperblock(try jread(0))
        guard UInt64(jsb.blockSize) == bs else { throw .unsupported("journal block size differs from fs block size") }
        // The log proper ends where a fast-commit area begins.
        let maxlen = UInt64(jsb.logEnd)
        let first = UInt64(jsb.first)
        var seq = jsb.sequence
        let start = UInt64(jsb.start)
        guard UInt64(jsb.maxLen) <= jblocks, first >= 1, first < maxlen else { throw corrupt("journal geometry invalid") }
        let incompat = jsb.incompat
        guard incompat & ~JBD2.incompatKnown == 0 else {
            throw .unsupported("journal has unsupported features 0x\(String(incompat, radix: 16))")
        }
        let revokeF = jsb.revoke, is64 = jsb.is64
        let csum = jsb.hasChecksums
        if csum {
            guard jsb.checksumType == JBD2.checksumTypeCRC32C else { throw corrupt("journal checksum type \(jsb.checksumType) unknown") }
            guard jsb.checksumValid() else { throw corrupt("journal superblock checksum mismatch") }
        }
        let tailBytes = jsb.tailBytes

        if start != 0 {
            guard start >= first, start < maxlen else { throw corrupt("journal start \(start) out of range") }
            // ---- scan: collect committed transactions ----------------------------------
            struct Tag { let fsBlock: UInt64; let jBlock: UInt64; let escaped: Bool; let csum: UInt32 }
            struct Txn { let seq: UInt32; var tags: [Tag] = []; var revokes: [UInt64] = [] }
            var committed: [Txn] = []
            var cur = Txn(seq: seq)
            var blk = start
            var steps: UInt64 = 0
            func next(_ b: UInt64) -> UInt64 { b + 1 >= maxlen ? first : b + 1 }
            scan: while steps < maxlen {
                steps += 1
                let b = try jread(blk)
                guard b.be32(0) == JBD2.magic, b.be32(8) == seq else { break }
                switch b.be32(4) {
                case JBD2.BlockType.descriptor.rawValue:
                    if !jsb.tailValid(b) { break scan }
                    var off = 12
                    blk = next(blk)
                    var last = false
                    while !last, let tag = JournalTag.decode(b, at: off, jsb) {
                        off += jsb.tagBytes
                        if tag.flags & JBD2.tagSameUUID == 0 { off += 16 } // the uuid follows
                        last = tag.flags & JBD2.tagLast != 0
                        cur.tags.append(Tag(fsBlock: tag.fsBlock, jBlock: blk, escaped: tag.flags & JBD2.tagEscaped != 0, csum: tag.checksum))
                        blk = next(blk)
                        steps += 1
                        if cur.tags.count > 1 << 22 { throw corrupt("journal transaction too large") }
                    }
                case JBD2.BlockType.commit.rawValue:
                    if !jsb.commitValid(b) { break scan }
                    committed.append(cur)
                    seq &+= 1
                    cur = Txn(seq: seq)
                    blk = next(blk)
                case JBD2.BlockType.revoke.rawValue:
                    if !jsb.tailValid(b) { break scan }
                    let rcount = Int(b.be32(12))
                    guard rcount >= 16, rcount <= blockSize - tailBytes else {
                        throw corrupt("journal revoke block has bad r_count \(rcount)")
                    }
                    if revokeF {
                        let rs = is64 ? 8 : 4
                        var o = 16
                        while o + rs <= rcount {
                            let v = is64 ? (UInt64(b.be32(o)) << 32) | UInt64(b.be32(o + 4)) : UInt64(b.be32(o))
                            cur.revokes.append(v)
                            o += rs
                        }
                    }
                    blk = next(blk)
                default:
                    break scan
                }
            }
            // Fast commits after the last full commit: refused before anything is written.
            if jsb.fastCommit, maxlen + 1 < UInt64(jsb.maxLen), FastCommitArea.pending(try jread(maxlen + 1), tid: seq) {
                throw .unsupported("the journal holds fast-commit records (the kernel's ext4 wrote them after its last full commit), which ext4iomapd cannot replay; mount the file system once with the kernel's ext4 or run e2fsck -fy, or mount with norecovery to see it as of the last full commit")
            }
            // ---- revoke table --------------------------------------------------------------
            var revoked: [UInt64: UInt32] = [:]
            for t in committed {
                for r in t.revokes { revoked[r] = t.seq }
            }
            // ---- replay ----------------------------------------------------------------------
            for t in committed {
                result.transactions += 1
                for tag in t.tags {
                    if let r = revoked[tag.fsBlock], Int32(bitPattern: r &- t.seq) >= 0 {
                        result.blocksRevoked += 1
                        continue
                    }
                    guard tag.fsBlock < sb.blocksCount else { throw corrupt("journal tag targets block \(tag.fsBlock) beyond fs") }
                    var data = try jread(tag.jBlock)
                    if csum && JournalTag.dataChecksum(data, seq: t.seq, jsb) != tag.csum {
                        result.badDataChecksums += 1
                        continue
                    }
                    if tag.escaped { data.putBE32(0, JBD2.magic) }
                    try Ext4FileSystem.writeRaw(dev, at: tag.fsBlock * bs, data)
                    result.blocksWritten += 1
                }
            }
        }
        // ---- mark the journal empty and the fs recovered ---------------------------------------
        jsb.sequence = seq
        jsb.start = 0
        try Ext4FileSystem.writeRaw(dev, at: try phys(0) * bs, jsb.sealed())
        var sbb = [UInt8](repeating: 0, count: SuperblockRecord.size)
        try Ext4FileSystem.readRaw(dev, at: SuperblockRecord.deviceOffset, into: &sbb)
        var rec = try SuperblockRecord(sbb)
        rec.needsRecovery = false
        rec.seal()
        try Ext4FileSystem.writeRaw(dev, at: SuperblockRecord.deviceOffset, rec.b)
        try dev.flush()
        return result
    }
}
