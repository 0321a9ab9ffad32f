// One request, one engine operation: every modifying request the adapter
// serves opens exactly one transaction handle, and a request on one inode (or
// one that makes a new inode) takes the inode locks once. Counted by the
// engine (`operationCounts`), driven through the socket test kernel against a
// read-write Ext4FuseFS.

@testable import Ext4Engine
import Ext4Fuse
import Foundation
import FuseKernel
import FuseTestSupport
import Glibc
import Logging
import Testing

/// A read-write Ext4FuseFS on a fresh image, with the engine at hand.
private final class WritableImage {
    let dir: Scratch
    let image: String
    let fs: Ext4FileSystem
    let kernel: TestKernel

    init() throws {
        dir = try Scratch()
        image = dir.path + "/fs.img"
        try tool(["mkfs.ext4", "-q", "-F", "-b", "4096", image, "32M"])
        fs = try Ext4FileSystem.open(device: try FileBlockDevice(path: image, readOnly: false),
                                     options: MountOptions(readOnly: false))
        var opts = ServerOptions()
        opts.readOnly = false
        var logger = Logger(label: "request-ops-test")
        logger.logLevel = .critical
        kernel = try TestKernel(fs: Ext4FuseFS(fs: fs, options: opts, logger: logger), workers: 2, logLevel: .critical)
        _ = try kernel.initialize()
    }

    deinit { _ = kernel.finish() }

    func entry(_ req: FuseRequest, node: UInt64 = FuseABI.rootID) throws -> FuseEntryOut {
        let (e, p) = try kernel.call(req, node: node)
        guard e == 0 else { throw FuseError(-e) }
        return try FuseEntryOut.decode(Array(p.prefix(128)))
    }
}

private func n(_ s: String) -> [UInt8] { Array(s.utf8) }

/// An ACL in the VFS xattr form.
private func aclXattr(_ entries: [(UInt16, UInt16, UInt32)]) -> [UInt8] {
    var v: [UInt8] = [2, 0, 0, 0]
    for (t, p, id) in entries {
        v += [UInt8(t & 0xff), UInt8(t >> 8), UInt8(p & 0xff), UInt8(p >> 8)]
        v += withUnsafeBytes(of: id.littleEndian) { Array($0) }
    }
    return v
}

@Suite(.serialized, .enabled(if: haveE2fsprogs, "needs mkfs.ext4 and e2fsck"))
struct RequestOpsTests {
    @Test func modifyingRequestsAreEngineOperations() throws {
        let s = try WritableImage()
        let root = FuseABI.rootID
        let none: UInt32 = 0xFFFF_FFFF
        // A directory with a default ACL, a file in it with set-ID bits, a victim for removals.
        let d = try s.entry(.mkdir(FuseMkdirIn(mode: 0o777, umask: 0), name: n("d")))
        let dacl = aclXattr([(0x01, 7, none), (0x02, 7, 1234), (0x04, 5, none), (0x10, 7, none), (0x20, 5, none)])
        #expect(try s.kernel.call(.setxattr(FuseSetxattrIn(size: UInt32(dacl.count)), name: n("system.posix_acl_default"),
                                            value: dacl), node: d.nodeid).error == 0)

        /// Send `req`; it must succeed as one handle and (when `oneSection`) one inode-lock section.
        func check(_ what: String, _ req: FuseRequest, node: UInt64, oneSection: Bool = true) throws -> [UInt8] {
            let before = s.fs.operationCounts
            let (e, p) = try s.kernel.call(req, node: node)
            let after = s.fs.operationCounts
            #expect(e == 0, "\(what): error \(e)")
            #expect(after.handles - before.handles == 1, "\(what): \(after.handles - before.handles) transaction handles")
            if oneSection {
                #expect(after.lockSections - before.lockSections == 1,
                        "\(what): \(after.lockSections - before.lockSections) inode-lock sections")
            }
            return p
        }

        let created = try check("CREATE with an inherited ACL", .create(FuseCreateIn(flags: UInt32(O_RDWR), mode: 0o6777, umask: 0o022),
                                                                        name: n("f")), node: d.nodeid)
        let f = try FuseEntryOut.decode(Array(created.prefix(128)))
        #expect(f.attr.mode == 0o106775, "mode \(String(f.attr.mode, radix: 8)): masked by the default ACL, not the umask")
        let (ae, acl) = try s.kernel.call(.getxattr(FuseGetxattrIn(size: 256), name: n("system.posix_acl_access")), node: f.nodeid)
        #expect(ae == 0 && acl.count == 4 + 5 * 8, "the new file carries its access ACL")
        _ = try check("MKNOD", .mknod(FuseMknodIn(mode: UInt32(S_IFIFO) | 0o644, umask: 0o022), name: n("p")), node: d.nodeid)
        _ = try check("MKDIR", .mkdir(FuseMkdirIn(mode: 0o755, umask: 0o022), name: n("sub")), node: d.nodeid)
        _ = try check("TMPFILE", .tmpfile(FuseCreateIn(flags: UInt32(O_RDWR), mode: 0o600, umask: 0o022), name: n("t")),
                      node: d.nodeid)
        _ = try check("SYMLINK", .symlink(name: n("l"), target: n("f")), node: d.nodeid)
        _ = try check("LINK", .link(FuseLinkIn(oldnodeid: f.nodeid), name: n("hard")), node: d.nodeid)

        let data = [UInt8](repeating: 0x61, count: 5000)
        let notesBefore = s.kernel.notifications.count
        _ = try check("WRITE that kills set-ID bits",
                      .write(FuseWriteIn(fh: 0, offset: 0, size: UInt32(data.count), writeFlags: FuseMiscFlags.writeKillSuidgid),
                             data: data), node: f.nodeid)
        // The kernel's cached mode is stale: its attributes were invalidated, before the reply.
        let notes = s.kernel.notifications.dropFirst(notesBefore)
        #expect(notes.count == 1 && notes.first?.code == FuseNotifyCode.invalInode.rawValue
                && notes.first?.payload == FuseReplyEncoder.invalInode(ino: f.nodeid, offset: -1, length: 0),
                "\(notes.map { ($0.code, $0.payload.count) })")
        _ = try check("WRITE that kills nothing more",
                      .write(FuseWriteIn(fh: 0, offset: 0, size: UInt32(data.count), writeFlags: FuseMiscFlags.writeKillSuidgid),
                             data: data), node: f.nodeid)
        #expect(s.kernel.notifications.count == notesBefore + 1, "a WRITE that cleared nothing invalidated attributes")
        #expect(try FuseAttrOut.decode(try s.kernel.call(.getattr(FuseGetattrIn()), node: f.nodeid).payload).attr.mode == 0o100775)
        let chmod = try check("SETATTR chmod (access ACL in step)", .setattr(FuseSetattrIn(valid: 1 << 0, mode: 0o6750)),
                              node: f.nodeid)
        #expect(try FuseAttrOut.decode(chmod).attr.mode == 0o106750)
        _ = try check("SETATTR chown that kills set-ID bits",
                      .setattr(FuseSetattrIn(valid: FuseSetattrValid([.uid, .gid, .killSuidgid]).rawValue, uid: 7, gid: 7)),
                      node: f.nodeid)
        _ = try check("SETATTR truncate and times",
                      .setattr(FuseSetattrIn(valid: FuseSetattrValid([.size, .atime, .mtime]).rawValue, size: 100,
                                             atime: 1_000_000, mtime: 2_000_000)), node: f.nodeid)
        _ = try check("OPEN O_TRUNC", .open(FuseOpenIn(flags: UInt32(O_WRONLY | O_TRUNC), openFlags: FuseMiscFlags.openKillSuidgid)),
                      node: f.nodeid)
        _ = try check("SETXATTR user", .setxattr(FuseSetxattrIn(size: 1), name: n("user.x"), value: [1]), node: f.nodeid)
        let access = aclXattr([(0x01, 7, none), (0x02, 6, 42), (0x04, 5, none), (0x10, 4, none), (0x20, 1, none)])
        _ = try check("SETXATTR access ACL (mode in step)",
                      .setxattr(FuseSetxattrIn(size: UInt32(access.count), setxattrFlags: FuseMiscFlags.setxattrACLKillSgid),
                                name: n("system.posix_acl_access"), value: access), node: f.nodeid)
        #expect(try FuseAttrOut.decode(try s.kernel.call(.getattr(FuseGetattrIn()), node: f.nodeid).payload).attr.mode == 0o100741)
        _ = try check("REMOVEXATTR", .removexattr(name: n("user.x")), node: f.nodeid)
        _ = try check("FALLOCATE", .fallocate(FuseFallocateIn(fh: 0, offset: 0, length: 1 << 20)), node: f.nodeid)
        let setflags: UInt32 = 0x4008_6602, fssetxattr: UInt32 = 0x401c_5820
        _ = try check("FS_IOC_SETFLAGS", .ioctl(FuseIoctlIn(cmd: setflags, inSize: 4, outSize: 0), input: [0x40, 0, 0, 0]),
                      node: f.nodeid)
        _ = try check("FS_IOC_FSSETXATTR", .ioctl(FuseIoctlIn(cmd: fssetxattr, inSize: 28, outSize: 0),
                                                  input: [0x80, 0, 0, 0] + [UInt8](repeating: 0, count: 24)), node: f.nodeid)
        let g = try s.entry(.create(FuseCreateIn(flags: UInt32(O_RDWR), mode: 0o644), name: n("g")))
        _ = try check("COPY_FILE_RANGE", .copyFileRange(FuseCopyFileRangeIn(offIn: 0, nodeidOut: g.nodeid, offOut: 0, len: 1 << 20),
                                                        is64: false), node: f.nodeid)
        // Removals and renames resolve the names first to know which inodes to
        // lock (the stripe order), so they make more than one lock section;
        // they are still one handle.
        _ = try check("UNLINK", .unlink(name: n("hard")), node: d.nodeid, oneSection: false)
        _ = try check("RENAME", .rename(newdir: root, flags: 0, oldName: n("p"), newName: n("moved")), node: d.nodeid,
                      oneSection: false)
        _ = try check("RMDIR", .rmdir(name: n("sub")), node: d.nodeid, oneSection: false)
        // DESTROY unmounts; the image is then e2fsck clean.
        #expect(try s.kernel.call(.destroy, node: 0).error == 0)
        _ = try tool(["e2fsck", "-fn", s.image])
    }
}
