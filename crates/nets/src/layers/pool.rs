//! Pooling, padding and reshaping layers: MaxPool2d, AvgPool2d, Pad, Reshape. Their windows are
//! fixed by the input's height and width, read from the input at every call.

use crate::{layer::single_input as single, spec::LayerSpec, Layer};
use candle_core::{Result as CResult, Tensor, Var};
use dual_core::{DualError, DualNode, Result as DResult};
use dual_layers::{DualAvgPool2d, DualMaxPool2d, DualPad, DualReshape, Windows};

/// Height and width of a `[B, …, H, W]` input.
fn hw(x: &Tensor) -> DResult<(usize, usize)> {
    let d = x.dims();
    if d.len() < 3 {
        return Err(DualError::shape(format!("a 2-d pooling or padding layer needs [B, .., H, W] inputs, got {d:?}")));
    }
    Ok((d[d.len() - 2], d[d.len() - 1]))
}

fn cerr(e: DualError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// 2-d max pooling over `kernel` windows with `stride`; the padding
/// `[top, left, bottom, right]` never wins the max (PyTorch's `-inf` padding).
#[derive(Debug, Clone, Copy)]
pub struct MaxPool2d {
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Strides.
    pub stride: [usize; 2],
    /// `[top, left, bottom, right]`.
    pub padding: [usize; 4],
}

impl MaxPool2d {
    fn dual_of(&self, x: &Tensor) -> DResult<DualMaxPool2d> {
        let w = Windows::new(hw(x)?, self.kernel.into(), self.stride.into(), self.padding)?;
        Ok(DualMaxPool2d::new(w))
    }
}

impl Layer for MaxPool2d {
    fn spec(&self) -> LayerSpec {
        LayerSpec::MaxPool2d { kernel_size: self.kernel, stride: self.stride, padding: self.padding }
    }
    fn forward(&self, xs: &[Option<&Tensor>]) -> CResult<Tensor> {
        let x = single(xs)?;
        self.dual_of(x).and_then(|d| d.apply(x)).map_err(cerr)
    }
    fn dual(&self, xs: &[Option<&Tensor>]) -> DResult<DualNode> {
        Ok(DualNode::Activation(Box::new(self.dual_of(single(xs)?)?)))
    }
    fn params(&self) -> Vec<(String, Var)> {
        Vec::new()
    }
}

/// 2-d average pooling; `count_include_pad` as in PyTorch (divide by the kernel size, or by the
/// number of window elements inside the input).
#[derive(Debug, Clone, Copy)]
pub struct AvgPool2d {
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Strides.
    pub stride: [usize; 2],
    /// `[top, left, bottom, right]` zero padding.
    pub padding: [usize; 4],
    /// Whether padded elements count in the divisor.
    pub count_include_pad: bool,
}

impl AvgPool2d {
    fn dual_of(&self, x: &Tensor) -> DResult<DualAvgPool2d> {
        let w = Windows::new(hw(x)?, self.kernel.into(), self.stride.into(), self.padding)?;
        Ok(DualAvgPool2d::new(w, self.count_include_pad))
    }
}

impl Layer for AvgPool2d {
    fn spec(&self) -> LayerSpec {
        LayerSpec::AvgPool2d {
            kernel_size: self.kernel,
            stride: self.stride,
            padding: self.padding,
            count_include_pad: self.count_include_pad,
        }
    }
    fn forward(&self, xs: &[Option<&Tensor>]) -> CResult<Tensor> {
        let x = single(xs)?;
        self.dual_of(x).and_then(|d| d.apply(x)).map_err(cerr)
    }
    fn dual(&self, xs: &[Option<&Tensor>]) -> DResult<DualNode> {
        Ok(DualNode::Affine(Box::new(self.dual_of(single(xs)?)?)))
    }
    fn params(&self) -> Vec<(String, Var)> {
        Vec::new()
    }
}

/// Constant padding of the last two dimensions by `[top, left, bottom, right]` with `value`.
#[derive(Debug, Clone, Copy)]
pub struct Pad {
    /// `[top, left, bottom, right]`.
    pub pads: [usize; 4],
    /// The padding value (0: zero padding).
    pub value: f64,
}

impl Pad {
    fn dual_of(&self, x: &Tensor) -> DResult<DualPad> {
        DualPad::new(self.pads, self.value, hw(x)?)
    }
}

impl Layer for Pad {
    fn spec(&self) -> LayerSpec {
        LayerSpec::Pad { pads: self.pads, value: self.value }
    }
    fn forward(&self, xs: &[Option<&Tensor>]) -> CResult<Tensor> {
        use dual_core::DualAffine;
        let x = single(xs)?;
        let d = self.dual_of(x).map_err(cerr)?;
        let y = d.forward(&[Some(&x.unsqueeze(1)?)], true).map_err(cerr)?;
        y.expect("an input gives an output").squeeze(1)
    }
    fn dual(&self, xs: &[Option<&Tensor>]) -> DResult<DualNode> {
        Ok(DualNode::Affine(Box::new(self.dual_of(single(xs)?)?)))
    }
    fn params(&self) -> Vec<(String, Var)> {
        Vec::new()
    }
}

/// Reshape everything but the batch dimension to `shape` (e.g. a flat vector back to
/// `[C, H, W]`).
#[derive(Debug, Clone)]
pub struct Reshape {
    /// The target shape without the batch dimension.
    pub shape: Vec<usize>,
}

impl Layer for Reshape {
    fn spec(&self) -> LayerSpec {
        LayerSpec::Reshape { shape: self.shape.clone() }
    }
    fn forward(&self, xs: &[Option<&Tensor>]) -> CResult<Tensor> {
        let x = single(xs)?;
        let mut s = vec![x.dim(0)?];
        s.extend_from_slice(&self.shape);
        x.reshape(s)
    }
    fn dual(&self, xs: &[Option<&Tensor>]) -> DResult<DualNode> {
        let x = single(xs)?;
        let in_shape = x.dims()[1..].to_vec();
        if in_shape.iter().product::<usize>() != self.shape.iter().product::<usize>() {
            return Err(DualError::shape(format!("cannot reshape {in_shape:?} to {:?}", self.shape)));
        }
        Ok(DualNode::Affine(Box::new(DualReshape::new(in_shape, self.shape.clone()))))
    }
    fn params(&self) -> Vec<(String, Var)> {
        Vec::new()
    }
}
