//! Which implementation a kernel call runs, and a per-thread record of it so tests can assert
//! the path they meant to exercise.

use candle_core::{DType, Tensor};
use std::cell::RefCell;

use super::tuning;

/// The implementation a kernel call took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelPath {
    /// Candle's own op (another device or dtype, or [`super::Tuning::candle`]).
    Candle,
    /// The dense product (im2col + gemm, or gemm).
    Dense,
    /// The product that visits the non-zeros of a mostly-zero operand only.
    Sparse,
}

/// One kernel call: the op's name and the path it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathTaken {
    /// The op ("conv2d", "conv_transpose2d", "conv2d_weight_grad", "linear_columns",
    /// "linear_weight_grad").
    pub op: &'static str,
    /// Its path.
    pub path: KernelPath,
}

thread_local! {
    /// The calls of the innermost [`record_paths`] on this thread, if one is running.
    static LOG: RefCell<Option<Vec<PathTaken>>> = const { RefCell::new(None) };
}

/// Runs `f` and returns, with its result, the kernel calls made on this thread inside it, in
/// order (gradients included when `f` runs a backward pass). Costs nothing outside a recording.
pub fn record_paths<R>(f: impl FnOnce() -> R) -> (R, Vec<PathTaken>) {
    let outer = LOG.with(|l| l.borrow_mut().replace(Vec::new()));
    let r = f();
    let mine = LOG.with(|l| std::mem::replace(&mut *l.borrow_mut(), outer)).unwrap_or_default();
    if !mine.is_empty() {
        LOG.with(|l| {
            if let Some(o) = l.borrow_mut().as_mut() {
                o.extend_from_slice(&mine)
            }
        });
    }
    (r, mine)
}

/// Records that `op` took `path` (a no-op unless [`record_paths`] is running on this thread).
pub(crate) fn note(op: &'static str, path: KernelPath) {
    LOG.with(|l| {
        if let Some(v) = l.borrow_mut().as_mut() {
            v.push(PathTaken { op, path })
        }
    });
}

/// Whether the kernels apply to these tensors: all on the CPU, all of one float dtype (f32 or
/// f64), and Candle's own ops not forced by the tuning.
pub(super) fn cpu_float(ts: &[&Tensor]) -> bool {
    !tuning().candle
        && ts.iter().all(|t| t.device().is_cpu() && t.dtype() == ts[0].dtype())
        && matches!(ts[0].dtype(), DType::F32 | DType::F64)
}
