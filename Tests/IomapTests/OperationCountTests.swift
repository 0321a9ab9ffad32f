// iomap BEGIN, END and IOEND are each one engine operation: a write-class
// BEGIN that allocates opens one transaction handle and takes the inode's
// lock once (its mapping is computed under that same lock), a read BEGIN takes
// the lock once and no handle, END and IOEND one handle and one lock section.

@testable import Ext4Engine
import Ext4Fuse
import Foundation
import FuseKernel
import Glibc
import Testing

@Suite(.serialized) struct IomapOperationCounts {
    @Test(arguments: [FsConfig.all[0], FsConfig.all[3]])
    func mappingRequestsAreEngineOperations(_ cfg: FsConfig) throws {
        let dir = try TempDir()
        let image = try emptyImage(dir, cfg)
        let k = try rwKernel(image)
        defer { #expect(k.finish()) }
        let e = try k.create("f")
        let bs = k.blockSize

        func counted(_ what: String, _ req: FuseRequest, handles: Int, sections: Int = 1) throws -> [UInt8] {
            let before = k.fs.operationCounts
            let (err, p) = try k.call(req, node: e.nodeid)
            let after = k.fs.operationCounts
            #expect(err == 0, "\(what): error \(err)")
            #expect(after.handles - before.handles == handles, "\(what): \(after.handles - before.handles) handles")
            #expect(after.lockSections - before.lockSections == sections,
                    "\(what): \(after.lockSections - before.lockSections) inode-lock sections")
            return p
        }

        let begin = try counted("write BEGIN into a hole (allocates)",
                                .iomapBegin(FuseIomapBeginIn(opflags: OpFlags.write.rawValue, attrIno: e.attr.ino, pos: 0,
                                                             count: 2 * bs)), handles: 1)
        _ = try FuseIomapBeginOut.decode(begin)   // the reply decodes; with the mapping cache on it says RETRY_CACHE
        #expect(try k.fs.mappings(UInt32(e.attr.ino), fromBlock: 0, maxBlocks: 2).count == 1, "BEGIN allocated")
        _ = try counted("read BEGIN", .iomapBegin(FuseIomapBeginIn(opflags: 0, attrIno: e.attr.ino, pos: 0, count: bs)),
                        handles: 0)
        _ = try counted("ZERO BEGIN (no allocation)",
                        .iomapBegin(FuseIomapBeginIn(opflags: OpFlags.zero.rawValue, attrIno: e.attr.ino, pos: 0, count: bs)),
                        handles: 0)
        let m = FuseIomapIo(offset: 0, length: 2 * bs, addr: FuseIomap.nullAddr, type: MType.unwritten.rawValue,
                            flags: FuseIomap.MappingFlags.sizeChanged.rawValue, dev: FuseIomap.devNull)
        _ = try counted("END of a buffered write that grew the file",
                        .iomapEnd(FuseIomapEndIn(opflags: OpFlags.write.rawValue, attrIno: e.attr.ino, pos: 0, count: 2 * bs,
                                                 written: Int64(2 * bs), map: m)), handles: 1)
        _ = try counted("IOEND",
                        .iomapIoend(FuseIomapIoendIn(flags: FuseIomap.IoendFlags.unwritten.rawValue, attrIno: e.attr.ino,
                                                     pos: 0, written: 2 * bs)), handles: 1)
        #expect(try k.fs.inode(UInt32(e.attr.ino)).size == 2 * bs)
    }
}
