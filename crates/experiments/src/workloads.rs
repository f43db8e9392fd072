//! The speed workloads of issue 5, shared by the profiler example and
//! `cargo xtask bench-vs-pytorch`: the robust loss of a model on one batch (l_inf ball,
//! optionally ∩ [0, 1]), exact or with `k` random projections, forward only or forward +
//! backward (gradients of every parameter).
//!
//! "Forward" is everything the PyTorch package's `robust_loss(net, eps, X, y)` computes: the
//! layer-wise bounds (Algorithm 1), `J(c)` for the `classes - 1` class differences (Theorem 1)
//! and the cross-entropy of `-J` (Eq. 14).

use crate::certify::{input_set, projection_config, Norm, Projection};
use crate::chunked_grads::{dual_bytes_per_example, examples_per_pass, PASS_MEMORY_BUDGET};
pub use crate::report::median;
use anyhow::Result;
use candle_core::{DType, Tensor};
use dual_core::{robust_loss, DualOptions};
use nets::Network;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Which bound a workload computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BoundKind {
    /// The exact dual network.
    Exact,
    /// `k` Cauchy projections with the median estimator (`l1_median` in the package).
    Projected { k: usize },
}

/// One workload: a bound, forward only or with the backward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    /// The bound.
    pub bound: BoundKind,
    /// Also run the backward pass.
    pub backward: bool,
}

impl Workload {
    /// The four workloads of issue 5: exact and k = 50, forward and forward + backward.
    pub fn standard() -> Vec<Workload> {
        let mut v = Vec::new();
        for bound in [BoundKind::Exact, BoundKind::Projected { k: 50 }] {
            for backward in [false, true] {
                v.push(Workload { bound, backward });
            }
        }
        v
    }

    /// A short name, e.g. `exact/forward` or `proj50/forward+backward`.
    pub fn name(&self) -> String {
        let b = match self.bound {
            BoundKind::Exact => "exact".to_string(),
            BoundKind::Projected { k } => format!("proj{k}"),
        };
        format!("{b}/{}", if self.backward { "forward+backward" } else { "forward" })
    }
}

/// What one run of a workload gives: the loss (to compare numbers across implementations) and
/// its duration.
#[derive(Debug, Clone, Copy)]
pub struct WorkloadRun {
    /// Mean robust cross-entropy over the batch.
    pub loss: f64,
    /// Fraction of the batch not certified by this bound.
    pub robust_error: f64,
    /// Sum of the absolute gradient entries over all parameters (0 without backward).
    pub grad_abs_sum: f64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Runs `w` once on `(x, y)` with radius `eps` (ball ∩ [0, 1] when `bounded`). `seed` draws
/// the projections.
///
/// A forward-only workload runs under [`nets::no_grad`] (as the PyTorch side runs under
/// `torch.no_grad()`): nothing is recorded for a backward pass that will not come.
pub fn run_workload(
    net: &Network,
    x: &Tensor,
    y: &[u32],
    eps: f64,
    bounded: bool,
    w: Workload,
    seed: u64,
) -> Result<WorkloadRun> {
    if w.backward {
        run_once(net, x, y, eps, bounded, w, seed)
    } else {
        nets::no_grad(|| run_once(net, x, y, eps, bounded, w, seed))
    }
}

/// One run in the current gradient mode.
fn run_once(
    net: &Network,
    x: &Tensor,
    y: &[u32],
    eps: f64,
    bounded: bool,
    w: Workload,
    seed: u64,
) -> Result<WorkloadRun> {
    let t0 = Instant::now();
    let chunk_loss = |r: std::ops::Range<usize>| -> Result<(Tensor, f64)> {
        let x = x.narrow(0, r.start, r.len())?;
        let dual = match w.bound {
            BoundKind::Exact => net.dual(&x, input_set(&x, eps, Norm::Linf, bounded)?, &DualOptions::default())?,
            BoundKind::Projected { k } => {
                let p = Projection { k, seed, inflate_delta: None };
                projections::projected_dual(
                    &x,
                    net.dual_nodes(&x)?,
                    &projection_config(eps, Norm::Linf, bounded, &p),
                    &DualOptions::default(),
                )?
            }
        };
        let rl = robust_loss(&dual, &y[r])?;
        Ok((rl.loss, rl.error))
    };
    let n = y.len();
    if !w.backward {
        let (l, error) = chunk_loss(0..n)?;
        let loss = l.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        return Ok(WorkloadRun { loss, robust_error: error, grad_abs_sum: 0.0, seconds: t0.elapsed().as_secs_f64() });
    }
    let chunk = pass_size(net, x, w)?;
    let cg = crate::chunked_grads::mean_loss_grads_in_chunks(n, chunk, chunk_loss)?;
    let mut grad_abs_sum = 0.0;
    for v in net.trainable() {
        if let Some(g) = cg.grads.get(v.as_tensor()) {
            grad_abs_sum += g.abs()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    Ok(WorkloadRun { loss: cg.loss, robust_error: cg.stat, grad_abs_sum, seconds })
}

/// The estimated graph ([`dual_bytes_per_example`]) one forward + backward pass of a projected
/// bound may take before the batch is split. Its graph is small, so the split costs nothing
/// measurable and only lowers the peak: `k = 50` at batch 50 on the papers' model is estimated at
/// 240 MB and peaked at 0.62–0.65 GiB in one pass — against the PyTorch package's 0.62–0.74 —,
/// 0.39–0.40 GiB in two passes of 25, in the same 0.114–0.119 s (2026-12-05, AMD EPYC). Each pass
/// draws its own projections (the estimate is random either way).
pub const PROJECTED_PASS_MEMORY_BUDGET: usize = 128 << 20;

/// Examples per forward + backward pass of `w` on `x`: the whole batch unless its dual's graph
/// would exceed [`PASS_MEMORY_BUDGET`] ([`PROJECTED_PASS_MEMORY_BUDGET`] for projected bounds;
/// see [`crate::chunked_grads`]).
pub fn pass_size(net: &Network, x: &Tensor, w: Workload) -> Result<usize> {
    let n = x.dim(0)?;
    let one = x.narrow(0, 0, 1.min(n))?;
    let lens: Vec<usize> = nets::no_grad(|| net.forward_all(&one))?.iter().map(|t| t.elem_count()).collect();
    let columns = match w.bound {
        BoundKind::Exact => one.elem_count(),
        BoundKind::Projected { k } => k,
    };
    let bpe = dual_bytes_per_example(columns, &lens, x.dtype().size_in_bytes());
    let budget = match w.bound {
        BoundKind::Exact => PASS_MEMORY_BUDGET,
        BoundKind::Projected { .. } => PROJECTED_PASS_MEMORY_BUDGET,
    };
    Ok(examples_per_pass(n, bpe, budget))
}

/// What one process reports after timing one workload (`cargo xtask bench-vs-pytorch` runs
/// every workload in a fresh process, on both sides, so the peak memory is that workload's own).
/// The PyTorch side (`xtask/python/bench_pytorch.py`) prints the same fields.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerReport {
    /// `rust` or `pytorch`.
    pub implementation: String,
    /// Seconds of every timed run (a first, untimed run warms up).
    pub seconds: Vec<f64>,
    /// Robust loss of the last run.
    pub loss: f64,
    /// Robust error of the last run.
    pub robust_error: f64,
    /// Sum of the absolute parameter gradients of the last run (0 without backward).
    pub grad_abs_sum: f64,
    /// Resident memory of the idle process (model and data loaded), bytes.
    pub idle_rss_bytes: u64,
    /// Peak resident memory above the idle process, bytes.
    pub peak_rss_above_idle_bytes: u64,
}

/// A field of `/proc/self/status` in bytes (`VmRSS`, `VmHWM`); 0 where there is no procfs.
pub fn proc_status_bytes(field: &str) -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else { return 0 };
    s.lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
        .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// What [`time_repeats`] measured: wall seconds of every timed run, the last run's result, and
/// the process's peak resident memory above what it held before the first run.
#[derive(Debug, Clone)]
pub struct Timed<T> {
    /// Seconds of every timed run.
    pub seconds: Vec<f64>,
    /// The last run's result.
    pub last: T,
    /// Resident memory before the first run, bytes.
    pub idle_rss_bytes: u64,
    /// Peak resident memory above `idle_rss_bytes`, bytes.
    pub peak_rss_above_idle_bytes: u64,
}

/// Runs `f(r)` for `r = 0..=repeats`: run 0 warms up and is not timed. Run it in a fresh
/// process for a meaningful peak memory.
pub fn time_repeats<T>(repeats: usize, f: impl FnMut(usize) -> Result<T>) -> Result<Timed<T>> {
    time_repeats_warm(repeats, 0.0, f)
}

/// [`time_repeats`] with a longer warm-up: `f(0)` runs untimed until `warmup_seconds` have gone
/// (at least once). The first ~0.1 s of a fresh process runs slower than its steady state (the
/// threads' placement settling; measured 2026-12-05, `docs/PERFORMANCE.md`), which one short
/// warm-up run does not cover.
pub fn time_repeats_warm<T>(
    repeats: usize,
    warmup_seconds: f64,
    mut f: impl FnMut(usize) -> Result<T>,
) -> Result<Timed<T>> {
    let idle = proc_status_bytes("VmRSS");
    let mut seconds = Vec::with_capacity(repeats);
    let warm = Instant::now();
    let mut last = f(0)?;
    while warm.elapsed().as_secs_f64() < warmup_seconds {
        last = f(0)?;
    }
    for r in 1..=repeats {
        let t0 = Instant::now();
        last = f(r)?;
        seconds.push(t0.elapsed().as_secs_f64());
    }
    Ok(Timed {
        seconds,
        last,
        idle_rss_bytes: idle,
        peak_rss_above_idle_bytes: proc_status_bytes("VmHWM").saturating_sub(idle),
    })
}

/// Times `w` `repeats` times after warm-up runs for `warmup_seconds` (at least one run), in this
/// process, and reports as [`WorkerReport`]. Run it in a fresh process for a meaningful peak
/// memory.
#[allow(clippy::too_many_arguments)] // one workload's full description, as `run_workload` takes it
pub fn time_workload(
    net: &Network,
    x: &Tensor,
    y: &[u32],
    eps: f64,
    bounded: bool,
    w: Workload,
    repeats: usize,
    warmup_seconds: f64,
    seed: u64,
) -> Result<WorkerReport> {
    let t = time_repeats_warm(repeats, warmup_seconds, |r| {
        run_workload(net, x, y, eps, bounded, w, seed.wrapping_add(r as u64))
    })?;
    let last = t.last;
    Ok(WorkerReport {
        implementation: "rust".into(),
        seconds: t.seconds,
        loss: last.loss,
        robust_error: last.robust_error,
        grad_abs_sum: last.grad_abs_sum,
        idle_rss_bytes: t.idle_rss_bytes,
        peak_rss_above_idle_bytes: t.peak_rss_above_idle_bytes,
    })
}

/// Do two implementations compute the same thing? Exact bounds must agree to `1e-4` relative
/// on the loss and `1e-3` on the gradient mass, with the same robust error. Projected bounds are
/// random on both sides (different generators): `None`, nothing to compare run by run (the
/// projection curve in `docs/PROJECTIONS.md` compares their statistics).
pub fn agree(w: Workload, a: &WorkerReport, b: &WorkerReport) -> Option<bool> {
    let rel = |p: f64, q: f64| (p - q).abs() / p.abs().max(q.abs()).max(1e-12);
    match w.bound {
        BoundKind::Exact => Some(
            rel(a.loss, b.loss) < 1e-4
                && (a.robust_error - b.robust_error).abs() < 1e-9
                && (!w.backward || rel(a.grad_abs_sum, b.grad_abs_sum) < 1e-3),
        ),
        BoundKind::Projected { .. } => None,
    }
}
