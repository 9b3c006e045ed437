//! Reports from the instances: a finished iteration (its tokens, its copies landed), a worker
//! lost or back.

use std::collections::HashMap;
use std::time::Instant;

use accellm_core::{profile::Point, scheduler::Recovery, InstanceId};

use super::{guard::Deferred, Executor, ToClient};
use crate::worker::{LinkJob, RunReport, Sampled};

impl Executor {
    pub(super) fn iteration_done(&mut self, r: RunReport) {
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

    /// A remote worker failed: forget its iteration in flight (samplers restored), tell the
    /// core, which recovers its requests, and start trying to reconnect it: it is taken back
    /// as soon as it answers. (A partner that only its partner cannot reach is not down: the
    /// link between them is, [`super::partition`].)
    pub(super) fn instance_down(&mut self, i: usize) {
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
    pub(super) fn instance_up(&mut self, i: usize, c: crate::remote::front::Connected) {
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
}
