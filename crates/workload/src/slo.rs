//! SLO classes and how requests get them.

use serde::{Deserialize, Serialize};

use crate::WorkloadError;

/// A named latency target shared by a share of the requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SloClass {
    /// Class name (`chat`, `code`, ...).
    pub name: String,
    /// Relative share of requests under [`SloPolicy::Classes`].
    #[serde(default = "one")]
    pub weight: f64,
    /// Time-to-first-token target, ms.
    #[serde(default)]
    pub ttft_ms: Option<f64>,
    /// Time-between-tokens target, ms.
    #[serde(default)]
    pub tbt_ms: Option<f64>,
    /// Scheduling priority; lower is more urgent (vLLM's convention).
    #[serde(default)]
    pub priority: i32,
}

fn one() -> f64 {
    1.0
}

impl SloClass {
    /// A class with the given targets.
    pub fn new(name: &str, weight: f64, ttft_ms: f64, tbt_ms: f64, priority: i32) -> Self {
        SloClass {
            name: name.to_string(),
            weight,
            ttft_ms: Some(ttft_ms),
            tbt_ms: Some(tbt_ms),
            priority,
        }
    }

    /// The default mix, equal weights: `chat` (TTFT 1 s, TBT 50 ms, priority 0), `code` (2 s,
    /// 100 ms, 1), `summarisation` (5 s, 250 ms, 2), `batch` (30 s, 1000 ms, 3).
    pub fn defaults() -> Vec<SloClass> {
        vec![
            SloClass::new("chat", 1.0, 1_000.0, 50.0, 0),
            SloClass::new("code", 1.0, 2_000.0, 100.0, 1),
            SloClass::new("summarisation", 1.0, 5_000.0, 250.0, 2),
            SloClass::new("batch", 1.0, 30_000.0, 1_000.0, 3),
        ]
    }
}

/// How requests get their SLOs.
///
/// TOML: `{ kind = "none" }`, `{ kind = "fixed", ttft_ms = 1000, tbt_ms = 50 }`,
/// `{ kind = "classes" }` (default classes) or with `classes = [{ name = ..., weight = ...,
/// ttft_ms = ..., tbt_ms = ..., priority = ... }, ...]`, `{ kind = "per_source" }`,
/// `{ kind = "from_file" }`.
/// Short form ([`std::str::FromStr`]): `none`, `fixed:TTFT_MS:TBT_MS`, `classes`,
/// `classes:chat=0.5,batch=0.5` (default classes re-weighted; unnamed ones get weight 0),
/// `per-source`, `file`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SloPolicy {
    /// No SLOs (priority 0).
    #[default]
    None,
    /// The same targets for every request.
    Fixed {
        /// TTFT target, ms.
        #[serde(default)]
        ttft_ms: Option<f64>,
        /// TBT target, ms.
        #[serde(default)]
        tbt_ms: Option<f64>,
        /// Priority of every request.
        #[serde(default)]
        priority: i32,
    },
    /// Each request draws a class by weight (seeded).
    Classes {
        /// The classes; [`SloClass::defaults`] when omitted.
        #[serde(default = "SloClass::defaults")]
        classes: Vec<SloClass>,
    },
    /// Each request gets the class named by its mixture component
    /// ([`crate::MixtureComponent::class`]); components without a class give no SLO.
    PerSource {
        /// The classes; [`SloClass::defaults`] when omitted.
        #[serde(default = "SloClass::defaults")]
        classes: Vec<SloClass>,
    },
    /// Per-request values from the trace file's `ttft_slo_ms`, `tbt_slo_ms`, `priority`
    /// columns (or JSONL fields); missing values give no SLO.
    FromFile,
}

impl SloPolicy {
    /// The classes this policy assigns (empty for the others).
    pub fn classes(&self) -> &[SloClass] {
        match self {
            SloPolicy::Classes { classes } | SloPolicy::PerSource { classes } => classes,
            _ => &[],
        }
    }

    /// The same policy with every TTFT and TBT target multiplied by `k` (SLO classes fitted to
    /// slower or faster hardware). Per-request targets from a trace file cannot be scaled here.
    pub fn scaled(&self, k: f64) -> Result<Self, WorkloadError> {
        if !(k > 0.0 && k.is_finite()) {
            return Err(WorkloadError::Invalid(format!(
                "SLO scale must be a positive number, got {k}"
            )));
        }
        let ms = |v: Option<f64>| v.map(|v| v * k);
        let classes = |cs: &[SloClass]| -> Vec<SloClass> {
            cs.iter()
                .map(|c| SloClass {
                    ttft_ms: ms(c.ttft_ms),
                    tbt_ms: ms(c.tbt_ms),
                    ..c.clone()
                })
                .collect()
        };
        Ok(match self {
            SloPolicy::None => SloPolicy::None,
            SloPolicy::Fixed {
                ttft_ms,
                tbt_ms,
                priority,
            } => SloPolicy::Fixed {
                ttft_ms: ms(*ttft_ms),
                tbt_ms: ms(*tbt_ms),
                priority: *priority,
            },
            SloPolicy::Classes { classes: cs } => SloPolicy::Classes {
                classes: classes(cs),
            },
            SloPolicy::PerSource { classes: cs } => SloPolicy::PerSource {
                classes: classes(cs),
            },
            SloPolicy::FromFile => {
                return Err(WorkloadError::Invalid(
                    "per-request SLOs from a trace file cannot be scaled".into(),
                ))
            }
        })
    }

    pub(crate) fn validate(&self) -> Result<(), WorkloadError> {
        let classes = self.classes();
        if classes.len() > u16::MAX as usize {
            return Err(WorkloadError::Invalid("too many SLO classes".into()));
        }
        for c in classes {
            if !(c.weight >= 0.0 && c.weight.is_finite()) {
                return Err(WorkloadError::Invalid(format!(
                    "SLO class `{}`: bad weight {}",
                    c.name, c.weight
                )));
            }
        }
        if let SloPolicy::Classes { classes } = self {
            if classes.iter().map(|c| c.weight).sum::<f64>() <= 0.0 {
                return Err(WorkloadError::Invalid(
                    "SLO classes need a positive total weight".into(),
                ));
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for SloPolicy {
    type Err = WorkloadError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |m: String| WorkloadError::Syntax {
            input: s.to_string(),
            message: m,
        };
        let s = s.trim();
        let (kind, rest) = s.split_once(':').unwrap_or((s, ""));
        let p =
            match kind {
                "none" => SloPolicy::None,
                "per-source" | "per_source" => SloPolicy::PerSource {
                    classes: SloClass::defaults(),
                },
                "file" | "from-file" | "from_file" => SloPolicy::FromFile,
                "fixed" => {
                    let (t, b) = rest
                        .split_once(':')
                        .ok_or_else(|| err("expected fixed:TTFT_MS:TBT_MS".into()))?;
                    let num = |v: &str| {
                        v.trim()
                            .parse::<f64>()
                            .map_err(|_| err(format!("bad number `{v}`")))
                    };
                    SloPolicy::Fixed {
                        ttft_ms: Some(num(t)?),
                        tbt_ms: Some(num(b)?),
                        priority: 0,
                    }
                }
                "classes" => {
                    let mut classes = SloClass::defaults();
                    if !rest.is_empty() {
                        classes.iter_mut().for_each(|c| c.weight = 0.0);
                        for kv in rest.split(',') {
                            let (k, v) = kv
                                .split_once('=')
                                .ok_or_else(|| err(format!("expected NAME=WEIGHT, got `{kv}`")))?;
                            let c = classes
                                .iter_mut()
                                .find(|c| c.name == k.trim())
                                .ok_or_else(|| err(format!("unknown SLO class `{k}`")))?;
                            c.weight = v
                                .trim()
                                .parse()
                                .map_err(|_| err(format!("bad weight `{v}`")))?;
                        }
                    }
                    SloPolicy::Classes { classes }
                }
                _ => return Err(err(
                    "expected none, fixed:TTFT_MS:TBT_MS, classes[:NAME=W,...], per-source or file"
                        .into(),
                )),
            };
        p.validate().map_err(|e| err(e.to_string()))?;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_short_forms() {
        assert_eq!("none".parse::<SloPolicy>().unwrap(), SloPolicy::None);
        assert_eq!(
            "fixed:500:50".parse::<SloPolicy>().unwrap(),
            SloPolicy::Fixed {
                ttft_ms: Some(500.0),
                tbt_ms: Some(50.0),
                priority: 0
            }
        );
        let p: SloPolicy = "classes:chat=3,batch=1".parse().unwrap();
        let w: Vec<f64> = p.classes().iter().map(|c| c.weight).collect();
        assert_eq!(w, vec![3.0, 0.0, 0.0, 1.0]);
        assert!("classes:nope=1".parse::<SloPolicy>().is_err());
        assert!("classes:chat=0".parse::<SloPolicy>().is_err());
        assert!("fixed:1".parse::<SloPolicy>().is_err());
    }
}
