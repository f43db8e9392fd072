//! MaxPool2d as an activation: `y[c, o] = max_{s valid} x[c, idx(o, s)]` over each window
//! ([`Windows`]; overlapping windows and padding included).
//!
//! * **Intervals (IBP)**: `[max_s l_s, max_s u_s]` (max is monotone in every input).
//! * **Linear bounds (CROWN, CROWN-IBP, α-CROWN)**, per window with input bounds `l_s ≤ x_s ≤ u_s`:
//!   - lower: `y ≥ x_i`, `i = argmax_s l_s` (y is at least any one input; this one gives the
//!     best constant `l_i = max_s l_s`, IBP's lower bound);
//!   - upper: let `j = argmax_s u_s` (ties: the larger `l`), `U' = max_{s≠j} u_s` (−∞ for a
//!     one-element window) and `g(t) = max(t, U')`. For every `x` in the box
//!     `y = max(x_j, max_{s≠j} x_s) ≤ max(x_j, U') = g(x_j)`, and `g` is convex, so on
//!     `[l_j, u_j]` it lies below its chord: `y ≤ g(l_j) + a (x_j − l_j)`,
//!     `a = (u_j − g(l_j)) / (u_j − l_j)` (`g(u_j) = u_j`; `a = 0` when `u_j = l_j`), `a ∈ [0, 1]`.
//!     This plane is pointwise below the constant `max_s u_s` (at `x_j = u_j` they meet) and
//!     below `x_j + (U' − l_j)`. When one input decides the max (`l_j ≥ U'`, so `i = j`) it
//!     is `y ≤ x_j` and with the lower line `y = x_j` exactly.
//!   - The lines are computed in f64 from the bounds (no gradient flows through the choice), and
//!     the upper offset is raised by a few units of rounding of the working dtype.
//!   - α-CROWN optimises the lower line: any convex combination `Σ_s w_s x_s` of the window's
//!     inputs is below the max ([`MaxPoolLinear::with_weights`]); the upper line stays fixed.
//! * **Exact dual / projections**: not supported (the dual's relaxation has one slope per unit of
//!   an elementwise map): a clear error.

use crate::window::Windows;
use candle_core::{DType, Tensor};
use dual_core::bounds::{LinearRelaxation, SlopeRule};
use dual_core::{DualActivation, DualError, Relaxation, Result};

/// The dual of MaxPool2d on a fixed input size.
pub struct DualMaxPool2d {
    windows: Windows,
}

impl DualMaxPool2d {
    /// Max pooling over `windows`.
    pub fn new(windows: Windows) -> Self {
        DualMaxPool2d { windows }
    }

    /// `[…, H, W] → […, H', W']`: the max over every window.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let g = self.windows.gather(x)?;
        let y = g.max(g.rank() - 1)?;
        self.windows.unflatten(&y)
    }
}

/// Units of rounding of `dtype` (2⁻⁵² for f64, 2⁻²³ for f32, 2⁻¹⁰ for f16, 2⁻⁷ for bf16).
pub(crate) fn dtype_eps(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => f64::EPSILON,
        DType::F16 => 9.77e-4,
        DType::BF16 => 7.82e-3,
        _ => f32::EPSILON as f64,
    }
}

impl DualActivation for DualMaxPool2d {
    fn name(&self) -> String {
        self.windows.describe("MaxPool2d")
    }

    fn relax(&self, _lower: &Tensor, _upper: &Tensor) -> Result<Box<dyn Relaxation>> {
        Err(DualError::Unsupported(
            "MaxPool2d is not supported by the exact dual (nor by projections); use --bound crown, crown-ibp, alpha-crown or ibp"
                .into(),
        ))
    }

    fn output_shape(&self, in_shape: &[usize]) -> Result<Vec<usize>> {
        let r = in_shape.len();
        if r < 2 || (in_shape[r - 2], in_shape[r - 1]) != self.windows.in_hw {
            return Err(DualError::shape(format!(
                "{} built for {:?} inputs got shape {in_shape:?}",
                self.name(),
                self.windows.in_hw
            )));
        }
        let mut s = in_shape[..r - 2].to_vec();
        s.extend_from_slice(&[self.windows.out_hw.0, self.windows.out_hw.1]);
        Ok(s)
    }

    fn exact_off_zero(&self) -> bool {
        false
    }

    /// `[max_s l_s, max_s u_s]` per window.
    fn interval(&self, lower: &Tensor, upper: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((self.apply(lower)?, self.apply(upper)?))
    }

    fn linear_relax(&self, lower: &Tensor, upper: &Tensor, rule: SlopeRule<'_>) -> Result<Box<dyn LinearRelaxation>> {
        let lin = MaxPoolLinear::new(&self.windows, lower, upper)?;
        Ok(Box::new(match rule {
            SlopeRule::Given(alpha) => lin.with_weights(alpha)?,
            _ => lin,
        }))
    }
}

/// The two lines of every window of a MaxPool2d for one batch (see the module documentation).
pub struct MaxPoolLinear {
    windows: Windows,
    /// The lower line's weights per window: one-hot of its input, `[B, 1, C·, O, kk]`, or α's
    /// convex weights `[B, r, C·, O, kk]`.
    lower_pick: Tensor,
    /// `a` at the upper line's input per window, 0 elsewhere, `[B, 1, C·, O, kk]`.
    upper_pick: Tensor,
    /// Upper offsets `g(l_j) − a l_j` (+ rounding margin), `[B, 1, C·, O]`.
    upper_off: Tensor,
    /// Lower offsets (none, or a rounding margin with α's weights), `[B, 1, C·, O]`.
    lower_off: Option<Tensor>,
    /// The largest `max(|l_s|, |u_s|)` of every window, `[B, 1, C·, O]`.
    reach: Tensor,
}

/// The lines of one window: `(i, j, a, offset)` from the slot bounds (valid slots only).
pub fn window_lines(l: &[f64], u: &[f64], valid: &[bool], eps: f64) -> (usize, usize, f64, f64) {
    let slots = (0..l.len()).filter(|&s| valid[s]);
    let i = slots.clone().fold(None, |b: Option<usize>, s| match b {
        Some(b) if l[b] >= l[s] => Some(b),
        _ => Some(s),
    });
    let j = slots.clone().fold(None, |b: Option<usize>, s| match b {
        Some(b) if u[b] > u[s] || (u[b] == u[s] && l[b] >= l[s]) => Some(b),
        _ => Some(s),
    });
    let (i, j) = (i.expect("a window has a valid slot"), j.expect("a window has a valid slot"));
    let other = slots.filter(|&s| s != j).map(|s| u[s]).fold(f64::NEG_INFINITY, f64::max);
    let (lj, uj) = (l[j], u[j].max(l[j]));
    let g_l = lj.max(other);
    let a = if uj > lj { ((uj - g_l) / (uj - lj)).clamp(0.0, 1.0) } else { 0.0 };
    let off = g_l - a * lj;
    let margin = 4.0 * eps * (off.abs() + a * lj.abs().max(uj.abs()) + g_l.abs().max(uj.abs()));
    (i, j, a, off + margin)
}

impl MaxPoolLinear {
    /// The lines for input bounds `lower ≤ x ≤ upper`, `[B, *lead, H, W]`.
    pub fn new(windows: &Windows, lower: &Tensor, upper: &Tensor) -> Result<Self> {
        let dtype = lower.dtype();
        let (lw, uw) = (windows.gather(lower)?, windows.gather(upper)?); // [B, *lead, O, kk]
        let dims = lw.dims().to_vec();
        let r = dims.len();
        let (o, kk) = (dims[r - 2], dims[r - 1]);
        let lv = lw.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let uv = uw.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        if lv.iter().chain(&uv).any(|v| !v.is_finite()) {
            return Err(DualError::invalid("MaxPool2d: pre-activation bounds are not finite"));
        }
        let n = lv.len() / kk;
        let eps = dtype_eps(dtype);
        let mut lp = vec![0f64; n * kk];
        let mut up = vec![0f64; n * kk];
        let mut off = vec![0f64; n];
        let mut reach = vec![0f64; n];
        for w in 0..n {
            let slot = w % o;
            let valid = &windows.valid[slot * kk..(slot + 1) * kk];
            let (i, j, a, b) = window_lines(&lv[w * kk..(w + 1) * kk], &uv[w * kk..(w + 1) * kk], valid, eps);
            reach[w] = (0..kk).map(|s| lv[w * kk + s].abs().max(uv[w * kk + s].abs())).fold(0.0, f64::max);
            lp[w * kk + i] = 1.0;
            up[w * kk + j] = a;
            off[w] = b;
        }
        let mut pick_shape = vec![dims[0], 1];
        pick_shape.extend_from_slice(&dims[1..]);
        let off_shape = &pick_shape[..pick_shape.len() - 1];
        let dev = lower.device();
        Ok(MaxPoolLinear {
            windows: windows.clone(),
            lower_pick: Tensor::from_vec(lp, pick_shape.clone(), dev)?.to_dtype(dtype)?,
            upper_pick: Tensor::from_vec(up, pick_shape.clone(), dev)?.to_dtype(dtype)?,
            upper_off: Tensor::from_vec(off, off_shape, dev)?.to_dtype(dtype)?,
            lower_off: None,
            reach: Tensor::from_vec(reach, off_shape, dev)?.to_dtype(dtype)?,
        })
    }

    /// α-CROWN's lower lines: `y ≥ Σ_s w_s x_s` with the convex weights
    /// `w = (α ⊙ valid + δ e_i) / (Σ_s α_s valid_s + δ)` (`α ∈ [0, 1]`, `[B, r, *lead, O, kk]`;
    /// `e_i` the one-hot of the input with the largest lower bound, `δ = 10⁻⁶`, so the weights are
    /// never all zero), any convex combination being below the max. The weights sum to 1 up to
    /// rounding; the offset is lowered by `4 kk ε max_s |x_s|` to cover it. Differentiable in `α`.
    pub fn with_weights(mut self, alpha: &Tensor) -> Result<Self> {
        let want = self.lower_pick.dims();
        if alpha.rank() != want.len() || alpha.dim(0)? != want[0] || alpha.dims()[2..] != want[2..] {
            return Err(DualError::shape(format!(
                "MaxPool2d weights α have shape {:?}; expected [{}, r, {:?}]",
                alpha.dims(),
                want[0],
                &want[2..]
            )));
        }
        let dtype = self.lower_pick.dtype();
        let (o, kk) = (self.windows.windows(), self.windows.slots());
        let valid: Vec<f64> = self.windows.valid.iter().map(|&v| if v { 1.0 } else { 0.0 }).collect();
        let valid = Tensor::from_vec(valid, (o, kk), alpha.device())?.to_dtype(dtype)?;
        const DELTA: f64 = 1e-6;
        let a = alpha.to_dtype(dtype)?.broadcast_mul(&valid)?;
        let num = a.broadcast_add(&(&self.lower_pick * DELTA)?)?;
        let den = (a.sum_keepdim(a.rank() - 1)? + DELTA)?;
        self.lower_pick = num.broadcast_div(&den)?;
        // |x_s| ≤ max(|l_s|, |u_s|) ≤ the window's largest |bound| (`reach`).
        let eps = dtype_eps(dtype);
        self.lower_off = Some((&self.reach * (-4.0 * kk as f64 * eps))?);
        Ok(self)
    }
}

impl LinearRelaxation for MaxPoolLinear {
    /// `Λ_in = scatter([Λ]₊ e_i + [Λ]₋ a e_j)`, offset `Σ_o [Λ_o]₋ offset_o`.
    fn backward_lower(&self, lam: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let flat = self.windows.flatten_out(lam)?; // [Bλ, m, *lead, O, 1]
        let pos = flat.maximum(0.0)?;
        let neg = (&flat - &pos)?;
        let win = (pos.broadcast_mul(&self.lower_pick)? + neg.broadcast_mul(&self.upper_pick)?)?;
        let lam_in = self.windows.scatter(&win)?;
        let (b, m) = (lam_in.dim(0)?, lam_in.dim(1)?);
        let mut off = neg.squeeze(neg.rank() - 1)?.broadcast_mul(&self.upper_off)?;
        if let Some(lo) = &self.lower_off {
            off = off.broadcast_add(&pos.squeeze(pos.rank() - 1)?.broadcast_mul(lo)?)?;
        }
        let off = off.reshape((off.dim(0)?, m, ()))?.sum(2)?;
        Ok((lam_in, Some(off.broadcast_as((b, m))?.contiguous()?)))
    }

    /// The lower line's weights over each window's slots, `[B, r, *lead, O, kk]` (one-hot, or
    /// α-CROWN's convex weights).
    fn lower_slopes(&self) -> &Tensor {
        &self.lower_pick
    }
}
