//! Input sets: the l_inf ball, the l_inf ball intersected with a box, and the l2 ball.

use crate::columns::{contract_features, sum_over_columns};
use crate::kernels::abs_contract;
use candle_core::{DType, Tensor};
use dual_core::{DualError, DualSource, Result};
use std::ops::Range;

/// The radius of a ball: one number, or a tensor per example (`[B]`) or per feature
/// (`[B, *in_shape]`).
#[derive(Debug, Clone)]
pub enum Epsilon {
    /// The same radius everywhere.
    Scalar(f64),
    /// A radius per example or per feature.
    Tensor(Tensor),
}

impl From<f64> for Epsilon {
    fn from(e: f64) -> Self {
        Epsilon::Scalar(e)
    }
}

impl Epsilon {
    /// Checks the radius; returns `(scale, per-feature radius [B, K])`: `(ε, None)` for a scalar,
    /// `(1, Some(ε))` for a tensor.
    pub fn resolve(&self, b: usize, k: usize, dtype: DType) -> Result<(f64, Option<Tensor>)> {
        match self {
            Epsilon::Scalar(e) => {
                if !e.is_finite() || *e < 0.0 {
                    return Err(DualError::invalid(format!("epsilon must be finite and non-negative, got {e}")));
                }
                Ok((*e, None))
            }
            Epsilon::Tensor(t) => {
                let v = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
                if let Some(bad) = v.iter().find(|e| !e.is_finite() || **e < 0.0) {
                    return Err(DualError::invalid(format!("epsilon must be finite and non-negative, found {bad}")));
                }
                let full = if v.len() == b {
                    t.reshape((b, 1))?.broadcast_as((b, k))?.contiguous()?
                } else if v.len() == b * k {
                    t.reshape((b, k))?
                } else {
                    return Err(DualError::shape(format!(
                        "epsilon has {} entries (shape {:?}); expected {b} (one per example) or {} (one per feature)",
                        v.len(),
                        t.dims(),
                        b * k
                    )));
                };
                Ok((1.0, Some(full.to_dtype(dtype)?)))
            }
        }
    }
}

/// Checks an input batch (non-empty, finite); returns `(B, K)` with `K` features per example.
pub fn validate_input(x: &Tensor) -> Result<(usize, usize)> {
    let b = x.dim(0).map_err(|_| DualError::shape("the input needs a batch dimension"))?;
    if b == 0 {
        return Err(DualError::invalid("the input batch is empty"));
    }
    let bad = match x.dtype() {
        // Read in their own type: no converted copy of the batch.
        DType::F32 => x.flatten_all()?.to_vec1::<f32>()?.iter().any(|v| !v.is_finite()),
        _ => x.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?.iter().any(|v| !v.is_finite()),
    };
    if bad {
        return Err(DualError::invalid("the input contains NaN or infinite values"));
    }
    Ok((b, x.elem_count() / b))
}

/// Identity columns `[B, len, *shape]` scaled per (example, feature) by `scale` `[B, K]` if
/// given; without `scale`, `s·I` shared by the batch, shaped `[1, len, *shape]`.
pub fn identity_columns(x: &Tensor, range: Range<usize>, scale: Option<&Tensor>, s: f64) -> Result<Tensor> {
    let b = x.dim(0)?;
    let k = x.elem_count() / b;
    let len = range.len();
    let mut data = vec![0f32; len * k];
    for (j, col) in range.clone().enumerate() {
        data[j * k + col] = 1.0;
    }
    let eye = Tensor::from_vec(data, (1, len, k), x.device())?.to_dtype(x.dtype())?;
    // Without a per-example scale the columns are the same for every example: one copy,
    // batch dimension 1 (the engine pushes it once).
    let (cols, b) = match scale {
        None => (if s == 1.0 { eye } else { eye.affine(s, 0.0)? }, 1),
        Some(sc) => (eye.broadcast_mul(&sc.narrow(1, range.start, len)?.unsqueeze(2)?)?, b),
    };
    let mut shape = vec![b, len];
    shape.extend_from_slice(&x.dims()[1..]);
    Ok(cols.reshape(shape)?)
}

fn ones_like_cols(p: &Tensor) -> Result<Tensor> {
    let (b, n, _) = p.dims3()?;
    Ok(Tensor::ones((b, n), p.dtype(), p.device())?)
}

/// The l_inf ball `{x' : |x' - x| ≤ ε}` (Theorem 1's `-ε‖ν̂₁‖₁` term).
pub struct InfBall {
    x: Tensor,
    eps: f64,
    eps_t: Option<Tensor>,
}

impl InfBall {
    /// The ball around `x` (`[B, *in_shape]`). Errors on NaN in `x` or a negative radius.
    pub fn new(x: &Tensor, eps: impl Into<Epsilon>) -> Result<Self> {
        let (b, k) = validate_input(x)?;
        let (eps, eps_t) = eps.into().resolve(b, k, x.dtype())?;
        Ok(InfBall { x: x.clone(), eps, eps_t })
    }
}

impl DualSource for InfBall {
    fn num_columns(&self) -> usize {
        self.x.elem_count() / self.x.dim(0).unwrap_or(1)
    }
    /// Columns `ε_p e_p`.
    fn columns(&self, range: Range<usize>) -> Result<Tensor> {
        identity_columns(&self.x, range, self.eps_t.as_ref(), self.eps)
    }
    /// `∓ Σ_p |P_pj|`.
    fn column_terms(&self, p: &Tensor, _range: Range<usize>) -> Result<(Tensor, Tensor)> {
        let s = sum_over_columns(&p.abs()?, &ones_like_cols(p)?)?;
        Ok((s.neg()?, s))
    }
    /// `-Σ_p ε_p |g_p|`.
    fn lower_term(&self, g: &Tensor) -> Result<Tensor> {
        let g = g.flatten_from(2)?.abs()?;
        match &self.eps_t {
            None => Ok((g.sum(2)? * (-self.eps))?),
            Some(e) => Ok(g.broadcast_mul(&e.unsqueeze(1)?)?.sum(2)?.neg()?),
        }
    }
    /// `∓ Σ_p ε_p |g_kp|`.
    fn coefficient_terms(&self, g: &Tensor) -> Result<(Tensor, Tensor)> {
        let g = g.flatten_from(2)?;
        let s = match (&self.eps_t, g.dim(0)?) {
            (None, 1) => (g.abs()?.sum(2)? * self.eps)?,
            (None, b) => {
                let w = Tensor::full(self.eps, (b, g.dim(2)?), g.device())?.to_dtype(g.dtype())?;
                abs_contract(&g, &w)?
            }
            (Some(e), _) => abs_contract(&g, e)?,
        };
        Ok((s.neg()?, s))
    }
    /// `δ ∈ [−ε, ε]`: centre 0, radius `ε`.
    fn interval_box(&self) -> Option<Result<(Tensor, Tensor)>> {
        let f = || -> Result<(Tensor, Tensor)> {
            let b = self.x.dim(0)?;
            let k = self.x.elem_count() / b.max(1);
            let rad = match &self.eps_t {
                Some(e) => e.clone(),
                None => Tensor::full(self.eps, (1, k), self.x.device())?.to_dtype(self.x.dtype())?,
            };
            Ok((rad.zeros_like()?, rad))
        };
        Some(f())
    }
    fn is_box(&self) -> bool {
        true
    }
    fn name(&self) -> String {
        "InfBall".into()
    }
}

/// The l_inf ball intersected with a box: `{x' : |x' - x| ≤ ε, lo ≤ x' ≤ hi}` (e.g. `[0, 1]`
/// for images). The box `[max(x-ε, lo), min(x+ε, hi)]` is written `x + [δ⁻, δ⁺]` with
/// `δ⁻ ≤ 0 ≤ δ⁺`; the minimum of `gᵀδ` over it is `Σ [g]₊ δ⁻ + [g]₋ δ⁺`.
pub struct InfBallBounded {
    x: Tensor,
    /// `δ⁻`, `δ⁺` as `[B, K]`.
    lo: Tensor,
    hi: Tensor,
}

impl InfBallBounded {
    /// The ball around `x` clipped to `[lo, hi]`. Errors on NaN, a negative radius, or an `x`
    /// outside the box.
    pub fn new(x: &Tensor, eps: impl Into<Epsilon>, lo: f64, hi: f64) -> Result<Self> {
        let (b, k) = validate_input(x)?;
        if !(lo <= hi) {
            return Err(DualError::invalid(format!("the box [{lo}, {hi}] is empty")));
        }
        let (eps, eps_t) = eps.into().resolve(b, k, x.dtype())?;
        let xf = x.reshape((b, k))?;
        if eps_t.is_none() {
            match x.dtype() {
                DType::F32 => return Self::scalar_radius::<f32>(x, &xf, eps, lo, hi),
                DType::F64 => return Self::scalar_radius::<f64>(x, &xf, eps, lo, hi),
                _ => {}
            }
        }
        let v = xf.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        if v.iter().any(|&v| v < lo || v > hi) {
            return Err(DualError::invalid(format!("the input lies outside the box [{lo}, {hi}]")));
        }
        let (dlo, dhi) = match eps_t {
            None => ((xf.affine(1.0, -eps)?.maximum(lo)? - &xf)?, (xf.affine(1.0, eps)?.minimum(hi)? - &xf)?),
            Some(e) => (((&xf - &e)?.maximum(lo)? - &xf)?, ((&xf + &e)?.minimum(hi)? - &xf)?),
        };
        Ok(InfBallBounded { x: x.clone(), lo: dlo, hi: dhi })
    }

    /// [`InfBallBounded::new`] for one radius on f32/f64 inputs `xf` (`[B, K]`), in one pass over
    /// the values: the range check and `δ⁻ = max(x − ε, lo) − x`, `δ⁺ = min(x + ε, hi) − x` in the
    /// input's type, as the tensor ops compute them (the same numbers, without their five
    /// temporaries of the batch's size).
    fn scalar_radius<T>(x: &Tensor, xf: &Tensor, eps: f64, lo: f64, hi: f64) -> Result<Self>
    where
        T: candle_core::WithDType + candle_core::FloatDType,
    {
        let v = xf.flatten_all()?.to_vec1::<T>()?;
        if v.iter().any(|&e| e.to_f64() < lo || e.to_f64() > hi) {
            return Err(DualError::invalid(format!("the input lies outside the box [{lo}, {hi}]")));
        }
        let (e, l, h) = (T::from_f64(eps), T::from_f64(lo), T::from_f64(hi));
        let max = |a: T, b: T| if a > b { a } else { b };
        let min = |a: T, b: T| if a < b { a } else { b };
        let dlo: Vec<T> = v.iter().map(|&x| max(x - e, l) - x).collect();
        let dhi: Vec<T> = v.iter().map(|&x| min(x + e, h) - x).collect();
        let shape = xf.dims();
        Ok(InfBallBounded {
            x: x.clone(),
            lo: Tensor::from_vec(dlo, shape, x.device())?,
            hi: Tensor::from_vec(dhi, shape, x.device())?,
        })
    }
}

impl DualSource for InfBallBounded {
    fn num_columns(&self) -> usize {
        self.lo.dim(1).unwrap_or(0)
    }
    /// Unit columns `e_p`.
    fn columns(&self, range: Range<usize>) -> Result<Tensor> {
        identity_columns(&self.x, range, None, 1.0)
    }
    fn column_terms(&self, p: &Tensor, range: Range<usize>) -> Result<(Tensor, Tensor)> {
        let lo = self.lo.narrow(1, range.start, range.len())?;
        let hi = self.hi.narrow(1, range.start, range.len())?;
        // With [P]₊ = P - [P]₋ only one elementwise copy of the (large) columns is made:
        // lower = Σ [P]₊δ⁻ + [P]₋δ⁺ = Σ P δ⁻ + [P]₋(δ⁺ - δ⁻), upper = Σ P δ⁺ - [P]₋(δ⁺ - δ⁻).
        let neg = p.minimum(0.0)?;
        let width = (&hi - &lo)?;
        let neg_part = sum_over_columns(&neg, &width)?;
        let lower = (sum_over_columns(p, &lo)? + &neg_part)?;
        let upper = (sum_over_columns(p, &hi)? - &neg_part)?;
        Ok((lower, upper))
    }
    fn lower_term(&self, g: &Tensor) -> Result<Tensor> {
        let g = g.flatten_from(2)?;
        let pos = g.maximum(0.0)?.broadcast_mul(&self.lo.unsqueeze(1)?)?;
        let neg = g.minimum(0.0)?.broadcast_mul(&self.hi.unsqueeze(1)?)?;
        Ok((pos + neg)?.sum(2)?)
    }
    /// With the box's centre `m = (δ⁻ + δ⁺) / 2` and radius `ρ = (δ⁺ - δ⁻) / 2`:
    /// `Σ [g]₊δ⁻ + [g]₋δ⁺ = gᵀm - |g|ᵀρ` and the upper bound `gᵀm + |g|ᵀρ`.
    fn coefficient_terms(&self, g: &Tensor) -> Result<(Tensor, Tensor)> {
        let mid = ((&self.lo + &self.hi)? * 0.5)?;
        let rad = ((&self.hi - &self.lo)? * 0.5)?;
        let lin = contract_features(g, &mid)?;
        let abs = abs_contract(g, &rad)?;
        Ok(((&lin - &abs)?, (lin + abs)?))
    }
    /// `δ ∈ [δ⁻, δ⁺]`: centre `(δ⁻ + δ⁺) / 2`, radius `(δ⁺ − δ⁻) / 2`.
    fn interval_box(&self) -> Option<Result<(Tensor, Tensor)>> {
        let f =
            || -> Result<(Tensor, Tensor)> { Ok((((&self.lo + &self.hi)? * 0.5)?, ((&self.hi - &self.lo)? * 0.5)?)) };
        Some(f())
    }
    fn is_box(&self) -> bool {
        true
    }
    fn name(&self) -> String {
        "InfBallBounded".into()
    }
}

/// Added under square roots so their gradient stays finite where a norm is exactly zero (the
/// bound only gets looser, by at most √TINY).
const TINY: f64 = 1e-30;

/// The l2 ball `{x' : ‖(x' - x) / ε‖₂ ≤ 1}`: the term is `-‖ε ⊙ g‖₂`.
pub struct L2Ball {
    x: Tensor,
    eps: f64,
    eps_t: Option<Tensor>,
}

impl L2Ball {
    /// The l2 ball around `x`. Errors on NaN or a negative radius.
    pub fn new(x: &Tensor, eps: impl Into<Epsilon>) -> Result<Self> {
        let (b, k) = validate_input(x)?;
        let (eps, eps_t) = eps.into().resolve(b, k, x.dtype())?;
        Ok(L2Ball { x: x.clone(), eps, eps_t })
    }
}

impl DualSource for L2Ball {
    fn num_columns(&self) -> usize {
        self.x.elem_count() / self.x.dim(0).unwrap_or(1)
    }
    fn columns(&self, range: Range<usize>) -> Result<Tensor> {
        identity_columns(&self.x, range, self.eps_t.as_ref(), self.eps)
    }
    /// Partial sums of squares; [`DualSource::finish_terms`] takes the root.
    fn column_terms(&self, p: &Tensor, _range: Range<usize>) -> Result<(Tensor, Tensor)> {
        let s = sum_over_columns(&p.sqr()?, &ones_like_cols(p)?)?;
        Ok((s.clone(), s))
    }
    fn finish_terms(&self, lower: Tensor, _upper: Tensor) -> Result<(Tensor, Tensor)> {
        let n = (lower + TINY)?.sqrt()?;
        Ok((n.neg()?, n))
    }
    fn lower_term(&self, g: &Tensor) -> Result<Tensor> {
        let g = g.flatten_from(2)?;
        let g = match &self.eps_t {
            None => g.affine(self.eps, 0.0)?,
            Some(e) => g.broadcast_mul(&e.unsqueeze(1)?)?,
        };
        Ok((g.sqr()?.sum(2)? + TINY)?.sqrt()?.neg()?)
    }
    /// `∓ ‖ε ⊙ g_k‖₂`.
    fn coefficient_terms(&self, g: &Tensor) -> Result<(Tensor, Tensor)> {
        let sq = g.flatten_from(2)?.sqr()?;
        let s = match &self.eps_t {
            None => (sq.sum(2)? * (self.eps * self.eps))?,
            Some(e) => contract_features(&sq, &e.sqr()?)?,
        };
        let n = (s + TINY)?.sqrt()?;
        Ok((n.neg()?, n))
    }
    fn name(&self) -> String {
        "L2Ball".into()
    }
}
