import Foundation

/// Writing extended attributes: in-inode area first, then the xattr block
/// (copy-on-write when shared, refcounts), ACLs converted to the on-disk form.
extension Ext4FileSystem {
    static func xattrEntryHash(_ name: [UInt8], _ value: [UInt8]) -> UInt32 {
        var h: UInt32 = 0
        for c in name {
            h = (h << 5) ^ (h >> 27) ^ UInt32(bitPattern: Int32(Int8(bitPattern: c)))
        }
        if !value.isEmpty {
            var v = value
            while v.count % 4 != 0 { v.append(0) }
            var i = 0
            while i < v.count {
                h = (h << 16) ^ (h >> 16) ^ v.le32(i)
                i += 4
            }
        }
        return h
    }

    static func entrySize(_ e: XattrEntry) -> Int { (16 + e.name.count + 3) & ~3 }
    static func valueSize(_ e: XattrEntry) -> Int { e.valueInum != 0 ? 0 : (e.value.count + 3) & ~3 }

    /// Lay out entries into `region` bytes; values relative to `valueBase`, entries at `entriesAt`.
    /// Returns nil when they do not fit.
    func layoutXattrs(_ list: [XattrEntry], size: Int, entriesAt: Int, valueBase: Int) -> [UInt8]? {
        var r = [UInt8](repeating: 0, count: size)
        var eoff = entriesAt
        var vend = size
        for e in list {
            let es = Ext4FileSystem.entrySize(e), vs = Ext4FileSystem.valueSize(e)
            guard eoff + es + 4 <= vend - vs else { return nil }
            vend -= vs
            r[eoff] = UInt8(e.name.count)
            r[eoff + 1] = e.index
            r.putLE16(eoff + 2, e.valueInum != 0 ? 0 : UInt16(vs == 0 ? 0 : vend - valueBase))
            r.putLE32(eoff + 4, e.valueInum)
            r.putLE32(eoff + 8, e.valueInum != 0 ? e.valueSize : UInt32(e.value.count))
            r.putLE32(eoff + 12, e.valueInum != 0 ? 0 : Ext4FileSystem.xattrEntryHash(e.name, e.value))
            r.putBytes(eoff + 16, e.name)
            if vs > 0 { r.putBytes(vend, e.value) }
            eoff += es
        }
        return r
    }

    /// Rewrite the in-inode xattr area of `m` (in memory). Throws .noSpace if it does not fit.
    func setIbody(_ m: inout MInode, _ list: [XattrEntry]) throws(Ext4Error) {
        guard sb.inodeSize > 128 else {
            if list.isEmpty { return }
            throw .noSpace
        }
        let start = 128 + m.extraIsize
        guard start + 4 <= sb.inodeSize else { if list.isEmpty { return }; throw .noSpace }
        let size = sb.inodeSize - start
        if list.isEmpty {
            m.b.zeroRange(start, size)
            return
        }
        guard let r = layoutXattrs(list, size: size, entriesAt: 4, valueBase: 4) else { throw .noSpace }
        var region = r
        region.putLE32(0, 0xEA02_0000)
        m.b.putBytes(start, region)
    }

    func ibodyList(_ m: MInode) throws(Ext4Error) -> [XattrEntry] {
        try ibodyXattrs(try rawInodeFrom(m))
    }

    func blockList(_ m: MInode) throws(Ext4Error) -> [XattrEntry] {
        try blockXattrs(try rawInodeFrom(m))
    }

    func xattrBlockBytes(_ list: [XattrEntry], blk: UInt64, refcount: UInt32) -> [UInt8]? {
        let sorted = list.sorted { a, b in
            a.index != b.index ? a.index < b.index : (a.name.count != b.name.count ? a.name.count < b.name.count
                : a.name.lexicographicallyPrecedes(b.name))
        }
        guard var r = layoutXattrs(sorted, size: blockSize, entriesAt: 32, valueBase: 0) else { return nil }
        r.putLE32(0, 0xEA02_0000)
        r.putLE32(4, refcount)
        r.putLE32(8, 1)
        var h: UInt32 = 0
        var off = 32
        for _ in sorted {
            let eh = r.le32(off + 12)
            if eh == 0 { h = 0; break }
            h = (h << 16) ^ (h >> 16) ^ eh
            off += (16 + Int(r.u8(off)) + 3) & ~3
        }
        r.putLE32(0xC, h)
        sealXattrBlock(&r, blk)
        return r
    }

    func sealXattrBlock(_ r: inout [UInt8], _ blk: UInt64) {
        guard sb.metadataCsum else { return }
        r.putLE32(0x10, 0)
        r.putLE32(0x10, crc32c(crc32c(csumSeed, leBytes64(blk)), r))
    }

    /// Replace the inode's block xattrs with `list` (copy-on-write when shared).
    func setBlockXattrs(_ m: inout MInode, _ list: [XattrEntry]) throws(Ext4Error) {
        let w = try wstate
        let old = m.fileACL(sb.is64)
        var ownsOld = false
        if old != 0 {
            // Drop our reference when shared; keep the block when we are the only user.
            ownsOld = try w.metaLocks.withLock(old) { () throws(Ext4Error) -> Bool in
                var b = try block(old)
                let rc = b.le32(4)
                if rc <= 1 { return true }
                if list.isEmpty || true {
                    b.putLE32(4, rc - 1)
                    sealXattrBlock(&b, old)
                    try writeMeta(old, b)
                }
                return false
            }
        }
        var blocksDelta: Int64 = 0
        if list.isEmpty {
            if old != 0 {
                if ownsOld { try freeBlocks(old, 1) }
                m.setFileACL(0)
                blocksDelta = -1
            }
        } else {
            var target = old
            if old == 0 || !ownsOld {
                let goal = groupStart(Int(UInt64(m.ino - 1) / UInt64(sb.inodesPerGroup)))
                guard let b = xattrBlockBytes(list, blk: 0, refcount: 1) else { throw .noSpace }
                _ = b
                (target, _) = try allocBlocks(goal: goal, count: 1)
                if old == 0 { blocksDelta = 1 }
            }
            guard let bytes = xattrBlockBytes(list, blk: target, refcount: 1) else {
                if target != old { try? freeBlocks(target, 1) }
                throw .noSpace
            }
            try writeMeta(target, bytes)
            m.setFileACL(target)
        }
        if blocksDelta != 0 {
            let ri = try rawInodeFrom(m)
            let cur = ri.pub.blocks512 / UInt64(blockSize / 512)
            try setBlocks(&m, fsBlocks: blocksDelta > 0 ? cur + 1 : (cur > 0 ? cur - 1 : 0))
        }
    }

    /// VFS ACL (version 2) -> ext4 on-disk ACL (version 1).
    func aclToDisk(_ v: [UInt8]) throws(Ext4Error) -> [UInt8] {
        guard v.count >= 4, v.le32(0) == 2, (v.count - 4) % 8 == 0 else { throw .invalid("bad ACL") }
        var out = leBytes32(1)
        var off = 4
        while off < v.count {
            let tag = v.le16(off), perm = v.le16(off + 2), id = v.le32(off + 4)
            out += [UInt8(truncatingIfNeeded: tag), UInt8(truncatingIfNeeded: tag >> 8),
                    UInt8(truncatingIfNeeded: perm), UInt8(truncatingIfNeeded: perm >> 8)]
            switch tag {
            case 0x01, 0x04, 0x10, 0x20: break
            case 0x02, 0x08: out += leBytes32(id)
            default: throw .invalid("bad ACL tag")
            }
            off += 8
        }
        return out
    }

    public func setxattr(_ ino: UInt32, name: [UInt8], value: [UInt8], flags: UInt32) throws(Ext4Error) {
        let w = try wstate
        let (idx, suffix) = try Ext4FileSystem.splitName(name)
        var val = value
        if idx == XattrIndex.aclAccess || idx == XattrIndex.aclDefault { val = try aclToDisk(value) }
        guard val.count <= 65536 else { throw .rangeTooLarge }
        try w.inodeLocks.withLock(UInt64(ino)) { () throws(Ext4Error) in
            var m = try loadInode(ino)
            try checkMutable(m)
            if m.hasInline && m.isDir { try convertInlineDir(&m) }
            var ib = try ibodyList(m)
            var bl = try blockList(m)
            let inIb = ib.contains { $0.index == idx && $0.name == suffix }
            let inBl = bl.contains { $0.index == idx && $0.name == suffix }
            if flags & 1 != 0 && (inIb || inBl) { throw .exists }
            if flags & 2 != 0 && !(inIb || inBl) { throw .noData }
            let e = XattrEntry(index: idx, name: suffix, valueInum: 0, valueSize: UInt32(val.count), value: val)
            ib.removeAll { $0.index == idx && $0.name == suffix }
            let blChanged = inBl
            bl.removeAll { $0.index == idx && $0.name == suffix }
            let saved = m
            do throws(Ext4Error) {
                try setIbody(&m, ib + [e])
                if blChanged { try setBlockXattrs(&m, bl) }
            } catch {
                guard case .noSpace = error else { throw error }
                m = saved
                try setIbody(&m, ib)
                guard xattrBlockBytes(bl + [e], blk: 0, refcount: 1) != nil else { throw .noSpace }
                try setBlockXattrs(&m, bl + [e])
            }
            m.setTime(.ctime, nowSpec())
            m.bumpVersion()
            try storeInode(m)
        }
    }

    public func removexattr(_ ino: UInt32, name: [UInt8]) throws(Ext4Error) {
        let w = try wstate
        let (idx, suffix) = try Ext4FileSystem.splitName(name)
        try w.inodeLocks.withLock(UInt64(ino)) { () throws(Ext4Error) in
            var m = try loadInode(ino)
            try checkMutable(m)
            var ib = try ibodyList(m)
            var bl = try blockList(m)
            let n = ib.count + bl.count
            ib.removeAll { $0.index == idx && $0.name == suffix }
            bl.removeAll { $0.index == idx && $0.name == suffix }
            guard ib.count + bl.count < n else { throw .noData }
            try setIbody(&m, ib)
            if bl.count != (try blockList(m)).count { try setBlockXattrs(&m, bl) }
            m.setTime(.ctime, nowSpec())
            m.bumpVersion()
            try storeInode(m)
        }
    }

    /// Drop the inline-data xattr (system.data) of `m` (in memory).
    func removeInlineData(_ m: inout MInode) throws(Ext4Error) {
        let ib = try ibodyList(m).filter { !($0.index == XattrIndex.system && $0.name == Array("data".utf8)) }
        try setIbody(&m, ib)
    }

    /// Release all xattr storage of an inode being freed.
    func freeXattrs(_ m: inout MInode) throws(Ext4Error) {
        if m.fileACL(sb.is64) != 0 { try setBlockXattrs(&m, []) }
    }

    func checkMutable(_ m: MInode) throws(Ext4Error) {
        if m.flags & (0x10 | 0x20) != 0 { throw .permission } // immutable, append-only
    }
}
