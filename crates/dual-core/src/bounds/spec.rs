//! Specifications: a matrix `C` of linear functions of the network output.
//!
//! A bound method returns a lower bound of `C f(x')` over the input set, one per row. The default
//! specification of certified classification is the margins `z_y − z_j` (row `j`: `e_y − e_j`,
//! all zero at `j = y`).

use crate::{DualError, Result};
use candle_core::{DType, Device, Tensor};

/// `C`, shaped `[B, m, *out_shape]`: `m` linear functions of the output per example.
#[derive(Debug, Clone)]
pub struct Spec {
    c: Tensor,
}

impl Spec {
    /// A specification from its matrix `[B, m, *out_shape]`. Errors on non-finite entries or a
    /// tensor of rank below 3.
    pub fn new(c: Tensor) -> Result<Self> {
        if c.rank() < 3 {
            return Err(DualError::shape(format!(
                "a specification is [B, m, *out_shape] (rank 3 or more); got shape {:?}",
                c.dims()
            )));
        }
        let bad = c.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?.iter().any(|v| !v.is_finite());
        if bad {
            return Err(DualError::invalid("the specification contains NaN or infinite values"));
        }
        Ok(Spec { c })
    }

    /// The margins `z_y − z_j` for labels `y` and a flat output of `classes` entries:
    /// `[B, classes, classes]` (row `j` of example `b` is `e_{y_b} − e_j`).
    pub fn margins(y: &[u32], classes: usize, dtype: DType, device: &Device) -> Result<Self> {
        Ok(Spec { c: crate::class_difference_c(y, classes, dtype, device)? })
    }

    /// The matrix.
    pub fn matrix(&self) -> &Tensor {
        &self.c
    }

    /// Number of rows `m`.
    pub fn rows(&self) -> usize {
        self.c.dims()[1]
    }

    /// Checks the batch size and output shape against the network's; returns `C` in `dtype`.
    pub(crate) fn checked(&self, b: usize, out_shape: &[usize], dtype: DType) -> Result<Tensor> {
        let d = self.c.dims();
        if d[0] != b || d[2..] != *out_shape {
            return Err(DualError::shape(format!(
                "the specification has shape {d:?}; the network and batch need [{b}, m, {out_shape:?}]"
            )));
        }
        Ok(self.c.to_dtype(dtype)?)
    }
}

/// The rows of `C` (`[B, m, *out_shape]`) that are not zero, when every example has the same
/// number `z ≥ 1` of all-zero rows (the margins' row `e_y − e_y`): `C` without them
/// (`[B, m − z, *out_shape]`) and, per example and row, the row of the reduced `C` that holds it
/// (`m − z` for a zero row), `[B, m]`. A zero row's lower bound is 0, so a backward pass need not
/// carry it: [`expand_rows`] puts the zeros back. `None` when there is nothing to drop.
pub(crate) fn drop_zero_rows(c: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
    let (b, m) = (c.dim(0)?, c.dim(1)?);
    let k = c.elem_count() / (b * m).max(1);
    if b == 0 || m == 0 {
        return Ok(None);
    }
    let v = c.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    let zero: Vec<bool> = (0..b * m).map(|q| v[q * k..(q + 1) * k].iter().all(|&x| x == 0.0)).collect();
    let z = zero[..m].iter().filter(|&&t| t).count();
    if z == 0 || z == m || (0..b).any(|i| zero[i * m..(i + 1) * m].iter().filter(|&&t| t).count() != z) {
        return Ok(None);
    }
    let keep = m - z;
    let (mut idx, mut pos) = (Vec::with_capacity(b * keep), vec![keep as u32; b * m]);
    for i in 0..b {
        let mut r = 0;
        for j in 0..m {
            if !zero[i * m + j] {
                idx.push(j as u32);
                pos[i * m + j] = r as u32;
                r += 1;
            }
        }
    }
    let idx = Tensor::from_vec(idx, (b, keep, 1), c.device())?.broadcast_as((b, keep, k))?.contiguous()?;
    let mut shape = vec![b, keep];
    shape.extend_from_slice(&c.dims()[2..]);
    let reduced = c.reshape((b, m, k))?.gather(&idx, 1)?.reshape(shape)?;
    Ok(Some((reduced, Tensor::from_vec(pos, (b, m), c.device())?)))
}

/// Bounds of the reduced rows `[B, m − z]` back on all `m` rows (`pos` from [`drop_zero_rows`]),
/// 0 on the zero rows; differentiable.
pub(crate) fn expand_rows(lower: &Tensor, pos: &Tensor) -> Result<Tensor> {
    let b = lower.dim(0)?;
    let zero = Tensor::zeros((b, 1), lower.dtype(), lower.device())?;
    Ok(Tensor::cat(&[lower, &zero], 1)?.gather(pos, 1)?)
}
