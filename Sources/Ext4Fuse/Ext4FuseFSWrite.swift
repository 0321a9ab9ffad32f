// Modifying requests. Each checks the mount is writable, translates the
// request, and makes one engine operation shaped like it (one transaction
// handle, one inode-lock section): the ext4 rules (inode flags, ACLs, set-ID
// bits, ownership of new inodes) are the engine's.

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

    /// A new inode as the request describes it: made for the calling process,
    /// so the engine applies the directory's set-group-ID, its default ACL
    /// (with FUSE_POSIX_ACL that is the server's job) or the request's umask.
    func newInode(_ c: FuseContext, mode: UInt32, umask: UInt32, rdev: UInt32 = 0) -> NewInode {
        // Linux's new_decode_dev.
        let major = (rdev >> 8) & 0xfff, minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00)
        return NewInode(mode: UInt16(truncatingIfNeeded: mode), uid: c.uid, gid: c.gid, rdev: (major, minor),
                        umask: UInt16(truncatingIfNeeded: umask & 0o777))
    }

    public func mknod(_ c: FuseContext, name: FuseName, _ a: FuseMknodIn) throws(FuseError) -> FuseEntryOut {
        let t = a.mode & UInt32(S_IFMT)
        guard [S_IFREG, S_IFIFO, S_IFSOCK, S_IFCHR, S_IFBLK].map({ UInt32($0) }).contains(t) else { throw .inval }
        try writable()
        let dir = try Self.ino(c.nodeid)
        let n = newInode(c, mode: a.mode, umask: a.umask, rdev: a.rdev)
        return referenced(try engine { () throws(Ext4Error) in try fs.mknod(parent: dir, name: name, n) })
    }

    public func mkdir(_ c: FuseContext, name: FuseName, _ a: FuseMkdirIn) throws(FuseError) -> FuseEntryOut {
        try writable()
        let dir = try Self.ino(c.nodeid)
        let n = newInode(c, mode: UInt32(S_IFDIR) | (a.mode & 0o7777), umask: a.umask)
        return referenced(try engine { () throws(Ext4Error) in try fs.mkdir(parent: dir, name: name, n) })
    }

    public func create(_ c: FuseContext, name: FuseName, _ a: FuseCreateIn) throws(FuseError) -> (FuseEntryOut, FuseOpenOut) {
        try writable()
        let dir = try Self.ino(c.nodeid)
        let n = newInode(c, mode: UInt32(S_IFREG) | (a.mode & 0o7777), umask: a.umask)
        let i = try engine { () throws(Ext4Error) in try fs.mknod(parent: dir, name: name, n) }
        fs.fileOpened(i.ino, forWriting: Self.forWriting(a.flags))
        return (referenced(i), FuseOpenOut(fh: 0, openFlags: FuseOpenOutFlags.keepCache.rawValue))
    }

    public func tmpfile(_ c: FuseContext, name: FuseName, _ a: FuseCreateIn) throws(FuseError) -> (FuseEntryOut, FuseOpenOut) {
        try writable()
        let dir = try Self.ino(c.nodeid)
        let n = newInode(c, mode: UInt32(S_IFREG) | (a.mode & 0o7777), umask: a.umask)
        let i = try engine { () throws(Ext4Error) in try fs.tmpfile(parent: dir, n) }
        fs.fileOpened(i.ino, forWriting: Self.forWriting(a.flags))
        return (referenced(i), FuseOpenOut(fh: 0, openFlags: FuseOpenOutFlags.keepCache.rawValue))
    }

    public func symlink(_ c: FuseContext, name: FuseName, target: [UInt8]) throws(FuseError) -> FuseEntryOut {
        try writable()
        guard !target.isEmpty else { throw .noent }
        let dir = try Self.ino(c.nodeid)
        return referenced(try engine { () throws(Ext4Error) in
            try fs.symlink(parent: dir, name: name, target: target, uid: c.uid, gid: c.gid, asCaller: true)
        })
    }

    public func link(_ c: FuseContext, oldNode: UInt64, name: FuseName) throws(FuseError) -> FuseEntryOut {
        try writable()
        let target = try Self.ino(oldNode), dir = try Self.ino(c.nodeid)
        return referenced(try engine { () throws(Ext4Error) in try fs.link(target, parent: dir, name: name) })
    }

    public func unlink(_ c: FuseContext, name: FuseName) throws(FuseError) {
        try writable()
        let dir = try Self.ino(c.nodeid)
        _ = try engine { () throws(Ext4Error) in try fs.unlink(parent: dir, name: name) }
    }

    public func rmdir(_ c: FuseContext, name: FuseName) throws(FuseError) {
        try writable()
        let dir = try Self.ino(c.nodeid)
        try engine { () throws(Ext4Error) in try fs.rmdir(parent: dir, name: name) }
    }

    public func rename(_ c: FuseContext, name: FuseName, newParent: UInt64, newName: FuseName, flags: UInt32) throws(FuseError) {
        try writable()
        guard flags & ~(FuseMiscFlags.renameNoreplace | FuseMiscFlags.renameExchange | FuseMiscFlags.renameWhiteout) == 0
        else { throw .inval }
        let from = try Self.ino(c.nodeid), to = try Self.ino(newParent)
        // A whiteout belongs to the caller, as the VFS makes it.
        try engine { () throws(Ext4Error) in
            try fs.rename(parent: from, name: name, newParent: to, newName: newName, flags: flags, owner: (c.uid, c.gid))
        }
    }

    public func setattr(_ c: FuseContext, _ a: FuseSetattrIn) throws(FuseError) -> FuseAttrOut {
        try writable()
        let ino = try Self.ino(c.nodeid)
        let v = FuseSetattrValid(rawValue: a.valid)
        var ch = AttrChange()
        if v.contains(.mode) { ch.mode = UInt16(truncatingIfNeeded: a.mode & 0o7777) }
        if v.contains(.uid) { ch.uid = a.uid }
        if v.contains(.gid) { ch.gid = a.gid }
        if v.contains(.size) { ch.size = a.size }
        let time = { (sec: UInt64, nsec: UInt32) in TimeChange.set(Timespec(sec: Int64(bitPattern: sec), nsec: nsec)) }
        if v.contains(.atimeNow) { ch.atime = .now } else if v.contains(.atime) { ch.atime = time(a.atime, a.atimensec) }
        if v.contains(.mtimeNow) { ch.mtime = .now } else if v.contains(.mtime) { ch.mtime = time(a.mtime, a.mtimensec) }
        if v.contains(.ctime) { ch.ctime = time(a.ctime, a.ctimensec) }
        // FATTR_KILL_SUIDGID: a chown or truncate by a caller without CAP_FSETID.
        ch.killSuidgid = v.contains(.killSuidgid)
        // With the writeback cache the kernel writes back the mtime (and
        // ctime) of the writes it absorbed, no atime, not "now": not a utimes.
        ch.cachedTimes = writebackCacheOn && v.contains(.mtime) && !v.contains(.mtimeNow) && !v.contains(.atime)
        // An iomap inode: the kernel zeroed the partial block at the new end
        // itself and wrote the file back; only the map and the size change.
        ch.mapOnly = ch.size != nil && kernelDoesIO(ino)
        let i = try engine { () throws(Ext4Error) in try fs.setattr(ino, ch) }
        return FuseAttrOut(attrValid: timeout, attr: attr(i))
    }

    public func write(_ c: FuseContext, _ a: FuseWriteIn, data: UnsafeRawBufferPointer) throws(FuseError) -> UInt32 {
        try writable()
        let ino = try Self.ino(c.nodeid)
        // FUSE_WRITE_KILL_SUIDGID: with FUSE_HANDLE_KILLPRIV_V2 the kernel
        // leaves clearing the set-ID bits of a writer without CAP_FSETID to us.
        // (It still removes security.capability itself.)
        let kill = a.writeFlags & FuseMiscFlags.writeKillSuidgid != 0
        let done = try engine { () throws(Ext4Error) in
            try fs.writeRequest(ino, offset: a.offset, data: data, killSuidgid: kill, callerGid: c.gid)
        }
        // The kernel keeps the mode it cached; with the bits gone, drop it.
        if done.clearedSetID { attributesChanged(c.nodeid) }
        return UInt32(clamping: done.count)
    }

    public func fallocate(_ c: FuseContext, _ a: FuseFallocateIn) throws(FuseError) {
        try writable()
        let ino = try Self.ino(c.nodeid)
        // An iomap inode: whole blocks only, the kernel zeroes the partial
        // edges through its page cache.
        let mapOnly = kernelDoesIO(ino)
        // FUSE_FALLOCATE carries no kill flag; as for the kernel's ext4, a
        // caller without CAP_FSETID (here: not root) loses the set-ID bits.
        let cleared = try engine { () throws(Ext4Error) in
            try fs.fallocate(ino, mode: a.mode, offset: a.offset, length: a.length, mapOnly: mapOnly,
                             killSuidgid: c.uid != 0, callerGid: c.gid)
        }
        if cleared { attributesChanged(c.nodeid) }
    }

    public func copyFileRange(_ c: FuseContext, _ a: FuseCopyFileRangeIn) throws(FuseError) -> UInt64 {
        try writable()
        let src = try Self.ino(c.nodeid), dst = try Self.ino(a.nodeidOut)
        return try engine { () throws(Ext4Error) in
            try fs.copyRange(from: src, at: a.offIn, to: dst, at: a.offOut, length: a.len)
        }
    }

    public func setxattr(_ c: FuseContext, name: FuseName, value: [UInt8], flags: UInt32,
                         setxattrFlags: UInt32) throws(FuseError) {
        try writable()
        let ino = try Self.ino(c.nodeid)
        // FUSE_SETXATTR_ACL_KILL_SGID: the caller is neither in the file's
        // group nor has CAP_FSETID; an access ACL set then clears set-group-ID.
        let killSgid = setxattrFlags & FuseMiscFlags.setxattrACLKillSgid != 0
        try engine { () throws(Ext4Error) in
            try fs.setxattr(ino, name: name, value: value, flags: flags, killSgid: killSgid)
        }
    }

    public func removexattr(_ c: FuseContext, name: FuseName) throws(FuseError) {
        try writable()
        let ino = try Self.ino(c.nodeid)
        try engine { () throws(Ext4Error) in try fs.removexattr(ino, name: name) }
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
        if fs.isShutDown {
            logger.warning("unmounted after a shutdown: the journal is replayed at the next mount")
            return
        }
        do {
            if !readOnly { try fs.unmount() }
            logger.info("unmounted cleanly")
        } catch {
            logger.error("unmount: \(error); run e2fsck")
        }
    }
}
