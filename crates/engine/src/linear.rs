//! Weight matrices in the format chosen at load time, and their matrix multiply.

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{Device, Module, Tensor};
use rayon::prelude::*;

use crate::blocks::BlockMatrix;
use crate::error::{EngineError, Result};
use crate::qdot::QDotMatrix;

/// How the engine stores the projection weights after loading a GGUF file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WeightFormat {
    /// Keep each tensor in the quantization it is stored in (for SmolLM2: Q4_1). Smallest, but
    /// candle's x86 kernels for most native formats are scalar and do not gain from batching.
    Native,
    /// Requantize to Q8_0 and zero-pad the input dimension to a multiple of 256 (activations are
    /// padded to match), which makes candle take its repacked AVX-512 VNNI kernel. The fast path
    /// with AVX-512; candle quantizes the activations to 8 bits as well.
    Q8Padded,
    /// Q4_1 and Q8_0 tensors stay as stored and are multiplied by our kernels
    /// (`engine/src/qdot.rs`: AVX-512 VNNI, AVX2, scalar) with activations in two int8 parts per
    /// block of 32 (`x ≈ d·(q + lo/256)`, about 16 bits), for every batch shape: within 1e-4 of
    /// the exact product, from 0.625 bytes per Q4_1 weight. Any other tensor is handled as in
    /// [`Self::Q8Padded`] with AVX-512 VNNI, else as in [`Self::Blocks`]. The default where the
    /// kernels have SIMD (docs/engine.md).
    Int8,
    /// Keep Q4_1 and Q8_0 weights in their stored blocks (any other format is requantized to
    /// Q8_0) and multiply them with *f32* activations in accellm's own AVX2 kernel
    /// (`engine/src/blocks.rs`): the dense f32 result up to summation order, from 0.75 (Q4_1) or
    /// 1.1 (Q8_0) bytes per weight. The fast path without AVX-512.
    Blocks,
    /// Dequantize everything to dense f32: the exact reference path, and the slowest to load.
    F32,
}

impl Default for WeightFormat {
    /// [`WeightFormat::for_this_cpu`].
    fn default() -> Self {
        Self::for_this_cpu()
    }
}

impl WeightFormat {
    /// The default on the CPU running: [`Self::Int8`] where its kernels have SIMD (AVX-512
    /// VNNI, or AVX2 + FMA + F16C: [`int8_kernel`]), else [`Self::Blocks`] where our AVX2 kernel
    /// runs ([`blocks_kernel`]), else [`Self::F32`].
    ///
    /// `Int8` was measured faster than `Blocks` at every batch shape and than `Q8Padded` for
    /// small batches (batch-1 decode 2.3×; prompts and 16-sequence batches about equal on one
    /// thread, up to 1.34× slower on two), and it keeps the dense answer: 8-bit activations (candle's Q8_0 / Q8_K,
    /// GGML's Q8_1) move SmolLM2's logits by 5–10% (rms), enough to flip the near-tie first token
    /// of "What is the capital of France?" (F32: "The" 25.325 vs "L" 25.243); `Int8`'s two-part
    /// activations move them by 0.02% (docs/engine.md).
    pub fn for_this_cpu() -> Self {
        if int8_kernel() {
            Self::Int8
        } else if blocks_kernel() {
            Self::Blocks
        } else {
            Self::F32
        }
    }

    /// All formats, in the order benchmarks report them.
    pub const ALL: [WeightFormat; 5] = [
        Self::Native,
        Self::Q8Padded,
        Self::Int8,
        Self::Blocks,
        Self::F32,
    ];

    /// Short lowercase name (`native`, `q8-padded`, `int8`, `blocks`, `f32`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Q8Padded => "q8-padded",
            Self::Int8 => "int8",
            Self::Blocks => "blocks",
            Self::F32 => "f32",
        }
    }
}

/// Whether [`WeightFormat::Int8`]'s kernels run with SIMD here (AVX-512 VNNI, or AVX2 + FMA +
/// F16C); elsewhere they run as scalar code.
pub fn int8_kernel() -> bool {
    crate::qdot::Isa::detect() != crate::qdot::Isa::Scalar
}

/// Whether this CPU has the AVX2 and FMA that the [`WeightFormat::Blocks`] kernel needs (it
/// runs elsewhere too, as slow scalar code).
pub fn blocks_kernel() -> bool {
    crate::blocks::avx2_available()
}

/// Whether this CPU has the AVX-512 (VNNI) that candle's fast Q8 kernel needs.
pub fn fast_q8_kernel() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl std::fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for WeightFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "native" => Ok(Self::Native),
            "q8-padded" | "q8padded" | "q8" => Ok(Self::Q8Padded),
            "int8" => Ok(Self::Int8),
            "blocks" => Ok(Self::Blocks),
            "f32" | "dense" => Ok(Self::F32),
            other => Err(format!(
                "unknown weight format `{other}` (expected native, q8-padded, int8, blocks or f32)"
            )),
        }
    }
}

/// Whether candle 0.11 multiplies weights of `dtype` with scalar code on x86 (no AVX kernel: the
/// legacy types with an offset or a fifth bit); [`WeightFormat::Native`] is refused for them
/// ([`crate::Model::check_servable`]).
pub fn scalar_in_candle(dtype: GgmlDType) -> bool {
    matches!(
        dtype,
        GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 | GgmlDType::Q8_1
    )
}

/// Multiple of the input dimension that candle's repacked x86 kernels need.
const PAD_TO: usize = 256;

/// Row slices per quantized matrix, the units an iteration's threads share out in a small batch:
/// one per CPU this process may use (2–8). Each slice is a candle call with its own activation
/// quantization and output copy, so slices beyond the threads cost time.
fn slice_count() -> usize {
    crate::threads::allowed_cpus().len().clamp(2, 8)
}

/// Rows of a slice are a multiple of this (a multiple of [`KERNEL_TILE`]).
const SLICE_ALIGN: usize = 64;

/// Weight rows candle's repacked x86 kernels take together (`TILE_N`); a matrix of other row
/// counts runs its generic kernel.
const KERNEL_TILE: usize = 16;

/// Up to this many activation rows, several threads split a quantized matmul by weight rows
/// (slices: each thread streams its share of the weights, which is what bounds a small batch);
/// from here on they split the activation rows and each runs the whole matrix (compute-bound,
/// and candle quantizes each call's activations, so slicing a large batch would repeat that work
/// per slice: 159 → 268 ms for a 128-token prefill on one thread, measured).
const SLICE_MAX_ROWS: usize = 8;

/// Activation rows candle's repacked x86 kernels take together (`MAX_MT`); a row's result
/// depends on which rows share its tile, so a split keeps them together.
const ROW_TILE: usize = 4;

/// The same weights as `parts`, cut by output rows into up to [`slice_count`] matrices per part (rows
/// are independent runs of blocks, so a slice is a byte range of the part).
fn row_slices(parts: &[(QMatMul, usize)]) -> Result<Vec<(QMatMul, usize)>> {
    let mut slices = Vec::new();
    for (w, _) in parts {
        let QMatMul::QTensor(q) = w else {
            return Ok(Vec::new());
        };
        let (n, k) = q.shape().dims2()?;
        // candle picks its kernel by the matrix's row count (16-row tiles or not): cutting a
        // matrix whose rows are not whole tiles would change the kernel, so the numbers.
        if n % KERNEL_TILE != 0 {
            return Ok(Vec::new());
        }
        let pieces = slice_count().min(n / SLICE_ALIGN).max(1);
        let data = q.data()?;
        let row_bytes = data.len() / n;
        let per = (n / pieces).div_ceil(SLICE_ALIGN) * SLICE_ALIGN;
        let mut start = 0;
        while start < n {
            let rows = per.min(n - start);
            let bytes = data[start * row_bytes..(start + rows) * row_bytes].to_vec();
            let storage = QStorage::from_data(Cow::Owned(bytes), &Device::Cpu, q.dtype())?;
            let slice = QTensor::new(storage, (rows, k))?;
            slices.push((QMatMul::from_qtensor(slice)?, rows));
            start += rows;
        }
    }
    Ok(slices)
}

/// One linear layer `y = x · Wᵀ`, possibly several weight matrices stacked along the output
/// dimension (Q/K/V, or gate/up) so that one call does one matrix multiply.
pub(crate) struct Linear {
    /// Stacked parts; each produces `n` consecutive output columns. Empty with `blocks`.
    parts: Vec<(QMatMul, usize)>,
    /// `parts` cut into slices for small batches on several threads; empty unless quantized
    /// with whole kernel tiles.
    slices: Vec<(QMatMul, usize)>,
    /// Quantized parts (candle's matmul on one thread): several threads split the rows.
    split_rows: bool,
    /// The weights for [`WeightFormat::Blocks`].
    blocks: Option<BlockMatrix>,
    /// With `Int8`, the file's Q4_1 / Q8_0 weights as stored, multiplied with int8
    /// activations by our kernels (`engine/src/qdot.rs`) for every batch shape; `parts` and
    /// `slices` are then empty.
    qdot: Option<QDotMatrix>,
    /// Logical input size.
    k: usize,
    /// Input size the weights were padded to (`k` unless `Q8Padded`).
    k_pad: usize,
    /// Total output size.
    n: usize,
}

impl Linear {
    /// Builds a layer from weight tensors of shape `[n_i, k]` stacked along the output dimension.
    pub(crate) fn new(tensors: Vec<QTensor>, format: WeightFormat) -> Result<Self> {
        let (_, k) = tensors
            .first()
            .ok_or_else(|| EngineError::Unsupported("empty linear layer".into()))?
            .shape()
            .dims2()?;
        let mut n_total = 0;
        for t in &tensors {
            let (n, kk) = t.shape().dims2()?;
            if kk != k {
                return Err(EngineError::Unsupported(format!(
                    "stacked weights with different input sizes ({kk} vs {k})"
                )));
            }
            n_total += n;
        }
        let dev = Device::Cpu;
        // `Int8`: Q4_1 / Q8_0 weights stay as stored and run our int8 kernels for every batch
        // shape (no 8-bit copy); other tensors go the fast way this CPU has for them.
        let format = match format {
            WeightFormat::Int8 => match QDotMatrix::new(&tensors)? {
                Some(qdot) => {
                    return Ok(Self {
                        parts: Vec::new(),
                        slices: Vec::new(),
                        split_rows: false,
                        k,
                        k_pad: k,
                        n: n_total,
                        blocks: None,
                        qdot: Some(qdot),
                    })
                }
                None if fast_q8_kernel() => WeightFormat::Q8Padded,
                None => WeightFormat::Blocks,
            },
            f => f,
        };
        // An input size that is not whole blocks stays dense.
        let format = match format {
            WeightFormat::Blocks if !BlockMatrix::supports(k) => WeightFormat::F32,
            f => f,
        };
        match format {
            WeightFormat::Blocks => Ok(Self {
                parts: Vec::new(),
                slices: Vec::new(),
                split_rows: false,
                blocks: Some(BlockMatrix::new(&tensors, k)?),
                qdot: None,
                k,
                k_pad: k,
                n: n_total,
            }),
            WeightFormat::F32 => {
                let ws = tensors
                    .iter()
                    .map(|t| t.dequantize(&dev))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                let w = Tensor::cat(&ws, 0)?.contiguous()?;
                Ok(Self {
                    parts: vec![(QMatMul::Tensor(w), n_total)],
                    slices: Vec::new(),
                    split_rows: false,
                    k,
                    k_pad: k,
                    n: n_total,
                    blocks: None,
                    qdot: None,
                })
            }
            WeightFormat::Q8Padded | WeightFormat::Int8 => {
                let k_pad = k.div_ceil(PAD_TO) * PAD_TO;
                let ws = tensors
                    .iter()
                    .map(|t| {
                        let w = t.dequantize(&dev)?;
                        if k_pad > k {
                            w.pad_with_zeros(1, 0, k_pad - k)
                        } else {
                            Ok(w)
                        }
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?;
                let w = Tensor::cat(&ws, 0)?.contiguous()?;
                let q = QTensor::quantize(&w, GgmlDType::Q8_0)?;
                let parts = vec![(QMatMul::from_qtensor(q)?, n_total)];
                Ok(Self {
                    slices: row_slices(&parts)?,
                    split_rows: true,
                    parts,
                    k,
                    k_pad,
                    n: n_total,
                    blocks: None,
                    qdot: None,
                })
            }
            WeightFormat::Native => {
                let dtype = tensors[0].dtype();
                let same = tensors.iter().all(|t| t.dtype() == dtype);
                let quantized = !matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
                let parts = if same && quantized && tensors.len() > 1 {
                    // Rows are independent runs of blocks, so stacking is byte concatenation.
                    let mut bytes = Vec::new();
                    for t in &tensors {
                        bytes.extend_from_slice(&t.data()?);
                    }
                    let storage = QStorage::from_data(Cow::Owned(bytes), &dev, dtype)?;
                    let q = QTensor::new(storage, (n_total, k))?;
                    vec![(QMatMul::from_qtensor(q)?, n_total)]
                } else {
                    tensors
                        .into_iter()
                        .map(|t| {
                            let n = t.shape().dims2()?.0;
                            Ok((QMatMul::from_qtensor(t)?, n))
                        })
                        .collect::<Result<Vec<_>>>()?
                };
                Ok(Self {
                    slices: if quantized {
                        row_slices(&parts)?
                    } else {
                        Vec::new()
                    },
                    split_rows: quantized,
                    parts,
                    k,
                    k_pad: k,
                    n: n_total,
                    blocks: None,
                    qdot: None,
                })
            }
        }
    }

    /// Output size.
    pub(crate) fn out_dim(&self) -> usize {
        self.n
    }

    /// Computes `x · Wᵀ` for `rows` rows of `x` (row-major `[rows, k]`); returns `[rows, n]`.
    pub(crate) fn forward(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        debug_assert_eq!(x.len(), rows * self.k);
        if rows == 0 {
            return Ok(Vec::new());
        }
        if let Some(blocks) = &self.blocks {
            return blocks.matmul(x, rows);
        }
        if let Some(q) = &self.qdot {
            return Ok(q.matmul(x, rows));
        }
        let input = if self.k_pad == self.k {
            x.to_vec()
        } else {
            let mut padded = vec![0f32; rows * self.k_pad];
            for (dst, src) in padded
                .chunks_exact_mut(self.k_pad)
                .zip(x.chunks_exact(self.k))
            {
                dst[..self.k].copy_from_slice(src);
            }
            padded
        };
        let threads = rayon::current_num_threads();
        if threads > 1 && self.split_rows {
            if rows <= SLICE_MAX_ROWS && !self.slices.is_empty() {
                // The slices in parallel, each thread streaming its share of the weights.
                let ys: Vec<Result<Vec<f32>>> = self
                    .slices
                    .par_iter()
                    .map(|part| self.run_parts(std::slice::from_ref(part), &input, rows))
                    .collect();
                return self.stack_columns(&self.slices, ys, rows);
            }
            // Activation rows split over the threads; each runs the whole matrix. Chunks are whole
            // groups of [`ROW_TILE`] rows, so every row meets the same kernel tile as unsplit.
            if rows <= ROW_TILE {
                return self.run_parts(&self.parts, &input, rows);
            }
            let chunk = rows.div_ceil(threads).div_ceil(ROW_TILE) * ROW_TILE;
            let ys: Vec<Result<Vec<f32>>> = input
                .par_chunks(chunk * self.k_pad)
                .map(|x| self.run_parts(&self.parts, x, x.len() / self.k_pad))
                .collect();
            let mut out = Vec::with_capacity(rows * self.n);
            for y in ys {
                out.extend_from_slice(&y?);
            }
            return Ok(out);
        }
        self.run_parts(&self.parts, &input, rows)
    }

    /// `x · Wᵀ` for `rows` padded rows of `x` through `parts` (stacked along the output), on the
    /// calling thread (or, for dense f32, the current pool).
    fn run_parts(&self, parts: &[(QMatMul, usize)], x: &[f32], rows: usize) -> Result<Vec<f32>> {
        let xs = Tensor::from_slice(x, (rows, self.k_pad), &Device::Cpu)?;
        let run = |w: &QMatMul| -> Result<Vec<f32>> {
            Ok(w.forward(&xs)?.flatten_all()?.to_vec1::<f32>()?)
        };
        if let [(w, _)] = parts {
            return run(w);
        }
        let ys = parts.iter().map(|(w, _)| run(w)).collect();
        self.stack_columns(parts, ys, rows)
    }

    /// Places each part's `[rows, n_i]` output side by side in one `[rows, Σ n_i]` matrix.
    fn stack_columns(
        &self,
        parts: &[(QMatMul, usize)],
        ys: Vec<Result<Vec<f32>>>,
        rows: usize,
    ) -> Result<Vec<f32>> {
        let total: usize = parts.iter().map(|(_, n)| n).sum();
        let mut out = vec![0f32; rows * total];
        let mut col = 0;
        for ((_, n), y) in parts.iter().zip(ys) {
            let y = y?;
            for (dst, src) in out.chunks_exact_mut(total).zip(y.chunks_exact(*n)) {
                dst[col..col + n].copy_from_slice(src);
            }
            col += n;
        }
        Ok(out)
    }

    /// Bytes of weight storage (what one decode step must stream from memory).
    pub(crate) fn weight_bytes(&self) -> usize {
        self.qdot.as_ref().map_or(0, QDotMatrix::bytes)
            + self.blocks.as_ref().map_or(0, BlockMatrix::bytes)
            + self
                .parts
                .iter()
                .map(|(w, _)| match w {
                    QMatMul::QTensor(t) => t.storage_size_in_bytes(),
                    QMatMul::Tensor(t) | QMatMul::TensorF16(t) => {
                        t.elem_count() * t.dtype().size_in_bytes()
                    }
                })
                .sum::<usize>()
    }
}
