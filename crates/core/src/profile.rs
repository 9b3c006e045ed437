//! Hardware profiles: what one instance of a real engine measured, in the form the simulator
//! replays and `accellm calibrate` writes.
//!
//! A profile holds the iteration-time model of one instance
//! (`ms = a + b·tokens + c·Σcontext + d·logit_rows`, plus a per-iteration executor overhead), the
//! measured points it was fitted to, the speed of KV copies between instances, the model geometry
//! (layers, KV bytes per token, context length) and the KV pool of `accellm serve`. With it the
//! simulator predicts the real server ([`HardwareProfile::cost_model`], [`HardwareProfile::link`]).
//!
//! A GPU user writes the `[[point]]` rows from their own measurements (prefills and decode steps
//! of known shapes) and leaves the coefficients out: [`HardwareProfile::resolved`] fits them.
//! Parsing lives with the callers (the core has no TOML dependency); serde names are the file's.

use serde::{Deserialize, Deserializer, Serialize};

use crate::cluster::ClusterConfig;
use crate::cost::{LinearCostModel, Link};
use crate::instance::InstanceConfig;
use crate::request::Slo;

/// KV blocks per instance `accellm serve` allocates by default.
pub const SERVE_KV_BLOCKS: u32 = 1024;
/// Tokens per KV block of `accellm serve` by default.
pub const SERVE_BLOCK_SIZE: u32 = 16;

/// Why a profile cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProfileError {
    /// Neither coefficients nor enough measured points.
    #[error(
        "the profile has no iteration coefficients (a_ms, b_ms_per_token, c_ms_per_context, \
         d_ms_per_logit_row) and {0} measured [[point]] rows; at least 4 are needed to fit them"
    )]
    NothingToFit(usize),
    /// The points do not determine the four coefficients.
    #[error(
        "the [[point]] rows cannot be fitted: vary tokens, sum_context and logit_rows independently"
    )]
    Singular,
}

/// A measured profile of one engine instance. See the module documentation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HardwareProfile {
    /// What was measured (free text, shown in reports).
    #[serde(default)]
    pub name: String,
    /// Fixed cost per iteration (ms). Missing: fitted from the points.
    #[serde(default, deserialize_with = "opt_non_negative")]
    pub a_ms: Option<f64>,
    /// Cost per token in the iteration (ms).
    #[serde(default, deserialize_with = "opt_non_negative")]
    pub b_ms_per_token: Option<f64>,
    /// Cost per (token, key it attends to) pair (ms).
    #[serde(default, deserialize_with = "opt_non_negative")]
    pub c_ms_per_context: Option<f64>,
    /// Cost per row that needs logits (ms).
    #[serde(default, deserialize_with = "opt_non_negative")]
    pub d_ms_per_logit_row: Option<f64>,
    /// Executor time per iteration beyond the forward pass (ms): the scheduler thread's round
    /// trip, sampling, waiting for the link to drain. Added to every iteration.
    #[serde(default, deserialize_with = "non_negative")]
    pub overhead_ms: f64,
    /// Time a request spends before the scheduler sees it and after its last token (ms): HTTP,
    /// JSON, tokenisation. Added to TTFT and end-to-end latency by the fidelity comparison.
    #[serde(default, deserialize_with = "non_negative")]
    pub request_overhead_ms: f64,
    /// Coefficient of determination of the fit.
    #[serde(default)]
    pub r2: f64,
    /// Mean absolute relative error of the fit over the points.
    #[serde(default)]
    pub mean_rel_err: f64,
    /// Number of shapes measured.
    #[serde(default)]
    pub samples: usize,
    /// Weight format (CPU engine) or data type.
    #[serde(default)]
    pub format: String,
    /// Threads per instance (CPU) or devices per instance (GPU).
    #[serde(default = "one")]
    pub threads: usize,
    /// Clock the points were measured with (`wall`, `cpu`, `gpu`).
    #[serde(default)]
    pub clock: String,
    /// Model file or name.
    #[serde(default)]
    pub model: String,
    /// Model geometry.
    pub geometry: Geometry,
    /// KV copies between instances.
    #[serde(default)]
    pub kv_copy: KvCopy,
    /// KV pool of one instance.
    #[serde(default)]
    pub instance: PoolShape,
    /// Measured iterations.
    #[serde(default, rename = "point", skip_serializing_if = "Vec::is_empty")]
    pub points: Vec<Point>,
}

/// What the simulator needs to know of the model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Geometry {
    /// Transformer layers.
    #[serde(deserialize_with = "positive_u32")]
    pub layers: u32,
    /// KV bytes per token on one instance (all layers, K and V).
    #[serde(deserialize_with = "positive_u64")]
    pub kv_bytes_per_token: u64,
    /// Longest prompt plus output.
    #[serde(deserialize_with = "positive_u32")]
    pub context_length: u32,
}

/// Speed of a KV copy between two instances' pools, one layer at a time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvCopy {
    /// Bytes per second of one copy stream.
    #[serde(deserialize_with = "positive")]
    pub bytes_per_s: f64,
    /// Fixed cost of one copy call (one layer), µs.
    #[serde(default, deserialize_with = "non_negative")]
    pub latency_us: f64,
}

impl Default for KvCopy {
    /// What `accellm serve` assumes when nothing was measured.
    fn default() -> Self {
        Self {
            bytes_per_s: 5e9,
            latency_us: 20.0,
        }
    }
}

/// The KV pool of one instance.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolShape {
    /// KV blocks per instance.
    #[serde(deserialize_with = "positive_u32")]
    pub kv_blocks: u32,
    /// Tokens per block.
    #[serde(deserialize_with = "positive_u32")]
    pub block_size: u32,
}

impl Default for PoolShape {
    fn default() -> Self {
        Self {
            kv_blocks: SERVE_KV_BLOCKS,
            block_size: SERVE_BLOCK_SIZE,
        }
    }
}

/// One measured iteration.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Point {
    /// Tokens in the iteration (prefill chunk tokens plus one per decode).
    pub tokens: u32,
    /// Σ over tokens of the keys each attends to (itself included).
    pub sum_context: u64,
    /// Rows that needed logits.
    pub logit_rows: u32,
    /// Measured time (ms).
    #[serde(deserialize_with = "positive")]
    pub ms: f64,
}

impl Point {
    fn features(&self) -> [f64; 4] {
        [
            1.0,
            self.tokens as f64,
            self.sum_context as f64,
            self.logit_rows as f64,
        ]
    }
}

/// The four coefficients of the iteration-time model and how well they fit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    /// `[a, b, c, d]` in ms.
    pub coef: [f64; 4],
    /// Coefficient of determination.
    pub r2: f64,
    /// Mean absolute relative error.
    pub mean_rel_err: f64,
}

/// Fits `ms = a + b·tokens + c·sum_context + d·logit_rows` by least squares on relative error
/// (each point weighted by 1/ms), so short decode steps count as much as long prefills. No
/// coefficient is negative: a term that would be is dropped and the rest refitted.
pub fn fit(points: &[Point]) -> Result<Fit, ProfileError> {
    if points.len() < 4 {
        return Err(ProfileError::NothingToFit(points.len()));
    }
    let mut active = [true; 4];
    let coef = loop {
        let cols: Vec<usize> = (0..4).filter(|&k| active[k]).collect();
        let wx: Vec<Vec<f64>> = points
            .iter()
            .map(|p| {
                let f = p.features();
                cols.iter().map(|&k| f[k] / p.ms.max(1e-9)).collect()
            })
            .collect();
        let b = least_squares(&wx, &vec![1.0; points.len()]).ok_or(ProfileError::Singular)?;
        let mut coef = [0.0; 4];
        for (&k, v) in cols.iter().zip(b) {
            coef[k] = v;
        }
        match (0..4)
            .filter(|&k| coef[k] < 0.0)
            .min_by(|&x, &y| coef[x].total_cmp(&coef[y]))
        {
            Some(k) if cols.len() > 1 => active[k] = false,
            _ => break coef.map(|c| c.max(0.0)),
        }
    };
    let pred = |p: &Point| {
        p.features()
            .iter()
            .zip(&coef)
            .map(|(x, c)| x * c)
            .sum::<f64>()
    };
    let mean = points.iter().map(|p| p.ms).sum::<f64>() / points.len() as f64;
    let ss_res: f64 = points.iter().map(|p| (p.ms - pred(p)).powi(2)).sum();
    let ss_tot: f64 = points.iter().map(|p| (p.ms - mean).powi(2)).sum();
    let mean_rel_err = points
        .iter()
        .map(|p| ((p.ms - pred(p)) / p.ms).abs())
        .sum::<f64>()
        / points.len() as f64;
    Ok(Fit {
        coef,
        r2: 1.0 - ss_res / ss_tot.max(1e-12),
        mean_rel_err,
    })
}

/// Ordinary least squares `x·b ≈ y` by the normal equations; `None` when singular.
#[allow(clippy::needless_range_loop)] // two rows of one matrix are read and written
pub fn least_squares(x: &[Vec<f64>], y: &[f64]) -> Option<Vec<f64>> {
    let p = x.first()?.len();
    let mut a = vec![vec![0.0; p + 1]; p];
    for (row, &yi) in x.iter().zip(y) {
        for i in 0..p {
            for j in 0..p {
                a[i][j] += row[i] * row[j];
            }
            a[i][p] += row[i] * yi;
        }
    }
    // Gaussian elimination with partial pivoting.
    for col in 0..p {
        let piv = (col..p).max_by(|&r, &s| a[r][col].abs().total_cmp(&a[s][col].abs()))?;
        if a[piv][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, piv);
        for r in 0..p {
            if r != col {
                let f = a[r][col] / a[col][col];
                for c in col..=p {
                    a[r][c] -= f * a[col][c];
                }
            }
        }
    }
    Some((0..p).map(|i| a[i][p] / a[i][i]).collect())
}

impl HardwareProfile {
    /// A profile of measured `points` with fitted coefficients.
    pub fn from_points(
        name: String,
        geometry: Geometry,
        points: Vec<Point>,
    ) -> Result<Self, ProfileError> {
        let mut p = Self {
            name,
            a_ms: None,
            b_ms_per_token: None,
            c_ms_per_context: None,
            d_ms_per_logit_row: None,
            overhead_ms: 0.0,
            request_overhead_ms: 0.0,
            r2: 0.0,
            mean_rel_err: 0.0,
            samples: points.len(),
            format: String::new(),
            threads: 1,
            clock: String::new(),
            model: String::new(),
            geometry,
            kv_copy: KvCopy::default(),
            instance: PoolShape::default(),
            points,
        };
        p.refit()?;
        Ok(p)
    }

    /// Fits the coefficients to the points (overwriting any).
    pub fn refit(&mut self) -> Result<(), ProfileError> {
        let f = fit(&self.points)?;
        [
            self.a_ms,
            self.b_ms_per_token,
            self.c_ms_per_context,
            self.d_ms_per_logit_row,
        ] = f.coef.map(Some);
        self.r2 = f.r2;
        self.mean_rel_err = f.mean_rel_err;
        self.samples = self.points.len();
        Ok(())
    }

    /// The profile with its coefficients filled in: as given, or fitted to the points when any
    /// is missing.
    pub fn resolved(mut self) -> Result<Self, ProfileError> {
        if self.coefficients().is_none() {
            self.refit()?;
        }
        Ok(self)
    }

    /// `[a, b, c, d]` in ms, when all four are present.
    pub fn coefficients(&self) -> Option<[f64; 4]> {
        Some([
            self.a_ms?,
            self.b_ms_per_token?,
            self.c_ms_per_context?,
            self.d_ms_per_logit_row?,
        ])
    }

    /// The iteration-time model of one instance, executor overhead included.
    pub fn cost_model(&self) -> Result<LinearCostModel, ProfileError> {
        let [a, b, c, d] = match self.coefficients() {
            Some(c) => c,
            None => fit(&self.points)?.coef,
        };
        Ok(LinearCostModel {
            base_us: (a + self.overhead_ms) * 1e3,
            per_token_us: b * 1e3,
            per_kv_token_us: c * 1e3,
            per_logit_row_us: d * 1e3,
            layers: self.geometry.layers,
            kv_bytes_per_token: self.geometry.kv_bytes_per_token,
        })
    }

    /// The link between two instances: one layer's copy costs `latency_us` plus its bytes at
    /// `bytes_per_s`.
    pub fn link(&self) -> Link {
        Link {
            bytes_per_s: self.kv_copy.bytes_per_s,
            latency_us: self.kv_copy.latency_us,
        }
    }
}

/// How a running `accellm serve` is set up, as the simulator needs it to replay the same
/// scheduling (served as JSON at `GET /accellm/config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServeSetup {
    /// Engine instances.
    pub instances: u32,
    /// Threads per instance.
    pub threads_per_instance: usize,
    /// Cluster policy.
    pub cluster_policy: String,
    /// Instance policy.
    pub instance_policy: String,
    /// KV blocks per instance.
    pub kv_blocks: u32,
    /// Tokens per block.
    pub block_size: u32,
    /// Most requests waiting before 429 (0: unbounded).
    pub max_waiting: usize,
    /// SLOs given to requests that bring none.
    pub slo: Slo,
    /// The scheduler's iteration-time predictor.
    pub cost: LinearCostModel,
    /// The link the scheduler assumes between instances.
    pub link: Link,
    /// Instance-policy knobs.
    pub instance: InstanceConfig,
    /// Cluster-policy knobs.
    pub cluster: ClusterConfig,
    /// Model served.
    pub model: String,
}

fn one() -> usize {
    1
}

fn checked<'de, D: Deserializer<'de>, T: Deserialize<'de> + Copy>(
    d: D,
    ok: impl Fn(T) -> bool,
    what: &str,
) -> Result<T, D::Error> {
    let v = T::deserialize(d)?;
    if ok(v) {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(what))
    }
}

fn positive<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    checked(
        d,
        |v: f64| v.is_finite() && v > 0.0,
        "must be a positive number",
    )
}

fn non_negative<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    checked(
        d,
        |v: f64| v.is_finite() && v >= 0.0,
        "must be a number >= 0",
    )
}

fn opt_non_negative<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    non_negative(d).map(Some)
}

fn positive_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    checked(d, |v: u32| v > 0, "must be at least 1")
}

fn positive_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    checked(d, |v: u64| v > 0, "must be at least 1")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry() -> Geometry {
        Geometry {
            layers: 30,
            kv_bytes_per_token: 46_080,
            context_length: 8192,
        }
    }

    #[test]
    fn points_fit_back_to_their_coefficients() {
        let points: Vec<Point> = [(16, 136, 1), (128, 8256, 1), (8, 2048, 8), (64, 30_000, 4)]
            .iter()
            .chain(&[(1, 64, 1), (32, 8192, 32)])
            .map(|&(t, c, r)| Point {
                tokens: t,
                sum_context: c,
                logit_rows: r,
                ms: 10.0 + 2.0 * t as f64 + 0.01 * c as f64 + 1.5 * r as f64,
            })
            .collect();
        let p = HardwareProfile::from_points("t".into(), geometry(), points).unwrap();
        let [a, b, c, d] = p.coefficients().unwrap();
        assert!((a - 10.0).abs() < 1e-6 && (b - 2.0).abs() < 1e-6, "{a} {b}");
        assert!((c - 0.01).abs() < 1e-9 && (d - 1.5).abs() < 1e-6, "{c} {d}");
        assert!(p.mean_rel_err < 1e-9 && p.r2 > 0.999_999);
        let m = HardwareProfile {
            overhead_ms: 1.0,
            ..p
        }
        .cost_model()
        .unwrap();
        assert_eq!(m.base_us.round(), 11_000.0);
    }

    #[test]
    fn no_coefficient_is_negative() {
        // Time falls with logit rows here: that term is dropped, the rest refitted.
        let points: Vec<Point> = [3u32, 1, 4, 1, 5, 9, 2, 6]
            .iter()
            .zip(1u32..)
            .map(|(&rows, i)| Point {
                tokens: 10 * i,
                sum_context: (100 * i * i) as u64,
                logit_rows: rows,
                ms: 5.0 + (10 * i) as f64 - 0.5 * rows as f64,
            })
            .collect();
        let f = fit(&points).unwrap();
        assert!(f.coef.iter().all(|&c| c >= 0.0), "{:?}", f.coef);
        assert_eq!(f.coef[3], 0.0);
    }

    #[test]
    fn too_few_points_is_an_error() {
        let e = HardwareProfile::from_points("t".into(), geometry(), vec![]).unwrap_err();
        assert_eq!(e, ProfileError::NothingToFit(0));
        assert!(e.to_string().contains("[[point]]"));
    }

    #[test]
    fn least_squares_recovers_coefficients() {
        let xs: Vec<Vec<f64>> = (0..20)
            .map(|i| vec![1.0, i as f64, ((i * 7) % 5) as f64, (i % 3) as f64])
            .collect();
        let y: Vec<f64> = xs
            .iter()
            .map(|r| 2.0 + 0.5 * r[1] + 3.0 * r[2] - 1.0 * r[3])
            .collect();
        let b = least_squares(&xs, &y).unwrap();
        for (got, want) in b.iter().zip([2.0, 0.5, 3.0, -1.0]) {
            assert!((got - want).abs() < 1e-9, "{b:?}");
        }
    }
}
