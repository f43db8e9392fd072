//! Linear relaxations with separate lower and upper lines, the per-activation piece of CROWN,
//! CROWN-IBP and α-CROWN.
//!
//! On pre-activation bounds `l ≤ ẑ ≤ u` an activation states `a_L ẑ + b_L ≤ σ(ẑ) ≤ a_U ẑ + b_U`
//! elementwise. The dual of Wong & Kolter is the special case `a_L = a_U`; CROWN chooses the lower
//! slope by a rule, α-CROWN optimises it. Where the slopes live: in the object an activation
//! returns from [`crate::DualActivation::linear_relax`], so the engine never sees a ReLU.

use crate::Result;
use candle_core::Tensor;

/// How an activation picks its lower line (ReLU: `a_L ẑ`, `a_L ∈ [0, 1]` on the unstable units).
#[derive(Debug, Clone, Copy)]
pub enum SlopeRule<'a> {
    /// The dual's slope, `a_L = a_U = u / (u − l)` (Wong & Kolter).
    Dual,
    /// CROWN's adaptive slope: 1 where `u/(u − l) > 1/2` (that is `u > −l`), else 0.
    Adaptive,
    /// Given slopes `α ∈ [0, 1]` on the unstable units, `[B, r, *shape]` with `r = 1` or one per
    /// specification row (α-CROWN).
    Given(&'a Tensor),
}

impl SlopeRule<'_> {
    /// The rule's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            SlopeRule::Dual => "dual",
            SlopeRule::Adaptive => "adaptive",
            SlopeRule::Given(_) => "given",
        }
    }
}

/// The relaxation of one activation for one batch: both lines, applied backwards.
pub trait LinearRelaxation: Send + Sync {
    /// One step of the backward (CROWN) pass for a *lower* bound of `Λ σ(ẑ)`: with `Λ` the
    /// coefficients on the activation's output, `[Bλ, m, *shape]` (`Bλ` = 1 when shared by the
    /// batch), returns the coefficients on its input `Λ_in = [Λ]₊ a_L + [Λ]₋ a_U` (`[B, m, *shape]`)
    /// and the offset `Σ_j [Λ_j]₊ b_Lj + [Λ_j]₋ b_Uj` as `[B, m]` (`None` when zero), so that
    /// `Λ σ(ẑ) ≥ Λ_in ẑ + offset` for every `ẑ ∈ [l, u]`.
    fn backward_lower(&self, lam: &Tensor) -> Result<(Tensor, Option<Tensor>)>;

    /// [`Self::backward_lower`] of rows gathered per example from a table shared by the batch:
    /// `table` `[1, R, *shape]`, `idx` `b · len` row indices (example-major), so that
    /// `Λ[e, r] = table[idx[e · len + r]]`; returns `([B, len, *shape], [B, len])` as
    /// `backward_lower` would on that `Λ`. The default gathers with `index_select`; an
    /// implementation may fuse the gather into its step (the same numbers up to the order of
    /// summation).
    fn backward_lower_gathered(
        &self,
        table: &Tensor,
        idx: &[u32],
        b: usize,
        len: usize,
    ) -> Result<(Tensor, Option<Tensor>)> {
        gather_then_step(self, table, idx, b, len)
    }

    /// The relaxation of the units in a spatial window of the last two axes (rows `y0..y0 + h`,
    /// columns `x0..x0 + w`, inside the grid): its [`Self::backward_lower`] takes coefficients
    /// `[B, n, C, h, w]` and equals this one's on coefficients that are zero outside the window.
    /// CROWN's windowed rows use it ([`crate::DualAffine::transpose_window`]). `None` (the
    /// default) when there is no such restriction.
    fn crop(&self, _y0: usize, _h: usize, _x0: usize, _w: usize) -> Option<Result<Box<dyn LinearRelaxation>>> {
        None
    }

    /// The lower slopes `a_L`, `[B, r, *shape]` (`r` = 1, or the rows of a [`SlopeRule::Given`]).
    fn lower_slopes(&self) -> &Tensor;

    /// The box `[min of the lower line, max of the upper line]` over the bounds `[l, u]` the
    /// relaxation was made from, `(lo, hi)` each `[B, *shape]`, when the lower line is the same
    /// for every row; `None` otherwise (the default). Every output `σ(ẑ)`, `ẑ ∈ [l, u]`, lies in
    /// it. The bound family uses it for cheap bounds that are never tighter than CROWN's, to skip
    /// the backward pass on units they prove stable ([`super::sparse`]).
    fn line_box(&self) -> Option<Result<(Tensor, Tensor)>> {
        None
    }
}

/// [`LinearRelaxation::backward_lower_gathered`] the long way: the rows gathered
/// ([`gather_rows`]), then `relax.backward_lower` (the default, and the fallback of fused
/// versions).
pub fn gather_then_step<R: LinearRelaxation + ?Sized>(
    relax: &R,
    table: &Tensor,
    idx: &[u32],
    b: usize,
    len: usize,
) -> Result<(Tensor, Option<Tensor>)> {
    relax.backward_lower(&gather_rows(table, idx, b, len)?)
}

/// Rows of `table` (`[1, R, ...]`) picked by `idx` (`b · len` of them, example-major), with
/// `index_select`: `[b, len, ...]`.
pub fn gather_rows(table: &Tensor, idx: &[u32], b: usize, len: usize) -> Result<Tensor> {
    let ids = Tensor::from_vec(idx.to_vec(), idx.len(), table.device())?;
    let mut s = vec![b, len];
    s.extend_from_slice(&table.dims()[2..]);
    Ok(table.index_select(&ids, 1)?.reshape(s)?)
}
