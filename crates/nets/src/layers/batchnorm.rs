use crate::{
    layer::single_input as single,
    param,
    spec::{BatchNormMode, LayerSpec},
    Layer,
};
use candle_core::{Result as CResult, Tensor, Var, D};
use dual_core::{DualNode, Result as DResult};
use dual_layers::DualBatchNorm2d;

/// BatchNorm2d: `γ (x - μ) / √(σ² + ε) + β` per channel, with running statistics (eval mode) or
/// the statistics of the batch (batch-statistics mode).
pub struct BatchNorm2d {
    pub weight: Var,
    pub bias: Var,
    pub running_mean: Var,
    pub running_var: Var,
    pub eps: f64,
    pub mode: BatchNormMode,
}

impl BatchNorm2d {
    fn stats(&self, x: &Tensor) -> CResult<(Tensor, Tensor)> {
        match self.mode {
            BatchNormMode::Eval => Ok((param(&self.running_mean), param(&self.running_var))),
            BatchNormMode::BatchStats => {
                let c = x.dim(1)?;
                let xc = x.transpose(0, 1)?.reshape((c, ()))?;
                let mean = xc.mean(D::Minus1)?;
                let var = xc.broadcast_sub(&mean.unsqueeze(1)?)?.sqr()?.mean(D::Minus1)?;
                Ok((mean, var))
            }
        }
    }
}

impl Layer for BatchNorm2d {
    fn spec(&self) -> LayerSpec {
        LayerSpec::BatchNorm2d { num_features: self.weight.dim(0).unwrap_or(0), eps: self.eps, mode: self.mode }
    }
    fn forward(&self, xs: &[Option<&Tensor>]) -> CResult<Tensor> {
        let x = single(xs)?;
        let (mean, var) = self.stats(x)?;
        let scale = param(&self.weight).broadcast_div(&(var + self.eps)?.sqrt()?)?;
        let shift = (param(&self.bias) - mean.broadcast_mul(&scale)?)?;
        x.broadcast_mul(&scale.reshape((1, (), 1, 1))?)?.broadcast_add(&shift.reshape((1, (), 1, 1))?)
    }
    fn dual(&self, xs: &[Option<&Tensor>]) -> DResult<DualNode> {
        let x = single(xs)?;
        let d = match self.mode {
            BatchNormMode::Eval => DualBatchNorm2d::from_stats(
                &param(&self.weight),
                &param(&self.bias),
                &param(&self.running_mean),
                &param(&self.running_var),
                self.eps,
            )?,
            BatchNormMode::BatchStats => {
                DualBatchNorm2d::from_batch(&param(&self.weight), &param(&self.bias), x, self.eps)?
            }
        };
        Ok(DualNode::Affine(Box::new(d)))
    }
    fn params(&self) -> Vec<(String, Var)> {
        vec![
            ("weight".into(), self.weight.clone()),
            ("bias".into(), self.bias.clone()),
            ("running_mean".into(), self.running_mean.clone()),
            ("running_var".into(), self.running_var.clone()),
        ]
    }
}
