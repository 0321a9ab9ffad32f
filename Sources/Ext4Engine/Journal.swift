/// jbd2 journal recovery (v2/v3 superblocks, 64-bit tags, checksums v2/v3,
/// revoke records), written from the jbd2 on-disk format description.
/// Used only when a read-write open finds INCOMPAT_RECOVER set.
private let jMagic: UInt32 = 0xC03B_3998

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

private func beBytes32(_ v: UInt32) -> [UInt8] {
    [UInt8(truncatingIfNeeded: v >> 24), UInt8(truncatingIfNeeded: v >> 16),
     UInt8(truncatingIfNeeded: v >> 8), UInt8(truncatingIfNeeded: v)]
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
            var lo = 0, hi = maps.count
            while lo < hi {
                let mid = (lo + hi) / 2
                let m = maps[mid]
                if l < m.logical { hi = mid } else if l >= m.logical + m.length { lo = mid + 1 } else {
                    return m.physical + (l - m.logical)
                }
            }
            throw corrupt("journal block \(l) not mapped")
        }
        func jread(_ l: UInt64) throws(Ext4Error) -> [UInt8] {
            var b = [UInt8](repeating: 0, count: blockSize)
            try Ext4FileSystem.readRaw(dev, at: try phys(l) * bs, into: &b)
            return b
        }

        // ---- journal superblock --------------------------------------------------------
        var jsb = try jread(0)
        guard jsb.be32(0) == jMagic else { throw corrupt("journal superblock has bad magic") }
        let jtype = jsb.be32(4)
        guard jtype == 3 || jtype == 4 else { throw corrupt("journal superblock has bad type \(jtype)") }
        guard UInt64(jsb.be32(0xC)) == bs else { throw .unsupported("journal block size differs from fs block size") }
        let maxlen = UInt64(jsb.be32(0x10))
        let first = UInt64(jsb.be32(0x14))
        var seq = jsb.be32(0x18)
        let start = UInt64(jsb.be32(0x1C))
        guard maxlen <= jblocks, first >= 1, first < maxlen else { throw corrupt("journal geometry invalid") }
        let incompat: UInt32 = jtype == 4 ? jsb.be32(0x28) : 0
        let revokeF = incompat & 0x1 != 0, is64 = incompat & 0x2 != 0
        let csum2 = incompat & 0x8 != 0, csum3 = incompat & 0x10 != 0
        guard incompat & ~UInt32(0x1F) == 0 else {
            throw .unsupported("journal has unsupported features 0x\(String(incompat, radix: 16))")
        }
        let csum = csum2 || csum3
        if csum {
            guard jsb.u8(0x50) == 4 else { throw corrupt("journal checksum type \(jsb.u8(0x50)) unknown") }
            let c = crc32c(~0, Array(jsb[0..<1024]).zeroing(0xFC, 4))
            guard c == jsb.be32(0xFC) else { throw corrupt("journal superblock checksum mismatch") }
        }
        let jseed = crc32c(~0, jsb.sub(0x30, 16) ?? [])
        let tagBytes = csum3 ? 16 : (12 + (csum2 ? 2 : 0) - (is64 ? 0 : 4))
        let tailBytes = csum ? 4 : 0

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
                guard b.be32(0) == jMagic, b.be32(8) == seq else { break }
                switch b.be32(4) {
                case 1: // descriptor
                    if csum {
                        let t = blockSize - 4
                        if crc32c(jseed, b.zeroing(t, 4)) != b.be32(t) { break scan }
                    }
                    var off = 12
                    blk = next(blk)
                    var last = false
                    while !last && off + tagBytes <= blockSize - tailBytes {
                        let lo = UInt64(b.be32(off))
                        let flags: UInt32 = csum3 ? b.be32(off + 4) : UInt32(b.be16(off + 6))
                        var fsb = lo
                        if is64 { fsb |= UInt64(b.be32(off + 8)) << 32 }
                        let tcs: UInt32 = csum3 ? b.be32(off + 12) : UInt32(b.be16(off + 4))
                        off += tagBytes
                        if flags & 2 == 0 { off += 16 } // not SAME_UUID: uuid follows
                        last = flags & 8 != 0
                        cur.tags.append(Tag(fsBlock: fsb, jBlock: blk, escaped: flags & 1 != 0, csum: tcs))
                        blk = next(blk)
                        steps += 1
                        if cur.tags.count > 1 << 22 { throw corrupt("journal transaction too large") }
                    }
                case 2: // commit
                    if csum3 || csum2 {
                        if crc32c(jseed, b.zeroing(0x10, 4)) != b.be32(0x10) { break scan }
                    }
                    committed.append(cur)
                    seq &+= 1
                    cur = Txn(seq: seq)
                    blk = next(blk)
                case 5: // revoke
                    if csum {
                        let t = blockSize - 4
                        if crc32c(jseed, b.zeroing(t, 4)) != b.be32(t) { break scan }
                    }
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
                    if csum {
                        let c = crc32c(crc32c(jseed, beBytes32(t.seq)), data)
                        let ok = csum3 ? c == tag.csum : (c & 0xFFFF) == tag.csum
                        if !ok { result.badDataChecksums += 1; continue }
                    }
                    if tag.escaped { data.putBE32(0, jMagic) }
                    var err: Ext4Error? = nil
                    data.withUnsafeBytes { p in
                        do throws(Ext4Error) { try dev.write(at: tag.fsBlock * bs, from: p) } catch { err = error }
                    }
                    if let err { throw err }
                    result.blocksWritten += 1
                }
            }
        }
        // ---- mark the journal empty and the fs recovered ---------------------------------------
        jsb.putBE32(0x18, seq)
        jsb.putBE32(0x1C, 0)
        if csum {
            jsb.putBE32(0xFC, 0)
            jsb.putBE32(0xFC, crc32c(~0, Array(jsb[0..<1024])))
        }
        var err: Ext4Error? = nil
        let jsbPhys = try phys(0)
        jsb.withUnsafeBytes { p in
            do throws(Ext4Error) { try dev.write(at: jsbPhys * bs, from: p) } catch { err = error }
        }
        if let err { throw err }
        var sbb = [UInt8](repeating: 0, count: 1024)
        try Ext4FileSystem.readRaw(dev, at: 1024, into: &sbb)
        sbb.putLE32(0x60, sbb.le32(0x60) & ~Incompat.recover)
        if sbb.le32(0x64) & RoCompat.metadataCsum != 0 {
            sbb.putLE32(0x3FC, crc32c(~0, sbb[0..<0x3FC]))
        }
        sbb.withUnsafeBytes { p in
            do throws(Ext4Error) { try dev.write(at: 1024, from: p) } catch { err = error }
        }
        if let err { throw err }
        try dev.flush()
        return result
    }
}
