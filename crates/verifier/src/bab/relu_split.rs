//! ReLU splitting for high-dimensional inputs: branch and bound on the signs of unstable
//! pre-activations, over the clause's whole input box, with β-CROWN's bounds.
//!
//! The root computes layer-wise bounds `l ≤ ẑ ≤ u` of every activation's input over the box
//! (the bound family's α-CROWN layer bounds). A domain is a set of split decisions
//! `ẑ_j ≥ 0` or `ẑ_j ≤ 0`; the union of the two children of a split is the parent's set, so the
//! leaves cover the box, and the answer is `unsat` only when every leaf is proved (some row's
//! lower bound above its right-hand side). Each round pops the worst domains (lowest margin),
//! splits each on the unit its bound's gradient scores best, and bounds all children in one
//! batch with [`super::beta::DomainBounder`]: the decisions clamp the inherited layer bounds
//! (optionally the layers above the new decision are refreshed), and α (lower slopes) and β (multipliers of
//! the split constraints `s_j ẑ_j ≤ 0`, Wang et al. 2021) are optimised jointly by projected
//! Adam; any `α ∈ [0, 1]`, `β ≥ 0` gives a valid bound on the domain's set, so every iterate
//! is sound. Children start from the parent's α and β (a new decision's β from 0), and keep
//! the larger of their bound and the parent's per row (the parent's holds on the child's set).
//!
//! Deadlines: a round takes only the domains that fit the time left
//! ([`super::clock::RoundClock`]) and the bound call checks the clock between its layers and
//! iterations, so a run stops close to its deadline.

use super::beta::{BetaOptions, Decision, DomainBounder, LayerBox, Pending};
use super::clock::RoundClock;
use super::domain::{keep_larger, margin};
use super::leaf_lp::leaf_point;
use super::refine::refine_layers;
use super::BabStats;
use crate::answer::Answer;
use crate::dense_dual::DenseChain;
use crate::driver::{check_counterexample, proves_above, ClauseWork};
use crate::falsify::{pgd, PgdConfig, Target};
use candle_core::{DType, Device, Tensor};
use dual_core::bounds::{spec_bounds, BoundOptions, Method, Net, Spec};
use dual_layers::{Epsilon, InfBall};
use nets::Network;
use onnx_import::Model;
use rand::rngs::StdRng;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};
use vnnlib::Property;

/// Open domains beyond which children no longer keep their own α (memory: `rows × units`
/// numbers each); they then start from CROWN's slopes.
const KEEP_ALPHA_UP_TO: usize = 8192;

/// The share of the time left at the root that refining the layer bounds may take.
const REFINE_SHARE: f64 = 0.5;

/// Open domains per round whose primal point the graph checks when the network is not a dense
/// chain (a dense chain screens every one with its own forward pass).
const PRIMAL_CHECKS_WITHOUT_CHAIN: usize = 4;

struct ReluDomain {
    decisions: Vec<Decision>,
    beta: Vec<f32>,
    alpha: Option<Rc<Vec<Vec<f32>>>>,
    bounds: Rc<LayerBox>,
    lb: Vec<f64>,
    margin: f64,
    /// The units to split next, best score first (empty: none is unstable).
    candidates: Vec<(usize, usize)>,
    /// Times the domain was bounded again without a unit left to split.
    retries: usize,
}

/// Re-optimisations of a domain with no unstable unit left (each with
/// `RETRY_FACTOR × iterations` Adam steps) before it counts as undecided.
const RETRIES: usize = 3;
const RETRY_FACTOR: usize = 5;

/// A unit: activation index and flat unit index.
type Unit = (usize, usize);

/// The two children of splitting `p` on unit `(li, j)`: `ẑ_j ≥ 0` first, then `ẑ_j ≤ 0`, each
/// with the parent's α and β (the new decision's β 0 for each of the `n` rows).
fn children_of(p: &ReluDomain, unit: (usize, usize), n: usize) -> [Pending; 2] {
    Pending::children(&p.decisions, &p.beta, p.alpha.as_ref(), &p.bounds, unit, n)
}

/// The unit each parent is split on: its best-scored candidate, or with several candidates the
/// one whose worse child has the best margin under one un-optimised bound of every candidate's
/// children (filtered smart branching). `None` past the deadline.
fn choose_splits(
    bounder: &DomainBounder<'_>,
    tree: &Tree,
    parents: &[ReluDomain],
    n: usize,
    deadline: Instant,
) -> Result<Option<Vec<Option<Unit>>>, String> {
    let mut chosen: Vec<Option<Unit>> = parents.iter().map(|p| p.candidates.first().copied()).collect();
    let mut probes = Vec::new();
    let mut owner = Vec::new();
    for (pi, p) in parents.iter().enumerate() {
        if p.candidates.len() < 2 {
            continue;
        }
        for &c in &p.candidates {
            probes.extend(children_of(p, c, n));
            owner.push((pi, c));
        }
    }
    if probes.is_empty() {
        return Ok(Some(chosen));
    }
    let Some(lbs) = bounder.probe(&probes, deadline)? else { return Ok(None) };
    let mut best: Vec<f64> = vec![f64::NEG_INFINITY; parents.len()];
    for (k, &(pi, c)) in owner.iter().enumerate() {
        let parent = &parents[pi].lb;
        let worse =
            lbs[2 * k..2 * k + 2].iter().map(|lb| tree.margin(&keep_larger(lb, parent))).fold(f64::INFINITY, f64::min);
        if worse > best[pi] {
            best[pi] = worse;
            chosen[pi] = Some(c);
        }
    }
    Ok(Some(chosen))
}

/// A box's corners and the root's layer bounds on it.
pub(crate) type RootCache = (Vec<f64>, Vec<f64>, Rc<LayerBox>);

/// Settings of one ReLU-splitting run.
#[derive(Debug, Clone)]
pub(crate) struct ReluRun<'a> {
    /// Domains split per round (at most).
    pub batch: usize,
    /// β-CROWN's settings.
    pub beta: &'a BetaOptions,
    /// PGD every ten rounds.
    pub pgd: &'a PgdConfig,
    /// Progress lines.
    pub progress: Option<Duration>,
    /// The root's layer bounds of the last box seen (`lo`, `hi`, bounds): they depend on the
    /// box only, so clauses over the same box compute them once.
    pub root_cache: &'a RefCell<Option<RootCache>>,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// ReLU branch and bound on the clauses `ws` (all over the same box) in one tree until the
/// deadline: a domain is closed when every clause has a row proved on it, so the answer is
/// `unsat` only when each clause is unreachable on every leaf.
#[allow(clippy::too_many_arguments)]
pub(crate) fn relu_bab(
    model: &Model,
    prop: &Property,
    net: &Network,
    ws: &[&ClauseWork],
    run_opts: &ReluRun<'_>,
    rng: &mut StdRng,
    deadline: Instant,
    stats: &mut BabStats,
) -> Answer {
    match run(model, prop, net, ws, run_opts, rng, deadline, stats) {
        Ok(a) => a,
        Err(e) => Answer::Error(format!("relu split: {e}")),
    }
}

/// The α-CROWN bound of `rows` over `[lo, hi]` and its layer bounds (flattened, per
/// activation), tightened by [`refine_layers`] (α with `opts.layer_alpha > 0`, trees with
/// `opts.refine_layers > 0`).
fn root_bounds(
    net: &Network,
    lo: &[f64],
    hi: &[f64],
    rows: &[Vec<f64>],
    opts: &BetaOptions,
    deadline: Instant,
    progress: bool,
) -> Result<(Vec<f64>, LayerBox), String> {
    let k = lo.len();
    let dev = Device::Cpu;
    let (mid, rad) = crate::bounds::box_ball(lo, hi);
    let (n, m) = (rows.len(), rows[0].len());
    let x1 = Tensor::from_vec(mid, (1, k), &dev).map_err(err)?;
    let r1 = Tensor::from_vec(rad, (1, k), &dev).map_err(err)?;
    let nodes1 = nets::no_grad(|| net.dual_nodes(&x1)).map_err(err)?;
    let ball1 = InfBall::new(&x1, Epsilon::Tensor(r1)).map_err(err)?;
    let c1 = Tensor::from_vec(rows.iter().flatten().copied().collect(), (1, n, m), &dev).map_err(err)?;
    let root = nets::no_grad(|| {
        let net1 = Net { nodes: &nodes1, x: &x1, input: &ball1 };
        spec_bounds(&net1, &Spec::new(c1.clone())?, Method::AlphaCrown, &BoundOptions::default(), None)
    })
    .map_err(err)?;
    let mut layers = Vec::new();
    for lb in &root.layers {
        let l = lb.lower.to_dtype(DType::F64).and_then(|t| t.flatten_all()?.to_vec1::<f64>()).map_err(err)?;
        let u = lb.upper.to_dtype(DType::F64).and_then(|t| t.flatten_all()?.to_vec1::<f64>()).map_err(err)?;
        layers.push((l, u));
    }
    let lb = root.lower.to_dtype(DType::F64).and_then(|t| t.to_vec2::<f64>()).map_err(err)?.remove(0);
    if opts.layer_alpha > 0 || opts.refine_layers > 0 {
        let t0 = Instant::now();
        // Trees take at most half the time left: they tighten the start, the main tree proves.
        let until = match opts.refine_layers {
            0 => deadline,
            _ => t0 + deadline.saturating_duration_since(t0).mul_f64(REFINE_SHARE),
        };
        let st = refine_layers(net, lo, hi, &mut layers, opts, until, progress)?;
        if progress {
            eprintln!(
                "  relu root: layer α and trees ({} trees, {} domains) in {:.2} s, unstable units per activation {:?} -> {:?}",
                st.trees,
                st.domains,
                t0.elapsed().as_secs_f64(),
                st.unstable_before,
                st.unstable_after
            );
        }
    }
    Ok((lb, layers))
}

/// The layer bounds (flattened, per activation) the root of ReLU splitting starts from on
/// `[lo, hi]` with the rows `rows`: α-CROWN's (CROWN ∩ IBP), with `opts.layer_alpha > 0`
/// tightened by [`refine_layers`]. For tests: they must contain every pre-activation on the box.
pub fn relu_root_layers(
    net: &Network,
    lo: &[f64],
    hi: &[f64],
    rows: &[Vec<f64>],
    opts: &BetaOptions,
) -> Result<LayerBox, String> {
    if rows.is_empty() || lo.len() != hi.len() {
        return Err(format!("{} rows on a box of {} / {} features", rows.len(), lo.len(), hi.len()));
    }
    let far = Instant::now() + Duration::from_secs(3600);
    Ok(root_bounds(net, lo, hi, rows, opts, far, false)?.1)
}

/// The bound of `rows` on the domain `{x ∈ [lo, hi] : the decisions hold}` (β-CROWN with
/// `opts`, from the root's α-CROWN layer bounds; with `opts.refresh`, every activation above
/// the lowest decision refreshed). For tests and experiments: the bound must be `≤ min cᵀ f(x)` over the domain.
pub fn relu_domain_bound(
    net: &Network,
    lo: &[f64],
    hi: &[f64],
    rows: &[Vec<f64>],
    decisions: &[Decision],
    opts: &BetaOptions,
) -> Result<Vec<f64>, String> {
    if rows.is_empty() || lo.len() != hi.len() {
        return Err(format!("{} rows on a box of {} / {} features", rows.len(), lo.len(), hi.len()));
    }
    let far = Instant::now() + Duration::from_secs(3600);
    let (_, layers) = root_bounds(net, lo, hi, rows, opts, far, false)?;
    for &(li, unit, _) in decisions {
        match layers.get(li) {
            Some((l, _)) if unit < l.len() => {}
            _ => return Err(format!("decision on activation {li}, unit {unit}: no such unit")),
        }
    }
    let bounder = DomainBounder::new(net, lo, hi, rows, &vec![0.0; rows.len()], opts.clone())?;
    let pending = Pending {
        decisions: decisions.to_vec(),
        beta: vec![0.0; decisions.len() * rows.len()],
        alpha: None,
        bounds: Rc::new(layers),
        refresh_above: decisions.iter().map(|d| d.0).min().unwrap_or(usize::MAX),
    };
    let res = bounder.bound(&[pending], opts.iterations, far)?.ok_or("deadline")?;
    Ok(res[0].lb.clone())
}

/// The rows of several clauses in one tree: their bound rows stacked, with the range of each
/// clause's rows.
struct Tree {
    rows: Vec<Vec<f64>>,
    rhs: Vec<f64>,
    groups: Vec<std::ops::Range<usize>>,
}

impl Tree {
    fn new(ws: &[&ClauseWork]) -> Self {
        let mut t = Tree { rows: vec![], rhs: vec![], groups: vec![] };
        for w in ws {
            let s = t.rows.len();
            t.rows.extend(w.bound_rows.iter().cloned());
            t.rhs.extend(&w.bound_rhs);
            t.groups.push(s..t.rows.len());
        }
        t
    }

    /// Every clause has a row whose lower bound proves it unreachable.
    fn closed(&self, lb: &[f64]) -> bool {
        self.groups.iter().all(|g| g.clone().any(|r| proves_above(lb[r], self.rhs[r])))
    }

    /// The lowest clause margin (each clause's `max_k (lb_k − r_k)`): the domain stays open while ≤ 0.
    fn margin(&self, lb: &[f64]) -> f64 {
        self.groups.iter().map(|g| margin(&lb[g.clone()], &self.rhs[g.clone()])).fold(f64::INFINITY, f64::min)
    }
}

#[allow(clippy::too_many_arguments)]
fn run(
    model: &Model,
    prop: &Property,
    net: &Network,
    ws: &[&ClauseWork],
    ro: &ReluRun<'_>,
    rng: &mut StdRng,
    deadline: Instant,
    stats: &mut BabStats,
) -> Result<Answer, String> {
    let Some(w) = ws.first() else { return Ok(Answer::Unsat) };
    if ws.iter().any(|c| c.bound_rows.is_empty() || c.lo != w.lo || c.hi != w.hi) {
        return Ok(Answer::Unknown);
    }
    let tree = Tree::new(ws);
    let start = Instant::now();
    let n = tree.rows.len();
    let cached = ro.root_cache.borrow().as_ref().filter(|c| c.0 == w.lo && c.1 == w.hi).map(|c| c.2.clone());
    let (root_lb, layers) = match cached {
        // The root's β-CROWN call below optimises α for these rows from the same layer bounds.
        Some(layers) => (vec![f64::NEG_INFINITY; n], layers),
        None => {
            let (lb, layers) = root_bounds(net, &w.lo, &w.hi, &tree.rows, ro.beta, deadline, ro.progress.is_some())?;
            let layers = Rc::new(layers);
            *ro.root_cache.borrow_mut() = Some((w.lo.clone(), w.hi.clone(), layers.clone()));
            (lb, layers)
        }
    };
    stats.bounded += 1;
    if tree.closed(&root_lb) {
        stats.proved += 1;
        return Ok(Answer::Unsat);
    }
    let bounder = DomainBounder::new(net, &w.lo, &w.hi, &tree.rows, &tree.rhs, ro.beta.clone())?
        .with_groups(tree.groups.clone())?;
    let root = Pending { decisions: vec![], beta: vec![], alpha: None, bounds: layers, refresh_above: usize::MAX };
    let Some(mut r) = bounder.bound(&[root], ro.beta.root_iterations, deadline)? else {
        stats.open += 1;
        return Ok(Answer::Timeout);
    };
    let r = r.remove(0);
    let lb0 = keep_larger(&r.lb, &root_lb);
    if tree.closed(&lb0) {
        stats.proved += 1;
        return Ok(Answer::Unsat);
    }
    let mut queue = vec![ReluDomain {
        margin: tree.margin(&lb0),
        lb: lb0,
        decisions: vec![],
        beta: vec![],
        alpha: Some(Rc::new(r.alpha)),
        bounds: Rc::new(r.bounds),
        candidates: r.candidates,
        retries: 0,
    }];
    let mut last = Instant::now();
    let mut exhausted = false;
    let mut clock = RoundClock::new();
    let chain = DenseChain::from_network(net);
    while !queue.is_empty() {
        if Instant::now() > deadline {
            stats.open += queue.len();
            return Ok(Answer::Timeout);
        }
        stats.rounds += 1;
        // Worst margin first; near the deadline only as many as fit the time left.
        queue.sort_by(|a, b| b.margin.total_cmp(&a.margin));
        let take = clock.fit(ro.batch, deadline).min(queue.len());
        let parents: Vec<ReluDomain> = queue.split_off(queue.len() - take);
        let mut children = Vec::new();
        let mut child_parent = Vec::new();
        let mut again = Vec::new();
        let mut again_parent = Vec::new();
        let Some(chosen) = choose_splits(&bounder, &tree, &parents, n, deadline)? else {
            stats.open += queue.len() + parents.len();
            return Ok(Answer::Timeout);
        };
        for (pi, p) in parents.iter().enumerate() {
            let Some(unit) = chosen[pi] else {
                // No unstable unit left and not proved: every relaxation is exact on the domain,
                // so the bound tends to the domain's minimum as α and β approach their optimum.
                // Optimise longer a few times, then give up on this one.
                if p.retries < RETRIES {
                    again.push(Pending {
                        decisions: p.decisions.clone(),
                        beta: p.beta.clone(),
                        alpha: p.alpha.clone(),
                        bounds: p.bounds.clone(),
                        refresh_above: usize::MAX,
                    });
                    again_parent.push(pi);
                } else {
                    // Every unit fixed: the network is affine on the leaf and an LP finds the
                    // clause's worst point there (checked by the graph).
                    if let Some(c) = &chain {
                        for w in ws {
                            let x = leaf_point(c, &p.bounds, &p.decisions, &w.lo, &w.hi, &w.rows, &w.rhs);
                            if let Some(a) = x.and_then(|x| check_counterexample(model, prop, &x, &w.lo, &w.hi)) {
                                return Ok(a);
                            }
                        }
                    }
                    exhausted = true;
                }
                continue;
            };
            children.extend(children_of(p, unit, n));
            child_parent.extend([pi, pi]);
        }
        if children.is_empty() && again.is_empty() {
            continue;
        }
        let t0 = Instant::now();
        let Some(mut res) = bounder.bound(&children, ro.beta.iterations, deadline)? else {
            stats.open += queue.len() + parents.len();
            return Ok(Answer::Timeout);
        };
        // A child no better than its parent has its β under-optimised (a split can only tighten
        // the relaxation): it gets more steps, from where it stopped ([`BetaOptions::stuck_iterations`]).
        let extra = ro.beta.stuck_iterations;
        if extra > 0 {
            let stuck: Vec<usize> = (0..res.len())
                .filter(|&i| {
                    let pl = &parents[child_parent[i]].lb;
                    !tree.closed(&res[i].lb) && tree.margin(&res[i].lb) <= tree.margin(pl)
                })
                .collect();
            if !stuck.is_empty() {
                // Its α, β and bounds move into the continuation (its result replaces them).
                let cont: Vec<Pending> = stuck
                    .iter()
                    .map(|&i| Pending {
                        decisions: children[i].decisions.clone(),
                        beta: std::mem::take(&mut res[i].beta),
                        alpha: Some(Rc::new(std::mem::take(&mut res[i].alpha))),
                        bounds: Rc::new(std::mem::take(&mut res[i].bounds)),
                        refresh_above: usize::MAX,
                    })
                    .collect();
                let Some(more) = bounder.bound(&cont, extra, deadline)? else {
                    stats.open += queue.len() + parents.len();
                    return Ok(Answer::Timeout);
                };
                for (i, r) in stuck.into_iter().zip(more) {
                    res[i] = r;
                }
            }
        }
        clock.record(take, t0.elapsed());
        let Some(res_again) = bounder.bound(&again, RETRY_FACTOR * ro.beta.iterations.max(1), deadline)? else {
            stats.open += queue.len() + parents.len();
            return Ok(Answer::Timeout);
        };
        stats.bounded += children.len() + again.len();
        let mut retries: Vec<usize> = child_parent.iter().map(|_| 0).collect();
        res.extend(res_again);
        children.extend(again);
        retries.extend(again_parent.iter().map(|&pi| parents[pi].retries + 1));
        child_parent.extend(again_parent);
        let keep_alpha = queue.len() < KEEP_ALPHA_UP_TO;
        let mut open = Vec::with_capacity(children.len());
        for (((child, r), pi), retries) in children.into_iter().zip(res).zip(child_parent).zip(retries) {
            let lb = keep_larger(&r.lb, &parents[pi].lb);
            if tree.closed(&lb) {
                stats.proved += 1;
            } else {
                open.push((child, r, lb, retries));
            }
        }
        // The open domains' primal points: the dense chain's f64 pass screens them, all in one
        // pass (without a chain, the graph checks a few per round); the graph confirms a hit.
        let hits = match &chain {
            Some(c) => {
                c.may_violate_many(prop, &open.iter().map(|(_, r, _, _)| r.primal.as_slice()).collect::<Vec<_>>())
            }
            None => (0..open.len()).map(|i| i < PRIMAL_CHECKS_WITHOUT_CHAIN).collect(),
        };
        for ((child, r, lb, retries), hit) in open.into_iter().zip(hits) {
            if hit {
                if let Some(a) = check_counterexample(model, prop, &r.primal, &ws[0].lo, &ws[0].hi) {
                    return Ok(a);
                }
            }
            queue.push(ReluDomain {
                margin: tree.margin(&lb),
                lb,
                decisions: child.decisions,
                beta: r.beta,
                alpha: keep_alpha.then(|| Rc::new(r.alpha)),
                bounds: Rc::new(r.bounds),
                candidates: r.candidates,
                retries,
            });
        }
        // PGD every ten rounds, on the clauses in turn.
        let pw = ws[(stats.rounds / 10) % ws.len()];
        if stats.rounds.is_multiple_of(10) && !pw.rows.is_empty() {
            let t = Target { lo: &pw.lo, hi: &pw.hi, rows: &pw.rows, rhs: &pw.rhs };
            let cands = pgd(net, &t, ro.pgd, rng, deadline).unwrap_or_default();
            if let Some(a) = cands.iter().find_map(|x| check_counterexample(model, prop, x, &pw.lo, &pw.hi)) {
                return Ok(a);
            }
        }
        if let Some(every) = ro.progress {
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
