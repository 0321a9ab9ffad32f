import CShim
import Ext4Engine
import Foundation
import Glibc
import Testing

/// Compare the engine with the kernel's own ext4 driver on a loop mount.
/// Skipped (returns early) when loop mounting is not possible (no root, no loop devices).
@Suite("engine vs kernel ext4 (loop mount)")
struct KernelCompareTests {
    static let variants: [[String]] = [
        ["-t", "ext4"], ["-t", "ext4", "-O", "inline_data"], ["-t", "ext2", "-b", "1024"],
        ["-t", "ext4", "-O", "^metadata_csum,^64bit", "-I", "128"],
    ]

    @Test(arguments: variants)
    func sameViewAsKernel(_ args: [String]) throws {
        guard getuid() == 0, FileManager.default.fileExists(atPath: "/dev/loop-control") else { return }
        let tmp = try TempDir()
        let tree = tmp.sub("tree"), img = tmp.sub("fs.img"), mnt = tmp.sub("mnt")
        try buildTree(tree, big: false, trailingHole: !args.contains("inline_data"))
        try mkfs(img, tree: tree, args: args, sizeMB: 64)
        if args.contains("ext4") && !args.contains("inline_data") {
            try run("/usr/sbin/e2fsck", ["-fyD", img], allowFail: true) // index the big directory
        }
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        guard (try? run("/usr/bin/mount", ["-o", "loop,ro,noload", "-t", "ext4", img, mnt])) != nil else { return }
        defer { _ = try? run("/usr/bin/umount", [mnt], allowFail: true) }
        let fs = try openImage(img)

        // statfs
        var sv = statvfs()
        #expect(statvfs(mnt, &sv) == 0)
        let st = fs.statfs()
        #expect(st.blocks == UInt64(sv.f_blocks), "f_blocks")
        #expect(st.bfree == UInt64(sv.f_bfree), "f_bfree")
        #expect(st.bavail == UInt64(sv.f_bavail), "f_bavail")
        #expect(st.files == UInt64(sv.f_files) && st.ffree == UInt64(sv.f_ffree), "inodes")

        var stack: [(String, UInt32)] = [("", Ext4FileSystem.rootIno)]
        var compared = 0
        while let (rel, ino) = stack.popLast() {
            let path = mnt + rel
            var ks = stat()
            #expect(lstat(path, &ks) == 0)
            let n = try fs.inode(ino)
            #expect(UInt64(ino) == UInt64(ks.st_ino), "ino \(rel)")
            #expect(UInt32(n.mode) == ks.st_mode, "mode \(rel)")
            #expect(n.uid == ks.st_uid && n.gid == ks.st_gid, "owner \(rel)")
            #expect(UInt64(n.links) == UInt64(ks.st_nlink), "nlink \(rel)")
            #expect(n.size == UInt64(ks.st_size), "size \(rel)")
            #expect(n.blocks512 == UInt64(ks.st_blocks), "blocks \(rel)")
            #expect(n.mtime == Timespec(sec: Int64(ks.st_mtim.tv_sec), nsec: UInt32(ks.st_mtim.tv_nsec)), "mtime \(rel)")
            #expect(n.ctime == Timespec(sec: Int64(ks.st_ctim.tv_sec), nsec: UInt32(ks.st_ctim.tv_nsec)), "ctime \(rel)")
            #expect(n.atime == Timespec(sec: Int64(ks.st_atim.tv_sec), nsec: UInt32(ks.st_atim.tv_nsec)), "atime \(rel)")
            // xattr names and values exactly as the kernel reports them
            let kx = try sourceXattrs(path)
            let ex = try fs.listxattr(ino).map { String(decoding: $0, as: UTF8.self) }
            #expect(Set(ex) == Set(kx.keys), "xattr names \(rel)")
            for (k, v) in kx { #expect(try fs.getxattr(ino, name: Array(k.utf8)) == v, "xattr \(k) \(rel)") }
            if (ks.st_mode & S_IFMT) == S_IFREG || (ks.st_mode & S_IFMT) == S_IFDIR {
                let fd = open(path, O_RDONLY | O_NONBLOCK)
                if fd >= 0 {
                    var flags: UInt32 = 0
                    if cshim_ioctl_ptr(fd, cshim_FS_IOC_GETFLAGS(), &flags) == 0 {
                        #expect(try fs.inodeFlags(ino) == flags, "flags \(rel)")
                    }
                    close(fd)
                }
            }
            switch ks.st_mode & S_IFMT {
            case S_IFDIR:
                let indexed = try fs.inodeFlags(ino) & 0x1000 != 0
                let entries = try listDir(fs, ino)
                var kernelNames: [String] = []
                if let d = opendir(path) {
                    while let e = readdir(d) {
                        let name = withUnsafeBytes(of: e.pointee.d_name) { raw in
                            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
                        }
                        kernelNames.append(name)
                    }
                    closedir(d)
                }
                let ours = entries.map { String(decoding: $0.name, as: UTF8.self) }
                // The kernel returns dir_index file systems' directories in hash order;
                // ours is block order. Same entries, no duplicates.
                #expect(Set(ours) == Set(kernelNames) && ours.count == kernelNames.count, "listing \(rel)")
                _ = indexed
                for e in entries where e.name != [0x2E] && e.name != [0x2E, 0x2E] {
                    stack.append((rel + "/" + String(decoding: e.name, as: UTF8.self), e.ino))
                }
            case S_IFREG:
                let want = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
                let got = try fs.read(ino, offset: 0, count: 64 << 20)
                let same = got == want
                #expect(same, "content \(rel)")
            case S_IFLNK:
                let t = try FileManager.default.destinationOfSymbolicLink(atPath: path)
                #expect(try fs.readlink(ino) == Array(t.utf8), "link \(rel)")
            default: break
            }
            compared += 1
        }
        #expect(compared > manyCount)
    }
}
