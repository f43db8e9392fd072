//! BatchNorm in training: the network trains with batch statistics (its BatchNorm layers in
//! `BatchStats` mode, so the forward pass and every bound normalise with the batch's mean and
//! biased variance, as PyTorch's `train()` and auto_LiRPA do), while running statistics are kept
//! as PyTorch keeps them — after each step, `r ← (1 − m) r + m s` with `m = 0.1`, `s` the batch
//! mean and the *unbiased* batch variance — and evaluation and checkpoints use a copy in `Eval`
//! mode (running statistics), so a saved model certifies each image on its own.

use anyhow::Result;
use candle_core::{DType, Tensor, D};
use nets::spec::{BatchNormMode, LayerSpec, NetworkSpec};
use nets::Network;

/// PyTorch's BatchNorm momentum.
pub const MOMENTUM: f64 = 0.1;

/// Does the network hold a BatchNorm layer in batch-statistics mode (top level)?
pub fn trains_batch_stats(net: &Network) -> bool {
    net.spec().layers.iter().any(|l| matches!(l, LayerSpec::BatchNorm2d { mode: BatchNormMode::BatchStats, .. }))
}

/// The architecture with every BatchNorm layer in `mode`.
pub fn with_mode(spec: &NetworkSpec, mode: BatchNormMode) -> NetworkSpec {
    let mut s = spec.clone();
    for l in &mut s.layers {
        if let LayerSpec::BatchNorm2d { mode: m, .. } = l {
            *m = mode;
        }
    }
    s
}

/// A copy of `net` (same parameters and running statistics) whose BatchNorm layers use the
/// running statistics; `None` when `net` has no batch-statistics BatchNorm.
pub fn eval_copy(net: &Network) -> Result<Option<Network>> {
    if !trains_batch_stats(net) {
        return Ok(None);
    }
    let sd = net.state_dict();
    let dtype = sd.first().map(|(_, t)| t.dtype()).unwrap_or(DType::F32);
    Ok(Some(Network::from_state_dict(&with_mode(&net.spec(), BatchNormMode::Eval), &sd, dtype, &net.device())?))
}

/// Updates the running statistics of every batch-statistics BatchNorm layer from the outputs of
/// a forward pass `outs` (`outs[k]` is layer `k`'s input).
pub fn update_running_stats(net: &Network, outs: &[Tensor]) -> Result<()> {
    let params = net.params();
    for (k, l) in net.spec().layers.iter().enumerate() {
        if !matches!(l, LayerSpec::BatchNorm2d { mode: BatchNormMode::BatchStats, .. }) {
            continue;
        }
        let x = outs[k].detach();
        let c = x.dim(1)?;
        let xc = x.transpose(0, 1)?.reshape((c, ()))?;
        let n = xc.dim(1)?;
        let mean = xc.mean(D::Minus1)?;
        let ss = xc.broadcast_sub(&mean.unsqueeze(1)?)?.sqr()?.sum(D::Minus1)?;
        let var = (ss / (n.max(2) - 1) as f64)?;
        for (name, stat) in [("running_mean", mean), ("running_var", var)] {
            let full = format!("{k}.{name}");
            if let Some((_, v)) = params.iter().find(|(n, _)| *n == full) {
                let new = ((v.as_tensor().detach() * (1.0 - MOMENTUM))? + (stat.to_dtype(v.dtype())? * MOMENTUM)?)?;
                v.set(&new)?;
            }
        }
    }
    Ok(())
}
