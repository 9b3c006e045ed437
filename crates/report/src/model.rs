//! The report data model: plain owned data, filled by the caller and rendered by [`Report::to_html`].

use std::path::Path;

use crate::error::ReportError;

/// One self-contained HTML report: a header, the run's configuration, summary tables and
/// sections of charts.
///
/// Build it with the chaining helpers or by pushing onto the public fields, then call
/// [`Report::to_html`] or [`Report::write`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Page title, e.g. `"accellm simulate — llama-70b on 4×H100"`.
    pub title: String,
    /// One line under the title (command line, date, git revision…); empty for none.
    pub subtitle: String,
    /// The run's configuration as key/value pairs, shown in order under the title.
    pub config: Vec<(String, String)>,
    /// Summary tables shown at the top, before the charts.
    pub tables: Vec<Table>,
    /// Chart sections, in order.
    pub sections: Vec<Section>,
}

impl Report {
    /// An empty report with a title.
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            ..Self::default()
        }
    }

    /// Sets the subtitle line.
    pub fn subtitle(mut self, subtitle: impl Into<String>) -> Self {
        self.subtitle = subtitle.into();
        self
    }

    /// Appends one configuration entry.
    pub fn config(mut self, key: impl Into<String>, value: impl ToString) -> Self {
        self.config.push((key.into(), value.to_string()));
        self
    }

    /// Appends a summary table.
    pub fn table(mut self, table: Table) -> Self {
        self.tables.push(table);
        self
    }

    /// Appends a chart section.
    pub fn section(mut self, section: Section) -> Self {
        self.sections.push(section);
        self
    }

    /// Renders the report as one HTML document with inline SVG and CSS (no scripts,
    /// no external resources). The output is also well-formed XML.
    pub fn to_html(&self) -> String {
        crate::html::render(self)
    }

    /// Renders the report and writes it to `path`, replacing any existing file.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<(), ReportError> {
        let path = path.as_ref();
        std::fs::write(path, self.to_html()).map_err(|source| ReportError::Write {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// A table of pre-formatted cells. Cells that look numeric are right-aligned.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    /// Heading shown above the table; empty for none.
    pub title: String,
    /// Column headers, with units where they apply (`"p99 TTFT (ms)"`).
    pub columns: Vec<String>,
    /// Rows of cells; a short row is padded with empty cells.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with a title and column headers.
    pub fn new<S: Into<String>>(
        title: impl Into<String>,
        columns: impl IntoIterator<Item = S>,
    ) -> Self {
        Self {
            title: title.into(),
            columns: columns.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends one row.
    pub fn row<S: ToString>(mut self, cells: impl IntoIterator<Item = S>) -> Self {
        self.rows
            .push(cells.into_iter().map(|c| c.to_string()).collect());
        self
    }
}

/// A titled group of charts, laid out in a responsive grid (timelines span the full width).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Section {
    /// Section heading.
    pub title: String,
    /// Charts in this section, in order.
    pub charts: Vec<Chart>,
}

impl Section {
    /// An empty section.
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            charts: Vec::new(),
        }
    }

    /// Appends a chart.
    pub fn chart(mut self, chart: impl Into<Chart>) -> Self {
        self.charts.push(chart.into());
        self
    }
}

/// One chart. Every chart has a title, labelled axes and a legend.
#[derive(Debug, Clone, PartialEq)]
pub enum Chart {
    /// Empirical cumulative distributions of samples, one curve per series.
    Cdf(Cdf),
    /// Lines through (x, y) points, one per series.
    Lines(Lines),
    /// Per-lane Gantt chart of typed time segments.
    Timeline(Timeline),
}

impl Chart {
    /// The chart's title.
    pub fn title(&self) -> &str {
        match self {
            Chart::Cdf(c) => &c.title,
            Chart::Lines(c) => &c.title,
            Chart::Timeline(c) => &c.title,
        }
    }
}

impl From<Cdf> for Chart {
    fn from(c: Cdf) -> Self {
        Chart::Cdf(c)
    }
}

impl From<Lines> for Chart {
    fn from(c: Lines) -> Self {
        Chart::Lines(c)
    }
}

impl From<Timeline> for Chart {
    fn from(c: Timeline) -> Self {
        Chart::Timeline(c)
    }
}

/// Empirical CDF chart: y is the fraction of samples ≤ x, or with [`Cdf::tail`] the fraction
/// ≥ x on a log axis.
///
/// Samples need not be sorted. Non-finite samples (and, on a log axis, samples ≤ 0) are
/// left out and counted in the legend. Large sample sets are downsampled to a few hundred
/// points that keep the minimum, the maximum and the tail's shape. The legend shows each
/// series' sample count, p50 and p99.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cdf {
    /// Chart title, e.g. `"TTFT"`.
    pub title: String,
    /// X-axis label with unit, e.g. `"TTFT (ms)"`.
    pub x_label: String,
    /// Logarithmic x axis.
    pub log_x: bool,
    /// Tail view: plot the fraction of samples ≥ x on a logarithmic y axis (a complementary
    /// CDF), so p99, p99.9 and beyond are as readable as the median.
    pub tail: bool,
    /// `(series name, samples)`, one curve each.
    pub series: Vec<(String, Vec<f64>)>,
}

impl Cdf {
    /// An empty CDF chart.
    pub fn new(title: impl Into<String>, x_label: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            x_label: x_label.into(),
            ..Self::default()
        }
    }

    /// Sets a logarithmic x axis.
    pub fn log_x(mut self, log_x: bool) -> Self {
        self.log_x = log_x;
        self
    }

    /// Sets the tail view (fraction of samples ≥ x, log y axis).
    pub fn tail(mut self, tail: bool) -> Self {
        self.tail = tail;
        self
    }

    /// Appends a series of raw samples.
    pub fn series(mut self, name: impl Into<String>, samples: impl Into<Vec<f64>>) -> Self {
        self.series.push((name.into(), samples.into()));
        self
    }
}

/// Line chart of (x, y) points, e.g. a metric against request rate or a quantity over time.
///
/// Points are drawn in ascending x order; non-finite points (and points ≤ 0 on a log axis)
/// are left out. Series with many points are reduced to the per-pixel minimum and maximum,
/// so spikes survive. Series with few points get markers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lines {
    /// Chart title, e.g. `"p99 TTFT vs request rate"`.
    pub title: String,
    /// X-axis label with unit, e.g. `"request rate (req/s)"`.
    pub x_label: String,
    /// Y-axis label with unit, e.g. `"p99 TTFT (ms)"`.
    pub y_label: String,
    /// Logarithmic x axis.
    pub log_x: bool,
    /// Logarithmic y axis.
    pub log_y: bool,
    /// Fixed y range (e.g. `(0.0, 100.0)` for a percentage); `None` fits the data
    /// (a linear axis then starts at 0 when all values are ≥ 0).
    pub y_range: Option<(f64, f64)>,
    /// `(series name, points)`, one line each.
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

impl Lines {
    /// An empty line chart.
    pub fn new(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
    ) -> Self {
        Self {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            ..Self::default()
        }
    }

    /// Sets a logarithmic x axis.
    pub fn log_x(mut self, log_x: bool) -> Self {
        self.log_x = log_x;
        self
    }

    /// Sets a logarithmic y axis.
    pub fn log_y(mut self, log_y: bool) -> Self {
        self.log_y = log_y;
        self
    }

    /// Fixes the y range instead of fitting it to the data.
    pub fn y_range(mut self, lo: f64, hi: f64) -> Self {
        self.y_range = Some((lo, hi));
        self
    }

    /// Appends a series.
    pub fn series(mut self, name: impl Into<String>, points: impl Into<Vec<(f64, f64)>>) -> Self {
        self.series.push((name.into(), points.into()));
        self
    }
}

/// One busy interval on a timeline lane.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Segment {
    /// Start time, in the unit of the timeline's x label.
    pub start: f64,
    /// End time (≥ `start`).
    pub end: f64,
    /// Index into [`Timeline::kinds`].
    pub kind: usize,
}

/// Something that moves between lanes, e.g. a decode migrating to the partner instance or a
/// KV copy; drawn as an arrow from `from_lane` at `start` to `to_lane` at `end`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Move {
    /// Index into [`Timeline::lanes`] of the source.
    pub from_lane: usize,
    /// Index into [`Timeline::lanes`] of the destination.
    pub to_lane: usize,
    /// Departure time.
    pub start: f64,
    /// Arrival time (equal to `start` for an instantaneous hand-over).
    pub end: f64,
}

/// Gantt chart: one lane per instance, coloured by what it runs (prefill, decode, mixed, idle…).
///
/// Copes with hundreds of thousands of segments: each lane is rasterised at half-pixel
/// resolution, each cell takes the kind that covers most of it (cells less than half covered
/// stay empty), and runs of equal cells become one rectangle. At most a few hundred
/// [`Move`]s are drawn (evenly sampled); the legend says how many were.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timeline {
    /// Chart title, e.g. `"What each instance runs"`.
    pub title: String,
    /// Time-axis label with unit, e.g. `"time (s)"`.
    pub x_label: String,
    /// Segment kinds: `(name, CSS colour)`; [`Segment::kind`] indexes this list. The legend
    /// shows the kinds that occur, plus the lane background.
    pub kinds: Vec<(String, String)>,
    /// `(lane name, segments)`, top to bottom.
    pub lanes: Vec<(String, Vec<Segment>)>,
    /// Arrows between lanes; empty for none.
    pub moves: Vec<Move>,
}

impl Timeline {
    /// Kind index of prefill in [`Timeline::with_standard_kinds`].
    pub const PREFILL: usize = 0;
    /// Kind index of decode in [`Timeline::with_standard_kinds`].
    pub const DECODE: usize = 1;
    /// Kind index of a mixed prefill+decode batch in [`Timeline::with_standard_kinds`].
    pub const MIXED: usize = 2;
    /// Kind index of idle in [`Timeline::with_standard_kinds`].
    pub const IDLE: usize = 3;

    /// An empty timeline with no kinds.
    pub fn new(title: impl Into<String>, x_label: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            x_label: x_label.into(),
            ..Self::default()
        }
    }

    /// An empty timeline with the kinds prefill, decode, mixed and idle at the indices
    /// [`Self::PREFILL`], [`Self::DECODE`], [`Self::MIXED`] and [`Self::IDLE`].
    pub fn with_standard_kinds(title: impl Into<String>, x_label: impl Into<String>) -> Self {
        Self::new(title, x_label)
            .kind("prefill", crate::palette::PREFILL)
            .kind("decode", crate::palette::DECODE)
            .kind("mixed", crate::palette::MIXED)
            .kind("idle", crate::palette::IDLE)
    }

    /// Appends a segment kind with its CSS colour (e.g. `"#0072B2"`); its index is the
    /// number of kinds before it.
    pub fn kind(mut self, name: impl Into<String>, colour: impl Into<String>) -> Self {
        self.kinds.push((name.into(), colour.into()));
        self
    }

    /// Appends a lane.
    pub fn lane(mut self, name: impl Into<String>, segments: impl Into<Vec<Segment>>) -> Self {
        self.lanes.push((name.into(), segments.into()));
        self
    }

    /// Appends an arrow between lanes.
    pub fn add_move(mut self, mv: Move) -> Self {
        self.moves.push(mv);
        self
    }
}
