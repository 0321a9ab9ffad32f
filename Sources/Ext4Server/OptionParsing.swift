// The option string is split by libmount (quoting and escaping as mount(8)
// does), then validated here into the adapter's ServerOptions value.

import CMount
import Ext4Fuse
import Glibc

extension ServerOptions {
    public enum ParseError: Error, Equatable, CustomStringConvertible {
        case bad(String)
        public var description: String { switch self { case .bad(let s): return s } }
    }

    /// Split an option string with libmount.
    public static func split(_ s: String) throws(ParseError) -> [(String, String?)] {
        var out: [(String, String?)] = []
        guard !s.isEmpty else { return out }
        // libmount's iterator advances a char* cursor through a mutable copy.
        var copy = Array(s.utf8CString)
        let rc: Int32 = copy.withUnsafeMutableBufferPointer { buf -> Int32 in
            guard let base = buf.baseAddress else { return -1 }
            var cursor: UnsafeMutablePointer<CChar>? = base
            while true {
                var name: UnsafeMutablePointer<CChar>? = nil, value: UnsafeMutablePointer<CChar>? = nil
                var nsz = 0, vsz = 0
                let r = mnt_optstr_next_option(&cursor, &name, &nsz, &value, &vsz)
                if r == 1 { return 0 }
                if r < 0 { return r }
                guard let name else { return -1 }
                let n = String(decoding: UnsafeRawBufferPointer(start: name, count: nsz), as: UTF8.self)
                let v = value.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: vsz), as: UTF8.self) }
                out.append((n, v))
            }
        }
        guard rc == 0 else { throw .bad("cannot parse mount options \"\(s)\"") }
        return out
    }

    public static func parse(_ s: String) throws(ParseError) -> ServerOptions {
        var o = ServerOptions()
        for (name, value) in try split(s) {
            func flag() throws(ParseError) {
                guard value == nil else { throw .bad("option \(name) takes no value") }
            }
            switch name {
            case "ro": try flag(); o.readOnly = true
            case "rw": try flag(); o.readOnly = false
            case "norecovery", "noload": try flag(); o.noRecovery = true
            case "suid": try flag(); o.allowSuid = true
            case "nosuid": try flag(); o.allowSuid = false
            case "dev": try flag(); o.allowDev = true
            case "nodev": try flag(); o.allowDev = false
            case "cache_blocks":
                guard let v = value, let n = Int(v), n >= 16, n <= 1 << 24 else {
                    throw .bad("cache_blocks needs a number of blocks between 16 and 16777216")
                }
                o.cacheBlocks = n
            case "commit":
                guard let v = value, let n = Int(v), n >= 0, n <= 86400 else {
                    throw .bad("commit needs a number of seconds between 0 and 86400")
                }
                o.commitSeconds = n
            case "iomap":
                switch value {
                case "1": o.iomap = true
                case "0": o.iomap = false
                default: throw .bad("iomap must be 0 or 1")
                }
            case "iomap_cache":
                switch value {
                case "1": o.iomapCache = true
                case "0": o.iomapCache = false
                default: throw .bad("iomap_cache must be 0 or 1")
                }
            case "writeback_cache":
                switch value {
                case "1": o.writebackCache = true
                case "0": o.writebackCache = false
                default: throw .bad("writeback_cache must be 0 or 1")
                }
            case "uring":
                switch value {
                case "1": o.uring = true
                case "0": o.uring = false
                default: throw .bad("uring must be 0 or 1")
                }
            case "seccomp":
                switch value {
                case "1": o.seccomp = .enforce
                case "0": o.seccomp = .off
                case "log": o.seccomp = .log
                default: throw .bad("seccomp must be 1, 0 or log")
                }
            // Generic VFS options the kernel applies itself.
            case "exec", "noexec", "atime", "noatime", "relatime", "norelatime", "strictatime",
                 "nodiratime", "diratime", "lazytime", "nolazytime", "sync", "async", "dirsync",
                 "defaults", "auto", "noauto", "user", "nouser", "nofail", "_netdev":
                try flag()
                o.kernelOptions.append(name)
            default:
                if name.hasPrefix("x-") || name.hasPrefix("X-") { continue }  // userspace-only (fstab)
                throw .bad("unknown mount option \"\(name)\"")
            }
        }
        return o
    }
}
