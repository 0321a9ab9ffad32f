// Mount options understood by the server, as values. The daemon parses the
// option string (OptionParsing.swift) and hands the adapter the result.

import Glibc

public struct ServerOptions: Sendable, Equatable {
    public var readOnly = false
    public var noRecovery = false
    public var cacheBlocks = 8192
    /// Seconds between journal commits (`commit=N`, as ext4; 0 is the default, 5).
    public var commitSeconds = 0
    /// nil: use iomap when the kernel offers it; true: require it; false: forbid it.
    public var iomap: Bool? = nil
    /// Push iomap mappings into the kernel's mapping cache (UPSERT + RETRY_CACHE); `iomap_cache=0` turns it off.
    public var iomapCache = true
    /// Classic path: let the kernel cache writes (FUSE writeback cache), `writeback_cache=1`.
    /// Off by default: measured, it costs ~20% on small-file creates for ~10% on random buffered writes.
    public var writebackCache = false
    /// Serve through FUSE over io_uring when the kernel offers it (`fuse.enable_uring=1`); `uring=0` keeps /dev/fuse.
    public var uring = true
    public var allowSuid = false
    public var allowDev = false
    /// The server's own seccomp filter (see Lockdown.swift); `seccomp=0` is for debugging only.
    public var seccomp: SeccompSetting = .enforce
    /// Options passed through to the kernel's fuse mount unchanged.
    public var kernelOptions: [String] = []

    public init() {}

}

/// The server's own seccomp filter setting (`seccomp=1|0|log`).
public enum SeccompSetting: Sendable, Equatable {
    case enforce, off, log
}
