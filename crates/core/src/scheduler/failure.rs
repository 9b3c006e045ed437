//! Instances failing and coming back: [`Scheduler::instance_down`] and
//! [`Scheduler::instance_up`]; links between partners failing and coming back:
//! [`Scheduler::pair_link_down`] and [`Scheduler::pair_link_up`].
//!
//! When an instance is declared down, its iteration in flight and its KV are lost. Each request
//! that ran there continues, decided here so the simulator and the server recover alike:
//! - **by replica**: its partner holds a current replica (all of its KV, no copy landing), so the
//!   replica becomes the primary and it decodes on there with no re-prefill;
//! - **by recompute**: otherwise it is queued on the least-loaded live instance to prefill its
//!   prompt plus the tokens it already generated (as after a preemption), then goes on decoding.
//!
//! Requests waiting there that had not started are simply moved. Replicas on the dead instance
//! are forgotten. A down instance is never routed to, scheduled, copied to or migrated to; the
//! cluster policy hears of it ([`crate::cluster::ClusterPolicy::on_instance_down`]) so that
//! AcceLLM runs the partner alone, and of its return so the pair is formed again.
//!
//! When only the link between two live instances fails (a partition between partners that
//! both still reach the executor), nothing is lost and both keep serving: copies in flight
//! between them are forgotten, replicas across the link dropped, moves across it called off
//! (the request stays on its source), and no copy, transfer or move crosses it until it is
//! back. AcceLLM runs the two as unpaired instances meanwhile
//! ([`crate::cluster::ClusterPolicy::on_link_down`]).

use crate::{
    cluster::ClusterCtx,
    kv::Ownership,
    request::{Phase, RequestId},
    InstanceId, TimeUs,
};

use super::Scheduler;

/// How a request on a failed instance goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Recovery {
    /// Its partner's current replica became the primary: no recomputation.
    Replica,
    /// Its prompt and generated tokens are prefilled again on a live instance.
    Recompute,
}

impl Scheduler {
    /// Whether instance `i` is up (not declared down).
    pub fn is_up(&self, i: InstanceId) -> bool {
        !self.state.down[i as usize]
    }

    /// Instance `i` failed (declared at `now`): its work in flight and all its KV are lost.
    /// Returns each request that had started there with how it recovers; the executor must
    /// forget the iteration in flight on `i` (its report, if one still arrives, is ignored) and
    /// any copies from `i` (they are no longer awaited).
    pub fn instance_down(&mut self, now: TimeUs, i: InstanceId) -> Vec<(RequestId, Recovery)> {
        self.state.now = now;
        let iu = i as usize;
        if self.state.down[iu] {
            return Vec::new();
        }
        self.state.down[iu] = true;
        let s = &mut self.state;
        // The iteration in flight never completes.
        let inst = &mut s.instances[iu];
        inst.busy = false;
        inst.account_kv(now);
        if let Some(p) = inst.borrowed.take() {
            s.give_back(p);
        }
        let batch = std::mem::take(&mut s.instances[iu].batch.entries);
        for e in &batch {
            if let Some(r) = s.requests.try_get_mut(e.request) {
                r.in_flight = false;
            }
            // Its copies never start: their destinations are unpinned.
            if let Some(to) = e.copy_to {
                s.instances[to as usize].kv.unpin(e.request);
            }
        }
        let inst = &mut s.instances[iu];
        inst.batch.entries = batch;
        inst.batch.clear();
        // Copies from `i` will never land: unpin their destinations.
        for c in std::mem::take(&mut s.pending_copies[iu]) {
            if let Some(r) = s.requests.try_get_mut(c.request) {
                if r.serial == c.serial {
                    r.copy_settled();
                    s.instances[c.to as usize].kv.unpin(c.request);
                }
            }
        }
        // Transfers from or to `i` are abandoned (their ids are not reused: a late report of
        // one is ignored).
        for t in &mut s.transfers {
            let Some(tr) = *t else { continue };
            let src = s.requests.try_get(tr.request).map(|r| r.instance);
            if tr.to == i || src == Some(i) {
                *t = None;
            }
        }
        let ids: Vec<RequestId> = (0..s.requests.slots.len())
            .filter(|&k| s.requests.slots[k].is_some())
            .map(|k| RequestId(k as u32))
            .collect();
        let mut out = Vec::new();
        let mut cancelled = Vec::new();
        for id in ids {
            let r = s.requests.get_mut(id);
            if r.replica_on() == Some(i) {
                // Its blocks are lost with `i`'s memory (cleared below).
                r.forget_replica();
            }
            if r.moving_to() == Some(i) {
                // Its move onto `i` is off: it stays on its (live) source.
                r.phase = Phase::Decoding;
                let from = r.instance;
                s.instances[from as usize].running.push(id);
                s.mark_dirty(from);
            }
            let r = s.requests.get(id);
            if r.instance != i {
                continue;
            }
            if r.cancelled {
                cancelled.push(id);
                continue;
            }
            let started = r.prefilled > 0 || r.generated > 0;
            let partner = r
                .replica_on()
                .filter(|&p| !s.down[p as usize])
                .filter(|_| r.replica_current() && r.copies_pending() == 0)
                .filter(|_| matches!(r.phase, Phase::Decoding | Phase::Moving { .. }));
            // A move away from `i` is over: onto a current replica it lands now; the blocks
            // reserved on any other destination are freed.
            if let Some(to) = r.moving_to().filter(|&to| Some(to) != partner) {
                s.instances[to as usize].kv.release(id);
            }
            // With no live instance it stays queued here until one comes back.
            let fallback = s.least_loaded_up().unwrap_or(i);
            let r = s.requests.get_mut(id);
            let load = r.load();
            // Timed until its next token (`Metrics::recovery_us`).
            r.recovering = match partner {
                Some(_) => Some((now, Recovery::Replica)),
                None if started => Some((now, Recovery::Recompute)),
                None => None,
            };
            match partner {
                Some(p) => {
                    r.instance = p;
                    r.phase = Phase::Decoding;
                    // Its replica's blocks hold its primary now.
                    r.forget_replica();
                    let dst = &mut s.instances[p as usize];
                    dst.account_kv(now);
                    dst.kv.set_ownership(id, Ownership::Primary);
                    dst.kv.touch(id);
                    // The current replica holds all its KV: its blocks are prefix cache now.
                    r.published = match r.block_keys.as_deref() {
                        Some(keys) => {
                            let full = (r.kv_tokens / dst.kv.block_size()).min(keys.len() as u32);
                            dst.kv.publish(id, keys, 0, full);
                            full
                        }
                        None => 0,
                    };
                    dst.running.push(id);
                    dst.load_tokens += load;
                    s.mark_dirty(p);
                    s.counters.recovered_by_replica += 1;
                    out.push((id, Recovery::Replica));
                }
                None => {
                    s.drop_replica(id);
                    let r = s.requests.get_mut(id);
                    r.reset_for_recompute();
                    let load = r.load();
                    let to = fallback;
                    r.instance = to;
                    let dst = &mut s.instances[to as usize];
                    // Ahead of prompts that have not started, like a preempted request.
                    let reqs = &s.requests;
                    let pos = dst
                        .waiting
                        .iter()
                        .position(|&w| reqs.get(w).prefilled == 0 && reqs.get(w).generated == 0)
                        .unwrap_or(dst.waiting.len());
                    dst.waiting.insert(pos.min(dst.waiting.len()), id);
                    dst.load_tokens += load;
                    s.mark_dirty(to);
                    if started {
                        s.counters.recovered_by_recompute += 1;
                        out.push((id, Recovery::Recompute));
                    }
                }
            }
        }
        // All of `i`'s KV is gone.
        let inst = &mut s.instances[iu];
        let held: Vec<RequestId> = (0..s.requests.slots.len() as u32)
            .map(RequestId)
            .filter(|&id| inst.kv.table(id).is_some())
            .collect();
        for id in held {
            inst.kv.release(id);
        }
        // Its prefix cache is gone with its memory: a restarted worker starts empty.
        inst.kv.clear();
        inst.running.clear();
        let keep: Vec<RequestId> = inst
            .waiting
            .iter()
            .copied()
            .filter(|&w| s.requests.try_get(w).is_some_and(|r| r.instance == i))
            .collect();
        inst.waiting = keep.into_iter().collect();
        inst.load_tokens = inst.waiting.iter().map(|&w| s.requests.get(w).load()).sum();
        for id in cancelled {
            s.finish(id, crate::request::FinishReason::Cancelled);
        }
        let mut ctx = ClusterCtx { s: &mut self.state };
        self.cluster.on_instance_down(&mut ctx, i);
        for k in 0..self.state.instances.len() {
            if !self.state.down[k] {
                self.state.mark_dirty(k as InstanceId);
            }
        }
        self.schedule_idle();
        out
    }

    /// Instance `i` is back (restarted, its KV empty): it is routed to and paired again.
    /// Requests that were parked on it because no instance was up run there now.
    pub fn instance_up(&mut self, now: TimeUs, i: InstanceId) {
        self.state.now = now;
        if !self.state.down[i as usize] {
            return;
        }
        self.state.down[i as usize] = false;
        let mut ctx = ClusterCtx { s: &mut self.state };
        self.cluster.on_instance_up(&mut ctx, i);
        self.state.mark_dirty(i);
        self.schedule_idle();
    }
}

impl Scheduler {
    /// Whether the link between `a` and `b` is up (no [`Self::pair_link_down`] without its
    /// [`Self::pair_link_up`]).
    pub fn is_linked(&self, a: InstanceId, b: InstanceId) -> bool {
        !self.state.is_cut(a, b)
    }

    /// The link between live instances `a` and `b` failed (declared at `now`): their copies to
    /// each other will not land, so the core stops waiting for them, drops every replica one
    /// holds of the other's requests, calls off moves between them, and copies, transfers or
    /// moves nothing across the link until [`Self::pair_link_up`]. Both go on serving their own
    /// requests. Copies in flight in the iterations running now are taken out of their batches:
    /// the executor must not report them landed (their destinations' blocks may be reused).
    pub fn pair_link_down(&mut self, now: TimeUs, a: InstanceId, b: InstanceId) {
        self.state.now = now;
        let key = (a.min(b), a.max(b));
        if a == b || self.state.cut.contains(&key) {
            return;
        }
        self.state.cut.push(key);
        let s = &mut self.state;
        for (x, y) in [(a, b), (b, a)] {
            // Copies in the iteration in flight: it will report without them.
            for e in &mut s.instances[x as usize].batch.entries {
                if e.copy_to == Some(y) {
                    e.copy_to = None;
                }
            }
            // Copies issued earlier, still awaited.
            let pending = std::mem::take(&mut s.pending_copies[x as usize]);
            for c in pending {
                if c.to != y {
                    s.pending_copies[x as usize].push_back(c);
                    continue;
                }
                if let Some(r) = s.requests.try_get_mut(c.request) {
                    if r.serial == c.serial {
                        r.copy_settled();
                    }
                }
            }
        }
        // Transfers across the link are abandoned (a late report of one is ignored).
        for t in &mut s.transfers {
            let Some(tr) = *t else { continue };
            let src = s.requests.try_get(tr.request).map(|r| r.instance);
            if src.is_some_and(|src| (src, tr.to) == (a, b) || (src, tr.to) == (b, a)) {
                *t = None;
            }
        }
        let across = |x: InstanceId, y: InstanceId| (x, y) == (a, b) || (x, y) == (b, a);
        let mut cancelled = Vec::new();
        for k in 0..s.requests.slots.len() {
            let id = RequestId(k as u32);
            let Some(r) = s.requests.try_get_mut(id) else {
                continue;
            };
            let from = r.instance;
            if let Some(to) = r.moving_to().filter(|&to| across(from, to)) {
                // Its move is off: it stays on its source, and what was reserved for it on the
                // other side (a replica turned primary, or a transfer's destination) is freed.
                r.phase = Phase::Decoding;
                r.forget_replica();
                if r.cancelled && !r.in_flight {
                    cancelled.push(id);
                }
                let dst = &mut s.instances[to as usize];
                dst.account_kv(now);
                dst.kv.release(id);
                s.instances[from as usize].running.push(id);
                s.mark_dirty(from);
                s.mark_dirty(to);
                continue;
            }
            if r.replica_on().is_some_and(|o| across(from, o)) {
                if let Some(o) = s.drop_replica(id) {
                    s.mark_dirty(o);
                }
            }
        }
        for id in cancelled {
            s.finish(id, crate::request::FinishReason::Cancelled);
        }
        let mut ctx = ClusterCtx { s: &mut self.state };
        self.cluster.on_link_down(&mut ctx, a, b);
        self.state.mark_dirty(a);
        self.state.mark_dirty(b);
        self.schedule_idle();
    }

    /// The link between `a` and `b` is back: KV may cross it again, and AcceLLM pairs the two
    /// again (replicas follow from the next prefills).
    pub fn pair_link_up(&mut self, now: TimeUs, a: InstanceId, b: InstanceId) {
        self.state.now = now;
        let key = (a.min(b), a.max(b));
        let Some(k) = self.state.cut.iter().position(|&c| c == key) else {
            return;
        };
        self.state.cut.swap_remove(k);
        let mut ctx = ClusterCtx { s: &mut self.state };
        self.cluster.on_link_up(&mut ctx, a, b);
        self.state.mark_dirty(a);
        self.state.mark_dirty(b);
        self.schedule_idle();
    }
}

impl super::State {
    /// Whether the link between `a` and `b` is down.
    pub(crate) fn is_cut(&self, a: InstanceId, b: InstanceId) -> bool {
        !self.cut.is_empty() && self.cut.contains(&(a.min(b), a.max(b)))
    }

    /// The live instance with the least load, if any is up.
    pub(crate) fn least_loaded_up(&self) -> Option<InstanceId> {
        (0..self.instances.len())
            .filter(|&k| !self.down[k])
            .min_by_key(|&k| (self.instances[k].load_tokens, k))
            .map(|k| k as InstanceId)
    }

    /// Whether instance `i` is down.
    pub(crate) fn is_down(&self, i: InstanceId) -> bool {
        self.down[i as usize]
    }
}
