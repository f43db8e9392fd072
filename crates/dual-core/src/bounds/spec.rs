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
