//! Dual of a 2-d convolution.

use candle_core::Tensor;
use dual_core::{DualError, IntervalRows, Result, SingleInputAffine, WindowTranspose};

/// The dual of `Conv2d`: forward is the convolution applied to every column; its transpose is the
/// transposed convolution with the output padding that restores the input size (Eq. 10).
pub struct DualConv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
    output_padding: usize,
    in_hw: (usize, usize),
}

impl DualConv2d {
    /// `weight`: `[c_out, c_in, k_h, k_w]`, `bias`: `[c_out]`, `in_hw`: the input's height and
    /// width (needed so the transpose gives back exactly that size).
    pub fn new(
        weight: Tensor,
        bias: Option<Tensor>,
        stride: usize,
        padding: usize,
        in_hw: (usize, usize),
    ) -> Result<Self> {
        let (_, _, kh, kw) = weight.dims4()?;
        let out = |i: usize, k: usize| -> Result<usize> {
            (i + 2 * padding)
                .checked_sub(k)
                .map(|v| v / stride + 1)
                .ok_or_else(|| DualError::shape(format!("kernel {k} larger than padded input {}", i + 2 * padding)))
        };
        let (oh, ow) = (out(in_hw.0, kh)?, out(in_hw.1, kw)?);
        let op_h = in_hw.0 + 2 * padding - ((oh - 1) * stride + kh);
        let op_w = in_hw.1 + 2 * padding - ((ow - 1) * stride + kw);
        if op_h != op_w {
            return Err(DualError::Unsupported(format!(
                "Conv2d on a {}x{} input needs different output paddings per axis in its transpose",
                in_hw.0, in_hw.1
            )));
        }
        Ok(DualConv2d { weight, bias, stride, padding, output_padding: op_h, in_hw })
    }

    /// The hot loop: convolution of every column.
    fn conv_columns(&self, x: &Tensor) -> Result<Tensor> {
        Ok(crate::kernels::conv2d_columns(x, &self.weight, self.stride, self.padding)?)
    }

    /// The hot loop of the transpose: transposed convolution of every column.
    fn conv_transpose_columns(&self, nu: &Tensor) -> Result<Tensor> {
        Ok(crate::kernels::conv_transpose2d_columns(nu, &self.weight, self.stride, self.padding, self.output_padding)?)
    }
}

impl SingleInputAffine for DualConv2d {
    fn name(&self) -> String {
        let d = self.weight.dims();
        format!("Conv2d({}->{}, k{}, s{}, p{})", d[1], d[0], d[2], self.stride, self.padding)
    }

    fn forward(&self, x: &Tensor, with_bias: bool) -> Result<Tensor> {
        let y = self.conv_columns(x)?;
        match (with_bias, &self.bias) {
            // One op whose bias gradient reduces along memory order (`kernels::add_channel_bias`).
            (true, Some(b)) => Ok(crate::kernels::add_channel_bias(&y, b)?),
            _ => Ok(y),
        }
    }

    /// The convolution of `r` with `|W|`.
    fn forward_abs(&self, r: &Tensor) -> Result<Tensor> {
        Ok(crate::kernels::conv2d_columns(r, &crate::kernels::abs_tracked(&self.weight)?, self.stride, self.padding)?)
    }

    fn transpose(&self, nu: &Tensor) -> Result<Tensor> {
        self.conv_transpose_columns(nu)
    }

    fn interval_rows(&self) -> Option<Result<Box<dyn IntervalRows + '_>>> {
        crate::kernels::conv_interval_rows(
            &self.weight,
            self.bias.as_ref(),
            self.stride,
            self.padding,
            self.in_hw,
            true,
        )
    }

    /// Every output element reads `c_in · k_h · k_w` inputs.
    fn macs_per_column(&self, _in_numel: usize, out_numel: usize) -> usize {
        let d = self.weight.dims();
        out_numel * d[1] * d[2] * d[3]
    }

    /// The full transposed convolution of the window (no padding cropped, no output padding):
    /// `h' = (h − 1)·s + k`, origin `at·s − p`.
    fn transpose_window(&self, g: &Tensor, at: (isize, isize)) -> Option<Result<WindowTranspose>> {
        if g.rank() != 5 {
            return None;
        }
        let f = || -> Result<WindowTranspose> {
            let gin = crate::kernels::conv_transpose2d_columns(g, &self.weight, self.stride, 0, 0)?;
            let (s, p) = (self.stride as isize, self.padding as isize);
            Ok(WindowTranspose { g: gin, origin: (at.0 * s - p, at.1 * s - p), bias: self.bias_term(g)? })
        };
        Some(f())
    }

    fn bias_term(&self, nu: &Tensor) -> Result<Option<Tensor>> {
        match &self.bias {
            None => Ok(None),
            Some(b) => {
                let (bs, n, c, h, w) = nu.dims5()?;
                let per_channel = nu.reshape((bs * n, c, h * w))?.sum(2)?;
                let t = per_channel.matmul(&b.reshape((c, 1))?)?;
                Ok(Some(t.reshape((bs, n))?))
            }
        }
    }
}
