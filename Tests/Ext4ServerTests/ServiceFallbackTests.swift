// Service mode with a helper that gives no block device: the server asks it to
// OPEN the image file and serves that on the classic path. The helper here is
// our own HelperSession held to version 1 by the server's endpoint (as against
// libfuse's fuservicemount3, which speaks only version 1);
// tests/integration/libfuse-interop.sh runs the real thing.

import Foundation
import Glibc
import Logging
import ServiceBroker
import TestSupport
import Testing
import Ext4Fuse
@testable import Ext4Server

/// (fstype, source) of the mount at `path`, from /proc/self/mountinfo.
private func mountEntry(_ path: String) -> (fstype: String, source: String)? {
    guard let text = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return nil }
    for line in text.split(separator: "\n") {
        let f = line.split(separator: " ")
        guard f.count > 5, f[4] == path, let sep = f.firstIndex(of: "-"), sep + 2 < f.count else { continue }
        return (String(f[sep + 1]), String(f[sep + 2]))
    }
    return nil
}

@Suite struct ServiceFallbackTests {
    @Test func whenTheServerAsksToOpenTheSource() {
        #expect(sourceOpenFallback(version: 1, blockDeviceRefusal: nil)?.contains("version 1") == true)
        #expect(sourceOpenFallback(version: 2, blockDeviceRefusal: nil) == nil)
        #expect(sourceOpenFallback(version: 2, blockDeviceRefusal: .refused(operation: "open /x", errno: ENOTBLK))?
                    .contains("ENOTBLK") == true)
        // Any other refusal is the mount's failure, not a reason to try again.
        for e in [EBUSY, EPERM, EROFS, ENOENT] {
            #expect(sourceOpenFallback(version: 2, blockDeviceRefusal: .refused(operation: "open /x", errno: e)) == nil)
        }
        #expect(sourceOpenFallback(version: 2, blockDeviceRefusal: .peerClosed) == nil)
        #expect(sourceOpenFallback(version: 2, blockDeviceRefusal: .denied("policy", errno: ENOTBLK)) == nil)
    }

    /// The whole conversation with a version-1 helper on an image file: it gets
    /// OPEN (BDEV would only be ENOTBLK there), no loop device is made, the
    /// mount reads and writes, and the image is clean afterwards.
    @Test(.enabled(if: isRoot && haveE2fsprogs, "needs root, /dev/fuse and e2fsprogs"))
    func version1HelperServesTheImageFile() throws {
        let d = try Scratch()
        try d.write("tree/hello.txt", Array("hello from v1\n".utf8))
        let big = bulk(3 << 20, seed: 11)
        try d.write("tree/sub/big", big)
        let image = d.path + "/fs.img", mnt = d.path + "/mnt"
        try tool(["mkfs.ext4", "-q", "-F", "-d", d.path + "/tree", image, "32M"])
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        defer { _ = umount2(mnt, Int32(MNT_DETACH)) }

        let (h, sv) = try Transport.socketPair()
        defer { close(h) }
        // seccomp=0: the server runs inside the test process, which must stay usable.
        let config = HelperConfiguration(subtype: "ext4test", source: image, mountpoint: mnt,
                                         options: "seccomp=0,uring=0", noMtab: true, receiveTimeoutMs: 10_000)
        let helperResult = Box<Result<HelperOutcome, BrokerError>?>(nil)
        let helper = TestThread {
            let s = HelperSession(socket: h, config: config)
            do throws(BrokerError) { helperResult.value = .success(try s.run()) } catch { helperResult.value = .failure(error) }
        }
        let endpoint = try ServiceEndpoint(inheritedFD: sv, timeoutMs: 10_000, supportedMaxVersion: 1)
        var logger = Logger(label: "fallback-test")
        logger.logLevel = .error
        let serverResult = Box<ServerFailure?>(nil)
        let served = Box(false)
        let server = TestThread {
            do throws(ServerFailure) {
                try runService(endpoint: endpoint, workers: 2, logger: logger)
                served.value = true
            } catch { serverResult.value = error }
        }
        helper.join()
        #expect(endpoint.version == 1)
        guard case .success(.goodbye(exitCode: 0, mounted: true))? = helperResult.value else {
            Issue.record("helper: \(String(describing: helperResult.value)), server: \(String(describing: serverResult.value))")
            _ = umount2(mnt, Int32(MNT_DETACH))
            server.join()
            return
        }
        let entry = mountEntry(mnt)
        #expect(entry?.fstype == "fuse.ext4test")
        #expect(entry?.source == image)
        #expect(!loopExists(for: image), "a version-1 helper makes no loop device")
        #expect((try? readWhole(mnt + "/hello.txt")) == Array("hello from v1\n".utf8))
        #expect((try? readWhole(mnt + "/sub/big")) == big)
        let written = bulk(200_000, seed: 12)
        try writeFile(mnt + "/new.bin", written)
        #expect(umount2(mnt, 0) == 0)
        server.join()
        #expect(serverResult.value == nil, "\(String(describing: serverResult.value))")
        #expect(served.value)
        #expect(mountEntry(mnt) == nil)
        let fsck = try execute("/usr/bin/env", ["e2fsck", "-fn", image])
        #expect(fsck.status == 0, "\(fsck.stdout)\(fsck.stderr)")
        try tool(["debugfs", "-R", "dump /new.bin \(d.path)/dumped", image])
        #expect((try? readWhole(d.path + "/dumped")) == written)
    }
}
