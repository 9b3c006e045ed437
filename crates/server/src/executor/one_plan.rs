//! One run plan through both executors, on a tiny random model.
//!
//! Two in-process instances under AcceLLM serve a handful of requests (one prompt of four
//! chunks, late prompts that take decodes off an instance, one starting with a cached prefix):
//! with replicas kept current by every step (prefill chunks and decodes stream layer-wise copies
//! to the partner, decodes move), with replicas left behind while decoding (`lazy`: a move
//! transfers what the replica lacks), and without replicas (each prompt's KV goes to the partner
//! by one transfer). The test plays the scheduler thread's event loop itself, one
//! input at a time, so it can read the KV pools when a worker reports an iteration (its copies
//! landed) or a link a transfer, before the core hears of it. For every plan the core hands
//! over it checks that:
//! - the worker ran exactly the plan's entries: positions, token ids, block tables, sampled rows;
//! - the links were handed exactly the plan's spans, the destination's K and V at each span equal
//!   the source's bit for bit in every layer, and the bytes the links moved are those spans';
//! - the simulator, reading the same plan, charges the same bytes per link (its replay's
//!   `copy_tokens_to × kv_bytes_per_token`) and times the same token ranges (the plan's shape);
//!
//! and that the outputs are the greedy tokens of one instance that never moves KV.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use accellm_core::{
    batch::Work,
    cluster::accellm::{AccellmConfig, PrefillChoice, SyncMode},
    cluster::ClusterConfig,
    cost::{IterationShape, LinearCostModel, Link},
    instance::{sarathi::SarathiConfig, InstanceConfig},
    plan::{BlockSpan, RunPlan},
    policy::PolicyConfig,
    request::{RequestId, Slo},
    scheduler::{Action, Scheduler, SchedulerConfig},
};
use accellm_engine::{KvPool, KvSpan, Model, SamplingParams, SeqInput, WeightFormat};

use super::{Executor, Input, IterationLog, Submission, ToClient};
use crate::metrics::Metrics;
use crate::text::TextModel;
use crate::worker::{spawn_instance, Cores, Engine, LinkCounters, LinkJob, RunJob, RunReport};

#[path = "../../../engine/tests/support/mod.rs"]
mod tiny;

const BLOCK: u32 = 16;
/// Sarathi's token budget per iteration: the longer prompts take several chunks.
const CHUNK: u32 = 32;
const MAX_TOKENS: u32 = 16;

/// What a worker was handed for one iteration.
struct Job {
    seqs: Vec<SeqInput>,
    samples: Vec<usize>,
    copies: Vec<(usize, Vec<KvSpan>)>,
}

/// What one run did.
#[derive(Default)]
struct Record {
    /// Plans by `(instance, iteration)`.
    plans: BTreeMap<(u32, u64), Arc<RunPlan>>,
    /// Output token ids, per request in submission order.
    outputs: Vec<Vec<u32>>,
    /// Positions computed, per request: `(instance, start, end)` in order.
    computed: Vec<Vec<(u32, u32, u32)>>,
    /// Per link `(from, to)`: bytes the server's spans cover, bytes the simulator charges.
    link_bytes: BTreeMap<(usize, usize), (u64, u64)>,
    /// Transfers: tokens, and bytes the simulator charges.
    transfer_tokens: u64,
    transfer_charged: u64,
    /// Spans checked bit for bit.
    spans_checked: usize,
}

/// The in-process server's threads, driven one input at a time.
struct Harness {
    exec: Executor,
    rx: Receiver<Input>,
    pools: Arc<Vec<KvPool>>,
    counters: Arc<LinkCounters>,
    /// The workers' and links' own channels; the executor sends through the proxies below.
    real: Vec<(Sender<RunJob>, Sender<LinkJob>)>,
    proxies: Vec<(Receiver<RunJob>, Receiver<LinkJob>)>,
    jobs: HashMap<(usize, u64), Job>,
    transfers: HashMap<u32, (Action, Vec<KvSpan>)>,
    ids: Vec<RequestId>,
    prompts: Vec<Vec<u32>>,
    rec: Record,
}

impl Harness {
    fn new(path: &Path, instances: usize, cluster: &ClusterConfig) -> Self {
        let model = Arc::new(Model::load(path, WeightFormat::default()).unwrap());
        model.check_servable().unwrap();
        let mc = model.config().clone();
        let pools: Arc<Vec<KvPool>> = Arc::new(
            (0..instances)
                .map(|_| KvPool::new(&mc, 128, BLOCK as usize).unwrap())
                .collect(),
        );
        let text = Arc::new(TextModel::load(path).unwrap());
        let eos = Arc::new(text.eos());
        let engine = Engine {
            model,
            pools: pools.clone(),
            eos: eos.clone(),
        };
        let (tx, rx) = mpsc::channel();
        let counters = Arc::new(LinkCounters::default());
        let (mut threads, mut real, mut proxies) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..instances {
            let cores = Cores {
                own: Vec::new(),
                wide: None,
                threads: 1,
            };
            let mut t = spawn_instance(i, &engine, cores, tx.clone(), counters.clone()).unwrap();
            let (run_tx, run_rx) = mpsc::channel();
            let (link_tx, link_rx) = mpsc::channel();
            real.push((
                std::mem::replace(&mut t.run, run_tx),
                std::mem::replace(&mut t.link, link_tx),
            ));
            proxies.push((run_rx, link_rx));
            threads.push(t);
        }
        let cost = LinearCostModel {
            knots: Vec::new(),
            base_us: 1000.0,
            per_token_us: 20.0,
            per_kv_token_us: 0.01,
            per_logit_row_us: 5.0,
            layers: mc.layers as u32,
            kv_bytes_per_token: mc.kv_bytes_per_token as u64,
            wide: None,
        };
        let cfg = SchedulerConfig {
            kv_blocks: 128,
            block_size: BLOCK,
            link: Link {
                bytes_per_s: 1e9,
                latency_us: 5.0,
            },
            max_waiting: 256,
            record_timelines: false,
            prefix_cache: true,
            share_idle_cores: false,
        };
        let icfg = InstanceConfig::Sarathi(SarathiConfig {
            chunk_size: CHUNK,
            ..SarathiConfig::default()
        });
        let n = instances as u32;
        let sched = Scheduler::build(&cfg, n, cluster, &icfg, Arc::new(cost)).unwrap();
        let policies = (cluster.name().into(), icfg.name().into());
        let metrics = Metrics::new("tiny", instances, policies);
        let mut exec = Executor::new(
            sched,
            text,
            eos,
            threads,
            Arc::new(Mutex::new(metrics)),
            counters.clone(),
            Arc::new(Mutex::new(IterationLog::default())),
        );
        exec.carried = Some(Vec::new());
        Self {
            exec,
            rx,
            pools,
            counters,
            real,
            proxies,
            jobs: HashMap::new(),
            transfers: HashMap::new(),
            ids: Vec::new(),
            prompts: Vec::new(),
            rec: Record::default(),
        }
    }

    /// Serves `prompts` to the end, checking every iteration and transfer as it reports: the
    /// first `early` at once, the others once each of those has its first token (so a prefill
    /// role takes decodes off an instance, moving requests whose replicas may lag behind).
    fn serve(mut self, prompts: &[Vec<u32>], early: usize) -> Record {
        let (ev_tx, mut ev_rx) = tokio::sync::mpsc::unbounded_channel();
        for p in &prompts[..early] {
            self.submit(p, &ev_tx);
        }
        let mut done = 0;
        while done < prompts.len() || !self.exec.idle() {
            let input = self
                .rx
                .recv_timeout(Duration::from_secs(60))
                .expect("the server makes progress");
            match &input {
                Input::Worker(r) => self.check_iteration(r),
                Input::TransferDone { id, error } => {
                    assert_eq!(error, &None);
                    self.check_transfer(*id);
                }
                _ => {}
            }
            self.exec.handle(input);
            self.pump();
            if self.ids.len() < prompts.len() && self.rec.outputs.iter().all(|o| !o.is_empty()) {
                for p in &prompts[early..] {
                    self.submit(p, &ev_tx);
                }
            }
            while let Ok((k, ev)) = ev_rx.try_recv() {
                match ev {
                    ToClient::Done {
                        completion_tokens, ..
                    } => {
                        assert_eq!(completion_tokens, MAX_TOKENS, "request {k}");
                        done += 1;
                    }
                    ToClient::Failed(e) | ToClient::GrammarFailed(e) => panic!("request {k}: {e}"),
                    ToClient::Rejected(r) => panic!("request {k} rejected: {r:?}"),
                    _ => {}
                }
            }
        }
        assert_eq!(
            self.exec.sched.live_requests(),
            0,
            "every request ended in the core"
        );
        self.finish()
    }

    /// Hands the scheduler thread one more request.
    fn submit(&mut self, prompt: &[u32], events: &UnboundedSender<(u32, ToClient)>) {
        let k = self.ids.len();
        let s = Submission {
            handle: k as u64 + 1,
            prompt: prompt.to_vec(),
            max_tokens: MAX_TOKENS,
            min_tokens: 0,
            params: SamplingParams {
                ignore_eos: true,
                ..SamplingParams::greedy(MAX_TOKENS as usize)
            },
            slo: Slo::default(),
            priority: 0,
            starts_text: false,
            choice: k as u32,
            logprobs: None,
            prompt_logprobs: None,
            discard_output: false,
            constraint: None,
            events: events.clone(),
        };
        self.prompts.push(prompt.to_vec());
        self.rec.outputs.push(Vec::new());
        self.rec.computed.push(Vec::new());
        self.exec.handle(Input::Submit(Box::new(s)));
        self.ids.push(self.exec.handles[&(k as u64 + 1)]);
        self.pump();
    }

    /// Moves the plans the core handed over into the record, and the executor's jobs on to the
    /// workers and links, noting what each was handed.
    fn pump(&mut self) {
        let kvb = self.exec.sched.cost().kv_bytes_per_token();
        for a in self.exec.carried.as_mut().unwrap().drain(..) {
            match a {
                Action::Run(p) => {
                    // What the simulator's replay charges each link for this plan.
                    for to in p.destinations() {
                        let e = self
                            .rec
                            .link_bytes
                            .entry((p.instance as usize, to as usize))
                            .or_default();
                        e.1 += p.copy_tokens_to(to) * kvb;
                    }
                    assert!(self
                        .rec
                        .plans
                        .insert((p.instance, p.iteration), p)
                        .is_none());
                }
                Action::Transfer {
                    id,
                    tokens,
                    ref spans,
                    ..
                } => {
                    self.rec.transfer_tokens += tokens as u64;
                    self.rec.transfer_charged += tokens as u64 * kvb;
                    let planned = spans.iter().map(engine_span).collect();
                    self.transfers.insert(id, (a.clone(), planned));
                }
                _ => {}
            }
        }
        for (i, (runs, links)) in self.proxies.iter().enumerate() {
            while let Ok(job) = runs.try_recv() {
                let seen = Job {
                    seqs: job.batch.seqs.clone(),
                    samples: job.samples.iter().map(|s| s.seq).collect(),
                    copies: job
                        .copies
                        .iter()
                        .map(|c| (c.to, c.spans.to_vec()))
                        .collect(),
                };
                assert!(self.jobs.insert((i, job.iteration), seen).is_none());
                self.real[i].0.send(job).unwrap();
            }
            while let Ok(job) = links.try_recv() {
                if let LinkJob::Transfer { id, to, spans } = &job {
                    let (a, planned) = &self.transfers[id];
                    let Action::Transfer { from, to: dst, .. } = a else {
                        unreachable!()
                    };
                    assert_eq!((*from as usize, *dst as usize), (i, *to));
                    assert_eq!(spans, planned, "transfer {id} carries the planned spans");
                }
                self.real[i].1.send(job).unwrap();
            }
        }
    }

    /// Whose token ids a request feeds: its prompt, then its outputs so far.
    fn token(&self, k: usize, p: usize) -> u32 {
        let prompt = &self.prompts[k];
        if p < prompt.len() {
            prompt[p]
        } else {
            self.rec.outputs[k][p - prompt.len()]
        }
    }

    /// Which submission a core id names (the core reuses the ids of ended requests).
    fn index_of(&self, r: RequestId) -> usize {
        self.ids.iter().rposition(|&x| x == r).unwrap()
    }

    /// A worker reported an iteration (its copies have landed); the core has not heard of it.
    fn check_iteration(&mut self, r: &RunReport) {
        assert_eq!((&r.error, &r.copy_error), (&None, &None));
        let key = (r.instance as u32, r.iteration);
        let plan = self.rec.plans[&key].clone();
        let job = self.jobs.remove(&(r.instance, r.iteration)).unwrap();
        // The worker ran the plan's entries, nothing else.
        assert_eq!(job.seqs.len(), plan.entries.len(), "{key:?}");
        let mut shape = IterationShape::default();
        let mut sampling = Vec::new();
        for (row, (e, s)) in plan.entries.iter().zip(&job.seqs).enumerate() {
            let k = self.index_of(e.request);
            assert_eq!(s.start_pos, e.start as usize, "{key:?} entry {row}");
            assert_eq!(s.tokens.len(), e.tokens() as usize, "{key:?} entry {row}");
            for (j, &t) in s.tokens.iter().enumerate() {
                assert_eq!(t, self.token(k, s.start_pos + j), "{key:?} entry {row}");
            }
            assert_eq!(s.block_table, plan.blocks(e), "{key:?} entry {row}");
            assert_eq!(s.want_logits, e.sample, "{key:?} entry {row}");
            if e.sample {
                sampling.push(row);
            }
            self.rec.computed[k].push((plan.instance, e.start, e.end));
            // The simulator times the plan by its shape: the same token ranges.
            match e.work {
                Work::Prefill { .. } => shape.add_prefill(e.start, e.tokens(), e.sample),
                Work::Decode { context } => {
                    assert_eq!((e.start, e.end), (context - 1, context));
                    shape.add_decode(context)
                }
            }
        }
        assert_eq!(shape, plan.shape, "{key:?}: the simulator's token ranges");
        assert_eq!(job.samples, sampling, "{key:?}: sampled rows");
        let mut got: Vec<usize> = r.tokens.iter().map(|s| s.seq).collect();
        got.sort_unstable();
        assert_eq!(got, sampling, "{key:?}: one token per sampling entry");
        for s in &r.tokens {
            let k = self.index_of(plan.entries[s.seq].request);
            self.rec.outputs[k].push(s.token);
        }
        // The links were handed the plan's spans, per destination in the plan's order, and the
        // destination holds the source's KV there, bit for bit.
        let mut planned: Vec<(usize, Vec<KvSpan>)> = Vec::new();
        for c in &plan.copies {
            let e = plan.entries.iter().find(|e| e.request == c.request);
            assert_eq!(c.end, e.unwrap().end, "{key:?}: a copy ends with its entry");
            let spans = plan.spans(c).iter().map(engine_span);
            match planned.iter_mut().find(|(to, _)| *to == c.to as usize) {
                Some((_, v)) => v.extend(spans),
                None => planned.push((c.to as usize, spans.collect())),
            }
        }
        assert_eq!(
            job.copies, planned,
            "{key:?}: the copies handed to the links"
        );
        let per_token = self.pools[0].block_bytes() as u64 / BLOCK as u64;
        for (to, spans) in &planned {
            let slots: u64 = spans.iter().map(|s| s.len() as u64).sum();
            let e = self.rec.link_bytes.entry((r.instance, *to)).or_default();
            e.0 += slots * per_token;
            self.same_kv(r.instance, *to, spans);
        }
    }

    /// A link reported transfer `id` (its KV has landed); the core has not heard of it.
    fn check_transfer(&mut self, id: u32) {
        let (a, planned) = self.transfers.remove(&id).unwrap();
        let Action::Transfer {
            from, to, tokens, ..
        } = a
        else {
            unreachable!()
        };
        let slots: usize = planned.iter().map(KvSpan::len).sum();
        assert_eq!(
            slots, tokens as usize,
            "transfer {id}: spans cover its tokens"
        );
        self.same_kv(from as usize, to as usize, &planned);
    }

    /// The destination's K and V at every span equal the source's, in every layer, and were
    /// written (not the pool's zeros).
    fn same_kv(&mut self, from: usize, to: usize, spans: &[KvSpan]) {
        let (src, dst) = (&self.pools[from], &self.pools[to]);
        for s in spans {
            for l in 0..src.num_layers() {
                for slot in s.slots.clone() {
                    let a = src.read_token(l, s.src_block, slot as usize).unwrap();
                    let b = dst.read_token(l, s.dst_block, slot as usize).unwrap();
                    assert!(
                        a.0.iter().any(|&x| x != 0.0),
                        "{s:?} layer {l} never written"
                    );
                    let same = |x: &[f32], y: &[f32]| {
                        x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits())
                    };
                    assert!(
                        same(&a.0, &b.0) && same(&a.1, &b.1),
                        "{from}->{to} {s:?} layer {l} slot {slot}: the replica is not the primary"
                    );
                }
            }
            self.rec.spans_checked += 1;
        }
    }

    /// Stops the threads; checks the bytes the links moved against the plans.
    fn finish(mut self) -> Record {
        let moved = self.counters.replica_bytes.load(Ordering::Relaxed);
        let transferred = self.counters.transfer_bytes.load(Ordering::Relaxed);
        for (link, (server, sim)) in &self.rec.link_bytes {
            assert_eq!(
                server, sim,
                "link {link:?}: the spans' bytes = the simulator's charge"
            );
        }
        let planned: u64 = self.rec.link_bytes.values().map(|b| b.1).sum();
        assert_eq!(moved, planned, "bytes the links copied = bytes planned");
        assert_eq!(transferred, self.rec.transfer_charged);
        let c = self.exec.sched.counters();
        assert_eq!(
            (c.copy_bytes, c.transfer_bytes),
            (moved, transferred),
            "the core's counters (what the simulator reports) = the bytes the links moved"
        );
        let joins: Vec<_> = self
            .exec
            .instances
            .iter_mut()
            .flat_map(|t| std::mem::take(&mut t.joins))
            .collect();
        drop(self.real);
        drop(self.exec);
        for j in joins {
            j.join().unwrap();
        }
        self.rec
    }
}

/// A span of the plan in the engine's terms (written here, not taken from dispatch).
fn engine_span(s: &BlockSpan) -> KvSpan {
    KvSpan {
        src_block: s.src_block,
        dst_block: s.dst_block,
        slots: s.slot_start..s.slot_end,
    }
}

#[test]
fn the_server_and_the_simulator_carry_out_the_same_plans() {
    let dir = std::env::temp_dir().join(format!("accellm-one-plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny.gguf");
    tiny::write_tiny_model_to(
        tiny::TinySpec {
            vocab: 320,
            layers: 2,
            ..Default::default()
        },
        &path,
    );
    accellm_engine::inline_candle_matmuls().unwrap();
    // Five distinct prompts: 20 tokens (one chunk) up to 100 (four chunks).
    let mut prompts: Vec<Vec<u32>> = [20u32, 45, 100, 33, 70]
        .iter()
        .enumerate()
        .map(|(k, &n)| (0..n).map(|p| 3 + (p * 7 + k as u32 * 61) % 300).collect())
        .collect();
    // A late prompt that starts with the 100-token one's first 64 tokens.
    let mut shared = prompts[2][..64].to_vec();
    shared.extend((0..20).map(|p| 5 + p * 11));
    prompts.push(shared);
    // One instance that never moves KV: the greedy tokens every run must give.
    let alone = Harness::new(&path, 1, &ClusterConfig::RoundRobin).serve(&prompts, 3);
    // Replicas kept current by every step (moves are free), by nothing while decoding (`lazy`),
    // and no replicas at all (each prompt's KV goes to the decoding partner by one transfer).
    for (name, sync, replication) in [
        ("eager", SyncMode::Eager, true),
        ("lazy", SyncMode::Lazy, true),
        ("no replicas", SyncMode::Eager, false),
    ] {
        let mut cfg = AccellmConfig {
            sync,
            replication,
            ..AccellmConfig::default()
        };
        // The late prompts go to the other instance than the first ones, which hands its decodes
        // back (`lazy`: to the same one, which hands over the request that has just decoded its
        // first token there, so its replica lacks it and the move transfers it).
        cfg.prefill_choice = match sync {
            SyncMode::Lazy => PrefillChoice::Sticky,
            _ => PrefillChoice::Alternate,
        };
        let rec = Harness::new(&path, 2, &ClusterConfig::Accellm(cfg)).serve(&prompts, 3);
        // The run exercised what the plan carries.
        let chunked = rec
            .computed
            .iter()
            .zip(&prompts)
            .any(|(c, p)| c.iter().filter(|x| x.1 < p.len() as u32).count() >= 3);
        assert!(chunked, "{name}: a prompt prefilled in several chunks");
        let on_partner = rec.computed.iter().any(|c| c.iter().any(|x| x.0 != c[0].0));
        assert!(on_partner, "{name}: a request computed on both instances");
        let copied = rec.link_bytes.values().any(|b| b.0 > 0);
        assert_eq!(copied, replication, "{name}: layer-wise copies");
        if sync == SyncMode::Lazy || !replication {
            assert!(rec.transfer_tokens > 0, "{name}: transfers");
        }
        // Every position computed exactly once, in order (no recompute, no gap), after the
        // cached prefix (whole blocks) of the last prompt.
        for (k, c) in rec.computed.iter().enumerate() {
            let mut at = c[0].1;
            assert!(
                at % BLOCK == 0 && (at == 0 || k + 1 == prompts.len()),
                "{name} request {k}: {c:?}"
            );
            for &(_, start, end) in c {
                assert_eq!(start, at, "{name} request {k}: {c:?}");
                at = end;
            }
            assert_eq!(at as usize, prompts[k].len() + MAX_TOKENS as usize - 1);
        }
        // Decodes from replicas and moved KV give the tokens of the instance that never moves.
        assert_eq!(rec.outputs, alone.outputs, "{name}");
        eprintln!(
            "{name}: plans {}, spans checked {}, link bytes (server, simulator) {:?}, \
             transferred {} tokens",
            rec.plans.len(),
            rec.spans_checked,
            rec.link_bytes,
            rec.transfer_tokens
        );
    }
}
