#if canImport(Glibc)
import Glibc
#endif

/// Constants of the helper<->server protocol (libfuse upstream v1 + ext4iomap v2).
public enum ServiceProtocol {
    /// Largest command or reply datagram (FUSE_SERVICE_MAX_CMD_SIZE).
    public static let maxMessageSize = 65536
    /// Largest argv memfd a server accepts (FUSE_SERVICE_MAX_ARGV_SIZE).
    public static let maxArgvSize = 1_048_576
    /// Largest argc in the argv memfd.
    public static let maxArgc = 4096
    /// Versions spoken here.
    public static let minVersion: UInt16 = 1
    public static let maxVersion: UInt16 = 2
    /// Reserved FILE names.
    public static let argvName = "argv"
    public static let fuseDevName = "fusedev"
}

/// First u32 (big-endian) of every datagram: the ASCII tag.
public enum Magic: UInt32, Sendable, CaseIterable {
    case hello = 0x5341_4654 // SAFT
    case helloReply = 0x4c41_5354 // LAST
    case open = 0x4f50_454e // OPEN
    case openBlockDevice = 0x4244_4556 // BDEV
    case fsopen = 0x5459_5045 // TYPE
    case source = 0x4e41_4d45 // NAME
    case options = 0x4f50_5453 // OPTS
    case mountpoint = 0x4d4e_5450 // MNTP
    case mtab = 0x4d54_4142 // MTAB
    case iomap = 0x494f_4d41 // IOMA (v2)
    case mount = 0x444f_4954 // DOIT
    case goodbye = 0x4259_4545 // BYEE
    case file = 0x4649_4c45 // FILE
    case simpleReply = 0x5245_504c // REPL
    case args = 0x4152_4753 // ARGS (argv memfd header)
}

/// HELLO flags.
public struct HelloFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let allowOther = HelloFlags(rawValue: 1 << 0)
    public static let fuseblk = HelloFlags(rawValue: 1 << 1)
    public static let known: HelloFlags = [.allowOther, .fuseblk]
}

/// OPEN/BDEV request flags.
public struct OpenRequestFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// Upstream: do not log a failure.
    public static let quiet = OpenRequestFlags(rawValue: 1 << 0)
    /// v2 extension: turn a regular file into a loop device.
    public static let loopDevice = OpenRequestFlags(rawValue: 1 << 16)
    public static func known(version: UInt16) -> OpenRequestFlags {
        version >= 2 ? [.quiet, .loopDevice] : [.quiet]
    }
}

/// TYPE flags.
public struct FsopenFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let fuseblk = FsopenFlags(rawValue: 1 << 0)
    public static let known: FsopenFlags = [.fuseblk]
}

/// IOMA modes (v2).
public enum IomapMode: UInt16, Sendable {
    case optional = 0x503F // "P?"
    case mandatory = 0x5021 // "P!"
}

/// Which kind of open request.
public enum OpenKind: Sendable, Equatable {
    case file // OPEN
    case blockDevice // BDEV
}

public struct OpenRequest: Sendable, Equatable {
    public var kind: OpenKind
    public var openFlags: UInt32
    public var createMode: UInt32
    public var requestFlags: OpenRequestFlags
    public var blockSize: UInt32
    public var path: String
    public init(kind: OpenKind, openFlags: UInt32, createMode: UInt32 = 0,
                requestFlags: OpenRequestFlags = [], blockSize: UInt32 = 0, path: String) {
        self.kind = kind
        self.openFlags = openFlags
        self.createMode = createMode
        self.requestFlags = requestFlags
        self.blockSize = blockSize
        self.path = path
    }
}

/// Every datagram of the protocol.
public enum ServiceMessage: Sendable, Equatable {
    case hello(minVersion: UInt16, maxVersion: UInt16, flags: HelloFlags)
    case helloReply(version: UInt16)
    case simpleReply(error: UInt32)
    case file(error: UInt32, path: String)
    case open(OpenRequest)
    case fsopen(flags: FsopenFlags)
    case source(String)
    case options(String)
    case mtab(String)
    case mountpoint(expectedFormat: UInt16, path: String)
    case mount(msFlags: UInt32)
    case goodbye(exitCode: UInt32)
    case iomap(mode: IomapMode)

    public var magic: Magic {
        switch self {
        case .hello: return .hello
        case .helloReply: return .helloReply
        case .simpleReply: return .simpleReply
        case .file: return .file
        case .open(let r): return r.kind == .file ? .open : .openBlockDevice
        case .fsopen: return .fsopen
        case .source: return .source
        case .options: return .options
        case .mtab: return .mtab
        case .mountpoint: return .mountpoint
        case .mount: return .mount
        case .goodbye: return .goodbye
        case .iomap: return .iomap
        }
    }
}

/// Why a datagram was refused. `errno` is the one mapping to the errno sent back.
public enum WireError: Error, Equatable, Sendable, CustomStringConvertible {
    case tooShort(Int)
    case tooLong(Int)
    case wrongSize(magic: Magic, size: Int)
    case missingNul
    case embeddedNul
    case invalidUTF8
    case unknownMagic(UInt32)
    case unexpected(Magic)
    case nonZeroPadding
    case unknownFlags(UInt32)
    case badValue(String)

    public var errno: Int32 {
        switch self {
        case .unknownMagic, .unexpected: return EPROTO
        case .tooLong: return EMSGSIZE
        default: return EINVAL
        }
    }

    public var description: String {
        switch self {
        case .tooShort(let n): return "message too short (\(n) bytes)"
        case .tooLong(let n): return "message too long (\(n) bytes)"
        case .wrongSize(let m, let n): return "wrong size \(n) for \(m)"
        case .missingNul: return "string not NUL-terminated"
        case .embeddedNul: return "string contains a NUL byte"
        case .invalidUTF8: return "string is not valid UTF-8"
        case .unknownMagic(let m): return "unknown magic 0x\(String(m, radix: 16))"
        case .unexpected(let m): return "unexpected message \(m)"
        case .nonZeroPadding: return "non-zero padding"
        case .unknownFlags(let f): return "unknown flags 0x\(String(f, radix: 16))"
        case .badValue(let s): return s
        }
    }
}

// MARK: - Byte helpers (bounds-checked; never trap on peer data)

struct ByteWriter {
    var bytes: [UInt8] = []
    init(capacity: Int = 32) { bytes.reserveCapacity(capacity) }
    mutating func u16(_ v: UInt16) { bytes.append(UInt8(v >> 8)); bytes.append(UInt8(v & 0xff)) }
    mutating func u32(_ v: UInt32) {
        bytes.append(UInt8(v >> 24)); bytes.append(UInt8((v >> 16) & 0xff))
        bytes.append(UInt8((v >> 8) & 0xff)); bytes.append(UInt8(v & 0xff))
    }
    mutating func cString(_ s: String) { bytes.append(contentsOf: s.utf8); bytes.append(0) }
}

struct ByteReader {
    let bytes: [UInt8]
    var offset: Int = 0
    init(_ b: [UInt8]) { bytes = b }
    var remaining: Int { bytes.count - offset }
    mutating func u16() -> UInt16? {
        guard remaining >= 2 else { return nil }
        let v = UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
        offset += 2
        return v
    }
    mutating func u32() -> UInt32? {
        guard remaining >= 4 else { return nil }
        var v: UInt32 = 0
        for i in 0..<4 { v = v << 8 | UInt32(bytes[offset + i]) }
        offset += 4
        return v
    }
    /// The rest of the datagram as a string that must end in exactly one NUL.
    mutating func cStringToEnd() throws(WireError) -> String {
        guard remaining >= 1 else { throw .missingNul }
        guard bytes[bytes.count - 1] == 0 else { throw .missingNul }
        let body = bytes[offset..<(bytes.count - 1)]
        if body.contains(0) { throw .embeddedNul }
        guard let s = String(validating: body, as: UTF8.self) else { throw .invalidUTF8 }
        offset = bytes.count
        return s
    }
}

// MARK: - Codec

public enum ServiceCodec {
    /// Encode one message as one datagram.
    public static func encode(_ m: ServiceMessage) -> [UInt8] {
        var w = ByteWriter()
        w.u32(m.magic.rawValue)
        switch m {
        case .hello(let lo, let hi, let flags):
            w.u16(lo); w.u16(hi); w.u32(flags.rawValue)
        case .helloReply(let v):
            w.u16(v); w.u16(0)
        case .simpleReply(let e):
            w.u32(e)
        case .file(let e, let path):
            w.u32(e); w.cString(path)
        case .open(let r):
            w.u32(r.openFlags); w.u32(r.createMode); w.u32(r.requestFlags.rawValue); w.u32(r.blockSize)
            w.cString(r.path)
        case .fsopen(let f):
            w.u32(f.rawValue)
        case .source(let s), .options(let s), .mtab(let s):
            w.cString(s)
        case .mountpoint(let fmt, let path):
            w.u16(fmt); w.u16(0); w.cString(path)
        case .mount(let f):
            w.u32(f)
        case .goodbye(let c):
            w.u32(c)
        case .iomap(let mode):
            w.u16(mode.rawValue); w.u16(0)
        }
        return w.bytes
    }

    /// The magic of a datagram, if it has one.
    public static func peekMagic(_ bytes: [UInt8]) -> UInt32? {
        var r = ByteReader(bytes)
        return r.u32()
    }

    /// Decode one datagram. `version` is the negotiated version (0 before HELLO):
    /// v2-only messages and flags are refused under version 1.
    public static func decode(_ bytes: [UInt8], version: UInt16) throws(WireError) -> ServiceMessage {
        if bytes.count < 4 { throw .tooShort(bytes.count) }
        if bytes.count > ServiceProtocol.maxMessageSize { throw .tooLong(bytes.count) }
        var r = ByteReader(bytes)
        guard let raw = r.u32() else { throw .tooShort(bytes.count) }
        guard let magic = Magic(rawValue: raw), magic != .args else { throw .unknownMagic(raw) }
        func exact(_ n: Int) throws(WireError) {
            if bytes.count != n { throw .wrongSize(magic: magic, size: bytes.count) }
        }
        func atLeast(_ n: Int) throws(WireError) {
            if bytes.count < n { throw .wrongSize(magic: magic, size: bytes.count) }
        }
        switch magic {
        case .hello:
            try exact(12)
            guard let lo = r.u16(), let hi = r.u16(), let f = r.u32() else { throw .tooShort(bytes.count) }
            if f & ~HelloFlags.known.rawValue != 0 { throw .unknownFlags(f) }
            if lo > hi || hi < 1 { throw .badValue("bad version range \(lo)..\(hi)") }
            return .hello(minVersion: lo, maxVersion: hi, flags: HelloFlags(rawValue: f))
        case .helloReply:
            try exact(8)
            guard let v = r.u16(), let pad = r.u16() else { throw .tooShort(bytes.count) }
            if pad != 0 { throw .nonZeroPadding }
            return .helloReply(version: v)
        case .simpleReply:
            try exact(8)
            guard let e = r.u32() else { throw .tooShort(bytes.count) }
            return .simpleReply(error: e)
        case .file:
            try atLeast(9)
            guard let e = r.u32() else { throw .tooShort(bytes.count) }
            return .file(error: e, path: try r.cStringToEnd())
        case .open, .openBlockDevice:
            try atLeast(21)
            guard let of = r.u32(), let cm = r.u32(), let rf = r.u32(), let bs = r.u32() else {
                throw .tooShort(bytes.count)
            }
            let known = OpenRequestFlags.known(version: version)
            if rf & ~known.rawValue != 0 { throw .unknownFlags(rf) }
            let path = try r.cStringToEnd()
            return .open(OpenRequest(kind: magic == .open ? .file : .blockDevice, openFlags: of, createMode: cm,
                                     requestFlags: OpenRequestFlags(rawValue: rf), blockSize: bs, path: path))
        case .fsopen:
            try exact(8)
            guard let f = r.u32() else { throw .tooShort(bytes.count) }
            if f & ~FsopenFlags.known.rawValue != 0 { throw .unknownFlags(f) }
            return .fsopen(flags: FsopenFlags(rawValue: f))
        case .source, .options, .mtab:
            try atLeast(5)
            let s = try r.cStringToEnd()
            return magic == .source ? .source(s) : magic == .options ? .options(s) : .mtab(s)
        case .mountpoint:
            try atLeast(9)
            guard let fmt = r.u16(), let pad = r.u16() else { throw .tooShort(bytes.count) }
            if pad != 0 { throw .nonZeroPadding }
            if fmt != 0 && fmt != UInt16(S_IFDIR) && fmt != UInt16(S_IFREG) {
                throw .badValue("bad expected file type 0x\(String(fmt, radix: 16))")
            }
            return .mountpoint(expectedFormat: fmt, path: try r.cStringToEnd())
        case .mount:
            try exact(8)
            guard let f = r.u32() else { throw .tooShort(bytes.count) }
            return .mount(msFlags: f)
        case .goodbye:
            try exact(8)
            guard let c = r.u32() else { throw .tooShort(bytes.count) }
            return .goodbye(exitCode: c)
        case .iomap:
            if version < 2 { throw .unknownMagic(raw) }
            try exact(8)
            guard let m = r.u16(), let pad = r.u16() else { throw .tooShort(bytes.count) }
            if pad != 0 { throw .nonZeroPadding }
            guard let mode = IomapMode(rawValue: m) else { throw .badValue("bad iomap mode 0x\(String(m, radix: 16))") }
            return .iomap(mode: mode)
        case .args:
            throw .unknownMagic(raw)
        }
    }

    /// Pick the version a server speaks for a helper offering lo...hi.
    public static func negotiate(offeredMin lo: UInt16, offeredMax hi: UInt16,
                                 supportedMax: UInt16 = ServiceProtocol.maxVersion) -> UInt16? {
        let v = min(hi, supportedMax)
        return v >= lo && v >= ServiceProtocol.minVersion ? v : nil
    }
}

// MARK: - argv memfd

public enum ArgvCodec {
    /// Encode `args` (args[0] = subtype) in the ARGS memfd layout.
    public static func encode(_ args: [String]) throws(WireError) -> [UInt8] {
        if args.isEmpty || args.count > ServiceProtocol.maxArgc { throw .badValue("bad argc \(args.count)") }
        var w = ByteWriter()
        w.u32(Magic.args.rawValue)
        w.u32(UInt32(args.count))
        var pos = 8 + 8 * args.count
        var strings = ByteWriter()
        for a in args {
            if a.utf8.contains(0) { throw .embeddedNul }
            let len = a.utf8.count + 1
            w.u32(UInt32(clamping: pos)); w.u32(UInt32(clamping: len))
            strings.cString(a)
            pos += len
            if pos > ServiceProtocol.maxArgvSize { throw .tooLong(pos) }
        }
        return w.bytes + strings.bytes
    }

    /// Decode an ARGS memfd image. Every position and length is bounds-checked.
    public static func decode(_ bytes: [UInt8]) throws(WireError) -> [String] {
        if bytes.count > ServiceProtocol.maxArgvSize { throw .tooLong(bytes.count) }
        var r = ByteReader(bytes)
        guard let magic = r.u32(), let argc32 = r.u32() else { throw .tooShort(bytes.count) }
        if magic != Magic.args.rawValue { throw .unknownMagic(magic) }
        let argc = Int(argc32)
        if argc == 0 || argc > ServiceProtocol.maxArgc || argc > (bytes.count - 8) / 8 {
            throw .badValue("bad argc \(argc32)")
        }
        var out: [String] = []
        out.reserveCapacity(argc)
        for _ in 0..<argc {
            guard let p32 = r.u32(), let l32 = r.u32() else { throw .tooShort(bytes.count) }
            let p = Int(p32), l = Int(l32)
            if l < 1 || p < 8 + 8 * argc || p > bytes.count || l > bytes.count - p {
                throw .badValue("argv entry out of bounds")
            }
            var sr = ByteReader(Array(bytes[p..<(p + l)]))
            out.append(try sr.cStringToEnd())
        }
        return out
    }
}
