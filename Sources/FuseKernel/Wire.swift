// Bounds-checked little-endian readers and writers for FUSE messages.
// Nothing here traps on input: every read checks the remaining length first.

/// Why a message could not be decoded.
public enum WireError: Error, Equatable, Sendable {
    case truncated(need: Int, have: Int)
    case missingNul
    case oversized(Int)
    case invalid(String)
}

public struct WireReader {
    public let base: UnsafeRawBufferPointer
    public private(set) var offset: Int

    public init(_ base: UnsafeRawBufferPointer) {
        self.base = base
        self.offset = 0
    }

    public var remaining: Int { base.count - offset }

    @inline(__always)
    private mutating func take(_ n: Int) throws(WireError) -> Int {
        guard n >= 0, n <= remaining else { throw .truncated(need: n, have: remaining) }
        let at = offset
        offset += n
        return at
    }

    public mutating func u8() throws(WireError) -> UInt8 { base[try take(1)] }
    public mutating func u16() throws(WireError) -> UInt16 {
        UInt16(littleEndian: base.loadUnaligned(fromByteOffset: try take(2), as: UInt16.self))
    }
    public mutating func u32() throws(WireError) -> UInt32 {
        UInt32(littleEndian: base.loadUnaligned(fromByteOffset: try take(4), as: UInt32.self))
    }
    public mutating func u64() throws(WireError) -> UInt64 {
        UInt64(littleEndian: base.loadUnaligned(fromByteOffset: try take(8), as: UInt64.self))
    }
    public mutating func i32() throws(WireError) -> Int32 { Int32(bitPattern: try u32()) }
    public mutating func i64() throws(WireError) -> Int64 { Int64(bitPattern: try u64()) }
    public mutating func skip(_ n: Int) throws(WireError) { _ = try take(n) }

    public mutating func bytes(_ n: Int) throws(WireError) -> UnsafeRawBufferPointer {
        let at = try take(n)
        return UnsafeRawBufferPointer(rebasing: base[at..<(at + n)])
    }

    public mutating func rest() -> UnsafeRawBufferPointer {
        let r = UnsafeRawBufferPointer(rebasing: base[offset...])
        offset = base.count
        return r
    }

    /// A NUL-terminated name, at most `max` bytes before the NUL.
    public mutating func cString(max: Int = FuseABI.nameMax) throws(WireError) -> [UInt8] {
        let window = Swift.min(remaining, max + 1)
        for i in 0..<window where base[offset + i] == 0 {
            let s = Array(UnsafeRawBufferPointer(rebasing: base[offset..<(offset + i)]))
            offset += i + 1
            return s
        }
        if remaining > max { throw .oversized(remaining) }
        throw .missingNul
    }
}

/// Appends little-endian fields to a growable byte array.
public struct WireWriter {
    public private(set) var bytes: [UInt8]

    public init(capacity: Int = 64) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    public var count: Int { bytes.count }

    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func i32(_ v: Int32) { u32(UInt32(bitPattern: v)) }
    public mutating func i64(_ v: Int64) { u64(UInt64(bitPattern: v)) }
    public mutating func zeros(_ n: Int) { bytes.append(contentsOf: repeatElement(0, count: n)) }
    public mutating func append<C: Collection>(_ c: C) where C.Element == UInt8 { bytes.append(contentsOf: c) }
    public mutating func cString(_ s: [UInt8]) { bytes.append(contentsOf: s); bytes.append(0) }
    /// Pad with zeros to a multiple of `n`.
    public mutating func align(_ n: Int) {
        let r = bytes.count % n
        if r != 0 { zeros(n - r) }
    }
}

/// Any fixed-size wire struct: decode from, encode to, its exact size.
public protocol FuseWireStruct: Sendable, Equatable {
    static var wireSize: Int { get }
    static var cName: String { get }
    init(from r: inout WireReader) throws(WireError)
    func encode(to w: inout WireWriter)
}

extension FuseWireStruct {
    public var encoded: [UInt8] {
        var w = WireWriter(capacity: Self.wireSize)
        encode(to: &w)
        return w.bytes
    }

    public static func decode(_ bytes: [UInt8]) throws(WireError) -> Self {
        do {
            return try bytes.withUnsafeBytes { raw in
                var r = WireReader(raw)
                return try Self(from: &r)
            }
        } catch let e as WireError {
            throw e
        } catch {
            throw .invalid("\(error)")
        }
    }
}
