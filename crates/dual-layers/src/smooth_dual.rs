//! The exact dual's relaxation of Sigmoid / Tanh (Wong & Kolter's form for a general activation,
//! `docs/EXTENDING.md` §6): on `[l, u]`, `σ(ẑ) = d ẑ + δ` with one slope `d` per unit and
//! `δ ∈ [β⁻, β⁺]`, `β∓ = min / max_{z ∈ [l, u]} σ(z) − d z`.
//!
//! `d` is the chord's slope `(σ(u) − σ(l)) / (u − l)` (`σ'(l)` when `l = u`). `h(z) = σ(z) − d z`
//! is smooth, so its extremes on `[l, u]` are at `l`, `u` or where `σ'(z) = d`: `σ'` is even and
//! decreasing in `|z|`, so these are `±z*` with `z* ≥ 0` — for Sigmoid `σ' = s(1 − s)`, so
//! `s = (1 + √(1 − 4d))/2` and `z* = ln(s / (1 − s))`; for Tanh `σ' = 1 − t²`, so
//! `z* = atanh(√(1 − d))`. The box is the min and max of `h` over those candidates in `[l, u]`,
//! widened by a few units of rounding (and by `σ''`'s bound times the error of `z*` squared,
//! which is below that). The gap is a source of free variables, one column per unit, with the
//! terms `min_δ gᵀδ = Σ_j mid_j g_j − rad_j |g_j|` (`mid`, `rad` of the box).

use crate::columns::{contract_features, sum_over_columns};
use crate::maxpool::dtype_eps;
use crate::smooth::Smooth;
use candle_core::{DType, Tensor};
use dual_core::{DualError, DualSource, Relaxation, Result};
use std::ops::Range;

/// `z* ≥ 0` with `σ'(z*) = d`, if `0 < d < σ'(0)`.
fn critical(f: Smooth, d: f64) -> Option<f64> {
    let z = match f {
        Smooth::Sigmoid if d > 0.0 && d < 0.25 => {
            let s = 0.5 * (1.0 + (1.0 - 4.0 * d).sqrt());
            (s / (1.0 - s)).ln()
        }
        Smooth::Tanh if d > 0.0 && d < 1.0 => (1.0 - d).sqrt().atanh(),
        _ => return None,
    };
    z.is_finite().then_some(z)
}

/// `(d, β⁻, β⁺)` for one unit.
pub fn slope_and_box(f: Smooth, l: f64, u: f64, eps: f64) -> (f64, f64, f64) {
    let u = u.max(l);
    let d = if u > l { (f.f(u) - f.f(l)) / (u - l) } else { f.df(l) };
    let h = |z: f64| f.f(z) - d * z;
    let mut cands = vec![h(l), h(u)];
    if let Some(z) = critical(f, d) {
        for z in [z, -z] {
            if z > l && z < u {
                cands.push(h(z));
            }
        }
    }
    let lo = cands.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = cands.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let margin = 16.0 * eps * (1.0 + lo.abs().max(hi.abs()) + d.abs() * l.abs().max(u.abs()));
    (d, lo - margin, hi + margin)
}

/// Slopes and the gap's source for one batch.
pub struct SmoothRelaxation {
    d: Tensor,
    source: SmoothSource,
    counts: Vec<usize>,
}

impl SmoothRelaxation {
    /// The relaxation for `lower ≤ ẑ ≤ upper` (`[B, *shape]`).
    pub fn new(f: Smooth, lower: &Tensor, upper: &Tensor) -> Result<Self> {
        let dtype = lower.dtype();
        let b = lower.dim(0)?;
        let lv = lower.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let uv = upper.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        if lv.iter().chain(&uv).any(|v| !v.is_finite()) {
            return Err(DualError::invalid(format!("{}: pre-activation bounds are not finite", f.name())));
        }
        let eps = dtype_eps(dtype);
        let n = lv.len();
        let k = n / b.max(1);
        let (mut d, mut mid, mut rad) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        for p in 0..n {
            let (s, lo, hi) = slope_and_box(f, lv[p], uv[p], eps);
            d[p] = s;
            mid[p] = 0.5 * lo + 0.5 * hi;
            rad[p] = (hi - mid[p]).max(mid[p] - lo);
        }
        let counts =
            (0..b).map(|i| (0..k).filter(|&j| rad[i * k + j] > 0.0 || mid[i * k + j] != 0.0).count()).collect();
        let dev = lower.device();
        let t = |v: Vec<f64>, s: &[usize]| -> Result<Tensor> { Ok(Tensor::from_vec(v, s, dev)?.to_dtype(dtype)?) };
        let source = SmoothSource { mid: t(mid, &[b, k])?, rad: t(rad, &[b, k])?, shape: lower.dims()[1..].to_vec() };
        Ok(SmoothRelaxation { d: t(d, lower.dims())?, source, counts })
    }
}

impl Relaxation for SmoothRelaxation {
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        Ok(crate::kernels::scale_columns(x, &self.d)?)
    }
    fn source(&self) -> Option<&dyn DualSource> {
        Some(&self.source)
    }
    /// Units with a non-trivial gap (all of them, unless `l = u` and the line is exact).
    fn unstable_counts(&self) -> Vec<usize> {
        self.counts.clone()
    }
}

/// The gap `δ ∈ mid ± rad` of every unit: one unit column per unit, shared by the batch.
struct SmoothSource {
    /// `[B, K]`.
    mid: Tensor,
    /// `[B, K]`, non-negative.
    rad: Tensor,
    shape: Vec<usize>,
}

impl DualSource for SmoothSource {
    fn num_columns(&self) -> usize {
        self.shape.iter().product()
    }

    fn columns(&self, range: Range<usize>) -> Result<Tensor> {
        let k = self.num_columns();
        let mut data = vec![0f64; range.len() * k];
        for (r, j) in range.clone().enumerate() {
            data[r * k + j] = 1.0;
        }
        let mut s = vec![1, range.len()];
        s.extend_from_slice(&self.shape);
        Ok(Tensor::from_vec(data, s, self.mid.device())?.to_dtype(self.mid.dtype())?)
    }

    /// `Σ_r mid_r P_r ∓ rad_r |P_r|` over the columns `r` of `range`.
    fn column_terms(&self, p: &Tensor, range: Range<usize>) -> Result<(Tensor, Tensor)> {
        let mid = self.mid.narrow(1, range.start, range.len())?;
        let rad = self.rad.narrow(1, range.start, range.len())?;
        let lin = sum_over_columns(p, &mid)?;
        let abs = sum_over_columns(&p.abs()?, &rad)?;
        Ok(((&lin - &abs)?, (lin + abs)?))
    }

    /// `Σ_j mid_j g_j − rad_j |g_j|`.
    fn lower_term(&self, g: &Tensor) -> Result<Tensor> {
        Ok((contract_features(g, &self.mid)? - contract_features(&g.abs()?, &self.rad)?)?)
    }

    fn coefficient_terms(&self, g: &Tensor) -> Result<(Tensor, Tensor)> {
        let lin = contract_features(g, &self.mid)?;
        let abs = contract_features(&g.abs()?, &self.rad)?;
        Ok(((&lin - &abs)?, (lin + abs)?))
    }

    fn name(&self) -> String {
        "Sigmoid/Tanh gap".into()
    }
}
