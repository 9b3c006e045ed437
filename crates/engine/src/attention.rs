//! Attention over paged KV blocks, with hand-vectorised dot, axpy and exp kernels.
//!
//! For one query row (one token of one sequence) and one query head, the kernel scores the row
//! against every earlier key of its sequence (the keys live in the blocks of the sequence's block
//! table), takes the softmax and sums the values. Heads that share a KV head (grouped-query
//! attention) are processed together so each key block is read from cache once per group.
//! On x86-64 with AVX2+FMA the inner loops use 8-wide FMA intrinsics and a polynomial `exp`;
//! elsewhere a portable version with the same structure runs.

use crate::kv::{KvPool, LayerKv};

/// What the kernel needs to know about one query row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowCtx<'a> {
    /// Position of the token; it attends to positions `0..=pos`.
    pub(crate) pos: usize,
    /// Block table of its sequence.
    pub(crate) table: &'a [u32],
}

/// Shape parameters shared by every row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttnShape {
    pub(crate) heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) block_size: usize,
    pub(crate) scale: f32,
    /// A row at `pos` attends to positions `pos + 1 - window ..= pos` (`usize::MAX`: all).
    pub(crate) window: usize,
}

impl AttnShape {
    pub(crate) fn of(pool: &KvPool, heads: usize) -> Self {
        Self {
            heads,
            kv_heads: pool.kv_heads(),
            head_dim: pool.head_dim(),
            block_size: pool.block_size(),
            scale: 1.0 / (pool.head_dim() as f32).sqrt(),
            window: usize::MAX,
        }
    }
}

/// Computes the attention output of one row: `q` is `[heads * head_dim]` (already rotated),
/// `out` receives `[heads * head_dim]`. `scores` is scratch space of at least `pos + 1` floats.
pub(crate) fn attend_row(
    shape: &AttnShape,
    kv: &LayerKv,
    row: RowCtx<'_>,
    q: &[f32],
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    attend_heads(shape, kv, row, 0..shape.heads, q, out, scores);
}

/// [`attend_row`] for query heads `heads` only: `q` and `out` hold those heads
/// (`[heads.len() * head_dim]`). A head's result does not depend on which others are computed
/// with it, so a row may be split over threads by heads.
pub(crate) fn attend_heads(
    shape: &AttnShape,
    kv: &LayerKv,
    row: RowCtx<'_>,
    heads: std::ops::Range<usize>,
    q: &[f32],
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    debug_assert!(heads.end <= shape.heads);
    debug_assert!(
        q.len() >= heads.len() * shape.head_dim && out.len() >= heads.len() * shape.head_dim
    );
    #[cfg(target_arch = "x86_64")]
    {
        if simd::available() {
            // SAFETY: the CPU supports AVX2 and FMA (checked at run time just above).
            unsafe { simd::attend_row_avx2(shape, kv, row, heads, q, out, scores) };
            return;
        }
    }
    portable::attend_row(shape, kv, row, heads, q, out, scores);
}

/// `out[i] = silu(gate[i]) * up[i]`, the gated activation of the MLP.
pub(crate) fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if simd::available() {
            // SAFETY: the CPU supports AVX2 and FMA (checked at run time just above).
            unsafe { simd::silu_mul(gate, up, out) };
            return;
        }
    }
    portable::silu_mul(gate, up, out);
}

macro_rules! attend_row_body {
    ($shape:ident, $kv:ident, $row:ident, $heads:ident, $q:ident, $out:ident, $scores:ident, $dot:path, $axpy:path, $softmax:path) => {{
        let hd = $shape.head_dim;
        let bs = $shape.block_size;
        let group = $shape.heads / $shape.kv_heads;
        let n_ctx = $row.pos + 1;
        // First visible position (sliding-window layers see only the last `window` tokens).
        let lo = n_ctx.saturating_sub($shape.window);
        let n_blocks = n_ctx.div_ceil(bs);
        $scores.clear();
        $scores.resize(n_ctx - lo, 0.0);
        for (i, h) in $heads.enumerate() {
            let kvh = h / group;
            let qh = &$q[i * hd..(i + 1) * hd];
            // Scores against every visible key of the context.
            for b in lo / bs..n_blocks {
                let blk = $row.table[b] as usize;
                let base = ((blk * $shape.kv_heads + kvh) * bs) * hd;
                let first = lo.max(b * bs) - b * bs;
                let len = bs.min(n_ctx - b * bs);
                let keys = &$kv.k[base + first * hd..base + len * hd];
                for (s, key) in keys.chunks_exact(hd).enumerate() {
                    $scores[b * bs + first + s - lo] = $dot(qh, key) * $shape.scale;
                }
            }
            let sum = $softmax(&mut $scores[..]);
            let inv = 1.0 / sum;
            let oh = &mut $out[i * hd..(i + 1) * hd];
            oh.fill(0.0);
            for b in lo / bs..n_blocks {
                let blk = $row.table[b] as usize;
                let base = ((blk * $shape.kv_heads + kvh) * bs) * hd;
                let first = lo.max(b * bs) - b * bs;
                let len = bs.min(n_ctx - b * bs);
                let vals = &$kv.v[base + first * hd..base + len * hd];
                for (s, val) in vals.chunks_exact(hd).enumerate() {
                    $axpy(oh, $scores[b * bs + first + s - lo] * inv, val);
                }
            }
        }
    }};
}

mod portable {
    use super::*;

    pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; 8];
        let ca = a.chunks_exact(8);
        let cb = b.chunks_exact(8);
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            for i in 0..8 {
                acc[i] += x[i] * y[i];
            }
        }
        let mut s: f32 = acc.iter().sum();
        for (x, y) in ra.iter().zip(rb) {
            s += x * y;
        }
        s
    }

    pub(super) fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        for (yi, xi) in y.iter_mut().zip(x) {
            *yi += a * xi;
        }
    }

    /// In-place `exp(x - max)`; returns the sum.
    pub(super) fn softmax_unnormalised(xs: &mut [f32]) -> f32 {
        let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for x in xs.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        sum
    }

    pub(super) fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    }

    pub(super) fn attend_row(
        shape: &AttnShape,
        kv: &LayerKv,
        row: RowCtx<'_>,
        heads: std::ops::Range<usize>,
        q: &[f32],
        out: &mut [f32],
        scores: &mut Vec<f32>,
    ) {
        attend_row_body!(
            shape,
            kv,
            row,
            heads,
            q,
            out,
            scores,
            dot,
            axpy,
            softmax_unnormalised
        )
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use super::*;
    use std::arch::x86_64::*;

    pub(super) fn available() -> bool {
        use std::sync::OnceLock;
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            acc1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
                acc1,
            );
            i += 16;
        }
        if i + 8 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            i += 8;
        }
        let mut s = hsum(_mm256_add_ps(acc0, acc1));
        while i < n {
            s += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        s
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        let n = y.len().min(x.len());
        let (py, px) = (y.as_mut_ptr(), x.as_ptr());
        let va = _mm256_set1_ps(a);
        let mut i = 0;
        while i + 8 <= n {
            let r = _mm256_fmadd_ps(va, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(py.add(i)));
            _mm256_storeu_ps(py.add(i), r);
            i += 8;
        }
        while i < n {
            *py.add(i) += a * *px.add(i);
            i += 1;
        }
    }

    /// 8-wide `exp` (Cephes polynomial; relative error around 1e-7 over the softmax range).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp8(x: __m256) -> __m256 {
        let x = _mm256_min_ps(x, _mm256_set1_ps(88.37626));
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.33654));
        let fx = _mm256_fmadd_ps(
            x,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
            _mm256_set1_ps(0.5),
        );
        let fx = _mm256_floor_ps(fx);
        let x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693_359_4), x);
        let x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.121_944_4e-4), x);
        let mut y = _mm256_set1_ps(1.987_569_1e-4);
        y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.398_2e-3));
        y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.333_452e-3));
        y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.166_579_6e-2));
        y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(0.166_666_65));
        y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(0.5));
        let x2 = _mm256_mul_ps(x, x);
        y = _mm256_fmadd_ps(y, x2, x);
        y = _mm256_add_ps(y, _mm256_set1_ps(1.0));
        let n = _mm256_cvtps_epi32(fx);
        let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_add_epi32(n, _mm256_set1_epi32(127)),
            23,
        ));
        _mm256_mul_ps(y, pow2)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn softmax_unnormalised(xs: &mut [f32]) -> f32 {
        let n = xs.len();
        let p = xs.as_mut_ptr();
        let mut max = f32::NEG_INFINITY;
        let mut i = 0;
        if n >= 8 {
            let mut vm = _mm256_loadu_ps(p);
            i = 8;
            while i + 8 <= n {
                vm = _mm256_max_ps(vm, _mm256_loadu_ps(p.add(i)));
                i += 8;
            }
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), vm);
            max = lanes.iter().copied().fold(max, f32::max);
        }
        while i < n {
            max = max.max(*p.add(i));
            i += 1;
        }
        let vmax = _mm256_set1_ps(max);
        let mut vsum = _mm256_setzero_ps();
        i = 0;
        while i + 8 <= n {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), vmax));
            _mm256_storeu_ps(p.add(i), e);
            vsum = _mm256_add_ps(vsum, e);
            i += 8;
        }
        let mut sum = hsum(vsum);
        while i < n {
            let e = (*p.add(i) - max).exp();
            *p.add(i) = e;
            sum += e;
            i += 1;
        }
        sum
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
        let n = out.len().min(gate.len()).min(up.len());
        let (pg, pu, po) = (gate.as_ptr(), up.as_ptr(), out.as_mut_ptr());
        let one = _mm256_set1_ps(1.0);
        let zero = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            let g = _mm256_loadu_ps(pg.add(i));
            let e = exp8(_mm256_sub_ps(zero, g));
            let r = _mm256_div_ps(
                _mm256_mul_ps(g, _mm256_loadu_ps(pu.add(i))),
                _mm256_add_ps(one, e),
            );
            _mm256_storeu_ps(po.add(i), r);
            i += 8;
        }
        while i < n {
            let g = *pg.add(i);
            *po.add(i) = g / (1.0 + (-g).exp()) * *pu.add(i);
            i += 1;
        }
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn attend_row_avx2(
        shape: &AttnShape,
        kv: &LayerKv,
        row: RowCtx<'_>,
        heads: std::ops::Range<usize>,
        q: &[f32],
        out: &mut [f32],
        scores: &mut Vec<f32>,
    ) {
        attend_row_body!(
            shape,
            kv,
            row,
            heads,
            q,
            out,
            scores,
            dot,
            axpy,
            softmax_unnormalised
        )
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn simd_kernels_match_portable() {
            if !available() {
                return;
            }
            let a: Vec<f32> = (0..67)
                .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.13)
                .collect();
            let b: Vec<f32> = (0..67)
                .map(|i| ((i * 17 % 7) as f32 - 3.0) * 0.21)
                .collect();
            let d = unsafe { dot(&a, &b) };
            assert!((d - super::super::portable::dot(&a, &b)).abs() < 1e-4);
            let mut s1: Vec<f32> = a.iter().map(|x| x * 7.0).collect();
            let mut s2 = s1.clone();
            let sum1 = unsafe { softmax_unnormalised(&mut s1) };
            let sum2 = super::super::portable::softmax_unnormalised(&mut s2);
            assert!((sum1 - sum2).abs() / sum2 < 1e-5, "{sum1} vs {sum2}");
            for (x, y) in s1.iter().zip(&s2) {
                assert!(
                    (x - y).abs() <= 1e-6 * y.abs().max(1e-30) + 1e-12,
                    "{x} vs {y}"
                );
            }
            let up: Vec<f32> = b.iter().map(|x| x * 3.0 - 0.5).collect();
            let gate: Vec<f32> = a.iter().map(|x| x * 40.0).collect();
            let (mut o1, mut o2) = (vec![0f32; 67], vec![0f32; 67]);
            unsafe { silu_mul(&gate, &up, &mut o1) };
            super::super::portable::silu_mul(&gate, &up, &mut o2);
            for (x, y) in o1.iter().zip(&o2) {
                assert!((x - y).abs() <= 1e-6 * y.abs().max(1.0), "{x} vs {y}");
            }
            let mut y1 = b.clone();
            let mut y2 = b.clone();
            unsafe { axpy(&mut y1, 0.7, &a) };
            super::super::portable::axpy(&mut y2, 0.7, &a);
            for (x, y) in y1.iter().zip(&y2) {
                assert!((x - y).abs() < 1e-6);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;

    fn pool(tokens: usize) -> KvPool {
        let config = ModelConfig {
            architecture: "llama".into(),
            layers: 1,
            hidden: 16,
            heads: 2,
            kv_heads: 1,
            head_dim: 8,
            ffn_hidden: 8,
            vocab: 4,
            context_length: 64,
            rms_eps: 1e-5,
            rope_theta: 1e4,
            kv_bytes_per_token: 64,
            arch: Default::default(),
        };
        KvPool::new(&config, tokens.div_ceil(4), 4).unwrap()
    }

    /// K and V of token `i` (deterministic, distinct per token).
    fn kv_of(i: usize) -> (Vec<f32>, Vec<f32>) {
        let k = (0..8)
            .map(|d| ((i * 7 + d * 3) % 11) as f32 * 0.1 - 0.5)
            .collect();
        let v = (0..8)
            .map(|d| ((i * 5 + d) % 13) as f32 * 0.2 - 1.0)
            .collect();
        (k, v)
    }

    fn fill(p: &KvPool, tokens: impl Iterator<Item = usize>) {
        let mut g = p.write_layer(0).unwrap();
        for (slot, i) in tokens.enumerate() {
            let (k, v) = kv_of(i);
            let o = p.offset(slot / 4, 0, slot % 4);
            g.k[o..o + 8].copy_from_slice(&k);
            g.v[o..o + 8].copy_from_slice(&v);
        }
    }

    #[test]
    fn sliding_window_equals_attention_over_the_last_tokens_only() {
        let q: Vec<f32> = (0..16).map(|d| (d % 5) as f32 * 0.3 - 0.6).collect();
        // All 11 tokens in the pool; the row at position 10 with a window of 5 ...
        let all = pool(11);
        fill(&all, 0..11);
        let table: Vec<u32> = (0..3).collect();
        let shape = AttnShape {
            window: 5,
            ..AttnShape::of(&all, 2)
        };
        let mut windowed = vec![0f32; 16];
        let g = all.read_layer(0).unwrap();
        let row = RowCtx {
            pos: 10,
            table: &table,
        };
        attend_row(&shape, &g, row, &q, &mut windowed, &mut Vec::new());
        // ... equals full attention over a pool that holds only tokens 6..=10.
        let last = pool(5);
        fill(&last, 6..11);
        let g2 = last.read_layer(0).unwrap();
        let mut full = vec![0f32; 16];
        let row = RowCtx {
            pos: 4,
            table: &table,
        };
        attend_row(
            &AttnShape::of(&last, 2),
            &g2,
            row,
            &q,
            &mut full,
            &mut Vec::new(),
        );
        for (a, b) in windowed.iter().zip(&full) {
            assert!((a - b).abs() < 1e-6, "{windowed:?} vs {full:?}");
        }
        // And the window matters: full attention over all 11 tokens differs.
        let mut unwindowed = vec![0f32; 16];
        let row = RowCtx {
            pos: 10,
            table: &table,
        };
        attend_row(
            &AttnShape::of(&all, 2),
            &g,
            row,
            &q,
            &mut unwindowed,
            &mut Vec::new(),
        );
        assert!(unwindowed
            .iter()
            .zip(&full)
            .any(|(a, b)| (a - b).abs() > 1e-3));
    }
}
