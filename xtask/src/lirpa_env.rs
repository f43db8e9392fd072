//! The Python side of `bench-vs-lirpa`: an interpreter that imports torch, numpy and auto_LiRPA
//! 0.7.1, the latter from sources unpacked from `../shared/tools/auto_LiRPA-0.7.1.tar.gz` (PyPI
//! has only its 2022 release) and put on `PYTHONPATH`, as `../shared/tools/README.md` says.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the Python worker runs: the interpreter and the folder to put on `PYTHONPATH`.
pub struct LirpaEnv {
    /// The venv's interpreter.
    pub python: PathBuf,
    /// The folder holding the `auto_LiRPA` package.
    pub pythonpath: PathBuf,
}

impl LirpaEnv {
    /// A command running `script` under the interpreter with auto_LiRPA importable.
    pub fn command(&self, script: &Path) -> Command {
        let mut c = Command::new(&self.python);
        c.arg(script).env("PYTHONPATH", &self.pythonpath);
        c
    }
}

fn imports(python: &Path, pythonpath: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import torch, numpy, auto_LiRPA"])
        .env("PYTHONPATH", pythonpath)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The auto_LiRPA sources: `src` when given (a folder holding the `auto_LiRPA` package), else
/// `tarball` unpacked once into `unpack_to`.
fn sources(src: Option<&Path>, tarball: &Path, unpack_to: &Path) -> Result<PathBuf> {
    if let Some(s) = src {
        if !s.join("auto_LiRPA").is_dir() {
            bail!("--lirpa-src {} holds no auto_LiRPA package folder", s.display());
        }
        return Ok(s.to_path_buf());
    }
    let dir = unpack_to.join("auto_LiRPA-0.7.1");
    if dir.join("auto_LiRPA").is_dir() {
        return Ok(dir);
    }
    if !tarball.is_file() {
        bail!("the auto_LiRPA sources {} are missing (see ../shared/tools/README.md)", tarball.display());
    }
    std::fs::create_dir_all(unpack_to)?;
    let st = Command::new("tar")
        .arg("xzf")
        .arg(tarball)
        .arg("-C")
        .arg(unpack_to)
        .status()
        .context("running tar to unpack auto_LiRPA")?;
    if !st.success() || !dir.join("auto_LiRPA").is_dir() {
        bail!("unpacking {} into {} gave no auto_LiRPA-0.7.1/auto_LiRPA", tarball.display(), unpack_to.display());
    }
    Ok(dir)
}

/// The environment, created and filled from PyPI when `venv` cannot import torch, numpy and
/// auto_LiRPA yet (torch, numpy and auto_LiRPA's run-time dependencies).
pub fn ensure(venv: &Path, python: &str, src: Option<&Path>, tarball: &Path, unpack_to: &Path) -> Result<LirpaEnv> {
    let pythonpath = sources(src, tarball, unpack_to)?;
    let py = venv.join("bin").join("python");
    if py.is_file() && imports(&py, &pythonpath) {
        return Ok(LirpaEnv { python: py, pythonpath });
    }
    eprintln!(
        "preparing the Python environment {} (torch, numpy and auto_LiRPA's dependencies from PyPI; minutes)",
        venv.display()
    );
    let deps = ["torch", "numpy", "packaging", "appdirs", "pyyaml", "tqdm", "graphviz", "ninja"];
    let py = crate::venv::create_and_install(venv, python, &deps)?;
    if !imports(&py, &pythonpath) {
        bail!("installing {} into {} did not make auto_LiRPA importable", deps.join(", "), venv.display());
    }
    Ok(LirpaEnv { python: py, pythonpath })
}
