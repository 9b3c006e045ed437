//! Self-contained HTML reports with SVG charts for `accellm simulate` and `accellm bench`.
//!
//! The caller fills a [`Report`] with plain data — the run's configuration, summary
//! [`Table`]s and [`Section`]s of [`Chart`]s — and calls [`Report::write`]. The result is one
//! HTML file with inline SVG and a small embedded stylesheet: no scripts, no network, no
//! external fonts, so it opens anywhere and can be attached to an issue or archived with
//! the results. The output is also well-formed XML.
//!
//! Three chart kinds cover what comparing serving policies needs:
//! - [`Cdf`]: latency distributions (TTFT, TBT, JCT), one curve per policy;
//! - [`Lines`]: metrics against request rate (p99 latency, goodput, SLO attainment) or
//!   quantities over time (throughput, KV utilisation);
//! - [`Timeline`]: what each instance runs over time (prefill, decode, mixed, idle), with
//!   optional arrows for decodes moving between instances.
//!
//! Charts are drawn by hand: "nice" tick values, units in the axis labels the caller gives,
//! a colour-blind-friendly palette (Okabe–Ito), legends, and "no data" instead of a broken
//! chart when a series is empty. Big inputs are reduced to what the pixels can show (CDFs to a
//! few hundred points, lines to per-pixel min/max, timelines to half-pixel raster runs), so a
//! report over a million requests stays small.
//!
//! ```
//! use accellm_report::{Cdf, Lines, Report, Section, Table};
//!
//! let report = Report::new("accellm simulate")
//!     .subtitle("synthetic example")
//!     .config("cluster policy", "accellm")
//!     .table(Table::new("Summary", ["policy", "p99 TTFT (ms)"]).row(["accellm", "212"]))
//!     .section(
//!         Section::new("Latency")
//!             .chart(Cdf::new("TTFT", "TTFT (ms)").log_x(true).series("accellm", vec![120.0, 180.0, 212.0]))
//!             .chart(Lines::new("Goodput", "rate (req/s)", "goodput (req/s)").series("accellm", vec![(1.0, 1.0), (2.0, 1.9)])),
//!     );
//! let html = report.to_html();
//! assert!(html.contains("<svg"));
//! ```

mod axis;
mod chart;
mod downsample;
mod error;
mod escape;
mod html;
mod model;
pub mod palette;

pub use error::ReportError;
pub use escape::{escape, format_value};
pub use model::{Cdf, Chart, Lines, Move, Report, Section, Segment, Table, Timeline};
