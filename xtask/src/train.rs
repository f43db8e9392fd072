//! `cargo xtask train`: train a (robust) model on a data set, optionally as a cascade.

use crate::parse;
use anyhow::{bail, Context, Result};
use clap::Args;
use experiments::certify::{default_data_dir, is_projected_norm, Norm};
use experiments::datasets::{load, Split};
use experiments::train::distributed::{Collective, SingleProcess};
use experiments::train::train_with;
use experiments::train::{resume, EpsilonSchedule, LossKind, LrSchedule, OptimizerConfig, RunData, TrainConfig};
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
    /// Final epsilon (finite, ≥ 0).
    #[arg(long, default_value_t = 0.1, allow_hyphen_values = true, value_parser = parse::non_negative)]
    eps: f64,
    /// Starting epsilon of the linear ramp (default: eps, no ramp; 0 ≤ start ≤ eps).
    #[arg(long, allow_hyphen_values = true, value_parser = parse::non_negative)]
    eps_start: Option<f64>,
    /// Epochs of the epsilon ramp (≥ 1, with --eps-start; default: half the epochs).
    #[arg(long, value_parser = parse::at_least_one, requires = "eps_start")]
    ramp_epochs: Option<usize>,
    /// Norm of the ball: linf or l2.
    #[arg(long, default_value = "linf")]
    norm: String,
    /// Intersect the ball with [0, 1].
    #[arg(long)]
    bounded_input: bool,
    /// Epochs.
    #[arg(long, default_value_t = 20, value_parser = parse::at_least_one)]
    epochs: usize,
    /// Examples per batch.
    #[arg(long, default_value_t = 50, value_parser = parse::at_least_one)]
    batch_size: usize,
    /// Optimizer: adam or sgd.
    #[arg(long, default_value = "adam")]
    optimizer: String,
    /// Learning rate (finite, > 0).
    #[arg(long, default_value_t = 1e-3, allow_hyphen_values = true, value_parser = parse::positive)]
    lr: f64,
    /// SGD momentum, in [0, 1).
    #[arg(long, default_value_t = 0.9, allow_hyphen_values = true, value_parser = parse::momentum)]
    momentum: f64,
    /// Weight decay (L2; finite, ≥ 0).
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true, value_parser = parse::non_negative)]
    weight_decay: f64,
    /// Learning rate: multiply by --lr-gamma every --lr-every epochs after --lr-after epochs.
    #[arg(long, default_value_t = 0)]
    lr_after: usize,
    /// See --lr-after (0: constant learning rate).
    #[arg(long, default_value_t = 0)]
    lr_every: usize,
    /// See --lr-after (finite, > 0).
    #[arg(long, default_value_t = 0.5, allow_hyphen_values = true, value_parser = parse::positive)]
    lr_gamma: f64,
    /// Clip the gradient norm (finite, > 0).
    #[arg(long, allow_hyphen_values = true, value_parser = parse::positive)]
    clip_grad: Option<f64>,
    /// Train on only the first N examples (N ≥ 1).
    #[arg(long, value_parser = parse::at_least_one)]
    train_limit: Option<usize>,
    /// Evaluate on only the first N test examples after each epoch (N ≥ 1).
    #[arg(long, value_parser = parse::at_least_one)]
    eval_limit: Option<usize>,
    /// Train a cascade of this many stages (≥ 1).
    #[arg(long, value_parser = parse::at_least_one)]
    cascade: Option<usize>,
    /// Continue the run in --out from its last checkpoint, with the same settings (only --epochs
    /// and --eval-limit may change). Refused when --out holds no run.
    #[arg(long, conflicts_with = "restart")]
    resume: bool,
    /// Start over in an --out that already holds a run, overwriting it.
    #[arg(long)]
    restart: bool,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to compute: cpu or cuda[:N] (CUDA needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Train with K random projections (linf-median / l2-normal); evaluation stays exact.
    #[arg(long, value_parser = parse::at_least_one)]
    proj: Option<usize>,
    /// Data-parallel training across the processes `mpirun -np N` starts: --batch-size is the
    /// global batch, each rank takes its part, gradients are summed over the ranks every step;
    /// rank 0 writes --out. Needs a build with --features mpi.
    #[arg(long)]
    mpi: bool,
}

pub fn run(a: TrainArgs) -> Result<()> {
    // (Ranges are checked by the flags' parsers and again by `TrainConfig::validate`.)
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
        Some(s) if s > a.eps => bail!("--eps-start {s} is larger than --eps {}: the ramp rises to --eps", a.eps),
        Some(s) => {
            EpsilonSchedule { start: s, end: a.eps, ramp_epochs: a.ramp_epochs.unwrap_or((a.epochs / 2).max(1)) }
        }
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
    cfg.validate()?;
    if is_projected_norm(&a.norm) && a.proj.is_none() {
        bail!("--norm {} trains with random projections and needs --proj K (the number of projections)", a.norm);
    }
    if a.cascade.is_some() && a.resume {
        bail!("--resume is not supported with --cascade (each stage trains on what the previous ones leave)");
    }
    let comm = collective(a.mpi)?;
    if comm.size() > 1 && a.cascade.is_some() {
        bail!("--mpi trains one model; --cascade is not supported across processes");
    }
    let root = comm.rank() == 0;
    let device = experiments::device::parse_device(&a.device)?;
    let spec = nets::io::resolve_arch(&a.arch)?;
    // A cascade keeps its stages in stage1, stage2, ...
    let run_dir = if a.cascade.is_some() { a.out.join("stage1") } else { a.out.clone() };
    if root {
        resume::claim_out_dir(&a.out, &run_dir, a.resume, a.restart)?;
    }
    let dir = a.data_dir.unwrap_or_else(|| default_data_dir(&a.dataset));
    let mut tr = load(&a.dataset, &dir, Split::Train)?;
    let te = load(&a.dataset, &dir, Split::Test)?;
    if let Some(l) = a.train_limit {
        tr.truncate(l);
    }
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
            let net = nets::Network::init(&spec, a.seed, candle_core::DType::F32, &device)?;
            experiments::certify::check_data_shape(&net, &tr, &a.dataset).context("--arch and --dataset")?;
            if root {
                RunData { dataset: a.dataset.clone(), train_examples: tr.len() }.check_and_record(&a.out, a.resume)?;
            }
            let s = train_with(&net, &tr, &te, &cfg, &a.out, a.resume, comm.as_ref())?;
            if !root {
                return Ok(());
            }
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

/// The process group: MPI's world with `--mpi` (a build with the `mpi` feature), else this
/// process alone.
fn collective(mpi: bool) -> Result<Box<dyn Collective>> {
    if !mpi {
        return Ok(Box::new(SingleProcess));
    }
    #[cfg(feature = "mpi")]
    {
        Ok(Box::new(experiments::train::mpi::MpiCollective::init()?))
    }
    #[cfg(not(feature = "mpi"))]
    bail!("--mpi needs a build with MPI: cargo xtask is built without it; use `cargo run --release -p xtask --features mpi -- train ...` under mpirun")
}
