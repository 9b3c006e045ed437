//! Empirical CDF charts.

use std::fmt::Write as _;

use super::{
    axes, extent, legend, no_data, polyline_d, usable, wrap_svg, Frame, LegendItem, Swatch,
};
use crate::downsample::{cdf_points, quantile};
use crate::escape::{fmt_px, format_value, push_escaped};
use crate::model::Cdf;
use crate::palette::{series_colour, series_dash};

/// Most points drawn per CDF curve.
const MAX_POINTS: usize = 400;

/// One prepared series: sorted usable samples and how many were left out.
struct Prepared<'a> {
    name: &'a str,
    sorted: Vec<f64>,
    omitted: usize,
}

pub(super) fn render(c: &Cdf, id: &str) -> String {
    let prepared: Vec<Prepared<'_>> = c
        .series
        .iter()
        .map(|(name, samples)| {
            let mut sorted: Vec<f64> = samples
                .iter()
                .copied()
                .filter(|&v| usable(v, c.log_x))
                .collect();
            sorted.sort_unstable_by(f64::total_cmp);
            Prepared {
                name,
                omitted: samples.len() - sorted.len(),
                sorted,
            }
        })
        .collect();
    let frame = Frame::new(super::CHART_WIDTH, 62.0, 280.0);
    let mut body = String::new();
    super::clip_path(&mut body, &frame, id);

    let x_extent = extent(
        prepared
            .iter()
            .flat_map(|p| [p.sorted.first(), p.sorted.last()])
            .flatten()
            .copied(),
    );
    let max_n = prepared.iter().map(|p| p.sorted.len()).max().unwrap_or(0);
    let (y_ticks, y_label, guides) = if c.tail {
        // Down to the rarest sample: 1/n of the biggest series.
        let lo = 10f64.powf((1.0 / max_n.max(10) as f64).log10().floor());
        let t = crate::axis::log_ticks(lo, 1.0);
        let guides: Vec<(f64, &str)> = [(0.5, "p50"), (0.01, "p99"), (0.001, "p99.9")]
            .into_iter()
            .filter(|&(g, _)| g >= lo)
            .collect();
        (t, "fraction of samples ≥ x", guides)
    } else {
        let t = crate::axis::Ticks {
            lo: 0.0,
            hi: 1.0,
            values: vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
        };
        (
            t,
            "fraction of samples ≤ x",
            vec![(0.5, "p50"), (0.99, "p99")],
        )
    };
    let y_scale = frame.y_scale(&y_ticks, c.tail);
    let pct = |v: f64| format!("{}%", format_value(v * 100.0));
    match x_extent {
        None => {
            axes(
                &mut body,
                &frame,
                None,
                Some((&y_scale, &y_ticks, &pct)),
                &c.x_label,
                y_label,
            );
            no_data(&mut body, &frame);
        }
        Some((lo, hi)) => {
            let x_ticks = crate::axis::x_ticks(lo, hi, c.log_x, 7);
            let x_scale = frame.x_scale(&x_ticks, c.log_x);
            axes(
                &mut body,
                &frame,
                Some((&x_scale, &x_ticks)),
                Some((&y_scale, &y_ticks, &pct)),
                &c.x_label,
                y_label,
            );
            for (q, name) in guides {
                let y = fmt_px(y_scale.map(q));
                let _ = write!(
                    body,
                    "<line class=\"guide\" x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\"/>\
                     <text class=\"guide-label\" x=\"{}\" y=\"{y}\" dy=\"0.35em\">{name}</text>",
                    fmt_px(frame.left),
                    fmt_px(frame.right()),
                    fmt_px(frame.right() + 3.0),
                );
            }
            let _ = write!(body, "<g clip-path=\"url(#{id}-clip)\">");
            for (i, p) in prepared.iter().enumerate() {
                if p.sorted.is_empty() {
                    continue;
                }
                let pts = cdf_points(&p.sorted, MAX_POINTS, c.log_x);
                let n = p.sorted.len() as f64;
                let px_pts: Vec<(f64, f64)> = if c.tail {
                    // Fraction ≥ x_i is 1 − F(x_i) + 1/n: from 1 down to 1/n, never 0.
                    pts.iter()
                        .map(|&(x, f)| (x_scale.map(x), y_scale.map(1.0 - f + 1.0 / n)))
                        .collect()
                } else {
                    // Steps when every sample is drawn, straight segments between the
                    // chosen points otherwise.
                    let stepped = pts.len() == p.sorted.len();
                    let mut v = Vec::with_capacity(pts.len() * 2 + 1);
                    v.push((x_scale.map(pts[0].0), y_scale.map(0.0)));
                    let mut prev = 0.0;
                    for &(x, f) in &pts {
                        let px = x_scale.map(x);
                        if stepped {
                            v.push((px, y_scale.map(prev)));
                        }
                        v.push((px, y_scale.map(f)));
                        prev = f;
                    }
                    v
                };
                if let [(x, y)] = px_pts[..] {
                    // A single sample in the tail view: a dot.
                    let _ = write!(
                        body,
                        "<circle class=\"markers\" cx=\"{}\" cy=\"{}\" r=\"3\" fill=\"{}\"/>",
                        fmt_px(x),
                        fmt_px(y),
                        series_colour(i)
                    );
                    continue;
                }
                let _ = write!(body, "<path class=\"series\" data-series=\"");
                push_escaped(&mut body, p.name);
                let _ = write!(
                    body,
                    "\" d=\"{}\" stroke=\"{}\"",
                    polyline_d(px_pts),
                    series_colour(i)
                );
                super::dash_attr(&mut body, series_dash(i));
                body.push_str("><title>");
                push_escaped(&mut body, p.name);
                body.push_str("</title></path>");
            }
            body.push_str("</g>");
        }
    }

    let items: Vec<LegendItem<'_>> = prepared
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut label = p.name.to_string();
            match (quantile(&p.sorted, 0.5), quantile(&p.sorted, 0.99)) {
                (Some(p50), Some(p99)) => {
                    let _ = write!(
                        label,
                        "  (n={}, p50 {}, p99 {})",
                        p.sorted.len(),
                        format_value(p50),
                        format_value(p99)
                    );
                }
                _ => label.push_str(" — no data"),
            }
            if p.omitted > 0 {
                let _ = write!(label, " [{} omitted]", p.omitted);
            }
            LegendItem {
                swatch: Swatch::Line {
                    colour: series_colour(i),
                    dash: series_dash(i),
                },
                label,
                faded: p.sorted.is_empty(),
            }
        })
        .collect();
    let (legend_svg, legend_h) = legend(&items, &frame, frame.legend_top());
    body.push_str(&legend_svg);
    let height = frame.legend_top() + legend_h + 6.0;
    wrap_svg("cdf", id, &c.title, frame.width, height, &body)
}
