// Service mode: the server was started by systemd (socket activation, fd 3) or
// spawned by fuservicemount over a socketpair. It asks the helper for the
// device and the mount, then serves /dev/fuse. The helper names the source and
// mountpoint; the server only decides options and answers the file system.

import Ext4Engine
import FuseKernel
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

public func runService(endpoint: ServiceEndpoint, workers: Int, logger: Logger) throws(ServerFailure) {
    func broker<T>(_ what: String, _ body: () throws(BrokerError) -> T) throws(ServerFailure) -> T {
        do { return try body() } catch { throw ServerFailure(2, "\(what): \(error)") }
    }
    _ = try broker("service hello") { () throws(BrokerError) in try endpoint.hello() }
    let args = try ForwardedArgs(try broker("receiving arguments") { () throws(BrokerError) in try endpoint.receiveArgs() })
    let fuseFD = try broker("receiving /dev/fuse") { () throws(BrokerError) in try endpoint.receiveFuseDevice() }
    let transport = DevFuseTransport(fd: fuseFD, ownsFD: true)
    let options: ServerOptions
    do { options = try ServerOptions.parse(args.options) } catch {
        _ = try? endpoint.goodbye(status: 1)
        throw ServerFailure(1, "\(error)")
    }
    do {
        try serveMount(endpoint, transport, args, options, workers: workers, logger: logger)
    } catch {
        // Tell the helper how it ended so mount(8) exits with the right status.
        _ = try? endpoint.goodbye(status: UInt32(error.status == 1 ? 1 : 32))
        endpoint.close()
        throw error
    }
}

private func serveMount(_ endpoint: ServiceEndpoint, _ transport: DevFuseTransport, _ args: ForwardedArgs,
                        _ options: ServerOptions, workers: Int, logger: Logger) throws(ServerFailure) {
    func broker<T>(_ what: String, _ body: () throws(BrokerError) -> T) throws(ServerFailure) -> T {
        do { return try body() } catch { throw ServerFailure(2, "\(what): \(error)") }
    }
    let flags = options.readOnly ? O_RDONLY : O_RDWR
    let devFD = try broker("opening \(args.source)") { () throws(BrokerError) in
        try endpoint.requestBlockDevice(path: args.source, flags: flags | O_CLOEXEC, loop: true,
                                        readOnly: options.readOnly, blockSize: 0)
    }
    try iomapPreflight(fuseFD: transport.fd, deviceFD: devFD, name: args.source, options: options)
    let fs = try openFileSystem(deviceFD: devFD, name: args.source, options: options, logger: logger)
    endpoint.finishFileRequests()
    let mtab = options.readOnly ? "ro" : "rw"
    try broker("mounting \(args.mountpoint)") { () throws(BrokerError) in
        try endpoint.mount(fstype: "fuse." + args.subtype, source: args.source, mountpoint: args.mountpoint,
                           options: "default_permissions,allow_other", mtabOptions: mtab,
                           flags: UInt32(truncatingIfNeeded: mountFlags(options)))
    }
    try broker("saying goodbye") { () throws(BrokerError) in try endpoint.goodbye(status: 0) }
    endpoint.close()
    logger.info("serving \(args.source) at \(args.mountpoint) (read-only, \(workers) workers)")
    notifySystemd("READY=1\nSTATUS=serving \(args.source) at \(args.mountpoint)")
    let session = FuseSession(transport: transport, fileSystem: Ext4FuseFS(fs: fs, options: options, logger: logger),
                              options: FuseSessionOptions(workers: workers), logger: logger)
    do { try session.run() } catch { throw ServerFailure(2, "\(error)") }
    transport.close()
}
