import Foundation

public enum TimeChange: Sendable { case now, set(Timespec) }

/// One SETATTR: every field that is set changes. `.set` times are clamped
/// to what the inodes can hold.
public struct AttrChange: Sendable {
    public var mode: UInt16?
    public var uid: UInt32?
    public var gid: UInt32?
    public var size: UInt64?
    public var atime: TimeChange?
    public var mtime: TimeChange?
    public var ctime: TimeChange?
    /// Clear set-user-ID, and set-group-ID when group-execute is set (a
    /// chown or truncate by a caller without CAP_FSETID), after `mode`.
    public var killSuidgid = false
    /// The times are ones a cache kept for writes it absorbed, written back
    /// (not a utimes): allowed on an append-only file.
    public var cachedTimes = false
    /// The caller zeroes partial blocks itself and has written the file back
    /// (iomap): a size change only changes the map, no data block is touched.
    public var mapOnly = false
    public init() {}
}

/// File data writes, truncation, fallocate, setattr.
extension Ext4FileSystem {
    func inodeGoal(_ m: MInode) -> UInt64 {
        groupStart(Int(UInt64(m.ino - 1) / UInt64(sb.inodesPerGroup))) + UInt64(groupBlocks(0) / 8)
    }

    /// Physical goal for logical block `l`: right after the mapping before it.
    func goalFor(_ exts: [Extent], _ l: UInt64, _ m: MInode) -> UInt64 {
        var g: UInt64? = nil
        for x in exts where x.logical <= l {
            g = x.physical + min(x.length, l - x.logical)
            if l - x.logical < x.length { g = x.physical + (l - x.logical) }
        }
        return g ?? inodeGoal(m)
    }

    func withBytes(_ a: [UInt8], _ body: (UnsafeRawBufferPointer) throws(Ext4Error) -> Void) throws(Ext4Error) {
        var err: Ext4Error? = nil
        a.withUnsafeBytes { p in
            do throws(Ext4Error) { try body(p) } catch { err = error }
        }
        if let err { throw err }
    }

    func devRead(_ off: UInt64, _ n: Int) throws(Ext4Error) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: n)
        try Ext4FileSystem.readRaw(dev, at: off, into: &b)
        return b
    }

    /// Convert an inline-data regular file or symlink to a block-mapped one (in memory + disk).
    func convertInlineFile(_ m: inout MInode) throws(Ext4Error) {
        let data = try readData(try rawInodeFrom(m), offset: 0, count: Int(min(m.size, 65536)))
        try removeInlineData(&m)
        m.flags = (m.flags & ~InodeFlag.inlineData) | (sb.has(incompat: Incompat.extents) ? InodeFlag.extents : 0)
        m.iBlock = m.hasExtents ? extentRootEmpty() : []
        try setBlocks(&m, fsBlocks: m.fileACL(sb.is64) != 0 ? 1 : 0)
        let size = m.size
        if !data.isEmpty {
            try withBytes(data) { (p) throws(Ext4Error) in try writeData(&m, offset: 0, p) }
        }
        m.size = size
    }

    /// Physical goal for a new block at logical `l`: right after the nearest
    /// mapping before it (looked up at most 4096 blocks back), else near the inode.
    func goalBefore(_ ri: RawInode, _ l: UInt64, _ m: MInode) throws(Ext4Error) -> UInt64 {
        guard l > 0, hasBlockMap(ri) else { return inodeGoal(m) }
        let from = l > 4096 ? l - 4096 : 0
        guard let x = try mapRange(ri, from: from, count: l - from).last else { return inodeGoal(m) }
        return x.physical + x.length
    }

    /// Write bytes into the file's blocks, allocating as needed. Does not change size.
    /// Only the range written is looked up; a write that changes the map
    /// (filling holes, converting unwritten blocks) edits the one extent leaf
    /// it falls in when it can, and rewrites the whole map otherwise.
    func writeData(_ m: inout MInode, offset: UInt64, _ data: UnsafeRawBufferPointer) throws(Ext4Error) {
        let n = UInt64(data.count)
        guard n > 0 else { return }
        let bs = UInt64(blockSize)
        let first = offset / bs
        let last = (offset + n - 1) / bs
        let ri = try rawInodeFrom(m)
        let nblk = Int(last - first + 1)
        // Whole blocks are written straight from the caller's buffer; a write
        // with a partial block is assembled in `buf` (old bytes around it).
        let aligned = offset % bs == 0 && n % bs == 0
        var buf = aligned ? [] : [UInt8](repeating: 0, count: nblk * blockSize)
        // Current mapping of the range.
        let cur = hasBlockMap(ri) ? try mapRange(ri, from: first, count: last - first + 1) : []
        func mapped(_ l: UInt64) -> Extent? {
            for x in cur where l >= x.logical && l < x.logical + x.length { return x }
            return nil
        }
        // Preserve partial head/tail contents of written blocks.
        for l in Set([first, last]) {
            let headPartial = l == first && offset % bs != 0
            let tailPartial = l == last && (offset + n) % bs != 0
            guard headPartial || tailPartial, let x = mapped(l), !x.unwritten else { continue }
            let old = try devRead((x.physical + (l - x.logical)) * bs, blockSize)
            let o = Int(l - first) * blockSize
            buf.replaceSubrange(o..<(o + blockSize), with: old)
        }
        let dataOff = Int(offset - first * bs)
        if !aligned {
            buf.withUnsafeMutableBytes { p in
                guard let base = p.baseAddress, let src = data.baseAddress else { return }
                (base + dataOff).copyMemory(from: src, byteCount: data.count)
            }
        }
        // Allocate holes; unwritten blocks become written.
        var newRuns: [Extent] = []   // written extents the map gains
        var fresh: [Extent] = []     // blocks allocated here (given back on failure)
        var l = first
        do throws(Ext4Error) {
            while l <= last {
                if let x = mapped(l) {
                    let e = min(x.logical + x.length, last + 1)
                    if x.unwritten {
                        newRuns.append(Extent(logical: l, physical: x.physical + (l - x.logical), length: e - l, unwritten: false))
                    }
                    l = e
                    continue
                }
                var e = l
                while e <= last && mapped(e) == nil { e += 1 }
                var cursor = l
                while cursor < e {
                    let goal: UInt64
                    if let p = newRuns.last, p.logical + p.length == cursor { goal = p.physical + p.length }
                    else if cursor > first, let p = mapped(cursor - 1) { goal = p.physical + (cursor - p.logical) }
                    else { goal = try goalBefore(ri, cursor, m) }
                    let (p, got) = try allocData(m, logical: cursor, goal: goal, count: Int(min(e - cursor, 32768)))
                    let x = Extent(logical: cursor, physical: p, length: UInt64(got), unwritten: false)
                    fresh.append(x)
                    newRuns.append(x)
                    cursor += UInt64(got)
                }
                l = e
            }
            // Write data along physical runs.
            var runs = cur
            for x in newRuns { Ext4FileSystem.put(&runs, x) }
            for x in runs {
                let o = Int(x.logical - first) * blockSize
                let len = Int(x.length) * blockSize
                if aligned {
                    try dev.write(at: x.physical * bs, from: UnsafeRawBufferPointer(rebasing: data[o..<(o + len)]))
                    continue
                }
                var err: Ext4Error? = nil
                buf.withUnsafeBytes { p in
                    let sub = UnsafeRawBufferPointer(rebasing: p[o..<(o + len)])
                    do throws(Ext4Error) { try dev.write(at: x.physical * bs, from: sub) } catch { err = error }
                }
                if let err { throw err }
            }
            guard !newRuns.isEmpty else { return }
            try putExtents(&m, newRuns, from: first, to: last + 1, newBlocks: fresh.reduce(0) { $0 + $1.length })
        } catch {
            for x in fresh { try? freeBlocks(x.physical, x.length) }
            throw error
        }
    }

    static func clip(_ exts: [Extent], _ from: UInt64, _ end: UInt64) -> [Extent] {
        var out: [Extent] = []
        for var x in exts {
            let xe = x.logical + x.length
            if xe <= from || x.logical >= end { continue }
            if x.logical < from { let d = from - x.logical; x.logical += d; x.physical += d; x.length -= d }
            if x.logical + x.length > end { x.length = end - x.logical }
            out.append(x)
        }
        return out
    }

    /// What a WRITE did: bytes written, and whether it cleared set-ID bits
    /// (the caller's cached mode is then stale).
    public struct WriteOutcome: Sendable, Equatable {
        public let count: Int
        public let clearedSetID: Bool
    }

    /// WRITE as one operation: the data, the size, the times and, with
    /// `killSuidgid` (a writer without CAP_FSETID), the set-ID bits it clears.
    public func write(_ ino: UInt32, offset: UInt64, data: UnsafeRawBufferPointer,
                      killSuidgid: Bool = false, callerGid: UInt32? = nil) throws(Ext4Error) -> Int {
        try writeRequest(ino, offset: offset, data: data, killSuidgid: killSuidgid, callerGid: callerGid).count
    }

    /// `write`, also saying whether set-ID bits were cleared.
    public func writeRequest(_ ino: UInt32, offset: UInt64, data: UnsafeRawBufferPointer,
                             killSuidgid: Bool, callerGid: UInt32? = nil) throws(Ext4Error) -> WriteOutcome {
        return try withHandle { () throws(Ext4Error) -> WriteOutcome in
            let w = try wstate
            guard data.count > 0 else { return WriteOutcome(count: 0, clearedSetID: false) }
            let (end, o) = offset.addingReportingOverflow(UInt64(data.count))
            guard !o, end <= maxFileSize else { throw .fileTooBig }
            return try w.inodeLocks.withLock(UInt64(ino)) { () throws(Ext4Error) -> WriteOutcome in
                var m = try loadInode(ino)
                try writeLocked(&m, offset: offset, data)
                var cleared = false
                if killSuidgid, let k = Ext4FileSystem.suidgidKilled(m.mode, fileGid: m.gid, callerGid: callerGid) {
                    m.mode = k; cleared = true
                }
                try storeInode(m)
                return WriteOutcome(count: data.count, clearedSetID: cleared)
            }
        }
    }

    /// Write into a regular file (in memory and its blocks): the flags'
    /// rules, the data, the size and times. Caller holds the lock and stores `m`.
    func writeLocked(_ m: inout MInode, offset: UInt64, _ data: UnsafeRawBufferPointer) throws(Ext4Error) {
        guard m.fileType == .regular else { throw m.isDir ? .isDirectory : .invalid("not a regular file") }
        try m.mayWrite(at: offset)
        guard data.count > 0 else { return }
        let (end, o) = offset.addingReportingOverflow(UInt64(data.count))
        guard !o, end <= maxFileSize else { throw .fileTooBig }
        if m.hasInline { try convertInlineFile(&m) }
        try writeData(&m, offset: offset, data)
        if end > m.size { m.size = end }
        let now = nowSpec()
        m.setTime(.mtime, now); m.setTime(.ctime, now)
        m.bumpVersion()
    }

    /// `mode` without set-user-ID, and without set-group-ID when
    /// group-execute is set or the caller is not in the file's group (as the
    /// kernel's rule for a caller without CAP_FSETID: otherwise set-group-ID
    /// without group-execute marks mandatory locking and stays); nil when
    /// that changes nothing. `callerGid` is the only group FUSE reports (the
    /// primary one): a caller in the file's group only by a supplementary
    /// group loses the bit here where the kernel keeps it, the safe side.
    public static func suidgidKilled(_ mode: UInt16, fileGid: UInt32? = nil, callerGid: UInt32? = nil) -> UInt16? {
        var m = mode & ~modeSetUID
        let outsideGroup = callerGid != nil && fileGid != nil && callerGid != fileGid
        if m & 0o010 != 0 || outsideGroup { m &= ~modeSetGID }
        return m == mode ? nil : m
    }

    /// The most one copy_file_range operation copies; the caller gets a
    /// short count and asks again (as copy_file_range allows).
    public static let maxCopyCount: UInt64 = 16 << 20

    /// COPY_FILE_RANGE as one operation, under both inodes' locks: up to
    /// `maxCopyCount` bytes of `src` from `inOffset` written into `dst` at
    /// `outOffset`. Returns the bytes copied (short at the source's end).
    public func copyRange(from src: UInt32, at inOffset: UInt64, to dst: UInt32, at outOffset: UInt64,
                          length: UInt64) throws(Ext4Error) -> UInt64 {
        try withHandle { () throws(Ext4Error) -> UInt64 in
            let w = try wstate
            let want = min(length, Ext4FileSystem.maxCopyCount)
            let (_, o1) = inOffset.addingReportingOverflow(want)
            let (_, o2) = outOffset.addingReportingOverflow(want)
            guard !o1, !o2 else { throw .invalid("range overflows") }
            return try w.inodeLocks.withLocks([UInt64(src), UInt64(dst)]) { () throws(Ext4Error) -> UInt64 in
                var dm = try loadInode(dst)
                guard dm.fileType == .regular else { throw dm.isDir ? .isDirectory : .invalid("not a regular file") }
                if dm.isImmutable || dm.isAppendOnly { throw .permission }
                var done: UInt64 = 0
                let chunk: UInt64 = 1 << 20
                // Each chunk is stored as it is written, as a WRITE would be;
                // a failure after some progress is a short copy.
                while done < want {
                    do throws(Ext4Error) {
                        let ri = src == dst ? try rawInodeFrom(dm) : try rawInode(src)
                        if ri.isDir { throw .isDirectory }
                        let data = try readData(ri, offset: inOffset + done, count: Int(min(chunk, want - done)))
                        if data.isEmpty { break }
                        var next = dm
                        try withBytes(data) { (p) throws(Ext4Error) in try writeLocked(&next, offset: outOffset + done, p) }
                        try storeInode(next)
                        dm = next
                        done += UInt64(data.count)
                    } catch {
                        if done > 0 { return done }
                        throw error
                    }
                }
                return done
            }
        }
    }

    /// Zero bytes [from, to) inside one block on disk if it is mapped and written.
    func zeroPartial(_ exts: [Extent], from: UInt64, to: UInt64) throws(Ext4Error) {
        guard from < to else { return }
        let bs = UInt64(blockSize)
        let l = from / bs
        for x in exts where l >= x.logical && l < x.logical + x.length && !x.unwritten {
            let zeros = [UInt8](repeating: 0, count: Int(to - from))
            try devWrite((x.physical + (l - x.logical)) * bs + from % bs, zeros)
        }
    }

    func zeroBytes(_ exts: [Extent], from: UInt64, to: UInt64) throws(Ext4Error) {
        let bs = UInt64(blockSize)
        var f = from
        while f < to {
            let e = min(to, (f / bs + 1) * bs)
            try zeroPartial(exts, from: f, to: e)
            f = e
        }
    }

    /// Truncate/extend `m` to `newSize` (in memory + blocks freed on disk).
    func truncateInode(_ m: inout MInode, _ newSize: UInt64) throws(Ext4Error) {
        if m.hasInline { try convertInlineFile(&m) }
        let bs = UInt64(blockSize)
        if newSize < m.size {
            var exts = try allExtents(m)
            let meta = try mapMetaBlocks(m)
            if newSize % bs != 0 {
                try zeroPartial(exts, from: newSize, to: (newSize / bs + 1) * bs)
            }
            let keep = (newSize + bs - 1) / bs
            let removed = Ext4FileSystem.cut(&exts, from: keep, count: UInt64.max - keep)
            try storeMap(&m, exts, oldMeta: meta)
            for x in removed { try freeBlocks(x.physical, x.length) }
        }
        m.size = newSize
    }

    /// SETATTR as one operation: the flags' rules, mode (and with an access
    /// ACL, its entries), owner, the set-ID bits a chown or truncate clears,
    /// size, times. Returns the inode as it is afterwards.
    public func setattr(_ ino: UInt32, _ c: AttrChange) throws(Ext4Error) -> Inode {
        return try withHandle { () throws(Ext4Error) -> Inode in
            let w = try wstate
            return try w.inodeLocks.withLock(UInt64(ino)) { () throws(Ext4Error) -> Inode in
                var m = try loadInode(ino)
                try m.mayChange(c)
                let now = nowSpec()
                if let mode = c.mode { m.mode = (m.mode & 0xF000) | (mode & 0x0FFF) }
                if let u = c.uid { m.uid = u }
                if let g = c.gid { m.gid = g }
                if c.killSuidgid, let k = Ext4FileSystem.suidgidKilled(m.mode) { m.mode = k }
                // The access ACL follows a chmod; before the size, so that a
                // failure here (its xattr block may need copying) changes nothing.
                if c.mode != nil { try chmodACL(&m, mode: m.mode) }
                if let s = c.size {
                    guard m.fileType == .regular else { throw m.isDir ? .isDirectory : .invalid("size of non-file") }
                    guard s <= maxFileSize else { throw .fileTooBig }
                    if c.mapOnly { try truncateMapOnly(&m, s) } else { try truncateInode(&m, s) }
                    if c.mtime == nil { m.setTime(.mtime, now) }
                }
                func resolve(_ t: TimeChange) -> Timespec {
                    if case .set(let x) = t { return clampTimestamp(x) }
                    return now
                }
                if let t = c.atime { m.setTime(.atime, resolve(t)) }
                if let t = c.mtime { m.setTime(.mtime, resolve(t)) }
                m.setTime(.ctime, c.ctime.map(resolve) ?? now)
                m.bumpVersion()
                try storeInode(m)
                return try publicInode(m)
            }
        }
    }

    /// OPEN as one operation: the flags' rules for the access asked for
    /// (`Inode.mayOpen`) and, with `truncate` (open with O_TRUNC, the
    /// server's to do with FUSE_ATOMIC_O_TRUNC), a regular file cut to zero
    /// bytes, which with `killSuidgid` (an opener without CAP_FSETID) also
    /// loses its set-ID bits; immutable and append-only files refuse that.
    /// Other file types are not truncated. Only a truncating open changes
    /// anything (one handle); the others read. Returns the inode.
    public func open(_ ino: UInt32, forWriting: Bool, appending: Bool, truncate: Bool,
                     killSuidgid: Bool = false, callerGid: UInt32? = nil) throws(Ext4Error) -> Inode {
        try checkAlive()
        guard truncate else {
            return try withReadLock(ino) { () throws(Ext4Error) -> Inode in
                let i = try rawInode(ino).pub
                try i.mayOpen(forWriting: forWriting, appending: appending)
                return i
            }
        }
        return try withHandle { () throws(Ext4Error) -> Inode in
            let w = try wstate
            return try w.inodeLocks.withLock(UInt64(ino)) { () throws(Ext4Error) -> Inode in
                var m = try loadInode(ino)
                if m.isDir { throw .isDirectory }
                try InodeFlag.mayOpen(m.flags, forWriting: forWriting, appending: appending)
                guard m.fileType == .regular else { return try publicInode(m) }
                try m.mayTruncate()
                var changed = false
                if m.size > 0 {
                    try truncateInode(&m, 0)
                    m.setTime(.mtime, nowSpec())
                    changed = true
                }
                if killSuidgid, let k = Ext4FileSystem.suidgidKilled(m.mode, fileGid: m.gid, callerGid: callerGid) {
                    m.mode = k; changed = true
                }
                guard changed else { return try publicInode(m) }
                m.setTime(.ctime, nowSpec())
                m.bumpVersion()
                try storeInode(m)
                return try publicInode(m)
            }
        }
    }

    /// A fallocate request checked: the modes we support (KEEP_SIZE,
    /// PUNCH_HOLE with KEEP_SIZE, ZERO_RANGE), a non-empty range within the
    /// file size limit.
    func checkFallocate(mode: UInt32, offset: UInt64, length: UInt64) throws(Ext4Error)
        -> (end: UInt64, keepSize: Bool, punch: Bool, zero: Bool) {
        let keepSize = mode & 1 != 0, punch = mode & 2 != 0, zero = mode & 0x10 != 0
        guard mode & ~UInt32(0x13) == 0, !(punch && zero), !(punch && !keepSize) else {
            throw .unsupported("fallocate mode \(mode)")
        }
        guard length > 0 else { throw .invalid("zero length") }
        let (end, o) = offset.addingReportingOverflow(length)
        guard !o, end <= maxFileSize else { throw .fileTooBig }
        return (end, keepSize, punch, zero)
    }

    /// The inode fallocate works on: a regular file its flags let `mode` change.
    func loadForFallocate(_ ino: UInt32, mode: UInt32) throws(Ext4Error) -> MInode {
        let m = try loadInode(ino)
        guard m.fileType == .regular else { throw m.isDir ? .isDirectory : .invalid("not a file") }
        try m.mayFallocate(mode: mode)
        return m
    }

    /// FALLOCATE as one operation. `mapOnly`: the caller zeroes partial
    /// blocks itself (iomap), so PUNCH_HOLE and ZERO_RANGE change whole
    /// blocks of the map only (`fallocateMapped`).
    /// FALLOCATE as one operation. With `killSuidgid` (a caller without
    /// CAP_FSETID) it clears the set-ID bits, as ext4 does for every
    /// fallocate mode; returns whether it did.
    @discardableResult
    public func fallocate(_ ino: UInt32, mode: UInt32, offset: UInt64, length: UInt64,
                          mapOnly: Bool = false, killSuidgid: Bool = false, callerGid: UInt32? = nil) throws(Ext4Error) -> Bool {
        if mapOnly { try fallocateMapped(ino, mode: mode, offset: offset, length: length); return false }
        return try withHandle { () throws(Ext4Error) -> Bool in
            let w = try wstate
            let (end, keepSize, punch, zero) = try checkFallocate(mode: mode, offset: offset, length: length)
            var cleared = false
            try w.inodeLocks.withLock(UInt64(ino)) { () throws(Ext4Error) in
                var m = try loadForFallocate(ino, mode: mode)
                // Every way out below stores `m`.
                if killSuidgid, let k = Ext4FileSystem.suidgidKilled(m.mode, fileGid: m.gid, callerGid: callerGid) {
                    m.mode = k; cleared = true
                }
                if m.hasInline { try convertInlineFile(&m) }
                // Block maps cannot describe unwritten blocks: like the kernel, only
                // PUNCH_HOLE works on them.
                guard m.hasExtents || punch else { throw .unsupported("fallocate mode \(mode) on a block-mapped file") }
                let bs = UInt64(blockSize)
                var exts = try allExtents(m)
                let meta = try mapMetaBlocks(m)
                if punch || zero {
                    // Zero partial edges, drop whole blocks inside.
                    let fb = (offset + bs - 1) / bs, lb = end / bs
                    if offset % bs != 0 { try zeroBytes(exts, from: offset, to: min(end, fb * bs)) }
                    if end % bs != 0 && lb * bs >= offset { try zeroBytes(exts, from: max(offset, lb * bs), to: end) }
                    if lb > fb {
                        let removed = Ext4FileSystem.cut(&exts, from: fb, count: lb - fb)
                        if zero {
                            // Reuse the blocks as unwritten extents.
                            for x in removed { Ext4FileSystem.put(&exts, Extent(logical: x.logical, physical: x.physical, length: x.length, unwritten: true)) }
                        } else {
                            try storeMap(&m, exts, oldMeta: meta)
                            for x in removed { try freeBlocks(x.physical, x.length) }
                            m.setTime(.mtime, nowSpec()); m.setTime(.ctime, nowSpec())
                            m.bumpVersion()
                            try storeInode(m)
                            return
                        }
                    }
                    if !zero { try storeMap(&m, exts, oldMeta: meta); try storeInode(m); return }
                }
                // Allocate unwritten extents over holes in [offset, end).
                let first = offset / bs, last = (end - 1) / bs
                var allocated: [Extent] = []
                do throws(Ext4Error) {
                    var l = first
                    while l <= last {
                        let covered = exts.first { l >= $0.logical && l < $0.logical + $0.length }
                        if let x = covered { l = x.logical + x.length; continue }
                        var e = l
                        while e <= last && !exts.contains(where: { e >= $0.logical && e < $0.logical + $0.length }) { e += 1 }
                        var cur = l
                        while cur < e {
                            let (p, got) = try allocBlocks(goal: goalFor(exts, cur, m), count: Int(min(e - cur, 32767)))
                            let x = Extent(logical: cur, physical: p, length: UInt64(got), unwritten: true)
                            allocated.append(x)
                            Ext4FileSystem.put(&exts, x)
                            cur += UInt64(got)
                        }
                        l = e
                    }
                    try storeMap(&m, exts, oldMeta: meta)
                } catch {
                    for x in allocated { try? freeBlocks(x.physical, x.length) }
                    throw error
                }
                if !keepSize && end > m.size { m.size = end }
                let now = nowSpec()
                m.setTime(.ctime, now)
                if zero { m.setTime(.mtime, now) }
                m.bumpVersion()
                try storeInode(m)
            }
            return cleared
        }
    }
}
