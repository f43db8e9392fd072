//! The papers' check of the dual bound against the primal LP (CVXPY in the original code): for a
//! small MLP and a few examples, the dual objective `J(e_y - e_j)` beside the optimum of the LP
//! of Wong & Kolter (triangle relaxation with the dual network's intermediate bounds, solved
//! with Clarabel). Weak duality says `J ≤ LP`; the gap shows how much the dual's fixed slopes
//! lose.

use crate::certify::default_data_dir;
use crate::datasets::{load_mnist_like, Split};
use crate::lp::{example_bounds, InputSet, LpNetwork, NetworkLp, Relaxation, Step};
use crate::report::{write_json_atomic, Table};
use crate::train::{Optimizer, OptimizerConfig};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use dual_core::{class_difference_c, robust_loss, DualOptions, DualSource};
use nets::spec::build::{flatten, linear, relu};
use nets::{Network, NetworkSpec};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// `LP ≥ J - TOLERANCE` must hold for every row (absolute, in logit units).
pub const TOLERANCE: f64 = 1e-6;

/// One (example, class) pair.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Index of the example in the batch.
    pub example: usize,
    /// Its label.
    pub label: u32,
    /// The other class `j`.
    pub j: usize,
    /// The dual bound `J(e_y - e_j)`.
    pub dual: f64,
    /// The LP optimum `min (f_y - f_j)` over the triangle relaxation.
    pub lp: f64,
    /// `lp - dual` (≥ 0 up to the solver's accuracy).
    pub gap: f64,
    /// Unstable ReLU units of this example.
    pub unstable: usize,
    /// The solver's status (`Solved` or `AlmostSolved`).
    pub status: String,
}

impl Row {
    /// Whether `LP ≥ J - TOLERANCE`.
    pub fn valid(&self) -> bool {
        self.lp >= self.dual - TOLERANCE
    }
}

fn input_set(x: &Tensor, eps: impl Into<dual_layers::Epsilon>, bounded: bool) -> Result<Box<dyn DualSource>> {
    Ok(crate::certify::threat_model(eps, crate::certify::Norm::Linf, bounded).exact_set(x)?)
}

/// The dual bound and the LP optimum for every example of `x` (`[B, *input_shape]`) and every
/// `j ≠ y`, over the l_inf ball of radius `eps` (∩ `[0, 1]` when `bounded`). Computes in f64.
pub fn compare(net: &Network, x: &Tensor, y: &[u32], eps: f64, bounded: bool) -> Result<Vec<Row>> {
    let b = x.dim(0)?;
    if y.len() != b {
        bail!("{} labels for {b} examples", y.len());
    }
    let net = net.to_dtype(DType::F64)?;
    let x = x.to_dtype(DType::F64)?;
    let lpnet = LpNetwork::from_network(&net)?;
    let k = lpnet.output_size();
    let dual = net.dual(&x, input_set(&x, eps, bounded)?, &DualOptions::default())?;
    let c = class_difference_c(y, k, DType::F64, &Device::Cpu)?;
    let j = dual.objective(&c)?.to_vec2::<f64>()?;
    let xs = x.flatten_from(1)?.to_vec2::<f64>()?;
    let clip = bounded.then_some((0.0, 1.0));
    let mut rows = Vec::new();
    for e in 0..b {
        let bounds = example_bounds(&dual, e)?;
        let lp = NetworkLp::build(&lpnet, &InputSet::linf(&xs[e], eps, clip), &bounds, Relaxation::Triangle, None)?;
        let yi = y[e] as usize;
        for jj in (0..k).filter(|&jj| jj != yi) {
            let mut cv = vec![0.0; k];
            cv[yi] = 1.0;
            cv[jj] = -1.0;
            let s = lp.minimize_output(&cv).with_context(|| format!("example {e}, class {jj}"))?;
            let d = j[e][jj];
            rows.push(Row {
                example: e,
                label: y[e],
                j: jj,
                dual: d,
                lp: s.value,
                gap: s.value - d,
                unstable: lp.unstable,
                status: s.status,
            });
        }
    }
    Ok(rows)
}

/// Settings of the `primal` experiment.
#[derive(Debug, Clone, Serialize)]
pub struct PrimalConfig {
    /// Examples compared (the first test examples).
    pub examples: usize,
    /// Radius of the l_inf ball.
    pub eps: f64,
    /// Intersect the ball with `[0, 1]`.
    pub bounded_input: bool,
    /// Hidden widths of the MLP trained here (input 784, 10 classes).
    pub hidden: Vec<usize>,
    /// Training examples (the first ones of Fashion-MNIST).
    pub train_examples: usize,
    /// Epochs of robust training (Adam 1e-3, batch 50, at radius `eps`).
    pub epochs: usize,
    /// Seed of the initialisation (and of the random inputs without data).
    pub seed: u64,
    /// Fashion-MNIST folder (default `data/fashion-mnist`, else `/usr/share/datasets/fashion-mnist`).
    pub data_dir: Option<PathBuf>,
    /// Use this model instead of training one (an MLP of Linear / ReLU / Flatten layers).
    pub model: Option<PathBuf>,
    /// Architecture of `model` when the file holds none.
    pub arch: Option<String>,
    /// Output folder (`results.json`, `results.md`).
    pub out_dir: PathBuf,
}

impl Default for PrimalConfig {
    fn default() -> Self {
        PrimalConfig {
            examples: 10,
            eps: 0.1,
            bounded_input: false,
            hidden: vec![100, 100],
            train_examples: 1000,
            epochs: 1,
            seed: 0,
            data_dir: None,
            model: None,
            arch: None,
            out_dir: PathBuf::from("results/primal"),
        }
    }
}

/// What the run found.
#[derive(Debug, Clone, Serialize)]
pub struct PrimalReport {
    /// Every (example, j) pair.
    pub rows: Vec<Row>,
    /// Rows with `LP < J - TOLERANCE` (0 expected).
    pub violations: usize,
    /// `max (J - LP)` over the rows (≤ 0 up to the solver's accuracy).
    pub max_violation: f64,
    /// Mean of `LP - J`.
    pub mean_gap: f64,
    /// Largest `LP - J`.
    pub max_gap: f64,
    /// The network (layer widths).
    pub network: String,
    /// Where the network and the examples came from.
    pub source: String,
    /// Certified robust error of the network on the compared examples.
    pub robust_error: f64,
    /// Seconds spent solving LPs.
    pub lp_seconds: f64,
    /// Seconds in all.
    pub seconds: f64,
    /// The settings.
    pub settings: PrimalConfig,
}

impl PrimalReport {
    /// The rows as a table.
    pub fn table(&self) -> Table {
        let mut t = Table::new(&["example", "label", "j", "dual J", "LP", "gap", "unstable"]);
        for r in &self.rows {
            t.row(&[
                &r.example.to_string(),
                &r.label.to_string(),
                &r.j.to_string(),
                &format!("{:.6}", r.dual),
                &format!("{:.6}", r.lp),
                &format!("{:.2e}", r.gap),
                &r.unstable.to_string(),
            ]);
        }
        t
    }

    /// Markdown for `results.md`.
    pub fn markdown(&self) -> String {
        let s = &self.settings;
        format!(
            "# primal: dual bound vs. LP\n\n{} · {} · l_inf ball{}, eps {} · {} examples · certified robust error {:.0} %\n\n\
             LP ≥ J - {TOLERANCE:e} on {}/{} rows (largest J - LP: {:.2e}); gap LP - J: mean {:.4e}, max {:.4e} · LP time {:.1} s, total {:.1} s\n\n{}",
            self.network,
            self.source,
            if s.bounded_input { " ∩ [0,1]" } else { "" },
            s.eps,
            s.examples,
            100.0 * self.robust_error,
            self.rows.len() - self.violations,
            self.rows.len(),
            self.max_violation,
            self.mean_gap,
            self.max_gap,
            self.lp_seconds,
            self.seconds,
            self.table()
        )
    }
}

fn mlp_spec(hidden: &[usize]) -> NetworkSpec {
    let mut layers = vec![flatten()];
    let mut w = 784;
    for &h in hidden {
        layers.push(linear(w, h));
        layers.push(relu());
        w = h;
    }
    layers.push(linear(w, 10));
    NetworkSpec::sequential("primal-mlp", &[1, 28, 28], layers)
}

/// Trains (or loads) the network, compares the dual bound with the LP on the first examples,
/// writes `results.json` and `results.md` under `cfg.out_dir`.
pub fn run(cfg: &PrimalConfig) -> Result<PrimalReport> {
    let start = Instant::now();
    if cfg.examples == 0 {
        bail!("at least one example is needed");
    }
    if !cfg.eps.is_finite() || cfg.eps < 0.0 {
        bail!("eps must be a non-negative number, got {}", cfg.eps);
    }
    let dev = Device::Cpu;
    let data_dir = cfg.data_dir.clone().unwrap_or_else(|| default_data_dir("fashion-mnist"));
    let test = load_mnist_like(&data_dir, Split::Test).ok();
    let (net, source) = match (&cfg.model, &test) {
        (Some(m), _) => {
            let net = nets::io::load_model(m, cfg.arch.as_deref(), DType::F32, &dev)
                .with_context(|| format!("loading {}", m.display()))?;
            (net, format!("model {}", m.display()))
        }
        (None, Some(_)) => {
            let mut train_set = load_mnist_like(&data_dir, Split::Train)
                .with_context(|| format!("loading the training set from {}", data_dir.display()))?;
            train_set.truncate(cfg.train_examples);
            let net = Network::init(&mlp_spec(&cfg.hidden), cfg.seed, DType::F32, &dev)?;
            let mut opt = Optimizer::new(OptimizerConfig::adam(1e-3), net.trainable());
            for _ in 0..cfg.epochs {
                let mut i = 0;
                while i < train_set.len() {
                    let end = (i + 50).min(train_set.len());
                    let (x, y) = train_set.batch(i, end, &dev)?;
                    let dual = net.dual(&x, input_set(&x, cfg.eps, cfg.bounded_input)?, &DualOptions::default())?;
                    opt.step(&robust_loss(&dual, &y)?.loss.backward()?)?;
                    i = end;
                }
            }
            (
                net,
                format!(
                    "Fashion-MNIST test set; robust training on {} examples for {} epoch{}",
                    train_set.len(),
                    cfg.epochs,
                    if cfg.epochs == 1 { "" } else { "s" }
                ),
            )
        }
        (None, None) => {
            eprintln!("primal: no Fashion-MNIST in {}; random network and random inputs", data_dir.display());
            (
                Network::init(&mlp_spec(&cfg.hidden), cfg.seed, DType::F32, &dev)?,
                "random network, random inputs".to_string(),
            )
        }
    };
    let (x, y) = match &test {
        Some(t) => {
            let n = cfg.examples.min(t.len());
            t.batch(0, n, &dev)?
        }
        None => {
            let mut rng = StdRng::seed_from_u64(cfg.seed + 1);
            let shape: Vec<usize> = std::iter::once(cfg.examples).chain(net.input_shape().iter().copied()).collect();
            let v: Vec<f32> = (0..shape.iter().product::<usize>()).map(|_| rng.random::<f32>()).collect();
            let x = Tensor::from_vec(v, shape, &dev)?;
            let y = net.forward(&x)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
            (x, y)
        }
    };
    let per_example = x.dims()[1..].iter().product::<usize>();
    if per_example != net.input_shape().iter().product::<usize>() {
        bail!(
            "the model expects inputs of shape {:?}, but the examples have shape {:?}",
            net.input_shape(),
            &x.dims()[1..]
        );
    }
    let x = x.reshape([&[x.dim(0)?][..], net.input_shape()].concat())?;
    let dual = net.to_dtype(DType::F64)?.dual(
        &x.to_dtype(DType::F64)?,
        input_set(&x.to_dtype(DType::F64)?, cfg.eps, cfg.bounded_input)?,
        &DualOptions::default(),
    )?;
    let certified = robust_loss(&dual, &y)?.certified;
    drop(dual);
    let lp_start = Instant::now();
    let rows = compare(&net, &x, &y, cfg.eps, cfg.bounded_input)?;
    let lp_seconds = lp_start.elapsed().as_secs_f64();
    let violations = rows.iter().filter(|r| !r.valid()).count();
    let gaps: Vec<f64> = rows.iter().map(|r| r.gap).collect();
    let lpnet = LpNetwork::from_network(&net)?;
    let mut w: Vec<usize> = vec![lpnet.input_size];
    w.extend(
        lpnet
            .steps
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, Step::Affine { .. }))
            .map(|(k, _)| lpnet.widths[k + 1]),
    );
    let report = PrimalReport {
        violations,
        max_violation: gaps.iter().map(|g| -g).fold(f64::NEG_INFINITY, f64::max),
        mean_gap: gaps.iter().sum::<f64>() / gaps.len().max(1) as f64,
        max_gap: gaps.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
        rows,
        network: format!("MLP {}", w.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("-")),
        source,
        robust_error: certified.iter().filter(|c| !**c).count() as f64 / certified.len().max(1) as f64,
        lp_seconds,
        seconds: start.elapsed().as_secs_f64(),
        settings: cfg.clone(),
    };
    write_json_atomic(&cfg.out_dir.join("results.json"), &report)?;
    nets::io::atomic_write(&cfg.out_dir.join("results.md"), report.markdown().as_bytes())?;
    Ok(report)
}
