// The write half of the test kernel, modelled on fs/iomap and the FUSE iomap
// series (fuse-iomap-protocol.md §12):
//
// - buffered writes go into the page cache; each iteration asks for a
//   mapping with OP_WRITE (which must be MAPPED or UNWRITTEN), partial blocks
//   outside the write are read in (zeroes for holes, unwritten blocks and
//   anything past EOF), and an END is sent when the write grew i_size;
// - writeback maps dirty ranges with OP_WRITEBACK, writes the device (the
//   part of the EOF block past i_size as zeroes), merges contiguous
//   completions and sends IOEND with UNWRITTEN/APPEND as fs/iomap computes
//   them; the reply becomes the on-disk size;
// - direct writes write back and drop the page cache over the range, map with
//   OP_WRITE|OP_DIRECT, write the device and end with one IOEND;
// - truncate and fallocate zero partial blocks through the page cache with
//   OP_ZERO (holes and unwritten blocks are skipped unless cached pages
//   cover them), write the file back, then send SETATTR/FALLOCATE, and
//   invalidate the mapping cache where the kernel does (§11.3).
//
// Inodes instantiated without FUSE_ATTR_IOMAP (inline data) use FUSE_WRITE
// and FUSE_READ, as the kernel would until it evicts them.

import Ext4Engine
import Ext4Fuse
import Ext4Server
import Foundation
import FuseKernel
import Glibc

extension IomapKernel {
    // MARK: namespace

    func create(_ path: String, mode: UInt32 = 0o644) throws -> FuseEntryOut {
        let (dir, name) = try parentOf(path)
        let p = try ok(.create(FuseCreateIn(flags: UInt32(O_RDWR), mode: UInt32(S_IFREG) | mode, umask: 0),
                               name: Array(name.utf8)), node: dir)
        let e = try FuseEntryOut.decode(Array(p.prefix(128)))
        instantiate(e)
        return e
    }

    func mkdir(_ path: String, mode: UInt32 = 0o755) throws -> FuseEntryOut {
        let (dir, name) = try parentOf(path)
        let e = try FuseEntryOut.decode(try ok(.mkdir(FuseMkdirIn(mode: mode, umask: 0), name: Array(name.utf8)), node: dir))
        instantiate(e)
        return e
    }

    /// unlink(2); the inode is evicted (FORGET) if this was its last name.
    func unlink(_ path: String) throws {
        let victim = try? lookup(path)
        let (dir, name) = try parentOf(path)
        _ = try ok(.unlink(name: Array(name.utf8)), node: dir)
        if let v = victim, v.attr.nlink <= 1 { evict(v.nodeid) }
    }

    func rename(_ from: String, _ to: String) throws {
        let victim = try? lookup(to)
        let (d1, n1) = try parentOf(from)
        let (d2, n2) = try parentOf(to)
        _ = try ok(.rename(newdir: d2, flags: 0, oldName: Array(n1.utf8), newName: Array(n2.utf8)), node: d1)
        if let v = victim, v.attr.nlink <= 1, v.attr.mode & 0xF000 == 0x8000 { evict(v.nodeid) }
    }

    /// FORGET gets no reply: poll with STATFS until `cond` holds (notifications
    /// sent meanwhile are processed), at most 5 s.
    func waitFor(_ cond: () -> Bool) throws {
        for _ in 0..<500 where !cond() {
            _ = try ok(.statfs, node: FuseABI.rootID)
            if cond() { return }
            usleep(10_000)
        }
    }

    func parentOf(_ path: String) throws -> (UInt64, String) {
        var comps = path.split(separator: "/").map(String.init)
        guard let name = comps.popLast() else { throw FuseFailure(errno: EINVAL) }
        let dir = comps.isEmpty ? FuseABI.rootID : try lookup(comps.joined(separator: "/")).nodeid
        return (dir, name)
    }

    func getattr(_ e: FuseEntryOut) throws -> FuseAttr {
        try FuseAttrOut.decode(try ok(.getattr(FuseGetattrIn()), node: e.nodeid)).attr
    }

    // MARK: page cache helpers

    var ps: UInt64 { Self.pageSize }

    /// Contents of blocks [from, to) that a page needs but a write does not cover:
    /// what a read would see (zeroes past EOF, for holes and unwritten blocks).
    private func readBlocks(_ e: FuseEntryOut, from: UInt64, to: UInt64, hint: FuseIomapIo?) throws -> [UInt8] {
        let isize = size(e)
        var out = [UInt8](repeating: 0, count: Int(to - from))
        var p = from
        while p < to {
            let bend = min(to, (p / blockSize + 1) * blockSize)
            if p < isize {
                var m: FuseIomapIo
                if let h = hint, h.offset <= p, p < h.offset + h.length { m = h } else {
                    m = try map(e, op: [], pos: p, count: to - p)
                }
                if m.type == MType.mapped.rawValue && m.flags & FuseIomap.MappingFlags.new.rawValue == 0 {
                    let b = try readDev(m.addr + (p - m.offset), Int(bend - p))
                    out.replaceSubrange(Int(p - from)..<Int(bend - from), with: b)
                }
            }
            p = bend
        }
        return out
    }

    func readDev(_ addr: UInt64, _ n: Int) throws -> [UInt8] {
        var buf = [UInt8](repeating: 0, count: n)
        let r = buf.withUnsafeMutableBytes { pread(deviceFD, $0.baseAddress, n, off_t(addr)) }
        guard r == n else { throw FuseFailure(errno: EIO) }
        return buf
    }

    func writeDev(_ addr: UInt64, _ b: ArraySlice<UInt8>) throws {
        let r = b.withUnsafeBytes { pwrite(deviceFD, $0.baseAddress, $0.count, off_t(addr)) }
        guard r == b.count else { throw FuseFailure(errno: EIO) }
    }

    /// Make page `k` present and up to date; blocks inside [wfrom, wto) are about
    /// to be overwritten and are not read. `m` is the current mapping.
    private func ensurePage(_ e: FuseEntryOut, _ k: UInt64, wfrom: UInt64, wto: UInt64, m: FuseIomapIo?) throws {
        if pages[e.nodeid]?[k] != nil { return }
        var page = [UInt8](repeating: 0, count: Int(ps))
        let bs = blockSize
        var b = k * ps
        while b < (k + 1) * ps {
            let be = b + bs
            if !(wfrom <= b && be <= wto) {
                let bytes = try readBlocks(e, from: b, to: be, hint: m)
                page.replaceSubrange(Int(b - k * ps)..<Int(be - k * ps), with: bytes)
            }
            b = be
        }
        pages[e.nodeid, default: [:]][k] = page
    }

    /// Copy `data` to [pos, pos+data.count) of the page cache and mark it dirty.
    private func copyIn(_ e: FuseEntryOut, _ pos: UInt64, _ data: ArraySlice<UInt8>, m: FuseIomapIo?) throws {
        let end = pos + UInt64(data.count)
        var p = pos
        while p < end {
            let k = p / ps
            let pe = min(end, (k + 1) * ps)
            try ensurePage(e, k, wfrom: pos, wto: end, m: m)
            let o = Int(p - k * ps)
            let src = data.startIndex + Int(p - pos)
            pages[e.nodeid]?[k]?.replaceSubrange(o..<(o + Int(pe - p)), with: data[src..<(src + Int(pe - p))])
            dirty[e.nodeid, default: []].insert(k)
            p = pe
        }
    }

    /// Bytes past i_size in cached pages are zero (truncate_pagecache, writeback).
    private func zeroPagesPast(_ node: UInt64, _ isize: UInt64) {
        guard let pg = pages[node] else { return }
        for (k, var page) in pg where (k + 1) * ps > isize {
            if k * ps >= isize {
                pages[node]?[k] = nil
                dirty[node]?.remove(k)
            } else {
                let o = Int(isize - k * ps)
                page.replaceSubrange(o..<page.count, with: repeatElement(0, count: page.count - o))
                pages[node]?[k] = page
            }
        }
    }

    /// Drop cached pages overlapping [from, to) (after writing them back).
    func dropPages(_ node: UInt64, from: UInt64, to: UInt64) {
        guard to > from else { return }
        for k in (pages[node] ?? [:]).keys where k * ps < to && (k + 1) * ps > from {
            pages[node]?[k] = nil
            dirty[node]?.remove(k)
        }
    }

    // MARK: buffered writes

    /// write(2) without O_DIRECT.
    func bufferedWrite(_ e: FuseEntryOut, offset: UInt64, _ data: [UInt8]) throws {
        guard !data.isEmpty else { return }
        guard var k = inodes[e.nodeid] else { throw FuseFailure(errno: ESTALE) }
        guard k.iomap else { return try classicWrite(e, offset: offset, data) }
        let end = offset + UInt64(data.count)
        guard end <= maxBytes else { throw FuseFailure(errno: EFBIG) }
        // Writing past EOF: zero old EOF..pos first.
        if offset > k.isize { try zeroRange(e, from: k.isize, to: offset) }
        var pos = offset
        while pos < end {
            var m = try map(e, op: .write, pos: pos, count: end - pos)
            let stop = min(m.offset + m.length, end)
            let s = Int(pos - offset)
            try copyIn(e, pos, data[s..<(s + Int(stop - pos))], m: m)
            k = inodes[e.nodeid] ?? k
            if stop > k.isize {
                k.isize = stop
                inodes[e.nodeid] = k
                // iomap_end: the write grew i_size.
                m.flags |= FuseIomap.MappingFlags.sizeChanged.rawValue
                try end_(e, op: .write, pos: pos, count: stop - pos, written: stop - pos, map: m)
            }
            pos = stop
        }
        // balance_dirty_pages: write back when too much is dirty.
        let dirtyPages = dirty.values.reduce(0) { $0 + $1.count }
        if UInt64(dirtyPages) * ps > dirtyLimit { try writebackAll() }
    }

    /// FUSE_IOMAP_END, unless the server said ENOSYS once.
    private func end_(_ e: FuseEntryOut, op: OpFlags, pos: UInt64, count: UInt64, written: UInt64, map m: FuseIomapIo) throws {
        if noEnd { return }
        let a = FuseIomapEndIn(opflags: op.rawValue, attrIno: e.attr.ino, pos: pos, count: count,
                               written: Int64(written), map: m)
        let (err, p) = try call(.iomapEnd(a), node: e.nodeid)
        if err == -ENOSYS { noEnd = true; return }
        guard err == 0 else { throw FuseFailure(errno: -err) }
        guard p.isEmpty else { throw MappingRejected(description: "END reply with a payload") }
    }

    /// FUSE_WRITE for an inode on the classic path.
    func classicWrite(_ e: FuseEntryOut, offset: UInt64, _ data: [UInt8]) throws {
        var done = 0
        while done < data.count {
            let n = min(data.count - done, 128 << 10)
            let chunk = Array(data[done..<(done + n)])
            let p = try ok(.write(FuseWriteIn(fh: 0, offset: offset + UInt64(done), size: UInt32(n)), data: chunk), node: e.nodeid)
            let w = try FuseWriteOut.decode(p)
            guard w.size > 0 else { throw FuseFailure(errno: EIO) }
            done += Int(w.size)
        }
        if var k = inodes[e.nodeid] {
            k.isize = max(k.isize, offset + UInt64(data.count))
            k.diskSize = k.isize
            inodes[e.nodeid] = k
        }
    }

    // MARK: writeback

    func writebackAll() throws {
        for node in dirty.keys.sorted() where !(dirty[node] ?? []).isEmpty {
            guard let k = inodes[node] else { continue }
            let e = FuseEntryOut(nodeid: node, attr: FuseAttr(ino: k.attrIno, size: k.isize, mode: k.mode))
            try writeback(e)
        }
    }

    /// Write back the dirty pages of [from, to) of one file.
    func writeback(_ e: FuseEntryOut, from: UInt64 = 0, to: UInt64 = .max) throws {
        guard let k = inodes[e.nodeid], k.iomap else { return }
        let d = (dirty[e.nodeid] ?? []).filter { $0 * ps < to && ($0 + 1) * ps > from }.sorted()
        guard !d.isEmpty else { return }
        let bs = blockSize
        let eofBlockEnd = (k.isize + bs - 1) / bs * bs
        struct Ioend { var pos: UInt64; var len: UInt64; var addr: UInt64; var unwritten: Bool }
        var ioends: [Ioend] = []
        var i = 0
        while i < d.count {
            var j = i
            while j + 1 < d.count && d[j + 1] == d[j] + 1 { j += 1 }
            let rfrom = d[i] * ps
            let rto = min((d[j] + 1) * ps, eofBlockEnd)
            var pos = rfrom
            while pos < rto {
                let m = try map(e, op: .writeback, pos: pos, count: rto - pos)
                guard m.type == MType.mapped.rawValue || m.type == MType.unwritten.rawValue else {
                    throw MappingRejected(description: "writeback got type \(m.type) at \(pos)")
                }
                let stop = min(m.offset + m.length, rto)
                // The page cache bytes of [pos, stop), zero past i_size.
                var bytes = [UInt8]()
                bytes.reserveCapacity(Int(stop - pos))
                var p = pos
                while p < stop {
                    let kk = p / ps
                    let pe = min(stop, (kk + 1) * ps)
                    let o = Int(p - kk * ps)
                    if let page = pages[e.nodeid]?[kk] { bytes += page[o..<(o + Int(pe - p))] } else {
                        // A clean page missing from a dirty run cannot happen; be safe.
                        bytes += try readBlocks(e, from: p, to: pe, hint: m)
                    }
                    p = pe
                }
                if k.isize < stop && k.isize >= pos {
                    let z = Int(k.isize - pos)
                    bytes.replaceSubrange(z..<bytes.count, with: repeatElement(0, count: bytes.count - z))
                }
                let addr = m.addr + (pos - m.offset)
                try writeDev(addr, bytes[...])
                let written = min(stop, k.isize) > pos ? min(stop, k.isize) - pos : 0
                let unwritten = m.type == MType.unwritten.rawValue
                if var last = ioends.last, last.pos + last.len == pos, last.addr + last.len == addr,
                   last.unwritten == unwritten, written > 0, last.len % bs == 0 {
                    last.len += written
                    ioends[ioends.count - 1] = last
                } else if written > 0 {
                    ioends.append(Ioend(pos: pos, len: written, addr: addr, unwritten: unwritten))
                }
                pos = stop
            }
            i = j + 1
        }
        for pg in d { dirty[e.nodeid]?.remove(pg) }
        for io in ioends {
            var flags: FuseIomap.IoendFlags = [.writeback]
            if io.unwritten { flags.insert(.unwritten) }
            try ioend(e, flags: flags, pos: io.pos, written: io.len, addr: io.addr)
        }
    }

    /// Completion of a write: IOEND when fs/iomap would send one (§5.3).
    func ioend(_ e: FuseEntryOut, flags f: FuseIomap.IoendFlags, pos: UInt64, written: UInt64, addr: UInt64) throws {
        guard var k = inodes[e.nodeid] else { return }
        var flags = f
        if pos + written > k.diskSize { flags.insert(.append) }
        guard !noIoend, written > 0, !flags.isDisjoint(with: [.shared, .unwritten, .append]) else { return }
        let a = FuseIomapIoendIn(flags: flags.rawValue, error: 0, attrIno: e.attr.ino, pos: pos,
                                 newAddr: flags.contains(.direct) ? FuseIomap.nullAddr : addr / 512, written: written,
                                 dev: flags.contains(.direct) ? 0 : 1)
        let (err, p) = try call(.iomapIoend(a), node: e.nodeid)
        if err == -ENOSYS { noIoend = true; return }
        guard err == 0 else { throw FuseFailure(errno: -err) }
        guard p.count == 8 else { throw MappingRejected(description: "IOEND reply \(p.count) bytes, not 8") }
        let newSize = try FuseIomapIoendOut.decode(p).newsize
        guard newSize >= k.diskSize else {
            throw MappingRejected(description: "IOEND newsize \(newSize) below the on-disk size \(k.diskSize)")
        }
        if flags.contains(.append) && newSize < pos + written {
            throw MappingRejected(description: "APPEND IOEND newsize \(newSize) < \(pos + written)")
        }
        k.diskSize = newSize
        k.isize = max(k.isize, pos + written)
        inodes[e.nodeid] = k
        invalidate(e.nodeid, from: pos, length: written)
    }

    /// One FUSE_IOMAP_IOEND exactly as given (no APPEND computed, no state
    /// updated), e.g. for an IO that failed (`error` < 0): the reply's errno
    /// (0 on success) and, on success, the newsize of its 8-byte payload.
    func rawIoend(_ e: FuseEntryOut, flags: FuseIomap.IoendFlags, error: Int32, pos: UInt64, written: UInt64,
                  addr: UInt64 = FuseIomap.nullAddr, dev: UInt32 = 0) throws -> (errno: Int32, newsize: UInt64?) {
        let a = FuseIomapIoendIn(flags: flags.rawValue, error: error, attrIno: e.attr.ino, pos: pos,
                                 newAddr: addr, written: written, dev: dev)
        let (err, p) = try call(.iomapIoend(a), node: e.nodeid)
        if err != 0 { return (-err, nil) }
        guard p.count == 8 else { throw MappingRejected(description: "IOEND reply \(p.count) bytes, not 8") }
        return (0, try FuseIomapIoendOut.decode(p).newsize)
    }

    /// fsync(2): write back, then FUSE_FSYNC.
    func fsync(_ e: FuseEntryOut) throws {
        try writeback(e)
        _ = try ok(.fsync(FuseFsyncIn()), node: e.nodeid)
    }

    /// sync(2): write everything back, then SYNCFS.
    func syncfs() throws {
        try writebackAll()
        _ = try ok(.syncfs(FuseSyncfsIn()), node: FuseABI.rootID)
    }

    /// umount: write back, flush, FORGET everything, DESTROY; the server is done after this.
    func unmount() throws {
        try syncfs()
        for node in Array(inodes.keys) { evict(node) }
        _ = try ok(.destroy, node: 0)
    }

    // MARK: zeroing

    /// iomap_zero_range over [from, to): MAPPED blocks are zeroed in the page
    /// cache; holes and unwritten blocks already read as zeroes and are
    /// skipped, unless cached pages hold data for them.
    func zeroRange(_ e: FuseEntryOut, from: UInt64, to: UInt64) throws {
        var pos = from
        while pos < to {
            let m = try map(e, op: .zero, pos: pos, count: to - pos)
            let stop = min(m.offset + m.length, to)
            var p = pos
            while p < stop {
                let kk = p / ps
                let pe = min(stop, (kk + 1) * ps)
                let cached = pages[e.nodeid]?[kk] != nil
                if m.type == MType.mapped.rawValue || cached {
                    try copyIn(e, p, [UInt8](repeating: 0, count: Int(pe - p))[...], m: m)
                }
                p = pe
            }
            pos = stop
        }
    }

    // MARK: direct writes

    /// write(2) with O_DIRECT: block-aligned.
    func directWrite(_ e: FuseEntryOut, offset: UInt64, _ data: [UInt8]) throws {
        guard var k = inodes[e.nodeid] else { throw FuseFailure(errno: ESTALE) }
        guard k.iomap else { return try classicWrite(e, offset: offset, data) }
        let bs = blockSize
        guard offset % bs == 0, UInt64(data.count) % bs == 0, !data.isEmpty else { throw FuseFailure(errno: EINVAL) }
        let end = offset + UInt64(data.count)
        guard end <= maxBytes else { throw FuseFailure(errno: EFBIG) }
        // Write back and drop the page cache over the range first.
        let pfrom = offset / ps * ps, pto = (end + ps - 1) / ps * ps
        try writeback(e, from: pfrom, to: pto)
        dropPages(e.nodeid, from: pfrom, to: pto)
        if offset > k.isize {
            try zeroRange(e, from: k.isize, to: offset)
            try writeback(e, from: k.isize / ps * ps, to: pto)
        }
        var pos = offset
        var sawUnwritten = false
        while pos < end {
            let m = try map(e, op: [.write, .direct], pos: pos, count: end - pos)
            let stop = min(m.offset + m.length, end)
            if m.type == MType.unwritten.rawValue || m.flags & FuseIomap.MappingFlags.new.rawValue != 0 { sawUnwritten = true }
            let s = Int(pos - offset)
            try writeDev(m.addr + (pos - m.offset), data[s..<(s + Int(stop - pos))])
            pos = stop
        }
        var flags: FuseIomap.IoendFlags = [.direct]
        if sawUnwritten { flags.insert(.unwritten) }
        try ioend(e, flags: flags, pos: offset, written: UInt64(data.count), addr: FuseIomap.nullAddr)
        k = inodes[e.nodeid] ?? k
        k.isize = max(k.isize, end)
        inodes[e.nodeid] = k
        dropPages(e.nodeid, from: pfrom, to: pto)
    }

    // MARK: truncate, fallocate

    /// truncate(2)/ftruncate(2).
    func truncate(_ e: FuseEntryOut, to newSize: UInt64) throws {
        guard var k = inodes[e.nodeid] else { throw FuseFailure(errno: ESTALE) }
        if k.iomap {
            let bs = blockSize
            if newSize < k.isize {
                if newSize % bs != 0 { try zeroRange(e, from: newSize, to: min(k.isize, (newSize / bs + 1) * bs)) }
            } else if newSize > k.isize {
                try zeroRange(e, from: k.isize, to: newSize)
            }
            k = inodes[e.nodeid] ?? k
            k.isize = newSize
            inodes[e.nodeid] = k
            zeroPagesPast(e.nodeid, newSize)
            try writeback(e)
        }
        var a = FuseSetattrIn()
        a.valid = (FuseSetattrValid.size.rawValue | FuseSetattrValid.mtime.rawValue | FuseSetattrValid.ctime.rawValue)
        a.size = newSize
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        a.mtime = UInt64(ts.tv_sec); a.ctime = UInt64(ts.tv_sec)
        let out = try FuseAttrOut.decode(try ok(.setattr(a), node: e.nodeid))
        guard out.attr.size == newSize else { throw MappingRejected(description: "SETATTR size \(out.attr.size) != \(newSize)") }
        k = inodes[e.nodeid] ?? k
        k.isize = newSize
        k.diskSize = newSize
        inodes[e.nodeid] = k
        if k.iomap { invalidate(e.nodeid, from: newSize, length: FuseIomap.invalToEOF) }
        zeroPagesPast(e.nodeid, newSize)
    }

    /// fallocate(2): only KEEP_SIZE, PUNCH_HOLE and ZERO_RANGE reach the server.
    func fallocate(_ e: FuseEntryOut, mode: UInt32, offset: UInt64, length: UInt64) throws {
        guard var k = inodes[e.nodeid] else { throw FuseFailure(errno: ESTALE) }
        guard mode & ~UInt32(0x13) == 0 else { throw FuseFailure(errno: EOPNOTSUPP) }
        let punch = mode & 2 != 0, zero = mode & 0x10 != 0, keep = mode & 1 != 0
        let end = offset + length
        let unit = max(blockSize, ps)
        let rfrom = offset / unit * unit, rto = (end + unit - 1) / unit * unit
        if k.iomap && (punch || zero) {
            try writeback(e, from: rfrom, to: rto)
            dropPages(e.nodeid, from: rfrom, to: rto)
        }
        let (err, _) = try call(.fallocate(FuseFallocateIn(fh: 0, offset: offset, length: length, mode: mode)), node: e.nodeid)
        guard err == 0 else { throw FuseFailure(errno: -err) }
        k = inodes[e.nodeid] ?? k
        if !k.iomap {
            dropPages(e.nodeid, from: rfrom, to: rto)
            if !keep && end > k.isize { k.isize = end; k.diskSize = end; inodes[e.nodeid] = k }
            return
        }
        invalidate(e.nodeid, from: rfrom, length: rto - rfrom)
        if punch || zero {
            // Partial head and tail blocks, within EOF, through the page cache.
            let bs = blockSize
            let headEnd = min(end, (offset + bs - 1) / bs * bs, k.isize)
            if offset % bs != 0 && offset < headEnd { try zeroRange(e, from: offset, to: headEnd) }
            let tailStart = max(offset, end / bs * bs)
            if end % bs != 0 && tailStart < min(end, k.isize) && tailStart >= headEnd {
                try zeroRange(e, from: tailStart, to: min(end, k.isize))
            }
        }
        if !keep && end > k.isize {
            k = inodes[e.nodeid] ?? k
            k.isize = end
            k.diskSize = end
            inodes[e.nodeid] = k
        }
    }
}
