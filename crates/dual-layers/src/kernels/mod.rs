//! Fast CPU kernels for the convolutions of the dual network.
//!
//! Candle's CPU `conv2d` runs far below matmul speed, and its `conv_transpose2d` — which also
//! computes the input gradient of every `conv2d` — is a direct loop without gemm. The dual
//! network pushes tens of thousands of "images" (one per column) through every convolution and
//! its transpose, and training backpropagates through all of it, so these are the hot loops.
//!
//! [`conv2d_fast`], [`conv_transpose2d_fast`] and [`conv2d_weight_grad`] are custom ops
//! (`CustomOp2` on the input and the kernel) built from im2col/col2im and the `gemm` crate (the
//! one Candle's matmul uses), with their own backward passes expressed through each other:
//!
//! | op | input gradient | kernel gradient |
//! |---|---|---|
//! | `conv2d(x, w)` | `conv_transpose2d(g, w)` | `conv2d_weight_grad(x, g)` |
//! | `conv_transpose2d(x, w)` | `conv2d(g, w)` | `conv2d_weight_grad(g, x)` |
//!
//! so gradients of any order work. A gradient is only computed for an argument that is tracked
//! by autograd (a variable or derived from one). On other devices or dtypes (GPU, f16/bf16) the
//! functions fall back to Candle's own convolutions. Only dilation 1 and groups 1 are supported,
//! which is all the dual network needs.
//!
//! Inputs may have any strides and start offsets (views from `narrow`, `transpose`, ...).
//!
//! **One door.** The public surface is this module's re-exports: the ops (convolutions in
//! `conv.rs`, the linear layer's products in `linear.rs`, the fused slope / weighted-l1 ops in
//! `slopes.rs`, the relaxation step in `relax.rs`, ReLU's interval map in `interval.rs`), the
//! scheduling knobs ([`Tuning`]: process-wide with [`set_tuning`], per thread and scoped with
//! [`with_tuning`]), [`record_paths`] (which path each call took, for tests), and [`cpu`], the
//! small CPU toolkit other crates' custom ops build on. Everything else (`elem.rs`, `buffers.rs`,
//! `layout.rs`, `im2col.rs`, `gemm_conv.rs`, `sparse.rs`) is private.

/// Matches CPU storages of one float dtype (f32 or f64) and runs the generic body on their
/// slices: `dispatch!("name", s1, s2; |a, b| body)`.
macro_rules! dispatch {
    ($name:expr, $($s:expr),+ ; |$($a:ident),+| $body:expr) => {
        match ($($s),+) {
            ($(CpuStorage::F32($a)),+) => CpuStorage::F32($body),
            ($(CpuStorage::F64($a)),+) => CpuStorage::F64($body),
            _ => bail!("{}: unsupported or mixed dtypes", $name),
        }
    };
}

mod buffers;
mod conv;
pub mod cpu;
mod elem;
mod gemm_conv;
mod im2col;
mod interval;
mod interval_rows;
mod layout;
mod linear;
mod path;
mod relax;
mod relu_lines;
mod slopes;
mod sparse;
mod train_abs;
mod train_bias;
mod tuning;

pub use conv::{
    conv2d_columns, conv2d_fast, conv2d_weight_grad, conv_transpose2d_columns, conv_transpose2d_fast,
    conv_transpose2d_fast_hw,
};
pub use interval::relu_box;
pub use interval_rows::{conv_interval_rows, linear_interval_rows, relu_interval_rows, reshape_interval_rows};
pub use linear::{linear_columns, linear_weight_grad};
pub use path::{record_paths, KernelPath, PathTaken};
pub use relax::{relax_columns, relax_gathered};
pub use relu_lines::relu_lines;
pub use slopes::{abs_contract, neg_part_contract, scale_columns};
pub use train_abs::abs_tracked;
pub use train_bias::add_channel_bias;
pub use tuning::{set_tuning, tuning, with_tuning, Tuning};

// The helpers the op files share, by their short names.
use buffers::{add_into, axpy, contiguous_slice, dot_lanes, par_fill, rows_filled, sum_lanes, zeroed};
use elem::Elem;
use path::cpu_float;
