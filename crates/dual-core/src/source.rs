//! Sources of free variables: the input set and the relaxed activations.

use crate::Result;
use candle_core::Tensor;
use std::ops::Range;

/// A set of free variables sitting at one output of the network, with a linear lower bound term.
///
/// For a coefficient vector `g` on the variables of the source's output, the source states the
/// minimum of `gᵀ δ` over its free part `δ`:
/// * an l_inf ball (InfBall): `-ε ‖g‖₁` (Theorem 1, the `-ε‖ν̂₁‖₁` term),
/// * the unstable units of a ReLU: `Σ_{j∈I} -d_j l_j · min(g_j, 0)` (the `Σ l_ij [ν_ij]_+` term
///   of Theorem 1 with `ν = -g`).
///
/// Layer-wise bounds (Algorithm 1) are computed by pushing a basis of the source's variables —
/// its *columns* — forward through the rest of the network; a source then reduces the
/// propagated columns `P` (one row per column, one entry per target unit) to the same term for
/// every target unit at once, for both the lower and the upper bound.
pub trait DualSource: Send + Sync {
    /// Number of columns (per example; examples with fewer columns pad with zero columns).
    fn num_columns(&self) -> usize;

    /// Columns `range` of the basis, shaped `[B, range.len(), *shape]`, or `[1, range.len(),
    /// *shape]` when they are the same for every example (the input ball's identity): the engine
    /// then pushes them once, and they become per-example at the first layer that differs by
    /// example (a ReLU's slopes). Layers must therefore broadcast over the batch dimension.
    fn columns(&self, range: Range<usize>) -> Result<Tensor>;

    /// Partial terms of columns `range`, propagated to a layer with `K` units (`p`: `[B, len, K]`,
    /// or `[1, len, K]` for shared columns not yet made per-example): `(lower, upper)`, each
    /// `[B, K]` (or `[1, K]` when the same for every example; the engine broadcasts). Partial
    /// terms of disjoint ranges are added up and then handed to [`DualSource::finish_terms`].
    fn column_terms(&self, p: &Tensor, range: Range<usize>) -> Result<(Tensor, Tensor)>;

    /// Turns summed partial terms into the bound terms (identity unless the term is not a sum,
    /// e.g. the l2 norm).
    fn finish_terms(&self, lower: Tensor, upper: Tensor) -> Result<(Tensor, Tensor)> {
        Ok((lower, upper))
    }

    /// `min_δ gᵀ δ` over the source's free variables for coefficients `g` shaped
    /// `[B, n, *shape]`, as `[B, n]`.
    fn lower_term(&self, g: &Tensor) -> Result<Tensor>;

    /// Whether the source's term is exact once the coefficients `g` on its variables are known,
    /// so layer-wise bounds may be computed in backward form (see [`crate::BoundForm`]). Sources
    /// whose term is an *estimate* from pushed columns (random projections) return `false` and
    /// always go forward.
    fn exact_from_coefficients(&self) -> bool {
        true
    }

    /// `(min_δ gᵀδ, max_δ gᵀδ)` over the free variables, for the coefficients of `K` target
    /// units at once: `g` is `[B, K, *shape]`, or `[1, K, *shape]` when the same for every example
    /// (implementations broadcast against their per-example data); each result is `[B, K]` (or
    /// `[1, K]` when the same for every example). Used by the backward form of the layer-wise
    /// bounds. Default: `(lower_term(g), -lower_term(-g))`.
    fn coefficient_terms(&self, g: &Tensor) -> Result<(Tensor, Tensor)> {
        let lower = self.lower_term(g)?;
        let upper = self.lower_term(&g.neg()?)?.neg()?;
        Ok((lower, upper))
    }

    /// The bounding box of the free variables `δ` (the set is `x + δ`) as centre and radius
    /// `(m, ρ)`, each `[B, K]` or `[1, K]`: `m − ρ ≤ δ ≤ m + ρ`, where `m_j ∓ ρ_j` are the source's
    /// terms of the unit rows `±e_j` ([`DualSource::coefficient_terms`]). Interval bounds start
    /// from it. `None` (the default) when the source does not state it directly; the caller then
    /// computes it from the unit rows.
    fn interval_box(&self) -> Option<Result<(Tensor, Tensor)>> {
        None
    }

    /// Whether the set *is* its [`DualSource::interval_box`] (an l_inf ball, clipped or not),
    /// so that the interval image of one affine map of it is the map's exact range. `false` (the
    /// default) for every other set: an l2 ball only fits inside its box.
    fn is_box(&self) -> bool {
        false
    }

    /// [`Self::coefficient_terms`] for coefficients that live on a spatial window of the
    /// source's `[C, H, W]` grid: `g` `[B or 1, n, C, h, w]`, its first entry at `at` (the window
    /// inside the grid); the same as the whole-grid terms of `g` padded with zeros. The exact
    /// dual's backward form runs rows of single units on windows with it. `None` (the default):
    /// no windowed form.
    fn coefficient_terms_window(&self, _g: &Tensor, _at: (usize, usize)) -> Option<Result<(Tensor, Tensor)>> {
        None
    }

    /// A short name for messages.
    fn name(&self) -> String;
}
