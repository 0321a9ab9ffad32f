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

private let xattrMagic: UInt32 = 0xEA02_0000
private let xattrSizeMax: UInt32 = 65536

private func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

extension Ext4FileSystem {
    /// Parse an entry table. `entries` is where the first entry lives,
    /// `valueBase` what value offsets are relative to, `end` the region end.
    func parseXattrEntries(_ r: [UInt8], entries: Int, valueBase: Int, end: Int,
                           what: String) throws(Ext4Error) -> [XattrEntry] {
        var raw: [(UInt8, [UInt8], Int, UInt32, UInt32)] = []
        var off = entries
        var terminated = false
        while off + 4 <= end {
            if r.le32(off) == 0 { terminated = true; break }
            guard off + 16 <= end else { break }
            let nameLen = Int(r.u8(off))
            let idx = r.u8(off + 1)
            let voffs = Int(r.le16(off + 2))
            let inum = r.le32(off + 4)
            let vsize = r.le32(off + 8)
            guard off + 16 + nameLen <= end, let name = r.sub(off + 16, nameLen) else { break }
            raw.append((idx, name, voffs, inum, vsize))
            off += (16 + nameLen + 3) & ~3
            if raw.count > 65536 { break }
        }
        guard terminated else { throw corrupt("\(what): xattr entry table not terminated") }
        let entriesEnd = off + 4
        var out: [XattrEntry] = []
        out.reserveCapacity(raw.count)
        for (idx, name, voffs, inum, vsize) in raw {
            if inum != 0 {
                guard sb.has(incompat: Incompat.eaInode) else { throw corrupt("\(what): ea_inode value without feature") }
                guard vsize <= xattrSizeMax else { throw corrupt("\(what): ea_inode value too large") }
                out.append(XattrEntry(index: idx, name: name, valueInum: inum, valueSize: vsize, value: []))
                continue
            }
            var value: [UInt8] = []
            if vsize > 0 {
                let start = valueBase + voffs
                guard start >= entriesEnd, Int(vsize) <= end - start, let v = r.sub(start, Int(vsize)) else {
                    throw corrupt("\(what): xattr value out of bounds")
                }
                value = v
            }
            out.append(XattrEntry(index: idx, name: name, valueInum: 0, valueSize: vsize, value: value))
        }
        return out
    }

    func ibodyXattrs(_ ri: RawInode) throws(Ext4Error) -> [XattrEntry] {
        guard sb.inodeSize > 128 else { return [] }
        let start = 128 + ri.extraIsize
        guard start + 4 <= ri.bytes.count, ri.bytes.le32(start) == xattrMagic else { return [] }
        return try parseXattrEntries(ri.bytes, entries: start + 4, valueBase: start + 4, end: ri.bytes.count,
                                     what: "inode \(ri.ino) in-inode xattrs")
    }

    func blockXattrs(_ ri: RawInode) throws(Ext4Error) -> [XattrEntry] {
        guard ri.fileACL != 0 else { return [] }
        let b = try block(ri.fileACL)
        let what = "inode \(ri.ino) xattr block \(ri.fileACL)"
        guard b.le32(0) == xattrMagic, b.le32(8) == 1 else { throw corrupt("\(what): bad header") }
        if sb.metadataCsum {
            let c = crc32c(crc32c(csumSeed, leBytes64(ri.fileACL)), b.zeroing(0x10, 4))
            guard c == b.le32(0x10) else { throw corrupt("\(what): checksum mismatch") }
        }
        let entries = try parseXattrEntries(b, entries: 32, valueBase: 0, end: b.count, what: what)
        noteXattrBlock(ri.fileACL, hash: b.le32(0xC))
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
        try withReadLock(ino) { () throws(Ext4Error) -> [UInt8] in
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
