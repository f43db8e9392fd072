//! The backward step of a two-line relaxation on coefficients, fused:
//! `out[b, j, i] = [λ]₊ a_L[b, i] + [λ]₋ a_U[b, i]` for `λ = lam[b', j, i]`.
//!
//! Written with Candle's ops it takes five full-size passes (`[λ]₊`, `[λ]₋`, two products, a
//! sum) over the largest tensors of CROWN's layer-wise bounds, and under autograd keeps four
//! full-size temporaries alive until the backward pass; here it is one pass and keeps only its
//! inputs. Its gradient (first order) is fused too:
//!
//! | argument | gradient |
//! |---|---|
//! | `λ` | `grad ⊙ (λ > 0 ? a_L : a_U)` (summed over the batch when `λ` is shared) |
//! | `a_L` | `Σ_j grad ⊙ [λ]₊` |
//! | `a_U` | `Σ_j grad ⊙ [λ]₋` |
//!
//! Each output element is the same product as with Candle's ops (`λ a_L + 0 a_U` or
//! `0 a_L + λ a_U`), so the numbers do not change.

use super::{contiguous_slice, cpu_float, Elem};
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Rows of work below which a loop stays on the calling thread.
const MIN_ROWS: usize = 16;

/// The fused step for coefficients `lam` `[Bλ, n, *shape]` (`Bλ` = 1 when shared, or `B`) and
/// per-example lines `a_l`, `a_u` (`[B, K]` elements each, any shape); `[B, n, *shape]`. `None`
/// where it does not apply (another device or dtype, other shapes). Recorded for backprop when an
/// operand tracks its ops.
pub fn relax_columns(lam: &Tensor, a_l: &Tensor, a_u: &Tensor) -> Result<Option<Tensor>> {
    if lam.rank() < 2 || !cpu_float(&[lam, a_l, a_u]) {
        return Ok(None);
    }
    let (bl, n) = (lam.dim(0)?, lam.dim(1)?);
    let b = a_u.dim(0)?;
    let k = lam.elem_count() / (bl * n).max(1);
    if a_l.elem_count() != b * k || a_u.elem_count() != b * k || (bl != 1 && bl != b) {
        return Ok(None);
    }
    let (a_l, a_u) = (a_l.reshape((b, k))?.contiguous()?, a_u.reshape((b, k))?.contiguous()?);
    let lam = lam.contiguous()?;
    if [&lam, &a_l, &a_u].iter().any(|t| t.track_op()) {
        Ok(Some(lam.apply_op3(&a_l, &a_u, RelaxColumns)?))
    } else {
        Ok(Some(lam.apply_op3_no_bwd(&a_l, &a_u, &RelaxColumns)?))
    }
}

struct RelaxColumns;

/// The fused step on rows gathered per example from a shared table, with the ReLU offset:
/// `out[e, r, i] = [λ]₊ a_L[e, i] + [λ]₋ a_U[e, i]` and `off[e, r] = Σ_i min(λ_i, 0) b_U[e, i]`
/// for `λ = table[idx[e·len + r]]` (`table` `[1, R, *shape]`, `a_l`, `a_u`, `b_u` `[B, K]`
/// elements each). One read of each gathered row and one write, where `index_select`, the step
/// and the offset's contraction took four passes and a serial zero fill. Returns
/// `([B, len, *shape], [B, len])`; `None` where it does not apply (another device or dtype, an
/// operand that tracks its ops, other shapes).
pub fn relax_gathered(
    table: &Tensor,
    idx: &[u32],
    len: usize,
    (a_l, a_u, b_u): (&Tensor, &Tensor, &Tensor),
) -> Result<Option<(Tensor, Tensor)>> {
    if table.rank() < 2 || table.dim(0)? != 1 || !cpu_float(&[table, a_l, a_u, b_u]) {
        return Ok(None);
    }
    if [table, a_l, a_u, b_u].iter().any(|t| t.track_op()) {
        return Ok(None);
    }
    let rows = table.dim(1)?;
    let k = table.elem_count() / rows.max(1);
    let b = a_u.dim(0)?;
    if len == 0 || idx.len() != b * len || a_l.elem_count() != b * k || b_u.elem_count() != b * k {
        return Ok(None);
    }
    if idx.iter().any(|&i| i as usize >= rows) {
        bail!("relax_gathered: a row index beyond the table's {rows} rows");
    }
    let flat = |t: &Tensor| t.reshape((b, k))?.contiguous();
    let (a_l, a_u, b_u) = (flat(a_l)?, flat(a_u)?, flat(b_u)?);
    let table = table.contiguous()?;
    let mut dims = table.dims().to_vec();
    dims[0] = b;
    dims[1] = len;
    let dev = table.device().clone();
    let (ts, tl) = table.storage_and_layout();
    let (ls, ll) = a_l.storage_and_layout();
    let (us, ul) = a_u.storage_and_layout();
    let (bs, bl) = b_u.storage_and_layout();
    use candle_core::Storage::Cpu;
    fn run<T: Elem + candle_core::WithDType>(
        (t, tl): (&[T], &Layout),
        (l, ll): (&[T], &Layout),
        (u, ul): (&[T], &Layout),
        (c, cl): (&[T], &Layout),
        idx: &[u32],
        (len, k, b): (usize, usize, usize),
        (dims, dev): (Vec<usize>, &candle_core::Device),
    ) -> Result<(Tensor, Tensor)> {
        let what = "relax_gathered";
        let slices = (contiguous_slice(l, ll, what)?, contiguous_slice(u, ul, what)?, contiguous_slice(c, cl, what)?);
        let (out, off) = relax_gather_rows(contiguous_slice(t, tl, what)?, idx, slices.0, slices.1, slices.2, len, k);
        Ok((Tensor::from_vec(out, dims, dev)?, Tensor::from_vec(off, (b, len), dev)?))
    }
    let shape = (len, k, b);
    Ok(Some(match (&*ts, &*ls, &*us, &*bs) {
        (Cpu(CpuStorage::F32(t)), Cpu(CpuStorage::F32(l)), Cpu(CpuStorage::F32(u)), Cpu(CpuStorage::F32(c))) => {
            run((t, tl), (l, ll), (u, ul), (c, bl), idx, shape, (dims, &dev))?
        }
        (Cpu(CpuStorage::F64(t)), Cpu(CpuStorage::F64(l)), Cpu(CpuStorage::F64(u)), Cpu(CpuStorage::F64(c))) => {
            run((t, tl), (l, ll), (u, ul), (c, bl), idx, shape, (dims, &dev))?
        }
        _ => return Ok(None),
    }))
}

fn relax_gather_rows<T: Elem>(
    tab: &[T],
    idx: &[u32],
    al: &[T],
    au: &[T],
    bu: &[T],
    len: usize,
    k: usize,
) -> (Vec<T>, Vec<T>) {
    let zero = T::default();
    let n = idx.len();
    let mut off = vec![zero; n];
    let mut out: Vec<T> = Vec::with_capacity(n * k);
    if k > 0 {
        out.spare_capacity_mut()[..n * k]
            .par_chunks_mut(k)
            .zip(off.par_iter_mut())
            .enumerate()
            .with_min_len(MIN_ROWS)
            .for_each(|(q, (row, o))| {
                let e = q / len;
                let src = &tab[idx[q] as usize * k..][..k];
                let (lo, up, bb) = (&al[e * k..][..k], &au[e * k..][..k], &bu[e * k..][..k]);
                // The offset in eight running sums (as `dot_lanes`), so that the loop vectorises:
                // fixed chunks of eight, no indexing, selects instead of branches (a NaN in the
                // row stays a NaN: `s * up`).
                let mut lanes = [zero; 8];
                let (s8, r8) = (src.chunks_exact(8), row.chunks_exact_mut(8));
                let (l8, u8, b8) = (lo.chunks_exact(8), up.chunks_exact(8), bb.chunks_exact(8));
                let (s_tail, l_tail, u_tail, b_tail) = (s8.remainder(), l8.remainder(), u8.remainder(), b8.remainder());
                for ((((s, d), l), u), b) in s8.zip(r8).zip(l8).zip(u8).zip(b8) {
                    for j in 0..8 {
                        let v = s[j];
                        d[j].write(if v > zero { v * l[j] } else { v * u[j] });
                        lanes[j] += if v < zero { v * b[j] } else { zero };
                    }
                }
                let body = k / 8 * 8;
                let mut tail = zero;
                for (j, d) in row[body..].iter_mut().enumerate() {
                    let v = s_tail[j];
                    d.write(if v > zero { v * l_tail[j] } else { v * u_tail[j] });
                    tail += if v < zero { v * b_tail[j] } else { zero };
                }
                *o = super::sum_lanes(lanes) + tail;
            });
    }
    // SAFETY: every row of `k` was written in full just above (zipped with slices of `k`).
    unsafe { out.set_len(n * k) };
    (out, off)
}

fn relax_rows<T: Elem>(lam: &[T], al: &[T], au: &[T], bl: usize, b: usize, n: usize, k: usize) -> Vec<T> {
    let zero = T::default();
    // SAFETY: every row of `k` is zipped with three slices of `k` and so written in full.
    unsafe {
        super::rows_filled(b * n, k, MIN_ROWS, |q, row| {
            let (e, j) = (q / n, q % n);
            let src = &lam[((if bl == 1 { 0 } else { e }) * n + j) * k..][..k];
            let (lo, up) = (&al[e * k..][..k], &au[e * k..][..k]);
            for (((o, &s), &wl), &wu) in row.iter_mut().zip(src).zip(lo).zip(up) {
                o.write(if s > zero { s * wl } else { s * wu });
            }
        })
    }
}

impl CustomOp3 for RelaxColumns {
    fn name(&self) -> &'static str {
        "relax-columns"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (bl, n) = (l1.dims()[0], l1.dims()[1]);
        let b = l2.dims()[0];
        let k = l1.shape().elem_count() / (bl * n).max(1);
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(p), CpuStorage::F32(q)) => CpuStorage::F32(relax_rows(
                contiguous_slice(x, l1, "relax_columns")?,
                contiguous_slice(p, l2, "relax_columns")?,
                contiguous_slice(q, l3, "relax_columns")?,
                bl,
                b,
                n,
                k,
            )),
            (CpuStorage::F64(x), CpuStorage::F64(p), CpuStorage::F64(q)) => CpuStorage::F64(relax_rows(
                contiguous_slice(x, l1, "relax_columns")?,
                contiguous_slice(p, l2, "relax_columns")?,
                contiguous_slice(q, l3, "relax_columns")?,
                bl,
                b,
                n,
                k,
            )),
            _ => bail!("relax_columns: unsupported or mixed dtypes"),
        };
        let mut dims = l1.dims().to_vec();
        dims[0] = b;
        Ok((out, Shape::from(dims)))
    }
    fn bwd(
        &self,
        lam: &Tensor,
        a_l: &Tensor,
        a_u: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let k = a_l.dim(1)?;
        let dlam = if lam.track_op() {
            let lines = Tensor::cat(&[a_l, a_u], 1)?;
            Some(grad.apply_op3_no_bwd(lam, &lines, &RelaxGradLam)?)
        } else {
            None
        };
        let dlines =
            if a_l.track_op() || a_u.track_op() { Some(grad.apply_op2_no_bwd(lam, &RelaxGradLines)?) } else { None };
        let pick = |t: &Tensor, lo: usize| -> Result<Option<Tensor>> {
            Ok(match (&dlines, t.track_op()) {
                (Some(d), true) => Some(d.narrow(1, lo, k)?.contiguous()?),
                _ => None,
            })
        };
        Ok((dlam, pick(a_l, 0)?, pick(a_u, k)?))
    }
}

/// `(Bλ, n, K)` of coefficients `[Bλ, n, *shape]` and `B` of a gradient `[B, n, *shape]`.
fn grad_dims(g: &Layout, lam: &Layout) -> (usize, usize, usize, usize) {
    let (b, n) = (g.dims()[0], g.dims()[1]);
    let bl = lam.dims()[0];
    (bl, n, g.shape().elem_count() / (b * n).max(1), b)
}

/// `out[b', j, i] = Σ_b grad[b, j, i] · (λ[b', j, i] > 0 ? a_L[b, i] : a_U[b, i])` with
/// `lines = [a_L | a_U]` `[B, 2K]` (the sum only when `λ` is shared, `b' = 0`): shaped like `λ`.
struct RelaxGradLam;

/// `∂/∂λ ([λ]₊ a_L + [λ]₋ a_U) · g`; at `λ = 0` the mean of both sides, as Candle's
/// `maximum` gives its tie (so the gradient equals that of the unfused ops).
#[inline]
fn pick_grad<T: Elem>(s: T, g: T, wl: T, wu: T) -> T {
    let zero = T::default();
    if s > zero {
        g * wl
    } else if s < zero {
        g * wu
    } else {
        (g * wl + -(g * wu)) * T::HALF + g * wu
    }
}

fn grad_lam_rows<T: Elem>(g: &[T], lam: &[T], lines: &[T], bl: usize, b: usize, n: usize, k: usize) -> Vec<T> {
    let zero = T::default();
    // SAFETY: every row of `k` is written in full (zipped, or zero-filled then accumulated).
    unsafe {
        super::rows_filled(bl * n, k, MIN_ROWS, |q, row| {
            let src = &lam[q * k..][..k];
            if bl == b {
                let e = q / n;
                let (lo, up) = (&lines[e * 2 * k..][..k], &lines[e * 2 * k + k..][..k]);
                let gr = &g[q * k..][..k];
                for ((((o, &s), &gv), &wl), &wu) in row.iter_mut().zip(src).zip(gr).zip(lo).zip(up) {
                    o.write(pick_grad(s, gv, wl, wu));
                }
            } else {
                for o in row.iter_mut() {
                    o.write(zero);
                }
                // SAFETY: just initialised.
                let row = &mut *(row as *mut [std::mem::MaybeUninit<T>] as *mut [T]);
                for e in 0..b {
                    let (lo, up) = (&lines[e * 2 * k..][..k], &lines[e * 2 * k + k..][..k]);
                    let gr = &g[(e * n + q) * k..][..k];
                    for ((((o, &s), &gv), &wl), &wu) in row.iter_mut().zip(src).zip(gr).zip(lo).zip(up) {
                        *o += pick_grad(s, gv, wl, wu);
                    }
                }
            }
        })
    }
}

impl CustomOp3 for RelaxGradLam {
    fn name(&self) -> &'static str {
        "relax-grad-lam"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (bl, n, k, b) = grad_dims(l1, l2);
        let out = dispatch!("relax_grad_lam", s1, s2, s3; |g, lam, lines| {
            grad_lam_rows(
                contiguous_slice(g, l1, "relax_grad_lam")?,
                contiguous_slice(lam, l2, "relax_grad_lam")?,
                contiguous_slice(lines, l3, "relax_grad_lam")?,
                bl, b, n, k,
            )
        });
        Ok((out, l2.shape().clone()))
    }
}

/// `out[b, i] = Σ_j grad[b, j, i] [λ[b', j, i]]₊` and `out[b, K + i] = Σ_j grad[b, j, i] [λ]₋`:
/// the gradients of both lines, `[B, 2K]`.
struct RelaxGradLines;

fn grad_lines_rows<T: Elem>(g: &[T], lam: &[T], bl: usize, b: usize, n: usize, k: usize) -> Vec<T> {
    let zero = T::default();
    let mut out = vec![zero; b * 2 * k];
    out.par_chunks_mut((2 * k).max(1)).enumerate().for_each(|(e, o)| {
        let (pos, neg) = o.split_at_mut(k);
        for j in 0..n {
            let src = &lam[((if bl == 1 { 0 } else { e }) * n + j) * k..][..k];
            let gr = &g[(e * n + j) * k..][..k];
            for (((p, q), &s), &gv) in pos.iter_mut().zip(neg.iter_mut()).zip(src).zip(gr) {
                if s > zero {
                    *p += gv * s;
                } else {
                    *q += gv * s;
                }
            }
        }
    });
    out
}

impl CustomOp2 for RelaxGradLines {
    fn name(&self) -> &'static str {
        "relax-grad-lines"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (bl, n, k, b) = grad_dims(l1, l2);
        let out = dispatch!("relax_grad_lines", s1, s2; |g, lam| {
            grad_lines_rows(contiguous_slice(g, l1, "relax_grad_lines")?, contiguous_slice(lam, l2, "relax_grad_lines")?, bl, b, n, k)
        });
        Ok((out, Shape::from((b, 2 * k))))
    }
}
