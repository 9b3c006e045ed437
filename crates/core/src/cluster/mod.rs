//! Cluster policies: where requests go and what each instance may do.
//!
//! A policy implements [`ClusterPolicy`]; its hooks act on the cluster through [`ClusterCtx`],
//! which keeps the KV and load bookkeeping in one place (migrations, transfers, queue moves).
//! A policy and its knobs are chosen with [`ClusterConfig`].

pub mod accellm;
pub mod least_load;
pub mod round_robin;
pub mod splitwise;

use serde::{Deserialize, Serialize};

use crate::{
    batch::Entry,
    cost::{CostModel, Link},
    instance::{Instance, PhaseConstraint},
    kv::{EvictionPolicy, KvError, Ownership},
    policy::{self, ConfigError, PolicyConfig, UnknownPolicy},
    request::{Phase, RequestId, RequestState},
    scheduler::State,
    InstanceId, TimeUs,
};

/// How a migration was carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Migration {
    /// A current replica on the destination took over: no bulk data moved.
    Free,
    /// The replica's layer-wise copy is still landing; the move completes when it does.
    AwaitingCopy,
    /// An explicit KV transfer was started.
    Transfer,
    /// The destination's replica lacked the latest tokens; the request runs there at once and its
    /// next step recomputes them ([`crate::request::RequestState::recompute_tokens`]).
    Recompute,
}

/// How a move onto a replica that lacks the latest tokens catches up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CatchUp {
    /// The missing tokens' KV is transferred over the link.
    #[default]
    Transfer,
    /// The destination recomputes the missing tokens' KV in the request's next step.
    Recompute,
}

/// Why a migration could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigrateError {
    /// The request is not decoding idle on its instance (in flight, waiting, moving) or already
    /// lives on the destination.
    #[error("request cannot move now")]
    NotMovable,
    /// The destination has no room for its KV.
    #[error(transparent)]
    Kv(#[from] KvError),
}

/// The cluster as a cluster policy sees and changes it.
pub struct ClusterCtx<'a> {
    pub(crate) s: &'a mut State,
}

impl ClusterCtx<'_> {
    /// The current time.
    pub fn now(&self) -> TimeUs {
        self.s.now
    }

    /// All instances.
    pub fn instances(&self) -> &[Instance] {
        &self.s.instances
    }

    /// One instance.
    pub fn instance(&self, i: InstanceId) -> &Instance {
        &self.s.instances[i as usize]
    }

    /// A live request.
    pub fn request(&self, id: RequestId) -> &RequestState {
        self.s.requests.get(id)
    }

    /// The cost model.
    pub fn cost(&self) -> &dyn CostModel {
        &*self.s.cost
    }

    /// The link between instances.
    pub fn link(&self) -> Link {
        self.s.link
    }

    /// Outstanding work on `i` in tokens: prompts still to prefill plus KV context held.
    pub fn load(&self, i: InstanceId) -> u64 {
        self.s.instances[i as usize].load_tokens
    }

    /// Whether instance `i` is up (not declared down).
    pub fn is_up(&self, i: InstanceId) -> bool {
        !self.s.is_down(i)
    }

    /// Whether `a` and `b` reach each other (no [`crate::scheduler::Scheduler::pair_link_down`]
    /// between them): KV can be copied, transferred or moved between them.
    pub fn linked(&self, a: InstanceId, b: InstanceId) -> bool {
        !self.s.is_cut(a, b)
    }

    /// Whether `a` and `b` run on cores of one machine ([`crate::SchedulerConfig::share_idle_cores`]):
    /// work one of them does, such as a KV copy, takes cores the other could compute on.
    pub fn share_cores(&self, a: InstanceId, b: InstanceId) -> bool {
        self.s.partner_cores(a) == Some(b)
    }

    /// Asks the core to offer `i` to its policies again (after the caller changed its queues).
    pub fn wake(&mut self, i: InstanceId) {
        self.s.mark_dirty(i);
    }

    /// Sets which replica instance `i`'s block manager evicts first.
    pub fn set_eviction(&mut self, i: InstanceId, policy: EvictionPolicy) {
        self.s.instances[i as usize].kv.set_eviction(policy);
    }

    /// Sets whether instance `i`'s replicas count as prefix cache.
    pub fn set_replicas_as_cache(&mut self, i: InstanceId, on: bool) {
        self.s.instances[i as usize].kv.set_replicas_as_cache(on);
    }

    /// Prompt tokens of `id` that `i` holds in its prefix cache now (what its prefill would
    /// skip there).
    pub fn cached_prefix_tokens(&self, i: InstanceId, id: RequestId) -> u64 {
        let r = self.s.requests.get(id);
        let Some(keys) = r.block_keys.as_deref() else {
            return 0;
        };
        let kv = &self.s.instances[i as usize].kv;
        let max = (r.prefill_target - 1) / kv.block_size();
        (kv.lookup(keys).min(max) * kv.block_size()) as u64
    }

    /// Counts a role switch (for the run summary).
    pub fn count_role_switch(&mut self) {
        self.s.counters.role_switches += 1;
    }

    /// Moves a queued request whose prefill has not started to `to`'s waiting queue.
    /// Returns false (and changes nothing) if it has started or is in flight.
    pub fn move_waiting(&mut self, id: RequestId, to: InstanceId) -> bool {
        let r = self.s.requests.get(id);
        if self.s.is_down(to) {
            return false;
        }
        if r.phase != Phase::Waiting || r.in_flight || r.prefilled > 0 || r.instance == to {
            return r.instance == to;
        }
        let (from, load) = (r.instance, r.load());
        let src = &mut self.s.instances[from as usize];
        let Some(p) = src.waiting.iter().position(|&x| x == id) else {
            return false;
        };
        src.waiting.remove(p);
        src.load_tokens -= load;
        let dst = &mut self.s.instances[to as usize];
        dst.waiting.push_back(id);
        dst.load_tokens += load;
        self.s.requests.get_mut(id).instance = to;
        self.s.mark_dirty(to);
        true
    }

    /// Drops the replica of `id`, if any (not while it moves: the replica may be its
    /// destination).
    pub fn drop_replica(&mut self, id: RequestId) {
        if !matches!(self.s.requests.get(id).phase, Phase::Moving { .. }) {
            self.s.drop_replica(id);
        }
    }

    /// Moves decoding request `id` to run on `to`. With a current replica there this is free;
    /// with a replica whose copy is still landing it completes when the copy lands; with a replica
    /// that lacks the latest tokens they are recomputed there if the policy's
    /// [`ClusterPolicy::catch_up`] says so; otherwise the missing KV is transferred
    /// ([`crate::scheduler::Action::Transfer`]). With `keep_source` the old primary stays behind
    /// as a replica.
    pub fn migrate(
        &mut self,
        id: RequestId,
        to: InstanceId,
        keep_source: bool,
    ) -> Result<Migration, MigrateError> {
        let now = self.s.now;
        let r = self.s.requests.get(id);
        if r.phase != Phase::Decoding || r.in_flight || r.instance == to || self.s.is_down(to) {
            return Err(MigrateError::NotMovable);
        }
        let from = r.instance;
        if self.s.is_cut(from, to) {
            return Err(MigrateError::NotMovable);
        }
        let have_replica = r.replica_on() == Some(to);
        if have_replica && r.replica_current() {
            self.s.counters.migrations_free += 1;
            self.s.land_migration(id, to, keep_source);
            return Ok(Migration::Free);
        }
        let tokens = r.kv_tokens;
        let dst = &mut self.s.instances[to as usize];
        dst.account_kv(now);
        if have_replica {
            dst.kv.set_ownership(id, Ownership::Primary);
        }
        let mut evicted = Vec::new();
        if let Err(e) = dst.kv.reserve(id, Ownership::Primary, tokens, &mut evicted) {
            if have_replica {
                dst.kv.set_ownership(id, Ownership::Replica);
            }
            return Err(e.into());
        }
        self.s.counters.replica_evictions += evicted.len() as u64;
        self.s.requests.replicas_evicted(&evicted);
        if !have_replica {
            self.s.drop_replica(id);
        }
        let r = self.s.requests.get_mut(id);
        r.phase = Phase::Moving { to };
        self.s.instances[from as usize].running.retain(|&x| x != id);
        if have_replica && r.copies_pending() > 0 {
            return Ok(Migration::AwaitingCopy);
        }
        Ok(self.s.catch_up_move(id, to, keep_source))
    }
}

/// A routing score from an instance's (or pair's) `load` and the prompt tokens `hit` it has
/// cached: `load - weight * hit`, lower is better (the `prefix_weight` knob of least-load and
/// AcceLLM).
pub fn prefix_score(load: u64, hit: u64, weight: f64) -> i64 {
    load as i64 - (weight * hit as f64) as i64
}

/// Decides where requests go and what each instance may do.
pub trait ClusterPolicy: Send {
    /// The policy's name, as given on the command line.
    fn name(&self) -> &'static str;

    /// Called once when the scheduler is built.
    fn init(&mut self, _ctx: &mut ClusterCtx<'_>) {}

    /// Picks the instance whose waiting queue takes the new request `id`.
    fn route(&mut self, ctx: &mut ClusterCtx<'_>, id: RequestId) -> InstanceId;

    /// Called before idle instance `i` forms its next batch: may move requests, and says what `i`
    /// may run.
    fn before_schedule(&mut self, _ctx: &mut ClusterCtx<'_>, _i: InstanceId) -> PhaseConstraint {
        PhaseConstraint::Any
    }

    /// Whether [`Self::copy_target`] may ever name a destination. A policy that never copies
    /// says so, and the scheduler skips asking about every entry of every batch.
    fn copies_kv(&self) -> bool {
        true
    }

    /// Where `entry`'s new KV, computed on `i`, should be streamed layer by layer, if anywhere.
    fn copy_target(
        &mut self,
        _ctx: &ClusterCtx<'_>,
        _i: InstanceId,
        _entry: &Entry,
    ) -> Option<InstanceId> {
        None
    }

    /// `id` has produced its first token (its prefill completed).
    fn on_prefill_done(&mut self, _ctx: &mut ClusterCtx<'_>, _id: RequestId) {}

    /// An iteration on `i` ended (after its requests were updated and finished ones freed).
    fn on_iteration_done(&mut self, _ctx: &mut ClusterCtx<'_>, _i: InstanceId) {}

    /// Layer-wise copies issued by `i` landed.
    fn on_copy_done(&mut self, _ctx: &mut ClusterCtx<'_>, _i: InstanceId) {}

    /// Whether a migration that waited for a copy keeps the old primary as a replica.
    fn keeps_replica_after_migration(&self) -> bool {
        false
    }

    /// How a move onto a replica that lacks the latest tokens catches up (read once, when the
    /// scheduler is built).
    fn catch_up(&self) -> CatchUp {
        CatchUp::Transfer
    }

    /// Instance `i` was declared down (its requests are already recovered elsewhere); a
    /// pairing policy lets its partner run alone.
    fn on_instance_down(&mut self, _ctx: &mut ClusterCtx<'_>, _i: InstanceId) {}

    /// Instance `i` is back, empty.
    fn on_instance_up(&mut self, _ctx: &mut ClusterCtx<'_>, _i: InstanceId) {}

    /// The link between `a` and `b` went down (both still serve; replicas and moves between
    /// them are already dropped): a pairing policy runs them as two unpaired instances.
    fn on_link_down(&mut self, _ctx: &mut ClusterCtx<'_>, _a: InstanceId, _b: InstanceId) {}

    /// The link between `a` and `b` is back: a pairing policy pairs them again.
    fn on_link_up(&mut self, _ctx: &mut ClusterCtx<'_>, _a: InstanceId, _b: InstanceId) {}
}

/// Which cluster policy runs, with its knobs ([`crate::policy`]): in TOML `cluster =
/// "least-load"`, or `[cluster.accellm]` with knobs under it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClusterConfig {
    /// `round-robin`: no knobs.
    RoundRobin,
    /// `least-load`.
    LeastLoad(least_load::LeastLoadConfig),
    /// `splitwise`.
    Splitwise(splitwise::SplitwiseConfig),
    /// `accellm`.
    Accellm(accellm::AccellmConfig),
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self::LeastLoad(Default::default())
    }
}

/// Names of the cluster policies.
pub const NAMES: &[&str] = &["round-robin", "least-load", "splitwise", "accellm"];

impl PolicyConfig for ClusterConfig {
    const LEVEL: &'static str = "cluster";
    const NAMES: &'static [&'static str] = NAMES;

    fn name(&self) -> &'static str {
        match self {
            Self::RoundRobin => "round-robin",
            Self::LeastLoad(_) => "least-load",
            Self::Splitwise(_) => "splitwise",
            Self::Accellm(_) => "accellm",
        }
    }

    fn named(name: &str) -> Result<Self, UnknownPolicy> {
        match name {
            "round-robin" => Ok(Self::RoundRobin),
            "least-load" => Ok(Self::LeastLoad(Default::default())),
            "splitwise" => Ok(Self::Splitwise(Default::default())),
            "accellm" => Ok(Self::Accellm(Default::default())),
            _ => Err(policy::unknown::<Self>(name)),
        }
    }

    fn knobs<'de, D: serde::Deserializer<'de>>(name: &str, de: D) -> Result<Self, D::Error> {
        match name {
            "round-robin" => policy::NoKnobs::deserialize(de).map(|_| Self::RoundRobin),
            "least-load" => Deserialize::deserialize(de).map(Self::LeastLoad),
            "splitwise" => Deserialize::deserialize(de).map(Self::Splitwise),
            "accellm" => Deserialize::deserialize(de).map(Self::Accellm),
            _ => Err(serde::de::Error::custom(policy::unknown::<Self>(name))),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        match self {
            Self::LeastLoad(c) => policy::non_negative(self, "prefix_weight", c.prefix_weight),
            Self::Accellm(c) => policy::non_negative(self, "prefix_weight", c.prefix_weight),
            Self::RoundRobin | Self::Splitwise(_) => Ok(()),
        }
    }
}

impl<'de> Deserialize<'de> for ClusterConfig {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        policy::deserialize(de)
    }
}

impl std::str::FromStr for ClusterConfig {
    type Err = UnknownPolicy;

    /// The policy called `s`, with default knobs.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::named(s)
    }
}

impl ClusterConfig {
    /// The policy object for a cluster of `instances` instances.
    pub fn build(&self, instances: u32) -> Box<dyn ClusterPolicy> {
        match self {
            Self::RoundRobin => Box::new(round_robin::RoundRobin::default()),
            Self::LeastLoad(c) => Box::new(least_load::LeastLoad::new(c)),
            Self::Splitwise(c) => Box::new(splitwise::Splitwise::new(instances, c)),
            Self::Accellm(c) => Box::new(accellm::Accellm::new(instances, c)),
        }
    }
}

/// The instance in `candidates` with the least outstanding work (lowest index on ties).
pub fn least_loaded(
    ctx: &ClusterCtx<'_>,
    candidates: impl Iterator<Item = InstanceId>,
) -> Option<InstanceId> {
    candidates.min_by_key(|&i| (ctx.load(i), i))
}
