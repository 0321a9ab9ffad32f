// Service mode: the server was started by systemd (socket activation, fd 3) or
// spawned by fuservicemount over a socketpair. It asks the helper for the
// device and the mount, then serves /dev/fuse. The helper names the source and
// mountpoint; the server only decides options and answers the file system.

import Ext4Engine
import FuseKernel
import Ext4Fuse
import Glibc
import Logging
import ServiceBroker

/// Arguments the helper forwards in the argv memfd: [subtype, source, mountpoint, "-o", opts...].
struct ForwardedArgs {
    var subtype: String
    var source: String
    var mountpoint: String
    var options: String

    init(_ args: [String]) throws(ServerFailure) {
        guard args.count >= 3 else { throw ServerFailure(1, "helper sent \(args.count) arguments, expected at least 3") }
        subtype = args[0]
        source = args[1]
        mountpoint = args[2]
        var opts: [String] = []
        var i = 3
        while i < args.count {
            if args[i] == "-o", i + 1 < args.count {
                opts.append(args[i + 1])
                i += 2
            } else if args[i].hasPrefix("-o"), args[i].count > 2 {
                opts.append(String(args[i].dropFirst(2)))
                i += 1
            } else {
                i += 1  // flags such as -s/-f/-n/-v are the helper's business
            }
        }
        options = opts.filter { !$0.isEmpty }.joined(separator: ",")
    }
}

/// `detachStderr`: spawn mode, where stderr is a pipe the helper relays to its
/// own stderr (so a refusal reaches the admin). Once mounted, stderr becomes
/// /dev/null, which closes the pipe: the helper stops relaying and exits.
public func runService(endpoint: ServiceEndpoint, workers: Int, detachStderr: Bool = false,
                       logger: Logger) throws(ServerFailure) {
    // Everything the server opens by path is opened here, before HELLO: in
    // spawn mode fuservicemount replaces the server's root with an empty
    // directory as soon as the server has answered HELLO (and the lockdown
    // forbids opening paths later anyway). That is stderr's replacement,
    // /proc/self/status (the lockdown proves itself with it) and what /sys
    // says about FUSE over io_uring.
    var devNull = detachStderr ? Glibc.open("/dev/null", O_WRONLY | O_CLOEXEC) : -1
    var statusFD: Int32
    do { statusFD = try Lockdown.openStatusEarly() } catch {
        if devNull >= 0 { _ = Glibc.close(devNull) }
        throw ServerFailure(2, "\(error)")
    }
    defer {
        if devNull >= 0 { _ = Glibc.close(devNull) }
        if statusFD >= 0 { _ = Glibc.close(statusFD) }
    }
    let uring = UringProbe.current()
    // /proc/self/fd, to name the device once it arrives (the adapter's s_id).
    var procFDs = Glibc.open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    defer { if procFDs >= 0 { _ = Glibc.close(procFDs) } }
    // Before any lockdown: libsystemd opens its sockets now (the journal's stays
    // open; sd_notify needs a fresh one, so readiness is announced here, when the
    // server is ready for the mount conversation).
    primeJournal("service connection accepted; waiting for the mount request")
    notifySystemd("READY=1\nSTATUS=mount handshake")
    func broker<T>(_ what: String, _ body: () throws(BrokerError) -> T) throws(ServerFailure) -> T {
        do { return try body() } catch { throw ServerFailure(2, "\(what): \(error)") }
    }
    _ = try broker("service hello") { () throws(BrokerError) in try endpoint.hello() }
    let args = try ForwardedArgs(try broker("receiving arguments") { () throws(BrokerError) in try endpoint.receiveArgs() })
    let fuseFD = try broker("receiving /dev/fuse") { () throws(BrokerError) in try endpoint.receiveFuseDevice() }
    // The helper is trusted to pass the kernel's channel; a test helper may pass
    // a socket whose peer plays the kernel (same dispatch, same sandbox).
    let fuseIsSocket = ServiceEndpoint.isSeqpacketUnix(fuseFD)
    let transport: any FuseFDTransport & FuseTransport = fuseIsSocket
        ? SocketTransport(fd: fuseFD, ownsFD: true) : DevFuseTransport(fd: fuseFD, ownsFD: true)
    let options: ServerOptions
    do { options = try ServerOptions.parse(args.options) } catch {
        _ = try? endpoint.goodbye(status: 1)
        throw ServerFailure(1, "\(error)")
    }
    do throws(ServerFailure) {
        let sandbox = ServerSandbox(setting: options.seccomp, logger: logger, statusFD: statusFD)
        statusFD = -1
        try serveMount(endpoint, transport, args, devNull: &devNull, options, sandbox, uring: uring,
                       procFDs: &procFDs, workers: workers, logger: logger)
    } catch {
        // Tell the helper how it ended so mount(8) exits with the right status.
        _ = try? endpoint.goodbye(status: UInt32(error.status == 1 ? 1 : 32))
        endpoint.close()
        throw error
    }
}

/// `devNull`: closed (and set to -1) once it has replaced stderr.
private func serveMount(_ endpoint: ServiceEndpoint, _ transport: any FuseFDTransport & FuseTransport, _ args: ForwardedArgs,
                        devNull: inout Int32, _ options: ServerOptions, _ sandbox: ServerSandbox, uring: UringProbe,
                        procFDs: inout Int32, workers: Int, logger: Logger) throws(ServerFailure) {
    func broker<T>(_ what: String, _ body: () throws(BrokerError) -> T) throws(ServerFailure) -> T {
        do { return try body() } catch { throw ServerFailure(2, "\(what): \(error)") }
    }
    let devFD = try openSource(endpoint, args.source, options, logger: logger)
    // A socket peer playing the kernel answers iomap at INIT; /dev/fuse is asked now.
    if !(transport is SocketTransport) {
        try iomapPreflight(fuseFD: transport.fd, deviceFD: devFD, name: args.source, options: options)
    }
    let rings = transport is SocketTransport ? nil : makeUringRings(options, workers: workers, logger: logger, probe: uring)
    // Facts about the environment reach the adapter as values: the device's
    // name is read now, through /proc/self/fd opened before HELLO.
    let sourceName = deviceName(devFD, procFDs: procFDs)
    if procFDs >= 0 { _ = Glibc.close(procFDs); procFDs = -1 }
    let host = hostName()
    // Lock down before the engine parses anything from the device.
    do { try sandbox.apply(.setup) } catch { throw ServerFailure(2, "sandbox: \(error)") }
    let fs = try openFileSystem(deviceFD: devFD, name: args.source, options: options, logger: logger, nodeName: host)
    endpoint.finishFileRequests()
    let mtab = options.readOnly ? "ro" : "rw"
    try broker("mounting \(args.mountpoint)") { () throws(BrokerError) in
        try endpoint.mount(fstype: "fuse." + args.subtype, source: args.source, mountpoint: args.mountpoint,
                           options: "default_permissions,allow_other", mtabOptions: mtab,
                           flags: UInt32(truncatingIfNeeded: mountFlags(options)))
    }
    try broker("saying goodbye") { () throws(BrokerError) in try endpoint.goodbye(status: 0) }
    endpoint.close()
    do { try sandbox.apply(.serving) } catch { throw ServerFailure(2, "sandbox: \(error)") }
    sandbox.finish()
    logger.info("serving \(args.source) at \(args.mountpoint) (\(options.readOnly ? "read-only" : "read-write"), \(workers) workers)")
    if devNull >= 0 {
        while dup2(devNull, 2) < 0 && errno == EINTR {}
        _ = Glibc.close(devNull)
        devNull = -1
    }
    let adapter = Ext4FuseFS(fs: fs, options: options, sourceName: sourceName, logger: logger)
    defer { adapter.destroy() }  // flush and mark clean however the session ended
    let session = FuseSession(transport: transport, fileSystem: adapter,
                              options: FuseSessionOptions(workers: workers, uring: rings), logger: logger)
    do { try session.run() } catch { throw ServerFailure(2, "\(error)") }
    transport.close()
}

/// Why the server asks the helper to OPEN the source rather than for a block
/// device, or nil to keep to BDEV (and fail on its error). A version-1 helper
/// (libfuse's fuservicemount3) makes no loop devices: BDEV on an image file
/// only gets ENOTBLK there, so it is asked to OPEN the source from the start. A
/// version-2 helper answers ENOTBLK when it could make no loop device.
func sourceOpenFallback(version: UInt16, blockDeviceRefusal: BrokerError?) -> String? {
    if version < 2 { return "the helper speaks service protocol version \(version) (no loop devices)" }
    if case .refused(_, let e)? = blockDeviceRefusal, e == ENOTBLK {
        return "the helper could not give it as a block device (ENOTBLK)"
    }
    return nil
}

/// The source's fd, with the mount's access mode: a block device (a loop over
/// an image file from a version-2 helper), or else whatever OPEN gives, which
/// for an image file is served on the classic path (iomap needs a block device).
private func openSource(_ endpoint: ServiceEndpoint, _ source: String, _ options: ServerOptions,
                        logger: Logger) throws(ServerFailure) -> Int32 {
    let flags = (options.readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC
    var why = sourceOpenFallback(version: endpoint.version, blockDeviceRefusal: nil)
    if why == nil {
        do {
            return try endpoint.requestBlockDevice(path: source, flags: flags, loop: true,
                                                   readOnly: options.readOnly, blockSize: 0)
        } catch {
            why = sourceOpenFallback(version: endpoint.version, blockDeviceRefusal: error)
            if why == nil { throw ServerFailure(2, "opening \(source): \(error)") }
        }
    }
    let fd: Int32
    do { fd = try endpoint.requestFile(path: source, flags: flags) } catch {
        throw ServerFailure(2, "opening \(source): \(error)")
    }
    var st = stat()
    let isBlock = fstat(fd, &st) == 0 && st.st_mode & S_IFMT == S_IFBLK
    logger.info("\(source): \(why ?? "no block device"): opened with OPEN instead, serving \(isBlock ? "the block device" : "the image file on the classic FUSE path (no iomap)")")
    return fd
}
