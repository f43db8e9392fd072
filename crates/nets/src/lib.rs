//! # nets
//!
//! Networks as the user writes them — `Sequential` and `DenseSequential` chains of Linear,
//! Conv2d, ReLU, Flatten, BatchNorm2d, Identity and Dense layers — with their forward pass,
//! initialisation, the papers' architectures by name ([`zoo`]), checkpoint IO (safetensors with
//! the architecture inside, and PyTorch `.pth` in both formats), and the map from every layer to
//! its dual.
//!
//! Architecture invariant: the bound computation itself lives in `dual-core`/`dual-layers`;
//! this crate only says which dual each layer has.

#![forbid(unsafe_code)]

pub mod build;
mod error;
mod grad_mode;
pub mod io;
mod layer;
pub mod layers;
mod network;
pub mod pth;
pub mod spec;
pub mod zoo;

pub use error::{NetError, Result};
pub use grad_mode::{grad_enabled, no_grad, param};
pub use layer::{single_input, Layer};
pub use network::Network;
pub use serde_json;
pub use spec::{BatchNormMode, LayerSpec, NetworkKind, NetworkSpec};
