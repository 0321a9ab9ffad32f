#if canImport(Glibc)
import Glibc
import LoopDevices
#endif

/// A uid/gid of its own for every spawned server, so that no two servers (and
/// no other process) share credentials: a compromised server cannot signal,
/// trace or take the fds of another one.
///
/// The range, 0x7E000000…0x7E000FFF (2113929216…2113933311), lies in what
/// systemd's "Users, Groups, UIDs and GIDs on systemd Systems" lists as unused:
/// above the container ranges (524288…1879048191), below the foreign range
/// (0x7FFE0000…) and below 2^31 (tools that treat ids as signed). No user
/// database names these ids; `ps` shows them as numbers.
///
/// Allocation: under an exclusive flock on /run/ext4iomap/uid.lock (directory
/// root-owned 0700), the first id that no process uses as any of its real,
/// effective, saved or file-system uid or gid (/proc/PID/status) is chosen, the
/// server is started with it, and the lock is released once the server runs as
/// that id; from then on its process marks the id as used. The id is free
/// again when the server exits.
public enum ServerIDs {
    public static let first: UInt32 = 0x7E00_0000
    public static let count: UInt32 = 4096
    public static var last: UInt32 { first + count - 1 }
    public static let lockDirectory = "/run/ext4iomap"
    public static let lockFile = "uid.lock"
    /// How long to wait for another helper holding the lock.
    static let lockWaitMs = 10_000

    public static func contains(_ id: UInt32) -> Bool { id >= first && id <= last }

    /// Ids of our range in one /proc/PID/status text: every value of the Uid:
    /// and Gid: lines (real, effective, saved, file system). Other lines are
    /// ignored; the Name: line cannot forge one (the kernel escapes newlines).
    static func idsInRange(status text: String) -> [UInt32] {
        var out: [UInt32] = []
        for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
            guard line.hasPrefix("Uid:") || line.hasPrefix("Gid:") else { continue }
            for field in line.dropFirst(4).split(whereSeparator: { $0 == "\t" || $0 == " " }) {
                if let v = UInt32(field), contains(v) { out.append(v) }
            }
        }
        return out
    }

    /// The first id of the range not in `used`.
    static func firstFree(_ used: Set<UInt32>) -> UInt32? {
        var id = first
        while id <= last {
            if !used.contains(id) { return id }
            id += 1
        }
        return nil
    }

    /// Run `body` with a free id while holding the allocation lock.
    static func withFreeID<T>(_ body: (UInt32) throws(BrokerError) -> T) throws(BrokerError) -> T {
        let lock = try acquireLock()
        defer { FD.close(lock) }  // closing the only fd of the lock file releases the flock
        let used = try usedIDs()
        guard let id = firstFree(used) else {
            throw .denied("no free server uid: all \(count) ids \(first)…\(last) are in use", errno: EAGAIN)
        }
        return try body(id)
    }

    // MARK: the lock

    static func acquireLock() throws(BrokerError) -> Int32 {
        if mkdir(lockDirectory, 0o700) != 0 && errno != EEXIST {
            throw .system(operation: "creating \(lockDirectory)", errno: errno)
        }
        let dir = try retrying("opening \(lockDirectory)") {
            Glibc.open(lockDirectory, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        }
        defer { FD.close(dir) }
        var st = stat()
        if fstat(dir, &st) != 0 { throw .system(operation: "fstat \(lockDirectory)", errno: errno) }
        if st.st_uid != 0 || (st.st_mode & 0o022) != 0 {
            throw .denied("\(lockDirectory) must be a directory owned by root and writable only by root", errno: EPERM)
        }
        let fd = try retrying("opening \(lockDirectory)/\(lockFile)") {
            openat(dir, lockFile, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
        }
        if fstat(fd, &st) != 0 || (st.st_mode & S_IFMT) != S_IFREG || st.st_uid != 0 {
            FD.close(fd)
            throw .denied("\(lockDirectory)/\(lockFile) must be a regular file owned by root", errno: EPERM)
        }
        var waited = 0
        while true {
            if flock(fd, LOCK_EX | LOCK_NB) == 0 { return fd }
            let e = errno
            if e == EINTR { continue }
            if e != EWOULDBLOCK || waited >= lockWaitMs {
                FD.close(fd)
                throw .system(operation: "locking \(lockDirectory)/\(lockFile)", errno: e == EWOULDBLOCK ? ETIMEDOUT : e)
            }
            usleep(20_000)
            waited += 20
        }
    }

    static func retrying(_ what: String, _ call: () -> Int32) throws(BrokerError) -> Int32 {
        while true {
            let fd = call()
            if fd >= 0 { return fd }
            let e = errno
            if e != EINTR { throw .system(operation: what, errno: e) }
        }
    }

    // MARK: who uses which id

    /// Every id of the range some process uses. /proc must show this process
    /// (it is then the procfs of our PID namespace, which sees the servers we
    /// spawned); otherwise the scan could miss a running server, so refuse.
    static func usedIDs() throws(BrokerError) -> Set<UInt32> {
        let proc = try retrying("opening /proc") { Glibc.open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        guard let dir = fdopendir(proc) else {
            let e = errno
            FD.close(proc)
            throw .system(operation: "reading /proc", errno: e)
        }
        defer { closedir(dir) }
        var buf = [CChar](repeating: 0, count: 32)
        let n = readlinkat(proc, "self", &buf, buf.count - 1)
        let me = n > 0 ? String(decoding: buf.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
        guard me == String(getpid()) else {
            throw .denied("cannot choose a server uid: /proc does not show this process (another PID namespace's procfs?)",
                          errno: ESRCH)
        }
        var used = Set<UInt32>()
        while true {
            errno = 0
            guard let ent = readdir(dir) else {
                if errno != 0 { throw .system(operation: "reading /proc", errno: errno) }
                break
            }
            let name = withUnsafeBytes(of: ent.pointee.d_name) { raw -> String? in
                let bytes = raw.prefix(while: { $0 != 0 })
                guard !bytes.isEmpty, bytes.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
                return String(decoding: bytes, as: UTF8.self)
            }
            guard let pid = name, let text = readStatus(procFD: proc, pid: pid) else { continue }
            for id in idsInRange(status: text) { used.insert(id) }
        }
        return used
    }

    /// The start of /proc/PID/status (Uid: and Gid: are among its first lines);
    /// nil when the process has gone.
    static func readStatus(procFD: Int32, pid: String) -> String? {
        guard let fd = try? retrying("", { openat(procFD, pid + "/status", O_RDONLY | O_CLOEXEC) }) else { return nil }
        defer { FD.close(fd) }
        return readText(fd: fd)
    }
}
