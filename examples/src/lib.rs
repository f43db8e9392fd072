//! Examples live in this folder as `cargo run -p examples --example NAME`.

#![forbid(unsafe_code)]
