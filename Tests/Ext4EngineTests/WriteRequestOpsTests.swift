// The engine operations shaped like modifying requests: each runs under one
// transaction handle and one inode-lock section (counted by the engine), and
// applies the ext4 rules itself: set-ID bits a write clears, default ACLs a
// new inode inherits (never visible without them), the mode an access ACL
// implies, and what immutable and append-only inodes refuse.

@testable import Ext4Engine
import Foundation
import Glibc
import Testing

/// Run `body` and check it was one engine operation: one handle, one lock section.
@discardableResult
private func oneOp<T>(_ fs: Ext4FileSystem, _ what: String, handles: Int = 1, sections: Int? = 1,
                      _ body: () throws -> T) rethrows -> T {
    let before = fs.operationCounts
    let r = try body()
    let after = fs.operationCounts
    #expect(after.handles - before.handles == handles, "\(what): \(after.handles - before.handles) handles")
    if let sections {
        #expect(after.lockSections - before.lockSections == sections,
                "\(what): \(after.lockSections - before.lockSections) inode-lock sections")
    }
    return r
}

/// An ACL in the VFS xattr form: (tag, perm, id) entries.
private func acl(_ entries: [(UInt16, UInt16, UInt32)]) -> [UInt8] {
    var v: [UInt8] = [2, 0, 0, 0]
    for (t, p, id) in entries {
        v += [UInt8(t & 0xff), UInt8(t >> 8), UInt8(p & 0xff), UInt8(p >> 8)]
        v += withUnsafeBytes(of: id.littleEndian) { Array($0) }
    }
    return v
}

private let none: UInt32 = 0xFFFF_FFFF
private let accessName = b("system.posix_acl_access"), defaultName = b("system.posix_acl_default")
private let immutableFL: UInt32 = 0x10, appendFL: UInt32 = 0x20, syncFL: UInt32 = 0x8
private let nodumpFL: UInt32 = 0x40, noatimeFL: UInt32 = 0x80, extentsFL: UInt32 = 0x80000

private func expectEPERM(_ what: String, _ body: () throws -> Void) {
    do {
        try body()
        Issue.record("\(what): allowed, want EPERM")
    } catch let e as Ext4Error {
        #expect(e == .permission, "\(what): \(e), want EPERM")
    } catch {
        Issue.record("\(what): \(error)")
    }
}

private func expectAllowed(_ what: String, _ body: () throws -> Void) {
    do { try body() } catch { Issue.record("\(what): \(error), want success") }
}

/// What the concurrent reader saw.
private final class Tally: @unchecked Sendable {
    private let cond = NSCondition()
    private var stopFlag = false, done = false
    private var seen = 0, missing = 0
    var stopped: Bool { cond.lock(); defer { cond.unlock() }; return stopFlag }
    func stop() { cond.lock(); stopFlag = true; cond.unlock() }
    func saw(withACL: Bool) { cond.lock(); seen += 1; if !withACL { missing += 1 }; cond.unlock() }
    func finish() { cond.lock(); done = true; cond.broadcast(); cond.unlock() }
    func waitFinished() { cond.lock(); while !done { cond.wait() }; cond.unlock() }
    var counts: (seen: Int, missing: Int) { cond.lock(); defer { cond.unlock() }; return (seen, missing) }
}

@Suite("engine operations shaped like requests")
struct WriteRequestOpsTests {
    @Test func killSuidWriteDropsSetIDBitsInTheSameOperation() throws {
        let tmp = try TempDir()
        let img = try makeImage(tmp, writeVariants[0])
        let fs = try openRW(img)
        let f = try fs.mknod(parent: root, name: b("suid"), NewInode(mode: 0o106775, uid: 1000, gid: 1000))
        let g = try fs.mknod(parent: root, name: b("sgid-noexec"), NewInode(mode: 0o102765, uid: 1000, gid: 1000))
        let r = try fs.mknod(parent: root, name: b("root-writes"), NewInode(mode: 0o106775, uid: 1000, gid: 1000))
        let data = b("appended\n")
        let n = try oneOp(fs, "write with killSuidgid") {
            try data.withUnsafeBytes { try fs.write(f.ino, offset: 0, data: $0, killSuidgid: true) }
        }
        #expect(n == data.count)
        #expect(try fs.inode(f.ino).mode == 0o100775, "set-user-ID and set-group-ID (with group-exec) cleared")
        #expect(try fs.read(f.ino, offset: 0, count: 100) == data)
        // Set-group-ID without group-execute is not a set-ID bit to clear.
        _ = try data.withUnsafeBytes { try fs.write(g.ino, offset: 0, data: $0, killSuidgid: true) }
        #expect(try fs.inode(g.ino).mode == 0o102765)
        // A writer with CAP_FSETID (no kill flag) keeps them.
        _ = try data.withUnsafeBytes { try fs.write(r.ino, offset: 0, data: $0) }
        #expect(try fs.inode(r.ino).mode == 0o106775)
        // chown by a caller without CAP_FSETID, in the same SETATTR.
        var ch = AttrChange(); ch.uid = 0; ch.killSuidgid = true
        let after = try oneOp(fs, "chown with killSuidgid") { try fs.setattr(r.ino, ch) }
        #expect(after.mode == 0o100775 && after.uid == 0)
        // open(O_TRUNC) with FUSE_OPEN_KILL_SUIDGID.
        _ = try fs.setattr(r.ino, { var c = AttrChange(); c.mode = 0o6775; return c }())
        let t = try oneOp(fs, "open O_TRUNC") {
            try fs.open(r.ino, forWriting: true, appending: false, truncate: true, killSuidgid: true)
        }
        #expect(t.size == 0 && t.mode == 0o100775)
        try fs.unmount()
        try fsckClean(img, "killsuid")
    }

    /// A create that fails after its inode was made (no room for the
    /// directory entry's new block, or for the inherited ACL's xattr block)
    /// leaves no live inode behind: e2fsck once found "unattached inode" and
    /// an inode bitmap difference after fstests' generic/077 filled a file
    /// system under a directory with a default ACL.
    @Test(arguments: [writeVariants[0], writeVariants[6], writeVariants[2]])
    func failedCreateLeavesNoInode(_ v: WVariant) throws {
        let tmp = try TempDir()
        let img = try makeImage(tmp, v, sizeMB: 4)
        let fs = try openRW(img)
        let d = try fs.mkdir(parent: root, name: b("d"), NewInode(mode: 0o40777, uid: 0, gid: 0))
        try fs.setxattr(d.ino, name: defaultName,
                        value: acl([(0x01, 7, none), (0x02, 7, 1234), (0x04, 5, none), (0x10, 7, none), (0x20, 5, none)]), flags: 0)
        // Fill every free block.
        let fill = try fs.mknod(parent: root, name: b("fill"), fileMode)
        var off: UInt64 = 0
        while true {
            do { try fs.put(fill.ino, off, pattern(64 * 1024, seed: 3)) } catch Ext4Error.noSpace { break }
            off += 64 * 1024
        }
        while true {
            do { try fs.put(fill.ino, off, pattern(1024, seed: 4)) } catch Ext4Error.noSpace { break }
            off += 1024
        }
        // Creates until one fails for lack of space.
        var failed = 0, made = 0
        for i in 0..<2000 {
            do {
                _ = try fs.mknod(parent: d.ino, name: b("a-fairly-long-file-name-to-fill-the-block-\(i)"),
                                 NewInode(mode: 0o100644, uid: 1000, gid: 1000, umask: 0o022))
                made += 1
            } catch Ext4Error.noSpace {
                failed += 1
                if failed >= 3 { break }
            }
        }
        #expect(failed >= 1, "no create failed (\(made) made)")
        try fs.unmount()
        try fsckClean(img, "\(v.name): after \(made) creates and \(failed) that failed")
    }

    @Test(arguments: [writeVariants[0], writeVariants[6]])
    func createWithInheritedACLIsAtomic(_ v: WVariant) throws {
        let tmp = try TempDir()
        let img = try makeImage(tmp, v)
        let fs = try openRW(img)
        // A directory with a default ACL that has a named user and a mask.
        let d = try fs.mkdir(parent: root, name: b("named"), NewInode(mode: 0o40777, uid: 0, gid: 0))
        let dacl = acl([(0x01, 7, none), (0x02, 7, 1234), (0x04, 5, none), (0x10, 7, none), (0x20, 5, none)])
        try fs.setxattr(d.ino, name: defaultName, value: dacl, flags: 0)
        // CREATE with mode 0666, umask 022: the umask is not applied; the ACL masks the mode.
        let f = try oneOp(fs, "create with inherited ACL") {
            try fs.mknod(parent: d.ino, name: b("f"), NewInode(mode: 0o100666, uid: 1000, gid: 1000, umask: 0o022))
        }
        #expect(f.mode == 0o100664, "mode \(String(f.mode, radix: 8)), want 100664 (owner rw, mask rw, other r)")
        let want = acl([(0x01, 6, none), (0x02, 7, 1234), (0x04, 5, none), (0x10, 6, none), (0x20, 4, none)])
        #expect(try fs.getxattr(f.ino, name: accessName) == want, "the new file's access ACL")
        #expect(throws: Ext4Error.noData) { _ = try fs.getxattr(f.ino, name: defaultName) }
        // MKDIR: the access ACL masked by 0777 and the default ACL itself.
        let sub = try oneOp(fs, "mkdir with inherited ACL") {
            try fs.mkdir(parent: d.ino, name: b("sub"), NewInode(mode: 0o40777, uid: 1000, gid: 1000, umask: 0o077))
        }
        #expect(sub.mode == 0o40775)
        #expect(try fs.getxattr(sub.ino, name: defaultName) == dacl)
        #expect(try fs.getxattr(sub.ino, name: accessName)
                == acl([(0x01, 7, none), (0x02, 7, 1234), (0x04, 5, none), (0x10, 7, none), (0x20, 5, none)]))
        // TMPFILE and a FIFO inherit the same way.
        let t = try oneOp(fs, "tmpfile with inherited ACL") {
            try fs.tmpfile(parent: d.ino, NewInode(mode: 0o100600, uid: 1000, gid: 1000, umask: 0o022))
        }
        #expect(t.mode == 0o100600)
        #expect(try fs.getxattr(t.ino, name: accessName)
                == acl([(0x01, 6, none), (0x02, 7, 1234), (0x04, 5, none), (0x10, 0, none), (0x20, 0, none)]))
        // A default ACL with no more than the mode bits: no access ACL, the mode masked.
        let plain = try fs.mkdir(parent: root, name: b("plain"), NewInode(mode: 0o40777, uid: 0, gid: 0))
        try fs.setxattr(plain.ino, name: defaultName, value: acl([(0x01, 7, none), (0x04, 5, none), (0x20, 0, none)]), flags: 0)
        let p = try fs.mknod(parent: plain.ino, name: b("p"), NewInode(mode: 0o010666, uid: 1, gid: 1, umask: 0))
        #expect(p.mode == 0o010640)
        #expect(throws: Ext4Error.noData) { _ = try fs.getxattr(p.ino, name: accessName) }
        // No default ACL: the umask; a set-group-ID directory gives its group (and its bit to directories).
        let sg = try fs.mkdir(parent: root, name: b("sgid"), NewInode(mode: 0o42775, uid: 0, gid: 99))
        let u = try fs.mknod(parent: sg.ino, name: b("u"), NewInode(mode: 0o100666, uid: 5, gid: 5, umask: 0o027))
        #expect(u.mode == 0o100640 && u.gid == 99)
        let ud = try fs.mkdir(parent: sg.ino, name: b("ud"), NewInode(mode: 0o40777, uid: 5, gid: 5, umask: 0o022))
        #expect(ud.mode == 0o42755 && ud.gid == 99)
        let l = try fs.symlink(parent: sg.ino, name: b("l"), target: b("u"), uid: 5, gid: 5, asCaller: true)
        #expect(l.gid == 99 && l.mode == 0o120777)

        // Nobody ever sees a new file without its ACL: a reader looks every
        // name up and reads its ACL while files are created.
        let tally = Tally()
        let dir = d.ino
        let reader = Thread {
            while !tally.stopped {
                var names: [DirEntry] = []
                try? fs.readDirectory(dir, from: 0) { names.append($0); return true }
                for e in names where e.name.first == 0x63 {  // "c..."
                    guard let ino = try? fs.lookup(dir: dir, name: e.name) else { continue }
                    tally.saw(withACL: (try? fs.getxattr(ino, name: accessName)) != nil)
                }
            }
            tally.finish()
        }
        reader.start()
        for i in 0..<300 {
            _ = try fs.mknod(parent: d.ino, name: b("c\(i)"), NewInode(mode: 0o100644, uid: 1, gid: 1, umask: 0o022))
        }
        tally.stop()
        tally.waitFinished()
        #expect(tally.counts.missing == 0, "files seen without their inherited ACL")
        #expect(tally.counts.seen > 0, "the reader saw no file: the check did not check")
        try fs.unmount()
        try fsckClean(img, "acl inherit \(v)")
        // Read back from the image.
        let ro = try openImage(img)
        let fi = try resolve(ro, "named/f")
        #expect(try ro.getxattr(fi, name: accessName) == want)
    }

    @Test func aclAndModeStayInStepInOneOperation() throws {
        let tmp = try TempDir()
        let img = try makeImage(tmp, writeVariants[0])
        let fs = try openRW(img)
        let f = try fs.mknod(parent: root, name: b("f"), NewInode(mode: 0o102775, uid: 1000, gid: 1000))
        // Setting an access ACL sets the mode it implies; with killSgid also clears set-group-ID.
        let a = acl([(0x01, 7, none), (0x02, 6, 42), (0x04, 5, none), (0x10, 4, none), (0x20, 1, none)])
        try oneOp(fs, "setxattr access ACL") { try fs.setxattr(f.ino, name: accessName, value: a, flags: 0, killSgid: true) }
        #expect(try fs.inode(f.ino).mode == 0o100741)
        #expect(try fs.getxattr(f.ino, name: accessName) == a)
        // chmod rewrites the owner, mask and other entries in the same SETATTR.
        var ch = AttrChange(); ch.mode = 0o750
        let i = try oneOp(fs, "chmod with an access ACL") { try fs.setattr(f.ino, ch) }
        #expect(i.mode == 0o100750)
        #expect(try fs.getxattr(f.ino, name: accessName)
                == acl([(0x01, 7, none), (0x02, 6, 42), (0x04, 5, none), (0x10, 5, none), (0x20, 0, none)]))
        // An ACL that says no more than the mode is removed, and sets the mode.
        try oneOp(fs, "setxattr minimal ACL") {
            try fs.setxattr(f.ino, name: accessName, value: acl([(0x01, 6, none), (0x04, 4, none), (0x20, 4, none)]), flags: 0)
        }
        #expect(try fs.inode(f.ino).mode == 0o100644)
        #expect(throws: Ext4Error.noData) { _ = try fs.getxattr(f.ino, name: accessName) }
        #expect(throws: Ext4Error.invalid("bad ACL")) {
            try fs.setxattr(f.ino, name: accessName, value: acl([(0x40, 7, none)]), flags: 0)
        }
        try fs.unmount()
        try fsckClean(img, "acl chmod")
    }

    @Test func appendOnlyAllowsAppendsOnly() throws {
        let tmp = try TempDir()
        let img = try makeImage(tmp, writeVariants[0])
        let fs = try openRW(img)
        let d = try fs.mkdir(parent: root, name: b("d"), dirMode)
        let f = try fs.mknod(parent: d.ino, name: b("log"), fileMode)
        try fs.put(f.ino, 0, b("abc"))
        try fs.setxattr(f.ino, name: b("user.keep"), value: b("1"), flags: 0)
        let set = try oneOp(fs, "setflags") { try fs.setInodeFlags(f.ino, appendFL) }
        #expect(set.isAppendOnly && !set.isImmutable)

        func attr(_ body: (inout AttrChange) -> Void) -> AttrChange { var c = AttrChange(); body(&c); return c }
        expectEPERM("chmod") { _ = try fs.setattr(f.ino, attr { $0.mode = 0o600 }) }
        expectEPERM("chown") { _ = try fs.setattr(f.ino, attr { $0.uid = 1 }) }
        expectEPERM("chgrp") { _ = try fs.setattr(f.ino, attr { $0.gid = 1 }) }
        expectEPERM("utimes") { _ = try fs.setattr(f.ino, attr { $0.mtime = .set(Timespec(sec: 5, nsec: 0)) }) }
        expectEPERM("utimes atime") { _ = try fs.setattr(f.ino, attr { $0.atime = .set(Timespec(sec: 5, nsec: 0)) }) }
        expectEPERM("truncate") { _ = try fs.setattr(f.ino, attr { $0.size = 1 }) }
        expectEPERM("extend") { _ = try fs.setattr(f.ino, attr { $0.size = 100 }) }
        expectEPERM("open O_TRUNC") { _ = try fs.open(f.ino, forWriting: true, appending: true, truncate: true) }
        expectEPERM("open for writing without O_APPEND") { _ = try fs.open(f.ino, forWriting: true, appending: false, truncate: false) }
        expectAllowed("open with O_APPEND") { _ = try fs.open(f.ino, forWriting: true, appending: true, truncate: false) }
        expectEPERM("write inside") { try fs.put(f.ino, 0, b("x")) }
        expectEPERM("write past the end") { try fs.put(f.ino, 10, b("x")) }
        expectEPERM("punch") { try fs.fallocate(f.ino, mode: 0x3, offset: 0, length: 4096) }
        expectEPERM("zero range") { try fs.fallocate(f.ino, mode: 0x10, offset: 0, length: 4096) }
        expectEPERM("setxattr") { try fs.setxattr(f.ino, name: b("user.x"), value: b("1"), flags: 0) }
        expectEPERM("removexattr") { try fs.removexattr(f.ino, name: b("user.keep")) }
        expectEPERM("unlink") { _ = try fs.unlink(parent: d.ino, name: b("log")) }
        expectEPERM("link") { _ = try fs.link(f.ino, parent: d.ino, name: b("other")) }
        expectEPERM("rename") { try fs.rename(parent: d.ino, name: b("log"), newParent: d.ino, newName: b("n"), flags: 0) }
        expectAllowed("touch") { _ = try fs.setattr(f.ino, attr { $0.atime = .now; $0.mtime = .now }) }
        expectAllowed("cached times written back") {
            _ = try fs.setattr(f.ino, attr { $0.mtime = .set(Timespec(sec: 7, nsec: 0)); $0.cachedTimes = true })
        }
        expectAllowed("append") { try fs.put(f.ino, 3, b("def")) }
        expectAllowed("plain fallocate") { try fs.fallocate(f.ino, mode: 0x1, offset: 0, length: 8192) }
        #expect(try fs.read(f.ino, offset: 0, count: 100) == b("abcdef"))
        // An append-only directory takes new names and keeps its old ones.
        _ = try fs.setInodeFlags(d.ino, appendFL)
        expectAllowed("create in an append-only directory") { _ = try fs.mknod(parent: d.ino, name: b("new"), fileMode) }
        expectEPERM("unlink from an append-only directory") { _ = try fs.unlink(parent: d.ino, name: b("new")) }
        // Clearing the flag lets everything through again.
        _ = try fs.setInodeFlags(d.ino, 0)
        _ = try fs.setInodeFlags(f.ino, 0)
        expectAllowed("truncate after clearing") { _ = try fs.setattr(f.ino, attr { $0.size = 1 }) }
        expectAllowed("unlink after clearing") { _ = try fs.unlink(parent: d.ino, name: b("log")) }
        try fs.unmount()
        try fsckClean(img, "append-only")
    }

    @Test func immutableRefusesEverything() throws {
        let tmp = try TempDir()
        let img = try makeImage(tmp, writeVariants[0])
        let fs = try openRW(img)
        let d = try fs.mkdir(parent: root, name: b("d"), dirMode)
        let f = try fs.mknod(parent: d.ino, name: b("frozen"), fileMode)
        try fs.put(f.ino, 0, b("abc"))
        try fs.setxattr(f.ino, name: b("user.keep"), value: b("1"), flags: 0)
        _ = try fs.setInodeFlags(f.ino, immutableFL)
        func attr(_ body: (inout AttrChange) -> Void) -> AttrChange { var c = AttrChange(); body(&c); return c }
        expectEPERM("chmod") { _ = try fs.setattr(f.ino, attr { $0.mode = 0o600 }) }
        expectEPERM("chown") { _ = try fs.setattr(f.ino, attr { $0.uid = 1 }) }
        expectEPERM("touch") { _ = try fs.setattr(f.ino, attr { $0.mtime = .now }) }
        expectEPERM("cached times") { _ = try fs.setattr(f.ino, attr { $0.mtime = .now; $0.cachedTimes = true }) }
        expectEPERM("truncate") { _ = try fs.setattr(f.ino, attr { $0.size = 0 }) }
        expectEPERM("open O_TRUNC") { _ = try fs.open(f.ino, forWriting: false, appending: false, truncate: true) }
        expectEPERM("open for appending") { _ = try fs.open(f.ino, forWriting: true, appending: true, truncate: false) }
        expectAllowed("open for reading") { _ = try fs.open(f.ino, forWriting: false, appending: false, truncate: false) }
        expectEPERM("write") { try fs.put(f.ino, 0, b("x")) }
        expectEPERM("append") { try fs.put(f.ino, 3, b("x")) }
        expectEPERM("fallocate") { try fs.fallocate(f.ino, mode: 0, offset: 0, length: 4096) }
        expectEPERM("iomap allocation") {
            _ = try fs.mapForWrite(f.ino, at: 8192, count: 4096, limit: 1 << 40, allocate: true, nowait: false)
        }
        expectEPERM("copy into") { _ = try fs.copyRange(from: f.ino, at: 0, to: f.ino, at: 3, length: 3) }
        expectEPERM("setxattr") { try fs.setxattr(f.ino, name: b("user.x"), value: b("1"), flags: 0) }
        expectEPERM("removexattr") { try fs.removexattr(f.ino, name: b("user.keep")) }
        expectEPERM("unlink") { _ = try fs.unlink(parent: d.ino, name: b("frozen")) }
        expectEPERM("link") { _ = try fs.link(f.ino, parent: d.ino, name: b("other")) }
        expectEPERM("rename") { try fs.rename(parent: d.ino, name: b("frozen"), newParent: root, newName: b("n"), flags: 0) }
        expectEPERM("other flags while immutable") { _ = try fs.setInodeFlags(f.ino, immutableFL | nodumpFL) }
        expectEPERM("without CAP_LINUX_IMMUTABLE") { _ = try fs.setInodeFlags(f.ino, 0, capLinuxImmutable: false) }
        #expect(try fs.read(f.ino, offset: 0, count: 100) == b("abc"))
        // An immutable directory takes no new names.
        _ = try fs.setInodeFlags(d.ino, immutableFL)
        expectEPERM("create in an immutable directory") { _ = try fs.mknod(parent: d.ino, name: b("new"), fileMode) }
        expectEPERM("mkdir in an immutable directory") { _ = try fs.mkdir(parent: d.ino, name: b("new"), dirMode) }
        expectEPERM("tmpfile in an immutable directory") { _ = try fs.tmpfile(parent: d.ino, fileMode) }
        _ = try fs.setInodeFlags(d.ino, 0)
        _ = try fs.setInodeFlags(f.ino, 0)
        expectAllowed("write after clearing") { try fs.put(f.ino, 0, b("x")) }
        try fs.unmount()
        try fsckClean(img, "immutable")
    }

    @Test func flagsRoundTrip() throws {
        let tmp = try TempDir()
        let img = try makeImage(tmp, writeVariants[0])
        let fs = try openRW(img)
        let f = try fs.mknod(parent: root, name: b("f"), fileMode)
        let i = try oneOp(fs, "FS_IOC_SETFLAGS") { try fs.setInodeFlags(f.ino, syncFL | nodumpFL | noatimeFL | extentsFL) }
        #expect(i.isSync && !i.isImmutable)
        #expect(try fs.inodeFlags(f.ino) == syncFL | nodumpFL | noatimeFL | extentsFL)
        // Only settable bits: the others (extents) are kept.
        _ = try fs.setInodeFlags(f.ino, nodumpFL)
        #expect(try fs.inodeFlags(f.ino) == nodumpFL | extentsFL)
        // Clearing a visible flag that is not settable is refused; unknown bits too.
        #expect(throws: Ext4Error.unsupported("flags not settable")) { _ = try fs.setInodeFlags(f.ino, syncFL | 0x1000) }
        #expect(throws: Ext4Error.unsupported("unknown flags")) { _ = try fs.setInodeFlags(f.ino, 0x8000_0000 | extentsFL) }
        // The fsxattr view: FS_XFLAG_SYNC 0x20, IMMUTABLE 0x8, APPEND 0x10, NOATIME 0x40, NODUMP 0x80.
        #expect(try fs.inode(f.ino).fsxattrFlags == 0x80)
        let x = try oneOp(fs, "FS_IOC_FSSETXATTR") { try fs.setFsxattrFlags(f.ino, 0x10 | 0x20 | 0x40) }
        #expect(x.fsxattrFlags == 0x10 | 0x20 | 0x40)
        #expect(try fs.inodeFlags(f.ino) == appendFL | syncFL | noatimeFL | extentsFL)
        #expect(x.attributes == [.appendOnly])
        expectEPERM("append without CAP_LINUX_IMMUTABLE") { _ = try fs.setFsxattrFlags(f.ino, 0x20, capLinuxImmutable: false) }
        expectAllowed("other flags without the capability") { _ = try fs.setFsxattrFlags(f.ino, 0x10 | 0x80, capLinuxImmutable: false) }
        #expect(try fs.inodeFlags(f.ino) == appendFL | nodumpFL | extentsFL)
        try fs.unmount()
        try fsckClean(img, "flags")
        let ro = try openImage(img)
        #expect(try ro.inodeFlags(try resolve(ro, "f")) == appendFL | nodumpFL | extentsFL)
    }

    @Test func copyRangeIsOneOperation() throws {
        let tmp = try TempDir()
        let img = try makeImage(tmp, writeVariants[0])
        let fs = try openRW(img)
        let src = try fs.mknod(parent: root, name: b("src"), fileMode)
        let dst = try fs.mknod(parent: root, name: b("dst"), fileMode)
        let data = pattern(3 << 20, seed: 5)
        try fs.put(src.ino, 0, data)
        let n = try oneOp(fs, "copy_file_range", sections: 1) {
            try fs.copyRange(from: src.ino, at: 0, to: dst.ino, at: 100, length: 1 << 30)
        }
        #expect(n == UInt64(data.count), "short at the source's end")
        #expect(try fs.read(dst.ino, offset: 100, count: data.count) == data)
        // At most maxCopyCount per operation: the caller gets a short count.
        var grow = AttrChange(); grow.size = Ext4FileSystem.maxCopyCount + (1 << 20)
        _ = try fs.setattr(src.ino, grow)
        #expect(try fs.copyRange(from: src.ino, at: 0, to: dst.ino, at: 0, length: 1 << 30) == Ext4FileSystem.maxCopyCount)
        // Within one file, and into an append-only one (refused).
        #expect(try fs.copyRange(from: src.ino, at: 0, to: src.ino, at: 10 << 20, length: 4096) == 4096)
        #expect(try fs.read(src.ino, offset: 10 << 20, count: 4096) == Array(data.prefix(4096)))
        _ = try fs.setInodeFlags(dst.ino, appendFL)
        expectEPERM("copy into an append-only file") { _ = try fs.copyRange(from: src.ino, at: 0, to: dst.ino, at: 0, length: 10) }
        _ = try fs.setInodeFlags(dst.ino, 0)
        try fs.unmount()
        try fsckClean(img, "copy range")
    }

    @Test func fileMapQueries() throws {
        let tmp = try TempDir()
        let img = try makeImage(tmp, writeVariants[0])
        let fs = try openRW(img)
        let f = try fs.mknod(parent: root, name: b("sparse"), fileMode)
        try fs.put(f.ino, 1 << 20, pattern(8192, seed: 1))
        try fs.fallocate(f.ino, mode: 0x1, offset: 3 << 20, length: 4096)
        try fs.put(f.ino, (4 << 20) - 10, b("end"))
        let bs = UInt64(fs.blockSize), mib: UInt64 = 1 << 20
        #expect(try fs.seek(f.ino, from: 0, data: true) == 1 << 20)
        #expect(try fs.seek(f.ino, from: 0, data: false) == 0)
        #expect(try fs.seek(f.ino, from: 1 << 20, data: false) == (1 << 20) + 8192)
        #expect(try fs.seek(f.ino, from: (1 << 20) + 8192, data: true) == (4 << 20) - bs)
        #expect(throws: Ext4Error.noSuchOffset) { _ = try fs.seek(f.ino, from: 4 << 20, data: true) }
        let recs = try fs.fiemap(f.ino, start: 0, length: .max)
        #expect(recs.count == 3 && recs.last?.last == true && recs[1].unwritten)
        #expect(recs.first?.logical == 1 << 20 && recs.first?.length == 8192)
        #expect(try fs.bmap(f.ino, block: 0) == 0)
        #expect(try fs.bmap(f.ino, block: mib / bs) == recs[0].physical / bs)
        let (_, m) = try fs.mapping(f.ino, at: 0, count: 4096, limit: 1 << 40)
        #expect(m == .hole(start: 0, end: mib / bs))
        let w = try oneOp(fs, "write-class map with allocation") {
            try fs.mapForWrite(f.ino, at: 8192, count: 4096, limit: 1 << 40, allocate: true, nowait: false)
        }
        guard case .mapped(let x, _) = w.mapping else { Issue.record("no mapping after allocation: \(w.mapping)"); return }
        #expect(x.unwritten && x.logical == 8192 / bs && w.allocated.count == 1 && !w.zeroedOnDevice)
        #expect(throws: Ext4Error.wouldBlock) {
            _ = try fs.mapForWrite(f.ino, at: 0, count: 4096, limit: 1 << 40, allocate: true, nowait: true)
        }
        try fs.unmount()
        try fsckClean(img, "file map")
    }
}
