//! # projections
//!
//! The scalable bounds of Wong, Schmidt, Metzen & Kolter (NeurIPS 2018, "Scaling provable
//! adversarial defenses"): instead of pushing one column per input feature and per unstable ReLU
//! unit through the network, every source pushes `k` random projections, and the l1 norms the
//! layer-wise bounds need are *estimated* — by the median of `|Cauchy projections|` (l1), or the
//! root mean square of normal projections (the l2 input ball).
//!
//! * [`InfBallProj`], [`InfBallProjBounded`], [`L2BallProj`]: projected input sets;
//! * [`DualReLUProj`]: a ReLU whose unstable units are projected when there are more than `k`;
//! * [`projected_dual`] with a [`ProjectionConfig`]: the whole network, choosing where to project
//!   as the paper does;
//! * [`median_epsilon`], [`epsilon_from_model`], [`ProjectionConfig::inflate`]: the
//!   high-probability correction.
//!
//! A projected bound is an **estimate, not a certificate**: it may be above or below the exact
//! bound. Inflated, it is a bound with probability at least `1 - delta`. Use projections to
//! *train*; certify with the exact dual network. The objective `J(c)` itself (the backward pass)
//! always uses the exact terms; only the layer-wise bounds are estimated.
//!
//! Details, derivations and measurements: docs/PROJECTIONS.md.

mod config;
mod estimate;
mod guarantee;
mod input;
pub mod random;
mod relu;
mod relu_columns;

pub use config::{
    count_estimates, epsilon_from_model, inflation, input_projected, project_nodes, projected_dual, projected_input,
    EstimateCount, Inflation, ProjNorm, ProjectionConfig,
};
pub use estimate::{linear_and_median_abs, mean_square_over_columns, median_abs_over_columns, median_rank};
pub use guarantee::{
    cauchy_abs_cdf, median_epsilon, median_epsilon_hoeffding, median_epsilon_lower, median_failure, normal_epsilon,
    normal_epsilon_lower, normal_failure,
};
pub use input::{inflation_factor, InfBallProj, InfBallProjBounded, L2BallProj, INPUT_STREAM};
pub use relu::{DualReLUProj, ReluRule};
