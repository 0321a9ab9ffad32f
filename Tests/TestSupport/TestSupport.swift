// Helpers every test target uses: running e2fsprogs and other tools, scratch
// directories, deterministic data and random numbers, small file writes.

import Foundation
import Glibc
import LoopDevices

public struct CommandFailed: Error, CustomStringConvertible {
    public let description: String
    public init(description: String) { self.description = description }
}

/// Run `exe` with `args` (mke2fs/e2fsprogs configuration overrides removed from
/// the environment, sbin directories on PATH). Returns stdout followed by
/// stderr; throws with stderr on a non-zero exit unless `allowFail`.
@discardableResult
public func run(_ exe: String, _ args: [String], allowFail: Bool = false) throws -> String {
    let r = try execute(exe, args)
    if r.status != 0 && !allowFail {
        throw CommandFailed(description: "\(([exe] + args).joined(separator: " ")) exited \(r.status): \(r.stderr)")
    }
    return r.stdout + r.stderr
}

/// Exit status, stdout and stderr of one command.
public func execute(_ exe: String, _ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: exe)
    p.arguments = args
    var env = ProcessInfo.processInfo.environment
    env["E2FSPROGS_FAKE_TIME"] = nil
    env["MKE2FS_CONFIG"] = nil
    env["PATH"] = (env["PATH"] ?? "/usr/bin:/bin") + ":/usr/sbin:/sbin"
    p.environment = env
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    // Read both pipes at once: a tool filling one while we wait on the other would hang.
    nonisolated(unsafe) var e = Data()
    let g = DispatchGroup()
    g.enter()
    DispatchQueue.global().async {
        e = err.fileHandleForReading.readDataToEndOfFile()
        g.leave()
    }
    let o = out.fileHandleForReading.readDataToEndOfFile()
    g.wait()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
}

/// A scratch directory, removed on deinit.
public final class TempDir {
    public let path: String
    public init(prefix: String = "ext4test") throws {
        path = NSTemporaryDirectory() + prefix + "-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
    public func sub(_ s: String) -> String { path + "/" + s }
}

/// Deterministic pseudo-random bytes (xorshift32).
public func pattern(_ n: Int, seed: UInt32) -> [UInt8] {
    var x = seed &* 2_654_435_761 | 1
    var out = [UInt8](repeating: 0, count: n)
    for i in 0..<n {
        x ^= x << 13; x ^= x >> 17; x ^= x << 5
        out[i] = UInt8(truncatingIfNeeded: x)
    }
    return out
}

public func writeFile(_ path: String, _ bytes: [UInt8]) throws {
    try Data(bytes).write(to: URL(fileURLWithPath: path))
}

public func writeAt(_ path: String, _ offset: Int, _ bytes: [UInt8]) {
    let fd = open(path, O_WRONLY)
    defer { close(fd) }
    _ = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(offset)) }
}

public func readWhole(_ path: String) throws -> [UInt8] {
    [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
}

/// SplitMix64: a seeded generator for reproducible random workloads.
public struct SplitMix: RandomNumberGenerator {
    public var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform-enough value in 0..<n (0 when n is 0).
    public mutating func below(_ n: UInt64) -> UInt64 { n == 0 ? 0 : next() % n }
}

// MARK: loop devices

/// Whether a loop device backed by `path` exists (sysfs scan).
public func loopExists(for path: String) -> Bool {
    var st = stat()
    guard stat(path, &st) == 0 else { return false }
    return LoopDevice.findLoop(device: UInt64(st.st_dev), inode: UInt64(st.st_ino)) != nil
}

/// Autoclear is asynchronous in the kernel; wait up to two seconds for it.
public func waitLoopGone(_ path: String) -> Bool {
    for _ in 0..<100 {
        if !loopExists(for: path) { return true }
        usleep(20_000)
    }
    return false
}

/// Runs a closure on its own pthread; `join()` waits for it.
public final class TestThread: @unchecked Sendable {
    public let body: () -> Void
    public var tid = pthread_t()
    public init(_ body: @escaping () -> Void) {
        self.body = body
        let ctx = Unmanaged.passRetained(self).toOpaque()
        _ = pthread_create(&tid, nil, { p in
            guard let p else { return nil }
            let t = Unmanaged<TestThread>.fromOpaque(p).takeRetainedValue()
            t.body()
            return nil
        }, ctx)
    }
    public func join() { _ = pthread_join(tid, nil) }
}

public final class Box<T>: @unchecked Sendable {
    public var value: T
    public init(_ v: T) { value = v }
}
