//! ReLU splitting for high-dimensional inputs: branch and bound on the signs of unstable
//! pre-activations, over the clause's whole input box.
//!
//! The root computes layer-wise bounds `l ≤ ẑ ≤ u` of every activation's input over the box
//! (the bound family's α-CROWN layer bounds). A domain is a set of split decisions
//! `ẑ_j ≥ 0` or `ẑ_j ≤ 0`; the union of the two children of a split is the parent's set, so the
//! leaves cover the box. A decision is enforced through the layer bounds: `ẑ_j ≥ 0` sets
//! `l_j = 0` (the ReLU is the identity there), `ẑ_j ≤ 0` sets `u_j = 0` (the ReLU is 0). Per
//! domain, the bounds of every activation above the first are then refreshed: CROWN's bounds of
//! its input under the (clamped) relaxations below, intersected with the root's. On the domain's
//! inputs `D = {x ∈ box : the decisions hold}` every relaxation used holds, so each refreshed
//! bound, and the final CROWN bound `lb ≤ min_{x ∈ D} cᵀ f(x)`, is valid — the minimum of the
//! final linear function is taken over the whole box, a superset of `D`. No β multipliers yet:
//! the decisions act only through the layer bounds (β-CROWN adds `β_j · ẑ_j(x)` terms, `β ≥ 0`,
//! to the Lagrangian so the minimiser is pulled into `D`; not implemented).
//!
//! Branching: the bound's gradient with respect to the layer bounds, `g_l = ∂lb/∂l_j` and
//! `g_u = ∂lb/∂u_j` (autograd through the relaxation), gives to first order the gain of each
//! decision, `|g_l|·|l_j|` (setting `l_j = 0`) and `|g_u|·u_j` (setting `u_j = 0`); the unstable
//! unit with the largest smaller gain of its two children is split (both must improve).

use super::domain::margin;
use super::BabStats;
use crate::answer::Answer;
use crate::driver::{check_counterexample, proves_above, ClauseWork};
use crate::falsify::{pgd, PgdConfig, Target};
use candle_core::{DType, Device, Tensor, Var};
use dual_core::bounds::crown::{backward_lower, layer_bounds, Relaxed};
use dual_core::bounds::{spec_bounds, BoundOptions, Method, Net, SlopeRule, Spec};
use dual_core::DualNode;
use dual_layers::{Epsilon, InfBall};
use nets::Network;
use onnx_import::Model;
use rand::rngs::StdRng;
use std::time::{Duration, Instant};
use vnnlib::Property;

/// One split decision: activation `layer` (index into the root's layer bounds), flat `unit`,
/// `active` (`ẑ ≥ 0`) or not (`ẑ ≤ 0`).
type Decision = (usize, usize, bool);

/// A root layer bound: the activation's output index, its shape, `l` and `u` flattened.
type RootLayer = (usize, Vec<usize>, Vec<f64>, Vec<f64>);

/// A domain's bounds per row and the unit to split next.
type Bounded = (Vec<f64>, Option<(usize, usize)>);

struct ReluDomain {
    decisions: Vec<Decision>,
    lb: Vec<f64>,
    margin: f64,
    /// The unit to split next, if any is unstable.
    next: Option<(usize, usize)>,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// ReLU branch and bound on one clause until the deadline.
#[allow(clippy::too_many_arguments)]
pub(crate) fn relu_bab(
    model: &Model,
    prop: &Property,
    net: &Network,
    w: &ClauseWork,
    batch: usize,
    pgd_cfg: &PgdConfig,
    rng: &mut StdRng,
    deadline: Instant,
    progress: Option<Duration>,
    stats: &mut BabStats,
) -> Answer {
    match run(model, prop, net, w, batch, pgd_cfg, rng, deadline, progress, stats) {
        Ok(a) => a,
        Err(e) => Answer::Error(format!("relu split: {e}")),
    }
}

#[allow(clippy::too_many_arguments)]
fn run(
    model: &Model,
    prop: &Property,
    net: &Network,
    w: &ClauseWork,
    batch: usize,
    pgd_cfg: &PgdConfig,
    rng: &mut StdRng,
    deadline: Instant,
    progress: Option<Duration>,
    stats: &mut BabStats,
) -> Result<Answer, String> {
    if w.bound_rows.is_empty() {
        return Ok(Answer::Unknown);
    }
    let start = Instant::now();
    let k = w.lo.len();
    let dev = Device::Cpu;
    let mid: Vec<f64> = w.lo.iter().zip(&w.hi).map(|(l, h)| 0.5 * (l + h)).collect();
    let rad: Vec<f64> =
        w.lo.iter().zip(&w.hi).zip(&mid).map(|((l, h), m)| (h - m).max(m - l) * (1.0 + 4.0 * f64::EPSILON)).collect();
    let (n, m) = (w.bound_rows.len(), w.bound_rows[0].len());
    let rows_flat: Vec<f64> = w.bound_rows.iter().flatten().copied().collect();
    // Root layer bounds (α-CROWN's: IBP ∩ CROWN), flattened per layer.
    let x1 = Tensor::from_vec(mid.clone(), (1, k), &dev).map_err(err)?;
    let r1 = Tensor::from_vec(rad.clone(), (1, k), &dev).map_err(err)?;
    let nodes1 = net.dual_nodes(&x1).map_err(err)?;
    let ball1 = InfBall::new(&x1, Epsilon::Tensor(r1)).map_err(err)?;
    let c1 = Tensor::from_vec(rows_flat.clone(), (1, n, m), &dev).map_err(err)?;
    let root = nets::no_grad(|| {
        let net1 = Net { nodes: &nodes1, x: &x1, input: &ball1 };
        spec_bounds(&net1, &Spec::new(c1.clone())?, Method::AlphaCrown, &BoundOptions::default(), None)
    })
    .map_err(err)?;
    let mut layers: Vec<RootLayer> = Vec::new();
    for lb in &root.layers {
        let shape = lb.lower.dims()[1..].to_vec();
        let l = lb.lower.to_dtype(DType::F64).and_then(|t| t.flatten_all()?.to_vec1::<f64>()).map_err(err)?;
        let u = lb.upper.to_dtype(DType::F64).and_then(|t| t.flatten_all()?.to_vec1::<f64>()).map_err(err)?;
        layers.push((lb.layer, shape, l, u));
    }
    let shapes: Vec<Vec<usize>> = net.forward_all(&x1).map_err(err)?.iter().map(|o| o.dims()[1..].to_vec()).collect();
    let root_lb = root.lower.to_dtype(DType::F64).and_then(|t| t.to_vec2::<f64>()).map_err(err)?.remove(0);
    stats.bounded += 1;
    if root_lb.iter().zip(&w.bound_rhs).any(|(l, r)| proves_above(*l, *r)) {
        stats.proved += 1;
        return Ok(Answer::Unsat);
    }

    // Bounds of a batch of domains: CROWN's backward pass on the clamped layer bounds, and the
    // next unit to split of each.
    let bound = |doms: &[Vec<Decision>]| -> Result<Vec<Bounded>, String> {
        let b = doms.len();
        let xb = x1.broadcast_as((b, k)).and_then(|t| t.contiguous()).map_err(err)?;
        let rb = Tensor::from_vec(rad.repeat(b), (b, k), &dev).map_err(err)?;
        let nodes = net.dual_nodes(&xb).map_err(err)?;
        let ball = InfBall::new(&xb, Epsilon::Tensor(rb)).map_err(err)?;
        let netb = Net { nodes: &nodes, x: &xb, input: &ball };
        // Layer bounds per domain: the root's, clamped by the decisions and, above the first
        // activation, intersected with CROWN's bounds under the relaxations below (plain
        // tensors: no gradient is taken through this refresh).
        let mut plain: Relaxed = (0..=nodes.len()).map(|_| None).collect();
        let mut clamped: Vec<(Vec<f64>, Vec<f64>)> = Vec::new();
        for (li, (t, shape, l, u)) in layers.iter().enumerate() {
            let (mut lv, mut uv) = (l.repeat(b), u.repeat(b));
            let size = l.len();
            let mut s = vec![b];
            s.extend_from_slice(shape);
            if li > 0 {
                let units: Vec<usize> =
                    (0..size).filter(|&j| (0..b).any(|d| lv[d * size + j] < 0.0 && uv[d * size + j] > 0.0)).collect();
                if !units.is_empty() {
                    let (lc, uc) = layer_bounds(&netb, &plain, &shapes, t - 1, &units, 1 << 28).map_err(err)?;
                    let lc = lc.to_dtype(DType::F64).and_then(|t| t.to_vec2::<f64>()).map_err(err)?;
                    let uc = uc.to_dtype(DType::F64).and_then(|t| t.to_vec2::<f64>()).map_err(err)?;
                    for d in 0..b {
                        for (r, &j) in units.iter().enumerate() {
                            let i = d * size + j;
                            if lc[d][r].is_finite() {
                                lv[i] = lv[i].max(lc[d][r]);
                            }
                            if uc[d][r].is_finite() {
                                uv[i] = uv[i].min(uc[d][r]);
                            }
                        }
                    }
                }
            }
            for (d, dec) in doms.iter().enumerate() {
                for &(_, unit, active) in dec.iter().filter(|x| x.0 == li) {
                    if active {
                        lv[d * size + unit] = lv[d * size + unit].max(0.0);
                    } else {
                        uv[d * size + unit] = uv[d * size + unit].min(0.0);
                    }
                }
            }
            // A domain whose bounds cross (l > u) is empty; keep l ≤ u so the relaxation is
            // defined (the bound of an empty set may be anything, and is still ≤ its minimum).
            for i in 0..lv.len() {
                if lv[i] > uv[i] {
                    uv[i] = lv[i];
                }
            }
            let DualNode::Activation(act) = &nodes[t - 1] else {
                return Err(format!("layer {t} is not an activation"));
            };
            let lt = Tensor::from_vec(lv.clone(), s.clone(), &dev).map_err(err)?;
            let ut = Tensor::from_vec(uv.clone(), s, &dev).map_err(err)?;
            plain[*t] = Some(act.linear_relax(&lt, &ut, SlopeRule::Adaptive).map_err(err)?);
            clamped.push((lv, uv));
        }
        let mut relax: Relaxed = (0..=nodes.len()).map(|_| None).collect();
        let mut vars = Vec::new();
        for ((t, shape, _, _), (lv, uv)) in layers.iter().zip(&clamped) {
            let mut s = vec![b];
            s.extend_from_slice(shape);
            let lt = Var::from_tensor(&Tensor::from_vec(lv.clone(), s.clone(), &dev).map_err(err)?).map_err(err)?;
            let ut = Var::from_tensor(&Tensor::from_vec(uv.clone(), s, &dev).map_err(err)?).map_err(err)?;
            let DualNode::Activation(act) = &nodes[t - 1] else {
                return Err(format!("layer {t} is not an activation"));
            };
            relax[*t] = Some(act.linear_relax(lt.as_tensor(), ut.as_tensor(), SlopeRule::Adaptive).map_err(err)?);
            vars.push((lt, ut));
        }
        let c = Tensor::from_vec(rows_flat.repeat(b), (b, n, m), &dev).map_err(err)?;
        let lb = backward_lower(&netb, &relax, nodes.len(), c).map_err(err)?;
        let vals = lb.to_dtype(DType::F64).and_then(|t| t.to_vec2::<f64>()).map_err(err)?;
        // Gradient of each domain's best row.
        let mut mask = vec![0f64; b * n];
        for (i, v) in vals.iter().enumerate() {
            let best = (0..n).max_by(|&p, &q| (v[p] - w.bound_rhs[p]).total_cmp(&(v[q] - w.bound_rhs[q]))).unwrap_or(0);
            mask[i * n + best] = 1.0;
        }
        let mask = Tensor::from_vec(mask, (b, n), &dev).and_then(|mk| mk.to_dtype(lb.dtype())).map_err(err)?;
        let grads = (lb * mask).and_then(|t| t.sum_all()?.backward()).map_err(err)?;
        let mut best: Vec<(f64, Option<(usize, usize)>)> = vec![(f64::NEG_INFINITY, None); b];
        for (li, ((lt, ut), (lv, uv))) in vars.iter().zip(&clamped).enumerate() {
            let gl = grads.get(lt.as_tensor()).map(|g| g.to_dtype(DType::F64).and_then(|g| g.flatten_all()?.to_vec1()));
            let gu = grads.get(ut.as_tensor()).map(|g| g.to_dtype(DType::F64).and_then(|g| g.flatten_all()?.to_vec1()));
            let gl: Vec<f64> = gl.transpose().map_err(err)?.unwrap_or_else(|| vec![0.0; lv.len()]);
            let gu: Vec<f64> = gu.transpose().map_err(err)?.unwrap_or_else(|| vec![0.0; uv.len()]);
            let size = lv.len() / b;
            for (d, best_d) in best.iter_mut().enumerate() {
                for j in 0..size {
                    let i = d * size + j;
                    let (l, u) = (lv[i], uv[i]);
                    if !(l < 0.0 && u > 0.0) {
                        continue;
                    }
                    // Both children should gain; a tiny width term breaks ties among zero gradients.
                    let gain = (gl[i].abs() * -l).min(gu[i].abs() * u) + 1e-9 * (u * -l / (u - l));
                    if gain > best_d.0 {
                        *best_d = (gain, Some((li, j)));
                    }
                }
            }
        }
        Ok(vals.into_iter().zip(best.into_iter().map(|b| b.1)).collect())
    };

    let mut root_dom = bound(&[vec![]])?;
    let (lb0, next0) = root_dom.remove(0);
    let lb0: Vec<f64> = lb0.iter().zip(&root_lb).map(|(a, b)| a.max(*b)).collect();
    let mut queue = vec![ReluDomain { margin: margin(&lb0, &w.bound_rhs), lb: lb0, decisions: vec![], next: next0 }];
    let mut last = Instant::now();
    let mut exhausted = false;
    while !queue.is_empty() {
        if Instant::now() > deadline {
            stats.open += queue.len();
            return Ok(Answer::Timeout);
        }
        stats.rounds += 1;
        // Worst margin first.
        queue.sort_by(|a, b| b.margin.total_cmp(&a.margin));
        let take = batch.max(1).min(queue.len());
        let parents: Vec<ReluDomain> = queue.split_off(queue.len() - take);
        let mut children = Vec::new();
        let mut child_parent = Vec::new();
        for (pi, p) in parents.iter().enumerate() {
            let Some((li, j)) = p.next else {
                // No unstable unit left and not proved: the relaxation is exact on the split
                // pattern but the box is larger than the domain; give up on this one.
                exhausted = true;
                continue;
            };
            for active in [true, false] {
                let mut d = p.decisions.clone();
                d.push((li, j, active));
                children.push(d);
                child_parent.push(pi);
            }
        }
        if children.is_empty() {
            continue;
        }
        let res = bound(&children)?;
        stats.bounded += children.len();
        for ((dec, (lb, next)), pi) in children.into_iter().zip(res).zip(child_parent) {
            let lb: Vec<f64> = lb.iter().zip(&parents[pi].lb).map(|(a, b)| a.max(*b)).collect();
            if lb.iter().zip(&w.bound_rhs).any(|(l, r)| proves_above(*l, *r)) {
                stats.proved += 1;
                continue;
            }
            queue.push(ReluDomain { margin: margin(&lb, &w.bound_rhs), lb, decisions: dec, next });
        }
        if stats.rounds.is_multiple_of(10) && !w.rows.is_empty() {
            let t = Target { lo: &w.lo, hi: &w.hi, rows: &w.rows, rhs: &w.rhs };
            let cands = pgd(net, &t, pgd_cfg, rng, deadline).unwrap_or_default();
            if let Some(a) = cands.iter().find_map(|x| check_counterexample(model, prop, x, &w.lo, &w.hi)) {
                return Ok(a);
            }
        }
        if let Some(every) = progress {
            if last.elapsed() >= every {
                last = Instant::now();
                eprintln!(
                    "  relu bab {:.1} s: {} open, {} proved, {} bounded, worst margin {:.4e}",
                    start.elapsed().as_secs_f64(),
                    queue.len(),
                    stats.proved,
                    stats.bounded,
                    queue.iter().map(|d| d.margin).fold(f64::INFINITY, f64::min)
                );
            }
        }
    }
    Ok(if exhausted { Answer::Unknown } else { Answer::Unsat })
}
