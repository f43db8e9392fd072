//! The papers' experiments with their hyperparameters as defaults, and a `--quick` mode.

use crate::certify::{default_data_dir, evaluate, EvalSettings, Norm};
use crate::datasets::cifar::{CIFAR_MEAN, CIFAR_STD};
use crate::datasets::{load, Split};
use crate::report::{write_json_atomic, Table};
use crate::train::{train, Augment, EpsilonSchedule, LossKind, LrSchedule, OptimizerConfig, TrainConfig};
use anyhow::{Context, Result};
use candle_core::{DType, Device};
use nets::{zoo, Network};
use serde::Serialize;
use std::path::PathBuf;

/// Published figures of one experiment (error rates, fractions).
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct PaperFigures {
    /// Clean error.
    pub clean: Option<f64>,
    /// PGD error.
    pub pgd: Option<f64>,
    /// Certified robust error.
    pub robust: Option<f64>,
}

/// One reproducible experiment.
#[derive(Debug, Clone, Serialize)]
pub struct Experiment {
    /// Name for `cargo xtask reproduce NAME`.
    pub name: &'static str,
    /// Which paper (1 or 2).
    pub paper: u8,
    /// Data set.
    pub dataset: &'static str,
    /// Architecture (zoo name).
    pub arch: &'static str,
    /// Training settings (the paper's).
    pub train: TrainConfig,
    /// Radius used for evaluation.
    pub eps: f64,
    /// The paper's numbers.
    pub paper_figures: PaperFigures,
}

fn paper1(eps: f64, epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 50,
        optimizer: OptimizerConfig::adam(1e-3),
        lr: LrSchedule::constant(1e-3),
        eps: EpsilonSchedule::constant(eps),
        loss: LossKind::Robust,
        norm: Norm::Linf,
        bounded_input: false,
        clip_grad_norm: None,
        seed: 0,
        eval_limit: None,
        f64: false,
        quiet: false,
        proj: None,
        augment: None,
        recipe: Default::default(),
    }
}

fn paper2_mnist(eps: f64, norm: Norm) -> TrainConfig {
    TrainConfig {
        epochs: 60,
        lr: LrSchedule { base: 1e-3, after: 20, every: 10, gamma: 0.5 },
        eps: EpsilonSchedule::linear(0.01, eps, 20),
        bounded_input: norm == Norm::Linf,
        norm,
        proj: Some(50),
        ..paper1(eps, 60)
    }
}

fn paper2_cifar(eps: f64) -> TrainConfig {
    TrainConfig {
        epochs: 60,
        batch_size: 50,
        optimizer: OptimizerConfig::sgd(0.05, 0.9, 5e-4),
        lr: LrSchedule { base: 0.05, after: 20, every: 10, gamma: 0.5 },
        eps: EpsilonSchedule::linear(0.001, eps, 20),
        clip_grad_norm: Some(1.0),
        proj: Some(50),
        augment: Some(Augment::cifar(CIFAR_MEAN, CIFAR_STD)),
        ..paper1(eps, 60)
    }
}

/// Every experiment `reproduce` knows.
pub fn registry() -> Vec<Experiment> {
    let p = |c: f64, g: Option<f64>, r: f64| PaperFigures { clean: Some(c), pgd: g, robust: Some(r) };
    let r = |r: f64| PaperFigures { clean: None, pgd: None, robust: Some(r) };
    vec![
        Experiment {
            name: "mnist",
            paper: 1,
            dataset: "mnist",
            arch: "mnist-small",
            train: TrainConfig { eps: EpsilonSchedule::linear(0.05, 0.1, 50), ..paper1(0.1, 100) },
            eps: 0.1,
            paper_figures: p(0.018, Some(0.041), 0.058),
        },
        Experiment {
            name: "fashion-mnist",
            paper: 1,
            dataset: "fashion-mnist",
            arch: "mnist-small",
            train: paper1(0.1, 20),
            eps: 0.1,
            paper_figures: p(0.2173, Some(0.3163), 0.3453),
        },
        Experiment {
            name: "har",
            paper: 1,
            dataset: "har",
            arch: "har-500",
            train: paper1(0.05, 20),
            eps: 0.05,
            paper_figures: PaperFigures::default(),
        },
        Experiment {
            name: "svhn",
            paper: 1,
            dataset: "svhn",
            arch: "svhn-small",
            train: TrainConfig { batch_size: 20, eps: EpsilonSchedule::linear(0.001, 0.01, 10), ..paper1(0.01, 20) },
            eps: 0.01,
            paper_figures: r(0.4067),
        },
        Experiment {
            name: "mnist-small",
            paper: 2,
            dataset: "mnist",
            arch: "mnist-small",
            train: paper2_mnist(0.3, Norm::Linf),
            eps: 0.3,
            paper_figures: r(0.4310),
        },
        Experiment {
            name: "mnist-large",
            paper: 2,
            dataset: "mnist",
            arch: "mnist-large",
            train: paper2_mnist(0.1, Norm::Linf),
            eps: 0.1,
            paper_figures: r(0.0367),
        },
        Experiment {
            name: "mnist-l2",
            paper: 2,
            dataset: "mnist",
            arch: "mnist-small",
            train: paper2_mnist(1.58, Norm::L2),
            eps: 1.58,
            paper_figures: r(0.1186),
        },
        Experiment {
            name: "cifar-small",
            paper: 2,
            dataset: "cifar10",
            arch: "cifar-small",
            train: paper2_cifar(0.139),
            eps: 0.139,
            paper_figures: PaperFigures::default(),
        },
        Experiment {
            name: "cifar-large",
            paper: 2,
            dataset: "cifar10",
            arch: "cifar-large",
            train: paper2_cifar(0.139),
            eps: 0.139,
            paper_figures: PaperFigures::default(),
        },
        Experiment {
            name: "cifar-resnet",
            paper: 2,
            dataset: "cifar10",
            arch: "cifar-resnet",
            train: paper2_cifar(0.0348),
            eps: 0.0348,
            paper_figures: r(0.4611),
        },
    ]
}

/// Settings of a `reproduce` run.
#[derive(Debug, Clone)]
pub struct ReproduceOptions {
    /// Small subset, few epochs: minutes on 2 CPU cores.
    pub quick: bool,
    /// Data folder (default `data/NAME`, else `/usr/share/datasets/NAME`).
    pub data_dir: Option<PathBuf>,
    /// Output folder (default `results/NAME`).
    pub out_dir: Option<PathBuf>,
    /// Override the number of epochs.
    pub epochs: Option<usize>,
    /// Use only this many training examples.
    pub train_limit: Option<usize>,
    /// Evaluate on only this many test examples.
    pub test_limit: Option<usize>,
    /// Continue an interrupted run.
    pub resume: bool,
    /// Seed.
    pub seed: u64,
}

/// The outcome, written as `results.json` and `results.md`.
#[derive(Debug, Clone, Serialize)]
pub struct ReproduceReport {
    /// The experiment and its settings.
    pub experiment: Experiment,
    /// Quick mode.
    pub quick: bool,
    /// Training examples used.
    pub train_examples: usize,
    /// Test examples evaluated.
    pub test_examples: usize,
    /// Clean test error.
    pub clean_error: f64,
    /// PGD test error.
    pub pgd_error: f64,
    /// Certified robust test error (exact bound).
    pub robust_error: f64,
    /// Seconds in all.
    pub seconds: f64,
}

impl ReproduceReport {
    /// Ours beside the paper's.
    pub fn table(&self) -> Table {
        let mut t = Table::new(&["error", "ours", "paper"]);
        let f = |v: Option<f64>| v.map(|v| format!("{:.2} %", 100.0 * v)).unwrap_or_else(|| "–".into());
        let pf = &self.experiment.paper_figures;
        t.row(&["clean", &f(Some(self.clean_error)), &f(pf.clean)]);
        t.row(&["PGD", &f(Some(self.pgd_error)), &f(pf.pgd)]);
        t.row(&["certified robust", &f(Some(self.robust_error)), &f(pf.robust)]);
        t
    }

    /// Markdown for `results.md`.
    pub fn markdown(&self) -> String {
        let e = &self.experiment;
        format!(
            "# reproduce {}{}\n\nPaper {} · {} · {} · eps {} · {} training examples, {} epochs · {} test examples · {:.0} s\n\n{}",
            e.name,
            if self.quick { " --quick" } else { "" },
            e.paper,
            e.dataset,
            e.arch,
            e.eps,
            self.train_examples,
            e.train.epochs,
            self.test_examples,
            self.seconds,
            self.table()
        )
    }
}

/// The output folder of experiment `name` when none is given: `results/NAME` (`results/NAME-quick`
/// in quick mode).
pub fn default_out_dir(name: &str, quick: bool) -> PathBuf {
    PathBuf::from("results").join(if quick { format!("{name}-quick") } else { name.to_string() })
}

/// Runs experiment `name`: trains with the paper's settings (or the quick ones), evaluates
/// clean, PGD and certified robust error, and writes `results.json` / `results.md`.
pub fn reproduce(name: &str, opts: &ReproduceOptions) -> Result<ReproduceReport> {
    let start = std::time::Instant::now();
    let mut exp = registry().into_iter().find(|e| e.name == name).with_context(|| {
        format!(
            "unknown experiment `{name}`; known: {}",
            registry().iter().map(|e| e.name).collect::<Vec<_>>().join(", ")
        )
    })?;
    let data_dir = opts.data_dir.clone().unwrap_or_else(|| default_data_dir(exp.dataset));
    let out_dir = opts.out_dir.clone().unwrap_or_else(|| default_out_dir(name, opts.quick));
    let mut train_set = load(exp.dataset, &data_dir, Split::Train)?;
    let mut test_set = load(exp.dataset, &data_dir, Split::Test)?;
    let (mut train_limit, mut test_limit) = (opts.train_limit, opts.test_limit);
    if opts.quick {
        exp.train.epochs = 2;
        exp.train.eps = EpsilonSchedule::linear(exp.train.eps.start.min(exp.eps) * 0.5, exp.eps, 1);
        exp.train.lr = LrSchedule::constant(exp.train.lr.base);
        train_limit = train_limit.or(Some(5000));
        test_limit = test_limit.or(Some(500));
        exp.train.eval_limit = Some(100);
        // Quick mode trains with 20 random projections (exact training costs ~9 GiB and ~8 s
        // per batch of 50 on 2 cores; 20 projections ~0.6 s) on 5000 examples, and still
        // evaluates with the exact bound.
        exp.train.proj = Some(20);
    }
    if let Some(e) = opts.epochs {
        exp.train.epochs = e;
    }
    exp.train.seed = opts.seed;
    if let Some(l) = train_limit {
        train_set.truncate(l);
    }
    if let Some(l) = test_limit {
        test_set.truncate(l);
    }
    let spec = zoo::by_name(exp.arch)?;
    let net = Network::init(&spec, opts.seed, DType::F32, &Device::Cpu)?;
    eprintln!(
        "reproduce {name}: training {} on {} examples for {} epochs (out: {})",
        exp.arch,
        train_set.len(),
        exp.train.epochs,
        out_dir.display()
    );
    let summary = train(&net, &train_set, &test_set, &exp.train, &out_dir, opts.resume)?;
    let best = nets::io::load_model(&summary.out_dir.join("best.safetensors"), None, DType::F32, &Device::Cpu)?;
    eprintln!("evaluating the best model (epoch {}) on {} test examples", summary.best_epoch, test_set.len());
    let settings = EvalSettings {
        eps: exp.eps,
        norm: exp.train.norm,
        bounded_input: exp.train.bounded_input,
        pgd: true,
        memory_budget: None,
        proj: None,
    };
    let ev = evaluate(&best, &test_set, &settings, 50, None, DType::F32)?;
    let n = ev.n.max(1) as f64;
    let report = ReproduceReport {
        quick: opts.quick,
        train_examples: train_set.len(),
        test_examples: ev.n,
        clean_error: ev.clean_errors as f64 / n,
        pgd_error: ev.pgd_errors as f64 / n,
        robust_error: ev.robust_errors as f64 / n,
        seconds: start.elapsed().as_secs_f64(),
        experiment: exp,
    };
    write_json_atomic(&out_dir.join("results.json"), &report)?;
    nets::io::atomic_write(&out_dir.join("results.md"), report.markdown().as_bytes())?;
    Ok(report)
}
