//! Rust types of the official ONNX schema.
//!
//! `onnx.rs` is generated, not written: `prost-build` 0.14 run once over `onnx/onnx.proto` of
//! the `onnx` Python package 1.23.2 (proto2, package `onnx`) with Debian's `protoc` 3.21 —
//!
//! ```text
//! prost_build::Config::new().out_dir(OUT).compile_protos(&["onnx.proto"], &["."])
//! ```
//!
//! — and committed, so building this crate needs no `protoc`. Regenerate it the same way for a
//! newer schema; never edit it by hand.

#[allow(clippy::all, missing_docs, rustdoc::all)]
pub mod onnx {
    include!("onnx.rs");
}
