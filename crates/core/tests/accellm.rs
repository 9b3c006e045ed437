//! The `accellm` cluster policy on small scenarios, run in virtual time by `replay` with a linear
//! fake cost model.

mod common;
use common::{assert_all_done, cost, requests};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use accellm_core::{
    batch::{BatchKind, Work},
    cluster::{
        self,
        accellm::{AccellmConfig, PrefillChoice, RebalanceMetric, SyncMode},
        ClusterConfig,
    },
    cost::Link,
    instance::{self, InstanceConfig, InstancePolicy, ScheduleCtx},
    replay::{self, NoObserver, Observer},
    request::{Phase, RequestId, RequestSpec, Slo},
    scheduler::{Action, Scheduler, SchedulerConfig},
    InstanceId, TimeUs,
};

fn config(kv_blocks: u32) -> SchedulerConfig {
    SchedulerConfig {
        kv_blocks,
        block_size: 16,
        link: Link {
            bytes_per_s: 1e9,
            latency_us: 5.0,
        },
        max_waiting: 0,
        record_timelines: true,
    }
}

fn with_policies(
    n: u32,
    kv_blocks: u32,
    acfg: &AccellmConfig,
    policies: Vec<Box<dyn InstancePolicy>>,
) -> Scheduler {
    let ccfg = ClusterConfig {
        accellm: acfg.clone(),
        ..Default::default()
    };
    Scheduler::new(
        &config(kv_blocks),
        cost(),
        cluster::build("accellm", n, &ccfg).unwrap(),
        policies,
    )
}

fn sched(inst: &str, n: u32, kv_blocks: u32, acfg: &AccellmConfig) -> Scheduler {
    let icfg = InstanceConfig {
        chunk_size: 128,
        ..Default::default()
    };
    let policies = (0..n)
        .map(|_| instance::build(inst, &icfg).unwrap())
        .collect();
    with_policies(n, kv_blocks, acfg, policies)
}

/// A bursty mix: bursts of four prompts of varied length, with long and short outputs, every
/// `gap_us`.
fn mixed(n: u32, gap_us: TimeUs) -> Vec<RequestSpec> {
    let mut r = requests(n, 700, |i| 30 + (i * 53) % 420, |i| 3 + (i * 29) % 90);
    for (k, spec) in r.iter_mut().enumerate() {
        spec.arrival_us = (k as TimeUs / 4) * gap_us + (k as TimeUs % 4) * 50;
    }
    r
}

/// Every instance policy the core knows.
fn instance_policies() -> &'static [&'static str] {
    instance::NAMES
}

/// Checks every launched batch with a closure.
struct OnRun<F: FnMut(TimeUs, InstanceId, &Scheduler)>(F);
impl<F: FnMut(TimeUs, InstanceId, &Scheduler)> Observer for OnRun<F> {
    fn on_action(&mut self, now: TimeUs, a: &Action, s: &Scheduler) {
        if let Action::Run { instance, .. } = a {
            (self.0)(now, *instance, s);
        }
    }
}

#[test]
fn no_iteration_mixes_prefill_and_decode() {
    for &inst in instance_policies() {
        for both_prefill in [false, true] {
            let acfg = AccellmConfig {
                both_prefill,
                ..Default::default()
            };
            let mut s = sched(inst, 4, 400, &acfg);
            let reqs = mixed(120, 2_500);
            let (mut prefill, mut decode) = (0, 0);
            replay::run(
                &mut s,
                &reqs,
                &mut OnRun(|_, i, s: &Scheduler| {
                    let b = &s.instance(i).batch;
                    match b.kind() {
                        BatchKind::Prefill => prefill += 1,
                        BatchKind::Decode => decode += 1,
                        k => panic!("{inst}: instance {i} ran a {k:?} batch"),
                    }
                }),
            );
            assert!(prefill > 0 && decode > 0, "{inst}: {prefill} {decode}");
            assert_all_done(&s, &reqs);
        }
    }
}

/// Follows every request (by submission order) to check where it decodes.
#[derive(Default)]
struct Moves {
    /// Instance of the request's last step (prefill chunk or decode), by serial.
    last: HashMap<u64, InstanceId>,
    /// Decode steps that ran on another instance than the previous one.
    moved_steps: u32,
    /// Violations seen.
    errors: Vec<String>,
}

impl Moves {
    fn check(&mut self, i: InstanceId, s: &Scheduler) {
        for e in &s.instance(i).batch.entries {
            let Some(r) = s.request(e.request) else {
                continue;
            };
            let prev = self.last.insert(r.serial, i);
            let Work::Decode { .. } = e.work else {
                continue;
            };
            if prev.is_some_and(|p| p != i) {
                self.moved_steps += 1;
                // First decode after a move: every copy towards this instance has landed.
                if r.copies_pending != 0 {
                    self.errors.push(format!(
                        "request {} decodes on {i} with {} copies in flight",
                        r.serial, r.copies_pending
                    ));
                }
            }
        }
    }
}

#[test]
fn moving_a_decode_to_a_current_replica_transfers_nothing() {
    for &inst in instance_policies() {
        let mut s = sched(inst, 2, 2000, &AccellmConfig::default());
        let reqs = mixed(80, 10_000);
        let mut moves = Moves::default();
        let mut last = (0u64, 0u64);
        let mut bad_steps = Vec::new();
        struct Obs<'a> {
            moves: &'a mut Moves,
            last: &'a mut (u64, u64),
            bad: &'a mut Vec<String>,
        }
        impl Observer for Obs<'_> {
            fn on_action(&mut self, _now: TimeUs, a: &Action, s: &Scheduler) {
                if let Action::Run { instance, .. } = a {
                    self.moves.check(*instance, s);
                }
            }
            fn after_event(&mut self, now: TimeUs, s: &Scheduler) {
                let c = s.counters();
                if c.migrations_free > self.last.0 && c.transfer_bytes != self.last.1 {
                    self.bad
                        .push(format!("free migration with a transfer at {now}"));
                }
                *self.last = (c.migrations_free, c.transfer_bytes);
            }
        }
        replay::run(
            &mut s,
            &reqs,
            &mut Obs {
                moves: &mut moves,
                last: &mut last,
                bad: &mut bad_steps,
            },
        );
        let c = *s.counters();
        assert!(c.migrations_free > 0, "{inst}: {c:?}");
        assert_eq!(c.migrations_transfer, 0, "{inst}: {c:?}");
        assert_eq!(c.transfer_bytes, 0, "{inst}: {c:?}");
        assert!(c.copy_bytes > 0);
        assert!(moves.moved_steps > 0, "{inst}: decodes changed instance");
        assert!(moves.errors.is_empty(), "{inst}: {:?}", moves.errors);
        assert!(bad_steps.is_empty(), "{inst}: {bad_steps:?}");
        assert_all_done(&s, &reqs);
    }
}

#[test]
fn lazy_sync_sends_only_the_missing_tokens() {
    let acfg = AccellmConfig {
        sync: SyncMode::Lazy,
        ..Default::default()
    };
    let mut s = sched("sarathi", 2, 2000, &acfg);
    let reqs = mixed(80, 10_000);
    let mut transfers = Vec::new();
    struct Obs<'a>(&'a mut Vec<(u32, u32, u32)>);
    impl Observer for Obs<'_> {
        fn on_action(&mut self, _now: TimeUs, a: &Action, s: &Scheduler) {
            if let Action::Transfer {
                request,
                from_token,
                tokens,
                ..
            } = *a
            {
                let ctx = s.request(request).map_or(0, |r| r.kv_tokens);
                self.0.push((from_token, tokens, ctx));
            }
        }
    }
    replay::run(&mut s, &reqs, &mut Obs(&mut transfers));
    assert!(!transfers.is_empty(), "lazy replicas needed catching up");
    for &(from, tokens, ctx) in &transfers {
        assert!(from > 0, "the prompt's KV was already replicated");
        assert_eq!(from + tokens, ctx, "exactly the missing suffix moves");
    }
    let c = s.counters();
    assert_eq!(
        c.transfer_bytes,
        transfers.iter().map(|t| t.1 as u64 * 1024).sum::<u64>()
    );
    assert_all_done(&s, &reqs);
}

/// Wraps an instance policy to see each batch being formed: whether it preempted, and what
/// replicas the instance still held then.
struct Watch {
    inner: Box<dyn InstancePolicy>,
    log: Arc<Mutex<Vec<Preempting>>>,
}

#[derive(Debug, Clone, Copy)]
struct Preempting {
    replica_blocks_before: u32,
    evictable_after: u32,
}

impl InstancePolicy for Watch {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn schedule(&mut self, ctx: &mut ScheduleCtx<'_>) {
        let running: Vec<RequestId> = ctx.running().to_vec();
        let before = ctx.kv().replica_blocks();
        self.inner.schedule(ctx);
        let preempted = running
            .iter()
            .filter(|&&id| ctx.request(id).phase == Phase::Waiting)
            .count();
        if preempted > 0 {
            let kv = ctx.kv();
            self.log.lock().unwrap().push(Preempting {
                replica_blocks_before: before,
                evictable_after: kv.available_for_primary() - kv.free_blocks(),
            });
        }
    }
}

#[test]
fn replicas_are_evicted_before_any_primary_is_preempted() {
    for &inst in instance_policies() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let icfg = InstanceConfig {
            chunk_size: 128,
            ..Default::default()
        };
        let policies: Vec<Box<dyn InstancePolicy>> = (0..2)
            .map(|_| {
                Box::new(Watch {
                    inner: instance::build(inst, &icfg).unwrap(),
                    log: log.clone(),
                }) as Box<dyn InstancePolicy>
            })
            .collect();
        // 48 blocks of 16 tokens per instance; requests grow to 250-330 tokens.
        let mut s = with_policies(2, 48, &AccellmConfig::default(), policies);
        let reqs = requests(16, 400, |i| 60 + (i * 37) % 80, |_| 190);
        replay::run(&mut s, &reqs, &mut NoObserver);
        let log = log.lock().unwrap();
        let c = s.counters();
        assert!(c.preemptions > 0, "{inst}: KV pressure preempted: {c:?}");
        assert!(c.replica_evictions > 0, "{inst}: replicas made room: {c:?}");
        assert!(!log.is_empty());
        for p in log.iter() {
            assert_eq!(
                p.evictable_after, 0,
                "{inst}: a primary was preempted while replicas could be evicted: {p:?}"
            );
        }
        assert!(
            log.iter().any(|p| p.replica_blocks_before > 0),
            "{inst}: some preempting batch started with replicas to evict: {log:?}"
        );
        assert_all_done(&s, &reqs);
    }
}

#[test]
fn every_block_is_free_once_every_request_finished() {
    let syncs = [SyncMode::Eager, SyncMode::Lazy];
    let choices = [
        PrefillChoice::LeastDecodeLoad,
        PrefillChoice::Sticky,
        PrefillChoice::Alternate,
    ];
    let metrics = [
        RebalanceMetric::ContextTokens,
        RebalanceMetric::Count,
        RebalanceMetric::Off,
    ];
    let mut k = 0usize;
    for &inst in instance_policies() {
        for replication in [true, false] {
            for role_switching in [true, false] {
                for both_prefill in [false, true] {
                    k += 1;
                    let acfg = AccellmConfig {
                        replication,
                        role_switching,
                        both_prefill,
                        sync: syncs[k % 2],
                        prefill_choice: choices[k % 3],
                        rebalance: metrics[(k / 3) % 3],
                        ..Default::default()
                    };
                    // Tight memory (preemptions, evictions) on five instances (one alone).
                    let mut s = sched(inst, 5, 60, &acfg);
                    let reqs = requests(150, 300, |i| 20 + (i * 71) % 500, |i| 1 + (i * 13) % 200);
                    replay::run(&mut s, &reqs, &mut NoObserver);
                    assert_all_done(&s, &reqs);
                }
            }
        }
    }
}

#[test]
fn without_replication_kv_moves_once_by_transfer_and_stays_pinned() {
    for &inst in instance_policies() {
        let acfg = AccellmConfig {
            replication: false,
            ..Default::default()
        };
        let mut s = sched(inst, 4, 2000, &acfg);
        let reqs = mixed(100, 10_000);
        let mut replicas_seen = 0u32;
        let mut decoded_on: HashMap<u64, InstanceId> = HashMap::new();
        let mut moved_after_decoding = 0u32;
        struct Obs<'a> {
            replicas: &'a mut u32,
            decoded_on: &'a mut HashMap<u64, InstanceId>,
            moved: &'a mut u32,
        }
        impl Observer for Obs<'_> {
            fn on_action(&mut self, _now: TimeUs, a: &Action, s: &Scheduler) {
                if let Action::Run { instance, .. } = *a {
                    for e in &s.instance(instance).batch.entries {
                        let Some(r) = s.request(e.request) else {
                            continue;
                        };
                        if let Work::Decode { .. } = e.work {
                            let prev = self.decoded_on.insert(r.serial, instance);
                            *self.moved += prev.is_some_and(|p| p != instance) as u32;
                        }
                    }
                }
            }
            fn after_event(&mut self, _now: TimeUs, s: &Scheduler) {
                for i in s.instances() {
                    *self.replicas += (i.kv.replica_blocks() > 0) as u32;
                }
            }
        }
        replay::run(
            &mut s,
            &reqs,
            &mut Obs {
                replicas: &mut replicas_seen,
                decoded_on: &mut decoded_on,
                moved: &mut moved_after_decoding,
            },
        );
        let c = *s.counters();
        assert_eq!(c.copy_bytes, 0, "{inst}: {c:?}");
        assert!(
            c.transfer_bytes > 0 && c.migrations_transfer > 0,
            "{inst}: {c:?}"
        );
        assert_eq!(c.migrations_free, 0, "{inst}: {c:?}");
        assert!(
            c.migrations_transfer <= reqs.len() as u64,
            "one move per request at most"
        );
        assert_eq!(replicas_seen, 0, "{inst}: no replica ever held");
        assert_eq!(
            moved_after_decoding, 0,
            "{inst}: decodes stay where they started"
        );
        assert_all_done(&s, &reqs);
    }
}

#[test]
fn roles_switch_under_load_and_both_partners_do_both_phases() {
    for &inst in instance_policies() {
        let mut s = sched(inst, 2, 2000, &AccellmConfig::default());
        let reqs = mixed(120, 30_000);
        replay::run(&mut s, &reqs, &mut NoObserver);
        let c = s.counters();
        assert!(c.role_switches >= 4, "{inst}: {c:?}");
        for i in s.instances() {
            assert!(
                i.stats.prefill_us > 0 && i.stats.decode_us > 0 && i.stats.mixed_us == 0,
                "{inst}: instance {} {:?}",
                i.id,
                i.stats
            );
        }
        assert_all_done(&s, &reqs);
    }
}

#[test]
fn without_role_switching_the_first_of_each_pair_only_prefills() {
    for &inst in instance_policies() {
        let acfg = AccellmConfig {
            role_switching: false,
            ..Default::default()
        };
        let mut s = sched(inst, 4, 2000, &acfg);
        let reqs = mixed(100, 10_000);
        replay::run(&mut s, &reqs, &mut NoObserver);
        let st: Vec<_> = s.instances().iter().map(|i| i.stats).collect();
        for p in [0, 2] {
            assert!(
                st[p].prefill_us > 0 && st[p].decode_us == 0,
                "{inst}: {st:?}"
            );
            assert!(
                st[p + 1].prefill_us == 0 && st[p + 1].decode_us > 0,
                "{inst}: {st:?}"
            );
        }
        assert_eq!(s.counters().role_switches, 0);
        assert_all_done(&s, &reqs);
    }
}

#[test]
fn routing_prefers_the_least_loaded_pair() {
    let mut s = sched("vllm", 4, 2000, &AccellmConfig::default());
    let spec = |prompt| RequestSpec {
        arrival_us: 0,
        prompt_tokens: prompt,
        max_output_tokens: 10,
        slo: Slo::default(),
        priority: 0,
        class: None,
    };
    let a = s.submit(0, spec(900));
    let b = s.submit(0, spec(50));
    let c = s.submit(0, spec(50));
    let pair = |id| s.request(id).unwrap().instance / 2;
    assert_ne!(pair(a), pair(b), "the second request avoids the busy pair");
    assert_eq!(pair(b), pair(c), "small requests share the idle pair");
    assert_eq!(
        s.request(b).unwrap().instance,
        s.request(c).unwrap().instance,
        "a pair queues prompts on its prefill instance"
    );
}
