//! The scheduler thread: owns the core [`Scheduler`] and drives it in real time.
//!
//! Every event reaches this thread through one channel ([`Input`]): arrivals and cancellations
//! from HTTP handlers, finished iterations from instance workers, landed transfers from links.
//! The thread feeds each to the core with the wall clock (µs since server start), then carries
//! out the core's actions. An `Action::Run` carries the core's [`RunPlan`]: each entry's token
//! range, sampling and block table, each copy's block spans; [`dispatch`] turns it into a
//! worker's job with the token ids and samplers it adds, reading nothing else of the core. An
//! `Action::Transfer` carries its spans too; finished and rejected requests are answered.
//! Tokens come back here to be detokenised, checked against stop strings and streamed to their
//! clients ([`live`]).
//!
//! - [`messages`]: what HTTP handlers, workers and links send this thread, and what clients hear.
//! - [`dispatch`]: plans into worker jobs and link jobs.
//! - [`guard`]: holds back a job whose blocks a copy still writes.
//! - [`reports`]: finished iterations, failed and returning workers.
//! - [`live`]: per-request state, tokens, detokenising, stop strings, answers.
//! - [`observe`]: the iteration log, Prometheus gauges, KV events.
//! - [`partition`]: links between remote partners that are down, and their probes.

mod dispatch;
mod guard;
mod live;
mod messages;
mod observe;
#[cfg(test)]
mod one_plan;
mod partition;
mod reports;

use std::collections::HashMap;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use accellm_core::{
    kv::BlockKeys,
    request::{RequestId, RequestSpec},
    scheduler::{Action, Scheduler},
    TimeUs,
};
use accellm_engine::{Sampler, StopMatcher};

use crate::metrics::{Metrics, TokenTimes};
use crate::text::TextModel;
use crate::worker::{InstanceThreads, LinkCounters};

use dispatch::InFlight;
use guard::Deferred;
use live::Live;
pub(crate) use messages::{CancelGuard, Finish, Input, Submission, ToClient};
pub(crate) use observe::IterationLog;

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
    /// Every action carried out, in order, when a test keeps them ([`one_plan`]).
    #[cfg(test)]
    carried: Option<Vec<Action>>,
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
            #[cfg(test)]
            carried: None,
        }
    }

    /// Publishes the core's KV events (the caller turned them on in the scheduler).
    pub(crate) fn with_kv_events(mut self, p: crate::kv_events::Publisher) -> Self {
        self.kv_events = Some(p);
        self
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
                #[cfg(test)]
                if let Some(kept) = &mut self.carried {
                    kept.push(a.clone());
                }
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
}
