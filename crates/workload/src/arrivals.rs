//! Arrival processes: the trace's own timestamps, re-timed trace timestamps, or generated
//! Poisson / Gamma arrivals.

use serde::{Deserialize, Serialize};

use crate::rng::Rng;
use crate::WorkloadError;

/// When requests arrive.
///
/// TOML: `{ kind = "poisson", rate = 2.0 }`, `{ kind = "gamma", rate = 2.0, cv = 3.0 }`,
/// `{ kind = "retime", rate = 10.0 }`, `{ kind = "trace" }`, `{ kind = "all_at_once" }`.
/// Short form ([`std::str::FromStr`]): `trace`, `retime:10`, `poisson:2`, `gamma:2:3`,
/// `all-at-once`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Arrivals {
    /// The trace file's own timestamps, relative to its first row (timed files only).
    Trace,
    /// The trace's timestamps with every inter-arrival gap scaled by one factor so that the
    /// mean rate `(n - 1) / (last - first)` is `rate`: burstiness is preserved.
    Retime {
        /// Target mean rate, requests per second.
        rate: f64,
    },
    /// Poisson process: exponential gaps with mean `1 / rate`.
    Poisson {
        /// Requests per second.
        rate: f64,
    },
    /// Gamma-distributed gaps with mean `1 / rate` and coefficient of variation `cv`
    /// (shape `1 / cv^2`; `cv = 1` is Poisson, larger is burstier).
    Gamma {
        /// Requests per second.
        rate: f64,
        /// Coefficient of variation of the gaps.
        cv: f64,
    },
    /// Every request at time 0 (an infinite rate, like `vllm bench serve --request-rate inf`).
    AllAtOnce,
}

impl Arrivals {
    /// Gamma arrivals from vLLM's `--burstiness` (the Gamma shape: `cv = 1 / sqrt(burstiness)`);
    /// burstiness 1 gives Poisson. A non-finite rate gives [`Arrivals::AllAtOnce`].
    pub fn with_burstiness(rate: f64, burstiness: f64) -> Self {
        if !rate.is_finite() {
            Arrivals::AllAtOnce
        } else if burstiness == 1.0 {
            Arrivals::Poisson { rate }
        } else {
            Arrivals::Gamma {
                rate,
                cv: 1.0 / burstiness.sqrt(),
            }
        }
    }

    /// Whether the times come from a trace file.
    pub fn uses_trace_times(&self) -> bool {
        matches!(self, Arrivals::Trace | Arrivals::Retime { .. })
    }

    pub(crate) fn validate(&self) -> Result<(), WorkloadError> {
        let pos = |v: f64| v > 0.0 && v.is_finite();
        match *self {
            Arrivals::Retime { rate } | Arrivals::Poisson { rate } if !pos(rate) => Err(
                WorkloadError::Invalid(format!("arrival rate must be positive, got {rate}")),
            ),
            Arrivals::Gamma { rate, cv } if !pos(rate) || !pos(cv) => Err(WorkloadError::Invalid(
                format!("gamma arrivals need positive rate and cv, got rate {rate}, cv {cv}"),
            )),
            _ => Ok(()),
        }
    }

    /// A one-line description.
    pub fn describe(&self) -> String {
        match *self {
            Arrivals::Trace => "trace timestamps".into(),
            Arrivals::Retime { rate } => format!("trace timestamps re-timed to {rate} req/s"),
            Arrivals::Poisson { rate } => format!("Poisson {rate} req/s"),
            Arrivals::Gamma { rate, cv } => format!("Gamma {rate} req/s, CV {cv}"),
            Arrivals::AllAtOnce => "all at once".into(),
        }
    }
}

impl std::str::FromStr for Arrivals {
    type Err = WorkloadError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |m: &str| WorkloadError::Syntax {
            input: s.to_string(),
            message: m.to_string(),
        };
        let mut parts = s.trim().split(':');
        let kind = parts.next().unwrap_or("");
        let nums: Vec<f64> = parts
            .map(|p| {
                p.trim()
                    .parse::<f64>()
                    .map_err(|_| err(&format!("bad number `{p}`")))
            })
            .collect::<Result<_, _>>()?;
        let a = match (kind, nums.as_slice()) {
            ("trace", []) => Arrivals::Trace,
            ("all-at-once" | "all_at_once" | "inf", []) => Arrivals::AllAtOnce,
            ("retime", [rate]) => Arrivals::Retime { rate: *rate },
            ("poisson", [rate]) => Arrivals::Poisson { rate: *rate },
            ("gamma", [rate, cv]) => Arrivals::Gamma {
                rate: *rate,
                cv: *cv,
            },
            _ => {
                return Err(err(
                    "expected trace, retime:RATE, poisson:RATE, gamma:RATE:CV or all-at-once",
                ))
            }
        };
        a.validate().map_err(|e| err(&e.to_string()))?;
        Ok(a)
    }
}

/// Generates successive arrival times of a generated process (not `Trace`/`Retime`).
pub(crate) struct ArrivalClock {
    rng: Rng,
    kind: Arrivals,
    now_s: f64,
    first: bool,
}

impl ArrivalClock {
    pub(crate) fn new(kind: Arrivals, rng: Rng) -> Self {
        Self {
            rng,
            kind,
            now_s: 0.0,
            first: true,
        }
    }

    /// The next arrival time; the first request arrives at 0.
    pub(crate) fn next_arrival(&mut self) -> f64 {
        if std::mem::take(&mut self.first) {
            return 0.0;
        }
        let gap = match self.kind {
            Arrivals::Poisson { rate } => self.rng.exp(rate),
            Arrivals::Gamma { rate, cv } => {
                let shape = 1.0 / (cv * cv);
                self.rng.gamma(shape, 1.0 / (rate * shape))
            }
            _ => 0.0,
        };
        self.now_s += gap;
        self.now_s
    }
}

/// Scale factor that brings `times` (sorted) to a mean rate `rate`; `None` if they span no time.
pub(crate) fn retime_factor(
    times: impl ExactSizeIterator<Item = f64> + Clone,
    rate: f64,
) -> Option<f64> {
    let n = times.len();
    if n < 2 {
        return None;
    }
    let mut it = times;
    let first = it.clone().next()?;
    let last = it.nth(n - 1)?;
    let span = last - first;
    (span > 0.0).then(|| (n - 1) as f64 / rate / span)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_short_forms() {
        assert_eq!(
            "poisson:2".parse::<Arrivals>().unwrap(),
            Arrivals::Poisson { rate: 2.0 }
        );
        assert_eq!(
            "gamma:2:0.5".parse::<Arrivals>().unwrap(),
            Arrivals::Gamma { rate: 2.0, cv: 0.5 }
        );
        assert_eq!("trace".parse::<Arrivals>().unwrap(), Arrivals::Trace);
        assert!("poisson:0".parse::<Arrivals>().is_err());
        assert!("poisson".parse::<Arrivals>().is_err());
        assert!("gamma:1:x".parse::<Arrivals>().is_err());
    }

    #[test]
    fn burstiness_maps_to_cv() {
        assert_eq!(
            Arrivals::with_burstiness(3.0, 1.0),
            Arrivals::Poisson { rate: 3.0 }
        );
        assert_eq!(
            Arrivals::with_burstiness(3.0, 0.25),
            Arrivals::Gamma { rate: 3.0, cv: 2.0 }
        );
        assert_eq!(
            Arrivals::with_burstiness(f64::INFINITY, 1.0),
            Arrivals::AllAtOnce
        );
    }
}
