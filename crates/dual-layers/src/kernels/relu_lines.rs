//! ReLU's two lines on `[l, u]` in one pass (CROWN's relaxation, Zhang et al. 2018,
//! eq. 3–4): on the unstable set `l < 0 < u` the upper line is the chord `a_U = u/(u − l)`,
//! `b_U = −a_U l`, the lower line's slope `a_L` is the chord's (the Wong–Kolter dual) or CROWN's
//! adaptive `1{a_U > 1/2}`; stable units are exact (`1, 0` where `l ≥ 0`; `0, 0` where `u ≤ 0`).
//!
//! Written with Candle's ops (`relu_linear.rs`, kept for tracked bounds) this is fifteen
//! full-size passes with an allocation each — an eighth of a CROWN-IBP batch on the papers'
//! Fashion-MNIST model, most of it per-op overhead. Here they are one pass over the bounds, read
//! in place, with one chord per unit. The same numbers, NaN and infinite bounds included: each
//! element goes through the same float operations in the same order (`u_s` the 0/1 unstable mask, `a_s` the active one):
//! `d = (u − l) + (1 − u_s)`, `c = u_s · (u / d)`, `a_U = a_s + c`, `b_U = −(c · l)`,
//! `a_L = a_U` or `a_s + u_s · 1{c > 1/2}`. Not recorded for backprop: used only when neither
//! bound tracks its ops.

use super::{contiguous_slice, cpu_float, Elem};
use candle_core::{CpuStorage, Device, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

/// Elements per row of the parallel loop.
const ROW: usize = 4096;
/// Rows below which the loop stays on the calling thread.
const MIN_ROWS: usize = 16;

/// `(a_U, b_U, a_L)` shaped like `lower`, or `None` where this path does not apply (another
/// device or dtype, shapes that differ, an operand that tracks its ops). For the dual's rule
/// `a_L` is `a_U` itself (one tensor), as in the Candle version.
pub fn relu_lines(lower: &Tensor, upper: &Tensor, adaptive: bool) -> Result<Option<(Tensor, Tensor, Tensor)>> {
    if lower.dims() != upper.dims() || !cpu_float(&[lower, upper]) || lower.track_op() || upper.track_op() {
        return Ok(None);
    }
    let (l, u) = (lower.contiguous()?, upper.contiguous()?);
    let (shape, dev) = (l.shape().clone(), l.device().clone());
    let (ls, ll) = l.storage_and_layout();
    let (us, ul) = u.storage_and_layout();
    fn run<T>(l: &[T], u: &[T], adaptive: bool, shape: &Shape, dev: &Device) -> Result<(Tensor, Tensor, Tensor)>
    where
        T: Elem + candle_core::WithDType + std::ops::Sub<Output = T> + std::ops::Div<Output = T>,
    {
        let (a_u, b_u, a_l) = lines(l, u, adaptive);
        let a_u = Tensor::from_vec(a_u, shape, dev)?;
        let a_l = match a_l {
            Some(v) => Tensor::from_vec(v, shape, dev)?,
            None => a_u.clone(),
        };
        Ok((a_u, Tensor::from_vec(b_u, shape, dev)?, a_l))
    }
    let what = "relu_lines";
    Ok(Some(match (&*ls, &*us) {
        (Storage::Cpu(CpuStorage::F32(a)), Storage::Cpu(CpuStorage::F32(b))) => {
            run(contiguous_slice(a, ll, what)?, contiguous_slice(b, ul, what)?, adaptive, &shape, &dev)?
        }
        (Storage::Cpu(CpuStorage::F64(a)), Storage::Cpu(CpuStorage::F64(b))) => {
            run(contiguous_slice(a, ll, what)?, contiguous_slice(b, ul, what)?, adaptive, &shape, &dev)?
        }
        _ => return Ok(None),
    }))
}

/// The chord `c` and the masks of one unit, by the operations of the Candle version.
#[inline]
fn chord<T>(l: T, u: T) -> (T, T, T)
where
    T: Elem + std::ops::Sub<Output = T> + std::ops::Div<Output = T>,
{
    let unstable = if l < T::ZERO && u > T::ZERO { T::ONE } else { T::ZERO };
    let active = if l >= T::ZERO { T::ONE } else { T::ZERO };
    let d = (u - l) + (T::ONE - unstable);
    (unstable * (u / d), unstable, active)
}

/// `a_U`, `b_U` and (adaptive rule only) `a_L` in one parallel pass, one chord per unit.
fn lines<T>(l: &[T], u: &[T], adaptive: bool) -> (Vec<T>, Vec<T>, Option<Vec<T>>)
where
    T: Elem + std::ops::Sub<Output = T> + std::ops::Div<Output = T>,
{
    let n = l.len();
    let (mut a_u, mut b_u) = (vec![T::ZERO; n], vec![T::ZERO; n]);
    let mut a_l = if adaptive { vec![T::ZERO; n] } else { Vec::new() };
    let fill = |q: usize, au: &mut [T], bu: &mut [T], mut al: Option<&mut [T]>| {
        for j in 0..au.len() {
            let i = q * ROW + j;
            let (c, unstable, active) = chord(l[i], u[i]);
            au[j] = active + c;
            bu[j] = -(c * l[i]);
            if let Some(al) = al.as_deref_mut() {
                al[j] = active + unstable * if c > T::HALF { T::ONE } else { T::ZERO };
            }
        }
    };
    let rows = a_u.par_chunks_mut(ROW).zip(b_u.par_chunks_mut(ROW)).enumerate().with_min_len(MIN_ROWS);
    if adaptive {
        rows.zip(a_l.par_chunks_mut(ROW)).for_each(|((q, (au, bu)), al)| fill(q, au, bu, Some(al)));
        (a_u, b_u, Some(a_l))
    } else {
        rows.for_each(|(q, (au, bu))| fill(q, au, bu, None));
        (a_u, b_u, None)
    }
}
