//! The norm estimators, applied to propagated projections.
//!
//! A source with projected columns sees, at a layer with `K` units, the propagated columns
//! `P` `[B, n, K]`: column `i` holds `A r_i` for the linear map `A` from the source to the layer
//! (one row `a_j` per unit `j`). Reduced over the projections:
//! * Cauchy `r_i`: `(A r_i)_j ~ Cauchy(0, ‖a_j‖₁)`, and `|Cauchy(0, s)|` has median `s`, so the
//!   sample median of `|P_ij|` over `i` estimates `‖a_j‖₁` ([`median_abs_over_columns`]);
//! * normal `r_i`: `(A r_i)_j ~ N(0, ‖a_j‖₂²)`, so `sqrt(mean_i P_ij²)` estimates `‖a_j‖₂`
//!   ([`mean_square_over_columns`], then a square root).
//!
//! Both are differentiable: the median is a `gather` of the middle element (its index is found on
//! the host, where a selection is linear in `k`), and the gradient flows to that element only.

use candle_core::{DType, Tensor};
use dual_core::{DualError, Result};
use dual_layers::sum_over_columns;
use std::cmp::Ordering;

/// Index (0-based) of the median among `k` sorted values: the middle one for odd `k`, the lower
/// of the two middle ones for even `k` (as PyTorch's `median`).
pub fn median_rank(k: usize) -> usize {
    k.saturating_sub(1) / 2
}

/// Values the host-side selection works on.
trait Val: Copy + Send + Sync {
    fn abs_val(self) -> Self;
    fn order(&self, other: &Self) -> Ordering;
}

impl Val for f32 {
    fn abs_val(self) -> Self {
        self.abs()
    }
    fn order(&self, other: &Self) -> Ordering {
        self.total_cmp(other)
    }
}

impl Val for f64 {
    fn abs_val(self) -> Self {
        self.abs()
    }
    fn order(&self, other: &Self) -> Ordering {
        self.total_cmp(other)
    }
}

/// Units handled per block: a block of `BLOCK` units × `k` projections is copied (transposed)
/// into a small buffer, so the strided reads stay in cache.
const BLOCK: usize = 64;

/// For `v` laid out `[B, n, K]`, the column (in `offset..offset + k`) holding the lower median of
/// `|v[b, offset + i, j]|` over `i` for every `(b, j)`, as `[B, K]` row-major indices into dim 1.
/// Equal values resolve to the lowest column, so the choice is deterministic. Parallel over
/// examples.
fn median_indices<T: Val>(v: &[T], b: usize, n: usize, kk: usize, offset: usize, k: usize) -> Vec<u32> {
    let mid = median_rank(k);
    let mut out = vec![0u32; b * kk];
    let one = |bi: usize, out: &mut [u32]| {
        let base = bi * n * kk;
        let mut buf: Vec<T> = Vec::with_capacity(BLOCK * k);
        let mut row: Vec<T> = Vec::with_capacity(k);
        for j0 in (0..kk).step_by(BLOCK) {
            let w = BLOCK.min(kk - j0);
            buf.clear();
            buf.resize(w * k, v[0]);
            for i in 0..k {
                let src = &v[base + (offset + i) * kk + j0..][..w];
                for (jj, x) in src.iter().enumerate() {
                    buf[jj * k + i] = x.abs_val();
                }
            }
            for jj in 0..w {
                let vals = &buf[jj * k..(jj + 1) * k];
                row.clear();
                row.extend_from_slice(vals);
                let (_, m, _) = row.select_nth_unstable_by(mid, |a, b| a.order(b));
                let m = *m;
                let i = vals.iter().position(|x| x.order(&m) == Ordering::Equal).expect("the median is one of the values");
                out[jj + j0] = (offset + i) as u32;
            }
        }
    };
    let threads = std::thread::available_parallelism().map(|t| t.get()).unwrap_or(1).min(b);
    if threads <= 1 || b * k * kk < 1 << 16 {
        for (bi, o) in out.chunks_mut(kk).enumerate() {
            one(bi, o);
        }
    } else {
        let per = b.div_ceil(threads);
        std::thread::scope(|s| {
            for (c, chunk) in out.chunks_mut(per * kk).enumerate() {
                let one = &one;
                s.spawn(move || {
                    for (i, o) in chunk.chunks_mut(kk).enumerate() {
                        one(c * per + i, o);
                    }
                });
            }
        });
    }
    out
}

/// Runs `f` on the values of a contiguous tensor without copying them when possible.
fn with_values<T: Val + candle_core::WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(cpu) => {
            let all = cpu.as_slice::<T>()?;
            let start = layout.start_offset();
            Ok(f(&all[start..start + t.elem_count()]))
        }
        _ => {
            drop(storage);
            let v = t.flatten_all()?.to_vec1::<T>()?;
            Ok(f(&v))
        }
    }
}

/// `median_i |p[b, offset + i, j]|` over `i < k`, for `p` shaped `[B, n, K]`; returns `[B, K]`.
/// Differentiable in `p` (the gradient goes to the selected element).
pub fn median_abs_over_columns(p: &Tensor, offset: usize, k: usize) -> Result<Tensor> {
    let (b, n, kk) = p.dims3()?;
    if k == 0 || offset + k > n {
        return Err(DualError::shape(format!("median over columns {offset}..{} of a tensor with {n} columns", offset + k)));
    }
    let idx = match p.dtype() {
        DType::F64 => with_values::<f64, _>(p, |v| median_indices(v, b, n, kk, offset, k))?,
        DType::F32 => with_values::<f32, _>(p, |v| median_indices(v, b, n, kk, offset, k))?,
        _ => with_values::<f32, _>(&p.to_dtype(DType::F32)?, |v| median_indices(v, b, n, kk, offset, k))?,
    };
    let idx = Tensor::from_vec(idx, (b, 1, kk), p.device())?;
    Ok(p.contiguous()?.gather(&idx, 1)?.squeeze(1)?.abs()?)
}

/// `Σ_{i<len} p[b, i, j]² / k` for `p` shaped `[B, len, K]` (a partial mean of squares over `k`
/// projections in all); returns `[B, K]`.
pub fn mean_square_over_columns(p: &Tensor, k: usize) -> Result<Tensor> {
    let (b, n, _) = p.dims3()?;
    let w = Tensor::full(1.0 / k as f64, (b, n), p.device())?.to_dtype(p.dtype())?;
    Ok(sum_over_columns(&p.sqr()?, &w)?)
}
