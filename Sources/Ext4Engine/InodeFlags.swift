/// ext4 inode flags (i_flags): the bits, which of them user space sees and
/// may set (FS_IOC_GETFLAGS/SETFLAGS and the fsxattr view of
/// FS_IOC_FSGETXATTR/FSSETXATTR), and what an immutable or append-only inode
/// refuses. The rules are the ones the kernel's VFS and ext4 apply, so a
/// server that is handed a request the kernel did not check refuses it the
/// same way.

/// Inode flag bits.
enum InodeFlag {
    static let secureDelete: UInt32 = 0x1
    static let undelete: UInt32 = 0x2
    static let compressed: UInt32 = 0x4
    static let sync: UInt32 = 0x8
    static let immutable: UInt32 = 0x10
    static let append: UInt32 = 0x20
    static let noDump: UInt32 = 0x40
    static let noAtime: UInt32 = 0x80
    static let noCompress: UInt32 = 0x400
    static let encrypt: UInt32 = 0x800
    static let index: UInt32 = 0x1000
    static let journalData: UInt32 = 0x4000
    static let noTail: UInt32 = 0x8000
    static let dirSync: UInt32 = 0x10000
    static let topDir: UInt32 = 0x20000
    static let hugeFile: UInt32 = 0x40000
    static let extents: UInt32 = 0x80000
    static let verity: UInt32 = 0x100000
    static let eaInode: UInt32 = 0x200000
    static let dax: UInt32 = 0x0200_0000
    static let inlineData: UInt32 = 0x10000000
    static let projectInherit: UInt32 = 0x20000000
    static let casefold: UInt32 = 0x40000000
    /// EXT4_FL_USER_VISIBLE: what FS_IOC_GETFLAGS reports.
    static let userVisible: UInt32 = 0x725B_DFFF
    /// What FS_IOC_SETFLAGS may change here: the plain attribute flags.
    /// DAX is kept as a flag: no mount of ours maps file data directly.
    /// (The kernel also converts between extents and block maps, journals
    /// data and sets project inheritance; we do not.)
    static let userSettable: UInt32 = secureDelete | undelete | sync | immutable | append | noDump | noAtime
        | dirSync | topDir | dax
    /// Setting or clearing these needs CAP_LINUX_IMMUTABLE.
    static let needCapLinuxImmutable: UInt32 = immutable | append

    /// What a new inode takes from its directory (ext4's EXT4_FL_INHERITED),
    /// narrowed by the new inode's type: a directory takes all of them, a
    /// regular file all but the directory-only ones (dirsync, topdir,
    /// casefold, project inheritance), anything else only nodump and noatime.
    static let inherited: UInt32 = secureDelete | undelete | compressed | sync | noDump | noAtime | noCompress
        | journalData | noTail | dirSync | projectInherit | casefold | dax
    static func inherited(from parentFlags: UInt32, mode: UInt16) -> UInt32 {
        let f = parentFlags & inherited
        switch mode & 0xF000 {
        case 0x4000: return f
        case 0x8000: return f & ~(dirSync | topDir | casefold | projectInherit)
        default: return f & (noDump | noAtime)
        }
    }

    /// `Inode.mayOpen` on raw flags.
    static func mayOpen(_ flags: UInt32, forWriting: Bool, appending: Bool) throws(Ext4Error) {
        guard forWriting else { return }
        if flags & immutable != 0 { throw .permission }
        if flags & append != 0 && !appending { throw .permission }
    }
}

/// The fsxattr flags (FS_XFLAG_*) that ext4 maps to and from i_flags.
enum FsxFlag {
    static let immutable: UInt32 = 0x8
    static let append: UInt32 = 0x10
    static let sync: UInt32 = 0x20
    static let noAtime: UInt32 = 0x40
    static let noDump: UInt32 = 0x80
    static let projectInherit: UInt32 = 0x200
    static let dax: UInt32 = 0x8000

    static let pairs: [(iflag: UInt32, xflag: UInt32)] = [
        (InodeFlag.sync, sync), (InodeFlag.immutable, immutable), (InodeFlag.append, append),
        (InodeFlag.noDump, noDump), (InodeFlag.noAtime, noAtime), (InodeFlag.projectInherit, projectInherit),
        (InodeFlag.dax, dax),
    ]
    /// The i_flags the fsxattr view describes.
    static let described: UInt32 = pairs.reduce(0) { $0 | $1.iflag }
}

/// What statx reports in stx_attributes for an ext4 inode.
public struct InodeAttributes: OptionSet, Sendable, Equatable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let compressed = InodeAttributes(rawValue: 1 << 0)
    public static let immutable = InodeAttributes(rawValue: 1 << 1)
    public static let appendOnly = InodeAttributes(rawValue: 1 << 2)
    public static let noDump = InodeAttributes(rawValue: 1 << 3)
    public static let encrypted = InodeAttributes(rawValue: 1 << 4)
    public static let verity = InodeAttributes(rawValue: 1 << 5)
    /// Every attribute ext4 can report (stx_attributes_mask).
    public static let supported: InodeAttributes = [.compressed, .immutable, .appendOnly, .noDump, .encrypted, .verity]
}

extension Inode {
    /// Nothing may change it: data, attributes, names, xattrs (FS_IMMUTABLE_FL).
    public var isImmutable: Bool { flags & InodeFlag.immutable != 0 }
    /// Data may only be appended; attributes, names and xattrs stay (FS_APPEND_FL).
    public var isAppendOnly: Bool { flags & InodeFlag.append != 0 }
    /// Changes are written synchronously (FS_SYNC_FL).
    public var isSync: Bool { flags & InodeFlag.sync != 0 }
    /// The file's data lives in the inode itself (inline_data): it has no block map.
    public var hasInlineData: Bool { flags & InodeFlag.inlineData != 0 }
    /// The file's blocks are mapped by an extent tree (else by a block map).
    public var isExtentMapped: Bool { flags & InodeFlag.extents != 0 }

    /// stx_attributes.
    public var attributes: InodeAttributes {
        var a: InodeAttributes = []
        if flags & InodeFlag.compressed != 0 { a.insert(.compressed) }
        if flags & InodeFlag.immutable != 0 { a.insert(.immutable) }
        if flags & InodeFlag.append != 0 { a.insert(.appendOnly) }
        if flags & InodeFlag.noDump != 0 { a.insert(.noDump) }
        if flags & InodeFlag.encrypt != 0 { a.insert(.encrypted) }
        if flags & InodeFlag.verity != 0 { a.insert(.verity) }
        return a
    }

    /// open(2) with the access asked for: write access to an immutable
    /// file, or write access without O_APPEND to an append-only one, is
    /// refused (truncation is `MInode.mayTruncate`'s).
    public func mayOpen(forWriting: Bool, appending: Bool) throws(Ext4Error) {
        try InodeFlag.mayOpen(flags, forWriting: forWriting, appending: appending)
    }

    /// FS_IOC_FSGETXATTR's fsx_xflags.
    public var fsxattrFlags: UInt32 {
        FsxFlag.pairs.reduce(0) { flags & $1.iflag != 0 ? $0 | $1.xflag : $0 }
    }
}

/// The rules an immutable or append-only inode imposes. Each throws
/// `.permission` (EPERM), as the kernel does.
extension MInode {
    var isImmutable: Bool { flags & InodeFlag.immutable != 0 }
    var isAppendOnly: Bool { flags & InodeFlag.append != 0 }

    /// Writing data at `offset`: never into an immutable file; into an
    /// append-only one only at its end.
    func mayWrite(at offset: UInt64) throws(Ext4Error) {
        if isImmutable { throw .permission }
        if isAppendOnly && offset != size { throw .permission }
    }

    /// Allocating storage for data the caller writes itself (iomap): an
    /// append-only file's appends are the caller's to check.
    func mayAllocate() throws(Ext4Error) {
        if isImmutable { throw .permission }
    }

    /// Truncation (setattr size, open with O_TRUNC): neither flag allows it.
    func mayTruncate() throws(Ext4Error) {
        if isImmutable || isAppendOnly { throw .permission }
    }

    /// fallocate: an append-only file allows only plain allocation
    /// (mode 0 or KEEP_SIZE), never punching or zeroing.
    func mayFallocate(mode: UInt32) throws(Ext4Error) {
        if isImmutable { throw .permission }
        if isAppendOnly && mode & ~Ext4FileSystem.fallocKeepSize != 0 { throw .permission }
    }

    /// SETATTR: an immutable inode changes nothing; an append-only one keeps
    /// its mode, owner, group and size, and takes only "now" as its times
    /// (times the file system keeps for its own writes are not a utimes).
    func mayChange(_ c: AttrChange) throws(Ext4Error) {
        let any = c.mode != nil || c.uid != nil || c.gid != nil || c.size != nil || c.atime != nil
            || c.mtime != nil || c.ctime != nil || c.killSuidgid
        if isImmutable && any { throw .permission }
        guard isAppendOnly else { return }
        if c.mode != nil || c.uid != nil || c.gid != nil || c.size != nil { throw .permission }
        if !c.cachedTimes {
            for t in [c.atime, c.mtime] { if case .set? = t { throw .permission } }
        }
    }

    /// Setting or removing an xattr (ACLs included).
    func mayChangeXattrs() throws(Ext4Error) {
        if isImmutable || isAppendOnly { throw .permission }
    }

    /// A directory that gains an entry (create, link, rename into it):
    /// append-only directories accept new entries.
    func mayAddEntry() throws(Ext4Error) {
        if isImmutable { throw .permission }
    }

    /// A directory that loses an entry, or the inode whose name goes
    /// (unlink, rmdir, rename away or over).
    func mayRemoveEntry() throws(Ext4Error) {
        if isImmutable || isAppendOnly { throw .permission }
    }

    /// The inode a hard link is made to.
    func mayLink() throws(Ext4Error) {
        if isImmutable || isAppendOnly { throw .permission }
    }

    /// New i_flags from FS_IOC_SETFLAGS (already reduced to visible flags):
    /// changing immutable or append-only needs CAP_LINUX_IMMUTABLE, and an
    /// inode that is and stays immutable may change no other flag.
    func mayChangeFlags(to new: UInt32, capLinuxImmutable: Bool) throws(Ext4Error) {
        let old = flags & InodeFlag.userSettable, next = new & InodeFlag.userSettable
        if (old ^ next) & InodeFlag.needCapLinuxImmutable != 0 && !capLinuxImmutable { throw .permission }
        if old & InodeFlag.immutable != 0 && next & InodeFlag.immutable != 0
            && old & ~InodeFlag.immutable != next & ~InodeFlag.immutable {
            throw .permission
        }
    }
}

extension Ext4FileSystem {
    /// FALLOC_FL_KEEP_SIZE.
    static let fallocKeepSize: UInt32 = 0x1

    /// FS_IOC_SETFLAGS. Visible flags that are not settable must keep their
    /// value unless the request names settable flags only (then they are kept
    /// as they are); unknown flags are refused. `capLinuxImmutable`: whether
    /// the caller may change immutable and append-only (the kernel checks
    /// CAP_LINUX_IMMUTABLE before a FUSE request is sent). Returns the inode.
    public func setInodeFlags(_ ino: UInt32, _ flags: UInt32, capLinuxImmutable: Bool = true) throws(Ext4Error) -> Inode {
        try withHandle { () throws(Ext4Error) -> Inode in
            let w = try wstate
            return try w.inodeLocks.withLock(UInt64(ino)) { () throws(Ext4Error) -> Inode in
                var m = try loadInode(ino)
                try applyFlags(&m, flags, capLinuxImmutable: capLinuxImmutable)
                return try publicInode(m)
            }
        }
    }

    /// FS_IOC_FSSETXATTR: the flags the fsxattr view describes take the
    /// request's values, the others keep theirs; xflags ext4 does not map are
    /// ignored. Returns the inode.
    public func setFsxattrFlags(_ ino: UInt32, _ xflags: UInt32, capLinuxImmutable: Bool = true) throws(Ext4Error) -> Inode {
        try withHandle { () throws(Ext4Error) -> Inode in
            let w = try wstate
            return try w.inodeLocks.withLock(UInt64(ino)) { () throws(Ext4Error) -> Inode in
                var m = try loadInode(ino)
                var f = m.flags & InodeFlag.userVisible & ~FsxFlag.described
                for p in FsxFlag.pairs where xflags & p.xflag != 0 { f |= p.iflag }
                try applyFlags(&m, f, capLinuxImmutable: capLinuxImmutable)
                return try publicInode(m)
            }
        }
    }

    /// Set the settable flags of `m` from `flags` and store it; caller holds its lock.
    private func applyFlags(_ m: inout MInode, _ flags: UInt32, capLinuxImmutable: Bool) throws(Ext4Error) {
        let settable = InodeFlag.userSettable
        let fixedNow = m.flags & InodeFlag.userVisible & ~settable
        let fixedReq = flags & InodeFlag.userVisible & ~settable
        guard fixedNow == fixedReq || (flags & ~settable) == 0 else { throw .unsupported("flags not settable") }
        guard flags & ~InodeFlag.userVisible == 0 else { throw .unsupported("unknown flags") }
        try m.mayChangeFlags(to: flags, capLinuxImmutable: capLinuxImmutable)
        // No DAX for an inode whose data could never be mapped directly.
        if flags & ~m.flags & InodeFlag.dax != 0,
           m.flags & (InodeFlag.inlineData | InodeFlag.verity | InodeFlag.encrypt) != 0 {
            throw .unsupported("DAX on an inline, verity or encrypted inode")
        }
        m.flags = (m.flags & ~settable) | (flags & settable)
        m.setTime(.ctime, nowSpec())
        m.bumpVersion()
        try storeInode(m)
    }
}
