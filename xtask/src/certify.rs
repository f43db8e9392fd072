//! `cargo xtask certify`: certified evaluation of a model on a test set.

use crate::parse;
use crate::size::parse_memory_budget;
use anyhow::{bail, Result};
use clap::Args;
use experiments::cascade_certify::certify_file_report;
use experiments::certify::{default_data_dir, is_projected_norm, BatchCounts, CertifyConfig, Norm, Projection};
use experiments::certify_records::{CertifyRecords, Method};
use experiments::progress::Progress;
use experiments::report::write_json_atomic;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct CertifyArgs {
    #[command(flatten)]
    md: crate::args::ModelDataArgs,
    /// Norm of the ball: linf or l2 (exact bound), linf-median or l2-normal (random projections,
    /// with --proj K: an estimate, not a certificate).
    #[arg(long, default_value = "linf")]
    norm: String,
    /// Number of random projections for linf-median / l2-normal (required there, refused with
    /// the exact norms linf and l2).
    #[arg(long, value_parser = parse::at_least_one)]
    proj: Option<usize>,
    /// Seed of the random projections.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Inflate projected estimates so the bound holds with probability 1 - DELTA (0 < DELTA < 1;
    /// only with --proj).
    #[arg(long, value_parser = parse::probability)]
    inflate_delta: Option<f64>,
    /// Intersect the ball with the data range [0, 1].
    #[arg(long)]
    bounded_input: bool,
    /// Also run PGD (100 steps of 0.01, sign of the gradient, projected to the ball). On a
    /// cascade, each example is attacked against the stage that answers it.
    #[arg(long)]
    pgd: bool,
    /// Certify stage K (0 first) of a cascade file alone. Without it, a file with several stages
    /// is evaluated as a cascade: an example goes to the next stage while the current one does
    /// not certify its own prediction, and is answered by the first stage that does (else by
    /// the last, uncertified).
    #[arg(long, value_name = "K")]
    stage: Option<usize>,
    /// Memory budget for the bound computation: columns are processed in chunks. A number with
    /// an optional unit: B, KB/MB/GB/TB (powers of 1000), KiB/MiB/GiB/TiB or K/M/G/T (powers of
    /// 1024), e.g. 4GiB, 512MiB, 1e9; at least 1 MiB.
    #[arg(long, allow_hyphen_values = true, value_parser = parse_memory_budget)]
    memory_budget: Option<usize>,
    /// Where to compute: cpu or cuda[:N] (CUDA needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The bound: exact (the dual, default), proj (with --proj K), ibp, crown, crown-ibp, alpha-crown.
    #[arg(long, default_value = "exact")]
    bound: String,
    /// Sound certificates: every certificate of the exact bound is checked in f64 with every
    /// rounding error bounded (docs/SOUNDNESS.md); l_inf balls, --bound exact, CPU.
    #[arg(long)]
    sound: bool,
    /// With --sound: also cover the deployed network's own f32 rounding.
    #[arg(long, requires = "sound")]
    sound_deployed_f32: bool,
    /// Certify shard I of N only (blocks of --batch-size examples; block b goes to shard b mod N);
    /// `env/N` reads I from $SLURM_ARRAY_TASK_ID or $JOB_COMPLETION_INDEX. Needs --records.
    #[arg(long, value_name = "I/N")]
    shard: Option<String>,
    /// Append one JSON line per finished block to DIR/shard-I-of-N.jsonl (after a header with the
    /// settings); rerunning the same command skips what is recorded. `cargo xtask merge DIR`
    /// combines the shards.
    #[arg(long, value_name = "DIR")]
    records: Option<PathBuf>,
    /// α-CROWN: Adam iterations (≥ 1).
    #[arg(long, default_value_t = 20, value_parser = parse::at_least_one)]
    alpha_iters: usize,
    /// α-CROWN: Adam's learning rate (finite, > 0).
    #[arg(long, default_value_t = 0.1, allow_hyphen_values = true, value_parser = parse::positive)]
    alpha_lr: f64,
}

impl CertifyArgs {
    fn into_config(self) -> Result<(CertifyConfig, Option<usize>)> {
        let stage = self.stage;
        let projected = is_projected_norm(&self.norm);
        // The projected bound is an estimate, not a certificate: it is only ever computed when the
        // norm's name says so, and its settings are refused with an exact norm.
        let proj = match (projected, self.proj) {
            (true, Some(k)) => Some(Projection { k, seed: self.seed, inflate_delta: self.inflate_delta }),
            (true, None) => bail!("--norm {} needs --proj K (the number of projections)", self.norm),
            (false, Some(_)) => bail!(
                "--proj gives an estimate, not a certificate, and --norm {} is an exact bound: \
                 ask for the estimate with --norm linf-median or --norm l2-normal, or drop --proj",
                self.norm
            ),
            (false, None) => {
                if self.inflate_delta.is_some() {
                    bail!(
                        "--inflate-delta only applies to the projected estimate \
                         (--norm linf-median or l2-normal with --proj K); the exact bound needs none"
                    );
                }
                None
            }
        };
        let records = crate::merge::sharding(self.shard.as_deref(), self.records)?
            .map(|sharding| CertifyRecords { sharding, method: Method::Exact });
        self.md.check_files()?;
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
            memory_budget: self.memory_budget,
            f64: self.md.f64,
            device: self.device,
            proj,
            records,
        };
        cfg.validate()?;
        Ok((cfg, stage))
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
    // The projected estimate is asked for by its norm (linf-median, l2-normal) with --proj K;
    // `--bound proj` only says so twice, and must agree.
    if args.bound == "proj" && !is_projected_norm(&args.norm) {
        bail!("--bound proj needs a projected norm: --norm linf-median or --norm l2-normal, with --proj K");
    }
    if family.is_some() && is_projected_norm(&args.norm) {
        bail!("--norm {} is the projected estimate; --bound {} needs --norm linf or l2", args.norm, args.bound);
    }
    if args.sound {
        return run_sound(args);
    }
    if let Some(fam) = family {
        if args.stage.is_some() {
            bail!("--stage works with --bound exact or proj; --bound {} certifies one model", args.bound);
        }
        let mut cfg = args.into_config()?.0;
        if let Some(r) = cfg.records.as_mut() {
            let alpha = fam.method == dual_core::bounds::Method::AlphaCrown;
            r.method = Method::Family {
                bound: fam.method.name().into(),
                alpha_iterations: alpha.then_some(fam.alpha.iterations),
                alpha_lr: alpha.then_some(fam.alpha.lr),
            };
        }
        let bar = Progress::new("certify");
        let report = experiments::certify_family::certify_family(&cfg, &fam, |done, total, acc| {
            bar.update(done as u64, total as u64, &progress_message(acc, cfg.pgd))
        })?;
        bar.finish();
        // The table first: a failure to write the JSON must not throw the results away.
        println!("{}", report.table());
        if let Some(p) = &cfg.json {
            write_json_atomic(p, &report)?;
            println!("results written to {}", p.display());
        }
        return Ok(());
    }
    let (cfg, stage) = args.into_config()?;
    let bar = Progress::new("certify");
    let result = certify_file_report(&cfg, stage, |done, total, acc| {
        bar.update(done as u64, total as u64, &progress_message(acc, cfg.pgd))
    })?;
    bar.finish();
    // The tables first: a failure to write the JSON must not throw the results away.
    for t in result.tables() {
        println!("{t}");
    }
    if let Some(p) = &cfg.json {
        result.write_json(p)?;
        println!("results written to {}", p.display());
    }
    Ok(())
}

/// `--sound`: the exact bound's certificates checked (one model, l_inf).
fn run_sound(args: CertifyArgs) -> Result<()> {
    if args.bound != "exact" {
        bail!("--sound checks the exact bound's certificates; --bound {} is not checked (drop --bound)", args.bound);
    }
    if args.stage.is_some() {
        bail!("--sound certifies one model; --stage is for cascades");
    }
    if args.shard.is_some() || args.records.is_some() {
        bail!("--sound does not write --records or run --shard yet: run it without them");
    }
    let opts = sound::SoundOptions { deployed_f32: args.sound_deployed_f32 };
    let cfg = args.into_config()?.0;
    let bar = Progress::new("certify");
    let report = experiments::certify_sound::certify_sound(&cfg, opts, |done, total, acc| {
        bar.update(done as u64, total as u64, &progress_message(acc, cfg.pgd))
    })?;
    bar.finish();
    println!("{}", report.table());
    if let Some(p) = &cfg.json {
        write_json_atomic(p, &report)?;
        println!("results written to {}", p.display());
    }
    Ok(())
}

/// The running errors shown while certifying.
fn progress_message(acc: &BatchCounts, pgd: bool) -> String {
    let n = acc.n.max(1) as f64;
    let mut msg = format!(
        "clean err {:.2}% | robust err {:.2}%",
        100.0 * acc.clean_errors as f64 / n,
        100.0 * acc.robust_errors as f64 / n
    );
    if pgd {
        msg.push_str(&format!(" | pgd err {:.2}%", 100.0 * acc.pgd_errors as f64 / n));
    }
    msg
}
