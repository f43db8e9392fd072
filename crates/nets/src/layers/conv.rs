use crate::{layer::single_input as single, param, spec::LayerSpec, Layer};
use candle_core::{Result as CResult, Tensor, Var};
use dual_core::{DualError, DualNode, IntervalRows, Result as DResult};
use dual_layers::DualConv2d;

/// 2-d convolution, weight `[c_out, c_in, k, k]`.
pub struct Conv2d {
    pub weight: Var,
    pub bias: Option<Var>,
    pub stride: usize,
    pub padding: usize,
}

impl Layer for Conv2d {
    fn spec(&self) -> LayerSpec {
        let d = self.weight.dims();
        LayerSpec::Conv2d {
            in_channels: d[1],
            out_channels: d[0],
            kernel_size: d[2],
            stride: self.stride,
            padding: self.padding,
            bias: self.bias.is_some(),
        }
    }
    fn forward(&self, xs: &[Option<&Tensor>]) -> CResult<Tensor> {
        // The dual layers' gemm convolution and per-channel bias op (Candle's own conv2d and
        // broadcast add off the CPU or in other dtypes): the clean pass, the training loss and
        // the attacks run the same kernels as the bounds.
        let y = dual_layers::kernels::conv2d_fast(single(xs)?, &param(&self.weight), self.stride, self.padding)?;
        match &self.bias {
            Some(b) => dual_layers::kernels::add_channel_bias(&y, &param(b)),
            None => Ok(y),
        }
    }
    fn dual(&self, xs: &[Option<&Tensor>]) -> DResult<DualNode> {
        let x = single(xs)?;
        let (_, _, h, w) =
            x.dims4().map_err(|_| DualError::shape(format!("Conv2d needs a 4-d input, got {:?}", x.dims())))?;
        Ok(DualNode::Affine(Box::new(DualConv2d::new(
            param(&self.weight),
            self.bias.as_ref().map(param),
            self.stride,
            self.padding,
            (h, w),
        )?)))
    }
    fn rows(&self, in_shape: &[usize]) -> Option<DResult<Box<dyn IntervalRows>>> {
        let [_, h, w] = in_shape else { return None };
        let b = self.bias.as_ref().map(param);
        dual_layers::kernels::conv_interval_rows(
            &param(&self.weight),
            b.as_ref(),
            self.stride,
            self.padding,
            (*h, *w),
            false,
        )
    }
    fn params(&self) -> Vec<(String, Var)> {
        let mut v = vec![("weight".to_string(), self.weight.clone())];
        if let Some(b) = &self.bias {
            v.push(("bias".into(), b.clone()));
        }
        v
    }
}
