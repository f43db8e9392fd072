//! Certified evaluation of a cascade (Wong et al. 2018, §4) on a test set, the way `certify`
//! evaluates one model: which stage answers each example, a row of counts per stage, and the
//! cascade's clean, PGD and certified robust error.
//!
//! Definitions (those of the paper's code, `robust_loss_cascade`):
//! - Stage `k` *certifies* an example when the bound proves the stage's own prediction
//!   `p = argmax z(x)` over the ball: `f_j ≥ max_{x'} z_j(x') − z_p(x')` is negative for every
//!   `j ≠ p` (`f` from [`robust_bounds`] with the prediction as the class).
//! - The example goes to stage 0, then to the next stage as long as the current one does not
//!   certify it. It is *answered* by the first stage that certifies it; the last stage answers
//!   whatever no stage certified (uncertified).
//! - **Clean error**: the answering stage's prediction is not the label.
//! - **Certified robust error**: not (the answering stage certified its prediction and the
//!   prediction is the label).
//! - **PGD error**: each example is attacked (PGD, as `certify --pgd`) against the stage that
//!   answers it at the clean input, and counts as an error when that stage misclassifies the
//!   PGD point. A stage that certified the right label cannot be fooled inside the ball, so the
//!   PGD errors are a subset of the certified robust errors.
//! - Per-stage rows give the counts at each stage and the errors of the cascade *cut after
//!   stage k* (stages `0..=k`, stage `k` answering what it does not certify); the last row's are
//!   the whole cascade's.

use crate::certify::{
    bound_network, certify_network, pgd_point, BatchCounts, CertifyConfig, CertifyReport, EvalSettings,
};
use crate::report::{write_json_atomic, Table};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use dual_core::{certified_from_bounds, robust_bounds};
use nets::Network;
use serde::Serialize;
use std::time::Instant;

/// What one stage said about one example that reached it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageVerdict {
    /// The stage's prediction at the clean input.
    pub prediction: u32,
    /// Whether the bound certifies that prediction over the ball.
    pub certified: bool,
    /// The bounds `f_j` (upper bound of `z_j − z_prediction` over the ball; 0 at the prediction).
    pub f: Vec<f64>,
}

/// One example's path through a cascade: the verdict of every stage it reached, the last of
/// which answers it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExampleVerdict {
    /// The example's label.
    pub label: u32,
    stages: Vec<StageVerdict>,
    /// Whether the answering stage misclassifies its PGD point (when PGD was asked for).
    pub pgd_error: Option<bool>,
}

impl ExampleVerdict {
    /// The verdicts of the stages the example reached, stage 0 first (never empty).
    pub fn stages(&self) -> &[StageVerdict] {
        &self.stages
    }

    /// The stage that answers the example.
    pub fn stage(&self) -> usize {
        self.stages.len() - 1
    }

    /// The answering stage's verdict.
    pub fn answer(&self) -> &StageVerdict {
        &self.stages[self.stage()]
    }

    /// The answer is not the label.
    pub fn clean_error(&self) -> bool {
        self.answer().prediction != self.label
    }

    /// The answer is not certified, or is certified but not the label.
    pub fn robust_error(&self) -> bool {
        !(self.answer().certified && self.answer().prediction == self.label)
    }
}

/// Runs a batch through the cascade: stage by stage, each stage sees the examples the earlier
/// ones did not certify. Runs under [`nets::no_grad`] (PGD still differentiates the input).
pub fn cascade_batch(stages: &[Network], x: &Tensor, y: &[u32], s: &EvalSettings) -> Result<Vec<ExampleVerdict>> {
    nets::no_grad(|| cascade_batch_inner(stages, x, y, s))
}

fn cascade_batch_inner(stages: &[Network], x: &Tensor, y: &[u32], s: &EvalSettings) -> Result<Vec<ExampleVerdict>> {
    if stages.is_empty() {
        bail!("a cascade needs at least one stage");
    }
    let b = x.dim(0)?;
    if y.len() != b {
        bail!("{} labels for a batch of {b} examples", y.len());
    }
    let mut out: Vec<ExampleVerdict> =
        y.iter().map(|&label| ExampleVerdict { label, stages: Vec::new(), pgd_error: None }).collect();
    let mut open: Vec<usize> = (0..b).collect();
    for (k, net) in stages.iter().enumerate() {
        if open.is_empty() {
            break;
        }
        let xs = select(x, &open)?;
        let logits = net.forward(&xs)?;
        let classes = logits.dim(D::Minus1)?;
        if let Some(&i) = open.iter().find(|&&i| y[i] as usize >= classes) {
            bail!("label {} of example {i} is not below the number of classes {classes} of stage {k}", y[i]);
        }
        let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let dual = bound_network(net, &xs, s).with_context(|| format!("bounding stage {k}"))?;
        let f = robust_bounds(&dual, &pred)?;
        drop(dual);
        let cert = certified_from_bounds(&f, &pred)?;
        let f = f.to_dtype(DType::F64)?.to_vec2::<f64>()?;
        let last = k + 1 == stages.len();
        let mut still = Vec::new();
        for (j, (&i, f)) in open.iter().zip(f).enumerate() {
            out[i].stages.push(StageVerdict { prediction: pred[j], certified: cert[j], f });
            if !cert[j] && !last {
                still.push(i);
            }
        }
        open = still;
    }
    if s.pgd {
        let answering: Vec<usize> = out.iter().map(ExampleVerdict::stage).collect();
        by_answering_stage(stages, x, y, &answering, |_, net, xs, ys, idx| {
            let pa = net.forward(&pgd_point(net, xs, ys, s)?)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
            for ((&i, p), yi) in idx.iter().zip(pa).zip(ys) {
                out[i].pgd_error = Some(p != *yi);
            }
            Ok(())
        })?;
    }
    Ok(out)
}

/// Routes a batch through the cascade with the settings' bound (PGD ignored) and calls
/// `f(k, stage_k, x_k, y_k, idx_k)` once per stage `k` that answers some examples, with those
/// examples (`idx_k`: their rows in the batch); returns each example's answering stage. This is
/// how an attack on a cascade is run: each example against the stage that answers it.
pub fn for_each_answering_stage(
    stages: &[Network],
    x: &Tensor,
    y: &[u32],
    s: &EvalSettings,
    f: impl FnMut(usize, &Network, &Tensor, &[u32], &[usize]) -> Result<()>,
) -> Result<Vec<usize>> {
    let v = cascade_batch(stages, x, y, &EvalSettings { pgd: false, ..*s })?;
    let answering: Vec<usize> = v.iter().map(ExampleVerdict::stage).collect();
    by_answering_stage(stages, x, y, &answering, f)?;
    Ok(answering)
}

/// Calls `f` per stage with the examples `answering` assigns to it.
fn by_answering_stage(
    stages: &[Network],
    x: &Tensor,
    y: &[u32],
    answering: &[usize],
    mut f: impl FnMut(usize, &Network, &Tensor, &[u32], &[usize]) -> Result<()>,
) -> Result<()> {
    for (k, net) in stages.iter().enumerate() {
        let idx: Vec<usize> = (0..answering.len()).filter(|&i| answering[i] == k).collect();
        if !idx.is_empty() {
            let ys: Vec<u32> = idx.iter().map(|&i| y[i]).collect();
            f(k, net, &select(x, &idx)?, &ys, &idx)?;
        }
    }
    Ok(())
}

/// Rows `idx` of `x` (`x` itself when `idx` is every row in order).
fn select(x: &Tensor, idx: &[usize]) -> Result<Tensor> {
    if idx.len() == x.dim(0)? && idx.iter().enumerate().all(|(j, &i)| i == j) {
        return Ok(x.clone());
    }
    let sel = Tensor::from_vec(idx.iter().map(|&i| i as u32).collect::<Vec<_>>(), idx.len(), x.device())?;
    Ok(x.index_select(&sel, 0)?)
}

/// Counts of one stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StageCounts {
    /// Examples that reached the stage (not certified by an earlier one).
    pub reached: usize,
    /// Of those, certified by this stage (for its own prediction).
    pub certified: usize,
    /// Of the certified, those whose prediction is the label.
    pub certified_correct: usize,
    /// Of those reaching it and not certified, those the stage misclassifies.
    pub uncertified_wrong: usize,
    /// Examples the stage answers: the certified ones, and at the last stage all that reach it.
    pub answered: usize,
    /// Of the answered, those misclassified at their PGD point (when PGD was asked for).
    pub pgd_errors: usize,
}

/// Running counts of a cascade over batches.
#[derive(Debug, Clone, Default)]
pub struct CascadeCounts {
    /// Per stage.
    pub stages: Vec<StageCounts>,
    /// The whole cascade's counts, as one model's.
    pub total: BatchCounts,
}

impl CascadeCounts {
    /// Empty counts for a cascade of `stages` stages.
    pub fn new(stages: usize) -> Self {
        CascadeCounts { stages: vec![StageCounts::default(); stages], total: BatchCounts::default() }
    }

    /// Adds a batch's verdicts.
    pub fn add(&mut self, verdicts: &[ExampleVerdict]) {
        for v in verdicts {
            for (k, sv) in v.stages().iter().enumerate() {
                let c = &mut self.stages[k];
                c.reached += 1;
                if sv.certified {
                    c.certified += 1;
                    c.certified_correct += usize::from(sv.prediction == v.label);
                } else {
                    c.uncertified_wrong += usize::from(sv.prediction != v.label);
                }
            }
            let a = &mut self.stages[v.stage()];
            a.answered += 1;
            a.pgd_errors += usize::from(v.pgd_error == Some(true));
            self.total.n += 1;
            self.total.clean_errors += usize::from(v.clean_error());
            self.total.robust_errors += usize::from(v.robust_error());
            self.total.pgd_errors += usize::from(v.pgd_error == Some(true));
        }
    }

    /// The per-stage rows, with the errors of the cascade cut after each stage.
    pub fn rows(&self) -> Vec<StageRow> {
        let n = self.total.n.max(1) as f64;
        let mut certified_wrong = 0;
        self.stages
            .iter()
            .enumerate()
            .map(|(k, c)| {
                certified_wrong += c.certified - c.certified_correct;
                StageRow {
                    stage: k,
                    counts: c.clone(),
                    clean_error: (certified_wrong + c.uncertified_wrong) as f64 / n,
                    robust_error: (certified_wrong + c.reached - c.certified) as f64 / n,
                }
            })
            .collect()
    }
}

/// One row of the per-stage table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageRow {
    /// Stage index (0 first).
    pub stage: usize,
    /// The stage's counts.
    #[serde(flatten)]
    pub counts: StageCounts,
    /// Clean error of the cascade cut after this stage (over all examples).
    pub clean_error: f64,
    /// Certified robust error of the cascade cut after this stage (over all examples).
    pub robust_error: f64,
}

/// Results of a cascade's certification run.
#[derive(Debug, Clone, Serialize)]
pub struct CascadeReport {
    /// Examples evaluated.
    pub n: usize,
    /// Fraction whose answering stage's prediction is wrong.
    pub clean_error: f64,
    /// Fraction not certified with the right label by the answering stage.
    pub robust_error: f64,
    /// Fraction misclassified by the answering stage at its PGD point, when asked.
    pub pgd_error: Option<f64>,
    /// Per stage.
    pub stages: Vec<StageRow>,
    /// Wall-clock seconds of the whole evaluation.
    pub seconds: f64,
    /// The settings.
    pub settings: CertifyConfig,
    /// Every example's verdicts (not written to the JSON).
    #[serde(skip)]
    pub verdicts: Vec<ExampleVerdict>,
}

impl CascadeReport {
    /// The summary table (as one model's, the model being the cascade).
    pub fn table(&self) -> Table {
        let single = CertifyReport {
            n: self.n,
            clean_error: self.clean_error,
            robust_error: self.robust_error,
            pgd_error: self.pgd_error,
            seconds: self.seconds,
            settings: self.settings.clone(),
        };
        let mut t = single.table();
        t.row(&["cascade", &format!("{} stages (see the per-stage table)", self.stages.len())]);
        t
    }

    /// One row per stage: examples reaching it, certified there, answered there, and the clean /
    /// certified robust error of the cascade cut after it.
    pub fn stage_table(&self) -> Table {
        let pgd = self.pgd_error.is_some();
        let mut h = vec![
            "stage",
            "reached",
            "certified here",
            "certified & correct",
            "answered here",
            "clean err (stages 0..=k)",
            "robust err (stages 0..=k)",
        ];
        if pgd {
            h.push("PGD errors among answered");
        }
        let mut t = Table::new(&h);
        for r in &self.stages {
            let c = &r.counts;
            let mut cells = vec![
                r.stage.to_string(),
                c.reached.to_string(),
                c.certified.to_string(),
                c.certified_correct.to_string(),
                c.answered.to_string(),
                pct(r.clean_error),
                pct(r.robust_error),
            ];
            if pgd {
                cells.push(c.pgd_errors.to_string());
            }
            t.row(&cells.iter().map(String::as_str).collect::<Vec<_>>());
        }
        t
    }
}

fn pct(v: f64) -> String {
    format!("{:.2} %", 100.0 * v)
}

/// Certifies a cascade (`stages` already loaded) on the settings' test set; writes no JSON.
/// `progress(done, total, counts so far)` is called after each batch.
pub fn certify_cascade(
    cfg: &CertifyConfig,
    stages: &[Network],
    mut progress: impl FnMut(usize, usize, &BatchCounts),
) -> Result<CascadeReport> {
    if stages.is_empty() {
        bail!("a cascade needs at least one stage");
    }
    let device = stages[0].device();
    let data = cfg.test_set()?;
    for net in stages {
        crate::certify::check_data_shape(net, &data, &cfg.dataset)?;
    }
    let settings = cfg.eval_settings();
    let start = Instant::now();
    let total = data.len();
    let mut counts = CascadeCounts::new(stages.len());
    let mut verdicts = Vec::with_capacity(total);
    let mut i = 0;
    while i < total {
        let end = (i + cfg.batch_size.max(1)).min(total);
        let (x, y) = data.batch(i, end, &device)?;
        let v = cascade_batch(stages, &x.to_dtype(cfg.dtype())?, &y, &settings)
            .with_context(|| format!("examples {i}..{end}"))?;
        counts.add(&v);
        verdicts.extend(v);
        progress(end, total, &counts.total);
        i = end;
    }
    let t = &counts.total;
    let n = t.n.max(1) as f64;
    Ok(CascadeReport {
        n: t.n,
        clean_error: t.clean_errors as f64 / n,
        robust_error: t.robust_errors as f64 / n,
        pgd_error: cfg.pgd.then(|| t.pgd_errors as f64 / n),
        stages: counts.rows(),
        seconds: start.elapsed().as_secs_f64(),
        settings: cfg.clone(),
        verdicts,
    })
}

/// One stage of a cascade certified alone.
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    /// The stage's results, as one model's.
    #[serde(flatten)]
    pub report: CertifyReport,
    /// Which stage (0 first).
    pub stage: usize,
    /// How many stages the file holds.
    pub stages_in_file: usize,
}

/// What `certify` made of a model file.
#[derive(Debug, Clone)]
pub enum Certified {
    /// A file with one model.
    Model(CertifyReport),
    /// One stage of a file, certified alone (`--stage K`).
    Stage(StageReport),
    /// A file with several models, evaluated as a cascade.
    Cascade(CascadeReport),
}

impl Certified {
    /// The tables to print: the summary, then the per-stage table of a cascade.
    pub fn tables(&self) -> Vec<Table> {
        match self {
            Certified::Model(r) => vec![r.table()],
            Certified::Stage(s) => {
                let mut t = s.report.table();
                t.row(&["stage", &format!("{} of a cascade of {}, certified alone", s.stage, s.stages_in_file)]);
                vec![t]
            }
            Certified::Cascade(c) => vec![c.table(), c.stage_table()],
        }
    }
}

/// Certifies a model file: one model as [`crate::certify::certify`] does, a cascade (a file with
/// several stages) as the paper evaluates it, or with `stage = Some(k)` stage `k` alone. Writes
/// the JSON when the settings ask for it.
pub fn certify_file(
    cfg: &CertifyConfig,
    stage: Option<usize>,
    progress: impl FnMut(usize, usize, &BatchCounts),
) -> Result<Certified> {
    let out = certify_file_report(cfg, stage, progress)?;
    if let Some(p) = &cfg.json {
        out.write_json(p)?;
    }
    Ok(out)
}

/// [`certify_file`] without writing the JSON: the caller writes it with [`Certified::write_json`]
/// after showing the results, so a failure to write loses nothing.
pub fn certify_file_report(
    cfg: &CertifyConfig,
    stage: Option<usize>,
    progress: impl FnMut(usize, usize, &BatchCounts),
) -> Result<Certified> {
    cfg.validate()?;
    let device: Device = crate::device::parse_device(&cfg.device)?;
    let mut nets = nets::io::load_models(&cfg.model, cfg.arch.as_deref(), cfg.dtype(), &device)
        .with_context(|| format!("loading model {}", cfg.model.display()))?;
    let count = nets.len();
    if count == 0 {
        bail!("model file {} holds no model", cfg.model.display());
    }
    let out = match stage {
        Some(k) if k >= count => bail!(
            "--stage {k}: {} holds {count} stage{} (0..={})",
            cfg.model.display(),
            if count == 1 { "" } else { "s" },
            count - 1
        ),
        Some(k) => {
            let net = nets.swap_remove(k);
            // Records name the stage, so the merge reports it as this run does.
            let mut cfg = cfg.clone();
            if let Some(r) = cfg.records.as_mut() {
                r.method = crate::certify_records::Method::Stage { stage: k, stages_in_file: count };
            }
            Certified::Stage(StageReport {
                report: certify_network(&cfg, &net, progress)?,
                stage: k,
                stages_in_file: count,
            })
        }
        None if count == 1 => Certified::Model(certify_network(cfg, &nets[0], progress)?),
        None if cfg.records.is_some() => bail!(
            "--records: {} is a cascade of {count} stages; sharded runs certify one model or one stage \
             (--stage K), not the cascade's per-stage routing",
            cfg.model.display()
        ),
        None => Certified::Cascade(certify_cascade(cfg, &nets, progress)?),
    };
    Ok(out)
}

impl Certified {
    /// Writes the report as JSON (atomically).
    pub fn write_json(&self, path: &std::path::Path) -> Result<()> {
        match self {
            Certified::Model(r) => write_json_atomic(path, r),
            Certified::Stage(s) => write_json_atomic(path, s),
            Certified::Cascade(c) => write_json_atomic(path, c),
        }
    }
}
