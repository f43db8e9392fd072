//! ReLU's linear bounds with separate lines (CROWN, CROWN-IBP, α-CROWN) and its interval map (IBP).
//!
//! On `[l, u]`: stable units are exact (`a_L = a_U = 1, b = 0` where `l ≥ 0`; `0` where `u ≤ 0`).
//! On the unstable set `I = {l < 0 < u}` the upper line is the chord `a_U = u/(u − l)`,
//! `b_U = −a_U l` and the lower line is `a_L ẑ` with `a_L ∈ [0, 1]`: the dual's `u/(u − l)`,
//! CROWN's adaptive `1{u/(u − l) > 1/2}`, or given slopes `α`.

use candle_core::Tensor;
use dual_core::bounds::{LinearRelaxation, SlopeRule};
use dual_core::{DualError, Result};

/// The two lines of a ReLU for one batch.
pub struct ReluLinear {
    /// `a_L`, `[B, r, *shape]`.
    a_l: Tensor,
    /// `a_U`, `[B, *shape]`.
    a_u: Tensor,
    /// `b_U = −a_U l` on `I`, zero elsewhere, flat `[B, K]`.
    b_u: Tensor,
    /// The bounds `l`, `u` the lines were made from, `[B, *shape]`.
    lower: Tensor,
    upper: Tensor,
}

impl ReluLinear {
    /// The lines for pre-activation bounds `lower ≤ ẑ ≤ upper` (`[B, *shape]`) and a slope rule.
    pub fn new(lower: &Tensor, upper: &Tensor, rule: SlopeRule<'_>) -> Result<Self> {
        let dtype = lower.dtype();
        let b = lower.dim(0)?;
        let k = lower.elem_count() / b.max(1);
        // One pass when nothing tracks the bounds (the same numbers).
        let fused = match rule {
            SlopeRule::Dual => crate::kernels::relu_lines(lower, upper, false)?,
            SlopeRule::Adaptive => crate::kernels::relu_lines(lower, upper, true)?,
            SlopeRule::Given(_) => None,
        };
        if let Some((a_u, b_u, a_l)) = fused {
            let (b_u, a_l) = (b_u.reshape((b, k))?, a_l.unsqueeze(1)?);
            return Ok(ReluLinear { a_l, a_u, b_u, lower: lower.clone(), upper: upper.clone() });
        }
        let unstable = lower.lt(0.0)?.mul(&upper.gt(0.0)?)?.to_dtype(dtype)?;
        let active = lower.ge(0.0)?.to_dtype(dtype)?;
        let denom = ((upper - lower)? + (1.0 - &unstable)?)?;
        let chord = (&unstable * (upper / denom)?)?;
        let a_u = (&active + &chord)?;
        let b_u = (&chord * lower)?.neg()?.reshape((b, k))?;
        let a_l = match rule {
            SlopeRule::Dual => a_u.unsqueeze(1)?,
            SlopeRule::Adaptive => (&active + (&unstable * chord.gt(0.5)?.to_dtype(dtype)?)?)?.unsqueeze(1)?,
            SlopeRule::Given(alpha) => {
                let want = lower.rank() + 1;
                if alpha.rank() != want || alpha.dim(0)? != b || alpha.dims()[2..] != lower.dims()[1..] {
                    return Err(DualError::shape(format!(
                        "ReLU slopes α have shape {:?}; expected [{b}, r, {:?}]",
                        alpha.dims(),
                        &lower.dims()[1..]
                    )));
                }
                alpha.broadcast_mul(&unstable.unsqueeze(1)?)?.broadcast_add(&active.unsqueeze(1)?)?
            }
        };
        Ok(ReluLinear { a_l, a_u, b_u, lower: lower.clone(), upper: upper.clone() })
    }
}

impl LinearRelaxation for ReluLinear {
    /// `Λ_in = [Λ]₊ a_L + [Λ]₋ a_U`, offset `Σ_j b_Uj min(Λ_j, 0)`.
    fn backward_lower(&self, lam: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        if self.a_l.dim(1)? == 1 {
            // One fused pass, also under autograd (same numbers, fused gradient).
            if let Some(gin) = crate::kernels::relax_columns(lam, &self.a_l, &self.a_u)? {
                let offset = crate::kernels::neg_part_contract(lam, &self.b_u)?;
                return Ok((gin, Some(offset)));
            }
        }
        let pos = lam.maximum(0.0)?;
        let neg = (lam - &pos)?;
        let lo = if self.a_l.dim(1)? == 1 {
            crate::kernels::scale_columns(&pos, &self.a_l.squeeze(1)?)?
        } else {
            pos.broadcast_mul(&self.a_l)?
        };
        let up = crate::kernels::scale_columns(&neg, &self.a_u)?;
        let offset = crate::kernels::neg_part_contract(lam, &self.b_u)?;
        Ok(((lo + up)?, Some(offset)))
    }

    /// The gather, the step and the offset in one pass when nothing tracks its ops
    /// (`kernels::relax_gathered`); else the default.
    fn backward_lower_gathered(
        &self,
        table: &Tensor,
        idx: &[u32],
        b: usize,
        len: usize,
    ) -> Result<(Tensor, Option<Tensor>)> {
        if self.a_l.dim(1)? == 1 && self.a_u.dim(0)? == b {
            if let Some((gin, off)) =
                crate::kernels::relax_gathered(table, idx, len, (&self.a_l, &self.a_u, &self.b_u))?
            {
                return Ok((gin, Some(off)));
            }
        }
        dual_core::bounds::gather_then_step(self, table, idx, b, len)
    }

    fn lower_slopes(&self) -> &Tensor {
        &self.a_l
    }

    /// Every line narrowed to the window (the same lines on the same units).
    fn crop(&self, y0: usize, h: usize, x0: usize, w: usize) -> Option<Result<Box<dyn LinearRelaxation>>> {
        let r = self.a_u.rank();
        if r < 3 || y0 + h > self.a_u.dim(r - 2).ok()? || x0 + w > self.a_u.dim(r - 1).ok()? {
            return None;
        }
        let f = || -> Result<Box<dyn LinearRelaxation>> {
            let cut = |t: &Tensor| crate::relu::crop_hw(t, (y0, x0), (h, w));
            let b = self.a_u.dim(0)?;
            let b_u = cut(&self.b_u.reshape(self.a_u.shape())?)?.reshape((b, ()))?;
            Ok(Box::new(ReluLinear {
                a_l: cut(&self.a_l)?,
                a_u: cut(&self.a_u)?,
                b_u,
                lower: cut(&self.lower)?,
                upper: cut(&self.upper)?,
            }))
        };
        Some(f())
    }

    /// With `a_L, a_U ≥ 0` and `b_L = 0`: `[a_L l, a_U u + b_U]` (`[l, u]` on active units, `0` on
    /// inactive ones, `[a_L l, u]` on unstable ones).
    fn line_box(&self) -> Option<Result<(Tensor, Tensor)>> {
        if self.a_l.dim(1).ok()? != 1 {
            return None;
        }
        let f = || -> Result<(Tensor, Tensor)> {
            let lo = (self.a_l.squeeze(1)? * &self.lower)?;
            let hi = ((&self.a_u * &self.upper)? + self.b_u.reshape(self.upper.shape())?)?;
            Ok((lo, hi))
        };
        Some(f())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// The fused lines (bounds that track nothing) equal Candle's ops (bounds that track) bit for
    /// bit, NaN and infinite bounds included, for both slope rules and both float types.
    #[test]
    fn fused_lines_equal_the_op_by_op_lines() {
        let special = [0.0, -0.0, 1e-30, -1e-30, 0.5, -0.5, 3.0, -3.0, f64::INFINITY, f64::NEG_INFINITY, f64::NAN];
        let mut lo = Vec::new();
        let mut hi = Vec::new();
        for &a in &special {
            for &b in &special {
                lo.push(a);
                hi.push(b);
            }
        }
        // Enough units for many rows of the parallel pass (and its chunk offsets).
        let mut rng = StdRng::seed_from_u64(11);
        for _ in 0..100_000 {
            let a = rng.random::<f64>() * 4.0 - 2.0;
            lo.push(a);
            hi.push(a + rng.random::<f64>() * 3.0);
        }
        let n = lo.len();
        for dtype in [DType::F32, DType::F64] {
            let l = Tensor::from_vec(lo.clone(), (1, n), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let u = Tensor::from_vec(hi.clone(), (1, n), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let tracked = Var::from_tensor(&l).unwrap();
            for rule in [SlopeRule::Dual, SlopeRule::Adaptive] {
                let fast = ReluLinear::new(&l, &u, rule).unwrap();
                let slow = ReluLinear::new(tracked.as_tensor(), &u, rule).unwrap();
                for (what, a, b) in
                    [("a_L", &fast.a_l, &slow.a_l), ("a_U", &fast.a_u, &slow.a_u), ("b_U", &fast.b_u, &slow.b_u)]
                {
                    assert_eq!(a.dims(), b.dims(), "{what}");
                    let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
                    let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
                    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                        assert!(
                            x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()) || (*x == 0.0 && *y == 0.0),
                            "{what} {dtype:?} at l = {}, u = {}: fused {x}, ops {y}",
                            lo[i],
                            hi[i]
                        );
                    }
                }
            }
        }
    }
}
