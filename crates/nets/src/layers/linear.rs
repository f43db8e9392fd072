use crate::{layer::single_input as single, param, spec::LayerSpec, Layer};
use candle_core::{Result as CResult, Tensor, Var};
use dual_core::{DualNode, IntervalRows, Result as DResult};
use dual_layers::DualLinear;

/// `y = x Wᵀ + b` with `W` `[out, in]`.
pub struct Linear {
    pub weight: Var,
    pub bias: Option<Var>,
}

impl Layer for Linear {
    fn spec(&self) -> LayerSpec {
        let (o, i) = self.weight.dims2().unwrap_or((0, 0));
        LayerSpec::Linear { in_features: i, out_features: o, bias: self.bias.is_some() }
    }
    fn forward(&self, xs: &[Option<&Tensor>]) -> CResult<Tensor> {
        let y = single(xs)?.broadcast_matmul(&param(&self.weight).t()?)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&param(b)),
            None => Ok(y),
        }
    }
    fn dual(&self, _xs: &[Option<&Tensor>]) -> DResult<DualNode> {
        Ok(DualNode::Affine(Box::new(DualLinear::new(param(&self.weight), self.bias.as_ref().map(param)))))
    }
    fn rows(&self, in_shape: &[usize]) -> Option<DResult<Box<dyn IntervalRows>>> {
        if in_shape.len() != 1 {
            return None;
        }
        let b = self.bias.as_ref().map(param);
        dual_layers::kernels::linear_interval_rows(&param(&self.weight), b.as_ref(), false)
    }
    fn params(&self) -> Vec<(String, Var)> {
        let mut v = vec![("weight".to_string(), self.weight.clone())];
        if let Some(b) = &self.bias {
            v.push(("bias".into(), b.clone()));
        }
        v
    }
}
