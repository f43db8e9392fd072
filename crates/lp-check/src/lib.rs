//! # lp-check
//!
//! The linear program behind the dual network, solved with Clarabel (f64): the checking code's
//! reference for the bounds (tests compare the dual's bounds with its optimum, and the primal
//! experiment reads its solution), never a certificate.
//!
//! Wong & Kolter bound `min cᵀ f(x')` over an input set by the LP in which every ReLU is replaced
//! by its convex relaxation, given bounds `l ≤ ẑ ≤ u` of its input (those the dual network
//! computed):
//! * `l ≥ 0`: `z = ẑ`; `u ≤ 0`: `z = 0`;
//! * unstable (`l < 0 < u`), [`Relaxation::Triangle`] (the paper's LP):
//!   `z ≥ 0, z ≥ ẑ, z ≤ u (ẑ - l) / (u - l)`;
//! * unstable, [`Relaxation::FixedSlope`] (the relaxation the dual network solves exactly, with
//!   `d = u / (u - l)`): `d ẑ ≤ z ≤ d (ẑ - l)`.
//!
//! The dual objective `J(c)` is a feasible value of the triangle LP's dual, hence `J(c) ≤ LP`,
//! and it equals the optimum of the fixed-slope LP.
//!
//! Networks: sequential or DenseSequential chains of Linear, Conv2d (a sparse linear map), ReLU,
//! Flatten and Identity layers (Dense layers whose parts are Linear, Conv2d or Identity, summed).
//! Inputs and every output are flattened row-major (`[C, H, W]` as PyTorch's `Flatten` does).
//! Input sets: an l_inf box (one radius or one per feature, optionally clipped, e.g. to
//! `[0, 1]`) or an l2 ball.
//!
//! Files: [`program`] (the LP and Clarabel), [`network`] (the network as sparse matrices in
//! f64), [`relaxation`] (the ReLU relaxations over an input set).

#![forbid(unsafe_code)]
// `!(a <= b)` is meant: it is also true when either side is NaN, which must be refused.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

pub mod network;
pub mod program;
pub mod relaxation;

pub use network::{LpNetwork, Matrix, Step};
pub use program::{LinExpr, LinearProgram, LpSolution};
pub use relaxation::{example_bounds, InputSet, NetworkLp, Relaxation, ReluBounds};
