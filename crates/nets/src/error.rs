//! Errors of network construction, loading and saving.

use std::path::PathBuf;

/// What can go wrong when building, loading or saving a network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// The bound computation refused the network.
    #[error(transparent)]
    Dual(#[from] dual_core::DualError),
    /// A parameter the architecture needs is not in the checkpoint.
    #[error("parameter `{name}` is missing from the checkpoint (it has: {available})")]
    MissingTensor { name: String, available: String },
    /// A parameter has the wrong shape.
    #[error("parameter `{name}` has shape {found:?}, the architecture needs {expected:?}")]
    WrongShape { name: String, expected: Vec<usize>, found: Vec<usize> },
    /// The checkpoint holds tensors the architecture does not use.
    #[error("the checkpoint has tensors the architecture does not use: {0}")]
    UnusedTensors(String),
    /// An architecture description that cannot be used.
    #[error("bad architecture: {0}")]
    BadArchitecture(String),
    /// A model name the zoo does not know.
    #[error("unknown model `{0}`; known: {1}")]
    UnknownModel(String, String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A file's content is not what it should be.
    #[error("{path}: {msg}")]
    BadFile { path: PathBuf, msg: String },
    /// A PyTorch checkpoint could not be read.
    #[error(transparent)]
    Pth(#[from] crate::pth::PthError),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, NetError>;
