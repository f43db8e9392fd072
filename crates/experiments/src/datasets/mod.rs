//! Data sets used by the experiments: one reader per file format, and [`load`], the one place
//! that maps a data-set name to its reader.

pub mod cifar;
pub mod har;
pub mod idx;
pub mod svhn;

pub use cifar::load_cifar10;
pub use har::load_har;
pub use idx::*;
pub use svhn::load_svhn;

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The folder holding a data set's files: `dir` itself, or its sub-folder `sub` (the name the
/// data set's archive unpacks to), whichever contains `probe`; else a
/// [`DatasetError::MissingFile`] listing `tried`.
pub(crate) fn data_root(dir: &Path, sub: &str, probe: &str, tried: &[String]) -> Result<PathBuf, DatasetError> {
    [dir.to_path_buf(), dir.join(sub)]
        .into_iter()
        .find(|d| d.join(probe).is_file())
        .ok_or_else(|| DatasetError::MissingFile { dir: dir.to_path_buf(), tried: tried.to_vec() })
}

/// Data sets with a loader.
pub const LOADABLE: &[&str] = &["mnist", "fashion-mnist", "cifar10", "har", "svhn"];

/// Loads a split of the named data set from `dir`, as the papers' models take it (CIFAR-10
/// normalised per channel, the others in `[0, 1]`).
pub fn load(name: &str, dir: &Path, split: Split) -> Result<Dataset> {
    let hint = || format!("loading {name} from {} (try `cargo xtask download {name}`)", dir.display());
    Ok(match name {
        "mnist" | "fashion-mnist" => load_mnist_like(dir, split).with_context(hint)?,
        "cifar10" | "cifar-10" | "cifar" => load_cifar10(dir, split, true).with_context(hint)?,
        "har" | "uci-har" => load_har(dir, split).with_context(hint)?,
        "svhn" => load_svhn(dir, split).with_context(hint)?,
        other => bail!("no loader for the data set `{other}` yet (loaders: {})", LOADABLE.join(", ")),
    })
}
