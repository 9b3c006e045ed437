//! Small statistics helpers: percentiles of samples and a log-bucketed histogram for streams too
//! long to keep (every inter-token gap of a million requests).

use serde::{Deserialize, Serialize};

/// Mean and percentiles of a sample.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
}

/// The `q`-quantile (0..=1) of sorted `v` by the nearest-rank method; 0 when empty.
pub fn quantile_sorted(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let rank = (q * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

impl Percentiles {
    /// Summarises `v` (sorted in place).
    pub fn of(v: &mut [f64]) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        v.sort_by(f64::total_cmp);
        Self {
            count: v.len() as u64,
            mean: v.iter().sum::<f64>() / v.len() as f64,
            p50: quantile_sorted(v, 0.5),
            p90: quantile_sorted(v, 0.9),
            p99: quantile_sorted(v, 0.99),
            max: v[v.len() - 1],
        }
    }
}

/// A histogram with logarithmic buckets 1% wide, for positive values (e.g. microseconds).
/// Quantiles are exact to within 1%; memory is a few KiB whatever the count.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LogHistogram {
    counts: Vec<u64>,
    zeros: u64,
    total: u64,
    sum: f64,
    max: f64,
    /// The last value recorded at or above 1 and its bucket: consecutive gaps are often equal
    /// (every decode of one iteration), and this saves a logarithm per token.
    #[serde(skip)]
    memo: Option<(f64, usize)>,
}

impl PartialEq for LogHistogram {
    fn eq(&self, o: &Self) -> bool {
        (&self.counts, self.zeros, self.total, self.sum, self.max)
            == (&o.counts, o.zeros, o.total, o.sum, o.max)
    }
}

const GROWTH: f64 = 1.01;

impl LogHistogram {
    /// Records one value.
    pub fn record(&mut self, v: f64) {
        self.total += 1;
        self.sum += v;
        self.max = self.max.max(v);
        if v < 1.0 {
            self.zeros += 1;
            return;
        }
        let b = match self.memo {
            Some((last, b)) if last == v => b,
            _ => {
                let b = (v.ln() / GROWTH.ln()) as usize;
                self.memo = Some((v, b));
                b
            }
        };
        if self.counts.len() <= b {
            self.counts.resize(b + 1, 0);
        }
        self.counts[b] += 1;
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The `q`-quantile (0..=1), as the midpoint of its bucket.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = (q * self.total as f64).ceil().max(1.0) as u64;
        if rank <= self.zeros {
            return 0.0;
        }
        let mut seen = self.zeros;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let mid = GROWTH.powf(b as f64 + 0.5);
                return mid.min(self.max);
            }
        }
        self.max
    }

    /// Mean, percentiles and maximum, scaled by `scale` (e.g. µs to ms).
    pub fn percentiles(&self, scale: f64) -> Percentiles {
        if self.total == 0 {
            return Percentiles::default();
        }
        Percentiles {
            count: self.total,
            mean: self.sum / self.total as f64 * scale,
            p50: self.quantile(0.5) * scale,
            p90: self.quantile(0.9) * scale,
            p99: self.quantile(0.99) * scale,
            max: self.max * scale,
        }
    }

    /// Fraction of values at or below `v` (bucket resolution).
    pub fn fraction_below(&self, v: f64) -> f64 {
        if self.total == 0 {
            return 1.0;
        }
        let mut n = self.zeros;
        if v >= 1.0 {
            let last = (v.ln() / GROWTH.ln()) as usize;
            n += self.counts.iter().take(last + 1).sum::<u64>();
        }
        n as f64 / self.total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&mut v);
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50.0, 90.0, 99.0, 100.0));
        assert!((p.mean - 50.5).abs() < 1e-9);
    }

    #[test]
    fn histogram_quantiles_within_one_percent() {
        let mut h = LogHistogram::default();
        for v in 1..=10_000 {
            h.record(v as f64);
        }
        for (q, exact) in [(0.5, 5000.0), (0.9, 9000.0), (0.99, 9900.0)] {
            let got = h.quantile(q);
            assert!(
                (got - exact).abs() / exact < 0.011,
                "q{q}: {got} vs {exact}"
            );
        }
        assert_eq!(h.count(), 10_000);
    }
}
