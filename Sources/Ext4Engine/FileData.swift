/// File contents, inline data and symlink targets.
extension Ext4FileSystem {
    public func read(_ ino: UInt32, offset: UInt64, count: Int) throws(Ext4Error) -> [UInt8] {
        try checkAlive()
        return try withReadLock(ino) { () throws(Ext4Error) -> [UInt8] in
            guard count >= 0 else { throw .invalid("negative count") }
            let ri = try rawInode(ino)
            if ri.isDir { throw .isDirectory }
            return try readData(ri, offset: offset, count: count)
        }
    }

    /// Read file bytes; short at EOF; holes and unwritten extents are zeros.
    /// Each mapped run is fetched with one positioned read straight into the
    /// result (sequential readahead within the extent, no cache pollution).
    /// One call returns at most this many bytes (a short read, as POSIX allows),
    /// so a size field cannot make us allocate without bound.
    public static let maxReadCount = 64 << 20

    func readData(_ ri: RawInode, offset: UInt64, count: Int) throws(Ext4Error) -> [UInt8] {
        let size = ri.pub.size
        guard count > 0, offset < size else { return [] }
        let n = Int(min(UInt64(min(count, Ext4FileSystem.maxReadCount)), size - offset))
        if ri.hasInline {
            let d = try inlineData(ri)
            guard size <= UInt64(d.count) else { throw corrupt("inode \(ri.ino): inline size \(size) exceeds inline data") }
            let s = Int(offset)
            return Array(d[s..<(s + n)])
        }
        if isFastSymlink(ri) {
            guard size <= 60 else { throw corrupt("inode \(ri.ino): fast symlink too long") }
            let d = ri.iBlock
            let s = Int(offset)
            return Array(d[s..<(s + n)])
        }
        guard hasBlockMap(ri) else { return [] }
        var out = [UInt8](repeating: 0, count: n)
        let bs = UInt64(blockSize)
        let first = offset / bs
        let endByte = offset + UInt64(n)
        let last = (endByte - 1) / bs
        let exts = try mapRange(ri, from: first, count: last - first + 1)
        var err: Ext4Error? = nil
        for x in exts where !x.unwritten {
            let fs = max(offset, x.logical * bs)
            let fe = min(endByte, (x.logical + x.length) * bs)
            if fs >= fe { continue }
            let phys = x.physical * bs + (fs - x.logical * bs)
            let lo = Int(fs - offset), hi = Int(fe - offset)
            out.withUnsafeMutableBytes { p in
                let sub = UnsafeMutableRawBufferPointer(rebasing: p[lo..<hi])
                do throws(Ext4Error) { try dev.read(at: phys, into: sub) } catch { err = error }
            }
            if let err { throw err }
        }
        return out
    }

    public func readlink(_ ino: UInt32) throws(Ext4Error) -> [UInt8] {
        try checkAlive()
        return try withReadLock(ino) { () throws(Ext4Error) -> [UInt8] in
            let ri = try rawInode(ino)
            guard ri.pub.fileType == .symlink else { throw .notSymlink }
            let size = ri.pub.size
            guard size > 0, size < 4096 else { throw corrupt("inode \(ino): bad symlink size \(size)") }
            if isFastSymlink(ri) {
                guard size < 60 else { throw corrupt("inode \(ino): fast symlink size \(size)") }
                let t = Array(ri.iBlock[0..<Int(size)])
                if t.contains(0) { throw corrupt("inode \(ino): NUL inside fast symlink") }
                return t
            }
            let t = try readData(ri, offset: 0, count: Int(size))
            guard t.count == Int(size) else { throw corrupt("inode \(ino): short symlink") }
            return t
        }
    }
}
