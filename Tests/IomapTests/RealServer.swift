// The production ext4iomapd as the server of an IomapKernel: spawned through
// ServerLauncher exactly as fuservicemount's spawn mode does (namespaces, own
// uid, no capabilities, then the server's own landlock and seccomp filters),
// given its device by the real HelperSession (a loop device over the image,
// `fake`: no mount), and a SOCK_SEQPACKET socket in place of /dev/fuse whose
// other end the test kernel holds. So the iomap opcodes run under the real
// serving filter.

import Foundation
import Glibc
import LoopDevices
import ServiceBroker

final class RealServer: @unchecked Sendable {
    let pid: pid_t
    /// The test kernel's end of the FUSE socket.
    let kernelFD: Int32
    /// The test kernel's own fd on the loop device the helper made (what a
    /// kernel would do IO on for backing id 1).
    let deviceFD: Int32
    let registeredDevice = true
    private var reaped = false
    private let lock = NSLock()

    /// The built server: $EXT4IOMAP_BUILD/ext4iomapd, else .build/debug next to the package.
    static var serverPath: String {
        if let b = ProcessInfo.processInfo.environment["EXT4IOMAP_BUILD"] { return b + "/ext4iomapd" }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        return root.path + "/.build/debug/ext4iomapd"
    }

    static var available: Bool { getuid() == 0 && access(serverPath, X_OK) == 0 }

    init(image: String, mountOptions: String) throws {
        var sv: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &sv) == 0 else {
            throw FuseFailure(errno: errno)
        }
        defer { Glibc.close(sv[1]) }
        let spawned = try ServerLauncher.spawn(serverPath: Self.serverPath)
        defer { Glibc.close(spawned.socket) }
        pid = spawned.pid
        let config = HelperConfiguration(subtype: "ext4", source: image, mountpoint: "/tmp", options: mountOptions,
                                         noMtab: true, fake: true, receiveTimeoutMs: 20_000)
        let session = HelperSession(socket: spawned.socket, config: config, fuseChannel: sv[1])
        session.afterHello = { () throws(BrokerError) in try ServerLauncher.emptyRoot(of: spawned.pid) }
        let outcome: HelperOutcome
        do {
            outcome = try session.run()
        } catch {
            ServerLauncher.reap(spawned.pid, kill: true)
            Glibc.close(sv[0])
            throw error
        }
        guard outcome == .goodbye(exitCode: 0, mounted: false) else {
            ServerLauncher.reap(spawned.pid, kill: true)
            Glibc.close(sv[0])
            throw CommandFailed(description: "the real server ended the handshake with \(outcome)")
        }
        kernelFD = sv[0]
        var st = stat()
        guard stat(image, &st) == 0, let loop = LoopDevice.findLoop(device: UInt64(st.st_dev), inode: UInt64(st.st_ino)) else {
            ServerLauncher.reap(spawned.pid, kill: true)
            Glibc.close(sv[0])
            throw CommandFailed(description: "no loop device over \(image)")
        }
        deviceFD = open(loop, O_RDWR | O_CLOEXEC)
        guard deviceFD >= 0 else {
            ServerLauncher.reap(spawned.pid, kill: true)
            Glibc.close(sv[0])
            throw FuseFailure(errno: errno)
        }
    }

    /// Blocks until the server process has exited (it ends when the kernel end closes).
    func waitExit() {
        let st = ServerLauncher.reap(pid, kill: false)
        lock.lock(); reaped = true; exitStatus = st; lock.unlock()
    }
    private(set) var exitStatus: Int32?

    func close() {
        Glibc.close(deviceFD)
        lock.lock(); let done = reaped; lock.unlock()
        if !done { _ = kill(pid, SIGKILL) }
    }
}
