//! Dual of the identity map.

use candle_core::Tensor;
use dual_core::{DualAffine, Result};

/// The identity: its own transpose, no bias.
pub struct DualIdentity;

impl DualAffine for DualIdentity {
    fn name(&self) -> String {
        "Identity".into()
    }
    fn forward(&self, xs: &[Option<&Tensor>], _with_bias: bool) -> Result<Option<Tensor>> {
        Ok(xs.first().copied().flatten().cloned())
    }
    fn forward_abs(&self, radii: &[Option<&Tensor>]) -> Result<Option<Tensor>> {
        Ok(radii.first().copied().flatten().cloned())
    }
    fn transpose(&self, nu: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(nu.clone())])
    }
    /// An elementwise map: one multiply-add (or copy) per element.
    fn macs_per_column(&self, _in_numels: &[Option<usize>], out_numel: usize) -> usize {
        out_numel
    }
    fn bias_term(&self, _nu: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }
}
