// Facts about the environment the daemon gathers before the sandbox closes:
// whether the kernel offers iomap on this /dev/fuse, and the device's name.
// They reach the adapter (Ext4Fuse) as values.

import CShim
import Ext4Fuse
import FuseKernel
import Glibc

/// The last path component of what `fd` refers to (e.g. "loop3"), read
/// before the sandbox closes: through `procFDs` (an fd on /proc/self/fd opened
/// while the server still had a root with /proc in it), else /proc/self/fd
/// itself; nil when it cannot be read.
public func deviceName(_ fd: Int32, procFDs: Int32 = -1) -> String? {
    var buf = [CChar](repeating: 0, count: 4096)
    let n = procFDs >= 0 ? Glibc.readlinkat(procFDs, "\(fd)", &buf, buf.count - 1)
        : Glibc.readlink("/proc/self/fd/\(fd)", &buf, buf.count - 1)
    guard n > 0 else { return nil }
    let path = String(decoding: buf.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    guard path.hasPrefix("/"), let last = path.split(separator: "/").last, !last.isEmpty else { return nil }
    return String(last.prefix(31))
}

public func iomapPreflight(fuseFD: Int32, deviceFD: Int32, name: String, options: ServerOptions) throws(ServerFailure) {
    guard options.iomap == true else { return }
    var st = stat()
    guard fstat(deviceFD, &st) == 0, st.st_mode & S_IFMT == S_IFBLK else {
        throw ServerFailure(2, "\(name): iomap=1 requested, but the source is not a block device (attach it to a loop device, or use iomap=0)")
    }
    var support = [UInt8](repeating: 0, count: 16)
    let r = support.withUnsafeMutableBytes { cshim_ioctl_ptr(fuseFD, FuseDevIoctl.iomapSupport, $0.baseAddress) }
    let flags = support.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
    guard r >= 0, flags & FuseIomap.supportFileIO != 0 else {
        let why = r < 0 ? String(cString: strerror(-r)) : "iomap not allowed for this connection"
        throw ServerFailure(2, "\(name): iomap=1 requested, but this kernel does not offer FUSE iomap (\(why)); use iomap=0 or leave it unset")
    }
}

