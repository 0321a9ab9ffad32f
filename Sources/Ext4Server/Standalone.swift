// Standalone mode (development and tests): the server opens the image, mounts
// /dev/fuse itself and serves until unmounted. Root only. The product path goes
// through fuservicemount and the service protocol instead.

import Ext4Engine
import FuseKernel
import Ext4Fuse
import Glibc
import Logging
import LoopDevices

public struct ServerFailure: Error, CustomStringConvertible {
    /// Process exit status: 1 usage or permissions, 2 open or mount failure.
    public let status: Int32
    public let message: String
    public init(_ status: Int32, _ message: String) { self.status = status; self.message = message }
    public var description: String { message }
}

/// Opens the engine on an already-open device fd, applying the server's option policy.
/// This host's name, for the multi-mount protection block; read before the
/// sandbox, which allows no uname. Empty when it cannot be had.
public func hostName() -> String {
    var buf = [CChar](repeating: 0, count: 256)
    guard gethostname(&buf, buf.count - 1) == 0 else { return "" }
    return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

public func openFileSystem(deviceFD: Int32, name: String, options: ServerOptions, logger: Logger,
                           nodeName: String = "") throws(ServerFailure) -> Ext4FileSystem {
    let dev: FileBlockDevice
    do { dev = try FileBlockDevice(fd: deviceFD, closeOnDeinit: true) } catch {
        throw ServerFailure(2, "\(name): cannot use the device: \(error)")
    }
    let opts = MountOptions(readOnly: options.readOnly, noRecovery: options.noRecovery, cacheBlocks: options.cacheBlocks,
                            commitInterval: Double(options.commitSeconds), nodeName: nodeName, deviceName: name)
    do {
        let fs = try Ext4FileSystem.open(device: dev, options: opts)
        for w in fs.warnings { logger.warning("\(name): \(w)") }
        return fs
    } catch {
        throw ServerFailure(2, "\(name): \(describe(error))")
    }
}

/// A one-line, human-readable reason for an engine error.
public func describe(_ e: Ext4Error) -> String {
    switch e {
    case .corrupted(let s): return "file system is corrupted: \(s)"
    case .unsupported(let s): return "unsupported: \(s)"
    case .inUse(let s): return s
    case .invalid(let s): return "not a valid ext2/3/4 file system: \(s)"
    case .io(let n): return "I/O error: \(String(cString: strerror(n)))"
    default: return String(cString: strerror(e.errno))
    }
}

/// MS_* flags for the kernel mount from our options.
func mountFlags(_ o: ServerOptions) -> UInt {
    var f: UInt = 0
    if o.readOnly { f |= UInt(MS_RDONLY) }
    if !o.allowSuid { f |= UInt(MS_NOSUID) }
    if !o.allowDev { f |= UInt(MS_NODEV) }
    for k in o.kernelOptions {
        switch k {
        case "noexec": f |= UInt(MS_NOEXEC)
        case "noatime": f |= UInt(MS_NOATIME)
        case "nodiratime": f |= UInt(MS_NODIRATIME)
        case "relatime": f |= UInt(MS_RELATIME)
        case "strictatime": f |= UInt(MS_STRICTATIME)
        case "sync": f |= UInt(MS_SYNCHRONOUS)
        case "dirsync": f |= UInt(MS_DIRSYNC)
        case "lazytime": f |= UInt(1 << 25)  // MS_LAZYTIME
        default: break
        }
    }
    return f
}

/// Rings for FUSE over io_uring, made while io_uring_setup is still allowed
/// (the sandbox forbids it). nil with `uring=0` or when io_uring is unavailable.
/// What deciding on FUSE over io_uring needs from /sys, read while /sys is
/// still reachable: a spawned server's root is emptied right after HELLO.
struct UringProbe {
    /// The fuse module's enable_uring is visibly off.
    var moduleDisabled: Bool
    /// Possible CPUs: the kernel makes one request queue per possible CPU.
    var possibleCPUs: Int

    static func current() -> UringProbe {
        let v = readSysfsValue("/sys/module/fuse/parameters/enable_uring")
        return UringProbe(moduleDisabled: v.map { $0.hasPrefix("N") || $0.hasPrefix("0") } ?? false,
                          possibleCPUs: FuseUringRings.possibleCPUs())
    }
}

func makeUringRings(_ options: ServerOptions, workers: Int, logger: Logger, probe: UringProbe = .current()) -> FuseUringRings? {
    guard options.uring else { return nil }
    // The kernel offers FUSE over io_uring only with the fuse module's
    // enable_uring on; when it is visibly off, make no rings and no threads.
    if probe.moduleDisabled {
        logger.debug("FUSE over io_uring: the fuse module's enable_uring is off")
        return nil
    }
    let perQueue = max(1, workers / probe.possibleCPUs)
    switch FuseUringRings.create(threadsPerQueue: perQueue, queues: probe.possibleCPUs) {
    case .success(let r): return r
    case .failure(let e):
        logger.info("FUSE over io_uring unavailable (\(e)); serving through /dev/fuse")
        return nil
    }
}

public func runStandalone(device: String, mountpoint: String, options: ServerOptions, workers: Int,
                          logger: Logger) throws(ServerFailure) {
    guard geteuid() == 0 else {
        throw ServerFailure(1, "standalone mode mounts directly and must run as root; use mount -t fuse.ext4 (fuservicemount) instead")
    }
    let devFD = Glibc.open(device, (options.readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC)
    guard devFD >= 0 else { throw ServerFailure(2, "\(device): \(String(cString: strerror(errno)))") }
    let fs = try openFileSystem(deviceFD: devFD, name: device, options: options, logger: logger, nodeName: hostName())
    let rings = makeUringRings(options, workers: workers, logger: logger)
    var st = stat()
    guard stat(mountpoint, &st) == 0, st.st_mode & S_IFMT == S_IFDIR else {
        throw ServerFailure(2, "\(mountpoint): not a directory")
    }
    let fuseFD = Glibc.open("/dev/fuse", O_RDWR | O_CLOEXEC)
    guard fuseFD >= 0 else { throw ServerFailure(2, "/dev/fuse: \(String(cString: strerror(errno)))") }
    do { try iomapPreflight(fuseFD: fuseFD, deviceFD: devFD, name: device, options: options) } catch {
        _ = Glibc.close(fuseFD)
        throw error
    }
    let transport = DevFuseTransport(fd: fuseFD, ownsFD: true)
    let data = "fd=\(fuseFD),rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other"
    guard Glibc.mount(device, mountpoint, "fuse.ext4", mountFlags(options), data) == 0 else {
        throw ServerFailure(2, "mount \(mountpoint): \(String(cString: strerror(errno)))")
    }
    do {
        let sandbox = try ServerSandbox(setting: options.seccomp, logger: logger)
        try sandbox.apply(.standalone)
        sandbox.finish()
    } catch {
        _ = umount2(mountpoint, Int32(MNT_DETACH))
        throw ServerFailure(2, "sandbox: \(error)")
    }
    logger.info("serving \(device) at \(mountpoint) (\(options.readOnly ? "read-only" : "read-write"), \(workers) workers)")
    let unmountOnSignal = SignalUnmounter(mountpoint: mountpoint)
    unmountOnSignal.start()
    let adapter = Ext4FuseFS(fs: fs, options: options, sourceName: deviceName(devFD), logger: logger)
    defer { adapter.destroy() }  // flush and mark clean however the session ended
    let session = FuseSession(transport: transport, fileSystem: adapter,
                              options: FuseSessionOptions(workers: workers, uring: rings), logger: logger)
    do { try session.run() } catch {
        _ = umount2(mountpoint, Int32(MNT_DETACH))
        throw ServerFailure(2, "\(error)")
    }
    transport.close()
}

/// SIGINT/SIGTERM detach the mount, which ends the session cleanly.
final class SignalUnmounter: @unchecked Sendable {
    let mountpoint: String
    init(mountpoint: String) { self.mountpoint = mountpoint }
    func start() {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        pthread_sigmask(SIG_BLOCK, &set, nil)  // inherited by the workers created later
        let box = Unmanaged.passRetained(self)
        var tid = pthread_t()
        let rc = pthread_create(&tid, nil, { arg in
            guard let arg else { return nil }
            let me = Unmanaged<SignalUnmounter>.fromOpaque(arg).takeRetainedValue()
            var set = sigset_t()
            sigemptyset(&set)
            sigaddset(&set, SIGINT)
            sigaddset(&set, SIGTERM)
            var sig: Int32 = 0
            if sigwait(&set, &sig) == 0 { _ = umount2(me.mountpoint, Int32(MNT_DETACH)) }
            return nil
        }, box.toOpaque())
        if rc == 0 { pthread_detach(tid) } else { box.release() }
    }
}
