//! Multi-turn chat as closed-loop conversations whose follow-ups carry the server's real answers.
//!
//! A `chat` workload ([`accellm_workload::ChatSpec`]) describes each conversation's turns: the
//! system prompt, each new user message, each answer's length, and when the next turn comes (the
//! answer's assumed duration plus a think time). The benchmark sends them as a user would:
//!
//! - a conversation's first turn is sent at its workload arrival time (conversations start at
//!   `--rate / mean turns`, Poisson or Gamma as for every workload; all at once without a rate);
//! - each later turn is sent when the previous answer has fully arrived plus the think time the
//!   workload drew for it (the workload's gap between the two turns minus the answer time it
//!   assumed, `output × tpot_ms`), so a server that answers at `tpot_ms` sees exactly the
//!   workload's arrival times and a slower one sees later follow-ups, as from real users;
//! - each later turn carries the system prompt, every earlier user message and **the text the
//!   server actually returned** for every earlier turn, then the new user message;
//! - `--max-concurrency` caps requests in flight across conversations, as for every workload;
//! - a failed turn ends its conversation: its later turns are not sent and are counted as failed
//!   (`abandoned`).
//!
//! User messages and system prompts are the workload's segments as text ([`PromptBuilder`]):
//! the user message of a turn is its conversation stream's tokens after the history, so every
//! message is text of its own and every conversation starts from its system prompt.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use accellm_workload::prefix::Segment;
use accellm_workload::{ChatSpec, Workload};
use tokio::sync::Semaphore;

use crate::client::{Client, Failure, Message, PreparedRequest, RequestResult, Role};
use crate::prompt::{PromptBuilder, TokenCounter};
use crate::runner::{finish, progress_bar, RunOptions, RunResult};

/// One turn: its request (whose `prompt` is the new user message) and the user's think time
/// after the previous answer, s.
#[derive(Debug, Clone)]
pub struct Turn {
    /// The request; `history` is filled in when it is sent.
    pub request: PreparedRequest,
    /// Seconds between the previous answer's end and this turn (0 for a first turn).
    pub think_s: f64,
}

/// One conversation.
#[derive(Debug, Clone)]
pub struct Conversation {
    /// Its system prompt, if the workload has one.
    pub system: Option<String>,
    /// Its turns in order.
    pub turns: Vec<Turn>,
}

/// The conversations of a chat workload, from its requests (`requests`, as
/// [`crate::cli::prepare`] made them for their lengths, SLOs and classes) and its content
/// segments. A request's segments are the system prompt's (if any) then its conversation's
/// stream up to the end of its answer; the stream names the conversation.
pub fn conversations(
    workload: &Workload,
    chat: &ChatSpec,
    requests: Vec<PreparedRequest>,
    prompts: &PromptBuilder,
    counter: &dyn TokenCounter,
) -> Vec<Conversation> {
    let wpt = prompts.words_per_token(counter);
    // Conversations by their stream; `None` for a request of no conversation's shape, which is
    // sent alone as it is.
    type Key = (Option<u64>, usize);
    let mut by_stream: BTreeMap<Key, (Option<Segment>, Vec<PreparedRequest>)> = BTreeMap::new();
    let mut order: Vec<Key> = Vec::new();
    for r in requests {
        let segments = workload
            .prefixes
            .get(r.index)
            .map_or(&[][..], Vec::as_slice);
        let (system, key) = match segments {
            [s, c] => (Some(*s), (Some(c.stream), 0)),
            [c] => (None, (Some(c.stream), 0)),
            _ => (None, (None, r.index)),
        };
        let entry = by_stream.entry(key).or_insert_with(|| {
            order.push(key);
            (system, Vec::new())
        });
        entry.1.push(r);
    }
    order
        .into_iter()
        .filter_map(|key| by_stream.remove(&key).map(|c| (key.0, c)))
        .map(|(stream, (system, mut reqs))| {
            reqs.sort_by(|a, b| a.arrival_s.total_cmp(&b.arrival_s));
            let sys_tokens = system.map_or(0, |s| s.tokens);
            let system_text = system.map(|s| prompts.segments_text(&[s], s.tokens, wpt));
            let mut history = 0u32;
            let mut prev: Option<(f64, u32)> = None;
            let turns = reqs
                .into_iter()
                .map(|mut r| {
                    let user = r
                        .prompt_tokens
                        .saturating_sub(sys_tokens)
                        .saturating_sub(history)
                        .max(1);
                    if let Some(stream) = stream {
                        let seg = Segment {
                            stream,
                            offset: history,
                            tokens: user,
                        };
                        r.prompt = prompts.segments_text(&[seg], user, wpt);
                    }
                    let think_s = prev.map_or(0.0, |(at, output)| {
                        (r.arrival_s - at - f64::from(output) * chat.tpot_ms / 1e3).max(0.0)
                    });
                    prev = Some((r.arrival_s, r.output_tokens));
                    history = history.saturating_add(user).saturating_add(r.output_tokens);
                    Turn {
                        request: r,
                        think_s,
                    }
                })
                .collect();
            Conversation {
                system: system_text,
                turns,
            }
        })
        .collect()
}

/// Runs every conversation (see the module documentation for the pacing) and waits for all of
/// them; results are in workload order.
pub async fn run(client: Client, conversations: Vec<Conversation>, opts: &RunOptions) -> RunResult {
    let total = conversations.iter().map(|c| c.turns.len()).sum::<usize>();
    let pb = progress_bar(total, opts.progress);
    let semaphore = opts
        .max_concurrency
        .map(|n| Arc::new(Semaphore::new(n.max(1))));
    let client = Arc::new(client);
    let start = Instant::now();
    let mut handles = Vec::with_capacity(conversations.len());
    for conv in conversations {
        let (client, semaphore, pb) = (client.clone(), semaphore.clone(), pb.clone());
        let open_loop = opts.open_loop;
        handles.push(tokio::spawn(async move {
            let mut history: Vec<Message> = conv
                .system
                .into_iter()
                .map(|content| Message {
                    role: Role::System,
                    content,
                })
                .collect();
            let mut results = Vec::with_capacity(conv.turns.len());
            let mut failed: Option<usize> = None;
            let mut ready = start;
            for (k, turn) in conv.turns.into_iter().enumerate() {
                let mut req = turn.request;
                if let Some(first) = failed {
                    let mut res = RequestResult::new(&req, start.elapsed().as_secs_f64());
                    res.failure = Some(Failure::Abandoned(first));
                    results.push(res);
                    pb.inc(1);
                    continue;
                }
                let at = if k == 0 {
                    match open_loop {
                        true => start + Duration::from_secs_f64(req.arrival_s.max(0.0)),
                        false => start,
                    }
                } else {
                    ready + Duration::from_secs_f64(turn.think_s)
                };
                tokio::time::sleep_until(at.into()).await;
                req.history = history.clone();
                let res = {
                    let _permit = match &semaphore {
                        Some(s) => s.clone().acquire_owned().await.ok(),
                        None => None,
                    };
                    client.send(&req, start).await
                };
                ready = Instant::now();
                pb.inc(1);
                match &res.failure {
                    Some(f) => {
                        tracing::debug!(index = req.index, "turn {k} failed: {f}");
                        failed = Some(k);
                    }
                    None => {
                        history.push(Message {
                            role: Role::User,
                            content: std::mem::take(&mut req.prompt),
                        });
                        history.push(Message {
                            role: Role::Assistant,
                            content: res.text.clone(),
                        });
                    }
                }
                results.push(res);
            }
            results
        }));
    }
    let mut results = Vec::with_capacity(total);
    for h in handles {
        match h.await {
            Ok(r) => results.extend(r),
            Err(e) => tracing::error!("conversation task panicked: {e}"),
        }
    }
    finish(results, start, &pb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::CharEstimate;
    use accellm_workload::{Arrivals, WorkloadSource, WorkloadSpec};

    #[test]
    fn turns_are_the_workloads_conversations_with_their_think_times() {
        let chat: ChatSpec = match "chat:turns=3,user=40,output=8,think_ms=500,tpot_ms=10,system=30"
            .parse::<WorkloadSource>()
            .unwrap()
        {
            WorkloadSource::Chat(c) => c,
            other => panic!("{other:?}"),
        };
        let mut spec = WorkloadSpec::new(WorkloadSource::Chat(chat.clone()));
        spec.max_requests = Some(9);
        spec.arrivals = Some(Arrivals::Poisson { rate: 3.0 });
        spec.seed = 5;
        let w = spec.generate().unwrap();
        let prompts = PromptBuilder::new(5);
        let est = CharEstimate {
            chars_per_token: 4.0,
        };
        let reqs = crate::cli::prepare(&w, &prompts, &est);
        let convs = conversations(&w, &chat, reqs, &prompts, &est);
        assert_eq!(convs.iter().map(|c| c.turns.len()).sum::<usize>(), 9);
        assert_eq!(convs.len(), 4);
        let mut seen = Vec::new();
        for c in &convs {
            assert!(c.system.as_ref().is_some_and(|s| !s.is_empty()));
            for (k, t) in c.turns.iter().enumerate() {
                // Every user message is its own text of about 40 tokens.
                let n = est.count(&t.request.prompt) as f64;
                assert!((30.0..50.0).contains(&n), "{n}");
                assert!(!seen.contains(&t.request.prompt));
                seen.push(t.request.prompt.clone());
                // The think time is the workload's: 500 ms after an 80 ms answer.
                if k == 0 {
                    assert_eq!(t.think_s, 0.0);
                } else {
                    assert!((t.think_s - 0.5).abs() < 1e-6, "{}", t.think_s);
                    assert!(t.request.arrival_s > c.turns[k - 1].request.arrival_s);
                }
                assert!(t.request.history.is_empty());
            }
        }
    }
}
