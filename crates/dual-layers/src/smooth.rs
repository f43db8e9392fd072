//! Sigmoid and Tanh: monotone S-shaped activations, convex on `ẑ ≤ 0` and concave on `ẑ ≥ 0`,
//! symmetric about `(0, σ(0))`: `σ(−z) = 2σ(0) − σ(z)`.
//!
//! * **Intervals (IBP)**: `[σ(l), σ(u)]` (monotone), widened by a few units of rounding.
//! * **Linear bounds (CROWN, CROWN-IBP, α-CROWN)** `a_L ẑ + b_L ≤ σ(ẑ) ≤ a_U ẑ + b_U` on `[l, u]`.
//!   The lower line ([`lower_line`]):
//!   - `u ≤ 0` (convex part): the tangent at `m = (l + u)/2` (a convex function lies above
//!     every tangent);
//!   - `l ≥ 0` (concave part): the chord from `(l, σ(l))` to `(u, σ(u))` (a concave function lies
//!     above its chords);
//!   - `l < 0 < u`: the tangent at the `d ≤ 0` whose line passes through `(u, σ(u))`, the root of
//!     `h(d) = σ(d) + σ'(d)(u − d) − σ(u)`. `h' = σ''(d)(u − d) ≥ 0` on `d ≤ 0`, `h(0) ≥ 0` (σ
//!     concave on `[0, u]`) and `h(−∞) < 0`, so the root is unique. If `h(l) ≥ 0` the chord is
//!     used (then `σ'(l) ≥` the chord's slope, so the chord is below σ on the convex part). Else
//!     bisection on `[l, 0]` keeps an end `d` with `h(d) ≤ 0`, and the tangent at any such `d` is
//!     sound: below σ on `[l, 0]` (convexity), and on `[0, u]` σ is concave and the line is at most
//!     σ at both ends (`≤ σ(0)` by convexity, `≤ σ(u)` since `h(d) ≤ 0`).
//!   - The upper line is the lower line of the reflected problem: if `a z + b ≤ σ(z)` on `[−u, −l]`
//!     then `σ(z) = 2σ(0) − σ(−z) ≤ a z + 2σ(0) − b` on `[l, u]`.
//!     With `l = u` both lines are the tangent at `l`. The lines are computed in f64 from the bounds
//!     (no gradient flows through them), and the offsets moved outwards by a few units of rounding
//!     of the working dtype. α-CROWN keeps the tangent points fixed.
//! * **Exact dual** (one slope per unit, the gap a box): [`crate::smooth_dual`].

use crate::maxpool::dtype_eps;
use candle_core::{DType, Tensor};
use dual_core::bounds::{LinearRelaxation, SlopeRule};
use dual_core::{DualActivation, DualError, Relaxation, Result};

/// Which S-shaped function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Smooth {
    /// `1 / (1 + e^{−z})`.
    Sigmoid,
    /// `tanh z`.
    Tanh,
}

impl Smooth {
    /// The function, in f64.
    pub fn f(self, z: f64) -> f64 {
        match self {
            Smooth::Sigmoid => {
                if z >= 0.0 {
                    1.0 / (1.0 + (-z).exp())
                } else {
                    let e = z.exp();
                    e / (1.0 + e)
                }
            }
            Smooth::Tanh => z.tanh(),
        }
    }
    /// Its derivative, in f64 (`σ(z) σ(−z)`; `1 / cosh² z`), accurate in the tails.
    pub fn df(self, z: f64) -> f64 {
        match self {
            Smooth::Sigmoid => self.f(z) * self.f(-z),
            Smooth::Tanh => {
                let c = z.cosh();
                1.0 / (c * c)
            }
        }
    }
    /// `σ(0)`.
    pub(crate) fn f0(self) -> f64 {
        match self {
            Smooth::Sigmoid => 0.5,
            Smooth::Tanh => 0.0,
        }
    }
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Smooth::Sigmoid => "Sigmoid",
            Smooth::Tanh => "Tanh",
        }
    }
    /// The function on a tensor (differentiable): `tanh`, or `σ(z) = (1 + tanh(z/2))/2`.
    pub fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Smooth::Sigmoid => (x * 0.5)?.tanh()?.affine(0.5, 0.5),
            Smooth::Tanh => x.tanh(),
        }
    }

    fn tangent(self, d: f64) -> (f64, f64) {
        let a = self.df(d);
        (a, self.f(d) - a * d)
    }

    fn chord(self, l: f64, u: f64) -> (f64, f64) {
        let (fl, fu) = (self.f(l), self.f(u));
        let a = (fu - fl) / (u - l);
        (a, fl - a * l)
    }

    /// A line `a z + b ≤ σ(z)` on `[l, u]` (exact arithmetic; see the module documentation).
    pub fn lower_line(self, l: f64, u: f64) -> (f64, f64) {
        if l >= u {
            return self.tangent(l);
        }
        if u <= 0.0 {
            return self.tangent(0.5 * l + 0.5 * u);
        }
        if l >= 0.0 {
            return self.chord(l, u);
        }
        let fu = self.f(u);
        let h = |d: f64| self.f(d) + self.df(d) * (u - d) - fu;
        if h(l) >= 0.0 {
            return self.chord(l, u);
        }
        let (mut lo, mut hi) = (l, 0.0);
        for _ in 0..200 {
            let mid = 0.5 * lo + 0.5 * hi;
            if mid <= lo || mid >= hi {
                break;
            }
            if h(mid) <= 0.0 {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        self.tangent(lo)
    }

    /// A line `a z + b ≥ σ(z)` on `[l, u]`: the reflected lower line.
    pub fn upper_line(self, l: f64, u: f64) -> (f64, f64) {
        let (a, b) = self.lower_line(-u, -l);
        (a, 2.0 * self.f0() - b)
    }
}

/// The dual of Sigmoid or Tanh.
#[derive(Debug, Clone, Copy)]
pub struct DualSmooth(pub Smooth);

impl DualActivation for DualSmooth {
    fn name(&self) -> String {
        self.0.name().into()
    }

    /// The exact dual's relaxation: one slope per unit and a box for the rest
    /// ([`crate::smooth_dual::SmoothRelaxation`]).
    fn relax(&self, lower: &Tensor, upper: &Tensor) -> Result<Box<dyn Relaxation>> {
        Ok(Box::new(crate::smooth_dual::SmoothRelaxation::new(self.0, lower, upper)?))
    }

    fn exact_off_zero(&self) -> bool {
        false
    }

    /// `[σ(l) − m, σ(u) + m]`, `m` a few units of rounding of the dtype.
    fn interval(&self, lower: &Tensor, upper: &Tensor) -> Result<(Tensor, Tensor)> {
        let m = 8.0 * dtype_eps(lower.dtype());
        Ok((self.0.apply(lower)?.affine(1.0, -m)?, self.0.apply(upper)?.affine(1.0, m)?))
    }

    fn linear_relax(&self, lower: &Tensor, upper: &Tensor, _rule: SlopeRule<'_>) -> Result<Box<dyn LinearRelaxation>> {
        Ok(Box::new(SmoothLinear::new(self.0, lower, upper)?))
    }
}

/// The two lines of every unit for one batch.
pub struct SmoothLinear {
    /// `a_L`, `[B, 1, *shape]`.
    a_l: Tensor,
    /// `a_U`, `[B, 1, *shape]`.
    a_u: Tensor,
    /// `b_L`, `b_U`, flat `[B, K]`.
    b_l: Tensor,
    b_u: Tensor,
}

impl SmoothLinear {
    /// The lines for `lower ≤ ẑ ≤ upper` (`[B, *shape]`).
    pub fn new(f: Smooth, lower: &Tensor, upper: &Tensor) -> Result<Self> {
        let dtype = lower.dtype();
        let b = lower.dim(0)?;
        let lv = lower.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let uv = upper.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        if lv.iter().chain(&uv).any(|v| !v.is_finite()) {
            return Err(DualError::invalid(format!("{}: pre-activation bounds are not finite", f.name())));
        }
        let eps = dtype_eps(dtype);
        let k = lv.len() / b.max(1);
        let n = lv.len();
        let (mut al, mut bl, mut au, mut bu) = (vec![0.0; n], vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        for p in 0..n {
            let (l, u) = (lv[p], uv[p].max(lv[p]));
            let reach = l.abs().max(u.abs());
            let (a, c) = f.lower_line(l, u);
            al[p] = a;
            bl[p] = c - 8.0 * eps * (1.0 + c.abs() + a.abs() * reach);
            let (a, c) = f.upper_line(l, u);
            au[p] = a;
            bu[p] = c + 8.0 * eps * (1.0 + c.abs() + a.abs() * reach);
        }
        let mut s = vec![b, 1];
        s.extend_from_slice(&lower.dims()[1..]);
        let dev = lower.device();
        let t =
            |v: Vec<f64>, shape: &[usize]| -> Result<Tensor> { Ok(Tensor::from_vec(v, shape, dev)?.to_dtype(dtype)?) };
        Ok(SmoothLinear { a_l: t(al, &s)?, a_u: t(au, &s)?, b_l: t(bl, &[b, k])?, b_u: t(bu, &[b, k])? })
    }
}

impl LinearRelaxation for SmoothLinear {
    /// `Λ_in = [Λ]₊ a_L + [Λ]₋ a_U`, offset `Σ_j [Λ_j]₊ b_Lj + [Λ_j]₋ b_Uj`.
    fn backward_lower(&self, lam: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let pos = lam.maximum(0.0)?;
        let neg = (lam - &pos)?;
        let lam_in = (pos.broadcast_mul(&self.a_l)? + neg.broadcast_mul(&self.a_u)?)?;
        let off = (crate::columns::contract_features(&pos, &self.b_l)?
            + crate::columns::contract_features(&neg, &self.b_u)?)?;
        let b = self.b_l.dim(0)?;
        let m = lam.dim(1)?;
        Ok((lam_in, Some(off.broadcast_as((b, m))?.contiguous()?)))
    }

    fn lower_slopes(&self) -> &Tensor {
        &self.a_l
    }
}
