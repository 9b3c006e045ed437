//! KV of some token slots as a flat buffer, for sending one layer over a network link:
//! [`KvPool::read_spans`] on the source, [`KvPool::write_spans`] on the destination.
//!
//! The buffer holds, for each span in order and each KV head, the span's K values and then its
//! V values (`slots × head_dim` values each), so both sides agree on the layout from the spans
//! alone. Values travel as the pool's `f32` or narrowed to IEEE half precision ([`KvValue`]):
//! the source narrows while it gathers, the destination widens while it scatters, so `f16`
//! halves the bytes at no extra pass over them.

use half::f16;

use crate::error::{EngineError, Result};
use crate::kv::{KvPool, KvSpan};

/// A value type KV travels in: the pool's own `f32`, or `f16` (rounded to nearest; values
/// beyond ±65504 become infinite).
pub trait KvValue: Copy + bytemuck::Pod + Send + Sync + 'static {
    /// Appends `src` converted to this type.
    fn extend_from_f32(out: &mut Vec<Self>, src: &[f32]);
    /// Writes `src` converted to `f32` into `dst` (same length).
    fn widen_into(dst: &mut [f32], src: &[Self]);
}

impl KvValue for f32 {
    fn extend_from_f32(out: &mut Vec<Self>, src: &[f32]) {
        out.extend_from_slice(src);
    }
    fn widen_into(dst: &mut [f32], src: &[Self]) {
        dst.copy_from_slice(src);
    }
}

impl KvValue for f16 {
    fn extend_from_f32(out: &mut Vec<Self>, src: &[f32]) {
        use half::slice::HalfFloatSliceExt as _;
        let at = out.len();
        out.resize(at + src.len(), f16::ZERO);
        // F16C where the CPU has it (detected at run time).
        out[at..].convert_from_f32_slice(src);
    }
    fn widen_into(dst: &mut [f32], src: &[Self]) {
        use half::slice::HalfFloatSliceExt as _;
        src.convert_to_f32_slice(dst);
    }
}

impl KvPool {
    /// Values [`KvPool::read_spans`] returns for `spans` (one layer).
    pub fn span_floats(&self, spans: &[KvSpan]) -> usize {
        spans.iter().map(KvSpan::len).sum::<usize>() * 2 * self.kv_heads() * self.head_dim()
    }

    fn check_spans(
        &self,
        layer: usize,
        spans: &[KvSpan],
        block: impl Fn(&KvSpan) -> u32,
    ) -> Result<()> {
        if layer >= self.num_layers() {
            return Err(EngineError::InvalidBlocks(format!(
                "layer {layer} outside 0..{}",
                self.num_layers()
            )));
        }
        for s in spans {
            if block(s) as usize >= self.num_blocks()
                || s.slots.is_empty()
                || s.slots.end as usize > self.block_size()
            {
                return Err(EngineError::InvalidBlocks(format!(
                    "span {s:?} outside a pool of {} blocks of {} tokens",
                    self.num_blocks(),
                    self.block_size()
                )));
            }
        }
        Ok(())
    }

    /// Layer `layer`'s K and V of the slots named by `spans` in their **source** blocks, as `T`.
    pub fn read_spans<T: KvValue>(&self, layer: usize, spans: &[KvSpan]) -> Result<Vec<T>> {
        self.check_spans(layer, spans, |s| s.src_block)?;
        let hd = self.head_dim();
        let mut out = Vec::with_capacity(self.span_floats(spans));
        let g = self.read_layer(layer)?;
        for s in spans {
            let n = s.len() * hd;
            for h in 0..self.kv_heads() {
                let o = self.offset(s.src_block as usize, h, s.slots.start as usize);
                T::extend_from_f32(&mut out, &g.k[o..o + n]);
                T::extend_from_f32(&mut out, &g.v[o..o + n]);
            }
        }
        Ok(out)
    }

    /// Writes `data` (laid out as [`KvPool::read_spans`] returns it) into the slots named by
    /// `spans` in their **destination** blocks of layer `layer`, widened to `f32`.
    pub fn write_spans<T: KvValue>(
        &self,
        layer: usize,
        spans: &[KvSpan],
        data: &[T],
    ) -> Result<()> {
        self.check_spans(layer, spans, |s| s.dst_block)?;
        if data.len() != self.span_floats(spans) {
            return Err(EngineError::InvalidBlocks(format!(
                "{} values for spans that hold {}",
                data.len(),
                self.span_floats(spans)
            )));
        }
        let hd = self.head_dim();
        let mut g = self.write_layer(layer)?;
        let mut at = 0;
        for s in spans {
            let n = s.len() * hd;
            for h in 0..self.kv_heads() {
                let o = self.offset(s.dst_block as usize, h, s.slots.start as usize);
                T::widen_into(&mut g.k[o..o + n], &data[at..at + n]);
                T::widen_into(&mut g.v[o..o + n], &data[at + n..at + 2 * n]);
                at += 2 * n;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;

    fn config() -> ModelConfig {
        ModelConfig {
            architecture: "llama".into(),
            layers: 2,
            hidden: 8,
            heads: 2,
            kv_heads: 2,
            head_dim: 4,
            ffn_hidden: 16,
            vocab: 10,
            context_length: 64,
            rms_eps: 1e-5,
            rope_theta: 10_000.0,
            kv_bytes_per_token: 2 * 2 * 2 * 4 * 4,
            arch: Default::default(),
        }
    }

    #[test]
    fn read_then_write_equals_copy_kv() {
        let c = config();
        let (src, via_wire, direct) = (
            KvPool::new(&c, 4, 4).unwrap(),
            KvPool::new(&c, 4, 4).unwrap(),
            KvPool::new(&c, 4, 4).unwrap(),
        );
        for l in 0..c.layers {
            let mut g = src.write_layer(l).unwrap();
            for (i, x) in g.k.iter_mut().enumerate() {
                *x = (l * 10_000 + i) as f32;
            }
            for (i, x) in g.v.iter_mut().enumerate() {
                *x = -((l * 10_000 + i) as f32);
            }
        }
        let spans = KvSpan::for_positions(&[2, 0], &[1, 3], 1..7, 4).unwrap();
        for l in 0..c.layers {
            let data = src.read_spans::<f32>(l, &spans).unwrap();
            assert_eq!(data.len(), src.span_floats(&spans));
            via_wire.write_spans(l, &spans, &data).unwrap();
        }
        crate::copy_kv(&src, &direct, &spans, 0..c.layers).unwrap();
        for l in 0..c.layers {
            for b in 0..4 {
                for slot in 0..4 {
                    assert_eq!(
                        via_wire.read_token(l, b, slot).unwrap(),
                        direct.read_token(l, b, slot).unwrap()
                    );
                }
            }
        }
        // Something was copied, and a wrong length or block is refused.
        assert_ne!(via_wire.read_token(1, 1, 1).unwrap().0[0], 0.0);
        assert!(via_wire.write_spans(0, &spans, &[0.0f32; 3]).is_err());
        let bad = [KvSpan {
            src_block: 9,
            dst_block: 0,
            slots: 0..1,
        }];
        assert!(src.read_spans::<f32>(0, &bad).is_err());
    }

    #[test]
    fn f16_round_trips_within_half_precision() {
        let c = config();
        let (src, dst) = (
            KvPool::new(&c, 4, 4).unwrap(),
            KvPool::new(&c, 4, 4).unwrap(),
        );
        for l in 0..c.layers {
            let mut g = src.write_layer(l).unwrap();
            for (i, x) in g.k.iter_mut().enumerate() {
                *x = (i as f32 * 0.377).sin() * 3.0;
            }
            for (i, x) in g.v.iter_mut().enumerate() {
                *x = (i as f32 * 0.911).cos() / 7.0;
            }
        }
        let spans = KvSpan::for_positions(&[2, 0], &[1, 3], 1..7, 4).unwrap();
        for l in 0..c.layers {
            let data = src.read_spans::<f16>(l, &spans).unwrap();
            assert_eq!(data.len(), src.span_floats(&spans));
            dst.write_spans(l, &spans, &data).unwrap();
        }
        let mut checked = 0;
        for l in 0..c.layers {
            for p in 1..7u32 {
                let (sb, db, slot) = (
                    [2, 0][p as usize / 4],
                    [1, 3][p as usize / 4],
                    p as usize % 4,
                );
                let (a, b) = (
                    src.read_token(l, sb, slot).unwrap(),
                    dst.read_token(l, db, slot).unwrap(),
                );
                for (x, y) in a.0.iter().chain(&a.1).zip(b.0.iter().chain(&b.1)) {
                    // Half precision keeps 11 significant bits: relative error at most 2^-11.
                    assert!((x - y).abs() <= x.abs() * 4.9e-4 + 1e-7, "{x} became {y}");
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 2 * 6 * 2 * 2 * 4);
        // A slot that was not sent stays untouched.
        assert_eq!(dst.read_token(0, 1, 0).unwrap().0, vec![0.0; 8]);
    }
}
