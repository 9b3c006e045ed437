//! Partitions between remote partners: a KV copy or transfer that a worker could not deliver to
//! its partner, while the front still drives both, takes the link between them down in the core
//! ([`Scheduler::pair_link_down`](accellm_core::scheduler::Scheduler::pair_link_down)): both
//! serve their own requests, unpaired. Each side then probes the other every [`PROBE_EVERY`]
//! with an empty transfer (the worker opens its KV link to the partner, sends an empty frame
//! per layer and waits for the ack); the first probe that gets through brings the link back up
//! and the pair re-forms.

use std::time::{Duration, Instant};

use accellm_core::InstanceId;

use super::{Deferred, Executor, Input};
use crate::worker::LinkJob;

/// How long after a failed probe the next one starts.
pub(crate) const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Transfer ids at or above this are link probes; the core's own transfer ids are small slot
/// indices and never get here.
const PROBE_BASE: u32 = 0xF000_0000;

/// The transfer id of a probe from instance `from` to instance `to`.
fn probe_id(from: usize, to: usize) -> u32 {
    PROBE_BASE | ((from as u32 & 0x3FFF) << 14) | (to as u32 & 0x3FFF)
}

/// The `(from, to)` of a probe's transfer id.
pub(crate) fn probe_of(id: u32) -> Option<(usize, usize)> {
    (id >= PROBE_BASE).then_some((((id >> 14) & 0x3FFF) as usize, (id & 0x3FFF) as usize))
}

/// A link between partners that is down.
pub(crate) struct Cut {
    /// The two ends, lower first.
    pub pair: (usize, usize),
    /// When it went down.
    pub since: Instant,
    /// Directions with a probe in flight or scheduled.
    pub probing: Vec<(usize, usize)>,
}

/// The key of the link between `a` and `b`.
fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl Executor {
    /// Worker `from` could not deliver KV to `to`: if the front still drives both, the link
    /// between them is down (both go on serving, unpaired) and probing starts.
    pub(super) fn link_down(&mut self, from: usize, to: usize, why: &str) {
        let (a, b) = (from as InstanceId, to as InstanceId);
        if from == to
            || to >= self.instances.len()
            || !self.sched.is_up(a)
            || !self.sched.is_up(b)
            || !self.sched.is_linked(a, b)
        {
            return;
        }
        tracing::warn!(
            from,
            to,
            error = why,
            "partners cut off from each other: both serve unpaired until the link is back"
        );
        // Transfers waiting to cross the cut are off (the core abandons them).
        self.deferred.retain(|d| match d {
            Deferred::Transfer(k, LinkJob::Transfer { to: t, .. }, _) => {
                pair(*k, *t) != pair(from, to)
            }
            _ => true,
        });
        let now = self.now();
        self.sched.pair_link_down(now, a, b);
        self.cuts.push(Cut {
            pair: pair(from, to),
            since: Instant::now(),
            probing: Vec::new(),
        });
        self.probe(from, to);
        self.probe(to, from);
    }

    /// Sends a probe from `from` to `to` if their link is down and none is under way.
    pub(super) fn probe(&mut self, from: usize, to: usize) {
        let Some(cut) = self.cuts.iter_mut().find(|c| c.pair == pair(from, to)) else {
            return;
        };
        if cut.probing.contains(&(from, to)) || !self.sched.is_up(from as InstanceId) {
            return;
        }
        let job = LinkJob::Transfer {
            id: probe_id(from, to),
            to,
            spans: Vec::new(),
        };
        if self.instances[from].link.send(job).is_ok() {
            cut.probing.push((from, to));
        }
    }

    /// A probe's answer: the link is back if it got through; otherwise the next one is sent
    /// after [`PROBE_EVERY`].
    pub(super) fn probe_done(&mut self, from: usize, to: usize, error: Option<String>) {
        let Some(k) = self.cuts.iter().position(|c| c.pair == pair(from, to)) else {
            return;
        };
        if let Some(e) = error {
            tracing::debug!(from, to, error = %e, "partner still unreachable");
            let Some(out) = self.remote.as_ref().map(|r| r.out.clone()) else {
                return;
            };
            // Still counted as probing until the retry is sent.
            let _ = std::thread::Builder::new()
                .name("accellm-probe".into())
                .spawn(move || {
                    std::thread::sleep(PROBE_EVERY);
                    let _ = out.send(Input::ProbeLink { from, to });
                });
            return;
        }
        let cut = self.cuts.swap_remove(k);
        let now = self.now();
        self.sched
            .pair_link_up(now, cut.pair.0 as InstanceId, cut.pair.1 as InstanceId);
        tracing::warn!(
            a = cut.pair.0,
            b = cut.pair.1,
            down_s = cut.since.elapsed().as_secs_f64(),
            "partners reach each other again: paired again"
        );
    }

    /// The retry of a failed probe is due.
    pub(super) fn probe_again(&mut self, from: usize, to: usize) {
        if let Some(cut) = self.cuts.iter_mut().find(|c| c.pair == pair(from, to)) {
            cut.probing.retain(|&d| d != (from, to));
        }
        self.probe(from, to);
    }

    /// Instance `i` is driven again (reconnected): it probes the partners it is cut off from.
    pub(super) fn probe_from(&mut self, i: usize) {
        let others: Vec<usize> = self
            .cuts
            .iter()
            .filter_map(|c| match c.pair {
                (a, b) if a == i => Some(b),
                (a, b) if b == i => Some(a),
                _ => None,
            })
            .collect();
        for to in others {
            if let Some(cut) = self.cuts.iter_mut().find(|c| c.pair == pair(i, to)) {
                // Its threads are new: a probe the old ones had is gone with them.
                cut.probing.retain(|&d| d != (i, to));
            }
            self.probe(i, to);
        }
    }

    /// Per known pair `(a, b)`, whether its link is up (for `/metrics`).
    pub(super) fn pairs_linked(&self) -> Vec<((usize, usize), bool)> {
        let n = self.instances.len();
        let mut out: Vec<((usize, usize), bool)> =
            (0..n / 2).map(|k| ((2 * k, 2 * k + 1), true)).collect();
        for c in &self.cuts {
            match out.iter_mut().find(|(p, _)| *p == c.pair) {
                Some(e) => e.1 = false,
                None => out.push((c.pair, false)),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_ids_round_trip_and_stay_clear_of_transfer_ids() {
        for (from, to) in [(0, 1), (1, 0), (6, 7), (1000, 999)] {
            assert_eq!(probe_of(probe_id(from, to)), Some((from, to)));
        }
        assert_eq!(probe_of(0), None);
        assert_eq!(probe_of(1 << 20), None);
    }
}
