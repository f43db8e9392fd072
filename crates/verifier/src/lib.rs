//! # verifier
//!
//! Answers VNN-LIB properties on ONNX networks, as in VNN-COMP: falsification first (PGD from
//! several starts, every counterexample checked by the graph's own f64 forward pass), then
//! sound bounds of the property's linear inequalities from a pluggable [`BoundMethod`] (the
//! exact Wong–Kolter dual for now) with a disjunction handled clause by clause, then input
//! splitting on small inputs. [`benchmark`] runs a benchmark folder and scores it.

mod answer;
pub mod benchmark;
pub mod benchmark_records;
mod bounds;
mod driver;
pub mod falsify;

pub use answer::Answer;
pub use bounds::{BoundMethod, ExactDual, InputBox};
pub use driver::{check_counterexample, proves_above, verify, verify_lowered, VerifyOptions};
