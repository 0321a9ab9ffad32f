import FuseKernel
import Testing

/// FUSE over io_uring: the message rebuilt from a ring entry must be byte for
/// byte the classic /dev/fuse message, lengths that do not add up must be
/// refused, and replies must land in the entry the way the kernel reads them.
@Suite struct UringTests {
    /// Split a classic message the way the kernel fills a ring entry: in_header,
    /// the op header (first argument, `opSize` bytes), the rest as payload.
    func split(_ msg: [UInt8], opSize: Int) -> (header: [UInt8], payload: [UInt8]) {
        var header = [UInt8](repeating: 0, count: FuseUringABI.headerSize)
        header.replaceSubrange(0..<40, with: msg[0..<40])
        header.replaceSubrange(128..<(128 + opSize), with: msg[40..<(40 + opSize)])
        return (header, Array(msg[(40 + opSize)...]))
    }

    func rebuild(_ header: [UInt8], _ payload: [UInt8], len: Int) -> [UInt8]? {
        guard let (op, start) = FuseUringMessage.layout(len: UInt32(len), payloadSize: UInt32(payload.count),
                                                        capacity: 1 << 20) else { return nil }
        var area = [UInt8](repeating: 0xAA, count: FuseUringMessage.headroom) + payload
        area.replaceSubrange(start..<(start + 40), with: header[0..<40])
        area.replaceSubrange((start + 40)..<(start + 40 + op), with: header[128..<(128 + op)])
        return Array(area[start..<(start + len)])
    }

    @Test func writeAndLookupRebuildExactly() throws {
        let h = FuseRequestHeader(opcodeRaw: FuseOpcode.write.rawValue, unique: 42, nodeid: 7, uid: 1, gid: 2, pid: 3)
        let data = (0..<5000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let w = FuseRequestEncoder.encode(h, .write(FuseWriteIn(fh: 1, offset: 8192, size: 5000, writeFlags: 4), data: data))
        let (wh, wp) = split(w, opSize: FuseWriteIn.wireSize)
        #expect(rebuild(wh, wp, len: w.count) == w)

        // LOOKUP has no op header: the name is all payload.
        let l = FuseRequestEncoder.encode(FuseRequestHeader(opcodeRaw: FuseOpcode.lookup.rawValue, unique: 9, nodeid: 1),
                                          .lookup(name: Array("some-name".utf8)))
        let (lh, lp) = split(l, opSize: 0)
        let back = try #require(rebuild(lh, lp, len: l.count))
        #expect(back == l)
        let decoded = back.withUnsafeBytes { FuseDecoder.decode($0, context: FuseDecodeContext()) }
        guard case .success(let (dh, req)) = decoded, case .lookup(let name) = req else {
            Issue.record("rebuilt LOOKUP does not decode: \(decoded)")
            return
        }
        #expect(dh.unique == 9 && name == Array("some-name".utf8))
    }

    @Test(arguments: [
        (UInt32(39), UInt32(0)),        // shorter than fuse_in_header
        (UInt32(100), UInt32(61)),      // payload larger than len allows
        (UInt32(40 + 129), UInt32(0)),  // op header larger than the entry's 128 bytes
        (UInt32(40 + 8), UInt32(2 << 20)),  // payload larger than the buffer
        (UInt32.max, UInt32(0)),
    ])
    func inconsistentLengthsAreRefused(len: UInt32, payload: UInt32) {
        #expect(FuseUringMessage.layout(len: len, payloadSize: payload, capacity: 1 << 20) == nil)
    }

    @Test func replyLandsInHeaderAndPayload() {
        var header = [UInt8](repeating: 0, count: FuseUringABI.headerSize)
        var payload = [UInt8](repeating: 0, count: 64)
        let body = Array(0..<40).map { UInt8($0) }
        let reply = FuseReplyEncoder.ok(unique: 77, body)
        header.withUnsafeMutableBytes { h in
            payload.withUnsafeMutableBytes { p in FuseUringMessage.writeReply(reply, unique: 77, header: h, payload: p) }
        }
        #expect(Array(header[0..<16]) == reply[0])
        #expect(Array(payload[0..<40]) == body)
        #expect(header.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: FuseUringABI.payloadSzOffset, as: UInt32.self) } == 40)

        // Too big for the payload buffer: an EIO error header, payload_sz 0.
        let big = FuseReplyEncoder.ok(unique: 78, [UInt8](repeating: 1, count: 65))
        header.withUnsafeMutableBytes { h in
            payload.withUnsafeMutableBytes { p in FuseUringMessage.writeReply(big, unique: 78, header: h, payload: p) }
        }
        #expect(Array(header[0..<16]) == FuseReplyEncoder.error(unique: 78, errno: 5))
        #expect(header.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: FuseUringABI.payloadSzOffset, as: UInt32.self) } == 0)
    }
}
