// Modifying requests. Each checks the mount is writable, enforces the inode
// flags the kernel cannot enforce for us on a classic FUSE connection
// (immutable, append-only), then calls the engine. New inodes get their owner
// and group the way ext4 does (setgid directories) and the request's umask.

import Ext4Engine
import FuseKernel
import Glibc

extension Ext4FuseFS {
    func writable() throws(FuseError) {
        if readOnly { throw .rofs }
    }

    /// The kernel keeps a reference per entry it is told about; the engine must
    /// not free or reuse an unlinked inode until the kernel forgets it.
    func referenced(_ i: Inode) -> FuseEntryOut {
        fs.retain(i.ino, count: 1)
        let e = entry(i)
        iomapNoteEntry(e)
        return e
    }

    func inodeOf(_ nodeid: UInt64) throws(FuseError) -> Inode {
        let ino = try Self.ino(nodeid)
        return try engine { () throws(Ext4Error) in try fs.inode(ino) }
    }

    /// EPERM for an immutable or append-only inode (as ext4 does for unlink,
    /// rename, link, setattr and truncation).
    func mutable(_ i: Inode) throws(FuseError) {
        if i.flags & (Self.immutableFL | Self.appendFL) != 0 { throw .perm }
    }

    /// Owner, group and mode for a new inode in `parent`, and the ACLs it
    /// inherits. With FUSE_POSIX_ACL the server inherits default ACLs (the
    /// kernel does not): a parent with a default ACL gives a new inode an access
    /// ACL made from it and masked by the requested mode, instead of the umask;
    /// a new directory also gets the default ACL itself.
    func newInode(_ c: FuseContext, parent: Inode, mode: UInt32, umask: UInt32, rdev: UInt32 = 0)
        -> (NewInode, InheritedACL?) {
        var m = mode
        let isDir = m & UInt32(S_IFMT) == UInt32(S_IFDIR)
        var gid = c.gid
        if UInt32(parent.mode) & UInt32(S_ISGID) != 0 {
            gid = parent.gid
            if isDir { m |= UInt32(S_ISGID) }
        }
        var inherited: InheritedACL? = nil
        if let dacl = defaultACL(parent.ino) {
            var perm = m & 0o777
            let access = Self.aclCreateMasked(dacl, mode: &perm)
            m = (m & ~0o777) | perm
            inherited = InheritedACL(access: access, defaultACL: isDir ? dacl : nil)
        } else {
            m &= ~(umask & 0o777)
        }
        let major = (rdev >> 8) & 0xfff, minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00)
        return (NewInode(mode: UInt16(truncatingIfNeeded: m), uid: c.uid, gid: gid, rdev: (major, minor)), inherited)
    }

    struct InheritedACL {
        var access: [UInt8]?
        var defaultACL: [UInt8]?
    }

    static let aclAccessName = Array("system.posix_acl_access".utf8)
    static let aclDefaultName = Array("system.posix_acl_default".utf8)

    /// One POSIX ACL entry of the xattr form (version 2).
    struct ACLEntry: Equatable {
        var tag: UInt16, perm: UInt16, id: UInt32
    }

    static func parseACL(_ v: [UInt8]) -> [ACLEntry]? {
        guard v.count >= 12, (v.count - 4) % 8 == 0 else { return nil }
        return v.withUnsafeBytes { raw -> [ACLEntry]? in
            var r = WireReader(raw)
            guard (try? r.u32()) == 2 else { return nil }
            var out: [ACLEntry] = []
            while let tag = try? r.u16(), let perm = try? r.u16(), let id = try? r.u32() {
                out.append(ACLEntry(tag: tag, perm: perm, id: id))
            }
            return out
        }
    }

    static func encodeACL(_ entries: [ACLEntry]) -> [UInt8] {
        var w = WireWriter(capacity: 4 + 8 * entries.count)
        w.u32(2)
        for e in entries { w.u16(e.tag); w.u16(e.perm); w.u32(e.id) }
        return w.bytes
    }

    /// The directory's default ACL (xattr form), if it has a valid one.
    func defaultACL(_ dir: UInt32) -> [UInt8]? {
        guard let v = try? fs.getxattr(dir, name: Self.aclDefaultName), Self.parseACL(v) != nil else { return nil }
        return v
    }

    /// POSIX.1e ACL creation: mask a default ACL by the requested permission
    /// bits. Owner and other entries are limited by the mode's owner and other
    /// bits, the mask (or, without one, the owning group entry) by its group
    /// bits; `perm` becomes the permissions the ACL leaves. Returns the access
    /// ACL, or nil when it says no more than the mode (no named entries, no mask).
    static func aclCreateMasked(_ acl: [UInt8], mode perm: inout UInt32) -> [UInt8]? {
        guard var e = parseACL(acl) else { return nil }
        var extended = false
        var groupObj: Int? = nil, mask: Int? = nil
        for i in e.indices {
            let p = UInt32(e[i].perm) & 7
            switch e[i].tag {
            case 0x01:  // USER_OBJ
                let np = p & ((perm >> 6) & 7)
                e[i].perm = UInt16(np); perm = (perm & ~0o700) | (np << 6)
            case 0x02, 0x08: extended = true  // USER, GROUP
            case 0x04: groupObj = i
            case 0x10: mask = i; extended = true
            case 0x20:  // OTHER
                let np = p & (perm & 7)
                e[i].perm = UInt16(np); perm = (perm & ~0o007) | np
            default: break
            }
        }
        if let g = mask ?? groupObj {
            let np = (UInt32(e[g].perm) & 7) & ((perm >> 3) & 7)
            e[g].perm = UInt16(np); perm = (perm & ~0o070) | (np << 3)
        }
        return extended ? encodeACL(e) : nil
    }

    /// Store the ACLs a new inode inherited.
    func applyInherited(_ ino: UInt32, _ acl: InheritedACL?) throws(FuseError) {
        guard let acl else { return }
        try engine { () throws(Ext4Error) in
            if let a = acl.access { try fs.setxattr(ino, name: Self.aclAccessName, value: a, flags: 0) }
            if let d = acl.defaultACL { try fs.setxattr(ino, name: Self.aclDefaultName, value: d, flags: 0) }
        }
    }

    func make(_ c: FuseContext, name: FuseName, mode: UInt32, umask: UInt32, rdev: UInt32 = 0) throws(FuseError) -> Inode {
        try writable()
        guard name.count <= 255 else { throw .nametoolong }
        let parent = try inodeOf(c.nodeid)
        let (n, acl) = newInode(c, parent: parent, mode: mode, umask: umask, rdev: rdev)
        let dir = parent.ino
        let i = try engine { () throws(Ext4Error) -> Inode in
            n.mode & 0xF000 == 0x4000 ? try fs.mkdir(parent: dir, name: name, n) : try fs.mknod(parent: dir, name: name, n)
        }
        guard acl != nil else { return i }
        try applyInherited(i.ino, acl)
        return try engine { () throws(Ext4Error) in try fs.inode(i.ino) }
    }

    public func mknod(_ c: FuseContext, name: FuseName, _ a: FuseMknodIn) throws(FuseError) -> FuseEntryOut {
        let t = a.mode & UInt32(S_IFMT)
        guard [S_IFREG, S_IFIFO, S_IFSOCK, S_IFCHR, S_IFBLK].map({ UInt32($0) }).contains(t) else { throw .inval }
        return referenced(try make(c, name: name, mode: a.mode, umask: a.umask, rdev: a.rdev))
    }

    public func mkdir(_ c: FuseContext, name: FuseName, _ a: FuseMkdirIn) throws(FuseError) -> FuseEntryOut {
        referenced(try make(c, name: name, mode: UInt32(S_IFDIR) | (a.mode & 0o7777), umask: a.umask))
    }

    public func create(_ c: FuseContext, name: FuseName, _ a: FuseCreateIn) throws(FuseError) -> (FuseEntryOut, FuseOpenOut) {
        let i = try make(c, name: name, mode: UInt32(S_IFREG) | (a.mode & 0o7777), umask: a.umask)
        fs.fileOpened(i.ino, forWriting: Self.forWriting(a.flags))
        return (referenced(i), FuseOpenOut(fh: 0, openFlags: FuseOpenOutFlags.keepCache.rawValue))
    }

    public func tmpfile(_ c: FuseContext, name: FuseName, _ a: FuseCreateIn) throws(FuseError) -> (FuseEntryOut, FuseOpenOut) {
        try writable()
        let parent = try inodeOf(c.nodeid)
        let (n, acl) = newInode(c, parent: parent, mode: UInt32(S_IFREG) | (a.mode & 0o7777), umask: a.umask)
        var i = try engine { () throws(Ext4Error) in try fs.tmpfile(parent: parent.ino, n) }
        if acl != nil {
            try applyInherited(i.ino, acl)
            let ino = i.ino
            i = try engine { () throws(Ext4Error) in try fs.inode(ino) }
        }
        fs.fileOpened(i.ino, forWriting: Self.forWriting(a.flags))
        return (referenced(i), FuseOpenOut(fh: 0, openFlags: FuseOpenOutFlags.keepCache.rawValue))
    }

    public func symlink(_ c: FuseContext, name: FuseName, target: [UInt8]) throws(FuseError) -> FuseEntryOut {
        try writable()
        guard name.count <= 255 else { throw .nametoolong }
        guard !target.isEmpty else { throw .noent }
        guard target.count < fs.blockSize else { throw .nametoolong }
        let parent = try inodeOf(c.nodeid)
        let gid = UInt32(parent.mode) & UInt32(S_ISGID) != 0 ? parent.gid : c.gid
        let i = try engine { () throws(Ext4Error) in
            try fs.symlink(parent: parent.ino, name: name, target: target, uid: c.uid, gid: gid)
        }
        return referenced(i)
    }

    public func link(_ c: FuseContext, oldNode: UInt64, name: FuseName) throws(FuseError) -> FuseEntryOut {
        try writable()
        guard name.count <= 255 else { throw .nametoolong }
        let target = try inodeOf(oldNode)
        try mutable(target)
        let dir = try Self.ino(c.nodeid)
        let i = try engine { () throws(Ext4Error) in try fs.link(target.ino, parent: dir, name: name) }
        return referenced(i)
    }

    /// The inode a name in the request's directory refers to, for flag checks.
    func child(_ dir: UInt32, _ name: FuseName) throws(FuseError) -> Inode {
        try engine { () throws(Ext4Error) in try fs.inode(try fs.lookup(dir: dir, name: name)) }
    }

    public func unlink(_ c: FuseContext, name: FuseName) throws(FuseError) {
        try writable()
        let dir = try Self.ino(c.nodeid)
        try mutable(try child(dir, name))
        _ = try engine { () throws(Ext4Error) in try fs.unlink(parent: dir, name: name) }
    }

    public func rmdir(_ c: FuseContext, name: FuseName) throws(FuseError) {
        try writable()
        let dir = try Self.ino(c.nodeid)
        try mutable(try child(dir, name))
        try engine { () throws(Ext4Error) in try fs.rmdir(parent: dir, name: name) }
    }

    public func rename(_ c: FuseContext, name: FuseName, newParent: UInt64, newName: FuseName, flags: UInt32) throws(FuseError) {
        try writable()
        guard newName.count <= 255 else { throw .nametoolong }
        guard flags & ~(FuseMiscFlags.renameNoreplace | FuseMiscFlags.renameExchange) == 0,
              flags != FuseMiscFlags.renameNoreplace | FuseMiscFlags.renameExchange
        else { throw .inval }
        let from = try Self.ino(c.nodeid), to = try Self.ino(newParent)
        try mutable(try child(from, name))
        if let existing = try? child(to, newName) { try mutable(existing) }
        try engine { () throws(Ext4Error) in
            try fs.rename(parent: from, name: name, newParent: to, newName: newName, flags: flags)
        }
    }

    public func setattr(_ c: FuseContext, _ a: FuseSetattrIn) throws(FuseError) -> FuseAttrOut {
        try writable()
        let old = try inodeOf(c.nodeid)
        let v = FuseSetattrValid(rawValue: a.valid)
        var ch = AttrChange()
        // Immutable inodes change nothing; append-only ones may not shrink.
        if old.flags & Self.immutableFL != 0 { throw .perm }
        if v.contains(.mode) { ch.mode = UInt16(truncatingIfNeeded: (UInt32(old.mode) & UInt32(S_IFMT)) | (a.mode & 0o7777)) }
        if v.contains(.uid) { ch.uid = a.uid }
        if v.contains(.gid) { ch.gid = a.gid }
        if v.contains(.size) {
            if old.flags & Self.appendFL != 0 { throw .perm }
            guard old.fileType == .regular else { throw old.fileType == .directory ? .isdir : .inval }
            ch.size = a.size
        }
        if v.contains(.atimeNow) { ch.atime = .now } else if v.contains(.atime) {
            ch.atime = .set(timestamp(a.atime, a.atimensec))
        }
        if v.contains(.mtimeNow) { ch.mtime = .now } else if v.contains(.mtime) {
            ch.mtime = .set(timestamp(a.mtime, a.mtimensec))
        }
        if v.contains(.ctime) { ch.ctime = .set(timestamp(a.ctime, a.ctimensec)) }
        if v.contains(.killSuidgid), let m = Self.suidgidKilled(ch.mode ?? old.mode) { ch.mode = m }
        let ino = old.ino
        if let size = ch.size, kernelDoesIO(ino) {
            // The kernel zeroed the partial block at the new end itself and
            // wrote the file back: only the map and the size change here.
            try engine { () throws(Ext4Error) in try fs.truncateMapped(ino, size: size) }
            ch.size = nil
            if ch.mtime == nil { ch.mtime = .now }
        }
        let i = try engine { () throws(Ext4Error) in try fs.setattr(ino, ch) }
        if let mode = ch.mode { try chmodACL(ino, mode: UInt32(mode)) }
        return FuseAttrOut(attrValid: timeout, attr: attr(i))
    }

    /// chmod with an access ACL: the ACL's owner, mask (or owning group) and
    /// other entries take the new permission bits, as the kernel's
    /// posix_acl_chmod does (with FUSE_POSIX_ACL the server keeps them in step).
    func chmodACL(_ ino: UInt32, mode: UInt32) throws(FuseError) {
        guard let v = try? fs.getxattr(ino, name: Self.aclAccessName), var e = Self.parseACL(v) else { return }
        let hasMask = e.contains { $0.tag == 0x10 }
        for i in e.indices {
            switch e[i].tag {
            case 0x01: e[i].perm = UInt16((mode >> 6) & 7)
            case 0x04 where !hasMask, 0x10: e[i].perm = UInt16((mode >> 3) & 7)
            case 0x20: e[i].perm = UInt16(mode & 7)
            default: break
            }
        }
        let nv = Self.encodeACL(e)
        guard nv != v else { return }
        try engine { () throws(Ext4Error) in try fs.setxattr(ino, name: Self.aclAccessName, value: nv, flags: 0) }
    }

    /// Setting an access ACL sets the permission bits it implies (owner, mask or
    /// owning group, other), as the kernel's posix_acl_update_mode does; an ACL
    /// that says no more than those bits is not stored at all.
    /// FUSE_SETXATTR_ACL_KILL_SGID (fuse_setxattr_in.setxattr_flags).
    static let setxattrACLKillSgid: UInt32 = 1 << 0

    /// Set the access ACL and the mode it implies, as the kernel's
    /// posix_acl_update_mode does; `killSgid` (the caller is neither in the
    /// file's group nor has CAP_FSETID, the kernel tells us) also clears S_ISGID.
    func setAccessACL(_ i: Inode, value: [UInt8], flags: UInt32, killSgid: Bool = false) throws(FuseError) {
        guard let e = Self.parseACL(value) else { throw .inval }
        var perm: UInt32 = 0
        var extended = false
        let hasMask = e.contains { $0.tag == 0x10 }
        for x in e {
            let p = UInt32(x.perm) & 7
            switch x.tag {
            case 0x01: perm |= p << 6
            case 0x04: if !hasMask { perm |= p << 3 }
            case 0x10: perm |= p << 3; extended = true
            case 0x20: perm |= p
            case 0x02, 0x08: extended = true
            default: throw .inval
            }
        }
        let ino = i.ino
        if extended {
            try engine { () throws(Ext4Error) in try fs.setxattr(ino, name: Self.aclAccessName, value: value, flags: flags) }
        } else {
            if flags & 2 != 0 { throw .nodata }  // XATTR_REPLACE of an ACL that is not stored
            do throws(Ext4Error) { try fs.removexattr(ino, name: Self.aclAccessName) } catch {
                if error != .noData { throw FuseError(error.errno) }
            }
        }
        var ch = AttrChange()
        var keep = UInt32(i.mode) & ~UInt32(0o777)
        if killSgid { keep &= ~UInt32(S_ISGID) }
        ch.mode = UInt16(truncatingIfNeeded: keep | perm)
        _ = try engine { () throws(Ext4Error) in try fs.setattr(ino, ch) }
    }

    /// A timestamp clamped to what the inodes can store, as the kernel's
    /// timestamp_truncate does: 32-bit seconds, or 34 bits with extra fields.
    func timestamp(_ sec: UInt64, _ nsec: UInt32) -> Timespec {
        let minSec = Int64(Int32.min)
        let maxSec = fs.onDiskInodeSize > 128 ? Int64(Int32.max) + 3 * (Int64(1) << 32) : Int64(Int32.max)
        let s = Int64(bitPattern: sec)
        if s < minSec { return Timespec(sec: minSec, nsec: 0) }
        if s > maxSec { return Timespec(sec: maxSec, nsec: 0) }
        return Timespec(sec: s, nsec: fs.onDiskInodeSize > 128 ? min(nsec, 999_999_999) : 0)
    }

    public func write(_ c: FuseContext, _ a: FuseWriteIn, data: [UInt8]) throws(FuseError) -> UInt32 {
        try writable()
        let i = try inodeOf(c.nodeid)
        if i.flags & Self.immutableFL != 0 { throw .perm }
        // Append-only files accept writes only at their end (the kernel passes
        // the end as the offset for O_APPEND writes).
        if i.flags & Self.appendFL != 0 && a.offset != i.size { throw .perm }
        if a.writeFlags & Self.writeKillSuidgid != 0 { try killSuidgid(i) }
        return UInt32(clamping: try writeBytes(i.ino, a.offset, data))
    }

    /// FUSE_WRITE_KILL_SUIDGID / FUSE_OPEN_KILL_SUIDGID (fuse_write_in.write_flags, fuse_open_in.open_flags).
    static let writeKillSuidgid: UInt32 = 1 << 2
    static let openKillSuidgid: UInt32 = 1 << 0

    /// With FUSE_HANDLE_KILLPRIV_V2 the kernel leaves this to us: a write or
    /// truncate by a caller without CAP_FSETID clears set-user-ID, and
    /// set-group-ID when group-execute is set, as the kernel's ext4 does.
    /// (security.capability is still removed by the kernel itself, which
    /// checks for it once per inode before marking the inode S_NOSEC.)
    func killSuidgid(_ i: Inode) throws(FuseError) {
        guard let m = Self.suidgidKilled(i.mode) else { return }
        var ch = AttrChange()
        ch.mode = m
        let ino = i.ino
        _ = try engine { () throws(Ext4Error) in try fs.setattr(ino, ch) }
    }

    /// `mode` without set-user-ID, and without set-group-ID when group-execute
    /// is set; nil when that changes nothing.
    static func suidgidKilled(_ mode: UInt16) -> UInt16? {
        var m = mode & ~UInt16(S_ISUID)
        if m & UInt16(S_IXGRP) != 0 { m &= ~UInt16(S_ISGID) }
        return m == mode ? nil : m
    }

    /// The engine's write over an array's bytes, with its error mapped.
    func writeBytes(_ ino: UInt32, _ offset: UInt64, _ data: [UInt8]) throws(FuseError) -> Int {
        var result: Result<Int, Ext4Error> = .success(0)
        data.withUnsafeBytes { buf in
            do throws(Ext4Error) { result = .success(try fs.write(ino, offset: offset, data: buf)) } catch { result = .failure(error) }
        }
        switch result {
        case .success(let n): return n
        case .failure(let e): throw FuseError(e.errno)
        }
    }

    public func fallocate(_ c: FuseContext, _ a: FuseFallocateIn) throws(FuseError) {
        try writable()
        let i = try inodeOf(c.nodeid)
        if i.flags & Self.immutableFL != 0 { throw .perm }
        if i.flags & Self.appendFL != 0 && a.mode & 0x2 != 0 { throw .perm }  // no punching append-only files
        if kernelDoesIO(i.ino) {
            // Whole blocks only: the kernel zeroes the partial edges through its page cache.
            try engine { () throws(Ext4Error) in try fs.fallocateMapped(i.ino, mode: a.mode, offset: a.offset, length: a.length) }
            return
        }
        try engine { () throws(Ext4Error) in try fs.fallocate(i.ino, mode: a.mode, offset: a.offset, length: a.length) }
    }

    public func copyFileRange(_ c: FuseContext, _ a: FuseCopyFileRangeIn) throws(FuseError) -> UInt64 {
        try writable()
        let src = try Self.ino(c.nodeid)
        let dst = try inodeOf(a.nodeidOut)
        if dst.flags & (Self.immutableFL | Self.appendFL) != 0 { throw .perm }
        var done: UInt64 = 0
        let chunk = 1 << 20
        while done < a.len {
            let want = Int(min(UInt64(chunk), a.len - done))
            let (inOff, o1) = a.offIn.addingReportingOverflow(done)
            let (outOff, o2) = a.offOut.addingReportingOverflow(done)
            guard !o1, !o2 else { throw .inval }
            let data = try engine { () throws(Ext4Error) in try fs.read(src, offset: inOff, count: want) }
            if data.isEmpty { break }
            let n = try writeBytes(dst.ino, outOff, data)
            done += UInt64(n)
            if n < want { break }
        }
        return done
    }

    public func setxattr(_ c: FuseContext, name: FuseName, value: [UInt8], flags: UInt32,
                         setxattrFlags: UInt32) throws(FuseError) {
        try writable()
        let i = try inodeOf(c.nodeid)
        try mutable(i)
        if name == Self.aclAccessName {
            return try setAccessACL(i, value: value, flags: flags,
                                    killSgid: setxattrFlags & Self.setxattrACLKillSgid != 0)
        }
        try engine { () throws(Ext4Error) in try fs.setxattr(i.ino, name: name, value: value, flags: flags) }
    }

    public func removexattr(_ c: FuseContext, name: FuseName) throws(FuseError) {
        try writable()
        let i = try inodeOf(c.nodeid)
        try mutable(i)
        try engine { () throws(Ext4Error) in try fs.removexattr(i.ino, name: name) }
    }

    public func fsync(_ c: FuseContext, _ a: FuseFsyncIn) throws(FuseError) {
        if readOnly { return }
        let ino = try Self.ino(c.nodeid)
        try engine { () throws(Ext4Error) in try fs.fsync(ino, dataOnly: a.fsyncFlags & FuseMiscFlags.fsyncFdatasync != 0) }
    }

    public func fsyncdir(_ c: FuseContext, _ a: FuseFsyncIn) throws(FuseError) {
        try fsync(c, a)
    }

    public func syncfs(_ c: FuseContext) throws(FuseError) {
        if readOnly { return }
        try engine { () throws(Ext4Error) in try fs.sync() }
    }

    public func release(_ c: FuseContext, _ a: FuseReleaseIn) {
        if readOnly { return }
        // The last writer's close trims the file's preallocation window.
        if let ino = try? Self.ino(c.nodeid) { fs.fileClosed(ino, forWriting: Self.forWriting(a.flags)) }
    }

    public func forget(_ nodeid: UInt64, nlookup: UInt64) {
        guard let ino = try? Self.ino(nodeid) else { return }
        iomapNoteForget(ino, nlookup)
        do { try fs.release(ino, count: nlookup) } catch {
            logger.error("freeing inode \(ino) after its last reference: \(error)")
        }
    }

    /// DESTROY, or the end of the session without one. fuservicemount mounts
    /// fuseblk on a block device (its loop device included): the kernel's
    /// umount sends DESTROY and returns only once it is answered, and the
    /// session answers after this returns (and after the requests that were
    /// running, RELEASEs among them, finished). So everything
    /// is done here, synchronously: orphans freed, the last transaction
    /// committed, blocks written home, the device flushed, the journal
    /// emptied and the file system marked clean (`Ext4FileSystem.unmount`,
    /// which flushes the device again after the superblock). A plain FUSE
    /// unmount sends no DESTROY, so the serving code also calls this when the
    /// session ends. Runs once.
    public func destroy() {
        guard destroyed.withLock({ d -> Bool in let first = !d; d = true; return first }) else { return }
        do {
            if !readOnly { try fs.unmount() }
            logger.info("unmounted cleanly")
        } catch {
            logger.error("unmount: \(error); run e2fsck")
        }
    }
}
