//! Paged KV storage: one preallocated pool of fixed-size blocks per instance.
//!
//! The scheduling core decides which block ids a sequence uses (its *block table*); the pool only
//! stores. Every layer sits behind its own lock, so another thread can copy layer `l` of some
//! blocks into a partner pool ([`copy_blocks`]) while the forward pass that owns this pool goes on
//! with later layers. Within one layer, a block holds `block_size` tokens laid out as
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

/// Copies layers `layers` of blocks `pairs[i].0` of `src` into blocks `pairs[i].1` of `dst`.
///
/// Locks one layer at a time (read on `src`, write on `dst`), so it can run on another thread
/// while a forward pass on `src` works on other layers. `src` and `dst` may be the same pool.
pub fn copy_blocks(
    src: &KvPool,
    dst: &KvPool,
    pairs: &[(u32, u32)],
    layers: Range<usize>,
) -> Result<()> {
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
    for &(s, d) in pairs {
        if s as usize >= src.num_blocks || d as usize >= dst.num_blocks {
            return Err(EngineError::InvalidBlocks(format!(
                "block pair ({s}, {d}) out of range ({} / {} blocks)",
                src.num_blocks, dst.num_blocks
            )));
        }
    }
    let n = src.block_floats();
    let same = std::ptr::eq(src, dst);
    for l in layers {
        if same {
            let mut g = src.write_layer(l)?;
            let g = &mut *g;
            for &(s, d) in pairs {
                let (s, d) = (s as usize * n, d as usize * n);
                g.k.copy_within(s..s + n, d);
                g.v.copy_within(s..s + n, d);
            }
        } else {
            let from = src.read_layer(l)?;
            let mut to = dst.write_layer(l)?;
            for &(s, d) in pairs {
                let (s, d) = (s as usize * n, d as usize * n);
                to.k[d..d + n].copy_from_slice(&from.k[s..s + n]);
                to.v[d..d + n].copy_from_slice(&from.v[s..s + n]);
            }
        }
    }
    Ok(())
}
