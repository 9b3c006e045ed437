//! A discrete-event executor in virtual time.
//!
//! It plays the executor's part for a [`Scheduler`]: arrivals at their times, each iteration
//! lasting what the cost model predicts, layer-wise copies and transfers over links that carry
//! one copy at a time per direction. The simulator drives it over hardware cost models and
//! traces; policy tests drive it with hand-built scenarios. Identical inputs give identical runs.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::{
    cost::{layerwise_copy_end, CostModel, Link},
    kv::BlockKeys,
    request::{RequestId, RequestSpec},
    scheduler::{Action, Scheduler},
    InstanceId, TimeUs,
};

/// Observes a replay as it happens (time series, timelines, progress).
pub trait Observer {
    /// An action was carried out at `now`.
    fn on_action(&mut self, _now: TimeUs, _action: &Action, _sched: &Scheduler) {}
    /// An event was handled at `now`; called after the scheduler reacted.
    fn after_event(&mut self, _now: TimeUs, _sched: &Scheduler) {}
}

/// An observer that observes nothing.
pub struct NoObserver;
impl Observer for NoObserver {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Arrival(u32),
    IterationDone(InstanceId),
    CopyDone(InstanceId, u64),
    TransferDone(u32),
    InstanceDown(InstanceId),
    LinkDown(InstanceId, InstanceId),
    LinkUp(InstanceId, InstanceId),
}

/// The link between instances `a` and `b` down from `from_us` until `to_us`
/// ([`Scheduler::pair_link_down`], [`Scheduler::pair_link_up`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// One end.
    pub a: InstanceId,
    /// The other end.
    pub b: InstanceId,
    /// When the link goes down.
    pub from_us: TimeUs,
    /// When it is back.
    pub to_us: TimeUs,
}

/// A queued event, ordered by time, then by the order it was queued (`key = time << 64 | seq`),
/// earliest first. One `u128` comparison keeps the event heap cheap.
#[derive(Debug, Clone, Copy)]
struct Queued {
    key: u128,
    ev: Ev,
}

impl Queued {
    fn time(&self) -> TimeUs {
        (self.key >> 64) as TimeUs
    }
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        self.key == o.key
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    /// Reversed: `BinaryHeap` is a max-heap and the earliest event must come first.
    fn cmp(&self, o: &Self) -> Ordering {
        o.key.cmp(&self.key)
    }
}

/// Outcome of a replay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplayEnd {
    /// Virtual time when the last event was handled.
    pub end_us: TimeUs,
    /// Events handled.
    pub events: u64,
}

/// Replays `arrivals` (sorted by arrival time) through `sched` until nothing is left to do.
/// Requests still unfinished when the event queue runs dry are reported by
/// [`Scheduler::live_requests`].
pub fn run(sched: &mut Scheduler, arrivals: &[RequestSpec], obs: &mut dyn Observer) -> ReplayEnd {
    run_on(sched, arrivals, obs, None)
}

/// The hardware a replay runs on when it differs from what the scheduler predicts with (a live
/// server whose configured cost model is not the measured one).
#[derive(Clone, Copy)]
pub struct Hardware<'a> {
    /// Iteration times.
    pub cost: &'a dyn CostModel,
    /// Copy and transfer times between instances.
    pub link: Link,
}

/// [`run`], with iteration and copy times from `hardware` when given (the scheduler's own cost
/// model and link otherwise).
pub fn run_on(
    sched: &mut Scheduler,
    arrivals: &[RequestSpec],
    obs: &mut dyn Observer,
    hardware: Option<Hardware<'_>>,
) -> ReplayEnd {
    run_keyed(sched, arrivals, &[], obs, hardware)
}

/// [`run_on`], submitting arrival `i` with the block keys `keys[i]` for prefix caching
/// ([`Scheduler::submit_keyed`]); `keys` is parallel to `arrivals`, or empty.
pub fn run_keyed(
    sched: &mut Scheduler,
    arrivals: &[RequestSpec],
    keys: &[Option<BlockKeys>],
    obs: &mut dyn Observer,
    hardware: Option<Hardware<'_>>,
) -> ReplayEnd {
    run_keyed_failing(sched, arrivals, keys, obs, hardware, &[])
}

/// [`run_on`], with instances failing: `(instance, time)` declares `instance` down at `time`
/// ([`Scheduler::instance_down`]); its iteration and copies in flight never complete.
pub fn run_failing(
    sched: &mut Scheduler,
    arrivals: &[RequestSpec],
    obs: &mut dyn Observer,
    hardware: Option<Hardware<'_>>,
    failures: &[(InstanceId, TimeUs)],
) -> ReplayEnd {
    run_keyed_failing(sched, arrivals, &[], obs, hardware, failures)
}

/// [`run_keyed`] and [`run_failing`] together.
pub fn run_keyed_failing(
    sched: &mut Scheduler,
    arrivals: &[RequestSpec],
    keys: &[Option<BlockKeys>],
    obs: &mut dyn Observer,
    hardware: Option<Hardware<'_>>,
    failures: &[(InstanceId, TimeUs)],
) -> ReplayEnd {
    run_partitioned(sched, arrivals, keys, obs, hardware, failures, &[])
}

/// [`run_keyed_failing`] with links between instances going down and back up
/// (`partitions`): copies in flight across a link when it goes down never land.
pub fn run_partitioned(
    sched: &mut Scheduler,
    arrivals: &[RequestSpec],
    keys: &[Option<BlockKeys>],
    obs: &mut dyn Observer,
    hardware: Option<Hardware<'_>>,
    failures: &[(InstanceId, TimeUs)],
    partitions: &[Partition],
) -> ReplayEnd {
    let n = sched.instances().len();
    let mut queue: BinaryHeap<Queued> = BinaryHeap::new();
    let mut seq = 0u64;
    // Queues an event. The event being handled stays at the top of the queue until the first
    // event it causes replaces it (one sift instead of a pop and a push); `taken` tells whether
    // that happened. The order of events is the same as popping first.
    let mut push = |q: &mut BinaryHeap<Queued>, taken: &mut bool, t: TimeUs, e: Ev| {
        let item = Queued {
            key: ((t as u128) << 64) | seq as u128,
            ev: e,
        };
        seq += 1;
        if !*taken {
            if let Some(mut top) = q.peek_mut() {
                *top = item;
                *taken = true;
                return;
            }
        }
        q.push(item);
    };
    // Arrivals enter the queue one at a time to keep it small.
    if let Some(a) = arrivals.first() {
        push(&mut queue, &mut true, a.arrival_us, Ev::Arrival(0));
    }
    for &(i, t) in failures {
        if (i as usize) < n {
            push(&mut queue, &mut true, t, Ev::InstanceDown(i));
        }
    }
    for p in partitions {
        if (p.a as usize) < n && (p.b as usize) < n {
            push(&mut queue, &mut true, p.from_us, Ev::LinkDown(p.a, p.b));
            push(&mut queue, &mut true, p.to_us, Ev::LinkUp(p.a, p.b));
        }
    }
    let mut link_free = vec![0 as TimeUs; n * n];
    let mut actions = Vec::new();
    let mut now = 0;
    let mut events = 0u64;
    let kvb = sched.cost().kv_bytes_per_token();
    let layers = sched.cost().num_layers();
    let link = hardware.map_or(sched.link(), |h| h.link);
    let mut stopped: Vec<RequestId> = Vec::new();
    while let Some(top) = queue.peek().copied() {
        let (t, ev) = (top.time(), top.ev);
        let mut taken = false;
        now = t;
        events += 1;
        match ev {
            Ev::Arrival(i) => {
                let k = keys.get(i as usize).cloned().flatten();
                sched.submit_keyed(now, arrivals[i as usize], k);
                if let Some(next) = arrivals.get(i as usize + 1) {
                    push(
                        &mut queue,
                        &mut taken,
                        next.arrival_us.max(now),
                        Ev::Arrival(i + 1),
                    );
                }
            }
            // A failed instance's iteration never ends (it is not busy any more: ignored).
            Ev::IterationDone(inst) => sched.iteration_done(now, inst, &stopped),
            Ev::InstanceDown(inst) => {
                sched.instance_down(now, inst);
            }
            Ev::LinkDown(a, b) => sched.pair_link_down(now, a, b),
            Ev::LinkUp(a, b) => sched.pair_link_up(now, a, b),
            Ev::CopyDone(inst, it) => sched.copy_done(now, inst, it),
            Ev::TransferDone(id) => sched.transfer_done(now, id),
        }
        stopped.clear();
        sched.take_actions(&mut actions);
        for a in actions.drain(..) {
            obs.on_action(now, &a, sched);
            match a {
                Action::Run(ref plan) => {
                    let dur = match hardware {
                        Some(h) => plan.iteration_us(h.cost),
                        None => plan.predicted_us,
                    }
                    .max(1);
                    let (instance, iteration) = (plan.instance, plan.iteration);
                    push(
                        &mut queue,
                        &mut taken,
                        now.saturating_add(dur),
                        Ev::IterationDone(instance),
                    );
                    // Layer-wise copies: one pipeline per destination, each on its own link.
                    let mut done_at = now.saturating_add(dur);
                    for to in plan.destinations() {
                        let bytes = plan.copy_tokens_to(to) * kvb;
                        let per_layer = link.transfer_us(bytes.div_ceil(layers.max(1) as u64));
                        let slot = instance as usize * n + to as usize;
                        let start = now.max(link_free[slot]);
                        let end = start.saturating_add(layerwise_copy_end(
                            layers,
                            dur / layers.max(1) as u64,
                            per_layer,
                        ));
                        link_free[slot] = end;
                        done_at = done_at.max(end);
                    }
                    if !plan.copies.is_empty() {
                        push(
                            &mut queue,
                            &mut taken,
                            done_at,
                            Ev::CopyDone(instance, iteration),
                        );
                    }
                }
                Action::Transfer {
                    id,
                    from,
                    to,
                    tokens,
                    ..
                } => {
                    let slot = from as usize * n + to as usize;
                    let start = now.max(link_free[slot]);
                    let end = start.saturating_add(link.transfer_us(tokens as u64 * kvb));
                    link_free[slot] = end;
                    push(&mut queue, &mut taken, end, Ev::TransferDone(id));
                }
                Action::Finished { .. } | Action::Rejected { .. } => {}
            }
        }
        if !taken {
            queue.pop();
        }
        #[cfg(debug_assertions)]
        if let Err(e) = sched.check_kv_owners() {
            panic!("at {now} us: {e}");
        }
        obs.after_event(now, sched);
    }
    sched.account(now);
    ReplayEnd {
        end_us: now,
        events,
    }
}
