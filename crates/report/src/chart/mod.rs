//! SVG rendering of the three chart kinds, sharing one frame: title, axes, grid and legend.

mod cdf;
mod lines;
mod timeline;

use std::fmt::Write as _;

use crate::axis::{Scale, Ticks};
use crate::escape::{fmt_px, format_value, push_escaped};
use crate::model::Chart;

/// Width of a normal chart in SVG user units (two fit side by side on a laptop screen).
pub(crate) const CHART_WIDTH: f64 = 640.0;
/// Width of a full-width chart (timelines).
pub(crate) const WIDE_WIDTH: f64 = 1240.0;
/// Approximate advance of one character at the 12 px chart font, for layout.
const CHAR_WIDTH: f64 = 6.8;

/// Renders `chart` as one `<svg>` element. `id` must be unique within the page; it prefixes
/// the ids of the chart's internal elements.
pub(crate) fn render(chart: &Chart, id: &str) -> String {
    match chart {
        Chart::Cdf(c) => cdf::render(c, id),
        Chart::Lines(c) => lines::render(c, id),
        Chart::Timeline(c) => timeline::render(c, id),
    }
}

/// Whether a chart is drawn full-width.
pub(crate) fn is_wide(chart: &Chart) -> bool {
    matches!(chart, Chart::Timeline(_))
}

/// The plotting rectangle inside a chart, in SVG user units.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Frame {
    /// Total SVG width.
    pub width: f64,
    /// Left edge of the plot area.
    pub left: f64,
    /// Top edge of the plot area.
    pub top: f64,
    /// Width of the plot area.
    pub plot_w: f64,
    /// Height of the plot area.
    pub plot_h: f64,
}

impl Frame {
    /// A frame of the given total width and plot height, with room for y tick labels.
    pub fn new(width: f64, left: f64, plot_h: f64) -> Self {
        Self {
            width,
            left,
            top: 44.0,
            plot_w: width - left - 38.0,
            plot_h,
        }
    }

    /// Right edge of the plot area.
    pub fn right(&self) -> f64 {
        self.left + self.plot_w
    }

    /// Bottom edge of the plot area.
    pub fn bottom(&self) -> f64 {
        self.top + self.plot_h
    }

    /// Where the legend starts (below the x tick labels and axis label).
    pub fn legend_top(&self) -> f64 {
        self.bottom() + 52.0
    }

    /// Horizontal scale for a domain.
    pub fn x_scale(&self, t: &Ticks, log: bool) -> Scale {
        Scale {
            lo: t.lo,
            hi: t.hi,
            log,
            px_lo: self.left,
            px_hi: self.right(),
        }
    }

    /// Vertical scale for a domain.
    pub fn y_scale(&self, t: &Ticks, log: bool) -> Scale {
        Scale {
            lo: t.lo,
            hi: t.hi,
            log,
            px_lo: self.bottom(),
            px_hi: self.top,
        }
    }
}

/// How a legend entry is drawn.
pub(crate) enum Swatch<'a> {
    /// A line sample in a colour and dash pattern.
    Line { colour: &'a str, dash: &'a str },
    /// A filled box.
    Box { colour: &'a str },
    /// An arrow (timeline moves).
    Arrow,
}

/// One legend entry.
pub(crate) struct LegendItem<'a> {
    /// How the entry's sample looks.
    pub swatch: Swatch<'a>,
    /// The text, unescaped.
    pub label: String,
    /// Drawn faded (e.g. a series with no data).
    pub faded: bool,
}

/// Lays out legend entries in rows starting at `top`; returns the SVG and the height used.
pub(crate) fn legend(items: &[LegendItem<'_>], frame: &Frame, top: f64) -> (String, f64) {
    let mut out = String::new();
    if items.is_empty() {
        return (out, 0.0);
    }
    let row_h = 20.0;
    let (x0, x_max) = (frame.left.min(40.0), frame.width - 12.0);
    let (mut x, mut y) = (x0, top + 10.0);
    out.push_str("<g class=\"legend\">");
    for item in items {
        let w = 26.0 + item.label.chars().count() as f64 * CHAR_WIDTH + 18.0;
        if x > x0 && x + w > x_max {
            x = x0;
            y += row_h;
        }
        let _ = write!(
            out,
            "<g{}>",
            if item.faded { " opacity=\"0.45\"" } else { "" }
        );
        match item.swatch {
            Swatch::Line { colour, dash } => {
                let _ = write!(
                    out,
                    "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"",
                    fmt_px(x),
                    fmt_px(y),
                    fmt_px(x + 20.0),
                    fmt_px(y)
                );
                push_escaped(&mut out, colour);
                out.push_str("\" stroke-width=\"2.5\"");
                dash_attr(&mut out, dash);
                out.push_str("/>");
            }
            Swatch::Box { colour } => {
                let _ = write!(
                    out,
                    "<rect x=\"{}\" y=\"{}\" width=\"18\" height=\"12\" fill=\"",
                    fmt_px(x + 1.0),
                    fmt_px(y - 6.0)
                );
                push_escaped(&mut out, colour);
                out.push_str("\" stroke=\"#555\" stroke-width=\"0.5\"/>");
            }
            Swatch::Arrow => {
                let _ = write!(
                    out,
                    "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" class=\"move\"/>",
                    fmt_px(x),
                    fmt_px(y + 5.0),
                    fmt_px(x + 18.0),
                    fmt_px(y - 5.0)
                );
            }
        }
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{}\" dy=\"0.35em\">",
            fmt_px(x + 26.0),
            fmt_px(y)
        );
        push_escaped(&mut out, &item.label);
        out.push_str("</text></g>");
        x += w;
    }
    out.push_str("</g>");
    (out, y + row_h - top)
}

/// Appends a `stroke-dasharray` attribute unless `dash` is empty.
pub(crate) fn dash_attr(out: &mut String, dash: &str) {
    if !dash.is_empty() {
        out.push_str(" stroke-dasharray=\"");
        push_escaped(out, dash);
        out.push('"');
    }
}

/// Wraps a chart body in its `<svg>` element with title, accessible name and size.
pub(crate) fn wrap_svg(
    kind: &str,
    id: &str,
    title: &str,
    width: f64,
    height: f64,
    body: &str,
) -> String {
    let mut out = String::with_capacity(body.len() + 512);
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\" data-kind=\"{kind}\" id=\"{id}\" \
         viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-labelledby=\"{id}-t\">\
         <title id=\"{id}-t\">",
        w = fmt_px(width),
        h = fmt_px(height.ceil()),
    );
    push_escaped(&mut out, title);
    out.push_str("</title>");
    let _ = write!(
        out,
        "<text class=\"title\" x=\"{}\" y=\"24\">",
        fmt_px(12.0)
    );
    push_escaped(&mut out, title);
    out.push_str("</text>");
    out.push_str(body);
    out.push_str("</svg>");
    out
}

/// A y axis to draw: its scale, ticks and tick-label formatter.
pub(crate) type YAxis<'a> = (&'a Scale, &'a Ticks, &'a dyn Fn(f64) -> String);

/// Draws grid lines, tick labels, the plot border and axis labels. `y_fmt` formats y ticks.
pub(crate) fn axes(
    out: &mut String,
    frame: &Frame,
    x: Option<(&Scale, &Ticks)>,
    y: Option<YAxis<'_>>,
    x_label: &str,
    y_label: &str,
) {
    out.push_str("<g class=\"axes\">");
    if let Some((scale, ticks)) = x {
        for v in crate::axis::log_minor_ticks(scale, ticks) {
            let px = fmt_px(scale.map(v));
            let _ = write!(
                out,
                "<line class=\"grid minor\" x1=\"{px}\" y1=\"{}\" x2=\"{px}\" y2=\"{}\"/>",
                fmt_px(frame.top),
                fmt_px(frame.bottom())
            );
        }
        for &v in &ticks.values {
            let px = fmt_px(scale.map(v));
            let _ = write!(
                out,
                "<line class=\"grid\" x1=\"{px}\" y1=\"{}\" x2=\"{px}\" y2=\"{}\"/>\
                 <text class=\"tick\" x=\"{px}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                fmt_px(frame.top),
                fmt_px(frame.bottom() + 4.0),
                fmt_px(frame.bottom() + 18.0),
                format_value(v)
            );
        }
    }
    if let Some((scale, ticks, fmt)) = y {
        for v in crate::axis::log_minor_ticks(scale, ticks) {
            let py = fmt_px(scale.map(v));
            let _ = write!(
                out,
                "<line class=\"grid minor\" x1=\"{}\" y1=\"{py}\" x2=\"{}\" y2=\"{py}\"/>",
                fmt_px(frame.left),
                fmt_px(frame.right())
            );
        }
        for &v in &ticks.values {
            let py = fmt_px(scale.map(v));
            let _ = write!(
                out,
                "<line class=\"grid\" x1=\"{}\" y1=\"{py}\" x2=\"{}\" y2=\"{py}\"/>\
                 <text class=\"tick\" x=\"{}\" y=\"{py}\" dy=\"0.35em\" text-anchor=\"end\">",
                fmt_px(frame.left - 4.0),
                fmt_px(frame.right()),
                fmt_px(frame.left - 7.0),
            );
            push_escaped(out, &fmt(v));
            out.push_str("</text>");
        }
    }
    let _ = write!(
        out,
        "<rect class=\"frame\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"/>",
        fmt_px(frame.left),
        fmt_px(frame.top),
        fmt_px(frame.plot_w),
        fmt_px(frame.plot_h)
    );
    let _ = write!(
        out,
        "<text class=\"label\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">",
        fmt_px(frame.left + frame.plot_w / 2.0),
        fmt_px(frame.bottom() + 38.0)
    );
    push_escaped(out, x_label);
    out.push_str("</text>");
    if !y_label.is_empty() {
        let (cx, cy) = (16.0, frame.top + frame.plot_h / 2.0);
        let _ = write!(
            out,
            "<text class=\"label\" x=\"{cx}\" y=\"{cy}\" text-anchor=\"middle\" transform=\"rotate(-90 {cx} {cy})\">",
            cx = fmt_px(cx),
            cy = fmt_px(cy)
        );
        push_escaped(out, y_label);
        out.push_str("</text>");
    }
    out.push_str("</g>");
}

/// Draws a "no data" notice in the middle of the plot area.
pub(crate) fn no_data(out: &mut String, frame: &Frame) {
    let _ = write!(
        out,
        "<text class=\"nodata\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">no data</text>",
        fmt_px(frame.left + frame.plot_w / 2.0),
        fmt_px(frame.top + frame.plot_h / 2.0)
    );
}

/// A clip path for the plot area, so lines outside a fixed range do not spill over.
pub(crate) fn clip_path(out: &mut String, frame: &Frame, id: &str) {
    let _ = write!(
        out,
        "<defs><clipPath id=\"{id}-clip\"><rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"/></clipPath></defs>",
        fmt_px(frame.left),
        fmt_px(frame.top - 1.0),
        fmt_px(frame.plot_w),
        fmt_px(frame.plot_h + 2.0)
    );
}

/// Writes an SVG path `d` attribute value for a polyline through `pts` (pixel coordinates).
pub(crate) fn polyline_d(pts: impl IntoIterator<Item = (f64, f64)>) -> String {
    let mut d = String::new();
    for (i, (x, y)) in pts.into_iter().enumerate() {
        d.push(if i == 0 { 'M' } else { 'L' });
        crate::escape::px(&mut d, x);
        d.push(',');
        crate::escape::px(&mut d, y);
    }
    d
}

/// Finite values of sane magnitude only, and strictly positive ones on a log axis.
pub(crate) fn usable(v: f64, log: bool) -> bool {
    crate::axis::plottable(v, log)
}

/// Min and max of an iterator of values, or `None` when it is empty.
pub(crate) fn extent(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    values.into_iter().fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// Ticks for an axis over `[lo, hi]`.
pub(crate) fn ticks(lo: f64, hi: f64, log: bool, target: usize) -> Ticks {
    if log {
        crate::axis::log_ticks(lo, hi)
    } else {
        crate::axis::linear_ticks(lo, hi, target)
    }
}
