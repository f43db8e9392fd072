//! `cargo xtask vnncomp DIR`: every instance of a VNN-COMP benchmark folder, scored.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use verifier::benchmark::{read_reference, run_benchmark, summary, RunOptions, Verdict};
use verifier::VerifyOptions;

#[derive(Args, Debug)]
pub struct VnncompArgs {
    /// The benchmark folder (holds `*_instances.csv`, the networks and the properties).
    dir: PathBuf,
    /// Cap on each instance's time limit, in seconds (the csv's limit otherwise).
    #[arg(long)]
    max_timeout: Option<f64>,
    /// Reference answers (default: `results_2021.csv` beside the folder, if present).
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Where result files and tables go.
    #[arg(long, default_value = "docs/results/vnncomp2021")]
    out: PathBuf,
    /// Seed of the falsifier's random starts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Bound method, input splitting and progress lines.
    #[command(flatten)]
    bound: crate::bound_args::BoundArgs,
    /// Run shard I of N only (instance k goes to shard k mod N); `env/N` reads I from
    /// $SLURM_ARRAY_TASK_ID or $JOB_COMPLETION_INDEX. Needs --records.
    #[arg(long, value_name = "I/N")]
    shard: Option<String>,
    /// Append one JSON line per finished instance to DIR/shard-I-of-N.jsonl; a rerun skips what is
    /// recorded; `cargo xtask merge DIR` writes the tables.
    #[arg(long, value_name = "DIR")]
    records: Option<PathBuf>,
}

pub fn run(a: VnncompArgs) -> Result<()> {
    if let Some(m) = a.max_timeout {
        anyhow::ensure!(m > 0.0 && m.is_finite(), "--max-timeout must be a positive number of seconds");
    }
    let method = a.bound.method()?;
    let default_ref = a.dir.join("../results_2021.csv");
    let reference = match (&a.reference, default_ref.exists()) {
        (Some(p), _) => Some(read_reference(p).map_err(anyhow::Error::msg)?),
        (None, true) => Some(read_reference(&default_ref).map_err(anyhow::Error::msg)?),
        (None, false) => None,
    };
    let records = crate::merge::sharding(a.shard.as_deref(), a.records.clone())?;
    let opts = RunOptions {
        records,
        max_timeout: a.max_timeout,
        out_dir: a.out.clone(),
        reference,
        verify: VerifyOptions { seed: a.seed, bab: a.bound.bab(), ..VerifyOptions::default() },
    };
    let rows = run_benchmark(&a.dir, method.as_ref(), &opts, |k, n, r| {
        println!(
            "[{k}/{n}] {} {} -> {} ({:.2} s){}{}",
            r.instance.onnx,
            r.instance.vnnlib,
            r.result,
            r.seconds,
            r.reference.as_deref().map(|x| format!(", 2021: {x}")).unwrap_or_default(),
            if r.verdict == Verdict::Wrong { "  WRONG" } else { "" }
        );
    })
    .map_err(anyhow::Error::msg)?;
    let name = a.dir.file_name().and_then(|n| n.to_str()).unwrap_or("benchmark");
    if opts.records.is_some() {
        println!("\n{} instances of this shard recorded; `cargo xtask merge DIR` makes the tables", rows.len());
        return Ok(());
    }
    println!("\n{}", summary(name, &rows, a.max_timeout));
    Ok(())
}
