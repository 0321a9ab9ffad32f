#if canImport(Glibc)
import Glibc
#endif
import CShim
import Synchronization

/// Copies what a spawned server writes to its stderr (a pipe) to the helper's
/// own stderr, so its one-line reason for a refused mount reaches the admin
/// without the server ever holding the admin's terminal. Line by line, each
/// line sanitised (`sanitize`): no control characters but tab, no escape
/// sequences, at most `maxLineBytes`; at most `maxTotalBytes` in all, after
/// which the rest is read and dropped (so the server never blocks on a full
/// pipe). One thread per relay; it ends at end of file (the server exited or
/// pointed its stderr elsewhere) or at the deadline `finish` sets.
final class StderrRelay: Sendable {
    static let maxLineBytes = 1024
    static let maxTotalBytes = 64 * 1024
    /// A line longer than this without a newline is cut and the rest of it dropped.
    static let maxRawLine = 4096

    private let source: Int32
    private let output: Int32
    private let wake: (read: Int32, write: Int32)
    private let state = Mutex<State>(State())

    private struct State {
        /// CLOCK_MONOTONIC nanoseconds after which the thread stops reading.
        var deadline: UInt64?
        var thread: pthread_t?
        /// Joined (fds closed) or abandoned after a join timed out.
        var done = false
    }

    private init(source: Int32, output: Int32, wake: (Int32, Int32)) {
        self.source = source
        self.output = output
        self.wake = wake
    }

    /// Start relaying `source` (taken over) to `output`.
    static func start(reading source: Int32, to output: Int32 = 2) throws(BrokerError) -> StderrRelay {
        var p: [Int32] = [-1, -1]
        let pr = cshim_broker_pipe2(&p, O_CLOEXEC | O_NONBLOCK)
        if pr != 0 {
            let e = -pr
            FD.close(source)
            throw .system(operation: "pipe2", errno: e)
        }
        let relay = StderrRelay(source: source, output: output, wake: (p[0], p[1]))
        let box = Unmanaged.passRetained(relay)
        var tid = pthread_t()
        let rc = pthread_create(&tid, nil, { arg in
            guard let arg else { return nil }
            let r = Unmanaged<StderrRelay>.fromOpaque(arg).takeRetainedValue()
            cshim_set_thread_name("stderr-relay")
            // Signals are the main thread's business; a SIGPIPE from writing to
            // a stderr whose reader left stays pending here, and write() gives EPIPE.
            var all = sigset_t()
            sigfillset(&all)
            pthread_sigmask(SIG_BLOCK, &all, nil)
            r.run()
            return nil
        }, box.toOpaque())
        if rc != 0 {
            box.release()
            relay.closeFDs()
            throw .system(operation: "starting the server's stderr relay", errno: rc)
        }
        relay.state.withLock { $0.thread = tid }
        return relay
    }

    /// Let the thread read until end of file, for at most `timeoutMs`, then
    /// stop it and close the pipe. Idempotent.
    func finish(timeoutMs: Int) {
        let thread: pthread_t? = state.withLock { s in
            if s.done { return nil }
            s.done = true
            s.deadline = monotonicNanoseconds() + UInt64(max(0, timeoutMs)) * 1_000_000
            return s.thread
        }
        guard let thread else { return }
        var one: UInt8 = 1
        while Glibc.write(wake.write, &one, 1) < 0 && errno == EINTR {}
        // The thread notices the deadline at once; the extra second covers a
        // write to our stderr that blocks (a paused terminal). Past that the
        // thread is left to the process's exit, with its fds.
        if cshim_broker_timedjoin(thread, Int32(clamping: timeoutMs + 1000)) == 0 { closeFDs() }
    }

    private func closeFDs() {
        FD.close(source)
        FD.close(wake.read)
        FD.close(wake.write)
    }

    // MARK: the thread

    private func run() {
        var line: [UInt8] = []
        var dropping = false  // the current line was cut; skip to its newline
        var sink = Sink(output: output)
        var buf = [UInt8](repeating: 0, count: 4096)
        loop: while true {
            var timeout: Int32 = -1
            if let d = state.withLock({ $0.deadline }) {
                let t = monotonicNanoseconds()
                if t >= d { break loop }
                timeout = Int32(clamping: (d - t + 999_999) / 1_000_000)
            }
            var fds = [pollfd(fd: source, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: wake.read, events: Int16(POLLIN), revents: 0)]
            let r = poll(&fds, 2, timeout)
            if r < 0 {
                if errno == EINTR { continue }
                break
            }
            if fds[1].revents != 0 {
                var junk = [UInt8](repeating: 0, count: 16)
                _ = Glibc.read(wake.read, &junk, junk.count)
            }
            guard fds[0].revents != 0 else { continue }
            let n = buf.withUnsafeMutableBytes { Glibc.read(source, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                break
            }
            if n == 0 { break }  // end of file
            for b in buf[0..<n] {
                if b == 0x0A {
                    if !dropping { sink.emit(line, cut: false) }
                    line.removeAll(keepingCapacity: true)
                    dropping = false
                } else if !dropping {
                    line.append(b)
                    if line.count >= Self.maxRawLine {
                        sink.emit(line, cut: true)
                        line.removeAll(keepingCapacity: true)
                        dropping = true
                    }
                }
            }
        }
        if !line.isEmpty && !dropping { sink.emit(line, cut: false) }
    }

    /// Writes sanitised lines to the output, up to the total cap.
    private struct Sink {
        let output: Int32
        var written = 0
        var suppressed = false

        mutating func emit(_ raw: [UInt8], cut: Bool) {
            guard !suppressed else { return }
            var out = StderrRelay.sanitize(raw, maxBytes: StderrRelay.maxLineBytes, cut: cut)
            out.append(0x0A)
            if written + out.count > StderrRelay.maxTotalBytes {
                suppressed = true
                out = Array("fuservicemount: the server wrote more than \(StderrRelay.maxTotalBytes / 1024) KiB to stderr; the rest is dropped\n".utf8)
            }
            written += out.count
            var off = 0
            while off < out.count {
                let w = out.withUnsafeBytes { p -> Int in
                    guard let base = p.baseAddress else { return 0 }
                    return Glibc.write(output, base + off, p.count - off)
                }
                if w == 0 { return }
                if w < 0 {
                    if errno == EINTR { continue }
                    return  // our stderr is gone or unusable: drop
                }
                off += w
            }
        }
    }

    // MARK: sanitising

    /// One line of untrusted text made safe for a terminal: decoded as UTF-8
    /// (invalid bytes become U+FFFD); escape sequences removed whole (ESC and
    /// C1 CSI: parameters and final byte; OSC, DCS, SOS, PM, APC: up to BEL or
    /// ST); every other `isTerminalControl` character but tab removed; cut to `maxBytes` of UTF-8 on a
    /// character boundary, with " [truncated]" when anything was cut.
    static func sanitize(_ line: [UInt8], maxBytes: Int, cut: Bool = false) -> [UInt8] {
        enum Mode { case text, escape, csi, string }
        var mode = Mode.text
        var out: [UInt8] = []
        out.reserveCapacity(min(line.count, maxBytes) + 16)
        var truncated = cut
        var encoded: [UInt8] = []
        for scalar in String(decoding: line, as: UTF8.self).unicodeScalars {
            let v = scalar.value
            switch mode {
            case .escape:
                switch v {
                case 0x5B: mode = .csi                                  // ESC [
                case 0x5D, 0x50, 0x58, 0x5E, 0x5F: mode = .string       // ESC ] P X ^ _
                case 0x20...0x2F: break                                 // intermediate bytes
                default: mode = .text                                   // final byte
                }
                continue
            case .csi:
                if (0x20...0x3F).contains(v) { continue }               // parameters, intermediates
                mode = .text
                if (0x40...0x7E).contains(v) { continue }               // final byte
            case .string:
                if v == 0x07 || v == 0x9C { mode = .text } else if v == 0x1B { mode = .escape }
                continue
            case .text:
                break
            }
            switch v {
            case 0x1B: mode = .escape; continue
            case 0x9B: mode = .csi; continue
            case 0x90, 0x98, 0x9D, 0x9E, 0x9F: mode = .string; continue
            case 0x09: break
            case _ where isTerminalControl(v): continue
            default: break
            }
            encoded.removeAll(keepingCapacity: true)
            UTF8.encode(scalar) { encoded.append($0) }
            if out.count + encoded.count > maxBytes {
                truncated = true
                break
            }
            out += encoded
        }
        if truncated { out += Array(" [truncated]".utf8) }
        return out
    }
}

/// Characters a server's text must never carry to the admin's terminal as
/// themselves: C0 controls, DEL, C1 controls, the line and paragraph
/// separators, and the bidirectional embedding, override, isolate and mark
/// characters (which reorder what the admin sees). The stderr relay drops
/// them (keeping tab); the helper's own messages show them escaped.
func isTerminalControl(_ v: UInt32) -> Bool {
    switch v {
    case 0x00...0x1F, 0x7F...0x9F, 0x061C, 0x200E, 0x200F, 0x2028, 0x2029, 0x202A...0x202E, 0x2066...0x2069:
        return true
    default:
        return false
    }
}

/// The relays of this process's spawned servers, by pid.
final class StderrRelays: Sendable {
    private let relays = Mutex<(byPID: [pid_t: StderrRelay], atexitInstalled: Bool)>(([:], false))

    static let shared = StderrRelays()

    func add(_ relay: StderrRelay, pid: pid_t) {
        let install = relays.withLock { r -> Bool in
            r.byPID[pid] = relay
            defer { r.atexitInstalled = true }
            return !r.atexitInstalled
        }
        // A helper that exits while its server still runs (a mount made:
        // the server closes its stderr right after the goodbye) first relays
        // what the server wrote until then.
        if install { atexit { StderrRelays.shared.finishAll(timeoutMs: 3000) } }
    }

    func finish(pid: pid_t, timeoutMs: Int) {
        let relay = relays.withLock { $0.byPID.removeValue(forKey: pid) }
        relay?.finish(timeoutMs: timeoutMs)
    }

    func finishAll(timeoutMs: Int) {
        let all = relays.withLock { r -> [StderrRelay] in
            defer { r.byPID.removeAll() }
            return Array(r.byPID.values)
        }
        for relay in all { relay.finish(timeoutMs: timeoutMs) }
    }
}
