//! Python virtual environments for the side-by-side benchmarks, filled from PyPI.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Creates the venv `venv` with `python` unless it already has an interpreter, installs
/// `packages` into it with pip, and returns its interpreter. The caller checks that what it needs
/// now imports.
pub fn create_and_install(venv: &Path, python: &str, packages: &[&str]) -> Result<PathBuf> {
    let py = venv.join("bin").join("python");
    if !py.is_file() {
        let st = Command::new(python)
            .args(["-m", "venv"])
            .arg(venv)
            .status()
            .with_context(|| format!("running {python} -m venv"))?;
        if !st.success() {
            bail!("`{python} -m venv {}` failed", venv.display());
        }
    }
    let st = Command::new(&py)
        .args(["-m", "pip", "install", "-q"])
        .args(packages)
        .status()
        .with_context(|| format!("running pip of {}", venv.display()))?;
    if !st.success() {
        bail!("installing {} into {} failed", packages.join(", "), venv.display());
    }
    Ok(py)
}
