//! Property tests: whatever the data — hostile strings, NaN, infinities, huge or negative
//! values, reversed segments, dangling indices — the page is well-formed and every drawn
//! coordinate is a finite number.

mod common;

use accellm_report::{Cdf, Lines, Move, Report, Section, Segment, Timeline};
use common::{parse, Node};
use proptest::prelude::*;

fn any_value() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => 0.0..1000.0f64,
        1 => -1e6..1e6f64,
        1 => prop::num::f64::ANY,
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(0.0),
    ]
}

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), "[<>&\"' a-z]{0,12}"]
}

fn any_report() -> impl Strategy<Value = Report> {
    let cdf = (
        any_text(),
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(
            (any_text(), prop::collection::vec(any_value(), 0..60)),
            0..4,
        ),
    )
        .prop_map(|(title, log_x, tail, series)| Cdf {
            title,
            x_label: "x (ms)".into(),
            log_x,
            tail,
            series,
        });
    let lines = (
        any_text(),
        any::<bool>(),
        any::<bool>(),
        prop::option::of((any_value(), any_value())),
        prop::collection::vec(
            (
                any_text(),
                prop::collection::vec((any_value(), any_value()), 0..60),
            ),
            0..4,
        ),
    )
        .prop_map(|(title, log_x, log_y, y_range, series)| Lines {
            title,
            x_label: "x".into(),
            y_label: "y".into(),
            log_x,
            log_y,
            y_range,
            series,
        });
    let segment = (any_value(), any_value(), 0usize..6).prop_map(|(start, end, kind)| Segment {
        start,
        end,
        kind,
    });
    let mv = (0usize..5, 0usize..5, any_value(), any_value()).prop_map(
        |(from_lane, to_lane, start, end)| Move {
            from_lane,
            to_lane,
            start,
            end,
        },
    );
    let timeline = (
        any_text(),
        prop::collection::vec((any_text(), prop::collection::vec(segment, 0..80)), 0..4),
        prop::collection::vec(mv, 0..6),
    )
        .prop_map(|(title, lanes, moves)| Timeline {
            lanes,
            moves,
            ..Timeline::with_standard_kinds(title, "time (s)")
        });
    (any_text(), any_text(), cdf, lines, timeline).prop_map(|(title, sub, cdf, lines, timeline)| {
        Report::new(title)
            .subtitle(sub.clone())
            .config(sub.clone(), sub)
            .section(
                Section::new("charts")
                    .chart(cdf)
                    .chart(lines)
                    .chart(timeline),
            )
    })
}

/// Attributes that carry coordinates.
const COORDS: [&str; 11] = [
    "x", "y", "x1", "x2", "y1", "y2", "cx", "cy", "width", "height", "d",
];

fn check_coordinates(node: &Node) -> Result<(), String> {
    for (k, v) in &node.attrs {
        if COORDS.contains(&k.as_str()) {
            let bad = v.contains("NaN") || v.contains("inf") || v.contains('e');
            if bad {
                return Err(format!("<{} {k}=\"{v}\">", node.name));
            }
            if k == "width" || k == "height" {
                let n: f64 = v.parse().map_err(|_| format!("{k}={v}"))?;
                if n < 0.0 {
                    return Err(format!("negative {k} {v}"));
                }
            }
        }
    }
    node.children.iter().try_for_each(check_coordinates)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn any_data_gives_a_well_formed_page(report in any_report()) {
        let html = report.to_html();
        let doc = parse(&html).map_err(|e| TestCaseError::fail(format!("not well-formed: {e}")))?;
        let svgs = doc.all("svg");
        prop_assert_eq!(svgs.len(), 3);
        check_coordinates(&doc).map_err(|e| TestCaseError::fail(format!("bad coordinate {e}")))?;
        for p in doc.all("path").into_iter().filter(|p| p.attr("class") == Some("series")) {
            let d = p.attr("d").unwrap_or("");
            prop_assert!(d.starts_with('M') && d.contains('L'), "degenerate path {:?}", d);
        }
    }
}
