//! The backward step of a two-line relaxation on coefficients, fused:
//! `out[b, j, i] = [λ]₊ a_L[b, i] + [λ]₋ a_U[b, i]` for `λ = lam[b', j, i]`.
//!
//! Written with Candle's ops it takes five full-size passes (`[λ]₊`, `[λ]₋`, two products, a
//! sum) over the largest tensors of CROWN's layer-wise bounds; here it is one. It has no backward
//! pass: [`relax_columns`] answers `None` when a gradient could be asked for (an operand tracks
//! its ops) and the caller uses the differentiable ops, which give the same numbers (each
//! element is the same product: `λ a_L + 0 a_U` or `0 a_L + λ a_U`).

use super::{contiguous_slice, cpu_float, Elem};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

/// Rows of work below which a loop stays on the calling thread.
const MIN_ROWS: usize = 16;

/// The fused step for coefficients `lam` `[Bλ, n, *shape]` (`Bλ` = 1 when shared, or `B`) and
/// per-example lines `a_l`, `a_u` (`[B, K]` elements each, any shape); `[B, n, *shape]`. `None`
/// where it does not apply (an operand tracks its ops, another device or dtype, other shapes).
pub fn relax_columns(lam: &Tensor, a_l: &Tensor, a_u: &Tensor) -> Result<Option<Tensor>> {
    if lam.rank() < 2 || [lam, a_l, a_u].iter().any(|t| t.track_op()) || !cpu_float(&[lam, a_l, a_u]) {
        return Ok(None);
    }
    let (bl, n) = (lam.dim(0)?, lam.dim(1)?);
    let b = a_u.dim(0)?;
    let k = lam.elem_count() / (bl * n).max(1);
    if a_l.elem_count() != b * k || a_u.elem_count() != b * k || (bl != 1 && bl != b) {
        return Ok(None);
    }
    let (a_l, a_u) = (a_l.reshape((b, k))?.contiguous()?, a_u.reshape((b, k))?.contiguous()?);
    Ok(Some(lam.contiguous()?.apply_op3_no_bwd(&a_l, &a_u, &RelaxColumns)?))
}

struct RelaxColumns;

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
}
