import Glibc

/// One line of /proc/self/mountinfo: the fields the helper reads.
struct MountinfoEntry: Equatable, Sendable {
    /// "major:minor" of the mounted file system.
    var device: String
    var mountpoint: String
    /// Per-mount options ("rw,nosuid,...").
    var options: String
    var fstype: String
    /// The superblock's options; the first is "ro" or "rw".
    var superOptions: String
}

enum Mountinfo {
    /// The entries of `text`, in order (later mounts on a path stack over earlier ones).
    static func entries(_ text: String) -> [MountinfoEntry] {
        var out: [MountinfoEntry] = []
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
            guard parts.count >= 10, let dash = parts.firstIndex(of: "-"), dash >= 6, dash + 3 < parts.count else { continue }
            out.append(MountinfoEntry(device: parts[2], mountpoint: unescape(parts[4]), options: parts[5],
                                      fstype: parts[dash + 1], superOptions: parts[dash + 3]))
        }
        return out
    }

    /// mountinfo writes space, tab, newline and backslash as \ooo.
    static func unescape(_ s: String) -> String {
        var out: [UInt8] = []
        let b = Array(s.utf8)
        var i = 0
        while i < b.count {
            if b[i] == 0x5C, i + 3 < b.count {
                let digits = b[(i + 1)...(i + 3)]
                if digits.allSatisfy({ $0 >= 0x30 && $0 <= 0x37 }) {
                    let v = digits.reduce(0) { $0 * 8 + Int($1 - 0x30) }
                    if v < 256 { out.append(UInt8(v)); i += 4; continue }
                }
            }
            out.append(b[i])
            i += 1
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// This process's mountinfo, whole.
    static func read() -> String? {
        var fd: Int32
        repeat { fd = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC) } while fd < 0 && errno == EINTR
        guard fd >= 0 else { return nil }
        defer { FD.close(fd) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            out += buf[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }
}
