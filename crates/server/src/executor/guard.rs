//! The copy-conflict guard: a job is held back while a KV copy still writes one of its blocks.

use super::Executor;
use crate::worker::{LinkJob, RunJob};

/// A dispatch held back until KV copies into its blocks have landed. The core pins replica
/// tables while copies into them are in flight, so this should never trigger; it guards the
/// pools against a block being reused underneath a copy should the core's bookkeeping and the
/// executor's timing ever disagree.
pub(super) enum Deferred {
    Run(usize, RunJob),
    Transfer(usize, LinkJob, Vec<u32>),
}

impl Executor {
    /// Whether any of `blocks` on instance `i` is the target of a copy still in flight.
    pub(super) fn conflicts(&self, i: usize, blocks: impl Iterator<Item = u32>) -> bool {
        let inc = &self.incoming[i];
        if inc.is_empty() {
            return false;
        }
        let mut blocks = blocks.peekable();
        blocks.peek().is_some() && blocks.any(|b| inc.iter().any(|&(_, d)| d == b))
    }

    pub(super) fn retry_deferred(&mut self) {
        if self.deferred.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.deferred);
        for d in pending {
            match d {
                Deferred::Run(i, job) => {
                    let blocked = self.conflicts(
                        i,
                        job.batch
                            .seqs
                            .iter()
                            .flat_map(|s| s.block_table.iter().copied()),
                    );
                    if blocked {
                        self.deferred.push(Deferred::Run(i, job));
                    } else {
                        self.send_run(i, job);
                    }
                }
                Deferred::Transfer(from, job, dst) => {
                    let to = match &job {
                        LinkJob::Transfer { to, .. } => *to,
                        _ => 0,
                    };
                    if self.conflicts(to, dst.iter().copied()) {
                        self.deferred.push(Deferred::Transfer(from, job, dst));
                    } else if self.instances[from].link.send(job).is_err() {
                        tracing::error!(instance = from, "link thread is gone");
                    }
                }
            }
        }
    }
}
