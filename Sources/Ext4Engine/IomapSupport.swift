/// What a block-mapping (iomap) data path needs from the engine besides
/// `mappings(_:fromBlock:maxBlocks:)`: the device, and the superblock
/// geometry the kernel is told about. Read-only accessors; no FUSE knowledge.
extension Ext4FileSystem {
    /// The device holding the file system (data and metadata share it).
    public var blockDevice: any BlockDevice { dev }

    /// On-disk inode size in bytes (128 means no extra timestamp fields).
    public var onDiskInodeSize: Int { sb.inodeSize }

    /// The `huge_file` feature: without it a file's i_blocks (512-byte units) is 32 bits.
    public var hasHugeFileFeature: Bool { sb.has(roCompat: RoCompat.hugeFile) }

    /// The timestamps the inodes hold: seconds from `min` to `max`, in steps
    /// of `granularity` nanoseconds. 128-byte inodes have no extra fields:
    /// whole seconds in 32 bits; larger ones add 2 epoch bits and nanoseconds.
    public var timestampLimits: (min: Int64, max: Int64, granularity: UInt32) {
        let lo = Int64(Int32.min)
        if sb.inodeSize > 128 { return (lo, lo + (Int64(1) << 34) - 1, 1) }
        return (lo, Int64(Int32.max), 1_000_000_000)
    }

    /// A timestamp clamped to what the inodes hold (the kernel's timestamp_truncate).
    public func clampTimestamp(_ t: Timespec) -> Timespec {
        let l = timestampLimits
        if t.sec < l.min { return Timespec(sec: l.min, nsec: 0) }
        if t.sec > l.max { return Timespec(sec: l.max, nsec: 0) }
        return Timespec(sec: t.sec, nsec: l.granularity == 1 ? min(t.nsec, 999_999_999) : 0)
    }

    /// The `extent` feature.
    public var hasExtentsFeature: Bool { sb.has(incompat: Incompat.extents) }

    /// The largest file size the kernel's ext4 allows for an extent-mapped
    /// (`extents: true`) or block-mapped file on this file system
    /// (fs/ext4/super.c ext4_max_size / ext4_max_bitmap_size).
    public func maxFileBytes(extents: Bool) -> UInt64 {
        let bs = UInt64(blockSize)
        let bits = UInt64(blockSize.trailingZeroBitCount)
        // Without huge_file, i_blocks counts 512-byte sectors in 32 bits.
        var upper = UInt64(Int64.max)
        if !hasHugeFileFeature {
            upper = (((UInt64(1) << 32) - 1) >> (bits - 9)) << bits
        }
        if extents {
            return min(((UInt64(1) << 32) - 1) << bits, upper)
        }
        let a = bs / 4
        var blocks = 12 + a
        let (a2, o2) = a.multipliedReportingOverflow(by: a)
        let (a3, o3) = a2.multipliedReportingOverflow(by: a)
        if !o2 { blocks += a2 }
        if !o2 && !o3 { blocks += a3 }
        // Block numbers are 32 bits in a block map.
        blocks = min(blocks, (UInt64(1) << 32) - 1)
        return min(blocks << bits, upper)
    }

    /// Byte address on the device of an inode's i_block area (where inline data
    /// lives), as the kernel reports it in FIEMAP for inline-data files.
    public func inlineDataAddress(_ ino: UInt32) throws(Ext4Error) -> UInt64 {
        let (blk, off) = try inodeLocation(ino)
        return blk * UInt64(blockSize) + UInt64(off) + 0x28
    }
}
