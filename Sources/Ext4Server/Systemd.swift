// libsystemd where it is the real tool: socket activation (sd_listen_fds),
// readiness (sd_notify) and the journal (sd_journal_sendv).

import CSystemd
import Ext4Fuse
import Glibc
import Logging
import ServiceBroker

/// The service socket systemd passed us, if socket-activated: exactly one
/// SOCK_SEQPACKET unix socket at fd 3 (sd_listen_fds checks LISTEN_PID and
/// clears the variables). Falls back to EXT4IOMAP_SERVICE_FD (spawn mode).
public func serviceEndpointFromEnvironment() throws(ServerFailure) -> ServiceEndpoint? {
    let n = sd_listen_fds(1)
    if n < 0 { throw ServerFailure(2, "socket activation: \(String(cString: strerror(-n)))") }
    if n > 1 { throw ServerFailure(2, "socket activation passed \(n) fds, expected 1") }
    if n == 1 {
        let fd = SD_LISTEN_FDS_START
        guard sd_is_socket_unix(fd, Int32(SOCK_SEQPACKET.rawValue), -1, nil, 0) > 0 else {
            throw ServerFailure(2, "socket-activated fd \(fd) is not a SOCK_SEQPACKET unix socket")
        }
        do { return try ServiceEndpoint(inheritedFD: fd) } catch { throw ServerFailure(2, "service socket: \(error)") }
    }
    do { return try ServiceEndpoint.fromSocketActivation() } catch { throw ServerFailure(2, "service socket: \(error)") }
}

/// Tell systemd (if it started us) that we are serving, or what we are doing.
public func notifySystemd(_ state: String) {
    _ = sd_notify(0, state)
}

/// Whether this process logs to the journal: service mode under systemd.
/// Decided once; the seccomp filter keeps the journal socket usable when true.
public let journalLogging: Bool = CommandLine.arguments.contains("--service") && JournalLogHandler.available

/// Open libsystemd's journal socket now, before the lockdown forbids creating
/// sockets: it is cached and reused for every later entry. Sends one debug entry.
public func primeJournal(_ message: String) {
    guard journalLogging else { return }
    JournalLogHandler(label: "ext4iomapd").log(event: LogEvent(level: .debug, message: "\(message)", metadata: nil,
                                                             source: "Ext4Server", file: #fileID, function: #function, line: #line))
}

/// A swift-log handler that writes structured entries to the systemd journal.
public struct JournalLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    let label: String

    public init(label: String) { self.label = label }

    /// True when the journal socket exists (the server runs under systemd).
    public static var available: Bool { access("/run/systemd/journal/socket", W_OK) == 0 }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let priority: Int
        switch event.level {
        case .trace, .debug: priority = 7
        case .info: priority = 6
        case .notice: priority = 5
        case .warning: priority = 4
        case .error: priority = 3
        case .critical: priority = 2
        }
        let fields = ["MESSAGE=\(event.message)", "PRIORITY=\(priority)", "SYSLOG_IDENTIFIER=ext4iomapd",
                      "EXT4IOMAP_SOURCE=\(event.source)", "CODE_FILE=\(event.file)", "CODE_LINE=\(event.line)",
                      "CODE_FUNC=\(event.function)"]
        var cstrs = fields.map { Array($0.utf8) }
        var iov = [iovec]()
        iov.reserveCapacity(cstrs.count)
        for i in cstrs.indices {
            cstrs[i].withUnsafeMutableBytes { iov.append(iovec(iov_base: $0.baseAddress, iov_len: $0.count)) }
        }
        // The buffers above stay alive until after the call.
        withExtendedLifetime(cstrs) { _ = sd_journal_sendv(iov, Int32(iov.count)) }
    }
}
