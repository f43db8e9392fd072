//! Robust bounds and the robust loss built on the objective.

use crate::{DualError, DualNetwork, Result};
use candle_core::{DType, Tensor, D};

/// `c[b, j] = e_{y_b} - e_j`, shaped `[B, classes, classes]`: row `j` asks for a lower bound of
/// `f_y(x') - f_j(x')`.
pub fn class_difference_c(y: &[u32], classes: usize, dtype: DType, device: &candle_core::Device) -> Result<Tensor> {
    let b = y.len();
    let mut data = vec![0f64; b * classes * classes];
    for (i, &yi) in y.iter().enumerate() {
        let yi = yi as usize;
        if yi >= classes {
            return Err(DualError::invalid(format!(
                "label {yi} of example {i} is not below the number of classes {classes}"
            )));
        }
        for j in 0..classes {
            let row = (i * classes + j) * classes;
            data[row + yi] += 1.0;
            data[row + j] -= 1.0;
        }
    }
    Ok(Tensor::from_vec(data, (b, classes, classes), device)?.to_dtype(dtype)?)
}

/// `f_j = -J(e_y - e_j)`: an upper bound of `f_j(x') - f_y(x')` over the input set, `[B, classes]`
/// (`f_y = 0`). An example is certified when every `f_j` with `j ≠ y` is negative.
pub fn robust_bounds(dual: &DualNetwork, y: &[u32]) -> Result<Tensor> {
    let shape = dual.output_shape();
    if shape.len() != 1 {
        return Err(DualError::shape(format!("robust bounds need a flat output; the network gives {shape:?}")));
    }
    if y.len() != dual.batch_size() {
        return Err(DualError::shape(format!("{} labels for a batch of {}", y.len(), dual.batch_size())));
    }
    let c = class_difference_c(y, shape[0], dual.dtype(), dual.device())?;
    Ok(dual.objective(&c)?.neg()?)
}

/// The robust loss of Wong & Kolter (Eq. 14): cross-entropy of `f = -J(e_y - e_j)` as logits,
/// and the robust (certified) error.
#[derive(Debug, Clone)]
pub struct RobustLoss {
    /// Mean cross-entropy of the robust bounds (differentiable, a scalar tensor).
    pub loss: Tensor,
    /// Fraction of the examples not certified.
    pub error: f64,
    /// The robust bounds `f`, `[B, classes]`.
    pub f: Tensor,
    /// Per example: certified or not.
    pub certified: Vec<bool>,
}

/// Cross-entropy on the robust bounds and the certified error: a drop-in training loss.
pub fn robust_loss(dual: &DualNetwork, y: &[u32]) -> Result<RobustLoss> {
    let f = robust_bounds(dual, y)?;
    let certified = certified_from_bounds(&f, y)?;
    let error = certified.iter().filter(|c| !**c).count() as f64 / y.len().max(1) as f64;
    let loss = cross_entropy(&f, y)?;
    Ok(RobustLoss { loss, error, f, certified })
}

/// Certified iff `f_j < 0` for every `j ≠ y`.
pub fn certified_from_bounds(f: &Tensor, y: &[u32]) -> Result<Vec<bool>> {
    let rows = f.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    Ok(rows.iter().zip(y).map(|(r, &yi)| r.iter().enumerate().all(|(j, &v)| j == yi as usize || v < 0.0)).collect())
}

/// Mean cross-entropy `log Σ_j exp(f_j) - f_y` of logits `[b, k]` against labels `y`: the mean
/// of [`cross_entropy_per_example`]. The one cross-entropy of the workspace (the robust loss,
/// training's clean and adversarial losses, the attacks' gradients).
pub fn cross_entropy(logits: &Tensor, y: &[u32]) -> Result<Tensor> {
    Ok(cross_entropy_per_example(logits, y)?.mean_all()?)
}

/// Per-example cross-entropy `log Σ_j exp(f_j) - f_y` of logits `[b, k]`, as `[b]`: computed on
/// `f - max_j f_j` (the maximum detached, so `exp` stays finite and the gradient is
/// `softmax(f) - e_y`), with differentiable primitives only. An error when `y` has not `b`
/// labels.
pub fn cross_entropy_per_example(logits: &Tensor, y: &[u32]) -> Result<Tensor> {
    let b = logits
        .dims2()
        .map_err(|_| DualError::shape(format!("cross-entropy needs logits [batch, classes], got {:?}", logits.dims())))?
        .0;
    if y.len() != b {
        return Err(DualError::shape(format!("{} labels for a batch of {b}", y.len())));
    }
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let idx = Tensor::from_vec(y.to_vec(), (b, 1), logits.device())?;
    let picked = shifted.gather(&idx, D::Minus1)?;
    Ok((lse - picked)?.reshape(b)?)
}
