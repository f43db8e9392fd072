//! `cargo xtask reproduce primal` and `cargo xtask reproduce min-distance`: the checks that are
//! not a training run.

use crate::parse;
use crate::size::parse_memory_budget;
use anyhow::{bail, Context, Result};
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
    /// the first N (default 10); N ≥ 1.
    #[arg(long, value_parser = parse::at_least_one)]
    limit: Option<usize>,
    /// primal: radius of the l_inf ball (default 0.1); min-distance: the first radius tried
    /// (default 0.1). Finite, > 0.
    #[arg(long, allow_hyphen_values = true, value_parser = parse::positive)]
    eps: Option<f64>,
    /// Intersect the l_inf ball with [0, 1].
    #[arg(long)]
    bounded_input: bool,
    /// min-distance: norm of the ball, linf or l2.
    #[arg(long, default_value = "linf")]
    norm: String,
    /// min-distance: the largest radius tried (finite, ≥ --eps).
    #[arg(long, default_value_t = 1.0, allow_hyphen_values = true, value_parser = parse::positive)]
    max_eps: f64,
    /// min-distance: examples per batch.
    #[arg(long, default_value_t = 50, value_parser = parse::at_least_one)]
    batch_size: usize,
    /// min-distance: memory budget of the bound, e.g. 4GiB, 512MiB or 1e9 (units as for
    /// certify; at least 1 MiB).
    #[arg(long, allow_hyphen_values = true, value_parser = parse_memory_budget)]
    memory_budget: Option<usize>,
    /// min-distance: compute in f64 (default f32).
    #[arg(long)]
    f64: bool,
    /// primal: hidden widths of the MLP trained on Fashion-MNIST, comma-separated.
    #[arg(long, default_value = "100,100")]
    hidden: String,
}

impl ExtraArgs {
    /// The flags of this group given on the command line that experiment `name` would ignore
    /// (flags with a default value cannot be told from their default and are not listed).
    pub fn unused_by(&self, name: &str) -> Vec<&'static str> {
        let (md, pr) = (name == "min-distance", name == "primal");
        [
            (self.model.is_some(), "--model", md || pr),
            (self.arch.is_some(), "--arch", md || pr),
            (self.limit.is_some(), "--limit", md || pr),
            (self.eps.is_some(), "--eps", md || pr),
            (self.bounded_input, "--bounded-input", md || pr),
            (self.memory_budget.is_some(), "--memory-budget", md),
            (self.f64, "--f64", md),
        ]
        .into_iter()
        .filter(|&(given, _, used)| given && !used)
        .map(|(_, flag, _)| flag)
        .collect()
    }
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
        .map(|s| s.trim().parse::<usize>().ok().filter(|&w| w > 0))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| anyhow::anyhow!("--hidden must be comma-separated widths ≥ 1, got `{}`", a.hidden))?;
    if let Some(m) = &a.model {
        nets::io::check_model_file(m)?;
    }
    let out_dir = out.unwrap_or(d.out_dir.clone());
    nets::io::check_writable_dir(&out_dir).context("--out")?;
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
        out_dir,
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
        memory_budget: a.memory_budget,
        ..Default::default()
    };
    if search.max_eps < search.initial {
        bail!("--max-eps {} is smaller than the first radius tried (--eps {})", search.max_eps, search.initial);
    }
    if search.bounded_input && search.norm == Norm::L2 {
        bail!("--bounded-input is only supported with --norm linf");
    }
    let model = a.model.clone().unwrap_or_else(|| PathBuf::from("../shared/models/fashion_mnist_small_eps0.1.pth"));
    nets::io::check_model_file(&model)?;
    // The documented default architecture, for files that hold none (a .safetensors file may
    // carry its own, which a default must not override).
    let arch = match &a.arch {
        Some(s) => Some(s.clone()),
        None if nets::io::holds_architecture(&model)? => None,
        None => Some("mnist-small".to_string()),
    };
    let out_dir = out.unwrap_or_else(|| PathBuf::from("results/min-distance"));
    nets::io::check_writable_dir(&out_dir).context("--out")?;
    let cfg = MinDistanceConfig {
        model,
        arch,
        data_dir: data_dir.unwrap_or_else(|| default_data_dir(&a.dataset)),
        dataset: a.dataset.clone(),
        limit: a.limit.or(quick.then_some(100)),
        batch_size: a.batch_size,
        f64: a.f64,
        search,
        out_dir,
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
