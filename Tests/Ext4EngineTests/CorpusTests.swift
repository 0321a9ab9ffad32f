import Ext4Engine
import Foundation
import Testing

/// Project root = two levels above this test file's directory.
let projectRoot: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }
    return url.path
}()

func corpusDir() -> String? {
    let candidates = [projectRoot + "/../shared/corpus/e2fsprogs-tests", "/work/shared/corpus/e2fsprogs-tests"]
    return candidates.first { FileManager.default.fileExists(atPath: $0) }
}

/// Decompress a corpus image into `dst`; nil when there is none.
func materialize(_ dir: String, into dst: String) throws -> Bool {
    let fm = FileManager.default
    if fm.fileExists(atPath: dir + "/image.gz") {
        let out = try run("/bin/sh", ["-c", "gzip -dc '\(dir)/image.gz' > '\(dst)'"])
        _ = out
        return true
    }
    if fm.fileExists(atPath: dir + "/image.bz2") {
        try run("/bin/sh", ["-c", "bzip2 -dc '\(dir)/image.bz2' > '\(dst)'"])
        return true
    }
    if fm.fileExists(atPath: dir + "/image") {
        try fm.copyItem(atPath: dir + "/image", toPath: dst)
        return true
    }
    return false
}

@Suite("e2fsprogs bad-image corpus")
struct CorpusTests {
    @Test func walkEveryImage() throws {
        guard let corpus = corpusDir() else { return } // corpus absent: skip
        let tmp = try TempDir()
        let cases = try FileManager.default.contentsOfDirectory(atPath: corpus).sorted()
        var opened = 0, refused = 0, total = 0, timedOut = 0
        var walkedFiles = 0
        for name in cases {
            let dir = corpus + "/" + name
            let img = tmp.sub(name + ".img")
            guard (try? materialize(dir, into: img)) == true else { continue }
            defer { try? FileManager.default.removeItem(atPath: img) }
            total += 1
            let start = Date()
            let fs: Ext4FileSystem
            do {
                fs = try openImage(img, MountOptions(readOnly: true, noRecovery: true, cacheBlocks: 256))
            } catch let e as Ext4Error {
                refused += 1
                // Refusals must carry a reason.
                switch e {
                case .corrupted(let m), .unsupported(let m), .invalid(let m): #expect(!m.isEmpty, "\(name)")
                case .io: break
                default: Issue.record("\(name): unexpected open error \(e)")
                }
                continue
            }
            opened += 1
            // The walk stops itself at the deadline (huge trees such as f_many_subdirs);
            // overshooting it by much would mean a single call hung or looped.
            let r = walkAll(fs, deadline: start.addingTimeInterval(15))
            walkedFiles += r.files
            if Date().timeIntervalSince(start) > 45 { timedOut += 1; Issue.record("\(name): walk exceeded budget") }
        }
        print("corpus: \(total) images, \(opened) opened and walked, \(refused) refused, \(walkedFiles) files read")
        #expect(total > 100)
        #expect(opened > total / 2, "most corpus images should be readable")
        #expect(timedOut == 0)
    }
}
