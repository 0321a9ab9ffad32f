import CShim
import Foundation

/// Write-back of metadata. `writeMeta` keeps a changed metadata block in
/// memory (the dirty set, plus the block cache) instead of writing it at once;
/// `flushMetadata` writes the dirty set in block order, coalescing neighbours.
/// Flushes happen on fsync, syncfs, FREEZE and unmount (followed by a device
/// flush), when the dirty set grows past `dirtyLimit` blocks, and every
/// `flushInterval` seconds from a background thread. The superblock is kept the
/// same way, except that marking the file system not-clean at mount and clean
/// at unmount is written through. A crash loses what was not flushed (as a
/// kernel ext4 without a journal would); fsync'd files are on disk.
///
/// Coherence rules:
/// - a dirty block is found by `block`/`blockRun` before the device is read
///   (the LRU cache may have dropped it);
/// - a flush removes an entry only after its bytes are on the device, and only
///   if it was not dirtied again meanwhile;
/// - freeing blocks drops their dirty entries (under `flushLock`, so a flush in
///   progress cannot write them after the blocks become someone's file data).
///
/// Lock order: every other engine lock → `flushLock` → `dirtyLock`. A flush
/// takes nothing else (the superblock is copied before `flushLock`).
extension Ext4FileSystem {
    static let dirtyLimit = 4096
    static let flushInterval: Double = 5

    /// Keep `b` as the new contents of metadata block `n`.
    func writeMeta(_ n: UInt64, _ b: [UInt8]) throws(Ext4Error) {
        guard n < sb.blocksCount, n > 0 || sb.firstDataBlock == 1, b.count == blockSize else {
            throw .corrupted("metadata write to bad block \(n)")
        }
        let w = try wstate
        let count = w.dirtyLock.with { () -> Int in
            w.dirtySeq &+= 1
            w.dirty[n] = (w.dirtySeq, b)
            return w.dirty.count
        }
        cache.wrote(n, b)
        if count > Ext4FileSystem.dirtyLimit { try flushDirtyBlocks() }
    }

    /// The dirty contents of block `n`, if any.
    func dirtyBlock(_ n: UInt64) -> [UInt8]? {
        guard let w else { return nil }
        return w.dirtyLock.with { w.dirty[n]?.bytes }
    }

    /// Dirty contents of the blocks in [start, start+count), by index.
    func dirtyBlocks(_ start: UInt64, _ count: Int) -> [Int: [UInt8]] {
        guard let w else { return [:] }
        return w.dirtyLock.with { () -> [Int: [UInt8]] in
            guard !w.dirty.isEmpty else { return [:] }
            var out: [Int: [UInt8]] = [:]
            for i in 0..<count {
                if let d = w.dirty[start + UInt64(i)] { out[i] = d.bytes }
            }
            return out
        }
    }

    /// Blocks [start, start+count) were freed: forget their dirty contents.
    func dropDirty(_ start: UInt64, _ count: UInt64) {
        guard let w else { return }
        w.flushLock.with {
            w.dirtyLock.with {
                guard !w.dirty.isEmpty else { return }
                if count <= UInt64(w.dirty.count) {
                    for i in 0..<count { w.dirty[start + i] = nil }
                } else {
                    for k in w.dirty.keys where k >= start && k - start < count { w.dirty[k] = nil }
                }
            }
        }
    }

    /// Write every dirty metadata block (not the superblock) to the device.
    func flushDirtyBlocks() throws(Ext4Error) {
        let w = try wstate
        try w.flushLock.with { () throws(Ext4Error) in
            let snap = w.dirtyLock.with { w.dirty }
            guard !snap.isEmpty else { return }
            let keys = snap.keys.sorted()
            let maxRun = max(1, (1 << 20) / blockSize)
            var i = 0
            while i < keys.count {
                var j = i + 1
                while j < keys.count && keys[j] == keys[j - 1] + 1 && j - i < maxRun { j += 1 }
                var buf: [UInt8] = []
                buf.reserveCapacity((j - i) * blockSize)
                for k in keys[i..<j] { if let e = snap[k] { buf += e.bytes } }
                try devWrite(keys[i] * UInt64(blockSize), buf)
                i = j
            }
            w.dirtyLock.with {
                for (k, e) in snap where w.dirty[k]?.seq == e.seq { w.dirty[k] = nil }
            }
        }
    }

    /// Write dirty metadata and, if it changed, the superblock.
    func flushMetadata() throws(Ext4Error) {
        let w = try wstate
        try flushDirtyBlocks()
        let (s, seq) = w.gdLock.with { (w.sbDirty ? w.sbRaw : nil, w.sbSeq) }
        guard let s else { return }
        try w.flushLock.with { () throws(Ext4Error) in try devWrite(1024, s) }
        w.gdLock.with { if w.sbSeq == seq { w.sbDirty = false } }
    }

    /// Flush metadata every `flushInterval` seconds while mounted.
    func startFlusher() {
        guard let w else { return }
        w.flusherStop.with { w.flusherRunning = true }
        let t = Thread { [weak self] in
            cshim_set_thread_name("ext4-flusher")
            defer { w.flusherDone.signal() }
            var last = Date()
            while true {
                usleep(100_000)
                guard let fs = self, !w.flusherStop.with({ w.stopFlusher }) else { return }
                if Date().timeIntervalSince(last) < Ext4FileSystem.flushInterval { continue }
                last = Date()
                do { try fs.flushMetadata() } catch {
                    fs.clog.report("background metadata flush: \(error)")
                }
            }
        }
        t.start()
    }

    /// Stop the flusher and wait for it to finish, so that no flush of its can
    /// land after the final one (which marks the file system clean).
    func stopFlusher() {
        guard let w else { return }
        let running = w.flusherStop.with { () -> Bool in
            w.stopFlusher = true
            defer { w.flusherRunning = false }
            return w.flusherRunning
        }
        if running { _ = w.flusherDone.wait(timeout: .now() + 30) }
    }
}
