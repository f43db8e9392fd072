//! `cargo xtask certify`: certified evaluation of a model on a test set.

use crate::size::parse_size;
use anyhow::Result;
use clap::Args;
use experiments::certify::{certify, default_data_dir, is_projected_norm, CertifyConfig, Norm, Projection};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Args, Debug)]
pub struct CertifyArgs {
    #[command(flatten)]
    md: crate::args::ModelDataArgs,
    /// Norm of the ball: linf or l2 (exact bound), linf-median or l2-normal (random projections,
    /// with --proj K: an estimate, not a certificate).
    #[arg(long, default_value = "linf")]
    norm: String,
    /// Number of random projections for linf-median / l2-normal.
    #[arg(long)]
    proj: Option<usize>,
    /// Seed of the random projections.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Inflate projected estimates so the bound holds with probability 1 - DELTA.
    #[arg(long)]
    inflate_delta: Option<f64>,
    /// Intersect the ball with the data range [0, 1].
    #[arg(long)]
    bounded_input: bool,
    /// Also run PGD (100 steps of 0.01, sign of the gradient, projected to the ball).
    #[arg(long)]
    pgd: bool,
    /// Memory budget for the bound computation (e.g. 4GiB): columns are processed in chunks.
    #[arg(long)]
    memory_budget: Option<String>,
    /// Where to compute: cpu or cuda[:N] (CUDA needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The bound: exact (the dual, default), proj (with --proj K), ibp, crown, crown-ibp, alpha-crown.
    #[arg(long, default_value = "exact")]
    bound: String,
    /// α-CROWN: Adam iterations.
    #[arg(long, default_value_t = 20)]
    alpha_iters: usize,
    /// α-CROWN: Adam's learning rate.
    #[arg(long, default_value_t = 0.1)]
    alpha_lr: f64,
}

impl CertifyArgs {
    fn into_config(self) -> Result<CertifyConfig> {
        let projected = is_projected_norm(&self.norm);
        let proj = match (projected, self.proj) {
            (true, Some(k)) | (false, Some(k)) => {
                Some(Projection { k, seed: self.seed, inflate_delta: self.inflate_delta })
            }
            (true, None) => anyhow::bail!("--norm {} needs --proj K (the number of projections)", self.norm),
            (false, None) => None,
        };
        if proj.map_or(false, |p| p.k == 0) {
            anyhow::bail!("--proj must be at least 1");
        }
        let cfg = CertifyConfig {
            data_dir: self.md.data_dir.unwrap_or_else(|| default_data_dir(&self.md.dataset)),
            model: self.md.model,
            arch: self.md.arch,
            dataset: self.md.dataset,
            eps: self.md.eps,
            norm: self.norm.parse::<Norm>()?,
            bounded_input: self.bounded_input,
            limit: self.md.limit,
            batch_size: self.md.batch_size,
            pgd: self.pgd,
            json: self.md.json,
            memory_budget: self.memory_budget.as_deref().map(parse_size).transpose()?,
            f64: self.md.f64,
            device: self.device,
            proj,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

pub fn run(args: CertifyArgs) -> Result<()> {
    let family = match args.bound.as_str() {
        "exact" | "proj" => None,
        name => Some(experiments::certify_family::FamilyBound {
            method: name.parse().map_err(|_| {
                anyhow::anyhow!("unknown --bound `{name}` (expected exact, proj, ibp, crown, crown-ibp or alpha-crown)")
            })?,
            alpha: dual_core::bounds::AlphaOptions {
                iterations: args.alpha_iters,
                lr: args.alpha_lr,
                early_stop: None,
            },
        }),
    };
    if args.bound == "proj" && args.proj.is_none() {
        anyhow::bail!("--bound proj needs --proj K (the number of projections)");
    }
    if args.bound == "exact" && args.proj.is_some() {
        anyhow::bail!("--proj K gives the projected bound: use --bound proj (or leave --bound out)");
    }
    if let Some(fam) = family {
        return crate::certify_family::run(args.into_config()?, fam);
    }
    let cfg = args.into_config()?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} ({eta} left) {msg}")
            .expect("valid template"),
    );
    let report = certify(&cfg, |done, total, acc| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        let n = acc.n.max(1) as f64;
        let mut msg = format!(
            "clean err {:.2}% | robust err {:.2}%",
            100.0 * acc.clean_errors as f64 / n,
            100.0 * acc.robust_errors as f64 / n
        );
        if cfg.pgd {
            msg.push_str(&format!(" | pgd err {:.2}%", 100.0 * acc.pgd_errors as f64 / n));
        }
        bar.set_message(msg);
    })?;
    bar.finish_and_clear();
    println!("{}", report.table());
    if let Some(p) = &cfg.json {
        println!("results written to {}", p.display());
    }
    Ok(())
}
