//! The convolutions of the dual network as custom ops: `conv2d`, its transpose and its kernel
//! gradient, each with a backward pass built from the others (see the table in [`super`]), on
//! rank-4 tensors or on columns `[B, n, C, H, W]` directly.

use super::gemm_conv;
use super::im2col::Geom;
use super::layout::{as_rank4, dims4, kernel_matrix, like_leading, to_rank4, view, with_leading, with_matrix_side};
use super::path::{cpu_float, note, KernelPath};
use super::sparse;
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

/// Whether the fast path applies: [`cpu_float`] tensors of rank 4.
fn fast_path(a: &Tensor, b: &Tensor) -> bool {
    cpu_float(&[a, b]) && a.rank() == 4 && b.rank() == 4
}

/// Whether columns `x` (rank > 4, leading dims that merge) can go to the ops directly.
fn fast_columns(x: &Tensor, w: &Tensor) -> bool {
    cpu_float(&[x, w]) && x.rank() > 4 && w.rank() == 4 && as_rank4(x.layout()).is_ok()
}

/// [`conv2d_fast`] on columns `[B, n, c, h, w]` (any rank ≥ 4: the leading dims are merged into
/// the batch inside the op, so no reshape enters the autograd graph) → `[B, n, o, oh, ow]`.
pub fn conv2d_columns(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    if !fast_columns(x, w) {
        let y = conv2d_fast(&to_rank4(x)?, w, stride, padding)?;
        return like_leading(&y, x);
    }
    x.apply_op2(w, Conv2dOp { stride, padding })
}

/// [`conv_transpose2d_fast`] on columns of any rank ≥ 4, like [`conv2d_columns`].
pub fn conv_transpose2d_columns(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    output_padding: usize,
) -> Result<Tensor> {
    if !fast_columns(x, w) {
        let y = conv_transpose2d_fast(&to_rank4(x)?, w, stride, padding, output_padding)?;
        return like_leading(&y, x);
    }
    x.apply_op2(w, ConvTranspose2dOp { stride, padding, output_padding: (output_padding, output_padding) })
}

/// Output size of a convolution along one axis, or an error when the kernel does not fit.
fn conv_out(len: usize, k: usize, stride: usize, padding: usize) -> Result<usize> {
    if stride == 0 {
        bail!("conv2d: stride must be positive");
    }
    match (len + 2 * padding).checked_sub(k) {
        Some(v) => Ok(v / stride + 1),
        None => bail!("conv2d: kernel {k} larger than the padded input {}", len + 2 * padding),
    }
}

/// Output size of a transposed convolution along one axis.
fn conv_transpose_out(len: usize, k: usize, stride: usize, padding: usize, output_padding: usize) -> Result<usize> {
    if stride == 0 {
        bail!("conv_transpose2d: stride must be positive");
    }
    if output_padding >= stride {
        bail!("conv_transpose2d: output padding {output_padding} must be smaller than the stride {stride}");
    }
    if len == 0 {
        bail!("conv_transpose2d: empty input");
    }
    match ((len - 1) * stride + k + output_padding).checked_sub(2 * padding) {
        Some(v) if v > 0 => Ok(v),
        _ => bail!("conv_transpose2d: padding {padding} leaves an empty output"),
    }
}

/// The output padding that makes a transposed convolution give back an input of size `len`.
fn output_padding_for(len: usize, k: usize, stride: usize, padding: usize) -> Result<usize> {
    let out = conv_out(len, k, stride, padding)?;
    Ok(len + 2 * padding - ((out - 1) * stride + k))
}

/// `conv2d(x, w)` as a custom op on `(x, w)`.
struct Conv2dOp {
    stride: usize,
    padding: usize,
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "conv2d-gemm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let full = l1;
        let l1 = &as_rank4(l1)?;
        let (n, c, h, w) = dims4(l1)?;
        let (o, c2, kh, kw) = dims4(l2)?;
        if c != c2 {
            bail!("conv2d: input has {c} channels, kernel expects {c2}");
        }
        let (oh, ow) = (conv_out(h, kh, self.stride, self.padding)?, conv_out(w, kw, self.stride, self.padding)?);
        let g = Geom { n, c, h, w, o, kh, kw, stride: self.stride, pad: self.padding, oh, ow };
        // Each input element costs about `macs_per_image / in_len` multiply-adds in the gemm.
        let limit = sparse::density_limit(g.macs_per_image() / g.in_len().max(1));
        let out = dispatch!("conv2d", s1, s2; |x, k| {
            let xv = view(x, l1);
            if !g.is_pointwise() && sparse::mostly_zero([n, c, h, w], xv, limit) {
                note("conv2d", KernelPath::Sparse);
                sparse::conv2d_forward(&g, xv, &kernel_matrix(k, l2))
            } else {
                note("conv2d", KernelPath::Dense);
                gemm_conv::conv2d_forward(&g, xv, &kernel_matrix(k, l2))
            }
        });
        Ok((out, with_leading(full, (o, oh, ow))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (x4, g4) = (to_rank4(x)?, to_rank4(grad)?);
        let (_, _, h, wd) = x4.dims4()?;
        let (_, _, kh, kw) = w.dims4()?;
        let dx = if x.track_op() {
            let op_h = output_padding_for(h, kh, self.stride, self.padding)?;
            let op_w = output_padding_for(wd, kw, self.stride, self.padding)?;
            let dx = conv_transpose2d_fast_hw(&g4, w, self.stride, self.padding, (op_h, op_w))?;
            Some(like_leading(&dx, x)?)
        } else {
            None
        };
        let dw =
            if w.track_op() { Some(conv2d_weight_grad(&x4, &g4, (kh, kw), self.stride, self.padding)?) } else { None };
        Ok((dx, dw))
    }
}

/// `conv_transpose2d(x, w)` as a custom op on `(x, w)`, with a per-axis output padding.
struct ConvTranspose2dOp {
    stride: usize,
    padding: usize,
    output_padding: (usize, usize),
}

impl CustomOp2 for ConvTranspose2dOp {
    fn name(&self) -> &'static str {
        "conv-transpose2d-gemm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let full = l1;
        let l1 = &as_rank4(l1)?;
        let (n, o, oh, ow) = dims4(l1)?;
        let (o2, c, kh, kw) = dims4(l2)?;
        if o != o2 {
            bail!("conv_transpose2d: input has {o} channels, kernel expects {o2}");
        }
        let (s, p) = (self.stride, self.padding);
        let h = conv_transpose_out(oh, kh, s, p, self.output_padding.0)?;
        let w = conv_transpose_out(ow, kw, s, p, self.output_padding.1)?;
        let g = Geom { n, c, h, w, o, kh, kw, stride: s, pad: p, oh, ow };
        let limit = sparse::density_limit(g.k());
        let out = dispatch!("conv_transpose2d", s1, s2; |x, k| {
            let k = kernel_matrix(k, l2);
            if sparse::mostly_zero([n, o, oh, ow], view(x, l1), limit) {
                note("conv_transpose2d", KernelPath::Sparse);
                sparse::conv2d_backward_data(&g, view(x, l1), &k)
            } else {
                note("conv_transpose2d", KernelPath::Dense);
                with_matrix_side(x, l1, |y, ps| gemm_conv::conv2d_backward_data(&g, y, ps, &k))
            }
        });
        Ok((out, with_leading(full, (c, h, w))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (x4, g4) = (to_rank4(x)?, to_rank4(grad)?);
        let (_, _, kh, kw) = w.dims4()?;
        let dx =
            if x.track_op() { Some(like_leading(&conv2d_fast(&g4, w, self.stride, self.padding)?, x)?) } else { None };
        let dw =
            if w.track_op() { Some(conv2d_weight_grad(&g4, &x4, (kh, kw), self.stride, self.padding)?) } else { None };
        Ok((dx, dw))
    }
}

/// The kernel gradient of `conv2d`: `(x, gy) ↦ dW` as a custom op.
struct Conv2dWeightGradOp {
    kernel: (usize, usize),
    stride: usize,
    padding: usize,
}

impl CustomOp2 for Conv2dWeightGradOp {
    fn name(&self) -> &'static str {
        "conv2d-weight-grad-gemm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = dims4(l1)?;
        let (n2, o, oh, ow) = dims4(l2)?;
        let (kh, kw) = self.kernel;
        let (s, p) = (self.stride, self.padding);
        if n != n2 {
            bail!("conv2d weight gradient: batch {n} of the input differs from batch {n2} of the gradient");
        }
        if (oh, ow) != (conv_out(h, kh, s, p)?, conv_out(w, kw, s, p)?) {
            bail!("conv2d weight gradient: gradient of size {oh}x{ow} does not match an input of size {h}x{w}");
        }
        let g = Geom { n, c, h, w, o, kh, kw, stride: s, pad: p, oh, ow };
        let limit = sparse::density_limit(g.k());
        let out = dispatch!("conv2d weight gradient", s1, s2; |x, gy| {
            if sparse::mostly_zero([n, o, oh, ow], view(gy, l2), limit) {
                note("conv2d_weight_grad", KernelPath::Sparse);
                sparse::conv2d_backward_weight(&g, view(x, l1), view(gy, l2))
            } else {
                note("conv2d_weight_grad", KernelPath::Dense);
                with_matrix_side(gy, l2, |gyv, ps| gemm_conv::conv2d_backward_weight(&g, view(x, l1), gyv, ps))
            }
        });
        Ok((out, Shape::from((o, c, kh, kw))))
    }

    fn bwd(&self, x: &Tensor, gy: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // dW is bilinear in (x, gy): dW = <gy, conv2d(x, ·)>.
        let (_, _, h, w) = x.dims4()?;
        let (kh, kw) = self.kernel;
        let (s, p) = (self.stride, self.padding);
        let dx = if x.track_op() {
            let op = (output_padding_for(h, kh, s, p)?, output_padding_for(w, kw, s, p)?);
            Some(conv_transpose2d_fast_hw(gy, grad, s, p, op)?)
        } else {
            None
        };
        let dgy = if gy.track_op() { Some(conv2d_fast(x, grad, s, p)?) } else { None };
        Ok((dx, dgy))
    }
}

/// `conv2d(x, w)` with stride and zero padding (dilation 1, one group): `x` `[n, c, h, w]`,
/// `w` `[o, c, kh, kw]` → `[n, o, oh, ow]`. Same result as Candle's
/// `x.conv2d(w, padding, stride, 1, 1)`, with gemm speed on the CPU.
pub fn conv2d_fast(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    if !fast_path(x, w) {
        note("conv2d", KernelPath::Candle);
        return x.conv2d(w, padding, stride, 1, 1);
    }
    x.apply_op2(w, Conv2dOp { stride, padding })
}

/// `conv_transpose2d(x, w)`: `x` `[n, o, oh, ow]`, `w` `[o, c, kh, kw]` (the kernel of the
/// `conv2d` it transposes) → `[n, c, h, w]` with `h = (oh − 1)·stride + kh − 2·padding +
/// output_padding`. Same result as Candle's `x.conv_transpose2d(w, padding, output_padding,
/// stride, 1)`; `output_padding` must be smaller than `stride`.
pub fn conv_transpose2d_fast(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    output_padding: usize,
) -> Result<Tensor> {
    conv_transpose2d_fast_hw(x, w, stride, padding, (output_padding, output_padding))
}

/// [`conv_transpose2d_fast`] with separate output paddings for height and width.
pub fn conv_transpose2d_fast_hw(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    output_padding: (usize, usize),
) -> Result<Tensor> {
    if !fast_path(x, w) {
        if output_padding.0 != output_padding.1 {
            bail!("conv_transpose2d: per-axis output padding is only supported on the CPU in f32/f64");
        }
        note("conv_transpose2d", KernelPath::Candle);
        return x.conv_transpose2d(w, padding, output_padding.0, stride, 1);
    }
    x.apply_op2(w, ConvTranspose2dOp { stride, padding, output_padding })
}

/// The kernel gradient of `y = conv2d(x, w)` for the output gradient `gy`:
/// `dW[o, c, i, j] = Σ_{n, y, x} gy[n, o, y, x] · x_pad[n, c, y·stride + i, x·stride + j]`, shape
/// `[o, c, kh, kw]`. Differentiable in both arguments.
pub fn conv2d_weight_grad(
    x: &Tensor,
    gy: &Tensor,
    kernel: (usize, usize),
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    if !fast_path(x, gy) {
        // Candle's own formula: a convolution over the batch with the gradient as the kernel.
        note("conv2d_weight_grad", KernelPath::Candle);
        let gw = x.transpose(0, 1)?.conv2d(&gy.transpose(0, 1)?, padding, 1, stride, 1)?.transpose(0, 1)?;
        return gw.narrow(2, 0, kernel.0)?.narrow(3, 0, kernel.1);
    }
    x.apply_op2(gy, Conv2dWeightGradOp { kernel, stride, padding })
}
