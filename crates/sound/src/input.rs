//! The input set as a box `[lo, hi]` in f64, rounded outward.

use crate::rounding::{ETA, U32, U64};
use crate::{Result, SoundError};
use candle_core::{DType, Tensor};

/// A box `lo ≤ x' ≤ hi` of inputs, `[B, *input_shape]` in f64, that contains the whole input set
/// (it is built with every rounding directed outward).
#[derive(Debug, Clone)]
pub struct InputBox {
    /// Lower corner, f64.
    pub lo: Tensor,
    /// Upper corner, f64.
    pub hi: Tensor,
}

/// What the stored input values stand for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DataRounding {
    /// The stored values are the inputs themselves (exact).
    Exact,
    /// The stored values are f32 roundings of the real inputs, after at most `ops` f32
    /// operations (1 for pixels / 255, 3 for a normalisation `(p/255 − m) / s`): the box is
    /// widened by `ops` units in the last place of f32 on each side so it covers the real input.
    F32Ops(u32),
}

impl InputBox {
    /// The l_inf ball of radius `eps` around `x` (any float dtype), intersected with `clip`
    /// when given, rounded outward: `eps` is widened by two f64 units (it stands for the decimal
    /// the user typed), `x ∓ eps` is rounded down / up, and `data` widens the centre first.
    pub fn linf(x: &Tensor, eps: f64, clip: Option<(f64, f64)>, data: DataRounding) -> Result<Self> {
        if !eps.is_finite() || eps < 0.0 {
            return Err(SoundError::BadInput(format!("epsilon must be finite and non-negative, got {eps}")));
        }
        if let Some((a, b)) = clip {
            if !(a.is_finite() && b.is_finite() && a <= b) {
                return Err(SoundError::BadInput(format!("the clip interval [{a}, {b}] is not a finite interval")));
            }
        }
        let x = x.to_dtype(DType::F64)?;
        check_finite(&x, "input")?;
        let ulps = match data {
            DataRounding::Exact => 0.0,
            DataRounding::F32Ops(k) => k as f64 * 2.0 * U32,
        };
        let eps = eps * (1.0 + 2.0 * U64);
        // Slack per feature: the data's own f32 rounding (relative to |x|) plus the f64
        // rounding of x ∓ eps (relative to |x| + eps), with room, plus ETA for underflow.
        let slack = ((x.abs()? * (ulps + 4.0 * U64))? + (4.0 * U64 * eps + 2.0 * ulps * 1e-38 + ETA))?;
        let mut lo = ((&x - eps)? - &slack)?;
        let mut hi = ((&x + eps)? + &slack)?;
        if let Some((a, b)) = clip {
            lo = lo.clamp(a, b)?;
            hi = hi.clamp(a, b)?;
        }
        Ok(InputBox { lo, hi })
    }

    /// A box given by its corners (any float dtype; the values are taken as exact).
    pub fn new(lo: &Tensor, hi: &Tensor) -> Result<Self> {
        if lo.dims() != hi.dims() {
            return Err(SoundError::BadInput(format!(
                "box corners of different shapes {:?} and {:?}",
                lo.dims(),
                hi.dims()
            )));
        }
        let (lo, hi) = (lo.to_dtype(DType::F64)?, hi.to_dtype(DType::F64)?);
        check_finite(&lo, "box lower corner")?;
        check_finite(&hi, "box upper corner")?;
        let bad = lo.gt(&hi)?.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
        if bad > 0.0 {
            return Err(SoundError::BadInput(format!("{bad} box features have lo > hi")));
        }
        Ok(InputBox { lo, hi })
    }

    /// The box the deployed f32 network reads: every real input `x'` of this box reaches it as
    /// `fl32(x')`, which lies within one f32 rounding of `x'` (rounding is monotone, so a clip
    /// to representable bounds like [0, 1] is kept; widening beyond it only loosens the bound).
    pub fn widened_for_f32(&self) -> Result<Self> {
        let w = |t: &Tensor| -> Result<Tensor> { Ok(((t.abs()? * (1.01 * U32))? + 1.5e-45)?) };
        Ok(InputBox { lo: (&self.lo - w(&self.lo)?)?, hi: (&self.hi + w(&self.hi)?)? })
    }

    /// Number of boxes (the batch).
    pub fn batch(&self) -> usize {
        self.lo.dims().first().copied().unwrap_or(0)
    }
}

/// An error naming `what` when `t` holds NaN or an infinity.
pub(crate) fn check_finite(t: &Tensor, what: &str) -> Result<()> {
    let v = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    match v.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(i) => Err(SoundError::BadInput(format!("{what} holds a non-finite value ({}) at flat index {i}", v[i]))),
    }
}
