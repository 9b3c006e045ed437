//! Instances failing mid-run (`Scheduler::instance_down`), in virtual time: every request still
//! finishes with all its tokens, requests whose partner holds a current replica go on from it,
//! the others are prefilled again, and nothing is scheduled on the failed instance afterwards.

mod common;
use common::{assert_all_done, build, cluster, config, drive, instance, requests};

use accellm_core::{
    replay::{self, NoObserver, Observer},
    scheduler::{Action, Scheduler},
    TimeUs,
};

fn sched(cluster_policy: &str, n: u32) -> Scheduler {
    build(
        &config(256),
        n,
        &cluster(cluster_policy),
        &instance("accelgen"),
    )
}

/// Fails the run if anything runs on `dead` after `at`.
struct NothingOn {
    dead: u32,
    at: TimeUs,
}

impl Observer for NothingOn {
    fn on_action(&mut self, now: TimeUs, a: &Action, s: &Scheduler) {
        if let Action::Run(plan) = a {
            let instance = plan.instance;
            assert!(
                !(instance == self.dead && now >= self.at),
                "instance {instance} ran at {now} after failing at {}",
                self.at
            );
        }
        if let Action::Transfer { to, from, .. } = *a {
            assert!(now < self.at || (to != self.dead && from != self.dead));
        }
        if now >= self.at {
            for r in (0..64).filter_map(|k| s.request(accellm_core::request::RequestId(k))) {
                assert_ne!(
                    r.replica_on(),
                    Some(self.dead),
                    "replica kept on a dead instance"
                );
            }
        }
    }
}

#[test]
fn accellm_pair_survives_an_instance_and_recovers_by_replica_and_recompute() {
    let reqs = requests(40, 3_000, |i| 40 + (i * 37) % 200, |i| 20 + (i * 13) % 60);
    // Undisturbed, for comparison.
    let mut calm = sched("accellm", 2);
    replay::run(&mut calm, &reqs, &mut NoObserver);
    assert_all_done(&calm, &reqs);
    assert_eq!(calm.counters().recovered_by_replica, 0);

    // Fail either instance at several moments of the run: every run completes; over them,
    // both kinds of recovery happen.
    let (mut by_replica, mut by_recompute) = (0, 0);
    let mut times: [Vec<TimeUs>; 2] = Default::default();
    let mut last = None;
    for k in 0..10u32 {
        let (dead, at) = (k % 2, 10_000 + 12_000 * k as TimeUs);
        let mut s = sched("accellm", 2);
        replay::run_failing(
            &mut s,
            &reqs,
            &mut NothingOn { dead, at },
            None,
            &[(dead, at)],
        );
        assert_all_done(&s, &reqs);
        assert!(!s.is_up(dead));
        by_replica += s.counters().recovered_by_replica;
        by_recompute += s.counters().recovered_by_recompute;
        // Each recovered request produced a token again, timed from the failure.
        let rec = &s.metrics().recovery_us;
        assert_eq!(rec[0].len() as u64, s.counters().recovered_by_replica);
        assert_eq!(rec[1].len() as u64, s.counters().recovered_by_recompute);
        for (all, these) in times.iter_mut().zip(rec) {
            all.extend(these);
        }
        last = Some(s);
    }
    assert!(
        by_replica > 0,
        "decodes with a current replica on the partner go on from it"
    );
    assert!(by_recompute > 0, "the others are prefilled again");
    // Going on from a replica skips the prefill: it is back sooner than a recompute.
    let median = |v: &mut Vec<TimeUs>| {
        v.sort_unstable();
        v[v.len() / 2]
    };
    let (replica, recompute) = (median(&mut times[0]), median(&mut times[1]));
    assert!(
        replica < recompute,
        "replica {replica} µs, recompute {recompute} µs"
    );
    let s = last.unwrap();
    // The partner alone does the work of two: the run ends later than the undisturbed one.
    let end = |s: &Scheduler| {
        s.metrics()
            .finished
            .iter()
            .map(|f| f.arrival_us + f.jct_us)
            .max()
            .unwrap()
    };
    assert!(end(&s) > end(&calm));
}

#[test]
fn without_replicas_every_started_request_is_recomputed() {
    let reqs = requests(30, 2_000, |i| 50 + (i * 31) % 150, |i| 30 + (i * 7) % 40);
    let at = 40_000;
    let mut s = sched("least-load", 3);
    replay::run_failing(
        &mut s,
        &reqs,
        &mut NothingOn { dead: 0, at },
        None,
        &[(0, at)],
    );
    assert_all_done(&s, &reqs);
    let c = s.counters();
    assert_eq!(c.recovered_by_replica, 0, "least-load keeps no replicas");
    assert!(c.recovered_by_recompute > 0, "{c:?}");
}

/// Counts iterations per instance.
struct Runs(Vec<u32>);

impl Observer for Runs {
    fn on_action(&mut self, _now: TimeUs, a: &Action, _s: &Scheduler) {
        if let Action::Run(plan) = a {
            let instance = plan.instance;
            self.0[instance as usize] += 1;
        }
    }
}

#[test]
fn a_failed_instance_that_comes_back_is_paired_again() {
    let reqs = requests(30, 2_000, |i| 60 + (i * 17) % 100, |i| 10 + (i * 5) % 30);
    let mut s = sched("accellm", 2);
    assert!(s.instance_down(0, 0).is_empty(), "nothing had started");
    assert!(!s.is_up(0));
    s.instance_up(0, 0);
    assert!(s.is_up(0));
    let mut runs = Runs(vec![0; 2]);
    replay::run(&mut s, &reqs, &mut runs);
    assert_all_done(&s, &reqs);
    assert!(
        runs.0.iter().all(|&n| n > 0),
        "both instances ran: {:?}",
        runs.0
    );
    assert!(
        s.counters().copy_bytes > 0,
        "the pair streams replicas again"
    );
}

#[test]
fn a_lost_iterations_copies_leave_the_replica_that_takes_over_unpinned() {
    // The instance running a decode fails with its next iteration in flight, and with it that
    // iteration's copy into the partner's replica: the copy never starts, so the replica that
    // becomes the primary there must not stay pinned (a pinned replica is never evicted, should
    // the request move back and leave it a replica again).
    let mut s = sched("accellm", 2);
    let spec = requests(1, 1_000, |_| 300, |_| 200)[0];
    let id = s.submit(0, spec);
    let now = drive(&mut s, 0, &mut |_| {}, &|s| {
        s.request(id).is_some_and(|r| {
            let inst = s.instance(r.instance);
            r.generated >= 3
                && r.replica_current()
                && inst.busy
                && inst.batch.entries.iter().any(|e| e.copy_to.is_some())
        })
    });
    let r = s.request(id).expect("still running");
    let (on, partner) = (r.instance, r.replica_on().expect("a replica"));
    assert_eq!(
        s.instance(partner).kv.pins(id),
        1,
        "the copy in flight pins it"
    );
    assert_eq!(
        s.instance_down(now, on),
        vec![(id, accellm_core::scheduler::Recovery::Replica)]
    );
    assert_eq!(s.instance(partner).kv.pins(id), 0);
    s.check_invariants().unwrap();
}
