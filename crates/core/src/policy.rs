//! Policy configuration shared by both levels ([`crate::cluster::ClusterConfig`],
//! [`crate::instance::InstanceConfig`]): a policy chosen by name, carrying its own knobs.
//!
//! In TOML (and JSON) a level is either the policy's name, with default knobs, or a table with
//! one key, the policy's name, holding the knobs that differ from their defaults:
//!
//! ```toml
//! cluster = "least-load"
//!
//! [instance.sarathi]
//! chunk_size = 1024
//! ```
//!
//! Knobs of a policy other than the chosen one cannot be written down, so none is silently
//! ignored; [`PolicyConfig::select`] makes switching policy (a `--cluster-policy` flag over a
//! config file) an error when it would drop knobs.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

/// Error for a policy name nobody knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} policy `{name}`; valid: {valid}")]
pub struct UnknownPolicy {
    /// "instance" or "cluster".
    pub kind: &'static str,
    /// The name given.
    pub name: String,
    /// The valid names, comma-separated.
    pub valid: String,
}

/// Why a policy configuration cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// No such policy.
    #[error(transparent)]
    Unknown(#[from] UnknownPolicy),
    /// Another policy was chosen over a configuration carrying knobs of this one.
    #[error(
        "the `[{level}.{configured}]` knobs apply to `--{level}-policy {configured}`, not `{chosen}`"
    )]
    KnobsElsewhere {
        /// "cluster" or "instance".
        level: &'static str,
        /// The policy the knobs belong to.
        configured: &'static str,
        /// The policy chosen instead.
        chosen: String,
    },
    /// A knob holds a value its policy cannot use.
    #[error("{level} policy `{policy}`: `{knob}` {message}")]
    Invalid {
        /// "cluster" or "instance".
        level: &'static str,
        /// The policy.
        policy: &'static str,
        /// The knob.
        knob: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A cluster of no instances.
    #[error("a cluster needs at least one instance")]
    NoInstances,
}

/// One level's configuration: which policy runs, with its knobs.
pub trait PolicyConfig: Sized + Clone + PartialEq {
    /// `"cluster"` or `"instance"`.
    const LEVEL: &'static str;
    /// The policies of this level, by name.
    const NAMES: &'static [&'static str];

    /// The chosen policy's name, as given on the command line.
    fn name(&self) -> &'static str;

    /// Policy `name` with its default knobs.
    fn named(name: &str) -> Result<Self, UnknownPolicy>;

    /// Reads the knobs of policy `name` (one of [`Self::NAMES`]) from `de`.
    fn knobs<'de, D: Deserializer<'de>>(name: &str, de: D) -> Result<Self, D::Error>;

    /// Checks the knobs' values.
    fn validate(&self) -> Result<(), ConfigError>;

    /// Whether some knob differs from the policy's default.
    fn has_knobs(&self) -> bool {
        Self::named(self.name()).map_or(true, |d| &d != self)
    }

    /// This configuration for a run of policy `name`: itself if it is that policy, else `name`
    /// with default knobs (a `--compare` run of another policy).
    fn for_policy(&self, name: &str) -> Result<Self, UnknownPolicy> {
        if self.name() == name {
            Ok(self.clone())
        } else {
            Self::named(name)
        }
    }

    /// Policy `name` chosen over this configuration (a flag over a file): its knobs are kept if
    /// it is the same policy; dropping knobs of another one is an error.
    fn select(&self, name: &str) -> Result<Self, ConfigError> {
        let chosen = self.for_policy(name)?;
        if self.name() != chosen.name() && self.has_knobs() {
            return Err(ConfigError::KnobsElsewhere {
                level: Self::LEVEL,
                configured: self.name(),
                chosen: name.to_string(),
            });
        }
        Ok(chosen)
    }
}

/// The unknown-name error of a level.
pub(crate) fn unknown<T: PolicyConfig>(name: &str) -> UnknownPolicy {
    UnknownPolicy {
        kind: T::LEVEL,
        name: name.to_string(),
        valid: T::NAMES.join(", "),
    }
}

/// A policy without knobs, written as a table: the table must be empty.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoKnobs {}

/// Deserializes a level from its name or a one-key table `{ name = { knobs } }`.
pub(crate) fn deserialize<'de, T: PolicyConfig, D: Deserializer<'de>>(
    de: D,
) -> Result<T, D::Error> {
    de.deserialize_any(LevelVisitor(PhantomData))
}

struct LevelVisitor<T>(PhantomData<T>);

impl<'de, T: PolicyConfig> Visitor<'de> for LevelVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a {} policy name ({}) or a table with one of them as its only key",
            T::LEVEL,
            T::NAMES.join(", ")
        )
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        T::named(v).map_err(E::custom)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let Some(name) = map.next_key::<String>()? else {
            return Err(de::Error::custom(format!(
                "no {} policy named: give one of {}",
                T::LEVEL,
                T::NAMES.join(", ")
            )));
        };
        if !T::NAMES.contains(&name.as_str()) {
            return Err(de::Error::custom(unknown::<T>(&name)));
        }
        let value = map.next_value_seed(KnobsSeed::<T> {
            name: &name,
            level: PhantomData,
        })?;
        if let Some(other) = map.next_key::<String>()? {
            map.next_value::<IgnoredAny>()?;
            return Err(de::Error::custom(format!(
                "knobs of two {} policies (`{name}`, `{other}`): one runs",
                T::LEVEL
            )));
        }
        Ok(value)
    }
}

struct KnobsSeed<'a, T> {
    name: &'a str,
    level: PhantomData<T>,
}

impl<'de, T: PolicyConfig> DeserializeSeed<'de> for KnobsSeed<'_, T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<T, D::Error> {
        T::knobs(self.name, de)
    }
}

/// `knob` must be a non-negative finite number.
pub(crate) fn non_negative<T: PolicyConfig>(
    policy: &T,
    knob: &'static str,
    v: f64,
) -> Result<(), ConfigError> {
    if v >= 0.0 && v.is_finite() {
        return Ok(());
    }
    Err(ConfigError::Invalid {
        level: T::LEVEL,
        policy: policy.name(),
        knob,
        message: format!("must be a non-negative number, got {v}"),
    })
}
