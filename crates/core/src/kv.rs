//! The paged KV block manager of one instance, with a prefix cache.
//!
//! Memory is cut into blocks of `block_size` tokens. A request's *table* on an instance lists its
//! blocks, either as its *primary* cache (the copy the request runs on) or as a *replica* (a copy
//! of a request whose primary lives on another instance). Replicas are evictable: when a primary
//! needs space, replicas go, in the order of the instance's [`EvictionPolicy`] (least recently
//! used first by default). A table can be *pinned* while a copy into it is in flight; a pinned
//! replica is not evicted.
//!
//! **Prefix cache.** A full block can carry a content key ([`chain_keys`]: the previous block's
//! key chained with the block's token ids). Keyed blocks are shared read-only: a new table starts
//! with the blocks whose keys match its prompt's leading keys ([`BlockManager::attach_prefix`]),
//! and each block counts its holders. A keyed block that no table holds any more stays *cached*:
//! it is handed out again on a hit, or reclaimed (least recently used first) when memory runs out,
//! before any replica is evicted. Blocks without a key return to the free list.
//!
//! **Events.** With [`BlockManager::set_record_events`] on, the manager notes every key that
//! enters or leaves its index ([`KvEvent`]), in order, for the executor to drain (vLLM's KV
//! events: [`crate::kv_events`] folds the instances' notes into one stream). Off (the default)
//! it records nothing and costs nothing; on or off, its decisions are the same.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::hash::BuildHasherDefault;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::request::RequestId;

/// Index of a block in an instance's KV pool.
pub type BlockId = u32;

/// Content key of a full KV block (never 0).
pub type BlockKey = u64;

/// The keys of one request's blocks, shared between the executor and the core.
pub type BlockKeys = std::sync::Arc<[BlockKey]>;

/// A change of the keys an instance's prefix cache holds, noted when recording is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvEvent {
    /// Block `index` of `request`'s table was given content key `key` and can now be hit;
    /// `parent` is the key of the block before it in the request's chain (0: the first block).
    Stored {
        /// The request whose block it is (its tokens are the block's content).
        request: RequestId,
        /// Position of the block in the request's table (its tokens start at
        /// `index × block_size`).
        index: u32,
        /// The block's key.
        key: BlockKey,
        /// The previous block's key in the chain (0 for the first block).
        parent: BlockKey,
    },
    /// `key` left the cache: its block was reclaimed for other content, or freed.
    Removed {
        /// The key.
        key: BlockKey,
    },
}

/// Whose copy a table is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ownership {
    /// The request's own cache, on the instance that runs it.
    Primary,
    /// A copy of a request that runs elsewhere; may be evicted.
    Replica,
}

/// Errors of the block manager.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KvError {
    /// Not enough free blocks, even after evicting every replica allowed.
    #[error("out of KV blocks: need {needed}, can free {available}")]
    OutOfBlocks {
        /// Blocks the allocation needed.
        needed: u32,
        /// Blocks that were free or evictable.
        available: u32,
    },
}

/// Which replica goes first when a primary needs room.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EvictionPolicy {
    /// The least recently used replica (last reserved, copied into or touched longest ago).
    #[default]
    Lru,
    /// The replica holding the most blocks (least recently used among equals): frees the room
    /// with the fewest victims, so the fewest requests lose their replica.
    LargestFirst,
}

/// Mixes `x` into a 64-bit key (SplitMix64's finaliser): fixed, so keys are the same in every
/// process and run, which a content address must be.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Chains `parent` (0 for the first block) with one more value into a block key (never 0).
pub fn chain_key(parent: BlockKey, value: u64) -> BlockKey {
    mix(parent ^ mix(value)).max(1)
}

/// The content keys of the full blocks of `tokens`, `block_size` tokens each: block `i`'s key
/// chains block `i - 1`'s key with its token ids, so equal keys mean equal prefixes. `salt`
/// separates everything else that changes the KV (the model, for instance).
pub fn chain_keys(tokens: &[u32], block_size: u32, salt: u64) -> Vec<BlockKey> {
    let mut keys = Vec::new();
    extend_chain_keys(&mut keys, tokens, block_size, salt);
    keys
}

/// Appends to `keys` (the [`chain_keys`] of a prefix of `tokens`) the keys of the full blocks of
/// `tokens` it lacks, continuing the chain from its last key: the keys of a stream that grew (a
/// request's generated tokens after its prompt) without hashing the known blocks again.
pub fn extend_chain_keys(keys: &mut Vec<BlockKey>, tokens: &[u32], block_size: u32, salt: u64) {
    let bs = block_size.max(1) as usize;
    let mut parent = keys.last().copied().unwrap_or_else(|| mix(salt));
    let known = (keys.len() * bs).min(tokens.len());
    for block in tokens[known..].chunks_exact(bs) {
        let mut k = parent;
        for &t in block {
            k = mix(k ^ t as u64);
        }
        parent = k.max(1);
        keys.push(parent);
    }
}

/// The content keys of the full blocks of a token stream described by runs `(stream, offset,
/// tokens)`: `tokens` tokens starting at position `offset` of the content stream `stream` (the
/// simulator's stand-in for token ids). Consecutive runs that continue one stream are one run, so
/// the keys depend on the content, not on how it was cut into runs.
pub fn run_keys(runs: &[(u64, u32, u32)], block_size: u32) -> Vec<BlockKey> {
    let bs = block_size.max(1);
    let mut merged: Vec<(u64, u32, u32)> = Vec::with_capacity(runs.len());
    for &(stream, offset, tokens) in runs.iter().filter(|r| r.2 > 0) {
        match merged.last_mut() {
            Some(last) if last.0 == stream && last.1 + last.2 == offset => last.2 += tokens,
            _ => merged.push((stream, offset, tokens)),
        }
    }
    let mut keys = Vec::new();
    let (mut parent, mut acc, mut filled) = (mix(0), 0u64, 0u32);
    for (stream, mut offset, mut left) in merged {
        while left > 0 {
            let take = left.min(bs - filled);
            acc = mix(acc ^ mix(stream ^ mix(((offset as u64) << 32) | take as u64)));
            filled += take;
            offset += take;
            left -= take;
            if filled == bs {
                parent = chain_key(parent, acc);
                keys.push(parent);
                (acc, filled) = (0, 0);
            }
        }
    }
    keys
}

#[derive(Debug, Clone)]
struct Table {
    blocks: Vec<BlockId>,
    ownership: Ownership,
    last_used: u64,
    pins: u32,
}

impl Table {
    fn evictable(&self) -> bool {
        self.ownership == Ownership::Replica && self.pins == 0
    }

    /// Whether this is a replica pinned by a copy in flight.
    fn pinned_replica(&self) -> bool {
        self.ownership == Ownership::Replica && self.pins > 0
    }

    fn primary(&self) -> u32 {
        u32::from(self.ownership == Ownership::Primary)
    }
}

/// Holders of one block, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Holders {
    /// Tables holding it.
    refs: u32,
    /// Of those, primaries.
    primary: u32,
}

/// Number of KV blocks that fit in `device_bytes` after `weight_bytes` and a `reserve_fraction` of
/// the device are set aside.
pub fn capacity_blocks(
    device_bytes: u64,
    weight_bytes: u64,
    reserve_fraction: f64,
    kv_bytes_per_token: u64,
    block_size: u32,
) -> u32 {
    let usable = device_bytes as f64 * (1.0 - reserve_fraction) - weight_bytes as f64;
    let per_block = (kv_bytes_per_token * block_size as u64).max(1) as f64;
    (usable / per_block).max(0.0).floor().min(u32::MAX as f64) as u32
}

/// Hashes a block key to itself: keys are well-mixed 64-bit hashes already ([`mix`]), so the
/// index needs no second hash (SipHash was a fifth of a prefix-cached simulation's time), and
/// the identity is as deterministic as a content address must be.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used for keys; anything else is folded in, still deterministic.
        for &b in bytes {
            self.0 = mix(self.0 ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, k: u64) {
        self.0 = k;
    }
}

/// The key index: block key to the block carrying it.
type KeyIndex = HashMap<BlockKey, BlockId, BuildHasherDefault<KeyHasher>>;

/// No block (the ends of the cached list).
const NIL: BlockId = BlockId::MAX;

/// The cached blocks in the order they were cached (least recently first), as a list threaded
/// through per-block links: appending, unlinking a hit and taking the oldest are O(1), where an
/// ordered set cost a tree operation per block.
#[derive(Debug, Clone)]
struct CachedList {
    prev: Vec<BlockId>,
    next: Vec<BlockId>,
    head: BlockId,
    tail: BlockId,
    len: u32,
}

impl CachedList {
    fn new(n: u32) -> Self {
        Self {
            prev: vec![NIL; n as usize],
            next: vec![NIL; n as usize],
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }

    /// Appends `b` (not in the list) as the most recently cached.
    fn push_back(&mut self, b: BlockId) {
        self.prev[b as usize] = self.tail;
        self.next[b as usize] = NIL;
        match self.tail {
            NIL => self.head = b,
            t => self.next[t as usize] = b,
        }
        self.tail = b;
        self.len += 1;
    }

    /// Takes `b` (in the list) out.
    fn unlink(&mut self, b: BlockId) {
        let (p, n) = (self.prev[b as usize], self.next[b as usize]);
        match p {
            NIL => self.head = n,
            p => self.next[p as usize] = n,
        }
        match n {
            NIL => self.tail = p,
            n => self.prev[n as usize] = p,
        }
        self.prev[b as usize] = NIL;
        self.next[b as usize] = NIL;
        self.len -= 1;
    }

    /// Takes out the least recently cached block.
    fn pop_front(&mut self) -> Option<BlockId> {
        let b = self.head;
        if b == NIL {
            return None;
        }
        self.unlink(b);
        Some(b)
    }

    /// The blocks, least recently cached first.
    fn iter(&self) -> impl Iterator<Item = BlockId> + '_ {
        std::iter::successors((self.head != NIL).then_some(self.head), |&b| {
            let n = self.next[b as usize];
            (n != NIL).then_some(n)
        })
    }
}

/// Paged KV blocks of one instance.
#[derive(Debug, Clone)]
pub struct BlockManager {
    block_size: u32,
    num_blocks: u32,
    free: Vec<BlockId>,
    tables: Vec<Option<Table>>,
    holders: Vec<Holders>,
    /// Content key of each block (0: none).
    keys: Vec<BlockKey>,
    index: KeyIndex,
    /// Keyed blocks no table holds, least recently released first.
    cached: CachedList,
    /// When each cached block was cached (for the invariant check: the list is in this order).
    cached_at: Vec<u64>,
    primary_blocks: u32,
    replica_blocks: u32,
    replica_lru: BTreeSet<(u64, RequestId)>,
    /// Blocks in pinned replica tables (kept from eviction while copies land). Counted per table:
    /// pins change every iteration, so they must not cost a pass over the table's blocks.
    pinned_blocks: u32,
    tick: u64,
    eviction: EvictionPolicy,
    replicas_as_cache: bool,
    /// Key changes since the last [`Self::take_events`], when recording.
    events: Vec<KvEvent>,
    record_events: bool,
}

impl BlockManager {
    /// A manager of `num_blocks` blocks of `block_size` tokens each.
    pub fn new(num_blocks: u32, block_size: u32) -> Self {
        Self {
            block_size: block_size.max(1),
            num_blocks,
            // Hand out low block ids first.
            free: (0..num_blocks).rev().collect(),
            tables: Vec::new(),
            holders: vec![Holders::default(); num_blocks as usize],
            keys: vec![0; num_blocks as usize],
            index: KeyIndex::default(),
            cached: CachedList::new(num_blocks),
            cached_at: vec![0; num_blocks as usize],
            primary_blocks: 0,
            replica_blocks: 0,
            replica_lru: BTreeSet::new(),
            pinned_blocks: 0,
            tick: 0,
            eviction: EvictionPolicy::Lru,
            replicas_as_cache: true,
            events: Vec::new(),
            record_events: false,
        }
    }

    /// Whether to note every key that enters or leaves the cache ([`KvEvent`]; off by default).
    pub fn set_record_events(&mut self, on: bool) {
        self.record_events = on;
        if !on {
            self.events = Vec::new();
        }
    }

    /// Whether key changes are noted.
    pub fn record_events(&self) -> bool {
        self.record_events
    }

    /// Moves the key changes noted since the last call, oldest first, to the end of `out`.
    pub fn take_events(&mut self, out: &mut Vec<KvEvent>) {
        out.append(&mut self.events);
    }

    /// Empties the pool, as a restarted worker's memory is: every table, key and cached block
    /// goes (each key noted as removed when recording). Settings and recording are kept; the
    /// state is that of a new manager with the same settings.
    pub fn clear(&mut self) {
        if self.record_events {
            for (b, &key) in self.keys.iter().enumerate() {
                if key != 0 && self.index.get(&key) == Some(&(b as BlockId)) {
                    self.events.push(KvEvent::Removed { key });
                }
            }
        }
        let mut fresh = Self::new(self.num_blocks, self.block_size);
        fresh.eviction = self.eviction;
        fresh.replicas_as_cache = self.replicas_as_cache;
        fresh.record_events = self.record_events;
        fresh.events = std::mem::take(&mut self.events);
        *self = fresh;
    }

    /// Forgets every cached prefix (vLLM's `reset_prefix_cache`): possible only while no table
    /// holds a block; returns whether it was done. Nothing is noted per key: the caller reports
    /// the whole cache cleared.
    pub fn reset_prefix_cache(&mut self) -> bool {
        if self.primary_blocks + self.replica_blocks > 0 {
            return false;
        }
        let record = std::mem::replace(&mut self.record_events, false);
        self.clear();
        self.record_events = record;
        true
    }

    /// Sets which replica is evicted first when a primary needs room.
    pub fn set_eviction(&mut self, policy: EvictionPolicy) {
        self.eviction = policy;
    }

    /// Which replica is evicted first.
    pub fn eviction(&self) -> EvictionPolicy {
        self.eviction
    }

    /// Whether blocks only replicas hold can be hit, and stay cached when the replica is freed
    /// (true by default). Off, a replica's blocks are forgotten by the cache when it ends.
    pub fn set_replicas_as_cache(&mut self, on: bool) {
        self.replicas_as_cache = on;
    }

    /// Whether replica blocks serve as prefix cache.
    pub fn replicas_as_cache(&self) -> bool {
        self.replicas_as_cache
    }

    /// The replica the eviction policy gives up first, if any is evictable.
    pub fn next_victim(&self) -> Option<RequestId> {
        let mut order = self.replica_lru.iter().map(|&(_, r)| r);
        match self.eviction {
            EvictionPolicy::Lru => order.next(),
            EvictionPolicy::LargestFirst => {
                // Only a strictly larger one replaces the pick: among equals the least recently
                // used goes first. A scan, but evictions are rare (only when memory runs short).
                let mut best: Option<(u32, RequestId)> = None;
                for r in order {
                    let n = self.held(r);
                    if best.is_none_or(|(m, _)| n > m) {
                        best = Some((n, r));
                    }
                }
                best.map(|(_, r)| r)
            }
        }
    }

    /// Tokens per block.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Blocks in the pool.
    pub fn num_blocks(&self) -> u32 {
        self.num_blocks
    }

    /// Blocks no table holds: free ones plus cached ones (reclaimable at no cost).
    pub fn free_blocks(&self) -> u32 {
        self.free.len() as u32 + self.cached.len
    }

    /// Of [`Self::free_blocks`], the cached ones (keyed, kept for prefix hits).
    pub fn cached_blocks(&self) -> u32 {
        self.cached.len
    }

    /// Blocks held by at least one primary.
    pub fn primary_blocks(&self) -> u32 {
        self.primary_blocks
    }

    /// Blocks held by replicas only.
    pub fn replica_blocks(&self) -> u32 {
        self.replica_blocks
    }

    /// Blocks a primary can surely obtain: free and cached ones plus those held only by replicas,
    /// less the blocks of pinned replicas. Exact without shared blocks; with them it may count a
    /// shared block of a pinned replica twice, erring on the safe side.
    pub fn available_for_primary(&self) -> u32 {
        self.free_blocks() + self.replica_blocks.saturating_sub(self.pinned_blocks)
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: u32) -> u32 {
        tokens.div_ceil(self.block_size)
    }

    /// Blocks in `req`'s table here (0 if none).
    #[inline]
    pub fn held(&self, req: RequestId) -> u32 {
        self.entry(req).map_or(0, |t| t.blocks.len() as u32)
    }

    /// Extra blocks `req` needs to hold `tokens` tokens here.
    pub fn extra_for(&self, req: RequestId, tokens: u32) -> u32 {
        self.blocks_for(tokens).saturating_sub(self.held(req))
    }

    /// The block table of `req` here, if it holds any.
    pub fn table(&self, req: RequestId) -> Option<&[BlockId]> {
        self.entry(req).map(|t| t.blocks.as_slice())
    }

    /// Whose copy `req`'s blocks here are.
    pub fn ownership(&self, req: RequestId) -> Option<Ownership> {
        self.entry(req).map(|t| t.ownership)
    }

    /// Copies in flight into `req`'s table here ([`Self::pin`]s not undone yet).
    pub fn pins(&self, req: RequestId) -> u32 {
        self.entry(req).map_or(0, |t| t.pins)
    }

    /// Unpinned replicas held here, least recently used first.
    pub fn replicas_lru(&self) -> impl Iterator<Item = RequestId> + '_ {
        self.replica_lru.iter().map(|&(_, r)| r)
    }

    fn entry(&self, req: RequestId) -> Option<&Table> {
        self.tables.get(req.index()).and_then(Option::as_ref)
    }

    /// Whether block `b` may serve a hit: keyed, and not held by replicas only unless replicas
    /// count as cache.
    fn hittable(&self, b: BlockId) -> bool {
        let h = self.holders[b as usize];
        self.replicas_as_cache || h.refs == 0 || h.primary > 0
    }

    /// How many of `keys`' leading blocks are cached here (held or not).
    pub fn lookup(&self, keys: &[BlockKey]) -> u32 {
        keys.iter()
            .take_while(|k| self.index.get(k).is_some_and(|&b| self.hittable(b)))
            .count() as u32
    }

    /// Adds `dh` to block `b`'s holders, keeping the counters and the free and cached sets right.
    fn adjust(&mut self, b: BlockId, refs: i32, primary: i32) {
        let i = b as usize;
        let old = self.holders[i];
        let class = |h: Holders| {
            (
                u32::from(h.primary > 0),
                u32::from(h.refs > 0 && h.primary == 0),
            )
        };
        let (p0, r0) = class(old);
        let h = &mut self.holders[i];
        h.refs = h.refs.wrapping_add_signed(refs);
        h.primary = h.primary.wrapping_add_signed(primary);
        let new = *h;
        let (p1, r1) = class(new);
        self.primary_blocks = self.primary_blocks + p1 - p0;
        self.replica_blocks = self.replica_blocks + r1 - r0;
        if old.refs > 0 && new.refs == 0 {
            let keep = self.keys[i] != 0 && (self.replicas_as_cache || old.primary > 0);
            if keep {
                self.tick += 1;
                self.cached_at[i] = self.tick;
                self.cached.push_back(b);
            } else {
                self.forget(b);
                self.free.push(b);
            }
        }
    }

    /// Drops block `b`'s key.
    fn forget(&mut self, b: BlockId) {
        let k = std::mem::take(&mut self.keys[b as usize]);
        if k == 0 {
            return;
        }
        // One probe: the entry, removed only if it names this block.
        if let Entry::Occupied(e) = self.index.entry(k) {
            if *e.get() != b {
                return;
            }
            e.remove();
            if self.record_events {
                self.events.push(KvEvent::Removed { key: k });
            }
        }
    }

    /// A block for new content: a free one, else the least recently cached one (its key
    /// forgotten). The caller checked that one exists.
    fn take_block(&mut self) -> Option<BlockId> {
        if let Some(b) = self.free.pop() {
            return Some(b);
        }
        let b = self.cached.pop_front()?;
        self.forget(b);
        Some(b)
    }

    fn table_mut(&mut self, req: RequestId, ownership: Ownership) -> &mut Table {
        let idx = req.index();
        if self.tables.len() <= idx {
            self.tables.resize_with(idx + 1, || None);
        }
        let tick = self.tick;
        self.tables[idx].get_or_insert_with(|| Table {
            blocks: Vec::new(),
            ownership,
            last_used: tick,
            pins: 0,
        })
    }

    /// Starts `req`'s table here with the cached blocks of `keys`' leading blocks, at most
    /// `max_blocks` of them; `req` must hold nothing here yet. Returns how many blocks it shares.
    pub fn attach_prefix(
        &mut self,
        req: RequestId,
        ownership: Ownership,
        keys: &[BlockKey],
        max_blocks: u32,
    ) -> u32 {
        if self.entry(req).is_some() {
            return 0;
        }
        let n = self.lookup(keys).min(max_blocks);
        if n == 0 {
            return 0;
        }
        self.tick += 1;
        let tick = self.tick;
        let table = self.table_mut(req, ownership);
        table.last_used = tick;
        let primary = table.primary() as i32;
        let evictable = table.evictable();
        for k in &keys[..n as usize] {
            let Some(&b) = self.index.get(k) else { break };
            if self.holders[b as usize].refs == 0 {
                self.cached.unlink(b);
            }
            self.adjust(b, 1, primary);
            if let Some(Some(t)) = self.tables.get_mut(req.index()) {
                t.blocks.push(b);
            }
        }
        if evictable {
            self.replica_lru.insert((tick, req));
        }
        n
    }

    /// Gives content keys to `req`'s blocks `from..to` here, as far as `keys` and its table reach
    /// (the caller names only blocks whose tokens are all computed). A key another block already
    /// carries is left there (the first copy stays the one hits find).
    pub fn publish(&mut self, req: RequestId, keys: &[BlockKey], from: u32, to: u32) {
        let Some(t) = self.tables.get(req.index()).and_then(Option::as_ref) else {
            return;
        };
        let end = keys.len().min(t.blocks.len()).min(to as usize);
        let from = (from as usize).min(end);
        for (i, (&b, &k)) in t.blocks[from..end].iter().zip(&keys[from..end]).enumerate() {
            let k = k.max(1);
            if self.keys[b as usize] != 0 {
                continue;
            }
            let Entry::Vacant(slot) = self.index.entry(k) else {
                continue;
            };
            slot.insert(b);
            self.keys[b as usize] = k;
            if self.record_events {
                let index = from + i;
                let parent = index.checked_sub(1).map_or(0, |p| keys[p].max(1));
                self.events.push(KvEvent::Stored {
                    request: req,
                    index: index as u32,
                    key: k,
                    parent,
                });
            }
        }
    }

    /// Grows `req`'s table here so it holds `tokens` tokens. A primary may evict replicas (in
    /// [`Self::next_victim`] order) to make room; their ids are appended to `evicted`. A replica
    /// only takes free or cached blocks. On error nothing changes.
    pub fn reserve(
        &mut self,
        req: RequestId,
        ownership: Ownership,
        tokens: u32,
        evicted: &mut Vec<RequestId>,
    ) -> Result<(), KvError> {
        if let Some(t) = self.entry(req) {
            debug_assert_eq!(t.ownership, ownership, "reserve with a different ownership");
        }
        let needed = self.extra_for(req, tokens);
        if needed == 0 {
            self.touch(req);
            return Ok(());
        }
        // Our own replica blocks do not count as evictable for ourselves.
        let available = match ownership {
            Ownership::Primary => self.available_for_primary(),
            Ownership::Replica => self.free_blocks(),
        };
        if needed > available {
            return Err(KvError::OutOfBlocks { needed, available });
        }
        while self.free_blocks() < needed {
            let Some(victim) = self.next_victim() else {
                break;
            };
            self.release(victim);
            evicted.push(victim);
        }
        self.tick += 1;
        let tick = self.tick;
        let table = self.table_mut(req, ownership);
        let old_tick = table.last_used;
        table.last_used = tick;
        let primary = table.primary() as i32;
        let (evictable, pinned) = (table.evictable(), table.pinned_replica());
        if pinned {
            self.pinned_blocks += needed;
        }
        for _ in 0..needed {
            // Checked above: enough blocks are free or cached.
            let Some(b) = self.take_block() else { break };
            self.adjust(b, 1, primary);
            if let Some(Some(t)) = self.tables.get_mut(req.index()) {
                t.blocks.push(b);
            }
        }
        if evictable {
            self.replica_lru.remove(&(old_tick, req));
            self.replica_lru.insert((tick, req));
        }
        Ok(())
    }

    /// Marks `req`'s table as just used (for LRU eviction of replicas).
    #[inline]
    pub fn touch(&mut self, req: RequestId) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(Some(t)) = self.tables.get_mut(req.index()) {
            if t.evictable() {
                self.replica_lru.remove(&(t.last_used, req));
                self.replica_lru.insert((tick, req));
            }
            t.last_used = tick;
        }
    }

    /// Drops `req`'s table here; returns how many blocks it held. Blocks no one else holds become
    /// free, or cached if they carry a key.
    pub fn release(&mut self, req: RequestId) -> u32 {
        let Some(slot) = self.tables.get_mut(req.index()) else {
            return 0;
        };
        let Some(t) = slot.take() else {
            return 0;
        };
        let n = t.blocks.len() as u32;
        if t.evictable() {
            self.replica_lru.remove(&(t.last_used, req));
        }
        if t.pinned_replica() {
            self.pinned_blocks -= n;
        }
        let primary = t.primary() as i32;
        // Released last to first, so the lowest ids end on top of the free list.
        for &b in t.blocks.iter().rev() {
            self.adjust(b, -1, -primary);
        }
        n
    }

    /// Changes whose copy `req`'s table here is (a migration swaps primary and replica).
    pub fn set_ownership(&mut self, req: RequestId, ownership: Ownership) {
        let Some(Some(t)) = self.tables.get_mut(req.index()) else {
            return;
        };
        if t.ownership == ownership {
            return;
        }
        let (e0, pin0) = (t.evictable(), t.pinned_replica());
        t.ownership = ownership;
        let (e1, pin1, last) = (t.evictable(), t.pinned_replica(), t.last_used);
        let n = t.blocks.len() as u32;
        let dp = if ownership == Ownership::Primary {
            1
        } else {
            -1
        };
        let blocks = std::mem::take(&mut t.blocks);
        for &b in &blocks {
            self.adjust(b, 0, dp);
        }
        if let Some(Some(t)) = self.tables.get_mut(req.index()) {
            t.blocks = blocks;
        }
        if e0 {
            self.replica_lru.remove(&(last, req));
        }
        if e1 {
            self.replica_lru.insert((last, req));
        }
        if pin0 {
            self.pinned_blocks -= n;
        }
        if pin1 {
            self.pinned_blocks += n;
        }
    }

    /// Pins `req`'s table here while a copy into it is in flight: a pinned replica is not
    /// evicted. Pins nest; each needs an [`Self::unpin`].
    pub fn pin(&mut self, req: RequestId) {
        let Some(Some(t)) = self.tables.get_mut(req.index()) else {
            return;
        };
        let (e0, last) = (t.evictable(), t.last_used);
        t.pins += 1;
        if e0 {
            self.replica_lru.remove(&(last, req));
            self.pinned_blocks += t.blocks.len() as u32;
        }
    }

    /// Undoes one [`Self::pin`].
    pub fn unpin(&mut self, req: RequestId) {
        let Some(Some(t)) = self.tables.get_mut(req.index()) else {
            return;
        };
        let e0 = t.evictable();
        t.pins = t.pins.saturating_sub(1);
        if t.evictable() && !e0 {
            self.replica_lru.insert((t.last_used, req));
            self.pinned_blocks -= t.blocks.len() as u32;
        }
    }

    /// Checks the manager's invariants: every block is free, cached or held; holder counts and
    /// counters agree with the tables; the key index points at blocks carrying those keys; free
    /// blocks carry no key and cached ones do. Returns a description of the first violation.
    pub fn check_invariants(&self) -> Result<(), String> {
        let n = self.num_blocks as usize;
        let mut holders = vec![Holders::default(); n];
        let (mut lru, mut pinned) = (0usize, 0u32);
        for (i, t) in self.tables.iter().enumerate() {
            let Some(t) = t else { continue };
            let mut seen = BTreeSet::new();
            for &b in &t.blocks {
                let h = holders
                    .get_mut(b as usize)
                    .ok_or_else(|| format!("block {b} out of range"))?;
                if !seen.insert(b) {
                    return Err(format!("request {i} holds block {b} twice"));
                }
                h.refs += 1;
                h.primary += t.primary();
            }
            let listed = self
                .replica_lru
                .contains(&(t.last_used, RequestId(i as u32)));
            if listed != t.evictable() {
                return Err(format!(
                    "request {i}: LRU membership disagrees with its table"
                ));
            }
            if t.evictable() {
                lru += 1;
            }
            if t.pinned_replica() {
                pinned += t.blocks.len() as u32;
            }
        }
        let mut state = vec![0u8; n];
        for &b in &self.free {
            let s = state
                .get_mut(b as usize)
                .ok_or_else(|| format!("free block {b} out of range"))?;
            if *s != 0 {
                return Err(format!("block {b} free twice"));
            }
            *s = 1;
            if self.keys[b as usize] != 0 {
                return Err(format!("free block {b} carries a key"));
            }
        }
        let mut last_at = 0;
        let mut listed = 0u32;
        for b in self.cached.iter().take(n + 1) {
            listed += 1;
            let at = self.cached_at.get(b as usize).copied().unwrap_or(0);
            if at <= last_at {
                return Err(format!("cached block {b} out of order"));
            }
            last_at = at;
            let s = state
                .get_mut(b as usize)
                .ok_or_else(|| format!("cached block {b} out of range"))?;
            if *s != 0 {
                return Err(format!("block {b} both free and cached"));
            }
            *s = 2;
            if self.keys[b as usize] == 0 || self.cached_at[b as usize] != at {
                return Err(format!(
                    "cached block {b} without a key or with a stale time"
                ));
            }
        }
        if listed != self.cached.len {
            return Err(format!(
                "cached list holds {listed} blocks, counted {}",
                self.cached.len
            ));
        }
        let (mut primary, mut replica) = (0u32, 0u32);
        for (b, h) in holders.iter().enumerate() {
            if *h != self.holders[b] {
                return Err(format!("block {b}: holder counts disagree with the tables"));
            }
            match (h.refs > 0, state[b]) {
                (true, 0) | (false, 1) | (false, 2) => {}
                (true, _) => return Err(format!("block {b} both held and free or cached")),
                (false, _) => return Err(format!("block {b} leaked")),
            }
            primary += u32::from(h.primary > 0);
            replica += u32::from(h.refs > 0 && h.primary == 0);
        }
        for (&k, &b) in &self.index {
            if self.keys.get(b as usize) != Some(&k) {
                return Err(format!(
                    "index maps a key to block {b}, which carries another"
                ));
            }
        }
        if self.keys.iter().filter(|&&k| k != 0).count() != self.index.len() {
            return Err("a keyed block is missing from the index".into());
        }
        if primary != self.primary_blocks || replica != self.replica_blocks {
            return Err("block counters disagree with the tables".into());
        }
        if lru != self.replica_lru.len() || pinned != self.pinned_blocks {
            return Err("LRU order or evictable count holds stale entries".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn primary_evicts_replicas_lru_first() {
        let mut kv = BlockManager::new(4, 16);
        let mut ev = Vec::new();
        kv.reserve(RequestId(1), Ownership::Replica, 16, &mut ev)
            .unwrap();
        kv.reserve(RequestId(2), Ownership::Replica, 16, &mut ev)
            .unwrap();
        kv.touch(RequestId(1));
        kv.reserve(RequestId(3), Ownership::Primary, 48, &mut ev)
            .unwrap();
        assert_eq!(ev, vec![RequestId(2)]);
        assert_eq!(kv.ownership(RequestId(1)), Some(Ownership::Replica));
        kv.check_invariants().unwrap();
    }

    #[test]
    fn largest_first_evicts_the_biggest_replica_and_lru_among_equals() {
        let mut kv = BlockManager::new(8, 16);
        kv.set_eviction(EvictionPolicy::LargestFirst);
        let mut ev = Vec::new();
        // Replicas of 1, 3 and 3 blocks (request 2 used before request 3), 1 block free.
        kv.reserve(RequestId(1), Ownership::Replica, 16, &mut ev)
            .unwrap();
        kv.reserve(RequestId(2), Ownership::Replica, 48, &mut ev)
            .unwrap();
        kv.reserve(RequestId(3), Ownership::Replica, 48, &mut ev)
            .unwrap();
        assert_eq!(kv.next_victim(), Some(RequestId(2)));
        // Two blocks more than free: one victim suffices, the largest and least recently used.
        kv.reserve(RequestId(4), Ownership::Primary, 48, &mut ev)
            .unwrap();
        assert_eq!(ev, vec![RequestId(2)]);
        // Pinned replicas are skipped: the next largest unpinned one goes.
        kv.pin(RequestId(3));
        ev.clear();
        kv.reserve(RequestId(4), Ownership::Primary, 80, &mut ev)
            .unwrap();
        assert_eq!(ev, vec![RequestId(1)]);
        assert_eq!(kv.ownership(RequestId(3)), Some(Ownership::Replica));
        kv.check_invariants().unwrap();
    }

    #[test]
    fn replica_never_evicts() {
        let mut kv = BlockManager::new(2, 16);
        let mut ev = Vec::new();
        kv.reserve(RequestId(0), Ownership::Replica, 32, &mut ev)
            .unwrap();
        let err = kv.reserve(RequestId(1), Ownership::Replica, 1, &mut ev);
        assert!(matches!(
            err,
            Err(KvError::OutOfBlocks {
                needed: 1,
                available: 0
            })
        ));
        assert!(ev.is_empty());
    }

    #[test]
    fn failed_reserve_changes_nothing() {
        let mut kv = BlockManager::new(3, 4);
        let mut ev = Vec::new();
        kv.reserve(RequestId(0), Ownership::Primary, 8, &mut ev)
            .unwrap();
        assert!(kv
            .reserve(RequestId(1), Ownership::Primary, 8, &mut ev)
            .is_err());
        assert_eq!(kv.free_blocks(), 1);
        assert_eq!(kv.held(RequestId(1)), 0);
        kv.check_invariants().unwrap();
    }

    #[test]
    fn a_released_prefix_stays_cached_and_is_shared_by_the_next_request() {
        let mut kv = BlockManager::new(8, 4);
        let mut ev = Vec::new();
        let keys = chain_keys(&[1, 2, 3, 4, 5, 6, 7, 8, 9], 4, 0);
        assert_eq!(keys.len(), 2);
        kv.reserve(RequestId(0), Ownership::Primary, 9, &mut ev)
            .unwrap();
        kv.publish(RequestId(0), &keys, 0, 2);
        let first: Vec<BlockId> = kv.table(RequestId(0)).unwrap()[..2].to_vec();
        // A second request with the same prompt shares both full blocks while the first runs.
        assert_eq!(
            kv.attach_prefix(RequestId(1), Ownership::Primary, &keys, 2),
            2
        );
        assert_eq!(kv.table(RequestId(1)).unwrap(), first.as_slice());
        assert_eq!(kv.primary_blocks(), 3);
        kv.release(RequestId(0));
        kv.release(RequestId(1));
        // Both full blocks stay cached (and count as free); the partial one is free.
        assert_eq!((kv.cached_blocks(), kv.free_blocks()), (2, 8));
        assert_eq!(kv.lookup(&keys), 2);
        // Another prompt's keys differ from the first block on.
        assert_eq!(kv.lookup(&chain_keys(&[1, 2, 3, 5, 5, 6, 7, 8], 4, 0)), 0);
        // Memory pressure reclaims cached blocks, least recently cached first: a table is
        // released tail first, so the head of a prefix, which more prompts share, goes last.
        kv.reserve(RequestId(2), Ownership::Primary, 28, &mut ev)
            .unwrap();
        assert_eq!(kv.cached_blocks(), 1);
        assert_eq!(kv.lookup(&keys), 1, "the first block still hits");
        kv.check_invariants().unwrap();
    }

    #[test]
    fn extended_chain_keys_equal_the_keys_of_the_whole_stream() {
        let tokens: Vec<u32> = (0..100).map(|t| t * 7 % 13).collect();
        let mut keys = chain_keys(&tokens[..40], 16, 3);
        assert_eq!(keys.len(), 2);
        // The stream grows a token at a time: keys appear as blocks fill, never twice.
        for n in 41..=tokens.len() {
            extend_chain_keys(&mut keys, &tokens[..n], 16, 3);
            assert_eq!(keys, chain_keys(&tokens[..n], 16, 3));
        }
        assert_eq!(keys.len(), 6);
    }

    #[test]
    fn keys_depend_on_content_not_on_how_it_was_cut() {
        let whole = run_keys(&[(7, 0, 40)], 16);
        let cut = run_keys(&[(7, 0, 5), (7, 5, 30), (7, 35, 5)], 16);
        assert_eq!(whole, cut);
        assert_eq!(whole.len(), 2);
        // A different stream after the first block changes only the later keys.
        let other = run_keys(&[(7, 0, 16), (8, 0, 24)], 16);
        assert_eq!(other[0], whole[0]);
        assert_ne!(other[1], whole[1]);
        assert_eq!(
            chain_keys(&[1, 2, 3, 4], 2, 0),
            chain_keys(&[1, 2, 3, 4, 5], 2, 0)
        );
        assert_ne!(
            chain_keys(&[1, 2, 3, 4], 2, 0),
            chain_keys(&[1, 2, 3, 4], 2, 1)
        );
    }

    #[test]
    fn evicting_a_replica_frees_only_what_nobody_else_holds() {
        let mut kv = BlockManager::new(6, 4);
        let mut ev = Vec::new();
        let keys = chain_keys(&[1; 8], 4, 0);
        kv.reserve(RequestId(0), Ownership::Replica, 12, &mut ev)
            .unwrap();
        kv.publish(RequestId(0), &keys, 0, 2);
        assert_eq!(kv.available_for_primary(), 6);
        // A primary shares two of the replica's blocks: they are no longer evictable.
        assert_eq!(
            kv.attach_prefix(RequestId(1), Ownership::Primary, &keys, 2),
            2
        );
        assert_eq!(kv.available_for_primary(), 4);
        assert_eq!((kv.primary_blocks(), kv.replica_blocks()), (2, 1));
        kv.reserve(RequestId(2), Ownership::Primary, 16, &mut ev)
            .unwrap();
        assert_eq!(ev, vec![RequestId(0)]);
        assert_eq!(
            kv.held(RequestId(1)),
            2,
            "shared blocks survive the replica"
        );
        kv.check_invariants().unwrap();
    }

    #[test]
    fn capacity_subtracts_weights_and_reserve() {
        // 100 bytes, 10% reserve, 40 bytes of weights: 50 bytes for 5-byte blocks -> 10 blocks.
        assert_eq!(capacity_blocks(100, 40, 0.1, 5, 1), 10);
        assert_eq!(capacity_blocks(10, 40, 0.0, 5, 1), 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Reserve(u32, bool, u32),
        Release(u32),
        Flip(u32),
        Touch(u32),
        Pin(u32),
        Unpin(u32),
        Attach(u32, bool, u32),
        Publish(u32, u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u32..12, any::<bool>(), 0u32..80).prop_map(|(r, p, t)| Op::Reserve(r, p, t)),
            2 => (0u32..12).prop_map(Op::Release),
            1 => (0u32..12).prop_map(Op::Flip),
            1 => (0u32..12).prop_map(Op::Touch),
            1 => (0u32..12).prop_map(Op::Pin),
            1 => (0u32..12).prop_map(Op::Unpin),
            2 => (0u32..12, any::<bool>(), 0u32..10).prop_map(|(r, p, n)| Op::Attach(r, p, n)),
            2 => (0u32..12, 0u32..10).prop_map(|(r, n)| Op::Publish(r, n)),
        ]
    }

    /// Request `r`'s token stream: one of three, so requests share prefixes.
    fn stream_keys(r: u32) -> Vec<BlockKey> {
        run_keys(&[((r % 3) as u64, 0, 80)], 8)
    }

    proptest! {
        #[test]
        fn invariants_hold_under_any_sequence(
            ops in proptest::collection::vec(op(), 1..200),
            largest_first in any::<bool>(),
            replicas_as_cache in any::<bool>(),
            record in any::<bool>(),
        ) {
            let mut kv = BlockManager::new(24, 8);
            kv.set_record_events(record);
            // The keys the events say are cached, replayed: always the index's keys.
            let mut told = std::collections::BTreeSet::new();
            let mut events = Vec::new();
            if largest_first {
                kv.set_eviction(EvictionPolicy::LargestFirst);
            }
            kv.set_replicas_as_cache(replicas_as_cache);
            let mut ev = Vec::new();
            let mut pins = [0u32; 12];
            // What each block holds: the key of the stream block written into it (0: nothing).
            let mut content = [0u64; 24];
            for op in ops {
                let pinned: Vec<RequestId> = (0..12).filter(|&r| pins[r as usize] > 0).map(RequestId).collect();
                match op {
                    Op::Pin(r) if kv.held(RequestId(r)) > 0 => pins[r as usize] += 1,
                    Op::Unpin(r) => pins[r as usize] = pins[r as usize].saturating_sub(1),
                    Op::Release(r) => pins[r as usize] = 0,
                    _ => {}
                }
                match op {
                    Op::Reserve(r, primary, tokens) => {
                        let req = RequestId(r);
                        let own = kv.ownership(req).unwrap_or(if primary { Ownership::Primary } else { Ownership::Replica });
                        let before = kv.held(req);
                        ev.clear();
                        match kv.reserve(req, own, tokens, &mut ev) {
                            Ok(()) => prop_assert!(kv.held(req) >= kv.blocks_for(tokens).max(before)),
                            Err(_) => prop_assert_eq!(kv.held(req), before),
                        }
                        // Only unpinned replicas are ever evicted, and never by a replica.
                        prop_assert!(ev.is_empty() || own == Ownership::Primary);
                        for v in &ev { prop_assert!(!pinned.contains(v), "evicted a pinned replica"); }
                        for v in &ev { prop_assert_eq!(kv.held(*v), 0); pins[v.index()] = 0; }
                        // The request computes its new blocks: they hold its stream's content.
                        let keys = stream_keys(r);
                        let table = kv.table(req).unwrap_or(&[]).to_vec();
                        for (i, &b) in table.iter().enumerate().skip(before as usize) {
                            content[b as usize] = keys.get(i).copied().unwrap_or(0);
                        }
                    }
                    Op::Release(r) => { kv.release(RequestId(r)); }
                    Op::Flip(r) => {
                        let req = RequestId(r);
                        if let Some(o) = kv.ownership(req) {
                            kv.set_ownership(req, if o == Ownership::Primary { Ownership::Replica } else { Ownership::Primary });
                        }
                    }
                    Op::Touch(r) => kv.touch(RequestId(r)),
                    Op::Pin(r) => kv.pin(RequestId(r)),
                    Op::Unpin(r) => kv.unpin(RequestId(r)),
                    Op::Attach(r, primary, max) => {
                        let req = RequestId(r);
                        let own = if primary { Ownership::Primary } else { Ownership::Replica };
                        let keys = stream_keys(r);
                        let had = kv.held(req);
                        let found = kv.lookup(&keys);
                        let n = kv.attach_prefix(req, own, &keys, max);
                        if had > 0 {
                            prop_assert_eq!(n, 0);
                        } else {
                            prop_assert_eq!(n, found.min(max));
                            // A hit hands out blocks whose content is the prefix asked for.
                            let table = kv.table(req).unwrap_or(&[]);
                            for (i, &b) in table.iter().enumerate() {
                                prop_assert_eq!(content[b as usize], keys[i], "hit on a block with other content");
                            }
                        }
                    }
                    Op::Publish(r, upto) => {
                        // Only blocks whose content is the stream's own are ever published.
                        let req = RequestId(r);
                        let keys = stream_keys(r);
                        let table = kv.table(req).unwrap_or(&[]);
                        let ok = table.iter().take(upto as usize).enumerate().take_while(|&(i, &b)| content[b as usize] == keys[i]).count();
                        kv.publish(req, &keys, 0, ok as u32);
                    }
                }
                prop_assert!(kv.primary_blocks() + kv.replica_blocks() + kv.free_blocks() == kv.num_blocks());
                if let Err(e) = kv.check_invariants() { prop_assert!(false, "{}", e); }
                kv.take_events(&mut events);
                for e in events.drain(..) {
                    match e {
                        KvEvent::Stored { key, .. } => prop_assert!(told.insert(key), "stored twice"),
                        KvEvent::Removed { key } => prop_assert!(told.remove(&key), "removed unstored"),
                    }
                }
                if record {
                    let index: std::collections::BTreeSet<BlockKey> = kv.index.keys().copied().collect();
                    prop_assert_eq!(&told, &index);
                }
            }
            for r in 0..12 { kv.release(RequestId(r)); }
            prop_assert_eq!(kv.free_blocks(), kv.num_blocks());
            if let Err(e) = kv.check_invariants() { prop_assert!(false, "{}", e); }
        }
    }
}
