//! Reading hardware profiles (`accellm simulate --hardware-profile FILE`): the TOML file
//! `accellm calibrate --out` writes, or one written by hand from GPU measurements (see
//! docs/simulator.md). Errors name the file, the line and the column.

use std::path::Path;

use accellm_core::profile::{HardwareProfile, ProfileError};

/// Why a profile could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProfileLoadError {
    /// Unreadable file.
    #[error("cannot read hardware profile {path}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Bad TOML, a missing or unknown key, or a value out of range.
    #[error("hardware profile {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, with line and column.
        message: String,
    },
    /// The coefficients are missing and cannot be fitted.
    #[error("hardware profile {path}: {source}")]
    Fit {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: ProfileError,
    },
}

/// Reads and resolves a profile file (coefficients fitted from `[[point]]` rows if absent).
pub fn load(path: &Path) -> Result<HardwareProfile, ProfileLoadError> {
    let bytes = std::fs::read(path).map_err(|source| ProfileLoadError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
        let col = good.len() - good.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1) + 1;
        ProfileLoadError::Invalid {
            path: path.display().to_string(),
            message: format!("line {line}, column {col}: not UTF-8 text (a profile is TOML)"),
        }
    })?;
    parse(&text, &path.display().to_string())
}

/// Parses profile text; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<HardwareProfile, ProfileLoadError> {
    let p: HardwareProfile = toml::from_str(text).map_err(|e| ProfileLoadError::Invalid {
        path: origin.to_string(),
        message: describe(text, &e),
    })?;
    let p = p.resolved().map_err(|source| ProfileLoadError::Fit {
        path: origin.to_string(),
        source,
    })?;
    check_ranges(&p, text).map_err(|message| ProfileLoadError::Invalid {
        path: origin.to_string(),
        message,
    })?;
    Ok(p)
}

/// Largest fixed cost of an iteration a profile may give: an hour, in ms.
pub const MAX_BASE_MS: f64 = 3.6e6;
/// Largest cost per token, context token or logit row (or change of it at a knot): a second,
/// in ms (a 135M model on one CPU core takes about 3 ms a token).
pub const MAX_PER_UNIT_MS: f64 = 1e3;
/// Slowest KV link a profile may give, bytes per second.
pub const MIN_LINK_BYTES_PER_S: f64 = 1e3;
/// Largest KV copy latency, µs (an hour).
pub const MAX_LINK_LATENCY_US: f64 = 3.6e9;

/// Checks that the numbers a simulation multiplies and sums are within what hardware can take:
/// past them a profile is not a measurement, and a simulated clock (µs in a `u64`) overflows.
/// Errors name the line of the key at fault.
fn check_ranges(p: &HardwareProfile, text: &str) -> Result<(), String> {
    let mut checks: Vec<(&str, &str, usize, f64, f64)> = vec![
        ("", "overhead_ms", 0, p.overhead_ms, MAX_BASE_MS),
        (
            "",
            "request_overhead_ms",
            0,
            p.request_overhead_ms,
            MAX_BASE_MS,
        ),
    ];
    if let Some([a, b, c, d]) = p.coefficients() {
        checks.extend([
            ("", "a_ms", 0, a, MAX_BASE_MS),
            ("", "b_ms_per_token", 0, b, MAX_PER_UNIT_MS),
            ("", "c_ms_per_context", 0, c, MAX_PER_UNIT_MS),
            ("", "d_ms_per_logit_row", 0, d, MAX_PER_UNIT_MS),
        ]);
    }
    for (i, k) in p.knots.iter().enumerate() {
        checks.push(("knot", "ms_per_token", i, k.ms_per_token, MAX_PER_UNIT_MS));
    }
    if let Some(w) = &p.wide {
        checks.extend([
            ("wide", "a_ms", 0, w.a_ms, MAX_BASE_MS),
            (
                "wide",
                "b_ms_per_token",
                0,
                w.b_ms_per_token,
                MAX_PER_UNIT_MS,
            ),
            (
                "wide",
                "c_ms_per_context",
                0,
                w.c_ms_per_context,
                MAX_PER_UNIT_MS,
            ),
            (
                "wide",
                "d_ms_per_logit_row",
                0,
                w.d_ms_per_logit_row,
                MAX_PER_UNIT_MS,
            ),
        ]);
        for (i, k) in w.knots.iter().enumerate() {
            checks.push((
                "wide.knot",
                "ms_per_token",
                i,
                k.ms_per_token,
                MAX_PER_UNIT_MS,
            ));
        }
    }
    let at = |section: &str, key: &str, nth: usize| match key_line(text, section, key, nth) {
        Some(l) => format!("line {l}: "),
        None => String::new(),
    };
    for (section, key, nth, v, max) in checks {
        if !(v.is_finite() && v.abs() <= max) {
            let name = if section.is_empty() {
                key.to_string()
            } else {
                format!("{section}.{key}")
            };
            return Err(format!(
                "{}`{name}` = {v} is out of range: at most {max} ms either way",
                at(section, key, nth)
            ));
        }
    }
    let link = &p.kv_copy;
    if link.bytes_per_s < MIN_LINK_BYTES_PER_S {
        return Err(format!(
            "{}`kv_copy.bytes_per_s` = {} is below {MIN_LINK_BYTES_PER_S} bytes/s",
            at("kv_copy", "bytes_per_s", 0),
            link.bytes_per_s
        ));
    }
    if link.latency_us > MAX_LINK_LATENCY_US {
        return Err(format!(
            "{}`kv_copy.latency_us` = {} is above {MAX_LINK_LATENCY_US} µs (an hour)",
            at("kv_copy", "latency_us", 0),
            link.latency_us
        ));
    }
    Ok(())
}

/// The 1-based line of the `nth` `key = ...` in table `section` (`""`: the top level, `knot`
/// for `[[knot]]` entries), if written that way.
fn key_line(text: &str, section: &str, key: &str, nth: usize) -> Option<usize> {
    let mut current = "";
    let mut seen = 0;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            current = t.trim_matches(|c| c == '[' || c == ']').trim();
            continue;
        }
        let is_key = t
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='));
        if current == section && is_key {
            if seen == nth {
                return Some(i + 1);
            }
            seen += 1;
        }
    }
    None
}

/// `line L, column C: message` for a TOML error.
fn describe(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {col}: {}", e.message())
        }
        None => e.message().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use accellm_core::profile::{Geometry, Point};

    fn sample() -> HardwareProfile {
        let points = (0..8)
            .map(|i| Point {
                tokens: 1 + 37 * i,
                sum_context: (500 * i * i + 64) as u64,
                logit_rows: 1 + (i % 3),
                ms: 9.0 + 2.0 * (1 + 37 * i) as f64 + 0.01 * (500 * i * i + 64) as f64,
            })
            .collect();
        let mut p = HardwareProfile::from_points(
            "test machine".into(),
            Geometry {
                layers: 30,
                kv_bytes_per_token: 46_080,
                context_length: 8192,
            },
            points,
            &[],
        )
        .unwrap();
        p.overhead_ms = 0.5;
        p.kv_copy.bytes_per_s = 3.5e9;
        p
    }

    #[test]
    fn profile_round_trips_through_toml() {
        let p = sample();
        let text = toml::to_string(&p).unwrap();
        let back = parse(&text, "mem").unwrap();
        assert_eq!(back, p);
        assert_eq!(back.cost_model().unwrap(), p.cost_model().unwrap());
        assert!(
            text.contains("[[point]]") && text.contains("[geometry]"),
            "{text}"
        );
    }

    #[test]
    fn points_alone_are_fitted() {
        let mut p = sample();
        p.a_ms = None;
        p.c_ms_per_context = None;
        let back = parse(&toml::to_string(&p).unwrap(), "mem").unwrap();
        let [a, b, c, _] = back.coefficients().unwrap();
        assert!((a - 9.0).abs() < 1e-6 && (b - 2.0).abs() < 1e-6 && (c - 0.01).abs() < 1e-9);
    }

    #[test]
    fn bad_files_name_the_line() {
        let geometry =
            "[geometry]\nlayers = 30\nkv_bytes_per_token = 46080\ncontext_length = 8192\n";
        let e = parse(
            &format!("a_ms = 1.0\n{geometry}[kv_copy]\nbytes_per_s = -3.0\n"),
            "f.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("f.toml") && e.contains("line 7") && e.contains("positive"),
            "{e}"
        );
        let e = parse(&format!("a_mss = 1.0\n{geometry}"), "f.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1") && e.contains("a_mss"), "{e}");
        let e = parse("a_ms = 1.0\n", "f.toml").unwrap_err().to_string();
        assert!(e.contains("geometry"), "{e}");
        let e = parse(geometry, "f.toml").unwrap_err().to_string();
        assert!(e.contains("[[point]]"), "{e}");
        let e = parse(
            &format!("{geometry}[[point]]\ntokens = 1\nsum_context = 1\nlogit_rows = 1\nms = 0\n"),
            "f.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 9"), "{e}");
    }

    #[test]
    fn coefficients_past_what_hardware_takes_name_the_line() {
        let geometry = "[geometry]\nlayers = 1\nkv_bytes_per_token = 1\ncontext_length = 1\n";
        let coefs = "b_ms_per_token = 0\nc_ms_per_context = 0\nd_ms_per_logit_row = 0\n";
        // a_ms = 1e300 overflowed the simulated clock (a panic in a debug build).
        for (a, ok) in [
            ("1e300", false),
            ("nan", false),
            ("-inf", false),
            ("3.0", true),
        ] {
            let text = format!("name = \"x\"\na_ms = {a}\n{coefs}{geometry}");
            match parse(&text, "f.toml") {
                Ok(_) => assert!(ok, "{a} accepted"),
                Err(e) => {
                    let e = e.to_string();
                    assert!(!ok && e.contains("line 2"), "{e}");
                }
            }
        }
        let text = format!(
            "a_ms = 1\n{coefs}{geometry}\n[[knot]]\ntokens = 8\nms_per_token = 1\n\n[[knot]]\ntokens = 16\nms_per_token = 5e3\n"
        );
        let e = parse(&text, "f.toml").unwrap_err().to_string();
        assert!(
            e.contains("line 16") && e.contains("knot.ms_per_token"),
            "{e}"
        );
        let text = format!("a_ms = 1\n{coefs}{geometry}[kv_copy]\nbytes_per_s = 1e-3\n");
        let e = parse(&text, "f.toml").unwrap_err().to_string();
        assert!(e.contains("line 10") && e.contains("bytes_per_s"), "{e}");
    }
}
