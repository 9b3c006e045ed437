//! Weights kept in 4-/8-bit GGML blocks, multiplied with **f32 activations** by our own kernel
//! ([`crate::WeightFormat::Blocks`]).
//!
//! candle's quantized matmul quantizes the activations to 8 bits too (Q8_0/Q8_1/Q8_K blocks)
//! and, on a CPU without AVX-512 VNNI, runs a slow generic AVX2 dot product. Here the weights
//! are dequantized block by block inside the dot product instead, so the result is the dense
//! f32 product of the stored weights up to summation order, while each decode step streams
//! 0.75 (Q4_1) or 1.1 (Q8_0) bytes per weight instead of 4.
//!
//! Q4_1 and Q8_0 tensors are kept exactly as stored (their f16 scales widened to f32); a tensor
//! in any other format is requantized to Q8_0 (8-bit weights, no longer exact).

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::error::{EngineError, Result};

/// Values per block (both block types).
pub(crate) const QK: usize = 32;

/// A Q4_1 block: `w[i] = d * q[i] + m`, `q` in 0..16; byte `j` holds `q[j]` (low nibble) and
/// `q[j + 16]` (high nibble), as in GGML.
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct Q41 {
    d: f32,
    m: f32,
    qs: [u8; 16],
}

/// A Q8_0 block: `w[i] = d * q[i]`.
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct Q80 {
    d: f32,
    qs: [i8; QK],
}

/// Rows of weight blocks, `k / 32` blocks per row.
enum Rows {
    Q41(Vec<Q41>),
    Q80(Vec<Q80>),
}

/// An `[n, k]` weight matrix in blocks.
pub(crate) struct BlockMatrix {
    rows: Rows,
    k: usize,
    n: usize,
}

/// Bytes of one GGML block in the file (f16 scales).
const GGML_Q41_BYTES: usize = 20;
const GGML_Q80_BYTES: usize = 34;

impl BlockMatrix {
    /// Whether `k` allows blocks (a multiple of 32).
    pub(crate) fn supports(k: usize) -> bool {
        k > 0 && k.is_multiple_of(QK)
    }

    /// Stacks `[n_i, k]` tensors along the output dimension. All Q4_1 or all Q8_0: kept as they
    /// are; otherwise every part is requantized to Q8_0.
    pub(crate) fn new(tensors: &[QTensor], k: usize) -> Result<Self> {
        if !Self::supports(k) {
            return Err(EngineError::Unsupported(format!(
                "block weights need an input size divisible by {QK}, got {k}"
            )));
        }
        let kb = k / QK;
        let mut n = 0;
        for t in tensors {
            n += t.shape().dims2()?.0;
        }
        let all = |dtype| tensors.iter().all(|t| t.dtype() == dtype);
        let rows = if all(GgmlDType::Q4_1) {
            let mut blocks = Vec::with_capacity(n * kb);
            for t in tensors {
                for b in t.data()?.chunks_exact(GGML_Q41_BYTES) {
                    let mut qs = [0u8; 16];
                    qs.copy_from_slice(&b[4..]);
                    blocks.push(Q41 {
                        d: f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]])),
                        m: f16_bits_to_f32(u16::from_le_bytes([b[2], b[3]])),
                        qs,
                    });
                }
            }
            Rows::Q41(blocks)
        } else {
            let mut blocks = Vec::with_capacity(n * kb);
            for t in tensors {
                let requantized;
                let data = if t.dtype() == GgmlDType::Q8_0 {
                    t.data()?
                } else {
                    let w: Tensor = t.dequantize(&Device::Cpu)?;
                    requantized = QTensor::quantize(&w, GgmlDType::Q8_0)?;
                    requantized.data()?
                };
                for b in data.chunks_exact(GGML_Q80_BYTES) {
                    let mut qs = [0i8; QK];
                    for (q, &byte) in qs.iter_mut().zip(&b[2..]) {
                        *q = byte as i8;
                    }
                    blocks.push(Q80 {
                        d: f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]])),
                        qs,
                    });
                }
            }
            Rows::Q80(blocks)
        };
        let len = match &rows {
            Rows::Q41(b) => b.len(),
            Rows::Q80(b) => b.len(),
        };
        if len != n * kb {
            return Err(EngineError::Unsupported(format!(
                "weight blocks: expected {} for [{n}, {k}], got {len}",
                n * kb
            )));
        }
        Ok(Self { rows, k, n })
    }

    /// Bytes of weight storage.
    pub(crate) fn bytes(&self) -> usize {
        match &self.rows {
            Rows::Q41(b) => std::mem::size_of_val(b.as_slice()),
            Rows::Q80(b) => std::mem::size_of_val(b.as_slice()),
        }
    }

    /// `y = x · Wᵀ` for `m` rows of `x` (`[m, k]`); returns `[m, n]`. Up to
    /// [`GEMM_MIN_ROWS`]` - 1` rows run the block kernel; more rows dequantize the matrix once
    /// and use candle's dense f32 matmul, which is faster there (docs/engine.md).
    pub(crate) fn matmul(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        if m >= GEMM_MIN_ROWS {
            let w = Tensor::from_vec(self.dequantize(), (self.n, self.k), &Device::Cpu)?;
            let xs = Tensor::from_slice(x, (m, self.k), &Device::Cpu)?;
            return Ok(xs.matmul(&w.t()?)?.flatten_all()?.to_vec1::<f32>()?);
        }
        let mut y = vec![0f32; m * self.n];
        self.gemv(x, m, &mut y);
        Ok(y)
    }

    /// The dense `[n, k]` matrix, row-major (`d * q + m` per Q4_1 value, `d * q` per Q8_0).
    fn dequantize(&self) -> Vec<f32> {
        let (k, n) = (self.k, self.n);
        let kb = k / QK;
        let mut w = vec![0f32; n * k];
        let w_ptr = w.as_mut_ptr() as usize;
        const ROWS_PER_ITEM: usize = 16;
        crate::threads::for_each_range(n.div_ceil(ROWS_PER_ITEM), |items| {
            let rows = items.start * ROWS_PER_ITEM..(items.end * ROWS_PER_ITEM).min(n);
            // SAFETY: rows `rows` of `w` (in bounds) belong to this work item alone.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(
                    (w_ptr as *mut f32).add(rows.start * k),
                    rows.len() * k,
                )
            };
            let blocks = rows.start * kb..rows.end * kb;
            for (out, b) in dst.chunks_exact_mut(QK).zip(blocks) {
                match &self.rows {
                    Rows::Q41(bs) => {
                        let blk = &bs[b];
                        for (i, &byte) in blk.qs.iter().enumerate() {
                            out[i] = (byte & 0x0F) as f32 * blk.d + blk.m;
                            out[i + 16] = (byte >> 4) as f32 * blk.d + blk.m;
                        }
                    }
                    Rows::Q80(bs) => {
                        let blk = &bs[b];
                        for (o, &q) in out.iter_mut().zip(&blk.qs) {
                            *o = q as f32 * blk.d;
                        }
                    }
                }
            }
        });
        w
    }

    /// The block kernel: `y = x · Wᵀ` for `m` rows. The output columns are split over the current
    /// rayon pool (the iteration's threads).
    fn gemv(&self, x: &[f32], m: usize, y: &mut [f32]) {
        let (k, n) = (self.k, self.n);
        assert_eq!(x.len(), m * k, "activation size");
        assert_eq!(y.len(), m * n, "output size");
        if m == 0 || n == 0 {
            return;
        }
        let kb = k / QK;
        // Per row and block, the sum of the activations (Q4_1's offset term).
        let xsum: Vec<f32> = match self.rows {
            Rows::Q41(_) => x.chunks_exact(QK).map(|c| c.iter().sum()).collect(),
            Rows::Q80(_) => Vec::new(),
        };
        let use_avx2 = avx2_available();
        let y_ptr = y.as_mut_ptr() as usize;
        // Columns per work item: big enough to amortise the scheduling, small enough to balance.
        const COLS: usize = 16;
        crate::threads::for_each_range(n.div_ceil(COLS), |items| {
            let cols = items.start * COLS..(items.end * COLS).min(n);
            for j in cols {
                for r0 in (0..m).step_by(ROWS) {
                    let rows = ROWS.min(m - r0);
                    let mut out = [0f32; ROWS];
                    let xs = &x[r0 * k..(r0 + rows) * k];
                    match &self.rows {
                        Rows::Q41(b) => {
                            let w = &b[j * kb..(j + 1) * kb];
                            let sums = &xsum[r0 * kb..(r0 + rows) * kb];
                            dot_q41(w, xs, sums, rows, &mut out, use_avx2)
                        }
                        Rows::Q80(b) => {
                            dot_q80(&b[j * kb..(j + 1) * kb], xs, rows, &mut out, use_avx2)
                        }
                    }
                    for (r, v) in out[..rows].iter().enumerate() {
                        // SAFETY: `(r0 + r) * n + j < m * n = y.len()`, and each column `j`
                        // belongs to exactly one work item, so no two threads write one element.
                        unsafe { *(y_ptr as *mut f32).add((r0 + r) * n + j) = *v };
                    }
                }
            }
        });
    }
}

/// Activation rows that share one dequantization of a weight block.
const ROWS: usize = 4;

/// From this many activation rows on, dequantizing the whole matrix and running candle's f32
/// matmul beats the block kernel (AVX2 EPYC, 1 thread: the block kernel is 2× faster than f32 at
/// 1–4 rows, even at 16, 2× slower for a 128-token prefill).
pub(crate) const GEMM_MIN_ROWS: usize = 32;

/// Whether this CPU has the AVX2 and FMA our kernel uses.
pub(crate) fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Dot products of one Q4_1 weight row with `rows` activation rows (`xs`: `[rows, k]`,
/// `sums`: `[rows, k / 32]` block sums).
fn dot_q41(w: &[Q41], xs: &[f32], sums: &[f32], rows: usize, out: &mut [f32; ROWS], avx2: bool) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: the caller checked AVX2 and FMA.
        unsafe { avx2::dot_q41(w, xs, sums, rows, out) };
        return;
    }
    let _ = avx2;
    let kb = w.len();
    for r in 0..rows {
        let x = &xs[r * kb * QK..(r + 1) * kb * QK];
        let mut acc = 0f32;
        for (b, blk) in w.iter().enumerate() {
            let xb = &x[b * QK..(b + 1) * QK];
            let mut t = 0f32;
            for (i, &byte) in blk.qs.iter().enumerate() {
                t += (byte & 0x0F) as f32 * xb[i] + (byte >> 4) as f32 * xb[i + 16];
            }
            acc += blk.d * t + blk.m * sums[r * kb + b];
        }
        out[r] = acc;
    }
}

/// Dot products of one Q8_0 weight row with `rows` activation rows (`xs`: `[rows, k]`).
fn dot_q80(w: &[Q80], xs: &[f32], rows: usize, out: &mut [f32; ROWS], avx2: bool) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: the caller checked AVX2 and FMA.
        unsafe { avx2::dot_q80(w, xs, rows, out) };
        return;
    }
    let _ = avx2;
    let kb = w.len();
    for r in 0..rows {
        let x = &xs[r * kb * QK..(r + 1) * kb * QK];
        let mut acc = 0f32;
        for (b, blk) in w.iter().enumerate() {
            let xb = &x[b * QK..(b + 1) * QK];
            let t: f32 = blk.qs.iter().zip(xb).map(|(&q, &v)| q as f32 * v).sum();
            acc += blk.d * t;
        }
        out[r] = acc;
    }
}

#[cfg(target_arch = "x86_64")]
// Rows index several parallel arrays (accumulators, offsets, activations) in step.
#[allow(clippy::needless_range_loop)]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Q41, Q80, QK, ROWS};

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// `Σ w[i] x[i]` over one block of 32, the weights already widened to 4 × 8 f32.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block_dot(w: &[__m256; 4], x: *const f32) -> __m256 {
        unsafe {
            let t = _mm256_mul_ps(w[0], _mm256_loadu_ps(x));
            let t = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(x.add(8)), t);
            let t = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(x.add(16)), t);
            _mm256_fmadd_ps(w[3], _mm256_loadu_ps(x.add(24)), t)
        }
    }

    /// # Safety
    /// AVX2 and FMA must be available; `xs` holds `rows ≤ 4` rows of `w.len() * 32` values and
    /// `sums` `rows` rows of `w.len()` values.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_q41(
        w: &[Q41],
        xs: &[f32],
        sums: &[f32],
        rows: usize,
        out: &mut [f32; ROWS],
    ) {
        let kb = w.len();
        let k = kb * QK;
        debug_assert!(rows <= ROWS && xs.len() >= rows * k && sums.len() >= rows * kb);
        let mut acc = [_mm256_setzero_ps(); ROWS];
        let mut offset = [0f32; ROWS];
        let mask = _mm_set1_epi8(0x0F);
        for (b, blk) in w.iter().enumerate() {
            // SAFETY: `qs` is 16 bytes; the x reads stay inside row `r`'s block `b`.
            unsafe {
                let q = _mm_loadu_si128(blk.qs.as_ptr() as *const __m128i);
                let lo = _mm_and_si128(q, mask); // values 0..16
                let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), mask); // values 16..32
                let wv = [
                    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)),
                    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128::<8>(lo))),
                    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)),
                    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128::<8>(hi))),
                ];
                let d = _mm256_set1_ps(blk.d);
                for r in 0..rows {
                    let t = block_dot(&wv, xs.as_ptr().add(r * k + b * QK));
                    acc[r] = _mm256_fmadd_ps(d, t, acc[r]);
                    offset[r] += blk.m * sums[r * kb + b];
                }
            }
        }
        for r in 0..rows {
            out[r] = hsum(acc[r]) + offset[r];
        }
    }

    /// # Safety
    /// AVX2 and FMA must be available; `xs` holds `rows ≤ 4` rows of `w.len() * 32` values.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_q80(w: &[Q80], xs: &[f32], rows: usize, out: &mut [f32; ROWS]) {
        let kb = w.len();
        let k = kb * QK;
        debug_assert!(rows <= ROWS && xs.len() >= rows * k);
        let mut acc = [_mm256_setzero_ps(); ROWS];
        for (b, blk) in w.iter().enumerate() {
            // SAFETY: `qs` is 32 bytes read as four 8-byte loads; x reads as in `dot_q41`.
            unsafe {
                let p = blk.qs.as_ptr() as *const __m128i;
                let wv = [
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p))),
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                        blk.qs.as_ptr().add(8) as *const __m128i,
                    ))),
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                        blk.qs.as_ptr().add(16) as *const __m128i,
                    ))),
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                        blk.qs.as_ptr().add(24) as *const __m128i,
                    ))),
                ];
                let d = _mm256_set1_ps(blk.d);
                for r in 0..rows {
                    let t = block_dot(&wv, xs.as_ptr().add(r * k + b * QK));
                    acc[r] = _mm256_fmadd_ps(d, t, acc[r]);
                }
            }
        }
        for r in 0..rows {
            out[r] = hsum(acc[r]);
        }
    }
}

/// IEEE half-precision bits to f32 (exact; subnormals included).
fn f16_bits_to_f32(bits: u16) -> f32 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((bits >> 10) & 0x1F);
    let mant = f32::from(bits & 0x3FF);
    match exp {
        0 => sign * mant * 2f32.powi(-24),
        31 if mant == 0.0 => sign * f32::INFINITY,
        31 => f32::NAN,
        _ => sign * (1.0 + mant / 1024.0) * 2f32.powi(exp - 15),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linear::{Linear, WeightFormat};

    /// Deterministic pseudo-random values in [-1, 1) (xorshift).
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn rel_rms(x: &[f32], reference: &[f32]) -> f64 {
        let d: f64 = x
            .iter()
            .zip(reference)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum();
        let r: f64 = reference.iter().map(|b| f64::from(*b).powi(2)).sum();
        (d / r).sqrt()
    }

    fn weights(n: usize, k: usize, dtype: GgmlDType, seed: u64) -> QTensor {
        let w: Vec<f32> = values(n * k, seed).iter().map(|v| v * 0.05).collect();
        let w = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
        QTensor::quantize(&w, dtype).unwrap()
    }

    /// SmolLM2's shapes (576 → Q/K/V, 1536 → 576), Q4_1 and Q8_0 weights, activations with a
    /// few large outliers as in its MLP: the block format matches the dense f32 path to float
    /// rounding, at 1–5 rows (block kernel) and 40 rows (dequantize + f32 matmul), while the
    /// Q8-padded path (8-bit activations) is off by about 1e-2.
    #[test]
    fn blocks_match_f32_where_q8_padded_does_not() {
        for (k, parts, dtype) in [
            (576, vec![576, 192, 192], GgmlDType::Q4_1),
            (1536, vec![576], GgmlDType::Q4_1),
            (576, vec![300], GgmlDType::Q8_0),
        ] {
            let tensors: Vec<QTensor> = parts
                .iter()
                .enumerate()
                .map(|(i, &n)| weights(n, k, dtype, 7 + i as u64))
                .collect();
            let load = |format| {
                let ts = tensors
                    .iter()
                    .map(|t| {
                        let w = t.dequantize(&Device::Cpu).unwrap();
                        QTensor::quantize(&w, dtype).unwrap()
                    })
                    .collect();
                Linear::new(ts, format).unwrap()
            };
            let (dense, blocks, q8) = (
                load(WeightFormat::F32),
                load(WeightFormat::Blocks),
                load(WeightFormat::Q8Padded),
            );
            for rows in [1, 4, 5, 40] {
                let mut x = values(rows * k, 99 + rows as u64);
                for (i, v) in x.iter_mut().enumerate() {
                    if i % 97 == 3 {
                        *v *= 40.0; // outliers
                    }
                }
                let reference = dense.forward(&x, rows).unwrap();
                let err = rel_rms(&blocks.forward(&x, rows).unwrap(), &reference);
                assert!(err < 1e-5, "blocks k={k} rows={rows}: {err:e}");
                let q8_err = rel_rms(&q8.forward(&x, rows).unwrap(), &reference);
                assert!(q8_err > 1e-4, "q8-padded k={k} rows={rows}: {q8_err:e}");
            }
        }
    }

    /// The AVX2 kernels and the scalar fallback agree.
    #[test]
    fn avx2_kernels_match_scalar_code() {
        if !avx2_available() {
            return;
        }
        let k = 256;
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let m = BlockMatrix::new(&[weights(3, k, dtype, 5)], k).unwrap();
            let xs = values(ROWS * k, 11);
            let sums: Vec<f32> = xs.chunks_exact(QK).map(|c| c.iter().sum()).collect();
            for rows in 1..=ROWS {
                let (mut fast, mut slow) = ([0f32; ROWS], [0f32; ROWS]);
                match &m.rows {
                    Rows::Q41(b) => {
                        dot_q41(&b[..k / QK], &xs, &sums, rows, &mut fast, true);
                        dot_q41(&b[..k / QK], &xs, &sums, rows, &mut slow, false);
                    }
                    Rows::Q80(b) => {
                        dot_q80(&b[..k / QK], &xs, rows, &mut fast, true);
                        dot_q80(&b[..k / QK], &xs, rows, &mut slow, false);
                    }
                }
                for r in 0..rows {
                    assert!((fast[r] - slow[r]).abs() <= 1e-4 * slow[r].abs().max(1.0));
                }
            }
        }
    }
}
