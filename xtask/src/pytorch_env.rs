//! The Python side of `bench-vs-pytorch`: a virtual environment with torch, numpy and the PyTorch
//! package `convex_adversarial` 0.4.4, created and filled from PyPI when it cannot import them.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The interpreter of a venv with torch and convex_adversarial, created and filled if needed.
pub fn ensure_venv(venv: &Path, python: &str) -> Result<PathBuf> {
    let py = venv.join("bin").join("python");
    let ready = |py: &Path| {
        Command::new(py)
            .args(["-c", "import torch, numpy, convex_adversarial"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if py.is_file() && ready(&py) {
        return Ok(py);
    }
    eprintln!(
        "creating the Python environment {} (torch, numpy, convex-adversarial==0.4.4 from PyPI; several GB, minutes)",
        venv.display()
    );
    let st = Command::new(python)
        .args(["-m", "venv"])
        .arg(venv)
        .status()
        .with_context(|| format!("running {python} -m venv"))?;
    if !st.success() {
        bail!("`{python} -m venv {}` failed", venv.display());
    }
    let st = Command::new(&py)
        .args(["-m", "pip", "install", "-q", "torch", "numpy", "convex-adversarial==0.4.4"])
        .status()?;
    if !st.success() || !ready(&py) {
        bail!("installing torch, numpy and convex-adversarial==0.4.4 into {} failed", venv.display());
    }
    Ok(py)
}
