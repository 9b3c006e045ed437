//! KV events of a whole front, in the shape vLLM publishes them (`BlockStored`, `BlockRemoved`,
//! `AllBlocksCleared`), so a router that indexes where prefixes are cached (llm-d's precise
//! prefix scorer) can follow ours.
//!
//! Each instance's [`BlockManager`] notes the keys entering and leaving its own cache
//! ([`KvEvent`]). A router sees a front as one pod, so [`CacheEvents`] folds the instances'
//! notes into one stream about the front's cache: a key is *stored* when the first instance
//! gets it and *removed* when the last one loses it. Runs of consecutive blocks of one request
//! become one event, as vLLM sends a request's newly cached blocks together. Pure state: the
//! server drains it after each step and publishes; the simulator never turns it on.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use crate::kv::{BlockKey, BlockManager, KvEvent};
use crate::request::RequestId;

/// A change of the front's prefix cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheEvent {
    /// Consecutive full blocks of `request` became cached: its blocks `first_block..` (tokens
    /// from `first_block × block_size`), with these keys in chain order.
    Stored {
        /// The request whose tokens the blocks hold.
        request: RequestId,
        /// Position of the first block in the request's token stream, in blocks.
        first_block: u32,
        /// The blocks' keys.
        keys: Vec<BlockKey>,
        /// The key of the block before the first one (`None` for a stream's first block).
        parent: Option<BlockKey>,
    },
    /// These keys are no longer cached anywhere in the front.
    Removed {
        /// The keys.
        keys: Vec<BlockKey>,
    },
    /// Every cached block is gone.
    AllCleared,
}

type KeyCounts =
    HashMap<BlockKey, u32, BuildHasherDefault<std::collections::hash_map::DefaultHasher>>;

/// Folds the instances' key changes into the front's [`CacheEvent`]s.
#[derive(Debug, Clone, Default)]
pub struct CacheEvents {
    /// How many instances cache each key.
    holders: KeyCounts,
    scratch: Vec<KvEvent>,
    out: Vec<CacheEvent>,
}

impl CacheEvents {
    /// Takes the changes `kv` noted and adds the front-level events they cause.
    pub fn fold(&mut self, kv: &mut BlockManager) {
        kv.take_events(&mut self.scratch);
        for e in self.scratch.drain(..) {
            match e {
                KvEvent::Stored {
                    request,
                    index,
                    key,
                    parent,
                } => {
                    let n = self.holders.entry(key).or_insert(0);
                    *n += 1;
                    if *n > 1 {
                        continue;
                    }
                    match self.out.last_mut() {
                        Some(CacheEvent::Stored {
                            request: r,
                            first_block,
                            keys,
                            ..
                        }) if *r == request
                            && *first_block + keys.len() as u32 == index
                            && keys.last() == Some(&parent) =>
                        {
                            keys.push(key)
                        }
                        _ => self.out.push(CacheEvent::Stored {
                            request,
                            first_block: index,
                            keys: vec![key],
                            parent: (parent != 0).then_some(parent),
                        }),
                    }
                }
                KvEvent::Removed { key } => {
                    let Some(n) = self.holders.get_mut(&key) else {
                        continue;
                    };
                    *n -= 1;
                    if *n > 0 {
                        continue;
                    }
                    self.holders.remove(&key);
                    match self.out.last_mut() {
                        Some(CacheEvent::Removed { keys }) => keys.push(key),
                        _ => self.out.push(CacheEvent::Removed { keys: vec![key] }),
                    }
                }
            }
        }
    }

    /// Notes that every instance's cache was emptied at once (a prefix-cache reset).
    pub fn cleared(&mut self) {
        self.holders.clear();
        self.out.push(CacheEvent::AllCleared);
    }

    /// Keys cached somewhere in the front.
    pub fn cached_keys(&self) -> usize {
        self.holders.len()
    }

    /// Moves the events folded so far, oldest first, to the end of `out`.
    pub fn take(&mut self, out: &mut Vec<CacheEvent>) {
        out.append(&mut self.out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{chain_keys, Ownership};

    #[test]
    fn a_key_is_stored_by_the_first_instance_and_removed_by_the_last() {
        let keys = chain_keys(&(0..40).collect::<Vec<u32>>(), 8, 0);
        let mut a = BlockManager::new(8, 8);
        let mut b = BlockManager::new(8, 8);
        a.set_record_events(true);
        b.set_record_events(true);
        let mut ev = Vec::new();
        let mut front = CacheEvents::default();
        a.reserve(RequestId(0), Ownership::Primary, 40, &mut ev)
            .unwrap();
        a.publish(RequestId(0), &keys, 0, 3);
        a.publish(RequestId(0), &keys, 3, 5);
        front.fold(&mut a);
        // A replica of the same request on the other instance adds nothing new.
        b.reserve(RequestId(0), Ownership::Replica, 40, &mut ev)
            .unwrap();
        b.publish(RequestId(0), &keys, 0, 5);
        front.fold(&mut b);
        let mut out = Vec::new();
        front.take(&mut out);
        assert_eq!(
            out,
            vec![CacheEvent::Stored {
                request: RequestId(0),
                first_block: 0,
                keys: keys.clone(),
                parent: None,
            }]
        );
        // The first instance loses everything: the keys stay cached on the second.
        a.clear();
        front.fold(&mut a);
        front.take(&mut out);
        assert_eq!(out.len(), 1);
        // The second one's blocks are reclaimed for other content: now they are gone.
        b.release(RequestId(0));
        b.reserve(RequestId(1), Ownership::Primary, 64, &mut ev)
            .unwrap();
        front.fold(&mut b);
        front.take(&mut out);
        let CacheEvent::Removed { keys: mut gone } = out[1].clone() else {
            panic!("{out:?}");
        };
        gone.sort_unstable();
        let mut want = keys.clone();
        want.sort_unstable();
        assert_eq!(gone, want);
        assert_eq!(front.cached_keys(), 0);
        // Recording changes no decision: the same operations without it leave the same tables.
        let mut c = BlockManager::new(8, 8);
        c.reserve(RequestId(0), Ownership::Replica, 40, &mut ev)
            .unwrap();
        c.publish(RequestId(0), &keys, 0, 5);
        c.release(RequestId(0));
        c.reserve(RequestId(1), Ownership::Primary, 64, &mut ev)
            .unwrap();
        assert_eq!(c.table(RequestId(1)), b.table(RequestId(1)));
    }

    #[test]
    fn a_later_run_names_its_parent_and_a_reset_clears_all() {
        let keys = chain_keys(&(0..32).collect::<Vec<u32>>(), 8, 0);
        let mut a = BlockManager::new(8, 8);
        a.set_record_events(true);
        let mut ev = Vec::new();
        let mut front = CacheEvents::default();
        a.reserve(RequestId(3), Ownership::Primary, 32, &mut ev)
            .unwrap();
        a.publish(RequestId(3), &keys, 0, 2);
        front.fold(&mut a);
        let mut out = Vec::new();
        front.take(&mut out);
        // Its blocks 2..4 fill later: a run of their own, chained to block 1.
        a.publish(RequestId(3), &keys, 2, 4);
        front.fold(&mut a);
        front.take(&mut out);
        assert_eq!(
            out,
            vec![
                CacheEvent::Stored {
                    request: RequestId(3),
                    first_block: 0,
                    keys: keys[..2].to_vec(),
                    parent: None,
                },
                CacheEvent::Stored {
                    request: RequestId(3),
                    first_block: 2,
                    keys: keys[2..4].to_vec(),
                    parent: Some(keys[1]),
                },
            ]
        );
        assert!(!a.reset_prefix_cache(), "a held block keeps its key");
        a.release(RequestId(3));
        assert!(a.reset_prefix_cache());
        assert_eq!(a.lookup(&keys), 0);
        front.cleared();
        front.take(&mut out);
        assert_eq!(out.last(), Some(&CacheEvent::AllCleared));
        a.check_invariants().unwrap();
    }
}
