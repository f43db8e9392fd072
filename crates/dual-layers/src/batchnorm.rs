//! Dual of BatchNorm2d, an affine map per channel once its statistics are fixed.

use candle_core::{Tensor, D};
use dual_core::{DualError, Result, SingleInputAffine};

/// `y = s ⊙ x + t` per channel with `s = γ / √(σ² + ε)` and `t = β - μ s`.
///
/// In eval mode μ, σ² are the running statistics; in batch-statistics mode they are the mean and
/// (biased) variance of the nominal batch at the layer's input, as the layer computes them in
/// training. Either way the layer is affine for the bound, and its transpose is `s ⊙ ν`.
pub struct DualBatchNorm2d {
    scale: Tensor,
    shift: Tensor,
}

impl DualBatchNorm2d {
    /// From fixed statistics.
    pub fn from_stats(gamma: &Tensor, beta: &Tensor, mean: &Tensor, var: &Tensor, eps: f64) -> Result<Self> {
        let scale = gamma.broadcast_div(&(var + eps)?.sqrt()?)?;
        let shift = (beta - mean.broadcast_mul(&scale)?)?;
        Ok(DualBatchNorm2d { scale, shift })
    }

    /// With the statistics of the nominal batch `x` (`[B, C, H, W]`) at the layer's input.
    pub fn from_batch(gamma: &Tensor, beta: &Tensor, x: &Tensor, eps: f64) -> Result<Self> {
        let (_, c, _, _) =
            x.dims4().map_err(|_| DualError::shape(format!("BatchNorm2d needs a 4-d input, got {:?}", x.dims())))?;
        let xc = x.transpose(0, 1)?.reshape((c, ()))?;
        let mean = xc.mean(D::Minus1)?;
        let var = xc.broadcast_sub(&mean.unsqueeze(1)?)?.sqr()?.mean(D::Minus1)?;
        Self::from_stats(gamma, beta, &mean, &var, eps)
    }

    fn per_channel(&self, t: &Tensor) -> Result<Tensor> {
        let c = t.dim(0)?;
        Ok(t.reshape((1, 1, c, 1, 1))?)
    }
}

impl SingleInputAffine for DualBatchNorm2d {
    fn name(&self) -> String {
        format!("BatchNorm2d({})", self.scale.dim(0).unwrap_or(0))
    }
    fn forward(&self, x: &Tensor, with_bias: bool) -> Result<Tensor> {
        let y = x.broadcast_mul(&self.per_channel(&self.scale)?)?;
        if with_bias {
            Ok(y.broadcast_add(&self.per_channel(&self.shift)?)?)
        } else {
            Ok(y)
        }
    }
    /// `|s| ⊙ r` per channel.
    fn forward_abs(&self, r: &Tensor) -> Result<Tensor> {
        Ok(r.broadcast_mul(&self.per_channel(&self.scale.abs()?)?)?)
    }
    fn transpose(&self, nu: &Tensor) -> Result<Tensor> {
        Ok(nu.broadcast_mul(&self.per_channel(&self.scale)?)?)
    }
    /// An elementwise map: one multiply-add (or copy) per element.
    fn macs_per_column(&self, _in_numel: usize, out_numel: usize) -> usize {
        out_numel
    }
    fn bias_term(&self, nu: &Tensor) -> Result<Option<Tensor>> {
        let (b, n, c, h, w) = nu.dims5()?;
        let per_channel = nu.reshape((b * n, c, h * w))?.sum(2)?;
        let t = per_channel.matmul(&self.shift.reshape((c, 1))?)?;
        Ok(Some(t.reshape((b, n))?))
    }
}
