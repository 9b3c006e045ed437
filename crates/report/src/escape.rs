//! XML/HTML text escaping and compact number formatting for SVG output.

use std::fmt::Write as _;

/// Escapes `s` for use as XML/HTML text or inside a double-quoted attribute.
///
/// Control characters that XML 1.0 forbids are dropped, so any input string
/// yields a well-formed document.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    push_escaped(&mut out, s);
    out
}

/// Appends `s` to `out`, escaped as by [`escape`].
pub(crate) fn push_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
}

/// Writes a pixel coordinate with one decimal and no trailing `.0`.
pub(crate) fn px(out: &mut String, v: f64) {
    let r = (v * 10.0).round() / 10.0;
    if r == r.trunc() {
        let _ = write!(out, "{}", r as i64);
    } else {
        let _ = write!(out, "{r:.1}");
    }
}

/// Formats a pixel coordinate (see [`px`]) into a new string.
pub(crate) fn fmt_px(v: f64) -> String {
    let mut s = String::new();
    px(&mut s, v);
    s
}

/// Formats a data value for a tick label or legend: short, no float noise,
/// SI suffixes (k, M, G) for large magnitudes and exponents for tiny ones.
pub fn format_value(v: f64) -> String {
    if !v.is_finite() {
        return if v.is_nan() {
            "NaN".into()
        } else if v > 0.0 {
            "∞".into()
        } else {
            "-∞".into()
        };
    }
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if a >= 1e12 {
        return format!("{v:.1e}").replace(".0e", "e");
    }
    let (scaled, suffix) = if a >= 1e9 {
        (v / 1e9, "G")
    } else if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e4 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    if suffix.is_empty() && a < 1e-3 {
        let s = format!("{v:.1e}");
        return s.replace(".0e", "e");
    }
    // Three significant digits, trailing zeros trimmed.
    let sa = scaled.abs();
    let decimals = if sa >= 100.0 {
        0
    } else if sa >= 10.0 {
        1
    } else if sa >= 1.0 {
        2
    } else {
        // 0.001 <= sa < 1: keep three significant digits.
        (-(sa.log10().floor()) as usize + 2).min(6)
    };
    let mut s = format!("{scaled:.decimals$}");
    if s.contains('.') {
        while s.ends_with('0') {
            s.pop();
        }
        if s.ends_with('.') {
            s.pop();
        }
    }
    if s == "-0" {
        s = "0".into();
    }
    s.push_str(suffix);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            escape(r#"<a href="x">Tom & 'Jerry'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn escape_drops_forbidden_control_characters() {
        assert_eq!(escape("a\u{0}b\u{1b}c\nd"), "abc\nd");
    }

    #[test]
    fn escape_keeps_unicode() {
        assert_eq!(escape("µs → p99"), "µs → p99");
    }

    #[test]
    fn pixel_coordinates_are_compact() {
        assert_eq!(fmt_px(12.0), "12");
        assert_eq!(fmt_px(12.04), "12");
        assert_eq!(fmt_px(12.06), "12.1");
        assert_eq!(fmt_px(-3.24), "-3.2");
    }

    #[test]
    fn values_are_short_and_exact_enough() {
        assert_eq!(format_value(0.0), "0");
        assert_eq!(format_value(0.1 + 0.2), "0.3");
        assert_eq!(format_value(2.5), "2.5");
        assert_eq!(format_value(12.26), "12.3");
        assert_eq!(format_value(150.0), "150");
        assert_eq!(format_value(2000.0), "2000");
        assert_eq!(format_value(20000.0), "20k");
        assert_eq!(format_value(1_500_000.0), "1.5M");
        assert_eq!(format_value(0.0123), "0.0123");
        assert_eq!(format_value(0.00002), "2e-5");
        assert_eq!(format_value(-40.0), "-40");
        assert_eq!(format_value(3e15), "3e15");
        assert_eq!(format_value(2.5e9), "2.5G");
    }
}
