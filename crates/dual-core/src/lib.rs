//! # dual-core
//!
//! The bottom of the workspace: the traits every dual layer implements, the engine that builds the
//! dual network of Wong & Kolter (ICML 2018) layer by layer (their Algorithm 1), the objective
//! J(c) of their Theorem 1, and the robust loss built on it.
//!
//! The engine knows nothing about concrete layers: it sees
//! * [`DualAffine`] nodes (Linear, Conv2d, Flatten, Dense, BatchNorm2d, ... in `dual-layers`),
//!   which it can apply to propagated columns and transpose;
//! * [`DualActivation`] nodes (ReLU), which, given the pre-activation bounds (l, u), choose a
//!   [`Relaxation`] — the relaxation is a choice made at run time, not a constant of the layer;
//! * [`DualSource`]s: sets of free variables with a term in the objective — the input set
//!   (an l_inf or l2 ball) and the unstable units of every relaxed activation.
//!
//! Architecture invariant: this crate does no IO and names no concrete layer.

#![forbid(unsafe_code)]

pub mod bounds;
pub mod error;
pub mod interval_rows;
pub mod layer;
pub mod loss;
pub mod network;
pub mod scratch;
pub mod source;

pub use error::{DualError, Result};
pub use interval_rows::{CpuPool, IntervalRows};
pub use layer::{
    ActivationKind, DualActivation, DualAffine, DualNode, Inputs, Relaxation, SingleInputAffine, WindowTranspose,
};
pub use loss::{
    certified_from_bounds, class_difference_c, cross_entropy, cross_entropy_per_example, robust_bounds, robust_loss,
    RobustLoss,
};
pub use network::{BoundForm, DualNetwork, DualOptions, FormsUsed, LayerBounds};
pub use source::DualSource;
