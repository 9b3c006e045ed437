//! Helpers shared by the end-to-end tests: a sample report and a tiny XML tree built with
//! `quick-xml`, which also checks that the page is well-formed.

#![allow(dead_code)]

use accellm_report::{Cdf, Lines, Move, Report, Section, Segment, Table, Timeline};
use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

/// One element of a parsed document.
#[derive(Debug, Default)]
pub struct Node {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub text: String,
    pub children: Vec<Node>,
}

impl Node {
    /// The value of attribute `name`.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// All descendants (depth first, including `self`) named `name`.
    pub fn find_all<'a>(&'a self, name: &str, out: &mut Vec<&'a Node>) {
        if self.name == name {
            out.push(self);
        }
        for c in &self.children {
            c.find_all(name, out);
        }
    }

    /// Descendants named `name`.
    pub fn all(&self, name: &str) -> Vec<&Node> {
        let mut v = Vec::new();
        self.find_all(name, &mut v);
        v
    }

    /// All text below this node, concatenated.
    pub fn all_text(&self) -> String {
        let mut s = self.text.clone();
        for c in &self.children {
            s.push_str(&c.all_text());
        }
        s
    }
}

fn element(e: &BytesStart<'_>) -> Result<Node, String> {
    let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
    let mut attrs = Vec::new();
    for a in e.attributes() {
        let a = a.map_err(|err| format!("bad attribute in <{name}>: {err}"))?;
        let key = String::from_utf8_lossy(a.key.as_ref()).into_owned();
        let value = a
            .unescape_value()
            .map_err(|err| format!("bad attribute value: {err}"))?;
        if attrs.iter().any(|(k, _)| *k == key) {
            return Err(format!("duplicate attribute {key} in <{name}>"));
        }
        attrs.push((key, value.into_owned()));
    }
    Ok(Node {
        name,
        attrs,
        ..Node::default()
    })
}

/// Parses `xml` into a tree, failing on any well-formedness error (mismatched tags,
/// bad escapes, unclosed elements).
pub fn parse(xml: &str) -> Result<Node, String> {
    let mut reader = Reader::from_str(xml);
    reader.config_mut().check_end_names = true;
    let mut stack = vec![Node {
        name: "#document".into(),
        ..Node::default()
    }];
    loop {
        let event = reader
            .read_event()
            .map_err(|e| format!("at byte {}: {e}", reader.buffer_position()))?;
        match event {
            Event::Start(e) => stack.push(element(&e)?),
            Event::Empty(e) => {
                let node = element(&e)?;
                stack.last_mut().ok_or("no parent")?.children.push(node);
            }
            Event::End(_) => {
                let node = stack.pop().ok_or("unbalanced end tag")?;
                stack
                    .last_mut()
                    .ok_or("end tag closes the document")?
                    .children
                    .push(node);
            }
            Event::Text(t) => {
                let text = t.unescape().map_err(|e| format!("bad text escape: {e}"))?;
                stack.last_mut().ok_or("no parent")?.text.push_str(&text);
            }
            Event::CData(t) => {
                stack
                    .last_mut()
                    .ok_or("no parent")?
                    .text
                    .push_str(&String::from_utf8_lossy(&t));
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if stack.len() != 1 {
        return Err(format!("{} unclosed elements", stack.len() - 1));
    }
    stack.pop().ok_or_else(|| "empty".to_string())
}

/// A report using every chart kind, including empty series, an empty chart, hostile text
/// and a big timeline.
pub fn sample_report() -> Report {
    let ttft: Vec<f64> = (1..=2000).map(|i| (i as f64).sqrt() * 10.0).collect();
    let tail: Vec<f64> = (1..=5000).map(|i| 1e4 / i as f64).collect();
    let tbt: Vec<f64> = (1..=2000).map(|i| 20.0 + (i % 37) as f64).collect();
    let segments: Vec<Segment> = (0..25_000)
        .map(|i| Segment {
            start: i as f64 * 0.01,
            end: i as f64 * 0.01 + 0.009,
            kind: i % 4,
        })
        .collect();
    Report::new("Sample <report> & \"friends\"")
        .subtitle("subtitle with 'quotes' & <tags>")
        .config("cluster policy", "accellm")
        .config("weird <key>", "value & more")
        .table(
            Table::new("Summary", ["policy", "p99 TTFT (ms)", "note"])
                .row(["vllm", "123.4", "<b>not bold</b>"])
                .row(["accellm", "98.7"]),
        )
        .section(
            Section::new("Latency")
                .chart(
                    Cdf::new("TTFT", "TTFT (ms)")
                        .log_x(true)
                        .series("vllm", ttft.clone())
                        .series("accellm", ttft),
                )
                .chart(
                    Cdf::new("TBT", "TBT (ms)")
                        .series("vllm", tbt)
                        .series("empty policy", Vec::new()),
                )
                .chart(Cdf::new("JCT", "JCT (s)"))
                .chart(
                    Cdf::new("TTFT tail", "TTFT (ms)")
                        .log_x(true)
                        .tail(true)
                        .series("vllm", tail)
                        .series("single", vec![5.0]),
                ),
        )
        .section(
            Section::new("Sweep")
                .chart(
                    Lines::new("p99 TTFT vs rate", "rate (req/s)", "p99 TTFT (ms)")
                        .log_y(true)
                        .series("vllm", vec![(1.0, 100.0), (2.0, 150.0), (3.0, 400.0)])
                        .series("one point", vec![(2.5, 120.0)])
                        .series("none", Vec::new()),
                )
                .chart(
                    Lines::new("SLO attainment", "rate (req/s)", "SLO attainment (%)")
                        .y_range(0.0, 100.0)
                        .series(
                            "x&y",
                            vec![(1.0, 100.0), (2.0, 80.0), (3.0, f64::NAN), (4.0, 10.0)],
                        ),
                ),
        )
        .section(
            Section::new("Timelines").chart(
                Timeline::with_standard_kinds("Instances", "time (s)")
                    .lane("instance 0", segments.clone())
                    .lane("instance 1 with a very long name indeed", segments)
                    .lane("instance 2 (idle)", Vec::new())
                    .add_move(Move {
                        from_lane: 0,
                        to_lane: 1,
                        start: 10.0,
                        end: 10.5,
                    })
                    .add_move(Move {
                        from_lane: 0,
                        to_lane: 9,
                        start: 10.0,
                        end: 10.5,
                    }),
            ),
        )
}
