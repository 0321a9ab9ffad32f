import CShim
import Foundation
import Synchronization

/// Multi-mount protection (INCOMPAT_MMP): a file system on storage that
/// several machines can reach is mounted read-write by one of them at a
/// time. Written from the ext4 documentation's description of the MMP block
/// (MMPRecord, OnDisk.swift):
/// - taking it: a clean sequence goes on; e2fsck's sequence refuses at once;
///   any other is watched for the wait time (twice the check interval plus
///   one second, at most the interval plus a minute) and refused if it
///   changes. Then a random sequence of our own is written and watched for
///   the wait time again: if someone else wrote meanwhile, refused;
/// - while mounted, a thread rereads the block every update interval: our
///   sequence still there, it writes the next one; someone else's, the
///   mount stops writing (`onLost`), as the kernel's ext4 remounts read-only;
/// - at unmount the clean sequence is written back. A crash leaves ours,
///   which the next mount waits out.
/// The block is reread from the medium each time (`dropCached`), never from
/// this host's page cache.
final class MultiMountProtection: Sendable {
    /// The kernel's floor for the check interval, in seconds.
    static let minCheckInterval = 5

    private let dev: any BlockDevice
    private let offset: UInt64
    private let seed: UInt32?
    private let updateInterval: Double
    private let logger: CorruptionLog
    private struct State {
        var seq: UInt32
        var stop = false
        var thread = false
        /// Another node's sequence was found: the block is theirs now.
        var lost = false
    }
    private let state: Mutex<State>
    private let done = DispatchSemaphore(value: 0)

    private init(dev: any BlockDevice, offset: UInt64, seed: UInt32?, updateInterval: Double, seq: UInt32, logger: CorruptionLog) {
        self.dev = dev
        self.offset = offset
        self.seed = seed
        self.updateInterval = updateInterval
        self.logger = logger
        state = Mutex(State(seq: seq))
    }

    private static func read(_ dev: any BlockDevice, _ offset: UInt64, seed: UInt32?) throws(Ext4Error) -> MMPRecord {
        dev.dropCached(at: offset, count: MMPRecord.size)
        var b = [UInt8](repeating: 0, count: MMPRecord.size)
        try Ext4FileSystem.readRaw(dev, at: offset, into: &b)
        let r = try MMPRecord(b)
        if let seed, !r.checksumMatches(seed: seed) { throw .corrupted("MMP block checksum mismatch") }
        return r
    }

    /// Write `r` with sequence `seq`, stamped now and sealed, to the medium.
    private static func write(_ dev: any BlockDevice, _ offset: UInt64, _ r: MMPRecord, seq: UInt32,
                              seed: UInt32?) throws(Ext4Error) {
        var r = r
        r.seq = seq
        r.time = UInt64(max(0, Date().timeIntervalSince1970))
        if let seed { r.seal(seed: seed) }
        try Ext4FileSystem.writeRaw(dev, at: offset, r.b)
        try dev.flush()
    }

    private static func holder(_ r: MMPRecord) -> String {
        let when = Date(timeIntervalSince1970: TimeInterval(r.time))
        return "node \"\(r.nodeName)\", device \"\(r.deviceName)\", last update \(when)"
    }

    /// Take the file system for this mount, or throw `.inUse`. Waits up to
    /// twice the wait time (11 s with the default interval).
    static func acquire(dev: any BlockDevice, sb: Superblock, seed: UInt32?, node: String, device: String,
                        logger: CorruptionLog, wait: (Double) -> Void = { Thread.sleep(forTimeInterval: $0) })
        throws(Ext4Error) -> MultiMountProtection
    {
        let bs = UInt64(sb.blockSize)
        guard sb.mmpBlock >= UInt64(sb.firstDataBlock), sb.mmpBlock < sb.blocksCount else {
            throw .corrupted("MMP block \(sb.mmpBlock) outside the file system")
        }
        let offset = sb.mmpBlock * bs
        var r = try read(dev, offset, seed: seed)
        var check = max(Int(sb.mmpUpdateInterval), minCheckInterval)
        check = max(check, Int(r.checkInterval))
        let waitTime = Double(min(2 * check + 1, check + 60))
        if r.seq == MMPRecord.seqFsck {
            throw .inUse("e2fsck is running on this file system (multi-mount protection; \(holder(r)))")
        }
        if r.seq != MMPRecord.seqClean {
            let seen = r.seq
            wait(waitTime)
            r = try read(dev, offset, seed: seed)
            if r.seq != seen {
                throw .inUse("the file system is in use on another node (multi-mount protection; \(holder(r)))")
            }
        }
        let mine = UInt32.random(in: 1...MMPRecord.seqMax)
        r.checkInterval = UInt16(clamping: check)
        r.setNames(node: node, device: device)
        try write(dev, offset, r, seq: mine, seed: seed)
        wait(waitTime)
        let again = try read(dev, offset, seed: seed)
        if again.seq != mine {
            throw .inUse("another node took the file system while this one did (multi-mount protection; \(holder(again)))")
        }
        return MultiMountProtection(dev: dev, offset: offset, seed: seed,
                                    updateInterval: Double(max(1, sb.mmpUpdateInterval)), seq: mine, logger: logger)
    }

    /// Start the thread that keeps the sequence moving; `onLost` runs once
    /// when another node's sequence is found in the block.
    func startUpdating(onLost: @escaping @Sendable (String) -> Void) {
        state.withLock { $0.thread = true }
        let t = Thread { [self] in
            cshim_set_thread_name("ext4-mmp")
            defer { done.signal() }
            var next = Date().addingTimeInterval(updateInterval)
            while true {
                while Date() < next {
                    if state.withLock({ $0.stop }) { return }
                    Thread.sleep(forTimeInterval: min(0.1, max(0, next.timeIntervalSinceNow)))
                }
                next = Date().addingTimeInterval(updateInterval)
                do {
                    let r = try Self.read(dev, offset, seed: seed)
                    let (mine, stop) = state.withLock { ($0.seq, $0.stop) }
                    if stop { return }
                    if r.seq != mine {
                        state.withLock { $0.lost = true }
                        onLost("multi-mount protection: the file system was taken by another node (\(Self.holder(r)))")
                        return
                    }
                    let seq = mine >= MMPRecord.seqMax ? 1 : mine + 1
                    try Self.write(dev, offset, r, seq: seq, seed: seed)
                    state.withLock { $0.seq = seq }
                } catch {
                    logger.logger.error("ext4: multi-mount protection: updating the MMP block failed: \(error)")
                }
            }
        }
        t.start()
    }

    /// Stop the thread and mark the file system clean for the next node
    /// (not when another node has taken it).
    func release() throws(Ext4Error) {
        let running = state.withLock { s -> Bool in
            let r = s.thread
            s.stop = true
            s.thread = false
            return r
        }
        if running { done.wait() }
        if state.withLock({ $0.lost }) { return }
        try Self.write(dev, offset, try Self.read(dev, offset, seed: seed), seq: MMPRecord.seqClean, seed: seed)
    }
}

extension Ext4FileSystem {
    /// Keep `m` for this mount and start its updates; losing the file system
    /// to another node stops every change, as a journal abort does.
    func holdMMP(_ m: MultiMountProtection) {
        mmp.withLock { $0 = m }
        m.startUpdating { [weak self] why in
            guard let self else { return }
            clog.logger.critical("ext4: \(why); no more changes are written")
            meta.txn.abort(.readOnly)
        }
    }

    /// Give multi-mount protection back (unmount).
    func releaseMMP() throws(Ext4Error) {
        guard let m = mmp.withLock({ s -> MultiMountProtection? in defer { s = nil }; return s }) else { return }
        try m.release()
    }
}
