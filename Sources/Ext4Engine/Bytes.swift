/// Bounds-checked little-endian readers. Out-of-range reads return 0 instead
/// of trapping; callers validate lengths before relying on the values.
extension Array where Element == UInt8 {
    @inline(__always)
    func u8(_ o: Int) -> UInt8 {
        guard o >= 0, o < count else { return 0 }
        return self[o]
    }

    @inline(__always)
    func le16(_ o: Int) -> UInt16 {
        guard o >= 0, o <= count - 2 else { return 0 }
        return UInt16(self[o]) | (UInt16(self[o + 1]) << 8)
    }

    @inline(__always)
    func le32(_ o: Int) -> UInt32 {
        guard o >= 0, o <= count - 4 else { return 0 }
        return UInt32(self[o]) | (UInt32(self[o + 1]) << 8)
            | (UInt32(self[o + 2]) << 16) | (UInt32(self[o + 3]) << 24)
    }

    @inline(__always)
    func le64(_ o: Int) -> UInt64 {
        UInt64(le32(o)) | (UInt64(le32(o + 4)) << 32)
    }

    /// Store one byte (nothing when out of range).
    @inline(__always)
    mutating func putU8(_ o: Int, _ v: UInt8) {
        guard o >= 0, o < count else { return }
        self[o] = v
    }

    /// Copy of `[o, o+n)` or nil when out of range.
    func sub(_ o: Int, _ n: Int) -> [UInt8]? {
        guard o >= 0, n >= 0, o <= count, n <= count - o else { return nil }
        return Array(self[o..<(o + n)])
    }

    /// Same bytes with `[o, o+n)` zeroed (range clipped to the array).
    func zeroing(_ o: Int, _ n: Int) -> [UInt8] {
        var c = self
        c.zeroRange(o, n)
        return c
    }
}

@inline(__always)
func leBytes32(_ v: UInt32) -> [UInt8] {
    [UInt8(truncatingIfNeeded: v), UInt8(truncatingIfNeeded: v >> 8),
     UInt8(truncatingIfNeeded: v >> 16), UInt8(truncatingIfNeeded: v >> 24)]
}

@inline(__always)
func leBytes64(_ v: UInt64) -> [UInt8] {
    leBytes32(UInt32(truncatingIfNeeded: v)) + leBytes32(UInt32(truncatingIfNeeded: v >> 32))
}
