import Ext4Engine
import Foundation
import Testing

/// FS_IOC_GETFSLABEL / SETFSLABEL: the label is ext4's s_volume_name (16
/// bytes at most), durable when the call returns, as e2label and blkid see it.
@Suite("label")
struct LabelTests {
    @Test func setLabelIsDurableAndBounded() throws {
        let tmp = try TempDir()
        let img = tmp.sub("l.img")
        try mkfs(img, tree: nil, args: ["-t", "ext4", "-L", "before"], sizeMB: 16)
        let fs = try Ext4FileSystem.open(device: try FileBlockDevice(path: img, readOnly: false),
                                         options: MountOptions(readOnly: false, commitInterval: 3600))
        #expect(fs.label == Array("before".utf8))
        try fs.setLabel(Array("sixteen-bytes-ok".utf8))
        #expect(fs.label == Array("sixteen-bytes-ok".utf8))
        // On the device already (blkid reads it there while mounted).
        let seen = try run("/usr/sbin/blkid", ["-s", "LABEL", "-o", "value", img], allowFail: true)
        #expect(seen.trimmingCharacters(in: .whitespacesAndNewlines) == "sixteen-bytes-ok", "\(seen)")
        #expect(throws: Ext4Error.self) { try fs.setLabel(Array("seventeen-bytes-x".utf8)) }
        try fs.setLabel([])
        #expect(fs.label.isEmpty)
        try fs.setLabel(Array("after".utf8))
        try fs.unmount()
        let dumped = try run("/usr/sbin/dumpe2fs", ["-h", img], allowFail: true)
        #expect(dumped.contains("Filesystem volume name:   after"), "\(dumped)")
        try fsckClean(img, "after label changes")
    }
}
