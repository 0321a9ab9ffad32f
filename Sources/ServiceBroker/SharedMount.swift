import CShim
import Glibc
import LoopDevices

/// A second mount of a source an ext4iomap mount already serves.
///
/// The kernel's ext4 mounts a block device twice by giving the second mount
/// the same superblock. Starting a second server on the same device would
/// mean two file systems writing one disk; the helper refuses that (the
/// device is claimed, an image is already attached). Instead, when SOURCE is
/// the block device of a `fuseblk.TYPE` mount (for an image: the loop device
/// the helper attached for it), the helper clones that mount (open_tree) and
/// attaches the clone at DIR (move_mount): one server, one superblock, two
/// mount points, as with the kernel. Per-mount flags follow `-o` (ro, nosuid,
/// nodev, noexec, ...); asking for read-write where the superblock is
/// read-only is refused with EBUSY, as the kernel refuses it.
public enum SharedMount {
    /// An existing mount that serves a source: where, and whether its superblock is read-only.
    public struct Existing: Equatable, Sendable {
        public var mountpoint: String
        public var readOnly: Bool
    }

    /// The fuseblk.`subtype` mount that already serves `source`, if any.
    public static func existing(source: String, subtype: String) -> Existing? {
        var st = stat()
        guard stat(source, &st) == 0 else { return nil }
        var dev: dev_t
        switch st.st_mode & S_IFMT {
        case S_IFBLK:
            dev = st.st_rdev
        case S_IFREG:
            guard let loop = LoopDevice.findLoop(device: UInt64(st.st_dev), inode: UInt64(st.st_ino)) else { return nil }
            var lst = stat()
            guard stat(loop, &lst) == 0, lst.st_mode & S_IFMT == S_IFBLK else { return nil }
            dev = lst.st_rdev
        default:
            return nil
        }
        guard let info = Mountinfo.read() else { return nil }
        return find(DeviceNumber(dev), fstype: "fuseblk.\(subtype)", mountinfo: info)
    }

    /// The first mount in `mountinfo` of type `fstype` on device `dev`.
    static func find(_ dev: DeviceNumber, fstype: String, mountinfo: String) -> Existing? {
        Mountinfo.entries(mountinfo).first { $0.device == dev.description && $0.fstype == fstype }.map {
            Existing(mountpoint: $0.mountpoint, readOnly: $0.superOptions.split(separator: ",").first == "ro")
        }
    }

    /// Attach a clone of `existing` at `target` with the per-mount flags `options` ask for.
    public static func bind(_ existing: Existing, at target: String, options: String) throws(BrokerError) {
        var p = Remount.plan(options)
        if p.readOnly == false && existing.readOnly {
            throw .denied("the source is already mounted read-only at \(existing.mountpoint)", errno: EBUSY)
        }
        if p.readOnly == true { p.attrSet |= Remount.attrReadOnly }
        // OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_SYMLINK_NOFOLLOW
        let fd = cshim_open_tree(AT_FDCWD, existing.mountpoint, 0x1 | UInt32(O_CLOEXEC) | 0x100)
        if fd < 0 { throw .system(operation: "open_tree \(existing.mountpoint)", errno: -fd) }
        defer { FD.close(fd) }
        // A clone joins the peer group of a shared original, so mounts made
        // under one would appear under the other; the kernel's second mount
        // of a device is a mount of its own. Private before it is attached.
        let pr = cshim_mount_set_private(fd, "", 0x1000)  // AT_EMPTY_PATH
        if pr < 0 { throw .mountFailed("propagation of the new mount point", errno: -pr) }
        if p.attrSet != 0 || p.attrClear != 0 {
            let r = cshim_mount_setattr(fd, "", 0x1000, p.attrSet, p.attrClear)  // AT_EMPTY_PATH
            if r < 0 { throw .mountFailed("mount flags of the new mount point", errno: -r) }
        }
        let mv = cshim_move_mount(fd, "", AT_FDCWD, target, 0x4)  // MOVE_MOUNT_F_EMPTY_PATH
        if mv < 0 { throw .mountFailed("move_mount onto \(target)", errno: -mv) }
    }
}
