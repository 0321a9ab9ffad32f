#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import ServiceBroker

// Serialised with the other suites that open fds: several of them compare
// the process's fd count before and after.
@Suite(.serialized) struct StderrRelayTests {
    let lock = RootTestLock()

    func clean(_ s: String, max: Int = 1024) -> String {
        String(decoding: StderrRelay.sanitize(Array(s.utf8), maxBytes: max), as: UTF8.self)
    }

    @Test func plainTextAndTabsPass() {
        #expect(clean("ext4iomapd: bad superblock: magic 0x0000\tat 1024") == "ext4iomapd: bad superblock: magic 0x0000\tat 1024")
        #expect(clean("Grüße, ünïcödé ✓") == "Grüße, ünïcödé ✓")
        #expect(clean("") == "")
    }

    @Test func escapeSequencesAreRemovedWhole() {
        #expect(clean("\u{1B}[31mred\u{1B}[0m text") == "red text")
        #expect(clean("a\u{1B}[2J\u{1B}[Hb") == "ab")                       // clear screen, cursor home
        #expect(clean("\u{1B}]0;evil title\u{07}after") == "after")           // OSC ended by BEL
        #expect(clean("\u{1B}]8;;http://x\u{1B}\\link\u{1B}]8;;\u{1B}\\") == "link")  // OSC 8 ended by ST
        #expect(clean("\u{1B}P+q544e\u{1B}\\x") == "x")                       // DCS
        #expect(clean("x\u{9B}6nY") == "xY")                                  // C1 CSI
        #expect(clean("x\u{9D}0;t\u{9C}y") == "xy")                           // C1 OSC .. ST
        #expect(clean("x\u{1B}(By") == "xy")                                  // ESC with an intermediate
        #expect(clean("x\u{1B}") == "x")                                      // dangling ESC
    }

    @Test func controlsAndBidiAreRemoved() {
        #expect(clean("ok\rFAKE") == "okFAKE")
        #expect(clean("a\u{00}b\u{07}c\u{08}d\u{7F}e\u{85}f") == "abcdef")
        #expect(clean("file\u{202E}txt.exe\u{2066}x\u{2069}") == "filetxt.exex")
        #expect(clean("one\u{2028}two\u{2029}") == "onetwo", "line and paragraph separators")
        #expect(clean("\u{200F}a\u{061C}") == "a")
    }

    @Test func invalidUTF8BecomesReplacementCharacters() {
        let out = StderrRelay.sanitize([0x61, 0xFF, 0xC3, 0x62], maxBytes: 64)
        #expect(String(decoding: out, as: UTF8.self) == "a\u{FFFD}\u{FFFD}b")
    }

    @Test func longLinesAreCutOnCharacterBoundaries() {
        #expect(clean(String(repeating: "x", count: 20), max: 10) == "xxxxxxxxxx [truncated]")
        #expect(clean("ab✓✓", max: 4) == "ab [truncated]")                      // ✓ is 3 bytes
        #expect(String(decoding: StderrRelay.sanitize(Array("abc".utf8), maxBytes: 10, cut: true), as: UTF8.self)
                == "abc [truncated]")
    }

    /// Relay one pipe into another and collect what comes out.
    func relay(_ input: [UInt8], closeWriter: Bool = true) throws -> String {
        var inP: [Int32] = [-1, -1], outP: [Int32] = [-1, -1]
        #expect(pipe(&inP) == 0 && pipe(&outP) == 0)
        _ = fcntl(outP[0], F_SETFL, O_NONBLOCK)
        let r = try StderrRelay.start(reading: inP[0], to: outP[1])
        var collected: [UInt8] = []
        func drain() {
            var buf = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = read(outP[0], &buf, buf.count)
                if n <= 0 { break }
                collected += buf[0..<n]
            }
        }
        var off = 0
        while off < input.count {
            let n = input.withUnsafeBytes { write(inP[1], $0.baseAddress! + off, min(65536, $0.count - off)) }
            if n > 0 { off += n }
            drain()
        }
        if closeWriter { close(inP[1]) }
        r.finish(timeoutMs: closeWriter ? 5000 : 200)
        if !closeWriter { close(inP[1]) }
        drain()
        close(outP[0]); close(outP[1])
        return String(decoding: collected, as: UTF8.self)
    }

    @Test func relaysSanitisedLines() throws {
        let out = try relay(Array("one\n\u{1B}[31mtwo\u{1B}[0m\r\nthree without newline".utf8))
        #expect(out == "one\ntwo\nthree without newline\n")
    }

    @Test func overlongLineIsCutAndTheRestDropped() throws {
        let long = String(repeating: "y", count: 10_000)
        let out = try relay(Array("\(long)\nnext\n".utf8))
        let lines = out.split(separator: "\n")
        #expect(lines.count == 2)
        #expect(lines.first?.hasSuffix(" [truncated]") == true)
        #expect((lines.first?.utf8.count ?? 0) <= StderrRelay.maxLineBytes + 12)
        #expect(lines.last == "next")
    }

    @Test func totalOutputIsCappedWhileInputKeepsDraining() throws {
        // 400 KiB in: the writer never blocks, at most 64 KiB (plus one notice) comes out.
        let line = Array((String(repeating: "z", count: 99) + "\n").utf8)
        var input: [UInt8] = []
        for _ in 0..<4096 { input += line }
        let out = try relay(input)
        #expect(out.utf8.count <= StderrRelay.maxTotalBytes + 200)
        #expect(out.hasSuffix("the rest is dropped\n"))
    }

    @Test func finishIsBoundedWhenTheWriterStaysOpen() throws {
        let t0 = monotonicNanoseconds()
        let out = try relay(Array("early line\n".utf8), closeWriter: false)
        #expect(out == "early line\n")
        #expect(monotonicNanoseconds() - t0 < 3_000_000_000)
    }
}
