//! The warm-up regulariser of Shi et al. 2021 (*Fast certified robust training with short
//! warmup*, NeurIPS 2021, Sec. 3.3–3.4): it keeps the interval bounds from exploding and the
//! ReLUs balanced while epsilon ramps up, and fades out as epsilon reaches its final value.
//!
//! With `τ = 0.5`, `r₀` the mean radius of the input box and, for each ReLU with
//! pre-activation interval `[l, u]`, centre `c = (u + l)/2` and mean radius `r = mean((u − l)/2)`:
//!
//! * tightness: `L_t = Σ_ReLU [τ − r₀ / r]₊ / τ` (the bound should grow no more than `1/τ`
//!   times from the input to any layer);
//! * ReLU balance: with `A = {l > 0}` (active) and `I = {u < 0}` (inactive), the ratios
//!   `ρ_m = mean(c·1_A) / −mean(c·1_I)` and `ρ_v = Σ_A (c − c̄)² / Σ_I (c − c̄)²`, each folded
//!   to `min(ρ, 1/ρ)`, give `L_r = Σ_ReLU ([τ − ρ_m]₊ + [τ − ρ_v]₊) / τ` (a layer whose ratio is
//!   not finite — no active or no inactive unit — contributes nothing);
//! * the loss adds `λ (1 − eps_t / eps) (L_t + L_r) / #ReLU`, `λ = λ₀` (0.5 in the paper).
//!
//! (Shi et al. also define a centre-spread term `[τ − std(c)]₊/τ`; their released code computes
//! it but does not add it to the loss, and neither does this one.)

use anyhow::Result;
use candle_core::{DType, Tensor};
use dual_core::LayerBounds;

/// The paper's target ratio τ.
pub const TAU: f64 = 0.5;

/// The regulariser's terms for one batch.
pub struct Regularizer {
    /// `(L_t + L_r) / #ReLU`, before the intensity `λ (1 − eps_t/eps)`.
    pub value: Tensor,
    /// The tightness term alone (averaged over the ReLUs), as a number for logs and tests.
    pub tightness: f64,
    /// The balance term alone (averaged over the ReLUs).
    pub balance: f64,
}

fn relu_scalar(t: &Tensor) -> Result<Tensor> {
    Ok(t.relu()?)
}

/// The terms above for the ReLU input intervals `layers` and the mean input radius `r0`;
/// `None` when there are no ReLUs.
pub fn warmup_terms(layers: &[LayerBounds], r0: f64) -> Result<Option<Regularizer>> {
    if layers.is_empty() {
        return Ok(None);
    }
    let mut total: Option<Tensor> = None;
    let (mut t_sum, mut b_sum) = (0.0, 0.0);
    for lb in layers {
        let (l, u) = (&lb.lower, &lb.upper);
        let c = ((u + l)? * 0.5)?;
        let r = ((u - l)? * 0.5)?.mean_all()?;
        // [τ − r₀/r]₊ / τ, r kept away from 0.
        let ratio = r.clamp(1e-12, f64::INFINITY)?.recip()? * r0;
        let tight = (relu_scalar(&(ratio?.neg()? + TAU)?)? / TAU)?;
        t_sum += tight.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let mut term = tight;
        let act = l.gt(0.0)?.to_dtype(c.dtype())?;
        let inact = u.lt(0.0)?.to_dtype(c.dtype())?;
        let mean_act = (&c * &act)?.mean_all()?;
        let mean_inact = (&c * &inact)?.mean_all()?;
        let delta = c.broadcast_sub(&c.mean_all()?)?.sqr()?;
        let var_act = (&delta * &act)?.sum_all()?;
        let var_inact = (&delta * &inact)?.sum_all()?;
        let fold = |rho: Tensor| -> Result<Tensor> {
            let inv = rho.clamp(1e-12, f64::INFINITY)?.recip()?;
            Ok(rho.minimum(&inv)?)
        };
        let rho_m = fold((mean_act / mean_inact.neg()?)?)?;
        let rho_v = fold((var_act / var_inact)?)?;
        let bal = ((relu_scalar(&(rho_m.neg()? + TAU)?)? + relu_scalar(&(rho_v.neg()? + TAU)?)?)? / TAU)?;
        let bv = bal.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if bv.is_finite() {
            b_sum += bv;
            term = (term + bal)?;
        }
        total = Some(match total {
            None => term,
            Some(t) => (t + term)?,
        });
    }
    let k = layers.len() as f64;
    Ok(Some(Regularizer { value: (total.expect("at least one layer") / k)?, tightness: t_sum / k, balance: b_sum / k }))
}

/// Mean radius of the input box of the ball of radius `eps` around `x` (clipped to [0, 1] when
/// `bounded`).
pub fn input_radius(x: &Tensor, eps: f64, bounded: bool) -> Result<f64> {
    if !bounded {
        return Ok(eps);
    }
    let lo = (x - eps)?.clamp(0.0, 1.0)?;
    let hi = (x + eps)?.clamp(0.0, 1.0)?;
    Ok(((hi - lo)? * 0.5)?.mean_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// The intensity `λ (1 − p)` at schedule position `p = eps_t / eps`.
pub fn intensity(lambda: f64, progress: f64) -> f64 {
    lambda * (1.0 - progress.clamp(0.0, 1.0))
}
