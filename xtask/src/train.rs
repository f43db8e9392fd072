//! `cargo xtask train`: train a (robust) model on a data set, optionally as a cascade.

use anyhow::{bail, Result};
use clap::Args;
use experiments::certify::{default_data_dir, Norm};
use experiments::datasets::{load, Split};
use experiments::train::{train, EpsilonSchedule, LossKind, LrSchedule, OptimizerConfig, TrainConfig};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Architecture: a zoo name (mnist-small, mnist-large, ...) or a JSON description.
    #[arg(long, default_value = "mnist-small")]
    arch: String,
    /// Data set: mnist, fashion-mnist or cifar10.
    #[arg(long, default_value = "fashion-mnist")]
    dataset: String,
    /// Data folder (default data/NAME, else /usr/share/datasets/NAME).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Output folder for checkpoints and logs.
    #[arg(long, default_value = "results/train")]
    out: PathBuf,
    /// Objective: robust, baseline or madry.
    #[arg(long, default_value = "robust")]
    loss: String,
    /// Final epsilon.
    #[arg(long, default_value_t = 0.1)]
    eps: f64,
    /// Starting epsilon of the linear ramp (default: eps, no ramp).
    #[arg(long)]
    eps_start: Option<f64>,
    /// Epochs of the epsilon ramp (default: half the epochs when --eps-start is given).
    #[arg(long)]
    ramp_epochs: Option<usize>,
    /// Norm of the ball: linf or l2.
    #[arg(long, default_value = "linf")]
    norm: String,
    /// Intersect the ball with [0, 1].
    #[arg(long)]
    bounded_input: bool,
    /// Epochs.
    #[arg(long, default_value_t = 20)]
    epochs: usize,
    /// Examples per batch.
    #[arg(long, default_value_t = 50)]
    batch_size: usize,
    /// Optimizer: adam or sgd.
    #[arg(long, default_value = "adam")]
    optimizer: String,
    /// Learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// Weight decay (L2).
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Learning rate: multiply by --lr-gamma every --lr-every epochs after --lr-after epochs.
    #[arg(long, default_value_t = 0)]
    lr_after: usize,
    /// See --lr-after (0: constant learning rate).
    #[arg(long, default_value_t = 0)]
    lr_every: usize,
    /// See --lr-after.
    #[arg(long, default_value_t = 0.5)]
    lr_gamma: f64,
    /// Clip the gradient norm.
    #[arg(long)]
    clip_grad: Option<f64>,
    /// Train on only the first N examples.
    #[arg(long)]
    train_limit: Option<usize>,
    /// Evaluate on only the first N test examples after each epoch.
    #[arg(long)]
    eval_limit: Option<usize>,
    /// Train a cascade of this many stages.
    #[arg(long)]
    cascade: Option<usize>,
    /// Continue from the last checkpoint in --out.
    #[arg(long)]
    resume: bool,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to compute: cpu or cuda[:N] (CUDA needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Train with K random projections (linf-median / l2-normal); evaluation stays exact.
    #[arg(long)]
    proj: Option<usize>,
}

pub fn run(a: TrainArgs) -> Result<()> {
    if !(a.eps >= 0.0) || a.epochs == 0 || a.batch_size == 0 || !(a.lr > 0.0) {
        bail!("--eps must be ≥ 0, --epochs, --batch-size and --lr positive");
    }
    let loss = match a.loss.as_str() {
        "robust" => LossKind::Robust,
        "baseline" => LossKind::Baseline,
        "madry" => LossKind::Madry { steps: 40, step: a.eps / 4.0 },
        o => bail!("unknown --loss {o} (robust, baseline, madry)"),
    };
    let optimizer = match a.optimizer.as_str() {
        "adam" => OptimizerConfig::Adam { lr: a.lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: a.weight_decay },
        "sgd" => OptimizerConfig::sgd(a.lr, a.momentum, a.weight_decay),
        o => bail!("unknown --optimizer {o} (adam, sgd)"),
    };
    let eps = match a.eps_start {
        None => EpsilonSchedule::constant(a.eps),
        Some(s) => EpsilonSchedule { start: s, end: a.eps, ramp_epochs: a.ramp_epochs.unwrap_or(a.epochs / 2) },
    };
    let cfg = TrainConfig {
        epochs: a.epochs,
        batch_size: a.batch_size,
        optimizer,
        lr: LrSchedule { base: a.lr, after: a.lr_after, every: a.lr_every, gamma: a.lr_gamma },
        eps,
        loss,
        norm: a.norm.parse::<Norm>()?,
        bounded_input: a.bounded_input,
        clip_grad_norm: a.clip_grad,
        seed: a.seed,
        eval_limit: a.eval_limit,
        f64: false,
        quiet: false,
        proj: a.proj,
        augment: None,
    };
    let dir = a.data_dir.unwrap_or_else(|| default_data_dir(&a.dataset));
    let mut tr = load(&a.dataset, &dir, Split::Train)?;
    let te = load(&a.dataset, &dir, Split::Test)?;
    if let Some(l) = a.train_limit {
        tr.truncate(l);
    }
    let spec = nets::io::resolve_arch(&a.arch)?;
    match a.cascade {
        Some(k) => {
            let (_, eval) = experiments::cascade::train_cascade(&spec, &tr, &te, &cfg, k, &a.out, a.seed)?;
            println!(
                "cascade of {} stages: clean error {:.2} %, certified robust error {:.2} % (examples per stage {:?})",
                eval.assigned.len(),
                100.0 * eval.clean_error,
                100.0 * eval.robust_error,
                eval.assigned
            );
        }
        None => {
            let device = experiments::device::parse_device(&a.device)?;
            let net = nets::Network::init(&spec, a.seed, candle_core::DType::F32, &device)?;
            let s = train(&net, &tr, &te, &cfg, &a.out, a.resume)?;
            println!(
                "best test robust error {:.2} % at epoch {}; checkpoints and log in {}",
                100.0 * s.best_robust_error,
                s.best_epoch,
                s.out_dir.display()
            );
        }
    }
    Ok(())
}
