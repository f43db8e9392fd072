//! The Python side of `bench-vs-pytorch`: a virtual environment with torch, numpy and the PyTorch
//! package `convex_adversarial` 0.4.4, created and filled from PyPI when it cannot import them.

use anyhow::{bail, Result};
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
    let packages = ["torch", "numpy", "convex-adversarial==0.4.4"];
    let py = crate::venv::create_and_install(venv, python, &packages)?;
    if !ready(&py) {
        bail!(
            "installing {} into {} did not make torch, numpy and convex_adversarial importable",
            packages.join(", "),
            venv.display()
        );
    }
    Ok(py)
}
