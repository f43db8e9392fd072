//! Dual of the identity map.

use candle_core::Tensor;
use dual_core::{Result, SingleInputAffine};

/// The identity: its own transpose, no bias.
pub struct DualIdentity;

impl SingleInputAffine for DualIdentity {
    fn name(&self) -> String {
        "Identity".into()
    }
    fn forward(&self, x: &Tensor, _with_bias: bool) -> Result<Tensor> {
        Ok(x.clone())
    }
    fn forward_abs(&self, r: &Tensor) -> Result<Tensor> {
        Ok(r.clone())
    }
    fn transpose(&self, nu: &Tensor) -> Result<Tensor> {
        Ok(nu.clone())
    }
    /// An elementwise map: one multiply-add (or copy) per element.
    fn macs_per_column(&self, _in_numel: usize, out_numel: usize) -> usize {
        out_numel
    }
}
