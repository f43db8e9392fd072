//! Dual of a fully connected layer `ẑ = W z + b`.

use candle_core::Tensor;
use dual_core::{DualAffine, Result};

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

impl DualAffine for DualLinear {
    fn name(&self) -> String {
        let (o, i) = self.weight.dims2().unwrap_or((0, 0));
        format!("Linear({i}->{o})")
    }

    fn forward(&self, xs: &[Option<&Tensor>], with_bias: bool) -> Result<Option<Tensor>> {
        let y = match xs.first().copied().flatten() {
            // The hot loop: `x [B, n, in] → x Wᵀ [B, n, out]`, one product over all columns.
            Some(x) => Some(crate::kernels::linear_columns(x, &self.weight)?),
            None => None,
        };
        match (y, with_bias, &self.bias) {
            (Some(y), true, Some(b)) => Ok(Some(y.broadcast_add(b)?)),
            (y, _, _) => Ok(y),
        }
    }

    fn transpose(&self, nu: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(crate::kernels::linear_columns(nu, &self.weight.t()?)?)])
    }

    /// `|W| r`.
    fn forward_abs(&self, radii: &[Option<&Tensor>]) -> Result<Option<Tensor>> {
        match radii.first().copied().flatten() {
            Some(r) => Ok(Some(crate::kernels::linear_columns(r, &crate::kernels::abs_tracked(&self.weight)?)?)),
            None => Ok(None),
        }
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
