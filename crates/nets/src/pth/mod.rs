//! Reader for PyTorch `.pth` checkpoints, in both serialisation formats.
//!
//! * The **legacy format** (PyTorch < 1.6, or `_use_new_zipfile_serialization=False`), used by the
//!   papers' published models: a sequence of pickles — magic number, protocol version, system
//!   information, the checkpoint object, the list of storage keys — followed by the raw storages in
//!   that key order, each prefixed by its element count as a little-endian `i64`.
//! * The **zip format** (PyTorch >= 1.6): a zip archive holding `<prefix>/data.pkl` (the checkpoint
//!   object) and one entry `<prefix>/data/<key>` of raw little-endian bytes per storage.
//!
//! In both, tensors are pickled as calls to `torch._utils._rebuild_tensor_v2` (or the older
//! `_rebuild_tensor`, possibly wrapped in `_rebuild_parameter`) whose first argument is a
//! persistent id `('storage', storage_type, key, location, numel[, view_metadata])`.
//!
//! Pickles are decoded into Candle's [`candle_core::pickle::Object`] tree by a small checked
//! pickle machine in this file (Candle's own `Stack` reverses dict order and trusts its input):
//! every length, stack access, nesting depth and memo expansion is checked. Tensor offsets, shapes
//! and strides are checked against the storage sizes before any data is touched. Malformed input of any
//! kind is reported as a [`PthError`], never a panic.

use candle_core::Tensor;
use std::path::{Path, PathBuf};

/// What can go wrong reading a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum PthError {
    /// The file could not be read.
    #[error("cannot read checkpoint {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The bytes end before a part that must be there.
    #[error(
        "checkpoint truncated: {what} needs {needed} byte(s) at offset {offset}, \
         but only {available} remain"
    )]
    Truncated {
        /// The part being read.
        what: String,
        /// Byte offset (within the file, or within a zip entry) where it starts.
        offset: usize,
        /// Bytes it needs from `offset`.
        needed: usize,
        /// Bytes present from `offset`.
        available: usize,
    },
    /// The bytes are not a well-formed checkpoint.
    #[error("corrupt checkpoint: {0}")]
    Corrupt(String),
    /// A well-formed checkpoint using a feature this reader does not handle.
    #[error("unsupported checkpoint: {0}")]
    Unsupported(String),
    /// Candle failed to build a tensor.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

type Result<T> = std::result::Result<T, PthError>;

/// The error for `needed` bytes of `what` missing at `offset`.
fn truncated(what: &str, bytes: &[u8], offset: usize, needed: usize) -> PthError {
    PthError::Truncated { what: what.to_string(), offset, needed, available: bytes.len().saturating_sub(offset) }
}

/// A checkpoint's tensors, in file order, with their dotted names.
#[derive(Debug, Clone, Default)]
pub struct StateDict {
    pub tensors: Vec<(String, Tensor)>,
}

impl StateDict {
    /// The tensor stored under `name` (the first one, should a name repeat).
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// All names, in file order.
    pub fn names(&self) -> Vec<&str> {
        self.tensors.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// True when the state dict holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

/// Reads a `.pth` file in either format. Returns one [`StateDict`] per model: a plain state dict
/// gives one; a dict whose `state_dict` (or `model_state_dict`) entry holds a list of state dicts
/// (a cascade) gives one per stage; a dict whose `state_dict` entry is a single state dict gives
/// one. Tensors keep their stored dtype and live on the CPU.
pub fn read_pth(path: &Path) -> Result<Vec<StateDict>> {
    let bytes = std::fs::read(path).map_err(|source| PthError::Io { path: path.to_path_buf(), source })?;
    read_pth_bytes(&bytes)
}

/// [`read_pth`] on a checkpoint already in memory.
pub fn read_pth_bytes(bytes: &[u8]) -> Result<Vec<StateDict>> {
    if bytes.is_empty() {
        return Err(PthError::Truncated {
            what: "checkpoint header (the file is empty)".into(),
            offset: 0,
            needed: 1,
            available: 0,
        });
    }
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        read_zip(bytes)
    } else if bytes[0] == PICKLE_PROTO {
        read_legacy(bytes)
    } else if bytes.len() >= 262 && &bytes[257..262] == b"ustar" {
        Err(PthError::Unsupported("tar-based checkpoint (PyTorch < 0.1.10)".into()))
    } else {
        let head: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
        Err(PthError::Corrupt(format!(
            "not a PyTorch checkpoint: starts with bytes {} (expected a pickle or a zip archive)",
            head.join(" ")
        )))
    }
}

mod legacy_format;
mod pickle;
mod tensors;
mod zip_format;

use legacy_format::{read_legacy, PICKLE_PROTO};
use zip_format::read_zip;
