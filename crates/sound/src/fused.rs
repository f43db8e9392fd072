//! Fused contractions of the backward pass: one read of the coefficients per step instead of a
//! fresh `[B, R, N]` temporary per elementwise operation.
//!
//! For coefficients `g` (`[B_g, R, *shape]`, `B_g ∈ {1, B}`), an optional elementwise scale `s`
//! (`[B, *shape]`, the ReLU slopes) and vectors `v_k` (`[B, *shape]`), [`signed_dots`] computes,
//! per example `e` and row `r`, `h = fl(g ∘ s)` (or `h = g`) and
//!
//! ```text
//! P_k[e, r] = Σ_n max(h_n, 0) v_k[e, n],   M_k[e, r] = Σ_n min(h_n, 0) v_k[e, n],
//! ```
//!
//! so `P_k − M_k = Σ |h| v_k` and, for a box `[l, u]`, `P(l) + M(u) ≤ hᵀz ≤ P(u) + M(l)`. These are
//! the same sums of products the unfused tensor code computed, in another order: every error
//! charge of the check is of the form `γ_n Σ |aᵢbᵢ|` (or a bound on the rounding of `h` itself,
//! `|fl(g s) − g s| ≤ u |g s|`), valid for any summation order, so the analysis is unchanged.
//! Rows are independent and split over threads.

use crate::{Result, SoundError};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

/// The values of `t`, f64, in row-major order.
fn values(t: &Tensor) -> Result<Vec<f64>> {
    if t.dtype() != DType::F64 {
        return Err(SoundError::BadInput(format!("the check works in f64, got {:?}", t.dtype())));
    }
    Ok(t.flatten_all()?.to_vec1::<f64>()?)
}

/// What [`signed_dots`] returns: the scaled coefficients (when a scale was given) and, per
/// vector, the sums over the positive and over the negative part, `[B, R]` each.
pub(crate) struct SignedDots {
    pub scaled: Option<Tensor>,
    pub pos: Vec<Tensor>,
    pub neg: Vec<Tensor>,
}

/// See the module docs. `batch` is `B` (the batch of `s` and of every `v_k`).
pub(crate) fn signed_dots(g: &Tensor, scale: Option<&Tensor>, vs: &[&Tensor], batch: usize) -> Result<SignedDots> {
    let (bg, rows) = (g.dim(0)?, g.dim(1)?);
    let n = g.elem_count() / (bg * rows).max(1);
    if bg != 1 && bg != batch {
        return Err(SoundError::BadInput(format!("coefficients for {bg} examples, values for {batch}")));
    }
    let check = |t: &Tensor, what: &str| -> Result<()> {
        if t.elem_count() != batch * n {
            return Err(SoundError::BadInput(format!(
                "{what} of shape {:?} against coefficients of shape {:?}",
                t.dims(),
                g.dims()
            )));
        }
        Ok(())
    };
    let gv = values(g)?;
    let sv = match scale {
        Some(s) => {
            check(s, "a scale")?;
            Some(values(s)?)
        }
        None => None,
    };
    let mut vv = Vec::with_capacity(vs.len());
    for v in vs {
        check(v, "a vector")?;
        vv.push(values(v)?);
    }
    let k = vs.len();
    let out_rows = batch * rows;
    // Per output row (e, r): [P_0, M_0, P_1, M_1, ...].
    let mut sums = vec![0f64; out_rows * 2 * k];
    let mut scaled = if sv.is_some() { vec![0f64; out_rows * n] } else { Vec::new() };
    let row_of = |i: usize| -> (usize, usize) { (i / rows, i % rows) };
    let body = |i: usize, h_out: Option<&mut [f64]>, acc: &mut [f64]| {
        let (e, r) = row_of(i);
        let gb = if bg == 1 { 0 } else { e };
        let grow = &gv[(gb * rows + r) * n..(gb * rows + r + 1) * n];
        let ve: Vec<&[f64]> = vv.iter().map(|v| &v[e * n..(e + 1) * n]).collect();
        match (&sv, h_out) {
            (Some(s), Some(h_out)) => {
                let srow = &s[e * n..(e + 1) * n];
                for j in 0..n {
                    let h = grow[j] * srow[j];
                    h_out[j] = h;
                    if h != 0.0 {
                        let slot = if h > 0.0 { 0 } else { 1 };
                        for (q, v) in ve.iter().enumerate() {
                            acc[2 * q + slot] += h * v[j];
                        }
                    }
                }
            }
            _ => {
                for (j, &h) in grow.iter().enumerate() {
                    if h != 0.0 {
                        let slot = if h > 0.0 { 0 } else { 1 };
                        for (q, v) in ve.iter().enumerate() {
                            acc[2 * q + slot] += h * v[j];
                        }
                    }
                }
            }
        }
    };
    if sv.is_some() {
        scaled
            .par_chunks_mut(n.max(1))
            .zip(sums.par_chunks_mut((2 * k).max(1)))
            .enumerate()
            .for_each(|(i, (h, acc))| body(i, Some(h), acc));
    } else {
        sums.par_chunks_mut((2 * k).max(1)).enumerate().for_each(|(i, acc)| body(i, None, acc));
    }
    let dev = Device::Cpu;
    let pick = |q: usize| -> Result<Tensor> {
        let v: Vec<f64> = sums.chunks(2 * k).map(|c| c[q]).collect();
        Ok(Tensor::from_vec(v, (batch, rows), &dev)?)
    };
    let mut pos = Vec::with_capacity(k);
    let mut neg = Vec::with_capacity(k);
    for q in 0..k {
        pos.push(pick(2 * q)?);
        neg.push(pick(2 * q + 1)?);
    }
    let scaled = match sv {
        Some(_) => {
            let mut shape = vec![batch, rows];
            shape.extend_from_slice(&g.dims()[2..]);
            Some(Tensor::from_vec(scaled, shape, &dev)?)
        }
        None => None,
    };
    Ok(SignedDots { scaled, pos, neg })
}
