// ext4iomapd: thin entry point over the Ext4Server library.

import ArgumentParser
import Ext4Fuse
import Ext4Server
import Glibc
import Logging
import ServiceBroker

struct Ext4IomapD: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ext4iomapd",
        abstract: "Sandboxed ext4/ext3/ext2 file system server for FUSE.",
        discussion: """
            Normally started by fuservicemount (mount -t fuse.ext4) or by systemd
            (ext4iomap.socket). --device/--mountpoint mount directly, for development
            and tests (root only). See ext4iomapd(8).
            """)

    @Option(help: "Image file or block device to serve (standalone mode).")
    var device: String?

    @Option(help: "Directory to mount on (standalone mode).")
    var mountpoint: String?

    @Option(name: .short, help: "Comma-separated mount options (ro, norecovery, cache_blocks=N, iomap=0|1, ...).")
    var o: String = ""

    @Option(help: "Worker threads serving FUSE requests.")
    var workers: Int = 4

    @Flag(help: "Serve one mount on the socket systemd passed as fd 3.")
    var service = false

    @Option(help: "Serve one mount on this inherited socket fd (spawned by fuservicemount).")
    var serviceFd: Int32?

    @Flag(help: "Apply the service sandbox to this process, try forbidden actions, report each; exit 0 if all were denied.")
    var sandboxSelftest = false

    @Flag(help: "Log debug messages.")
    var debug = false

    func run() throws {
        var logger = Logger(label: "ext4iomapd")
        logger.logLevel = debug ? .debug : .info
        if sandboxSelftest {
            let results: [Lockdown.SelftestResult]
            do { results = try Lockdown.selftest(logger: logger) } catch { fail(2, "sandbox selftest: \(error)") }
            var ok = true
            for r in results {
                ok = ok && r.denied
                let line = Array("\(r.denied ? "ok  " : "FAIL") \(r.action): \(r.detail)\n".utf8)
                _ = line.withUnsafeBytes { Glibc.write(1, $0.baseAddress, $0.count) }
            }
            Glibc.exit(ok ? 0 : 1)
        }
        if service || serviceFd != nil {
            let endpoint: ServiceEndpoint
            do {
                if let fd = serviceFd {
                    endpoint = try ServiceEndpoint(inheritedFD: fd)
                } else if let e = try serviceEndpointFromEnvironment() {
                    endpoint = e
                } else {
                    fail(1, "--service: no socket from systemd (LISTEN_FDS) or fuservicemount")
                }
            } catch { fail(2, "service socket: \(error)") }
            // The spawn sandbox and the systemd unit drop every capability; a
            // service-mode server that still has some was started wrongly.
            do { try Lockdown.refuseCapabilities() } catch {
                endpoint.close()
                fail(1, error.message)
            }
            do { try runService(endpoint: endpoint, workers: workers, detachStderr: serviceFd != nil, logger: logger) } catch {
                fail(error.status, error.message)
            }
            return
        }
        guard let device, let mountpoint else {
            fail(1, "give --device and --mountpoint, or --service; see --help")
        }
        guard (1...64).contains(workers) else { fail(1, "--workers must be between 1 and 64") }
        let options: ServerOptions
        do { options = try ServerOptions.parse(o) } catch { fail(1, "\(error)") }
        do {
            try runStandalone(device: device, mountpoint: mountpoint, options: options, workers: workers, logger: logger)
        } catch {
            fail(error.status, error.message)
        }
    }

    func fail(_ status: Int32, _ message: String) -> Never {
        let line = Array("ext4iomapd: \(message)\n".utf8)
        _ = line.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
        Glibc.exit(status)
    }
}

// Before anything else, in every mode: not dumpable (no ptrace, pidfd_getfd or
// /proc/PID/mem for other processes of our uid, no core dumps) and SIGPIPE
// ignored (a spawned server's stderr is a pipe to fuservicemount, which may
// have exited).
do { try Lockdown.hardenProcess() } catch {
    let line = Array("ext4iomapd: \(error.message)\n".utf8)
    _ = line.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
    Glibc.exit(2)
}
// Pin the time zone so log timestamps do not re-check /etc/localtime on every
// line: after the lockdown the server cannot open or stat paths.
if getenv("TZ") == nil { setenv("TZ", ":/etc/localtime", 0) }
tzset()
// Under systemd (service mode with a journal) log to the journal; otherwise stderr.
LoggingSystem.bootstrap { label -> any LogHandler in
    journalLogging ? JournalLogHandler(label: label) : StreamLogHandler.standardError(label: label)
}
Ext4IomapD.main()
