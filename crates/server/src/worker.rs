//! Instance workers and KV links: the threads that touch model weights and KV memory.
//!
//! Each instance has a **worker** thread that runs one iteration at a time (a batched forward
//! pass on its own rayon pool, then sampling) and a **link** thread that copies KV out of its
//! pool: exactly the tokens the core names, never whole blocks. While the worker computes layer
//! `l+1`, the link copies layer `l` of the new tokens of the entries the core asked to replicate
//! into the partner's pool; before reporting the iteration the worker waits for the link to
//! drain, so a replica is complete when the scheduler hears of it. Links need no lock of their
//! own: [`copy_kv`] cannot deadlock with copies in the other direction.
//! Explicit transfers (migrations without a current replica) also run on the source's link.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use accellm_engine::{
    copy_kv, ForwardBatch, KvPool, KvSpan, Model, Sampler, Threads, TokenLogprob,
};

use crate::constraint::{mask_with_bits, Constraint};
use crate::executor::Input;

/// One sequence that needs a token sampled after the forward pass.
pub(crate) struct SampleJob {
    /// Index of the sequence in the batch.
    pub seq: usize,
    /// The request's sampler (travels with the job and comes back).
    pub sampler: Box<Sampler>,
    /// Forbid end-of-sequence tokens (`min_tokens` not reached yet).
    pub mask_eos: bool,
    /// Return the token's logprob with this many alternatives.
    pub logprobs: Option<u8>,
    /// Allowed tokens come from this grammar (travels with the job and comes back).
    pub constraint: Option<Box<Constraint>>,
    /// Or only the tokens allowed, as a bitset: a remote worker's constrained row (the grammar
    /// stays with the front, which advances it when the token comes back).
    pub allowed: Option<Vec<u32>>,
}

/// A row whose logits give the logprob of the prompt token that follows it (echo).
pub(crate) struct PromptRow {
    /// Index of the (one-token) sequence in the batch.
    pub seq: usize,
    /// The prompt token at the next position.
    pub target: u32,
    /// Alternatives wanted.
    pub top: u8,
}

/// One sampled token and what travels back with it.
pub(crate) struct Sampled {
    /// Index of the sequence in the batch.
    pub seq: usize,
    /// The token.
    pub token: u32,
    /// The request's sampler.
    pub sampler: Box<Sampler>,
    /// Its logprob, when asked for.
    pub logprob: Option<Box<TokenLogprob>>,
    /// The request's grammar state.
    pub constraint: Option<Box<Constraint>>,
    /// The grammar is complete after this token: the output must end.
    pub grammar_done: bool,
    /// The grammar failed (the request must end with this error).
    pub error: Option<String>,
}

/// New tokens of some entries to stream to `to`, layer by layer.
pub(crate) struct CopyPlan {
    /// Destination instance.
    pub to: usize,
    /// Token slots to copy.
    pub spans: Arc<Vec<KvSpan>>,
}

/// One iteration for a worker.
pub(crate) struct RunJob {
    /// The core's iteration number on this instance.
    pub iteration: u64,
    /// Token ids and block tables.
    pub batch: ForwardBatch,
    /// Rows to sample.
    pub samples: Vec<SampleJob>,
    /// Rows whose logits give prompt logprobs.
    pub prompt_rows: Vec<PromptRow>,
    /// Layer-wise copies to partners.
    pub copies: Vec<CopyPlan>,
    /// The cost model's prediction of its wall time (a remote worker's deadline grows with it).
    pub predicted_s: f64,
    /// Run on the instance's cores and its idle partner's (the core's `RunPlan::borrowed`).
    pub wide: bool,
}

/// A worker's answer.
pub(crate) struct RunReport {
    /// Which instance.
    pub instance: usize,
    /// Which iteration.
    pub iteration: u64,
    /// One per sampled row, with the sampler handed back.
    pub tokens: Vec<Sampled>,
    /// The logprobs of [`RunJob::prompt_rows`], in order (empty on error).
    pub prompt_logprobs: Vec<TokenLogprob>,
    /// Set when the forward pass failed.
    pub error: Option<String>,
    /// Set when a layer-wise copy to a partner failed (the tokens are still good).
    pub copy_error: Option<String>,
    /// Wall time of the forward pass and sampling.
    pub elapsed_s: f64,
}

/// Work for a link thread.
pub(crate) enum LinkJob {
    /// Copy one layer of these token slots to `to`.
    Layer {
        to: usize,
        layer: usize,
        spans: Arc<Vec<KvSpan>>,
    },
    /// Reply with the first error since the last barrier once everything before is done.
    Barrier(mpsc::SyncSender<Option<String>>),
    /// Copy every layer of these token slots to `to`, then report transfer `id` to the
    /// scheduler.
    Transfer {
        id: u32,
        to: usize,
        spans: Vec<KvSpan>,
    },
}

/// Bytes the link threads really copied between pools. No lock is needed around copies:
/// [`copy_kv`] never holds two layer locks at once, so links copying in opposite directions
/// cannot deadlock.
#[derive(Debug, Default)]
pub(crate) struct LinkCounters {
    /// Bytes copied for replicas.
    pub replica_bytes: AtomicU64,
    /// Bytes copied by transfers.
    pub transfer_bytes: AtomicU64,
}

/// Shared engine state.
pub(crate) struct Engine {
    pub model: Arc<Model>,
    pub pools: Arc<Vec<KvPool>>,
    pub eos: Arc<Vec<u32>>,
}

/// Handles of one instance's threads.
pub(crate) struct InstanceThreads {
    /// Sends iterations to the worker.
    pub run: Sender<RunJob>,
    /// Sends transfers to the link.
    pub link: Sender<LinkJob>,
    /// Thread handles, joined at shutdown.
    pub joins: Vec<JoinHandle<()>>,
    /// A remote worker's connection, shut down at shutdown so its reader thread ends.
    pub conn: Option<std::net::TcpStream>,
}

/// The cores an instance computes on.
pub(crate) struct Cores {
    /// Its own CPUs (one pinned thread each), or empty: `threads` unpinned threads.
    pub own: Vec<usize>,
    /// Its own CPUs and its partner's, for iterations that borrow the partner's
    /// ([`RunJob::wide`]); `Some(empty)`: twice `threads`, unpinned. None: never borrows.
    pub wide: Option<Vec<usize>>,
    /// Threads per instance.
    pub threads: usize,
}

impl Cores {
    fn pool(cpus: Vec<usize>, threads: usize, name: &str) -> std::io::Result<Threads> {
        if cpus.is_empty() {
            Threads::new(threads, name)
        } else {
            Threads::pinned(cpus.len(), name, cpus)
        }
        .map_err(|e| std::io::Error::other(e.to_string()))
    }
}

/// Starts the worker and link threads of instance `i` on `cores`.
pub(crate) fn spawn_instance(
    i: usize,
    engine: &Engine,
    cores: Cores,
    out: Sender<Input>,
    counters: Arc<LinkCounters>,
) -> std::io::Result<InstanceThreads> {
    let pool = Cores::pool(cores.own, cores.threads, &format!("accellm-i{i}"))?;
    let wide = match cores.wide {
        Some(cpus) => Some(Cores::pool(
            cpus,
            2 * cores.threads,
            &format!("accellm-w{i}"),
        )?),
        None => None,
    };
    let (run_tx, run_rx) = mpsc::channel::<RunJob>();
    let (link_tx, link_rx) = mpsc::channel::<LinkJob>();
    let pools = engine.pools.clone();
    let out2 = out.clone();
    let link = std::thread::Builder::new()
        .name(format!("accellm-link{i}"))
        .spawn(move || link_loop(i, pools, link_rx, out2, counters))?;
    let model = engine.model.clone();
    let pools = engine.pools.clone();
    let eos = engine.eos.clone();
    let link_for_worker = link_tx.clone();
    let worker = std::thread::Builder::new()
        .name(format!("accellm-worker{i}"))
        .spawn(move || {
            for job in run_rx {
                let threads = match &wide {
                    Some(w) if job.wide => w,
                    _ => &pool,
                };
                let report = run_one(i, &model, &pools, threads, &eos, &link_for_worker, job);
                if out.send(Input::Worker(Box::new(report))).is_err() {
                    break;
                }
            }
        })?;
    Ok(InstanceThreads {
        run: run_tx,
        link: link_tx,
        joins: vec![worker, link],
        conn: None,
    })
}

pub(crate) fn run_one(
    i: usize,
    model: &Model,
    pools: &[KvPool],
    threads: &Threads,
    eos: &[u32],
    link: &Sender<LinkJob>,
    job: RunJob,
) -> RunReport {
    let started = Instant::now();
    let RunJob {
        iteration,
        batch,
        samples,
        prompt_rows,
        copies,
        predicted_s: _,
        wide: _,
    } = job;
    let mut error = None;
    let forward = threads.install(|| {
        model.forward_with(&pools[i], &batch, |layer| {
            for c in &copies {
                let _ = link.send(LinkJob::Layer {
                    to: c.to,
                    layer,
                    spans: c.spans.clone(),
                });
            }
        })
    });
    let mut tokens = Vec::with_capacity(samples.len());
    let mut prompt_logprobs = Vec::with_capacity(prompt_rows.len());
    match forward {
        Ok(out) => {
            for s in samples {
                match out.logits.get(s.seq).and_then(|l| l.as_ref()) {
                    Some(logits) => tokens.push(sample_one(s, logits, eos)),
                    None => {
                        error = Some(format!("no logits for sequence {}", s.seq));
                    }
                }
            }
            for r in &prompt_rows {
                match out.logits.get(r.seq).and_then(|l| l.as_ref()) {
                    Some(logits) => {
                        prompt_logprobs.push(TokenLogprob::of(logits, r.target, r.top as usize))
                    }
                    None => error = Some(format!("no logits for prompt row {}", r.seq)),
                }
            }
        }
        Err(e) => error = Some(format!("forward pass failed: {e}")),
    }
    let mut copy_error = None;
    if !copies.is_empty() {
        let (tx, rx) = mpsc::sync_channel(1);
        if link.send(LinkJob::Barrier(tx)).is_ok() {
            if let Ok(Some(e)) = rx.recv() {
                copy_error = Some(format!("KV copy failed: {e}"));
            }
        }
    }
    RunReport {
        instance: i,
        iteration,
        tokens,
        prompt_logprobs,
        error,
        copy_error,
        elapsed_s: started.elapsed().as_secs_f64(),
    }
}

/// Samples one row: EOS masked while `min_tokens` is not reached, only the grammar's tokens
/// when the output is constrained; the logprob is of the raw distribution (vLLM's default).
fn sample_one(mut s: SampleJob, logits: &[f32], eos: &[u32]) -> Sampled {
    let mut error = None;
    // With a grammar, the grammar alone decides where the output may end.
    let grammar = s.constraint.is_some() || s.allowed.is_some();
    let mask_eos = s.mask_eos && !eos.is_empty() && !grammar;
    let token = if mask_eos || grammar {
        let mut l = logits.to_vec();
        if mask_eos {
            for &e in eos {
                if let Some(x) = l.get_mut(e as usize) {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
        if let Some(c) = s.constraint.as_mut() {
            if let Err(e) = c.mask_logits(&mut l) {
                error = Some(e.to_string());
            }
        }
        if let Some(bits) = &s.allowed {
            mask_with_bits(bits, &mut l);
        }
        s.sampler.sample(&l)
    } else {
        s.sampler.sample(logits)
    };
    let mut grammar_done = false;
    if let (Some(c), None) = (s.constraint.as_mut(), &error) {
        match c.commit(token) {
            Ok(done) => grammar_done = done,
            Err(e) => error = Some(e.to_string()),
        }
    }
    Sampled {
        seq: s.seq,
        token,
        logprob: s
            .logprobs
            .map(|k| Box::new(TokenLogprob::of(logits, token, k as usize))),
        sampler: s.sampler,
        constraint: s.constraint,
        grammar_done,
        error,
    }
}

fn link_loop(
    i: usize,
    pools: Arc<Vec<KvPool>>,
    rx: Receiver<LinkJob>,
    out: Sender<Input>,
    counters: Arc<LinkCounters>,
) {
    let mut first_error: Option<String> = None;
    for job in rx {
        match job {
            LinkJob::Layer { to, layer, spans } => {
                match copy_kv(&pools[i], &pools[to], &spans, layer..layer + 1) {
                    Ok(bytes) => {
                        counters.replica_bytes.fetch_add(bytes, Ordering::Relaxed);
                    }
                    Err(e) => {
                        first_error.get_or_insert(e.to_string());
                    }
                }
            }
            LinkJob::Barrier(reply) => {
                let _ = reply.send(first_error.take());
            }
            LinkJob::Transfer { id, to, spans } => {
                let layers = 0..pools[i].num_layers();
                let error = match copy_kv(&pools[i], &pools[to], &spans, layers) {
                    Ok(bytes) => {
                        counters.transfer_bytes.fetch_add(bytes, Ordering::Relaxed);
                        None
                    }
                    Err(e) => Some(e.to_string()),
                };
                if out.send(Input::TransferDone { id, error }).is_err() {
                    break;
                }
            }
        }
    }
}
