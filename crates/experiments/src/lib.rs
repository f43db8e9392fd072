//! # experiments
//!
//! What users run: data sets, attacks, certified evaluation, and (later) training and the
//! papers' reproductions. `xtask` is a thin command line over this crate.
//!
//! Architecture invariant: no bound math here — it calls `dual-core` / `nets` for that.

pub mod attacks;
pub mod cascade;
pub mod certify;
pub mod certify_family;
pub mod datasets;
pub mod device;
pub mod download;
pub mod lp;
pub mod min_distance;
pub mod plot;
pub mod primal;
pub mod report;
pub mod reproduce;
pub mod toy2d;
pub mod train;
pub mod workloads;
