/// POSIX access control lists, as ext4 keeps them: the on-disk form of the
/// system.posix_acl_access / system.posix_acl_default xattrs (version 1,
/// short entries for the owner, owning group, mask and other), the xattr form
/// the VFS speaks (version 2, every entry 8 bytes), and the rules that keep
/// ACLs and mode bits in step: a new inode inherits its directory's default
/// ACL (masked by the requested mode, in place of the umask), chmod rewrites
/// the access ACL's owner, mask (or owning group) and other entries, and an
/// access ACL that is set sets the mode bits it implies; one that says no
/// more than the mode is not stored at all.

/// ACL entry tags (ACL_USER_OBJ ... ACL_OTHER).
enum ACLTag {
    static let userObj: UInt16 = 0x01
    static let user: UInt16 = 0x02
    static let groupObj: UInt16 = 0x04
    static let group: UInt16 = 0x08
    static let mask: UInt16 = 0x10
    static let other: UInt16 = 0x20
}

/// One entry: a tag, rwx permission bits and, for named users and groups, an id.
struct ACLEntry: Equatable, Sendable {
    var tag: UInt16
    var perm: UInt16
    var id: UInt32
}

/// A parsed POSIX ACL (entries in their stored order).
struct PosixACL: Equatable, Sendable {
    var entries: [ACLEntry]

    static let xattrVersion: UInt32 = 2
    static let diskVersion: UInt32 = 1
    /// The id of entries that name nobody (ACL_UNDEFINED_ID).
    static let undefinedID: UInt32 = 0xFFFF_FFFF

    static let accessName = Array("system.posix_acl_access".utf8)
    static let defaultName = Array("system.posix_acl_default".utf8)

    init(entries: [ACLEntry]) { self.entries = entries }

    /// The VFS xattr form: a version-2 header and 8-byte entries (tag, perm,
    /// id). nil when the length, the version or a tag is wrong.
    init?(xattr v: [UInt8]) {
        guard v.count >= 4, (v.count - 4) % 8 == 0, v.le32(0) == PosixACL.xattrVersion else { return nil }
        var out: [ACLEntry] = []
        out.reserveCapacity((v.count - 4) / 8)
        var off = 4
        while off + 8 <= v.count {
            let e = ACLEntry(tag: v.le16(off), perm: v.le16(off + 2), id: v.le32(off + 4))
            guard PosixACL.knownTag(e.tag) else { return nil }
            out.append(e)
            off += 8
        }
        entries = out
    }

    var xattr: [UInt8] {
        var out = leBytes32(PosixACL.xattrVersion)
        out.reserveCapacity(4 + 8 * entries.count)
        for e in entries {
            let id = PosixACL.named(e.tag) ? e.id : PosixACL.undefinedID
            out += le16Bytes(e.tag) + le16Bytes(e.perm) + leBytes32(id)
        }
        return out
    }

    /// The ext4 on-disk form: a version-1 header, 4-byte entries (tag, perm)
    /// for the owner, owning group, mask and other, 8-byte ones (tag, perm,
    /// id) for named users and groups. Untrusted: a bad header, a truncated
    /// entry or an unknown tag is corruption; no entry at all is no ACL.
    init(disk v: [UInt8], ino: UInt32) throws(Ext4Error) {
        guard v.count >= 4, v.le32(0) == PosixACL.diskVersion else {
            throw .corrupted("inode \(ino): bad ACL header")
        }
        var out: [ACLEntry] = []
        var off = 4
        while off < v.count {
            guard off + 4 <= v.count else { throw .corrupted("inode \(ino): truncated ACL entry") }
            let tag = v.le16(off), perm = v.le16(off + 2)
            guard PosixACL.knownTag(tag) else { throw .corrupted("inode \(ino): unknown ACL tag \(tag)") }
            var id = PosixACL.undefinedID
            if PosixACL.named(tag) {
                guard off + 8 <= v.count else { throw .corrupted("inode \(ino): truncated ACL entry") }
                id = v.le32(off + 4)
                off += 8
            } else {
                off += 4
            }
            out.append(ACLEntry(tag: tag, perm: perm, id: id))
        }
        if out.isEmpty { throw .noData }
        entries = out
    }

    var disk: [UInt8] {
        var out = leBytes32(PosixACL.diskVersion)
        for e in entries {
            out += le16Bytes(e.tag) + le16Bytes(e.perm)
            if PosixACL.named(e.tag) { out += leBytes32(e.id) }
        }
        return out
    }

    static func knownTag(_ t: UInt16) -> Bool {
        switch t {
        case ACLTag.userObj, ACLTag.user, ACLTag.groupObj, ACLTag.group, ACLTag.mask, ACLTag.other: return true
        default: return false
        }
    }

    static func named(_ t: UInt16) -> Bool { t == ACLTag.user || t == ACLTag.group }

    /// Named users or groups, or a mask: the ACL says more than the mode bits.
    var isExtended: Bool { entries.contains { PosixACL.named($0.tag) || $0.tag == ACLTag.mask } }

    /// The permission bits (0o777) the ACL implies: owner, mask (or without
    /// one the owning group), other.
    var permissionBits: UInt16 {
        var bits: UInt16 = 0
        var mask: UInt16? = nil
        for e in entries {
            let p = e.perm & 7
            switch e.tag {
            case ACLTag.userObj: bits |= p << 6
            case ACLTag.groupObj: bits |= p << 3
            case ACLTag.other: bits |= p
            case ACLTag.mask: mask = p
            default: break
            }
        }
        if let mask { bits = (bits & ~0o070) | (mask << 3) }
        return bits
    }

    /// chmod: the owner, mask (or without one the owning group) and other
    /// entries take the new permission bits.
    mutating func chmod(_ mode: UInt16) {
        let hasMask = entries.contains { $0.tag == ACLTag.mask }
        for i in entries.indices {
            switch entries[i].tag {
            case ACLTag.userObj: entries[i].perm = (mode >> 6) & 7
            case ACLTag.groupObj where !hasMask, ACLTag.mask: entries[i].perm = (mode >> 3) & 7
            case ACLTag.other: entries[i].perm = mode & 7
            default: break
            }
        }
    }

    /// A new inode's access ACL from its directory's default ACL (this one):
    /// the owner and other entries are limited by the requested mode's owner
    /// and other bits, the mask (or without one the owning group) by its group
    /// bits, and `mode`'s permission bits become what the ACL leaves. nil when
    /// the result says no more than the mode.
    func inherited(mode: inout UInt16) -> PosixACL? {
        var acl = self
        var groupAt: Int? = nil, maskAt: Int? = nil
        for i in acl.entries.indices {
            let p = acl.entries[i].perm & 7
            switch acl.entries[i].tag {
            case ACLTag.userObj:
                let np = p & ((mode >> 6) & 7)
                acl.entries[i].perm = np
                mode = (mode & ~0o700) | (np << 6)
            case ACLTag.groupObj: groupAt = i
            case ACLTag.mask: maskAt = i
            case ACLTag.other:
                let np = p & (mode & 7)
                acl.entries[i].perm = np
                mode = (mode & ~0o007) | np
            default: break
            }
        }
        if let g = maskAt ?? groupAt {
            let np = (acl.entries[g].perm & 7) & ((mode >> 3) & 7)
            acl.entries[g].perm = np
            mode = (mode & ~0o070) | (np << 3)
        }
        return acl.isExtended ? acl : nil
    }
}

func le16Bytes(_ v: UInt16) -> [UInt8] { [UInt8(truncatingIfNeeded: v), UInt8(truncatingIfNeeded: v >> 8)] }

/// What a new inode takes from its directory: the mode after the default ACL
/// (or the umask), and the ACLs to store with it.
struct InheritedACL {
    var mode: UInt16
    var access: PosixACL?
    var defaultACL: PosixACL?
}

extension Ext4FileSystem {
    /// `m`'s ACL of the given kind, nil when it has none. Caller holds its lock.
    func storedACL(_ m: MInode, default isDefault: Bool) throws(Ext4Error) -> PosixACL? {
        let idx = isDefault ? XattrIndex.aclDefault : XattrIndex.aclAccess
        guard let v = try xattrValueLocked(m, index: idx, suffix: []) else { return nil }
        do throws(Ext4Error) {
            return try diskACL(v, ino: m.ino)
        } catch .noData {
            return nil
        }
    }

    /// An ACL read from disk; corruption is reported like any other.
    func diskACL(_ v: [UInt8], ino: UInt32) throws(Ext4Error) -> PosixACL {
        do throws(Ext4Error) {
            return try PosixACL(disk: v, ino: ino)
        } catch .corrupted(let why) {
            throw corrupt(why)
        }
    }

    /// Mode and ACLs for a new inode of `mode` (type and permission bits) in
    /// directory `dir`, as the kernel's posix_acl_create does: with a default
    /// ACL on the directory the umask is not applied, the access ACL is the
    /// default masked by the mode (kept only if it says more than the mode),
    /// and a new directory also gets the default ACL. Without one the umask
    /// is. Symbolic links take neither. Caller holds the directory's lock.
    func inheritACL(from dir: MInode, mode: UInt16, umask: UInt16) throws(Ext4Error) -> InheritedACL {
        if mode & 0xF000 == 0xA000 { return InheritedACL(mode: mode) }
        guard let dacl = try storedACL(dir, default: true) else {
            return InheritedACL(mode: mode & ~(umask & 0o777))
        }
        var perm = mode & 0o777
        let access = dacl.inherited(mode: &perm)
        let isDir = mode & 0xF000 == 0x4000
        return InheritedACL(mode: (mode & ~0o777) | perm, access: access, defaultACL: isDir ? dacl : nil)
    }

    /// Store a new inode's inherited ACLs (in memory and its xattr block).
    func storeInherited(_ m: inout MInode, _ acl: InheritedACL) throws(Ext4Error) {
        if let a = acl.access { try setXattrLocked(&m, index: XattrIndex.aclAccess, suffix: [], value: a.disk, flags: 0) }
        if let d = acl.defaultACL {
            try setXattrLocked(&m, index: XattrIndex.aclDefault, suffix: [], value: d.disk, flags: 0)
        }
    }

    /// chmod with an access ACL: rewrite its owner, mask (or owning group)
    /// and other entries to `mode`. Caller holds the lock and stores `m`.
    func chmodACL(_ m: inout MInode, mode: UInt16) throws(Ext4Error) {
        guard var acl = try storedACL(m, default: false) else { return }
        let before = acl
        acl.chmod(mode)
        guard acl != before else { return }
        try setXattrLocked(&m, index: XattrIndex.aclAccess, suffix: [], value: acl.disk, flags: 0)
    }

    /// Set system.posix_acl_access from its xattr form, as the kernel's
    /// posix_acl_update_mode does: the mode takes the permission bits the ACL
    /// implies, an ACL that says no more than them is removed instead of
    /// stored, and `killSgid` (the caller is not in the file's group and has
    /// no CAP_FSETID) clears set-group-ID. Caller holds the lock and stores `m`.
    func setAccessACL(_ m: inout MInode, xattr value: [UInt8], flags: UInt32, killSgid: Bool) throws(Ext4Error) {
        guard let acl = PosixACL(xattr: value) else { throw .invalid("bad ACL") }
        if acl.isExtended {
            try setXattrLocked(&m, index: XattrIndex.aclAccess, suffix: [], value: acl.disk, flags: flags)
        } else {
            if flags & Ext4FileSystem.xattrReplace != 0 { throw .noData }  // nothing is stored to replace
            do throws(Ext4Error) {
                try removeXattrLocked(&m, index: XattrIndex.aclAccess, suffix: [])
            } catch .noData {}
        }
        var keep = m.mode & ~UInt16(0o777)
        if killSgid { keep &= ~Ext4FileSystem.modeSetGID }
        m.mode = keep | acl.permissionBits
    }

    /// A default ACL from its xattr form, in the on-disk form.
    static func defaultACLDisk(_ value: [UInt8]) throws(Ext4Error) -> [UInt8] {
        guard let acl = PosixACL(xattr: value) else { throw .invalid("bad ACL") }
        return acl.disk
    }

    /// An ACL xattr value read from disk, in the VFS xattr form.
    func aclXattr(_ v: [UInt8], ino: UInt32) throws(Ext4Error) -> [UInt8] {
        try diskACL(v, ino: ino).xattr
    }
}
