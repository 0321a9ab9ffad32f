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
            XattrEntryRecord(nameLen: UInt8(truncatingIfNeeded: e.name.count), nameIndex: e.index,
                             valueOffset: e.valueInum != 0 ? 0 : UInt16(truncatingIfNeeded: vs == 0 ? 0 : vend - valueBase),
                             valueInum: e.valueInum,
                             valueSize: e.valueInum != 0 ? e.valueSize : UInt32(truncatingIfNeeded: e.value.count),
                             hash: e.valueInum != 0 ? 0 : Ext4FileSystem.xattrEntryHash(e.name, e.value))
                .encode(into: &r, at: eoff, name: e.name)
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
        region.putLE32(0, XattrIbodyHeader.magicValue)
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
        guard var r = layoutXattrs(sorted, size: blockSize, entriesAt: XattrBlockHeader.size, valueBase: 0) else { return nil }
        var h: UInt32 = 0
        var off = XattrBlockHeader.size
        for _ in sorted {
            guard let e = try? XattrEntryRecord(decoding: r, at: off, end: r.count), e.hash != 0 else { h = 0; break }
            h = (h << 16) ^ (h >> 16) ^ e.hash
            off += e.recordSize
        }
        XattrBlockHeader(refcount: refcount, hash: h).encode(into: &r)
        sealXattrBlock(&r, blk)
        return r
    }

    func sealXattrBlock(_ r: inout [UInt8], _ blk: UInt64) {
        guard sb.metadataCsum else { return }
        XattrBlockHeader.seal(&r, block: blk, fsSeed: csumSeed)
    }

    /// Most inodes one xattr block may serve (the kernel's limit).
    static let xattrRefcountMax: UInt32 = 1024

    /// Remember an xattr block by its header hash, so that inodes given the
    /// same attributes later share it. Caller holds the inode lock of an inode
    /// referring to `blk` (which keeps it from being freed meanwhile).
    func noteXattrBlock(_ blk: UInt64, hash: UInt32) {
        guard let w, hash != 0 else { return }
        w.xattrShare.note(blk, hash: hash)
    }

    /// An xattr block with exactly the contents `bytes` (laid out for any block
    /// number) whose refcount has room: its refcount is raised and it is
    /// returned. Caller is inside `xattrShare.withRefcountChange`.
    private func shareXattrBlock(_ bytes: [UInt8], except: UInt64) throws(Ext4Error) -> UInt64? {
        let w = try wstate
        let hash = bytes.le32(0xC)
        guard hash != 0, let candidates = w.xattrShare.candidates(hash) else { return nil }
        for blk in candidates where blk != except {
            let shared = try w.metaLocks.withLock(blk) { () throws(Ext4Error) -> Bool in
                var b = try block(blk)
                guard b.le32(0) == 0xEA02_0000, b.le32(8) == 1, b.le32(0xC) == hash,
                      b[0x20...] == bytes[0x20...] else { return false }
                let rc = b.le32(4)
                guard rc >= 1, rc < Ext4FileSystem.xattrRefcountMax else { return false }
                b.putLE32(4, rc + 1)
                sealXattrBlock(&b, blk)
                try writeMeta(blk, b)
                return true
            }
            if shared { return blk }
            if try block(blk).le32(0xC) != hash { w.xattrShare.remove(blk, hash: hash) }
        }
        return nil
    }

    /// Replace the inode's block xattrs with `list`. A block with the same
    /// contents elsewhere is shared (refcount raised) instead of writing a new
    /// one; a block this inode shares is copied on write; a block only this
    /// inode uses is rewritten in place, or freed when the list is empty.
    func setBlockXattrs(_ m: inout MInode, _ list: [XattrEntry]) throws(Ext4Error) {
        let w = try wstate
        let old = m.fileACL(sb.is64)
        try w.xattrShare.withRefcountChange { () throws(Ext4Error) in
            // Is the old block ours alone?
            var ownsOld = false
            if old != 0 {
                ownsOld = try w.metaLocks.withLock(old) { () throws(Ext4Error) -> Bool in try block(old).le32(4) <= 1 }
            }
            /// Drop this inode's reference to the old block.
            func releaseOld() throws(Ext4Error) {
                guard old != 0 else { return }
                if ownsOld {
                    w.xattrShare.forget(old)
                    try freeBlocks(old, 1)
                    return
                }
                try w.metaLocks.withLock(old) { () throws(Ext4Error) in
                    var b = try block(old)
                    let rc = b.le32(4)
                    b.putLE32(4, rc > 1 ? rc - 1 : 0)
                    sealXattrBlock(&b, old)
                    try writeMeta(old, b)
                }
            }
            if list.isEmpty {
                try releaseOld()
                if old != 0 { m.setFileACL(0) }
                return
            }
            guard let template = xattrBlockBytes(list, blk: 0, refcount: 1) else { throw .noSpace }
            if old != 0, try block(old)[0x20...] == template[0x20...] { return }  // unchanged
            if let s = try shareXattrBlock(template, except: old) {
                try releaseOld()
                m.setFileACL(s)
                return
            }
            var target = old
            if !ownsOld {
                let goal = groupStart(Int(UInt64(m.ino - 1) / UInt64(sb.inodesPerGroup)))
                (target, _) = try allocBlocks(goal: goal, count: 1)
            }
            guard let bytes = xattrBlockBytes(list, blk: target, refcount: 1) else {
                if target != old { try? freeBlocks(target, 1) }
                throw .noSpace
            }
            do throws(Ext4Error) {
                try writeMeta(target, bytes)
                if target != old { try releaseOld() } else { w.xattrShare.forget(old) }
            } catch {
                if target != old { try? freeBlocks(target, 1) }
                throw error
            }
            let hash = bytes.le32(0xC)
            if hash != 0 { w.xattrShare.note(target, hash: hash) }
            m.setFileACL(target)
        }
        let now = m.fileACL(sb.is64)
        if (old == 0) != (now == 0) {
            let cur = fsBlockCount(m)
            try setBlocks(&m, fsBlocks: now != 0 ? cur + 1 : (cur > 0 ? cur - 1 : 0))
        }
    }

    /// XATTR_CREATE, XATTR_REPLACE (setxattr flags).
    static let xattrCreate: UInt32 = 1
    static let xattrReplace: UInt32 = 2

    /// The value of `m`'s xattr (index, suffix) as stored, nil when it has
    /// none. Caller holds its lock.
    func xattrValueLocked(_ m: MInode, index: UInt8, suffix: [UInt8]) throws(Ext4Error) -> [UInt8]? {
        let ri = try rawInodeFrom(m)
        for e in try allXattrs(ri) where e.index == index && e.name == suffix {
            return try xattrValue(e, owner: m.ino)
        }
        return nil
    }

    /// Set one xattr of `m` (the stored form of its value): in the inode when
    /// it fits, else in the xattr block. Changes `m` in memory and writes the
    /// xattr block; the caller holds the lock, checks the inode's flags and
    /// stores `m`.
    func setXattrLocked(_ m: inout MInode, index idx: UInt8, suffix: [UInt8], value val: [UInt8],
                        flags: UInt32) throws(Ext4Error) {
        guard val.count <= 65536 else { throw .rangeTooLarge }
        if m.hasInline && m.isDir { try convertInlineDir(&m) }
        var ib = try ibodyList(m)
        var bl = try blockList(m)
        let inIb = ib.contains { $0.index == idx && $0.name == suffix }
        let inBl = bl.contains { $0.index == idx && $0.name == suffix }
        if flags & Ext4FileSystem.xattrCreate != 0 && (inIb || inBl) { throw .exists }
        if flags & Ext4FileSystem.xattrReplace != 0 && !(inIb || inBl) { throw .noData }
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
    }

    /// Remove one xattr of `m`; `.noData` when it has none. Same contract as `setXattrLocked`.
    func removeXattrLocked(_ m: inout MInode, index idx: UInt8, suffix: [UInt8]) throws(Ext4Error) {
        var ib = try ibodyList(m)
        var bl = try blockList(m)
        let n = ib.count + bl.count
        ib.removeAll { $0.index == idx && $0.name == suffix }
        bl.removeAll { $0.index == idx && $0.name == suffix }
        guard ib.count + bl.count < n else { throw .noData }
        try setIbody(&m, ib)
        if bl.count != (try blockList(m)).count { try setBlockXattrs(&m, bl) }
    }

    /// SETXATTR as one operation. system.posix_acl_access is an ACL in the
    /// VFS xattr form and sets the mode bits it implies (ACL.swift;
    /// `killSgid` also clears set-group-ID); system.posix_acl_default is
    /// stored in the on-disk ACL form. Immutable and append-only inodes refuse.
    public func setxattr(_ ino: UInt32, name: [UInt8], value: [UInt8], flags: UInt32,
                         killSgid: Bool = false) throws(Ext4Error) {
        try withHandle { () throws(Ext4Error) -> Void in
            let w = try wstate
            let (idx, suffix) = try Ext4FileSystem.splitName(name)
            var val = value
            if idx == XattrIndex.aclDefault { val = try Ext4FileSystem.defaultACLDisk(value) }
            guard val.count <= 65536 else { throw .rangeTooLarge }
            try w.inodeLocks.withLock(UInt64(ino)) { () throws(Ext4Error) in
                var m = try loadInode(ino)
                try m.mayChangeXattrs()
                if idx == XattrIndex.aclAccess {
                    try setAccessACL(&m, xattr: value, flags: flags, killSgid: killSgid)
                } else {
                    try setXattrLocked(&m, index: idx, suffix: suffix, value: val, flags: flags)
                }
                m.setTime(.ctime, nowSpec())
                m.bumpVersion()
                try storeInode(m)
            }
        }
    }

    public func removexattr(_ ino: UInt32, name: [UInt8]) throws(Ext4Error) {
        try withHandle { () throws(Ext4Error) -> Void in
            let w = try wstate
            let (idx, suffix) = try Ext4FileSystem.splitName(name)
            try w.inodeLocks.withLock(UInt64(ino)) { () throws(Ext4Error) in
                var m = try loadInode(ino)
                try m.mayChangeXattrs()
                try removeXattrLocked(&m, index: idx, suffix: suffix)
                m.setTime(.ctime, nowSpec())
                m.bumpVersion()
                try storeInode(m)
            }
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
}
