import Foundation

public struct NewInode: Sendable {
    public var mode: UInt16
    public var uid: UInt32
    public var gid: UInt32
    public var rdev: (major: UInt32, minor: UInt32)
    /// The creating process's umask when the inode is made as the kernel
    /// makes one for a process: it takes the group of a set-group-ID
    /// directory (a new directory also its set-group-ID bit) and the
    /// directory's default ACL, or without one the umask (ACL.swift). nil:
    /// exactly the mode and owner given.
    public var umask: UInt16?
    public init(mode: UInt16, uid: UInt32, gid: UInt32, rdev: (major: UInt32, minor: UInt32) = (0, 0),
                umask: UInt16? = nil) {
        self.mode = mode; self.uid = uid; self.gid = gid; self.rdev = rdev; self.umask = umask
    }
}

let linkMax: UInt16 = 65000

/// Namespace operations: create, link, unlink, rmdir, rename, tmpfile.
extension Ext4FileSystem {
    func checkName(_ name: [UInt8]) throws(Ext4Error) {
        guard !name.isEmpty else { throw .invalid("empty name") }
        guard name.count <= 255 else { throw .nameTooLong }
        guard !name.contains(0), !name.contains(0x2F) else { throw .invalid("bad name") }
    }
    static func isDots(_ n: [UInt8]) -> Bool { n == [0x2E] || n == [0x2E, 0x2E] }

    func dirIncLinks(_ m: inout MInode) throws(Ext4Error) {
        if m.links == 1 { return }
        if m.links >= linkMax - 1 {
            guard sb.has(roCompat: RoCompat.dirNlink) else { throw .tooManyLinks }
            m.links = 1
            return
        }
        m.links += 1
    }

    func dirDecLinks(_ m: inout MInode) {
        if m.links > 2 { m.links -= 1 }
    }

    func touchDir(_ m: inout MInode, _ now: Timespec) {
        m.setTime(.mtime, now); m.setTime(.ctime, now); m.bumpVersion()
    }

    /// Build and store a new inode (not yet linked anywhere).
    /// `parentFlags`: the directory's i_flags, which the new inode inherits from.
    func makeInode(parent: UInt32, parentFlags: UInt32, mode: UInt16, uid: UInt32, gid: UInt32, rdev: (UInt32, UInt32),
                   symlink: [UInt8]?, links: UInt16, now: Timespec) throws(Ext4Error) -> MInode {
        let type = mode & 0xF000
        let isDir = type == 0x4000
        switch type {
        case 0x8000, 0x4000, 0xA000, 0x2000, 0x6000, 0x1000, 0xC000: break
        default: throw .invalid("bad file type")
        }
        let ino = try allocInode(parent: parent, isDir: isDir)
        var m = newInodeBytes(ino, mode: mode, uid: uid, gid: gid, now: now)
        m.flags |= InodeFlag.inherited(from: parentFlags, mode: mode)
        m.links = links
        let ext = sb.has(incompat: Incompat.extents)
        do throws(Ext4Error) {
            switch type {
            case 0x8000:
                if ext { m.flags |= InodeFlag.extents; m.iBlock = extentRootEmpty() }
            case 0x4000:
                if ext { m.flags |= InodeFlag.extents; m.iBlock = extentRootEmpty() }
                try appendDirBlock(&m, firstBlock: dotBlock(m, parent: parent))
            case 0xA000:
                guard let t = symlink, !t.isEmpty else { throw .invalid("empty symlink") }
                guard t.count < blockSize else { throw .nameTooLong }
                if t.count < 60 {
                    m.iBlock = t
                } else {
                    if ext { m.flags |= InodeFlag.extents; m.iBlock = extentRootEmpty() }
                    try withBytes(t) { (p) throws(Ext4Error) in try writeData(&m, offset: 0, p) }
                }
                m.size = UInt64(t.count)
            case 0x2000, 0x6000:
                m.setDeviceNumber(major: rdev.0, minor: rdev.1)
            default: break
            }
            try storeInode(m)
        } catch {
            var mm = m
            try? releaseInodeStorage(&mm)
            try? freeInodeBit(ino, isDir: isDir)
            throw error
        }
        return m
    }

    func hasDataBlocks(_ m: MInode) throws(Ext4Error) -> Bool {
        switch m.fileType {
        case .regular, .directory: return true
        case .symlink:
            let ri = try rawInodeFrom(m)
            return !isFastSymlink(ri)
        default: return false
        }
    }

    /// Free blocks and xattrs of an inode (in memory + disk); does not free the inode number.
    func releaseInodeStorage(_ m: inout MInode) throws(Ext4Error) {
        try dropPreallocation(m.ino)
        if let w { w.preallocLock.with { _ = w.looseTrees.remove(m.ino) } }
        if m.hasInline {
            try removeInlineData(&m)
        } else if try hasDataBlocks(m) {
            let exts = try allExtents(m)
            let meta = try mapMetaBlocks(m)
            for x in exts { try freeBlocks(x.physical, x.length) }
            for b in meta { try freeBlocks(b, 1) }
            m.iBlock = m.hasExtents ? extentRootEmpty() : []
        }
        try freeXattrs(&m)
        try setBlocks(&m, fsBlocks: 0)
        m.size = 0
    }

    /// Free an unlinked, unreferenced inode completely (caller holds its lock):
    /// its storage, its record marked deleted (links 0, dtime set), its number.
    /// Also the undo of `makeInode` when the operation fails afterwards: a
    /// record left live with its bit clear is an "unattached inode" and a
    /// bitmap difference to e2fsck.
    func destroyInode(_ m: inout MInode) throws(Ext4Error) {
        try releaseInodeStorage(&m)
        m.links = 0
        m.dtime = UInt32(truncatingIfNeeded: nowSpec().sec)
        try storeInode(m)
        try freeInodeBit(m.ino, isDir: m.isDir)
    }

    /// Link count of `m` reached zero: free now or park on the orphan list.
    func dropInode(_ m: inout MInode) throws(Ext4Error) {
        let w = try wstate
        let referenced = w.orphans.isReferenced(m.ino)
        if referenced {
            try addOrphan(m.ino)
            try storeInode(m)
        } else {
            if w.orphans.isOrphan(m.ino) { try removeOrphan(m.ino); m.dtime = 0 }
            try destroyInode(&m)
        }
    }

    func publicInode(_ m: MInode) throws(Ext4Error) -> Inode {
        try rawInode(m.ino, checkLive: false).pub
    }

    /// Owner, group and mode of a new inode in `pm`, and the ACLs it
    /// inherits, for a process with `umask` (nil: as given).
    func newInodeOwnership(_ pm: MInode, mode: UInt16, gid: UInt32, umask: UInt16?) throws(Ext4Error)
        -> (mode: UInt16, gid: UInt32, acl: InheritedACL?) {
        guard let umask else { return (mode, gid, nil) }
        var mode = mode, gid = gid
        if pm.mode & Ext4FileSystem.modeSetGID != 0 {
            gid = pm.gid
            if mode & 0xF000 == 0x4000 { mode |= Ext4FileSystem.modeSetGID }
        }
        let acl = try inheritACL(from: pm, mode: mode, umask: umask)
        return (acl.mode, gid, acl)
    }

    /// S_ISUID, S_ISGID.
    static let modeSetUID: UInt16 = 0o4000
    static let modeSetGID: UInt16 = 0o2000

    /// Make a new inode and its name in `parent` as one operation, under the
    /// parent's lock: the inode gets its inherited ACLs before the name is
    /// added, so nobody ever sees it without them.
    func createEntry(parent: UInt32, name: [UInt8], mode: UInt16, uid: UInt32, gid: UInt32,
                     rdev: (UInt32, UInt32), symlink: [UInt8]?, umask: UInt16?) throws(Ext4Error) -> Inode {
        let w = try wstate
        try checkName(name)
        if Ext4FileSystem.isDots(name) { throw .exists }
        return try w.inodeLocks.withLock(UInt64(parent)) { () throws(Ext4Error) -> Inode in
            var pm = try loadInode(parent)
            guard pm.isDir else { throw .notDirectory }
            try pm.mayAddEntry()
            if let _ = try? lookup(dir: parent, name: name) { throw .exists }
            let isDir = mode & 0xF000 == 0x4000
            if isDir && pm.links >= linkMax - 1 && !sb.has(roCompat: RoCompat.dirNlink) { throw .tooManyLinks }
            let own = try newInodeOwnership(pm, mode: mode, gid: gid, umask: umask)
            let now = nowSpec()
            var m = try makeInode(parent: parent, parentFlags: pm.flags, mode: own.mode, uid: uid, gid: own.gid, rdev: rdev, symlink: symlink,
                                  links: isDir ? 2 : 1, now: now)
            do throws(Ext4Error) {
                if let acl = own.acl, acl.access != nil || acl.defaultACL != nil {
                    try storeInherited(&m, acl)
                    try storeInode(m)
                }
                try dirAdd(&pm, name: name, ino: m.ino, ftype: ftypeCode(own.mode))
            } catch {
                try? destroyInode(&m)
                try storeInode(pm)
                throw error
            }
            if isDir { try dirIncLinks(&pm) }
            touchDir(&pm, now)
            try storeInode(pm)
            return try publicInode(m)
        }
    }

    public func mknod(parent: UInt32, name: [UInt8], _ n: NewInode) throws(Ext4Error) -> Inode {
        return try withHandle { () throws(Ext4Error) -> Inode in
            let t = n.mode & 0xF000
            guard t != 0x4000, t != 0xA000 else { throw .invalid("use mkdir/symlink") }
            return try createEntry(parent: parent, name: name, mode: t == 0 ? n.mode | 0x8000 : n.mode, uid: n.uid, gid: n.gid,
                                   rdev: (n.rdev.major, n.rdev.minor), symlink: nil, umask: n.umask)
        }
    }

    public func mkdir(parent: UInt32, name: [UInt8], _ n: NewInode) throws(Ext4Error) -> Inode {
        return try withHandle { () throws(Ext4Error) -> Inode in
            try createEntry(parent: parent, name: name, mode: 0x4000 | (n.mode & 0x0FFF), uid: n.uid, gid: n.gid,
                            rdev: (0, 0), symlink: nil, umask: n.umask)
        }
    }

    /// `asCaller`: as for a process (the group of a set-group-ID directory).
    public func symlink(parent: UInt32, name: [UInt8], target: [UInt8], uid: UInt32, gid: UInt32,
                        asCaller: Bool = false) throws(Ext4Error) -> Inode {
        return try withHandle { () throws(Ext4Error) -> Inode in
            guard !target.contains(0) else { throw .invalid("NUL in symlink") }
            guard target.count < blockSize, target.count < 4096 else { throw .nameTooLong }
            return try createEntry(parent: parent, name: name, mode: 0xA1FF, uid: uid, gid: gid, rdev: (0, 0), symlink: target,
                                   umask: asCaller ? 0 : nil)
        }
    }

    /// An unnamed regular file in `parent` (O_TMPFILE), on the orphan list
    /// until it is linked or forgotten; one operation under the parent's lock.
    public func tmpfile(parent: UInt32, _ n: NewInode) throws(Ext4Error) -> Inode {
        return try withHandle { () throws(Ext4Error) -> Inode in
            let w = try wstate
            let mode = (n.mode & 0xF000) == 0 ? n.mode | 0x8000 : n.mode
            guard mode & 0xF000 == 0x8000 else { throw .invalid("tmpfile must be regular") }
            return try w.inodeLocks.withLock(UInt64(parent)) { () throws(Ext4Error) -> Inode in
                let pm = try loadInode(parent)
                guard pm.isDir else { throw .notDirectory }
                try pm.mayAddEntry()
                let own = try newInodeOwnership(pm, mode: mode, gid: n.gid, umask: n.umask)
                var m = try makeInode(parent: parent, parentFlags: pm.flags, mode: own.mode, uid: n.uid, gid: own.gid, rdev: (0, 0), symlink: nil,
                                      links: 0, now: nowSpec())
                do throws(Ext4Error) {
                    if let acl = own.acl { try storeInherited(&m, acl) }
                    try addOrphan(m.ino)
                    try storeInode(m)
                } catch {
                    if w.orphans.isOrphan(m.ino) { try? removeOrphan(m.ino) }
                    try? destroyInode(&m)
                    throw error
                }
                return try publicInode(m)
            }
        }
    }

    public func link(_ ino: UInt32, parent: UInt32, name: [UInt8]) throws(Ext4Error) -> Inode {
        return try withHandle { () throws(Ext4Error) -> Inode in
            let w = try wstate
            try checkName(name)
            if Ext4FileSystem.isDots(name) { throw .exists }
            return try w.inodeLocks.withLocks([UInt64(parent), UInt64(ino)]) { () throws(Ext4Error) -> Inode in
                var pm = try loadInode(parent)
                guard pm.isDir else { throw .notDirectory }
                try pm.mayAddEntry()
                var m = try loadInode(ino, checkLive: false)
                guard !m.isDir else { throw .permission }
                try m.mayLink()
                guard m.links < linkMax else { throw .tooManyLinks }
                if m.links == 0 && !w.orphans.isOrphan(ino) { throw .notFound }
                if let _ = try? lookup(dir: parent, name: name) { throw .exists }
                try dirAdd(&pm, name: name, ino: ino, ftype: ftypeCode(m.mode))
                let now = nowSpec()
                if m.links == 0 { try removeOrphan(ino); m.dtime = 0 }
                m.links += 1
                m.setTime(.ctime, now)
                m.bumpVersion()
                touchDir(&pm, now)
                try storeInode(pm)
                try storeInode(m)
                return try publicInode(m)
            }
        }
    }

    /// Lock `parent` and the inode its `name` points to, verifying the entry under the locks.
    func withEntry<R>(parent: UInt32, name: [UInt8],
                      _ body: (UInt32) throws(Ext4Error) -> R) throws(Ext4Error) -> R {
        let w = try wstate
        for _ in 0..<100 {
            let child = try lookup(dir: parent, name: name)
            let r: R? = try w.inodeLocks.withLocks([UInt64(parent), UInt64(child)]) { () throws(Ext4Error) -> R? in
                guard (try? lookup(dir: parent, name: name)) == child else { return nil }
                return try body(child)
            }
            if let r { return r }
        }
        throw .busy
    }

    public func unlink(parent: UInt32, name: [UInt8]) throws(Ext4Error) -> UInt32 {
        return try withHandle { () throws(Ext4Error) -> UInt32 in
            try checkName(name)
            if Ext4FileSystem.isDots(name) { throw .isDirectory }
            return try withEntry(parent: parent, name: name) { (child) throws(Ext4Error) -> UInt32 in
                var pm = try loadInode(parent)
                try pm.mayRemoveEntry()
                var m = try loadInode(child)
                if m.isDir { throw .isDirectory }
                try m.mayRemoveEntry()
                _ = try dirRemove(&pm, name: name)
                let now = nowSpec()
                touchDir(&pm, now)
                try storeInode(pm)
                m.links = m.links > 0 ? m.links - 1 : 0
                m.setTime(.ctime, now)
                m.bumpVersion()
                if m.links == 0 { try dropInode(&m) } else { try storeInode(m) }
                return child
            }
        }
    }

    public func rmdir(parent: UInt32, name: [UInt8]) throws(Ext4Error) {
        try withHandle { () throws(Ext4Error) -> Void in
            try checkName(name)
            if name == [0x2E] { throw .invalid("rmdir .") }
            if name == [0x2E, 0x2E] { throw .notEmpty }
            try withEntry(parent: parent, name: name) { (child) throws(Ext4Error) in
                var pm = try loadInode(parent)
                try pm.mayRemoveEntry()
                var m = try loadInode(child)
                guard m.isDir else { throw .notDirectory }
                try m.mayRemoveEntry()
                guard try dirIsEmpty(m) else { throw .notEmpty }
                _ = try dirRemove(&pm, name: name)
                let now = nowSpec()
                dirDecLinks(&pm)
                touchDir(&pm, now)
                try storeInode(pm)
                m.links = 0
                m.setTime(.ctime, now)
                try dropInode(&m)
            }
        }
    }

    /// Is `ancestor` on the ".." chain from `dir` up to the root?
    func isAncestor(_ ancestor: UInt32, of dir: UInt32) throws(Ext4Error) -> Bool {
        var cur = dir
        for _ in 0..<65536 {
            if cur == ancestor { return true }
            if cur == Ext4FileSystem.rootIno { return false }
            let up = try lookup(dir: cur, name: [0x2E, 0x2E])
            if up == cur { return false }
            cur = up
        }
        throw corrupt("directory loop above inode \(dir)")
    }

    /// renameat2 flags.
    public static let renameNoReplace: UInt32 = 1, renameExchange: UInt32 = 2, renameWhiteout: UInt32 = 4

    /// RENAME as one operation. With RENAME_WHITEOUT the old name is left
    /// pointing at a new whiteout (a character device 0:0, owned by `owner`,
    /// the caller), made before anything else changes, as ext4 does.
    public func rename(parent: UInt32, name: [UInt8], newParent: UInt32, newName: [UInt8], flags: UInt32,
                       owner: (uid: UInt32, gid: UInt32) = (0, 0)) throws(Ext4Error) {
        try withHandle { () throws(Ext4Error) -> Void in
            let w = try wstate
            try checkName(name); try checkName(newName)
            let exchange = flags & Self.renameExchange != 0, noReplace = flags & Self.renameNoReplace != 0
            let whiteout = flags & Self.renameWhiteout != 0
            guard flags & ~(Self.renameNoReplace | Self.renameExchange | Self.renameWhiteout) == 0,
                  !(exchange && (noReplace || whiteout)) else { throw .invalid("rename flags") }
            if Ext4FileSystem.isDots(name) || Ext4FileSystem.isDots(newName) { throw .busy }
            try w.renameLock.with { () throws(Ext4Error) in
                for _ in 0..<100 {
                    let src = try lookup(dir: parent, name: name)
                    let dst = try? lookup(dir: newParent, name: newName)
                    // Ancestry only changes under renameLock: check it before taking inode locks.
                    if parent != newParent {
                        if try inode(src).fileType == .directory, try isAncestor(src, of: newParent) {
                            throw .invalid("move into own subtree")
                        }
                        if exchange, let dst, try inode(dst).fileType == .directory, try isAncestor(dst, of: parent) {
                            throw .invalid("move into own subtree")
                        }
                    }
                    var keys = [UInt64(parent), UInt64(newParent), UInt64(src)]
                    if let dst { keys.append(UInt64(dst)) }
                    let done = try w.inodeLocks.withLocks(keys) { () throws(Ext4Error) -> Bool in
                        guard (try? lookup(dir: parent, name: name)) == src,
                              (try? lookup(dir: newParent, name: newName)) == dst else { return false }
                        try renameLocked(parent: parent, name: name, newParent: newParent, newName: newName,
                                         src: src, dst: dst, exchange: exchange, noReplace: noReplace,
                                         whiteout: whiteout ? owner : nil)
                        return true
                    }
                    if done { return }
                }
                throw .busy
            }
        }
    }

    private func renameLocked(parent: UInt32, name: [UInt8], newParent: UInt32, newName: [UInt8],
                              src: UInt32, dst: UInt32?, exchange: Bool, noReplace: Bool,
                              whiteout: (uid: UInt32, gid: UInt32)? = nil) throws(Ext4Error) {
        if exchange && dst == nil { throw .notFound }
        if noReplace && dst != nil { throw .exists }
        if let dst, dst == src { return }
        var ms: [UInt32: MInode] = [:]
        func get(_ i: UInt32) throws(Ext4Error) -> MInode { try loadOnce(i, &ms) }
        let sm = try get(src)
        let pm = try get(parent), npm = try get(newParent)
        guard pm.isDir, npm.isDir else { throw .notDirectory }
        // The name leaves `parent`; at `newParent` it is added, or replaces
        // (removes) the name there.
        try pm.mayRemoveEntry(); try sm.mayRemoveEntry()
        let dm: MInode? = try dst.map { (d) throws(Ext4Error) -> MInode in try get(d) }
        if let dm { try npm.mayRemoveEntry(); try dm.mayRemoveEntry() } else { try npm.mayAddEntry() }
        if let dm, !exchange {
            if sm.isDir && !dm.isDir { throw .notDirectory }
            if !sm.isDir && dm.isDir { throw .isDirectory }
            if dm.isDir { let e = try dirIsEmpty(dm); if !e { throw .notEmpty } }
        }
        if sm.isDir && parent != newParent && !exchange && dst == nil {
            if npm.links >= linkMax - 1 && npm.links != 1 && !sb.has(roCompat: RoCompat.dirNlink) { throw .tooManyLinks }
        }
        let now = nowSpec()
        // The whiteout first: without room for it, nothing has changed yet.
        var wo: MInode? = nil
        if let owner = whiteout {
            wo = try makeInode(parent: parent, parentFlags: pm.flags, mode: Ext4FileSystem.whiteoutMode, uid: owner.uid, gid: owner.gid,
                               rdev: (0, 0), symlink: nil, links: 1, now: now)
        }
        do throws(Ext4Error) {
            try renameSteps(parent: parent, name: name, newParent: newParent, newName: newName, src: src, dst: dst,
                            exchange: exchange, now: now, whiteout: wo, ms: &ms)
        } catch {
            if var m = wo { try? destroyInode(&m) }
            throw error
        }
    }

    /// `ms[i]`, loaded the first time a rename needs inode `i`.
    private func loadOnce(_ i: UInt32, _ ms: inout [UInt32: MInode]) throws(Ext4Error) -> MInode {
        if let m = ms[i] { return m }
        let m = try loadInode(i)
        ms[i] = m
        return m
    }

    /// A whiteout: a character device 0:0 with no permission bits (as the VFS makes it).
    static let whiteoutMode: UInt16 = 0x2000

    private func renameSteps(parent: UInt32, name: [UInt8], newParent: UInt32, newName: [UInt8], src: UInt32, dst: UInt32?,
                             exchange: Bool, now: Timespec, whiteout wo: MInode?, ms: inout [UInt32: MInode]) throws(Ext4Error) {
        func get(_ i: UInt32) throws(Ext4Error) -> MInode { try loadOnce(i, &ms) }
        let sm = try get(src)
        let dm: MInode? = try dst.map { (d) throws(Ext4Error) -> MInode in try get(d) }
        func mod(_ i: UInt32, _ f: (inout MInode) throws(Ext4Error) -> Void) throws(Ext4Error) {
            var m = try get(i)
            try f(&m)
            ms[i] = m
        }
        if exchange, let dm {
            try mod(parent) { (m) throws(Ext4Error) in try dirRetarget(&m, name: name, ino: dm.ino, ftype: ftypeCode(dm.mode)) }
            try mod(newParent) { (m) throws(Ext4Error) in try dirRetarget(&m, name: newName, ino: src, ftype: ftypeCode(sm.mode)) }
            if parent != newParent {
                if sm.isDir {
                    try mod(src) { (m) throws(Ext4Error) in try dirRetarget(&m, name: [0x2E, 0x2E], ino: newParent, ftype: 2) }
                    try mod(parent) { (m) throws(Ext4Error) in dirDecLinks(&m) }
                    try mod(newParent) { (m) throws(Ext4Error) in try dirIncLinks(&m) }
                }
                if dm.isDir {
                    try mod(dm.ino) { (m) throws(Ext4Error) in try dirRetarget(&m, name: [0x2E, 0x2E], ino: parent, ftype: 2) }
                    try mod(newParent) { (m) throws(Ext4Error) in dirDecLinks(&m) }
                    try mod(parent) { (m) throws(Ext4Error) in try dirIncLinks(&m) }
                }
            }
            try mod(dm.ino) { (m) throws(Ext4Error) in m.setTime(.ctime, now); m.bumpVersion() }
        } else {
            if dst != nil {
                try mod(newParent) { (m) throws(Ext4Error) in try dirRetarget(&m, name: newName, ino: src, ftype: ftypeCode(sm.mode)) }
            } else {
                try mod(newParent) { (m) throws(Ext4Error) in try dirAdd(&m, name: newName, ino: src, ftype: ftypeCode(sm.mode)) }
            }
            if let wo {
                try mod(parent) { (m) throws(Ext4Error) in try dirRetarget(&m, name: name, ino: wo.ino, ftype: ftypeCode(wo.mode)) }
            } else {
                try mod(parent) { (m) throws(Ext4Error) in _ = try dirRemove(&m, name: name) }
            }
            if sm.isDir && parent != newParent {
                try mod(src) { (m) throws(Ext4Error) in try dirRetarget(&m, name: [0x2E, 0x2E], ino: newParent, ftype: 2) }
                try mod(parent) { (m) throws(Ext4Error) in dirDecLinks(&m) }
                if dst == nil { try mod(newParent) { (m) throws(Ext4Error) in try dirIncLinks(&m) } }
            } else if sm.isDir, dst != nil {
                // Same parent, replacing an empty dir: the parent loses that dir's "..".
                try mod(parent) { (m) throws(Ext4Error) in dirDecLinks(&m) }
            }
            if let dm {
                var d = try get(dm.ino)
                d.links = dm.isDir ? 0 : (d.links > 0 ? d.links - 1 : 0)
                d.setTime(.ctime, now)
                d.bumpVersion()
                ms[dm.ino] = nil
                if parent != newParent && dm.isDir {
                    // newParent lost the replaced dir's "..": already balanced by not incrementing.
                }
                if d.links == 0 { try dropInode(&d) } else { try storeInode(d) }
            }
        }
        try mod(src) { (m) throws(Ext4Error) in m.setTime(.ctime, now); m.bumpVersion() }
        try mod(parent) { (m) throws(Ext4Error) in touchDir(&m, now) }
        try mod(newParent) { (m) throws(Ext4Error) in touchDir(&m, now) }
        for (_, m) in ms { try storeInode(m) }
    }
}
