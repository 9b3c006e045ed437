//! Property-based fuzzing of the files `simulate` and `bench` read: trace files (CSV and
//! Mooncake JSONL), workload specs (TOML, and the short source strings), hardware profiles and
//! simulator configs. Each input is generated valid and then, mostly, damaged (lines dropped,
//! repeated, swapped, cut; fields replaced by junk; bytes flipped; not UTF-8), or arbitrary.
//! Whatever the input: no panic; an error names the line (a trace's `path:line:`, TOML's
//! `line L, column C`); what loads also generates a workload and simulates a few requests
//! without panicking.
//!
//! CI runs [`CI_CASES`] cases per input kind with the seed `.ci/run` exports;
//! `PROPTEST_CASES=N` runs N per kind (the long run in `docs/simulator.md`).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use accellm_sim::{cli, config::SimConfig, profile, runner};
use accellm_workload::{TraceFile, WorkloadError, WorkloadSource, WorkloadSpec};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Cases per input kind when `PROPTEST_CASES` is not set (what CI runs).
const CI_CASES: u32 = 150;

/// The profile `accellm calibrate` wrote for the engine's built-in model: a valid file to damage.
const REFERENCE_PROFILE: &str = include_str!("../../engine/calibration/reference-blocks.toml");

/// A simulator config from the examples: a valid file to damage.
const EXAMPLE_CONFIG: &str = include_str!("../examples/splitwise-h100.toml");

fn runner() -> TestRunner {
    let mut config = Config {
        failure_persistence: None,
        max_shrink_iters: 256,
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = CI_CASES;
    }
    TestRunner::new(config)
}

/// Files written, for the summary line.
static FILES: AtomicU64 = AtomicU64::new(0);
/// Of those, the ones that loaded (and were then generated and simulated).
static LOADED: AtomicU64 = AtomicU64::new(0);

fn summary() {
    eprintln!(
        "fuzz_inputs: {} files so far, {} loaded and simulated, the others refused with an error, 0 panics",
        FILES.load(Ordering::Relaxed),
        LOADED.load(Ordering::Relaxed)
    );
}

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("accellm-fuzz-inputs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

thread_local! {
    /// Set while [`no_panic`] runs: the panic is reported as the case's failure, not printed.
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic into a failed case that shows the input.
fn no_panic<T>(what: &str, input: &[u8], f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                default(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    result.map_err(|e| {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        TestCaseError::fail(format!(
            "{what} panicked: {msg}\n--- input ---\n{}",
            String::from_utf8_lossy(input)
        ))
    })
}

/// Lines of a file as the loaders count them.
fn line_count(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count() + 1
}

// ---------------------------------------------------------------- damage

/// How a valid file is damaged.
#[derive(Debug, Clone)]
enum Damage {
    None,
    DropLine(usize),
    RepeatLine(usize),
    SwapLines(usize, usize),
    CutLine(usize, usize),
    /// Replace the `k`-th field (split at `,`, `=` or `:`) of a line.
    Field(usize, usize, &'static str),
    InsertLine(usize, &'static str),
    Flip(usize, u8),
    Truncate(usize),
    CrLf,
    Arbitrary(Vec<u8>),
}

fn junk() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just(""),
        Just("-1"),
        Just("0"),
        Just("abc"),
        Just("1e400"),
        Just("-1e400"),
        Just("nan"),
        Just("inf"),
        Just("4294967296"),
        Just("18446744073709551616"),
        Just("3.5"),
        Just("\"x\""),
        Just("[1,"),
        Just("{"),
        Just("2023-13-45 25:61:61"),
        Just("2023-11-16 18:15:46.6805900"),
        Just("\u{0}"),
        Just("é"),
        Just("[[point]]"),
        Just("[geometry]"),
        Just("a = 1"),
        Just("=="),
    ]
}

fn damage() -> impl Strategy<Value = Damage> {
    let i = 0usize..64;
    prop_oneof![
        3 => Just(Damage::None),
        2 => i.clone().prop_map(Damage::DropLine),
        1 => i.clone().prop_map(Damage::RepeatLine),
        1 => (i.clone(), i.clone()).prop_map(|(a, b)| Damage::SwapLines(a, b)),
        1 => (i.clone(), 0usize..40).prop_map(|(a, b)| Damage::CutLine(a, b)),
        4 => (i.clone(), 0usize..6, junk()).prop_map(|(a, b, j)| Damage::Field(a, b, j)),
        1 => (i.clone(), junk()).prop_map(|(a, j)| Damage::InsertLine(a, j)),
        2 => (0usize..4000, any::<u8>()).prop_map(|(a, b)| Damage::Flip(a, b)),
        1 => (0usize..4000).prop_map(Damage::Truncate),
        1 => Just(Damage::CrLf),
        1 => prop::collection::vec(any::<u8>(), 0..200).prop_map(Damage::Arbitrary),
    ]
}

fn apply(d: &Damage, text: &str) -> Vec<u8> {
    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    let n = lines.len().max(1);
    match d {
        Damage::None => {}
        Damage::DropLine(i) => {
            lines.remove(i % n);
        }
        Damage::RepeatLine(i) => {
            let l = lines[i % n].clone();
            lines.insert(i % n, l);
        }
        Damage::SwapLines(a, b) => lines.swap(a % n, b % n),
        Damage::CutLine(i, at) => {
            let l = &mut lines[i % n];
            let cut = l.char_indices().nth(*at).map_or(l.len(), |(k, _)| k);
            l.truncate(cut);
        }
        Damage::Field(i, k, j) => {
            let l = &lines[i % n];
            let parts: Vec<&str> = l.split([',', '=', ':']).collect();
            let k = k % parts.len();
            let mut out = String::new();
            let mut pos = 0;
            for (idx, p) in parts.iter().enumerate() {
                out.push_str(if idx == k { j } else { p });
                pos += p.len();
                if let Some(sep) = l[pos..].chars().next() {
                    out.push(sep);
                    pos += sep.len_utf8();
                }
            }
            lines[i % n] = out;
        }
        Damage::InsertLine(i, j) => lines.insert(i % (n + 1), j.to_string()),
        Damage::Flip(at, b) => {
            let mut bytes = lines.join("\n").into_bytes();
            if !bytes.is_empty() {
                let k = at % bytes.len();
                bytes[k] = *b;
            }
            return bytes;
        }
        Damage::Truncate(at) => {
            let mut bytes = lines.join("\n").into_bytes();
            bytes.truncate(*at);
            return bytes;
        }
        Damage::CrLf => return lines.join("\r\n").into_bytes(),
        Damage::Arbitrary(b) => return b.clone(),
    }
    lines.join("\n").into_bytes()
}

// ---------------------------------------------------------------- traces

fn count() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => (1u32..5000).prop_map(|v| v.to_string()),
        1 => junk().prop_map(str::to_string),
    ]
}

/// A CSV trace: the length columns under one of their accepted names, maybe a time column
/// (date-time or seconds), SLO and priority columns and an extra one, in any order.
fn csv_trace() -> impl Strategy<Value = String> {
    let prompt = prop_oneof![
        Just("ContextTokens"),
        Just("num_prefill_tokens"),
        Just("input_length"),
        Just("prompt_tokens"),
        Just("Request tokens"),
    ];
    let output = prop_oneof![
        Just("GeneratedTokens"),
        Just("num_decode_tokens"),
        Just("output_length"),
        Just("Response tokens"),
    ];
    let time = prop_oneof![
        Just(None),
        Just(Some("TIMESTAMP")),
        Just(Some("arrival_s")),
        Just(Some("arrival_timestamp")),
    ];
    (
        prompt,
        output,
        time,
        prop::collection::vec(any::<bool>(), 4),
        prop::collection::vec((count(), count(), 0.0..5.0f64, count(), count()), 0..20),
        any::<u64>(),
    )
        .prop_map(|(p, o, t, extra, rows, shuffle)| {
            let mut cols: Vec<&str> = vec![p, o];
            if let Some(t) = t {
                cols.push(t);
            }
            for (on, name) in
                extra
                    .iter()
                    .zip(["ttft_slo_ms", "tbt_slo_ms", "priority", "pd_ratio"])
            {
                if *on {
                    cols.push(name);
                }
            }
            let k = cols.len();
            cols.rotate_left((shuffle as usize) % k);
            let mut out = cols.join(",");
            let mut clock = 0.0;
            for (r, (a, b, gap, slo, pri)) in rows.iter().enumerate() {
                clock += gap;
                let cells: Vec<String> = cols
                    .iter()
                    .map(|c| match *c {
                        "TIMESTAMP" => {
                            let s = 46.0 + clock;
                            format!(
                                "2023-11-16 18:{:02}:{:09.6}",
                                15 + (s / 60.0) as u32,
                                s % 60.0
                            )
                        }
                        "arrival_s" | "arrival_timestamp" => format!("{clock}"),
                        "ttft_slo_ms" | "tbt_slo_ms" => slo.clone(),
                        "priority" => pri.clone(),
                        "pd_ratio" => format!("{}", r as f64 / 3.0),
                        c if c == p => a.clone(),
                        _ => b.clone(),
                    })
                    .collect();
                out.push('\n');
                out.push_str(&cells.join(","));
            }
            out.push('\n');
            out
        })
}

/// A Mooncake JSONL trace: `timestamp` (all or none), lengths, `hash_ids`.
fn jsonl_trace() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        prop::collection::vec(
            (
                0u64..5000,
                count(),
                count(),
                prop::collection::vec(0u64..50, 0..6),
            ),
            0..20,
        ),
    )
        .prop_map(|(timed, rows)| {
            let mut out = String::new();
            let mut t = 0;
            for (gap, a, b, ids) in rows {
                t += gap;
                let ts = if timed {
                    format!("\"timestamp\": {t}, ")
                } else {
                    String::new()
                };
                out.push_str(&format!(
                    "{{{ts}\"input_length\": {a}, \"output_length\": {b}, \"hash_ids\": {ids:?}}}\n"
                ));
            }
            out
        })
}

/// A small cluster to replay what loads on.
fn small_cluster() -> SimConfig {
    let mut c = SimConfig {
        model: "llama2-7b".into(),
        hardware: "a100".into(),
        instances: 2,
        tp: 1,
        ..SimConfig::default()
    };
    c.workload.max_requests = Some(12);
    c.workload.max_context = Some(4096);
    c
}

/// Generates the workload of `cfg` (at most a few requests) and simulates it; errors are fine,
/// panics are not.
fn replay(cfg: &SimConfig, input: &[u8]) -> Result<(), TestCaseError> {
    no_panic("generate + simulate", input, || {
        if let Ok(w) = cli::workload(cfg, None, None) {
            let _ = runner::run(cfg, &runner::core_requests(&w), None);
        }
    })
}

fn check_trace(path: &Path, bytes: &[u8]) -> Result<(), TestCaseError> {
    std::fs::write(path, bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    FILES.fetch_add(1, Ordering::Relaxed);
    let loaded = no_panic("TraceFile::load", bytes, || TraceFile::load(path))?;
    match loaded {
        Ok(t) => {
            LOADED.fetch_add(1, Ordering::Relaxed);
            if t.timed {
                let sorted = t.rows.windows(2).all(|w| w[0].arrival_s <= w[1].arrival_s);
                prop_assert!(sorted, "rows not sorted by arrival");
                prop_assert!(t.rows.iter().all(|r| r.arrival_s.is_finite()));
            }
            let mut cfg = small_cluster();
            cfg.workload.source = WorkloadSource::File {
                path: path.to_path_buf(),
                sampling: None,
            };
            replay(&cfg, bytes)?;
            cfg.workload.arrivals = Some(accellm_workload::Arrivals::Retime { rate: 3.0 });
            replay(&cfg, bytes)
        }
        Err(WorkloadError::Parse { line, message, .. }) => {
            prop_assert!(
                line >= 1 && line <= line_count(bytes),
                "line {line} of a {}-line file: {message}",
                line_count(bytes)
            );
            prop_assert!(!message.is_empty());
            Ok(())
        }
        Err(e) => Err(TestCaseError::fail(format!(
            "not a parse error with a line number: {e}\n--- input ---\n{}",
            String::from_utf8_lossy(bytes)
        ))),
    }
}

#[test]
fn fuzzed_trace_files_load_or_name_the_line() {
    let dir = scratch_dir();
    let strategy = (
        prop_oneof![
            csv_trace().prop_map(|t| (t, "csv")),
            jsonl_trace().prop_map(|t| (t, "jsonl"))
        ],
        damage(),
    );
    let result = runner().run(&strategy, |((text, ext), d)| {
        let bytes = apply(&d, &text);
        check_trace(&dir.join(format!("trace.{ext}")), &bytes)
    });
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = result {
        panic!("{e}");
    }
    summary();
}

// ---------------------------------------------------------------- workload specs

fn dist() -> impl Strategy<Value = String> {
    prop_oneof![
        (1u32..4000).prop_map(|n| n.to_string()),
        (1u32..4000).prop_map(|n| format!("fixed({n})")),
        (0u32..200, 0u32..4000).prop_map(|(a, b)| format!("uniform({a},{b})")),
        (1.0..3000.0f64, 0.0..3.0f64).prop_map(|(m, s)| format!("lognormal({m:.1},{s:.2})")),
        (1.0..3000.0f64, 0.0..3.0f64)
            .prop_map(|(m, s)| format!("lognormal(mean={m:.1},sigma={s:.2})")),
    ]
}

fn source_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("sharegpt".to_string()),
        Just("azure-conv".to_string()),
        Just("arxiv".to_string()),
        (dist(), dist()).prop_map(|(p, o)| format!("synthetic:prompt={p},output={o}")),
        (0.0..2.0f64, 0.0..2.0f64)
            .prop_map(|(a, b)| format!("mix:sharegpt*{a:.2}@chat+arxiv*{b:.2}@summarisation")),
        (1u32..5, 1u32..400).prop_map(|(t, s)| format!("chat:turns={t},system={s}")),
        Just("system-prompts".to_string()),
        Just("few-shot".to_string()),
    ]
}

fn workload_toml() -> impl Strategy<Value = String> {
    let arrivals = prop_oneof![
        Just(String::new()),
        (0.01..50.0f64).prop_map(|r| format!("arrivals = {{ kind = \"poisson\", rate = {r} }}\n")),
        (0.01..50.0f64, 0.1..4.0f64).prop_map(|(r, cv)| format!(
            "arrivals = {{ kind = \"gamma\", rate = {r}, cv = {cv} }}\n"
        )),
        (0.01..50.0f64).prop_map(|r| format!("arrivals = {{ kind = \"retime\", rate = {r} }}\n")),
        Just("arrivals = { kind = \"trace\" }\n".to_string()),
        Just("arrivals = { kind = \"all_at_once\" }\n".to_string()),
    ];
    let slo = prop_oneof![
        Just(String::new()),
        Just("slo = { kind = \"classes\" }\n".to_string()),
        Just("slo = { kind = \"none\" }\n".to_string()),
        (1.0..5000.0f64, 1.0..500.0f64).prop_map(|(t, b)| format!(
            "slo = {{ kind = \"fixed\", ttft_ms = {t}, tbt_ms = {b} }}\n"
        )),
        Just("slo = { kind = \"from_file\" }\n".to_string()),
    ];
    let source = prop_oneof![
        source_string().prop_map(|s| format!("source = \"{s}\"\n")),
        (dist(), dist()).prop_map(|(p, o)| format!(
            "[source]\nkind = \"synthetic\"\nprompt = \"{p}\"\noutput = \"{o}\"\n"
        )),
        (1u32..4000, 0u32..100, 1u32..4000).prop_map(|(p, lo, hi)| format!(
            "[source]\nkind = \"synthetic\"\nprompt = {{ kind = \"fixed\", tokens = {p} }}\noutput = {{ kind = \"uniform\", min = {lo}, max = {hi} }}\n"
        )),
    ];
    let fit = prop_oneof![Just("cap"), Just("scale"), Just("scale_all"), Just("drop")];
    (
        arrivals,
        slo,
        source,
        1usize..200,
        any::<u64>(),
        prop::option::of(16u32..8192),
        fit,
        prop::option::of(0.1..100.0f64),
    )
        .prop_map(|(arrivals, slo, source, n, seed, ctx, fit, duration)| {
            let mut s = format!("seed = {seed}\nmax_requests = {n}\ncontext_fit = \"{fit}\"\n");
            if let Some(c) = ctx {
                s.push_str(&format!("max_context = {c}\n"));
            }
            if let Some(d) = duration {
                s.push_str(&format!("duration_s = {d}\n"));
            }
            s.push_str(&arrivals);
            s.push_str(&slo);
            // Tables last: TOML keys after a table header belong to it.
            s.push_str(&source);
            s
        })
}

/// `line L, column C` (toml's wording) in a TOML error.
fn names_toml_line(message: &str) -> bool {
    message.contains("line ")
}

#[test]
fn fuzzed_workload_specs_parse_or_name_the_line() {
    let strategy = (workload_toml(), damage());
    let result = runner().run(&strategy, |(text, d)| {
        let bytes = apply(&d, &text);
        FILES.fetch_add(1, Ordering::Relaxed);
        let Ok(text) = std::str::from_utf8(&bytes) else {
            // `bench --workload-config` reads text; not UTF-8 is an I/O error there.
            return Ok(());
        };
        let parsed = no_panic("parse WorkloadSpec", &bytes, || {
            toml::from_str::<WorkloadSpec>(text)
        })?;
        match parsed {
            Ok(spec) => {
                LOADED.fetch_add(1, Ordering::Relaxed);
                let mut cfg = small_cluster();
                let n = spec.max_requests.unwrap_or(12).min(12);
                cfg.workload = spec;
                cfg.workload.max_requests = Some(n);
                cfg.workload.max_context = Some(cfg.workload.max_context.unwrap_or(4096).min(4096));
                replay(&cfg, &bytes)
            }
            Err(e) => {
                let m = e.to_string();
                prop_assert!(
                    names_toml_line(&m) || e.span().is_none(),
                    "no line in: {m}\n--- input ---\n{text}"
                );
                Ok(())
            }
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // The short forms on the command line (`--workload`).
    let result = runner().run(&(source_string(), damage()), |(s, d)| {
        let bytes = apply(&d, &s);
        FILES.fetch_add(1, Ordering::Relaxed);
        let text = String::from_utf8_lossy(&bytes).replace('\n', "");
        let parsed = no_panic("parse WorkloadSource", &bytes, || {
            text.parse::<WorkloadSource>()
        })?;
        if let Ok(source) = parsed {
            LOADED.fetch_add(1, Ordering::Relaxed);
            let mut cfg = small_cluster();
            cfg.workload.source = source;
            replay(&cfg, &bytes)?;
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    summary();
}

// ---------------------------------------------------------------- profiles and configs

/// A profile written from random coefficients, geometry, knots and points (some zero or
/// negative).
fn profile_toml() -> impl Strategy<Value = String> {
    let coef = prop_oneof![
        6 => (0.0..10.0f64).prop_map(|x| format!("{x}")),
        1 => Just("0.0".to_string()),
        1 => Just("-1.0".to_string()),
        1 => Just("nan".to_string()),
        1 => Just("inf".to_string()),
        1 => Just("1e300".to_string()),
    ];
    (
        prop::collection::vec(coef, 4),
        prop::option::of((0u32..100, 0u64..200_000, 0u32..40_000)),
        prop::collection::vec((1u32..512, -5.0..5.0f64), 0..5),
        prop::collection::vec((1u32..512, 0u64..40_000, 0u32..16, 0.0..500.0f64), 0..12),
        any::<bool>(),
    )
        .prop_map(|(c, geometry, knots, points, with_coefs)| {
            let mut s = String::from("name = \"fuzz\"\n");
            if with_coefs {
                s.push_str(&format!(
                    "a_ms = {}\nb_ms_per_token = {}\nc_ms_per_context = {}\nd_ms_per_logit_row = {}\n",
                    c[0], c[1], c[2], c[3]
                ));
            }
            if let Some((layers, kv, ctx)) = geometry {
                s.push_str(&format!(
                    "\n[geometry]\nlayers = {layers}\nkv_bytes_per_token = {kv}\ncontext_length = {ctx}\n"
                ));
            }
            for (t, m) in knots {
                s.push_str(&format!("\n[[knot]]\ntokens = {t}\nms_per_token = {m}\n"));
            }
            for (t, ctx, rows, ms) in points {
                s.push_str(&format!(
                    "\n[[point]]\ntokens = {t}\nsum_context = {ctx}\nlogit_rows = {rows}\nms = {ms}\n"
                ));
            }
            s
        })
}

#[test]
fn fuzzed_hardware_profiles_load_or_name_the_line() {
    let dir = scratch_dir();
    let strategy = (
        prop_oneof![
            2 => Just(REFERENCE_PROFILE.to_string()),
            3 => profile_toml(),
        ],
        damage(),
    );
    let result = runner().run(&strategy, |(text, d)| {
        let bytes = apply(&d, &text);
        let path = dir.join("profile.toml");
        std::fs::write(&path, &bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        FILES.fetch_add(1, Ordering::Relaxed);
        let loaded = no_panic("profile::load", &bytes, || profile::load(&path))?;
        match loaded {
            Ok(p) => {
                LOADED.fetch_add(1, Ordering::Relaxed);
                let mut cfg = small_cluster();
                cfg.workload.source = "synthetic:prompt=uniform(1,600),output=uniform(1,40)"
                    .parse()
                    .map_err(|e| TestCaseError::fail(format!("{e}")))?;
                cfg.profile = Some(p);
                replay(&cfg, &bytes)
            }
            Err(profile::ProfileLoadError::Invalid { message, .. }) => {
                prop_assert!(
                    names_toml_line(&message),
                    "no line in: {message}\n--- input ---\n{}",
                    String::from_utf8_lossy(&bytes)
                );
                Ok(())
            }
            Err(e @ profile::ProfileLoadError::Io { .. }) => Err(TestCaseError::fail(format!(
                "an I/O error for a readable file: {e}\n--- input ---\n{}",
                String::from_utf8_lossy(&bytes)
            ))),
            Err(profile::ProfileLoadError::Fit { .. }) => Ok(()),
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = result {
        panic!("{e}");
    }
    summary();
}

#[test]
fn fuzzed_simulator_configs_parse_or_name_the_line() {
    let result = runner().run(&damage(), |d| {
        let bytes = apply(&d, EXAMPLE_CONFIG);
        FILES.fetch_add(1, Ordering::Relaxed);
        let Ok(text) = std::str::from_utf8(&bytes) else {
            return Ok(());
        };
        let parsed = no_panic("SimConfig::parse", &bytes, || SimConfig::parse(text))?;
        match parsed {
            Ok(mut cfg) => {
                LOADED.fetch_add(1, Ordering::Relaxed);
                // A few requests on at most a few instances: enough to reach every knob.
                cfg.instances = cfg.instances.min(4);
                cfg.workload.max_requests = Some(cfg.workload.max_requests.unwrap_or(12).min(12));
                replay(&cfg, &bytes)
            }
            Err(m) => {
                prop_assert!(
                    names_toml_line(&m),
                    "no line in: {m}\n--- input ---\n{text}"
                );
                Ok(())
            }
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    summary();
}
