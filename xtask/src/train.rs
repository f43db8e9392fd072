//! `cargo xtask train`: train a (robust) model on a data set, optionally as a cascade.

use crate::parse;
use anyhow::{bail, Context, Result};
use clap::Args;
use experiments::certify::{default_data_dir, is_projected_norm, Norm};
use experiments::datasets::{load, Split};
use experiments::train::distributed::{Collective, SingleProcess};
use experiments::train::{
    resume, train_with, EpsilonSchedule, LossKind, LrSchedule, Mix, OptimizerConfig, RampShape, Recipe, RunData,
    TrainConfig,
};
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
    /// Objective: wong-kolter (alias robust: the dual's robust loss), ibp, crown-ibp, mtl-ibp,
    /// baseline or madry.
    #[arg(long, default_value = "robust")]
    loss: String,
    /// κ at epsilon 0, the clean cross-entropy's weight (ibp, crown-ibp; default 1).
    #[arg(long, allow_hyphen_values = true, value_parser = parse::unit_interval)]
    kappa_start: Option<f64>,
    /// κ at the final epsilon (ibp: 0.5, Gowal et al.; crown-ibp: 0, Zhang et al.).
    #[arg(long, allow_hyphen_values = true, value_parser = parse::unit_interval)]
    kappa_end: Option<f64>,
    /// β at epsilon 0, the CROWN-IBP bound's weight against IBP's (crown-ibp; default 1).
    #[arg(long, allow_hyphen_values = true, value_parser = parse::unit_interval)]
    beta_start: Option<f64>,
    /// β at the final epsilon (crown-ibp; default 0).
    #[arg(long, allow_hyphen_values = true, value_parser = parse::unit_interval)]
    beta_end: Option<f64>,
    /// α, the IBP loss's weight against the PGD loss (mtl-ibp; default 0.5).
    #[arg(long, allow_hyphen_values = true, value_parser = parse::unit_interval)]
    mtl_alpha: Option<f64>,
    /// λ of SABR: IBP over a ball of radius λ·eps around a PGD point (sabr; default 0.4).
    #[arg(long, allow_hyphen_values = true, value_parser = parse::unit_interval)]
    sabr_lambda: Option<f64>,
    /// Steps of the PGD of MTL-IBP and SABR (default 1).
    #[arg(long, value_parser = parse::at_least_one)]
    pgd_steps: Option<usize>,
    /// Step of that PGD as a multiple of the current epsilon (default 1.25).
    #[arg(long, allow_hyphen_values = true, value_parser = parse::positive)]
    pgd_step: Option<f64>,
    /// Shi et al.'s warm-up regulariser with weight λ₀ (0.5 in the paper; interval losses only).
    #[arg(long, allow_hyphen_values = true, value_parser = parse::non_negative)]
    warmup_reg: Option<f64>,
    /// Shi et al.'s IBP initialisation of the weights (interval losses only).
    #[arg(long)]
    ibp_init: bool,
    /// Epochs at epsilon 0 (plain training) before the ramp.
    #[arg(long, default_value_t = 0)]
    warmup_epochs: usize,
    /// Shape of the epsilon ramp: linear or smooth (Shi et al.'s; needs --eps-start).
    #[arg(long, default_value = "linear")]
    eps_ramp: String,
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
        "robust" | "wong-kolter" => LossKind::Robust,
        "baseline" => LossKind::Baseline,
        "madry" => LossKind::Madry { steps: 40, step: a.eps / 4.0 },
        "ibp" => LossKind::Ibp,
        "crown-ibp" => LossKind::CrownIbp,
        "mtl-ibp" => LossKind::MtlIbp,
        "sabr" => LossKind::Sabr,
        o => bail!("unknown --loss {o} (wong-kolter, ibp, crown-ibp, mtl-ibp, sabr, baseline, madry)"),
    };
    let recipe = recipe(&a, loss)?;
    let optimizer = match a.optimizer.as_str() {
        "adam" => OptimizerConfig::Adam { lr: a.lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: a.weight_decay },
        "sgd" => OptimizerConfig::sgd(a.lr, a.momentum, a.weight_decay),
        o => bail!("unknown --optimizer {o} (adam, sgd)"),
    };
    let shape = match a.eps_ramp.as_str() {
        "linear" => RampShape::Linear,
        "smooth" => RampShape::Smooth,
        o => bail!("unknown --eps-ramp {o} (linear, smooth)"),
    };
    let mut eps = match a.eps_start {
        None if shape != RampShape::Linear => bail!("--eps-ramp {} needs a ramp: give --eps-start", a.eps_ramp),
        None => EpsilonSchedule::constant(a.eps),
        Some(s) if s > a.eps => bail!("--eps-start {s} is larger than --eps {}: the ramp rises to --eps", a.eps),
        Some(s) => EpsilonSchedule::linear(s, a.eps, a.ramp_epochs.unwrap_or((a.epochs / 2).max(1))),
    };
    eps.shape = shape;
    eps.warmup_epochs = a.warmup_epochs;
    if a.warmup_epochs >= a.epochs {
        bail!("--warmup-epochs {} leaves no epoch with epsilon > 0 (--epochs {})", a.warmup_epochs, a.epochs);
    }
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
        recipe,
    };
    cfg.validate()?;
    if is_projected_norm(&a.norm) && a.proj.is_none() {
        bail!("--norm {} trains with random projections and needs --proj K (the number of projections)", a.norm);
    }
    if a.cascade.is_some() && loss.is_interval() {
        bail!("--cascade trains with the wong-kolter loss only, not --loss {}", a.loss);
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
            if a.ibp_init && !a.resume {
                experiments::train::init::ibp_init(&net, a.seed)?;
            }
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

/// The interval losses' settings from the flags, with each loss's defaults; a flag that the
/// chosen loss does not read is refused (it would silently change nothing).
fn recipe(a: &TrainArgs, loss: LossKind) -> Result<Recipe> {
    let only = |set: bool, flag: &str, losses: &[LossKind], names: &str| -> Result<()> {
        if set && !losses.contains(&loss) {
            bail!("{flag} applies to --loss {names} only, not --loss {}", a.loss);
        }
        Ok(())
    };
    let interval = [LossKind::Ibp, LossKind::CrownIbp, LossKind::MtlIbp, LossKind::Sabr];
    only(
        a.kappa_start.is_some() || a.kappa_end.is_some(),
        "--kappa-start/--kappa-end",
        &interval[..2],
        "ibp or crown-ibp",
    )?;
    only(
        a.beta_start.is_some() || a.beta_end.is_some(),
        "--beta-start/--beta-end",
        &[LossKind::CrownIbp],
        "crown-ibp",
    )?;
    only(a.mtl_alpha.is_some(), "--mtl-alpha", &[LossKind::MtlIbp], "mtl-ibp")?;
    let pgd_losses = [LossKind::MtlIbp, LossKind::Sabr];
    only(a.pgd_steps.is_some() || a.pgd_step.is_some(), "--pgd-steps/--pgd-step", &pgd_losses, "mtl-ibp or sabr")?;
    only(a.sabr_lambda.is_some(), "--sabr-lambda", &[LossKind::Sabr], "sabr")?;
    only(a.warmup_reg.is_some(), "--warmup-reg", &interval, "ibp, crown-ibp, mtl-ibp or sabr")?;
    only(a.ibp_init, "--ibp-init", &interval, "ibp, crown-ibp, mtl-ibp or sabr")?;
    let d = Recipe::default();
    let kappa_end_default = if loss == LossKind::CrownIbp { 0.0 } else { d.kappa.end };
    Ok(Recipe {
        kappa: Mix { start: a.kappa_start.unwrap_or(d.kappa.start), end: a.kappa_end.unwrap_or(kappa_end_default) },
        beta: Mix { start: a.beta_start.unwrap_or(d.beta.start), end: a.beta_end.unwrap_or(d.beta.end) },
        alpha: a.mtl_alpha.unwrap_or(d.alpha),
        pgd: experiments::train::PgdSettings {
            steps: a.pgd_steps.unwrap_or(d.pgd.steps),
            step: a.pgd_step.unwrap_or(d.pgd.step),
        },
        sabr_lambda: a.sabr_lambda.unwrap_or(d.sabr_lambda),
        warmup_reg: a.warmup_reg,
        ibp_init: a.ibp_init,
    })
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
