//! Sound certificates despite floating point.
//!
//! A certificate computed in f32 is a statement about real numbers obtained with rounded
//! arithmetic. This crate **checks** such a certificate: the exact Wong–Kolter dual bound of a
//! network (equivalently, the backward linear bound with the dual's slopes `u/(u−l)`) is
//! recomputed in f64, layer-wise bounds included, and every rounded operation is charged with a
//! rigorous bound on its error:
//!
//! * a sum of `n` products, in any order: `|fl(Σ aᵢbᵢ) − Σ aᵢbᵢ| ≤ γ_n Σ|aᵢbᵢ|`,
//!   `γ_n = n u/(1 − n u)`, `u = 2⁻⁵³` ([`rounding`]);
//! * the error of a propagated coefficient `g` through an affine layer `A` enters the bound as
//!   `Σ |E| |z| ≤ γ_n ⟨|g|, |A| ẑ + |b|⟩`, where `ẑ` bounds `|z|` over the input set: one
//!   contraction per layer with a vector computed once per example (no second matmul);
//! * the input set is a box rounded outward ([`InputBox`]).
//!
//! Any slope in `[0, 1]` below and any slope `≥ u/(u−l)` above give valid linear bounds as long
//! as the layer-wise bounds `l, u` are sound, so the slopes are the dual's rule evaluated on the
//! checked bounds and rounded up. With [`SoundOptions::deployed_f32`] the bound also covers the
//! network **as it runs in f32** (every affine output perturbed by its own f32 rounding error,
//! see `docs/SOUNDNESS.md`).
//!
//! The check covers Linear, Conv2d, ReLU, Flatten, Identity, Dense skip connections and
//! BatchNorm2d in eval mode; any other layer is an error naming it.

mod check;
mod fused;
mod input;
mod plan;
pub mod rounding;
mod sparse;

pub use check::{SoundNetwork, SoundOptions};
pub use input::{DataRounding, InputBox};

/// What can go wrong in the check.
#[derive(Debug, thiserror::Error)]
pub enum SoundError {
    /// A layer the check does not cover.
    #[error("unsupported by the sound check: {0}")]
    Unsupported(String),
    /// Bad input (NaN, an empty box, wrong shapes, ...).
    #[error("invalid input to the sound check: {0}")]
    BadInput(String),
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// The dual layers failed.
    #[error(transparent)]
    Dual(#[from] dual_core::DualError),
    /// The network failed.
    #[error(transparent)]
    Net(#[from] nets::NetError),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, SoundError>;
