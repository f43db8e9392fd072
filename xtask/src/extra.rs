//! `cargo xtask reproduce primal` and `cargo xtask reproduce min-distance`: the checks that are
//! not a training run.

use crate::size::parse_size;
use anyhow::{bail, Result};
use clap::Args;
use experiments::certify::{default_data_dir, Norm};
use experiments::min_distance::{MinDistanceConfig, SearchConfig};
use experiments::primal::PrimalConfig;
use experiments::progress::Progress;
use std::path::PathBuf;

/// Flags of `primal` and `min-distance`.
#[derive(Args, Debug)]
#[command(next_help_heading = "primal / min-distance")]
pub struct ExtraArgs {
    /// Model file (min-distance; default ../shared/models/fashion_mnist_small_eps0.1.pth; primal:
    /// an MLP to use instead of training one).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Architecture of --model when the file holds none (min-distance default: mnist-small).
    #[arg(long)]
    arch: Option<String>,
    /// Data set of min-distance: mnist or fashion-mnist.
    #[arg(long, default_value = "fashion-mnist")]
    dataset: String,
    /// Examples: min-distance searches the first N test examples (default all), primal compares
    /// the first N (default 10).
    #[arg(long)]
    limit: Option<usize>,
    /// primal: radius of the l_inf ball (default 0.1); min-distance: the first radius tried.
    #[arg(long)]
    eps: Option<f64>,
    /// Intersect the l_inf ball with [0, 1].
    #[arg(long)]
    bounded_input: bool,
    /// min-distance: norm of the ball, linf or l2.
    #[arg(long, default_value = "linf")]
    norm: String,
    /// min-distance: the largest radius tried.
    #[arg(long, default_value_t = 1.0)]
    max_eps: f64,
    /// min-distance: examples per batch.
    #[arg(long, default_value_t = 50)]
    batch_size: usize,
    /// min-distance: memory budget of the bound (e.g. 4GiB).
    #[arg(long)]
    memory_budget: Option<String>,
    /// min-distance: compute in f64 (default f32).
    #[arg(long)]
    f64: bool,
    /// primal: hidden widths of the MLP trained on Fashion-MNIST, comma-separated.
    #[arg(long, default_value = "100,100")]
    hidden: String,
}

/// Runs `name` (`primal` or `min-distance`).
#[allow(clippy::too_many_arguments)] // the shared `reproduce` flags, passed through as they are
pub fn run(
    name: &str,
    a: &ExtraArgs,
    data_dir: Option<PathBuf>,
    out: Option<PathBuf>,
    quick: bool,
    seed: u64,
    epochs: Option<usize>,
    train_limit: Option<usize>,
) -> Result<()> {
    match name {
        "primal" => primal(a, data_dir, out, quick, seed, epochs, train_limit),
        "min-distance" => min_distance(a, data_dir, out, quick),
        other => bail!("not an extra experiment: {other}"),
    }
}

fn primal(
    a: &ExtraArgs,
    data_dir: Option<PathBuf>,
    out: Option<PathBuf>,
    quick: bool,
    seed: u64,
    epochs: Option<usize>,
    train_limit: Option<usize>,
) -> Result<()> {
    let d = PrimalConfig::default();
    let hidden = a
        .hidden
        .split(',')
        .map(|s| s.trim().parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| anyhow::anyhow!("--hidden must be comma-separated widths, got `{}`", a.hidden))?;
    let cfg = PrimalConfig {
        examples: a.limit.unwrap_or(if quick { 3 } else { d.examples }),
        eps: a.eps.unwrap_or(d.eps),
        bounded_input: a.bounded_input,
        hidden,
        train_examples: train_limit.unwrap_or(if quick { 300 } else { d.train_examples }),
        epochs: epochs.unwrap_or(if quick { 1 } else { d.epochs }),
        seed,
        data_dir,
        model: a.model.clone(),
        arch: a.arch.clone(),
        out_dir: out.unwrap_or(d.out_dir),
    };
    let r = experiments::primal::run(&cfg)?;
    println!("{}", r.markdown());
    println!("results: {}", cfg.out_dir.join("results.json").display());
    if r.violations > 0 {
        bail!(
            "{} rows with LP < J - {:e}: the dual bound is not below the LP",
            r.violations,
            experiments::primal::TOLERANCE
        );
    }
    Ok(())
}

fn min_distance(a: &ExtraArgs, data_dir: Option<PathBuf>, out: Option<PathBuf>, quick: bool) -> Result<()> {
    let search = SearchConfig {
        norm: a.norm.parse::<Norm>()?,
        bounded_input: a.bounded_input,
        initial: a.eps.unwrap_or(SearchConfig::default().initial),
        max_eps: a.max_eps,
        memory_budget: a.memory_budget.as_deref().map(parse_size).transpose()?,
        ..Default::default()
    };
    let (model, arch) = match &a.model {
        Some(m) => (m.clone(), a.arch.clone()),
        None => (
            PathBuf::from("../shared/models/fashion_mnist_small_eps0.1.pth"),
            Some(a.arch.clone().unwrap_or_else(|| "mnist-small".into())),
        ),
    };
    let cfg = MinDistanceConfig {
        model,
        arch,
        data_dir: data_dir.unwrap_or_else(|| default_data_dir(&a.dataset)),
        dataset: a.dataset.clone(),
        limit: a.limit.or(quick.then_some(100)),
        batch_size: a.batch_size,
        f64: a.f64,
        search,
        out_dir: out.unwrap_or_else(|| PathBuf::from("results/min-distance")),
    };
    let bar = Progress::new("min-distance");
    let r = experiments::min_distance::run(&cfg, |done, total| bar.update(done as u64, total as u64, ""))?;
    bar.finish();
    println!("{}", r.table());
    println!("results: {}", cfg.out_dir.join("results.json").display());
    if let Some(p) = &r.histogram {
        println!("histogram: {}", p.display());
    }
    Ok(())
}
