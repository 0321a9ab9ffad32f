import CFuseHeaderCheck
import FuseKernel
import Testing

/// Our struct definitions against the system's <linux/fuse.h> (ABI 7.38): every
/// struct that exists there must have the same size, and every field the same
/// offset and width.
@Suite struct LayoutTests {
    struct CField { let structName: String; let field: String; let offset: Int; let size: Int }

    static func cFields() -> [CField] {
        var n = 0
        guard let p = fhc_fields(&n) else { return [] }
        return (0..<n).map { i in
            CField(structName: String(cString: p[i].structName), field: String(cString: p[i].fieldName),
                   offset: p[i].offset, size: p[i].size)
        }
    }

    static func cStructs() -> [(String, Int)] {
        var n = 0
        guard let p = fhc_structs(&n) else { return [] }
        return (0..<n).map { (String(cString: p[$0].structName), p[$0].size) }
    }

    static func swiftType(_ cName: String) -> (any FuseWireStruct.Type)? {
        allFuseWireStructs.first { $0.cName == cName }
    }

    static func normalized(_ s: String) -> String { s.lowercased().filter { $0 != "_" } }

    @Test func systemHeaderIsOlderThanOurs() {
        #expect(fhc_kernel_minor() >= 31)
        #expect(FuseABI.baseMinor == 45)
    }

    @Test func structSizesMatchSystemHeader() throws {
        let structs = Self.cStructs()
        #expect(structs.count >= 60)
        for (name, size) in structs {
            // Structs with a flexible array member (dirent, direntplus) have no fixed Swift twin.
            guard let t = Self.swiftType(name) else {
                #expect(name == "fuse_direntplus", "no Swift definition for \(name)")
                continue
            }
            #expect(t.wireSize == size, "\(name): ours \(t.wireSize), header \(size)")
        }
    }

    /// Decode a patterned buffer and check that each field holds exactly the
    /// bytes at the header's offset for that field.
    @Test func fieldOffsetsMatchSystemHeader() throws {
        let fields = Self.cFields()
        #expect(fields.count >= 200)
        var checked = 0
        for f in fields {
            let t = try #require(Self.swiftType(f.structName), "\(f.structName)")
            let pattern = (0..<t.wireSize).map { UInt8(truncatingIfNeeded: $0 * 7 + 1) }
            let value = try decodeAny(t, pattern)
            let child = try #require(Mirror(reflecting: value).children.first {
                Self.normalized($0.label ?? "") == Self.normalized(f.field)
            }, "\(f.structName).\(f.field) has no Swift field")
            var expected = Array(pattern[f.offset..<(f.offset + f.size)])
            if let nested = child.value as? any FuseWireStruct {
                // Nested structs re-encode their own padding as zeros.
                expected = try type(of: nested).decode(expected).encoded
            }
            #expect(bytesOf(child.value) == expected, "\(f.structName).\(f.field) @\(f.offset)")
            checked += 1
        }
        #expect(checked == fields.count)
    }

    func decodeAny(_ t: any FuseWireStruct.Type, _ bytes: [UInt8]) throws -> any FuseWireStruct {
        try t.decode(bytes)
    }

    /// Little-endian bytes of a field value, whatever its type.
    func bytesOf(_ v: Any) -> [UInt8] {
        switch v {
        case let x as UInt8: return [x]
        case let x as UInt16: return withUnsafeBytes(of: x.littleEndian) { Array($0) }
        case let x as UInt32: return withUnsafeBytes(of: x.littleEndian) { Array($0) }
        case let x as UInt64: return withUnsafeBytes(of: x.littleEndian) { Array($0) }
        case let x as Int32: return withUnsafeBytes(of: x.littleEndian) { Array($0) }
        case let x as Int64: return withUnsafeBytes(of: x.littleEndian) { Array($0) }
        case let x as [UInt8]: return x
        case let x as any FuseWireStruct: return x.encoded
        default: return []
        }
    }

    @Test func iomapStructSizesMatchSpec() {
        // Sizes from the iomap protocol specification (section 4).
        let spec: [(any FuseWireStruct.Type, Int)] = [
            (FuseIomapIo.self, 32), (FuseIomapBeginIn.self, 32), (FuseIomapBeginOut.self, 64),
            (FuseIomapEndIn.self, 72), (FuseIomapIoendIn.self, 48), (FuseIomapIoendOut.self, 8),
            (FuseIomapConfigIn.self, 64), (FuseIomapConfigOut.self, 104), (FuseRange.self, 16),
            (FuseIomapDevInvalOut.self, 24), (FuseIomapInvalMappingsOut.self, 48),
            (FuseIomapUpsertMappingsOut.self, 80), (FuseFreezefsIn.self, 8), (FuseShutdownfsIn.self, 8),
            (FuseBackingMap.self, 16), (FuseIomapSupport.self, 16), (FuseIomapBackingInfo.self, 8),
            (FuseStatx.self, 256), (FuseStatxOut.self, 288), (FuseInitIn.self, 64), (FuseInitOut.self, 64),
        ]
        for (t, size) in spec { #expect(t.wireSize == size, "\(t.cName)") }
    }

    @Test func iomapConfigOutOffsets() throws {
        var c = FuseIomapConfigOut()
        c.flags = 0x7f
        c.sUuidLen = 16
        c.sBlocksize = 4096
        c.sMaxbytes = 0x1122334455667788
        c.cacheMaxbytes = 262144
        let b = c.encoded
        #expect(b.count == 104)
        #expect(b[56] == 16)
        #expect(Array(b[60..<64]) == [0, 0x10, 0, 0])
        #expect(Array(b[88..<96]) == [0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11])
        #expect(Array(b[96..<100]) == [0, 0, 4, 0])
    }

    @Test func ioctlNumbersMatchSpec() {
        #expect(FuseDevIoctl.clone == 0x8004E500)
        #expect(FuseDevIoctl.backingOpen == 0x4010E501)
        #expect(FuseDevIoctl.addIomap == 0xE565)
        #expect(FuseDevIoctl.iomapSetBlocksize == 0x4008E566)
        #expect(FuseInitFlags.iomap.high == 0x800)
        #expect(FuseOpcode.iomapBegin.rawValue == 4094)
        #expect(FuseNotifyCode.iomapInvalMappings.rawValue == 101)
    }
}
