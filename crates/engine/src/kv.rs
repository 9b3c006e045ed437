//! Paged KV storage: one preallocated pool of fixed-size blocks per instance.
//!
//! The scheduling core decides which block ids a sequence uses (its *block table*); the pool only
//! stores. Every layer sits behind its own lock, so another thread can copy layer `l` of some
//! tokens into a partner pool ([`copy_kv`], token slots named by [`KvSpan`]s) while the forward
//! pass that owns this pool goes on with later layers. Within one layer, a block holds `block_size` tokens laid out as
//! `[kv_head][slot][head_dim]`, so the keys of one head inside a block are one contiguous run of
//! f32 values — the attention kernel's dot products read them with unit stride.

use std::ops::Range;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::config::ModelConfig;
use crate::error::{EngineError, Result};

/// Default number of tokens per KV block.
pub const DEFAULT_BLOCK_SIZE: usize = 16;

/// K and V of one layer for every block of the pool.
pub(crate) struct LayerKv {
    pub(crate) k: Vec<f32>,
    pub(crate) v: Vec<f32>,
}

/// A preallocated pool of paged KV blocks for every layer of one model.
pub struct KvPool {
    layers: Vec<RwLock<LayerKv>>,
    num_blocks: usize,
    block_size: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl std::fmt::Debug for KvPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvPool")
            .field("layers", &self.layers.len())
            .field("num_blocks", &self.num_blocks)
            .field("block_size", &self.block_size)
            .field("kv_heads", &self.kv_heads)
            .field("head_dim", &self.head_dim)
            .finish()
    }
}

impl KvPool {
    /// Allocates `num_blocks` blocks of `block_size` tokens for every layer of `config`.
    /// Memory is zeroed lazily by the OS, so a large pool costs little until it is written.
    pub fn new(config: &ModelConfig, num_blocks: usize, block_size: usize) -> Result<Self> {
        if block_size == 0 || num_blocks == 0 {
            return Err(EngineError::InvalidBlocks(
                "a KV pool needs at least one block of at least one token".into(),
            ));
        }
        let per_layer = num_blocks * block_size * config.kv_heads * config.head_dim;
        let layers = (0..config.layers)
            .map(|_| {
                RwLock::new(LayerKv {
                    k: vec![0.0; per_layer],
                    v: vec![0.0; per_layer],
                })
            })
            .collect();
        Ok(Self {
            layers,
            num_blocks,
            block_size,
            kv_heads: config.kv_heads,
            head_dim: config.head_dim,
        })
    }

    /// Allocates as many blocks as fit in `bytes` (at least one).
    pub fn with_capacity_bytes(
        config: &ModelConfig,
        bytes: usize,
        block_size: usize,
    ) -> Result<Self> {
        let per_block = config.kv_bytes_per_token * block_size.max(1);
        Self::new(config, (bytes / per_block).max(1), block_size)
    }

    /// Number of blocks.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Number of layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Bytes of K+V storage per block, all layers together.
    pub fn block_bytes(&self) -> usize {
        2 * self.layers.len() * self.block_floats() * std::mem::size_of::<f32>()
    }

    /// Total bytes of K+V storage.
    pub fn total_bytes(&self) -> usize {
        self.block_bytes() * self.num_blocks
    }

    /// Floats of K (or V) per block in one layer.
    pub(crate) fn block_floats(&self) -> usize {
        self.block_size * self.kv_heads * self.head_dim
    }

    pub(crate) fn kv_heads(&self) -> usize {
        self.kv_heads
    }

    pub(crate) fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Whether this pool can hold the KV of `config` (same layer count and head layout).
    pub fn fits(&self, config: &ModelConfig) -> bool {
        self.layers.len() == config.layers
            && self.kv_heads == config.kv_heads
            && self.head_dim == config.head_dim
    }

    pub(crate) fn read_layer(&self, layer: usize) -> Result<RwLockReadGuard<'_, LayerKv>> {
        self.layers[layer].read().map_err(|_| EngineError::Poisoned)
    }

    pub(crate) fn write_layer(&self, layer: usize) -> Result<RwLockWriteGuard<'_, LayerKv>> {
        self.layers[layer]
            .write()
            .map_err(|_| EngineError::Poisoned)
    }

    /// Offset of `(block, kv_head, slot)` in a layer's K or V vector.
    #[inline]
    pub(crate) fn offset(&self, block: usize, kv_head: usize, slot: usize) -> usize {
        ((block * self.kv_heads + kv_head) * self.block_size + slot) * self.head_dim
    }

    /// Copies K and V of one token (`[kv_heads * head_dim]` each) out of the pool; for tests
    /// and debugging.
    pub fn read_token(
        &self,
        layer: usize,
        block: u32,
        slot: usize,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        if layer >= self.layers.len()
            || block as usize >= self.num_blocks
            || slot >= self.block_size
        {
            return Err(EngineError::InvalidBlocks(format!(
                "layer {layer} block {block} slot {slot} out of range"
            )));
        }
        let g = self.read_layer(layer)?;
        let mut k = Vec::with_capacity(self.kv_heads * self.head_dim);
        let mut v = Vec::with_capacity(self.kv_heads * self.head_dim);
        for h in 0..self.kv_heads {
            let o = self.offset(block as usize, h, slot);
            k.extend_from_slice(&g.k[o..o + self.head_dim]);
            v.extend_from_slice(&g.v[o..o + self.head_dim]);
        }
        Ok((k, v))
    }
}

/// One run of token slots to copy: slots `slots` of block `src_block` in the source pool go
/// to the same slots of block `dst_block` in the destination pool.
///
/// A token at position `p` of a sequence sits in slot `p % block_size` of block
/// `table[p / block_size]`, so the same position has the same slot in every pool of the same
/// block size; [`KvSpan::for_positions`] builds the spans for a range of positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvSpan {
    /// Block in the source pool.
    pub src_block: u32,
    /// Block in the destination pool.
    pub dst_block: u32,
    /// Slots inside both blocks (non-empty, at most the block size).
    pub slots: Range<u32>,
}

impl KvSpan {
    /// The spans that copy token positions `positions` of one sequence whose blocks are
    /// `src_table` in the source pool and `dst_table` in the destination pool.
    ///
    /// Fails when either table has no block for a position in the range. An empty range gives
    /// no spans.
    pub fn for_positions(
        src_table: &[u32],
        dst_table: &[u32],
        positions: Range<usize>,
        block_size: usize,
    ) -> Result<Vec<KvSpan>> {
        if block_size == 0 || positions.start > positions.end {
            return Err(EngineError::InvalidBlocks(format!(
                "positions {positions:?} with block size {block_size}"
            )));
        }
        if positions.is_empty() {
            return Ok(Vec::new());
        }
        let blocks = positions.end.div_ceil(block_size);
        if blocks > src_table.len() || blocks > dst_table.len() {
            return Err(EngineError::InvalidBlocks(format!(
                "positions {positions:?} need {blocks} blocks of {block_size} tokens, but the \
                 tables have {} (source) and {} (destination)",
                src_table.len(),
                dst_table.len()
            )));
        }
        let mut spans = Vec::with_capacity(blocks - positions.start / block_size);
        let mut p = positions.start;
        while p < positions.end {
            let b = p / block_size;
            let end = positions.end.min((b + 1) * block_size);
            spans.push(KvSpan {
                src_block: src_table[b],
                dst_block: dst_table[b],
                slots: (p % block_size) as u32..(end - b * block_size) as u32,
            });
            p = end;
        }
        Ok(spans)
    }

    /// Number of token slots the span covers.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the span covers no slot (such a span is rejected by [`copy_kv`]).
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// Copies layers `layers` of the token slots named by `spans` from `src` into `dst`, and
/// returns the bytes of K and V copied (tokens × layers × K+V of one token in one layer).
///
/// `src` and `dst` may be the same pool. Spans are checked before anything is copied: every
/// block must exist in its pool and every slot range must be non-empty and inside a block.
///
/// Between two pools, each layer's two locks (read on `src`, write on `dst`) are taken in one
/// global order, the pool at the lower address first, so any number of threads may copy
/// between any pools in any directions, alongside forward passes, without deadlock — provided
/// no thread waits on another thread while it holds a layer lock (forward passes do not).
/// Copying through a scratch buffer, never holding two locks, was measured 1.3–2× slower
/// (see `docs/engine.md`).
pub fn copy_kv(src: &KvPool, dst: &KvPool, spans: &[KvSpan], layers: Range<usize>) -> Result<u64> {
    if src.layers.len() != dst.layers.len()
        || src.block_size != dst.block_size
        || src.kv_heads != dst.kv_heads
        || src.head_dim != dst.head_dim
    {
        return Err(EngineError::InvalidBlocks(format!(
            "pools have different shapes ({src:?} vs {dst:?})"
        )));
    }
    if layers.end > src.layers.len() || layers.start > layers.end {
        return Err(EngineError::InvalidBlocks(format!(
            "layer range {layers:?} outside 0..{}",
            src.layers.len()
        )));
    }
    let mut tokens = 0usize;
    for s in spans {
        if s.src_block as usize >= src.num_blocks || s.dst_block as usize >= dst.num_blocks {
            return Err(EngineError::InvalidBlocks(format!(
                "span {s:?} names a block out of range ({} source / {} destination blocks)",
                src.num_blocks, dst.num_blocks
            )));
        }
        if s.slots.is_empty() || s.slots.end as usize > src.block_size {
            return Err(EngineError::InvalidBlocks(format!(
                "span {s:?}: slot range must be non-empty and within 0..{}",
                src.block_size
            )));
        }
        tokens += s.len();
    }
    let hd = src.head_dim;
    let per_token_layer = 2 * src.kv_heads * hd * std::mem::size_of::<f32>();
    let bytes = (tokens * layers.len() * per_token_layer) as u64;
    if tokens == 0 {
        return Ok(bytes);
    }
    // Offset and length (floats) of each contiguous run: one per span and KV head.
    let runs = || {
        spans.iter().flat_map(move |s| {
            let n = s.len() * hd;
            (0..src.kv_heads).map(move |h| {
                (
                    src.offset(s.src_block as usize, h, s.slots.start as usize),
                    dst.offset(s.dst_block as usize, h, s.slots.start as usize),
                    n,
                )
            })
        })
    };
    if std::ptr::eq(src, dst) {
        for l in layers {
            let mut g = src.write_layer(l)?;
            let g = &mut *g;
            for (s, d, n) in runs() {
                g.k.copy_within(s..s + n, d);
                g.v.copy_within(s..s + n, d);
            }
        }
        return Ok(bytes);
    }
    // Two pools: lock both layers, always the pool at the lower address first, so that any
    // number of copies between any pools, in any directions, cannot wait on each other in a
    // cycle (a forward pass holds one layer lock at a time and waits on nothing meanwhile).
    let src_first = (src as *const KvPool) < (dst as *const KvPool);
    for l in layers {
        let (from, mut to) = if src_first {
            let from = src.read_layer(l)?;
            (from, dst.write_layer(l)?)
        } else {
            let to = dst.write_layer(l)?;
            (src.read_layer(l)?, to)
        };
        for (s, d, n) in runs() {
            to.k[d..d + n].copy_from_slice(&from.k[s..s + n]);
            to.v[d..d + n].copy_from_slice(&from.v[s..s + n]);
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::sync::Arc;
    use std::time::Duration;

    const BS: usize = 4;

    fn config() -> ModelConfig {
        ModelConfig {
            architecture: "llama".into(),
            layers: 3,
            hidden: 8,
            heads: 2,
            kv_heads: 2,
            head_dim: 4,
            ffn_hidden: 8,
            vocab: 16,
            context_length: 64,
            rms_eps: 1e-5,
            rope_theta: 10000.0,
            kv_bytes_per_token: 2 * 3 * 2 * 4 * 4,
            arch: Default::default(),
        }
    }

    /// A pool whose every value encodes (pool tag, layer, block, head, slot, dim, K or V).
    fn tagged_pool(tag: f32, blocks: usize) -> KvPool {
        let p = KvPool::new(&config(), blocks, BS).unwrap();
        for l in 0..p.num_layers() {
            let mut g = p.write_layer(l).unwrap();
            for (i, x) in g.k.iter_mut().enumerate() {
                *x = tag * 1e6 + (l * 10_000 + i) as f32;
            }
            for (i, x) in g.v.iter_mut().enumerate() {
                *x = -(tag * 1e6 + (l * 10_000 + i) as f32);
            }
        }
        p
    }

    fn token(p: &KvPool, layer: usize, block: u32, slot: usize) -> (Vec<f32>, Vec<f32>) {
        p.read_token(layer, block, slot).unwrap()
    }

    #[test]
    fn spans_follow_the_block_tables() {
        let spans = KvSpan::for_positions(&[7, 8, 9], &[1, 2, 3], 3..9, BS).unwrap();
        assert_eq!(
            spans,
            vec![
                KvSpan {
                    src_block: 7,
                    dst_block: 1,
                    slots: 3..4
                },
                KvSpan {
                    src_block: 8,
                    dst_block: 2,
                    slots: 0..4
                },
                KvSpan {
                    src_block: 9,
                    dst_block: 3,
                    slots: 0..1
                },
            ]
        );
        let one = KvSpan::for_positions(&[7, 8], &[1, 2], 6..7, BS).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].slots, 2..3);
        assert!(KvSpan::for_positions(&[7], &[1], 5..5, BS)
            .unwrap()
            .is_empty());
        // Position 8 needs a third block.
        assert!(KvSpan::for_positions(&[7, 8], &[1, 2, 3], 6..9, BS).is_err());
        assert!(KvSpan::for_positions(&[7, 8, 9], &[1, 2], 6..9, BS).is_err());
        #[allow(clippy::reversed_empty_ranges)]
        let backwards = 5..3;
        assert!(KvSpan::for_positions(&[7, 8], &[1, 2], backwards, BS).is_err());
    }

    #[test]
    fn partial_copy_moves_exactly_the_named_slots() {
        let src = tagged_pool(1.0, 4);
        let dst = tagged_pool(2.0, 4);
        let before = tagged_pool(2.0, 4);
        let spans = [KvSpan {
            src_block: 3,
            dst_block: 1,
            slots: 1..3,
        }];
        let bytes = copy_kv(&src, &dst, &spans, 1..3).unwrap();
        // 2 tokens x 2 layers x (K+V of 2 heads x 4 dims) f32.
        assert_eq!(bytes, (2 * 2 * 2 * 2 * 4 * 4) as u64);
        for l in 0..3 {
            for b in 0..4u32 {
                for slot in 0..BS {
                    let copied = l >= 1 && b == 1 && (1..3).contains(&slot);
                    let want = if copied {
                        token(&src, l, 3, slot)
                    } else {
                        token(&before, l, b, slot)
                    };
                    assert_eq!(
                        token(&dst, l, b, slot),
                        want,
                        "layer {l} block {b} slot {slot} (copied: {copied})"
                    );
                }
            }
        }
    }

    #[test]
    fn copy_inside_one_pool_moves_slots() {
        let p = tagged_pool(1.0, 3);
        let before = tagged_pool(1.0, 3);
        let spans = [KvSpan {
            src_block: 0,
            dst_block: 2,
            slots: 0..1,
        }];
        copy_kv(&p, &p, &spans, 0..3).unwrap();
        for l in 0..3 {
            assert_eq!(token(&p, l, 2, 0), token(&before, l, 0, 0));
            assert_eq!(token(&p, l, 2, 1), token(&before, l, 2, 1));
            assert_eq!(token(&p, l, 0, 0), token(&before, l, 0, 0));
        }
    }

    #[test]
    fn bad_spans_are_rejected_before_anything_is_copied() {
        let src = tagged_pool(1.0, 2);
        let dst = tagged_pool(2.0, 2);
        let good = KvSpan {
            src_block: 0,
            dst_block: 0,
            slots: 0..1,
        };
        let cases = [
            (
                KvSpan {
                    src_block: 2,
                    ..good.clone()
                },
                "block out of range",
            ),
            (
                KvSpan {
                    dst_block: 9,
                    ..good.clone()
                },
                "block out of range",
            ),
            (
                KvSpan {
                    slots: 2..2,
                    ..good.clone()
                },
                "non-empty",
            ),
            (
                KvSpan {
                    slots: 3..5,
                    ..good.clone()
                },
                "within 0..4",
            ),
        ];
        for (bad, words) in cases {
            let e = copy_kv(&src, &dst, &[good.clone(), bad.clone()], 0..3)
                .unwrap_err()
                .to_string();
            assert!(e.contains(words), "{bad:?}: {e}");
        }
        assert_eq!(token(&dst, 0, 0, 0), token(&tagged_pool(2.0, 2), 0, 0, 0));
        assert!(copy_kv(&src, &dst, std::slice::from_ref(&good), 0..4).is_err());
        let other = KvPool::new(&config(), 2, 8).unwrap();
        assert!(copy_kv(&src, &other, &[good], 0..1).is_err());
        assert_eq!(copy_kv(&src, &dst, &[], 0..3).unwrap(), 0);
    }

    /// Two links copying the same layers in opposite directions, while two "forward passes"
    /// take each layer's write lock of their own pool in turn (as instances do), must all
    /// finish. The forward passes make both links wait on their source's lock and then get it
    /// at the same moment, which deadlocks a copy that simply takes the source's lock first.
    /// A deadlock fails the test after the timeout instead of hanging the suite.
    #[test]
    fn opposite_direction_copies_do_not_deadlock() {
        let pools = Arc::new([tagged_pool(1.0, 8), tagged_pool(2.0, 8)]);
        let spans: Vec<KvSpan> = (0..8u32)
            .map(|b| KvSpan {
                src_block: b,
                dst_block: 7 - b,
                slots: (b % 4)..4,
            })
            .collect();
        let spans = Arc::new(spans);
        let start = Arc::new(std::sync::Barrier::new(4));
        let (done_tx, done_rx) = mpsc::channel();
        for (from, to) in [(0usize, 1usize), (1, 0)] {
            let (pools, spans, done) = (pools.clone(), spans.clone(), done_tx.clone());
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                for _ in 0..2000 {
                    for l in 0..3 {
                        copy_kv(&pools[from], &pools[to], &spans, l..l + 1).unwrap();
                    }
                }
                done.send(()).unwrap();
            });
        }
        // The two forward passes take the same layer of their pools at about the same time and
        // release it at about the same time, so both links tend to wake up holding their
        // source's read lock together. Like real forward passes, they wait on nothing while
        // holding a layer lock (they line up between layers).
        let in_step = Arc::new(std::sync::Barrier::new(2));
        for own in 0..2 {
            let (pools, done, start) = (pools.clone(), done_tx.clone(), start.clone());
            let in_step = in_step.clone();
            std::thread::spawn(move || {
                start.wait();
                for i in 0..1000 {
                    in_step.wait();
                    let mut g = pools[own].write_layer(i % 3).unwrap();
                    g.k[0] += 1.0;
                    std::thread::sleep(Duration::from_micros(50));
                    drop(g);
                }
                done.send(()).unwrap();
            });
        }
        drop(done_tx);
        for _ in 0..4 {
            done_rx
                .recv_timeout(Duration::from_secs(120))
                .expect("copies in opposite directions deadlocked (or took over 2 minutes)");
        }
    }
}
