//! Dual of AvgPool2d: a linear map with non-negative weights.
//!
//! `y[c, o] = Σ_s w[o, s] x[c, idx(o, s)]` with `w[o, s] = 1/div(o)` on the valid slots of window
//! `o` and 0 on padding slots; `div(o) = kh kw` (PyTorch's `count_include_pad=True`) or the
//! number of valid slots (ONNX's default `count_include_pad=0`). Its transpose scatters
//! `w[o, s] ν[c, o]` back to the inputs ([`Windows::scatter`]); `|A| = A`, so intervals go
//! through `forward` unchanged.

use crate::window::Windows;
use candle_core::Tensor;
use dual_core::{Result, SingleInputAffine};

/// The dual of AvgPool2d on a fixed input size.
pub struct DualAvgPool2d {
    windows: Windows,
    /// `[O, kk]` weights.
    weights: Vec<f64>,
}

impl DualAvgPool2d {
    /// Average pooling on `in_hw` inputs; `count_include_pad` as in PyTorch.
    pub fn new(windows: Windows, count_include_pad: bool) -> Self {
        let kk = windows.slots();
        let mut weights = vec![0.0; windows.index.len()];
        for o in 0..windows.windows() {
            let valid = &windows.valid[o * kk..(o + 1) * kk];
            let div = if count_include_pad { kk } else { valid.iter().filter(|&&v| v).count() } as f64;
            for s in 0..kk {
                if valid[s] {
                    weights[o * kk + s] = 1.0 / div;
                }
            }
        }
        DualAvgPool2d { windows, weights }
    }

    fn weights(&self, like: &Tensor) -> Result<Tensor> {
        let w = Tensor::from_vec(self.weights.clone(), (self.windows.windows(), self.windows.slots()), like.device())?;
        Ok(w.to_dtype(like.dtype())?)
    }

    /// `A x` for `x` `[…, H, W]` → `[…, H', W']` (any leading dimensions).
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let g = self.windows.gather(x)?;
        let y = g.broadcast_mul(&self.weights(x)?)?.sum(g.rank() - 1)?;
        self.windows.unflatten(&y)
    }
}

impl SingleInputAffine for DualAvgPool2d {
    fn name(&self) -> String {
        self.windows.describe("AvgPool2d")
    }
    fn forward(&self, x: &Tensor, _with_bias: bool) -> Result<Tensor> {
        self.apply(x)
    }
    /// Non-negative weights: `|A| r = A r`.
    fn forward_abs(&self, r: &Tensor) -> Result<Tensor> {
        self.apply(r)
    }
    fn transpose(&self, nu: &Tensor) -> Result<Tensor> {
        let v = self.windows.flatten_out(nu)?.broadcast_mul(&self.weights(nu)?)?;
        self.windows.scatter(&v)
    }
    /// Every output reads `kk` inputs.
    fn macs_per_column(&self, _in_numel: usize, out_numel: usize) -> usize {
        out_numel * self.windows.slots()
    }
}
