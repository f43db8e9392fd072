//! The backward (CROWN) pass: lower bounds of `Λ z_t` from linear relaxations with separate
//! lines, and CROWN's layer-wise bounds.
//!
//! For coefficients `Λ` on output `t`, the pass walks the nodes backwards: an affine node adds
//! `Λ b` (`bias_term`) and hands `Aᵀ Λ` (`transpose`) to its inputs; an activation replaces `Λ` by
//! `[Λ]₊ a_L + [Λ]₋ a_U` and adds `Σ [Λ]₊ b_L + [Λ]₋ b_U` ([`LinearRelaxation::backward_lower`]);
//! at the input, `Λ_0 x` plus the input set's lower term (`DualSource::coefficient_terms`). The
//! result is a lower bound of `Λ z_t` over the input set, `[B, m]`. An upper bound is minus the
//! lower bound of `−Λ`.
//!
//! Layer-wise bounds of an activation's input (`K` units) run the rows `±e_j`, shared by the
//! batch until they meet the first per-example slopes, in chunks of rows.

use super::{relaxation::LinearRelaxation, Net};
use crate::{layer::DualNode, DualError, Result};
use candle_core::{DType, Tensor};

/// The relaxations chosen so far, indexed by output (`Some` at activations).
pub type Relaxed = Vec<Option<Box<dyn LinearRelaxation>>>;

/// `Σ_p lam[b, r, p] · v[b, p]` for `lam` `[Bλ, m, *shape]` (`Bλ` = 1: shared) and `v` with `B`
/// examples of the same `shape` (any leading layout, e.g. `[B, 1, *shape]`), as `[B, m]`.
pub(crate) fn contract(lam: &Tensor, v: &Tensor) -> Result<Tensor> {
    let lam = lam.flatten_from(2)?;
    let (bl, m, k) = lam.dims3()?;
    let b = v.dim(0)?;
    let v = v.reshape((b, k))?.to_dtype(lam.dtype())?;
    if bl == 1 && b != 1 {
        return Ok(v.matmul(&lam.squeeze(0)?.t()?)?);
    }
    if bl != b {
        return Err(DualError::shape(format!("coefficients for {bl} examples met values for {b}")));
    }
    Ok(lam.contiguous()?.matmul(&v.unsqueeze(2)?)?.reshape((b, m))?)
}

/// Rows `+e_j` for `j` in `units` (then `−e_j` for the same units when `signed`), shared by the
/// batch: `[1, rows, *shape]`.
pub(crate) fn signed_identity_rows(units: &[usize], signed: bool, shape: &[usize], like: &Tensor) -> Result<Tensor> {
    let k: usize = shape.iter().product();
    let rows = if signed { 2 * units.len() } else { units.len() };
    let mut data = vec![0f64; rows * k];
    for (r, &j) in units.iter().enumerate() {
        data[r * k + j] = 1.0;
        if signed {
            data[(units.len() + r) * k + j] = -1.0;
        }
    }
    let mut s = vec![1, rows];
    s.extend_from_slice(shape);
    Ok(Tensor::from_vec(data, s, like.device())?.to_dtype(like.dtype())?)
}

fn accumulate(slot: &mut Option<Tensor>, v: Tensor) -> Result<()> {
    *slot = Some(match slot.take() {
        None => v,
        Some(s) => s.broadcast_add(&v)?,
    });
    Ok(())
}

/// Lower bound of `Λ z_top` over the input set for `lam` `[Bλ, m, *shape_top]`, given the
/// relaxations of every activation at or below `top`; `[B, m]`.
pub fn backward_lower(net: &Net<'_>, relax: &Relaxed, top: usize, lam: Tensor) -> Result<Tensor> {
    let b = net.x.dim(0)?;
    let m = lam.dim(1)?;
    let mut g: Vec<Option<Tensor>> = (0..=top).map(|_| None).collect();
    g[top] = Some(lam);
    let mut acc: Option<Tensor> = None;
    for t in (1..=top).rev() {
        let Some(gt) = g[t].take() else { continue };
        match &net.nodes[t - 1] {
            DualNode::Affine(a) => {
                if let Some(bt) = a.bias_term(&gt)? {
                    accumulate(&mut acc, bt)?;
                }
                for (i, v) in a.inputs().indices(t).into_iter().zip(a.transpose(&gt)?) {
                    if let (Some(i), Some(v)) = (i, v) {
                        accumulate(&mut g[i], v)?;
                    }
                }
            }
            DualNode::Activation(act) => {
                let r = relax[t].as_ref().ok_or_else(|| {
                    DualError::shape(format!("activation {} at {t} has no linear relaxation", act.name()))
                })?;
                let (gin, off) = r.backward_lower(&gt)?;
                if let Some(off) = off {
                    accumulate(&mut acc, off)?;
                }
                accumulate(&mut g[t - 1], gin)?;
            }
        }
    }
    if let Some(g0) = g[0].take() {
        accumulate(&mut acc, contract(&g0, net.x)?)?;
        let (lo, _) = net.input.coefficient_terms(&g0)?;
        accumulate(&mut acc, lo)?;
    }
    let zeros = Tensor::zeros((b, m), net.x.dtype(), net.x.device())?;
    Ok(match acc {
        Some(a) => zeros.broadcast_add(&a)?,
        None => zeros,
    })
}

/// Rows of `K` per chunk so that about `budget` bytes of coefficients are live at once.
fn chunk_rows(net: &Net<'_>, shapes: &[Vec<usize>], top: usize, budget: usize) -> usize {
    let b = net.x.dim(0).unwrap_or(1);
    let widest = shapes[..=top].iter().map(|s| s.iter().product::<usize>()).max().unwrap_or(1);
    let per_row = b * widest * net.x.dtype().size_in_bytes() * 4;
    (budget / per_row.max(1)).max(1)
}

/// CROWN's bounds of output `top` (`[B, *shape]` each) on `units` (flat indices; the others are
/// returned as given in `fallback`), with the relaxations chosen so far. Rows `±e_j` go in
/// chunks of about `budget` bytes.
pub fn layer_bounds(
    net: &Net<'_>,
    relax: &Relaxed,
    shapes: &[Vec<usize>],
    top: usize,
    units: &[usize],
    budget: usize,
) -> Result<(Tensor, Tensor)> {
    let shape = &shapes[top];
    let b = net.x.dim(0)?;
    let chunk = chunk_rows(net, shapes, top, budget) / 2;
    let (mut lows, mut ups) = (Vec::new(), Vec::new());
    for part in units.chunks(chunk.max(1)) {
        let rows = signed_identity_rows(part, true, shape, net.x)?;
        let lb = backward_lower(net, relax, top, rows)?; // [B, 2 len]
        let len = part.len();
        lows.push(lb.narrow(1, 0, len)?);
        ups.push(lb.narrow(1, len, len)?.neg()?);
    }
    let cat = |v: Vec<Tensor>| -> Result<Tensor> {
        if v.is_empty() {
            Ok(Tensor::zeros((b, 0), net.x.dtype(), net.x.device())?)
        } else {
            Ok(Tensor::cat(&v, 1)?)
        }
    };
    Ok((cat(lows)?, cat(ups)?))
}

/// Places `sel` (`[B, len]`, values of `units`) into a `[B, K]` tensor that is `base` elsewhere
/// (differentiable in both).
pub(crate) fn scatter_units(base: &Tensor, units: &[usize], sel: &Tensor) -> Result<Tensor> {
    let (b, k) = base.dims2()?;
    let len = units.len();
    let mut map = vec![len as u32; k];
    let mut mask = vec![0u8; k];
    for (r, &j) in units.iter().enumerate() {
        map[j] = r as u32;
        mask[j] = 1;
    }
    let ext = Tensor::cat(&[sel, &Tensor::zeros((b, 1), sel.dtype(), sel.device())?], 1)?;
    let idx = Tensor::from_vec(map, k, base.device())?;
    let placed = ext.index_select(&idx, 1)?;
    let mask = Tensor::from_vec(mask, (1, k), base.device())?.broadcast_as((b, k))?;
    Ok(mask.where_cond(&placed, base)?)
}

/// Flat indices of the units of `[B, K]` bounds that straddle zero in some example.
pub(crate) fn unstable_units(lower: &Tensor, upper: &Tensor) -> Result<Vec<usize>> {
    let b = lower.dim(0)?;
    let k = lower.elem_count() / b.max(1);
    let l = lower.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let u = upper.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    Ok((0..k).filter(|&j| (0..b).any(|i| l[i * k + j] < 0.0 && u[i * k + j] > 0.0)).collect())
}
