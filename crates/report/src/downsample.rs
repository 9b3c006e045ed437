//! Reducing big data sets to what a few hundred pixels can show, without losing endpoints,
//! tails or spikes.

use crate::axis::plottable;
use crate::model::Segment;

/// Points of the empirical CDF of `sorted` (ascending, finite): `(value, fraction ≤ value)`.
///
/// Returns at most about `max_points` points: a third spaced evenly by rank (the body of the
/// distribution), a third evenly by value — in log space when `log` — so that long tails keep
/// their shape, and a third at ranks spaced geometrically towards the top (n − 1, n − 2,
/// n − 4, …) so that p99, p99.9 and beyond are resolved. The first and last samples are always
/// kept.
pub(crate) fn cdf_points(sorted: &[f64], max_points: usize, log: bool) -> Vec<(f64, f64)> {
    let n = sorted.len();
    if n == 0 {
        return Vec::new();
    }
    let frac = |i: usize| (i + 1) as f64 / n as f64;
    if n <= max_points.max(2) {
        return sorted
            .iter()
            .enumerate()
            .map(|(i, &v)| (v, frac(i)))
            .collect();
    }
    let third = (max_points / 3).max(2);
    let mut idx: Vec<usize> = (0..third).map(|k| k * (n - 1) / (third - 1)).collect();
    let top = (n as f64).ln();
    idx.extend((0..third).map(|k| {
        let from_top = (top * k as f64 / (third - 1) as f64).exp().round() as usize;
        n.saturating_sub(from_top.max(1))
    }));
    let (lo, hi) = (sorted[0], sorted[n - 1]);
    let (tlo, thi) = if log {
        (lo.log10(), hi.log10())
    } else {
        (lo, hi)
    };
    for k in 0..third {
        let t = tlo + (thi - tlo) * k as f64 / (third - 1) as f64;
        let v = if log { 10f64.powf(t) } else { t };
        // Last sample ≤ v: the CDF's value there.
        let i = sorted.partition_point(|&s| s <= v);
        idx.push(i.saturating_sub(1));
    }
    idx.push(n - 1);
    idx.sort_unstable();
    idx.dedup();
    idx.into_iter().map(|i| (sorted[i], frac(i))).collect()
}

/// Nearest-rank quantile `q` (0..=1) of `sorted` (ascending); `None` when empty.
pub(crate) fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Keeps, for each of `buckets` equal slices of pixel space, the first, lowest, highest and
/// last point (in x order). `px` maps a point's x to its pixel position in `0..buckets`.
pub(crate) fn min_max_per_bucket(
    points: &[(f64, f64)],
    buckets: usize,
    px: impl Fn(f64) -> f64,
) -> Vec<(f64, f64)> {
    if points.len() <= buckets.saturating_mul(4) {
        return points.to_vec();
    }
    let mut out = Vec::with_capacity(buckets * 4);
    let mut start = 0;
    while start < points.len() {
        let b = px(points[start].0).floor();
        let mut end = start + 1;
        while end < points.len() && px(points[end].0).floor() == b {
            end += 1;
        }
        let slice = &points[start..end];
        let mut keep = vec![0, slice.len() - 1];
        let (mut imin, mut imax) = (0, 0);
        for (i, p) in slice.iter().enumerate() {
            if p.1 < slice[imin].1 {
                imin = i;
            }
            if p.1 > slice[imax].1 {
                imax = i;
            }
        }
        keep.extend([imin, imax]);
        keep.sort_unstable();
        keep.dedup();
        out.extend(keep.into_iter().map(|i| slice[i]));
        start = end;
    }
    out
}

/// A run of equal raster cells on a timeline lane: `(first cell, cells, kind)`.
pub(crate) type Run = (usize, usize, usize);

/// Rasterises one lane's segments into `cells` equal cells over `[t0, t1)` and returns runs of
/// cells with the same kind.
///
/// Each cell takes the kind covering most of it, if that kind covers at least half the cell;
/// otherwise the cell stays empty. Segments with an unknown kind or non-finite ends are ignored.
pub(crate) fn rasterise_lane(
    segments: &[Segment],
    t0: f64,
    t1: f64,
    cells: usize,
    kinds: usize,
) -> Vec<Run> {
    if cells == 0 || kinds == 0 || t1.partial_cmp(&t0) != Some(std::cmp::Ordering::Greater) {
        return Vec::new();
    }
    let width = (t1 - t0) / cells as f64;
    let mut cover = vec![0f64; cells * kinds];
    for s in segments {
        if s.kind >= kinds
            || !plottable(s.start, false)
            || !plottable(s.end, false)
            || s.end <= s.start
        {
            continue;
        }
        let a = ((s.start - t0) / width).max(0.0);
        let b = ((s.end - t0) / width).min(cells as f64);
        if b <= a {
            continue;
        }
        let (ca, cb) = (a.floor() as usize, (b.ceil() as usize).min(cells));
        for c in ca..cb {
            let lo = a.max(c as f64);
            let hi = b.min((c + 1) as f64);
            if hi > lo {
                cover[c * kinds + s.kind] += hi - lo;
            }
        }
    }
    let mut runs: Vec<Run> = Vec::new();
    for c in 0..cells {
        let row = &cover[c * kinds..(c + 1) * kinds];
        let (mut best, mut amount) = (usize::MAX, 0.0);
        for (k, &v) in row.iter().enumerate() {
            if v > amount {
                best = k;
                amount = v;
            }
        }
        if amount < 0.5 {
            continue;
        }
        match runs.last_mut() {
            Some(run) if run.2 == best && run.0 + run.1 == c => run.1 += 1,
            _ => runs.push((c, 1, best)),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_cdf_keeps_every_sample() {
        let pts = cdf_points(&[1.0, 2.0, 3.0, 4.0], 300, false);
        assert_eq!(pts, vec![(1.0, 0.25), (2.0, 0.5), (3.0, 0.75), (4.0, 1.0)]);
    }

    #[test]
    fn big_cdf_is_downsampled_and_keeps_endpoints() {
        let samples: Vec<f64> = (0..100_000).map(|i| (i as f64 / 1000.0).exp()).collect();
        for log in [false, true] {
            let pts = cdf_points(&samples, 300, log);
            assert!(pts.len() <= 302, "{} points", pts.len());
            assert_eq!(pts.first().map(|p| p.0), Some(samples[0]));
            assert_eq!(pts.last(), Some(&(samples[99_999], 1.0)));
            assert!(pts.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 < w[1].1));
        }
    }

    #[test]
    fn big_cdf_keeps_the_tail_shape() {
        // 99% of samples at ~1, a long tail to 1000: value-spaced points must reach into it.
        let mut samples: Vec<f64> = (0..99_000).map(|i| 1.0 + i as f64 * 1e-6).collect();
        samples.extend((0..1000).map(|i| 2.0 + i as f64));
        let pts = cdf_points(&samples, 200, false);
        let tail = pts.iter().filter(|p| p.0 > 100.0).count();
        assert!(tail >= 50, "only {tail} tail points");
    }

    #[test]
    fn big_cdf_resolves_the_top_percentiles() {
        let samples: Vec<f64> = (0..1_000_000).map(f64::from).collect();
        let pts = cdf_points(&samples, 300, false);
        // Points above p99.9 and between p99 and p99.9.
        assert!(pts.iter().filter(|p| p.1 > 0.999 && p.1 < 1.0).count() >= 10);
        assert!(pts.iter().filter(|p| p.1 > 0.99 && p.1 <= 0.999).count() >= 10);
    }

    #[test]
    fn quantiles_use_nearest_rank() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&s, 0.5), Some(50.0));
        assert_eq!(quantile(&s, 0.99), Some(99.0));
        assert_eq!(quantile(&s, 1.0), Some(100.0));
        assert_eq!(quantile(&s, 0.0), Some(1.0));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn min_max_keeps_spikes_and_endpoints() {
        let mut pts: Vec<(f64, f64)> = (0..10_000).map(|i| (i as f64, 1.0)).collect();
        pts[5_123].1 = 99.0;
        let out = min_max_per_bucket(&pts, 100, |x| x / 100.0);
        assert!(out.len() <= 400);
        assert!(out.contains(&(5_123.0, 99.0)));
        assert_eq!(out.first(), pts.first());
        assert_eq!(out.last(), pts.last());
    }

    #[test]
    fn raster_merges_adjacent_same_kind_segments() {
        let segs: Vec<Segment> = (0..1000)
            .map(|i| Segment {
                start: i as f64,
                end: i as f64 + 1.0,
                kind: 1,
            })
            .collect();
        let runs = rasterise_lane(&segs, 0.0, 1000.0, 200, 2);
        assert_eq!(runs, vec![(0, 200, 1)]);
    }

    #[test]
    fn raster_takes_the_majority_kind_and_drops_sub_cell_slivers() {
        let segs = [
            Segment {
                start: 0.0,
                end: 7.0,
                kind: 0,
            },
            Segment {
                start: 7.0,
                end: 10.0,
                kind: 1,
            },
            Segment {
                start: 50.0,
                end: 50.1,
                kind: 1,
            },
        ];
        // Cells are 10 wide: cell 0 is 70% kind 0; cell 5 is 1% covered → empty.
        let runs = rasterise_lane(&segs, 0.0, 100.0, 10, 2);
        assert_eq!(runs, vec![(0, 1, 0)]);
    }

    #[test]
    fn raster_ignores_bad_segments() {
        let segs = [
            Segment {
                start: f64::NAN,
                end: 3.0,
                kind: 0,
            },
            Segment {
                start: 5.0,
                end: 2.0,
                kind: 0,
            },
            Segment {
                start: 0.0,
                end: 10.0,
                kind: 7,
            },
        ];
        assert!(rasterise_lane(&segs, 0.0, 10.0, 10, 2).is_empty());
    }
}
