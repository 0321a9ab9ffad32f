#if canImport(Glibc)
import Glibc
#endif
import CShim

/// Block-device ioctls used by the helper and the server.
public enum BlockDevice {
    /// Size in bytes (BLKGETSIZE64).
    public static func size(fd: Int32) throws(LoopDeviceError) -> UInt64 {
        var v: UInt64 = 0
        let r = cshim_ioctl_ptr(fd, cshim_BLKGETSIZE64(), &v)
        if r < 0 { throw .system(operation: "BLKGETSIZE64", errno: -r) }
        return v
    }

    /// Logical sector size (BLKSSZGET).
    public static func logicalSectorSize(fd: Int32) throws(LoopDeviceError) -> UInt32 {
        var v: Int32 = 0
        let r = cshim_ioctl_ptr(fd, cshim_BLKSSZGET(), &v)
        if r < 0 { throw .system(operation: "BLKSSZGET", errno: -r) }
        return UInt32(clamping: v)
    }

    /// Soft block size (BLKBSZGET).
    public static func blockSize(fd: Int32) throws(LoopDeviceError) -> UInt32 {
        var v: Int32 = 0
        let r = cshim_ioctl_ptr(fd, cshim_BLKBSZGET(), &v)
        if r < 0 { throw .system(operation: "BLKBSZGET", errno: -r) }
        return UInt32(clamping: v)
    }

    /// Set the soft block size (BLKBSZSET). Needs an exclusive open on recent kernels
    /// for sizes other than the current one.
    public static func setBlockSize(fd: Int32, _ size: UInt32) throws(LoopDeviceError) {
        guard isValidBlockSize(size) else { throw .invalidBlockSize(size) }
        var v = Int32(size)
        let r = cshim_ioctl_ptr(fd, cshim_BLKBSZSET(), &v)
        if r < 0 { throw .system(operation: "BLKBSZSET", errno: -r) }
    }

    /// Read-only state (BLKROGET).
    public static func isReadOnly(fd: Int32) throws(LoopDeviceError) -> Bool {
        var v: Int32 = 0
        let r = cshim_ioctl_ptr(fd, cshim_BLKROGET(), &v)
        if r < 0 { throw .system(operation: "BLKROGET", errno: -r) }
        return v != 0
    }

    /// True for a power of two in 512...65536.
    public static func isValidBlockSize(_ size: UInt32) -> Bool {
        size >= 512 && size <= 65536 && (size & (size &- 1)) == 0
    }
}
