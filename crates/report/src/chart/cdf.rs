//! Empirical CDF charts.

use std::fmt::Write as _;

use super::{
    axes, extent, legend, no_data, polyline_d, ticks, usable, wrap_svg, Frame, LegendItem, Swatch,
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
    let y_ticks = crate::axis::Ticks {
        lo: 0.0,
        hi: 1.0,
        values: vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
    };
    let y_scale = frame.y_scale(&y_ticks, false);
    let pct = |v: f64| format!("{}%", format_value(v * 100.0));
    match x_extent {
        None => {
            axes(
                &mut body,
                &frame,
                None,
                Some((&y_scale, &y_ticks, &pct)),
                &c.x_label,
                "fraction of samples ≤ x",
            );
            no_data(&mut body, &frame);
        }
        Some((lo, hi)) => {
            let x_ticks = ticks(lo, hi, c.log_x, 7);
            let x_scale = frame.x_scale(&x_ticks, c.log_x);
            axes(
                &mut body,
                &frame,
                Some((&x_scale, &x_ticks)),
                Some((&y_scale, &y_ticks, &pct)),
                &c.x_label,
                "fraction of samples ≤ x",
            );
            // Guides at the median and the 99th percentile.
            for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
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
                let stepped = pts.len() == p.sorted.len();
                let mut px_pts = Vec::with_capacity(pts.len() * 2 + 1);
                px_pts.push((x_scale.map(pts[0].0), y_scale.map(0.0)));
                let mut prev_y = 0.0;
                for &(x, f) in &pts {
                    let px = x_scale.map(x);
                    if stepped {
                        px_pts.push((px, y_scale.map(prev_y)));
                    }
                    px_pts.push((px, y_scale.map(f)));
                    prev_y = f;
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
                body.push_str("/>");
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
