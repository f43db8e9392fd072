//! # datasets
//!
//! The data sets of certified-robustness experiments: one reader per file format (IDX for MNIST
//! and Fashion-MNIST, CIFAR-10's binary batches, SVHN's MATLAB files, UCI HAR's text), [`load`],
//! the one place that maps a data-set name to its reader, and [`download`], a checked,
//! resumable downloader. Every failure is a typed error ([`DatasetError`],
//! [`download::DownloadError`]) naming the file and the problem; nothing panics on bad files.
//!
//! Architecture invariant: knows nothing of networks or bounds; depends on `candle-core` only
//! for the [`Dataset`] tensors.

#![forbid(unsafe_code)]

pub mod cifar;
pub mod download;
pub mod har;
pub mod idx;
pub mod svhn;

pub use cifar::load_cifar10;
pub use har::load_har;
pub use idx::*;
pub use svhn::load_svhn;

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

/// Errors of [`load`]: an unknown name, or a reader's error with the data set and folder named.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// No reader for this name.
    #[error("no loader for the data set `{name}` yet (loaders: {})", LOADABLE.join(", "))]
    UnknownName { name: String },
    /// The reader failed; the source says why.
    #[error("loading {name} from {} (try `cargo xtask download {name}`)", dir.display())]
    Read {
        name: String,
        dir: PathBuf,
        #[source]
        source: DatasetError,
    },
}

/// Loads a split of the named data set from `dir`, as the papers' models take it (CIFAR-10
/// normalised per channel, the others in `[0, 1]`).
pub fn load(name: &str, dir: &Path, split: Split) -> Result<Dataset, LoadError> {
    let read = match name {
        "mnist" | "fashion-mnist" => load_mnist_like(dir, split),
        "cifar10" | "cifar-10" | "cifar" => load_cifar10(dir, split, true),
        "har" | "uci-har" => load_har(dir, split),
        "svhn" => load_svhn(dir, split),
        other => return Err(LoadError::UnknownName { name: other.to_string() }),
    };
    read.map_err(|source| LoadError::Read { name: name.to_string(), dir: dir.to_path_buf(), source })
}
