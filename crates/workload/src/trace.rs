//! Trace files: CSV (Azure 2023/2024, length datasets, Splitwise/Vidur/BurstGPT columns) and
//! Mooncake-style JSONL, loaded into rows of (arrival, prompt tokens, output tokens).
//!
//! ## CSV
//! The first line is a header; columns are found by name (case-insensitive), extra columns are
//! ignored. Fields are plain numbers or timestamps (no quoting).
//! - arrival (optional): `TIMESTAMP`/`Timestamp` — a date-time `YYYY-MM-DD HH:MM:SS[.f][+HH:MM|Z]`
//!   or a number of seconds —, or `arrival_timestamp`, `arrived_at`, `arrival_s`, `arrival_time`
//!   in seconds.
//! - prompt tokens: `ContextTokens`, `num_prefill_tokens`, `prompt_size`, `input_length`,
//!   `prompt_tokens`, `input_tokens` or `Request tokens`.
//! - output tokens: `GeneratedTokens`, `num_decode_tokens`, `token_size`, `output_length`,
//!   `output_tokens` or `Response tokens`.
//! - SLO columns (optional, used by [`crate::SloPolicy::FromFile`]): `ttft_slo_ms`,
//!   `tbt_slo_ms` (or `tpot_slo_ms`), `priority`; an empty field means "none".
//!
//! ## JSONL (Mooncake)
//! One object per line: `{"timestamp": ms, "input_length": n, "output_length": n,
//! "hash_ids": [...]}`. `timestamp` is optional (all lines or none). `hash_ids` (optional) names
//! the prompt's 512-token blocks: equal ids are equal content, so requests sharing leading ids
//! share a prefix ([`crate::prefix::mooncake_segments`]). The optional fields `ttft_slo_ms`,
//! `tbt_slo_ms` and `priority` are read like the CSV columns.
//!
//! Arrival times are made relative to the earliest row; rows are sorted by arrival (stable).

use std::path::{Path, PathBuf};

use crate::WorkloadError;

/// One request of a trace file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceRow {
    /// Seconds since the first row's arrival; `0.0` in untimed files.
    pub arrival_s: f64,
    /// Prompt (input) tokens.
    pub prompt_tokens: u32,
    /// Output (generated) tokens.
    pub output_tokens: u32,
    /// Per-row TTFT SLO, if the file has that column.
    pub ttft_slo_ms: Option<f64>,
    /// Per-row TBT SLO, if the file has that column.
    pub tbt_slo_ms: Option<f64>,
    /// Per-row priority, if the file has that column.
    pub priority: Option<i32>,
}

/// A loaded trace file.
#[derive(Debug, Clone)]
pub struct TraceFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Whether rows carry arrival times.
    pub timed: bool,
    /// The rows, sorted by arrival.
    pub rows: Vec<TraceRow>,
    /// Each row's Mooncake `hash_ids` (parallel to `rows`), or empty when no row has any.
    pub hash_ids: Vec<Vec<u64>>,
}

impl TraceFile {
    /// Reads a trace; the format is chosen by extension (`.jsonl`/`.json` → JSONL, anything
    /// else → CSV with a header).
    pub fn load(path: &Path) -> Result<Self, WorkloadError> {
        let bytes = std::fs::read(path).map_err(|source| WorkloadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
            let column =
                good.len() - good.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1) + 1;
            parse_err(
                path,
                line,
                format!("not UTF-8 text (byte {column} of the line); traces are CSV or JSONL text"),
            )
        })?;
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        if ext == "jsonl" || ext == "json" {
            parse_jsonl(path, &text)
        } else {
            parse_csv(path, &text)
        }
    }

    /// Mean arrival rate over the file, `(n - 1) / (last - first)`, for timed files.
    pub fn mean_rate(&self) -> Option<f64> {
        if !self.timed || self.rows.len() < 2 {
            return None;
        }
        let span = self.rows[self.rows.len() - 1].arrival_s - self.rows[0].arrival_s;
        (span > 0.0).then(|| (self.rows.len() - 1) as f64 / span)
    }
}

fn parse_err(path: &Path, line: usize, message: impl Into<String>) -> WorkloadError {
    WorkloadError::Parse {
        path: path.to_path_buf(),
        line,
        message: message.into(),
    }
}

/// Non-empty lines with their 1-based numbers, without trailing `\r`.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
        .filter(|(_, l)| !l.trim().is_empty())
}

/// How the arrival column is written.
#[derive(Clone, Copy)]
enum TimeColumn {
    /// Date-time or seconds (`TIMESTAMP`).
    Timestamp(usize),
    /// Seconds.
    Seconds(usize),
}

struct Columns {
    time: Option<TimeColumn>,
    prompt: usize,
    output: usize,
    ttft: Option<usize>,
    tbt: Option<usize>,
    priority: Option<usize>,
    names: Vec<String>,
}

fn find(header: &[String], names: &[&str]) -> Option<usize> {
    header
        .iter()
        .position(|h| names.iter().any(|n| h.eq_ignore_ascii_case(n)))
}

fn columns(path: &Path, header_line: &str) -> Result<Columns, WorkloadError> {
    let header: Vec<String> = header_line
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    let prompt = find(
        &header,
        &[
            "ContextTokens",
            "num_prefill_tokens",
            "prompt_size",
            "input_length",
            "prompt_tokens",
            "input_tokens",
            "Request tokens",
        ],
    )
    .ok_or_else(|| parse_err(path, 1, format!("missing prompt-length column (e.g. ContextTokens, num_prefill_tokens) in header `{header_line}`")))?;
    let output = find(
        &header,
        &[
            "GeneratedTokens",
            "num_decode_tokens",
            "token_size",
            "output_length",
            "output_tokens",
            "Response tokens",
        ],
    )
    .ok_or_else(|| parse_err(path, 1, format!("missing output-length column (e.g. GeneratedTokens, num_decode_tokens) in header `{header_line}`")))?;
    let time = find(&header, &["TIMESTAMP"])
        .map(TimeColumn::Timestamp)
        .or_else(|| {
            find(
                &header,
                &[
                    "arrival_timestamp",
                    "arrived_at",
                    "arrival_s",
                    "arrival_time",
                ],
            )
            .map(TimeColumn::Seconds)
        });
    Ok(Columns {
        time,
        prompt,
        output,
        ttft: find(&header, &["ttft_slo_ms"]),
        tbt: find(&header, &["tbt_slo_ms", "tpot_slo_ms"]),
        priority: find(&header, &["priority"]),
        names: header,
    })
}

fn parse_tokens(path: &Path, line: usize, col: &str, s: &str) -> Result<u32, WorkloadError> {
    let s = s.trim();
    // Some exports write integral counts as floats ("12.0").
    let v: f64 = s
        .parse::<u64>()
        .map(|v| v as f64)
        .or_else(|_| s.parse::<f64>())
        .map_err(|_| parse_err(path, line, format!("bad number `{s}` in column {col}")))?;
    if !(0.0..=u32::MAX as f64).contains(&v) || v.fract() != 0.0 {
        return Err(parse_err(
            path,
            line,
            format!("bad token count `{s}` in column {col}"),
        ));
    }
    Ok(v as u32)
}

fn parse_opt_f64(
    path: &Path,
    line: usize,
    col: &str,
    s: &str,
) -> Result<Option<f64>, WorkloadError> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .map(Some)
        .ok_or_else(|| parse_err(path, line, format!("bad number `{s}` in column {col}")))
}

/// Seconds since 1970-01-01 as (whole seconds, fraction) so that differences keep sub-µs
/// precision.
type Instant = (i64, f64);

fn parse_csv(path: &Path, text: &str) -> Result<TraceFile, WorkloadError> {
    let mut it = lines(text);
    let Some((header_no, header)) = it.next() else {
        return Err(parse_err(path, 1, "empty file: expected a CSV header"));
    };
    if header_no != 1 {
        return Err(parse_err(
            path,
            1,
            "empty first line: expected a CSV header",
        ));
    }
    let cols = columns(path, header)?;
    let needed = [
        Some(cols.prompt),
        Some(cols.output),
        cols.time.map(|t| match t {
            TimeColumn::Timestamp(i) | TimeColumn::Seconds(i) => i,
        }),
        cols.ttft,
        cols.tbt,
        cols.priority,
    ];
    let width = needed.iter().flatten().copied().max().unwrap_or(0) + 1;
    let mut fields: Vec<&str> = Vec::with_capacity(cols.names.len());
    let mut times: Vec<Instant> = Vec::new();
    let mut rows = Vec::new();
    for (no, line) in it {
        fields.clear();
        fields.extend(line.split(','));
        if fields.len() < width {
            let missing = &cols.names[fields.len()..width];
            return Err(parse_err(
                path,
                no,
                format!(
                    "expected at least {width} fields, found {}: missing column {}",
                    fields.len(),
                    missing.join(", ")
                ),
            ));
        }
        let prompt_tokens = parse_tokens(path, no, &cols.names[cols.prompt], fields[cols.prompt])?;
        let output_tokens = parse_tokens(path, no, &cols.names[cols.output], fields[cols.output])?;
        if let Some(tc) = cols.time {
            let t = match tc {
                TimeColumn::Timestamp(i) => parse_timestamp(fields[i].trim())
                    .map_err(|m| parse_err(path, no, format!("{m} in column {}", cols.names[i])))?,
                TimeColumn::Seconds(i) => {
                    let s = fields[i].trim();
                    seconds(s).ok_or_else(|| {
                        parse_err(
                            path,
                            no,
                            format!("bad time `{s}` in column {}", cols.names[i]),
                        )
                    })?
                }
            };
            times.push(t);
        }
        let opt = |c: Option<usize>| -> Result<Option<f64>, WorkloadError> {
            match c {
                Some(i) => parse_opt_f64(path, no, &cols.names[i], fields[i]),
                None => Ok(None),
            }
        };
        let priority = match opt(cols.priority)? {
            Some(p) if p.fract() == 0.0 && p.abs() <= i32::MAX as f64 => Some(p as i32),
            Some(_) => {
                return Err(parse_err(path, no, "priority must be an integer"));
            }
            None => None,
        };
        rows.push(TraceRow {
            arrival_s: 0.0,
            prompt_tokens,
            output_tokens,
            ttft_slo_ms: opt(cols.ttft)?,
            tbt_slo_ms: opt(cols.tbt)?,
            priority,
        });
    }
    Ok(finish(
        path,
        rows,
        cols.time.is_some().then_some(times),
        Vec::new(),
    ))
}

fn seconds(s: &str) -> Option<Instant> {
    let v: f64 = s.parse().ok().filter(|v: &f64| v.is_finite())?;
    let whole = v.floor();
    Some((whole as i64, v - whole))
}

/// Makes times relative to the earliest and sorts rows (and their hash ids) by arrival.
fn finish(
    path: &Path,
    mut rows: Vec<TraceRow>,
    times: Option<Vec<Instant>>,
    mut hash_ids: Vec<Vec<u64>>,
) -> TraceFile {
    let timed = times.is_some();
    if hash_ids.iter().all(Vec::is_empty) {
        hash_ids.clear();
    }
    if let Some(times) = times {
        if let Some(&t0) = times
            .iter()
            .min_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)))
        {
            for (row, t) in rows.iter_mut().zip(&times) {
                row.arrival_s = (t.0 - t0.0) as f64 + (t.1 - t0.1);
            }
        }
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by(|&a, &b| rows[a].arrival_s.total_cmp(&rows[b].arrival_s));
        rows = order.iter().map(|&i| rows[i]).collect();
        if !hash_ids.is_empty() {
            hash_ids = order
                .iter()
                .map(|&i| std::mem::take(&mut hash_ids[i]))
                .collect();
        }
    }
    TraceFile {
        path: path.to_path_buf(),
        timed,
        rows,
        hash_ids,
    }
}

/// Parses `YYYY-MM-DD[ T]HH:MM:SS[.fraction][Z|±HH:MM]`, or plain seconds.
pub(crate) fn parse_timestamp(s: &str) -> Result<Instant, String> {
    let bad = || format!("bad timestamp `{s}`");
    if !s.contains(':') {
        return seconds(s).ok_or_else(bad);
    }
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !(b[10] == b' ' || b[10] == b'T') {
        return Err(bad());
    }
    if b[13] != b':' || b[16] != b':' {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        let part = &s[r];
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse::<i64>().map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return Err(bad());
    }
    let mut rest = &s[19..];
    let mut frac = 0.0;
    if let Some(r) = rest.strip_prefix('.') {
        let digits = r.bytes().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err(bad());
        }
        frac = format!("0.{}", &r[..digits]).parse().map_err(|_| bad())?;
        rest = &r[digits..];
    }
    let offset_s = match rest {
        "" | "Z" => 0,
        _ => {
            let rb = rest.as_bytes();
            if rb.len() != 6 || !(rb[0] == b'+' || rb[0] == b'-') || rb[3] != b':' {
                return Err(bad());
            }
            let h: i64 = rest[1..3].parse().map_err(|_| bad())?;
            let m: i64 = rest[4..6].parse().map_err(|_| bad())?;
            let sign = if rb[0] == b'-' { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
    };
    let days = days_from_civil(year, month, day);
    Ok((
        days * 86_400 + hour * 3600 + min * 60 + sec - offset_s,
        frac,
    ))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[derive(serde::Deserialize)]
struct JsonLine {
    timestamp: Option<f64>,
    input_length: u32,
    output_length: u32,
    #[serde(default)]
    hash_ids: Vec<u64>,
    ttft_slo_ms: Option<f64>,
    #[serde(alias = "tpot_slo_ms")]
    tbt_slo_ms: Option<f64>,
    priority: Option<i32>,
}

fn parse_jsonl(path: &Path, text: &str) -> Result<TraceFile, WorkloadError> {
    let mut rows = Vec::new();
    let mut hash_ids = Vec::new();
    let mut times: Vec<Instant> = Vec::new();
    let mut timed: Option<bool> = None;
    for (no, line) in lines(text) {
        let j: JsonLine = serde_json::from_str(line)
            .map_err(|e| parse_err(path, no, format!("bad JSON line: {e}")))?;
        match (timed, j.timestamp) {
            (None, ts) => timed = Some(ts.is_some()),
            (Some(true), None) => {
                return Err(parse_err(
                    path,
                    no,
                    "missing `timestamp` (earlier lines have one)",
                ))
            }
            (Some(false), Some(_)) => {
                return Err(parse_err(
                    path,
                    no,
                    "unexpected `timestamp` (earlier lines have none)",
                ))
            }
            _ => {}
        }
        if let Some(ms) = j.timestamp {
            if !ms.is_finite() {
                return Err(parse_err(path, no, "bad timestamp"));
            }
            let s = ms / 1000.0;
            let whole = s.floor();
            times.push((whole as i64, s - whole));
        }
        rows.push(TraceRow {
            arrival_s: 0.0,
            prompt_tokens: j.input_length,
            output_tokens: j.output_length,
            ttft_slo_ms: j.ttft_slo_ms,
            tbt_slo_ms: j.tbt_slo_ms,
            priority: j.priority,
        });
        hash_ids.push(j.hash_ids);
    }
    Ok(finish(
        path,
        rows,
        (timed == Some(true)).then_some(times),
        hash_ids,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(text: &str) -> Result<TraceFile, WorkloadError> {
        parse_csv(Path::new("t.csv"), text)
    }

    fn line_of(e: WorkloadError) -> (usize, String) {
        match e {
            WorkloadError::Parse { line, message, .. } => (line, message),
            other => panic!("expected a parse error, got {other}"),
        }
    }

    #[test]
    fn azure_rows_are_relative_to_first() {
        let t = csv("TIMESTAMP,ContextTokens,GeneratedTokens\n\
                     2023-11-16 18:17:03.9799600,4808,10\n\
                     2023-11-16 18:17:04.0319600,3180,8\r\n\
                     2023-11-16 18:18:04.0319600,7,1")
        .unwrap();
        assert!(t.timed);
        assert_eq!(t.rows.len(), 3);
        assert_eq!(t.rows[0].prompt_tokens, 4808);
        assert_eq!(t.rows[0].output_tokens, 10);
        assert!((t.rows[1].arrival_s - 0.052).abs() < 1e-9);
        assert!((t.rows[2].arrival_s - 60.052).abs() < 1e-9);
    }

    #[test]
    fn timestamps_with_zone_and_across_midnight() {
        let a = parse_timestamp("2024-05-10 23:59:59.5+00:00").unwrap();
        let b = parse_timestamp("2024-05-11T00:00:00.25Z").unwrap();
        assert!(((b.0 - a.0) as f64 + (b.1 - a.1) - 0.75).abs() < 1e-12);
        let c = parse_timestamp("2024-05-11 02:00:00.25+02:00").unwrap();
        assert_eq!(b, c);
        assert_eq!(parse_timestamp("1970-01-01 00:00:00").unwrap(), (0, 0.0));
        assert_eq!(parse_timestamp("12.5").unwrap(), (12, 0.5));
    }

    #[test]
    fn a_file_that_is_not_text_names_the_line() {
        let dir = std::env::temp_dir().join(format!("accellm-trace-utf8-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.csv");
        std::fs::write(&path, b"ContextTokens,GeneratedTokens\n1,2\n3,\xff4\n").unwrap();
        let e = TraceFile::load(&path).unwrap_err();
        let _ = std::fs::remove_dir_all(&dir);
        let (line, msg) = line_of(e);
        assert_eq!(line, 3);
        assert!(msg.contains("UTF-8") && msg.contains("byte 3"), "{msg}");
    }

    #[test]
    fn bad_timestamp_names_line() {
        let e = csv("TIMESTAMP,ContextTokens,GeneratedTokens\n\
                     2023-11-16 18:17:03.97,1,1\n\
                     2023-11-16 18:17:0x.97,1,1\n")
        .unwrap_err();
        let (line, msg) = line_of(e);
        assert_eq!(line, 3);
        assert!(msg.contains("bad timestamp"), "{msg}");
        for bad in [
            "2023-13-16 18:17:03",
            "2023-11-16 25:17:03",
            "2023-11-16 18:17",
            "x:y",
        ] {
            assert!(parse_timestamp(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_number_names_line_and_column() {
        let e = csv(
            "num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio\n\
                     10,20,30,0.5\n\n\
                     10,abc,30,0.5\n",
        )
        .unwrap_err();
        let (line, msg) = line_of(e);
        assert_eq!(line, 4, "blank lines still count");
        assert!(
            msg.contains("abc") && msg.contains("num_decode_tokens"),
            "{msg}"
        );
        let (line, _) = line_of(csv("ContextTokens,GeneratedTokens\n1,-2\n").unwrap_err());
        assert_eq!(line, 2);
    }

    #[test]
    fn missing_column_in_row_and_header() {
        let (line, msg) = line_of(
            csv("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03,5\n").unwrap_err(),
        );
        assert_eq!(line, 2);
        assert!(msg.contains("GeneratedTokens"), "{msg}");
        let (line, msg) =
            line_of(csv("TIMESTAMP,ContextTokens\n2023-11-16 18:17:03,5\n").unwrap_err());
        assert_eq!(line, 1);
        assert!(msg.contains("output-length"), "{msg}");
        assert!(csv("").is_err());
    }

    #[test]
    fn lengths_dataset_is_untimed_and_keeps_order() {
        let t = csv(
            "num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio\n\
                     74,918,992,0.08\n290,905,1195,0.32\n",
        )
        .unwrap();
        assert!(!t.timed);
        assert_eq!(
            t.rows
                .iter()
                .map(|r| (r.prompt_tokens, r.output_tokens))
                .collect::<Vec<_>>(),
            vec![(74, 918), (290, 905)]
        );
    }

    #[test]
    fn splitwise_columns_and_slo_columns() {
        let t = csv(
            "request_id,arrival_timestamp,prompt_size,token_size,ttft_slo_ms,tbt_slo_ms,priority\n\
                     0,4.0,100,10,,,\n1,1.0,200,20,500,50,2\n",
        )
        .unwrap();
        assert!(t.timed);
        assert_eq!(t.rows[0].prompt_tokens, 200, "sorted by arrival");
        assert_eq!(t.rows[0].ttft_slo_ms, Some(500.0));
        assert_eq!(t.rows[0].tbt_slo_ms, Some(50.0));
        assert_eq!(t.rows[0].priority, Some(2));
        assert_eq!(t.rows[1].arrival_s, 3.0);
        assert_eq!(t.rows[1].ttft_slo_ms, None);
    }

    #[test]
    fn mooncake_jsonl() {
        let p = Path::new("m.jsonl");
        let t = parse_jsonl(
            p,
            "{\"timestamp\": 1000, \"input_length\": 6955, \"output_length\": 52, \"hash_ids\": [0, 1, 2]}\n\
             {\"timestamp\": 3500, \"input_length\": 10, \"output_length\": 5, \"hash_ids\": []}\n",
        )
        .unwrap();
        assert!(t.timed);
        assert_eq!(t.rows[1].arrival_s, 2.5);
        assert_eq!(t.rows[0].prompt_tokens, 6955);
        let e = parse_jsonl(
            p,
            "{\"timestamp\": 0, \"input_length\": 1, \"output_length\": 1}\n\
             {\"timestamp\": 1, \"input_length\": 1}\n",
        )
        .unwrap_err();
        assert_eq!(line_of(e).0, 2);
        let e =
            parse_jsonl(p, "{\"input_length\": 1, \"output_length\": 1}\n\n{oops\n").unwrap_err();
        assert_eq!(line_of(e).0, 3);
    }

    #[test]
    fn missing_file_names_it() {
        let e = TraceFile::load(Path::new("/no/such/trace.csv")).unwrap_err();
        assert!(e.to_string().contains("/no/such/trace.csv"), "{e}");
    }
}
