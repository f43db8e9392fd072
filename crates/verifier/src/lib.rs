//! # verifier
//!
//! Answers VNN-LIB properties on ONNX networks, as in VNN-COMP: falsification first (PGD from
//! several starts, every counterexample checked by the graph's own f64 forward pass), then
//! sound bounds of the property's linear inequalities from a pluggable [`BoundMethod`] (the
//! exact Wong–Kolter dual for now) with a disjunction handled clause by clause, then input
//! splitting on small inputs. [`benchmark`] runs a benchmark folder and scores it.

mod answer;
pub mod bab;
pub mod benchmark;
pub mod benchmark_records;
mod bounds;
mod dense_dual;
mod driver;
pub mod falsify;
mod family;
mod sound;

pub use answer::Answer;
pub use bounds::{BoundMethod, BoundsAndSensitivity, ExactDual, InputBox};
pub use dense_dual::{DenseChain, DenseExactDual};
pub use driver::{check_counterexample, proves_above, verify, verify_lowered, verify_with_stats, VerifyOptions};
pub use family::{BySize, FamilyBound, Portfolio};
pub use sound::{confirm_counterexample, f32_point_in_box, SoundDual};
