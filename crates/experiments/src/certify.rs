//! Certified evaluation of a model on a data set: clean error, certified robust error (exact
//! dual bound) and, on request, PGD error.

use crate::attacks::{correct, pgd, pgd_l2, PgdConfig};
use crate::datasets::{Dataset, Split};
use crate::error::ConfigError;
use crate::report::{write_json_atomic, Table};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use dual_core::{certified_from_bounds, robust_bounds, DualNetwork, DualOptions, DualSource};
use dual_layers::ThreatModel;
use nets::Network;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The norm of the threat ball.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    /// l_inf ball.
    Linf,
    /// l2 ball.
    L2,
}

impl std::str::FromStr for Norm {
    type Err = ConfigError;
    fn from_str(s: &str) -> std::result::Result<Self, ConfigError> {
        match s {
            "linf" | "l_inf" | "inf" | "linf-median" | "l1_median" => Ok(Norm::Linf),
            "l2" | "l2-normal" | "l2_normal" => Ok(Norm::L2),
            _ => Err(ConfigError::UnknownNorm(s.into())),
        }
    }
}

impl From<Norm> for dual_layers::BallNorm {
    fn from(n: Norm) -> Self {
        match n {
            Norm::Linf => dual_layers::BallNorm::Linf,
            Norm::L2 => dual_layers::BallNorm::L2,
        }
    }
}

/// The threat model of the settings: the ball of `norm` and radius `eps`, ∩ `[0, 1]` when
/// `bounded` (l_inf only; the settings refuse l2 with it before any work).
pub fn threat_model(eps: impl Into<dual_layers::Epsilon>, norm: Norm, bounded: bool) -> ThreatModel {
    ThreatModel::new(norm.into(), eps, bounded && norm == Norm::Linf)
}

/// Checked settings of a certification run.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct CertifyConfig {
    /// Model file (.pth or .safetensors).
    pub model: PathBuf,
    /// Architecture (zoo name or JSON file) when the file holds none.
    pub arch: Option<String>,
    /// Data set name (`mnist`, `fashion-mnist`).
    pub dataset: String,
    /// Folder with the data set's files.
    pub data_dir: PathBuf,
    /// Radius of the ball.
    pub eps: f64,
    /// Norm of the ball.
    pub norm: Norm,
    /// Intersect the ball with [0, 1].
    pub bounded_input: bool,
    /// Use only the first `limit` test examples.
    pub limit: Option<usize>,
    /// Examples per batch.
    pub batch_size: usize,
    /// Also run the PGD attack.
    pub pgd: bool,
    /// Where to write the JSON results.
    pub json: Option<PathBuf>,
    /// Memory budget for the bound, bytes.
    pub memory_budget: Option<usize>,
    /// Compute in f64 instead of f32.
    pub f64: bool,
    /// `cpu` or `cuda[:N]`.
    #[serde(default = "cpu")]
    pub device: String,
    /// Random projections instead of the exact bound (an estimate, not a certificate).
    #[serde(default)]
    pub proj: Option<Projection>,
    /// `--shard I/N --records DIR`: this shard's blocks only, one record per finished block,
    /// resuming from the records (`crate::certify_records`). Not part of the results' settings.
    #[serde(skip)]
    pub records: Option<crate::certify_records::CertifyRecords>,
}

/// Settings of the projected (scalable) bound of Wong et al. 2018.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, PartialEq)]
pub struct Projection {
    /// Projections per source.
    pub k: usize,
    /// Seed of the projections.
    pub seed: u64,
    /// Inflate the estimates so the bound holds with probability `1 - delta`.
    pub inflate_delta: Option<f64>,
}

/// Whether a norm name asks for the projected estimate (`linf-median`, `l2-normal`).
pub fn is_projected_norm(s: &str) -> bool {
    matches!(s, "linf-median" | "l1_median" | "l2-normal" | "l2_normal")
}

fn cpu() -> String {
    "cpu".into()
}

impl CertifyConfig {
    /// Checks values that clap cannot (ranges, existing files).
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        if !self.eps.is_finite() || self.eps < 0.0 {
            return Err(ConfigError::invalid("--eps", format!("must be a non-negative number, got {}", self.eps)));
        }
        if self.batch_size == 0 {
            return Err(ConfigError::invalid("--batch-size", "must be at least 1"));
        }
        if self.limit == Some(0) {
            return Err(ConfigError::invalid("--limit", "must be at least 1"));
        }
        nets::io::check_model_file(&self.model).map_err(ConfigError::Model)?;
        if let Some(p) = &self.json {
            nets::io::check_writable_file(p).map_err(|cause| ConfigError::Output { flag: "--json", cause })?;
        }
        if self.bounded_input && self.norm == Norm::L2 {
            return Err(ConfigError::invalid("--bounded-input", "is only supported with --norm linf"));
        }
        if let Some(p) = &self.proj {
            if p.k == 0 {
                return Err(ConfigError::invalid("--proj", "must be at least 1"));
            }
            if let Some(d) = p.inflate_delta {
                if !(d > 0.0 && d < 1.0) {
                    return Err(ConfigError::invalid(
                        "--inflate-delta",
                        format!("must be a probability strictly between 0 and 1, got {d}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The rows every certification table starts with: model, data, threat model, clean and PGD
/// errors (`n` examples).
pub(crate) fn head_table(s: &CertifyConfig, n: usize, clean_error: f64, pgd_error: Option<f64>) -> Table {
    let mut t = Table::new(&["figure", "value"]);
    t.row(&["model", &s.model.display().to_string()]);
    t.row(&["data", &format!("{} ({n} test examples)", s.dataset)]);
    let ball = match (s.norm, s.bounded_input) {
        (Norm::Linf, false) => format!("l_inf ball, eps {}", s.eps),
        (Norm::Linf, true) => format!("l_inf ball ∩ [0,1], eps {}", s.eps),
        (Norm::L2, _) => format!("l2 ball, eps {}", s.eps),
    };
    t.row(&["threat model", &ball]);
    t.row(&["clean error", &pct(clean_error)]);
    if let Some(p) = pgd_error {
        t.row(&["PGD error (100 steps of 0.01)", &pct(p)]);
    }
    t
}

/// Results of a certification run.
#[derive(Debug, Clone, Serialize)]
pub struct CertifyReport {
    /// Examples evaluated.
    pub n: usize,
    /// Fraction misclassified at the clean input.
    pub clean_error: f64,
    /// Fraction not certified (exact dual bound).
    pub robust_error: f64,
    /// Fraction misclassified at the PGD point, when asked.
    pub pgd_error: Option<f64>,
    /// Wall-clock seconds of the whole evaluation.
    pub seconds: f64,
    /// The settings.
    pub settings: CertifyConfig,
}

impl CertifyReport {
    /// A human-readable table.
    pub fn table(&self) -> Table {
        let s = &self.settings;
        let mut t = head_table(s, self.n, self.clean_error, self.pgd_error);
        match &s.proj {
            None => t.row(&["certified robust error (exact)", &pct(self.robust_error)]),
            Some(p) => match p.inflate_delta {
                None => t.row(&[
                    &format!("robust error, ESTIMATE with k = {} projections (not a certificate)", p.k),
                    &pct(self.robust_error),
                ]),
                Some(d) => t.row(&[
                    &format!("robust error, k = {} projections, holds with probability ≥ {}", p.k, 1.0 - d),
                    &pct(self.robust_error),
                ]),
            },
        }
        t.row(&["seconds", &format!("{:.1}", self.seconds)]);
        t
    }
}

fn pct(v: f64) -> String {
    format!("{:.2} %", 100.0 * v)
}

/// Checks, before the first forward pass, that the examples of `data` have the shape `net`
/// takes; the error names both shapes (not the matmul that would fail).
pub fn check_data_shape(net: &Network, data: &Dataset, dataset: &str) -> Result<()> {
    let want = net.input_shape();
    let have = data.example_shape();
    if want != have.as_slice() {
        bail!(
            "the model expects inputs of shape {want:?}, but the examples of the data set `{dataset}` have shape \
             {have:?} (a model for another data set?)"
        );
    }
    Ok(())
}

/// Loads the test split of a data set by name.
pub fn load_test_set(name: &str, dir: &Path) -> Result<Dataset> {
    Ok(crate::datasets::load(name, dir, Split::Test)?)
}

/// The default folder of a data set: `data/NAME`, else Debian's `/usr/share/datasets/NAME`.
pub fn default_data_dir(name: &str) -> PathBuf {
    let local = PathBuf::from("data").join(name);
    let debian = PathBuf::from("/usr/share/datasets").join(name);
    if !local.is_dir() && debian.is_dir() {
        debian
    } else {
        local
    }
}

/// The exact input set for a batch ([`threat_model`]'s set).
pub fn input_set(x: &Tensor, eps: f64, norm: Norm, bounded: bool) -> Result<Box<dyn DualSource>> {
    Ok(threat_model(eps, norm, bounded).exact_set(x)?)
}

/// The projections crate's settings for a ball.
pub fn projection_config(eps: f64, norm: Norm, bounded: bool, p: &Projection) -> projections::ProjectionConfig {
    let mut c = match norm {
        Norm::Linf => projections::ProjectionConfig::linf(eps, p.k, p.seed),
        Norm::L2 => projections::ProjectionConfig::l2(eps, p.k, p.seed),
    };
    if bounded && norm == Norm::Linf {
        c = c.bounded(0.0, 1.0);
    }
    if let Some(d) = p.inflate_delta {
        c = c.inflate(d);
    }
    c
}

/// One example's verdicts (a `--records` block keeps one per example).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ExampleVerdict {
    /// Classified correctly at the clean input.
    pub clean: bool,
    /// Certified robust (the bound proves every other class below the label's).
    pub certified: bool,
    /// Classified correctly at the PGD point (`None`: PGD not run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgd: Option<bool>,
}

/// Per-batch counts, and the per-example verdicts they count.
#[derive(Debug, Default, Clone)]
pub struct BatchCounts {
    /// Examples.
    pub n: usize,
    /// Misclassified clean.
    pub clean_errors: usize,
    /// Not certified.
    pub robust_errors: usize,
    /// Misclassified at the PGD point.
    pub pgd_errors: usize,
    /// Per example, in order (empty when the counts come from elsewhere, e.g. old records).
    pub verdicts: Vec<ExampleVerdict>,
}

/// What to evaluate on a batch.
#[derive(Debug, Clone, Copy)]
pub struct EvalSettings {
    /// Radius.
    pub eps: f64,
    /// Norm of the ball.
    pub norm: Norm,
    /// Ball ∩ [0, 1].
    pub bounded_input: bool,
    /// Run PGD too.
    pub pgd: bool,
    /// Memory budget of the bound.
    pub memory_budget: Option<usize>,
    /// Projected bound (an estimate) instead of the exact one.
    pub proj: Option<Projection>,
}

impl CertifyConfig {
    /// f64 with `--f64`, else f32.
    pub fn dtype(&self) -> DType {
        if self.f64 {
            DType::F64
        } else {
            DType::F32
        }
    }

    /// The test set (its first `limit` examples).
    pub fn test_set(&self) -> Result<Dataset> {
        let mut data = load_test_set(&self.dataset, &self.data_dir)?;
        if let Some(l) = self.limit {
            data.truncate(l);
        }
        Ok(data)
    }

    /// The per-batch settings.
    pub fn eval_settings(&self) -> EvalSettings {
        EvalSettings {
            eps: self.eps,
            norm: self.norm,
            bounded_input: self.bounded_input,
            pgd: self.pgd,
            memory_budget: self.memory_budget,
            proj: self.proj,
        }
    }
}

/// Evaluates a data set (or its first `limit` examples) batch by batch.
pub fn evaluate(
    net: &Network,
    data: &Dataset,
    s: &EvalSettings,
    batch_size: usize,
    limit: Option<usize>,
    dtype: DType,
) -> Result<BatchCounts> {
    evaluate_with(net, data, s, batch_size, limit, dtype, false)
}

/// [`evaluate`] where an example also counts as certified when IBP certifies it (the exact
/// bound with `proj: None`). On interval-trained networks IBP's margin bound is often tighter
/// than the dual's (Zhang et al. 2020); both are sound, so the union is a certificate too.
pub fn evaluate_exact_or_ibp(
    net: &Network,
    data: &Dataset,
    s: &EvalSettings,
    batch_size: usize,
    limit: Option<usize>,
    dtype: DType,
) -> Result<BatchCounts> {
    evaluate_with(net, data, s, batch_size, limit, dtype, true)
}

fn evaluate_with(
    net: &Network,
    data: &Dataset,
    s: &EvalSettings,
    batch_size: usize,
    limit: Option<usize>,
    dtype: DType,
    or_ibp: bool,
) -> Result<BatchCounts> {
    if or_ibp && s.proj.is_some() {
        bail!("the exact-or-IBP evaluation needs the exact bound, not random projections");
    }
    let total = limit.unwrap_or(data.len()).min(data.len());
    let device = net.device();
    let mut acc = BatchCounts::default();
    let mut i = 0;
    while i < total {
        let end = (i + batch_size.max(1)).min(total);
        let (x, y) = data.batch(i, end, &device)?;
        let x = x.to_dtype(dtype)?;
        let c = nets::no_grad(|| evaluate_batch_inner(net, &x, &y, s, or_ibp))?;
        acc.add(&c);
        i = end;
    }
    Ok(acc)
}

impl BatchCounts {
    /// The counts of per-example verdicts: `clean[i]` correct at the clean input, `certified[i]`
    /// certified, `pgd[i]` correct at the PGD point (`None`: PGD not run, 0 PGD errors).
    pub fn from_verdicts(clean: &[bool], certified: &[bool], pgd: Option<&[bool]>) -> Result<Self> {
        let n = clean.len();
        if certified.len() != n || pgd.is_some_and(|p| p.len() != n) {
            bail!(
                "verdicts of different lengths: {n} clean, {} certified, {:?} PGD",
                certified.len(),
                pgd.map(<[bool]>::len)
            );
        }
        let verdicts: Vec<ExampleVerdict> = (0..n)
            .map(|i| ExampleVerdict { clean: clean[i], certified: certified[i], pgd: pgd.map(|p| p[i]) })
            .collect();
        let count = |f: &dyn Fn(&ExampleVerdict) -> bool| verdicts.iter().filter(|v| f(v)).count();
        Ok(BatchCounts {
            n,
            clean_errors: count(&|v| !v.clean),
            robust_errors: count(&|v| !v.certified),
            pgd_errors: count(&|v| v.pgd == Some(false)),
            verdicts,
        })
    }

    /// Adds another batch's counts (and appends its verdicts).
    pub fn add(&mut self, c: &BatchCounts) {
        self.n += c.n;
        self.clean_errors += c.clean_errors;
        self.robust_errors += c.robust_errors;
        self.pgd_errors += c.pgd_errors;
        self.verdicts.extend_from_slice(&c.verdicts);
    }
}

/// The dual network of `net` at `x` over the settings' input set: the exact bound, or the
/// projected estimate when `cfg.proj` is set; the memory budget applies to both.
pub fn bound_network(net: &Network, x: &Tensor, cfg: &EvalSettings) -> Result<DualNetwork> {
    let opts = DualOptions { memory_budget: cfg.memory_budget, ..Default::default() };
    Ok(match &cfg.proj {
        None => net.dual(x, input_set(x, cfg.eps, cfg.norm, cfg.bounded_input)?, &opts)?,
        Some(p) => projections::projected_dual(
            x,
            net.dual_nodes(x)?,
            &projection_config(cfg.eps, cfg.norm, cfg.bounded_input, p),
            &opts,
        )?,
    })
}

/// The PGD point of the papers' evaluation for `net` (100 steps of 0.01 in the settings' norm,
/// kept in [0, 1] with a bounded input).
pub fn pgd_point(net: &Network, x: &Tensor, y: &[u32], cfg: &EvalSettings) -> Result<Tensor> {
    let mut pc = PgdConfig::new(cfg.eps);
    if cfg.bounded_input {
        pc.clip = Some((0.0, 1.0));
    }
    let model = |t: &Tensor| net.forward(t).map_err(|e| candle_core::Error::Msg(e.to_string()));
    Ok(match cfg.norm {
        Norm::Linf => pgd(model, x, y, &pc)?,
        Norm::L2 => pgd_l2(model, x, y, &pc)?,
    })
}

/// Evaluates one batch. Runs under [`nets::no_grad`]: the parameters are not tracked, so the
/// dual network records no graph (same numbers, a fraction of the memory); PGD still takes
/// gradients with respect to the input.
pub fn evaluate_batch(net: &Network, x: &Tensor, y: &[u32], cfg: &EvalSettings) -> Result<BatchCounts> {
    nets::no_grad(|| evaluate_batch_inner(net, x, y, cfg, false))
}

/// [`evaluate_batch`] in the current gradient mode; with `or_ibp`, IBP's certificates count too.
fn evaluate_batch_inner(net: &Network, x: &Tensor, y: &[u32], cfg: &EvalSettings, or_ibp: bool) -> Result<BatchCounts> {
    let clean = correct(&net.forward(x)?, y)?;
    let dual = bound_network(net, x, cfg)?;
    let mut certified = certified_from_bounds(&robust_bounds(&dual, y)?, y)?;
    if or_ibp {
        // IBP on the dual's own nodes and input set: no second forward pass or input set.
        use dual_core::bounds::{margin_bounds, BoundOptions, Method, Net};
        let nodes = Net { nodes: dual.nodes(), x: dual.x(), input: dual.input() };
        let lower = margin_bounds(&nodes, y, Method::Ibp, &BoundOptions::default(), None)?;
        let by_ibp = certified_from_bounds(&lower.neg()?, y)?;
        certified.iter_mut().zip(by_ibp).for_each(|(c, i)| *c |= i);
    }
    drop(dual);
    let pgd = if cfg.pgd { Some(correct(&net.forward(&pgd_point(net, x, y, cfg)?)?, y)?) } else { None };
    BatchCounts::from_verdicts(&clean, &certified, pgd.as_deref())
}

/// Runs the whole evaluation and writes `cfg.json` when set; `progress(done, total, counts so
/// far)` is called after each batch. The JSON path is checked before the work starts.
pub fn certify(cfg: &CertifyConfig, progress: impl FnMut(usize, usize, &BatchCounts)) -> Result<CertifyReport> {
    let report = certify_report(cfg, progress)?;
    if let Some(p) = &cfg.json {
        write_json_atomic(p, &report)?;
    }
    Ok(report)
}

/// [`certify`] without writing `cfg.json`: the caller writes it (after showing the results, so a
/// failure to write loses nothing).
pub fn certify_report(cfg: &CertifyConfig, progress: impl FnMut(usize, usize, &BatchCounts)) -> Result<CertifyReport> {
    cfg.validate()?;
    let net =
        nets::io::load_model(&cfg.model, cfg.arch.as_deref(), cfg.dtype(), &crate::device::parse_device(&cfg.device)?)
            .with_context(|| format!("loading model {}", cfg.model.display()))?;
    certify_network(cfg, &net, progress)
}

/// [`certify`] with the network given (one stage of a cascade, say); writes no JSON.
pub fn certify_network(
    cfg: &CertifyConfig,
    net: &Network,
    progress: impl FnMut(usize, usize, &BatchCounts),
) -> Result<CertifyReport> {
    let settings = cfg.eval_settings();
    certify_batches(cfg, net, |x, y| evaluate_batch(net, x, y, &settings), progress)
}

/// The batch loop every certified evaluation shares: the test set of `cfg` (its shape checked
/// against `net`'s input), batch by batch through `evaluate(x, y)`, counts added up and reported
/// to `progress(done, total, counts so far)`, and the report of the whole run.
pub fn certify_batches(
    cfg: &CertifyConfig,
    net: &Network,
    mut evaluate: impl FnMut(&Tensor, &[u32]) -> Result<BatchCounts>,
    mut progress: impl FnMut(usize, usize, &BatchCounts),
) -> Result<CertifyReport> {
    let dtype = cfg.dtype();
    let device = net.device();
    let data = cfg.test_set()?;
    check_data_shape(net, &data, &cfg.dataset)?;
    let start = Instant::now();
    let mut log = cfg.records.as_ref().map(|r| crate::certify_records::open(r, cfg, &data)).transpose()?;
    let owns = |b: usize| cfg.records.as_ref().is_none_or(|r| r.sharding.shard.owns(b));
    let blocks = crate::certify_records::blocks(data.len(), cfg.batch_size);
    let total: usize = blocks.iter().enumerate().filter(|(b, _)| owns(*b)).map(|(_, (i, end))| end - i).sum();
    let mut acc = BatchCounts::default();
    for (b, &(i, end)) in blocks.iter().enumerate() {
        if !owns(b) {
            continue;
        }
        if let Some(v) = log.as_ref().and_then(|l| l.done(b as u64)) {
            acc.add(&crate::certify_records::counts(v, i, end)?);
            progress(acc.n, total, &acc);
            continue;
        }
        let t0 = Instant::now();
        let (x, y) = data.batch(i, end, &device)?;
        let x = x.to_dtype(dtype)?;
        let c = evaluate(&x, &y).with_context(|| format!("examples {i}..{end}"))?;
        if let Some(l) = log.as_mut() {
            l.append(b as u64, crate::certify_records::record(i, end, &c, t0.elapsed().as_secs_f64()))?;
        }
        acc.add(&c);
        progress(acc.n, total, &acc);
    }
    let n = acc.n.max(1) as f64;
    Ok(CertifyReport {
        n: acc.n,
        clean_error: acc.clean_errors as f64 / n,
        robust_error: acc.robust_errors as f64 / n,
        pgd_error: cfg.pgd.then(|| acc.pgd_errors as f64 / n),
        seconds: start.elapsed().as_secs_f64(),
        settings: cfg.clone(),
    })
}
