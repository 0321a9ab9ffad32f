/// Extended attributes: in-inode area, external xattr block, ea_inode values.
struct XattrEntry: Sendable {
    let index: UInt8
    let name: [UInt8]
    let valueInum: UInt32
    let valueSize: UInt32
    /// Inline value (when valueInum == 0).
    let value: [UInt8]
}

enum XattrIndex {
    static let user: UInt8 = 1
    static let aclAccess: UInt8 = 2
    static let aclDefault: UInt8 = 3
    static let trusted: UInt8 = 4
    static let security: UInt8 = 6
    static let system: UInt8 = 7
}

private let xattrSizeMax: UInt32 = 65536

private func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

extension Ext4FileSystem {
    /// Parse an entry table. `entries` is where the first entry lives,
    /// `valueBase` what value offsets are relative to, `end` the region end.
    func parseXattrEntries(_ r: [UInt8], entries: Int, valueBase: Int, end: Int,
                           what: String) throws(Ext4Error) -> [XattrEntry] {
        let end = min(end, r.count)
        var raw: [(XattrEntryRecord, [UInt8])] = []
        var off = entries
        var terminated = false
        while off + 4 <= end {
            if XattrEntryRecord.isEnd(r, at: off) { terminated = true; break }
            guard let e = try? XattrEntryRecord(decoding: r, at: off, end: end),
                  let name = try? e.name(in: r, at: off, end: end) else { break }
            raw.append((e, name))
            off += e.recordSize
            if raw.count > 65536 { break }
        }
        guard terminated else { throw corrupt("\(what): xattr entry table not terminated") }
        let entriesEnd = off + 4
        var out: [XattrEntry] = []
        out.reserveCapacity(raw.count)
        for (e, name) in raw {
            if e.valueInum != 0 {
                guard sb.has(incompat: Incompat.eaInode) else { throw corrupt("\(what): ea_inode value without feature") }
                guard e.valueSize <= xattrSizeMax else { throw corrupt("\(what): ea_inode value too large") }
                out.append(XattrEntry(index: e.nameIndex, name: name, valueInum: e.valueInum, valueSize: e.valueSize, value: []))
                continue
            }
            var value: [UInt8] = []
            if e.valueSize > 0 {
                let start = valueBase + Int(e.valueOffset)
                guard start >= entriesEnd, e.valueSize <= UInt32(clamping: end - start),
                      let v = r.sub(start, Int(e.valueSize)) else {
                    throw corrupt("\(what): xattr value out of bounds")
                }
                value = v
            }
            out.append(XattrEntry(index: e.nameIndex, name: name, valueInum: 0, valueSize: e.valueSize, value: value))
        }
        return out
    }

    func ibodyXattrs(_ ri: RawInode) throws(Ext4Error) -> [XattrEntry] {
        let b = ri.rec.b
        guard let start = ri.rec.ibodyXattrStart, b.le32(start) == XattrIbodyHeader.magicValue else { return [] }
        let first = start + XattrIbodyHeader.size
        return try parseXattrEntries(b, entries: first, valueBase: first, end: b.count,
                                     what: "inode \(ri.ino) in-inode xattrs")
    }

    func blockXattrs(_ ri: RawInode) throws(Ext4Error) -> [XattrEntry] {
        guard ri.fileACL != 0 else { return [] }
        let b = try block(ri.fileACL)
        let what = "inode \(ri.ino) xattr block \(ri.fileACL)"
        guard let h = try? XattrBlockHeader(decoding: b), h.isValid else { throw corrupt("\(what): bad header") }
        if sb.metadataCsum {
            let c = XattrBlockHeader.computedChecksum(b, block: ri.fileACL, fsSeed: csumSeed)
            guard c == h.checksum else { throw corrupt("\(what): checksum mismatch") }
        }
        let entries = try parseXattrEntries(b, entries: XattrBlockHeader.size, valueBase: 0, end: b.count, what: what)
        noteXattrBlock(ri.fileACL, hash: h.hash)
        return entries
    }

    func allXattrs(_ ri: RawInode) throws(Ext4Error) -> [XattrEntry] {
        try ibodyXattrs(ri) + blockXattrs(ri)
    }

    func xattrValue(_ e: XattrEntry, owner: UInt32) throws(Ext4Error) -> [UInt8] {
        guard e.valueInum != 0 else { return e.value }
        guard e.valueInum != owner else { throw corrupt("inode \(owner): xattr value inode points to itself") }
        let vi = try rawInode(e.valueInum)
        guard vi.flags & InodeFlag.eaInode != 0, vi.pub.fileType == .regular else {
            throw corrupt("inode \(owner): xattr value inode \(e.valueInum) is not an EA inode")
        }
        guard vi.pub.size == UInt64(e.valueSize) else {
            throw corrupt("inode \(owner): xattr value inode \(e.valueInum) size mismatch")
        }
        let v = try readData(vi, offset: 0, count: Int(e.valueSize))
        guard v.count == Int(e.valueSize) else { throw corrupt("inode \(owner): short ea_inode value") }
        return v
    }

    static func fullName(_ e: XattrEntry) -> [UInt8]? {
        switch e.index {
        case XattrIndex.user: return bytes("user.") + e.name
        case XattrIndex.trusted: return bytes("trusted.") + e.name
        case XattrIndex.security: return bytes("security.") + e.name
        case XattrIndex.aclAccess: return PosixACL.accessName
        case XattrIndex.aclDefault: return PosixACL.defaultName
        default: return nil // system.data and unknown indices are not listed (as the kernel)
        }
    }

    static func splitName(_ name: [UInt8]) throws(Ext4Error) -> (UInt8, [UInt8]) {
        if name == PosixACL.accessName { return (XattrIndex.aclAccess, []) }
        if name == PosixACL.defaultName { return (XattrIndex.aclDefault, []) }
        for (p, i) in [("user.", XattrIndex.user), ("trusted.", XattrIndex.trusted), ("security.", XattrIndex.security)] {
            let pb = bytes(p)
            if name.count >= pb.count && Array(name[0..<pb.count]) == pb {
                let rest = Array(name[pb.count...])
                if rest.isEmpty { throw .invalid("empty xattr name") }
                if rest.count > 255 { throw .rangeTooLarge }
                return (i, rest)
            }
        }
        throw .unsupported("xattr namespace not supported")
    }

    public func listxattr(_ ino: UInt32) throws(Ext4Error) -> [[UInt8]] {
        try withReadLock(ino) { () throws(Ext4Error) -> [[UInt8]] in
            let ri = try rawInode(ino)
            var out: [[UInt8]] = []
            for e in try allXattrs(ri) {
                if let n = Ext4FileSystem.fullName(e) { out.append(n) }
            }
            return out
        }
    }

    public func getxattr(_ ino: UInt32, name: [UInt8]) throws(Ext4Error) -> [UInt8] {
        try checkAlive()
        return try withReadLock(ino) { () throws(Ext4Error) -> [UInt8] in
            let (idx, suffix) = try Ext4FileSystem.splitName(name)
            let ri = try rawInode(ino)
            for e in try allXattrs(ri) where e.index == idx && e.name == suffix {
                let v = try xattrValue(e, owner: ino)
                if idx == XattrIndex.aclAccess || idx == XattrIndex.aclDefault {
                    return try aclXattr(v, ino: ino)
                }
                return v
            }
            throw .noData
        }
    }

    /// Inline data: i_block followed by the system.data value.
    func inlineData(_ ri: RawInode) throws(Ext4Error) -> [UInt8] {
        var d = ri.iBlock
        for e in try ibodyXattrs(ri) where e.index == XattrIndex.system && e.name == bytes("data") {
            guard e.valueInum == 0 else { throw corrupt("inode \(ri.ino): system.data in an EA inode") }
            d += e.value
            break
        }
        return d
    }
}
