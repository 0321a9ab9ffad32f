/// The file system's label (s_volume_name), as FS_IOC_GETFSLABEL and
/// FS_IOC_SETFSLABEL see it: at most 16 bytes, no NUL inside.
extension Ext4FileSystem {
    public static let labelMax = 16

    /// The label now (a read-write mount may have changed it).
    public var label: [UInt8] {
        let raw = w?.alloc.superblockRecord.volumeName ?? sb.volumeName
        return Array(raw.prefix { $0 != 0 })
    }

    /// Set the label; it is durable (in the journal and at home) when this returns.
    public func setLabel(_ l: [UInt8]) throws(Ext4Error) {
        guard l.count <= Ext4FileSystem.labelMax, !l.contains(0) else {
            throw .invalid("label longer than \(Ext4FileSystem.labelMax) bytes")
        }
        try withHandle { () throws(Ext4Error) in
            try updateSuper { s in s.volumeName = l }
        }
        try commitAll()
    }
}
