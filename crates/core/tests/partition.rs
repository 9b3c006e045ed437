//! A partition between two partners that both stay up (`Scheduler::pair_link_down` /
//! `pair_link_up`), in virtual time: while the link is down both keep serving their own
//! requests with nothing crossing it (no copy, transfer, move or replica), every request
//! finishes with all its blocks freed, and once the link is back the pair streams replicas again.

mod common;
use common::{assert_all_done, build, config, requests, small_chunks};

use accellm_core::{
    cluster::{
        accellm::{AccellmConfig, SyncMode},
        ClusterConfig,
    },
    replay::{self, Observer, Partition},
    request::RequestId,
    scheduler::{Action, Scheduler},
    InstanceId, TimeUs,
};

fn sched(inst: &str, n: u32, kv_blocks: u32, acfg: &AccellmConfig) -> Scheduler {
    sched_on_link(inst, n, kv_blocks, acfg, 1e9)
}

/// [`sched`] with the link between instances at `bytes_per_s`.
fn sched_on_link(
    inst: &str,
    n: u32,
    kv_blocks: u32,
    acfg: &AccellmConfig,
    bytes_per_s: f64,
) -> Scheduler {
    let mut cfg = config(kv_blocks);
    cfg.link.bytes_per_s = bytes_per_s;
    let ccfg = ClusterConfig::Accellm(acfg.clone());
    build(&cfg, n, &ccfg, &small_chunks(inst))
}

/// Watches a run with the link between `a` and `b` down over `[from, to)`: nothing may cross
/// it then; counts each instance's iterations and the tokens they produced in the window, and
/// the iterations copying to the partner after it.
struct Watch {
    a: InstanceId,
    b: InstanceId,
    from: TimeUs,
    to: TimeUs,
    runs_during: [u32; 2],
    tokens_during: [u64; 2],
    copies_after: u32,
}

impl Watch {
    fn new(a: InstanceId, b: InstanceId, from: TimeUs, to: TimeUs) -> Self {
        Self {
            a,
            b,
            from,
            to,
            runs_during: [0; 2],
            tokens_during: [0; 2],
            copies_after: 0,
        }
    }

    fn side(&self, i: InstanceId) -> Option<usize> {
        [self.a, self.b].iter().position(|&x| x == i)
    }

    fn other(&self, i: InstanceId) -> InstanceId {
        if i == self.a {
            self.b
        } else {
            self.a
        }
    }
}

impl Observer for Watch {
    fn on_action(&mut self, now: TimeUs, a: &Action, _s: &Scheduler) {
        let cut = now >= self.from && now < self.to;
        match *a {
            Action::Run(ref plan) => {
                let instance = plan.instance;
                let Some(k) = self.side(instance) else { return };
                let to = self.other(instance);
                let copies = plan.copies.iter().filter(|c| c.to == to);
                if cut {
                    assert_eq!(copies.count(), 0, "a copy across the cut at {now}");
                    self.runs_during[k] += 1;
                    self.tokens_during[k] += plan.entries.len() as u64;
                } else if now >= self.to && copies.count() > 0 {
                    self.copies_after += 1;
                }
            }
            Action::Transfer { from, to, .. } if cut => {
                assert!(
                    self.side(from).is_none() || self.side(to).is_none(),
                    "a transfer across the cut at {now}"
                );
            }
            _ => {}
        }
    }

    fn after_event(&mut self, now: TimeUs, s: &Scheduler) {
        if now < self.from || now >= self.to {
            return;
        }
        assert!(!s.is_linked(self.a, self.b));
        s.check_invariants().unwrap();
        for k in 0..256 {
            let Some(r) = s.request(RequestId(k)) else {
                continue;
            };
            for x in [r.replica_on(), r.moving_to()].into_iter().flatten() {
                assert!(
                    self.side(r.instance).is_none() || x != self.other(r.instance),
                    "request {k} on {} keeps KV on its partner {x} across the cut",
                    r.instance
                );
            }
        }
        // Nothing of one side is held on the other.
        for (x, y) in [(self.a, self.b), (self.b, self.a)] {
            for k in 0..256 {
                let id = RequestId(k);
                if s.request(id).is_some_and(|r| r.instance == x) {
                    assert!(s.instance(y).kv.table(id).is_none(), "blocks of {k} on {y}");
                }
            }
        }
    }
}

#[test]
fn partners_cut_off_from_each_other_both_serve_unpaired_and_pair_again() {
    // A steady stream over 0.6 s; the link is down from 0.1 s to 0.4 s.
    let reqs = requests(120, 5_000, |i| 40 + (i * 37) % 200, |i| 20 + (i * 13) % 60);
    let (from, to) = (100_000, 400_000);
    let mut s = sched("accelgen", 2, 512, &AccellmConfig::default());
    let mut w = Watch::new(0, 1, from, to);
    replay::run_partitioned(
        &mut s,
        &reqs,
        &[],
        &mut w,
        None,
        &[],
        &[Partition {
            a: 0,
            b: 1,
            from_us: from,
            to_us: to,
        }],
    );
    assert_all_done(&s, &reqs);
    assert!(s.is_linked(0, 1) && s.is_up(0) && s.is_up(1));
    assert!(
        w.runs_during.iter().all(|&n| n > 10) && w.tokens_during.iter().all(|&n| n > 100),
        "both partners served during the cut: {:?} iterations, {:?} tokens",
        w.runs_during,
        w.tokens_during
    );
    assert!(w.copies_after > 0, "the pair streams replicas again");
    assert_eq!(s.counters().recovered_by_recompute, 0, "nothing was lost");
}

#[test]
fn a_cut_at_any_moment_frees_every_block_in_every_mode() {
    // Tight memory (evictions, preemptions), every sync mode, with and without replication and
    // role switching, on four instances over a slow link (copies and transfers take
    // milliseconds); the link of pair 0 goes down at many moments (with copies, moves and
    // transfers in flight) and comes back.
    let reqs = requests(80, 400, |i| 20 + (i * 71) % 400, |i| 1 + (i * 13) % 150);
    for sync in [SyncMode::Eager, SyncMode::Lazy, SyncMode::Recompute] {
        for replication in [true, false] {
            for role_switching in [true, false] {
                for k in 0..8u64 {
                    let acfg = AccellmConfig {
                        sync,
                        replication,
                        role_switching,
                        ..Default::default()
                    };
                    let from = 3_000 + 7_919 * k;
                    let to = from + 20_000 + 5_000 * k;
                    let inst = ["accelgen", "sarathi", "vllm"][k as usize % 3];
                    let mut s = sched_on_link(inst, 4, 80, &acfg, 2e7);
                    let mut w = Watch::new(0, 1, from, to);
                    let p = Partition {
                        a: 0,
                        b: 1,
                        from_us: from,
                        to_us: to,
                    };
                    replay::run_partitioned(&mut s, &reqs, &[], &mut w, None, &[], &[p]);
                    assert_all_done(&s, &reqs);
                }
            }
        }
    }
}

#[test]
fn a_link_that_never_comes_back_leaves_two_instances_serving() {
    let reqs = requests(60, 2_000, |i| 60 + (i * 17) % 100, |i| 10 + (i * 5) % 30);
    let mut s = sched("accelgen", 2, 256, &AccellmConfig::default());
    s.pair_link_down(0, 0, 1);
    s.pair_link_down(0, 1, 0);
    assert!(!s.is_linked(1, 0));
    let mut w = Watch::new(0, 1, 0, TimeUs::MAX);
    replay::run(&mut s, &reqs, &mut w);
    assert_all_done(&s, &reqs);
    assert!(w.runs_during.iter().all(|&n| n > 0), "{:?}", w.runs_during);
    assert_eq!(s.counters().copy_bytes, 0);
    assert_eq!(s.counters().transfer_bytes, 0);
}

#[test]
fn prompts_queued_on_one_partner_are_split_between_both_at_the_cut() {
    // A split pair queues every new prompt on its prefilling partner.
    let mut s = sched("accelgen", 2, 512, &AccellmConfig::default());
    for spec in requests(8, 0, |_| 200, |_| 20) {
        s.submit(0, spec);
    }
    let waiting = |s: &Scheduler| [0, 1].map(|i| s.instance(i).waiting.len());
    let before = waiting(&s);
    assert!(before.contains(&0), "all on one partner: {before:?}");
    s.pair_link_down(1, 0, 1);
    let after = waiting(&s);
    assert!(
        after.iter().all(|&n| n >= 3),
        "both partners hold prompts after the cut: {after:?}"
    );
    s.check_invariants().unwrap();
}
