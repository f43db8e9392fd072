//! Data sets used by the experiments.

pub mod idx;

pub use idx::*;
