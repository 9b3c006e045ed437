//! The scheduler thread: owns the core [`Scheduler`] and drives it in real time.
//!
//! Every event reaches this thread through one channel ([`Input`]): arrivals and cancellations
//! from HTTP handlers, finished iterations from instance workers, landed transfers from links.
//! The thread feeds each to the core with the wall clock (µs since server start), then carries
//! out the core's actions: an `Action::Run` becomes a [`RunJob`] (token ids of each entry's
//! chunk, block tables from the core's block manager, samplers, and the KV copies of the new
//! tokens of entries the core replicates); an `Action::Transfer` becomes a copy of the tokens it
//! names on the source's link; finished and rejected requests are answered. Tokens come back here to be detokenised, checked against
//! stop strings and streamed to their clients.

mod partition;

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use accellm_core::{
    cost::IterationShape,
    instance::PhaseConstraint,
    kv::{BlockKey, BlockKeys},
    plan::{BlockSpan, RunPlan},
    profile::Point,
    request::{FinishReason, RejectReason, RequestId, RequestSpec, Slo},
    scheduler::{Action, Recovery, Scheduler},
    InstanceId, TimeUs,
};
use accellm_engine::{
    ForwardBatch, KvSpan, Sampler, SamplingParams, SeqInput, StopMatcher, StopStatus, TokenLogprob,
};
use tokio::sync::mpsc::UnboundedSender;

use crate::constraint::Constraint;
use crate::metrics::{Metrics, Role, TokenLatency, TokenTimes};
use crate::text::{Decoder, TextModel};
use crate::worker::{
    CopyPlan, InstanceThreads, LinkCounters, LinkJob, PromptRow, RunJob, RunReport, SampleJob,
    Sampled,
};

/// A request handed to the scheduler thread by an HTTP handler.
pub(crate) struct Submission {
    /// The handler's id for it (never reused, unlike core ids).
    pub handle: u64,
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Output tokens at most.
    pub max_tokens: u32,
    /// Output tokens before EOS or stop strings may end it.
    pub min_tokens: u32,
    /// Sampling options.
    pub params: SamplingParams,
    /// SLOs.
    pub slo: Slo,
    /// Priority (lower first).
    pub priority: i32,
    /// The output starts a text of its own (a chat reply) rather than continuing the prompt, so a
    /// SentencePiece space prefix on its first token is dropped.
    pub starts_text: bool,
    /// Index of the choice this request answers (its events are tagged with it).
    pub choice: u32,
    /// Log-probabilities of output tokens, with this many alternatives.
    pub logprobs: Option<u8>,
    /// Log-probabilities of prompt tokens (echo), with this many alternatives.
    pub prompt_logprobs: Option<u8>,
    /// Only the prompt is wanted (`max_tokens: 0` with echo): the core runs one token, which
    /// is dropped.
    pub discard_output: bool,
    /// Constrained decoding (`response_format`).
    pub constraint: Option<Box<Constraint>>,
    /// Where its output goes, tagged with `choice`.
    pub events: UnboundedSender<(u32, ToClient)>,
}

/// How a request ended, as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    /// EOS or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// Cancelled (client gone, or shutdown).
    Abort,
}

impl Finish {
    /// OpenAI's `finish_reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::Abort => "abort",
        }
    }
}

/// What a request's client is told.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ToClient {
    /// Admitted by the core.
    Accepted,
    /// Refused.
    Rejected(RejectReason),
    /// Refused because the server is shutting down.
    ShuttingDown,
    /// One more output token: the text it completes (possibly empty) and, when asked for, its
    /// log-probability. Text held back until the end comes without one.
    Token {
        /// Text.
        text: String,
        /// Log-probability of the token.
        logprob: Option<Box<TokenLogprob>>,
    },
    /// Log-probabilities of prompt tokens 1.. (token 0 has none), once the prompt is prefilled
    /// (`None` only where the prompt's logits were not computed, which should not happen).
    PromptLogprobs(Vec<Option<TokenLogprob>>),
    /// The end.
    Done {
        /// Why.
        finish: Finish,
        /// Prompt tokens.
        prompt_tokens: u32,
        /// Output tokens.
        completion_tokens: u32,
        /// Instances that ran it (bit mask).
        instances: u64,
    },
    /// The engine failed while running it.
    Failed(String),
    /// The output's grammar (`response_format`) allowed no continuation: the choice ends
    /// here, a normal `Done` follows with the tokens so far.
    GrammarFailed(String),
}

/// Events for the scheduler thread.
pub(crate) enum Input {
    /// A new request.
    Submit(Box<Submission>),
    /// The client of `handle` went away.
    Cancel(u64),
    /// A worker finished an iteration.
    Worker(Box<RunReport>),
    /// A link finished a transfer.
    TransferDone {
        /// Transfer id.
        id: u32,
        /// Failure, if any.
        error: Option<String>,
    },
    /// Stop admitting; cancel everything live; exit when idle.
    Shutdown,
    /// A remote worker failed (connection lost or deadline missed).
    InstanceDown(usize),
    /// A restarted remote worker accepted the front again.
    InstanceUp(usize, Box<crate::remote::front::Connected>),
    /// The next probe of the link from `from` to its cut-off partner `to` is due.
    ProbeLink {
        /// The worker that probes.
        from: usize,
        /// The partner it tries to reach.
        to: usize,
    },
    /// Forget every cached prefix (`POST /reset_prefix_cache`); answers whether it was done
    /// (not while requests hold KV blocks).
    ResetPrefixCache(tokio::sync::oneshot::Sender<bool>),
}

/// One live request's executor-side state.
struct Live {
    handle: u64,
    /// Prompt followed by generated tokens (recompute after preemption reads from here).
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Content keys of the full blocks of `tokens` known to the core (prefix caching); `None`
    /// when the request is not cached (echo with prompt logprobs).
    block_keys: Option<Vec<BlockKey>>,
    min_tokens: u32,
    ignore_eos: bool,
    /// `None` while the sampler travels with an iteration.
    sampler: Option<Box<Sampler>>,
    /// Constrained decoding state; travels with the sampler.
    constraint: Option<Box<Constraint>>,
    logprobs: Option<u8>,
    /// Echo with logprobs: alternatives wanted, and the prompt logprobs gathered so far (slot
    /// `p` is the logprob of prompt token `p + 1`); `None` once sent.
    prompt_logprobs: Option<(u8, Vec<Option<TokenLogprob>>)>,
    discard_output: bool,
    choice: u32,
    /// The sampler and grammar state as they left with the iteration in flight (restored if
    /// that iteration is lost with its instance).
    sent: Option<(Box<Sampler>, Option<Box<Constraint>>)>,
    /// Since when it waits to recover from a failed instance, and how.
    recovering: Option<(Instant, Recovery)>,
    decoder: Decoder,
    stop: StopMatcher,
    /// Set once the executor decided to end it (EOS, stop string).
    stopped: bool,
    events: UnboundedSender<(u32, ToClient)>,
    slo: Slo,
    times: TokenTimes,
    instances: u64,
    /// The instance that sampled its latest token (where it is counted when it ends).
    last_on: Option<usize>,
    failed: bool,
}

impl Live {
    fn generated(&self) -> u32 {
        (self.tokens.len() - self.prompt_len) as u32
    }

    fn send(&self, ev: ToClient) {
        let _ = self.events.send((self.choice, ev));
    }

    /// Whether the prefill of positions `start..end` must return logits of every position: its
    /// prompt logprobs are wanted and some of them are still missing.
    fn wants_prompt_rows(&self, start: usize, end: usize) -> bool {
        let Some((_, got)) = &self.prompt_logprobs else {
            return false;
        };
        (start..end.min(got.len())).any(|p| got[p].is_none())
    }
}

/// Rows of the iteration in flight on one instance.
struct InFlight {
    iteration: u64,
    /// `(request, sequence index)` of every entry, in batch order (the index of the row that
    /// samples when an entry was split into one row per token).
    rows: Vec<(RequestId, usize)>,
    /// `(request, prompt position)` of each prompt-logprob row the worker returns, in order.
    prompt_rows: Vec<(RequestId, usize)>,
    /// Entries that could not be run (failed at dispatch); stopped when the iteration ends.
    broken: Vec<RequestId>,
    had_copies: bool,
    /// Destinations of its layer-wise copies.
    copy_to: Vec<usize>,
    /// What the core planned, and when it was handed to the worker (for the iteration log).
    shape: IterationShape,
    dispatched_us: TimeUs,
    /// Ran on the partner's cores too.
    wide: bool,
}

/// The last iterations run, as `(shape, time from dispatch to the report being handled)`:
/// what `GET /accellm/iterations` serves and `accellm bench --calibrate-out` fits.
#[derive(Debug, Default)]
pub(crate) struct IterationLog {
    /// Iterations logged since the start (also those no longer kept).
    pub total: u64,
    /// The most recent ones, oldest first.
    pub points: std::collections::VecDeque<Point>,
    /// The same for iterations that also ran on the idle partner's cores (a profile's `[wide]`).
    pub wide_total: u64,
    /// The most recent of those, oldest first.
    pub wide_points: std::collections::VecDeque<Point>,
    /// Time the scheduler thread spent handling iteration reports (detokenising, stop checks,
    /// the core's decisions, preparing the next batch), in ms, summed since the start.
    pub scheduler_ms: f64,
}

impl IterationLog {
    /// Iterations kept.
    pub const CAPACITY: usize = 50_000;

    fn push(&mut self, p: Point, wide: bool) {
        let (points, total) = if wide {
            (&mut self.wide_points, &mut self.wide_total)
        } else {
            (&mut self.points, &mut self.total)
        };
        if points.len() == Self::CAPACITY {
            points.pop_front();
        }
        points.push_back(p);
        *total += 1;
    }
}

/// A dispatch held back until KV copies into its blocks have landed. The core pins replica
/// tables while copies into them are in flight, so this should never trigger; it guards the
/// pools against a block being reused underneath a copy should the core's bookkeeping and the
/// executor's timing ever disagree.
enum Deferred {
    Run(usize, RunJob),
    Transfer(usize, LinkJob, Vec<u32>),
}

/// The scheduler thread's state.
pub(crate) struct Executor {
    sched: Scheduler,
    text: Arc<TextModel>,
    eos: Arc<Vec<u32>>,
    start: Instant,
    lives: Vec<Option<Live>>,
    handles: HashMap<u64, RequestId>,
    instances: Vec<InstanceThreads>,
    inflight: Vec<Option<InFlight>>,
    /// Per destination instance: `(source instance, block)` being written by in-flight copies.
    incoming: Vec<Vec<(usize, u32)>>,
    deferred: Vec<Deferred>,
    metrics: Arc<Mutex<Metrics>>,
    link_counters: Arc<LinkCounters>,
    actions: Vec<Action>,
    shutting_down: bool,
    iteration_log: Arc<Mutex<IterationLog>>,
    /// How to reconnect remote workers that failed (`None` for in-process instances).
    remote: Option<crate::remote::front::Reconnect>,
    /// Where the core's KV events go (`--kv-events-config`), and the buffer they are read into.
    kv_events: Option<crate::kv_events::Publisher>,
    kv_scratch: Vec<accellm_core::kv_events::CacheEvent>,
    /// Links between remote partners that are down ([`partition`]).
    cuts: Vec<partition::Cut>,
    /// Source and destination of each transfer in flight (a failed one cuts their link).
    transfer_ends: HashMap<u32, (usize, usize)>,
}

impl Executor {
    /// A scheduler thread over `sched`, running iterations on `instances`.
    pub(crate) fn new(
        sched: Scheduler,
        text: Arc<TextModel>,
        eos: Arc<Vec<u32>>,
        instances: Vec<InstanceThreads>,
        metrics: Arc<Mutex<Metrics>>,
        link_counters: Arc<LinkCounters>,
        iteration_log: Arc<Mutex<IterationLog>>,
    ) -> Self {
        let n = instances.len();
        let mut sched = sched;
        sched.set_block_plans(true);
        Self {
            sched,
            text,
            eos,
            start: Instant::now(),
            lives: Vec::new(),
            handles: HashMap::new(),
            instances,
            inflight: (0..n).map(|_| None).collect(),
            incoming: vec![Vec::new(); n],
            deferred: Vec::new(),
            metrics,
            link_counters,
            actions: Vec::new(),
            shutting_down: false,
            iteration_log,
            remote: None,
            kv_events: None,
            kv_scratch: Vec::new(),
            cuts: Vec::new(),
            transfer_ends: HashMap::new(),
        }
    }

    /// Publishes the core's KV events (the caller turned them on in the scheduler).
    pub(crate) fn with_kv_events(mut self, p: crate::kv_events::Publisher) -> Self {
        self.kv_events = Some(p);
        self
    }

    /// Sends the KV events of the last call into the core as one batch, with the token ids of
    /// the stored blocks (read from the requests' token streams, which the core's keys were
    /// computed from). Runs before the core's actions are carried out, while every request an
    /// event names is still live.
    fn publish_kv_events(&mut self) {
        let Some(publisher) = &self.kv_events else {
            return;
        };
        self.sched.take_kv_events(&mut self.kv_scratch);
        if self.kv_scratch.is_empty() {
            return;
        }
        use crate::kv_events::WireEvent;
        use accellm_core::kv_events::CacheEvent;
        let bs = self.sched.block_size();
        let mut events = Vec::with_capacity(self.kv_scratch.len());
        for e in self.kv_scratch.drain(..) {
            events.push(match e {
                CacheEvent::Stored {
                    request,
                    first_block,
                    keys,
                    parent,
                } => {
                    let from = first_block as usize * bs as usize;
                    let to = from + keys.len() * bs as usize;
                    let tokens = self
                        .lives
                        .get(request.index())
                        .and_then(Option::as_ref)
                        .and_then(|l| l.tokens.get(from..to));
                    let Some(tokens) = tokens else {
                        tracing::warn!(
                            request = request.0,
                            "KV event for blocks whose tokens are gone; not published"
                        );
                        continue;
                    };
                    WireEvent::Stored {
                        hashes: keys,
                        parent,
                        token_ids: tokens.to_vec(),
                        block_size: bs,
                    }
                }
                CacheEvent::Removed { keys } => WireEvent::Removed { hashes: keys },
                CacheEvent::AllCleared => WireEvent::AllCleared,
            });
        }
        if !events.is_empty() {
            publisher.publish(crate::kv_events::Batch::now(events));
        }
    }

    /// Lets the executor bring failed remote workers back.
    pub(crate) fn with_reconnect(mut self, r: crate::remote::front::Reconnect) -> Self {
        self.remote = Some(r);
        self
    }

    fn now(&self) -> TimeUs {
        self.start.elapsed().as_micros() as TimeUs
    }

    /// Runs until shut down and idle; then stops the instance threads.
    pub(crate) fn run(mut self, rx: Receiver<Input>) {
        while let Ok(first) = rx.recv() {
            self.handle(first);
            while let Ok(more) = rx.try_recv() {
                self.handle(more);
            }
            self.publish_metrics();
            if self.shutting_down && self.idle() {
                break;
            }
        }
        let joins: Vec<_> = self
            .instances
            .drain(..)
            .flat_map(|t| {
                drop(t.run);
                drop(t.link);
                if let Some(c) = &t.conn {
                    let _ = c.shutdown(std::net::Shutdown::Both);
                }
                t.joins
            })
            .collect();
        for j in joins {
            let _ = j.join();
        }
        self.remote = None;
        tracing::info!("scheduler thread stopped");
    }

    fn idle(&self) -> bool {
        self.sched.live_requests() == 0
            && self.inflight.iter().all(Option::is_none)
            && self.deferred.is_empty()
    }

    fn handle(&mut self, input: Input) {
        let report_from = matches!(input, Input::Worker(_)).then(Instant::now);
        self.handle_input(input);
        self.drain_actions();
        if let (Some(t), Ok(mut log)) = (report_from, self.iteration_log.lock()) {
            log.scheduler_ms += t.elapsed().as_secs_f64() * 1e3;
        }
    }

    fn handle_input(&mut self, input: Input) {
        match input {
            Input::Submit(s) => self.submit(*s),
            Input::Cancel(h) => {
                if let Some(&id) = self.handles.get(&h) {
                    let now = self.now();
                    self.sched.cancel(now, id);
                }
            }
            Input::Worker(r) => self.iteration_done(*r),
            Input::TransferDone { id, error } => {
                if let Some((from, to)) = partition::probe_of(id) {
                    self.probe_done(from, to, error);
                    return;
                }
                let ends = self.transfer_ends.remove(&id);
                if let Some(e) = error {
                    tracing::error!(transfer = id, error = %e, "KV transfer failed");
                    // Its move is called off by the cut (when the front still drives both).
                    if let (Some((from, to)), true) = (ends, self.remote.is_some()) {
                        self.link_down(from, to, &e);
                    }
                }
                let now = self.now();
                self.sched.transfer_done(now, id);
            }
            Input::InstanceDown(i) => self.instance_down(i),
            Input::InstanceUp(i, c) => self.instance_up(i, *c),
            Input::ProbeLink { from, to } => self.probe_again(from, to),
            Input::ResetPrefixCache(reply) => {
                let done = self.sched.reset_prefix_cache();
                let _ = reply.send(done);
            }
            Input::Shutdown => {
                if !self.shutting_down {
                    tracing::info!(
                        live = self.sched.live_requests(),
                        "cancelling live requests"
                    );
                }
                self.shutting_down = true;
                let ids: Vec<RequestId> = self.handles.values().copied().collect();
                let now = self.now();
                for id in ids {
                    self.sched.cancel(now, id);
                }
            }
        }
    }

    fn submit(&mut self, s: Submission) {
        if self.shutting_down {
            let _ = s.events.send((s.choice, ToClient::ShuttingDown));
            return;
        }
        let now = self.now();
        let spec = RequestSpec {
            arrival_us: now,
            prompt_tokens: s.prompt.len() as u32,
            max_output_tokens: s.max_tokens,
            slo: s.slo,
            priority: s.priority,
            class: None,
        };
        // Reserve the slot the core will use before it can schedule it: the id is only known
        // after `submit`, and actions are drained afterwards, so insert right after.
        let ignore_eos = s.params.ignore_eos;
        let prompt_logprobs = s
            .prompt_logprobs
            .map(|k| (k, vec![None; s.prompt.len().saturating_sub(1)]));
        let stop = StopMatcher::new(&s.params.stop);
        // Prefix caching: the content keys of the prompt's full blocks (the core ignores them when
        // caching is off). One server serves one model (workers check theirs at connect), so the
        // keys need no model salt.
        // A request that wants its prompt's logprobs (echo) must compute every position, so it
        // neither starts after a cached prefix nor offers its blocks (no keys). The keys of
        // generated blocks follow as they fill (`on_token`).
        let bs = self.sched.block_size();
        let block_keys = prompt_logprobs
            .is_none()
            .then(|| accellm_core::kv::chain_keys(&s.prompt, bs, 0));
        let live = Live {
            handle: s.handle,
            prompt_len: s.prompt.len(),
            tokens: s.prompt,
            block_keys,
            min_tokens: s.min_tokens,
            ignore_eos,
            sampler: Some(Box::new(Sampler::new(s.params))),
            constraint: s.constraint,
            logprobs: s.logprobs,
            prompt_logprobs,
            discard_output: s.discard_output,
            choice: s.choice,
            sent: None,
            recovering: None,
            decoder: self.text.decoder(s.starts_text),
            stop,
            stopped: false,
            events: s.events,
            slo: s.slo,
            times: TokenTimes::new(Instant::now()),
            instances: 0,
            last_on: None,
            failed: false,
        };
        let prompt_tokens = live.prompt_len as u64;
        let handle = live.handle;
        let keys = live.block_keys.as_deref().map(BlockKeys::from);
        let id = self.sched.submit_keyed(now, spec, keys);
        let i = id.index();
        if self.lives.len() <= i {
            self.lives.resize_with(i + 1, || None);
        }
        self.handles.insert(handle, id);
        self.lives[i] = Some(live);
        // A rejection is an action of `submit` itself: handle it before telling the client.
        self.drain_actions();
        if let Some(live) = self.lives[i].as_ref().filter(|l| l.handle == handle) {
            live.send(ToClient::Accepted);
            if let Ok(mut m) = self.metrics.lock() {
                m.prompt_tokens += prompt_tokens;
            }
        }
    }

    fn drain_actions(&mut self) {
        loop {
            self.publish_kv_events();
            self.sched.take_actions(&mut self.actions);
            if self.actions.is_empty() {
                break;
            }
            let actions = std::mem::take(&mut self.actions);
            for a in &actions {
                match a {
                    Action::Run(plan) => self.dispatch_run(plan),
                    Action::Transfer {
                        id,
                        to,
                        from,
                        spans,
                        ..
                    } => self.dispatch_transfer(*id, *from, *to, spans),
                    Action::Finished { request, reason } => self.finished(*request, *reason),
                    Action::Rejected { request, reason } => self.rejected(*request, *reason),
                }
            }
            self.actions = actions;
            self.actions.clear();
        }
    }

    fn rejected(&mut self, id: RequestId, reason: RejectReason) {
        let Some(live) = self.lives.get_mut(id.index()).and_then(Option::take) else {
            return;
        };
        self.handles.remove(&live.handle);
        // The Accepted sent at submission is superseded: handlers read the first two events.
        live.send(ToClient::Rejected(reason));
        if let Ok(mut m) = self.metrics.lock() {
            let k = match reason {
                RejectReason::QueueFull => 0,
                RejectReason::TooLong => 1,
            };
            m.rejected[k] += 1;
        }
    }

    fn finished(&mut self, id: RequestId, reason: FinishReason) {
        let Some(mut live) = self.lives.get_mut(id.index()).and_then(Option::take) else {
            return;
        };
        self.handles.remove(&live.handle);
        let finish = match reason {
            FinishReason::Cancelled => Finish::Abort,
            _ if live.discard_output => Finish::Length,
            FinishReason::Stop => Finish::Stop,
            FinishReason::Length => {
                if live.stopped {
                    Finish::Stop
                } else {
                    Finish::Length
                }
            }
        };
        if finish == Finish::Length {
            let tail = live.stop.flush() + &live.decoder.flush();
            if !tail.is_empty() {
                live.send(ToClient::Token {
                    text: tail,
                    logprob: None,
                });
            }
        }
        let completion = if live.discard_output {
            0
        } else {
            live.generated()
        };
        if !live.failed {
            live.send(ToClient::Done {
                finish,
                prompt_tokens: live.prompt_len as u32,
                completion_tokens: completion,
                instances: live.instances,
            });
        }
        if let Ok(mut m) = self.metrics.lock() {
            let k = match finish {
                Finish::Stop => 0,
                Finish::Length => 1,
                Finish::Abort => 2,
            };
            m.finished[k] += 1;
            let now = Instant::now();
            m.e2e.observe(live.times.since_arrival(now).as_secs_f64());
            let completed = finish != Finish::Abort && !live.failed;
            if let Some(g) = live.last_on.and_then(|i| m.instances.get_mut(i)) {
                g.completed += u64::from(completed);
            }
            m.slo_met
                .add(live.times.verdict(&live.slo, completed, now, completion));
        }
    }

    fn dispatch_run(&mut self, plan: &RunPlan) {
        let (instance, iteration, wide) = (plan.instance, plan.iteration, plan.borrowed.is_some());
        let i = instance as usize;
        let mut seqs = Vec::with_capacity(plan.entries.len());
        let mut samples = Vec::new();
        let mut rows = Vec::with_capacity(plan.entries.len());
        // Rows that sample a token (an entry's last row, when the entry wants one).
        let mut sample_rows = Vec::new();
        let mut prompt_rows = Vec::new();
        let mut prompt_jobs = Vec::new();
        let mut broken = Vec::new();
        for e in &plan.entries {
            let Some(live) = self.lives.get(e.request.index()).and_then(Option::as_ref) else {
                broken.push(e.request);
                continue;
            };
            let want = e.sample;
            let end = e.end as usize;
            let table = plan.blocks(e);
            if table.is_empty() || end > live.tokens.len() {
                tracing::error!(
                    request = e.request.0,
                    "inconsistent batch entry; failing it"
                );
                broken.push(e.request);
                continue;
            }
            let start_u = e.start as usize;
            if live.wants_prompt_rows(start_u, end) {
                // Prompt logprobs need the logits of every position: one row per token, each a
                // sequence of its own over the same block table. A forward pass stores every
                // row's K/V of a layer before any row attends, so each row sees exactly the
                // keys it would inside one chunk.
                let (top, got) = live
                    .prompt_logprobs
                    .as_ref()
                    .map_or((0, 0), |p| (p.0, p.1.len()));
                for p in start_u..end {
                    if p < got {
                        prompt_rows.push((e.request, p));
                        prompt_jobs.push(PromptRow {
                            seq: seqs.len(),
                            target: live.tokens[p + 1],
                            top,
                        });
                    }
                    seqs.push(SeqInput {
                        tokens: vec![live.tokens[p]],
                        start_pos: p,
                        block_table: table.to_vec(),
                        want_logits: p < got || (want && p + 1 == end),
                    });
                }
                rows.push((e.request, seqs.len() - 1));
                if want {
                    sample_rows.push((e.request, seqs.len() - 1));
                }
            } else {
                if want {
                    sample_rows.push((e.request, seqs.len()));
                }
                rows.push((e.request, seqs.len()));
                seqs.push(SeqInput {
                    tokens: live.tokens[start_u..end].to_vec(),
                    start_pos: start_u,
                    block_table: table.to_vec(),
                    want_logits: want,
                });
            }
        }
        // The layer-wise copies, one plan per destination: the spans the core planned.
        let mut copies: Vec<(usize, Vec<KvSpan>)> = Vec::new();
        for c in &plan.copies {
            let spans = plan.spans(c).iter().map(kv_span);
            match copies.iter_mut().find(|(t, _)| *t == c.to as usize) {
                Some((_, v)) => v.extend(spans),
                None => copies.push((c.to as usize, spans.collect())),
            }
        }
        // Samplers travel with the job; a remote worker may be lost with them, so keep a copy.
        let keep_copy = self.remote.is_some();
        for &(req, seq) in &sample_rows {
            if let Some(live) = self.lives[req.index()].as_mut() {
                live.instances |= 1 << (instance.min(63));
                live.last_on = Some(i);
                if let Some(sampler) = live.sampler.take() {
                    let constraint = live.constraint.take();
                    if keep_copy {
                        live.sent = Some((sampler.clone(), constraint.clone()));
                    }
                    let mask_eos = !live.ignore_eos && live.generated() < live.min_tokens;
                    samples.push(SampleJob {
                        seq,
                        sampler,
                        mask_eos,
                        logprobs: live.logprobs,
                        constraint,
                        allowed: None,
                    });
                }
            }
        }
        for &r in &broken {
            self.fail(r, "internal error: inconsistent batch".into());
        }
        let had_copies = !copies.is_empty();
        let copy_to: Vec<usize> = copies.iter().map(|(to, _)| *to).collect();
        let copies: Vec<CopyPlan> = copies
            .into_iter()
            .map(|(to, spans)| {
                self.incoming[to].extend(spans.iter().map(|s| (i, s.dst_block)));
                CopyPlan {
                    to,
                    spans: Arc::new(spans),
                }
            })
            .collect();
        let shape = plan.shape;
        let predicted_s = plan.predicted_us as f64 / 1e6;
        self.inflight[i] = Some(InFlight {
            iteration,
            rows,
            prompt_rows,
            broken,
            had_copies,
            copy_to,
            shape,
            dispatched_us: self.now(),
            wide,
        });
        let job = RunJob {
            iteration,
            batch: ForwardBatch { seqs },
            samples,
            prompt_rows: prompt_jobs,
            copies,
            predicted_s,
            wide,
        };
        if self.conflicts(
            i,
            job.batch
                .seqs
                .iter()
                .flat_map(|s| s.block_table.iter().copied()),
        ) {
            tracing::debug!(
                instance = i,
                "iteration waits for KV copies into its blocks"
            );
            self.deferred.push(Deferred::Run(i, job));
        } else {
            self.send_run(i, job);
        }
    }

    fn send_run(&mut self, i: usize, job: RunJob) {
        if self.instances[i].run.send(job).is_err() {
            tracing::error!(instance = i, "worker thread is gone");
        }
    }

    /// Whether any of `blocks` on instance `i` is the target of a copy still in flight.
    fn conflicts(&self, i: usize, blocks: impl Iterator<Item = u32>) -> bool {
        let inc = &self.incoming[i];
        if inc.is_empty() {
            return false;
        }
        let mut blocks = blocks.peekable();
        blocks.peek().is_some() && blocks.any(|b| inc.iter().any(|&(_, d)| d == b))
    }

    fn dispatch_transfer(
        &mut self,
        id: u32,
        from: InstanceId,
        to: InstanceId,
        spans: &[BlockSpan],
    ) {
        let spans: Vec<KvSpan> = spans.iter().map(kv_span).collect();
        let dst: Vec<u32> = spans.iter().map(|s| s.dst_block).collect();
        let job = LinkJob::Transfer {
            id,
            to: to as usize,
            spans,
        };
        self.transfer_ends.insert(id, (from as usize, to as usize));
        if self.conflicts(to as usize, dst.iter().copied()) {
            self.deferred
                .push(Deferred::Transfer(from as usize, job, dst));
        } else if self.instances[from as usize].link.send(job).is_err() {
            tracing::error!(instance = from, "link thread is gone");
        }
    }

    fn retry_deferred(&mut self) {
        if self.deferred.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.deferred);
        for d in pending {
            match d {
                Deferred::Run(i, job) => {
                    let blocked = self.conflicts(
                        i,
                        job.batch
                            .seqs
                            .iter()
                            .flat_map(|s| s.block_table.iter().copied()),
                    );
                    if blocked {
                        self.deferred.push(Deferred::Run(i, job));
                    } else {
                        self.send_run(i, job);
                    }
                }
                Deferred::Transfer(from, job, dst) => {
                    let to = match &job {
                        LinkJob::Transfer { to, .. } => *to,
                        _ => 0,
                    };
                    if self.conflicts(to, dst.iter().copied()) {
                        self.deferred.push(Deferred::Transfer(from, job, dst));
                    } else if self.instances[from].link.send(job).is_err() {
                        tracing::error!(instance = from, "link thread is gone");
                    }
                }
            }
        }
    }

    /// Ends `req` with an error for its client (the core finishes it at its next event).
    fn fail(&mut self, req: RequestId, message: String) {
        if let Some(live) = self.lives.get_mut(req.index()).and_then(Option::as_mut) {
            if !live.failed {
                live.failed = true;
                live.send(ToClient::Failed(message));
            }
        }
    }

    fn iteration_done(&mut self, r: RunReport) {
        let i = r.instance;
        let Some(flight) = self.inflight[i].take() else {
            tracing::error!(
                instance = i,
                "report for an instance with nothing in flight"
            );
            return;
        };
        debug_assert_eq!(flight.iteration, r.iteration);
        self.incoming
            .iter_mut()
            .for_each(|v| v.retain(|&(src, _)| src != i));
        let now = self.now();
        if let Ok(mut log) = self.iteration_log.lock() {
            let sh = &flight.shape;
            let point = Point {
                tokens: sh.tokens(),
                sum_context: sh.prefill_attn_pairs + sh.decode_kv_tokens,
                logit_rows: sh.logit_rows,
                ms: (now.saturating_sub(flight.dispatched_us).max(1)) as f64 / 1e3,
            };
            log.push(point, flight.wide);
        }
        let mut stopped = flight.broken.clone();
        let mut r = r;
        let mut by_seq: HashMap<usize, Sampled> = std::mem::take(&mut r.tokens)
            .into_iter()
            .map(|s| (s.seq, s))
            .collect();
        if let Some(e) = r.copy_error.take() {
            if self.remote.is_some() {
                // A partner this worker cannot reach: the link between them is down (the
                // iteration's copies are taken out of it, replicas across it dropped); the
                // tokens of this iteration are good, and both go on serving.
                tracing::error!(instance = i, error = %e, "KV copy to a partner failed");
                for &j in &flight.copy_to {
                    self.link_down(i, j, &e);
                }
            } else {
                r.error.get_or_insert(e);
            }
        }
        if let Some(e) = &r.error {
            tracing::error!(instance = i, error = %e, "iteration failed");
        }
        if r.error.is_none() {
            self.gather_prompt_logprobs(&flight.prompt_rows, r.prompt_logprobs);
        }
        for &(req, seq) in &flight.rows {
            if let Some(e) = &r.error {
                self.fail(req, format!("engine error: {e}"));
                stopped.push(req);
                continue;
            }
            if let Some(s) = by_seq.remove(&seq) {
                if let Some(live) = self.lives[req.index()].as_mut() {
                    live.sampler = Some(s.sampler);
                    live.constraint = s.constraint;
                }
                if let Some(e) = s.error {
                    // The choice's end, not the server's failure: its client hears why.
                    if let Some(live) = self.lives[req.index()].as_mut() {
                        live.stopped = true;
                        live.send(ToClient::GrammarFailed(e));
                    }
                    stopped.push(req);
                } else if self.on_token(req, s.token, s.logprob, s.grammar_done) {
                    stopped.push(req);
                }
            }
        }
        if let Ok(mut m) = self.metrics.lock() {
            if let Some(g) = m.instances.get_mut(i) {
                g.iterations += 1;
                g.wide_iterations += flight.wide as u64;
                g.busy_s += r.elapsed_s;
            }
        }
        self.sched.iteration_done(now, i as InstanceId, &stopped);
        if flight.had_copies {
            self.sched.copy_done(now, i as InstanceId, flight.iteration);
        }
        self.retry_deferred();
    }

    /// Stores the prompt logprobs an iteration returned; sends them to the client once complete.
    fn gather_prompt_logprobs(&mut self, rows: &[(RequestId, usize)], lps: Vec<TokenLogprob>) {
        for (&(req, p), lp) in rows.iter().zip(lps) {
            let Some(live) = self.lives.get_mut(req.index()).and_then(Option::as_mut) else {
                continue;
            };
            if let Some(slot) = live.prompt_logprobs.as_mut().and_then(|g| g.1.get_mut(p)) {
                *slot = Some(lp);
            }
        }
        for &(req, _) in rows {
            let Some(live) = self.lives.get_mut(req.index()).and_then(Option::as_mut) else {
                continue;
            };
            if live
                .prompt_logprobs
                .as_ref()
                .is_some_and(|g| g.1.iter().all(Option::is_some))
            {
                if let Some((_, got)) = live.prompt_logprobs.take() {
                    live.send(ToClient::PromptLogprobs(got));
                }
            }
        }
    }

    /// Handles a new token of `req` (with its logprob, and whether it completed the output's
    /// grammar); returns whether the request must stop now.
    fn on_token(
        &mut self,
        req: RequestId,
        token: u32,
        logprob: Option<Box<TokenLogprob>>,
        grammar_done: bool,
    ) -> bool {
        let Some(live) = self.lives[req.index()].as_mut() else {
            return false;
        };
        if let Some((_, got)) = live.prompt_logprobs.take() {
            // A one-token prompt has none to wait for; a missing one is a bug, not a hang.
            if got.iter().any(Option::is_none) {
                tracing::warn!(request = req.0, "prompt logprobs incomplete");
            }
            live.send(ToClient::PromptLogprobs(got));
        }
        if live.discard_output {
            // Only the prompt was wanted: the token the core insisted on is dropped.
            live.tokens.push(token);
            live.stopped = true;
            return true;
        }
        let latency = live.times.token(Instant::now());
        let recovered = live.recovering.take();
        if let Ok(mut m) = self.metrics.lock() {
            if let Some((since, kind)) = recovered {
                let s = since.elapsed().as_secs_f64();
                tracing::info!(request = req.0, kind = ?kind, recovery_ms = s * 1e3, "recovered");
                m.observe_recovery(kind == Recovery::Replica, s);
            }
            m.generation_tokens += 1;
            match latency {
                TokenLatency::First(ttft) => m.ttft.observe(ttft.as_secs_f64()),
                TokenLatency::Gap(gap) => m.itl.observe(gap.as_secs_f64()),
            }
        }
        live.tokens.push(token);
        if let Some(keys) = live.block_keys.as_mut() {
            // A block of generated tokens filled: its key joins the request's in the core,
            // which offers the block once its KV is computed (the next iteration, for the
            // token just sampled).
            let known = keys.len();
            let bs = self.sched.block_size();
            accellm_core::kv::extend_chain_keys(keys, &live.tokens, bs, 0);
            self.sched.extend_block_keys(req, &keys[known..]);
        }
        if live.stopped || live.failed {
            return true;
        }
        let generated = live.generated();
        let text;
        let mut stop = false;
        if !live.ignore_eos && self.eos.contains(&token) {
            text = live.stop.flush();
            stop = true;
        } else {
            let piece = live.decoder.push(token);
            if generated < live.min_tokens {
                text = piece;
            } else {
                match live.stop.push(&piece) {
                    StopStatus::Continue(t) => text = t,
                    StopStatus::Stopped(t) => {
                        text = t;
                        stop = true;
                    }
                }
            }
        }
        if grammar_done && !stop {
            // The output's grammar is complete: nothing else may follow.
            let text = text + &live.stop.flush() + &live.decoder.flush();
            live.send(ToClient::Token { text, logprob });
            live.stopped = true;
            return true;
        }
        live.send(ToClient::Token { text, logprob });
        live.stopped = stop;
        stop
    }

    /// A remote worker failed: forget its iteration in flight (samplers restored), tell the
    /// core, which recovers its requests, and start trying to reconnect it: it is taken back
    /// as soon as it answers. (A partner that only its partner cannot reach is not down: the
    /// link between them is, [`partition`].)
    fn instance_down(&mut self, i: usize) {
        if !self.sched.is_up(i as InstanceId) {
            return;
        }
        if let Some(flight) = self.inflight[i].take() {
            for (req, _) in flight.rows {
                if let Some(live) = self.lives.get_mut(req.index()).and_then(Option::as_mut) {
                    if let (None, Some((sampler, constraint))) = (&live.sampler, live.sent.take()) {
                        live.sampler = Some(sampler);
                        live.constraint = constraint;
                    }
                }
            }
        }
        self.incoming
            .iter_mut()
            .for_each(|v| v.retain(|&(src, _)| src != i));
        self.incoming[i].clear();
        self.deferred.retain(|d| match d {
            Deferred::Run(k, _) => *k != i,
            Deferred::Transfer(k, job, _) => {
                *k != i && !matches!(job, LinkJob::Transfer { to, .. } if *to == i)
            }
        });
        let now = self.now();
        let since = Instant::now();
        let recovered = self.sched.instance_down(now, i as InstanceId);
        tracing::warn!(
            instance = i,
            by_replica = recovered
                .iter()
                .filter(|r| r.1 == Recovery::Replica)
                .count(),
            by_recompute = recovered
                .iter()
                .filter(|r| r.1 == Recovery::Recompute)
                .count(),
            "instance down"
        );
        for (req, kind) in recovered {
            if let Some(live) = self.lives.get_mut(req.index()).and_then(Option::as_mut) {
                live.recovering = Some((since, kind));
            }
        }
        if let Ok(mut m) = self.metrics.lock() {
            if let Some(g) = m.instances.get_mut(i) {
                g.down = true;
            }
        }
        if let Some(r) = &self.remote {
            r.start(i);
        }
        self.retry_deferred();
    }

    /// A restarted remote worker is connected again: drive it, and give it back to the core.
    fn instance_up(&mut self, i: usize, c: crate::remote::front::Connected) {
        let Some(r) = &self.remote else { return };
        if self.sched.is_up(i as InstanceId) {
            return;
        }
        match r.spawn(i, c) {
            Ok(t) => {
                // The old threads end on their own (their connection is gone).
                self.instances[i] = t;
                let now = self.now();
                self.sched.instance_up(now, i as InstanceId);
                tracing::warn!(instance = i, "instance up again");
                self.probe_from(i);
                if let Ok(mut m) = self.metrics.lock() {
                    if let Some(g) = m.instances.get_mut(i) {
                        g.down = false;
                    }
                }
            }
            Err(e) => {
                tracing::error!(instance = i, error = %e, "cannot drive the reconnected worker");
                r.start(i);
            }
        }
    }

    fn publish_metrics(&mut self) {
        let copied_r = self
            .link_counters
            .replica_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        let copied_t = self
            .link_counters
            .transfer_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        let linked = self.pairs_linked();
        let Ok(mut m) = self.metrics.lock() else {
            return;
        };
        m.pairs_linked = linked;
        let waiting = self.sched.waiting_requests() as u64;
        m.waiting = waiting;
        m.running = (self.sched.live_requests() as u64).saturating_sub(waiting);
        let (mut used, mut total) = (0u64, 0u64);
        for (k, inst) in self.sched.instances().iter().enumerate() {
            let kv = &inst.kv;
            // As a new request sees it: replicas it would evict are room (vLLM's meaning).
            used += kv.num_blocks().saturating_sub(kv.available_for_primary()) as u64;
            total += kv.num_blocks() as u64;
            if let Some(g) = m.instances.get_mut(k) {
                g.free_blocks = kv.free_blocks();
                g.primary_blocks = kv.primary_blocks();
                g.replica_blocks = kv.replica_blocks();
                g.total_blocks = kv.num_blocks();
                g.waiting = inst.waiting.len() as u32;
                g.running = inst.running.len() as u32;
                g.role = match inst.constraint {
                    PhaseConstraint::Any => Role::Mixed,
                    PhaseConstraint::PrefillOnly => Role::Prefill,
                    PhaseConstraint::DecodeOnly => Role::Decode,
                    PhaseConstraint::Idle => Role::Idle,
                };
            }
        }
        m.kv_usage = if total == 0 {
            0.0
        } else {
            used as f64 / total as f64
        };
        m.counters = *self.sched.counters();
        m.copied_replica_bytes = copied_r;
        m.copied_transfer_bytes = copied_t;
    }
}

/// The engine's form of a span the core planned.
fn kv_span(s: &BlockSpan) -> KvSpan {
    KvSpan {
        src_block: s.src_block,
        dst_block: s.dst_block,
        slots: s.slot_start..s.slot_end,
    }
}

/// Keeps a [`Sender`] and tells the scheduler when a client goes away.
pub(crate) struct CancelGuard {
    /// The request's handle.
    pub handle: u64,
    /// The scheduler thread.
    pub tx: Sender<Input>,
    /// Set once the request ended normally.
    pub done: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.tx.send(Input::Cancel(self.handle));
        }
    }
}
