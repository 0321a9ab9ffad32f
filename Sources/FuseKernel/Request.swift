// Decoding of every request the kernel can send. Bounds-checked: a short,
// oversized or garbled request produces a DecodeFailure, never a trap.

/// Credentials and routing of one request.
public struct FuseRequestHeader: Sendable, Equatable {
    public var opcodeRaw: UInt32
    public var unique: UInt64
    public var nodeid: UInt64
    public var uid: UInt32
    public var gid: UInt32
    public var pid: UInt32
    public var opcode: FuseOpcode? { FuseOpcode(rawValue: opcodeRaw) }
    public init(opcodeRaw: UInt32, unique: UInt64, nodeid: UInt64, uid: UInt32 = 0, gid: UInt32 = 0, pid: UInt32 = 0) {
        self.opcodeRaw = opcodeRaw; self.unique = unique; self.nodeid = nodeid
        self.uid = uid; self.gid = gid; self.pid = pid
    }
}

/// Names in requests are raw bytes (Linux names are not necessarily UTF-8).
public typealias FuseName = [UInt8]

public enum FuseRequest: Sendable, Equatable {
    case lookup(name: FuseName)
    case forget(FuseForgetIn)
    case batchForget([FuseForgetOne])
    case getattr(FuseGetattrIn)
    case setattr(FuseSetattrIn)
    case readlink
    case symlink(name: FuseName, target: FuseName)
    case mknod(FuseMknodIn, name: FuseName)
    case mkdir(FuseMkdirIn, name: FuseName)
    case unlink(name: FuseName)
    case rmdir(name: FuseName)
    case rename(newdir: UInt64, flags: UInt32, oldName: FuseName, newName: FuseName)
    case link(FuseLinkIn, name: FuseName)
    case open(FuseOpenIn)
    case read(FuseReadIn)
    case write(FuseWriteIn, data: [UInt8])
    case statfs
    case release(FuseReleaseIn)
    case fsync(FuseFsyncIn)
    case setxattr(FuseSetxattrIn, name: FuseName, value: [UInt8])
    case getxattr(FuseGetxattrIn, name: FuseName)
    case listxattr(FuseGetxattrIn)
    case removexattr(name: FuseName)
    case flush(FuseFlushIn)
    case initialize(FuseInitIn)
    case opendir(FuseOpenIn)
    case readdir(FuseReadIn)
    case readdirplus(FuseReadIn)
    case releasedir(FuseReleaseIn)
    case fsyncdir(FuseFsyncIn)
    case getlk(FuseLkIn)
    case setlk(FuseLkIn, wait: Bool)
    case access(FuseAccessIn)
    case create(FuseCreateIn, name: FuseName)
    case tmpfile(FuseCreateIn, name: FuseName)
    case interrupt(FuseInterruptIn)
    case bmap(FuseBmapIn)
    case destroy
    case ioctl(FuseIoctlIn, input: [UInt8])
    case poll(FusePollIn)
    case notifyReply(FuseNotifyRetrieveIn, data: [UInt8])
    case fallocate(FuseFallocateIn)
    case lseek(FuseLseekIn)
    case copyFileRange(FuseCopyFileRangeIn, is64: Bool)
    case setupMapping(FuseSetupmappingIn)
    case removeMapping([FuseRemovemappingOne])
    case syncfs(FuseSyncfsIn)
    case statx(FuseStatxIn)
    case freezeFS(FuseFreezefsIn)
    case unfreezeFS
    case shutdownFS(FuseShutdownfsIn)
    case iomapConfig(FuseIomapConfigIn)
    case iomapBegin(FuseIomapBeginIn)
    case iomapEnd(FuseIomapEndIn)
    case iomapIoend(FuseIomapIoendIn)
}

/// Why a request could not be decoded, and what to do about it.
public struct DecodeFailure: Error, Equatable, Sendable {
    /// The header, when at least the header was readable (then a reply can be sent).
    public var header: FuseRequestHeader?
    /// Negative errno to answer with (when a reply is allowed).
    public var errno: Int32
    public var reason: String
}

/// Protocol parameters that change how requests are laid out.
public struct FuseDecodeContext: Sendable {
    /// Negotiated minor version (before INIT: 0).
    public var minor: UInt32 = 0
    /// FUSE_SETXATTR_EXT negotiated: setxattr_in is 16 bytes instead of 8.
    public var setxattrExt = false
    /// Largest WRITE payload we told the kernel about.
    public var maxWrite: Int = 1 << 20
    public init(minor: UInt32 = 0, setxattrExt: Bool = false, maxWrite: Int = 1 << 20) {
        self.minor = minor
        self.setxattrExt = setxattrExt
        self.maxWrite = maxWrite
    }
}

/// A decoded message as the session dispatches it: a WRITE's data still lies
/// in the receive buffer and is valid only while the request is handled.
public enum FuseDecoded {
    case request(FuseRequest)
    case write(FuseWriteIn, data: UnsafeRawBufferPointer)
}

public enum FuseDecoder {
    /// Largest message we accept at all (a WRITE of max_write plus headers, with slack).
    public static func maxMessage(_ ctx: FuseDecodeContext) -> Int { ctx.maxWrite + 4096 }

    /// Decode one message as read from the transport.
    public static func decode(_ msg: UnsafeRawBufferPointer, context ctx: FuseDecodeContext)
        -> Result<(FuseRequestHeader, FuseRequest), DecodeFailure>
    {
        decodeBorrowing(msg, context: ctx).map { h, d in
            switch d {
            case .request(let r): return (h, r)
            case .write(let w, let data): return (h, .write(w, data: Array(data)))
            }
        }
    }

    /// Decode one message; a WRITE's data is left where it is, in `msg`
    /// (the session hands it to the file system without copying it).
    public static func decodeBorrowing(_ msg: UnsafeRawBufferPointer, context ctx: FuseDecodeContext)
        -> Result<(FuseRequestHeader, FuseDecoded), DecodeFailure>
    {
        var r = WireReader(msg)
        guard let h = try? FuseInHeader(from: &r) else {
            return .failure(DecodeFailure(header: nil, errno: -22, reason: "message of \(msg.count) bytes is shorter than fuse_in_header"))
        }
        let header = FuseRequestHeader(opcodeRaw: h.opcode, unique: h.unique, nodeid: h.nodeid,
                                       uid: h.uid, gid: h.gid, pid: h.pid)
        func fail(_ errno: Int32, _ why: String) -> Result<(FuseRequestHeader, FuseDecoded), DecodeFailure> {
            .failure(DecodeFailure(header: header, errno: errno, reason: why))
        }
        guard Int(h.len) == msg.count else {
            return fail(-22, "header length \(h.len) disagrees with message size \(msg.count)")
        }
        guard msg.count <= maxMessage(ctx) else { return fail(-22, "message of \(msg.count) bytes is oversized") }
        guard let op = FuseOpcode(rawValue: h.opcode), op != .cuseInit else {
            return fail(-38, "unsupported opcode \(h.opcode)")
        }
        // Request extensions (security context, supplementary groups) sit at the end.
        let extBytes = Int(h.totalExtlen) * 8
        guard extBytes <= r.remaining else { return fail(-22, "extension length \(extBytes) exceeds payload") }
        let body = UnsafeRawBufferPointer(rebasing: msg[FuseInHeader.wireSize..<(msg.count - extBytes)])
        var b = WireReader(body)
        do {
            if op == .write {
                let (m, data) = try decodeWrite(&b, ctx)
                return .success((header, .write(m, data: data)))
            }
            let req = try decodeBody(op, &b, ctx)
            // Fixed-size requests must not carry trailing garbage.
            if b.remaining != 0 && !op.allowsTrailing {
                return fail(-22, "\(op) carries \(b.remaining) unexpected trailing bytes")
            }
            return .success((header, .request(req)))
        } catch {
            return fail(-22, "\(op): \(error)")
        }
    }

    /// WRITE: fuse_write_in, then exactly `size` data bytes (at most max_write).
    static func decodeWrite(_ b: inout WireReader, _ ctx: FuseDecodeContext) throws(WireError) -> (FuseWriteIn, UnsafeRawBufferPointer) {
        let m = try FuseWriteIn(from: &b)
        guard Int(m.size) == b.remaining else {
            throw .invalid("write size \(m.size) but \(b.remaining) data bytes")
        }
        guard Int(m.size) <= ctx.maxWrite else { throw .oversized(Int(m.size)) }
        return (m, b.rest())
    }

    static func decodeBody(_ op: FuseOpcode, _ b: inout WireReader, _ ctx: FuseDecodeContext) throws(WireError) -> FuseRequest {
        switch op {
        case .lookup: return .lookup(name: try b.cString())
        case .forget: return .forget(try FuseForgetIn(from: &b))
        case .batchForget:
            let hdr = try FuseBatchForgetIn(from: &b)
            let n = Int(hdr.count)
            guard n.multipliedReportingOverflow(by: FuseForgetOne.wireSize).partialValue == b.remaining,
                  !n.multipliedReportingOverflow(by: FuseForgetOne.wireSize).overflow
            else { throw .invalid("batch_forget count \(n) does not match \(b.remaining) payload bytes") }
            var items: [FuseForgetOne] = []
            items.reserveCapacity(n)
            for _ in 0..<n { items.append(try FuseForgetOne(from: &b)) }
            return .batchForget(items)
        case .getattr: return .getattr(try FuseGetattrIn(from: &b))
        case .setattr: return .setattr(try FuseSetattrIn(from: &b))
        case .readlink: return .readlink
        case .symlink:
            let name = try b.cString()
            let target = try b.cString(max: 4095)
            return .symlink(name: name, target: target)
        case .mknod: let m = try FuseMknodIn(from: &b); return .mknod(m, name: try b.cString())
        case .mkdir: let m = try FuseMkdirIn(from: &b); return .mkdir(m, name: try b.cString())
        case .unlink: return .unlink(name: try b.cString())
        case .rmdir: return .rmdir(name: try b.cString())
        case .rename:
            let m = try FuseRenameIn(from: &b)
            let o = try b.cString(); let n = try b.cString()
            return .rename(newdir: m.newdir, flags: 0, oldName: o, newName: n)
        case .rename2:
            let m = try FuseRename2In(from: &b)
            let o = try b.cString(); let n = try b.cString()
            return .rename(newdir: m.newdir, flags: m.flags, oldName: o, newName: n)
        case .link: let m = try FuseLinkIn(from: &b); return .link(m, name: try b.cString())
        case .open: return .open(try FuseOpenIn(from: &b))
        case .read: return .read(try FuseReadIn(from: &b))
        case .write:
            let (m, data) = try decodeWrite(&b, ctx)
            return .write(m, data: Array(data))
        case .statfs: return .statfs
        case .release: return .release(try FuseReleaseIn(from: &b))
        case .fsync: return .fsync(try FuseFsyncIn(from: &b))
        case .setxattr:
            let m: FuseSetxattrIn
            if ctx.setxattrExt {
                m = try FuseSetxattrIn(from: &b)
            } else {
                m = FuseSetxattrIn(size: try b.u32(), flags: try b.u32())
            }
            let name = try b.cString(max: FuseABI.xattrNameMax)
            guard Int(m.size) <= FuseABI.xattrSizeMax else { throw .oversized(Int(m.size)) }
            guard Int(m.size) == b.remaining else {
                throw .invalid("setxattr size \(m.size) but \(b.remaining) value bytes")
            }
            return .setxattr(m, name: name, value: Array(b.rest()))
        case .getxattr:
            let m = try FuseGetxattrIn(from: &b)
            return .getxattr(m, name: try b.cString(max: FuseABI.xattrNameMax))
        case .listxattr: return .listxattr(try FuseGetxattrIn(from: &b))
        case .removexattr: return .removexattr(name: try b.cString(max: FuseABI.xattrNameMax))
        case .flush: return .flush(try FuseFlushIn(from: &b))
        case .initialize:
            // Kernels before 7.36 send a 16-byte fuse_init_in; accept both forms.
            if b.remaining >= FuseInitIn.wireSize { return .initialize(try FuseInitIn(from: &b)) }
            let major = try b.u32(), minor = try b.u32(), ra = try b.u32(), flags = try b.u32()
            return .initialize(FuseInitIn(major: major, minor: minor, maxReadahead: ra, flags: flags))
        case .opendir: return .opendir(try FuseOpenIn(from: &b))
        case .readdir: return .readdir(try FuseReadIn(from: &b))
        case .readdirplus: return .readdirplus(try FuseReadIn(from: &b))
        case .releasedir: return .releasedir(try FuseReleaseIn(from: &b))
        case .fsyncdir: return .fsyncdir(try FuseFsyncIn(from: &b))
        case .getlk: return .getlk(try FuseLkIn(from: &b))
        case .setlk: return .setlk(try FuseLkIn(from: &b), wait: false)
        case .setlkw: return .setlk(try FuseLkIn(from: &b), wait: true)
        case .access: return .access(try FuseAccessIn(from: &b))
        case .create: let m = try FuseCreateIn(from: &b); return .create(m, name: try b.cString())
        case .tmpfile: let m = try FuseCreateIn(from: &b); return .tmpfile(m, name: try b.cString())
        case .interrupt: return .interrupt(try FuseInterruptIn(from: &b))
        case .bmap: return .bmap(try FuseBmapIn(from: &b))
        case .destroy: return .destroy
        case .ioctl:
            let m = try FuseIoctlIn(from: &b)
            guard Int(m.inSize) == b.remaining else {
                throw .invalid("ioctl in_size \(m.inSize) but \(b.remaining) bytes")
            }
            return .ioctl(m, input: Array(b.rest()))
        case .poll: return .poll(try FusePollIn(from: &b))
        case .notifyReply:
            let m = try FuseNotifyRetrieveIn(from: &b)
            guard Int(m.size) == b.remaining else { throw .invalid("notify_reply size mismatch") }
            return .notifyReply(m, data: Array(b.rest()))
        case .fallocate: return .fallocate(try FuseFallocateIn(from: &b))
        case .lseek: return .lseek(try FuseLseekIn(from: &b))
        case .copyFileRange: return .copyFileRange(try FuseCopyFileRangeIn(from: &b), is64: false)
        case .copyFileRange64: return .copyFileRange(try FuseCopyFileRangeIn(from: &b), is64: true)
        case .setupMapping: return .setupMapping(try FuseSetupmappingIn(from: &b))
        case .removeMapping:
            let m = try FuseRemovemappingIn(from: &b)
            let n = Int(m.count)
            let (bytes, ovf) = n.multipliedReportingOverflow(by: FuseRemovemappingOne.wireSize)
            guard !ovf, bytes == b.remaining else { throw .invalid("removemapping count mismatch") }
            var items: [FuseRemovemappingOne] = []
            for _ in 0..<n { items.append(try FuseRemovemappingOne(from: &b)) }
            return .removeMapping(items)
        case .syncfs: return .syncfs(try FuseSyncfsIn(from: &b))
        case .statx: return .statx(try FuseStatxIn(from: &b))
        case .freezeFS: return .freezeFS(try FuseFreezefsIn(from: &b))
        case .unfreezeFS: return .unfreezeFS
        case .shutdownFS: return .shutdownFS(try FuseShutdownfsIn(from: &b))
        case .iomapConfig: return .iomapConfig(try FuseIomapConfigIn(from: &b))
        case .iomapBegin: return .iomapBegin(try FuseIomapBeginIn(from: &b))
        case .iomapEnd: return .iomapEnd(try FuseIomapEndIn(from: &b))
        case .iomapIoend: return .iomapIoend(try FuseIomapIoendIn(from: &b))
        case .cuseInit: throw .invalid("CUSE is not served")
        }
    }
}

extension FuseOpcode {
    /// Opcodes whose payload may legitimately be longer than what we parse
    /// (the kernel pads names to its own buffer sizes in some versions).
    var allowsTrailing: Bool {
        switch self {
        case .initialize: return true  // future kernels may grow fuse_init_in
        default: return false
        }
    }
}

