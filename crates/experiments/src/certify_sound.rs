//! Certified evaluation with sound certificates (`--sound`): the exact dual searched in the
//! run's precision as usual, then every example it certifies **checked** by the `sound` crate
//! (f64, every rounding charged, the input set rounded outward); an example counts as certified
//! only when the check agrees. With `deployed_f32` the check also covers the network's own f32
//! rounding. See `docs/SOUNDNESS.md`.

use crate::attacks::correct;
use crate::certify::{
    bound_network, certify_batches, head_table, pgd_point, BatchCounts, CertifyConfig, CertifyReport,
};
use crate::certify::{EvalSettings, Norm};
use crate::report::Table;
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use dual_core::{certified_from_bounds, robust_bounds};
use nets::Network;
use serde::Serialize;
use sound::{DataRounding, InputBox, SoundNetwork, SoundOptions};
use std::time::Instant;

/// Results of a run: the fields of [`CertifyReport`] (same JSON keys; `robust_error` counts
/// only checked certificates) and what the check did.
#[derive(Debug, Clone, Serialize)]
pub struct SoundReport {
    /// `real` (the real-valued network) or `deployed-f32` (also the network's f32 rounding).
    pub sound: String,
    /// Examples the plain bound certified and the check refused.
    pub sound_refused: usize,
    /// Seconds spent in the check (included in `seconds`).
    pub check_seconds: f64,
    /// Examples, errors, seconds and settings.
    #[serde(flatten)]
    pub report: CertifyReport,
}

impl SoundReport {
    /// A human-readable table.
    pub fn table(&self) -> Table {
        let r = &self.report;
        let mut t = head_table(&r.settings, r.n, r.clean_error, r.pgd_error);
        t.row(&[&format!("certified robust error (exact, checked sound: {})", self.sound), &pct(r.robust_error)]);
        t.row(&["certificates refused by the check", &self.sound_refused.to_string()]);
        t.row(&["seconds (of which the check)", &format!("{:.1} ({:.1})", r.seconds, self.check_seconds)]);
        t
    }
}

fn pct(v: f64) -> String {
    format!("{:.2} %", 100.0 * v)
}

/// The input data are f32 values of pixels / 255 (one rounding) or of a per-channel
/// normalisation (three); the box is widened by three f32 units either way.
const DATA: DataRounding = DataRounding::F32Ops(3);

/// One batch: the plain counts, with the certified examples checked. Returns the counts, the
/// number of certificates the check refused and the seconds the check took.
pub fn evaluate_batch_sound(
    net: &Network,
    check: &SoundNetwork,
    x: &Tensor,
    y: &[u32],
    cfg: &EvalSettings,
) -> Result<(BatchCounts, usize, f64)> {
    nets::no_grad(|| {
        let clean = correct(&net.forward(x)?, y)?;
        let dual = bound_network(net, x, cfg)?;
        let mut certified = certified_from_bounds(&robust_bounds(&dual, y)?, y)?;
        drop(dual);
        let idx: Vec<u32> = (0..y.len() as u32).filter(|&i| certified[i as usize]).collect();
        let mut refused = 0;
        let t = Instant::now();
        if !idx.is_empty() {
            // The certified examples in one call (each refines only the units its own intervals
            // leave unstable, as alone).
            let clip = cfg.bounded_input.then_some((0.0, 1.0));
            let xs = x.index_select(&Tensor::new(idx.as_slice(), x.device())?, 0)?;
            let ys: Vec<u32> = idx.iter().map(|&i| y[i as usize]).collect();
            let bx = InputBox::linf(&xs, cfg.eps, clip, DATA)?;
            for (&i, ok) in idx.iter().zip(check.certify_each(&bx, &ys)?) {
                if !ok {
                    // Refused by the check: not certified.
                    certified[i as usize] = false;
                    refused += 1;
                }
            }
        }
        let secs = t.elapsed().as_secs_f64();
        let pgd = if cfg.pgd { Some(correct(&net.forward(&pgd_point(net, x, y, cfg)?)?, y)?) } else { None };
        Ok((BatchCounts::from_verdicts(&clean, &certified, pgd.as_deref())?, refused, secs))
    })
}

/// Runs the evaluation with checked certificates; `progress(done, total, counts so far)` after
/// each batch. Writes no JSON (the caller shows the table first).
pub fn certify_sound(
    cfg: &CertifyConfig,
    opts: SoundOptions,
    progress: impl FnMut(usize, usize, &BatchCounts),
) -> Result<SoundReport> {
    cfg.validate()?;
    if cfg.proj.is_some() {
        bail!("--sound checks certificates; the projected bound is an estimate (drop --proj)");
    }
    if cfg.norm != Norm::Linf {
        bail!("--sound covers l_inf balls (with or without --bounded-input); --norm l2 is not checked yet");
    }
    let device = crate::device::parse_device(&cfg.device)?;
    if !device.is_cpu() {
        bail!("--sound runs its f64 check on the CPU; use --device cpu");
    }
    let net = nets::io::load_model(&cfg.model, cfg.arch.as_deref(), cfg.dtype(), &device)
        .with_context(|| format!("loading model {}", cfg.model.display()))?;
    let check = SoundNetwork::new(&net, opts).context("--sound")?;
    let settings = cfg.eval_settings();
    let (mut refused, mut check_seconds) = (0, 0.0);
    let report = certify_batches(
        cfg,
        &net,
        |x, y| {
            let (c, r, secs) = evaluate_batch_sound(&net, &check, x, y, &settings)?;
            refused += r;
            check_seconds += secs;
            Ok(c)
        },
        progress,
    )?;
    Ok(SoundReport {
        sound: if opts.deployed_f32 { "deployed-f32" } else { "real" }.into(),
        sound_refused: refused,
        check_seconds,
        report,
    })
}
