//! Synthetic token-length distributions.

use serde::{Deserialize, Serialize};

use crate::rng::Rng;
use crate::WorkloadError;

/// A distribution of prompt or output lengths in tokens. Draws are rounded and at least 1.
///
/// TOML: `{ kind = "fixed", tokens = 128 }`, `{ kind = "uniform", min = 64, max = 512 }`,
/// `{ kind = "lognormal", median = 1024, sigma = 0.8 }` (or `mean = ...` instead of `median`).
/// Short form ([`LengthDist::parse`]): `128`, `uniform(64,512)`, `lognormal(1024,0.8)` (median),
/// `lognormal(mean=1024,sigma=0.8)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LengthDist {
    /// Always `tokens`.
    Fixed {
        /// The length.
        tokens: u32,
    },
    /// Uniform integer in `[min, max]`.
    Uniform {
        /// Smallest length.
        min: u32,
        /// Largest length (inclusive).
        max: u32,
    },
    /// Log-normal: `exp(ln(median) + sigma * Z)`; give `median`, or `mean` (then
    /// `median = mean * exp(-sigma^2 / 2)`).
    #[serde(rename = "lognormal")]
    LogNormal {
        /// Median length.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        median: Option<f64>,
        /// Mean length (alternative to `median`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mean: Option<f64>,
        /// Standard deviation of the underlying normal.
        sigma: f64,
    },
}

impl LengthDist {
    /// Checks parameters; returns the log-space location for log-normals.
    pub(crate) fn validate(&self) -> Result<(), WorkloadError> {
        let bad = |m: String| Err(WorkloadError::Invalid(m));
        match *self {
            LengthDist::Fixed { .. } => Ok(()),
            LengthDist::Uniform { min, max } if min > max => {
                bad(format!("uniform length: min {min} > max {max}"))
            }
            LengthDist::Uniform { .. } => Ok(()),
            LengthDist::LogNormal { sigma, .. } if !(sigma >= 0.0 && sigma.is_finite()) => {
                bad(format!("lognormal length: bad sigma {sigma}"))
            }
            LengthDist::LogNormal { median, mean, .. } => match (median, mean) {
                (Some(v), None) | (None, Some(v)) if v > 0.0 && v.is_finite() => Ok(()),
                (Some(_), Some(_)) => bad("lognormal length: give median or mean, not both".into()),
                (None, None) => bad("lognormal length: needs median or mean".into()),
                _ => bad("lognormal length: median/mean must be positive".into()),
            },
        }
    }

    /// The mean of the draws (before rounding; at least 1).
    pub(crate) fn mean(&self) -> f64 {
        let m = match *self {
            LengthDist::Fixed { tokens } => f64::from(tokens),
            LengthDist::Uniform { min, max } => (f64::from(min) + f64::from(max)) / 2.0,
            LengthDist::LogNormal {
                median,
                mean,
                sigma,
            } => mean.unwrap_or_else(|| median.unwrap_or(1.0) * (sigma * sigma / 2.0).exp()),
        };
        m.max(1.0)
    }

    /// Draws one length (at least 1).
    pub fn sample(&self, rng: &mut Rng) -> u32 {
        let v = match *self {
            LengthDist::Fixed { tokens } => tokens,
            LengthDist::Uniform { min, max } => min + rng.below(u64::from(max - min) + 1) as u32,
            LengthDist::LogNormal {
                median,
                mean,
                sigma,
            } => {
                let median = median
                    .or_else(|| mean.map(|m| m * (-sigma * sigma / 2.0).exp()))
                    .unwrap_or(1.0);
                let x = (median.ln() + sigma * rng.normal()).exp().round();
                x.min(u32::MAX as f64) as u32
            }
        };
        v.max(1)
    }

    /// Parses the short form (see the type's doc).
    pub fn parse(s: &str) -> Result<Self, WorkloadError> {
        let err = |m: &str| WorkloadError::Syntax {
            input: s.to_string(),
            message: m.to_string(),
        };
        let s = s.trim();
        if let Ok(tokens) = s.parse::<u32>() {
            return Ok(LengthDist::Fixed { tokens });
        }
        let (name, args) = s
            .strip_suffix(')')
            .and_then(|r| r.split_once('('))
            .ok_or_else(|| {
                err("expected N, fixed(N), uniform(MIN,MAX) or lognormal(MEDIAN,SIGMA)")
            })?;
        let mut positional = Vec::new();
        let mut named = Vec::new();
        for a in args.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            match a.split_once('=') {
                Some((k, v)) => named.push((k.trim(), v.trim())),
                None => positional.push(a),
            }
        }
        let num = |v: &str| {
            v.parse::<f64>()
                .map_err(|_| err(&format!("bad number `{v}`")))
        };
        let int = |v: &str| {
            v.parse::<u32>()
                .map_err(|_| err(&format!("bad token count `{v}`")))
        };
        let get = |key: &str, pos: usize| -> Option<&str> {
            named
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| *v)
                .or_else(|| positional.get(pos).copied())
        };
        let d = match name.trim() {
            "fixed" => LengthDist::Fixed {
                tokens: int(get("tokens", 0).ok_or_else(|| err("fixed(N) needs N"))?)?,
            },
            "uniform" => LengthDist::Uniform {
                min: int(get("min", 0).ok_or_else(|| err("uniform needs min"))?)?,
                max: int(get("max", 1).ok_or_else(|| err("uniform needs max"))?)?,
            },
            "lognormal" => {
                let mean = named.iter().find(|(k, _)| *k == "mean").map(|(_, v)| *v);
                let sigma = num(get("sigma", 1).ok_or_else(|| err("lognormal needs sigma"))?)?;
                match mean {
                    Some(m) => LengthDist::LogNormal {
                        median: None,
                        mean: Some(num(m)?),
                        sigma,
                    },
                    None => LengthDist::LogNormal {
                        median: Some(num(get("median", 0)
                            .ok_or_else(|| err("lognormal needs median or mean"))?)?),
                        mean: None,
                        sigma,
                    },
                }
            }
            other => return Err(err(&format!("unknown length distribution `{other}`"))),
        };
        d.validate().map_err(|e| err(&e.to_string()))?;
        Ok(d)
    }
}

impl std::fmt::Display for LengthDist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LengthDist::Fixed { tokens } => write!(f, "{tokens}"),
            LengthDist::Uniform { min, max } => write!(f, "uniform({min},{max})"),
            LengthDist::LogNormal {
                median: Some(m),
                sigma,
                ..
            } => write!(f, "lognormal({m},{sigma})"),
            LengthDist::LogNormal { mean, sigma, .. } => {
                write!(
                    f,
                    "lognormal(mean={},sigma={sigma})",
                    mean.unwrap_or(f64::NAN)
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_short_forms() {
        assert_eq!(
            LengthDist::parse("128").unwrap(),
            LengthDist::Fixed { tokens: 128 }
        );
        assert_eq!(
            LengthDist::parse("uniform(64, 512)").unwrap(),
            LengthDist::Uniform { min: 64, max: 512 }
        );
        assert_eq!(
            LengthDist::parse("lognormal(mean=300,sigma=1)").unwrap(),
            LengthDist::LogNormal {
                median: None,
                mean: Some(300.0),
                sigma: 1.0
            }
        );
        for s in [
            "128",
            "uniform(64,512)",
            "lognormal(1000,0.5)",
            "lognormal(mean=300,sigma=1)",
        ] {
            assert_eq!(LengthDist::parse(s).unwrap().to_string(), s);
        }
        assert!(LengthDist::parse("uniform(5,2)").is_err());
        assert!(LengthDist::parse("zipf(3)").is_err());
        assert!(LengthDist::parse("lognormal(x,1)").is_err());
    }

    #[test]
    fn uniform_stays_in_bounds() {
        let d = LengthDist::Uniform { min: 3, max: 5 };
        let mut r = Rng::seed_from_u64(0);
        let mut seen = [false; 3];
        for _ in 0..1000 {
            let v = d.sample(&mut r);
            assert!((3..=5).contains(&v));
            seen[(v - 3) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn lognormal_median_and_mean() {
        let mut r = Rng::seed_from_u64(5);
        let d = LengthDist::parse("lognormal(1000,0.5)").unwrap();
        let mut xs: Vec<u32> = (0..20_001).map(|_| d.sample(&mut r)).collect();
        xs.sort_unstable();
        let median = xs[10_000] as f64;
        assert!((median - 1000.0).abs() < 20.0, "median {median}");
        let d = LengthDist::parse("lognormal(mean=1000,sigma=0.5)").unwrap();
        let mean = (0..50_000).map(|_| d.sample(&mut r) as f64).sum::<f64>() / 50_000.0;
        assert!((mean - 1000.0).abs() < 15.0, "mean {mean}");
    }
}
