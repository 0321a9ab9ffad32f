// Mount option parsing: defaults, every option the server knows, and clear refusals.

import Ext4Fuse
import Ext4Server
import Testing

@Suite("mount options")
struct OptionsTests {
    @Test func defaults() throws {
        let o = try ServerOptions.parse("")
        #expect(!o.readOnly && !o.noRecovery && o.iomap == nil && o.iomapCache && !o.writebackCache && o.uring)
        #expect(!o.allowSuid && !o.allowDev && o.cacheBlocks == 8192 && o.kernelOptions.isEmpty)
    }

    @Test func everyOption() throws {
        let o = try ServerOptions.parse("ro,noload,suid,dev,cache_blocks=64,iomap=1,iomap_cache=0,writeback_cache=1,noatime,x-systemd.automount")
        #expect(o.readOnly && o.noRecovery && o.allowSuid && o.allowDev && o.cacheBlocks == 64)
        #expect(o.iomap == true && !o.iomapCache && o.writebackCache)
        #expect(o.kernelOptions == ["noatime"])
        let p = try ServerOptions.parse("rw,iomap=0,writeback_cache=0,nosuid,nodev,uring=0")
        #expect(!p.readOnly && p.iomap == false && !p.writebackCache && !p.allowSuid && !p.allowDev && !p.uring)
        #expect(try ServerOptions.parse("uring=1").uring)
        #expect(try ServerOptions.parse("commit=30").commitSeconds == 30)
        #expect(try ServerOptions.parse("rw").commitSeconds == 0)
    }

    @Test(arguments: ["writeback_cache=2", "writeback_cache", "iomap=yes", "cache_blocks=3", "ro=1", "bogus", "iomap_cache=x", "uring=2", "uring", "commit", "commit=-1", "commit=x", "commit=90000"])
    func refused(_ s: String) {
        #expect(throws: ServerOptions.ParseError.self) { _ = try ServerOptions.parse(s) }
    }
}
