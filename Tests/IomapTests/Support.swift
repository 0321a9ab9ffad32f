// Image building for the iomap tests: a source tree copied into an image by
// mke2fs -d, plus debugfs for what -d cannot express (unwritten extents).

import Foundation
import Glibc
@_exported import TestSupport

/// Regular files of the source tree, relative paths.
let treeFiles = ["empty", "one", "small.txt", "b4095", "b4096", "b4097", "multi.bin", "sparse.bin",
                 "holestart.bin", "tailonly.bin", "big.bin", "sub/dir/nested.txt", "striped.bin"]

/// The source tree mke2fs -d copies: sizes around block and page edges,
/// holes at the start, middle and end, a big file spanning several extents.
func buildTree(_ root: String, bigMB: Int = 12) throws {
    let fm = FileManager.default
    try fm.createDirectory(atPath: root + "/sub/dir", withIntermediateDirectories: true)
    try writeFile(root + "/empty", [])
    try writeFile(root + "/one", [0x5a])
    try writeFile(root + "/small.txt", Array("hello world\n".utf8))
    try writeFile(root + "/b4095", pattern(4095, seed: 11))
    try writeFile(root + "/b4096", pattern(4096, seed: 12))
    try writeFile(root + "/b4097", pattern(4097, seed: 13))
    try writeFile(root + "/multi.bin", pattern(100_000, seed: 1))
    try writeFile(root + "/sparse.bin", [])
    truncate(root + "/sparse.bin", 10 << 20)
    writeAt(root + "/sparse.bin", 1 << 20, pattern(5000, seed: 2))
    writeAt(root + "/sparse.bin", 7 << 20 + 123, pattern(9000, seed: 3))
    try writeFile(root + "/holestart.bin", [])
    writeAt(root + "/holestart.bin", 256 << 10, pattern(70_000, seed: 5))
    try writeFile(root + "/tailonly.bin", [])
    writeAt(root + "/tailonly.bin", 3 << 20, pattern(3, seed: 6))
    try writeFile(root + "/big.bin", pattern(bigMB << 20, seed: 4))
    try writeFile(root + "/sub/dir/nested.txt", Array("nested file\n".utf8))
    // Alternating 64 KiB data / 64 KiB holes: many small extents.
    try writeFile(root + "/striped.bin", [])
    for k in 0..<24 where k % 2 == 0 { writeAt(root + "/striped.bin", k << 16, pattern(1 << 16, seed: UInt32(100 + k))) }
    truncate(root + "/striped.bin", 24 << 16)
}

/// mke2fs -t `type` -d tree, never interactive.
func makeImage(_ image: String, tree: String, type: String = "ext4", args: [String] = [], sizeMB: Int = 64) throws {
    try run("/usr/sbin/mke2fs", ["-q", "-F", "-t", type] + args + ["-d", tree, image, "\(sizeMB)M"])
}
