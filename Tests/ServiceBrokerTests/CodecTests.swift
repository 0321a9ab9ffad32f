#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import ServiceBroker

@Suite struct CodecTests {
    static let all: [ServiceMessage] = [
        .hello(minVersion: 1, maxVersion: 2, flags: [.allowOther, .fuseblk]),
        .helloReply(version: 2),
        .simpleReply(error: UInt32(EPERM)),
        .file(error: 0, path: "argv"),
        .open(OpenRequest(kind: .file, openFlags: UInt32(O_RDWR), createMode: 0o644,
                          requestFlags: [.quiet], blockSize: 0, path: "/tmp/x.img")),
        .open(OpenRequest(kind: .blockDevice, openFlags: UInt32(O_RDONLY | O_EXCL), createMode: 0,
                          requestFlags: [.loopDevice], blockSize: 4096, path: "/dev/sda")),
        .fsopen(flags: [.fuseblk]),
        .source("/tmp/x.img"),
        .options("allow_other,default_permissions"),
        .mtab("rw"),
        .mountpoint(expectedFormat: UInt16(S_IFDIR), path: "/mnt"),
        .mount(msFlags: UInt32(MS_RDONLY)),
        .goodbye(exitCode: 3),
        .iomap(mode: .mandatory),
    ]

    @Test func roundTripEveryMessage() throws {
        for m in Self.all {
            let b = ServiceCodec.encode(m)
            #expect(try ServiceCodec.decode(b, version: 2) == m)
        }
    }

    @Test func byteExactUpstreamLayouts() {
        #expect(ServiceCodec.encode(.hello(minVersion: 1, maxVersion: 2, flags: [.allowOther, .fuseblk]))
                == [0x53, 0x41, 0x46, 0x54, 0, 1, 0, 2, 0, 0, 0, 3])
        #expect(ServiceCodec.encode(.helloReply(version: 1)) == [0x4c, 0x41, 0x53, 0x54, 0, 1, 0, 0])
        #expect(ServiceCodec.encode(.simpleReply(error: 13)) == [0x52, 0x45, 0x50, 0x4c, 0, 0, 0, 13])
        #expect(ServiceCodec.encode(.file(error: 0, path: "fusedev"))
                == [0x46, 0x49, 0x4c, 0x45, 0, 0, 0, 0] + Array("fusedev".utf8) + [0])
        let open = ServiceCodec.encode(.open(OpenRequest(kind: .blockDevice, openFlags: 2, createMode: 0,
                                                         requestFlags: [.quiet], blockSize: 4096, path: "/d")))
        #expect(open == [0x42, 0x44, 0x45, 0x56, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0x10, 0, 0x2f, 0x64, 0])
        #expect(ServiceCodec.encode(.mountpoint(expectedFormat: 0x4000, path: "/m"))
                == [0x4d, 0x4e, 0x54, 0x50, 0x40, 0, 0, 0, 0x2f, 0x6d, 0])
        #expect(ServiceCodec.encode(.fsopen(flags: [])) == [0x54, 0x59, 0x50, 0x45, 0, 0, 0, 0])
        #expect(ServiceCodec.encode(.mount(msFlags: 1)) == [0x44, 0x4f, 0x49, 0x54, 0, 0, 0, 1])
        #expect(ServiceCodec.encode(.goodbye(exitCode: 0)) == [0x42, 0x59, 0x45, 0x45, 0, 0, 0, 0])
        #expect(ServiceCodec.encode(.source("s")) == [0x4e, 0x41, 0x4d, 0x45, 0x73, 0])
        #expect(ServiceCodec.encode(.options("o")) == [0x4f, 0x50, 0x54, 0x53, 0x6f, 0])
        #expect(ServiceCodec.encode(.mtab("m")) == [0x4d, 0x54, 0x41, 0x42, 0x6d, 0])
        #expect(ServiceCodec.encode(.iomap(mode: .optional)) == [0x49, 0x4f, 0x4d, 0x41, 0x50, 0x3f, 0, 0])
    }

    @Test func version1NeverSeesExtensions() {
        #expect(throws: WireError.unknownMagic(Magic.iomap.rawValue)) {
            _ = try ServiceCodec.decode(ServiceCodec.encode(.iomap(mode: .optional)), version: 1)
        }
        let loop = ServiceCodec.encode(.open(OpenRequest(kind: .file, openFlags: 0, requestFlags: [.loopDevice], path: "/x")))
        #expect(throws: WireError.unknownFlags(1 << 16)) { _ = try ServiceCodec.decode(loop, version: 1) }
        #expect(ServiceCodec.negotiate(offeredMin: 1, offeredMax: 2) == 2)
        #expect(ServiceCodec.negotiate(offeredMin: 1, offeredMax: 2, supportedMax: 1) == 1)
        #expect(ServiceCodec.negotiate(offeredMin: 1, offeredMax: 1) == 1)
        #expect(ServiceCodec.negotiate(offeredMin: 3, offeredMax: 9) == nil)
    }

    /// Every truncation and every extension of every message must be refused, never trap.
    @Test func malformedSizes() {
        for m in Self.all {
            let b = ServiceCodec.encode(m)
            for n in 0..<b.count {
                #expect(throws: WireError.self) { _ = try ServiceCodec.decode(Array(b.prefix(n)), version: 2) }
            }
            // One extra byte: fixed-size messages refuse it; string messages then lack the final NUL.
            #expect(throws: WireError.self) { _ = try ServiceCodec.decode(b + [0x41], version: 2) }
        }
    }

    @Test func malformedContent() {
        func bad(_ b: [UInt8], _ why: WireError) {
            #expect(throws: why) { _ = try ServiceCodec.decode(b, version: 2) }
        }
        bad([0x58, 0x58, 0x58, 0x58, 0, 0, 0, 0], .unknownMagic(0x5858_5858))
        bad([0x41, 0x52, 0x47, 0x53, 0, 0, 0, 0], .unknownMagic(Magic.args.rawValue))
        bad([0x4e, 0x41, 0x4d, 0x45, 0x73, 0x74], .missingNul)
        bad([0x4e, 0x41, 0x4d, 0x45, 0x73, 0, 0x74, 0], .embeddedNul)
        bad([0x4e, 0x41, 0x4d, 0x45, 0xff, 0xfe, 0], .invalidUTF8)
        bad([0x4c, 0x41, 0x53, 0x54, 0, 1, 0, 1], .nonZeroPadding)
        bad([0x4d, 0x4e, 0x54, 0x50, 0x40, 0, 0, 1, 0x2f, 0], .nonZeroPadding)
        bad([0x4d, 0x4e, 0x54, 0x50, 0x20, 0, 0, 0, 0x2f, 0], .badValue("bad expected file type 0x2000"))
        bad([0x54, 0x59, 0x50, 0x45, 0, 0, 0, 2], .unknownFlags(2))
        bad([0x53, 0x41, 0x46, 0x54, 0, 1, 0, 2, 0, 0, 0, 4], .unknownFlags(4))
        bad([0x53, 0x41, 0x46, 0x54, 0, 3, 0, 2, 0, 0, 0, 0], .badValue("bad version range 3..2"))
        bad([0x49, 0x4f, 0x4d, 0x41, 0x12, 0x34, 0, 0], .badValue("bad iomap mode 0x1234"))
        bad([0x4f, 0x50, 0x45, 0x4e, 0, 0, 0, 0, 0, 0, 0, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x2f, 0], .unknownFlags(0x8000_0000))
        bad([UInt8](repeating: 0x4e, count: 65537), .tooLong(65537))
        bad([0x4e, 0x41], .tooShort(2))
    }

    @Test func argvRoundTripAndBounds() throws {
        let args = ["ext4", "/tmp/disk.img", "/mnt", "-o", "ro,iomap=1"]
        let b = try ArgvCodec.encode(args)
        #expect(Array(b.prefix(8)) == [0x41, 0x52, 0x47, 0x53, 0, 0, 0, 5])
        // First entry starts right after the table: 8 + 5*8 = 48, len 5 ("ext4\0").
        #expect(Array(b[8..<16]) == [0, 0, 0, 48, 0, 0, 0, 5])
        #expect(try ArgvCodec.decode(b) == args)
        for n in 0..<b.count {
            #expect(throws: WireError.self) { _ = try ArgvCodec.decode(Array(b.prefix(n))) }
        }
        var lie = b
        lie[7] = 200 // argc larger than the table
        #expect(throws: WireError.self) { _ = try ArgvCodec.decode(lie) }
        var pos = b
        pos[11] = 0xff // position past the end
        #expect(throws: WireError.self) { _ = try ArgvCodec.decode(pos) }
        var len = b
        len[12] = 0xff // huge length
        #expect(throws: WireError.self) { _ = try ArgvCodec.decode(len) }
        var zero = b
        zero[7] = 0
        #expect(throws: WireError.self) { _ = try ArgvCodec.decode(zero) }
        var inTable = b
        inTable[11] = 8 // string position inside the header/table
        #expect(throws: WireError.self) { _ = try ArgvCodec.decode(inTable) }
        #expect(throws: WireError.self) { _ = try ArgvCodec.encode([]) }
        #expect(throws: WireError.self) { _ = try ArgvCodec.decode([UInt8](repeating: 0, count: ServiceProtocol.maxArgvSize + 1)) }
    }
}

@Suite struct ShownStringTests {
    /// A server-chosen string cannot carry escape sequences or newlines to the admin's terminal.
    @Test func controlsAreEscapedAndLengthIsBounded() {
        #expect(HelperSession.shown("/a\u{1b}]0;pwned\u{07}\nb") == "/a\\u{1b}]0;pwned\\u{7}\\u{a}b")
        #expect(HelperSession.shown("\u{9b}31m") == "\\u{9b}31m")
        #expect(HelperSession.shown(String(repeating: "x", count: 1000)).count == 259)
        #expect(HelperSession.shown("/plain/path") == "/plain/path")
        // Bidi overrides reorder what the admin reads: escaped like controls.
        #expect(HelperSession.shown("file\u{202E}txt.exe") == "file\\u{202e}txt.exe")
    }
}
