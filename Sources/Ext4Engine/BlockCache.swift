import Synchronization

/// Bounded LRU cache of metadata blocks, sharded by block number so
/// concurrent readers rarely contend on the same lock. Each shard's list and
/// map live in that shard's `Mutex`. Owned by `MetadataStore`, which decides
/// what goes in (MetadataStore.swift).
final class BlockCache: Sendable {
    /// One shard: an LRU list over a node array (slots are reused on eviction).
    private struct LRU: ~Copyable {
        struct Node {
            var key: UInt64
            var value: [UInt8]
            var prev: Int
            var next: Int
        }
        let capacity: Int
        var map: [UInt64: Int] = [:]
        var nodes: [Node] = []
        var head = -1 // most recently used
        var tail = -1 // least recently used

        init(capacity: Int) { self.capacity = max(1, capacity) }

        private mutating func unlink(_ i: Int) {
            let p = nodes[i].prev, n = nodes[i].next
            if p >= 0 { nodes[p].next = n } else { head = n }
            if n >= 0 { nodes[n].prev = p } else { tail = p }
            nodes[i].prev = -1
            nodes[i].next = -1
        }

        private mutating func pushFront(_ i: Int) {
            nodes[i].prev = -1
            nodes[i].next = head
            if head >= 0 { nodes[head].prev = i }
            head = i
            if tail < 0 { tail = i }
        }

        mutating func get(_ key: UInt64) -> [UInt8]? {
            guard let i = map[key] else { return nil }
            if head != i { unlink(i); pushFront(i) }
            return nodes[i].value
        }

        mutating func put(_ key: UInt64, _ value: [UInt8]) {
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
    }

    private final class Shard: Sendable {
        let lru: Mutex<LRU>
        let capacity: Int
        init(capacity: Int) {
            self.capacity = max(1, capacity)
            lru = Mutex(LRU(capacity: capacity))
        }
    }

    /// Bumped by every metadata write. A reader that filled its buffer from the
    /// device caches it only if no write happened since it started: otherwise a
    /// slow read (readahead of neighbouring blocks, outside their owners' locks)
    /// could put back a block's old contents after a writer updated it, and a
    /// stale bitmap in the cache means blocks allocated twice.
    private let epochValue = Atomic<UInt64>(0)
    var epoch: UInt64 { epochValue.load(ordering: .acquiring) }

    /// A metadata write: `value` is the block's contents now; make the cache agree.
    func wrote(_ key: UInt64, _ value: [UInt8]) {
        epochValue.wrappingAdd(1, ordering: .releasing)
        shard(key).lru.withLock { $0.put(key, value) }
    }

    /// Cache what a device read returned, unless a write intervened since
    /// `since`, and never over what a writer put there meanwhile.
    func fill(_ key: UInt64, _ value: [UInt8], since: UInt64) {
        guard epoch == since else { return }
        shard(key).lru.withLock { l in
            if l.map[key] == nil { l.put(key, value) }
        }
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

    func get(_ key: UInt64) -> [UInt8]? { shard(key).lru.withLock { $0.get(key) } }
    var count: Int { shards.reduce(0) { n, s in n + s.lru.withLock { $0.map.count } } }
    var capacity: Int { shards.reduce(0) { $0 + $1.capacity } }
}
