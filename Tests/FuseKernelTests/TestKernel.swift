// Process-wide checks for the live-session tests (the test kernel itself is in
// Tests/FuseTestSupport).

import Foundation
import FuseKernel
import Glibc
import FuseTestSupport
import Testing

/// Threads named by the session's workers that are still alive in this process.
func liveFuseWorkers() -> Int {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
    return tasks.filter { t in
        ((try? String(contentsOfFile: "/proc/self/task/\(t)/comm", encoding: .utf8)) ?? "").hasPrefix("fuse-worker")
    }.count
}

/// Open fds of this process whose target matches `predicate`.
func openFDs(where predicate: (String) -> Bool) -> [String] {
    let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
    return fds.compactMap { fd in
        guard let t = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(fd)") else { return nil }
        return predicate(t) ? "\(fd)->\(t)" : nil
    }
}

/// Every test that runs a live session counts the process's worker threads and
/// fds, so they all run one at a time under this parent suite.
@Suite(.serialized) struct LiveSessions {}
