// Reply and notification encoding, following the kernel's exact-size rules:
// an error reply is the 16-byte header alone; a success reply carries exactly
// the payload the opcode expects (only "variable" replies may be shorter).

public enum FuseReplyEncoder {
    public static func header(unique: UInt64, error: Int32, payloadCount: Int) -> [UInt8] {
        FuseOutHeader(len: UInt32(truncatingIfNeeded: FuseOutHeader.wireSize + payloadCount),
                      error: error, unique: unique).encoded
    }

    /// An error reply; `errno` is positive, the wire carries its negation.
    public static func error(unique: UInt64, errno: Int32) -> [UInt8] {
        let e = errno > 0 && errno <= 511 ? errno : 5  // EIO for nonsense values
        return header(unique: unique, error: -e, payloadCount: 0)
    }

    public static func ok(unique: UInt64, _ payload: [UInt8] = []) -> [[UInt8]] {
        [header(unique: unique, error: 0, payloadCount: payload.count), payload]
    }

    public static func notificationHeader(_ code: FuseNotifyCode, payloadCount: Int) -> [UInt8] {
        header(unique: 0, error: code.rawValue, payloadCount: payloadCount)
    }

    // Notification payload builders.
    public static func invalInode(ino: UInt64, offset: Int64, length: Int64) -> [UInt8] {
        FuseNotifyInvalInodeOut(ino: ino, off: offset, len: length).encoded
    }
    public static func invalEntry(parent: UInt64, name: [UInt8], flags: UInt32 = 0) -> [UInt8] {
        var w = WireWriter()
        FuseNotifyInvalEntryOut(parent: parent, namelen: UInt32(name.count), flags: flags).encode(to: &w)
        w.cString(name)
        return w.bytes
    }
    public static func delete(parent: UInt64, child: UInt64, name: [UInt8]) -> [UInt8] {
        var w = WireWriter()
        FuseNotifyDeleteOut(parent: parent, child: child, namelen: UInt32(name.count)).encode(to: &w)
        w.cString(name)
        return w.bytes
    }
    public static func store(nodeid: UInt64, offset: UInt64, data: [UInt8]) -> [UInt8] {
        var w = WireWriter()
        FuseNotifyStoreOut(nodeid: nodeid, offset: offset, size: UInt32(data.count)).encode(to: &w)
        w.append(data)
        return w.bytes
    }
    public static func prune(_ nodeids: [UInt64]) -> [UInt8] {
        var w = WireWriter()
        FuseNotifyPruneOut(count: UInt32(nodeids.count)).encode(to: &w)
        for n in nodeids { w.u64(n) }
        return w.bytes
    }
}
