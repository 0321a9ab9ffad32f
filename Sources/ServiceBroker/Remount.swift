import CShim
import Glibc

/// `mount -t fuse.ext4 -o remount,... SOURCE DIR` on an ext4iomap mount.
///
/// mount(8) runs the type's helper for a remount when it is given the type
/// (fstests does); without it, libmount remounts by itself. Either way the
/// same things change: the superblock between read-only and read-write (FUSE
/// allows that; the kernel syncs the file system first, which commits the
/// server's journal) and the per-mount flags (nosuid, nodev, noexec,
/// nosymfollow, the atime mode), as root asked. Every other option of a FUSE
/// superblock is fixed at mount time and is left as it is. No server is
/// involved: on a read-only superblock the kernel refuses every change itself
/// (EROFS). Only a mount of this helper's type (fuse.TYPE or fuseblk.TYPE) is
/// touched.
public enum Remount {
    /// What a remount asks for.
    public struct Plan: Equatable, Sendable {
        /// true: read-only, false: read-write, nil: unchanged.
        public var readOnly: Bool? = nil
        /// MOUNT_ATTR_* bits to set and to clear on the mount.
        public var attrSet: UInt64 = 0
        public var attrClear: UInt64 = 0
    }

    // MOUNT_ATTR_* (linux/mount.h)
    static let attrReadOnly: UInt64 = 0x1, attrNosuid: UInt64 = 0x2, attrNodev: UInt64 = 0x4, attrNoexec: UInt64 = 0x8
    static let attrAtimeMask: UInt64 = 0x70, attrRelatime: UInt64 = 0x0, attrNoatime: UInt64 = 0x10
    static let attrStrictatime: UInt64 = 0x20, attrNodiratime: UInt64 = 0x80, attrNosymfollow: UInt64 = 0x0020_0000

    /// Whether `options` asks for a remount.
    public static func requested(_ options: String) -> Bool {
        MountOptions.tokens(options).contains("remount")
    }

    /// The changes `options` ask for; later tokens win, as in mount(8).
    public static func plan(_ options: String) -> Plan {
        var p = Plan()
        func flag(_ bit: UInt64, on: Bool) {
            if on { p.attrSet |= bit; p.attrClear &= ~bit } else { p.attrClear |= bit; p.attrSet &= ~bit }
        }
        for t in MountOptions.tokens(options) {
            switch t {
            case "ro": p.readOnly = true
            case "rw": p.readOnly = false
            case "nosuid", "suid": flag(attrNosuid, on: t == "nosuid")
            case "nodev", "dev": flag(attrNodev, on: t == "nodev")
            case "noexec", "exec": flag(attrNoexec, on: t == "noexec")
            case "nosymfollow", "symfollow": flag(attrNosymfollow, on: t == "nosymfollow")
            case "nodiratime", "diratime": flag(attrNodiratime, on: t == "nodiratime")
            case "noatime", "relatime", "strictatime":
                p.attrClear |= attrAtimeMask
                p.attrSet = (p.attrSet & ~attrAtimeMask)
                    | (t == "noatime" ? attrNoatime : t == "strictatime" ? attrStrictatime : attrRelatime)
            default:
                continue  // remount itself, mount(8)'s and fstab's words, the superblock's fixed options
            }
        }
        return p
    }

    /// The file system type of the topmost mount at `mountpoint`, from mountinfo.
    static func fstype(at mountpoint: String, mountinfo: String) -> String? {
        Mountinfo.entries(mountinfo).last { $0.mountpoint == mountpoint }?.fstype
    }

    /// Remount the ext4iomap mount at `mountpoint` (an absolute path) as
    /// `options` ask. `subtype`: ext4, ext3 or ext2. Returns what it did, for
    /// the verbose log.
    public static func run(mountpoint: String, subtype: String, options: String) throws(BrokerError) -> String {
        guard let info = Mountinfo.read() else { throw .system(operation: "read /proc/self/mountinfo", errno: errno) }
        guard let type = fstype(at: mountpoint, mountinfo: info) else {
            throw .denied("\(mountpoint) is not a mount point", errno: EINVAL)
        }
        guard type == "fuse.\(subtype)" || type == "fuseblk.\(subtype)" else {
            throw .denied("\(mountpoint) is a \(type) mount, not fuse.\(subtype)", errno: EINVAL)
        }
        let p = plan(options)
        var did: [String] = []
        if p.attrSet != 0 || p.attrClear != 0 {
            // AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT
            let r = cshim_mount_setattr(AT_FDCWD, mountpoint, 0x100 | 0x800, p.attrSet, p.attrClear)
            if r < 0 { throw .mountFailed("remount \(mountpoint): mount flags", errno: -r) }
            did.append("mount flags")
        }
        if let ro = p.readOnly {
            // FSPICK_CLOEXEC | FSPICK_SYMLINK_NOFOLLOW | FSPICK_NO_AUTOMOUNT
            let fd = cshim_fspick(AT_FDCWD, mountpoint, 0x1 | 0x2 | 0x4)
            if fd < 0 { throw .system(operation: "fspick \(mountpoint)", errno: -fd) }
            defer { FD.close(fd) }
            // FSCONFIG_SET_FLAG = 0, FSCONFIG_CMD_RECONFIGURE = 7
            let set = cshim_fsconfig(fd, 0, ro ? "ro" : "rw", nil, 0)
            if set < 0 { throw .mountFailed("remount \(mountpoint) \(ro ? "ro" : "rw")", errno: -set) }
            let r = cshim_fsconfig(fd, 7, nil, nil, 0)
            if r < 0 { throw .mountFailed("remount \(mountpoint) \(ro ? "ro" : "rw")", errno: -r) }
            did.append(ro ? "read-only" : "read-write")
        }
        return did.isEmpty ? "nothing to change on \(mountpoint)" : "remounted \(mountpoint): \(did.joined(separator: ", "))"
    }
}
