//! Colour-blind-friendly colours (Okabe & Ito, 2008) used for series and timeline kinds.

/// Series colours, in the order they are assigned. Yellow is darkened for contrast on white.
pub const SERIES: [&str; 8] = [
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#B8A000",
];

/// Dash patterns used, with [`SERIES`], so that series stay distinct beyond eight and in grey print.
pub(crate) const DASHES: [&str; 4] = ["", "6 3", "2 3", "8 3 2 3"];

/// Colour of prefill segments.
pub const PREFILL: &str = "#D55E00";
/// Colour of decode segments.
pub const DECODE: &str = "#0072B2";
/// Colour of mixed prefill+decode segments.
pub const MIXED: &str = "#CC79A7";
/// Colour of idle segments.
pub const IDLE: &str = "#DDDDDD";

/// Background of timeline lanes where no segment was recorded.
pub const NOTHING: &str = "#F2F2F2";

/// Colour of the `i`-th series.
pub fn series_colour(i: usize) -> &'static str {
    SERIES[i % SERIES.len()]
}

/// Dash pattern of the `i`-th series (solid for the first eight).
pub(crate) fn series_dash(i: usize) -> &'static str {
    DASHES[(i / SERIES.len()) % DASHES.len()]
}
