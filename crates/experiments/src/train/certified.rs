//! The certified-training losses built on interval bounds: IBP (Gowal et al. 2018), CROWN-IBP
//! (Zhang et al. 2020) and MTL-IBP (De Palma et al. 2024), with the warm-up regulariser of
//! Shi et al. 2021 (`super::regularizer`).
//!
//! Every loss is a cross-entropy on a lower bound `m̲` of the margins `z_y − z_j` over the ball:
//! `CE(−m̲, y)` bounds the worst-case cross-entropy from above (the logits `−m̲` put 0 on the true
//! class and at least the true gap on every other one). With `p = eps_t / eps ∈ [0, 1]` the
//! position in the epsilon schedule:
//!
//! * `ibp`: `κ CE(z, y) + (1 − κ) CE(−m̲_IBP, y)`, κ moving from `κ_start` to `κ_end` with `p`;
//! * `crown-ibp`: the same with `m̲ = β m̲_CROWN-IBP + (1 − β) m̲_IBP`, β moving with `p` (the
//!   CROWN-IBP pass is skipped when β = 0, as in Zhang et al.'s code);
//! * `mtl-ibp`: `α CE(−m̲_IBP, y) + (1 − α) CE(z(x_adv), y)` with `x_adv` a PGD point of the
//!   same ball (`crate::attacks::pgd`, random start);
//! * `sabr` (Müller et al. 2023): `CE(−m̲_IBP(B(x', λ eps)), y)`, IBP over the small ball of radius
//!   `τ = λ eps` around a PGD point `x'` of the shrunk ball `B(x, eps − τ)`, so the small ball lies
//!   inside the full one. It is a loss, not a bound on the full ball: its "robust error" is the
//!   small ball's.
//!
//! At `eps_t = 0` (the warm-up) the IBP margins are the clean margins and every loss is the clean
//! cross-entropy, which is what is computed then.

use super::schedule::Mix;
use crate::attacks::{cross_entropy, pgd, PgdConfig};
use crate::certify::{input_set, Norm};
use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use dual_core::bounds::{crown_ibp_and_ibp, spec_bounds, BoundOptions, Method, Net, Spec};
use dual_core::LayerBounds;
use nets::Network;
use serde::{Deserialize, Serialize};

/// Which interval-bound loss, with its weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BoundLoss {
    /// `κ CE(clean) + (1 − κ) CE(IBP bound)`.
    Ibp { kappa: Mix },
    /// `κ CE(clean) + (1 − κ) CE(β CROWN-IBP + (1 − β) IBP)`.
    CrownIbp { kappa: Mix, beta: Mix },
    /// `α CE(IBP bound) + (1 − α) CE(PGD point)`.
    MtlIbp { alpha: f64, pgd: PgdSettings },
    /// `CE(IBP bound over B(x', λ eps))`, `x'` a PGD point of `B(x, (1 − λ) eps)`.
    Sabr { lambda: f64, pgd: PgdSettings },
}

/// The PGD of MTL-IBP: `steps` steps of `step · eps_t` from a random start in the ball.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PgdSettings {
    /// Steps (≥ 1).
    pub steps: usize,
    /// Step length as a multiple of the current epsilon.
    pub step: f64,
}

/// A loss value and what the training bound certifies.
pub struct LossParts {
    /// The scalar loss (differentiable in the parameters).
    pub loss: Tensor,
    /// Fraction of the batch the training bound does not certify (`None` at epsilon 0).
    pub robust_error: Option<f64>,
    /// The pre-activation intervals of every activation (IBP's), for the regulariser.
    pub layers: Vec<LayerBounds>,
}

/// `CE(−m̲, y)`: the cross-entropy with the negated margin lower bounds `[B, classes]` as logits.
pub fn bound_cross_entropy(margin_lower: &Tensor, y: &[u32]) -> Result<Tensor> {
    Ok(cross_entropy(&margin_lower.neg()?, y)?)
}

/// Fraction of rows of `margin_lower` `[B, classes]` with some `j ≠ y` whose bound is not
/// positive (not certified).
pub fn uncertified_fraction(margin_lower: &Tensor, y: &[u32]) -> Result<f64> {
    let m = margin_lower.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    let bad = m.iter().zip(y).filter(|(row, &t)| row.iter().enumerate().any(|(j, &v)| j != t as usize && v <= 0.0));
    Ok(bad.count() as f64 / y.len().max(1) as f64)
}

/// Lower bounds of the margins by `method` (with the intervals IBP gave every activation), for
/// the ball of radius `eps` around `x`; differentiable in the parameters.
pub fn margin_bounds_with_layers(
    net: &Network,
    x: &Tensor,
    y: &[u32],
    eps: f64,
    norm: Norm,
    bounded: bool,
    method: Method,
) -> Result<(Tensor, Vec<LayerBounds>)> {
    // The dual nodes need no forward pass of the whole batch (only BatchNorm's batch statistics
    // do, and `dual_nodes` makes one then): the bound alone is what auto_LiRPA computes too.
    let (nodes, logits) = net.dual_nodes_and_logits(x)?;
    with_margin_nodes(&nodes, x, &logits, y, eps, norm, bounded, |n, spec| {
        let sb = spec_bounds(n, spec, method, &BoundOptions::default(), None)?;
        Ok((sb.lower, sb.layers))
    })
}

/// [`margin_bounds_with_layers`] from the outputs of a forward pass already made (`outs[0]` the
/// input, `outs[t]` layer `t`'s output, as [`Network::forward_all`] gives them): the training step
/// shares one forward pass between the clean logits, BatchNorm's batch statistics and the bound.
pub fn margin_bounds_from_outputs(
    net: &Network,
    outs: &[Tensor],
    y: &[u32],
    eps: f64,
    norm: Norm,
    bounded: bool,
    method: Method,
) -> Result<(Tensor, Vec<LayerBounds>)> {
    with_margin_net(net, outs, y, eps, norm, bounded, |n, spec| {
        let sb = spec_bounds(n, spec, method, &BoundOptions::default(), None)?;
        Ok((sb.lower, sb.layers))
    })
}

/// CROWN-IBP's and IBP's margin lower bounds from one interval pass, with IBP's intervals of
/// every activation: `(crown_ibp, ibp, layers)`; the same numbers as two calls of
/// [`margin_bounds_from_outputs`].
pub fn crown_ibp_and_ibp_from_outputs(
    net: &Network,
    outs: &[Tensor],
    y: &[u32],
    eps: f64,
    norm: Norm,
    bounded: bool,
) -> Result<(Tensor, Tensor, Vec<LayerBounds>)> {
    with_margin_net(net, outs, y, eps, norm, bounded, |n, spec| {
        let (ci, ibp) = crown_ibp_and_ibp(n, spec, &BoundOptions::default())?;
        Ok((ci.lower, ibp.lower, ibp.layers))
    })
}

/// Runs `f` on the bound family's view of the network (dual nodes from the forward pass `outs`,
/// the ball of radius `eps`) and the margins' specification.
fn with_margin_net<T>(
    net: &Network,
    outs: &[Tensor],
    y: &[u32],
    eps: f64,
    norm: Norm,
    bounded: bool,
    f: impl FnOnce(&Net<'_>, &Spec) -> dual_core::Result<T>,
) -> Result<T> {
    let nodes = net.dual_nodes_from_outputs(outs)?;
    let logits = outs.last().expect("a network has layers");
    with_margin_nodes(&nodes, &outs[0], logits, y, eps, norm, bounded, f)
}

/// Runs `f` on the network of dual nodes `nodes` for the batch `x` (`logits`: the network's
/// output for some rows of `x`, which gives the number of classes) and the margins'
/// specification.
#[allow(clippy::too_many_arguments)]
fn with_margin_nodes<T>(
    nodes: &[dual_core::DualNode],
    x: &Tensor,
    logits: &Tensor,
    y: &[u32],
    eps: f64,
    norm: Norm,
    bounded: bool,
    f: impl FnOnce(&Net<'_>, &Spec) -> dual_core::Result<T>,
) -> Result<T> {
    if norm != Norm::Linf {
        bail!("interval-bound losses need an l_inf ball (--norm linf), got {norm:?}");
    }
    if logits.rank() != 2 {
        bail!("margins need a flat output; the network gives {:?}", &logits.dims()[1..]);
    }
    let input = input_set(x, eps, norm, bounded)?;
    let spec = Spec::margins(y, logits.dim(1)?, x.dtype(), x.device())?;
    let n = Net { nodes, x, input: input.as_ref() };
    Ok(f(&n, &spec)?)
}

/// The loss of `kind` on the batch `(x, y)` given the outputs `outs` of its forward pass
/// (`outs[0] = x`, the last the clean logits), at radius `eps` and schedule position
/// `progress = eps / eps_final`.
#[allow(clippy::too_many_arguments)]
pub fn bound_loss(
    kind: &BoundLoss,
    net: &Network,
    outs: &[Tensor],
    y: &[u32],
    eps: f64,
    progress: f64,
    norm: Norm,
    bounded: bool,
    seed: u64,
) -> Result<LossParts> {
    let (x, logits) = (&outs[0], outs.last().expect("a network has layers"));
    let clean = cross_entropy(logits, y)?;
    if eps == 0.0 {
        return Ok(LossParts { loss: clean, robust_error: None, layers: Vec::new() });
    }
    let ibp = |m| margin_bounds_from_outputs(net, outs, y, eps, norm, bounded, m);
    let mixed = |kappa: f64, bound: &Tensor| -> Result<Tensor> {
        let b = bound_cross_entropy(bound, y)?;
        Ok(((&clean * kappa)? + (b * (1.0 - kappa))?)?)
    };
    Ok(match kind {
        BoundLoss::Ibp { kappa } => {
            let (lower, layers) = ibp(Method::Ibp)?;
            LossParts {
                loss: mixed(kappa.at(progress), &lower)?,
                robust_error: Some(uncertified_fraction(&lower, y)?),
                layers,
            }
        }
        BoundLoss::CrownIbp { kappa, beta } => {
            let b = beta.at(progress);
            let (lower, layers) = if b > 0.0 {
                // One interval pass for both bounds.
                let (lower_ci, lower_ibp, layers) = crown_ibp_and_ibp_from_outputs(net, outs, y, eps, norm, bounded)?;
                (((lower_ci * b)? + (lower_ibp * (1.0 - b))?)?, layers)
            } else {
                ibp(Method::Ibp)?
            };
            LossParts {
                loss: mixed(kappa.at(progress), &lower)?,
                robust_error: Some(uncertified_fraction(&lower, y)?),
                layers,
            }
        }
        BoundLoss::MtlIbp { alpha, pgd: ps } => {
            let (lower, layers) = ibp(Method::Ibp)?;
            let xa = pgd_point(net, x, y, eps, eps, ps, bounded, seed)?;
            let adv = cross_entropy(&net.forward(&xa)?, y)?;
            let loss = ((bound_cross_entropy(&lower, y)? * *alpha)? + (adv * (1.0 - alpha))?)?;
            LossParts { loss, robust_error: Some(uncertified_fraction(&lower, y)?), layers }
        }
        BoundLoss::Sabr { lambda, pgd: ps } => {
            let tau = lambda * eps;
            let xa = pgd_point(net, x, y, eps - tau, eps, ps, bounded, seed)?;
            let outs_a = net.forward_all(&xa)?;
            let (lower, layers) = margin_bounds_from_outputs(net, &outs_a, y, tau, norm, bounded, Method::Ibp)?;
            LossParts {
                loss: bound_cross_entropy(&lower, y)?,
                robust_error: Some(uncertified_fraction(&lower, y)?),
                layers,
            }
        }
    })
}

/// A PGD point of the ball of radius `radius` around `x` (∩ [0, 1] when `bounded`), steps of
/// `ps.step · eps` from a random start, computed without a parameter graph.
#[allow(clippy::too_many_arguments)]
fn pgd_point(
    net: &Network,
    x: &Tensor,
    y: &[u32],
    radius: f64,
    eps: f64,
    ps: &PgdSettings,
    bounded: bool,
    seed: u64,
) -> Result<Tensor> {
    let mut pc = PgdConfig::new(radius);
    pc.steps = ps.steps;
    pc.step_size = ps.step * eps;
    pc.random_start = true;
    pc.seed = seed;
    if bounded {
        pc.clip = Some((0.0, 1.0));
    }
    let model = |t: &Tensor| net.forward(t).map_err(|e| candle_core::Error::Msg(e.to_string()));
    Ok(nets::no_grad(|| pgd(model, x, y, &pc))?)
}
