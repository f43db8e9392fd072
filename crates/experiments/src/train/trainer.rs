use super::certified::{bound_loss, BoundLoss, PgdSettings};
use super::regularizer::{input_radius, intensity, warmup_terms};
use super::{batchnorm, EpsilonSchedule, LrSchedule, Mix, Optimizer, OptimizerConfig};
use crate::attacks::{cross_entropy, pgd, PgdConfig};
use crate::certify::{evaluate, evaluate_exact_or_ibp, input_set, projection_config, EvalSettings, Norm, Projection};
use crate::datasets::Dataset;
use crate::progress::Progress;
use crate::report::write_json_atomic;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use dual_core::{robust_loss, DualOptions};
use nets::Network;
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The training objective.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// Plain cross-entropy.
    Baseline,
    /// Cross-entropy of the robust bounds (Wong & Kolter, Eq. 14), exact dual network.
    Robust,
    /// Madry et al.: cross-entropy at a PGD point (the papers' PGD, `steps` steps of `step`).
    Madry { steps: usize, step: f64 },
    /// IBP (Gowal et al. 2018): `κ CE(clean) + (1 − κ) CE(IBP bound)` (`Recipe::kappa`).
    #[serde(rename = "ibp")]
    Ibp,
    /// CROWN-IBP (Zhang et al. 2020): the bound `β CROWN-IBP + (1 − β) IBP` in the same mix
    /// (`Recipe::kappa`, `Recipe::beta`).
    #[serde(rename = "crown-ibp")]
    CrownIbp,
    /// MTL-IBP (De Palma et al. 2024): `α CE(IBP bound) + (1 − α) CE(PGD point)`
    /// (`Recipe::alpha`, `Recipe::pgd`).
    #[serde(rename = "mtl-ibp")]
    MtlIbp,
    /// SABR (Müller et al. 2023): IBP over a small ball of radius `λ eps` around a PGD point
    /// (`Recipe::sabr_lambda`, `Recipe::pgd`).
    #[serde(rename = "sabr")]
    Sabr,
}

impl LossKind {
    /// Is this one of the interval-bound losses (IBP, CROWN-IBP, MTL-IBP)?
    pub fn is_interval(&self) -> bool {
        matches!(self, LossKind::Ibp | LossKind::CrownIbp | LossKind::MtlIbp | LossKind::Sabr)
    }
}

/// The settings of the interval-bound losses and of Shi et al. 2021's recipe (ignored by the
/// other losses). Defaults and their sources: `docs/TRAINING.md`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Recipe {
    /// Weight of the clean cross-entropy, moving with epsilon (Gowal et al.: 1 → 0.5).
    pub kappa: Mix,
    /// CROWN-IBP's weight of the CROWN-IBP bound against IBP's (Zhang et al.: 1 → 0).
    pub beta: Mix,
    /// MTL-IBP's weight of the IBP loss against the PGD loss (fixed).
    pub alpha: f64,
    /// MTL-IBP's and SABR's attack.
    pub pgd: PgdSettings,
    /// SABR's small-ball fraction λ ∈ (0, 1].
    #[serde(default = "default_sabr_lambda")]
    pub sabr_lambda: f64,
    /// Shi et al.'s warm-up regulariser with this λ₀ (`None`: off).
    pub warmup_reg: Option<f64>,
    /// The weights were drawn by Shi et al.'s IBP initialisation (recorded; applied by the caller
    /// before training, see [`super::init::ibp_init`]).
    pub ibp_init: bool,
}

fn default_sabr_lambda() -> f64 {
    0.4
}

impl Default for Recipe {
    fn default() -> Self {
        Recipe {
            kappa: Mix { start: 1.0, end: 0.5 },
            beta: Mix { start: 1.0, end: 0.0 },
            alpha: 0.5,
            pgd: PgdSettings { steps: 1, step: 1.25 },
            sabr_lambda: default_sabr_lambda(),
            warmup_reg: None,
            ibp_init: false,
        }
    }
}

impl Recipe {
    /// The loss of `kind` with these weights (`None` for a loss that is not interval-bound).
    pub fn bound_loss(&self, kind: LossKind) -> Option<BoundLoss> {
        match kind {
            LossKind::Ibp => Some(BoundLoss::Ibp { kappa: self.kappa }),
            LossKind::CrownIbp => Some(BoundLoss::CrownIbp { kappa: self.kappa, beta: self.beta }),
            LossKind::MtlIbp => Some(BoundLoss::MtlIbp { alpha: self.alpha, pgd: self.pgd }),
            LossKind::Sabr => Some(BoundLoss::Sabr { lambda: self.sabr_lambda, pgd: self.pgd }),
            _ => None,
        }
    }

    fn validate(&self) -> Result<()> {
        let unit = |v: f64| v.is_finite() && (0.0..=1.0).contains(&v);
        for (name, m) in [("--kappa-start/--kappa-end", self.kappa), ("--beta-start/--beta-end", self.beta)] {
            if !(unit(m.start) && unit(m.end)) {
                bail!("{name} must be in [0, 1], got {} and {}", m.start, m.end);
            }
        }
        if !unit(self.alpha) {
            bail!("--mtl-alpha must be in [0, 1], got {}", self.alpha);
        }
        if !(self.sabr_lambda.is_finite() && self.sabr_lambda > 0.0 && self.sabr_lambda <= 1.0) {
            bail!("--sabr-lambda must be in (0, 1], got {}", self.sabr_lambda);
        }
        if self.pgd.steps == 0 || !(self.pgd.step.is_finite() && self.pgd.step > 0.0) {
            bail!("the PGD of MTL-IBP and SABR needs at least 1 step (--pgd-steps) and a positive finite step (--pgd-step)");
        }
        if let Some(l) = self.warmup_reg {
            if !(l.is_finite() && l >= 0.0) {
                bail!("--warmup-reg must be a finite number ≥ 0, got {l}");
            }
        }
        Ok(())
    }
}

/// A step's loss: a graph still to differentiate, or a value whose gradients are already
/// summed over passes of a few examples.
enum StepLoss {
    Graph(Tensor),
    Done(f64, candle_core::backprop::GradStore),
}

/// Everything a training run needs; saved as `config.json` in the output folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Epochs.
    pub epochs: usize,
    /// Examples per batch.
    pub batch_size: usize,
    /// Optimizer and its hyperparameters.
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule.
    pub lr: LrSchedule,
    /// Epsilon schedule.
    pub eps: EpsilonSchedule,
    /// Objective.
    pub loss: LossKind,
    /// Norm of the ball.
    pub norm: Norm,
    /// Ball ∩ [0, 1].
    pub bounded_input: bool,
    /// Clip the gradient's global norm.
    pub clip_grad_norm: Option<f64>,
    /// Seed of the data order.
    pub seed: u64,
    /// Evaluate on only this many test examples after each epoch.
    pub eval_limit: Option<usize>,
    /// Compute in f64.
    pub f64: bool,
    /// Hide progress bars.
    #[serde(default)]
    pub quiet: bool,
    /// Train with `k` random projections (Wong et al. 2018) instead of the exact bound;
    /// evaluation stays exact.
    #[serde(default)]
    pub proj: Option<usize>,
    /// Augment training batches (paper 2's CIFAR-10 runs); drawn from the seed and the step, so
    /// a resumed run sees the same batches.
    #[serde(default)]
    pub augment: Option<super::Augment>,
    /// Settings of the interval-bound losses (IBP, CROWN-IBP, MTL-IBP) and Shi et al.'s recipe.
    #[serde(default)]
    pub recipe: Recipe,
}

impl TrainConfig {
    /// Checks the values a run cannot work with: counts of 0, non-finite or out-of-range
    /// hyperparameters (an infinite learning rate would train all-inf weights).
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 || self.epochs == 0 {
            bail!("epochs and batch size must be at least 1");
        }
        if self.eval_limit == Some(0) {
            bail!("--eval-limit must be at least 1: an evaluation on no examples reports 0 % error");
        }
        if self.proj == Some(0) {
            bail!("--proj must be at least 1");
        }
        let lr = self.optimizer.lr();
        if !(lr.is_finite() && lr > 0.0 && self.lr.base.is_finite() && self.lr.base > 0.0) {
            bail!("--lr must be a positive finite number, got {lr}");
        }
        if !(self.lr.gamma.is_finite() && self.lr.gamma > 0.0) {
            bail!("--lr-gamma must be a positive finite number, got {}", self.lr.gamma);
        }
        let (wd, momentum) = match self.optimizer {
            super::OptimizerConfig::Adam { weight_decay, beta1, beta2, eps, .. } => {
                if !((0.0..1.0).contains(&beta1) && (0.0..1.0).contains(&beta2) && eps.is_finite() && eps > 0.0) {
                    bail!("Adam needs 0 ≤ beta1, beta2 < 1 and eps > 0");
                }
                (weight_decay, 0.0)
            }
            super::OptimizerConfig::Sgd { weight_decay, momentum, .. } => (weight_decay, momentum),
        };
        if !(wd.is_finite() && wd >= 0.0) {
            bail!("--weight-decay must be a finite number ≥ 0, got {wd}");
        }
        if !(0.0..1.0).contains(&momentum) {
            bail!("--momentum must be in [0, 1), got {momentum}");
        }
        for (name, e) in [("--eps-start", self.eps.start), ("--eps", self.eps.end)] {
            if !(e.is_finite() && e >= 0.0) {
                bail!("{name} must be a finite number ≥ 0, got {e}");
            }
        }
        if let Some(c) = self.clip_grad_norm {
            if !(c.is_finite() && c > 0.0) {
                bail!("--clip-grad must be a positive finite number, got {c}");
            }
        }
        if let LossKind::Madry { steps, step } = self.loss {
            if steps == 0 || !(step.is_finite() && step >= 0.0) {
                bail!("the PGD of adversarial training needs at least 1 step and a finite step size ≥ 0");
            }
        }
        if self.bounded_input && self.norm == Norm::L2 {
            bail!("--bounded-input is only supported with --norm linf");
        }
        self.recipe.validate()?;
        if self.loss.is_interval() {
            if self.norm != Norm::Linf {
                bail!("the interval-bound losses (ibp, crown-ibp, mtl-ibp) need --norm linf");
            }
            if self.proj.is_some() {
                bail!("--proj applies to the wong-kolter loss only; the interval-bound losses have no projections");
            }
        } else if self.recipe.warmup_reg.is_some() {
            bail!("--warmup-reg applies to the interval-bound losses (ibp, crown-ibp, mtl-ibp) only");
        }
        Ok(())
    }
}

/// One line of the training log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochLog {
    /// Epoch (1-based).
    pub epoch: usize,
    /// Learning rate used.
    pub lr: f64,
    /// Epsilon at the end of the epoch.
    pub eps: f64,
    /// Mean training loss (the objective's).
    pub train_loss: f64,
    /// Training error at the clean inputs.
    pub train_error: f64,
    /// Training robust error (robust loss only).
    pub train_robust_error: Option<f64>,
    /// Test clean error.
    pub test_error: f64,
    /// Test certified robust error at the final epsilon, by [`EpochLog::test_bound`].
    pub test_robust_error: f64,
    /// The bound that certified the test examples: `exact` (the dual), or `exact+ibp` for the
    /// interval losses (an example counts when either bound certifies it). Absent in logs
    /// written before it existed: `exact`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_bound: Option<String>,
    /// Seconds of the epoch (training and evaluation).
    pub seconds: f64,
}

/// State saved beside the checkpoints, for `--resume`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainState {
    epochs_done: usize,
    best_robust_error: Option<f64>,
    best_epoch: Option<usize>,
    optimizer_steps: u64,
    log: Vec<EpochLog>,
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    /// Per-epoch log.
    pub log: Vec<EpochLog>,
    /// Best test robust error and its epoch.
    pub best_robust_error: f64,
    /// Epoch of the best model.
    pub best_epoch: usize,
    /// Folder with `last.safetensors`, `best.safetensors`, `log.jsonl`, `config.json`.
    pub out_dir: PathBuf,
}

fn read_state(dir: &Path) -> Result<Option<TrainState>> {
    let p = dir.join(super::resume::STATE_FILE);
    if !p.is_file() {
        return Ok(None);
    }
    let s = std::fs::read_to_string(&p)?;
    Ok(Some(serde_json::from_str(&s).with_context(|| format!("{} is not a training state", p.display()))?))
}

fn write_log(dir: &Path, log: &[EpochLog]) -> Result<()> {
    let mut s = String::new();
    for l in log {
        s.push_str(&serde_json::to_string(l)?);
        s.push('\n');
    }
    nets::io::atomic_write(&dir.join("log.jsonl"), s.as_bytes())?;
    // The errors per epoch as a picture; a failure to draw never stops training.
    if let Err(e) = plot_log(&dir.join("errors.png"), log) {
        eprintln!("warning: could not draw {}: {e:#}", dir.join("errors.png").display());
    }
    Ok(())
}

/// `errors.png`: test certified robust error, test error and (robust training) training robust
/// error per epoch, in percent.
pub fn plot_log(path: &Path, log: &[EpochLog]) -> Result<()> {
    let bound = log.last().and_then(|l| l.test_bound.as_deref()).unwrap_or("exact");
    let pct = |f: &dyn Fn(&EpochLog) -> Option<f64>| -> Vec<(f64, f64)> {
        log.iter().filter_map(|l| f(l).map(|v| (l.epoch as f64, 100.0 * v))).collect()
    };
    let mut series = vec![
        (format!("test certified robust error ({bound})"), pct(&|l| Some(l.test_robust_error))),
        ("test error".to_string(), pct(&|l| Some(l.test_error))),
    ];
    let tr = pct(&|l| l.train_robust_error);
    if !tr.is_empty() {
        series.push(("training robust error (training bound)".to_string(), tr));
    }
    crate::plot::line_plot(path, "Errors per epoch", "epoch", "error (%)", &series)
}

fn argmax_errors(logits: &Tensor, y: &[u32]) -> Result<usize> {
    let p = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
    Ok(p.iter().zip(y).filter(|(a, b)| a != b).count())
}

/// Trains `net` in place on `train_set`, evaluating on `test_set` after every epoch. Writes
/// `last.safetensors` + `optimizer.safetensors` + `state.json` every epoch (atomically),
/// `best.safetensors` when the test robust error improves, `log.jsonl`, `errors.png` and
/// `config.json`. With
/// `resume`, continues from the state in `out_dir`.
pub fn train(
    net: &Network,
    train_set: &Dataset,
    test_set: &Dataset,
    cfg: &TrainConfig,
    out_dir: &Path,
    resume: bool,
) -> Result<TrainSummary> {
    train_with(net, train_set, test_set, cfg, out_dir, resume, &super::distributed::SingleProcess)
}

/// [`train`] as one rank of a data-parallel group (`super::distributed`): `cfg.batch_size` is
/// the global batch, of which this rank takes its part; gradients are all-reduced before the
/// step; rank 0 alone evaluates and writes the folder (a resumed run reads it on every rank, so
/// it must be on a shared file system).
pub fn train_with(
    net: &Network,
    train_set: &Dataset,
    test_set: &Dataset,
    cfg: &TrainConfig,
    out_dir: &Path,
    resume: bool,
    comm: &dyn super::distributed::Collective,
) -> Result<TrainSummary> {
    let root = comm.rank() == 0;
    cfg.validate()?;
    if train_set.is_empty() || test_set.is_empty() {
        bail!("empty training or test set");
    }
    crate::certify::check_data_shape(net, train_set, "training set")?;
    crate::certify::check_data_shape(net, test_set, "test set")?;
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let dtype = if cfg.f64 { DType::F64 } else { DType::F32 };
    let mut opt = Optimizer::new(cfg.optimizer.clone(), net.trainable());
    let mut state =
        TrainState { epochs_done: 0, best_robust_error: None, best_epoch: None, optimizer_steps: 0, log: Vec::new() };
    if resume {
        // Nothing to resume is an error, never a silent fresh start over the old files.
        let Some(s) = read_state(out_dir)? else {
            bail!(
                "nothing to resume in {}: {} is missing. Start without --resume, or pass --restart to start over",
                out_dir.display(),
                out_dir.join(super::resume::STATE_FILE).display()
            );
        };
        super::resume::check_config(out_dir, cfg)?;
        let (spec, tensors) = nets::io::read_safetensors(&out_dir.join("last.safetensors"))?;
        // Checkpoints hold the evaluation form (BatchNorm on running statistics).
        match batchnorm::eval_copy(net)? {
            Some(e) => super::resume::check_architecture(out_dir, spec.as_ref(), &e)?,
            None => super::resume::check_architecture(out_dir, spec.as_ref(), net)?,
        }
        for (name, var) in net.params() {
            let t = tensors.iter().find(|(n, _)| *n == name).with_context(|| format!("checkpoint lacks {name}"))?;
            var.set(&t.1.to_dtype(var.dtype())?)?;
        }
        let (_, ot) = nets::io::read_safetensors(&out_dir.join("optimizer.safetensors"))?;
        opt.load_state(&ot, s.optimizer_steps)?;
        state = s;
    }
    // Every rank starts from rank 0's weights.
    super::distributed::broadcast_params(comm, &net.trainable())?;
    if root {
        write_json_atomic(&out_dir.join("config.json"), cfg)?;
    }
    let n = train_set.len();
    let nb = n.div_ceil(cfg.batch_size);
    let bn_train = batchnorm::trains_batch_stats(net);
    // Every rank needs at least one example of every batch (the last one is the smallest).
    let last = n - (nb - 1) * cfg.batch_size;
    if last < comm.size() {
        bail!(
            "{} processes train together, but the last batch of an epoch has {last} examples ({n} examples in \
             batches of {}): use a batch size and training set that give every process an example",
            comm.size(),
            cfg.batch_size
        );
    }
    for epoch in state.epochs_done..cfg.epochs {
        let t0 = Instant::now();
        let lr = cfg.lr.at(epoch);
        opt.set_lr(lr);
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut StdRng::seed_from_u64(cfg.seed.wrapping_add(epoch as u64)));
        let label = format!("epoch {}/{}", epoch + 1, cfg.epochs);
        let bar = if cfg.quiet || !root { Progress::hidden() } else { Progress::new(label) };
        let (mut loss_sum, mut err_sum, mut rerr_sum, mut seen, mut rerr_seen) = (0.0, 0usize, 0.0, 0usize, 0usize);
        let mut eps = cfg.eps.at(epoch, 0.0);
        for b in 0..nb {
            let idx = &order[b * cfg.batch_size..((b + 1) * cfg.batch_size).min(n)];
            let mut sub = train_set.subset(idx);
            if let Some(aug) = &cfg.augment {
                let step = (epoch * nb + b) as u64;
                aug.apply(
                    &mut sub,
                    &mut StdRng::seed_from_u64(cfg.seed ^ step.wrapping_mul(0xA24B_AED4_963E_E407) ^ 0x5EED),
                );
            }
            // This rank's rows of the (augmented) global batch.
            let (batch_n, part) = (sub.n, super::distributed::local_part(sub.n, comm.rank(), comm.size()));
            let (x, y) = sub.batch(part.start, part.end, &Device::Cpu)?;
            let x = x.to_dtype(dtype)?.to_device(&net.device())?;
            eps = cfg.eps.at(epoch, b as f64 / nb as f64);
            // One forward pass: the clean logits, BatchNorm's batch statistics and the start of
            // the interval bounds.
            let outs = net.forward_all(&x)?;
            if bn_train {
                batchnorm::update_running_stats(net, &outs)?;
            }
            let logits = outs.last().expect("at least one layer").clone();
            let clean_err = argmax_errors(&logits, &y)?;
            let (step, rerr) = match cfg.loss {
                LossKind::Baseline => (StepLoss::Graph(cross_entropy(&logits, &y)?), None),
                LossKind::Robust => {
                    // The dual's graph of a large batch is split into passes of a few examples
                    // (gradient accumulation, `chunked_grads`), unless BatchNorm's batch
                    // statistics tie the examples together.
                    let columns = cfg.proj.unwrap_or(x.elem_count() / x.dim(0)?.max(1));
                    let lens: Vec<usize> = outs.iter().map(|t| t.elem_count() / x.dim(0).unwrap_or(1).max(1)).collect();
                    let bpe = crate::chunked_grads::dual_bytes_per_example(columns, &lens, x.dtype().size_in_bytes());
                    let chunk = if bn_train {
                        y.len()
                    } else {
                        crate::chunked_grads::examples_per_pass(y.len(), bpe, crate::chunked_grads::PASS_MEMORY_BUDGET)
                    };
                    let pass = |r: std::ops::Range<usize>| -> anyhow::Result<(Tensor, f64)> {
                        let x = x.narrow(0, r.start, r.len())?;
                        let dual = match cfg.proj {
                            None => {
                                net.dual(&x, input_set(&x, eps, cfg.norm, cfg.bounded_input)?, &DualOptions::default())?
                            }
                            Some(k) => {
                                // Fresh projections every step, reproducible from the seed (and the
                                // pass: its examples get their own draws).
                                let p = Projection {
                                    k,
                                    seed: (cfg.seed ^ (opt.steps() + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
                                        .wrapping_add(r.start as u64),
                                    inflate_delta: None,
                                };
                                projections::projected_dual(
                                    &x,
                                    net.dual_nodes(&x)?,
                                    &projection_config(eps, cfg.norm, cfg.bounded_input, &p),
                                    &DualOptions::default(),
                                )?
                            }
                        };
                        let rl = robust_loss(&dual, &y[r])?;
                        Ok((rl.loss, rl.error))
                    };
                    if chunk < y.len() {
                        let cg = crate::chunked_grads::mean_loss_grads_in_chunks(y.len(), chunk, pass)?;
                        (StepLoss::Done(cg.loss, cg.grads), Some(cg.stat))
                    } else {
                        let (l, e) = pass(0..y.len())?;
                        (StepLoss::Graph(l), Some(e))
                    }
                }
                LossKind::Madry { steps, step } => {
                    let mut pc = PgdConfig::new(eps);
                    pc.steps = steps;
                    pc.step_size = step;
                    if cfg.bounded_input {
                        pc.clip = Some((0.0, 1.0));
                    }
                    let model = |t: &Tensor| net.forward(t).map_err(|e| candle_core::Error::Msg(e.to_string()));
                    let xa = pgd(model, &x, &y, &pc)?;
                    (StepLoss::Graph(cross_entropy(&net.forward(&xa)?, &y)?), None)
                }
                LossKind::Ibp | LossKind::CrownIbp | LossKind::MtlIbp | LossKind::Sabr => {
                    let kind = cfg.recipe.bound_loss(cfg.loss).expect("an interval-bound loss");
                    let step_seed = cfg.seed ^ (opt.steps() + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
                    let (l, e) = interval_loss(net, &outs, &y, eps, cfg, &kind, step_seed)?;
                    (StepLoss::Graph(l), e)
                }
            };
            let (mut lv, mut grads) = match step {
                StepLoss::Graph(loss) => {
                    // The loss is consumed: the pass frees the forward graph as it goes.
                    (loss.to_dtype(DType::F64)?.to_scalar::<f64>()?, loss.backward_consuming()?)
                }
                StepLoss::Done(lv, grads) => (lv, grads),
            };
            // The batch's gradient and statistics: this rank's weighted by its share of the batch.
            let share = y.len() as f64 / batch_n as f64;
            let (mut clean_err, mut rerr) = (clean_err, rerr);
            let sums = super::distributed::all_reduce_grads(
                comm,
                &net.trainable(),
                &mut grads,
                share,
                &[lv * share, clean_err as f64, rerr.unwrap_or(0.0) * share],
            )?;
            if comm.size() > 1 {
                (lv, clean_err) = (sums[0], sums[1].round() as usize);
                rerr = rerr.map(|_| sums[2]);
            }
            if !lv.is_finite() {
                bail!("the loss became {lv} at epoch {} batch {}; {}", epoch + 1, b + 1, kept(out_dir, &state));
            }
            if let Some(m) = cfg.clip_grad_norm {
                opt.clip_grad_norm(&mut grads, m)?;
            }
            opt.step(&grads)?;
            if let Some(name) = nets::io::first_non_finite(&net.state_dict())? {
                bail!(
                    "parameter `{name}` became NaN or infinite at epoch {} batch {} (learning rate {lr:e}); {}",
                    epoch + 1,
                    b + 1,
                    kept(out_dir, &state)
                );
            }
            loss_sum += lv * batch_n as f64;
            err_sum += clean_err;
            if let Some(r) = rerr {
                rerr_sum += r * batch_n as f64;
                rerr_seen += batch_n;
            }
            seen += batch_n;
            let mut msg =
                format!("eps {eps:.4} loss {:.4} err {:.4}", loss_sum / seen as f64, err_sum as f64 / seen as f64);
            if rerr.is_some() {
                msg.push_str(&format!(" robust err {:.4}", rerr_sum / rerr_seen.max(1) as f64));
            }
            bar.update(b as u64 + 1, nb as u64, &msg);
        }
        bar.finish();
        if !root {
            // Rank 0 evaluates and keeps the files; the others go on to the next epoch.
            state.epochs_done = epoch + 1;
            continue;
        }
        let settings = EvalSettings {
            eps: cfg.eps.end,
            norm: cfg.norm,
            bounded_input: cfg.bounded_input,
            pgd: false,
            memory_budget: None,
            proj: None,
        };
        // Interval-trained networks are often certified better by IBP than by the dual.
        let or_ibp = cfg.loss.is_interval();
        let test_bound = if or_ibp { "exact+ibp" } else { "exact" };
        if !cfg.quiet {
            let n_eval = cfg.eval_limit.unwrap_or(test_set.len()).min(test_set.len());
            eprintln!("epoch {}: certifying {n_eval} test examples ({test_bound} bound)", epoch + 1);
        }
        let eval_net = batchnorm::eval_copy(net)?;
        let saved = eval_net.as_ref().unwrap_or(net);
        let eval = if or_ibp { evaluate_exact_or_ibp } else { evaluate };
        let ev = eval(saved, test_set, &settings, cfg.batch_size, cfg.eval_limit, dtype)?;
        let en = ev.n.max(1) as f64;
        let entry = EpochLog {
            epoch: epoch + 1,
            lr,
            eps,
            train_loss: loss_sum / seen.max(1) as f64,
            train_error: err_sum as f64 / seen.max(1) as f64,
            train_robust_error: (rerr_seen > 0).then(|| rerr_sum / rerr_seen as f64),
            test_error: ev.clean_errors as f64 / en,
            test_robust_error: ev.robust_errors as f64 / en,
            test_bound: Some(test_bound.to_string()),
            seconds: t0.elapsed().as_secs_f64(),
        };
        if !cfg.quiet {
            eprintln!(
                "epoch {}: loss {:.4} err {:.4} | test err {:.4} robust err {:.4} ({:.0} s)",
                entry.epoch,
                entry.train_loss,
                entry.train_error,
                entry.test_error,
                entry.test_robust_error,
                entry.seconds
            );
        }
        // Checkpoints first, then the state that points at them.
        nets::io::save_safetensors(saved, &out_dir.join("last.safetensors"))?;
        let (ot, steps) = opt.state();
        let bytes = safetensors_bytes(&ot)?;
        nets::io::atomic_write(&out_dir.join("optimizer.safetensors"), &bytes)?;
        if state.best_robust_error.is_none_or(|b| entry.test_robust_error < b) {
            state.best_robust_error = Some(entry.test_robust_error);
            state.best_epoch = Some(entry.epoch);
            nets::io::save_safetensors(saved, &out_dir.join("best.safetensors"))?;
        }
        state.log.push(entry);
        state.epochs_done = epoch + 1;
        state.optimizer_steps = steps;
        write_log(out_dir, &state.log)?;
        write_json_atomic(&out_dir.join("state.json"), &state)?;
    }
    Ok(TrainSummary {
        best_robust_error: state.best_robust_error.unwrap_or(1.0),
        best_epoch: state.best_epoch.unwrap_or(0),
        log: state.log,
        out_dir: out_dir.to_path_buf(),
    })
}

/// What is left after training stops on a non-finite value: the checkpoints of the last
/// finished epoch, which are never overwritten with the broken weights.
fn kept(dir: &Path, state: &TrainState) -> String {
    match state.epochs_done {
        0 => "training stopped before the first checkpoint (try a smaller --lr or --clip-grad)".into(),
        e => format!(
            "training stopped; the last good checkpoint (epoch {e}) is {} (try a smaller --lr or --clip-grad)",
            dir.join("last.safetensors").display()
        ),
    }
}

fn safetensors_bytes(t: &[(String, Tensor)]) -> Result<Vec<u8>> {
    Ok(safetensors::serialize(t.iter().map(|(n, t)| (n.as_str(), t)), None)?)
}

/// One step's interval-bound loss (IBP, CROWN-IBP or MTL-IBP) at radius `eps`, plus Shi et al.'s
/// warm-up regulariser when configured; returns the loss and the fraction of the batch the
/// training bound leaves uncertified.
#[allow(clippy::too_many_arguments)]
fn interval_loss(
    net: &Network,
    outs: &[Tensor],
    y: &[u32],
    eps: f64,
    cfg: &TrainConfig,
    kind: &BoundLoss,
    seed: u64,
) -> Result<(Tensor, Option<f64>)> {
    let progress = cfg.eps.progress(eps);
    let parts = bound_loss(kind, net, outs, y, eps, progress, cfg.norm, cfg.bounded_input, seed)?;
    let mut loss = parts.loss;
    if let Some(lambda) = cfg.recipe.warmup_reg {
        let w = intensity(lambda, progress);
        if w > 0.0 && eps > 0.0 {
            if let Some(r) = warmup_terms(&parts.layers, input_radius(&outs[0], eps, cfg.bounded_input)?)? {
                loss = (loss + (r.value * w)?)?;
            }
        }
    }
    Ok((loss, parts.robust_error))
}
