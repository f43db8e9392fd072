//! # onnx-import
//!
//! ONNX models into an f64 graph with its own forward pass ([`Model`]), and graphs that are
//! chains of affine maps and ReLUs into a `nets::Network` for the bound engine ([`Chain`]).
//!
//! Decoding uses `prost` with the types generated from the official `onnx.proto` ([`proto`]);
//! no protobuf is decoded by hand. Supported ops: Gemm, MatMul, Add, Sub, Mul, Div, Conv (2-d),
//! Relu, Sigmoid, Tanh, Flatten, Reshape, Pad (constant), MaxPool, AveragePool,
//! BatchNormalization (inference), Constant, Identity/Dropout. Nodes whose inputs are all
//! constant are folded at import. Anything else is an [`ImportError::Unsupported`] naming the op
//! and the node — never a different model.

mod error;
mod graph;
mod lower;
pub mod ops;
pub mod proto;
pub mod tensor;

pub use error::{ImportError, Result};
pub use graph::{Model, Node};
pub use lower::{Affine, Chain, MAX_SEGMENT_ENTRIES};
pub use tensor::Tensor;
