//! End-to-end checks of the rendered page's structure.

mod common;

use accellm_report::{Cdf, Chart, Lines, Report, ReportError, Section, Segment, Timeline};
use common::{parse, sample_report, Node};

fn charts(doc: &Node) -> Vec<&Node> {
    doc.all("svg")
        .into_iter()
        .filter(|s| s.attr("class") == Some("chart"))
        .collect()
}

#[test]
fn page_is_well_formed_xml() {
    let html = sample_report().to_html();
    let doc = parse(&html).unwrap_or_else(|e| panic!("not well-formed: {e}"));
    assert_eq!(doc.all("html").len(), 1);
    assert_eq!(doc.all("script").len(), 0);
}

#[test]
fn every_chart_is_an_svg_with_its_title() {
    let report = sample_report();
    let doc = parse(&report.to_html()).unwrap_or_else(|e| panic!("{e}"));
    let svgs = charts(&doc);
    let expected: Vec<&Chart> = report.sections.iter().flat_map(|s| &s.charts).collect();
    assert_eq!(svgs.len(), expected.len());
    for (svg, chart) in svgs.iter().zip(expected) {
        let titles: Vec<&Node> = svg
            .all("title")
            .into_iter()
            .filter(|t| t.attr("id").is_some())
            .collect();
        assert_eq!(titles.len(), 1);
        assert_eq!(titles[0].text, chart.title());
        let shown: Vec<&Node> = svg
            .all("text")
            .into_iter()
            .filter(|t| t.attr("class") == Some("title"))
            .collect();
        assert_eq!(shown.len(), 1);
        assert_eq!(shown[0].text, chart.title());
        let kind = match chart {
            Chart::Cdf(_) => "cdf",
            Chart::Lines(_) => "lines",
            Chart::Timeline(_) => "timeline",
        };
        assert_eq!(svg.attr("data-kind"), Some(kind));
    }
    let ids: std::collections::HashSet<&str> = svgs.iter().filter_map(|s| s.attr("id")).collect();
    assert_eq!(ids.len(), svgs.len(), "chart ids must be unique");
}

#[test]
fn legends_name_every_series_and_kind() {
    let report = sample_report();
    let doc = parse(&report.to_html()).unwrap_or_else(|e| panic!("{e}"));
    let svgs = charts(&doc);
    let all: Vec<&Chart> = report.sections.iter().flat_map(|s| &s.charts).collect();
    for (svg, chart) in svgs.iter().zip(all) {
        let legend = svg
            .all("g")
            .into_iter()
            .find(|g| g.attr("class") == Some("legend"));
        let names: Vec<&str> = match chart {
            Chart::Cdf(c) => c.series.iter().map(|s| s.0.as_str()).collect(),
            Chart::Lines(c) => c.series.iter().map(|s| s.0.as_str()).collect(),
            Chart::Timeline(t) => t.kinds.iter().map(|k| k.0.as_str()).collect(),
        };
        if names.is_empty() {
            continue;
        }
        let text = legend.map(Node::all_text).unwrap_or_default();
        for name in names {
            assert!(
                text.contains(name),
                "legend of {:?} lacks {name}: {text}",
                chart.title()
            );
        }
    }
}

#[test]
fn no_series_path_is_empty_and_empty_series_say_no_data() {
    let report = sample_report();
    let doc = parse(&report.to_html()).unwrap_or_else(|e| panic!("{e}"));
    let paths: Vec<&Node> = doc
        .all("path")
        .into_iter()
        .filter(|p| p.attr("class") == Some("series"))
        .collect();
    assert!(!paths.is_empty());
    for p in &paths {
        let d = p.attr("d").unwrap_or("");
        assert!(
            d.starts_with('M') && d.contains('L'),
            "degenerate path {d:?}"
        );
        assert!(
            !d.contains("NaN") && !d.contains("inf"),
            "non-finite coordinate in {d:?}"
        );
        let name = p.attr("data-series").unwrap_or("");
        assert!(
            !["empty policy", "none"].contains(&name),
            "path drawn for empty series {name}"
        );
    }
    let svgs = charts(&doc);
    let text_of = |title: &str| {
        svgs.iter()
            .find(|s| s.all("title")[0].text == title)
            .map(|s| s.all_text())
            .unwrap_or_default()
    };
    assert!(text_of("TBT").contains("empty policy — no data"));
    assert!(text_of("p99 TTFT vs rate").contains("none — no data"));
    assert!(
        text_of("JCT").contains("no data"),
        "a chart without series says so"
    );
    // The single-point series is drawn as a marker.
    let markers: Vec<&Node> = doc
        .all("g")
        .into_iter()
        .filter(|g| g.attr("data-series") == Some("one point"))
        .collect();
    assert_eq!(markers.len(), 1);
    assert_eq!(markers[0].all("circle").len(), 1);
    // Markers carry their exact value as a tooltip.
    assert_eq!(markers[0].all("title")[0].text, "one point: 2.5, 120");
}

#[test]
fn text_is_escaped_not_interpreted() {
    let html = sample_report().to_html();
    let doc = parse(&html).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(doc.all("b").len(), 0, "table cell markup must be escaped");
    assert_eq!(doc.all("title")[0].text, "Sample <report> & \"friends\"");
    assert!(html.contains("&lt;b&gt;not bold&lt;/b&gt;"));
    assert!(doc.all_text().contains("value & more"));
}

#[test]
fn summary_and_configuration_tables_come_first() {
    let html = sample_report().to_html();
    let config = html.find("id=\"configuration\"").unwrap_or(usize::MAX);
    let summary = html.find("id=\"summary\"").unwrap_or(usize::MAX);
    let first_chart = html.find("<svg").unwrap_or(0);
    assert!(config < summary && summary < first_chart);
    let doc = parse(&html).unwrap_or_else(|e| panic!("{e}"));
    let numeric: Vec<&Node> = doc
        .all("td")
        .into_iter()
        .filter(|td| td.attr("class") == Some("num"))
        .collect();
    assert!(numeric.iter().any(|td| td.text == "123.4"));
    // The short second row is padded to the header's width.
    let rows = doc.all("tr");
    let last = rows.last().map(|r| r.all("td").len());
    assert_eq!(last, Some(3));
}

#[test]
fn big_timeline_is_reduced_to_what_pixels_show() {
    // 100 000 alternating 1-unit segments on each of four lanes over a ~1200 px axis.
    let segs: Vec<Segment> = (0..100_000)
        .map(|i| Segment {
            start: i as f64,
            end: i as f64 + 1.0,
            kind: i % 2,
        })
        .collect();
    let mut t = Timeline::with_standard_kinds("big", "time (s)");
    for lane in 0..4 {
        t = t.lane(format!("lane {lane}"), segs.clone());
    }
    let html = Report::new("big")
        .section(Section::new("s").chart(t))
        .to_html();
    let doc = parse(&html).unwrap_or_else(|e| panic!("{e}"));
    let lanes: Vec<&Node> = doc
        .all("g")
        .into_iter()
        .filter(|g| g.attr("class") == Some("lane"))
        .collect();
    assert_eq!(lanes.len(), 4);
    for lane in lanes {
        let rects = lane.all("rect").len();
        assert!(rects > 1 && rects < 2_600, "{rects} rects in a lane");
    }
    assert!(html.len() < 1_000_000, "page is {} bytes", html.len());
}

#[test]
fn big_sample_sets_are_downsampled() {
    let samples: Vec<f64> = (0..1_000_000).map(|i| i as f64).collect();
    let lines: Vec<(f64, f64)> = (0..1_000_000)
        .map(|i| (i as f64, (i % 100) as f64))
        .collect();
    let html = Report::new("big")
        .section(
            Section::new("s")
                .chart(Cdf::new("cdf", "x (ms)").series("a", samples))
                .chart(Lines::new("lines", "t (s)", "y (1)").series("b", lines)),
        )
        .to_html();
    assert!(html.len() < 200_000, "page is {} bytes", html.len());
    let doc = parse(&html).unwrap_or_else(|e| panic!("{e}"));
    for p in doc
        .all("path")
        .into_iter()
        .filter(|p| p.attr("class") == Some("series"))
    {
        let points = p.attr("d").unwrap_or("").matches('L').count() + 1;
        assert!(points > 100 && points <= 2_500, "{points} points");
    }
}

#[test]
fn empty_report_is_still_a_valid_page() {
    let html = Report::new("nothing").to_html();
    let doc = parse(&html).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(charts(&doc).len(), 0);
    assert_eq!(doc.all("h1")[0].text, "nothing");
}

#[test]
fn write_creates_the_file_and_reports_the_path_on_error() {
    let dir = std::env::temp_dir().join(format!("accellm-report-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let path = dir.join("r.html");
    let report = sample_report();
    report.write(&path).unwrap_or_else(|e| panic!("{e}"));
    let written = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(written, report.to_html());
    let bad = dir.join("missing-dir").join("r.html");
    let err = report.write(&bad).err();
    assert!(matches!(&err, Some(ReportError::Write { path, .. }) if *path == bad));
    assert!(err
        .map(|e| e.to_string())
        .unwrap_or_default()
        .contains("missing-dir"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn page_loads_nothing_from_outside() {
    let html = sample_report().to_html();
    let without_ns = html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    assert!(!without_ns.contains("http://") && !without_ns.contains("https://"));
    assert!(!html.contains("src=") && !html.contains("@import") && !html.contains("url(http"));
    let doc = parse(&html).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        doc.all("link").is_empty() && doc.all("script").is_empty() && doc.all("img").is_empty()
    );
}

#[test]
fn tail_view_has_a_log_percent_axis_and_p99_guides() {
    let doc = parse(&sample_report().to_html()).unwrap_or_else(|e| panic!("{e}"));
    let svg = charts(&doc)
        .into_iter()
        .find(|s| s.all("title")[0].text == "TTFT tail");
    let svg = svg.unwrap_or_else(|| panic!("tail chart missing"));
    let text = svg.all_text();
    for label in [
        "100%",
        "10%",
        "1%",
        "0.1%",
        "0.01%",
        "p99",
        "p99.9",
        "fraction of samples ≥ x",
    ] {
        assert!(text.contains(label), "tail chart lacks {label:?}");
    }
    let paths: Vec<&Node> = svg
        .all("path")
        .into_iter()
        .filter(|p| p.attr("class") == Some("series"))
        .collect();
    assert_eq!(paths.len(), 1, "the 5000-sample series is a path");
    assert_eq!(svg.all("circle").len(), 1, "the single sample is a dot");
}

#[test]
fn timeline_legend_lists_only_kinds_that_occur() {
    let t = Timeline::with_standard_kinds("roles", "time (s)")
        .lane(
            "a",
            vec![Segment {
                start: 0.0,
                end: 1.0,
                kind: Timeline::PREFILL,
            }],
        )
        .lane(
            "b",
            vec![Segment {
                start: 0.5,
                end: 2.0,
                kind: Timeline::DECODE,
            }],
        );
    let doc = parse(
        &Report::new("t")
            .section(Section::new("s").chart(t))
            .to_html(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let legend = doc
        .all("g")
        .into_iter()
        .find(|g| g.attr("class") == Some("legend"));
    let text = legend.map(Node::all_text).unwrap_or_default();
    assert!(
        text.contains("prefill") && text.contains("decode") && text.contains("nothing recorded"),
        "{text}"
    );
    assert!(!text.contains("mixed") && !text.contains("idle"), "{text}");
    // Each lane's tooltip gives its share of the shown time (0–2 s) per kind.
    let lanes: Vec<&Node> = doc
        .all("g")
        .into_iter()
        .filter(|g| g.attr("class") == Some("lane"))
        .collect();
    assert_eq!(lanes[0].children[0].text, "a: prefill 50.0%");
    assert_eq!(lanes[1].children[0].text, "b: decode 75.0%");
}
