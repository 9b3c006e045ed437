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
    let text = std::fs::read_to_string(path).map_err(|source| ProfileLoadError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// Parses profile text; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<HardwareProfile, ProfileLoadError> {
    let p: HardwareProfile = toml::from_str(text).map_err(|e| ProfileLoadError::Invalid {
        path: origin.to_string(),
        message: describe(text, &e),
    })?;
    p.resolved().map_err(|source| ProfileLoadError::Fit {
        path: origin.to_string(),
        source,
    })
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
}
