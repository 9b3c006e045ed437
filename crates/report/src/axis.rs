//! Axis scales and "nice" tick values (1, 2, 5 × 10ⁿ on linear axes, decades on log axes).

/// Largest magnitude drawn; beyond it (or below its inverse on a log axis) values are treated
/// like non-finite ones, so axis arithmetic never overflows.
pub(crate) const MAX_ABS: f64 = 1e100;

/// Whether `v` can be placed on an axis (finite and within ±[`MAX_ABS`]; on a log axis also
/// at least 1/[`MAX_ABS`]).
pub(crate) fn plottable(v: f64, log: bool) -> bool {
    v.is_finite() && v.abs() <= MAX_ABS && (!log || v >= 1.0 / MAX_ABS)
}

/// A mapping from a data interval to a pixel interval, linear or base-10 logarithmic.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Scale {
    /// Lower end of the data domain (positive on log scales).
    pub lo: f64,
    /// Upper end of the data domain.
    pub hi: f64,
    /// Whether the mapping is logarithmic.
    pub log: bool,
    /// Pixel position of `lo`.
    pub px_lo: f64,
    /// Pixel position of `hi`.
    pub px_hi: f64,
}

impl Scale {
    /// Maps a data value to a pixel position (values outside the domain extrapolate).
    pub fn map(&self, v: f64) -> f64 {
        let t = if self.log {
            (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        };
        self.px_lo + t * (self.px_hi - self.px_lo)
    }
}

/// A data domain together with the ticks to label on it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ticks {
    /// Lower end of the (widened) domain.
    pub lo: f64,
    /// Upper end of the (widened) domain.
    pub hi: f64,
    /// Tick values, ascending, all within `lo..=hi`.
    pub values: Vec<f64>,
}

/// The smallest step of the form 1, 2 or 5 × 10ⁿ that covers `[lo, hi]` in at most
/// `intervals` whole steps.
fn nice_step(lo: f64, hi: f64, intervals: usize) -> f64 {
    let mut base = 10f64.powf(((hi - lo) / intervals as f64).log10().floor());
    loop {
        for m in [1.0, 2.0, 5.0] {
            let step = m * base;
            let n = (hi / step).ceil() - (lo / step).floor();
            if n <= intervals as f64 {
                return step;
            }
        }
        base *= 10.0;
    }
}

/// Widens `[lo, hi]` to nice bounds and returns evenly spaced nice ticks: at most `target`
/// intervals, as few as the 1-2-5 steps allow.
///
/// A degenerate interval (`lo == hi`) is widened around its value.
pub(crate) fn linear_ticks(lo: f64, hi: f64, target: usize) -> Ticks {
    // Magnitudes below 1/MAX_ABS count as zero: nothing that small is drawn apart from zero,
    // and subnormal spans would make the step arithmetic produce NaN.
    let snap = |v: f64| if v.abs() < 1.0 / MAX_ABS { 0.0 } else { v };
    let (lo, hi) = (snap(lo), snap(hi));
    let (mut lo, mut hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
    if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        lo -= pad;
        hi += pad;
    }
    let step = nice_step(lo, hi, target.max(2));
    let nlo = (lo / step).floor() * step;
    let nhi = (hi / step).ceil() * step;
    let n = ((nhi - nlo) / step).round() as usize;
    // Round to the step's decimal precision so ticks carry no float noise (0.6, not 0.6000000000000001).
    let decimals = (-step.log10().floor()).max(0.0) as i32;
    let unit = 10f64.powi(decimals);
    let first = (lo / step).floor();
    let values = (0..=n)
        .map(|i| {
            let v = ((first + i as f64) * step * unit).round() / unit;
            if v == 0.0 {
                0.0 // no "-0"
            } else {
                v
            }
        })
        .collect();
    Ticks {
        lo: nlo,
        hi: nhi,
        values,
    }
}

/// Keeps the domain exactly `[lo, hi]` (widened only if degenerate) and returns the nice
/// linear ticks that fall inside it; for time axes, where padding wastes width.
pub(crate) fn inner_ticks(lo: f64, hi: f64, target: usize) -> Ticks {
    let wide = linear_ticks(lo, hi, target);
    let (lo, hi) = if lo < hi {
        (lo, hi)
    } else {
        (wide.lo, wide.hi)
    };
    let values = wide
        .values
        .into_iter()
        .filter(|&v| v >= lo - (hi - lo) * 1e-9 && v <= hi + (hi - lo) * 1e-9)
        .collect();
    Ticks { lo, hi, values }
}

/// Ticks for an x axis: the domain hugs the data (a 2% margin; a linear axis starts at 0
/// when the data starts near it) instead of widening to the next nice bound, so no width is
/// wasted; labelled ticks are the nice values inside.
pub(crate) fn x_ticks(lo: f64, hi: f64, log: bool, target: usize) -> Ticks {
    if log {
        let (l, h) = (lo.log10(), hi.log10());
        let pad = ((h - l) * 0.02).max(0.01);
        let (dlo, dhi) = (10f64.powf(l - pad), 10f64.powf(h + pad));
        let mut t = log_ticks(dlo, dhi);
        let inside = |v: f64| v >= dlo && v <= dhi;
        // Few decades: label 2× and 5× too; within one decade, every multiple.
        if h - l <= 3.0 {
            let d0 = l.floor() as i32 - 1;
            let mults: &[f64] = if h - l < 1.0 {
                &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
            } else {
                &[1.0, 2.0, 5.0]
            };
            t.values = (d0..=h.ceil() as i32)
                .flat_map(|d| mults.iter().map(move |m| m * 10f64.powi(d)))
                .collect();
        }
        t.values.retain(|&v| inside(v));
        t.lo = dlo;
        t.hi = dhi;
        return t;
    }
    let lo = if lo >= 0.0 && lo <= 0.2 * hi { 0.0 } else { lo };
    let pad = (hi - lo) * 0.02;
    let lo = if lo == 0.0 { 0.0 } else { lo - pad };
    inner_ticks(lo, hi + pad, target)
}

/// Widens `[lo, hi]` (both positive) to whole decades and returns decade ticks,
/// adding 2× and 5× ticks when the range spans few decades.
pub(crate) fn log_ticks(lo: f64, hi: f64) -> Ticks {
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
    let dlo = lo.log10().floor();
    let mut dhi = hi.log10().ceil();
    if dhi <= dlo {
        dhi = dlo + 1.0;
    }
    let decades = (dhi - dlo) as i64;
    let every = ((decades as f64) / 8.0).ceil().max(1.0) as i64;
    let mut values = Vec::new();
    for d in (dlo as i64)..=(dhi as i64) {
        let base = 10f64.powi(d as i32);
        if (d - dlo as i64) % every == 0 {
            values.push(base);
        }
        if decades <= 2 && d < dhi as i64 {
            values.push(2.0 * base);
            values.push(5.0 * base);
        }
    }
    Ticks {
        lo: 10f64.powf(dlo),
        hi: 10f64.powf(dhi),
        values,
    }
}

/// Unlabelled minor ticks of a log scale: 2…9 × 10ⁿ inside the domain, not already a
/// labelled tick; none on linear scales or when the domain spans more than six decades.
pub(crate) fn log_minor_ticks(scale: &Scale, ticks: &Ticks) -> Vec<f64> {
    if !scale.log || scale.lo <= 0.0 || scale.hi / scale.lo > 1e6 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let (dlo, dhi) = (
        scale.lo.log10().floor() as i32,
        scale.hi.log10().ceil() as i32,
    );
    for d in dlo..dhi {
        let base = 10f64.powi(d);
        for m in 2..=9 {
            let v = m as f64 * base;
            let labelled = ticks.values.iter().any(|&t| (t - v).abs() <= v * 1e-9);
            if v > scale.lo && v < scale.hi && !labelled {
                out.push(v);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_ticks_are_nice_and_cover_the_data() {
        let t = linear_ticks(0.3, 9.7, 6);
        assert_eq!(t.values, vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert!(t.lo <= 0.3 && t.hi >= 9.7);
    }

    #[test]
    fn linear_ticks_have_no_float_noise() {
        let t = linear_ticks(0.0, 1.0, 6);
        assert_eq!(t.values, vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        let t = linear_ticks(0.1, 0.7, 4);
        for v in &t.values {
            let s = format!("{v}");
            assert!(s.len() <= 4, "noisy tick {s}");
        }
    }

    #[test]
    fn linear_ticks_handle_negative_and_large_ranges() {
        let t = linear_ticks(-37.0, 112.0, 6);
        assert_eq!(t.values.first(), Some(&-50.0));
        assert_eq!(t.values.last(), Some(&150.0));
        assert!(t
            .values
            .windows(2)
            .all(|w| (w[1] - w[0] - 50.0).abs() < 1e-9));
        let t = linear_ticks(0.0, 123_456.0, 5);
        assert!(t.values.len() >= 3 && t.values.len() <= 8);
    }

    #[test]
    fn subnormal_values_give_finite_ticks() {
        for (lo, hi) in [(-7.2e-309, -7.2e-309), (0.0, 1e-309), (-1e-300, 1e-300)] {
            let t = linear_ticks(lo, hi, 5);
            assert!(t.lo.is_finite() && t.hi.is_finite() && t.lo < t.hi, "{t:?}");
            assert!(t.values.iter().all(|v| v.is_finite()), "{t:?}");
        }
    }

    #[test]
    fn degenerate_linear_range_is_widened() {
        let t = linear_ticks(5.0, 5.0, 5);
        assert!(t.lo < 5.0 && t.hi > 5.0);
        let t = linear_ticks(0.0, 0.0, 5);
        assert!(t.lo < 0.0 && t.hi > 0.0);
    }

    #[test]
    fn inner_ticks_keep_the_exact_domain() {
        let t = inner_ticks(0.0, 612.5, 8);
        assert_eq!((t.lo, t.hi), (0.0, 612.5));
        assert_eq!(t.values.first(), Some(&0.0));
        assert!(t.values.iter().all(|&v| v <= 612.5));
        assert!(t.values.len() >= 4);
    }

    #[test]
    fn x_ticks_hug_the_data() {
        let t = x_ticks(2.0, 16.0, false, 7);
        assert_eq!(t.lo, 0.0);
        assert!(t.hi > 16.0 && t.hi < 17.0, "{t:?}");
        assert!(t.values.contains(&15.0) && !t.values.iter().any(|&v| v > t.hi));
        let t = x_ticks(50.0, 60.0, false, 6);
        assert!(
            t.lo > 49.0 && t.lo < 50.0 && t.hi > 60.0 && t.hi < 61.0,
            "{t:?}"
        );
        assert!(t.values.len() >= 3);
    }

    #[test]
    fn log_x_ticks_label_enough_values() {
        let t = x_ticks(40.0, 7000.0, true, 7);
        assert!(
            t.lo < 40.0 && t.lo > 35.0 && t.hi > 7000.0 && t.hi < 8000.0,
            "{t:?}"
        );
        assert_eq!(
            t.values,
            vec![50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0]
        );
        let t = x_ticks(12.0, 80.0, true, 7);
        assert_eq!(t.values, vec![20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0]);
        let t = x_ticks(1e-3, 1e6, true, 7);
        assert!(
            t.values.len() >= 5 && t.values.len() <= 10,
            "{:?}",
            t.values
        );
    }

    #[test]
    fn log_ticks_are_decades() {
        let t = log_ticks(3.0, 45_000.0);
        assert_eq!(
            t.values,
            vec![1.0, 10.0, 100.0, 1000.0, 10_000.0, 100_000.0]
        );
        assert_eq!((t.lo, t.hi), (1.0, 100_000.0));
    }

    #[test]
    fn narrow_log_range_gets_2_and_5_ticks() {
        let t = log_ticks(12.0, 80.0);
        assert_eq!(t.values, vec![10.0, 20.0, 50.0, 100.0]);
    }

    #[test]
    fn very_wide_log_range_thins_decades() {
        let t = log_ticks(1e-6, 1e12);
        assert!(t.values.len() <= 10, "{:?}", t.values);
        assert_eq!(t.values[0], 1e-6);
    }

    #[test]
    fn minor_log_ticks_fill_decades_without_repeating_labels() {
        let t = log_ticks(12.0, 80.0);
        let s = Scale {
            lo: t.lo,
            hi: t.hi,
            log: true,
            px_lo: 0.0,
            px_hi: 100.0,
        };
        let minor = log_minor_ticks(&s, &t);
        assert_eq!(minor, vec![30.0, 40.0, 60.0, 70.0, 80.0, 90.0]);
        let lin = Scale { log: false, ..s };
        assert!(log_minor_ticks(&lin, &t).is_empty());
    }

    #[test]
    fn scales_map_endpoints() {
        let s = Scale {
            lo: 0.0,
            hi: 10.0,
            log: false,
            px_lo: 100.0,
            px_hi: 0.0,
        };
        assert_eq!(s.map(0.0), 100.0);
        assert_eq!(s.map(10.0), 0.0);
        assert_eq!(s.map(5.0), 50.0);
        let s = Scale {
            lo: 1.0,
            hi: 100.0,
            log: true,
            px_lo: 0.0,
            px_hi: 200.0,
        };
        assert!((s.map(10.0) - 100.0).abs() < 1e-9);
    }
}
