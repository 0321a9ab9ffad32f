/// htree directory name hashes (legacy, half-MD4, TEA; signed/unsigned char
/// variants), written from the ext4 on-disk format description.
enum DirHash {
    static let legacy = 0, halfMD4 = 1, tea = 2
    static let legacyUnsigned = 3, halfMD4Unsigned = 4, teaUnsigned = 5

    /// Pack name bytes into `num` words the way the htree hash expects.
    static func pack(_ name: ArraySlice<UInt8>, totalLen: Int, num: Int, signed: Bool) -> [UInt32] {
        var pad = UInt32(truncatingIfNeeded: totalLen) | (UInt32(truncatingIfNeeded: totalLen) << 8)
        pad |= pad << 16
        var out: [UInt32] = []
        out.reserveCapacity(num)
        var val = pad
        let len = min(name.count, num * 4)
        var i = 0
        for byte in name.prefix(len) {
            let c: UInt32 = signed ? UInt32(bitPattern: Int32(Int8(bitPattern: byte))) : UInt32(byte)
            val = c &+ (val << 8)
            if i % 4 == 3 {
                out.append(val)
                val = pad
            }
            i += 1
        }
        if out.count < num { out.append(val) }
        while out.count < num { out.append(pad) }
        return out
    }

    static func legacyHash(_ name: [UInt8], signed: Bool) -> UInt32 {
        var h0: UInt32 = 0x12A3_FE2D, h1: UInt32 = 0x37AB_E8F9
        for byte in name {
            let c: UInt32 = signed ? UInt32(bitPattern: Int32(Int8(bitPattern: byte))) : UInt32(byte)
            var h = h1 &+ (h0 ^ (c &* 7_152_373))
            if h & 0x8000_0000 != 0 { h = h &- 0x7FFF_FFFF }
            h1 = h0
            h0 = h
        }
        return h0 << 1
    }

    @inline(__always) static func rol(_ x: UInt32, _ s: UInt32) -> UInt32 { (x << s) | (x >> (32 - s)) }

    static func halfMD4(_ buf: inout [UInt32], _ inp: [UInt32]) {
        var a = buf[0], b = buf[1], c = buf[2], d = buf[3]
        let k2: UInt32 = 0x5A82_7999, k3: UInt32 = 0x6ED9_EBA1
        func f(_ x: UInt32, _ y: UInt32, _ z: UInt32) -> UInt32 { z ^ (x & (y ^ z)) }
        func g(_ x: UInt32, _ y: UInt32, _ z: UInt32) -> UInt32 { (x & y) &+ ((x ^ y) & z) }
        func h(_ x: UInt32, _ y: UInt32, _ z: UInt32) -> UInt32 { x ^ y ^ z }
        // Round 1
        a = rol(a &+ f(b, c, d) &+ inp[0], 3); d = rol(d &+ f(a, b, c) &+ inp[1], 7)
        c = rol(c &+ f(d, a, b) &+ inp[2], 11); b = rol(b &+ f(c, d, a) &+ inp[3], 19)
        a = rol(a &+ f(b, c, d) &+ inp[4], 3); d = rol(d &+ f(a, b, c) &+ inp[5], 7)
        c = rol(c &+ f(d, a, b) &+ inp[6], 11); b = rol(b &+ f(c, d, a) &+ inp[7], 19)
        // Round 2
        a = rol(a &+ g(b, c, d) &+ inp[1] &+ k2, 3); d = rol(d &+ g(a, b, c) &+ inp[3] &+ k2, 5)
        c = rol(c &+ g(d, a, b) &+ inp[5] &+ k2, 9); b = rol(b &+ g(c, d, a) &+ inp[7] &+ k2, 13)
        a = rol(a &+ g(b, c, d) &+ inp[0] &+ k2, 3); d = rol(d &+ g(a, b, c) &+ inp[2] &+ k2, 5)
        c = rol(c &+ g(d, a, b) &+ inp[4] &+ k2, 9); b = rol(b &+ g(c, d, a) &+ inp[6] &+ k2, 13)
        // Round 3
        a = rol(a &+ h(b, c, d) &+ inp[3] &+ k3, 3); d = rol(d &+ h(a, b, c) &+ inp[7] &+ k3, 9)
        c = rol(c &+ h(d, a, b) &+ inp[2] &+ k3, 11); b = rol(b &+ h(c, d, a) &+ inp[6] &+ k3, 15)
        a = rol(a &+ h(b, c, d) &+ inp[1] &+ k3, 3); d = rol(d &+ h(a, b, c) &+ inp[5] &+ k3, 9)
        c = rol(c &+ h(d, a, b) &+ inp[0] &+ k3, 11); b = rol(b &+ h(c, d, a) &+ inp[4] &+ k3, 15)
        buf[0] = buf[0] &+ a; buf[1] = buf[1] &+ b; buf[2] = buf[2] &+ c; buf[3] = buf[3] &+ d
    }

    static func tea(_ buf: inout [UInt32], _ inp: [UInt32]) {
        var sum: UInt32 = 0
        var b0 = buf[0], b1 = buf[1]
        let a = inp[0], b = inp[1], c = inp[2], d = inp[3]
        for _ in 0..<16 {
            sum = sum &+ 0x9E37_79B9
            b0 = b0 &+ (((b1 << 4) &+ a) ^ (b1 &+ sum) ^ ((b1 >> 5) &+ b))
            b1 = b1 &+ (((b0 << 4) &+ c) ^ (b0 &+ sum) ^ ((b0 >> 5) &+ d))
        }
        buf[0] = buf[0] &+ b0
        buf[1] = buf[1] &+ b1
    }

    /// Major hash (bit 0 clear) of `name`; nil for unknown versions.
    static func hash(_ name: [UInt8], version: Int, seed: [UInt32]) -> UInt32? {
        var buf: [UInt32] = [0x6745_2301, 0xEFCD_AB89, 0x98BA_DCFE, 0x1032_5476]
        if seed.count == 4 && seed.contains(where: { $0 != 0 }) { buf = seed }
        var h: UInt32
        switch version {
        case legacy: h = legacyHash(name, signed: true)
        case legacyUnsigned: h = legacyHash(name, signed: false)
        case halfMD4, halfMD4Unsigned:
            let signed = version == halfMD4
            var start = 0
            repeat {
                let rest = name[start...]
                halfMD4(&buf, pack(rest, totalLen: rest.count, num: 8, signed: signed))
                start += 32
            } while start < name.count
            h = buf[1]
        case tea, teaUnsigned:
            let signed = version == tea
            var start = 0
            repeat {
                let rest = name[start...]
                self.tea(&buf, pack(rest, totalLen: rest.count, num: 4, signed: signed))
                start += 16
            } while start < name.count
            h = buf[0]
        default:
            return nil
        }
        h &= ~1
        if h == 0xFFFF_FFFE { h = 0xFFFF_FFFC }
        return h
    }
}
