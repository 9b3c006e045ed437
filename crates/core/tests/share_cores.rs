//! Instances lending each other idle cores (`SchedulerConfig::share_idle_cores`).

mod common;
use common::{assert_all_done, cluster, config, instance, requests};

use std::sync::Arc;

use accellm_core::{
    cost::LinearCostModel,
    replay::{self, Observer},
    scheduler::{Action, Scheduler},
    TimeUs,
};

/// One instance's cost: 1 ms + 100 µs per token; on two instances' cores, 0.6 ms + 55 µs.
fn cost() -> LinearCostModel {
    let narrow = |base_us, per_token_us| LinearCostModel {
        knots: Vec::new(),
        base_us,
        per_token_us,
        per_kv_token_us: 0.0,
        per_logit_row_us: 0.0,
        layers: 4,
        kv_bytes_per_token: 1024,
        wide: None,
    };
    let mut c = narrow(1000.0, 100.0);
    c.wide = Some(Box::new(narrow(600.0, 55.0)));
    c
}

fn sched(cluster_policy: &str, inst: &str, share: bool) -> Scheduler {
    let mut cfg = config(4096);
    cfg.share_idle_cores = share;
    Scheduler::build(
        &cfg,
        2,
        &cluster(cluster_policy),
        &instance(inst),
        Arc::new(cost()),
    )
    .unwrap()
}

/// Every launch: who ran, on whose cores, and whether its partner was busy or lent then.
#[derive(Default)]
struct Launches(Vec<(u32, Option<u32>, bool)>);
impl Observer for Launches {
    fn on_action(&mut self, _now: TimeUs, a: &Action, s: &Scheduler) {
        s.check_invariants().unwrap();
        if let Action::Run(plan) = a {
            let (instance, borrowed) = (plan.instance, plan.borrowed);
            assert_eq!(s.instance(instance).lent_to, None, "launched on lent cores");
            let p = s.instance(instance ^ 1);
            let partner_occupied = p.busy || p.lent_to.is_some_and(|b| b != instance);
            self.0.push((instance, borrowed, partner_occupied));
            if let Some(b) = borrowed {
                assert_eq!(b, instance ^ 1, "only the pair partner lends");
                assert!(!p.busy, "a busy partner lent its cores");
                assert_eq!(p.lent_to, Some(instance));
                assert!(p.waiting.is_empty() && p.running.is_empty());
            }
        }
    }
}

#[test]
fn a_lone_request_runs_on_both_instances_cores_and_finishes_sooner() {
    for (cluster, inst) in [("least-load", "sarathi"), ("accellm", "accelgen")] {
        let reqs = requests(1, 0, |_| 400, |_| 20);
        let mut e2e = Vec::new();
        for share in [false, true] {
            let mut s = sched(cluster, inst, share);
            let mut obs = Launches::default();
            replay::run(&mut s, &reqs, &mut obs);
            assert_all_done(&s, &reqs);
            let borrowed = obs.0.iter().filter(|l| l.1.is_some()).count();
            if share {
                assert_eq!(
                    borrowed,
                    obs.0.len(),
                    "{cluster}/{inst}: partner idle throughout"
                );
            } else {
                assert_eq!(borrowed, 0);
            }
            e2e.push(s.metrics().finished[0].jct_us);
        }
        // 20 decode steps and a 400-token prefill at the wide cost: clearly shorter.
        assert!(
            (e2e[1] as f64) < 0.75 * e2e[0] as f64,
            "{cluster}/{inst}: {e2e:?}"
        );
    }
}

#[test]
fn a_partner_with_work_never_lends_and_a_lent_one_waits_for_its_cores() {
    // Requests one every 3 ms: both instances get work, often while the other runs wide.
    let reqs = requests(40, 3_000, |i| 50 + (i * 53) % 300, |i| 2 + i % 9);
    for (cluster, inst) in [
        ("least-load", "sarathi"),
        ("round-robin", "vllm"),
        ("accellm", "accelgen"),
    ] {
        let mut s = sched(cluster, inst, true);
        let mut obs = Launches::default();
        replay::run(&mut s, &reqs, &mut obs);
        assert_all_done(&s, &reqs);
        for &(i, borrowed, partner_occupied) in &obs.0 {
            // A narrow launch may share the machine; a wide one found its partner idle (checked
            // in the observer) and nobody launches on cores lent to the other.
            assert!(
                !(partner_occupied && borrowed.is_some()),
                "{cluster}/{inst}: instance {i} borrowed from an occupied partner"
            );
        }
        let wide = obs.0.iter().filter(|l| l.1.is_some()).count();
        let narrow = obs.0.len() - wide;
        assert!(
            wide > 0 && narrow > 0,
            "{cluster}/{inst}: {wide} wide, {narrow} narrow"
        );
        s.check_invariants().unwrap();
    }
}

#[test]
fn without_sharing_nothing_borrows() {
    let reqs = requests(20, 2_000, |i| 30 + i * 7, |_| 4);
    let mut s = sched("least-load", "sarathi", false);
    let mut obs = Launches::default();
    replay::run(&mut s, &reqs, &mut obs);
    assert_all_done(&s, &reqs);
    assert!(obs.0.iter().all(|l| l.1.is_none()));
}
