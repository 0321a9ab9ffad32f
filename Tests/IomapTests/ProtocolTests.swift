// Negotiation, refusals and hostile requests on the iomap opcodes.

import Ext4Engine
import Ext4Fuse
import Ext4Server
import Foundation
import FuseKernel
import Glibc
import Testing

@Suite(.serialized) struct IomapProtocol {
    static func roOptions(iomap: Bool? = nil) -> ServerOptions {
        var o = ServerOptions()
        o.readOnly = true
        o.iomap = iomap
        return o
    }

    @Test func classicWhenNotOffered() throws {
        let f = try Fixture(bigMB: 1)
        let k = try IomapKernel(image: f.image)
        defer { #expect(k.finish()) }
        try k.initialize(offerIomap: false)
        #expect(!k.iomap)
        #expect(k.initOut.minor == 45)
        #expect(k.transport.backingFD(1) == nil)
        let e = try k.lookup("multi.bin")
        #expect(FuseAttrFlags(rawValue: e.attr.flags).isDisjoint(with: [.iomap]))
        // The classic path still serves the data.
        let bytes = try k.classicRead(e, offset: 0, length: 100_000)
        let same = bytes == (try readWhole(f.tree + "/multi.bin"))
        #expect(same)
    }

    @Test func iomapZeroForbidsIt() throws {
        let f = try Fixture(bigMB: 1)
        let k = try IomapKernel(image: f.image, options: Self.roOptions(iomap: false))
        defer { #expect(k.finish()) }
        try k.initialize()
        #expect(!k.iomap)
        #expect(k.initOut.minor == 45)
        #expect(FuseAttrFlags(rawValue: try k.lookup("big.bin").attr.flags).isDisjoint(with: [.iomap]))
    }

    @Test func imageFileIsNotABlockDevice() throws {
        // Without the test override an image file is not an iomap device.
        let f = try Fixture(bigMB: 1)
        let k = try IomapKernel(image: f.image, allowRegularFile: false)
        defer { #expect(k.finish()) }
        try k.initialize()
        #expect(!k.iomap)
        let fd = open(f.image, O_RDONLY)
        defer { close(fd) }
        #expect(throws: ServerFailure.self) {
            try iomapPreflight(fuseFD: -1, deviceFD: fd, name: "img", options: Self.roOptions(iomap: true))
        }
        // iomap unset or 0: nothing to refuse before mounting.
        try iomapPreflight(fuseFD: -1, deviceFD: fd, name: "img", options: Self.roOptions())
    }

    @Test func writeClassRefusedOnReadOnlyMount() throws {
        let f = try Fixture(bigMB: 1)
        let k = try IomapKernel(image: f.image)
        defer { #expect(k.finish()) }
        try k.initialize()
        let e = try k.lookup("multi.bin")
        for op: OpFlags in [.write, [.write, .direct], [.write, .fault], .zero, .writeback, .unshare, [.write, .direct, .atomic]] {
            let a = FuseIomapBeginIn(opflags: op.rawValue, attrIno: e.attr.ino, pos: 0, count: 4096)
            #expect(try k.call(.iomapBegin(a), node: e.nodeid).error == -EROFS, "op \(op.rawValue)")
        }
        // IOEND: a failed IO is echoed, SWAPOFF answers the size, anything else is EROFS.
        var io = FuseIomapIoendIn(flags: FuseIomap.IoendFlags.writeback.rawValue, error: -EIO, attrIno: e.attr.ino,
                                  pos: 0, newAddr: FuseIomap.nullAddr, written: 4096)
        #expect(try k.call(.iomapIoend(io), node: e.nodeid).error == -EIO)
        io.error = Int32.min
        #expect(try k.call(.iomapIoend(io), node: e.nodeid).error == -EIO)
        io = FuseIomapIoendIn(flags: FuseIomap.IoendFlags.swapoff.rawValue, attrIno: e.attr.ino)
        let r = try k.call(.iomapIoend(io), node: e.nodeid)
        #expect(r.error == 0 && r.payload.count == 8)
        #expect(try FuseIomapIoendOut.decode(r.payload).newsize == e.attr.size)
        io = FuseIomapIoendIn(flags: FuseIomap.IoendFlags([.direct, .unwritten]).rawValue, attrIno: e.attr.ino, written: 4096)
        #expect(try k.call(.iomapIoend(io), node: e.nodeid).error == -EROFS)
        // END, SYNCFS, FREEZE, UNFREEZE answered.
        let end = FuseIomapEndIn(opflags: 0, attrIno: e.attr.ino, pos: 0, count: 4096, written: 4096)
        #expect(try k.call(.iomapEnd(end), node: e.nodeid).error == 0)
        #expect(try k.call(.syncfs(FuseSyncfsIn()), node: FuseABI.rootID).error == 0)
        #expect(try k.call(.freezeFS(FuseFreezefsIn(unlinked: 0)), node: FuseABI.rootID).error == 0)
        #expect(try k.call(.unfreezeFS, node: FuseABI.rootID).error == 0)
        // SHUTDOWN: afterwards mapping requests fail with EIO.
        #expect(try k.call(.shutdownFS(FuseShutdownfsIn()), node: FuseABI.rootID).error == 0)
        let a = FuseIomapBeginIn(opflags: 0, attrIno: e.attr.ino, pos: 0, count: 4096)
        #expect(try k.call(.iomapBegin(a), node: e.nodeid).error == -EIO)
    }

    @Test func hostileBeginRequests() throws {
        let f = try Fixture(bigMB: 1)
        let k = try IomapKernel(image: f.image)
        defer { #expect(k.finish()) }
        try k.initialize()
        let e = try k.lookup("sparse.bin")
        let dir = try k.lookup("sub")
        func begin(_ node: UInt64, _ ino: UInt64, _ op: UInt32, _ pos: UInt64, _ count: UInt64) throws -> Int32 {
            try k.call(.iomapBegin(FuseIomapBeginIn(opflags: op, attrIno: ino, pos: pos, count: count)), node: node).error
        }
        #expect(try begin(e.nodeid, e.attr.ino + 1, 0, 0, 4096) == -EINVAL)  // attr_ino mismatch
        #expect(try begin(dir.nodeid, dir.attr.ino, 0, 0, 4096) == -EINVAL)  // not a regular file
        #expect(try begin(999_999, 999_999, 0, 0, 4096) != 0)  // no such inode
        #expect(try begin(0, 0, 0, 0, 4096) == -EINVAL)
        #expect(try begin(e.nodeid, e.attr.ino, 0, UInt64.max, UInt64.max) == -EFBIG)
        #expect(try begin(e.nodeid, e.attr.ino, 0, k.maxBytes, 1) == -EFBIG)
        // Random positions, counts and read-class op flags: every answer is a
        // valid mapping (checked by the test kernel) or an error, never a crash.
        var rng = SplitMix(seed: 99)
        for _ in 0..<400 {
            let pos: UInt64
            switch rng.below(4) {
            case 0: pos = rng.below(12 << 20)
            case 1: pos = rng.below(k.maxBytes)
            case 2: pos = k.maxBytes - 1 - rng.below(1 << 20)
            default: pos = rng.below(1 << 32) * k.blockSize + rng.below(k.blockSize)
            }
            let count = [UInt64(0), 1, rng.below(1 << 20), UInt64.max, UInt64.max - pos][Int(rng.below(5))]
            let op: OpFlags = [[], .report, .direct, [.direct, .nowait], .fault][Int(rng.below(5))]
            let a = FuseIomapBeginIn(opflags: op.rawValue, attrIno: e.attr.ino, pos: pos, count: count)
            let (err, p) = try k.call(.iomapBegin(a), node: e.nodeid)
            if err == 0 {
                let out = try FuseIomapBeginOut.decode(p)
                try k.validate(out.read, pos: pos, half: "read", begin: true, op: op, node: e.nodeid)
                try k.validate(out.write, pos: pos, half: "write", begin: true, op: op, node: e.nodeid)
            } else {
                #expect(err == -EFBIG, "pos \(pos) count \(count): \(err)")
            }
        }
        // A CONFIG asking for no flags still gets a block size; a second CONFIG is harmless.
        let (err, p) = try k.call(.iomapConfig(FuseIomapConfigIn(flags: 0, maxbytes: -5)), node: 0)
        #expect(err == 0 && p.count == 104)
    }

    @Test func configGeometry() throws {
        for (args, inode) in [(["-b", "4096", "-I", "256"], 256), (["-b", "1024", "-I", "128"], 128)] {
            let f = try Fixture(args: args, bigMB: 1)
            let k = try IomapKernel(image: f.image)
            defer { #expect(k.finish()) }
            try k.initialize()
            let c = k.config
            #expect(FuseIomap.ConfigFlags(rawValue: c.flags).isSuperset(of: [.blocksize, .time, .maxbytes, .uuid]))
            #expect(c.sUuid == k.fs.uuid && c.sUuidLen == 16)
            #expect(c.sTimeMin == Int64(Int32.min))
            if inode == 256 {
                #expect(c.sTimeGran == 1 && c.sTimeMax == (Int64(1) << 34) - 1 + Int64(Int32.min))
            } else {
                #expect(c.sTimeGran == 1_000_000_000 && c.sTimeMax == Int64(Int32.max))
            }
            let bs = UInt64(c.sBlocksize)
            #expect(UInt64(c.sMaxbytes) == min(((UInt64(1) << 32) - 1) * bs, UInt64(Int64.max)) || !k.fs.hasHugeFileFeature)
            #expect(k.fuse.iomapState.upcalls.config == 1)
        }
    }
}
