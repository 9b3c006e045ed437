//! Hardware profiles: what one instance of a real engine measured, in the form the simulator
//! replays and `accellm calibrate` writes.
//!
//! A profile holds the iteration-time model of one instance
//! (`ms = a + b·tokens + c·Σcontext + d·logit_rows`, the token term optionally bent at knots, plus
//! a per-iteration executor overhead), the
//! measured points it was fitted to, the speed of KV copies between instances, the model geometry
//! (layers, KV bytes per token, context length) and the KV pool of `accellm serve`. With it the
//! simulator predicts the real server ([`HardwareProfile::cost_model`], [`HardwareProfile::link`]).
//!
//! A GPU user writes the `[[point]]` rows from their own measurements (prefills and decode steps
//! of known shapes) and leaves the coefficients out: [`HardwareProfile::resolved`] fits them.
//! Parsing lives with the callers (the core has no TOML dependency); serde names are the file's.

use serde::{Deserialize, Deserializer, Serialize};

use crate::cluster::ClusterConfig;
use crate::cost::{LinearCostModel, Link, TokenKnot};
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
    /// Where the cost per token changes (empty: a straight line in tokens).
    #[serde(default, rename = "knot", skip_serializing_if = "Vec::is_empty")]
    pub knots: Vec<Knot>,
    /// Measured iterations.
    #[serde(default, rename = "point", skip_serializing_if = "Vec::is_empty")]
    pub points: Vec<Point>,
    /// The same model on the instance's threads and its idle partner's (twice as many), where
    /// measured: what an iteration costs when it borrows them
    /// ([`crate::SchedulerConfig::share_idle_cores`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wide: Option<WideFit>,
}

/// The iteration-time model of an instance running on twice its threads (its own and its idle
/// partner's): the coefficients and knots of [`HardwareProfile`], fitted to its own points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WideFit {
    /// Fixed cost per iteration (ms).
    #[serde(deserialize_with = "non_negative")]
    pub a_ms: f64,
    /// Cost per token (ms).
    #[serde(deserialize_with = "non_negative")]
    pub b_ms_per_token: f64,
    /// Cost per (token, key) pair (ms).
    #[serde(deserialize_with = "non_negative")]
    pub c_ms_per_context: f64,
    /// Cost per logit row (ms).
    #[serde(deserialize_with = "non_negative")]
    pub d_ms_per_logit_row: f64,
    /// Mean absolute relative error of the fit over the points.
    #[serde(default)]
    pub mean_rel_err: f64,
    /// Where the cost per token changes.
    #[serde(default, rename = "knot", skip_serializing_if = "Vec::is_empty")]
    pub knots: Vec<Knot>,
    /// Measured iterations.
    #[serde(default, rename = "point", skip_serializing_if = "Vec::is_empty")]
    pub points: Vec<Point>,
}

impl WideFit {
    /// Fits `points` (measured on the wide pool) with [`fit`].
    pub fn from_points(points: Vec<Point>, knots: &[u32]) -> Result<Self, ProfileError> {
        let f = fit(&points, knots)?;
        let [a, b, c, d] = f.coef;
        Ok(Self {
            a_ms: a,
            b_ms_per_token: b,
            c_ms_per_context: c,
            d_ms_per_logit_row: d,
            mean_rel_err: f.mean_rel_err,
            knots: f.knots,
            points,
        })
    }

    /// Its iteration-time model, `overhead_ms` added to every iteration.
    pub fn cost_model(
        &self,
        overhead_ms: f64,
        layers: u32,
        kv_bytes_per_token: u64,
    ) -> LinearCostModel {
        LinearCostModel {
            base_us: (self.a_ms + overhead_ms) * 1e3,
            per_token_us: self.b_ms_per_token * 1e3,
            per_kv_token_us: self.c_ms_per_context * 1e3,
            per_logit_row_us: self.d_ms_per_logit_row * 1e3,
            knots: self.knots.iter().copied().map(TokenKnot::from).collect(),
            layers,
            kv_bytes_per_token,
            wide: None,
        }
    }

    /// Multiplies every coefficient by `k` (a probe's speed ratio to the reference machine).
    pub fn scale(&mut self, k: f64) {
        self.a_ms *= k;
        self.b_ms_per_token *= k;
        self.c_ms_per_context *= k;
        self.d_ms_per_logit_row *= k;
        for knot in &mut self.knots {
            knot.ms_per_token *= k;
        }
    }
}

/// From `tokens` on, each further token costs `ms_per_token` more (negative: less) than before.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Knot {
    /// Token count where the slope changes.
    pub tokens: u32,
    /// Change of the cost per token (ms).
    pub ms_per_token: f64,
}

impl From<Knot> for TokenKnot {
    fn from(k: Knot) -> Self {
        TokenKnot {
            tokens: k.tokens,
            delta_us: k.ms_per_token * 1e3,
        }
    }
}

impl From<TokenKnot> for Knot {
    fn from(k: TokenKnot) -> Self {
        Knot {
            tokens: k.tokens,
            ms_per_token: k.delta_us / 1e3,
        }
    }
}

/// Token counts where `accellm calibrate` lets the CPU engine's cost per token change: its
/// matmul kernels depend on the number of activation rows (the `blocks` format switches from a
/// per-row kernel to a dense matmul at 32 rows; small batches use the cores less well). Knots
/// without measured shapes on both sides are left out by [`fit`].
pub const ENGINE_KNOTS: [u32; 5] = [8, 16, 32, 64, 128];

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

/// The coefficients of the iteration-time model and how well they fit.
#[derive(Debug, Clone, PartialEq)]
pub struct Fit {
    /// `[a, b, c, d]` in ms.
    pub coef: [f64; 4],
    /// Changes of the cost per token, ascending.
    pub knots: Vec<Knot>,
    /// Coefficient of determination.
    pub r2: f64,
    /// Mean absolute relative error.
    pub mean_rel_err: f64,
}

impl Fit {
    fn predict(&self, p: &Point) -> f64 {
        let base: f64 = p
            .features()
            .iter()
            .zip(&self.coef)
            .map(|(x, c)| x * c)
            .sum();
        base + self
            .knots
            .iter()
            .map(|k| k.ms_per_token * p.tokens.saturating_sub(k.tokens) as f64)
            .sum::<f64>()
    }
}

/// Fits `ms = a + b·tokens + c·sum_context + d·logit_rows`, the token term bent at whichever
/// of `knots` the points can determine, by least squares on relative error (each point
/// weighted by 1/ms), so short decode steps count as much as long prefills. None of `a`–`d` is
/// negative (a term that would be is dropped and the rest refitted), and the cost per token
/// stays ≥ 0 on every segment (a knot that would make it negative is dropped), so predictions
/// never fall as tokens are added.
pub fn fit(points: &[Point], knots: &[u32]) -> Result<Fit, ProfileError> {
    if points.len() < 4 {
        return Err(ProfileError::NothingToFit(points.len()));
    }
    // A knot needs two distinct measured token counts above it and one at or below it.
    let mut knots: Vec<u32> = knots
        .iter()
        .copied()
        .filter(|&k| {
            let mut above: Vec<u32> = points.iter().map(|p| p.tokens).filter(|&t| t > k).collect();
            above.sort_unstable();
            above.dedup();
            above.len() >= 2 && points.iter().any(|p| p.tokens <= k)
        })
        .collect();
    knots.sort_unstable();
    knots.dedup();
    loop {
        let f = match fit_terms(points, &knots) {
            Ok(f) => f,
            Err(e) if knots.is_empty() => return Err(e),
            Err(_) => {
                knots.pop();
                continue;
            }
        };
        let mut slope = f.coef[1];
        let bad = f.knots.iter().position(|k| {
            slope += k.ms_per_token;
            slope < 0.0
        });
        match bad {
            Some(i) => {
                knots.remove(i);
            }
            None => return Ok(f),
        }
    }
}

/// One least-squares fit with the given knots (see [`fit`]).
fn fit_terms(points: &[Point], knots: &[u32]) -> Result<Fit, ProfileError> {
    let n = 4 + knots.len();
    let features = |p: &Point| -> Vec<f64> {
        let mut f = p.features().to_vec();
        f.extend(knots.iter().map(|&k| p.tokens.saturating_sub(k) as f64));
        f
    };
    let mut active = vec![true; n];
    let coef = loop {
        let cols: Vec<usize> = (0..n).filter(|&k| active[k]).collect();
        let wx: Vec<Vec<f64>> = points
            .iter()
            .map(|p| {
                let f = features(p);
                cols.iter().map(|&k| f[k] / p.ms.max(1e-9)).collect()
            })
            .collect();
        let b = least_squares(&wx, &vec![1.0; points.len()]).ok_or(ProfileError::Singular)?;
        let mut coef = vec![0.0; n];
        for (&k, v) in cols.iter().zip(b) {
            coef[k] = v;
        }
        // Only a–d must not be negative; a knot may lower the slope.
        match (0..4)
            .filter(|&k| coef[k] < 0.0)
            .min_by(|&x, &y| coef[x].total_cmp(&coef[y]))
        {
            Some(k) if cols.len() > 1 => active[k] = false,
            _ => break coef,
        }
    };
    let mut f = Fit {
        coef: [0, 1, 2, 3].map(|k| coef[k].max(0.0)),
        knots: knots
            .iter()
            .zip(&coef[4..])
            .map(|(&tokens, &ms_per_token)| Knot {
                tokens,
                ms_per_token,
            })
            .collect(),
        r2: 0.0,
        mean_rel_err: 0.0,
    };
    let mean = points.iter().map(|p| p.ms).sum::<f64>() / points.len() as f64;
    let ss_res: f64 = points.iter().map(|p| (p.ms - f.predict(p)).powi(2)).sum();
    let ss_tot: f64 = points.iter().map(|p| (p.ms - mean).powi(2)).sum();
    f.mean_rel_err = points
        .iter()
        .map(|p| ((p.ms - f.predict(p)) / p.ms).abs())
        .sum::<f64>()
        / points.len() as f64;
    f.r2 = 1.0 - ss_res / ss_tot.max(1e-12);
    Ok(f)
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
    /// A profile of measured `points` with fitted coefficients, the token term bent at those
    /// of `knots` the points determine (see [`fit`]).
    pub fn from_points(
        name: String,
        geometry: Geometry,
        points: Vec<Point>,
        knots: &[u32],
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
            knots: Vec::new(),
            points,
            wide: None,
        };
        p.refit(knots)?;
        Ok(p)
    }

    /// Fits the coefficients to the points (overwriting any), the token term bent at those of
    /// `knots` the points determine.
    pub fn refit(&mut self, knots: &[u32]) -> Result<(), ProfileError> {
        let f = fit(&self.points, knots)?;
        [
            self.a_ms,
            self.b_ms_per_token,
            self.c_ms_per_context,
            self.d_ms_per_logit_row,
        ] = f.coef.map(Some);
        self.knots = f.knots;
        self.r2 = f.r2;
        self.mean_rel_err = f.mean_rel_err;
        self.samples = self.points.len();
        Ok(())
    }

    /// The profile with its coefficients filled in: as given, or fitted to the points (a
    /// straight line in tokens) when any is missing.
    pub fn resolved(mut self) -> Result<Self, ProfileError> {
        if self.coefficients().is_none() {
            self.refit(&[])?;
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

    /// The fitted model's time for a measured shape (ms, executor overhead excluded), when the
    /// coefficients are present.
    pub fn predict_ms(&self, p: &Point) -> Option<f64> {
        let fit = Fit {
            coef: self.coefficients()?,
            knots: self.knots.clone(),
            r2: 0.0,
            mean_rel_err: 0.0,
        };
        Some(fit.predict(p))
    }

    /// The iteration-time model of one instance, executor overhead included.
    pub fn cost_model(&self) -> Result<LinearCostModel, ProfileError> {
        let ([a, b, c, d], knots) = match self.coefficients() {
            Some(c) => (c, self.knots.clone()),
            None => (fit(&self.points, &[])?.coef, Vec::new()),
        };
        let (layers, kv_bytes) = (self.geometry.layers, self.geometry.kv_bytes_per_token);
        Ok(LinearCostModel {
            base_us: (a + self.overhead_ms) * 1e3,
            per_token_us: b * 1e3,
            per_kv_token_us: c * 1e3,
            per_logit_row_us: d * 1e3,
            knots: knots.into_iter().map(TokenKnot::from).collect(),
            layers,
            kv_bytes_per_token: kv_bytes,
            wide: self
                .wide
                .as_ref()
                .map(|w| Box::new(w.cost_model(self.overhead_ms, layers, kv_bytes))),
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
    /// KV blocks per instance.
    pub kv_blocks: u32,
    /// Tokens per block.
    pub block_size: u32,
    /// Most requests waiting before 429 (0: unbounded).
    pub max_waiting: usize,
    /// Whether paired instances lend each other idle cores
    /// ([`crate::SchedulerConfig::share_idle_cores`]).
    #[serde(default)]
    pub share_idle_cores: bool,
    /// SLOs given to requests that bring none.
    pub slo: Slo,
    /// The scheduler's iteration-time predictor.
    pub cost: LinearCostModel,
    /// The link the scheduler assumes between instances.
    pub link: Link,
    /// Instance policy and its knobs.
    pub instance: InstanceConfig,
    /// Cluster policy and its knobs.
    pub cluster: ClusterConfig,
    /// Model served.
    pub model: String,
}

impl ServeSetup {
    /// The server's own scheduler cost model and link as a profile: what `accellm bench
    /// --predict server` replays with (the prediction the server itself schedules by).
    pub fn as_profile(&self) -> HardwareProfile {
        let c = &self.cost;
        HardwareProfile {
            name: format!("the server's own cost model ({})", self.model),
            a_ms: Some(c.base_us / 1e3),
            b_ms_per_token: Some(c.per_token_us / 1e3),
            c_ms_per_context: Some(c.per_kv_token_us / 1e3),
            d_ms_per_logit_row: Some(c.per_logit_row_us / 1e3),
            overhead_ms: 0.0,
            request_overhead_ms: 0.0,
            r2: 0.0,
            mean_rel_err: 0.0,
            samples: 0,
            format: String::new(),
            threads: self.threads_per_instance,
            clock: "server".into(),
            model: self.model.clone(),
            geometry: Geometry {
                layers: c.layers.max(1),
                kv_bytes_per_token: c.kv_bytes_per_token.max(1),
                // The replayed requests are the ones the server accepted: it enforced its
                // context already.
                context_length: 1 << 24,
            },
            kv_copy: KvCopy {
                bytes_per_s: self.link.bytes_per_s,
                latency_us: self.link.latency_us,
            },
            instance: PoolShape {
                kv_blocks: self.kv_blocks,
                block_size: self.block_size,
            },
            knots: c.knots.iter().copied().map(Knot::from).collect(),
            points: Vec::new(),
            wide: c.wide.as_ref().map(|w| WideFit {
                a_ms: w.base_us / 1e3,
                b_ms_per_token: w.per_token_us / 1e3,
                c_ms_per_context: w.per_kv_token_us / 1e3,
                d_ms_per_logit_row: w.per_logit_row_us / 1e3,
                mean_rel_err: 0.0,
                knots: w.knots.iter().copied().map(Knot::from).collect(),
                points: Vec::new(),
            }),
        }
    }
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
        let p = HardwareProfile::from_points("t".into(), geometry(), points, &[]).unwrap();
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
        let f = fit(&points, &[]).unwrap();
        assert!(f.coef.iter().all(|&c| c >= 0.0), "{:?}", f.coef);
        assert_eq!(f.coef[3], 0.0);
    }

    #[test]
    fn a_kernel_switch_is_fitted_as_a_knot() {
        // 4 ms per token up to 32 tokens, 2 ms beyond (the `blocks` format's two kernels); a
        // straight line misses 20-token chunks by far, the knotted fit does not.
        let ms = |t: u32, r: u32| {
            5.0 + 4.0 * t.min(32) as f64 + 2.0 * t.saturating_sub(32) as f64 + 0.5 * r as f64
        };
        let points: Vec<Point> = [1u32, 2, 4, 8, 16, 24, 31, 48, 64, 128, 256, 512]
            .iter()
            .flat_map(|&t| [(t, 1), (t, t.min(16))])
            .map(|(t, r)| Point {
                tokens: t,
                sum_context: (t * t) as u64,
                logit_rows: r,
                ms: ms(t, r),
            })
            .collect();
        let chunk = Point {
            tokens: 20,
            sum_context: 400,
            logit_rows: 0,
            ms: ms(20, 0),
        };
        let line = fit(&points, &[]).unwrap();
        assert!(line.predict(&chunk) < 0.8 * chunk.ms, "{line:?}");
        let bent = fit(&points, &ENGINE_KNOTS).unwrap();
        assert!(
            (bent.predict(&chunk) / chunk.ms - 1.0).abs() < 0.01,
            "{bent:?}"
        );
        assert!(bent.mean_rel_err < 1e-6, "{bent:?}");
        // Knots past the measured shapes are left out, and the model never falls with tokens.
        let few: Vec<Point> = points.iter().copied().filter(|p| p.tokens <= 48).collect();
        let f = fit(&few, &ENGINE_KNOTS).unwrap();
        assert!(f.knots.iter().all(|k| k.tokens < 32), "{f:?}");
        let p =
            HardwareProfile::from_points("t".into(), geometry(), points, &ENGINE_KNOTS).unwrap();
        let m = p.cost_model().unwrap();
        let mut last = 0;
        for t in 1..600 {
            let mut s = crate::cost::IterationShape::default();
            s.add_prefill(0, t, false);
            let us = crate::cost::CostModel::iteration_us(&m, &s);
            assert!(us >= last, "{t}: {us} < {last}");
            last = us;
        }
    }

    #[test]
    fn too_few_points_is_an_error() {
        let e = HardwareProfile::from_points("t".into(), geometry(), vec![], &[]).unwrap_err();
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
