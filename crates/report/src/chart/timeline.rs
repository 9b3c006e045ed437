//! Per-lane Gantt charts (what each instance runs over time).

use std::fmt::Write as _;

use super::{
    axes, extent, legend, no_data, usable, wrap_svg, Frame, LegendItem, Swatch, CHAR_WIDTH,
};
use crate::downsample::rasterise_lane;
use crate::escape::{fmt_px, push_escaped};
use crate::model::Timeline;

/// Raster cells per horizontal pixel.
const CELLS_PER_PX: f64 = 2.0;
/// Most moves drawn; more are sampled evenly.
const MAX_MOVES: usize = 300;
/// Height of one lane's bar.
const LANE_H: f64 = 18.0;
/// Vertical distance between lane tops.
const LANE_PITCH: f64 = 26.0;
/// Longest lane label shown in full, in characters.
const MAX_LABEL_CHARS: usize = 22;

pub(super) fn render(t: &Timeline, id: &str) -> String {
    let labels: Vec<String> = t.lanes.iter().map(|(name, _)| shorten(name)).collect();
    let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    let left = (longest as f64 * CHAR_WIDTH + 16.0).clamp(62.0, 180.0);
    let lanes = t.lanes.len().max(1);
    let frame = Frame::new(super::WIDE_WIDTH, left, lanes as f64 * LANE_PITCH + 6.0);
    let mut body = String::new();

    let valid = |s: &&crate::model::Segment| {
        s.kind < t.kinds.len() && usable(s.start, false) && usable(s.end, false) && s.end > s.start
    };
    let span = extent(
        t.lanes
            .iter()
            .flat_map(|(_, segs)| segs.iter().filter(valid))
            .flat_map(|s| [s.start, s.end])
            .chain(
                t.moves
                    .iter()
                    .flat_map(|m| [m.start, m.end])
                    .filter(|&v| usable(v, false)),
            ),
    );
    let lane_top = |i: usize| frame.top + 6.0 + i as f64 * LANE_PITCH;
    match span {
        Some((t0, t1)) => {
            let x_ticks = crate::axis::inner_ticks(t0, t1, 10);
            let x_scale = frame.x_scale(&x_ticks, false);
            axes(
                &mut body,
                &frame,
                Some((&x_scale, &x_ticks)),
                None,
                &t.x_label,
                "",
            );
            let cells = (frame.plot_w * CELLS_PER_PX) as usize;
            let cell_w = 1.0 / CELLS_PER_PX;
            for (i, (name, segs)) in t.lanes.iter().enumerate() {
                let y = fmt_px(lane_top(i));
                let runs = rasterise_lane(segs, x_ticks.lo, x_ticks.hi, cells, t.kinds.len());
                body.push_str("<g class=\"lane\" data-lane=\"");
                push_escaped(&mut body, name);
                let _ = write!(body, "\" data-rects=\"{}\"><title>", runs.len());
                push_escaped(
                    &mut body,
                    &lane_summary(name, segs, t, x_ticks.lo, x_ticks.hi),
                );
                body.push_str("</title>");
                let _ = write!(
                    body,
                    "<rect class=\"lane-bg\" x=\"{}\" y=\"{y}\" width=\"{}\" height=\"{LANE_H}\" fill=\"{}\"/>",
                    fmt_px(frame.left),
                    fmt_px(frame.plot_w),
                    crate::palette::NOTHING
                );
                for (start, len, kind) in runs {
                    let _ = write!(
                        body,
                        "<rect x=\"{}\" y=\"{y}\" width=\"{}\" height=\"{LANE_H}\" fill=\"",
                        fmt_px(frame.left + start as f64 * cell_w),
                        fmt_px(len as f64 * cell_w)
                    );
                    push_escaped(&mut body, &t.kinds[kind].1);
                    body.push_str("\"/>");
                }
                body.push_str("</g>");
            }
            draw_moves(
                &mut body,
                t,
                &|v| x_scale.map(v),
                &|lane| lane_top(lane) + LANE_H / 2.0,
                id,
            );
        }
        None => {
            axes(&mut body, &frame, None, None, &t.x_label, "");
            no_data(&mut body, &frame);
        }
    }
    for (i, label) in labels.iter().enumerate() {
        let _ = write!(
            body,
            "<text class=\"lane-label\" x=\"{}\" y=\"{}\" dy=\"0.35em\" text-anchor=\"end\">",
            fmt_px(frame.left - 6.0),
            fmt_px(lane_top(i) + LANE_H / 2.0)
        );
        push_escaped(&mut body, label);
        body.push_str("</text>");
    }

    // Only the kinds that occur (all of them when nothing does), then the background.
    let mut used = vec![false; t.kinds.len()];
    for s in t
        .lanes
        .iter()
        .flat_map(|(_, segs)| segs.iter())
        .filter(valid)
    {
        used[s.kind] = true;
    }
    let any_used = used.iter().any(|&u| u);
    let mut items: Vec<LegendItem<'_>> = t
        .kinds
        .iter()
        .zip(&used)
        .filter(|&(_, &u)| u || !any_used)
        .map(|((name, colour), _)| LegendItem {
            swatch: Swatch::Box { colour },
            label: name.clone(),
            faded: false,
        })
        .collect();
    if any_used {
        items.push(LegendItem {
            swatch: Swatch::Box {
                colour: crate::palette::NOTHING,
            },
            label: "nothing recorded".into(),
            faded: false,
        });
    }
    let valid_moves = t.moves.iter().filter(|m| move_ok(t, m)).count();
    if valid_moves > 0 {
        let drawn = valid_moves.min(MAX_MOVES);
        let label = if drawn < valid_moves {
            format!("moves between instances ({drawn} of {valid_moves} drawn)")
        } else {
            format!("moves between instances ({valid_moves})")
        };
        items.push(LegendItem {
            swatch: Swatch::Arrow,
            label,
            faded: false,
        });
    }
    let (legend_svg, legend_h) = legend(&items, &frame, frame.legend_top());
    body.push_str(&legend_svg);
    let height = frame.legend_top() + legend_h + 6.0;
    wrap_svg("timeline", id, &t.title, frame.width, height, &body)
}

/// Tooltip text of a lane: its name and the share of the shown time spent in each kind.
fn lane_summary(
    name: &str,
    segs: &[crate::model::Segment],
    t: &Timeline,
    t0: f64,
    t1: f64,
) -> String {
    let mut total = vec![0f64; t.kinds.len()];
    for s in segs {
        if s.kind < t.kinds.len()
            && usable(s.start, false)
            && usable(s.end, false)
            && s.end > s.start
        {
            total[s.kind] += s.end.min(t1) - s.start.max(t0);
        }
    }
    let span = t1 - t0;
    let parts: Vec<String> = t
        .kinds
        .iter()
        .zip(&total)
        .filter(|&(_, &d)| d > 0.0)
        .map(|((kind, _), &d)| format!("{kind} {:.1}%", 100.0 * d / span))
        .collect();
    if parts.is_empty() {
        format!("{name}: nothing recorded")
    } else {
        format!("{name}: {}", parts.join(", "))
    }
}

/// Whether a move refers to existing lanes and has finite, ordered times.
fn move_ok(t: &Timeline, m: &crate::model::Move) -> bool {
    m.from_lane < t.lanes.len()
        && m.to_lane < t.lanes.len()
        && usable(m.start, false)
        && usable(m.end, false)
        && m.end >= m.start
}

/// Draws up to [`MAX_MOVES`] arrows, sampled evenly over the valid moves.
fn draw_moves(
    out: &mut String,
    t: &Timeline,
    x: &dyn Fn(f64) -> f64,
    lane_mid: &dyn Fn(usize) -> f64,
    id: &str,
) {
    let valid: Vec<&crate::model::Move> = t.moves.iter().filter(|m| move_ok(t, m)).collect();
    if valid.is_empty() {
        return;
    }
    let _ = write!(
        out,
        "<defs><marker id=\"{id}-arrow\" viewBox=\"0 0 8 8\" refX=\"7\" refY=\"4\" markerWidth=\"6\" \
         markerHeight=\"6\" orient=\"auto\"><path d=\"M0,0L8,4L0,8z\" class=\"move-head\"/></marker></defs>\
         <g class=\"moves\" data-count=\"{}\">",
        valid.len().min(MAX_MOVES)
    );
    let n = valid.len();
    let take = n.min(MAX_MOVES);
    for k in 0..take {
        let m = valid[k * n / take];
        let _ = write!(
            out,
            "<line class=\"move\" x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" marker-end=\"url(#{id}-arrow)\"/>",
            fmt_px(x(m.start)),
            fmt_px(lane_mid(m.from_lane)),
            fmt_px(x(m.end)),
            fmt_px(lane_mid(m.to_lane))
        );
    }
    out.push_str("</g>");
}

/// Truncates long lane names with an ellipsis.
fn shorten(name: &str) -> String {
    if name.chars().count() <= MAX_LABEL_CHARS {
        name.to_string()
    } else {
        let mut s: String = name.chars().take(MAX_LABEL_CHARS - 1).collect();
        s.push('…');
        s
    }
}
