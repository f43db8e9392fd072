//! Flags shared by the tasks that evaluate a model on a test set.

use crate::parse;
use clap::Args;
use std::path::PathBuf;

/// A model, a test set and the radius: what `certify` and `attack` both take.
#[derive(Args, Debug)]
pub struct ModelDataArgs {
    /// Model file: PyTorch .pth (old or zip format) or .safetensors.
    #[arg(long)]
    pub model: PathBuf,
    /// Architecture (zoo name such as mnist-small, or a JSON file) when the file holds none.
    #[arg(long)]
    pub arch: Option<String>,
    /// Data set: mnist, fashion-mnist, cifar10, svhn or har.
    #[arg(long, default_value = "fashion-mnist")]
    pub dataset: String,
    /// Folder with the data set's files (as `cargo xtask download NAME` leaves them). Default:
    /// data/NAME, else /usr/share/datasets/NAME.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Radius of the threat ball (finite, ≥ 0).
    #[arg(long, allow_hyphen_values = true, value_parser = parse::non_negative)]
    pub eps: f64,
    /// Use only the first N test examples (N ≥ 1).
    #[arg(long, value_parser = parse::at_least_one)]
    pub limit: Option<usize>,
    /// Examples per batch.
    #[arg(long, default_value_t = 50, value_parser = parse::at_least_one)]
    pub batch_size: usize,
    /// Write the results as JSON to this file (checked before the work starts).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Compute in f64 (default f32).
    #[arg(long)]
    pub f64: bool,
}

impl ModelDataArgs {
    /// Checks the files before any work: the model is a readable model file, the JSON output
    /// can be written.
    pub fn check_files(&self) -> anyhow::Result<()> {
        nets::io::check_model_file(&self.model)?;
        if let Some(p) = &self.json {
            nets::io::check_writable_file(p).map_err(|e| anyhow::anyhow!("--json: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, Command};

    /// The help of --dataset names every data set the loaders read.
    #[test]
    fn dataset_help_names_every_loader() {
        let cmd = ModelDataArgs::augment_args(Command::new("certify"));
        let help = cmd.get_arguments().find(|a| a.get_id() == "dataset").unwrap().get_help().unwrap().to_string();
        for name in experiments::datasets::LOADABLE {
            assert!(help.contains(name), "--dataset help does not mention {name}: {help}");
        }
    }
}
