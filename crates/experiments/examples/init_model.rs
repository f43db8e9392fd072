//! Writes a freshly initialised model (PyTorch's default initialisation) of a zoo architecture
//! to a safetensors file with its architecture inside, e.g. to certify a large untrained model
//! under a memory budget:
//!
//! `cargo run --release -p experiments --example init_model -- mnist-large results/mnist_large_init.safetensors [SEED]`

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use std::path::Path;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arch = args.get(1).context("usage: init_model ARCH OUT.safetensors [SEED]")?;
    let out = args.get(2).context("usage: init_model ARCH OUT.safetensors [SEED]")?;
    let seed: u64 = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(0);
    let spec = nets::io::resolve_arch(arch)?;
    let net = nets::Network::init(&spec, seed, DType::F32, &Device::Cpu)?;
    nets::io::save_safetensors(&net, Path::new(out))?;
    println!("{arch} (seed {seed}) written to {out}");
    Ok(())
}
