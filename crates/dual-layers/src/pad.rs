//! Dual of a constant 2-d padding: `y = P x + v (1 − P 1)`, `P` the embedding of `[H, W]` into
//! `[H + top + bottom, W + left + right]` and `v` the padding value (0 for zero padding).
//! Its transpose crops (`Pᵀ ν`), its bias term is `v Σ_{padded} ν`.

use candle_core::{Tensor, D};
use dual_core::{DualError, Result, SingleInputAffine};

/// The dual of Pad on `[…, H, W]` inputs.
pub struct DualPad {
    /// `[top, left, bottom, right]`.
    pads: [usize; 4],
    value: f64,
    in_hw: (usize, usize),
}

impl DualPad {
    /// Padding `[top, left, bottom, right]` with `value` around `in_hw` inputs.
    pub fn new(pads: [usize; 4], value: f64, in_hw: (usize, usize)) -> Result<Self> {
        if !value.is_finite() {
            return Err(DualError::invalid(format!("Pad with the non-finite value {value}")));
        }
        Ok(DualPad { pads, value, in_hw })
    }

    fn embed(&self, x: &Tensor) -> Result<Tensor> {
        let [t, l, b, r] = self.pads;
        Ok(x.pad_with_zeros(D::Minus2, t, b)?.pad_with_zeros(D::Minus1, l, r)?)
    }

    /// `1 − P 1` on the output grid, `[H', W']`.
    fn border(&self, like: &Tensor) -> Result<Tensor> {
        let ones = Tensor::ones(self.in_hw, like.dtype(), like.device())?;
        Ok(self.embed(&ones)?.affine(-1.0, 1.0)?)
    }
}

impl SingleInputAffine for DualPad {
    fn name(&self) -> String {
        format!("Pad({:?}, {})", self.pads, self.value)
    }
    fn forward(&self, x: &Tensor, with_bias: bool) -> Result<Tensor> {
        let d = x.dims();
        if d.len() < 2 || (d[d.len() - 2], d[d.len() - 1]) != self.in_hw {
            return Err(DualError::shape(format!("Pad built for {:?} inputs got shape {d:?}", self.in_hw)));
        }
        let y = self.embed(x)?;
        if with_bias && self.value != 0.0 {
            return Ok(y.broadcast_add(&(self.border(x)? * self.value)?)?);
        }
        Ok(y)
    }
    /// An embedding: `|A| r = A r`.
    fn forward_abs(&self, r: &Tensor) -> Result<Tensor> {
        SingleInputAffine::forward(self, r, false)
    }
    fn transpose(&self, nu: &Tensor) -> Result<Tensor> {
        let [t, l, _, _] = self.pads;
        Ok(nu.narrow(D::Minus2, t, self.in_hw.0)?.narrow(D::Minus1, l, self.in_hw.1)?)
    }
    fn bias_term(&self, nu: &Tensor) -> Result<Option<Tensor>> {
        if self.value == 0.0 {
            return Ok(None);
        }
        let (b, n) = (nu.dim(0)?, nu.dim(1)?);
        let masked = nu.broadcast_mul(&self.border(nu)?)?;
        Ok(Some((masked.reshape((b, n, ()))?.sum(2)? * self.value)?))
    }
    fn macs_per_column(&self, _in_numel: usize, out_numel: usize) -> usize {
        out_numel
    }
}
