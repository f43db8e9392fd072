//! Dual of Flatten (any reshape that keeps the batch dimension).

use candle_core::Tensor;
use dual_core::{IntervalRows, Result, SingleInputAffine};

/// Reshape between `in_shape` and `out_shape` (both without batch); its transpose reshapes back.
pub struct DualReshape {
    in_shape: Vec<usize>,
    out_shape: Vec<usize>,
}

impl DualReshape {
    /// A reshape from `in_shape` to `out_shape` (same number of elements).
    pub fn new(in_shape: Vec<usize>, out_shape: Vec<usize>) -> Self {
        DualReshape { in_shape, out_shape }
    }
    /// Flatten of an input shaped `in_shape`.
    pub fn flatten(in_shape: Vec<usize>) -> Self {
        let n = in_shape.iter().product();
        DualReshape { in_shape, out_shape: vec![n] }
    }
}

fn reshape_columns(x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let d = x.dims();
    let mut s = vec![d[0], d[1]];
    s.extend_from_slice(shape);
    Ok(x.reshape(s)?)
}

impl SingleInputAffine for DualReshape {
    fn name(&self) -> String {
        format!("Reshape({:?}->{:?})", self.in_shape, self.out_shape)
    }
    fn forward(&self, x: &Tensor, _with_bias: bool) -> Result<Tensor> {
        reshape_columns(x, &self.out_shape)
    }
    fn interval_rows(&self) -> Option<Result<Box<dyn IntervalRows + '_>>> {
        Some(Ok(crate::kernels::reshape_interval_rows(&self.in_shape, &self.out_shape)))
    }

    /// A permutation: `|A| r = A r`.
    fn forward_abs(&self, r: &Tensor) -> Result<Tensor> {
        reshape_columns(r, &self.out_shape)
    }
    fn transpose(&self, nu: &Tensor) -> Result<Tensor> {
        reshape_columns(nu, &self.in_shape)
    }
    /// An elementwise map: one multiply-add (or copy) per element.
    fn macs_per_column(&self, _in_numel: usize, out_numel: usize) -> usize {
        out_numel
    }
}
