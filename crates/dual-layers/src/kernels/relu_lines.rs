//! ReLU's two lines on `[l, u]` in one pass per output (CROWN's relaxation, Zhang et al. 2018,
//! eq. 3–4): on the unstable set `l < 0 < u` the upper line is the chord `a_U = u/(u − l)`,
//! `b_U = −a_U l`, the lower line's slope `a_L` is the chord's (the Wong–Kolter dual) or CROWN's
//! adaptive `1{a_U > 1/2}`; stable units are exact (`1, 0` where `l ≥ 0`; `0, 0` where `u ≤ 0`).
//!
//! Written with Candle's ops (`relu_linear.rs`, kept for tracked bounds) this is fifteen
//! full-size passes with an allocation each — an eighth of a CROWN-IBP batch on the papers'
//! Fashion-MNIST model, most of it per-op overhead. Here each output is one pass. The same
//! numbers, NaN and infinite bounds included: each element goes through the same float
//! operations in the same order (`u_s` the 0/1 unstable mask, `a_s` the active one):
//! `d = (u − l) + (1 − u_s)`, `c = u_s · (u / d)`, `a_U = a_s + c`, `b_U = −(c · l)`,
//! `a_L = a_U` or `a_s + u_s · 1{c > 1/2}`. Not recorded for backprop: used only when neither
//! bound tracks its ops.

use super::{cpu_float, par_fill, Elem};
use candle_core::{DType, Result, Tensor};

/// Elements per row of the parallel loops.
const ROW: usize = 4096;
/// Rows below which a loop stays on the calling thread.
const MIN_ROWS: usize = 16;

/// `(a_U, b_U, a_L)` shaped like `lower`, or `None` where this path does not apply (another
/// device or dtype, shapes that differ, an operand that tracks its ops).
pub fn relu_lines(lower: &Tensor, upper: &Tensor, adaptive: bool) -> Result<Option<(Tensor, Tensor, Tensor)>> {
    if lower.dims() != upper.dims() || !cpu_float(&[lower, upper]) || lower.track_op() || upper.track_op() {
        return Ok(None);
    }
    let (l, u) = (lower.contiguous()?, upper.contiguous()?);
    let shape = l.shape().clone();
    let dev = l.device().clone();
    Ok(Some(match l.dtype() {
        DType::F32 => {
            let (lv, uv) = (l.flatten_all()?.to_vec1::<f32>()?, u.flatten_all()?.to_vec1::<f32>()?);
            let (a, b, s) = lines(&lv, &uv, adaptive);
            (Tensor::from_vec(a, &shape, &dev)?, Tensor::from_vec(b, &shape, &dev)?, Tensor::from_vec(s, &shape, &dev)?)
        }
        DType::F64 => {
            let (lv, uv) = (l.flatten_all()?.to_vec1::<f64>()?, u.flatten_all()?.to_vec1::<f64>()?);
            let (a, b, s) = lines(&lv, &uv, adaptive);
            (Tensor::from_vec(a, &shape, &dev)?, Tensor::from_vec(b, &shape, &dev)?, Tensor::from_vec(s, &shape, &dev)?)
        }
        _ => return Ok(None),
    }))
}

/// The chord `c` and the masks of element `i`, by the operations of the Candle version.
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

fn lines<T>(l: &[T], u: &[T], adaptive: bool) -> (Vec<T>, Vec<T>, Vec<T>)
where
    T: Elem + std::ops::Sub<Output = T> + std::ops::Div<Output = T>,
{
    let n = l.len();
    let a_u = par_fill(n, ROW, MIN_ROWS, |i| {
        let (c, _, active) = chord(l[i], u[i]);
        active + c
    });
    let b_u = par_fill(n, ROW, MIN_ROWS, |i| -(chord(l[i], u[i]).0 * l[i]));
    let a_l = if adaptive {
        par_fill(n, ROW, MIN_ROWS, |i| {
            let (c, unstable, active) = chord(l[i], u[i]);
            active + unstable * if c > T::HALF { T::ONE } else { T::ZERO }
        })
    } else {
        a_u.clone()
    };
    (a_u, b_u, a_l)
}
