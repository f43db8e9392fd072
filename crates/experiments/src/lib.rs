//! # experiments
//!
//! What users run: attacks, certified evaluation, training and the papers' reproductions.
//! `xtask` is a thin command line over this crate. The data sets and their downloader live in
//! the `datasets` crate, re-exported here as [`datasets`] and [`download`].
//!
//! Architecture invariant: no bound math here — it calls `dual-core` / `nets` for that.

#![forbid(unsafe_code)]
// `!(a <= b)` is how the input checks reject NaN together with the wrong order.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

pub mod attacks;
pub mod cascade;
pub mod cascade_certify;
pub mod certify;
pub mod certify_family;
pub mod certify_records;
pub mod certify_sound;
pub mod chunked_grads;
pub use ::datasets;
pub mod device;
pub mod error;
pub use ::datasets::download;
/// The checking LP, in its own crate (`crates/lp-check`); re-exported under its old path.
pub use lp_check as lp;
pub mod min_distance;
pub mod plot;
pub mod primal;
pub mod progress;
pub mod report;
pub mod reproduce;
pub mod toy2d;
pub mod train;
pub mod workloads;
