//! Certified evaluation with a method of the bound family (IBP, CROWN, CROWN-IBP, α-CROWN) in
//! place of the exact dual: the same data, batches, PGD and report, the certificate coming from
//! `Network::margin_bounds` (certified when every margin bound `z_y − z_j`, `j ≠ y`, is positive
//! and the clean prediction is right).

use crate::attacks::{count_errors, pgd, pgd_l2, PgdConfig};
use crate::certify::{input_set, CertifyConfig, Norm};
use crate::report::Table;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use dual_core::bounds::{AlphaOptions, BoundOptions, Method};
use nets::Network;
use serde::Serialize;
use std::time::Instant;

/// A bound of the family and its options.
#[derive(Debug, Clone)]
pub struct FamilyBound {
    /// The method.
    pub method: Method,
    /// α-CROWN's optimiser (iterations, learning rate).
    pub alpha: AlphaOptions,
}

/// Results of a run.
#[derive(Debug, Clone, Serialize)]
pub struct FamilyReport {
    /// The bound's name (`ibp`, `crown`, `crown-ibp`, `alpha-crown`).
    pub bound: String,
    /// α-CROWN's iterations and learning rate, when used.
    pub alpha_iterations: Option<usize>,
    /// α-CROWN's learning rate.
    pub alpha_lr: Option<f64>,
    /// Examples evaluated.
    pub n: usize,
    /// Fraction misclassified at the clean input.
    pub clean_error: f64,
    /// Fraction not certified by the bound.
    pub robust_error: f64,
    /// Fraction misclassified at the PGD point, when asked.
    pub pgd_error: Option<f64>,
    /// Wall-clock seconds of the whole evaluation (bounds, clean pass, PGD when asked).
    pub seconds: f64,
    /// The settings.
    pub settings: CertifyConfig,
}

impl FamilyReport {
    /// A human-readable table.
    pub fn table(&self) -> Table {
        let mut t = crate::certify::head_table(&self.settings, self.n, self.clean_error, self.pgd_error);
        t.row(&[&format!("certified robust error ({})", self.bound), &pct(self.robust_error)]);
        t.row(&["seconds", &format!("{:.1}", self.seconds)]);
        t
    }
}

fn pct(v: f64) -> String {
    format!("{:.2} %", 100.0 * v)
}

/// Per batch: (clean errors, not certified, PGD errors).
fn evaluate_batch(
    net: &Network,
    x: &Tensor,
    y: &[u32],
    cfg: &CertifyConfig,
    fam: &FamilyBound,
) -> Result<(usize, usize, usize)> {
    let logits = net.forward(x)?;
    let clean = count_errors(&logits, y)?;
    let pred: Vec<u32> = logits.argmax(1)?.to_dtype(DType::U32)?.to_vec1()?;
    let opts = BoundOptions { alpha: fam.alpha.clone(), memory_budget: cfg.memory_budget };
    let margins = net.margin_bounds(x, input_set(x, cfg.eps, cfg.norm, cfg.bounded_input)?, y, fam.method, &opts)?;
    let rows = margins.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    let not_certified = rows
        .iter()
        .zip(y.iter().zip(&pred))
        .filter(|(r, (&yi, &p))| p != yi || r.iter().enumerate().any(|(j, &v)| j != yi as usize && v <= 0.0))
        .count();
    let pgd_errors = if cfg.pgd {
        let mut pc = PgdConfig::new(cfg.eps);
        if cfg.bounded_input {
            pc.clip = Some((0.0, 1.0));
        }
        let model = |t: &Tensor| net.forward(t).map_err(|e| candle_core::Error::Msg(e.to_string()));
        let xa = match cfg.norm {
            Norm::Linf => pgd(model, x, y, &pc)?,
            Norm::L2 => pgd_l2(model, x, y, &pc)?,
        };
        count_errors(&net.forward(&xa)?, y)?
    } else {
        0
    };
    Ok((clean, not_certified, pgd_errors))
}

/// Runs the evaluation with a bound of the family; `progress(done, total, clean errors, not
/// certified)` after each batch. Writes no JSON: the caller shows the table first and then writes
/// it (`crate::report::write_json_atomic`), so a failure to write loses nothing.
pub fn certify_family(
    cfg: &CertifyConfig,
    fam: &FamilyBound,
    mut progress: impl FnMut(usize, usize, usize, usize),
) -> Result<FamilyReport> {
    cfg.validate()?;
    fam.alpha.validate()?;
    if cfg.proj.is_some() {
        bail!("--bound {} does not use random projections (--proj is for --bound proj)", fam.method.name());
    }
    let dtype = if cfg.f64 { DType::F64 } else { DType::F32 };
    let device = crate::device::parse_device(&cfg.device)?;
    let net = nets::io::load_model(&cfg.model, cfg.arch.as_deref(), dtype, &device)
        .with_context(|| format!("loading model {}", cfg.model.display()))?;
    let data = cfg.test_set()?;
    crate::certify::check_data_shape(&net, &data, &cfg.dataset)?;
    let start = Instant::now();
    let total = data.len();
    let (mut clean, mut robust, mut pgd_err) = (0, 0, 0);
    let mut i = 0;
    while i < total {
        let end = (i + cfg.batch_size).min(total);
        let (x, y) = data.batch(i, end, &device)?;
        let x = x.to_dtype(dtype)?;
        let (c, r, p) =
            nets::no_grad(|| evaluate_batch(&net, &x, &y, cfg, fam)).with_context(|| format!("examples {i}..{end}"))?;
        clean += c;
        robust += r;
        pgd_err += p;
        progress(end, total, clean, robust);
        i = end;
    }
    let n = total.max(1) as f64;
    let alpha = fam.method == Method::AlphaCrown;
    let report = FamilyReport {
        bound: fam.method.name().into(),
        alpha_iterations: alpha.then_some(fam.alpha.iterations),
        alpha_lr: alpha.then_some(fam.alpha.lr),
        n: total,
        clean_error: clean as f64 / n,
        robust_error: robust as f64 / n,
        pgd_error: cfg.pgd.then(|| pgd_err as f64 / n),
        seconds: start.elapsed().as_secs_f64(),
        settings: cfg.clone(),
    };
    Ok(report)
}
