// Directories: linear blocks, htree index, inline data.

/// A live directory entry as the read side returns it: where its record
/// starts, and the record's fields with its name.
struct RawDirent {
    let off: Int
    let ino: UInt32
    let recLen: Int
    let name: [UInt8]
    let ftype: UInt8
}

private let dot: [UInt8] = [0x2E]
private let dotdot: [UInt8] = [0x2E, 0x2E]

extension Ext4FileSystem {
    /// Directory blocks fetched per positioned read when not cached.
    static let dirReadahead: UInt64 = 16

    func decodeRecLen(_ v: UInt16) -> Int { DirEntryRecord.decodeRecLen(v, blockSize: blockSize) }

    /// Walk every record, live or unused, in `[start, end)` of `b`,
    /// validating each (header inside, rec_len shape, inode number in range),
    /// and call `visit(offset, record)` until it returns false. The one
    /// parser of directory blocks, for the read and the write side.
    func walkDirRecords(_ b: [UInt8], start: Int, end: Int, what: @autoclosure () -> String,
                        _ visit: (Int, DirEntryRecord) -> Bool) throws(Ext4Error) {
        let end = min(end, b.count)
        var off = max(0, start)
        while off < end {
            guard off + DirEntryRecord.headerSize <= end,
                  let d = try? DirEntryRecord(decoding: b, at: off, blockSize: blockSize) else {
                throw corrupt("\(what()): directory entry header past end at \(off)")
            }
            guard d.fits(at: off, end: end) else {
                throw corrupt("\(what()): bad rec_len \(d.recLen) at offset \(off)")
            }
            guard d.inode <= sb.inodesCount else { throw corrupt("\(what()): inode \(d.inode) out of range at offset \(off)") }
            if !visit(off, d) { return }
            off += d.recLen
        }
    }

    /// Walk the live dirents (inode != 0, non-empty name) in `[start, end)`
    /// of `b` until `visit` returns false. Allocates nothing.
    func scanDirents(_ b: [UInt8], start: Int, end: Int, what: @autoclosure () -> String,
                     _ visit: (Int, DirEntryRecord) -> Bool) throws(Ext4Error) {
        try walkDirRecords(b, start: start, end: end, what: what()) { off, d in
            d.inode == 0 || d.nameLen == 0 || visit(off, d)
        }
    }

    /// Parse dirents in `[start, end)` of `b`, validating every record.
    func parseDirents(_ b: [UInt8], start: Int, end: Int, what: @autoclosure () -> String) throws(Ext4Error) -> [RawDirent] {
        var out: [RawDirent] = []
        try scanDirents(b, start: start, end: end, what: what()) { off, d in
            if let name = d.name(in: b, at: off) {
                out.append(RawDirent(off: off, ino: d.inode, recLen: d.recLen, name: name, ftype: d.fileType))
            }
            return true
        }
        return out
    }

    /// The inode `name` points to in one directory block, or nil; validates
    /// the block as `direntsOfBlock` does but compares names in place.
    func findInBlock(_ ri: RawInode, _ b: [UInt8], logical: UInt64, name: [UInt8]) throws(Ext4Error) -> UInt32? {
        guard let (start, end) = try direntArea(ri, b, logical: logical) else { return nil }
        var found: UInt32?
        try scanDirents(b, start: start, end: end, what: "directory \(ri.ino) block \(logical)") { off, d in
            if d.nameEquals(name, in: b, at: off) { found = d.inode; return false }
            return true
        }
        return found
    }

    /// The byte range of dirents in a directory block (after checking its
    /// checksum tail), or nil for an htree index node.
    private func direntArea(_ ri: RawInode, _ b: [UInt8], logical: UInt64) throws(Ext4Error) -> (Int, Int)? {
        guard b.count >= blockSize else { throw corrupt("directory \(ri.ino) block \(logical): short block") }
        if isIndexed(ri) {
            // dx root: "." and ".." followed by index data inside ".."'s record.
            if logical == 0 { return (0, blockSize) }
            if DxBlock.isNode(b, blockSize: blockSize) { return nil }
        }
        var end = blockSize
        if sb.metadataCsum {
            guard DirLeafTail.isPresent(b, blockSize: blockSize) else {
                throw corrupt("directory \(ri.ino) block \(logical): missing directory leaf checksum tail")
            }
            guard DirLeafTail.matches(b, blockSize: blockSize, seed: ri.seed) else {
                throw corrupt("directory \(ri.ino) block \(logical): directory block checksum mismatch")
            }
            end = blockSize - DirLeafTail.size
        }
        return (0, end)
    }

    func isIndexed(_ ri: RawInode) -> Bool {
        sb.has(compat: Compat.dirIndex) && ri.flags & InodeFlag.index != 0
    }

    /// Entries of one directory block, honouring dx blocks and leaf tails.
    func direntsOfBlock(_ ri: RawInode, _ b: [UInt8], logical: UInt64) throws(Ext4Error) -> [RawDirent] {
        guard let (start, end) = try direntArea(ri, b, logical: logical) else { return [] }
        return try parseDirents(b, start: start, end: end, what: "directory \(ri.ino) block \(logical)")
    }

    func dirBlockCount(_ ri: RawInode) -> UInt64 {
        (ri.pub.size + UInt64(blockSize) - 1) / UInt64(blockSize)
    }

    func entryType(_ d: RawDirent) -> FileType {
        if sb.has(incompat: Incompat.filetype) { return FileType(direntType: d.ftype) }
        return (try? rawInode(d.ino).pub.fileType) ?? .unknown
    }

    private static func goodName(_ n: [UInt8]) -> Bool { !n.contains(0) && !n.contains(0x2F) }

    // ---- readdir -----------------------------------------------------------------------

    /// Enumerate `dir` from `cookie` (0 = start). Entries come in on-disk block
    /// order with "." and ".." first; `nextCookie` resumes after an entry.
    /// `body` returns false to stop.
    public func readDirectory(_ dir: UInt32, from cookie: UInt64, _ body: (DirEntry) -> Bool) throws(Ext4Error) {
        // The callback runs with no lock held (it may stat the entries, which
        // takes their inode locks): gather a batch under the directory's lock,
        // release it, hand the batch out, and continue from the batch's cookie.
        let batchSize = 256
        var next = cookie
        while true {
            var batch: [DirEntry] = []
            try readDirectoryLocked(dir, from: next) { e in
                batch.append(e)
                return batch.count < batchSize
            }
            for e in batch where !body(e) { return }
            guard batch.count == batchSize, let last = batch.last else { return }
            next = last.nextCookie
        }
    }

    private func readDirectoryLocked(_ dir: UInt32, from cookie: UInt64, _ body: (DirEntry) -> Bool) throws(Ext4Error) {
        try withReadLock(dir) { () throws(Ext4Error) -> Void in
            let ri = try rawInode(dir)
            guard ri.isDir else { throw .notDirectory }
            if ri.hasInline {
                try readInlineDirectory(ri, from: cookie, body)
                return
            }
            let bs = UInt64(blockSize)
            let nblocks = dirBlockCount(ri)
            let startBlock = cookie / bs
            let startOff = Int(cookie % bs)
            guard startBlock < nblocks else { return }
            let maps = try mapRange(ri, from: startBlock, count: nblocks - startBlock)
            for x in maps where !x.unwritten {
                var i: UInt64 = 0
                while i < x.length {
                    let run = try blockRun(x.physical + i, Int(min(Ext4FileSystem.dirReadahead, x.length - i)))
                    for (k, b) in run.enumerated() {
                        let l = x.logical + i + UInt64(k)
                        for d in try direntsOfBlock(ri, b, logical: l) {
                            if l == startBlock && d.off < startOff { continue }
                            guard Ext4FileSystem.goodName(d.name) else { continue }
                            let e = DirEntry(ino: d.ino, name: d.name, type: entryType(d),
                                             nextCookie: l * bs + UInt64(d.off + d.recLen))
                            if !body(e) { return }
                        }
                    }
                    i += UInt64(run.count)
                }
            }
        }
    }

    private func readInlineDirectory(_ ri: RawInode, from cookie: UInt64, _ body: (DirEntry) -> Bool) throws(Ext4Error) {
        let data = try inlineData(ri)
        let parent = data.le32(0)
        guard parent >= 1, parent <= sb.inodesCount else { throw corrupt("inline directory \(ri.ino): bad parent \(parent)") }
        if cookie == 0 {
            if !body(DirEntry(ino: ri.ino, name: dot, type: .directory, nextCookie: 1)) { return }
        }
        if cookie <= 1 {
            if !body(DirEntry(ino: parent, name: dotdot, type: .directory, nextCookie: 4)) { return }
        }
        for d in try inlineDirents(ri, data) where UInt64(d.off) >= cookie {
            guard Ext4FileSystem.goodName(d.name) else { continue }
            if !body(DirEntry(ino: d.ino, name: d.name, type: entryType(d), nextCookie: UInt64(d.off + d.recLen))) {
                return
            }
        }
    }

    private func inlineDirents(_ ri: RawInode, _ data: [UInt8]) throws(Ext4Error) -> [RawDirent] {
        let what = "inline directory \(ri.ino)"
        var out = try parseDirents(data, start: 4, end: min(60, data.count), what: what)
        if data.count > 60 {
            out += try parseDirents(data, start: 60, end: data.count, what: what)
        }
        return out
    }

    // ---- lookup --------------------------------------------------------------------------

    /// Find `name` in directory `dir`. Throws `.notFound` when absent and
    /// `.corrupted` when the entry names an inode that cannot be a file
    /// (reserved or out of range), as the kernel does.
    public func lookup(dir: UInt32, name: [UInt8]) throws(Ext4Error) -> UInt32 {
        try withReadLock(dir) { () throws(Ext4Error) -> UInt32 in
            guard !name.isEmpty else { throw .invalid("empty name") }
            let ri = try rawInode(dir)
            guard ri.isDir else { throw .notDirectory }
            guard name.count <= 255 else { throw .notFound }
            if ri.hasInline {
                if name == dot { return dir }
                let data = try inlineData(ri)
                if name == dotdot {
                    let p = data.le32(0)
                    guard p >= 1, p <= sb.inodesCount else { throw corrupt("inline directory \(dir): bad parent \(p)") }
                    return p
                }
                for d in try inlineDirents(ri, data) where d.name == name { return d.ino }
                throw .notFound
            }
            let nblocks = dirBlockCount(ri)
            if name == dot || name == dotdot {
                return try linearLookup(ri, name: name, blocks: min(1, nblocks))
            }
            if isIndexed(ri) {
                switch try htreeLookup(ri, name: name, nblocks: nblocks) {
                case .found(let ino): stats.htree(); return ino
                case .notFound: stats.htree(); throw .notFound
                case .bad(let why):
                    clog.report("directory \(dir): bad htree index (\(why)); falling back to linear search")
                }
            }
            return try linearLookup(ri, name: name, blocks: nblocks)
        }
    }

    /// The bad-blocks inode: no directory entry may name it.
    static let badBlocksIno: UInt32 = 1

    /// LOOKUP: the inode `name` in `dir` names. Names longer than ext4
    /// allows are `.nameTooLong`; an entry naming the bad-blocks inode is
    /// corruption.
    public func lookupInode(dir: UInt32, name: [UInt8]) throws(Ext4Error) -> Inode {
        guard name.count <= 255 else { throw .nameTooLong }
        let ino = try lookup(dir: dir, name: name)
        guard ino != Ext4FileSystem.badBlocksIno else {
            throw corrupt("directory \(dir) names inode 1 (the bad-blocks inode)")
        }
        return try inode(ino)
    }

    private func linearLookup(_ ri: RawInode, name: [UInt8], blocks: UInt64) throws(Ext4Error) -> UInt32 {
        stats.linear()
        guard blocks > 0 else { throw .notFound }
        for x in try mapRange(ri, from: 0, count: blocks) where !x.unwritten {
            var i: UInt64 = 0
            while i < x.length {
                let run = try blockRun(x.physical + i, Int(min(Ext4FileSystem.dirReadahead, x.length - i)))
                for (k, b) in run.enumerated() {
                    if let ino = try findInBlock(ri, b, logical: x.logical + i + UInt64(k), name: name) { return ino }
                }
                i += UInt64(run.count)
            }
        }
        throw .notFound
    }

    enum DxResult { case found(UInt32), notFound, bad(String) }

    private struct DxFrame {
        var block: [UInt8]
        var entries: Int // byte offset of the count/limit header
        var count: Int
        var at: Int
        // checkNode keeps every entry below count inside the block.
        func entry(_ i: Int) -> DxEntry { (try? DxEntry(decoding: block, entries: entries, index: i)) ?? DxEntry(hash: 0, block: 0) }
        func hash(_ i: Int) -> UInt32 { entry(i).hash }
        func child(_ i: Int) -> UInt64 { UInt64(entry(i).block) }
    }

    private func htreeLookup(_ ri: RawInode, name: [UInt8], nblocks: UInt64) throws(Ext4Error) -> DxResult {
        guard nblocks > 0 else { return .bad("empty") }
        let maps = try mapRange(ri, from: 0, count: nblocks)
        func phys(_ l: UInt64) -> UInt64? {
            guard let m = maps.run(covering: l), !m.unwritten else { return nil }
            return m.physical + (l - m.logical)
        }
        guard let p0 = phys(0) else { return .bad("hole at block 0") }
        let root = try block(p0)
        // "." (rec_len 12), then ".." covering the rest of the block, then dx_root_info.
        let dotdotAt = DirEntryRecord.minSize
        guard let dotRec = try? DirEntryRecord(decoding: root, at: 0, blockSize: blockSize),
              dotRec.recLen == DirEntryRecord.minSize, dotRec.nameEquals(dot, in: root, at: 0),
              let dd = try? DirEntryRecord(decoding: root, at: dotdotAt, blockSize: blockSize),
              dd.recLen == blockSize - dotdotAt, dd.nameLen == 2,
              let info = try? DxRootInfo(decoding: root) else {
            return .bad("bad dx root dirents")
        }
        var version = Int(info.hashVersion)
        let levels = Int(info.indirectLevels)
        guard version <= DirHash.tea else { return .bad("unsupported hash version \(version)") }
        guard info.infoLength == DxRootInfo.length, info.unusedFlags & 1 == 0 else { return .bad("bad dx root info") }
        guard levels < (sb.has(incompat: Incompat.largeDir) ? 3 : 2) else { return .bad("too many levels \(levels)") }
        if hashUnsigned { version += 3 }
        guard let target = DirHash.hash(name, version: version, seed: sb.hashSeed) else { return .bad("hash") }

        func checkNode(_ b: [UInt8], entries: Int, what: String) throws(Ext4Error) -> DxFrame? {
            guard let cl = try? DxCountLimit(decoding: b, at: entries) else { return nil }
            let limit = Int(cl.limit), count = Int(cl.count)
            guard limit == DxBlock.limit(blockSize: blockSize, entries: entries, tail: sb.metadataCsum),
                  count >= 1, count <= limit else { return nil }
            if sb.metadataCsum {
                guard DxTail.expected(b, entries: entries, seed: ri.seed) != nil else { return nil }
                guard DxTail.matches(b, entries: entries, seed: ri.seed) else {
                    throw corrupt("directory \(ri.ino): htree \(what) checksum mismatch")
                }
            }
            return DxFrame(block: b, entries: entries, count: count, at: 0)
        }
        func search(_ f: inout DxFrame) {
            var lo = 1, hi = f.count - 1, best = 0
            while lo <= hi {
                let mid = (lo + hi) / 2
                if f.hash(mid) <= target { best = mid; lo = mid + 1 } else { hi = mid - 1 }
            }
            f.at = best
        }
        guard var rootFrame = try checkNode(root, entries: DxBlock.rootEntries, what: "root") else { return .bad("bad root limit/count") }
        search(&rootFrame)
        var frames = [rootFrame]
        // Descend from frames.last to a leaf, choosing entries by hash (or the first entry).
        func descend(_ frames: inout [DxFrame], byHash: Bool) throws(Ext4Error) -> UInt64? {
            while frames.count <= levels {
                guard let f = frames.last else { return nil }
                let l = f.child(f.at)
                guard l < nblocks, let p = phys(l) else { return nil }
                let b = try block(p)
                guard DxBlock.isNode(b, blockSize: blockSize),
                      var nf = try checkNode(b, entries: DxBlock.nodeEntries, what: "node \(l)") else { return nil }
                if byHash { search(&nf) } else { nf.at = 0 }
                frames.append(nf)
            }
            guard let f = frames.last else { return nil }
            return f.child(f.at)
        }
        guard var leaf = try descend(&frames, byHash: true) else { return .bad("bad index node") }
        var steps: UInt64 = 0
        while true {
            steps += 1
            if steps > nblocks + 1 { return .bad("htree loop") }
            guard leaf < nblocks, let p = phys(leaf) else { return .bad("leaf \(leaf) unmapped") }
            let b = try block(p)
            if let ino = try findInBlock(ri, b, logical: leaf, name: name) { return .found(ino) }
            // Hash collisions may continue in the next leaf.
            var level = frames.count - 1
            while level >= 0 && frames[level].at + 1 >= frames[level].count { level -= 1 }
            guard level >= 0 else { return .notFound }
            let nextHash = frames[level].hash(frames[level].at + 1)
            guard nextHash & ~1 == target else { return .notFound }
            frames[level].at += 1
            frames.removeSubrange((level + 1)...)
            guard let nl = try descend(&frames, byHash: false) else { return .bad("bad index node") }
            leaf = nl
        }
    }
}
