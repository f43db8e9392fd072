//! The largest radius each test example is still certified at ("minimum distance" of paper 1):
//! a bisection on a per-example radius, all examples of a batch at once (`Epsilon::Tensor` of
//! shape `[B]`), each step bounding only the examples not yet settled.

use crate::certify::{check_data_shape, load_test_set, Norm};
use crate::plot::histogram;
use crate::report::{median, write_json_atomic, Table};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use dual_core::{robust_bounds, DualOptions};
use dual_layers::Epsilon;
use nets::Network;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// Settings of the search.
#[derive(Debug, Clone, Serialize)]
pub struct SearchConfig {
    /// Norm of the ball.
    pub norm: Norm,
    /// Intersect the (l_inf) ball with `[0, 1]`.
    pub bounded_input: bool,
    /// First radius tried; doubled while it still certifies.
    pub initial: f64,
    /// The largest radius tried; an example certified there gets this value.
    pub max_eps: f64,
    /// Stop once the margin `max_{j≠y} f_j` at a certified radius is within this of zero.
    pub bound_tol: f64,
    /// Stop once the bracket `[certified, not certified]` is narrower than this.
    pub eps_tol: f64,
    /// Upper limit of bound evaluations per example.
    pub max_iters: usize,
    /// Memory budget of the bound computation.
    pub memory_budget: Option<usize>,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            norm: Norm::Linf,
            bounded_input: false,
            initial: 0.1,
            max_eps: 1.0,
            bound_tol: 1e-4,
            eps_tol: 1e-5,
            max_iters: 60,
            memory_budget: None,
        }
    }
}

/// The outcome for one example.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Found {
    /// The largest radius found that certifies the example (0 when misclassified).
    pub eps: f64,
    /// The margin `max_{j≠y} f_j` at `eps` (negative: certified); `None` when no radius above 0
    /// was found certified.
    pub margin: Option<f64>,
    /// Whether the clean input is classified correctly.
    pub correct: bool,
    /// Whether the search stopped at `max_eps` still certified.
    pub capped: bool,
    /// Bound evaluations spent.
    pub iterations: usize,
}

/// `max_{j≠y} f_j` per example, with example `i` in the ball of radius `eps[i]`.
pub fn margins(net: &Network, x: &Tensor, y: &[u32], eps: &[f64], cfg: &SearchConfig) -> Result<Vec<f64>> {
    let b = x.dim(0)?;
    if eps.len() != b || y.len() != b {
        bail!("{} radii and {} labels for {b} examples", eps.len(), y.len());
    }
    let e = Epsilon::Tensor(Tensor::from_slice(eps, b, x.device())?.to_dtype(x.dtype())?);
    let src = crate::certify::threat_model(e, cfg.norm, cfg.bounded_input).exact_set(x)?;
    let dual = net.dual(x, src, &DualOptions { memory_budget: cfg.memory_budget, ..Default::default() })?;
    let f = robust_bounds(&dual, y)?.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    Ok(f.iter()
        .zip(y)
        .map(|(r, &yi)| {
            r.iter().enumerate().filter(|(j, _)| *j != yi as usize).map(|(_, v)| *v).fold(f64::NEG_INFINITY, f64::max)
        })
        .collect())
}

#[derive(Clone, Copy)]
struct State {
    lo: f64,
    margin_lo: Option<f64>,
    hi: Option<f64>,
    probe: f64,
    iters: usize,
    done: bool,
    capped: bool,
}

/// Bisection for every example of the batch `x` at once.
pub fn search_batch(net: &Network, x: &Tensor, y: &[u32], cfg: &SearchConfig) -> Result<Vec<Found>> {
    let b = x.dim(0)?;
    if y.len() != b {
        bail!("{} labels for {b} examples", y.len());
    }
    if !(cfg.initial > 0.0 && cfg.max_eps >= cfg.initial && cfg.eps_tol > 0.0 && cfg.bound_tol >= 0.0) {
        bail!("need 0 < initial ≤ max_eps and positive tolerances");
    }
    let pred = net.forward(x)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
    let correct: Vec<bool> = pred.iter().zip(y).map(|(p, t)| p == t).collect();
    let init = State { lo: 0.0, margin_lo: None, hi: None, probe: cfg.initial, iters: 0, done: false, capped: false };
    let mut st: Vec<State> = correct.iter().map(|&c| State { done: !c, ..init }).collect();
    loop {
        let active: Vec<usize> = (0..b).filter(|&i| !st[i].done).collect();
        if active.is_empty() {
            break;
        }
        let idx = Tensor::from_vec(active.iter().map(|&i| i as u32).collect::<Vec<_>>(), active.len(), x.device())?;
        let xa = x.index_select(&idx, 0)?;
        let ya: Vec<u32> = active.iter().map(|&i| y[i]).collect();
        let ea: Vec<f64> = active.iter().map(|&i| st[i].probe).collect();
        let m = margins(net, &xa, &ya, &ea, cfg)?;
        for (&i, &mi) in active.iter().zip(&m) {
            let s = &mut st[i];
            s.iters += 1;
            let p = s.probe;
            if mi < 0.0 {
                s.lo = p;
                s.margin_lo = Some(mi);
                if mi >= -cfg.bound_tol {
                    s.done = true;
                    continue;
                }
                if s.hi.is_none() {
                    if p >= cfg.max_eps {
                        s.done = true;
                        s.capped = true;
                        continue;
                    }
                    s.probe = (2.0 * p).min(cfg.max_eps);
                }
            } else {
                s.hi = Some(p);
            }
            if let Some(h) = s.hi {
                if h - s.lo < cfg.eps_tol {
                    s.done = true;
                    continue;
                }
                s.probe = 0.5 * (s.lo + h);
            }
            if s.iters >= cfg.max_iters {
                s.done = true;
            }
        }
    }
    Ok(st
        .iter()
        .zip(&correct)
        .map(|(s, &c)| Found {
            eps: if c { s.lo } else { 0.0 },
            margin: s.margin_lo,
            correct: c,
            capped: s.capped,
            iterations: s.iters,
        })
        .collect())
}

/// Settings of a `min-distance` run.
#[derive(Debug, Clone, Serialize)]
pub struct MinDistanceConfig {
    /// Model file.
    pub model: PathBuf,
    /// Architecture when the file holds none.
    pub arch: Option<String>,
    /// Data set (`mnist`, `fashion-mnist`).
    pub dataset: String,
    /// Its folder.
    pub data_dir: PathBuf,
    /// Only the first `limit` test examples.
    pub limit: Option<usize>,
    /// Examples per batch.
    pub batch_size: usize,
    /// Compute in f64.
    pub f64: bool,
    /// The search.
    pub search: SearchConfig,
    /// Output folder (`results.json`, `results.md`, `histogram.png`).
    pub out_dir: PathBuf,
}

/// Summary statistics.
#[derive(Debug, Clone, Serialize)]
pub struct MinDistanceReport {
    /// Examples.
    pub n: usize,
    /// Misclassified clean (radius 0).
    pub misclassified: usize,
    /// Certified at `max_eps` (radius capped).
    pub capped: usize,
    /// Mean radius over all examples.
    pub mean: f64,
    /// Median radius over all examples.
    pub median: f64,
    /// Mean radius over the correctly classified examples.
    pub mean_correct: f64,
    /// Median radius over the correctly classified examples.
    pub median_correct: f64,
    /// Bound evaluations per example, on average.
    pub mean_iterations: f64,
    /// Seconds.
    pub seconds: f64,
    /// The histogram.
    pub histogram: Option<PathBuf>,
    /// Per example.
    pub examples: Vec<Found>,
    /// Per-example radius (the same values as `examples[i].eps`).
    pub eps: Vec<f64>,
    /// The settings.
    pub settings: MinDistanceConfig,
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

impl MinDistanceReport {
    /// A summary table.
    pub fn table(&self) -> Table {
        let mut t = Table::new(&["figure", "value"]);
        let s = &self.settings;
        t.row(&["model", &s.model.display().to_string()]);
        t.row(&["data", &format!("{} ({} test examples)", s.dataset, self.n)]);
        let ball = match (s.search.norm, s.search.bounded_input) {
            (Norm::Linf, false) => "l_inf ball",
            (Norm::Linf, true) => "l_inf ball ∩ [0,1]",
            (Norm::L2, _) => "l2 ball",
        };
        t.row(&["threat model", ball]);
        t.row(&["misclassified (radius 0)", &self.misclassified.to_string()]);
        t.row(&["mean / median radius (all)", &format!("{:.5} / {:.5}", self.mean, self.median)]);
        t.row(&["mean / median radius (correct)", &format!("{:.5} / {:.5}", self.mean_correct, self.median_correct)]);
        t.row(&[&format!("certified at max_eps {}", s.search.max_eps), &self.capped.to_string()]);
        t.row(&["bound evaluations / example", &format!("{:.1}", self.mean_iterations)]);
        t.row(&["seconds", &format!("{:.1}", self.seconds)]);
        t
    }

    /// Markdown for `results.md`.
    pub fn markdown(&self) -> String {
        format!("# min-distance: largest certified radius per example\n\n{}", self.table())
    }
}

/// Runs the search over the test set; writes `results.json`, `results.md` and `histogram.png`.
pub fn run(cfg: &MinDistanceConfig, mut progress: impl FnMut(usize, usize)) -> Result<MinDistanceReport> {
    let start = Instant::now();
    if cfg.batch_size == 0 || cfg.limit == Some(0) {
        bail!("batch size and limit must be at least 1");
    }
    nets::io::check_model_file(&cfg.model)?;
    if cfg.search.bounded_input && cfg.search.norm == Norm::L2 {
        bail!("--bounded-input is only supported with the l_inf norm");
    }
    let dtype = if cfg.f64 { DType::F64 } else { DType::F32 };
    let dev = Device::Cpu;
    let net = nets::io::load_model(&cfg.model, cfg.arch.as_deref(), dtype, &dev)
        .with_context(|| format!("loading model {}", cfg.model.display()))?;
    let mut data = load_test_set(&cfg.dataset, &cfg.data_dir)?;
    check_data_shape(&net, &data, &cfg.dataset)?;
    if let Some(l) = cfg.limit {
        data.truncate(l);
    }
    let total = data.len();
    let mut found = Vec::with_capacity(total);
    let mut i = 0;
    while i < total {
        let end = (i + cfg.batch_size).min(total);
        let (x, y) = data.batch(i, end, &dev)?;
        let x = x.to_dtype(dtype)?;
        found.extend(search_batch(&net, &x, &y, &cfg.search).with_context(|| format!("examples {i}..{end}"))?);
        progress(end, total);
        i = end;
    }
    let eps: Vec<f64> = found.iter().map(|f| f.eps).collect();
    let eps_correct: Vec<f64> = found.iter().filter(|f| f.correct).map(|f| f.eps).collect();
    let png = cfg.out_dir.join("histogram.png");
    std::fs::create_dir_all(&cfg.out_dir).with_context(|| format!("creating {}", cfg.out_dir.display()))?;
    let histogram = match histogram(&png, "largest certified radius per test example", "epsilon", &eps, 30) {
        Ok(()) => Some(png),
        Err(e) => {
            eprintln!("min-distance: no histogram: {e:#}");
            None
        }
    };
    let report = MinDistanceReport {
        n: total,
        misclassified: found.iter().filter(|f| !f.correct).count(),
        capped: found.iter().filter(|f| f.capped).count(),
        mean: mean(&eps),
        median: median(&eps),
        mean_correct: mean(&eps_correct),
        median_correct: median(&eps_correct),
        mean_iterations: mean(&found.iter().map(|f| f.iterations as f64).collect::<Vec<_>>()),
        seconds: start.elapsed().as_secs_f64(),
        histogram,
        examples: found,
        eps,
        settings: cfg.clone(),
    };
    write_json_atomic(&cfg.out_dir.join("results.json"), &report)?;
    nets::io::atomic_write(&cfg.out_dir.join("results.md"), report.markdown().as_bytes())?;
    Ok(report)
}
