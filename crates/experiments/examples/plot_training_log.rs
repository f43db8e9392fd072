//! Draws `errors.png` (errors per epoch) from a training run's `log.jsonl`, as the trainer does
//! after every epoch:
//!
//! `cargo run --release -p experiments --example plot_training_log -- results/fm/log.jsonl [OUT.png]`

use anyhow::{Context, Result};
use experiments::train::{plot_log, EpochLog};
use std::path::{Path, PathBuf};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let log = PathBuf::from(args.get(1).context("usage: plot_training_log LOG.jsonl [OUT.png]")?);
    let out = args.get(2).map(PathBuf::from).unwrap_or_else(|| log.with_file_name("errors.png"));
    let text = std::fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
    let entries: Vec<EpochLog> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{} line {}", log.display(), i + 1)))
        .collect::<Result<_>>()?;
    plot_log(Path::new(&out), &entries)?;
    println!("written {}", out.display());
    Ok(())
}
