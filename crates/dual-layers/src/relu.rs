//! Dual of ReLU: the relaxation of Wong & Kolter (Eq. 5 / Theorem 1).

use crate::columns::{contract_features, sum_over_columns};
use candle_core::{DType, Device, Tensor};
use dual_core::bounds::{LinearRelaxation, SlopeRule};
use dual_core::{ActivationKind, DualActivation, DualSource, IntervalRows, Relaxation, Result};
use std::ops::Range;

/// ReLU. Given pre-activation bounds `l ≤ ẑ ≤ u` it picks the slopes
/// `d = 0` where `u ≤ 0`, `d = 1` where `l ≥ 0`, and `d = u / (u - l)` on the unstable set
/// `I = {l < 0 < u}` — the convex outer bound `z ≥ 0, z ≥ ẑ, z ≤ u(ẑ - l)/(u - l)` whose dual
/// keeps a single slope (Theorem 1).
#[derive(Debug, Default, Clone, Copy)]
pub struct DualReLU;

impl DualActivation for DualReLU {
    fn name(&self) -> String {
        "ReLU".into()
    }

    fn kind(&self) -> ActivationKind {
        ActivationKind::Relu
    }

    fn relax(&self, lower: &Tensor, upper: &Tensor) -> Result<Box<dyn Relaxation>> {
        Ok(Box::new(ReluRelaxation::new(lower, upper)?))
    }

    /// `[max(l, 0), max(u, 0)]`.
    fn interval(&self, lower: &Tensor, upper: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((lower.relu()?, upper.relu()?))
    }

    fn interval_rows(&self) -> Option<Result<Box<dyn IntervalRows + '_>>> {
        Some(Ok(crate::kernels::relu_interval_rows()))
    }

    /// One fused pass per output on the CPU (`kernels::relu_box`), the same numbers.
    fn interval_mid_rad(&self, mid: &Tensor, rad: &Tensor) -> Result<(Tensor, Tensor)> {
        if let Some(mr) = crate::kernels::relu_box(mid, rad)? {
            return Ok(mr);
        }
        let (lo, hi) = self.interval(&(mid - rad)?, &(mid + rad)?)?;
        Ok((((&lo + &hi)? * 0.5)?, ((hi - lo)? * 0.5)?))
    }

    fn linear_relax(&self, lower: &Tensor, upper: &Tensor, rule: SlopeRule<'_>) -> Result<Box<dyn LinearRelaxation>> {
        Ok(Box::new(crate::relu_linear::ReluLinear::new(lower, upper, rule)?))
    }
}

/// The pieces of the ReLU relaxation for bounds `[B, *shape]` (Theorem 1):
/// slopes `d`, objective weights `w = -d l` on the unstable set (zero elsewhere, `[B, K]`), and
/// the flat indices of the unstable units of every example.
pub struct ReluParts {
    /// Slopes `d`, `[B, *shape]`.
    pub d: Tensor,
    /// `-d l` on `I`, zero elsewhere, `[B, K]`.
    pub w: Tensor,
    /// Unstable units (flat indices into `K`) per example.
    pub unstable: Vec<Vec<u32>>,
}

impl ReluParts {
    /// Slopes, weights and unstable sets from pre-activation bounds.
    pub fn new(lower: &Tensor, upper: &Tensor) -> Result<Self> {
        let dtype = lower.dtype();
        let unstable = lower.lt(0.0)?.mul(&upper.gt(0.0)?)?; // u8 mask of I
        let active = lower.ge(0.0)?.to_dtype(dtype)?;
        let i_mask = unstable.to_dtype(dtype)?;
        // d = 1{l ≥ 0} + 1{I} · u / (u - l); the denominator is padded to 1 off I.
        let denom = ((upper - lower)? + (1.0 - &i_mask)?)?;
        let d = (active + (&i_mask * (upper / denom)?)?)?;
        // Weight of each unstable unit in the objective: -d l ≥ 0 on I (the `l [ν]_+` term).
        let w = (&i_mask * (&d * lower)?.neg()?)?;
        let b = lower.dim(0)?;
        let k = lower.elem_count() / b.max(1);
        let mask = unstable.flatten_all()?.to_vec1::<u8>()?;
        let idx: Vec<Vec<u32>> =
            (0..b).map(|i| (0..k).filter(|&j| mask[i * k + j] != 0).map(|j| j as u32).collect()).collect();
        Ok(ReluParts { d, w: w.reshape((b, k))?, unstable: idx })
    }
}

/// The chosen slopes `D` and the unstable units as a source of free variables (exact columns, or
/// any other source, e.g. random projections).
pub struct ReluRelaxation {
    d: Tensor,
    source: Box<dyn DualSource>,
    counts: Vec<usize>,
}

impl ReluRelaxation {
    /// The exact relaxation: one column per unstable unit.
    pub fn new(lower: &Tensor, upper: &Tensor) -> Result<Self> {
        let p = ReluParts::new(lower, upper)?;
        let counts = p.unstable.iter().map(|v| v.len()).collect();
        let source = ReluSource::new(p.unstable, p.w, lower.dims()[1..].to_vec())?;
        Ok(ReluRelaxation { d: p.d, source: Box::new(source), counts })
    }

    /// Slopes `d` with another source for the unstable units' term (`counts`: unstable units
    /// per example, for reports).
    pub fn with_source(d: Tensor, source: Box<dyn DualSource>, counts: Vec<usize>) -> Self {
        ReluRelaxation { d, source, counts }
    }

    /// The slopes `d`, `[B, *shape]`.
    pub fn slopes(&self) -> &Tensor {
        &self.d
    }
}

impl Relaxation for ReluRelaxation {
    /// `D x` on every column, with a fused backward ([`crate::kernels::scale_columns`]).
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        Ok(crate::kernels::scale_columns(x, &self.d)?)
    }
    fn source(&self) -> Option<&dyn DualSource> {
        Some(self.source.as_ref())
    }
    fn unstable_counts(&self) -> Vec<usize> {
        self.counts.clone()
    }
    /// `D` narrowed to the window.
    fn apply_window(&self, x: &Tensor, at: (usize, usize)) -> Option<Result<Tensor>> {
        let (r, xr) = (self.d.rank(), x.rank());
        if r < 3 || xr != r + 1 {
            return None;
        }
        let f = || -> Result<Tensor> {
            let (h, w) = (x.dim(xr - 2)?, x.dim(xr - 1)?);
            Ok(crate::kernels::scale_columns(x, &crop_hw(&self.d, at, (h, w))?)?)
        };
        Some(f())
    }
}

/// The unstable units of one ReLU: one column per unstable unit of each example (examples with
/// fewer unstable units pad with zero-weight columns), each a unit vector at the ReLU's output.
struct ReluSource {
    idx: Vec<Vec<u32>>,
    /// `-d l` on I, zero elsewhere: `[B, K]`.
    w: Tensor,
    /// The weights gathered per column: `[B, R]`, zero on padding columns.
    w_cols: Tensor,
    shape: Vec<usize>,
    r: usize,
}

impl ReluSource {
    fn new(idx: Vec<Vec<u32>>, w: Tensor, shape: Vec<usize>) -> Result<Self> {
        let b = idx.len();
        let r = idx.iter().map(|v| v.len()).max().unwrap_or(0);
        let mut gather_idx = vec![0u32; b * r];
        let mut valid = vec![0f32; b * r];
        for (i, v) in idx.iter().enumerate() {
            for (j, &u) in v.iter().enumerate() {
                gather_idx[i * r + j] = u;
                valid[i * r + j] = 1.0;
            }
        }
        let w_cols = if r == 0 {
            Tensor::zeros((b, 0), w.dtype(), w.device())?
        } else {
            let gi = Tensor::from_vec(gather_idx, (b, r), w.device())?;
            let valid = Tensor::from_vec(valid, (b, r), w.device())?.to_dtype(w.dtype())?;
            (w.gather(&gi, 1)? * valid)?
        };
        Ok(ReluSource { idx, w, w_cols, shape, r })
    }
}

/// `(Σ_j w_j min(g_kj, 0), Σ_j w_j max(g_kj, 0))` per row, written with
/// `min(g, 0) = (g − |g|) / 2` as a matmul and a weighted l1 norm: the unstable units' terms for
/// the weights `w = −d l` (`[B, K]`).
fn neg_pos_terms(g: &Tensor, w: &Tensor) -> Result<(Tensor, Tensor)> {
    let lin = contract_features(g, w)?;
    let abs = crate::kernels::abs_contract(g, w)?;
    Ok((((&lin - &abs)? * 0.5)?, ((lin + abs)? * 0.5)?))
}

/// `t` narrowed to rows `at.0..at.0 + h` and columns `at.1..at.1 + w` of its last two axes,
/// contiguous: a relaxation's per-unit tensors on a spatial window.
pub(crate) fn crop_hw(t: &Tensor, at: (usize, usize), (h, w): (usize, usize)) -> Result<Tensor> {
    let r = t.rank();
    Ok(t.narrow(r - 2, at.0, h)?.narrow(r - 1, at.1, w)?.contiguous()?)
}

/// The unstable units' objective term for coefficients `g` (`[B, n, *shape]`) and weights
/// `w = -d l` (`[B, K]`, zero off the unstable set): `Σ_j w_j min(g_j, 0)`, as `[B, n]`
/// (the `Σ l_ij [ν_ij]_+` term of Theorem 1 with `ν = -g`).
/// `g` may be shared by the batch (`[1, n, *shape]`); the result is then still `[B, n]`.
pub fn relu_lower_term(w: &Tensor, g: &Tensor) -> Result<Tensor> {
    Ok(crate::kernels::neg_part_contract(g, w)?)
}

/// One-hot columns: `out[b, j, idx[b][start + j]] = 1`, shaped `[B, len, K]`.
pub fn one_hot_columns(
    idx: &[Vec<u32>],
    range: Range<usize>,
    k: usize,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let b = idx.len();
    let len = range.len();
    let mut data = vec![0f32; b * len * k];
    for (i, v) in idx.iter().enumerate() {
        for (j, col) in range.clone().enumerate() {
            if let Some(&u) = v.get(col) {
                data[(i * len + j) * k + u as usize] = 1.0;
            }
        }
    }
    Ok(Tensor::from_vec(data, (b, len, k), device)?.to_dtype(dtype)?)
}

impl DualSource for ReluSource {
    fn num_columns(&self) -> usize {
        self.r
    }

    fn columns(&self, range: Range<usize>) -> Result<Tensor> {
        let k = self.shape.iter().product();
        let cols = one_hot_columns(&self.idx, range.clone(), k, self.w.dtype(), self.w.device())?;
        let mut s = vec![self.idx.len(), range.len()];
        s.extend_from_slice(&self.shape);
        Ok(cols.reshape(s)?)
    }

    /// Lower: `Σ_j -d_j l_j min(P_j, 0)`; upper: `Σ_j -d_j l_j max(P_j, 0)`.
    fn column_terms(&self, p: &Tensor, range: Range<usize>) -> Result<(Tensor, Tensor)> {
        let w = self.w_cols.narrow(1, range.start, range.len())?;
        let lower = sum_over_columns(&p.minimum(0.0)?, &w)?;
        // max(P, 0) = P - min(P, 0): one fewer copy of the (large) propagated columns.
        let upper = (sum_over_columns(p, &w)? - &lower)?;
        Ok((lower, upper))
    }

    /// `Σ_{j∈I} -d_j l_j min(g_j, 0)`.
    fn lower_term(&self, g: &Tensor) -> Result<Tensor> {
        relu_lower_term(&self.w, g)
    }

    /// Lower `Σ_{j∈I} -d_j l_j min(g_kj, 0)`, upper `Σ_{j∈I} -d_j l_j max(g_kj, 0)`, written
    /// with `min(g, 0) = (g - |g|) / 2` as a matmul and a weighted l1 norm.
    fn coefficient_terms(&self, g: &Tensor) -> Result<(Tensor, Tensor)> {
        neg_pos_terms(g, &self.w)
    }

    /// The weights `-d l` narrowed to the window.
    fn coefficient_terms_window(&self, g: &Tensor, at: (usize, usize)) -> Option<Result<(Tensor, Tensor)>> {
        let (sr, gr) = (self.shape.len(), g.rank());
        if sr != 3 || gr != 5 {
            return None;
        }
        let f = || -> Result<(Tensor, Tensor)> {
            let (c, h, w) = (g.dim(2)?, g.dim(3)?, g.dim(4)?);
            let b = self.w.dim(0)?;
            let wfull = self.w.reshape((b, self.shape[0], self.shape[1], self.shape[2]))?;
            neg_pos_terms(g, &crop_hw(&wfull, at, (h, w))?.reshape((b, c * h * w))?)
        };
        Some(f())
    }

    fn name(&self) -> String {
        "ReLU unstable units".into()
    }
}
