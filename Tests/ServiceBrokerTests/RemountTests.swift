import Testing
@testable import ServiceBroker

@Suite("helper: remount options")
struct RemountTests {
    @Test func planReadsRoRwAndMountFlags() {
        #expect(Remount.requested("rw,remount") && !Remount.requested("ro,noatime"))
        #expect(Remount.plan("remount,ro") == Remount.Plan(readOnly: true))
        #expect(Remount.plan("ro,remount,rw") == Remount.Plan(readOnly: false), "the last of ro/rw wins")
        let p = Remount.plan("remount,noexec,suid,nodev,noatime,user_id=0,allow_other,blksize=4096")
        #expect(p.readOnly == nil)
        #expect(p.attrSet == Remount.attrNoexec | Remount.attrNodev | Remount.attrNoatime)
        #expect(p.attrClear == Remount.attrNosuid | Remount.attrAtimeMask)
        let q = Remount.plan("remount,noexec,exec,relatime")
        #expect(q.attrSet == Remount.attrRelatime && q.attrClear == Remount.attrNoexec | Remount.attrAtimeMask)
    }

    @Test func mountinfoLookup() {
        let info = """
        22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
        40 22 7:2 / /tmp/a\\040b rw,nosuid,nodev,relatime shared:20 - fuseblk.ext4 /dev/loop2 rw,user_id=0
        41 22 0:50 / /mnt rw,relatime shared:21 - tmpfs tmpfs rw
        42 41 0:51 / /mnt rw,relatime shared:22 - fuse.ext4 /img rw,user_id=0
        """
        #expect(Remount.fstype(at: "/tmp/a b", mountinfo: info) == "fuseblk.ext4")
        #expect(Remount.fstype(at: "/mnt", mountinfo: info) == "fuse.ext4", "the topmost mount")
        #expect(Remount.fstype(at: "/nowhere", mountinfo: info) == nil)
        #expect(Remount.unescape("a\\134b\\011c\\0") == "a\\b\tc\\0", "a short escape stays as it is")
    }
}
