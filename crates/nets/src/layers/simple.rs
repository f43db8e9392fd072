use crate::{layer::single_input as single, spec::LayerSpec, Layer};
use candle_core::{Result as CResult, Tensor, Var};
use dual_core::{DualNode, IntervalRows, Result as DResult};
use dual_layers::{DualIdentity, DualReLU, DualReshape, DualSmooth, Smooth};

/// Rectified linear unit.
pub struct ReLU;

impl Layer for ReLU {
    fn spec(&self) -> LayerSpec {
        LayerSpec::ReLU
    }
    fn forward(&self, xs: &[Option<&Tensor>]) -> CResult<Tensor> {
        single(xs)?.relu()
    }
    fn dual(&self, _xs: &[Option<&Tensor>]) -> DResult<DualNode> {
        Ok(DualNode::Activation(Box::new(DualReLU)))
    }
    fn rows(&self, _in_shape: &[usize]) -> Option<DResult<Box<dyn IntervalRows>>> {
        Some(Ok(dual_layers::kernels::relu_interval_rows()))
    }
    fn params(&self) -> Vec<(String, Var)> {
        Vec::new()
    }
}

/// Flatten all but the batch dimension.
pub struct Flatten;

impl Layer for Flatten {
    fn spec(&self) -> LayerSpec {
        LayerSpec::Flatten
    }
    fn forward(&self, xs: &[Option<&Tensor>]) -> CResult<Tensor> {
        single(xs)?.flatten_from(1)
    }
    fn dual(&self, xs: &[Option<&Tensor>]) -> DResult<DualNode> {
        let x = single(xs)?;
        Ok(DualNode::Affine(Box::new(DualReshape::flatten(x.dims()[1..].to_vec()))))
    }
    fn rows(&self, in_shape: &[usize]) -> Option<DResult<Box<dyn IntervalRows>>> {
        Some(Ok(dual_layers::kernels::reshape_interval_rows(in_shape, &[in_shape.iter().product()])))
    }
    fn params(&self) -> Vec<(String, Var)> {
        Vec::new()
    }
}

/// The identity.
pub struct Identity;

impl Layer for Identity {
    fn spec(&self) -> LayerSpec {
        LayerSpec::Identity
    }
    fn forward(&self, xs: &[Option<&Tensor>]) -> CResult<Tensor> {
        Ok(single(xs)?.clone())
    }
    fn dual(&self, _xs: &[Option<&Tensor>]) -> DResult<DualNode> {
        Ok(DualNode::Affine(Box::new(DualIdentity)))
    }
    fn params(&self) -> Vec<(String, Var)> {
        Vec::new()
    }
}

/// Sigmoid, `1 / (1 + e^{−x})`.
pub struct Sigmoid;

impl Layer for Sigmoid {
    fn spec(&self) -> LayerSpec {
        LayerSpec::Sigmoid
    }
    fn forward(&self, xs: &[Option<&Tensor>]) -> CResult<Tensor> {
        Smooth::Sigmoid.apply(single(xs)?)
    }
    fn dual(&self, _xs: &[Option<&Tensor>]) -> DResult<DualNode> {
        Ok(DualNode::Activation(Box::new(DualSmooth(Smooth::Sigmoid))))
    }
    fn params(&self) -> Vec<(String, Var)> {
        Vec::new()
    }
}

/// Hyperbolic tangent.
pub struct Tanh;

impl Layer for Tanh {
    fn spec(&self) -> LayerSpec {
        LayerSpec::Tanh
    }
    fn forward(&self, xs: &[Option<&Tensor>]) -> CResult<Tensor> {
        single(xs)?.tanh()
    }
    fn dual(&self, _xs: &[Option<&Tensor>]) -> DResult<DualNode> {
        Ok(DualNode::Activation(Box::new(DualSmooth(Smooth::Tanh))))
    }
    fn params(&self) -> Vec<(String, Var)> {
        Vec::new()
    }
}
