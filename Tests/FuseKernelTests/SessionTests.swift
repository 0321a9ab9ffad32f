import Foundation
import FuseKernel
import FuseTestSupport
import Glibc
import Synchronization
import Testing

/// Sessions driven over real transports. Serialized: they count live worker
/// threads and fds of the whole process.
extension LiveSessions {
@Suite struct SessionTests {
    @Test func initWithIomapOffered() throws {
        let fs = MemoryFS(wantIomap: true)
        let k = try TestKernel(fs: fs)
        let out = try k.initialize(minor: 99, flags: [.asyncRead, .initExt, .maxPages, .iomap, .setxattrExt, .posixLocks])
        #expect(out.major == 7)
        #expect(out.minor == 99)
        #expect(out.flags & UInt32(FuseInitFlags.initExt.rawValue) != 0)
        #expect(out.flags2 & 0x800 != 0)
        #expect(out.flags & UInt32(FuseInitFlags.posixLocks.rawValue) == 0, "not wanted, must not be granted")
        #expect(out.maxWrite == 1 << 20 && out.maxPages == 256)
        #expect(fs.info?.iomap == true && fs.info?.minor == 99)
        #expect(k.finish())
        #expect(k.runError == nil)
    }

    @Test func initWithoutIomapOffered() throws {
        let fs = MemoryFS(wantIomap: true)
        let k = try TestKernel(fs: fs)
        let out = try k.initialize(minor: 45, flags: [.asyncRead, .initExt, .maxPages])
        #expect(out.minor == 45)
        #expect(out.flags2 & 0x800 == 0)
        #expect(fs.info?.iomap == false)
        #expect(k.finish())
    }

    @Test func iomapOfferedButNotWanted() throws {
        let fs = MemoryFS(wantIomap: false)
        let k = try TestKernel(fs: fs)
        let out = try k.initialize(minor: 99, flags: [.initExt, .iomap])
        #expect(out.minor == 45)
        #expect(out.flags2 & 0x800 == 0)
        #expect(k.finish())
    }

    @Test func iomapBitWithoutInitExtIsNotAnOffer() throws {
        let fs = MemoryFS(wantIomap: true)
        let k = try TestKernel(fs: fs)
        // flags2 carries the bit, but INIT_EXT is missing: flags2 must be ignored.
        let out = try k.initialize(minor: 99, flags: FuseInitFlags(low: 1, high: 0x800))
        #expect(out.minor == 45 && out.flags2 == 0)
        #expect(k.finish())
    }

    @Test func oldAndNewMajorVersions() throws {
        let k = try TestKernel(fs: MemoryFS())
        let (e, _) = try k.call(.initialize(FuseInitIn(major: 7, minor: 20, flags: 0)), node: 0)
        #expect(e == -EPROTO)
        let (e2, p2) = try k.call(.initialize(FuseInitIn(major: 8, minor: 0, flags: 0)), node: 0)
        #expect(e2 == 0)
        #expect(try FuseInitOut.decode(p2).major == 7)
        #expect(k.finish())
    }

    @Test func requestsBeforeInitAndMalformed() throws {
        let k = try TestKernel(fs: MemoryFS())
        let (e, _) = try k.call(.statfs)
        #expect(e == -EIO)
        _ = try k.initialize(flags: [.initExt])
        // A second INIT is invalid.
        let (e2, _) = try k.call(.initialize(FuseInitIn(major: 7, minor: 45)), node: 0)
        #expect(e2 == -EINVAL)
        // A garbled request gets EINVAL with its unique.
        var b = FuseRequestEncoder.encode(FuseRequestHeader(opcodeRaw: 0, unique: 777, nodeid: 1), .getattr(FuseGetattrIn()))
        b.removeLast(4)
        k.sendRaw(b)
        let r = try #require(k.receive())
        #expect(try FuseOutHeader.decode(Array(r.prefix(16))) == FuseOutHeader(len: 16, error: -EINVAL, unique: 777))
        // A runt datagram is dropped without a reply; the session keeps serving.
        k.sendRaw([1, 2, 3])
        let (e3, p3) = try k.call(.statfs)
        #expect(e3 == 0 && p3.count == 80)
        // FORGET gets no reply.
        k.sendRaw(FuseRequestEncoder.encode(FuseRequestHeader(opcodeRaw: 0, unique: 900, nodeid: 1), .forget(FuseForgetIn(nlookup: 1))))
        #expect(k.receive(timeout: 200) == nil)
        #expect(k.finish())
    }

    @Test func operationsAndReplySizes() throws {
        let fs = MemoryFS()
        let k = try TestKernel(fs: fs)
        _ = try k.initialize(flags: [.initExt, .setxattrExt, .doReaddirplus])
        let (e, p) = try k.call(.create(FuseCreateIn(flags: 2, mode: 0o644), name: Array("f".utf8)))
        #expect(e == 0 && p.count == 144)
        let node = try FuseEntryOut.decode(Array(p.prefix(128))).nodeid
        let (we, wp) = try k.call(.write(FuseWriteIn(fh: 7, offset: 0, size: 3), data: [1, 2, 3]), node: node)
        #expect(try we == 0 && FuseWriteOut.decode(wp).size == 3)
        let (re, rp) = try k.call(.read(FuseReadIn(fh: 7, offset: 1, size: 100)), node: node)
        #expect(re == 0 && rp == [2, 3])
        _ = try k.call(.setxattr(FuseSetxattrIn(size: 4), name: Array("user.x".utf8), value: [9, 8, 7, 6]), node: node)
        let (ge, gp) = try k.call(.getxattr(FuseGetxattrIn(size: 0), name: Array("user.x".utf8)), node: node)
        #expect(try ge == 0 && FuseGetxattrOut.decode(gp).size == 4)
        let (se, _) = try k.call(.getxattr(FuseGetxattrIn(size: 2), name: Array("user.x".utf8)), node: node)
        #expect(se == -ERANGE)
        let (le, lp) = try k.call(.listxattr(FuseGetxattrIn(size: 100)), node: node)
        #expect(le == 0 && lp == Array("user.x".utf8) + [0])
        let (de, dp) = try k.call(.readdirplus(FuseReadIn(size: 4096)))
        #expect(de == 0 && dp.count == 3 * 160)
        let (ne, _) = try k.call(.bmap(FuseBmapIn(block: 0, blocksize: 4096)), node: node)
        #expect(ne == -ENOSYS)
        let (ie, _) = try k.call(.iomapBegin(FuseIomapBeginIn(pos: 0, count: 4096)), node: node)
        #expect(ie == -ENOSYS)
        let (xe, _) = try k.call(.lookup(name: Array("missing".utf8)))
        #expect(xe == -ENOENT)
        #expect(k.finish())
    }

    @Test func destroyEndsTheSessionWithoutLeaks() throws {
        let before = openFDs { $0.hasPrefix("socket:") }.count
        let fs = MemoryFS()
        let k = try TestKernel(fs: fs, workers: 4)
        _ = try k.initialize(flags: [.initExt])
        // Workers exist while serving.
        for _ in 0..<20 { if liveFuseWorkers() == 3 { break }; usleep(10000) }
        #expect(liveFuseWorkers() == 3)
        let (e, p) = try k.call(.destroy)
        #expect(e == 0 && p.isEmpty)
        #expect(k.waitForEnd())
        #expect(fs.destroyed)
        #expect(liveFuseWorkers() == 0)
        _ = Glibc.close(k.kernelFD)
        k.transport.close()
        #expect(openFDs { $0.hasPrefix("socket:") }.count == before)
    }

    /// DESTROY is answered only once destroy() has returned, and a request
    /// that arrives while it runs (another worker read it) is not run: it
    /// would reach a file system that is being unmounted.
    @Test func nothingRunsAfterDestroy() throws {
        final class SlowDestroyFS: FuseFileSystem, @unchecked Sendable {
            let entered = DispatchSemaphore(value: 0)
            let release = DispatchSemaphore(value: 0)
            let statfsCalls = Mutex(0)
            func destroy() {
                entered.signal()
                release.wait()
            }
            func statfs(_ c: FuseContext) throws(FuseError) -> FuseKstatfs {
                statfsCalls.withLock { $0 += 1 }
                return FuseKstatfs(bsize: 4096, namelen: 255)
            }
        }
        let fs = SlowDestroyFS()
        let k = try TestKernel(fs: fs, workers: 4)
        _ = try k.initialize(flags: [.initExt])
        let (e0, _) = try k.call(.statfs)
        #expect(e0 == 0 && fs.statfsCalls.withLock { $0 } == 1)
        k.sendRaw(FuseRequestEncoder.encode(FuseRequestHeader(opcodeRaw: 0, unique: 1000, nodeid: 1), .destroy))
        #expect(fs.entered.wait(timeout: .now() + 5) == .success)
        k.sendRaw(FuseRequestEncoder.encode(FuseRequestHeader(opcodeRaw: 0, unique: 1002, nodeid: 1), .statfs))
        let late = try #require(k.receive())
        #expect(try FuseOutHeader.decode(Array(late.prefix(16))) == FuseOutHeader(len: 16, error: -EIO, unique: 1002))
        #expect(k.receive(timeout: 200) == nil, "DESTROY answered before destroy() returned")
        fs.release.signal()
        let r = try #require(k.receive())
        #expect(try FuseOutHeader.decode(Array(r.prefix(16))) == FuseOutHeader(len: 16, error: 0, unique: 1000))
        #expect(fs.statfsCalls.withLock { $0 } == 1)
        #expect(k.waitForEnd())
        _ = Glibc.close(k.kernelFD)
        k.transport.close()
    }

    @Test func peerCloseEndsTheSession() throws {
        let k = try TestKernel(fs: MemoryFS(), workers: 6)
        _ = try k.initialize(flags: [.initExt])
        #expect(k.finish())
        #expect(liveFuseWorkers() == 0)
    }

    @Test func backingIoctlsOnTheSocketTransport() throws {
        let k = try TestKernel(fs: MemoryFS())
        let f = open("/dev/null", O_RDONLY)
        defer { _ = Glibc.close(f) }
        #expect(k.transport.backingOpen(fd: f, flags: FuseIomap.backingTypeIomap) == 1)
        #expect(k.transport.backingOpen(fd: f, flags: FuseIomap.backingTypeIomap) == 2)
        #expect(k.transport.backingOpen(fd: f, flags: 7) == -EOPNOTSUPP)
        #expect(k.transport.backingOpen(fd: f, flags: 0x101) == -EINVAL)
        #expect(k.transport.backingOpen(fd: -1, flags: 1) == -EBADF)
        #expect(k.transport.backingClose(id: 1) == 0)
        #expect(k.transport.backingClose(id: 1) == -ENOENT)
        #expect(k.transport.backingFD(2) != nil)
        // /dev/null is not a block device: BLKBSZSET fails as the kernel would.
        #expect(k.transport.iomapSetBlocksize(id: 2, blocksize: 4096) < 0)
        #expect(k.transport.iomapSetBlocksize(id: 9, blocksize: 4096) == -ENOENT)
        #expect(k.finish())
    }

    @Test func parallelRequests() throws {
        let fs = MemoryFS()
        let k = try TestKernel(fs: fs, workers: 4)
        _ = try k.initialize(flags: [.initExt])
        // Pipeline 200 requests, then collect all replies; every unique must come back once.
        for i in 0..<200 {
            k.sendRaw(FuseRequestEncoder.encode(FuseRequestHeader(opcodeRaw: 0, unique: UInt64(1000 + i), nodeid: 1), .statfs))
        }
        var seen = Set<UInt64>()
        while seen.count < 200, let r = k.receive() {
            let h = try FuseOutHeader.decode(Array(r.prefix(16)))
            #expect(h.error == 0)
            seen.insert(h.unique)
        }
        #expect(seen == Set((0..<200).map { UInt64(1000 + $0) }))
        #expect(k.finish())
    }
}
}
