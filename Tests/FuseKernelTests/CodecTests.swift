import FuseKernel
import Testing

/// One representative request of every kind, with distinctive field values.
let sampleRequests: [FuseRequest] = {
    let name = Array("file.txt".utf8)
    let io = FuseIomapIo(offset: 4096, length: 8192, addr: 1 << 20, type: 2, flags: 1, dev: 1)
    let lk = FuseLkIn(fh: 9, owner: 77, lk: FuseFileLock(start: 1, end: 99, type: 1, pid: 42), lkFlags: 1)
    let rd = FuseReadIn(fh: 3, offset: 4096, size: 65536, readFlags: 2, lockOwner: 5, flags: 0o2)
    return [
        .lookup(name: name),
        .forget(FuseForgetIn(nlookup: 3)),
        .batchForget([FuseForgetOne(nodeid: 5, nlookup: 1), FuseForgetOne(nodeid: 6, nlookup: 2)]),
        .getattr(FuseGetattrIn(getattrFlags: 1, fh: 11)),
        .setattr(FuseSetattrIn(valid: 0x1ff, fh: 1, size: 12345, lockOwner: 2, atime: 3, mtime: 4, ctime: 5,
                               atimensec: 6, mtimensec: 7, ctimensec: 8, mode: 0o100644, uid: 1000, gid: 100)),
        .readlink,
        .symlink(name: Array("link".utf8), target: Array("../some/where".utf8)),
        .mknod(FuseMknodIn(mode: 0o20644, rdev: 0x0801, umask: 0o22), name: name),
        .mkdir(FuseMkdirIn(mode: 0o755, umask: 0o22), name: Array("dir".utf8)),
        .unlink(name: name),
        .rmdir(name: Array("dir".utf8)),
        .rename(newdir: 7, flags: 0, oldName: Array("a".utf8), newName: Array("b".utf8)),
        .rename(newdir: 8, flags: FuseMiscFlags.renameExchange, oldName: Array("x".utf8), newName: Array("y".utf8)),
        .link(FuseLinkIn(oldnodeid: 12), name: Array("hard".utf8)),
        .open(FuseOpenIn(flags: 0o102, openFlags: 1)),
        .read(rd),
        .write(FuseWriteIn(fh: 3, offset: 8, size: 5, writeFlags: 1, lockOwner: 0, flags: 0o2), data: Array("hello".utf8)),
        .statfs,
        .release(FuseReleaseIn(fh: 3, flags: 0o2, releaseFlags: 1, lockOwner: 4)),
        .fsync(FuseFsyncIn(fh: 3, fsyncFlags: 1)),
        .setxattr(FuseSetxattrIn(size: 3, flags: 1, setxattrFlags: 1), name: Array("user.k".utf8), value: [1, 2, 3]),
        .getxattr(FuseGetxattrIn(size: 128), name: Array("user.k".utf8)),
        .listxattr(FuseGetxattrIn(size: 0)),
        .removexattr(name: Array("user.k".utf8)),
        .flush(FuseFlushIn(fh: 3, lockOwner: 9)),
        .initialize(FuseInitIn(major: 7, minor: 45, maxReadahead: 131072, flags: 0x4000_0001, flags2: 0x800)),
        .opendir(FuseOpenIn(flags: 0o200000)),
        .readdir(rd),
        .readdirplus(rd),
        .releasedir(FuseReleaseIn(fh: 4)),
        .fsyncdir(FuseFsyncIn(fh: 4)),
        .getlk(lk),
        .setlk(lk, wait: false),
        .setlk(lk, wait: true),
        .access(FuseAccessIn(mask: 4)),
        .create(FuseCreateIn(flags: 0o1102, mode: 0o100600, umask: 0o22, openFlags: 0), name: name),
        .tmpfile(FuseCreateIn(flags: 0o20000002, mode: 0o100600, umask: 0o22), name: Array("tmp".utf8)),
        .interrupt(FuseInterruptIn(unique: 1234)),
        .bmap(FuseBmapIn(block: 7, blocksize: 4096)),
        .destroy,
        .ioctl(FuseIoctlIn(fh: 3, flags: 0, cmd: 0x8008_6601, arg: 0xdead, inSize: 4, outSize: 8), input: [1, 2, 3, 4]),
        .poll(FusePollIn(fh: 3, kh: 8, flags: 1, events: 1)),
        .notifyReply(FuseNotifyRetrieveIn(offset: 0, size: 2), data: [9, 9]),
        .fallocate(FuseFallocateIn(fh: 3, offset: 4096, length: 8192, mode: 1)),
        .lseek(FuseLseekIn(fh: 3, offset: 100, whence: 3)),
        .copyFileRange(FuseCopyFileRangeIn(fhIn: 1, offIn: 2, nodeidOut: 3, fhOut: 4, offOut: 5, len: 6, flags: 0), is64: false),
        .copyFileRange(FuseCopyFileRangeIn(fhIn: 1, offIn: 2, nodeidOut: 3, fhOut: 4, offOut: 5, len: 1 << 33, flags: 0), is64: true),
        .setupMapping(FuseSetupmappingIn(fh: 1, foffset: 2, len: 3, flags: 4, moffset: 5)),
        .removeMapping([FuseRemovemappingOne(moffset: 1, len: 2)]),
        .syncfs(FuseSyncfsIn()),
        .statx(FuseStatxIn(getattrFlags: 1, fh: 3, sxFlags: 0x800, sxMask: 0xfff)),
        .freezeFS(FuseFreezefsIn(unlinked: 2)),
        .unfreezeFS,
        .shutdownFS(FuseShutdownfsIn(flags: 0)),
        .iomapConfig(FuseIomapConfigIn(flags: 0x7f, maxbytes: .max, cacheMaxbytes: 262144)),
        .iomapBegin(FuseIomapBeginIn(opflags: 1, attrIno: 12, pos: 4096, count: 65536)),
        .iomapEnd(FuseIomapEndIn(opflags: 1, attrIno: 12, pos: 4096, count: 65536, written: 4096, map: io)),
        .iomapIoend(FuseIomapIoendIn(flags: 0x12, error: 0, attrIno: 12, pos: 0, newAddr: .max, written: 4096, dev: 1)),
    ]
}()

func header(_ unique: UInt64 = 42, node: UInt64 = 5) -> FuseRequestHeader {
    FuseRequestHeader(opcodeRaw: 0, unique: unique, nodeid: node, uid: 1000, gid: 100, pid: 321)
}

func decode(_ bytes: [UInt8], _ ctx: FuseDecodeContext = FuseDecodeContext(setxattrExt: true))
    -> Result<(FuseRequestHeader, FuseRequest), DecodeFailure>
{
    bytes.withUnsafeBytes { FuseDecoder.decode($0, context: ctx) }
}

/// Patch the length field so a cut or grown message is self-consistent.
func withLength(_ b: [UInt8]) -> [UInt8] {
    var b = b
    let n = UInt32(b.count)
    if b.count >= 4 { b[0] = UInt8(n & 0xff); b[1] = UInt8((n >> 8) & 0xff); b[2] = UInt8((n >> 16) & 0xff); b[3] = UInt8(n >> 24) }
    return b
}

@Suite struct CodecTests {
    @Test func everyOpcodeHasASample() {
        var seen = Set<UInt32>()
        for r in sampleRequests {
            let b = FuseRequestEncoder.encode(header(), r)
            seen.insert(UInt32(b[4]) | UInt32(b[5]) << 8 | UInt32(b[6]) << 16 | UInt32(b[7]) << 24)
        }
        let all = Set(FuseOpcode.allCases.filter { $0 != .cuseInit }.map(\.rawValue))
        #expect(seen == all, "missing: \(all.subtracting(seen).sorted())")
    }

    @Test(arguments: sampleRequests)
    func roundTrip(_ req: FuseRequest) throws {
        let bytes = FuseRequestEncoder.encode(header(), req)
        let (h, back) = try decode(bytes).get()
        #expect(back == req)
        #expect(h.unique == 42 && h.nodeid == 5 && h.uid == 1000 && h.gid == 100 && h.pid == 321)
    }

    /// Every strict prefix must fail cleanly; a readable header gets an errno back.
    @Test(arguments: sampleRequests)
    func truncated(_ req: FuseRequest) {
        let bytes = FuseRequestEncoder.encode(header(), req)
        for cut in 0..<bytes.count {
            let prefix = Array(bytes[0..<cut])
            // As read: the length field still claims the full size.
            guard case .failure(let f) = decode(prefix) else {
                Issue.record("prefix \(cut) of \(req) decoded")
                continue
            }
            #expect((f.header != nil) == (cut >= 40))
            #expect(f.errno < 0)
            // Self-consistent length: only requests whose body is optional may pass.
            if case .success(let (_, r)) = decode(withLength(prefix)) {
                #expect(r != req, "prefix \(cut) decoded to the same request")
            }
        }
    }

    @Test(arguments: sampleRequests)
    func trailingGarbage(_ req: FuseRequest) {
        if case .initialize = req { return }  // INIT tolerates a longer future fuse_init_in
        let bytes = withLength(FuseRequestEncoder.encode(header(), req) + [0xAA, 0xBB, 0xCC])
        switch decode(bytes) {
        case .failure(let f): #expect(f.errno == -22)
        case .success(let (_, r)):
            // Variable-length payloads absorb the bytes; they must then differ.
            #expect(r != req)
        }
    }

    @Test func oversizedAndMissingNul() {
        var big = FuseRequestEncoder.encode(header(), .lookup(name: Array(repeating: 0x61, count: 100)))
        big = withLength(Array(big.dropLast()))  // remove the NUL
        guard case .failure(let f) = decode(big) else { Issue.record("no NUL accepted"); return }
        #expect(f.errno == -22)
        let huge = withLength(FuseRequestEncoder.encode(header(), .lookup(name: [])) + Array(repeating: 0x62, count: 2 << 20))
        guard case .failure(let g) = decode(huge) else { Issue.record("oversized accepted"); return }
        #expect(g.errno == -22)
        // A WRITE whose size disagrees with its payload.
        let w = FuseRequestEncoder.encode(header(), .write(FuseWriteIn(fh: 1, offset: 0, size: 100), data: [1, 2, 3]))
        guard case .failure = decode(w) else { Issue.record("bad write size accepted"); return }
        // BATCH_FORGET with a count that overflows.
        let bf = withLength(FuseRequestEncoder.encode(header(), .batchForget([])).enumerated().map { i, b in i == 40 || i == 41 || i == 42 || i == 43 ? 0xff : b })
        guard case .failure = decode(bf) else { Issue.record("huge batch_forget accepted"); return }
    }

    @Test func unknownOpcodeGetsENOSYS() {
        var b = FuseRequestEncoder.encode(header(), .statfs)
        b[4] = 200; b[5] = 0
        guard case .failure(let f) = decode(b) else { Issue.record("opcode 200 decoded"); return }
        #expect(f.errno == -38)
        #expect(f.header?.unique == 42)
    }

    @Test func extensionsAreStripped() throws {
        // A CREATE carrying an 8-byte extension (supplementary groups) after the name.
        var b = FuseRequestEncoder.encode(header(), .create(FuseCreateIn(mode: 0o644), name: Array("x".utf8)))
        b[36] = 1  // total_extlen = 1 (8 bytes)
        b += FuseExtHeader(size: 8, type: FuseMiscFlags.extGroups).encoded
        let (_, r) = try decode(withLength(b)).get()
        #expect(r == .create(FuseCreateIn(mode: 0o644), name: Array("x".utf8)))
    }

    @Test func compatSetxattrLayout() throws {
        let ctx = FuseDecodeContext(setxattrExt: false)
        let r = FuseRequest.setxattr(FuseSetxattrIn(size: 2, flags: 1), name: Array("user.a".utf8), value: [7, 8])
        let b = FuseRequestEncoder.encode(header(), r, context: ctx)
        #expect(b.count == 40 + 8 + 7 + 2)
        let (_, back) = try decode(b, ctx).get()
        #expect(back == r)
    }

    @Test func shortInitFromOldKernels() throws {
        var w = WireWriter()
        FuseInHeader(len: 56, opcode: 26, unique: 1).encode(to: &w)
        w.u32(7); w.u32(31); w.u32(65536); w.u32(1)
        let (_, r) = try decode(w.bytes).get()
        #expect(r == .initialize(FuseInitIn(major: 7, minor: 31, maxReadahead: 65536, flags: 1)))
    }

    @Test func randomGarbageNeverTraps() {
        var rng = SystemRandomNumberGenerator()
        var failures = 0
        for i in 0..<20000 {
            let base = FuseRequestEncoder.encode(header(), sampleRequests[i % sampleRequests.count])
            var b = base
            // Flip a few bytes, sometimes in the header.
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                b[Int.random(in: 0..<b.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            }
            if Bool.random(using: &rng) { b = withLength(b) }
            if case .failure = decode(b) { failures += 1 }
        }
        #expect(failures > 0)
    }

    // MARK: replies

    @Test func errorReplyIsHeaderOnly() {
        let e = FuseReplyEncoder.error(unique: 9, errno: 2)
        #expect(e.count == 16)
        let h = try? FuseOutHeader.decode(e)
        #expect(h == FuseOutHeader(len: 16, error: -2, unique: 9))
        // Out-of-range errno values become EIO rather than something the kernel rejects.
        #expect((try? FuseOutHeader.decode(FuseReplyEncoder.error(unique: 1, errno: 9999)))?.error == -5)
    }

    @Test func structRoundTrips() throws {
        for t in allFuseWireStructs {
            let pattern = (0..<t.wireSize).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 5) }
            let once = try t.decode(pattern)
            let bytes = once.encoded
            #expect(bytes.count == t.wireSize, "\(t.cName)")
            let twice = try t.decode(bytes)
            #expect(twice.encoded == bytes, "\(t.cName)")
            // Truncated input is an error, not a trap.
            #expect(throws: WireError.self) { _ = try t.decode(Array(pattern.dropLast())) }
        }
    }

    @Test func dirBufferRespectsLimitAndAlignment() throws {
        var d = FuseDirBuffer(plus: false, limit: 100)
        let added1 = d.add(name: Array("a".utf8), ino: 1, type: 4, nextOffset: 1)  // 24+1 -> 32
        #expect(added1)
        let added2 = d.add(name: Array("abcdefgh".utf8), ino: 2, type: 8, nextOffset: 2)  // 32
        #expect(added2)
        let added3 = d.add(name: Array("x".utf8), ino: 3, type: 8, nextOffset: 3)  // 32 -> 96
        #expect(added3)
        let added4 = d.add(name: Array("y".utf8), ino: 4, type: 8, nextOffset: 4)  // would be 128
        #expect(!added4)
        #expect(d.bytes.count == 96 && d.count == 3)
        let first = try FuseDirent.decode(Array(d.bytes[0..<24]))
        #expect(first == FuseDirent(ino: 1, off: 1, namelen: 1, type: 4))
        var p = FuseDirBuffer(plus: true, limit: 4096)
        let added5 = p.add(name: Array("n".utf8), ino: 5, type: 8, nextOffset: 1, entry: FuseEntryOut(nodeid: 5))
        #expect(added5)
        #expect(p.bytes.count == 160)
        #expect(try FuseEntryOut.decode(Array(p.bytes[0..<128])).nodeid == 5)
        let added6 = p.add(name: [], ino: 1, type: 0, nextOffset: 1)
        #expect(!added6)
    }

    @Test func notificationHeaders() throws {
        let payload = FuseReplyEncoder.invalEntry(parent: 1, name: Array("abc".utf8))
        #expect(payload.count == 16 + 4)
        let h = try FuseOutHeader.decode(FuseReplyEncoder.notificationHeader(.invalEntry, payloadCount: payload.count))
        #expect(h == FuseOutHeader(len: 36, error: 3, unique: 0))
        let dev = FuseIomapDevInvalOut(dev: 1, range: FuseRange(offset: 0, length: 4096)).encoded
        #expect(dev.count == 24)
        let up = try FuseOutHeader.decode(FuseReplyEncoder.notificationHeader(.iomapUpsertMappings, payloadCount: 80))
        #expect(up.error == 100 && up.len == 96)
    }
}

extension FuseRequest: CustomTestStringConvertible {
    public var testDescription: String { String(describing: self).prefix(60).description }
}
