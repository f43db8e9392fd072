//! Dual of a fully connected layer `ẑ = W z + b`.

use candle_core::Tensor;
use dual_core::{IntervalRows, Result, SingleInputAffine};

/// The dual of `Linear`: forward `W x (+ b)`, transpose `Wᵀ ν`, bias term `νᵀ b` (Eq. 10).
pub struct DualLinear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl DualLinear {
    /// `weight`: `[out, in]` (PyTorch layout), `bias`: `[out]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        DualLinear { weight, bias }
    }
}

impl SingleInputAffine for DualLinear {
    fn name(&self) -> String {
        let (o, i) = self.weight.dims2().unwrap_or((0, 0));
        format!("Linear({i}->{o})")
    }

    fn forward(&self, x: &Tensor, with_bias: bool) -> Result<Tensor> {
        // The hot loop: `x [B, n, in] → x Wᵀ [B, n, out]`, one product over all columns.
        let y = crate::kernels::linear_columns(x, &self.weight)?;
        match (with_bias, &self.bias) {
            (true, Some(b)) => Ok(y.broadcast_add(b)?),
            _ => Ok(y),
        }
    }

    fn transpose(&self, nu: &Tensor) -> Result<Tensor> {
        Ok(crate::kernels::linear_columns(nu, &self.weight.t()?)?)
    }

    /// `|W| r`.
    fn forward_abs(&self, r: &Tensor) -> Result<Tensor> {
        Ok(crate::kernels::linear_columns(r, &crate::kernels::abs_tracked(&self.weight)?)?)
    }

    fn interval_rows(&self) -> Option<Result<Box<dyn IntervalRows + '_>>> {
        crate::kernels::linear_interval_rows(&self.weight, self.bias.as_ref(), true)
    }

    fn bias_term(&self, nu: &Tensor) -> Result<Option<Tensor>> {
        match &self.bias {
            None => Ok(None),
            Some(b) => {
                let (bs, n, o) = nu.dims3()?;
                let t = nu.reshape((bs * n, o))?.matmul(&b.reshape((o, 1))?)?;
                Ok(Some(t.reshape((bs, n))?))
            }
        }
    }
}
