//! The core's plans into jobs: a [`RunPlan`] becomes a worker's [`RunJob`] (the plan's token
//! ranges filled with the requests' token ids, its block tables, its samplers, its copies' spans
//! per destination); a transfer's spans become a link job. Nothing here reads the core's state.

use std::sync::Arc;

use accellm_core::{
    cost::IterationShape,
    plan::{BlockSpan, RunPlan},
    request::RequestId,
    InstanceId, TimeUs,
};
use accellm_engine::{ForwardBatch, KvSpan, SeqInput};

use super::{guard::Deferred, Executor};
use crate::worker::{CopyPlan, LinkJob, PromptRow, RunJob, SampleJob};

/// Rows of the iteration in flight on one instance.
pub(super) struct InFlight {
    pub(super) iteration: u64,
    /// `(request, sequence index)` of every entry, in batch order (the index of the row that
    /// samples when an entry was split into one row per token).
    pub(super) rows: Vec<(RequestId, usize)>,
    /// `(request, prompt position)` of each prompt-logprob row the worker returns, in order.
    pub(super) prompt_rows: Vec<(RequestId, usize)>,
    /// Entries that could not be run (failed at dispatch); stopped when the iteration ends.
    pub(super) broken: Vec<RequestId>,
    pub(super) had_copies: bool,
    /// Destinations of its layer-wise copies.
    pub(super) copy_to: Vec<usize>,
    /// What the core planned, and when it was handed to the worker (for the iteration log).
    pub(super) shape: IterationShape,
    pub(super) dispatched_us: TimeUs,
    /// Ran on the partner's cores too.
    pub(super) wide: bool,
}

impl Executor {
    pub(super) fn dispatch_run(&mut self, plan: &RunPlan) {
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
        let copies = copies_by_destination(plan);
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

    pub(super) fn send_run(&mut self, i: usize, job: RunJob) {
        if self.instances[i].run.send(job).is_err() {
            tracing::error!(instance = i, "worker thread is gone");
        }
    }

    pub(super) fn dispatch_transfer(
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
}

/// The plan's layer-wise copies as the links carry them: one list of spans per destination, in
/// order of first appearance.
pub(super) fn copies_by_destination(plan: &RunPlan) -> Vec<(usize, Vec<KvSpan>)> {
    let mut copies: Vec<(usize, Vec<KvSpan>)> = Vec::new();
    for c in &plan.copies {
        let spans = plan.spans(c).iter().map(kv_span);
        match copies.iter_mut().find(|(t, _)| *t == c.to as usize) {
            Some((_, v)) => v.extend(spans),
            None => copies.push((c.to as usize, spans.collect())),
        }
    }
    copies
}

/// The engine's form of a span the core planned.
fn kv_span(s: &BlockSpan) -> KvSpan {
    KvSpan {
        src_block: s.src_block,
        dst_block: s.dst_block,
        slots: s.slot_start..s.slot_end,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use accellm_core::{
        cluster::ClusterConfig,
        cost::{LinearCostModel, Link},
        instance::InstanceConfig,
        request::{RequestSpec, Slo},
        scheduler::{Action, Scheduler, SchedulerConfig},
    };
    use accellm_engine::KvSpan;

    use super::copies_by_destination;

    /// One plan, two executors: the spans the server's links copy per destination are the
    /// engine's own spans for the plan's token ranges over the core's tables, and add up to the
    /// tokens the simulator charges each link for.
    #[test]
    fn the_server_copies_what_the_simulator_charges() {
        let cost = LinearCostModel {
            knots: Vec::new(),
            base_us: 1000.0,
            per_token_us: 10.0,
            per_kv_token_us: 0.01,
            per_logit_row_us: 1.0,
            layers: 2,
            kv_bytes_per_token: 512,
            wide: None,
        };
        let cfg = SchedulerConfig {
            kv_blocks: 64,
            block_size: 16,
            link: Link {
                bytes_per_s: 1e9,
                latency_us: 5.0,
            },
            max_waiting: 0,
            record_timelines: false,
            prefix_cache: true,
            share_idle_cores: false,
        };
        let cluster = ClusterConfig::Accellm(Default::default());
        let vllm = InstanceConfig::Vllm(Default::default());
        let mut s = Scheduler::build(&cfg, 2, &cluster, &vllm, Arc::new(cost)).unwrap();
        s.set_block_plans(true);
        for k in 0..6 {
            let spec = RequestSpec {
                arrival_us: 0,
                prompt_tokens: 20 + 9 * k,
                max_output_tokens: 12,
                slo: Slo::default(),
                priority: 0,
                class: None,
            };
            s.submit(0, spec);
        }
        let (mut now, mut copied, mut actions) = (0, 0u64, Vec::new());
        loop {
            s.take_actions(&mut actions);
            let plans: Vec<_> = actions
                .drain(..)
                .filter_map(|a| match a {
                    Action::Run(p) => Some(p),
                    _ => None,
                })
                .collect();
            if plans.is_empty() {
                break;
            }
            for p in plans {
                let by_dest = copies_by_destination(&p);
                assert_eq!(
                    by_dest.iter().map(|(to, _)| *to as u32).collect::<Vec<_>>(),
                    p.destinations().collect::<Vec<_>>()
                );
                for (to, spans) in &by_dest {
                    let mut want = Vec::new();
                    for c in p.copies.iter().filter(|c| c.to as usize == *to) {
                        let src = s.instance(p.instance).kv.table(c.request).unwrap();
                        let dst = s.instance(c.to).kv.table(c.request).unwrap();
                        let range = c.from as usize..c.end as usize;
                        want.extend(KvSpan::for_positions(src, dst, range, 16).unwrap());
                    }
                    assert_eq!(spans, &want);
                    let slots: usize = spans.iter().map(KvSpan::len).sum();
                    assert_eq!(slots as u64, p.copy_tokens_to(*to as u32));
                    copied += slots as u64;
                }
                now += 1_000;
                s.iteration_done(now, p.instance, &[]);
                s.copy_done(now, p.instance, p.iteration);
            }
        }
        assert_eq!(s.live_requests(), 0);
        assert!(copied > 0, "no copies exercised");
        assert_eq!(copied * 512, s.counters().copy_bytes);
    }
}
