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
        #expect(Mountinfo.unescape("a\\134b\\011c\\0") == "a\\b\tc\\0", "a short escape stays as it is")
    }

    @Test func sharedMountLookup() {
        let info = """
        22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
        40 22 7:2 / /srv/a rw,nosuid,nodev,relatime shared:20 - fuseblk.ext4 /dev/loop2 rw,user_id=0
        43 22 7:3 / /srv/b ro,relatime shared:23 - fuseblk.ext4 /dev/loop3 ro,user_id=0
        44 22 7:4 / /srv/c rw,relatime shared:24 - fuseblk.ext3 /dev/loop4 rw,user_id=0
        """
        #expect(SharedMount.find(DeviceNumber(major: 7, minor: 2), fstype: "fuseblk.ext4", mountinfo: info)
                == SharedMount.Existing(mountpoint: "/srv/a", readOnly: false))
        #expect(SharedMount.find(DeviceNumber(major: 7, minor: 3), fstype: "fuseblk.ext4", mountinfo: info)?.readOnly == true)
        #expect(SharedMount.find(DeviceNumber(major: 7, minor: 4), fstype: "fuseblk.ext4", mountinfo: info) == nil,
                "another type's mount is not ours to share")
        #expect(SharedMount.find(DeviceNumber(major: 253, minor: 0), fstype: "fuseblk.ext4", mountinfo: info) == nil)
    }
}
