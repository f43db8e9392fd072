//! The matrix products of a linear layer on columns, with a path for mostly-zero operands.
//!
//! [`linear_columns`] (`y = x Wᵀ` on columns `[..., in]`) and [`linear_weight_grad`]
//! (`dW = Σ_r g_rᵀ x_r`) are custom ops whose backward passes are expressed through each other:
//!
//! | op | gradient in its first argument | in its second |
//! |---|---|---|
//! | `linear_columns(x, w)` | `linear_columns(g, wᵀ)` | `linear_weight_grad(x, g)` |
//! | `linear_weight_grad(x, g)` | `linear_columns(g, Gᵀ)` | `linear_columns(x, G)` |
//!
//! Each product is one gemm over all rows, unless an operand is mostly zero (see
//! `sparse.rs` for why the dual network's columns and their gradients often are): then every
//! non-zero adds `value × row` to the rows it reaches. Same numbers up to the order of summation.
//! Off the CPU, or in other dtypes, Candle's matmul does the work.

use super::gemm_conv::{matmul, Mat, View4};
use super::path::{note, KernelPath};
use super::sparse::{density_limit, mostly_zero};
use super::{add_into, axpy, contiguous_slice, cpu_float, tuning, Elem};
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

/// Rows of work below which a loop stays on the calling thread.
const MIN_ROWS: usize = 32;

/// `y = x Wᵀ` for columns `x` `[..., in]` and a weight `w` `[out, in]` (any strides) →
/// `[..., out]`: the forward product of a linear layer on every column at once. Its transpose
/// `ν W` is `linear_columns(ν, &w.t()?)`.
pub fn linear_columns(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if x.rank() < 2 || w.rank() != 2 {
        bail!(
            "linear_columns: expected columns [..., in] and a weight [out, in], got {:?} and {:?}",
            x.dims(),
            w.dims()
        );
    }
    let (o, k) = w.dims2()?;
    if x.dim(x.rank() - 1)? != k {
        bail!("linear_columns: columns of shape {:?} do not match a weight of shape [{o}, {k}]", x.dims());
    }
    if !cpu_float(&[x, w]) {
        note("linear_columns", KernelPath::Candle);
        let lead = &x.dims()[..x.rank() - 1];
        let rows: usize = lead.iter().product();
        let mut shape = lead.to_vec();
        shape.push(o);
        return x.reshape((rows, k))?.matmul(&w.t()?)?.reshape(shape);
    }
    let x = if x.is_contiguous() { x.clone() } else { x.contiguous()? };
    x.apply_op2(w, LinearOp)
}

/// `dW = Σ_r g_rᵀ x_r` for `x` `[..., in]` and `g` `[..., out]` with the same leading dims →
/// `[out, in]`: the weight gradient of [`linear_columns`].
pub fn linear_weight_grad(x: &Tensor, g: &Tensor) -> Result<Tensor> {
    let (xr, gr) = (x.rank(), g.rank());
    if xr < 2 || xr != gr || x.dims()[..xr - 1] != g.dims()[..gr - 1] {
        bail!("linear_weight_grad: columns {:?} and gradient {:?} differ in their leading dims", x.dims(), g.dims());
    }
    if !cpu_float(&[x, g]) {
        note("linear_weight_grad", KernelPath::Candle);
        let (k, o) = (x.dim(xr - 1)?, g.dim(gr - 1)?);
        let rows = x.elem_count() / k.max(1);
        return g.reshape((rows, o))?.t()?.matmul(&x.reshape((rows, k))?);
    }
    let x = if x.is_contiguous() { x.clone() } else { x.contiguous()? };
    let g = if g.is_contiguous() { g.clone() } else { g.contiguous()? };
    x.apply_op2(&g, LinearWeightGradOp)
}

/// `[rows, last]` of a contiguous layout, and its slice.
fn rows_of<'a, T>(data: &'a [T], l: &Layout, what: &str) -> Result<(&'a [T], usize, usize)> {
    let last = l.dims()[l.dims().len() - 1];
    let rows = contiguous_slice(data, l, what)?;
    Ok((rows, rows.len() / last.max(1), last))
}

/// Whether fewer than `fraction` of a `[rows, len]` slice are non-zero.
fn mostly_zero_rows<T: Elem>(data: &[T], rows: usize, len: usize, fraction: f64) -> bool {
    let view = View4 { data, start: 0, stride: [rows * len, rows * len, len, 1] };
    mostly_zero([1, 1, rows, len], view, fraction)
}

/// The gemm's threading for `macs` multiply-adds.
fn parallelism(macs: usize) -> Parallelism {
    let threads = rayon::current_num_threads().max(1);
    if threads == 1 || macs < tuning().serial_macs {
        Parallelism::None
    } else {
        Parallelism::Rayon(threads)
    }
}

/// `out[r, :] = Σ_j a[r, j] · b[j, :]` for a mostly-zero `a` `[rows, inner]` and a contiguous
/// `b` `[inner, cols]`, visiting the non-zeros of `a` only.
fn scatter_rows<T: Elem>(a: &[T], inner: usize, b: &[T], cols: usize) -> Vec<T> {
    let rows = a.len() / inner.max(1);
    let mut out = super::zeroed::<T>(rows * cols);
    if cols == 0 {
        return out;
    }
    out.par_chunks_mut(cols).with_min_len(MIN_ROWS).zip(a.par_chunks(inner.max(1))).for_each(|(dst, row)| {
        for (j, &v) in row.iter().enumerate() {
            if v != T::ZERO {
                axpy(dst, v, &b[j * cols..(j + 1) * cols]);
            }
        }
    });
    out
}

/// `Σ_r a[r, :]ᵀ b[r, :]` (`[ca, cb]`) for a mostly-zero `a` `[rows, ca]` and `b` `[rows, cb]`:
/// every non-zero `a[r, i]` adds `a[r, i] · b[r, :]` to row `i`.
fn outer_rows<T: Elem>(a: &[T], ca: usize, b: &[T], cb: usize) -> Vec<T> {
    let len = ca * cb;
    if ca == 0 || cb == 0 {
        return vec![T::ZERO; len];
    }
    a.par_chunks(ca)
        .zip(b.par_chunks(cb))
        .with_min_len(MIN_ROWS)
        .fold(
            || vec![T::ZERO; len],
            |mut acc, (ra, rb)| {
                for (i, &v) in ra.iter().enumerate() {
                    if v != T::ZERO {
                        axpy(&mut acc[i * cb..(i + 1) * cb], v, rb);
                    }
                }
                acc
            },
        )
        .reduce(
            || vec![T::ZERO; len],
            |mut a, b| {
                add_into(&mut a, &b);
                a
            },
        )
}

/// `m` `[r, c]` (element `(i, j)` at `off + i·rs + j·cs`) transposed into a contiguous `[c, r]`.
fn transposed<T: Elem>(m: Mat<'_, T>, r: usize, c: usize) -> Vec<T> {
    let mut out = vec![T::ZERO; r * c];
    for j in 0..c {
        for i in 0..r {
            out[j * r + i] = m.data[m.off + i * m.rs + j * m.cs];
        }
    }
    out
}

/// `x Wᵀ` as a custom op on `(x, w)`.
struct LinearOp;

impl LinearOp {
    fn run<T: Elem>(x: &[T], rows: usize, k: usize, w: Mat<'_, T>, o: usize) -> Vec<T> {
        if mostly_zero_rows(x, rows, k, density_limit(o)) {
            // Wᵀ as a contiguous [k, o].
            note("linear_columns", KernelPath::Sparse);
            return scatter_rows(x, k, &transposed(w, o, k), o);
        }
        note("linear_columns", KernelPath::Dense);
        let mut out = super::zeroed::<T>(rows * o);
        let wt = Mat { data: w.data, off: w.off, rs: w.cs, cs: w.rs };
        matmul(rows, o, k, &mut out, o, false, Mat { data: x, off: 0, rs: k, cs: 1 }, wt, parallelism(rows * o * k));
        out
    }
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "linear-columns"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (o, k) = l2.shape().dims2()?;
        let [rs, cs] = [l2.stride()[0], l2.stride()[1]];
        let mut dims = l1.dims().to_vec();
        let out = dispatch!("linear_columns", s1, s2; |x, w| {
            let (x, rows, kx) = rows_of(x, l1, "linear_columns")?;
            if kx != k {
                bail!("linear_columns: columns of width {kx} for a weight of width {k}");
            }
            Self::run(x, rows, k, Mat { data: w, off: l2.start_offset(), rs, cs }, o)
        });
        *dims.last_mut().expect("rank ≥ 2") = o;
        Ok((out, Shape::from(dims)))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = if x.track_op() { Some(linear_columns(grad, &w.t()?)?) } else { None };
        let dw = if w.track_op() { Some(linear_weight_grad(x, grad)?) } else { None };
        Ok((dx, dw))
    }
}

/// `Σ_r g_rᵀ x_r` as a custom op on `(x, g)`.
struct LinearWeightGradOp;

impl LinearWeightGradOp {
    fn run<T: Elem>(x: &[T], k: usize, g: &[T], o: usize) -> Vec<T> {
        let rows = x.len() / k.max(1);
        if mostly_zero_rows(g, rows, o, density_limit(k)) {
            note("linear_weight_grad", KernelPath::Sparse);
            return outer_rows(g, o, x, k);
        }
        if mostly_zero_rows(x, rows, k, density_limit(o)) {
            note("linear_weight_grad", KernelPath::Sparse);
            let t = outer_rows(x, k, g, o);
            let mut out = vec![T::ZERO; o * k];
            T::transpose(&t, k, o, &mut out);
            return out;
        }
        note("linear_weight_grad", KernelPath::Dense);
        let mut out = vec![T::ZERO; o * k];
        let gt = Mat { data: g, off: 0, rs: 1, cs: o };
        matmul(o, k, rows, &mut out, k, false, gt, Mat { data: x, off: 0, rs: k, cs: 1 }, parallelism(rows * o * k));
        out
    }
}

impl CustomOp2 for LinearWeightGradOp {
    fn name(&self) -> &'static str {
        "linear-weight-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (k, o) = (l1.dims()[l1.dims().len() - 1], l2.dims()[l2.dims().len() - 1]);
        let out = dispatch!("linear_weight_grad", s1, s2; |x, g| {
            let (x, rx, _) = rows_of(x, l1, "linear_weight_grad")?;
            let (g, rg, _) = rows_of(g, l2, "linear_weight_grad")?;
            if rx != rg {
                bail!("linear_weight_grad: {rx} rows of columns against {rg} rows of gradient");
            }
            Self::run(x, k, g, o)
        });
        Ok((out, Shape::from((o, k))))
    }

    fn bwd(&self, x: &Tensor, g: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // dW is bilinear in (x, g): <G, dW> = Σ_r g_r G x_rᵀ.
        let dx = if x.track_op() { Some(linear_columns(g, &grad.t()?)?) } else { None };
        let dg = if g.track_op() { Some(linear_columns(x, grad)?) } else { None };
        Ok((dx, dg))
    }
}
