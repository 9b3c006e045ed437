//! Each live request's executor-side state: its token stream, sampler, detokeniser and stop
//! strings; its tokens as they come back, and its answer when it ends.

use std::time::Instant;

use accellm_core::{
    kv::BlockKey,
    request::{FinishReason, RejectReason, RequestId, Slo},
    scheduler::Recovery,
};
use accellm_engine::{Sampler, StopMatcher, StopStatus, TokenLogprob};
use tokio::sync::mpsc::UnboundedSender;

use super::{Executor, Finish, ToClient};
use crate::constraint::Constraint;
use crate::metrics::{TokenLatency, TokenTimes};
use crate::text::Decoder;

/// One live request's executor-side state.
pub(super) struct Live {
    pub(super) handle: u64,
    /// Prompt followed by generated tokens (recompute after preemption reads from here).
    pub(super) tokens: Vec<u32>,
    pub(super) prompt_len: usize,
    /// Content keys of the full blocks of `tokens` known to the core (prefix caching); `None`
    /// when the request is not cached (echo with prompt logprobs).
    pub(super) block_keys: Option<Vec<BlockKey>>,
    pub(super) min_tokens: u32,
    pub(super) ignore_eos: bool,
    /// `None` while the sampler travels with an iteration.
    pub(super) sampler: Option<Box<Sampler>>,
    /// Constrained decoding state; travels with the sampler.
    pub(super) constraint: Option<Box<Constraint>>,
    pub(super) logprobs: Option<u8>,
    /// Echo with logprobs: alternatives wanted, and the prompt logprobs gathered so far (slot
    /// `p` is the logprob of prompt token `p + 1`); `None` once sent.
    pub(super) prompt_logprobs: Option<(u8, Vec<Option<TokenLogprob>>)>,
    pub(super) discard_output: bool,
    pub(super) choice: u32,
    /// The sampler and grammar state as they left with the iteration in flight (restored if
    /// that iteration is lost with its instance).
    pub(super) sent: Option<(Box<Sampler>, Option<Box<Constraint>>)>,
    /// Since when it waits to recover from a failed instance, and how.
    pub(super) recovering: Option<(Instant, Recovery)>,
    pub(super) decoder: Decoder,
    pub(super) stop: StopMatcher,
    /// Set once the executor decided to end it (EOS, stop string).
    pub(super) stopped: bool,
    pub(super) events: UnboundedSender<(u32, ToClient)>,
    pub(super) slo: Slo,
    pub(super) times: TokenTimes,
    pub(super) instances: u64,
    /// The instance that sampled its latest token (where it is counted when it ends).
    pub(super) last_on: Option<usize>,
    pub(super) failed: bool,
}

impl Live {
    pub(super) fn generated(&self) -> u32 {
        (self.tokens.len() - self.prompt_len) as u32
    }

    pub(super) fn send(&self, ev: ToClient) {
        let _ = self.events.send((self.choice, ev));
    }

    /// Whether the prefill of positions `start..end` must return logits of every position: its
    /// prompt logprobs are wanted and some of them are still missing.
    pub(super) fn wants_prompt_rows(&self, start: usize, end: usize) -> bool {
        let Some((_, got)) = &self.prompt_logprobs else {
            return false;
        };
        (start..end.min(got.len())).any(|p| got[p].is_none())
    }
}

impl Executor {
    pub(super) fn rejected(&mut self, id: RequestId, reason: RejectReason) {
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

    pub(super) fn finished(&mut self, id: RequestId, reason: FinishReason) {
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

    /// Ends `req` with an error for its client (the core finishes it at its next event).
    pub(super) fn fail(&mut self, req: RequestId, message: String) {
        if let Some(live) = self.lives.get_mut(req.index()).and_then(Option::as_mut) {
            if !live.failed {
                live.failed = true;
                live.send(ToClient::Failed(message));
            }
        }
    }

    /// Stores the prompt logprobs an iteration returned; sends them to the client once complete.
    pub(super) fn gather_prompt_logprobs(
        &mut self,
        rows: &[(RequestId, usize)],
        lps: Vec<TokenLogprob>,
    ) {
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
    pub(super) fn on_token(
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
}
