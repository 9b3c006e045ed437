//! The run plan (`Action::Run`) carries everything an executor needs, consistent with the core's
//! own state: token ranges, block tables and the copies' block spans, with the simulator's byte
//! accounting equal to the spans a server copies.

mod common;
use common::{build, cluster, config, instance, requests};

use std::sync::Arc;

use accellm_core::{
    batch::Work,
    kv::{chain_keys, BlockKeys},
    plan::{BlockSpan, RunPlan},
    replay::{self, Observer},
    scheduler::{Action, Scheduler},
    TimeUs,
};

fn sched(cluster_policy: &str, inst: &str, blocks: bool) -> Scheduler {
    let mut s = build(&config(400), 4, &cluster(cluster_policy), &instance(inst));
    s.set_block_plans(blocks);
    s
}

/// What an executor sees of a plan at the token level.
type Seen = (
    u32,
    u64,
    Vec<(u32, u32, u32, bool)>,
    Vec<(u32, u32, u32, u32)>,
);

fn seen(p: &RunPlan) -> Seen {
    (
        p.instance,
        p.iteration,
        p.entries
            .iter()
            .map(|e| (e.request.0, e.start, e.end, e.sample))
            .collect(),
        p.copies
            .iter()
            .map(|c| (c.to, c.request.0, c.from, c.end))
            .collect(),
    )
}

/// Checks each plan against the scheduler it came from, and records it.
#[derive(Default)]
struct Check {
    plans: Vec<Seen>,
    copies: usize,
    transfers: usize,
}

impl Observer for Check {
    fn on_action(&mut self, _now: TimeUs, a: &Action, s: &Scheduler) {
        match a {
            Action::Run(p) => {
                let inst = s.instance(p.instance);
                let batch = &inst.batch;
                assert_eq!(p.shape, batch.shape);
                assert_eq!(p.predicted_us, inst.iteration_us(s.cost()));
                assert_eq!(p.entries.len(), batch.entries.len());
                let bs = s.block_size();
                for (e, b) in p.entries.iter().zip(&batch.entries) {
                    assert_eq!((e.request, e.work), (b.request, b.work));
                    assert_eq!(e.end, b.end());
                    let (start, sample) = match b.work {
                        Work::Prefill { start, last, .. } => (start, last),
                        Work::Decode { context } => (context - 1, true),
                    };
                    assert_eq!((e.start, e.sample), (start, sample));
                    if p.with_blocks {
                        assert_eq!(Some(p.blocks(e)), inst.kv.table(e.request));
                    } else {
                        assert!(p.blocks(e).is_empty());
                    }
                }
                let want: Vec<_> = batch
                    .entries
                    .iter()
                    .filter_map(|b| b.copy_to.map(|to| (to, b.request, b.copy_from, b.end())))
                    .collect();
                let got: Vec<_> = p
                    .copies
                    .iter()
                    .map(|c| (c.to, c.request, c.from, c.end))
                    .collect();
                assert_eq!(got, want);
                for c in &p.copies {
                    self.copies += 1;
                    if !p.with_blocks {
                        assert!(p.spans(c).is_empty());
                        continue;
                    }
                    // The spans cover exactly positions `from..end`, block by block, between
                    // the source's and the destination's tables.
                    let src = inst.kv.table(c.request).unwrap();
                    let dst = s.instance(c.to).kv.table(c.request).unwrap();
                    let mut want = Vec::new();
                    BlockSpan::for_positions(src, dst, c.from, c.end, bs, &mut want);
                    assert_eq!(p.spans(c), &want[..]);
                    let mut pos = c.from;
                    for sp in p.spans(c) {
                        let b = pos / bs;
                        assert_eq!(
                            (sp.src_block, sp.dst_block),
                            (src[b as usize], dst[b as usize])
                        );
                        assert_eq!(sp.slot_start, pos % bs);
                        pos += sp.slots();
                    }
                    assert_eq!(pos, c.end);
                }
                // What the simulator charges each link is what the spans copy.
                for to in p.destinations() {
                    let slots: u32 = p
                        .copies
                        .iter()
                        .filter(|c| c.to == to)
                        .map(|c| match p.with_blocks {
                            true => p.spans(c).iter().map(|s| s.slots()).sum(),
                            false => c.tokens(),
                        })
                        .sum();
                    assert_eq!(p.copy_tokens_to(to), slots as u64);
                    assert_eq!(batch.copy_bytes_to(to, 1024), p.copy_tokens_to(to) * 1024);
                }
                self.plans.push(seen(p));
            }
            Action::Transfer {
                request,
                from,
                to,
                from_token,
                tokens,
                spans,
                ..
            } => {
                self.transfers += 1;
                let slots: u32 = spans.iter().map(|s| s.slots()).sum();
                if s.instance(*from).kv.table(*request).is_some() && !spans.is_empty() {
                    assert_eq!(slots, *tokens, "transfer {from}->{to} from {from_token}");
                }
            }
            _ => {}
        }
    }
}

fn run(cluster: &str, inst: &str, blocks: bool, shared: bool) -> (Check, u64) {
    let mut s = sched(cluster, inst, blocks);
    let reqs = requests(40, 3_000, |i| 40 + (i * 37) % 300, |i| 5 + (i * 13) % 60);
    // Half the prompts start with one 64-token system prompt (cached prefixes, copies that
    // start before an entry's own tokens).
    let keys: Vec<Option<BlockKeys>> = reqs
        .iter()
        .enumerate()
        .map(|(k, r)| {
            let tokens: Vec<u32> = (0..r.prompt_tokens)
                .map(|p| match shared && k % 2 == 0 && p < 64 {
                    true => p,
                    false => 1000 + k as u32 * 1000 + p,
                })
                .collect();
            Some(BlockKeys::from(chain_keys(&tokens, 16, 0)))
        })
        .collect();
    let mut check = Check::default();
    let end = replay::run_keyed(&mut s, &reqs, &keys, &mut check, None);
    assert_eq!(s.live_requests(), 0);
    s.check_invariants().unwrap();
    (check, end.end_us)
}

#[test]
fn a_plan_carries_its_token_ranges_blocks_and_copy_spans() {
    for (cluster, inst) in [
        ("accellm", "accelgen"),
        ("accellm", "vllm"),
        ("splitwise", "vllm"),
        ("least-load", "sarathi"),
    ] {
        for shared in [false, true] {
            let (on, end_on) = run(cluster, inst, true, shared);
            let (off, end_off) = run(cluster, inst, false, shared);
            // Block ids are detail for an executor that addresses memory: they change no
            // decision.
            assert_eq!(on.plans, off.plans, "{cluster}/{inst}");
            assert_eq!(end_on, end_off);
            if cluster == "accellm" {
                assert!(on.copies > 0, "{cluster}/{inst}: no copies exercised");
            }
            if cluster == "splitwise" {
                assert!(on.transfers + on.copies > 0, "splitwise moved no KV");
            }
        }
    }
}

#[test]
fn a_plan_is_reused_once_the_executor_dropped_it() {
    let mut s = sched("least-load", "vllm", true);
    let mut actions = Vec::new();
    let spec = requests(1, 0, |_| 20, |_| 3)[0];
    s.submit(0, spec);
    s.take_actions(&mut actions);
    let Some(Action::Run(first)) = actions.pop() else {
        panic!("no run")
    };
    let ptr = Arc::as_ptr(&first);
    drop(first);
    s.iteration_done(1_000, 0, &[]);
    s.take_actions(&mut actions);
    let Some(Action::Run(second)) = actions.pop() else {
        panic!("no run")
    };
    assert_eq!(Arc::as_ptr(&second), ptr, "the buffer is reused");
    // Kept by the executor: the next plan is a new one, the kept one unchanged.
    s.iteration_done(2_000, 0, &[]);
    s.take_actions(&mut actions);
    let Some(Action::Run(third)) = actions.pop() else {
        panic!("no run")
    };
    assert_ne!(Arc::as_ptr(&third), ptr);
    assert_eq!(second.iteration + 1, third.iteration);
}
