import Foundation

/// Bounded, thread-safe LRU cache of metadata blocks, sharded by block number
/// so concurrent readers rarely contend on the same lock.
final class BlockCache: @unchecked Sendable {
    private final class Shard: @unchecked Sendable {
        struct Node {
            var key: UInt64
            var value: [UInt8]
            var prev: Int
            var next: Int
        }
        let lock = NSLock()
        let capacity: Int
        var map: [UInt64: Int] = [:]
        var nodes: [Node] = []
        var head = -1 // most recently used
        var tail = -1 // least recently used

        init(capacity: Int) { self.capacity = max(1, capacity) }

        private func unlink(_ i: Int) {
            let p = nodes[i].prev, n = nodes[i].next
            if p >= 0 { nodes[p].next = n } else { head = n }
            if n >= 0 { nodes[n].prev = p } else { tail = p }
            nodes[i].prev = -1
            nodes[i].next = -1
        }

        private func pushFront(_ i: Int) {
            nodes[i].prev = -1
            nodes[i].next = head
            if head >= 0 { nodes[head].prev = i }
            head = i
            if tail < 0 { tail = i }
        }

        func get(_ key: UInt64) -> [UInt8]? {
            lock.lock(); defer { lock.unlock() }
            guard let i = map[key] else { return nil }
            if head != i { unlink(i); pushFront(i) }
            return nodes[i].value
        }

        func put(_ key: UInt64, _ value: [UInt8]) {
            lock.lock(); defer { lock.unlock() }
            if let i = map[key] {
                nodes[i].value = value
                if head != i { unlink(i); pushFront(i) }
                return
            }
            if nodes.count < capacity {
                nodes.append(Node(key: key, value: value, prev: -1, next: -1))
                let i = nodes.count - 1
                map[key] = i
                pushFront(i)
                return
            }
            // Evict the LRU node and reuse its slot.
            let i = tail
            guard i >= 0 else { return }
            unlink(i)
            map[nodes[i].key] = nil
            nodes[i].key = key
            nodes[i].value = value
            map[key] = i
            pushFront(i)
        }

        /// Insert only when the key is absent (a fill from a device read must
        /// never replace what a writer put there meanwhile).
        func fill(_ key: UInt64, _ value: [UInt8]) {
            lock.lock()
            let present = map[key] != nil
            lock.unlock()
            if !present { put(key, value) }
        }

        var count: Int {
            lock.lock(); defer { lock.unlock() }
            return map.count
        }
    }

    /// Bumped by every metadata write. A reader that filled its buffer from the
    /// device caches it only if no write happened since it started: otherwise a
    /// slow read (readahead of neighbouring blocks, outside their owners' locks)
    /// could put back a block's old contents after a writer updated it, and a
    /// stale bitmap in the cache means blocks allocated twice.
    private let epochLock = NSLock()
    private var epochValue: UInt64 = 0
    var epoch: UInt64 { epochLock.lock(); defer { epochLock.unlock() }; return epochValue }

    /// A metadata write: `value` is the block's contents now (in the dirty set
    /// until flushed, see MetaWriteback.swift); make the cache agree.
    func wrote(_ key: UInt64, _ value: [UInt8]) {
        bump()
        put(key, value)
    }

    /// A device write whose block is not cached: fills in flight must not cache.
    func bump() { epochLock.lock(); epochValue &+= 1; epochLock.unlock() }

    /// Cache what a device read returned, unless a write intervened since `since`.
    func fill(_ key: UInt64, _ value: [UInt8], since: UInt64) {
        guard epoch == since else { return }
        shard(key).fill(key, value)
    }

    private let shards: [Shard]

    init(capacity: Int, shardCount: Int = 16) {
        let n = max(1, min(shardCount, max(1, capacity / 8)))
        let per = max(1, (max(1, capacity) + n - 1) / n)
        shards = (0..<n).map { _ in Shard(capacity: per) }
    }

    @inline(__always)
    private func shard(_ key: UInt64) -> Shard {
        // Mix so sequential blocks spread over the shards.
        let h = (key &* 0x9E37_79B9_7F4A_7C15) >> 32
        return shards[Int(h % UInt64(shards.count))]
    }

    func get(_ key: UInt64) -> [UInt8]? { shard(key).get(key) }
    func put(_ key: UInt64, _ value: [UInt8]) { shard(key).put(key, value) }
    var count: Int { shards.reduce(0) { $0 + $1.count } }
    var capacity: Int { shards.reduce(0) { $0 + $1.capacity } }
}
