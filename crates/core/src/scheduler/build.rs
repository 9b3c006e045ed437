//! The one way to build a scheduler from configuration: [`Scheduler::build`].

use std::sync::Arc;

use super::{Scheduler, SchedulerConfig};
use crate::{
    cluster::ClusterConfig,
    cost::CostModel,
    instance::InstanceConfig,
    policy::{ConfigError, PolicyConfig},
};

impl Scheduler {
    /// A cluster of `instances` instances run by the `cluster` policy, each instance by its own
    /// object of the `instance` policy, with the knobs they carry.
    pub fn build(
        cfg: &SchedulerConfig,
        instances: u32,
        cluster: &ClusterConfig,
        instance: &InstanceConfig,
        cost: Arc<dyn CostModel>,
    ) -> Result<Self, ConfigError> {
        if instances == 0 {
            return Err(ConfigError::NoInstances);
        }
        cluster.validate()?;
        instance.validate()?;
        let policies = (0..instances).map(|_| instance.build()).collect();
        Ok(Self::new(cfg, cost, cluster.build(instances), policies))
    }
}
