#if canImport(Glibc)
import Glibc
#endif
import Testing
import CShim
@testable import ServiceBroker

/// Raw helpers for a hand-played peer.
func rawSend(_ sock: Int32, _ bytes: [UInt8], fds: [Int32] = []) -> Int {
    bytes.withUnsafeBytes { p in
        fds.withUnsafeBufferPointer { f in
            cshim_send_with_fds(sock, p.baseAddress, p.count, f.baseAddress, Int32(f.count))
        }
    }
}

func rawReceive(_ sock: Int32, timeoutMs: Int = 5000) -> ServiceMessage? {
    guard let d = try? Transport.receive(sock, timeoutMs: timeoutMs, maxFDs: 4) else { return nil }
    d.closeFDs()
    return try? ServiceCodec.decode(d.bytes, version: 2)
}

/// Play a malicious server against a real helper session.
@Suite(.serialized, .enabled(if: getuid() == 0, "needs root and /dev/fuse"))
struct MaliciousServerTests {
    let lock = RootTestLock()

    /// Handshake as a raw server; returns after both FILEs were received (and closed).
    func handshake(_ sv: Int32) -> Bool {
        guard case .hello? = rawReceive(sv) else { return false }
        _ = rawSend(sv, ServiceCodec.encode(.helloReply(version: 2)))
        guard case .file(0, "argv")? = rawReceive(sv), case .file(0, "fusedev")? = rawReceive(sv) else { return false }
        return true
    }

    func withHelper(timeoutMs: Int = 5000, _ body: (Int32, Scratch) -> Void) -> Result<HelperOutcome, BrokerError>? {
        let s = Scratch()
        defer { s.cleanup() }
        let before = FD.openCount()
        var out: Result<HelperOutcome, BrokerError>?
        do {
            guard let (h, sv) = try? Transport.socketPair() else { return nil }
            let (thread, result) = runHelper(h, s.config(timeoutMs: timeoutMs))
            body(sv, s)
            close(sv)
            thread.join()
            close(h)
            out = result.value
        }
        #expect(FD.openCount() == before, "no fd leak in the helper")
        #expect(!isMounted(s.mnt), "no half-made mount")
        #expect(!loopExists(for: s.image), "no loop device left")
        return out
    }

    @Test func badSizesAndMissingNulsAreRefusedAndTheLoopContinues() {
        let r = withHelper { sv, _ in
            #expect(handshake(sv))
            // TYPE with one byte too many.
            _ = rawSend(sv, [0x54, 0x59, 0x50, 0x45, 0, 0, 0, 0, 0])
            #expect(rawReceive(sv) == .simpleReply(error: UInt32(EINVAL)))
            // NAME without NUL.
            _ = rawSend(sv, [0x4e, 0x41, 0x4d, 0x45, 0x41, 0x42])
            #expect(rawReceive(sv) == .simpleReply(error: UInt32(EINVAL)))
            // OPEN with no path at all.
            _ = rawSend(sv, [0x4f, 0x50, 0x45, 0x4e] + [UInt8](repeating: 0, count: 16))
            #expect(rawReceive(sv) == .file(error: UInt32(EINVAL), path: "?"))
            // MNTP with non-zero padding.
            _ = rawSend(sv, [0x4d, 0x4e, 0x54, 0x50, 0x40, 0, 0, 1, 0x2f, 0])
            #expect(rawReceive(sv) == .simpleReply(error: UInt32(EINVAL)))
            // BYEE with a short body is refused too (no reply), then a real one.
            _ = rawSend(sv, [0x42, 0x59, 0x45, 0x45, 0])
            _ = rawSend(sv, ServiceCodec.encode(.goodbye(exitCode: 5)))
        }
        #expect(r == .success(.goodbye(exitCode: 5, mounted: false)))
    }

    @Test func duplicateCommands() {
        let r = withHelper { sv, s in
            #expect(handshake(sv))
            for (m, dup) in [(ServiceMessage.fsopen(flags: []), true), (.source(s.image), true),
                             (.options("max_read=131072"), true), (.mtab("rw"), true)] {
                _ = rawSend(sv, ServiceCodec.encode(m))
                #expect(rawReceive(sv) == .simpleReply(error: 0))
                if dup {
                    _ = rawSend(sv, ServiceCodec.encode(m))
                    #expect(rawReceive(sv) == .simpleReply(error: UInt32(EINVAL)))
                }
            }
            _ = rawSend(sv, ServiceCodec.encode(.goodbye(exitCode: 0)))
        }
        #expect(r == .success(.goodbye(exitCode: 0, mounted: false)))
    }

    @Test func fdsFromTheServerAreNeverAccepted() {
        let r = withHelper { sv, _ in
            #expect(handshake(sv))
            let p = open("/dev/null", O_RDONLY | O_CLOEXEC)
            defer { close(p) }
            // The helper dropped SO_PASSRIGHTS where the kernel has it (send fails);
            // otherwise it closes the fds and refuses the command.
            let n = rawSend(sv, ServiceCodec.encode(.source("x")), fds: [p, p])
            if n > 0 { #expect(rawReceive(sv) == .simpleReply(error: UInt32(EPERM))) }
            _ = rawSend(sv, ServiceCodec.encode(.goodbye(exitCode: 0)))
        }
        #expect(r == .success(.goodbye(exitCode: 0, mounted: false)))
    }

    @Test func unknownMagicEndsTheSession() {
        let r = withHelper { sv, _ in
            #expect(handshake(sv))
            _ = rawSend(sv, [0x5a, 0x5a, 0x5a, 0x5a, 0, 0, 0, 0])
        }
        #expect(r == .failure(.malformed(.unknownMagic(0x5a5a_5a5a))))
    }

    @Test func oversizeDatagram() {
        let r = withHelper { sv, _ in
            #expect(handshake(sv))
            _ = rawSend(sv, [0x4e, 0x41, 0x4d, 0x45] + [UInt8](repeating: 0x41, count: 70000) + [0])
        }
        #expect(r == .failure(.malformed(.tooLong(70005))))
    }

    @Test func badHelloReply() {
        let r = withHelper { sv, _ in
            _ = rawReceive(sv)
            _ = rawSend(sv, ServiceCodec.encode(.helloReply(version: 9)))
        }
        #expect(r == .failure(.sequence("server picked unsupported version 9")))
    }

    @Test func hungServerTimesOutAndTheMountIsUndone() {
        let r = withHelper(timeoutMs: 300) { sv, s in
            #expect(handshake(sv))
            for m in [ServiceMessage.fsopen(flags: []), .source(s.image),
                      .mountpoint(expectedFormat: UInt16(S_IFDIR), path: s.mnt), .mount(msFlags: 0)] {
                _ = rawSend(sv, ServiceCodec.encode(m))
                #expect(rawReceive(sv) == .simpleReply(error: 0))
            }
            #expect(isMounted(s.mnt))
            usleep(800_000) // no goodbye: the helper times out
        }
        #expect(r == .failure(.timedOut(milliseconds: 300)))
    }

    @Test func earlyExitAfterMountLeavesNothing() {
        let r = withHelper { sv, s in
            #expect(handshake(sv))
            _ = rawSend(sv, ServiceCodec.encode(.open(OpenRequest(kind: .blockDevice, openFlags: UInt32(O_RDWR),
                                                                  requestFlags: [.loopDevice], path: s.image))))
            if let d = try? Transport.receive(sv, timeoutMs: 5000, maxFDs: 1) {
                #expect(d.fds.count == 1)
                d.closeFDs()
            }
            for m in [ServiceMessage.fsopen(flags: []), .source(s.image),
                      .mountpoint(expectedFormat: UInt16(S_IFDIR), path: s.mnt), .mount(msFlags: 0)] {
                _ = rawSend(sv, ServiceCodec.encode(m))
                #expect(rawReceive(sv) == .simpleReply(error: 0))
            }
            // exit without BYEE (the caller closes the socket)
        }
        #expect(r == .failure(.peerClosed))
    }

    /// The whole mount sequence as a raw server; every step must be accepted.
    func mountAs(_ sv: Int32, _ s: Scratch, options: String? = nil, flags: UInt32 = 0) {
        var steps = [ServiceMessage.fsopen(flags: []), .source("/dev/loop0"),
                     .mountpoint(expectedFormat: UInt16(S_IFDIR), path: s.mnt)]
        if let o = options { steps.append(.options(o)) }
        steps.append(.mount(msFlags: flags))
        for m in steps {
            _ = rawSend(sv, ServiceCodec.encode(m))
            #expect(rawReceive(sv) == .simpleReply(error: 0), "\(m.magic)")
        }
    }

    /// DOIT with flags 0 still gives nosuid,nodev, and the helper's own access
    /// options, whatever the server asked (read back from mountinfo).
    @Test func doitCannotDropNosuidNodevOrAccessOptions() {
        let r = withHelper { sv, s in
            #expect(handshake(sv))
            mountAs(sv, s, options: "max_read=131072")
            let per = mountOptions(s.mnt)?.split(separator: ",").map(String.init) ?? []
            #expect(per.contains("nosuid") && per.contains("nodev"), "per-mount options \(per)")
            let sup = superOptions(s.mnt)
            #expect(sup.contains("allow_other") && sup.contains("default_permissions"), "super options \(sup)")
            #expect(mountSource(s.mnt)?.0 == s.image, "the kernel's source is the helper's, not the server's NAME")
            _ = rawSend(sv, ServiceCodec.encode(.goodbye(exitCode: 0)))
            #expect(umount2(s.mnt, Int32(MNT_DETACH)) == 0)
        }
        #expect(r == .success(.goodbye(exitCode: 0, mounted: true)))
    }

    /// The admin's `suid,dev` lifts the helper's defaults; the server cannot.
    @Test func adminMayAllowSuidAndDev() {
        let s = Scratch()
        defer { s.cleanup() }
        guard let (h, sv) = try? Transport.socketPair() else { return }
        let (thread, result) = runHelper(h, s.config(options: "suid,dev"))
        #expect(handshake(sv))
        mountAs(sv, s)
        let per = mountOptions(s.mnt)?.split(separator: ",").map(String.init) ?? []
        #expect(!per.contains("nosuid") && !per.contains("nodev"), "per-mount options \(per)")
        _ = rawSend(sv, ServiceCodec.encode(.goodbye(exitCode: 0)))
        thread.join()
        close(sv); close(h)
        #expect(result.value == .success(.goodbye(exitCode: 0, mounted: true)))
        _ = umount2(s.mnt, Int32(MNT_DETACH))
    }

    /// After a swap of the mountpoint's parent for a symlink to another mount's
    /// parent, the undo path detaches only the helper's own mount.
    @Test func undoDetachesOnlyItsOwnMount() {
        let s = Scratch()
        defer { s.cleanup() }
        let parent = s.dir + "/p", mnt = parent + "/mnt", moved = s.dir + "/p.moved"
        let otherParent = s.dir + "/o", other = otherParent + "/mnt"
        mkdir(parent, 0o755); mkdir(mnt, 0o755); mkdir(otherParent, 0o755); mkdir(other, 0o755)
        #expect(mount("tmpfs", other, "tmpfs", 0, "size=1m") == 0)
        defer {
            _ = umount2(other, Int32(MNT_DETACH)); _ = umount2(moved + "/mnt", Int32(MNT_DETACH))
            unlink(parent); rmdir(moved + "/mnt"); rmdir(moved); rmdir(mnt); rmdir(parent); rmdir(other); rmdir(otherParent)
        }
        guard let (h, sv) = try? Transport.socketPair() else { return }
        let cfg = HelperConfiguration(subtype: "ext4test", source: s.image, mountpoint: mnt, noMtab: true,
                                      receiveTimeoutMs: 5000)
        let (thread, result) = runHelper(h, cfg)
        #expect(handshake(sv))
        for m in [ServiceMessage.fsopen(flags: []), .source(s.image),
                  .mountpoint(expectedFormat: UInt16(S_IFDIR), path: mnt), .mount(msFlags: 0)] {
            _ = rawSend(sv, ServiceCodec.encode(m))
            #expect(rawReceive(sv) == .simpleReply(error: 0))
        }
        #expect(isMounted(mnt))
        #expect(rename(parent, moved) == 0)
        #expect(symlink(otherParent, parent) == 0)
        close(sv)  // the connection drops without BYEE: the helper undoes its mount
        thread.join()
        close(h)
        #expect(result.value == .failure(.peerClosed))
        #expect(isMounted(other), "the other mount survived")
        #expect(!isMounted(moved + "/mnt"), "our mount was detached where it really was")
    }

    /// A path swapped after start-up does not redirect OPEN: the fd is the pinned image.
    @Test func swappedSourceIsServedFromThePin() {
        let r = withHelper { sv, s in
            var orig = stat()
            #expect(stat(s.image, &orig) == 0)
            let secret = s.dir + "/secret"
            let fd = open(secret, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
            close(fd)
            defer { unlink(secret); unlink(s.image + ".orig") }
            #expect(handshake(sv))  // the helper pinned the source before HELLO
            #expect(rename(s.image, s.image + ".orig") == 0)
            #expect(symlink(secret, s.image) == 0)
            _ = rawSend(sv, ServiceCodec.encode(.open(OpenRequest(kind: .file, openFlags: UInt32(O_RDONLY), path: s.image))))
            if let d = try? Transport.receive(sv, timeoutMs: 5000, maxFDs: 1) {
                var st = stat()
                #expect(d.fds.count == 1 && fstat(d.fds[0], &st) == 0 && st.st_ino == orig.st_ino && st.st_dev == orig.st_dev,
                        "the fd is the original image")
                d.closeFDs()
            }
            unlink(s.image)
            _ = rename(s.image + ".orig", s.image)
            _ = rawSend(sv, ServiceCodec.encode(.goodbye(exitCode: 0)))
        }
        #expect(r == .success(.goodbye(exitCode: 0, mounted: false)))
    }

    /// A chatty server ends at the message cap; a slow one at the session deadline.
    @Test func messageCapAndSessionDeadline() {
        let s = Scratch()
        defer { s.cleanup() }
        for capped in [true, false] {
            guard let (h, sv) = try? Transport.socketPair() else { return }
            let cfg = capped ? s.config(maxMessages: 20) : s.config(timeoutMs: 2000, sessionTimeoutMs: 700)
            let (thread, result) = runHelper(h, cfg)
            #expect(handshake(sv))
            _ = rawSend(sv, ServiceCodec.encode(.fsopen(flags: [])))
            _ = rawReceive(sv)
            for _ in 0..<40 {
                _ = rawSend(sv, ServiceCodec.encode(.fsopen(flags: [])))
                if rawReceive(sv, timeoutMs: 3000) == nil { break }
                if !capped { usleep(100_000) }
            }
            thread.join()
            close(sv); close(h)
            if capped {
                #expect(result.value == .failure(.sequence("the server sent more than 20 messages")))
            } else {
                #expect(result.value == .failure(.timedOut(milliseconds: 700)))
            }
        }
    }

    @Test func earlyExitBeforeHello() {
        let r = withHelper { _, _ in }
        #expect(r == .failure(.peerClosed))
    }
}

/// Play a malicious helper against the server endpoint.
@Suite(.serialized) struct MaliciousHelperTests {
    let lock = RootTestLock()
    func withEndpoint(timeoutMs: Int = 2000, helper: @escaping @Sendable (Int32) -> Void,
                      server: (ServiceEndpoint) throws(BrokerError) -> Void) -> BrokerError? {
        let before = FD.openCount()
        var err: BrokerError?
        do {
            guard let (h, sv) = try? Transport.socketPair() else { return nil }
            let t = TestThread { helper(h) }
            do {
                let ep = try ServiceEndpoint(inheritedFD: sv, timeoutMs: timeoutMs)
                try server(ep)
            } catch {
                err = error
            }
            t.join()
            close(h)
        }
        #expect(FD.openCount() == before, "no fd leak in the server")
        return err
    }

    static func goodHello(_ h: Int32) {
        _ = rawSend(h, ServiceCodec.encode(.hello(minVersion: 1, maxVersion: 2, flags: [])))
        _ = rawReceive(h)
    }

    static func memfd(_ bytes: [UInt8]) -> Int32 {
        let fd = cshim_memfd_create("t", 1)
        _ = bytes.withUnsafeBytes { p in pwrite(fd, p.baseAddress, p.count, 0) }
        return fd
    }

    @Test func badHello() {
        let e = withEndpoint(helper: { h in _ = rawSend(h, [0x53, 0x41, 0x46, 0x54, 0, 1, 0, 2]) },
                             server: { ep throws(BrokerError) in try ep.hello() })
        #expect(e == .malformed(.wrongSize(magic: .hello, size: 8)))
        let e2 = withEndpoint(helper: { h in _ = rawSend(h, ServiceCodec.encode(.hello(minVersion: 3, maxVersion: 4, flags: []))) },
                              server: { ep throws(BrokerError) in try ep.hello() })
        #expect(e2 != nil)
    }

    @Test func argvWithTwoFDsOrNone() {
        let e = withEndpoint(helper: { h in
            Self.goodHello(h)
            let m = Self.memfd(try! ArgvCodec.encode(["x"]))
            _ = rawSend(h, ServiceCodec.encode(.file(error: 0, path: "argv")), fds: [m, m])
            close(m)
        }, server: { ep throws(BrokerError) in try ep.hello(); _ = try ep.receiveArgs() })
        #expect(e == .sequence("more than one file descriptor in a message"))
        let e2 = withEndpoint(helper: { h in
            Self.goodHello(h)
            _ = rawSend(h, ServiceCodec.encode(.file(error: 0, path: "argv")))
        }, server: { ep throws(BrokerError) in try ep.hello(); _ = try ep.receiveArgs() })
        #expect(e2 == .sequence("FILE argv without a file descriptor"))
    }

    @Test func corruptAndHugeArgv() {
        let e = withEndpoint(helper: { h in
            Self.goodHello(h)
            var b = try! ArgvCodec.encode(["ext4", "a"])
            b[15] = 0xff
            let m = Self.memfd(b)
            _ = rawSend(h, ServiceCodec.encode(.file(error: 0, path: "argv")), fds: [m])
            close(m)
        }, server: { ep throws(BrokerError) in try ep.hello(); _ = try ep.receiveArgs() })
        #expect(e == .malformed(.badValue("argv entry out of bounds")))
        let e2 = withEndpoint(helper: { h in
            Self.goodHello(h)
            let m = Self.memfd(try! ArgvCodec.encode(["ext4"]))
            _ = ftruncate(m, 2 << 20)
            _ = rawSend(h, ServiceCodec.encode(.file(error: 0, path: "argv")), fds: [m])
            close(m)
        }, server: { ep throws(BrokerError) in try ep.hello(); _ = try ep.receiveArgs() })
        #expect(e2 == .malformed(.badValue("argv memfd size \(2 << 20)")))
    }

    @Test func wrongFileNameAndWrongFileType() {
        let e = withEndpoint(helper: { h in
            Self.goodHello(h)
            let m = Self.memfd([0])
            _ = rawSend(h, ServiceCodec.encode(.file(error: 0, path: "fusedev")), fds: [m])
            close(m)
        }, server: { ep throws(BrokerError) in try ep.hello(); _ = try ep.receiveArgs() })
        #expect(e == .sequence("FILE for fusedev, expected argv"))
        let e2 = withEndpoint(helper: { h in
            Self.goodHello(h)
            let m = Self.memfd([0])
            _ = rawSend(h, ServiceCodec.encode(.file(error: 0, path: "fusedev")), fds: [m])
            close(m)
        }, server: { ep throws(BrokerError) in try ep.hello(); _ = try ep.receiveFuseDevice() })
        #expect(e2 == .malformed(.badValue("fusedev is not a character device")))
    }

    @Test func hungAndVanishingHelper() {
        let e = withEndpoint(timeoutMs: 200, helper: { h in usleep(500_000) },
                             server: { ep throws(BrokerError) in try ep.hello() })
        #expect(e == .timedOut(milliseconds: 200))
        let e2 = withEndpoint(helper: { h in shutdown(h, Int32(SHUT_RDWR)) },
                              server: { ep throws(BrokerError) in try ep.hello() })
        #expect(e2 == .peerClosed)
    }

    @Test func garbageReplies() {
        let e = withEndpoint(helper: { h in
            Self.goodHello(h)
            _ = rawReceive(h) // the OPEN
            _ = rawSend(h, [0x52, 0x45, 0x50, 0x4c, 0, 0]) // short REPL where FILE is expected
        }, server: { ep throws(BrokerError) in try ep.hello(); _ = try ep.requestFile(path: "/x", flags: O_RDONLY) })
        #expect(e == .malformed(.wrongSize(magic: .simpleReply, size: 6)))
        let e2 = withEndpoint(helper: { h in
            Self.goodHello(h)
            _ = rawReceive(h)
            let p = open("/dev/null", O_RDONLY | O_CLOEXEC)
            _ = rawSend(h, ServiceCodec.encode(.simpleReply(error: 0)), fds: [p])
            close(p)
        }, server: { ep throws(BrokerError) in try ep.hello(); try ep.mount(fstype: "fuse.x", source: "s", mountpoint: "/m", options: nil, mtabOptions: nil, flags: 0) })
        #expect(e2 == .sequence("unexpected file descriptor"))
    }
}
