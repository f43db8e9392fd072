//! α-CROWN: the lower slopes of every unstable unit, per specification row, optimised by
//! projected gradient ascent (Adam) on the sum of the final lower bounds.
//!
//! Every `α ∈ [0, 1]` gives a valid lower line `α ẑ ≤ ReLU(ẑ)` on `[l, u]`, so the bound of every
//! iterate is sound and the best seen per row is returned. The start is, per row, the better of
//! CROWN's adaptive slopes and the dual's slopes `u/(u − l)`, so the result is never below either.
//! The layer-wise bounds stay fixed (computed before, detached).

use super::{
    crown::{backward_lower, Relaxed},
    Net, SlopeRule,
};
use crate::{layer::DualNode, Result};
use candle_core::{Tensor, Var};

/// Options of α-CROWN.
#[derive(Debug, Clone)]
pub struct AlphaOptions {
    /// Adam iterations (each one backward pass and its gradient). Default 20.
    pub iterations: usize,
    /// Adam's learning rate. Default 0.1.
    pub lr: f64,
    /// Stop after this many iterations without a better sum of bounds (`None`: never).
    pub early_stop: Option<usize>,
}

impl Default for AlphaOptions {
    fn default() -> Self {
        AlphaOptions { iterations: 20, lr: 0.1, early_stop: None }
    }
}

impl AlphaOptions {
    /// Checks the options (finite positive learning rate).
    pub fn validate(&self) -> Result<()> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(crate::DualError::invalid(format!(
                "the α-CROWN learning rate must be finite and positive, got {}",
                self.lr
            )));
        }
        Ok(())
    }
}

/// Adam's moments for one tensor.
struct Moments {
    m: Tensor,
    v: Tensor,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const ADAM_EPS: f64 = 1e-8;

fn relaxations(
    net: &Net<'_>,
    pre: &[(usize, Tensor, Tensor)],
    rule: impl Fn(usize) -> SlopeRuleOwned,
) -> Result<Relaxed> {
    let mut relax: Relaxed = (0..=net.nodes.len()).map(|_| None).collect();
    for (i, (t, l, u)) in pre.iter().enumerate() {
        let DualNode::Activation(act) = &net.nodes[t - 1] else { continue };
        let r = match rule(i) {
            SlopeRuleOwned::Dual => act.linear_relax(l, u, SlopeRule::Dual)?,
            SlopeRuleOwned::Adaptive => act.linear_relax(l, u, SlopeRule::Adaptive)?,
            SlopeRuleOwned::Given(a) => act.linear_relax(l, u, SlopeRule::Given(&a))?,
        };
        relax[*t] = Some(r);
    }
    Ok(relax)
}

enum SlopeRuleOwned {
    Dual,
    Adaptive,
    Given(Tensor),
}

/// The result of the optimisation.
pub struct AlphaResult {
    /// Best lower bound seen per row, `[B, m]`.
    pub lower: Tensor,
    /// Iterations run.
    pub iterations: usize,
}

/// Optimises the lower slopes for the specification `c` (`[B, m, *out_shape]`) with the
/// layer-wise bounds `pre` (`(t, l, u)` for the activation at output `t`, `[B, *shape]`).
pub fn optimize(
    net: &Net<'_>,
    pre: &[(usize, Tensor, Tensor)],
    c: &Tensor,
    opts: &AlphaOptions,
) -> Result<AlphaResult> {
    opts.validate()?;
    let n = net.nodes.len();
    let pre: Vec<(usize, Tensor, Tensor)> = pre.iter().map(|(t, l, u)| (*t, l.detach(), u.detach())).collect();
    let c = c.detach();
    let r_ad = relaxations(net, &pre, |_| SlopeRuleOwned::Adaptive)?;
    let r_du = relaxations(net, &pre, |_| SlopeRuleOwned::Dual)?;
    let lb_ad = backward_lower(net, &r_ad, n, c.clone())?.detach();
    let lb_du = backward_lower(net, &r_du, n, c.clone())?.detach();
    let mut best = lb_ad.maximum(&lb_du)?;
    let (b, m) = best.dims2()?;
    // Per row, start from the rule that gave the better bound.
    let pick = lb_ad.ge(&lb_du)?.to_dtype(c.dtype())?;
    let mut vars = Vec::new();
    for (t, _, _) in &pre {
        let (Some(ad), Some(du)) = (&r_ad[*t], &r_du[*t]) else { continue };
        let (sa, sd) = (ad.lower_slopes(), du.lower_slopes());
        let mut s = vec![b, m];
        s.extend_from_slice(&sa.dims()[2..]);
        let mut ps = vec![b, m];
        ps.extend(std::iter::repeat_n(1, sa.rank() - 2));
        let p = pick.reshape(ps)?;
        let a0 = (p.broadcast_mul(&sa.broadcast_as(s.clone())?)? + (1.0 - &p)?.broadcast_mul(&sd.broadcast_as(s)?)?)?;
        let v = Var::from_tensor(&a0.detach())?;
        let mo = Moments { m: v.zeros_like()?, v: v.zeros_like()? };
        vars.push((v, mo));
    }
    let mut best_total = best.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
    let mut since = 0usize;
    let mut done = 0usize;
    for step in 1..=opts.iterations {
        let alphas: Vec<Tensor> = vars.iter().map(|(v, _)| v.as_tensor().clone()).collect();
        let relax = relaxations(net, &pre, |i| SlopeRuleOwned::Given(alphas[i].clone()))?;
        let lb = backward_lower(net, &relax, n, c.clone())?;
        best = best.maximum(&lb.detach())?;
        done = step;
        let total = best.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        if total > best_total {
            best_total = total;
            since = 0;
        } else {
            since += 1;
            if opts.early_stop.is_some_and(|p| since >= p) {
                break;
            }
        }
        if step == opts.iterations {
            break;
        }
        let grads = lb.sum_all()?.neg()?.backward()?;
        let (c1, c2) = (1.0 - BETA1.powi(step as i32), 1.0 - BETA2.powi(step as i32));
        for (v, mo) in vars.iter_mut() {
            let Some(g) = grads.get(v.as_tensor()) else { continue };
            let g = g.detach();
            mo.m = ((&mo.m * BETA1)? + (&g * (1.0 - BETA1))?)?;
            mo.v = ((&mo.v * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?;
            let den = ((&mo.v / c2)?.sqrt()? + ADAM_EPS)?;
            let upd = ((&mo.m / c1)? / den)?;
            let next = (v.as_tensor() - (upd * opts.lr)?)?.clamp(0.0, 1.0)?;
            v.set(&next.detach())?;
        }
    }
    Ok(AlphaResult { lower: best, iterations: done })
}
