//! `cargo xtask reproduce NAME`: the papers' experiments.

use crate::parse;
use anyhow::{bail, Context, Result};
use clap::Args;
use experiments::reproduce::{default_out_dir, registry, reproduce, ReproduceOptions};
use experiments::train::resume;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ReproduceArgs {
    /// Experiment: mnist, fashion-mnist, har, svhn (paper 1); mnist-small, mnist-large, mnist-l2,
    /// cifar-small, cifar-large, cifar-resnet (paper 2); toy2d (the 2-d example, a PNG);
    /// primal (dual bound vs. LP); min-distance (largest certified radius per example);
    /// `list` shows them with their settings.
    name: String,
    /// Small subset and few epochs: a few minutes on 2 CPU cores.
    #[arg(long)]
    quick: bool,
    /// Data folder (default data/NAME, else /usr/share/datasets/NAME).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Output folder (default results/NAME).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Override the number of epochs (≥ 1).
    #[arg(long, value_parser = parse::at_least_one)]
    epochs: Option<usize>,
    /// Train on only the first N examples (N ≥ 1).
    #[arg(long, value_parser = parse::at_least_one)]
    train_limit: Option<usize>,
    /// Evaluate on only the first N test examples (N ≥ 1).
    #[arg(long, value_parser = parse::at_least_one)]
    test_limit: Option<usize>,
    /// Continue an interrupted run from its last checkpoint (refused when there is none).
    #[arg(long, conflicts_with = "restart")]
    resume: bool,
    /// Start over in an output folder that already holds a run, overwriting it.
    #[arg(long)]
    restart: bool,
    /// Seed of the initialisation and data order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    extra: crate::extra::ExtraArgs,
}

/// One line per experiment `reproduce` runs: the training runs of the registry with the paper's
/// settings, then the 2-d example and the two checks that train little or nothing, with their
/// default settings.
fn list_lines() -> Vec<String> {
    let mut lines: Vec<String> = registry()
        .iter()
        .map(|e| {
            format!(
                "{:14} paper {} · {:13} · {:13} · eps {} · {} epochs, batch {}",
                e.name, e.paper, e.dataset, e.arch, e.eps, e.train.epochs, e.train.batch_size
            )
        })
        .collect();
    let t = experiments::toy2d::Toy2dConfig::default();
    lines.push(format!(
        "{:14} paper 1 · the 2-d example: {} random points, eps {}, {} steps · picture {}",
        "toy2d",
        t.points,
        t.eps,
        t.steps,
        t.png.display()
    ));
    let p = experiments::primal::PrimalConfig::default();
    let hidden: Vec<String> = p.hidden.iter().map(|h| h.to_string()).collect();
    lines.push(format!(
        "{:14} paper 1 · dual bound vs. the LP on {} test examples · MLP {} trained {} epoch(s) on {} \
         fashion-mnist examples · eps {}",
        "primal",
        p.examples,
        hidden.join("-"),
        p.epochs,
        p.train_examples,
        p.eps
    ));
    let s = experiments::min_distance::SearchConfig::default();
    let norm = match s.norm {
        experiments::certify::Norm::Linf => "l_inf radius",
        experiments::certify::Norm::L2 => "l2 radius",
    };
    lines.push(format!(
        "{:14} paper 1 · largest certified radius per test example · fashion-mnist · --model (default: the \
         paper's mnist-small) · {} from {} up to {}",
        "min-distance", norm, s.initial, s.max_eps
    ));
    lines
}

pub fn run(a: ReproduceArgs) -> Result<()> {
    if a.name == "list" {
        for l in list_lines() {
            println!("{l}");
        }
        return Ok(());
    }
    let extra = ["toy2d", "primal", "min-distance"];
    if !registry().iter().any(|e| e.name == a.name) && !extra.contains(&a.name.as_str()) {
        bail!(
            "unknown experiment `{}`; known: {}, {} (`list` shows them)",
            a.name,
            registry().iter().map(|e| e.name).collect::<Vec<_>>().join(", "),
            extra.join(", ")
        );
    }
    let unused = unused_flags(&a);
    if !unused.is_empty() {
        bail!("{} not used by `reproduce {}`: drop {}", unused.join(", "), a.name, plural(unused.len()));
    }
    if a.name == "primal" || a.name == "min-distance" {
        return crate::extra::run(&a.name, &a.extra, a.data_dir, a.out, a.quick, a.seed, a.epochs, a.train_limit);
    }
    if a.name == "toy2d" {
        let mut cfg = experiments::toy2d::Toy2dConfig { seed: a.seed, ..Default::default() };
        if let Some(o) = &a.out {
            cfg.png = o.join("toy2d.png");
        }
        nets::io::check_writable_file(&cfg.png).context("--out")?;
        if a.quick {
            cfg.steps = 300;
        }
        let r = experiments::toy2d::run(&cfg)?;
        println!(
            "toy2d: {} points, eps {}: standard classifier certifies {}/{} (training error {:.0} %), robust classifier certifies {}/{} (training error {:.0} %)\npicture: {}",
            r.points, cfg.eps, r.standard_certified, r.points, 100.0 * r.standard_error, r.robust_certified, r.points, 100.0 * r.robust_error, r.png.display()
        );
        return Ok(());
    }
    let out_dir = a.out.clone().unwrap_or_else(|| default_out_dir(&a.name, a.quick));
    resume::claim_out_dir(&out_dir, &out_dir, a.resume, a.restart)?;
    let opts = ReproduceOptions {
        quick: a.quick,
        data_dir: a.data_dir,
        out_dir: a.out,
        epochs: a.epochs,
        train_limit: a.train_limit,
        test_limit: a.test_limit,
        resume: a.resume,
        seed: a.seed,
    };
    let r = reproduce(&a.name, &opts)?;
    println!("{}", r.markdown());
    Ok(())
}

/// The flags given that experiment `a.name` would silently ignore.
fn unused_flags(a: &ReproduceArgs) -> Vec<&'static str> {
    let name = a.name.as_str();
    let paper = registry().iter().any(|e| e.name == name);
    let (toy, pr) = (name == "toy2d", name == "primal");
    let mut v: Vec<&'static str> = [
        (a.data_dir.is_some(), "--data-dir", !toy),
        (a.epochs.is_some(), "--epochs", paper || pr),
        (a.train_limit.is_some(), "--train-limit", paper || pr),
        (a.test_limit.is_some(), "--test-limit", paper),
        (a.resume, "--resume", paper),
        (a.restart, "--restart", paper),
    ]
    .into_iter()
    .filter(|&(given, _, used)| given && !used)
    .map(|(_, flag, _)| flag)
    .collect();
    v.extend(a.extra.unused_by(name));
    v
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        "it"
    } else {
        "them"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, Command};

    /// `reproduce list` shows every experiment `reproduce` runs, and the help of NAME names
    /// every one of them.
    #[test]
    fn list_and_help_name_every_experiment() {
        let lines = list_lines();
        let listed: Vec<&str> = lines.iter().map(|l| l.split_whitespace().next().unwrap()).collect();
        let mut want: Vec<&str> = registry().iter().map(|e| e.name).collect();
        want.extend(["toy2d", "primal", "min-distance"]);
        assert_eq!(listed, want);
        let cmd = ReproduceArgs::augment_args(Command::new("reproduce"));
        let help = cmd.get_arguments().find(|a| a.get_id() == "name").unwrap().get_help().unwrap().to_string();
        for name in want {
            assert!(help.contains(name), "the help of NAME does not mention {name}: {help}");
        }
    }
}
