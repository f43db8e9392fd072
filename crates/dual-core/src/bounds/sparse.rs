//! Which units need CROWN's backward pass: a cheap bound that is never tighter than CROWN's.
//!
//! CROWN's layer-wise bounds cost one backward pass per unit and sign; but a unit's bounds enter
//! the relaxation only through its class when it is stable (`l ≥ 0`: identity, `u ≤ 0`: zero).
//! If a bound `[l', u'] ⊇ [l, u]` of CROWN's proves a unit stable, CROWN's would prove it stable
//! with the same sign, and the relaxation is the same whatever CROWN's values are: only the units
//! `[l', u']` leaves unstable need the backward pass, per example.
//!
//! The cheap bound is interval arithmetic in which an activation's output lies in its
//! relaxation's box `[min of the lower line, max of the upper line]`
//! ([`LinearRelaxation::line_box`](super::LinearRelaxation::line_box)). It contains CROWN's when
//! at most one activation precedes the output: CROWN's lower bound of `e_j z` is then
//! `min_x Σ_k α_k ẑ_k(x) + β` with the pre-activation `ẑ(x)` affine in `x` (the backward pass
//! below the activation is exact), while the cheap bound minimises `Σ_k α_k ẑ_k + β` over the box
//! of `ẑ` (a superset) and bounds `|α_k| ≤ [A_jk]₊|a_Lk| + [A_jk]₋|a_Uk|` and `|A₂A₁| ≤ |A₂||A₁|`
//! for chains of affine layers, each step only lowering it. Deeper, CROWN's relaxations of the
//! earlier activations can make it looser than a box, and no units are skipped.

use super::{crown::Relaxed, ibp, Net};
use crate::{layer::DualNode, DualError, Result};
use candle_core::{DType, Tensor};

/// A bound of output `top` (`(lower, upper)`, `[B, K]`) that contains CROWN's with the
/// relaxations `relax` of the activations below it, or `None` when none is known cheaply (more
/// than one activation below, a relaxation without a shared lower line, a layer without
/// interval arithmetic, an input set that gives estimates).
pub fn loose_bounds(net: &Net<'_>, relax: &Relaxed, top: usize) -> Result<Option<(Tensor, Tensor)>> {
    let acts = net.nodes[..top].iter().filter(|n| matches!(n, DualNode::Activation(_))).count();
    if acts > 1 {
        return Ok(None);
    }
    let (m0, r0) = match ibp::input_box(net) {
        Ok(bx) => bx,
        Err(DualError::Unsupported(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let (mut mid, mut rad) = (vec![m0], vec![r0]);
    for (k, (node, rx)) in net.nodes[..top].iter().zip(&relax[1..=top]).enumerate() {
        let t = k + 1;
        let (m, r) = match node {
            DualNode::Affine(a) => {
                let idx = a.inputs().indices(t);
                let mids: Vec<Option<&Tensor>> = idx.iter().map(|i| i.map(|i| &mid[i])).collect();
                let rads: Vec<Option<&Tensor>> = idx.iter().map(|i| i.map(|i| &rad[i])).collect();
                let m = a
                    .forward(&mids, true)?
                    .ok_or_else(|| DualError::shape(format!("{} gave no output on the nominal input", a.name())))?;
                let r = match a.forward_abs(&rads) {
                    Ok(Some(r)) => r,
                    Ok(None) => m.zeros_like()?,
                    Err(DualError::Unsupported(_)) => return Ok(None),
                    Err(e) => return Err(e),
                };
                (m, r)
            }
            DualNode::Activation(_) => {
                let Some(rx) = rx.as_ref() else { return Ok(None) };
                let Some(bx) = rx.line_box() else { return Ok(None) };
                let (lo, hi) = bx?;
                (((&lo + &hi)? * 0.5)?.unsqueeze(1)?, ((hi - lo)? * 0.5)?.unsqueeze(1)?)
            }
        };
        mid.push(m);
        rad.push(r);
    }
    let b = net.x.dim(0)?;
    let (m, r) = (mid[top].reshape((b, ()))?, rad[top].reshape((b, ()))?);
    Ok(Some(((&m - &r)?, (m + r)?)))
}

/// Per example, the flat indices of the units of `[B, K]` bounds that straddle zero.
pub fn unstable_per_example(lower: &Tensor, upper: &Tensor) -> Result<Vec<Vec<usize>>> {
    let b = lower.dim(0)?;
    let k = lower.elem_count() / b.max(1);
    let l = lower.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let u = upper.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    Ok((0..b).map(|i| (0..k).filter(|&j| l[i * k + j] < 0.0 && u[i * k + j] > 0.0).collect()).collect())
}
