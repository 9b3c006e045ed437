//! The HTML page around the charts: header, configuration, summary tables, sections.

use std::fmt::Write as _;

use crate::chart;
use crate::escape::push_escaped;
use crate::model::{Report, Table};

/// The page's whole stylesheet. It contains no `<` or `&`, so the page stays well-formed XML.
const STYLE: &str = r#"
:root { color-scheme: light; }
body { margin: 0; padding: 20px 24px 40px; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: #1d1d1f; background: #fafafa; }
main { max-width: 1320px; margin: 0 auto; }
h1 { font-size: 24px; margin: 0 0 2px; }
h2 { font-size: 18px; margin: 28px 0 10px; padding-bottom: 4px; border-bottom: 1px solid #ddd; }
h3 { font-size: 15px; margin: 16px 0 6px; }
.subtitle { color: #555; margin: 0 0 8px; }
nav { font-size: 13px; color: #555; margin: 6px 0 0; }
nav a { color: #0b5cad; margin-right: 14px; text-decoration: none; }
table { border-collapse: collapse; background: #fff; margin: 4px 0 12px; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #e0e0e0; padding: 3px 8px; text-align: left; vertical-align: top; }
td { white-space: nowrap; }
th { background: #f0f2f5; font-weight: 600; }
td.num { text-align: right; }
table.config th { background: #f6f6f6; font-weight: 500; color: #444; }
.tables { overflow-x: auto; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 16px; }
figure { margin: 0; background: #fff; border: 1px solid #e3e3e3; border-radius: 6px; padding: 6px; }
figure.wide { grid-column: 1 / -1; }
svg.chart { display: block; width: 100%; height: auto; }
svg.chart text { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; font-size: 12px; fill: #222; }
svg.chart text.title { font-size: 15px; font-weight: 600; }
svg.chart text.label { font-size: 12.5px; fill: #333; }
svg.chart text.tick { font-size: 11px; fill: #555; }
svg.chart text.nodata { font-size: 16px; fill: #888; font-style: italic; }
svg.chart text.guide-label { font-size: 10px; fill: #777; }
svg.chart text.lane-label { font-size: 12px; }
svg.chart .grid { stroke: #e6e6e6; stroke-width: 1; }
svg.chart .grid.minor { stroke: #f3f3f3; }
svg.chart .frame { fill: none; stroke: #888; stroke-width: 1; }
svg.chart .guide { stroke: #999; stroke-width: 0.8; stroke-dasharray: 3 3; }
svg.chart path.series { fill: none; stroke-width: 2; stroke-linejoin: round; stroke-linecap: round; }
svg.chart .move { stroke: #222; stroke-opacity: 0.55; stroke-width: 1; }
svg.chart .move-head { fill: #222; fill-opacity: 0.7; }
footer { margin-top: 32px; color: #777; font-size: 12px; }
"#;

/// Renders a whole report page.
pub(crate) fn render(r: &Report) -> String {
    let mut out = String::with_capacity(64 * 1024);
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/>");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/>");
    out.push_str("<meta name=\"generator\" content=\"accellm-report\"/><title>");
    push_escaped(&mut out, &r.title);
    out.push_str("</title><style>");
    out.push_str(STYLE);
    out.push_str("</style></head>\n<body><main>\n<header><h1>");
    push_escaped(&mut out, &r.title);
    out.push_str("</h1>");
    if !r.subtitle.is_empty() {
        out.push_str("<p class=\"subtitle\">");
        push_escaped(&mut out, &r.subtitle);
        out.push_str("</p>");
    }
    if !r.sections.is_empty() {
        out.push_str("<nav>");
        for (i, s) in r.sections.iter().enumerate() {
            let _ = write!(out, "<a href=\"#section-{}\">", i + 1);
            push_escaped(&mut out, &s.title);
            out.push_str("</a>");
        }
        out.push_str("</nav>");
    }
    out.push_str("</header>\n");

    if !r.config.is_empty() {
        out.push_str("<section id=\"configuration\"><h2>Configuration</h2><div class=\"tables\"><table class=\"config\"><tbody>");
        for (k, v) in &r.config {
            out.push_str("<tr><th scope=\"row\">");
            push_escaped(&mut out, k);
            out.push_str("</th><td>");
            push_escaped(&mut out, v);
            out.push_str("</td></tr>");
        }
        out.push_str("</tbody></table></div></section>\n");
    }

    if !r.tables.is_empty() {
        out.push_str("<section id=\"summary\"><h2>Summary</h2><div class=\"tables\">");
        for t in &r.tables {
            table(&mut out, t);
        }
        out.push_str("</div></section>\n");
    }

    let mut chart_no = 0;
    for (i, s) in r.sections.iter().enumerate() {
        let _ = write!(out, "<section id=\"section-{}\"><h2>", i + 1);
        push_escaped(&mut out, &s.title);
        out.push_str("</h2><div class=\"grid\">\n");
        for c in &s.charts {
            chart_no += 1;
            let class = if chart::is_wide(c) {
                " class=\"wide\""
            } else {
                ""
            };
            let _ = write!(out, "<figure{class}>");
            out.push_str(&chart::render(c, &format!("chart-{chart_no}")));
            out.push_str("</figure>\n");
        }
        out.push_str("</div></section>\n");
    }
    out.push_str(
        "<footer>Generated by accellm-report. This file is self-contained: no scripts, \
         no network access, no external fonts.</footer>\n</main></body></html>\n",
    );
    out
}

/// Renders one summary table; numeric-looking cells are right-aligned.
fn table(out: &mut String, t: &Table) {
    // A title repeating the section heading ("Summary") adds nothing.
    if !t.title.is_empty() && !t.title.eq_ignore_ascii_case("summary") {
        out.push_str("<h3>");
        push_escaped(out, &t.title);
        out.push_str("</h3>");
    }
    out.push_str("<table>");
    if !t.columns.is_empty() {
        out.push_str("<thead><tr>");
        for c in &t.columns {
            out.push_str("<th scope=\"col\">");
            push_escaped(out, c);
            out.push_str("</th>");
        }
        out.push_str("</tr></thead>");
    }
    out.push_str("<tbody>");
    let width = t
        .rows
        .iter()
        .map(Vec::len)
        .max()
        .unwrap_or(0)
        .max(t.columns.len());
    for row in &t.rows {
        out.push_str("<tr>");
        for i in 0..width {
            let cell = row.get(i).map(String::as_str).unwrap_or("");
            out.push_str(if looks_numeric(cell) {
                "<td class=\"num\">"
            } else {
                "<td>"
            });
            push_escaped(out, cell);
            out.push_str("</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
}

/// Whether a cell starts like a number (`12`, `-3.5 ms`, `.5`, `99%`).
fn looks_numeric(cell: &str) -> bool {
    let s = cell.trim_start().trim_start_matches(['-', '+', '.']);
    s.starts_with(|c: char| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_cells_are_detected() {
        assert!(looks_numeric("12.5"));
        assert!(looks_numeric("-3 ms"));
        assert!(looks_numeric("99%"));
        assert!(looks_numeric(".5"));
        assert!(!looks_numeric("vllm"));
        assert!(!looks_numeric(""));
        assert!(!looks_numeric("n/a"));
    }

    #[test]
    fn stylesheet_is_xml_safe() {
        assert!(!STYLE.contains('<') && !STYLE.contains('&'));
    }
}
