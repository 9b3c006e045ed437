//! Test helpers shared by the policy scenario tests.
#![allow(dead_code)]

use std::sync::Arc;

use accellm_core::{
    cluster::ClusterConfig,
    cost::{LinearCostModel, Link},
    instance::InstanceConfig,
    request::{RequestSpec, Slo},
    scheduler::{Action, Scheduler, SchedulerConfig},
    TimeUs,
};

/// A linear fake cost model: 1 ms per iteration plus 10 µs per token.
pub fn cost() -> Arc<LinearCostModel> {
    Arc::new(LinearCostModel {
        knots: Vec::new(),
        base_us: 1000.0,
        per_token_us: 10.0,
        per_kv_token_us: 0.01,
        per_logit_row_us: 1.0,
        layers: 4,
        kv_bytes_per_token: 1024,
        wide: None,
    })
}

/// `kv_blocks` blocks of 16 tokens per instance, a 1 GB/s link with 5 µs latency, no queue cap,
/// every token time recorded.
pub fn config(kv_blocks: u32) -> SchedulerConfig {
    SchedulerConfig {
        kv_blocks,
        block_size: 16,
        link: Link {
            bytes_per_s: 1e9,
            latency_us: 5.0,
        },
        max_waiting: 0,
        record_timelines: true,
        prefix_cache: true,
        share_idle_cores: false,
    }
}

/// Cluster policy `name` with default knobs.
pub fn cluster(name: &str) -> ClusterConfig {
    name.parse().unwrap()
}

/// Instance policy `name` with default knobs.
pub fn instance(name: &str) -> InstanceConfig {
    name.parse().unwrap()
}

/// Instance policy `name` with default knobs, but Sarathi's chunks of 128 tokens.
pub fn small_chunks(name: &str) -> InstanceConfig {
    let mut c = instance(name);
    if let InstanceConfig::Sarathi(k) = &mut c {
        k.chunk_size = 128;
    }
    c
}

/// `n` instances of `instance` under `cluster`, priced by [`cost`].
pub fn build(
    cfg: &SchedulerConfig,
    n: u32,
    cluster: &ClusterConfig,
    instance: &InstanceConfig,
) -> Scheduler {
    Scheduler::build(cfg, n, cluster, instance, cost()).unwrap()
}

/// `n` requests, one every `every_us`, with prompt and output lengths from the closures.
pub fn requests(
    n: u32,
    every_us: TimeUs,
    prompt: impl Fn(u32) -> u32,
    output: impl Fn(u32) -> u32,
) -> Vec<RequestSpec> {
    (0..n)
        .map(|i| RequestSpec {
            arrival_us: i as TimeUs * every_us,
            prompt_tokens: prompt(i),
            max_output_tokens: output(i),
            slo: Slo::default(),
            priority: 0,
            class: None,
        })
        .collect()
}

/// Every request finished with exactly its output tokens, token times are ordered, and every
/// instance is back to empty: no blocks (primary or replica), no load, invariants intact.
pub fn assert_all_done(s: &Scheduler, reqs: &[RequestSpec]) {
    assert_eq!(s.live_requests(), 0, "requests left unfinished");
    let m = s.metrics();
    assert_eq!(m.finished.len(), reqs.len());
    let mut want: Vec<u32> = reqs.iter().map(|r| r.max_output_tokens).collect();
    let mut got: Vec<u32> = m.finished.iter().map(|r| r.output_tokens).collect();
    want.sort();
    got.sort();
    assert_eq!(
        want, got,
        "every request produced exactly its output tokens"
    );
    for t in &m.timelines {
        assert!(t.windows(2).all(|w| w[0] <= w[1]));
    }
    for inst in s.instances() {
        assert_eq!(
            inst.kv.free_blocks(),
            inst.kv.num_blocks(),
            "instance {} leaked blocks",
            inst.id
        );
        assert_eq!(inst.kv.replica_blocks(), 0);
        assert_eq!(
            inst.load_tokens, 0,
            "instance {} load not back to zero",
            inst.id
        );
    }
    s.check_invariants().unwrap();
}

/// Drives `s` by hand: every `Run` ends 1 ms later with its copies landed; after each event
/// `each` sees the scheduler. Stops when `until` says so or nothing is left to run.
pub fn drive(
    s: &mut Scheduler,
    mut now: TimeUs,
    each: &mut dyn FnMut(&mut Scheduler),
    until: &dyn Fn(&Scheduler) -> bool,
) -> TimeUs {
    let mut actions = Vec::new();
    loop {
        s.take_actions(&mut actions);
        let runs: Vec<(u32, u64)> = actions
            .drain(..)
            .filter_map(|a| match a {
                Action::Run(plan) => Some((plan.instance, plan.iteration)),
                _ => None,
            })
            .collect();
        if runs.is_empty() {
            return now;
        }
        for (i, it) in runs {
            now += 1_000;
            s.iteration_done(now, i, &[]);
            each(s);
            s.copy_done(now, i, it);
            each(s);
            if until(s) {
                return now;
            }
        }
    }
}
