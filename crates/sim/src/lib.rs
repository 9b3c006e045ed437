//! accellm-sim: the scheduling core in virtual time over hardware cost models.
pub mod cli;
