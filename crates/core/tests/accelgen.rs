//! AccelGen end to end in virtual time: SLO-bounded iterations, dynamic chunks, deadline order,
//! KV packing and the preemption victim rule.

use std::sync::Arc;

use accellm_core::{
    batch::{Batch, Work},
    cluster::ClusterConfig,
    cost::{CostModel, LinearCostModel, Link},
    instance::{
        accelgen::{AccelGenConfig, AccelGenMode},
        InstanceConfig,
    },
    ms_to_us,
    replay::{self, Observer},
    request::{Phase, RequestId, RequestSpec, RequestState, Slo},
    scheduler::{Action, Scheduler, SchedulerConfig},
    TimeUs,
};
use proptest::prelude::*;

fn linear(per_kv_token_us: f64) -> LinearCostModel {
    LinearCostModel {
        knots: Vec::new(),
        base_us: 1000.0,
        per_token_us: 10.0,
        per_kv_token_us,
        per_logit_row_us: 1.0,
        layers: 4,
        kv_bytes_per_token: 1024,
        wide: None,
    }
}

fn sched(cost: LinearCostModel, kv_blocks: u32, ag: &AccelGenConfig) -> Scheduler {
    let cfg = SchedulerConfig {
        kv_blocks,
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
    Scheduler::build(
        &cfg,
        1,
        &ClusterConfig::RoundRobin,
        &InstanceConfig::Accelgen(ag.clone()),
        Arc::new(cost),
    )
    .unwrap()
}

fn spec(arrival_us: TimeUs, prompt: u32, output: u32, tbt_ms: f64, class: u16) -> RequestSpec {
    RequestSpec {
        arrival_us,
        prompt_tokens: prompt,
        max_output_tokens: output,
        slo: Slo {
            ttft_ms: Some(10_000.0),
            tbt_ms: Some(tbt_ms),
        },
        priority: 0,
        class: Some(class),
    }
}

/// Calls `f` on every batch as it is launched, and checks KV invariants after every event.
struct Watch<F: FnMut(TimeUs, &Batch, &Scheduler)>(F);
impl<F: FnMut(TimeUs, &Batch, &Scheduler)> Observer for Watch<F> {
    fn on_action(&mut self, now: TimeUs, a: &Action, s: &Scheduler) {
        if let Action::Run(plan) = a {
            let instance = &plan.instance;
            (self.0)(now, &s.instance(*instance).batch, s);
        }
    }
    fn after_event(&mut self, _now: TimeUs, s: &Scheduler) {
        s.check_invariants().unwrap();
    }
}

fn assert_all_done(s: &Scheduler, n: usize) {
    assert_eq!(s.live_requests(), 0, "requests left unfinished");
    assert_eq!(s.metrics().finished.len(), n);
    for inst in s.instances() {
        assert_eq!(inst.kv.free_blocks(), inst.kv.num_blocks(), "blocks leaked");
        assert_eq!(inst.load_tokens, 0);
    }
    s.check_invariants().unwrap();
}

/// The TBT SLO AccelGen holds a request to (µs): its own, or once it has missed its SLO, the
/// looser of its own and the default (1 s).
fn effective_tbt_us(r: &RequestState) -> TimeUs {
    let own = ms_to_us(r.spec.slo.tbt_ms.unwrap());
    if r.slo_missed() {
        own.max(ms_to_us(AccelGenConfig::default().default_tbt_ms))
    } else {
        own
    }
}

/// The tightest TBT SLO AccelGen holds the batch to, in µs: that of the requests in `b` that
/// have streamed a token (a fresh prompt's chunks answer to its TTFT deadline), if any.
fn tightest_us(b: &Batch, s: &Scheduler) -> Option<TimeUs> {
    b.entries
        .iter()
        .map(|e| s.request(e.request).unwrap())
        .filter(|r| r.last_token_us.is_some())
        .map(effective_tbt_us)
        .min()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// With the scheduler's own cost model as the executor (predicted = simulated), no iteration
    /// takes longer than the tightest TBT SLO (less the margin) among the requests in it that
    /// stream tokens, KV never overcommits, and everything finishes.
    #[test]
    fn no_iteration_exceeds_the_tightest_slo_in_it(
        reqs in prop::collection::vec(
            (0u64..40_000, 1u32..1500, 1u32..60, prop::sample::select(vec![5.0, 8.0, 20.0, 50.0, 250.0])),
            1..40,
        ),
        kv_blocks in 110u32..400,
        per_kv in prop::sample::select(vec![0.0, 0.001, 0.01]),
        admission in any::<bool>(),
    ) {
        let mut arrivals: Vec<RequestSpec> = reqs
            .iter()
            .map(|&(t, p, o, tbt)| spec(t, p, o, tbt, 0))
            .collect();
        arrivals.sort_by_key(|r| r.arrival_us);
        let ag = AccelGenConfig {
            mode: if admission { AccelGenMode::Admission } else { AccelGenMode::Edf },
            ..Default::default()
        };
        let margin = ag.margin;
        let cost = linear(per_kv);
        let mut s = sched(cost.clone(), kv_blocks, &ag);
        let mut worst = 0.0f64;
        let mut runs = 0;
        replay::run(&mut s, &arrivals, &mut Watch(|_, b: &Batch, s: &Scheduler| {
            runs += 1;
            if let Some(tightest) = tightest_us(b, s) {
                let t = cost.iteration_us(&b.shape) as f64;
                worst = worst.max(t / (tightest as f64 * (1.0 - margin)));
            }
        }));
        prop_assert!(runs > 0);
        if !admission {
            prop_assert!(worst <= 1.0, "an iteration took {worst:.3}× its SLO limit");
        }
        assert_all_done(&s, arrivals.len());
    }
}

#[test]
fn a_long_prompt_chunk_shrinks_while_a_tight_request_decodes() {
    // 1 ms + 10 µs per token: a 9 ms limit (10 ms SLO) holds ~800 tokens, a 225 ms limit
    // (250 ms SLO) is capped by the pivot forward size instead.
    let cost = linear(0.0);
    let mut s = sched(cost, 4000, &AccelGenConfig::default());
    let arrivals = vec![spec(0, 30_000, 4, 250.0, 0), spec(40_000, 8, 10, 10.0, 1)];
    let (long, tight) = (RequestId(0), RequestId(1));
    let (mut before, mut during, mut after) = (Vec::new(), Vec::new(), Vec::new());
    let mut tight_done = false;
    replay::run(
        &mut s,
        &arrivals,
        &mut Watch(|_, b: &Batch, s: &Scheduler| {
            let chunk = b.entries.iter().find_map(|e| match e.work {
                Work::Prefill { len, .. } if e.request == long => Some(len),
                _ => None,
            });
            // The tight request's own prompt does not limit the chunk: its decodes do.
            let tight_in = b
                .entries
                .iter()
                .any(|e| e.request == tight && matches!(e.work, Work::Decode { .. }));
            tight_done |= !tight_in && s.metrics().finished.len() == 1;
            if let Some(len) = chunk {
                if tight_in {
                    during.push(len);
                } else if tight_done {
                    after.push(len);
                } else {
                    before.push(len);
                }
            }
        }),
    );
    assert_all_done(&s, 2);
    let max = |v: &[u32]| v.iter().copied().max().unwrap_or(0);
    assert!(!before.is_empty() && !during.is_empty() && !after.is_empty());
    assert!(
        max(&during) < max(&before) / 2,
        "chunks: before {before:?}, during {during:?}"
    );
    assert!(max(&during) <= 800, "{during:?}");
    assert!(
        max(&after) > max(&during),
        "the chunk grows back: {after:?}"
    );
}

#[test]
fn decodes_go_in_earliest_deadline_order() {
    // 2 ms per token: a 10 ms SLO leaves room for about four decodes, so once tight requests
    // join six loose ones the time limit, not the sequence cap, decides who decodes. No running
    // request left out may be due before one that decodes (deadline = last token + TBT SLO).
    let mut cost = linear(0.0);
    cost.per_token_us = 2000.0;
    let mut s = sched(cost, 1000, &AccelGenConfig::default());
    let mut arrivals: Vec<_> = [200.0, 250.0, 200.0, 250.0, 200.0, 250.0]
        .iter()
        .enumerate()
        .map(|(i, &tbt)| spec(0, 2, 60, tbt, i as u16))
        .collect();
    arrivals.extend((0..3).map(|i| spec(20_000, 2, 20, 10.0 + i as f64, 10 + i)));
    let (mut checked, mut reordered) = (0, 0);
    replay::run(
        &mut s,
        &arrivals,
        &mut Watch(|_, b: &Batch, s: &Scheduler| {
            let deadline = |id| {
                let r = s.request(id).unwrap();
                r.last_token_us.unwrap() + effective_tbt_us(r)
            };
            let decoding: Vec<RequestId> = b
                .entries
                .iter()
                .filter(|e| matches!(e.work, Work::Decode { .. }))
                .map(|e| e.request)
                .collect();
            let inst = s.instance(0);
            let left_out: Vec<RequestId> = inst
                .running
                .iter()
                .copied()
                .filter(|r| !decoding.contains(r))
                .collect();
            if decoding.is_empty() || left_out.is_empty() {
                return;
            }
            let latest_in = decoding.iter().map(|&r| deadline(r)).max().unwrap();
            let earliest_out = left_out.iter().map(|&r| deadline(r)).min().unwrap();
            assert!(latest_in <= earliest_out, "a later deadline went first");
            checked += 1;
            let prefix = inst.running[..decoding.len()]
                .iter()
                .all(|r| decoding.contains(r));
            reordered += !prefix as u32;
        }),
    );
    assert!(checked > 10 && reordered > 0, "{checked} {reordered}");
    assert_all_done(&s, arrivals.len());
}

/// A one-token request that keeps the instance busy while the others arrive.
fn opener() -> RequestSpec {
    spec(0, 16, 1, 100.0, 9)
}

#[test]
fn prompts_go_in_ttft_deadline_order_without_packing_weights() {
    let ag = AccelGenConfig {
        max_num_seqs: 1,
        w_compute: 0.0,
        w_kv: 0.0,
        ..Default::default()
    };
    let mut s = sched(linear(0.0), 1000, &ag);
    // Arrival order 0, 1, 2, 3; TTFT deadlines 9 s, 1 s, 5 s, 3 s.
    let mut arrivals = vec![opener()];
    arrivals.extend(
        [9_000.0, 1_000.0, 5_000.0, 3_000.0]
            .iter()
            .enumerate()
            .map(|(i, &ttft)| RequestSpec {
                slo: Slo {
                    ttft_ms: Some(ttft),
                    tbt_ms: Some(100.0),
                },
                ..spec(10, 64, 1, 100.0, i as u16)
            }),
    );
    replay::run(
        &mut s,
        &arrivals,
        &mut Watch(|_, _: &Batch, _: &Scheduler| {}),
    );
    assert_all_done(&s, 5);
    let order: Vec<u16> = s
        .metrics()
        .finished
        .iter()
        .map(|r| r.class.unwrap())
        .collect();
    assert_eq!(order, vec![9, 1, 3, 2, 0]);
}

#[test]
fn packing_score_can_override_deadline_order() {
    // Two prompts wait together. With the packing score all on KV the 400-token prompt starts
    // first although the 64-token one is due earlier; without weights deadline order decides.
    let first_started = |w_compute: f64, w_kv: f64| {
        let ag = AccelGenConfig {
            max_num_seqs: 1,
            w_compute,
            w_kv,
            ..Default::default()
        };
        let mut s = sched(linear(0.0), 1000, &ag);
        let with_ttft = |ttft_ms, r| RequestSpec {
            slo: Slo {
                ttft_ms: Some(ttft_ms),
                tbt_ms: Some(100.0),
            },
            ..r
        };
        let arrivals = vec![
            opener(),
            with_ttft(2_000.0, spec(10, 64, 1, 100.0, 0)),
            with_ttft(3_000.0, spec(10, 400, 1, 100.0, 1)),
        ];
        let mut first = None;
        replay::run(
            &mut s,
            &arrivals,
            &mut Watch(|_, b: &Batch, s: &Scheduler| {
                let c = s.request(b.entries[0].request).unwrap().spec.class;
                if first.is_none() && c != Some(9) {
                    first = c;
                }
            }),
        );
        assert_all_done(&s, 3);
        first.unwrap()
    };
    assert_eq!(first_started(0.0, 1.0), 1);
    assert_eq!(
        first_started(1.0, 0.0),
        1,
        "the bigger chunk fills more budget"
    );
    assert_eq!(first_started(0.0, 0.0), 0, "deadline order on a tie");
}

#[test]
fn kv_runs_out_and_the_loosest_longest_request_is_preempted_first() {
    for mode in [AccelGenMode::Admission, AccelGenMode::Edf] {
        // 12 blocks of 16 tokens. Three 40-token prompts; the tight one (class 0) and the loose
        // long one (class 2) grow to 140 tokens, the loose short one (class 1) to 70.
        let ag = AccelGenConfig {
            mode,
            ..Default::default()
        };
        let mut s = sched(linear(0.0), 12, &ag);
        let arrivals = vec![
            spec(0, 40, 100, 10.0, 0),
            spec(0, 40, 30, 100.0, 1),
            spec(0, 40, 100, 100.0, 2),
        ];
        let mut first_victim = None;
        replay::run(
            &mut s,
            &arrivals,
            &mut Watch(|_, _: &Batch, s: &Scheduler| {
                if first_victim.is_some() || s.counters().preemptions == 0 {
                    return;
                }
                let inst = s.instance(0);
                first_victim = inst
                    .waiting
                    .iter()
                    .chain(&inst.running)
                    .find(|&&r| s.request(r).unwrap().preemptions > 0)
                    .map(|&r| s.request(r).unwrap().spec.class.unwrap());
            }),
        );
        assert!(s.counters().preemptions > 0, "{mode:?}: KV never ran out");
        assert_eq!(first_victim, Some(2), "{mode:?}");
        assert_all_done(&s, 3);
    }
}

#[test]
fn a_preempted_request_is_not_starved_by_fresh_prompts() {
    // 12 blocks of 16 tokens: the scenario above, where KV runs out and the loose long request
    // (class 2, 100 ms TBT) is preempted, plus short prompts with a tighter SLO (50 ms) arriving
    // for 3 s, faster than KV lets them run, none of them overdue. The preempted request has
    // streamed tokens already: once overdue it must be resumed, not queued behind the stream.
    let mut s = sched(linear(0.0), 12, &AccelGenConfig::default());
    let mut arrivals = vec![
        spec(0, 40, 100, 10.0, 0),
        spec(0, 40, 30, 100.0, 1),
        spec(0, 40, 100, 100.0, 2),
    ];
    let stream_end: TimeUs = 3_000_000;
    arrivals.extend((120..=6000).map(|k| spec(k * 500, 32, 2, 50.0, 3)));
    replay::run(
        &mut s,
        &arrivals,
        &mut Watch(|_, _: &Batch, _: &Scheduler| {}),
    );
    let m = s.metrics();
    let loose = m.finished.iter().find(|r| r.class == Some(2)).unwrap();
    assert!(
        loose.preemptions > 0,
        "the loose long request was not preempted"
    );
    let end = loose.arrival_us + loose.jct_us;
    assert!(
        end < stream_end,
        "the preempted request finished at {end} µs, after the stream of fresh prompts"
    );
    assert_all_done(&s, arrivals.len());
}

#[test]
fn overload_relief_trades_a_tight_slo_that_leaves_no_room_for_prompts() {
    // 1 ms per iteration plus 1 ms per token: eight decodes take 9 ms, all of the 9 ms limit of
    // the tight request's 10 ms SLO. A long prompt then gets chunks of what the skipping loose
    // decodes leave; with `relief_share = 0.25` the tight bin is held to the loose 100 ms SLO while
    // prompts wait, so the chunks grow and the tight request's gaps do too.
    let run = |relief_share: f64| {
        // κ = 10 lifts the token cap (κ·S_pf, 19 tokens for this cost) so time limits decide.
        let ag = AccelGenConfig {
            relief_share,
            kappa: 10.0,
            ..Default::default()
        };
        let cost = LinearCostModel {
            per_token_us: 1000.0,
            ..linear(0.0)
        };
        let mut s = sched(cost, 4000, &ag);
        let mut arrivals = vec![spec(0, 16, 300, 10.0, 0)];
        arrivals.extend((0..7).map(|_| spec(0, 16, 300, 100.0, 1)));
        arrivals.push(spec(200_000, 2_000, 4, 100.0, 2));
        let long = RequestId(8);
        let mut chunks = Vec::new();
        replay::run(
            &mut s,
            &arrivals,
            &mut Watch(|_, b: &Batch, _: &Scheduler| {
                // Chunks of iterations that hold the tight request's decode.
                let tight_decodes = b
                    .entries
                    .iter()
                    .any(|e| e.request == RequestId(0) && matches!(e.work, Work::Decode { .. }));
                for e in &b.entries {
                    if let (Work::Prefill { len, .. }, true) = (e.work, e.request == long) {
                        if tight_decodes {
                            chunks.push(len);
                        }
                    }
                }
            }),
        );
        assert_all_done(&s, arrivals.len());
        let tight = s
            .metrics()
            .finished
            .iter()
            .find(|r| r.class == Some(0))
            .unwrap();
        (chunks.iter().copied().max().unwrap_or(0), tight.max_tbt_us)
    };
    let (off_chunk, off_gap) = run(0.0);
    let (on_chunk, on_gap) = run(0.25);
    assert!(off_chunk > 0 && off_chunk <= 8, "off: {off_chunk}");
    assert!(off_gap <= 10_000, "off: the tight SLO holds ({off_gap} µs)");
    assert!(
        on_chunk > 2 * off_chunk,
        "on: {on_chunk} vs off: {off_chunk}"
    );
    assert!(
        on_gap > 10_000,
        "on: the tight request is the one that pays ({on_gap} µs)"
    );
}

/// Longest prefill chunk of request `id` among the launched batches `pick` selects.
fn longest_chunk(
    s: &mut Scheduler,
    arrivals: &[RequestSpec],
    id: RequestId,
    mut pick: impl FnMut(&Batch, &Scheduler) -> bool,
) -> u32 {
    let mut longest = 0;
    replay::run(
        s,
        arrivals,
        &mut Watch(|_, b: &Batch, s: &Scheduler| {
            if !pick(b, s) {
                return;
            }
            for e in &b.entries {
                if let Work::Prefill { len, .. } = e.work {
                    if e.request == id {
                        longest = longest.max(len);
                    }
                }
            }
        }),
    );
    longest
}

#[test]
fn a_prompt_is_not_chunked_by_its_own_tbt_slo() {
    // Alone, a long prompt with a 10 ms TBT SLO runs pivot-sized chunks (1,695 tokens): its
    // SLO bounds the gaps between its tokens, not the iterations before its first one, whose
    // 9 ms limit would hold about 800 tokens.
    let mut s = sched(linear(0.0), 4000, &AccelGenConfig::default());
    let arrivals = vec![spec(0, 30_000, 4, 10.0, 0)];
    let longest = longest_chunk(&mut s, &arrivals, RequestId(0), |_, _| true);
    assert!(longest > 1_600, "{longest}");
    assert_all_done(&s, 1);
}

#[test]
fn a_request_that_missed_its_slo_no_longer_limits_the_batch() {
    // The requests of `a_long_prompt_chunk_shrinks_while_a_tight_request_decodes`, but the tight
    // one comes first and its TTFT SLO (0.5 ms) is missed by its first token: it can no longer count towards goodput, so
    // while it is decoding the long prompt's chunks stay as long as before instead of shrinking
    // to its 9 ms limit (about 800 tokens); it is served best effort.
    let mut s = sched(linear(0.0), 4000, &AccelGenConfig::default());
    let mut late = spec(0, 8, 200, 10.0, 1);
    late.slo.ttft_ms = Some(0.5);
    let arrivals = vec![late, spec(2_000, 30_000, 4, 250.0, 0)];
    let tight = RequestId(0);
    let during = longest_chunk(&mut s, &arrivals, RequestId(1), |_, s| {
        s.request(tight).is_some_and(|r| r.phase == Phase::Decoding)
    });
    assert!(during > 1_600, "{during}");
    assert_eq!(s.metrics().finished.len(), 2);
    assert!(s.metrics().finished.iter().any(|r| !r.slo_met.strict));
}
