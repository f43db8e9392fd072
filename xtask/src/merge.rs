//! `cargo xtask merge DIR`: the shards of a `--records` folder combined into the report one
//! process would have written (certification: the table and `--json`; benchmark: the tables).

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use records::{Shard, Sharding};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The records folder the shards wrote (`--records DIR` of certify or vnncomp).
    dir: PathBuf,
    /// Certification: write the merged results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Certification: write every example's verdicts (index, clean, certified, pgd) to this
    /// file, one JSON line each, in test-set order.
    #[arg(long)]
    examples: Option<PathBuf>,
    /// Benchmark: where the results table and summary go (default: the run's --out).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The `--shard` / `--records` pair of a task: `--shard` needs `--records`; `--records` alone
/// is one shard of one (a resumable single-process run).
pub fn sharding(shard: Option<&str>, records: Option<PathBuf>) -> Result<Option<Sharding>> {
    Ok(match (shard, records) {
        (Some(_), None) => bail!("--shard needs --records DIR (where each shard writes its results)"),
        (shard, Some(dir)) => Some(Sharding { dir, shard: shard.map(Shard::parse).transpose()?.unwrap_or(Shard::ALL) }),
        (None, None) => None,
    })
}

pub fn run(a: MergeArgs) -> Result<()> {
    if let Some(p) = &a.json {
        nets::io::check_writable_file(p).map_err(|e| anyhow!("--json: {e}"))?;
    }
    if let Some(p) = &a.examples {
        nets::io::check_writable_file(p).map_err(|e| anyhow!("--examples: {e}"))?;
    }
    let m = records::read_all(&a.dir)?;
    match m.header.get("kind").and_then(|k| k.as_str()) {
        Some("certify") => {
            let report = experiments::certify_records::merge(&m, a.json.as_deref())?;
            println!("{}", report.table());
            println!("merged {} shards, {} blocks", m.shards, m.units.len());
            if let Some(p) = &a.json {
                report.write_json(p)?;
                println!("results written to {}", p.display());
            }
            if let Some(p) = &a.examples {
                let Some(v) = experiments::certify_records::merged_verdicts(&m)? else {
                    bail!("--examples: these records keep no per-example verdicts (written by an older version)");
                };
                let mut text = String::new();
                for (i, e) in v {
                    let mut line = serde_json::json!({ "index": i });
                    if let (serde_json::Value::Object(o), serde_json::Value::Object(e)) =
                        (&mut line, serde_json::to_value(e)?)
                    {
                        o.extend(e);
                    }
                    text.push_str(&line.to_string());
                    text.push('\n');
                }
                nets::io::atomic_write(p, text.as_bytes()).with_context(|| format!("writing {}", p.display()))?;
                println!("per-example verdicts written to {}", p.display());
            }
        }
        Some("vnncomp") => {
            if a.json.is_some() || a.examples.is_some() {
                bail!("--json and --examples are for certification records; a benchmark's tables go to --out");
            }
            let (name, rows) = verifier::benchmark_records::merge(&m).map_err(anyhow::Error::msg)?;
            let out = match a.out {
                Some(o) => o,
                None => PathBuf::from(m.header["info"]["out"].as_str().unwrap_or("docs/results/vnncomp2021")),
            };
            let cap = m.header["settings"]["max_timeout"].as_f64();
            std::fs::create_dir_all(&out)?;
            verifier::benchmark::write_tables(&out, &name, &rows, cap).map_err(anyhow::Error::msg)?;
            println!("{}", verifier::benchmark::summary(&name, &rows, cap));
            println!("merged {} shards, {} instances; tables in {}", m.shards, rows.len(), out.display());
        }
        k => bail!("{}: records of an unknown kind {k:?}", a.dir.display()),
    }
    Ok(())
}
