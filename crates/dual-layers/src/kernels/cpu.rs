//! The CPU toolkit for custom ops outside this crate (the projections' fused ops): the element
//! trait the kernels are generic over, and the two buffer helpers they share.
//!
//! * [`Elem`]: `f32` or `f64`, with `ZERO`, `ONE`, `HALF`, `abs`, a tiled matrix transpose and
//!   the sign with `sign(0) = 0`.
//! * [`zeroed`]: a zero-filled `Vec` of `len` elements, filled by rayon's threads when large.
//! * [`contiguous_slice`]: a contiguous layout's elements as a slice of its storage, or an error
//!   naming the operand.

pub use super::buffers::{contiguous_slice, zeroed};
pub use super::elem::Elem;
