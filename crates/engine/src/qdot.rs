//! Decode kernels: 4-bit (Q4_1) and 8-bit (Q8_0) weights read as stored, multiplied with
//! activations quantized to int8 — the integer dot products llama.cpp runs for a decode step
//! (`ggml_vec_dot_q4_1_q8_1`, `ggml_vec_dot_q8_0_q8_0`), for a few activation rows at a time.
//!
//! A decode step of a small batch reads every weight once and does little arithmetic per weight,
//! so what bounds it is how many bytes it streams and how few instructions each byte costs.
//! [`crate::WeightFormat::Q8Padded`] streams 8-bit weights with padded rows (181 MB a step for
//! SmolLM2-135M); [`crate::WeightFormat::Int8`] runs these kernels, which stream the file's 4-bit
//! weights (0.625 bytes per weight with the f16 scales, 97 MB a step with the Q8_0 output head).
//!
//! **Layout.** The rows of a matrix are interleaved 16 at a time ([`GROUP`]): for each group and
//! each 32-value block, a *tile* holds the 16 rows' f16 scales, then their quantized values, cut
//! into 4-byte runs so that one 64-byte load gives 4 consecutive inputs of each of the 16 rows
//! (byte `4r + t` of load `l` is row `r`'s stored byte `4l + t`; for Q4 its low nibble is input
//! `4l + t` and its high nibble input `16 + 4l + t`, exactly GGML's packing). One `vpdpbusd`
//! then multiplies such a vector with the same 4 activation bytes broadcast to every row and
//! adds into 16 per-row sums: no horizontal sums, one float conversion per block and group.
//! The nibbles are only rearranged, never widened in memory.
//!
//! **Activations** are quantized per row and block of 32 as GGML's Q8_1 (`d = max|x| / 127`,
//! `q = round(x / d)`, `d` and `s = d·Σq` rounded to f16 as GGML stores them), so a row's result
//! is the Q4_1 × Q8_1 (or Q8_0 × Q8_0) dot product candle and llama.cpp compute, up to float
//! summation order.
//!
//! **Kernels**, chosen at run time: AVX-512 VNNI (`vpdpbusd` on 512-bit vectors), AVX2
//! (`vpmaddubsw` + `vpmaddwd` on 256-bit halves of a group), and a scalar fallback. All three
//! round identically (exact integer sums, then the same fused multiply-adds), so they give
//! bit-identical results; and every output row is computed by one thread in the same order
//! whatever the thread count, so results do not depend on how many threads run.

use candle_core::quantized::{GgmlDType, QTensor};

use crate::error::{EngineError, Result};

/// Values per block.
const QK: usize = 32;
/// Output rows interleaved in one tile.
pub(crate) const GROUP: usize = 16;
/// Activation rows one pass over a group's tiles serves.
const ROWS: usize = 4;

/// Bytes of one tile: 16 f16 `d`, 16 f16 `m`, 16 × 16 bytes of nibbles.
const Q4_TILE: usize = 2 * GROUP * 2 + GROUP * QK / 2;
/// Bytes of one tile: 16 f16 `d`, 16 × 32 signed bytes.
const Q8_TILE: usize = GROUP * 2 + GROUP * QK;

/// How the weights are quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `w = d·q + m`, `q` in 0..16 (Q4_1).
    Q4,
    /// `w = d·q`, `q` in −128..128 (Q8_0).
    Q8,
}

/// Which kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    Avx512Vnni,
    Avx2,
    Scalar,
}

impl Isa {
    /// The fastest kernel this CPU runs.
    pub(crate) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
            {
                return Self::Avx512Vnni;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                return Self::Avx2;
            }
        }
        Self::Scalar
    }

    /// [`Self::detect`], unless `ACCELLM_QDOT_ISA` names another kernel this CPU runs
    /// (`avx2`, `scalar`): to measure on an AVX-512 machine what an AVX2-only one would run.
    pub(crate) fn chosen() -> Self {
        let wanted = match std::env::var("ACCELLM_QDOT_ISA").as_deref() {
            Ok("avx2") => Self::Avx2,
            Ok("scalar") => Self::Scalar,
            _ => return Self::detect(),
        };
        if wanted.available() {
            wanted
        } else {
            Self::detect()
        }
    }

    /// Whether this CPU runs `self`.
    pub(crate) fn available(self) -> bool {
        match (self, Self::detect()) {
            (Self::Scalar, _) => true,
            (Self::Avx2, Self::Avx2 | Self::Avx512Vnni) => {
                #[cfg(target_arch = "x86_64")]
                {
                    std::arch::is_x86_feature_detected!("f16c")
                }
                #[cfg(not(target_arch = "x86_64"))]
                {
                    false
                }
            }
            (a, b) => a == b,
        }
    }
}

/// An `[n, k]` weight matrix in row-interleaved tiles.
pub(crate) struct QDotMatrix {
    kind: Kind,
    n: usize,
    k: usize,
    /// `groups × (k / 32)` tiles, group-major.
    tiles: Vec<u8>,
    isa: Isa,
}

/// Activation rows quantized for the kernels: per block of 32, `x ≈ d·(q + lo/256)`.
struct Acts {
    /// `[rows, k]` high bytes `q = round(x/d)`.
    q: Vec<i8>,
    /// `[rows, k]` low bytes `lo = round(256·(x/d − q))`, clamped to ±127.
    lo: Vec<i8>,
    /// Per row and block: `d / 256`, the scale of the combined sum `256·Σw·q + Σw·lo`.
    d: Vec<f32>,
    /// Per row and block: `Σx`, for Q4's offset term `m·Σx`.
    s: Vec<f32>,
    /// Per row and block: `128·(256·Σq + Σlo)`, which the AVX-512 Q8 kernel's unsigned weights
    /// add.
    bias: Vec<i32>,
}

impl QDotMatrix {
    /// Stacks `[n_i, k]` tensors along the output dimension, or `None` when they are not all
    /// Q4_1 or all Q8_0, or `k` is not whole blocks.
    pub(crate) fn new(tensors: &[QTensor]) -> Result<Option<Self>> {
        Self::with_isa(tensors, Isa::chosen())
    }

    /// [`Self::new`] with a given kernel (tests compare them).
    pub(crate) fn with_isa(tensors: &[QTensor], isa: Isa) -> Result<Option<Self>> {
        let Some(first) = tensors.first() else {
            return Ok(None);
        };
        let k = first.shape().dims2()?.1;
        let kind = if tensors.iter().all(|t| t.dtype() == GgmlDType::Q4_1) {
            Kind::Q4
        } else if tensors.iter().all(|t| t.dtype() == GgmlDType::Q8_0) {
            Kind::Q8
        } else {
            return Ok(None);
        };
        if k == 0 || !k.is_multiple_of(QK) {
            return Ok(None);
        }
        let kb = k / QK;
        // Every row as (its tensor's bytes, dtype, row index).
        let mut datas = Vec::with_capacity(tensors.len());
        for t in tensors {
            let (n_i, k_i) = t.shape().dims2()?;
            if k_i != k {
                return Err(EngineError::Unsupported(format!(
                    "stacked weights with different input sizes ({k_i} vs {k})"
                )));
            }
            datas.push((t.data()?, t.dtype(), n_i));
        }
        let mut rows: Vec<(&[u8], GgmlDType)> = Vec::new();
        for (data, dtype, n_i) in &datas {
            let block_bytes = if *dtype == GgmlDType::Q4_1 { 20 } else { 34 };
            let row_bytes = kb * block_bytes;
            if data.len() != n_i * row_bytes {
                return Err(EngineError::Unsupported(format!(
                    "weight data of {} bytes for {n_i} rows of {k} {dtype:?} values",
                    data.len()
                )));
            }
            rows.extend(data.chunks_exact(row_bytes).map(|r| (r, *dtype)));
        }
        let n = rows.len();
        let groups = n.div_ceil(GROUP);
        let tile = match kind {
            Kind::Q4 => Q4_TILE,
            Kind::Q8 => Q8_TILE,
        };
        let mut tiles = vec![0u8; groups * kb * tile];
        for (g, out) in tiles.chunks_exact_mut(kb * tile).enumerate() {
            for (b, t) in out.chunks_exact_mut(tile).enumerate() {
                for i in 0..GROUP {
                    let Some(&(row, dtype)) = rows.get(g * GROUP + i) else {
                        continue; // padding rows stay zero (d = m = 0)
                    };
                    match dtype {
                        GgmlDType::Q4_1 => {
                            let blk = &row[b * 20..(b + 1) * 20];
                            t[2 * i..2 * i + 2].copy_from_slice(&blk[0..2]);
                            t[32 + 2 * i..32 + 2 * i + 2].copy_from_slice(&blk[2..4]);
                            put_nibbles(&mut t[64..], i, &blk[4..20]);
                        }
                        _ => {
                            let blk = &row[b * 34..(b + 1) * 34];
                            t[2 * i..2 * i + 2].copy_from_slice(&blk[0..2]);
                            for l in 0..QK / 4 {
                                let at = 32 + l * 64 + 4 * i;
                                t[at..at + 4].copy_from_slice(&blk[2 + 4 * l..2 + 4 * l + 4]);
                            }
                        }
                    }
                }
            }
        }
        Ok(Some(Self {
            kind,
            n,
            k,
            tiles,
            isa: if isa.available() { isa } else { Isa::Scalar },
        }))
    }

    /// Bytes of weight storage (what one decode step streams).
    pub(crate) fn bytes(&self) -> usize {
        self.tiles.len()
    }

    /// `y = x · Wᵀ` for `m` rows of `x` (`[m, k]`); returns `[m, n]`. Groups of output rows are
    /// split over the current rayon pool.
    pub(crate) fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        assert_eq!(x.len(), m * k, "activation size");
        let mut y = vec![0f32; m * n];
        if m == 0 || n == 0 {
            return y;
        }
        let acts = quantize(x, m, k);
        let kb = k / QK;
        let tile = match self.kind {
            Kind::Q4 => Q4_TILE,
            Kind::Q8 => Q8_TILE,
        };
        let groups = n.div_ceil(GROUP);
        let y_ptr = y.as_mut_ptr() as usize;
        crate::threads::for_each_range(groups, |gs| {
            for g in gs {
                let tiles = &self.tiles[g * kb * tile..(g + 1) * kb * tile];
                for r0 in (0..m).step_by(ROWS) {
                    let rows = ROWS.min(m - r0);
                    let mut out = [[0f32; GROUP]; ROWS];
                    self.group(tiles, &acts, r0, rows, &mut out);
                    let cols = GROUP.min(n - g * GROUP);
                    for (r, o) in out[..rows].iter().enumerate() {
                        // SAFETY: `(r0 + r) * n + g * 16 + cols <= m * n = y.len()`, and group `g`'s
                        // columns belong to this work item alone, so no two threads write one
                        // element.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                o.as_ptr(),
                                (y_ptr as *mut f32).add((r0 + r) * n + g * GROUP),
                                cols,
                            )
                        };
                    }
                }
            }
        });
        y
    }

    /// One group's 16 outputs for activation rows `r0..r0 + rows` (`rows ≤ 4`).
    fn group(
        &self,
        tiles: &[u8],
        acts: &Acts,
        r0: usize,
        rows: usize,
        out: &mut [[f32; GROUP]; ROWS],
    ) {
        let k = self.k;
        debug_assert!(rows <= ROWS && acts.q.len() >= (r0 + rows) * k);
        let kb = k / QK;
        let (q, lo, d, s, bias) = (
            &acts.q[r0 * k..(r0 + rows) * k],
            &acts.lo[r0 * k..(r0 + rows) * k],
            &acts.d[r0 * kb..(r0 + rows) * kb],
            &acts.s[r0 * kb..(r0 + rows) * kb],
            &acts.bias[r0 * kb..(r0 + rows) * kb],
        );
        match (self.isa, self.kind) {
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512Vnni, Kind::Q4) => {
                // SAFETY: `isa` is only `Avx512Vnni` where the CPU has it (`Isa::available`);
                // `tiles` holds `kb` Q4 tiles and the activations `rows` rows of `k`.
                unsafe { avx512::q4(tiles, kb, q, lo, d, s, rows, out) }
            }
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512Vnni, Kind::Q8) => {
                // SAFETY: as above, with Q8 tiles.
                unsafe { avx512::q8(tiles, kb, q, lo, d, bias, rows, out) }
            }
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, Kind::Q4) => {
                // SAFETY: `isa` is only `Avx2` where the CPU has AVX2, FMA and F16C.
                unsafe { avx2::q4(tiles, kb, q, lo, d, s, rows, out) }
            }
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, Kind::Q8) => {
                // SAFETY: as above, with Q8 tiles.
                unsafe { avx2::q8(tiles, kb, q, lo, d, rows, out) }
            }
            (_, Kind::Q4) => scalar_q4(tiles, kb, q, lo, d, s, rows, out),
            (_, Kind::Q8) => scalar_q8(tiles, kb, q, lo, d, rows, out),
        }
    }
}

/// Writes one Q4 row's 16 stored bytes into a tile's value area: 4-byte run `l` goes to load
/// `l` at row slot `i`.
fn put_nibbles(vals: &mut [u8], i: usize, qs: &[u8]) {
    for l in 0..4 {
        vals[l * 64 + 4 * i..l * 64 + 4 * i + 4].copy_from_slice(&qs[4 * l..4 * l + 4]);
    }
}

/// Quantizes `m` rows of `k` activations per block of 32 into two int8 parts: `d = max|x| / 127`,
/// `q = round(x / d)`, `lo = round(256·(x / d − q))`, so `x = d·(q + lo/256)` to within
/// `d / 512` — about 16 bits, against GGML's Q8_1 8 bits (`q` alone).
fn quantize(x: &[f32], m: usize, k: usize) -> Acts {
    let blocks = m * k / QK;
    let mut acts = Acts {
        q: vec![0; m * k],
        lo: vec![0; m * k],
        d: Vec::with_capacity(blocks),
        s: Vec::with_capacity(blocks),
        bias: Vec::with_capacity(blocks),
    };
    for ((xs, qs), los) in x
        .chunks_exact(QK)
        .zip(acts.q.chunks_exact_mut(QK))
        .zip(acts.lo.chunks_exact_mut(QK))
    {
        let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let (mut sum_q, mut sum_lo, mut sum_x) = (0i32, 0i32, 0f32);
        for ((q, lo), &v) in qs.iter_mut().zip(los.iter_mut()).zip(xs) {
            let t = v * id;
            let r = t.round();
            // |t − r| ≤ ½ (exact in f32), so `lo` is within ±128: 128 is clamped to 127.
            *q = r as i8;
            *lo = ((t - r) * 256.0).round().clamp(-127.0, 127.0) as i8;
            sum_q += i32::from(*q);
            sum_lo += i32::from(*lo);
            sum_x += v;
        }
        acts.d.push(d / 256.0);
        acts.s.push(sum_x);
        acts.bias.push(128 * (256 * sum_q + sum_lo));
    }
    acts
}

/// The portable kernel: Q4 tiles.
#[allow(clippy::too_many_arguments)]
fn scalar_q4(
    tiles: &[u8],
    kb: usize,
    q: &[i8],
    lo: &[i8],
    d: &[f32],
    s: &[f32],
    rows: usize,
    out: &mut [[f32; GROUP]; ROWS],
) {
    let k = kb * QK;
    for (b, t) in tiles.chunks_exact(Q4_TILE).take(kb).enumerate() {
        let scale = |at: usize, i: usize| {
            f16_to_f32(u16::from_le_bytes([t[at + 2 * i], t[at + 2 * i + 1]]))
        };
        for r in 0..rows {
            let x = &q[r * k + b * QK..r * k + (b + 1) * QK];
            let xl = &lo[r * k + b * QK..r * k + (b + 1) * QK];
            for i in 0..GROUP {
                let (mut hi, mut low) = (0i32, 0i32);
                for l in 0..4 {
                    for j in 0..4 {
                        let byte = t[64 + l * 64 + 4 * i + j];
                        let (w0, w1) = (i32::from(byte & 0x0F), i32::from(byte >> 4));
                        hi += w0 * i32::from(x[4 * l + j]) + w1 * i32::from(x[16 + 4 * l + j]);
                        low += w0 * i32::from(xl[4 * l + j]) + w1 * i32::from(xl[16 + 4 * l + j]);
                    }
                }
                let sum = 256 * hi + low;
                let acc = (scale(0, i) * d[r * kb + b]).mul_add(sum as f32, out[r][i]);
                out[r][i] = scale(32, i).mul_add(s[r * kb + b], acc);
            }
        }
    }
}

/// The portable kernel: Q8 tiles.
fn scalar_q8(
    tiles: &[u8],
    kb: usize,
    q: &[i8],
    lo: &[i8],
    d: &[f32],
    rows: usize,
    out: &mut [[f32; GROUP]; ROWS],
) {
    let k = kb * QK;
    for (b, t) in tiles.chunks_exact(Q8_TILE).take(kb).enumerate() {
        for r in 0..rows {
            let x = &q[r * k + b * QK..r * k + (b + 1) * QK];
            let xl = &lo[r * k + b * QK..r * k + (b + 1) * QK];
            for i in 0..GROUP {
                let (mut hi, mut low) = (0i32, 0i32);
                for l in 0..QK / 4 {
                    for j in 0..4 {
                        let w = i32::from(t[32 + l * 64 + 4 * i + j] as i8);
                        hi += w * i32::from(x[4 * l + j]);
                        low += w * i32::from(xl[4 * l + j]);
                    }
                }
                let sum = 256 * hi + low;
                let dw = f16_to_f32(u16::from_le_bytes([t[2 * i], t[2 * i + 1]]));
                out[r][i] = (dw * d[r * kb + b]).mul_add(sum as f32, out[r][i]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
// Rows index the accumulators and the activation arrays in step.
#[allow(clippy::needless_range_loop, clippy::too_many_arguments)]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{GROUP, Q4_TILE, Q8_TILE, QK, ROWS};

    /// The 4 activation bytes `4l..4l + 4` of a block, as one 32-bit lane value.
    #[inline(always)]
    unsafe fn lane(x: *const i8, l: usize) -> i32 {
        // SAFETY: the caller keeps `l < 8` inside a 32-byte block.
        unsafe { (x.add(4 * l) as *const i32).read_unaligned() }
    }

    /// Per row of the group, `256·Σw·q + Σw·lo` over one block: `w[l]` holds inputs
    /// `4l..4l + 4` of the 16 rows (unsigned), `x` and `xl` a block's high and low bytes.
    #[inline(always)]
    unsafe fn dot(w: &[__m512i; 8], x: *const i8, xl: *const i8) -> __m512i {
        let (mut h0, mut h1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
        let (mut l0, mut l1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
        for l in (0..8).step_by(2) {
            // SAFETY: `l + 1 < 8`: reads stay inside the two 32-byte blocks.
            unsafe {
                h0 = _mm512_dpbusd_epi32(h0, w[l], _mm512_set1_epi32(lane(x, l)));
                h1 = _mm512_dpbusd_epi32(h1, w[l + 1], _mm512_set1_epi32(lane(x, l + 1)));
                l0 = _mm512_dpbusd_epi32(l0, w[l], _mm512_set1_epi32(lane(xl, l)));
                l1 = _mm512_dpbusd_epi32(l1, w[l + 1], _mm512_set1_epi32(lane(xl, l + 1)));
            }
        }
        _mm512_add_epi32(
            _mm512_slli_epi32::<8>(_mm512_add_epi32(h0, h1)),
            _mm512_add_epi32(l0, l1),
        )
    }

    /// # Safety
    /// AVX-512 F/BW/VNNI must be available; `tiles` holds `kb` Q4 tiles; `q` and `lo` hold
    /// `rows ≤ 4` rows of `kb · 32` values and `d`, `s` `rows` rows of `kb`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn q4(
        tiles: &[u8],
        kb: usize,
        q: &[i8],
        lo: &[i8],
        d: &[f32],
        s: &[f32],
        rows: usize,
        out: &mut [[f32; GROUP]; ROWS],
    ) {
        debug_assert!(tiles.len() >= kb * Q4_TILE && q.len() >= rows * kb * QK);
        debug_assert!(lo.len() >= rows * kb * QK && rows <= ROWS);
        debug_assert!(d.len() >= rows * kb && s.len() >= rows * kb);
        let k = kb * QK;
        let mask = _mm512_set1_epi8(0x0F);
        let mut acc = [_mm512_setzero_ps(); ROWS];
        for b in 0..kb {
            // SAFETY: tile `b` is `Q4_TILE` bytes inside `tiles`; activation reads stay inside
            // row `r`'s block `b`.
            unsafe {
                let t = tiles.as_ptr().add(b * Q4_TILE);
                let dw = _mm512_cvtph_ps(_mm256_loadu_si256(t as *const __m256i));
                let mw = _mm512_cvtph_ps(_mm256_loadu_si256(t.add(32) as *const __m256i));
                let mut w = [_mm512_setzero_si512(); 8];
                for l in 0..4 {
                    let v = _mm512_loadu_si512(t.add(64 + 64 * l) as *const __m512i);
                    w[l] = _mm512_and_si512(v, mask);
                    w[l + 4] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask);
                }
                for r in 0..rows {
                    let x = q.as_ptr().add(r * k + b * QK);
                    let xl = lo.as_ptr().add(r * k + b * QK);
                    let sum = _mm512_cvtepi32_ps(dot(&w, x, xl));
                    let scale = _mm512_mul_ps(dw, _mm512_set1_ps(d[r * kb + b]));
                    acc[r] = _mm512_fmadd_ps(scale, sum, acc[r]);
                    acc[r] = _mm512_fmadd_ps(mw, _mm512_set1_ps(s[r * kb + b]), acc[r]);
                }
            }
        }
        for r in 0..rows {
            // SAFETY: `out[r]` is 16 floats.
            unsafe { _mm512_storeu_ps(out[r].as_mut_ptr(), acc[r]) };
        }
    }

    /// # Safety
    /// AVX-512 F/BW/VNNI must be available; `tiles` holds `kb` Q8 tiles; `q` holds `rows ≤ 4`
    /// rows of `kb · 32` values and `d`, `bias` `rows` rows of `kb`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn q8(
        tiles: &[u8],
        kb: usize,
        q: &[i8],
        lo: &[i8],
        d: &[f32],
        bias: &[i32],
        rows: usize,
        out: &mut [[f32; GROUP]; ROWS],
    ) {
        debug_assert!(tiles.len() >= kb * Q8_TILE && q.len() >= rows * kb * QK);
        debug_assert!(d.len() >= rows * kb && bias.len() >= rows * kb && rows <= ROWS);
        let k = kb * QK;
        // `vpdpbusd` multiplies unsigned by signed bytes: weights + 128 (their sign bit
        // flipped), and 128·Σq taken off the integer sum again.
        let flip = _mm512_set1_epi8(-128);
        let mut acc = [_mm512_setzero_ps(); ROWS];
        for b in 0..kb {
            // SAFETY: as in `q4`, with `Q8_TILE`-byte tiles.
            unsafe {
                let t = tiles.as_ptr().add(b * Q8_TILE);
                let dw = _mm512_cvtph_ps(_mm256_loadu_si256(t as *const __m256i));
                let mut w = [_mm512_setzero_si512(); 8];
                for l in 0..8 {
                    let v = _mm512_loadu_si512(t.add(32 + 64 * l) as *const __m512i);
                    w[l] = _mm512_xor_si512(v, flip);
                }
                for r in 0..rows {
                    let x = q.as_ptr().add(r * k + b * QK);
                    let xl = lo.as_ptr().add(r * k + b * QK);
                    let sum = _mm512_sub_epi32(dot(&w, x, xl), _mm512_set1_epi32(bias[r * kb + b]));
                    let scale = _mm512_mul_ps(dw, _mm512_set1_ps(d[r * kb + b]));
                    acc[r] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(sum), acc[r]);
                }
            }
        }
        for r in 0..rows {
            // SAFETY: `out[r]` is 16 floats.
            unsafe { _mm512_storeu_ps(out[r].as_mut_ptr(), acc[r]) };
        }
    }
}

#[cfg(target_arch = "x86_64")]
// Rows and halves index the accumulators and the activation arrays in step.
#[allow(clippy::needless_range_loop, clippy::too_many_arguments)]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{GROUP, Q4_TILE, Q8_TILE, QK, ROWS};

    #[inline(always)]
    unsafe fn lane(x: *const i8, l: usize) -> i32 {
        // SAFETY: the caller keeps `l < 8` inside a 32-byte block.
        unsafe { (x.add(4 * l) as *const i32).read_unaligned() }
    }

    /// # Safety
    /// AVX2, FMA and F16C must be available; arguments as in `avx512::q4`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q4(
        tiles: &[u8],
        kb: usize,
        q: &[i8],
        lo: &[i8],
        d: &[f32],
        s: &[f32],
        rows: usize,
        out: &mut [[f32; GROUP]; ROWS],
    ) {
        debug_assert!(tiles.len() >= kb * Q4_TILE && q.len() >= rows * kb * QK);
        debug_assert!(d.len() >= rows * kb && s.len() >= rows * kb && rows <= ROWS);
        let k = kb * QK;
        let mask = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        // Rows 8h..8h + 8 of the group (the h-th 32 bytes of each 64-byte load) one half at a
        // time, so that one half's accumulators and weights fit the 16 registers; the second
        // pass reads the group's tiles from L1.
        for h in 0..2 {
            let mut acc = [_mm256_setzero_ps(); ROWS];
            for b in 0..kb {
                // SAFETY: tile `b` is inside `tiles`; activation reads stay inside row `r`'s
                // block.
                unsafe {
                    let t = tiles.as_ptr().add(b * Q4_TILE);
                    let dw = _mm256_cvtph_ps(_mm_loadu_si128(t.add(16 * h) as *const __m128i));
                    let mw = _mm256_cvtph_ps(_mm_loadu_si128(t.add(32 + 16 * h) as *const __m128i));
                    let mut w = [_mm256_setzero_si256(); 8];
                    for l in 0..4 {
                        let v = _mm256_loadu_si256(t.add(64 + 64 * l + 32 * h) as *const __m256i);
                        w[l] = _mm256_and_si256(v, mask);
                        w[l + 4] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask);
                    }
                    for r in 0..rows {
                        let x = q.as_ptr().add(r * k + b * QK);
                        let xl = lo.as_ptr().add(r * k + b * QK);
                        // 16-bit sums: |each product pair| ≤ 2·15·127, eight of them < 2¹⁵.
                        let mut h16 = _mm256_maddubs_epi16(w[0], _mm256_set1_epi32(lane(x, 0)));
                        let mut l16 = _mm256_maddubs_epi16(w[0], _mm256_set1_epi32(lane(xl, 0)));
                        for l in 1..8 {
                            h16 = _mm256_add_epi16(
                                h16,
                                _mm256_maddubs_epi16(w[l], _mm256_set1_epi32(lane(x, l))),
                            );
                            l16 = _mm256_add_epi16(
                                l16,
                                _mm256_maddubs_epi16(w[l], _mm256_set1_epi32(lane(xl, l))),
                            );
                        }
                        let sum = _mm256_cvtepi32_ps(_mm256_add_epi32(
                            _mm256_slli_epi32::<8>(_mm256_madd_epi16(h16, ones)),
                            _mm256_madd_epi16(l16, ones),
                        ));
                        let scale = _mm256_mul_ps(dw, _mm256_set1_ps(d[r * kb + b]));
                        acc[r] = _mm256_fmadd_ps(scale, sum, acc[r]);
                        acc[r] = _mm256_fmadd_ps(mw, _mm256_set1_ps(s[r * kb + b]), acc[r]);
                    }
                }
            }
            for r in 0..rows {
                // SAFETY: `out[r]` is 16 floats.
                unsafe { _mm256_storeu_ps(out[r].as_mut_ptr().add(8 * h), acc[r]) };
            }
        }
    }

    /// # Safety
    /// AVX2, FMA and F16C must be available; arguments as in `avx512::q8` (without `bias`).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q8(
        tiles: &[u8],
        kb: usize,
        q: &[i8],
        lo: &[i8],
        d: &[f32],
        rows: usize,
        out: &mut [[f32; GROUP]; ROWS],
    ) {
        debug_assert!(tiles.len() >= kb * Q8_TILE && q.len() >= rows * kb * QK);
        debug_assert!(d.len() >= rows * kb && rows <= ROWS);
        let k = kb * QK;
        let ones = _mm256_set1_epi16(1);
        for h in 0..2 {
            let mut acc = [_mm256_setzero_ps(); ROWS];
            for b in 0..kb {
                // SAFETY: as in `q4`, with Q8 tiles.
                unsafe {
                    let t = tiles.as_ptr().add(b * Q8_TILE);
                    let dw = _mm256_cvtph_ps(_mm_loadu_si128(t.add(16 * h) as *const __m128i));
                    for r in 0..rows {
                        let x = q.as_ptr().add(r * k + b * QK);
                        let xl = lo.as_ptr().add(r * k + b * QK);
                        // |w| × (x with w's sign): unsigned × signed bytes, pairs ≤ 2·128·127.
                        let mut hi = _mm256_setzero_si256();
                        let mut low = _mm256_setzero_si256();
                        for l in 0..8 {
                            let w =
                                _mm256_loadu_si256(t.add(32 + 64 * l + 32 * h) as *const __m256i);
                            let aw = _mm256_sign_epi8(w, w);
                            let xs = _mm256_sign_epi8(_mm256_set1_epi32(lane(x, l)), w);
                            let ls = _mm256_sign_epi8(_mm256_set1_epi32(lane(xl, l)), w);
                            let p = _mm256_maddubs_epi16(aw, xs);
                            let pl = _mm256_maddubs_epi16(aw, ls);
                            hi = _mm256_add_epi32(hi, _mm256_madd_epi16(p, ones));
                            low = _mm256_add_epi32(low, _mm256_madd_epi16(pl, ones));
                        }
                        let sum = _mm256_add_epi32(_mm256_slli_epi32::<8>(hi), low);
                        let scale = _mm256_mul_ps(dw, _mm256_set1_ps(d[r * kb + b]));
                        acc[r] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(sum), acc[r]);
                    }
                }
            }
            for r in 0..rows {
                // SAFETY: `out[r]` is 16 floats.
                unsafe { _mm256_storeu_ps(out[r].as_mut_ptr().add(8 * h), acc[r]) };
            }
        }
    }
}

/// IEEE half-precision bits to f32 (exact).
pub(crate) fn f16_to_f32(bits: u16) -> f32 {
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
    use candle_core::quantized::QMatMul;
    use candle_core::{Device, Module, Tensor};

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

    fn weights(n: usize, k: usize, dtype: GgmlDType, seed: u64) -> QTensor {
        let w: Vec<f32> = values(n * k, seed).iter().map(|v| v * 0.05).collect();
        let w = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
        QTensor::quantize(&w, dtype).unwrap()
    }

    fn max_rel(x: &[f32], reference: &[f32]) -> f32 {
        let scale = reference.iter().fold(0f32, |a, v| a.max(v.abs()));
        x.iter()
            .zip(reference)
            .fold(0f32, |a, (p, q)| a.max((p - q).abs()))
            / scale
    }

    /// Activations with a few large outliers, as in SmolLM2's MLP.
    fn activations(rows: usize, k: usize, seed: u64) -> Vec<f32> {
        let mut x = values(rows * k, seed);
        for (i, v) in x.iter_mut().enumerate() {
            if i % 97 == 3 {
                *v *= 40.0;
            }
        }
        x
    }

    /// `x · Wᵀ` in f64 with the weights dequantized exactly: what the kernels approximate.
    fn exact(w: &QTensor, x: &[f32], rows: usize) -> Vec<f32> {
        let (n, k) = w.shape().dims2().unwrap();
        let wf: Vec<f32> = w
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let mut y = vec![0f32; rows * n];
        for r in 0..rows {
            for j in 0..n {
                let dot: f64 = (0..k)
                    .map(|i| f64::from(x[r * k + i]) * f64::from(wf[j * k + i]))
                    .sum();
                y[r * n + j] = dot as f32;
            }
        }
        y
    }

    /// Every kernel this CPU runs gives bit-identical results to the scalar one, for SmolLM2's
    /// shapes (Q/K/V 576 → 960, MLP down 1536 → 576), an output size that is not whole groups,
    /// Q4_1 and Q8_0 weights, 1–9 activation rows with outliers; and the results are within
    /// 3e-4 (max relative) of the exact product with the same weights — at least 20× closer
    /// than candle's own quantized matmul (GGML's Q8_1 / Q8_0 8-bit activations, what llama.cpp
    /// computes), which the kernels computed before their activations had a low byte.
    #[test]
    fn kernels_agree_with_each_other_and_with_the_exact_product() {
        for (n, k, dtype) in [
            (960, 576, GgmlDType::Q4_1),
            (576, 1536, GgmlDType::Q4_1),
            (100, 256, GgmlDType::Q4_1),
            (300, 576, GgmlDType::Q8_0),
        ] {
            let w = weights(n, k, dtype, 17 + n as u64);
            let scalar = QDotMatrix::with_isa(std::slice::from_ref(&w), Isa::Scalar)
                .unwrap()
                .unwrap();
            let candle = QMatMul::from_qtensor(weights(n, k, dtype, 17 + n as u64)).unwrap();
            for rows in [1, 2, 4, 5, 9] {
                let x = activations(rows, k, 5 + rows as u64);
                let reference = scalar.matmul(&x, rows);
                for isa in [Isa::Avx2, Isa::Avx512Vnni] {
                    if !isa.available() {
                        continue;
                    }
                    let m = QDotMatrix::with_isa(std::slice::from_ref(&w), isa)
                        .unwrap()
                        .unwrap();
                    assert_eq!(m.isa, isa);
                    let y = m.matmul(&x, rows);
                    assert!(
                        y.iter()
                            .zip(&reference)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{isa:?} {dtype:?} n={n} k={k} rows={rows}: not bit-identical to scalar \
                         (max rel diff {:e})",
                        max_rel(&y, &reference)
                    );
                }
                let exact = exact(&w, &x, rows);
                let xs = Tensor::from_slice(&x, (rows, k), &Device::Cpu).unwrap();
                let c: Vec<f32> = candle
                    .forward(&xs)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let (ours, eight_bit) = (max_rel(&reference, &exact), max_rel(&c, &exact));
                assert!(
                    ours < 3e-4 && ours * 20.0 < eight_bit,
                    "{dtype:?} n={n} k={k} rows={rows}: {ours:e} from the exact product \
                     (8-bit activations: {eight_bit:e})"
                );
            }
        }
    }

    /// Splitting the output groups over several threads gives exactly what one thread gives.
    #[test]
    fn threads_do_not_change_results() {
        let w = weights(960, 576, GgmlDType::Q4_1, 3);
        let m = QDotMatrix::new(std::slice::from_ref(&w)).unwrap().unwrap();
        let x = activations(3, 576, 8);
        let pool = |n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
        };
        let one = pool(1).install(|| m.matmul(&x, 3));
        let two = pool(2).install(|| m.matmul(&x, 3));
        let three = pool(3).install(|| m.matmul(&x, 3));
        assert_eq!(one, two);
        assert_eq!(one, three);
    }

    /// Times each kernel this CPU runs on SmolLM2-135M's matrices (one thread; the
    /// weights of one decode step, 97 MB, so mostly not from cache):
    /// `cargo test --release -p accellm-engine --lib qdot::tests::kernel_speed -- --ignored --nocapture`
    #[test]
    #[ignore = "timing, run by hand"]
    fn kernel_speed() {
        let shapes = [
            (960, 576, GgmlDType::Q4_1),
            (576, 576, GgmlDType::Q4_1),
            (3072, 576, GgmlDType::Q4_1),
            (576, 1536, GgmlDType::Q4_1),
        ];
        let mut mats: Vec<Vec<QTensor>> = Vec::new();
        for _ in 0..30 {
            mats.extend(
                shapes
                    .iter()
                    .map(|&(n, k, d)| vec![weights(n, k, d, n as u64)]),
            );
        }
        mats.push(vec![weights(49152, 576, GgmlDType::Q8_0, 1)]);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni] {
            if !isa.available() {
                continue;
            }
            let ms: Vec<QDotMatrix> = mats
                .iter()
                .map(|t| QDotMatrix::with_isa(t, isa).unwrap().unwrap())
                .collect();
            let bytes: usize = ms.iter().map(QDotMatrix::bytes).sum();
            for rows in [1, 4, 16] {
                let xs: Vec<Vec<f32>> = ms.iter().map(|m| activations(rows, m.k, 3)).collect();
                let reps = if isa == Isa::Scalar { 1 } else { 5 };
                let mut best = f64::MAX;
                for _ in 0..reps {
                    let t = std::time::Instant::now();
                    pool.install(|| {
                        for (m, x) in ms.iter().zip(&xs) {
                            std::hint::black_box(m.matmul(x, rows));
                        }
                    });
                    best = best.min(t.elapsed().as_secs_f64());
                }
                eprintln!(
                    "{isa:?}: {rows} row(s): {:.2} ms per step over {:.0} MB ({:.1} GB/s)",
                    best * 1e3,
                    bytes as f64 / 1e6,
                    bytes as f64 / best / 1e9
                );
            }
        }
    }
}
