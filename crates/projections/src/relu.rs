//! The projected ReLU relaxation.

use crate::estimate::linear_and_median_abs;
use crate::input::{inflation_factor, need_all_columns};
use crate::random::stream_seed;
use candle_core::Tensor;
use dual_core::{ActivationKind, DualActivation, DualSource, Relaxation, Result};
use dual_layers::{ReluParts, ReluRelaxation};
use std::ops::Range;

/// When a ReLU's unstable units are projected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReluRule {
    /// When some example of the batch has more than `k` unstable units (the exact source would
    /// then push more columns than the `1 + k` of the projected one). Default; with `k` at least
    /// the layer width a layer is never projected.
    #[default]
    PerExample,
    /// When the whole batch has more than `k` unstable units in all (the PyTorch package's
    /// rule): projects more often.
    BatchTotal,
}

/// ReLU whose unstable-unit term is estimated with `k` Cauchy projections when there are more
/// than `k` unstable units (see [`ReluRule`]); otherwise the exact relaxation. Same slopes `d` as
/// the exact ReLU; with weights `w = -d·l` on the unstable set,
/// `Σ_j w_j min(a_j, 0) = ½ Σ_j w_j a_j - ½ Σ_j w_j |a_j|`: one exact column `w` (the linear part)
/// and `k` columns `w ⊙ r_i` (the l1 part, median estimate). The objective term stays exact.
#[derive(Debug, Clone)]
pub struct DualReLUProj {
    k: usize,
    seed: u64,
    stream: u64,
    scale: f64,
    rule: ReluRule,
}

impl DualReLUProj {
    /// `k` projections from stream `stream` of `seed` (use the node index as the stream so that
    /// layers draw different projections).
    pub fn new(k: usize, seed: u64, stream: u64) -> Self {
        DualReLUProj { k, seed, stream, scale: 1.0, rule: ReluRule::PerExample }
    }

    /// Uses `median / (1 - eps_rel)` as the l1 estimate.
    pub fn inflate(mut self, eps_rel: f64) -> Result<Self> {
        self.scale = inflation_factor(eps_rel)?;
        Ok(self)
    }

    /// When to project (default [`ReluRule::PerExample`]).
    pub fn with_rule(mut self, rule: ReluRule) -> Self {
        self.rule = rule;
        self
    }

    /// Would bounds with these unstable counts per example be projected?
    pub fn projects(&self, counts: &[usize]) -> bool {
        match self.rule {
            ReluRule::PerExample => counts.iter().copied().max().unwrap_or(0) > self.k,
            ReluRule::BatchTotal => counts.iter().sum::<usize>() > self.k,
        }
    }
}

impl DualActivation for DualReLUProj {
    fn name(&self) -> String {
        format!("ReLU(proj k={})", self.k)
    }

    fn kind(&self) -> ActivationKind {
        ActivationKind::ReluProjected
    }

    fn relax(&self, lower: &Tensor, upper: &Tensor) -> Result<Box<dyn Relaxation>> {
        let parts = ReluParts::new(lower, upper)?;
        let counts: Vec<usize> = parts.unstable.iter().map(|v| v.len()).collect();
        if self.k == 0 || !self.projects(&counts) {
            return Ok(Box::new(ReluRelaxation::new(lower, upper)?));
        }
        let source = ReluProjSource::new(
            parts.w,
            &parts.unstable,
            &lower.dims()[1..],
            self.k,
            stream_seed(self.seed, self.stream),
            self.scale,
        )?;
        Ok(Box::new(ReluRelaxation::with_source(parts.d, Box::new(source), counts)))
    }
}

/// The unstable units of a ReLU as `1 + k` columns at its output: `w` and `w ⊙ r_i`. The
/// columns are drawn when first asked for: a ReLU with no activation after it (the last one)
/// never propagates its columns, so it never draws them.
struct ReluProjSource {
    /// `w = -d·l` on the unstable set, zero elsewhere: `[B, K]`.
    w: Tensor,
    /// `[B, 1 + k, *shape]`, built on first use.
    cols: std::sync::OnceLock<Tensor>,
    unstable: Vec<Vec<u32>>,
    shape: Vec<usize>,
    seed: u64,
    k: usize,
    scale: f64,
}

impl ReluProjSource {
    /// `w` is zero off the unstable units, so the projections are drawn on those only.
    fn new(w: Tensor, unstable: &[Vec<u32>], shape: &[usize], k: usize, seed: u64, scale: f64) -> Result<Self> {
        w.dims2()?;
        Ok(ReluProjSource {
            w,
            cols: std::sync::OnceLock::new(),
            unstable: unstable.to_vec(),
            shape: shape.to_vec(),
            seed,
            k,
            scale,
        })
    }

    fn all_columns(&self) -> Result<&Tensor> {
        if let Some(c) = self.cols.get() {
            return Ok(c);
        }
        // [w; r_1 ⊙ w; …; r_k ⊙ w] in one op that writes and reads the support only (no
        // concatenation of parameter-dependent tensors, so the backward pass accumulates one
        // gradient): column 0 is w itself.
        let cols = crate::relu_columns::relu_proj_columns(&self.w, &self.shape, &self.unstable, self.k, self.seed)?;
        Ok(self.cols.get_or_init(|| cols))
    }
}

impl DualSource for ReluProjSource {
    /// The term is an estimate from the pushed random columns: always forward.
    fn exact_from_coefficients(&self) -> bool {
        false
    }
    fn num_columns(&self) -> usize {
        self.k + 1
    }

    fn columns(&self, range: Range<usize>) -> Result<Tensor> {
        Ok(self.all_columns()?.narrow(1, range.start, range.len())?)
    }

    /// Lower `½(P_0 - med)`, upper `½(P_0 + med)`, `med = median_i |P_{1+i}|`.
    fn column_terms(&self, p: &Tensor, range: Range<usize>) -> Result<(Tensor, Tensor)> {
        need_all_columns(&range, self.k + 1, "projected ReLU")?;
        let (lin, n) = linear_and_median_abs(p, 1, self.k)?;
        let n = if self.scale != 1.0 { (n * self.scale)? } else { n };
        Ok((((&lin - &n)? * 0.5)?, ((lin + n)? * 0.5)?))
    }

    /// Exact: `Σ_j w_j min(g_j, 0)`.
    fn lower_term(&self, g: &Tensor) -> Result<Tensor> {
        dual_layers::relu_lower_term(&self.w, g)
    }

    fn name(&self) -> String {
        format!("ReLU unstable units (k={} projections)", self.k)
    }
}
