#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import ServiceBroker

/// mount(8) exit codes.
enum Exit {
    static let usage: Int32 = 1 // incorrect invocation or permissions
    static let system: Int32 = 2 // system error
    static let mountFailure: Int32 = 32
}

struct FuServiceMount: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fuservicemount",
        abstract: "Mount an ext2/3/4 image or device through a sandboxed ext4iomap server.",
        discussion: """
        Forms:
          mount.fuse.ext4 SOURCE DIR [-sfnvr] [-N NS] [-o OPTS] [-t TYPE]   (mount(8) helper)
          fuservicemount SOURCE DIR -t fuse.ext4 [-o OPTS]
          fuservicemount -t fuse.ext4 --check
        Runs only as root and must not be installed setuid or setgid.
        Exit codes: 0 success, 1 incorrect invocation or permissions, 2 system error, 32 mount failure.
        """)

    @Argument(help: "Image file or block device.") var source: String?
    @Argument(help: "Mountpoint.") var directory: String?
    @Option(name: .customShort("t"), help: "File system type: fuse.ext4, fuse.ext3, fuse.ext2 (or fuseblk.*).")
    var type: String?
    @Option(name: .customShort("o"), help: "Mount options.") var options: String?
    @Option(name: .customShort("N"), help: "Mount namespace to mount in (pid or path).") var namespace: String?
    @Flag(name: .customShort("s"), help: "Sloppy: ignored.") var sloppy = false
    @Flag(name: .customShort("f"), help: "Fake: do everything but the mount system call.") var fake = false
    @Flag(name: .customShort("n"), help: "Do not write utab.") var noMtab = false
    @Flag(name: .customShort("v"), help: "Verbose.") var verbose = false
    @Flag(name: .customShort("r"), help: "Mount read-only.") var readOnly = false
    @Flag(help: "Exit 0 if a service socket for the type exists.") var check = false
    @Option(help: "Server executable for spawn mode.") var server: String?
    @Option(help: "Seconds to wait for each server message (and for the server to read each reply).")
    var timeout: Int = 60
    @Option(help: "Seconds the whole conversation with the server may take.")
    var sessionTimeout: Int = 300
}

func eprint(_ s: String) {
    let b = Array(s.utf8)
    _ = b.withUnsafeBytes { p in write(2, p.baseAddress, p.count) }
}

func fail(_ code: Int32, _ message: String) -> Never {
    eprint("fuservicemount: \(message)\n")
    exit(code)
}

/// fstype from argv[0] (mount.fuse.X / mount.fuseblk.X) or -t.
func subtype(argv0: String, type: String?) -> String? {
    let base = argv0.split(separator: "/").last.map(String.init) ?? argv0
    for p in ["mount.fuse.", "mount.fuseblk."] where base.hasPrefix(p) && base.count > p.count {
        if type == nil { return String(base.dropFirst(p.count)) }
    }
    guard let t = type else { return nil }
    for p in ["fuse.", "fuseblk."] where t.hasPrefix(p) { return String(t.dropFirst(p.count)) }
    return t
}

/// The command line's path with its own symbolic links resolved; a path that
/// does not resolve is made absolute against the working directory, so that
/// pinning it reports the real reason (no such file, say).
func absolute(_ path: String) -> String {
    if let r = realpath(path, nil) {
        defer { free(r) }
        return String(cString: r)
    }
    if path.hasPrefix("/") { return path }
    guard let cwd = getcwd(nil, 0) else { return path }
    defer { free(cwd) }
    return String(cString: cwd) + "/" + path
}

func enterNamespace(_ ns: String) {
    do { try ServerLauncher.enterMountNamespace(ns) } catch { fail(Exit.system, "\(error)") }
}

let args = CommandLine.arguments
let cmd: FuServiceMount
do {
    cmd = try FuServiceMount.parse(Array(args.dropFirst()))
} catch {
    if FuServiceMount.exitCode(for: error) == .success {
        print(FuServiceMount.fullMessage(for: error))
        exit(0)
    }
    fail(Exit.usage, FuServiceMount.message(for: error))
}

// Refuse a setuid/setgid install and non-root callers.
var selfStat = stat()
if stat("/proc/self/exe", &selfStat) == 0 && (selfStat.st_mode & (S_ISUID | S_ISGID)) != 0 {
    fail(Exit.usage, "refusing to run from a setuid or setgid binary; install it mode 0755")
}
if getuid() != 0 || geteuid() != 0 {
    fail(Exit.usage, "only root can mount with fuservicemount")
}

guard let sub = subtype(argv0: args.first ?? "", type: cmd.type) else {
    fail(Exit.usage, "no file system type: use -t fuse.ext4 or install as mount.fuse.ext4")
}
do {
    _ = try ServerLauncher.socketPath(subtype: sub)
} catch {
    fail(Exit.usage, "\(error)")
}

if cmd.check {
    if cmd.source != nil || cmd.directory != nil { fail(Exit.usage, "--check takes only -t TYPE") }
    exit(ServerLauncher.serviceSocketPresent(subtype: sub) ? 0 : 1)
}

guard let src = cmd.source, let dir = cmd.directory else {
    fail(Exit.usage, "usage: fuservicemount SOURCE DIR -t fuse.ext4 [-o OPTS]")
}
if let ns = cmd.namespace { enterNamespace(ns) }

let source = absolute(src)
let mountpoint = absolute(dir)
var opts = cmd.options ?? ""
if Remount.requested(opts) {
    // mount -o remount[,ro|rw] DIR: no server, no source; only ro/rw change.
    if cmd.readOnly && !MountOptions.tokens(opts).contains("ro") { opts += ",ro" }
    if cmd.fake { exit(0) }
    do {
        let did = try Remount.run(mountpoint: mountpoint, subtype: sub, options: opts)
        if cmd.verbose { eprint("fuservicemount: \(did)\n") }
        exit(0)
    } catch {
        fail(Exit.mountFailure, "cannot remount \(mountpoint): \(error)")
    }
}
if cmd.readOnly && !MountOptions.tokens(opts).contains("ro") { opts = opts.isEmpty ? "ro" : opts + ",ro" }
// A source an ext4iomap mount already serves: one more mount point of that
// file system, as the kernel gives a block device mounted twice.
if let existing = SharedMount.existing(source: source, subtype: sub) {
    if cmd.fake { exit(0) }
    do {
        try SharedMount.bind(existing, at: mountpoint, options: opts)
        if cmd.verbose { eprint("fuservicemount: \(source) is already mounted at \(existing.mountpoint); mounted it at \(mountpoint) too\n") }
        exit(0)
    } catch {
        fail(Exit.mountFailure, "cannot mount \(source) on \(mountpoint): \(error)")
    }
}
let config = HelperConfiguration(subtype: sub, source: source, mountpoint: mountpoint, options: opts,
                                 readOnly: cmd.readOnly, noMtab: cmd.noMtab, fake: cmd.fake,
                                 receiveTimeoutMs: max(1, min(cmd.timeout, 3600)) * 1000,
                                 sessionTimeoutMs: max(1, min(cmd.sessionTimeout, 86_400)) * 1000)
// Pin the source, the files named by file options and the mountpoint by inode
// before any server is started or contacted: a FIFO, a character device or a
// busy block device is refused here, before anything blocks or reads, and a
// path swapped later cannot redirect the helper. mount(8) reports these as
// mount failures (32).
let pinned: PinnedResources
do {
    pinned = try PinnedResources(config)
} catch {
    fail(Exit.mountFailure, "cannot mount \(src) on \(dir): \(error)")
}
let verbose = cmd.verbose
let log: (String) -> Void = { msg in if verbose { eprint("fuservicemount: \(msg)\n") } }

// Service socket first, then spawn mode.
var socketFD: Int32
var child: pid_t?
do {
    if cmd.server == nil, let fd = try ServerLauncher.connectService(subtype: sub) {
        socketFD = fd
        log("connected to \(ServerLauncher.defaultSocketDirectory)/\(sub)")
    } else {
        guard let path = ServerLauncher.resolveServer(explicit: cmd.server) else {
            fail(Exit.system, "no server: nothing listens at \(ServerLauncher.defaultSocketDirectory)/\(sub) and no ext4iomapd was found (looked in \(ServerLauncher.candidateServerPaths().joined(separator: ", ")))")
        }
        let s = try ServerLauncher.spawn(serverPath: path)
        socketFD = s.socket
        child = s.pid
        log("started \(path) as pid \(s.pid)")
    }
} catch {
    fail(Exit.system, "cannot reach a server: \(error)")
}

let session = HelperSession(socket: socketFD, config: config, pinned: pinned, log: log)
if let pid = child {
    // Spawn mode: once the server has answered HELLO, its namespace's root
    // becomes an empty tmpfs (it pins no mount of ours), before any file is sent.
    session.afterHello = { () throws(BrokerError) in try ServerLauncher.emptyRoot(of: pid) }
}
do {
    let outcome = try session.run()
    close(socketFD)
    switch outcome {
    case .goodbye(let code, let mounted):
        if code != 0 {
            let why = session.lastFailure.map { ": \($0)" } ?? ""
            if let pid = child {
                ServerLauncher.reap(pid, timeoutMs: 5000)
                // A spawned server's stderr is relayed to ours (sanitised), and the
                // reap drained it, so its one-line reason is already printed; a
                // second line would only repeat it.
                if session.lastFailure == nil { exit(Exit.mountFailure) }
                fail(Exit.mountFailure, "server failed to mount \(src) on \(dir)\(why)")
            }
            fail(Exit.mountFailure, "server failed to mount \(src) on \(dir) (status \(code))\(why); its reason is in its log (journalctl -u 'ext4iomap@*')")
        }
        if !mounted && !cmd.fake {
            fail(Exit.mountFailure, "server said goodbye without mounting \(src) on \(dir)")
        }
        exit(0)
    }
} catch {
    close(socketFD)
    var detail = session.lastFailure.map { " (\($0))" } ?? ""
    if let pid = child {
        // Give an exiting server a moment, so its status can be reported.
        if let st = ServerLauncher.reap(pid, timeoutMs: 1000) { detail += " (server exit status \(st))" }
    }
    switch error {
    case .system:
        fail(Exit.system, "mounting \(src) on \(dir): \(error)\(detail)")
    default:
        fail(Exit.mountFailure, "mounting \(src) on \(dir) failed: \(error)\(detail)")
    }
}
