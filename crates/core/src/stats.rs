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
}

impl PartialEq for LogHistogram {
    fn eq(&self, o: &Self) -> bool {
        (&self.counts, self.zeros, self.total, self.sum, self.max)
            == (&o.counts, o.zeros, o.total, o.sum, o.max)
    }
}

const GROWTH: f64 = 1.01;

/// The bucket of `v` (at least 1): the definition every faster path must agree with.
fn bucket_of(v: f64) -> usize {
    (v.ln() / GROWTH.ln()) as usize
}

/// Whole numbers below this take the table lookup of [`BucketTable`].
const TABLE_LIMIT: u64 = 1 << 32;
/// Sub-intervals per power of two in [`BucketTable::start`]: each is narrower than a bucket.
const SUB_BITS: u32 = 7;
const SUBS: u64 = 1 << SUB_BITS;

/// [`bucket_of`] for whole numbers by table lookup instead of a logarithm (an inter-token gap is
/// recorded for every token). `small` holds the buckets of 1..128; `start` the bucket of the
/// first whole number of each 1/128-octave sub-interval above, narrower than a bucket, so a
/// value's bucket is that one or the next, told apart by `lower[b]`, the smallest whole number
/// in bucket `b` or above. All are computed with [`bucket_of`] itself, which is monotonic on
/// whole numbers (they are far apart compared with the logarithm's rounding), so the lookup gives
/// exactly its result.
struct BucketTable {
    small: Vec<u16>,
    start: Vec<u16>,
    lower: Vec<u64>,
}

impl BucketTable {
    #[inline]
    fn get() -> &'static Self {
        static TABLE: std::sync::OnceLock<BucketTable> = std::sync::OnceLock::new();
        match TABLE.get() {
            Some(t) => t,
            None => Self::init(&TABLE),
        }
    }

    #[cold]
    fn init(cell: &'static std::sync::OnceLock<BucketTable>) -> &'static Self {
        cell.get_or_init(Self::build)
    }

    fn build() -> Self {
        let top = bucket_of((TABLE_LIMIT - 1) as f64) + 2;
        let mut lower: Vec<u64> = Vec::with_capacity(top + 1);
        lower.push(1);
        for b in 1..=top {
            let prev = lower[b - 1];
            let guess = (GROWTH.powi(b as i32).floor() as u64).saturating_sub(2);
            let mut v = guess.max(prev);
            while v > prev && bucket_of((v - 1) as f64) >= b {
                v -= 1;
            }
            while bucket_of(v as f64) < b {
                v += 1;
            }
            lower.push(v);
        }
        lower.push(u64::MAX);
        let small = (0..SUBS)
            .map(|v| bucket_of(v.max(1) as f64) as u16)
            .collect();
        let start = (0..TABLE_LIMIT.ilog2() - SUB_BITS)
            .flat_map(|shift| (SUBS..2 * SUBS).map(move |m| m << shift))
            .map(|s| bucket_of(s as f64) as u16)
            .collect();
        Self {
            small,
            start,
            lower,
        }
    }

    /// The bucket of `v`, for `1 <= v < TABLE_LIMIT`.
    #[inline]
    fn bucket(&self, v: u64) -> usize {
        if v < SUBS {
            return self.small[v as usize] as usize;
        }
        let shift = 63 - v.leading_zeros() - SUB_BITS;
        let sub = (shift as u64 * SUBS + (v >> shift) - SUBS) as usize;
        let mut b = self.start[sub] as usize;
        // `lower` ends with u64::MAX, so this stops.
        while v >= self.lower[b + 1] {
            b += 1;
        }
        b
    }
}

impl LogHistogram {
    /// Records one value.
    pub fn record(&mut self, v: f64) {
        if v >= 1.0 && v < TABLE_LIMIT as f64 && v == (v as u64) as f64 {
            self.record_whole(v as u64);
        } else {
            self.record_by_logarithm(v);
        }
    }

    /// Records one whole number (e.g. microseconds): the same as [`Self::record`] with
    /// `v as f64`, without a logarithm.
    #[inline]
    pub fn record_whole(&mut self, v: u64) {
        if v == 0 || v >= TABLE_LIMIT {
            return self.record_by_logarithm(v as f64);
        }
        // Exact: `v` is below 2^32.
        let f = v as i64 as f64;
        self.total += 1;
        self.sum += f;
        self.max = self.max.max(f);
        let b = BucketTable::get().bucket(v);
        match self.counts.get_mut(b) {
            Some(c) => *c += 1,
            None => self.add_to_new_bucket(b),
        }
    }

    #[cold]
    fn record_by_logarithm(&mut self, v: f64) {
        self.total += 1;
        self.sum += v;
        self.max = self.max.max(v);
        if v < 1.0 {
            self.zeros += 1;
            return;
        }
        let b = bucket_of(v);
        match self.counts.get_mut(b) {
            Some(c) => *c += 1,
            None => self.add_to_new_bucket(b),
        }
    }

    #[cold]
    fn add_to_new_bucket(&mut self, b: usize) {
        self.counts.resize(b + 1, 0);
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
            let last = bucket_of(v);
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
    fn bucket_table_matches_the_logarithm() {
        let t = BucketTable::get();
        for v in 1..=1u64 << 20 {
            assert_eq!(t.bucket(v), bucket_of(v as f64), "{v}");
        }
        // Every bucket boundary up to the table's limit, and its neighbours.
        for &l in &t.lower[..t.lower.len() - 1] {
            for v in [l.saturating_sub(1), l, l + 1] {
                if (1..TABLE_LIMIT).contains(&v) {
                    assert_eq!(t.bucket(v), bucket_of(v as f64), "{v}");
                }
            }
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = (x >> (x % 40)).clamp(1, TABLE_LIMIT - 1);
            assert_eq!(t.bucket(v), bucket_of(v as f64), "{v}");
        }
    }

    #[test]
    fn whole_numbers_record_like_floats() {
        let (mut a, mut b) = (LogHistogram::default(), LogHistogram::default());
        for v in [0u64, 1, 2, 99, 128, 1000, 25_123, 1 << 31, (1 << 32) + 7] {
            a.record(v as f64);
            b.record_whole(v);
        }
        assert_eq!(a, b);
        assert_eq!(a.counts, b.counts);
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
