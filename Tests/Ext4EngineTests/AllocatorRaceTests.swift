import Foundation
import Synchronization
import Testing

@testable import Ext4Engine

/// Blocks freed in the running transaction are reserved until it commits
/// (Reservations.swift): until then a crash brings their owner back, and a
/// commit still in progress may write an older copy over them. The
/// reservation must exist before the bitmap shows the blocks free, or an
/// allocation on another thread can take them in between. (crash.sh found
/// it: an xattr block freed and handed to a new file's data in the same
/// transaction, while the previous commit's write-home put the xattr block's
/// copy over that data.)
@Suite("write side: the allocator and frees racing")
struct AllocatorRaceTests {
    @Test func blocksFreedInTheRunningTransactionAreNeverHandedOut() throws {
        let tmp = try TempDir()
        let img = tmp.sub("a.img")
        try run("/usr/sbin/mkfs.ext4", ["-q", "-F", "-t", "ext4", "-b", "4096", "-m", "0", "-g", "32768", img, "256M"])
        let fs = try Ext4FileSystem.open(device: try FileBlockDevice(path: img, readOnly: false),
                                         options: MountOptions(readOnly: false, commitInterval: 3600))
        let goal = fs.groupStart(1)
        var stolen = 0
        for round in 0..<40 {
            // 2,000 single blocks in group 1, committed.
            var owned: [UInt64] = []
            try fs.withHandle { () throws(Ext4Error) in
                for _ in 0..<2000 { owned.append(try fs.allocBlocks(goal: goal, count: 1).0) }
            }
            try fs.sync()
            // Free them one by one in one transaction while another thread
            // allocates single blocks in the same group.
            let done = Atomic<Bool>(false)
            let taken = Mutex<[UInt64]>([])
            let finished = DispatchSemaphore(value: 0)
            let allocator = Thread {
                defer { finished.signal() }
                try? fs.withHandle { () throws(Ext4Error) in
                    while !done.load(ordering: .acquiring) {
                        let b = try fs.allocBlocks(goal: goal, count: 1).0
                        taken.withLock { $0.append(b) }
                    }
                }
            }
            allocator.start()
            try fs.withHandle { () throws(Ext4Error) in
                for b in owned { try fs.freeBlocks(b, 1) }
            }
            done.store(true, ordering: .releasing)
            finished.wait()
            let got = Set(taken.withLock { $0 })
            let both = got.intersection(owned)
            stolen += both.count
            #expect(both.isEmpty, "round \(round): \(both.count) block(s) freed in the running transaction were allocated again in it")
            // Give everything back for the next round.
            try fs.withHandle { () throws(Ext4Error) in
                for b in got { try fs.freeBlocks(b, 1) }
            }
            try fs.sync()
            if stolen > 0 { break }
        }
        try fs.unmount()
        try fsckClean(img, "after racing frees and allocations")
    }
}
