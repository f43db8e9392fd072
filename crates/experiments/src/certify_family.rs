//! Certified evaluation with a method of the bound family (IBP, CROWN, CROWN-IBP, α-CROWN) in
//! place of the exact dual: the same data, batches, PGD and report, the certificate coming from
//! `Network::margin_bounds` (certified when every margin bound `z_y − z_j`, `j ≠ y`, is positive
//! and the clean prediction is right).

use crate::attacks::correct;
use crate::certify::{
    certify_batches, head_table, input_set, pgd_point, BatchCounts, CertifyConfig, CertifyReport, EvalSettings,
};
use crate::report::Table;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use dual_core::bounds::{AlphaOptions, BoundOptions, Method};
use nets::Network;
use serde::Serialize;

/// A bound of the family and its options.
#[derive(Debug, Clone)]
pub struct FamilyBound {
    /// The method.
    pub method: Method,
    /// α-CROWN's optimiser (iterations, learning rate).
    pub alpha: AlphaOptions,
}

/// Results of a run: the fields of [`CertifyReport`] (the same JSON keys) and the method.
#[derive(Debug, Clone, Serialize)]
pub struct FamilyReport {
    /// The bound's name (`ibp`, `crown`, `crown-ibp`, `alpha-crown`).
    pub bound: String,
    /// α-CROWN's iterations, when used.
    pub alpha_iterations: Option<usize>,
    /// α-CROWN's learning rate, when used.
    pub alpha_lr: Option<f64>,
    /// Examples, errors, seconds and settings, as for the exact bound.
    #[serde(flatten)]
    pub report: CertifyReport,
}

impl FamilyReport {
    /// A human-readable table.
    pub fn table(&self) -> Table {
        let r = &self.report;
        let mut t = head_table(&r.settings, r.n, r.clean_error, r.pgd_error);
        t.row(&[&format!("certified robust error ({})", self.bound), &pct(r.robust_error)]);
        t.row(&["seconds", &format!("{:.1}", r.seconds)]);
        t
    }
}

fn pct(v: f64) -> String {
    format!("{:.2} %", 100.0 * v)
}

/// One batch: clean errors, examples not certified by the family bound, PGD errors.
fn evaluate_batch(
    net: &Network,
    x: &Tensor,
    y: &[u32],
    settings: &EvalSettings,
    fam: &FamilyBound,
) -> Result<BatchCounts> {
    let logits = net.forward(x)?;
    let clean = correct(&logits, y)?;
    let opts = BoundOptions { alpha: fam.alpha.clone(), memory_budget: settings.memory_budget };
    let set = input_set(x, settings.eps, settings.norm, settings.bounded_input)?;
    let margins = net.margin_bounds(x, set, y, fam.method, &opts)?;
    let rows = margins.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    // Certified: classified correctly and every other class's margin bound above 0.
    let certified: Vec<bool> = rows
        .iter()
        .zip(y.iter().zip(&clean))
        .map(|(r, (&yi, &ok))| ok && r.iter().enumerate().all(|(j, &v)| j == yi as usize || v > 0.0))
        .collect();
    let pgd = if settings.pgd { Some(correct(&net.forward(&pgd_point(net, x, y, settings)?)?, y)?) } else { None };
    BatchCounts::from_verdicts(&clean, &certified, pgd.as_deref())
}

/// Runs the evaluation with a bound of the family; `progress(done, total, counts so far)` after
/// each batch. Writes no JSON: the caller shows the table first and then writes
/// it (`crate::report::write_json_atomic`), so a failure to write loses nothing.
pub fn certify_family(
    cfg: &CertifyConfig,
    fam: &FamilyBound,
    progress: impl FnMut(usize, usize, &BatchCounts),
) -> Result<FamilyReport> {
    cfg.validate()?;
    fam.alpha.validate()?;
    if cfg.proj.is_some() {
        bail!("--bound {} does not use random projections (--proj is for --bound proj)", fam.method.name());
    }
    let device = crate::device::parse_device(&cfg.device)?;
    let net = nets::io::load_model(&cfg.model, cfg.arch.as_deref(), cfg.dtype(), &device)
        .with_context(|| format!("loading model {}", cfg.model.display()))?;
    let settings = cfg.eval_settings();
    let report =
        certify_batches(cfg, &net, |x, y| nets::no_grad(|| evaluate_batch(&net, x, y, &settings, fam)), progress)?;
    let alpha = fam.method == Method::AlphaCrown;
    Ok(FamilyReport {
        bound: fam.method.name().into(),
        alpha_iterations: alpha.then_some(fam.alpha.iterations),
        alpha_lr: alpha.then_some(fam.alpha.lr),
        report,
    })
}
