//! The verification of one instance: falsify, then bound, then (on small inputs) split the box.
//!
//! * **Falsify**: the box's centre, then PGD from several starts per clause on the lowered
//!   network (random samples where the graph does not lower). A point is reported only if the
//!   graph's own f64 forward pass puts it in the unsafe set (every inequality of a clause,
//!   input constraints included) — [`check_counterexample`].
//! * **Bound**: for each clause, lower bounds of its output rows `cᵀy` over the clause's box
//!   from a [`BoundMethod`]. A clause is unreachable when one of its inequalities `cᵀy ≤ r` has
//!   `lb(cᵀy) > r` (beyond a rounding margin); the property is `unsat` when every clause is.
//! * **Split** (inputs of at most `split_max_inputs` features): boxes whose clause is not yet
//!   unreachable are halved along their widest feature (relative to the original box), each
//!   half bounded again, their centres checked as counterexamples, until all are unreachable or
//!   the time runs out.

use crate::answer::Answer;
use crate::bab::relu_split::{relu_bab, ReluRun};
use crate::bab::{BabOptions, BabStats, InputBab};
use crate::bounds::BoundMethod;
use crate::falsify::{output_rows, pgd, samples, PgdConfig, Target};
use nets::Network;
use onnx_import::Model;
use rand::{rngs::StdRng, SeedableRng};
use std::time::{Duration, Instant};
use vnnlib::Property;

/// Settings of one verification.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Wall-clock limit.
    pub timeout: Duration,
    /// Seed of the random starts.
    pub seed: u64,
    /// PGD settings.
    pub pgd: PgdConfig,
    /// Split boxes of inputs with at most this many features (0: never split).
    pub split_max_inputs: usize,
    /// `--sound`: a counterexample is reported only when the graph's f64 forward pass and the
    /// network in f32 both confirm it on one f32 point of the box
    /// ([`crate::confirm_counterexample`]).
    pub sound: bool,
    /// Branch and bound settings (input splitting).
    pub bab: BabOptions,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            timeout: Duration::from_secs(60),
            seed: 0,
            pgd: PgdConfig::default(),
            split_max_inputs: 16,
            sound: false,
            bab: BabOptions::default(),
        }
    }
}

/// `lb > r` with a margin for f64 rounding in the bound and in the lowered weights (each
/// ~1e-16 relative per operation; 1e-9 relative leaves several orders of magnitude).
pub fn proves_above(lb: f64, r: f64) -> bool {
    lb.is_finite() && lb > r + 1e-9 * (1.0 + r.abs() + lb.abs())
}

/// Checks a candidate with the graph's f64 forward pass: clipped into the clause's box, is
/// `(x, f(x))` in the unsafe set? Returns the answer to report if so.
pub fn check_counterexample(model: &Model, prop: &Property, x: &[f64], lo: &[f64], hi: &[f64]) -> Option<Answer> {
    let x: Vec<f64> = x.iter().zip(lo.iter().zip(hi)).map(|(v, (l, h))| v.clamp(*l, *h)).collect();
    let y = model.forward(&x).ok()?;
    prop.violated_by(&x, &y).map(|_| Answer::Sat { x, y })
}

/// [`check_counterexample`], or with `sound` [`crate::confirm_counterexample`].
pub(crate) fn confirm(
    model: &Model,
    net: Option<&Network>,
    prop: &Property,
    x: &[f64],
    lo: &[f64],
    hi: &[f64],
    sound: bool,
) -> Option<Answer> {
    if sound {
        crate::confirm_counterexample(model, net, prop, x, lo, hi)
    } else {
        check_counterexample(model, prop, x, lo, hi)
    }
}

/// One clause of the property, ready to bound: its box, its output rows `cᵀy ≤ r`.
pub(crate) struct ClauseWork {
    /// Rows used for bounds: the clause's output rows and, for two or more, their sum.
    pub(crate) bound_rows: Vec<Vec<f64>>,
    /// Right-hand sides of `bound_rows`.
    pub(crate) bound_rhs: Vec<f64>,
    /// Lower corner of the clause's box.
    pub(crate) lo: Vec<f64>,
    /// Upper corner of the clause's box.
    pub(crate) hi: Vec<f64>,
    /// The clause's output rows (for PGD).
    pub(crate) rows: Vec<Vec<f64>>,
    /// Their right-hand sides.
    pub(crate) rhs: Vec<f64>,
}

/// Verifies `prop` on `model` with the bound `method`.
pub fn verify(model: &Model, prop: &Property, method: &dyn BoundMethod, opts: &VerifyOptions) -> Answer {
    let start = Instant::now();
    let net = model.to_network("onnx", &candle_core::Device::Cpu).ok();
    let opts = VerifyOptions { timeout: opts.timeout.saturating_sub(start.elapsed()), ..opts.clone() };
    verify_lowered(model, net.as_ref(), prop, method, &opts)
}

/// [`verify`], and what branch and bound did (summed over the clauses it ran on).
pub fn verify_with_stats(
    model: &Model,
    prop: &Property,
    method: &dyn BoundMethod,
    opts: &VerifyOptions,
) -> (Answer, BabStats) {
    let start = Instant::now();
    let net = model.to_network("onnx", &candle_core::Device::Cpu).ok();
    let opts = VerifyOptions { timeout: opts.timeout.saturating_sub(start.elapsed()), ..opts.clone() };
    let mut stats = BabStats::default();
    let a = on_worker(|| verify_inner(model, net.as_ref(), prop, method, &opts, &mut stats));
    (a, stats)
}

/// [`verify`] with the model's network already lowered (`None`: the graph has no chain form,
/// so only falsification runs).
pub fn verify_lowered(
    model: &Model,
    net: Option<&Network>,
    prop: &Property,
    method: &dyn BoundMethod,
    opts: &VerifyOptions,
) -> Answer {
    on_worker(|| verify_inner(model, net, prop, method, opts, &mut BabStats::default()))
}

/// Runs `f` on a worker thread of rayon's pool: every parallel pass of the bounds (rayon's
/// `par_iter`, the kernels, Candle's ops with `CANDLE_NUM_THREADS=1`) then starts where it is
/// called, instead of handing its work to the pool and sleeping until it is done — on one
/// thread two context switches per pass. Measured on mnistfc `256x4`/prop 9 (0.03), one thread:
/// 31.7k–32.1k → 35.5k–37.0k domains bounded in the first 20.5 s of ReLU splitting.
fn on_worker<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    rayon::scope(|_| f())
}

fn verify_inner(
    model: &Model,
    net: Option<&Network>,
    prop: &Property,
    method: &dyn BoundMethod,
    opts: &VerifyOptions,
    stats: &mut BabStats,
) -> Answer {
    let start = Instant::now();
    let deadline = start + opts.timeout;
    if prop.num_inputs != model.input_len() || prop.num_outputs != model.output_len() {
        return Answer::Error(format!(
            "the property has {} inputs and {} outputs, the network {} and {}",
            prop.num_inputs,
            prop.num_outputs,
            model.input_len(),
            model.output_len()
        ));
    }
    let mut rng = StdRng::seed_from_u64(opts.seed);
    // Each clause with its box; empty boxes are unreachable and dropped.
    let mut work = Vec::new();
    for (k, clause) in prop.clauses.iter().enumerate() {
        let (lo, hi) = clause.input_box(prop.num_inputs);
        // An empty box, or a constant inequality that is false (`0 ≤ r` with `r < 0`): unreachable.
        let false_constant = clause.constraints.iter().any(|c| c.x.is_empty() && c.y.is_empty() && !c.holds(&[], &[]));
        if false_constant || lo.iter().zip(&hi).any(|(l, h)| l > h) {
            continue;
        }
        if let Some(i) = (0..lo.len()).find(|&i| !lo[i].is_finite() || !hi[i].is_finite()) {
            return Answer::Error(format!("clause {k}: X_{i} is not bounded on both sides"));
        }
        let (rows, rhs) = output_rows(clause, prop.num_outputs);
        work.push(ClauseWork { lo, hi, rows, rhs, bound_rows: vec![], bound_rhs: vec![] });
        let w = work.last_mut().expect("just pushed");
        // For bounds only: the sum of a conjunction's inequalities, `Σ c_k·y ≤ Σ r_k`, holds
        // wherever they all hold, so a lower bound above `Σ r_k` also makes the clause
        // unreachable (often where no single row does).
        if w.rows.len() > 1 {
            let sum: Vec<f64> = (0..prop.num_outputs).map(|j| w.rows.iter().map(|r| r[j]).sum()).collect();
            w.bound_rows = w.rows.iter().cloned().chain(std::iter::once(sum)).collect();
            w.bound_rhs = w.rhs.iter().copied().chain(std::iter::once(w.rhs.iter().sum())).collect();
        } else {
            (w.bound_rows, w.bound_rhs) = (w.rows.clone(), w.rhs.clone());
        }
    }
    if work.is_empty() {
        return Answer::Unsat;
    }
    // 1. Falsify: centres and a first PGD round.
    for w in &work {
        if let Some(a) = falsify_once(model, prop, net, w, opts, &mut rng, deadline) {
            return a;
        }
        if Instant::now() > deadline {
            return Answer::Timeout;
        }
    }
    let Some(net) = net else { return Answer::Unknown };

    // 2. Bound each clause over its whole box.
    let mut open = Vec::new();
    let mut root_margin = vec![f64::NEG_INFINITY; work.len()];
    for (i, w) in work.iter().enumerate() {
        match root_bound(net, method, w) {
            Ok((true, _)) => {}
            Ok((false, m)) => {
                open.push(i);
                root_margin[i] = m;
            }
            Err(e) => return Answer::Error(format!("bound ({}): {e}", method.name())),
        }
        if Instant::now() > deadline {
            return Answer::Timeout;
        }
    }
    if open.is_empty() {
        return Answer::Unsat;
    }

    // 3. Branch and bound on small input boxes (clause by clause: all must be unreachable);
    //    otherwise keep falsifying until the time runs out.
    if prop.num_inputs <= opts.split_max_inputs {
        let stages = method.stages(prop.num_inputs).unwrap_or_else(|| vec![(method, 1.0)]);
        'clauses: for &i in &open {
            // Each stage goes on from the open domains the one before left.
            let mut carry = None;
            for (k, &(m, share)) in stages.iter().enumerate() {
                let bab = InputBab { model, prop, net, method: m, opts: &opts.bab, pgd: &opts.pgd, sound: opts.sound };
                let now = Instant::now();
                let stop = if k + 1 == stages.len() {
                    deadline
                } else {
                    now + deadline.saturating_duration_since(now).mul_f64(share.clamp(0.0, 1.0))
                };
                match bab.run(&work[i], stop, stats, &mut carry) {
                    Answer::Unsat => continue 'clauses,
                    Answer::Timeout if k + 1 < stages.len() => {}
                    a => return a,
                }
            }
        }
        return Answer::Unsat;
    }
    // ReLU splitting bounds in f32 without charging rounding: never under `--sound`.
    if opts.bab.relu_split && !opts.sound {
        if opts.bab.progress.is_some() {
            let m: Vec<String> = open.iter().map(|&i| format!("{i}: {:.3e}", root_margin[i])).collect();
            eprintln!(
                "  relu split: {} of {} clauses open after the root bound (margins {})",
                open.len(),
                work.len(),
                m.join(", ")
            );
        }
        // Worst root margin first: a clause with a counterexample is among the hardest to prove,
        // and an unsat answer needs every tree anyway.
        open.sort_by(|&a, &b| root_margin[a].total_cmp(&root_margin[b]));
        // Clauses over the same box share one tree (one root, one set of domains).
        let mut trees: Vec<Vec<&ClauseWork>> = Vec::new();
        for &i in &open {
            let w = &work[i];
            let shared = trees.iter_mut().find(|t| opts.bab.relu_one_tree && t[0].lo == w.lo && t[0].hi == w.hi);
            match shared {
                Some(t) => t.push(w),
                None => trees.push(vec![w]),
            }
        }
        let mut all = true;
        let root_cache = std::cell::RefCell::new(None);
        let ro = ReluRun {
            batch: opts.bab.relu_batch,
            beta: &opts.bab.beta,
            pgd: &opts.pgd,
            progress: opts.bab.progress,
            root_cache: &root_cache,
        };
        for ws in &trees {
            let a = relu_bab(model, prop, net, ws, &ro, &mut rng, deadline, stats);
            match a {
                Answer::Unsat => {}
                Answer::Unknown => all = false,
                a => return a,
            }
        }
        if all {
            return Answer::Unsat;
        }
    }
    while Instant::now() < deadline {
        for &i in &open {
            if let Some(a) = falsify_once(model, prop, Some(net), &work[i], opts, &mut rng, deadline) {
                return a;
            }
        }
    }
    Answer::Timeout
}

fn falsify_once(
    model: &Model,
    prop: &Property,
    net: Option<&Network>,
    w: &ClauseWork,
    opts: &VerifyOptions,
    rng: &mut StdRng,
    deadline: Instant,
) -> Option<Answer> {
    let cands = match net {
        Some(net) if !w.rows.is_empty() => {
            pgd(net, &Target { lo: &w.lo, hi: &w.hi, rows: &w.rows, rhs: &w.rhs }, &opts.pgd, rng, deadline)
                .unwrap_or_default()
        }
        _ => samples(&w.lo, &w.hi, opts.pgd.starts, rng),
    };
    let centre: Vec<f64> = w.lo.iter().zip(&w.hi).map(|(l, h)| 0.5 * (l + h)).collect();
    std::iter::once(centre).chain(cands).find_map(|x| confirm(model, net, prop, &x, &w.lo, &w.hi, opts.sound))
}

/// Is the clause unreachable on its whole box, and its margin there (`max_k lb_k − r_k`, −∞
/// without rows)?
fn root_bound(net: &Network, method: &dyn BoundMethod, w: &ClauseWork) -> Result<(bool, f64), String> {
    if w.bound_rows.is_empty() {
        return Ok((false, f64::NEG_INFINITY));
    }
    let lb = method.lower_bounds(net, &[(w.lo.clone(), w.hi.clone())], &w.bound_rows)?.remove(0);
    let proved = lb.iter().zip(&w.bound_rhs).any(|(l, r)| proves_above(*l, *r));
    Ok((proved, crate::bab::domain::margin(&lb, &w.bound_rhs)))
}
