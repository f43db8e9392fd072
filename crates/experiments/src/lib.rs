//! # experiments
//!
//! What users run: data sets, attacks, certified evaluation, and (later) training and the
//! papers' reproductions. `xtask` is a thin command line over this crate.
//!
//! Architecture invariant: no bound math here — it calls `dual-core` / `nets` for that.

pub mod attacks;
pub mod certify;
pub mod datasets;
pub mod download;
pub mod report;
pub mod train;
pub mod reproduce;
pub mod plot;
pub mod toy2d;
pub mod cascade;
pub mod lp;
pub mod primal;
pub mod min_distance;
pub mod device;
pub mod workloads;
