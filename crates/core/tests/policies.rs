//! Baseline policies on small hand-built scenarios, run in virtual time by `replay`.

mod common;
use common::{assert_all_done, build, cluster, config, instance, requests};

use accellm_core::{
    batch::Work,
    cluster::{splitwise::SplitwiseConfig, ClusterConfig},
    instance::{sarathi::SarathiConfig, InstanceConfig},
    replay::{self, NoObserver, Observer},
    request::{FinishReason, RequestSpec, Slo},
    scheduler::{Action, Scheduler},
    TimeUs,
};

fn sched(ccfg: &ClusterConfig, icfg: &InstanceConfig, n: u32, kv_blocks: u32) -> Scheduler {
    build(&config(kv_blocks), n, ccfg, icfg)
}

/// Checks every batch as it is launched.
struct BatchCheck<F: FnMut(u32, &accellm_core::batch::Batch)>(F);
impl<F: FnMut(u32, &accellm_core::batch::Batch)> Observer for BatchCheck<F> {
    fn on_action(&mut self, _now: TimeUs, a: &Action, s: &Scheduler) {
        if let Action::Run(plan) = a {
            let instance = &plan.instance;
            (self.0)(*instance, &s.instance(*instance).batch);
        }
    }
}

#[test]
fn sarathi_never_exceeds_its_token_budget() {
    let icfg = InstanceConfig::Sarathi(SarathiConfig {
        chunk_size: 64,
        ..Default::default()
    });
    let mut s = sched(&cluster("round-robin"), &icfg, 1, 1000);
    let reqs = requests(30, 300, |i| 20 + (i * 37) % 300, |i| 1 + i % 17);
    let mut max_tokens = 0;
    let mut chunked = false;
    replay::run(
        &mut s,
        &reqs,
        &mut BatchCheck(|_, b: &accellm_core::batch::Batch| {
            max_tokens = max_tokens.max(b.shape.tokens());
            chunked |= b
                .entries
                .iter()
                .any(|e| matches!(e.work, Work::Prefill { start, .. } if start > 0));
        }),
    );
    assert!(max_tokens <= 64, "a batch held {max_tokens} tokens");
    assert!(chunked, "long prompts were split into chunks");
    assert_all_done(&s, &reqs);
}

#[test]
fn vllm_prefills_whole_prompts_before_decoding() {
    let mut s = sched(&cluster("round-robin"), &instance("vllm"), 1, 1000);
    let reqs = requests(20, 500, |i| 50 + i * 13, |_| 8);
    let mut mixed = false;
    let mut partial = false;
    replay::run(
        &mut s,
        &reqs,
        &mut BatchCheck(|_, b: &accellm_core::batch::Batch| {
            mixed |= b.shape.prefill_seqs > 0 && b.shape.decode_seqs > 0;
            partial |= b
                .entries
                .iter()
                .any(|e| matches!(e.work, Work::Prefill { last: false, .. }));
        }),
    );
    assert!(!mixed, "vllm never mixes prefill and decode");
    assert!(!partial, "vllm prefills whole prompts");
    assert_all_done(&s, &reqs);
}

#[test]
fn vllm_preempts_when_kv_runs_out_and_the_victim_still_finishes() {
    // 20 blocks of 16 tokens = 320 tokens; four requests that each grow to 160 tokens.
    let mut s = sched(&cluster("round-robin"), &instance("vllm"), 1, 20);
    let reqs = requests(4, 0, |_| 60, |_| 100);
    replay::run(&mut s, &reqs, &mut NoObserver);
    assert!(
        s.counters().preemptions > 0,
        "KV pressure caused preemptions"
    );
    assert!(s.metrics().finished.iter().any(|r| r.preemptions > 0));
    assert_all_done(&s, &reqs);
}

#[test]
fn sarathi_preempts_too_and_everything_finishes() {
    let icfg = InstanceConfig::Sarathi(SarathiConfig {
        chunk_size: 32,
        ..Default::default()
    });
    let mut s = sched(&cluster("round-robin"), &icfg, 1, 12);
    let reqs = requests(6, 100, |i| 30 + i * 5, |_| 60);
    replay::run(&mut s, &reqs, &mut NoObserver);
    assert!(s.counters().preemptions > 0);
    assert_all_done(&s, &reqs);
}

#[test]
fn splitwise_never_decodes_on_a_prefill_instance() {
    for layerwise in [true, false] {
        let ccfg = ClusterConfig::Splitwise(SplitwiseConfig {
            prefill_instances: 2,
            layerwise,
        });
        let mut s = sched(&ccfg, &instance("sarathi"), 4, 200);
        let reqs = requests(40, 200, |i| 40 + (i * 53) % 400, |i| 2 + i % 30);
        replay::run(
            &mut s,
            &reqs,
            &mut BatchCheck(|i, b: &accellm_core::batch::Batch| {
                if i < 2 {
                    assert_eq!(b.shape.decode_seqs, 0, "decode on prefill instance {i}");
                } else {
                    assert_eq!(b.shape.prefill_seqs, 0, "prefill on decode instance {i}");
                }
            }),
        );
        let c = s.counters();
        if layerwise {
            assert!(c.copy_bytes > 0 && c.migrations_free > 0, "{c:?}");
        } else {
            assert!(c.transfer_bytes > 0 && c.migrations_transfer > 0, "{c:?}");
        }
        assert_all_done(&s, &reqs);
        let decode_busy: u64 = s.instances()[2..].iter().map(|i| i.stats.decode_us).sum();
        assert!(decode_busy > 0);
    }
}

#[test]
fn least_load_balances_and_round_robin_cycles() {
    let mut s = sched(&cluster("round-robin"), &instance("sarathi"), 3, 100);
    let reqs = requests(6, 0, |_| 10, |_| 1);
    // All arrive at once: round robin sends two to each instance.
    let mut seen = vec![0; 3];
    for r in &reqs {
        let id = s.submit(0, *r);
        seen[s.request(id).unwrap().instance as usize] += 1;
    }
    assert_eq!(seen, vec![2, 2, 2]);

    let mut s = sched(&cluster("least-load"), &instance("sarathi"), 2, 100);
    let big = RequestSpec {
        prompt_tokens: 500,
        ..reqs[0]
    };
    let a = s.submit(0, big);
    let b = s.submit(0, reqs[0]);
    let c = s.submit(0, reqs[0]);
    let inst = |id| s.request(id).unwrap().instance;
    assert_ne!(inst(a), inst(b));
    assert_eq!(inst(b), inst(c), "small requests avoid the busy instance");
}

#[test]
fn identical_inputs_give_identical_runs() {
    let run = || {
        let mut s = sched(&cluster("least-load"), &instance("sarathi"), 4, 300);
        let reqs = requests(200, 137, |i| 10 + (i * 7919) % 900, |i| 1 + (i * 31) % 90);
        let end = replay::run(&mut s, &reqs, &mut NoObserver);
        (
            end,
            s.metrics().finished.clone(),
            s.metrics().summary(end.end_us),
        )
    };
    assert_eq!(run(), run());
}

#[test]
fn too_long_requests_are_rejected_and_cancel_frees_blocks() {
    let mut s = sched(&cluster("round-robin"), &instance("sarathi"), 1, 10);
    let mut acts = Vec::new();
    let long = RequestSpec {
        arrival_us: 0,
        prompt_tokens: 150,
        max_output_tokens: 20,
        slo: Slo::default(),
        priority: 0,
        class: None,
    };
    let id = s.submit(0, long);
    s.take_actions(&mut acts);
    assert!(acts
        .iter()
        .any(|a| matches!(a, Action::Rejected { request, .. } if *request == id)));
    acts.clear();
    let ok = RequestSpec {
        prompt_tokens: 40,
        max_output_tokens: 50,
        ..long
    };
    let id = s.submit(0, ok);
    s.take_actions(&mut acts);
    assert!(matches!(&acts[0], Action::Run(p) if p.instance == 0));
    // Cancelled while in flight: blocks stay until the iteration ends, then everything is free.
    s.cancel(5, id);
    assert!(s.instance(0).kv.free_blocks() < 10);
    s.iteration_done(10, 0, &[]);
    acts.clear();
    s.take_actions(&mut acts);
    assert!(acts.iter().any(|a| matches!(
        a,
        Action::Finished {
            reason: FinishReason::Cancelled,
            ..
        }
    )));
    assert_eq!(s.instance(0).kv.free_blocks(), 10);
    assert_eq!(s.live_requests(), 0);
}
