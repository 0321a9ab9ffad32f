import CShim

@inline(__always)
func crc32c(_ crc: UInt32, _ bytes: [UInt8]) -> UInt32 {
    bytes.withUnsafeBytes { p in cshim_crc32c(crc, p.baseAddress, p.count) }
}

@inline(__always)
func crc32c(_ crc: UInt32, _ bytes: ArraySlice<UInt8>) -> UInt32 {
    bytes.withUnsafeBytes { p in cshim_crc32c(crc, p.baseAddress, p.count) }
}

@inline(__always)
func crc16(_ crc: UInt16, _ bytes: ArraySlice<UInt8>) -> UInt16 {
    bytes.withUnsafeBytes { p in cshim_crc16(crc, p.baseAddress, p.count) }
}
