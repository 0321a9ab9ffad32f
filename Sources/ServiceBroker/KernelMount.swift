#if canImport(Glibc)
import Glibc
#endif
import CShim
import CMount

/// The mount system calls: new mount API first, mount(2) as the fallback.
enum KernelMount {
    /// Everything here comes from the helper's own configuration and pins,
    /// except `options`, which holds the server's tuning options after the
    /// helper's allow-list and the helper's own access options.
    struct Request {
        var subtype: String
        var source: String
        var options: [String]
        var fuseFD: Int32
        var rootMode: UInt32
        var uid: uid_t
        var gid: gid_t
        var msFlags: UInt32
        var targetFD: Int32
        var targetPath: String
        /// Set: a `fuseblk` mount on this block device (the kernel opens it
        /// itself, sends DESTROY at umount and waits for the answer); `source`
        /// is then its path. nil: a plain `fuse` mount.
        var blockDevice: BlockSource? = nil

        var baseType: String { blockDevice == nil ? "fuse" : "fuseblk" }
        var fstype: String { "\(baseType).\(subtype)" }
        var helperOptions: [String] {
            ["fd=\(fuseFD)", "rootmode=\(String(rootMode, radix: 8))", "user_id=\(uid)", "group_id=\(gid)"]
                + (blockDevice.map { ["blksize=\($0.blockSize)"] } ?? [])
        }
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
        var errno: Int32
    }

    /// `success` carries an fd on the new mount's root (the fsmount fd, or an
    /// O_PATH fd after mount(2)): the only handle the helper unmounts by.
    enum Outcome { case success(Int32), failure(Failure) }

    static let fuseSuperMagic: Int64 = 0x6573_5546

    static func mount(_ r: Request) -> Outcome {
        if let b = r.blockDevice, !FuseBlock.pathNames(b.path, device: b.device) {
            return .failure(Failure(description: "\(b.path) is no longer the block device handed to the server", errno: ESTALE))
        }
        let outcome: Outcome
        switch newAPI(r) {
        case .failure(let f) where f.errno == ENOSYS || f.errno == ENOPARAM_:
            outcome = legacy(r)
        case let other:
            outcome = other
        }
        // The kernel opened the source by path: the mount must be on the
        // device the server was given, else it is taken down again. (A legacy
        // mount whose root could not be found again, fd -1, cannot be checked.)
        guard case .success(let fd) = outcome, fd >= 0, let b = r.blockDevice else { return outcome }
        let got = DeviceNumber.of(fd: fd)
        if got == b.device { return outcome }
        abortAndDetach(fd, dev: got ?? b.device)
        FD.close(fd)
        return .failure(Failure(description: "the fuseblk mount is not on \(b.path)", errno: ESTALE))
    }

    /// Take down a mount this helper made and cannot keep: abort its FUSE
    /// connection first (a fuseblk superblock sends DESTROY when it goes, and
    /// waits for the server's answer; an aborted connection fails it at
    /// once), then detach it through its own fd. The caller closes `fd`.
    static func abortAndDetach(_ fd: Int32, dev: DeviceNumber) {
        FuseBlock.abortConnection(dev: dev)
        _ = cshim_pin_umount_fd(fd, Int32(MNT_DETACH))
    }

    static let ENOPARAM_: Int32 = 519 // kernel-internal ENOPARAM leaks as 519 from fsconfig

    // MARK: fsopen/fsconfig/fsmount/move_mount

    static func newAPI(_ r: Request) -> Outcome {
        let fsfd = cshim_fsopen(r.baseType, 1) // FSOPEN_CLOEXEC
        if fsfd < 0 { return .failure(Failure(description: "fsopen(\(r.baseType))", errno: -fsfd)) }
        defer { FD.close(fsfd) }

        var attrs: UInt32 = 0
        var flagParams: [String] = []
        let f = r.msFlags
        if f & MS.rdonly != 0 { attrs |= 0x1; flagParams.append("ro") }
        if f & MS.nosuid != 0 { attrs |= 0x2 }
        if f & MS.nodev != 0 { attrs |= 0x4 }
        if f & MS.noexec != 0 { attrs |= 0x8 }
        if f & MS.noatime != 0 { attrs |= 0x10 }
        if f & MS.strictatime != 0 { attrs |= 0x20 }
        if f & MS.nodiratime != 0 { attrs |= 0x80 }
        if f & MS.synchronous != 0 { flagParams.append("sync") }
        if f & MS.dirsync != 0 { flagParams.append("dirsync") }
        if f & MS.lazytime != 0 { flagParams.append("lazytime") }

        func cfgString(_ key: String, _ value: String) -> Failure? {
            let rc = cshim_fsconfig(fsfd, 1, key, value, 0) // FSCONFIG_SET_STRING
            return rc < 0 ? Failure(description: contextError(fsfd) ?? "fsconfig \(key)=\(value)", errno: -rc) : nil
        }
        func cfgFlag(_ key: String) -> Failure? {
            let rc = cshim_fsconfig(fsfd, 0, key, nil, 0) // FSCONFIG_SET_FLAG
            return rc < 0 ? Failure(description: contextError(fsfd) ?? "fsconfig \(key)", errno: -rc) : nil
        }

        if let e = cfgString("source", r.source) { return .failure(e) }
        for t in r.options {
            if let eq = t.firstIndex(of: "=") {
                if let e = cfgString(String(t[..<eq]), String(t[t.index(after: eq)...])) { return .failure(e) }
            } else if let e = cfgFlag(t) { return .failure(e) }
        }
        for p in flagParams { if let e = cfgFlag(p) { return .failure(e) } }
        if let e = cfgString("subtype", r.subtype) { return .failure(e) }
        for t in r.helperOptions {
            let kv = t.split(separator: "=", maxSplits: 1).map(String.init)
            guard kv.count == 2 else { continue }
            if let e = cfgString(kv[0], kv[1]) { return .failure(e) }
        }
        let c = cshim_fsconfig(fsfd, 6, nil, nil, 0) // FSCONFIG_CMD_CREATE
        if c < 0 { return .failure(Failure(description: contextError(fsfd) ?? "creating the \(r.baseType) superblock", errno: -c)) }
        // From here a superblock exists. Letting go of a fuseblk one sends
        // DESTROY and waits for the server, which is itself waiting for this
        // helper's answer to DOIT: abort the connection before any fd on it
        // is closed (a plain fuse superblock sends nothing).
        let mfd = cshim_fsmount(fsfd, 1, attrs) // FSMOUNT_CLOEXEC
        if mfd < 0 {
            if let b = r.blockDevice { FuseBlock.abortConnection(dev: b.device) }
            return .failure(Failure(description: contextError(fsfd) ?? "fsmount", errno: -mfd))
        }
        let mv = cshim_move_mount(mfd, "", r.targetFD, "", 0x4 | 0x40) // F_EMPTY_PATH | T_EMPTY_PATH
        if mv < 0 {
            if let b = r.blockDevice { FuseBlock.abortConnection(dev: DeviceNumber.of(fd: mfd) ?? b.device) }
            FD.close(mfd)
            return .failure(Failure(description: "move_mount onto \(r.targetPath)", errno: -mv))
        }
        return .success(mfd)
    }

    /// The fs context's own error log ("e message"), if any.
    static func contextError(_ fsfd: Int32) -> String? {
        var buf = [UInt8](repeating: 0, count: 512)
        var last: String?
        for _ in 0..<8 {
            let n = buf.withUnsafeMutableBytes { p in read(fsfd, p.baseAddress, p.count) }
            if n <= 0 { break }
            let s = String(decoding: buf.prefix(n), as: UTF8.self)
            if s.hasPrefix("e ") { last = String(s.dropFirst(2)) } else if last == nil { last = s }
        }
        return last
    }

    // MARK: mount(2)

    /// For fuseblk this one call both creates and attaches the superblock: a
    /// failure inside it after the superblock was made would have the kernel
    /// wait for DESTROY from a server that waits for DOIT. Kernels with
    /// fuseblk and FUSE_DEV_IOC_* all have the new API, so this path is only
    /// taken on an fsconfig that refuses a parameter (ENOPARAM).
    static func legacy(_ r: Request) -> Outcome {
        let data = (r.options + r.helperOptions).joined(separator: ",")
        let target = "/proc/self/fd/\(r.targetFD)"
        let before = cshim_pin_mount_id(r.targetFD)
        let rc = Glibc.mount(r.source, target, r.fstype, UInt(r.msFlags), data)
        if rc != 0 { return .failure(Failure(description: "mount(2) \(r.fstype) on \(r.targetPath)", errno: errno)) }
        // Find our mount's root again without following symlinks; it must be a
        // FUSE mount stacked on the pinned mountpoint, else detach nothing.
        let root = cshim_pin_open_nosymlinks(AT_FDCWD, r.targetPath, cshim_broker_O_PATH())
        if root >= 0 && cshim_pin_fs_type(root) == fuseSuperMagic && cshim_pin_mount_id(root) != before {
            return .success(root)
        }
        if root >= 0 { FD.close(root) }
        return .success(-1)
    }
}

/// utab through libmount, so findmnt/umount see user-space options.
enum Utab {
    static func add(source: String, target: String, fstype: String, options: String, log: (String) -> Void) {
        guard let fs = mnt_new_fs() else { return }
        defer { mnt_unref_fs(fs) }
        _ = mnt_fs_set_source(fs, source)
        _ = mnt_fs_set_target(fs, target)
        _ = mnt_fs_set_fstype(fs, fstype)
        _ = mnt_fs_set_options(fs, options)
        guard let upd = mnt_new_update() else { return }
        defer { mnt_free_update(upd) }
        let rc = mnt_update_set_fs(upd, 0, nil, fs)
        if rc == 0 {
            let u = mnt_update_table(upd, nil)
            if u != 0 { log("could not update utab: \(strerrorString(-u))") }
        }
    }

    static func remove(target: String) {
        guard let upd = mnt_new_update() else { return }
        defer { mnt_free_update(upd) }
        if mnt_update_set_fs(upd, UInt(MNT_DETACH), target, nil) == 0 {
            _ = mnt_update_table(upd, nil)
        }
    }
}
