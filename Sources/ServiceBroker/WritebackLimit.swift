import CShim
import Glibc
import LoopDevices

/// How much dirty page cache the kernel lets a FUSE mount hold.
///
/// The kernel gives every FUSE superblock its own writeback domain (bdi) with
/// a strict limit of 1% of the dirty threshold (about 48 MiB on a 24 GiB
/// machine): a server that never finishes writeback can then pin only that
/// much memory. It also caps how far ahead of the server a writer can get,
/// and sequential writes stall on it (about 20% below the kernel's ext4 in
/// bench/run.sh on 2 vCPUs). The helper raises the cap to `targetBytes`
/// after the mount, through /sys/class/bdi/NAME/max_bytes (Linux 6.2 and
/// later), and keeps the strict limit: the most a stuck or hostile server can
/// pin stays bounded, now at 128 MiB. Where the file is missing (older
/// kernels) or the kernel's own cap is already larger, nothing changes.
enum WritebackLimit {
    static let targetBytes: UInt64 = 128 << 20

    /// The kernel keeps the cap as a fraction of the dirty threshold, so
    /// max_bytes reads back a little below what was written.
    static func reached(_ current: UInt64, _ target: UInt64) -> Bool { current >= target - target / 100 }

    /// The bdi of the superblock with device number `dev`: fuseblk names it
    /// after the block device with a "-fuseblk" suffix, fuse after its
    /// anonymous device.
    static func bdiName(_ dev: DeviceNumber, fuseblk: Bool) -> String {
        fuseblk ? "\(dev.major):\(dev.minor)-fuseblk" : "\(dev.major):\(dev.minor)"
    }

    /// Raise the dirty-page cap of the mount whose root is `mountFD` (read
    /// through statx without asking the server). Returns what it did, for
    /// the verbose log, or nil when nothing changed.
    static func raise(mountFD: Int32, fuseblk: Bool, target: UInt64 = targetBytes,
                      sysfs: String = "/sys/class/bdi") -> String? {
        guard let dev = DeviceNumber.of(fd: mountFD) else { return nil }
        let path = "\(sysfs)/\(bdiName(dev, fuseblk: fuseblk))/max_bytes"
        guard let current = readNumber(path), !reached(current, target) else { return nil }
        guard writeNumber(path, target) else { return nil }
        return "writeback cap of \(bdiName(dev, fuseblk: fuseblk)) raised from \(current >> 20) to \(target >> 20) MiB"
    }

    static func readNumber(_ path: String) -> UInt64? {
        guard var text = readSysfsValue(path) else { return nil }
        while text.last == "\n" || text.last == " " { text.removeLast() }
        return UInt64(text)
    }

    static func writeNumber(_ path: String, _ v: UInt64) -> Bool {
        var fd: Int32
        repeat { fd = open(path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW) } while fd < 0 && errno == EINTR
        guard fd >= 0 else { return false }
        defer { FD.close(fd) }
        let bytes = Array("\(v)\n".utf8)
        var n: Int
        repeat { n = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } } while n < 0 && errno == EINTR
        return n == bytes.count
    }
}
