//! Line charts of (x, y) points.

use std::fmt::Write as _;

use super::{
    axes, extent, legend, no_data, polyline_d, ticks, usable, wrap_svg, Frame, LegendItem, Swatch,
};
use crate::downsample::min_max_per_bucket;
use crate::escape::{fmt_px, format_value, push_escaped};
use crate::model::Lines;
use crate::palette::{series_colour, series_dash};

/// Series with at most this many points get a marker on each point.
const MARKER_LIMIT: usize = 40;

pub(super) fn render(c: &Lines, id: &str) -> String {
    let prepared: Vec<(&str, Vec<(f64, f64)>)> = c
        .series
        .iter()
        .map(|(name, pts)| {
            let mut pts: Vec<(f64, f64)> = pts
                .iter()
                .copied()
                .filter(|&(x, y)| usable(x, c.log_x) && usable(y, c.log_y))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            (name.as_str(), pts)
        })
        .collect();
    let frame = Frame::new(super::CHART_WIDTH, 62.0, 280.0);
    let mut body = String::new();
    super::clip_path(&mut body, &frame, id);

    let all = || prepared.iter().flat_map(|(_, p)| p.iter());
    let x_extent = extent(all().map(|p| p.0));
    let y_extent = extent(all().map(|p| p.1));
    let fmt = |v: f64| format_value(v);
    match (x_extent, y_extent) {
        (Some((xlo, xhi)), Some((ylo, yhi))) => {
            let x_ticks = crate::axis::x_ticks(xlo, xhi, c.log_x, 7);
            let (ylo, yhi) = match c.y_range {
                Some((lo, hi)) if usable(lo, c.log_y) && usable(hi, c.log_y) && lo < hi => (lo, hi),
                _ if !c.log_y && ylo >= 0.0 => (0.0, yhi),
                _ => (ylo, yhi),
            };
            let mut y_ticks = ticks(ylo, yhi, c.log_y, 6);
            if let Some((lo, hi)) = c
                .y_range
                .filter(|&(lo, hi)| lo < hi && usable(lo, c.log_y) && usable(hi, c.log_y))
            {
                // Honour a fixed range exactly; keep only ticks inside it.
                y_ticks.lo = lo;
                y_ticks.hi = hi;
                y_ticks
                    .values
                    .retain(|&v| v >= lo - 1e-12 && v <= hi + 1e-12);
            }
            let x_scale = frame.x_scale(&x_ticks, c.log_x);
            let y_scale = frame.y_scale(&y_ticks, c.log_y);
            axes(
                &mut body,
                &frame,
                Some((&x_scale, &x_ticks)),
                Some((&y_scale, &y_ticks, &fmt)),
                &c.x_label,
                &c.y_label,
            );
            let _ = write!(body, "<g clip-path=\"url(#{id}-clip)\">");
            for (i, (name, pts)) in prepared.iter().enumerate() {
                if pts.is_empty() {
                    continue;
                }
                let colour = series_colour(i);
                let reduced =
                    min_max_per_bucket(pts, frame.plot_w as usize, |x| x_scale.map(x) - frame.left);
                if reduced.len() > 1 {
                    body.push_str("<path class=\"series\" data-series=\"");
                    push_escaped(&mut body, name);
                    let d = polyline_d(
                        reduced
                            .iter()
                            .map(|&(x, y)| (x_scale.map(x), y_scale.map(y))),
                    );
                    let _ = write!(body, "\" d=\"{d}\" stroke=\"{colour}\"");
                    super::dash_attr(&mut body, series_dash(i));
                    body.push_str("><title>");
                    push_escaped(&mut body, name);
                    body.push_str("</title></path>");
                }
                if pts.len() <= MARKER_LIMIT {
                    body.push_str("<g class=\"markers\" data-series=\"");
                    push_escaped(&mut body, name);
                    let _ = write!(body, "\" fill=\"{colour}\">");
                    for &(x, y) in pts {
                        // The tooltip gives the exact point.
                        let _ = write!(
                            body,
                            "<circle cx=\"{}\" cy=\"{}\" r=\"3\"><title>",
                            fmt_px(x_scale.map(x)),
                            fmt_px(y_scale.map(y))
                        );
                        push_escaped(&mut body, name);
                        let _ = write!(
                            body,
                            ": {}, {}</title></circle>",
                            format_value(x),
                            format_value(y)
                        );
                    }
                    body.push_str("</g>");
                }
            }
            body.push_str("</g>");
        }
        _ => {
            axes(&mut body, &frame, None, None, &c.x_label, &c.y_label);
            no_data(&mut body, &frame);
        }
    }

    let items: Vec<LegendItem<'_>> = prepared
        .iter()
        .enumerate()
        .map(|(i, (name, pts))| LegendItem {
            swatch: Swatch::Line {
                colour: series_colour(i),
                dash: series_dash(i),
            },
            label: if pts.is_empty() {
                format!("{name} — no data")
            } else {
                name.to_string()
            },
            faded: pts.is_empty(),
        })
        .collect();
    let (legend_svg, legend_h) = legend(&items, &frame, frame.legend_top());
    body.push_str(&legend_svg);
    let height = frame.legend_top() + legend_h + 6.0;
    wrap_svg("lines", id, &c.title, frame.width, height, &body)
}
