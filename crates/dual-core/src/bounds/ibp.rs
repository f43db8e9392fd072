//! Interval bound propagation (Gowal et al. 2018): boxes pushed forward layer by layer.
//!
//! A box is kept as centre and radius, `mid ± rad`, shaped `[B, 1, *shape]` (one "column", so
//! the affine duals apply to it unchanged). An affine layer maps it to `A mid + b ± |A| rad`
//! (`forward` and `forward_abs`); an activation maps the box `[l, u]` to its own interval
//! (`DualActivation::interval`). The specification is folded into the last affine layer, as
//! auto_LiRPA does: `C (A z + b)` is bounded as one affine map, `CA mid + Cb − |CA| rad`, which is
//! tighter than bounding `C` on the output box. Every step is a Candle op, so the bounds are
//! differentiable in the parameters.

use super::Net;
use crate::{interval_rows::CpuPool, layer::DualNode, DualError, Result};
use candle_core::{Tensor, D};

/// The box of every output `0..=n` of the network as `(mid, rad)`, `[B, 1, *shape]`.
pub struct Boxes {
    /// Centres, indexed by output.
    pub mid: Vec<Tensor>,
    /// Radii (non-negative), indexed by output.
    pub rad: Vec<Tensor>,
}

impl Boxes {
    /// `(lower, upper)` of output `t`, `[B, *shape]`.
    pub fn interval(&self, t: usize) -> Result<(Tensor, Tensor)> {
        let (m, r) = (self.mid[t].squeeze(1)?, self.rad[t].squeeze(1)?);
        Ok(((&m - &r)?, (m + r)?))
    }
}

/// The input set's bounding box `x + [δ⁻, δ⁺]` as `(mid, rad)`, `[B, 1, *in_shape]`: the box the
/// source states (`DualSource::interval_box`), else the source's terms for the identity rows
/// (`DualSource::coefficient_terms`; the same box, at the cost of `K` rows of `K`).
pub fn input_box(net: &Net<'_>) -> Result<(Tensor, Tensor)> {
    if !net.input.exact_from_coefficients() {
        return Err(DualError::Unsupported(format!(
            "the input set {} gives estimates, not bounds: interval bounds need an exact input set",
            net.input.name()
        )));
    }
    let x = net.x;
    let b = x.dim(0)?;
    let shape = &x.dims()[1..];
    let k: usize = shape.iter().product();
    let mut s = vec![b, 1];
    s.extend_from_slice(shape);
    if let Some(r) = net.input.interval_box() {
        let (m, r) = r?;
        let ok = |t: &Tensor| {
            t.rank() == 2 && (t.dim(0).ok() == Some(1) || t.dim(0).ok() == Some(b)) && t.dim(1).ok() == Some(k)
        };
        if !ok(&m) || !ok(&r) {
            return Err(DualError::shape(format!(
                "the input set {} gave a box {:?} / {:?}; expected [{b} or 1, {k}]",
                net.input.name(),
                m.dims(),
                r.dims()
            )));
        }
        let m = m.to_dtype(x.dtype())?.broadcast_as((b, k))?.reshape(s.clone())?;
        let r = r.to_dtype(x.dtype())?.broadcast_as((b, k))?.reshape(s)?;
        return Ok(((x.unsqueeze(1)? + m)?, r));
    }
    let eye = super::crown::signed_identity_rows(&(0..k).collect::<Vec<_>>(), false, shape, x)?;
    let (lo, hi) = net.input.coefficient_terms(&eye)?; // [B or 1, K]
    let lo = lo.broadcast_as((b, k))?.reshape(s.clone())?;
    let hi = hi.broadcast_as((b, k))?.reshape(s.clone())?;
    let x1 = x.unsqueeze(1)?;
    let mid = (x1 + ((&lo + &hi)? * 0.5)?)?;
    let rad = ((hi - lo)? * 0.5)?;
    Ok((mid, rad))
}

/// Pushes the input box through every node; `upto` stops after output `upto`.
///
/// Where nothing is differentiated and every node has a map on raw rows, the pass runs fused
/// per thread ([`propagate_fused`]); the same boxes.
pub fn propagate(net: &Net<'_>, upto: usize) -> Result<Boxes> {
    propagate_on(net, upto, CpuPool::Rayon)
}

/// [`propagate`] with its fused pass (where it applies) on `pool`.
pub fn propagate_on(net: &Net<'_>, upto: usize, pool: CpuPool) -> Result<Boxes> {
    if let Some(boxes) = super::ibp_fused::propagate(net, upto, pool)? {
        return Ok(boxes);
    }
    let (m0, r0) = input_box(net)?;
    let mut mid = vec![m0];
    let mut rad = vec![r0];
    for t in 1..=upto {
        let (m, r) = match &net.nodes[t - 1] {
            DualNode::Affine(a) => {
                let idx = a.inputs().indices(t);
                let mids: Vec<Option<&Tensor>> = idx.iter().map(|i| i.map(|i| &mid[i])).collect();
                let rads: Vec<Option<&Tensor>> = idx.iter().map(|i| i.map(|i| &rad[i])).collect();
                let m = a
                    .forward(&mids, true)?
                    .ok_or_else(|| DualError::shape(format!("{} gave no output on the nominal input", a.name())))?;
                let r = match a.forward_abs(&rads)? {
                    Some(r) => r,
                    None => m.zeros_like()?,
                };
                (m, r)
            }
            DualNode::Activation(act) => {
                let (m, r) = act.interval_mid_rad(&mid[t - 1].squeeze(1)?, &rad[t - 1].squeeze(1)?)?;
                (m.unsqueeze(1)?, r.unsqueeze(1)?)
            }
        };
        mid.push(m);
        rad.push(r);
    }
    Ok(Boxes { mid, rad })
}

/// [`propagate`]'s fused pass alone: one slice of the batch per thread, every node's
/// [`crate::IntervalRows`] in turn; `None` where it does not apply (something is differentiated,
/// a node has no map, a node reads skip inputs, not CPU f32/f64).
pub fn propagate_fused(net: &Net<'_>, upto: usize) -> Result<Option<Boxes>> {
    super::ibp_fused::propagate(net, upto, CpuPool::Rayon)
}

/// `Σ_j Λ_j mid_j − |Λ_j| rad_j` for `Λ` `[Bλ, m, *shape]` and a box `[B, 1, *shape]`, as `[B, m]`.
fn box_lower(lam: &Tensor, mid: &Tensor, rad: &Tensor) -> Result<Tensor> {
    let lin = super::crown::contract(lam, mid)?;
    let abs = super::crown::contract(&lam.abs()?, rad)?;
    Ok((lin - abs)?)
}

/// IBP lower bound of `C z_n` (`c`: `[B, m, *out_shape]`) from the boxes, with `C` folded into
/// the last node when it is affine; `[B, m]`.
pub fn spec_lower(net: &Net<'_>, boxes: &Boxes, c: &Tensor) -> Result<Tensor> {
    spec_lower_by(net, c, |i| Ok((boxes.mid[i].clone(), boxes.rad[i].clone())))
}

/// IBP's lower bounds of the margins `z_y − z_j` (`[B, classes]`) with only the box the
/// specification reads, by the fused pass that keeps no other box ([`super::ibp_fused::FusedChain::last_box`]):
/// IBP's bound alone, without the layer-wise boxes, and with the output shape read off the
/// nodes' maps (no forward pass). `None` where the fused pass does not apply (the caller then
/// runs the whole pass).
pub(super) fn margins_fused(net: &Net<'_>, y: &[u32], pool: CpuPool) -> Result<Option<Tensor>> {
    let n = net.nodes.len();
    let need = match &net.nodes[n - 1] {
        DualNode::Affine(a) if a.inputs().indices(n) == [Some(n - 1)] => n - 1,
        DualNode::Affine(_) => return Ok(None),
        DualNode::Activation(_) => n,
    };
    // Every node's map (the last ones' only give the output shape).
    let Some(chain) = super::ibp_fused::FusedChain::new(net, n)? else { return Ok(None) };
    let out = chain.shapes[n].clone();
    if out.len() != 1 {
        return Err(DualError::shape(format!("margins need a flat output; the network gives {out:?}")));
    }
    let (b, dtype) = (net.x.dim(0)?, net.x.dtype());
    let c = super::Spec::margins(y, out[0], dtype, net.x.device())?.checked(b, &out, dtype)?;
    let (m, r) = chain.last_box(need, pool)?;
    let got = spec_lower_by(net, &c, |i| {
        if i == need {
            Ok((m.clone(), r.clone()))
        } else {
            Err(DualError::shape(format!("IBP's last step reads output {i}; only {need} was kept")))
        }
    })?;
    Ok(Some(got))
}

/// [`spec_lower`] reading the box of output `i` through `box_of`.
fn spec_lower_by(net: &Net<'_>, c: &Tensor, box_of: impl Fn(usize) -> Result<(Tensor, Tensor)>) -> Result<Tensor> {
    let n = net.nodes.len();
    match &net.nodes[n - 1] {
        DualNode::Affine(a) => {
            let idx = a.inputs().indices(n);
            let mut acc = match a.bias_term(c)? {
                Some(t) => t,
                None => c.flatten_from(2)?.sum(D::Minus1)?.zeros_like()?,
            };
            for (i, lam) in idx.into_iter().zip(a.transpose(c)?) {
                if let (Some(i), Some(lam)) = (i, lam) {
                    let (m, r) = box_of(i)?;
                    acc = acc.broadcast_add(&box_lower(&lam, &m, &r)?)?;
                }
            }
            Ok(acc)
        }
        DualNode::Activation(_) => {
            let (m, r) = box_of(n)?;
            box_lower(c, &m, &r)
        }
    }
}
