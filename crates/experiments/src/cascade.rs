//! Cascades (Wong et al. 2018, §4): stage after stage trained on the examples the previous
//! stages do not certify; at test time an example goes to the first stage that certifies its
//! own prediction, and the last stage takes the rest.

use crate::cascade_certify::{cascade_batch, CascadeCounts};
use crate::certify::{input_set, EvalSettings, Norm};
use crate::datasets::Dataset;
use crate::report::write_json_atomic;
use crate::train::{train, TrainConfig};
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, D};
use dual_core::{certified_from_bounds, robust_bounds, DualOptions};
use nets::{Network, NetworkSpec};
use serde::Serialize;
use std::path::Path;

/// The ball used to certify.
#[derive(Debug, Clone, Copy)]
pub struct Ball {
    /// Radius.
    pub eps: f64,
    /// Norm.
    pub norm: Norm,
    /// Ball ∩ [0, 1].
    pub bounded_input: bool,
}

/// Predictions of `net` on `x` and whether each is certified over the ball (for the predicted
/// class, not the label: a cascade stage must know when it may answer).
pub fn certify_own_prediction(net: &Network, x: &Tensor, ball: &Ball) -> Result<(Vec<u32>, Vec<bool>)> {
    let pred = net.forward(x)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
    let dual = net.dual(x, input_set(x, ball.eps, ball.norm, ball.bounded_input)?, &DualOptions::default())?;
    let f = robust_bounds(&dual, &pred)?;
    Ok((pred.clone(), certified_from_bounds(&f, &pred)?))
}

/// How a cascade does on a data set.
#[derive(Debug, Clone, Serialize)]
pub struct CascadeEval {
    /// Examples.
    pub n: usize,
    /// Clean error of the cascade's answers.
    pub clean_error: f64,
    /// Examples not certified with their correct label by their assigned stage.
    pub robust_error: f64,
    /// Examples assigned to each stage.
    pub assigned: Vec<usize>,
}

/// Evaluates a cascade on the first `limit` examples of `data` (exact bound, no PGD; see
/// [`crate::cascade_certify`] for the definitions).
pub fn evaluate_cascade(
    stages: &[Network],
    data: &Dataset,
    ball: &Ball,
    batch_size: usize,
    limit: Option<usize>,
) -> Result<CascadeEval> {
    if stages.is_empty() {
        bail!("a cascade needs at least one stage");
    }
    let n = limit.unwrap_or(data.len()).min(data.len());
    let s = EvalSettings {
        eps: ball.eps,
        norm: ball.norm,
        bounded_input: ball.bounded_input,
        pgd: false,
        memory_budget: None,
        proj: None,
    };
    let mut counts = CascadeCounts::new(stages.len());
    let mut start = 0;
    while start < n {
        let idx: Vec<usize> = (start..(start + batch_size.max(1)).min(n)).collect();
        let (x, y) = data.gather(&idx, DType::F32, &Device::Cpu)?;
        counts.add(&cascade_batch(stages, &x, &y, &s)?);
        start += idx.len();
    }
    let t = &counts.total;
    Ok(CascadeEval {
        n,
        clean_error: t.clean_errors as f64 / n.max(1) as f64,
        robust_error: t.robust_errors as f64 / n.max(1) as f64,
        assigned: counts.stages.iter().map(|c| c.answered).collect(),
    })
}

/// Trains up to `stages` models: stage `k` is a fresh model (new optimizer, new schedules) on
/// the training examples no earlier stage certifies for its own prediction. Stage `k` is saved
/// in `out_dir/stage{k}`; the cascade's evaluation goes to `out_dir/cascade.json`.
pub fn train_cascade(
    spec: &NetworkSpec,
    train_set: &Dataset,
    test_set: &Dataset,
    cfg: &TrainConfig,
    stages: usize,
    out_dir: &Path,
    seed: u64,
) -> Result<(Vec<Network>, CascadeEval)> {
    let ball = Ball { eps: cfg.eps.end, norm: cfg.norm, bounded_input: cfg.bounded_input };
    let mut nets: Vec<Network> = Vec::new();
    let mut remaining: Vec<usize> = (0..train_set.len()).collect();
    for k in 1..=stages {
        if remaining.is_empty() {
            break;
        }
        let sub = train_set.subset(&remaining);
        let net = Network::init(spec, seed + k as u64, DType::F32, &Device::Cpu)?;
        train(&net, &sub, test_set, cfg, &out_dir.join(format!("stage{k}")), false)?;
        // Keep the examples this stage does not certify.
        let mut keep = Vec::new();
        for chunk in remaining.chunks(cfg.batch_size.max(1)) {
            let (x, _) = train_set.gather(chunk, DType::F32, &Device::Cpu)?;
            let (_, cert) = certify_own_prediction(&net, &x, &ball)?;
            keep.extend(chunk.iter().zip(cert).filter(|(_, c)| !c).map(|(&i, _)| i));
        }
        remaining = keep;
        nets.push(net);
    }
    let eval = evaluate_cascade(&nets, test_set, &ball, cfg.batch_size, cfg.eval_limit)?;
    write_json_atomic(&out_dir.join("cascade.json"), &eval)?;
    Ok((nets, eval))
}
