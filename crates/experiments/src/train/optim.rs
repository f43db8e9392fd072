//! Optimizers with state that can be saved and restored: Adam (PyTorch's, with optional L2
//! weight decay) and SGD with momentum and weight decay (which Candle lacks).

use super::adam::{adam_update, AdamStep};
use anyhow::{bail, Result};
use candle_core::{backprop::GradStore, Tensor, Var};
use serde::{Deserialize, Serialize};

/// Which optimizer, with its hyperparameters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OptimizerConfig {
    /// Adam: `m ← β₁m + (1-β₁)g`, `v ← β₂v + (1-β₂)g²`, `θ ← θ - lr·m̂/(√v̂ + ε)`.
    Adam { lr: f64, beta1: f64, beta2: f64, eps: f64, weight_decay: f64 },
    /// SGD: `g ← g + λθ`, `b ← μb + g`, `θ ← θ - lr·b`.
    Sgd { lr: f64, momentum: f64, weight_decay: f64 },
}

impl OptimizerConfig {
    /// Adam with PyTorch's defaults at learning rate `lr`.
    pub fn adam(lr: f64) -> Self {
        OptimizerConfig::Adam { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
    /// SGD with momentum and weight decay.
    pub fn sgd(lr: f64, momentum: f64, weight_decay: f64) -> Self {
        OptimizerConfig::Sgd { lr, momentum, weight_decay }
    }
    /// The base learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerConfig::Adam { lr, .. } | OptimizerConfig::Sgd { lr, .. } => *lr,
        }
    }
}

/// An optimizer over a fixed list of variables.
pub struct Optimizer {
    cfg: OptimizerConfig,
    vars: Vec<Var>,
    /// Adam: first moments; SGD: momentum buffers.
    m: Vec<Option<Tensor>>,
    /// Adam: second moments.
    v: Vec<Option<Tensor>>,
    step: u64,
    lr: f64,
}

impl Optimizer {
    /// A fresh optimizer.
    pub fn new(cfg: OptimizerConfig, vars: Vec<Var>) -> Self {
        let n = vars.len();
        let lr = cfg.lr();
        Optimizer { cfg, vars, m: vec![None; n], v: vec![None; n], step: 0, lr }
    }

    /// Sets the current learning rate (schedules).
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// The current learning rate.
    pub fn lr(&self) -> f64 {
        self.lr
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Scales the gradients so their global l2 norm is at most `max_norm`; returns the norm.
    pub fn clip_grad_norm(&self, grads: &mut GradStore, max_norm: f64) -> Result<f64> {
        let mut total = 0.0;
        for v in &self.vars {
            if let Some(g) = grads.get(v) {
                total += g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
            }
        }
        let norm = total.sqrt();
        if norm > max_norm {
            let s = max_norm / (norm + 1e-6);
            for v in &self.vars {
                if let Some(g) = grads.remove(v) {
                    grads.insert(v, (g * s)?);
                }
            }
        }
        Ok(norm)
    }

    /// One update with the gradients in `grads` (variables without a gradient are left alone).
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        for (i, var) in self.vars.iter().enumerate() {
            // Candle leaves a variable's gradient attached to the graph that computed it (only the
            // intermediate gradients are detached): without `detach` the moments would hold every
            // step's forward graph alive, and memory would grow by a whole graph per step.
            let Some(g) = grads.get(var).map(|g| g.detach()) else { continue };
            let theta = &var.as_tensor().detach();
            if let OptimizerConfig::Adam { beta1, beta2, eps, weight_decay, .. } = self.cfg {
                // One pass over the data on the CPU (the same numbers as the tensor ops below).
                let c = AdamStep { beta1, beta2, eps, weight_decay, lr: self.lr, t };
                if let Some((th, m, v)) = adam_update(theta, &g, self.m[i].as_ref(), self.v[i].as_ref(), c)? {
                    var.set(&th)?;
                    self.m[i] = Some(m);
                    self.v[i] = Some(v);
                    continue;
                }
            }
            if !g.flatten_all()?.to_dtype(candle_core::DType::F64)?.sum_all()?.to_scalar::<f64>()?.is_finite() {
                bail!("non-finite gradient at step {}: training diverged", self.step);
            }
            match self.cfg {
                OptimizerConfig::Adam { beta1, beta2, eps, weight_decay, .. } => {
                    let g = if weight_decay != 0.0 { (g + (theta * weight_decay)?)? } else { g.clone() };
                    let m = match &self.m[i] {
                        None => (&g * (1.0 - beta1))?,
                        Some(m) => ((m * beta1)? + (&g * (1.0 - beta1))?)?,
                    };
                    let v = match &self.v[i] {
                        None => (g.sqr()? * (1.0 - beta2))?,
                        Some(v) => ((v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?,
                    };
                    let mhat = (&m / (1.0 - beta1.powi(t)))?;
                    let vhat = (&v / (1.0 - beta2.powi(t)))?;
                    let upd = (mhat / (vhat.sqrt()? + eps)?)?;
                    var.set(&(theta - (upd * self.lr)?)?)?;
                    self.m[i] = Some(m);
                    self.v[i] = Some(v);
                }
                OptimizerConfig::Sgd { momentum, weight_decay, .. } => {
                    let g = if weight_decay != 0.0 { (g + (theta * weight_decay)?)? } else { g.clone() };
                    let buf = match (&self.m[i], momentum != 0.0) {
                        (Some(b), true) => ((b * momentum)? + &g)?,
                        _ => g,
                    };
                    var.set(&(theta - (&buf * self.lr)?)?)?;
                    if momentum != 0.0 {
                        self.m[i] = Some(buf);
                    }
                }
            }
        }
        Ok(())
    }

    /// The state as named tensors (for checkpoints) plus the step count.
    pub fn state(&self) -> (Vec<(String, Tensor)>, u64) {
        let mut v = Vec::new();
        for (i, (m, s)) in self.m.iter().zip(&self.v).enumerate() {
            if let Some(m) = m {
                v.push((format!("m.{i}"), m.clone()));
            }
            if let Some(s) = s {
                v.push((format!("v.{i}"), s.clone()));
            }
        }
        (v, self.step)
    }

    /// Restores a state saved by [`Optimizer::state`].
    pub fn load_state(&mut self, tensors: &[(String, Tensor)], step: u64) -> Result<()> {
        for (name, t) in tensors {
            let (kind, idx) =
                name.split_once('.').ok_or_else(|| anyhow::anyhow!("bad optimizer tensor name {name}"))?;
            let i: usize = idx.parse()?;
            if i >= self.vars.len() || self.vars[i].dims() != t.dims() {
                bail!("optimizer state `{name}` does not fit the model (wrong index or shape)");
            }
            let t = t.to_dtype(self.vars[i].dtype())?;
            match kind {
                "m" => self.m[i] = Some(t),
                "v" => self.v[i] = Some(t),
                _ => bail!("bad optimizer tensor name {name}"),
            }
        }
        self.step = step;
        Ok(())
    }
}
