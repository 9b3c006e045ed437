//! The paged KV block manager of one instance.
//!
//! Memory is cut into blocks of `block_size` tokens. Every allocated block belongs to exactly one
//! request's table on this instance, either as its *primary* cache (the copy the request runs on)
//! or as a *replica* (a copy of a request whose primary lives on another instance). Replicas are
//! evictable: when a primary needs space, replicas go first, in the order of the instance's
//! [`EvictionPolicy`] (least recently used first by default). A table can be *pinned* while a copy
//! into it is in flight; a pinned replica is not evicted.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::request::RequestId;

/// Index of a block in an instance's KV pool.
pub type BlockId = u32;

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

/// Paged KV blocks of one instance.
#[derive(Debug, Clone)]
pub struct BlockManager {
    block_size: u32,
    num_blocks: u32,
    free: Vec<BlockId>,
    tables: Vec<Option<Table>>,
    primary_blocks: u32,
    replica_blocks: u32,
    replica_lru: BTreeSet<(u64, RequestId)>,
    evictable_blocks: u32,
    tick: u64,
    eviction: EvictionPolicy,
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
            primary_blocks: 0,
            replica_blocks: 0,
            replica_lru: BTreeSet::new(),
            evictable_blocks: 0,
            tick: 0,
            eviction: EvictionPolicy::Lru,
        }
    }

    /// Sets which replica is evicted first when a primary needs room.
    pub fn set_eviction(&mut self, policy: EvictionPolicy) {
        self.eviction = policy;
    }

    /// Which replica is evicted first.
    pub fn eviction(&self) -> EvictionPolicy {
        self.eviction
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

    /// Blocks nobody holds.
    pub fn free_blocks(&self) -> u32 {
        self.free.len() as u32
    }

    /// Blocks held by primaries.
    pub fn primary_blocks(&self) -> u32 {
        self.primary_blocks
    }

    /// Blocks held by replicas.
    pub fn replica_blocks(&self) -> u32 {
        self.replica_blocks
    }

    /// Blocks a primary could obtain: free ones plus every unpinned replica's.
    pub fn available_for_primary(&self) -> u32 {
        self.free_blocks() + self.evictable_blocks
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: u32) -> u32 {
        tokens.div_ceil(self.block_size)
    }

    /// Blocks held by `req` here (0 if none).
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

    /// Unpinned replicas held here, least recently used first.
    pub fn replicas_lru(&self) -> impl Iterator<Item = RequestId> + '_ {
        self.replica_lru.iter().map(|&(_, r)| r)
    }

    fn entry(&self, req: RequestId) -> Option<&Table> {
        self.tables.get(req.index()).and_then(Option::as_ref)
    }

    /// Grows `req`'s table here so it holds `tokens` tokens. A primary may evict replicas (in
    /// [`Self::next_victim`] order) to make room; their ids are appended to `evicted`. A replica
    /// only takes free blocks. On error nothing changes.
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
            Ownership::Primary => self.free_blocks() + self.evictable_blocks,
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
        let idx = req.index();
        if self.tables.len() <= idx {
            self.tables.resize_with(idx + 1, || None);
        }
        let tick = self.tick;
        let table = self.tables[idx].get_or_insert_with(|| Table {
            blocks: Vec::new(),
            ownership,
            last_used: tick,
            pins: 0,
        });
        let old_tick = table.last_used;
        table.last_used = tick;
        for _ in 0..needed {
            // Checked above: enough blocks are free.
            if let Some(b) = self.free.pop() {
                table.blocks.push(b);
            }
        }
        match ownership {
            Ownership::Primary => self.primary_blocks += needed,
            Ownership::Replica => self.replica_blocks += needed,
        }
        if table.evictable() {
            self.evictable_blocks += needed;
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

    /// Frees every block `req` holds here; returns how many.
    pub fn release(&mut self, req: RequestId) -> u32 {
        let Some(slot) = self.tables.get_mut(req.index()) else {
            return 0;
        };
        let Some(t) = slot.take() else {
            return 0;
        };
        let n = t.blocks.len() as u32;
        match t.ownership {
            Ownership::Primary => self.primary_blocks -= n,
            Ownership::Replica => self.replica_blocks -= n,
        }
        if t.evictable() {
            self.evictable_blocks -= n;
            self.replica_lru.remove(&(t.last_used, req));
        }
        self.free.extend(t.blocks.into_iter().rev());
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
        let n = t.blocks.len() as u32;
        if t.evictable() {
            self.evictable_blocks -= n;
            self.replica_lru.remove(&(t.last_used, req));
        }
        match ownership {
            Ownership::Primary => {
                self.replica_blocks -= n;
                self.primary_blocks += n;
            }
            Ownership::Replica => {
                self.primary_blocks -= n;
                self.replica_blocks += n;
            }
        }
        t.ownership = ownership;
        if t.evictable() {
            self.evictable_blocks += n;
            self.replica_lru.insert((t.last_used, req));
        }
    }

    /// Pins `req`'s table here while a copy into it is in flight: a pinned replica is not
    /// evicted. Pins nest; each needs an [`Self::unpin`].
    pub fn pin(&mut self, req: RequestId) {
        let Some(Some(t)) = self.tables.get_mut(req.index()) else {
            return;
        };
        if t.evictable() {
            self.evictable_blocks -= t.blocks.len() as u32;
            self.replica_lru.remove(&(t.last_used, req));
        }
        t.pins += 1;
    }

    /// Undoes one [`Self::pin`].
    pub fn unpin(&mut self, req: RequestId) {
        let Some(Some(t)) = self.tables.get_mut(req.index()) else {
            return;
        };
        t.pins = t.pins.saturating_sub(1);
        if t.evictable() && !self.replica_lru.contains(&(t.last_used, req)) {
            self.evictable_blocks += t.blocks.len() as u32;
            self.replica_lru.insert((t.last_used, req));
        }
    }

    /// Checks the manager's invariants: every block is free or owned by exactly one table, and the
    /// counters agree with the tables. Returns a description of the first violation.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut seen = vec![false; self.num_blocks as usize];
        for &b in &self.free {
            let s = seen
                .get_mut(b as usize)
                .ok_or_else(|| format!("free block {b} out of range"))?;
            if *s {
                return Err(format!("block {b} free twice"));
            }
            *s = true;
        }
        let (mut primary, mut replica, mut lru, mut evictable) = (0u32, 0u32, 0usize, 0u32);
        for (i, t) in self.tables.iter().enumerate() {
            let Some(t) = t else { continue };
            for &b in &t.blocks {
                let s = seen
                    .get_mut(b as usize)
                    .ok_or_else(|| format!("block {b} out of range"))?;
                if *s {
                    return Err(format!("block {b} owned twice (request {i})"));
                }
                *s = true;
            }
            match t.ownership {
                Ownership::Primary => primary += t.blocks.len() as u32,
                Ownership::Replica => replica += t.blocks.len() as u32,
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
                evictable += t.blocks.len() as u32;
            }
        }
        if let Some(b) = seen.iter().position(|s| !s) {
            return Err(format!("block {b} leaked"));
        }
        if primary != self.primary_blocks || replica != self.replica_blocks {
            return Err("block counters disagree with the tables".into());
        }
        if lru != self.replica_lru.len() || evictable != self.evictable_blocks {
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
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u32..12, any::<bool>(), 0u32..80).prop_map(|(r, p, t)| Op::Reserve(r, p, t)),
            2 => (0u32..12).prop_map(Op::Release),
            1 => (0u32..12).prop_map(Op::Flip),
            1 => (0u32..12).prop_map(Op::Touch),
            1 => (0u32..12).prop_map(Op::Pin),
            1 => (0u32..12).prop_map(Op::Unpin),
        ]
    }

    proptest! {
        #[test]
        fn invariants_hold_under_any_sequence(
            ops in proptest::collection::vec(op(), 1..200),
            largest_first in any::<bool>(),
        ) {
            let mut kv = BlockManager::new(24, 8);
            if largest_first {
                kv.set_eviction(EvictionPolicy::LargestFirst);
            }
            let mut ev = Vec::new();
            let mut pins = [0u32; 12];
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
                }
                prop_assert!(kv.primary_blocks() + kv.replica_blocks() + kv.free_blocks() == kv.num_blocks());
                if let Err(e) = kv.check_invariants() { prop_assert!(false, "{}", e); }
            }
            for r in 0..12 { kv.release(RequestId(r)); }
            prop_assert_eq!(kv.free_blocks(), kv.num_blocks());
            if let Err(e) = kv.check_invariants() { prop_assert!(false, "{}", e); }
        }
    }
}
