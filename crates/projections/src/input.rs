//! Projected input sets: the l_inf ball, the l_inf ball ∩ a box, and the l2 ball.
//!
//! Each holds the exact set too: the objective `J(c)` (run backward with exact coefficients) uses
//! the exact term, only the layer-wise bounds use the projected estimate.

use crate::estimate::{linear_and_median_abs, mean_square_over_columns, median_abs_over_columns};
use crate::random::{projection_tensor, stream_seed, Projection};
use candle_core::Tensor;
use dual_core::{DualError, DualSource, Result};
use dual_layers::{validate_input, Epsilon, InfBall, InfBallBounded, L2Ball};
use std::ops::Range;

/// Stream id of the input set's projections (ReLU layers use their node index, ≥ 1).
pub const INPUT_STREAM: u64 = 0;

/// `1 / (1 - eps_rel)`: the factor that turns an estimate within `(1 ± eps_rel)` into an
/// over-estimate.
pub fn inflation_factor(eps_rel: f64) -> Result<f64> {
    if !(0.0..1.0).contains(&eps_rel) {
        return Err(DualError::invalid(format!(
            "cannot inflate by a relative error of {eps_rel}: it must lie in [0, 1) (more projections, or a larger delta)"
        )));
    }
    Ok(1.0 / (1.0 - eps_rel))
}

/// Errors unless `range` covers all `n` columns: a median cannot be assembled from chunks.
pub(crate) fn need_all_columns(range: &Range<usize>, n: usize, what: &str) -> Result<()> {
    if range.start != 0 || range.end != n {
        return Err(DualError::invalid(format!(
            "{what}: its {n} projected columns must be propagated together (got columns {range:?}); \
             use no memory budget or one large enough for {n} columns"
        )));
    }
    Ok(())
}

/// `k` random vectors per example scaled by the radius: `[B, k, *in_shape]`.
fn scaled_projections(x: &Tensor, eps: &Epsilon, kind: Projection, k: usize, seed: u64) -> Result<Tensor> {
    let (b, kk) = validate_input(x)?;
    let shape = &x.dims()[1..];
    let r = projection_tensor(kind, b, k, shape, stream_seed(seed, INPUT_STREAM), x.dtype(), x.device())?;
    let (s, t) = eps.resolve(b, kk, x.dtype())?;
    Ok(match t {
        None => (r * s)?,
        Some(t) => {
            let mut dims = vec![b, 1];
            dims.extend_from_slice(shape);
            r.broadcast_mul(&t.reshape(dims)?)?
        }
    })
}

fn check_k(k: usize) -> Result<()> {
    if k == 0 {
        return Err(DualError::invalid("the number of projections k must be positive"));
    }
    Ok(())
}

/// The l_inf ball `{x' : |x' - x| ≤ ε}` with its l1 terms estimated by `k` Cauchy projections:
/// columns `ε ⊙ r_i`, terms `∓ median_i |P_i|` (times the inflation factor, 1 by default).
/// **An estimate, not a bound** unless inflated (then it holds with high probability).
pub struct InfBallProj {
    exact: InfBall,
    cols: Tensor,
    k: usize,
    scale: f64,
}

impl InfBallProj {
    /// The ball around `x` with `k` projections drawn from `seed` (stream [`INPUT_STREAM`]).
    pub fn new(x: &Tensor, eps: impl Into<Epsilon>, k: usize, seed: u64) -> Result<Self> {
        check_k(k)?;
        let eps = eps.into();
        let exact = InfBall::new(x, eps.clone())?;
        let cols = scaled_projections(x, &eps, Projection::Cauchy, k, seed)?;
        Ok(InfBallProj { exact, cols, k, scale: 1.0 })
    }

    /// Uses `median / (1 - eps_rel)` as the l1 estimate (see [`crate::median_epsilon_lower`]).
    pub fn inflate(mut self, eps_rel: f64) -> Result<Self> {
        self.scale = inflation_factor(eps_rel)?;
        Ok(self)
    }

    /// Number of projections.
    pub fn k(&self) -> usize {
        self.k
    }
}

impl DualSource for InfBallProj {
    /// The term is an estimate from the pushed random columns: always forward.
    fn exact_from_coefficients(&self) -> bool {
        false
    }
    fn num_columns(&self) -> usize {
        self.k
    }
    fn columns(&self, range: Range<usize>) -> Result<Tensor> {
        Ok(self.cols.narrow(1, range.start, range.len())?)
    }
    fn column_terms(&self, p: &Tensor, range: Range<usize>) -> Result<(Tensor, Tensor)> {
        need_all_columns(&range, self.k, "InfBallProj")?;
        let mut n = median_abs_over_columns(p, 0, self.k)?;
        if self.scale != 1.0 {
            n = (n * self.scale)?;
        }
        Ok((n.neg()?, n))
    }
    /// Exact: `-Σ ε_p |g_p|`.
    fn lower_term(&self, g: &Tensor) -> Result<Tensor> {
        self.exact.lower_term(g)
    }
    fn name(&self) -> String {
        format!("InfBallProj(k={})", self.k)
    }
}

/// The l_inf ball ∩ `[lo, hi]`, i.e. `x + δ` with `δ⁻ ≤ δ ≤ δ⁺`, with
/// `min_δ aᵀδ = aᵀ(δ⁻+δ⁺)/2 - Σ |a| (δ⁺-δ⁻)/2`: one exact column `(δ⁻+δ⁺)/2` for the linear part
/// and `k` Cauchy columns `(δ⁺-δ⁻)/2 ⊙ r_i` for the l1 part (median estimate).
pub struct InfBallProjBounded {
    exact: InfBallBounded,
    cols: Tensor,
    k: usize,
    scale: f64,
}

impl InfBallProjBounded {
    /// The ball around `x` clipped to `[lo, hi]`, `k` projections drawn from `seed`.
    pub fn new(x: &Tensor, eps: impl Into<Epsilon>, lo: f64, hi: f64, k: usize, seed: u64) -> Result<Self> {
        check_k(k)?;
        let eps = eps.into();
        let exact = InfBallBounded::new(x, eps.clone(), lo, hi)?;
        let (b, kk) = validate_input(x)?;
        let shape = &x.dims()[1..];
        let xf = x.reshape((b, kk))?;
        let (s, t) = eps.resolve(b, kk, x.dtype())?;
        let (dlo, dhi) = match t {
            None => ((xf.affine(1.0, -s)?.maximum(lo)? - &xf)?, (xf.affine(1.0, s)?.minimum(hi)? - &xf)?),
            Some(e) => (((&xf - &e)?.maximum(lo)? - &xf)?, ((&xf + &e)?.minimum(hi)? - &xf)?),
        };
        let center = ((&dlo + &dhi)? * 0.5)?;
        let radius = ((&dhi - &dlo)? * 0.5)?;
        let r =
            projection_tensor(Projection::Cauchy, b, k, &[kk], stream_seed(seed, INPUT_STREAM), x.dtype(), x.device())?;
        let l1 = r.broadcast_mul(&radius.unsqueeze(1)?)?;
        let cols = Tensor::cat(&[center.unsqueeze(1)?, l1], 1)?;
        let mut dims = vec![b, k + 1];
        dims.extend_from_slice(shape);
        Ok(InfBallProjBounded { exact, cols: cols.reshape(dims)?, k, scale: 1.0 })
    }

    /// Uses `median / (1 - eps_rel)` as the l1 estimate.
    pub fn inflate(mut self, eps_rel: f64) -> Result<Self> {
        self.scale = inflation_factor(eps_rel)?;
        Ok(self)
    }
}

impl DualSource for InfBallProjBounded {
    /// The term is an estimate from the pushed random columns: always forward.
    fn exact_from_coefficients(&self) -> bool {
        false
    }
    fn num_columns(&self) -> usize {
        self.k + 1
    }
    fn columns(&self, range: Range<usize>) -> Result<Tensor> {
        Ok(self.cols.narrow(1, range.start, range.len())?)
    }
    /// `lin ∓ median_i |P_{1+i}|` with `lin = P_0`.
    fn column_terms(&self, p: &Tensor, range: Range<usize>) -> Result<(Tensor, Tensor)> {
        need_all_columns(&range, self.k + 1, "InfBallProjBounded")?;
        let (lin, mut n) = linear_and_median_abs(p, 1, self.k)?;
        if self.scale != 1.0 {
            n = (n * self.scale)?;
        }
        Ok(((&lin - &n)?, (lin + n)?))
    }
    /// Exact: `Σ [g]₊ δ⁻ + [g]₋ δ⁺`.
    fn lower_term(&self, g: &Tensor) -> Result<Tensor> {
        self.exact.lower_term(g)
    }
    fn name(&self) -> String {
        format!("InfBallProjBounded(k={})", self.k)
    }
}

/// Added under the square root so its gradient stays finite at zero.
const TINY: f64 = 1e-30;

/// The l2 ball `{x' : ‖(x' - x)/ε‖₂ ≤ 1}` with its l2 terms estimated by `k` normal projections:
/// columns `ε ⊙ r_i`, terms `∓ sqrt(mean_i P_i²)`. `k·est²/‖a‖₂² ~ χ²_k`, so the estimate of the
/// squared norm is unbiased and the norm itself is biased low by a factor of about `1 - 1/(4k)`.
pub struct L2BallProj {
    exact: L2Ball,
    cols: Tensor,
    k: usize,
    scale: f64,
}

impl L2BallProj {
    /// The l2 ball around `x`, `k` projections drawn from `seed`.
    pub fn new(x: &Tensor, eps: impl Into<Epsilon>, k: usize, seed: u64) -> Result<Self> {
        check_k(k)?;
        let eps = eps.into();
        let exact = L2Ball::new(x, eps.clone())?;
        let cols = scaled_projections(x, &eps, Projection::Normal, k, seed)?;
        Ok(L2BallProj { exact, cols, k, scale: 1.0 })
    }

    /// Uses `estimate / (1 - eps_rel)` (see [`crate::normal_epsilon_lower`]).
    pub fn inflate(mut self, eps_rel: f64) -> Result<Self> {
        self.scale = inflation_factor(eps_rel)?;
        Ok(self)
    }
}

impl DualSource for L2BallProj {
    /// The term is an estimate from the pushed random columns: always forward.
    fn exact_from_coefficients(&self) -> bool {
        false
    }
    fn num_columns(&self) -> usize {
        self.k
    }
    fn columns(&self, range: Range<usize>) -> Result<Tensor> {
        Ok(self.cols.narrow(1, range.start, range.len())?)
    }
    /// Partial means of squares (they add up over chunks, so a memory budget works here).
    fn column_terms(&self, p: &Tensor, _range: Range<usize>) -> Result<(Tensor, Tensor)> {
        let s = mean_square_over_columns(p, self.k)?;
        Ok((s.clone(), s))
    }
    fn finish_terms(&self, lower: Tensor, _upper: Tensor) -> Result<(Tensor, Tensor)> {
        let mut n = (lower + TINY)?.sqrt()?;
        if self.scale != 1.0 {
            n = (n * self.scale)?;
        }
        Ok((n.neg()?, n))
    }
    /// Exact: `-‖ε ⊙ g‖₂`.
    fn lower_term(&self, g: &Tensor) -> Result<Tensor> {
        self.exact.lower_term(g)
    }
    fn name(&self) -> String {
        format!("L2BallProj(k={})", self.k)
    }
}
