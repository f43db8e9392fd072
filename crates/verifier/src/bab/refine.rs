//! Intermediate layers' bounds by branch and bound on the ReLUs below them, at the root of
//! ReLU splitting.
//!
//! CROWN and α-CROWN bound a deep unit `ẑ_j` of activation `i` through the relaxations of every
//! unstable unit below it, and their slack compounds with depth: on mnistfc `256x6` (prop 12 at
//! 0.03) the last two activations have all 256 units unstable under α-CROWN's bounds, while a
//! search (PGD per unit) sees at most two change sign. Every domain of the main tree inherits
//! those bounds, so no split of the main tree removes that slack.
//!
//! For an unstable unit `j` the lower bound `l_j = min_{x ∈ X} ẑ_j(x)` is itself a verification
//! problem over the network cut at `ẑ_i` with the row `+e_j` (and `u_j` with `−e_j`), and ReLU
//! splitting solves it more tightly than one relaxation: split the worst leaf on a unit below
//! `i`, bound each child with β-CROWN ([`DomainBounder::at_output`]), and the minimum over the
//! leaves is a valid bound (the leaves cover the box: the two children of a split cover their
//! parent's set, and each leaf's bound holds on its set for every `α ∈ [0, 1]`, `β ≥ 0`). A
//! child keeps the larger of its bound and its parent's. The tree of a unit stops when its
//! bound proves the unit stable (`l_j ≥ 0` or `u_j ≤ 0`), when the worst leaf has nothing left to
//! split, or after `refine_domains` bounded domains. The bounds only ever tighten
//! (`l_j = max(l_j, ·)`, `u_j = min(u_j, ·)`), and activation `i + 1` is tightened by α-CROWN
//! ([`super::layer_alpha`]) on the refined bounds before its own units are refined: bottom up,
//! as the MIP refinement of α,β-CROWN's `bab-refine` mode does for its first layers.

use super::beta::{BetaOptions, BoundedDomain, Decision, DomainBounder, LayerBox, Pending};
use super::layer_alpha::{tighten_layers_in, unstable};
use candle_core::{Device, Tensor};
use dual_core::DualNode;
use nets::Network;
use std::rc::Rc;
use std::time::Instant;

/// What the refinement did.
#[derive(Debug, Clone, Default)]
pub struct RefineStats {
    /// Unstable units per activation before (the layer bounds given).
    pub unstable_before: Vec<usize>,
    /// Unstable units per activation after.
    pub unstable_after: Vec<usize>,
    /// Trees grown (one per unit and side).
    pub trees: usize,
    /// Domains bounded in all trees.
    pub domains: usize,
}

/// Leaves split per round of one tree (their children bounded in one batch).
const SPLITS_PER_ROUND: usize = 8;

/// A leaf of one unit's tree.
struct Leaf {
    decisions: Vec<Decision>,
    beta: Vec<f32>,
    alpha: Rc<Vec<Vec<f32>>>,
    bounds: Rc<LayerBox>,
    lb: f64,
    split: Option<(usize, usize)>,
}

impl Leaf {
    fn from_bounded(decisions: Vec<Decision>, d: BoundedDomain, parent_lb: f64) -> Self {
        // The parent's bound holds on the child's set (`f64::max` yields the other side of a NaN).
        let lb = d.lb.first().copied().unwrap_or(f64::NEG_INFINITY).max(parent_lb);
        Leaf {
            decisions,
            beta: d.beta,
            alpha: Rc::new(d.alpha),
            bounds: Rc::new(d.bounds),
            lb,
            split: d.candidates.first().copied(),
        }
    }
}

/// Tightens every activation's bounds in `layers` (valid on `[lo, hi]`, per activation of `net`,
/// flattened) in place: α-CROWN on every activation (`opts.layer_alpha` steps), then bottom up,
/// for activations `1..=opts.refine_layers`, a tree per unstable unit and side (see the module
/// doc) and α-CROWN again on the activation above (with `opts.refine_layers = 0`, α-CROWN's
/// pass alone: [`super::layer_alpha::tighten_layers`]).
/// Stops at `deadline` with the bounds tightened so far (all valid). With `progress`, a line on
/// stderr per refined activation.
pub fn refine_layers(
    net: &Network,
    lo: &[f64],
    hi: &[f64],
    layers: &mut LayerBox,
    opts: &BetaOptions,
    deadline: Instant,
    progress: bool,
) -> Result<RefineStats, String> {
    let t0 = Instant::now();
    let x1 = Tensor::from_vec(lo.to_vec(), (1, lo.len()), &Device::Cpu).map_err(|e| e.to_string())?;
    let nodes = nets::no_grad(|| net.dual_nodes(&x1)).map_err(|e| e.to_string())?;
    // Per activation: the output index of its input.
    let inputs: Vec<usize> =
        nodes.iter().enumerate().filter(|(_, n)| matches!(n, DualNode::Activation(_))).map(|(i, _)| i).collect();
    if inputs.len() != layers.len() {
        return Err(format!("bounds for {} activations, the network has {}", layers.len(), inputs.len()));
    }
    let mut stats = RefineStats {
        unstable_before: layers.iter().map(|(l, u)| unstable(l, u).len()).collect(),
        ..Default::default()
    };
    // α-CROWN's pass first, so the result is never looser than it (Adam from other bounds
    // below need not end at a tighter point), then bottom up: a tree per unit, and α again on
    // the activation above the refined ones.
    if opts.layer_alpha > 0 {
        tighten_layers_in(net, lo, hi, layers, 0..layers.len(), opts.layer_alpha, opts.lr_alpha, deadline)?;
    }
    for (li, &top) in inputs.iter().enumerate().skip(1) {
        if Instant::now() > deadline {
            break;
        }
        if opts.layer_alpha > 0 && li >= 2 && li - 1 <= opts.refine_layers {
            tighten_layers_in(net, lo, hi, layers, li..li + 1, opts.layer_alpha, opts.lr_alpha, deadline)?;
        }
        if li <= opts.refine_layers {
            let before = unstable(&layers[li].0, &layers[li].1).len();
            refine_layer(net, lo, hi, layers, li, top, opts, deadline, &mut stats)?;
            if progress {
                eprintln!(
                    "  relu root {:.1} s: activation {li} refined, {before} -> {} unstable ({} trees, {} domains so far)",
                    t0.elapsed().as_secs_f64(),
                    unstable(&layers[li].0, &layers[li].1).len(),
                    stats.trees,
                    stats.domains
                );
            }
        }
    }
    stats.unstable_after = layers.iter().map(|(l, u)| unstable(l, u).len()).collect();
    Ok(stats)
}

/// One activation's unstable units, each side by its own tree over the network cut at `top`
/// (the activation's input).
#[allow(clippy::too_many_arguments)]
fn refine_layer(
    net: &Network,
    lo: &[f64],
    hi: &[f64],
    layers: &mut LayerBox,
    li: usize,
    top: usize,
    opts: &BetaOptions,
    deadline: Instant,
    stats: &mut RefineStats,
) -> Result<(), String> {
    let below: Rc<LayerBox> = Rc::new(layers[..li].to_vec());
    let size = layers[li].0.len();
    for j in unstable(&layers[li].0, &layers[li].1) {
        // The side nearer to zero first: proving it makes the unit stable and the other side moot.
        let (l, u) = (layers[li].0[j], layers[li].1[j]);
        let sides = if -l < u { [true, false] } else { [false, true] };
        for lower in sides {
            let (l, u) = (layers[li].0[j], layers[li].1[j]);
            if !(l < 0.0 && u > 0.0) || Instant::now() > deadline {
                break;
            }
            let mut row = vec![0.0; size];
            row[j] = if lower { 1.0 } else { -1.0 };
            let bounder = DomainBounder::at_output(net, Some(top), lo, hi, &[row], &[0.0], opts.clone())?;
            let (v, n) = tree_min(&bounder, &below, opts, deadline)?;
            stats.trees += 1;
            stats.domains += n;
            if lower {
                layers[li].0[j] = l.max(v);
            } else {
                layers[li].1[j] = u.min(-v);
            }
        }
    }
    Ok(())
}

/// A valid lower bound of the bounder's one row over the box by a tree of at most
/// `opts.refine_domains` domains (−∞ when the deadline passes before the root is bounded), and
/// the domains bounded.
fn tree_min(
    bounder: &DomainBounder<'_>,
    below: &Rc<LayerBox>,
    opts: &BetaOptions,
    deadline: Instant,
) -> Result<(f64, usize), String> {
    let root =
        Pending { decisions: vec![], beta: vec![], alpha: None, bounds: below.clone(), refresh_above: usize::MAX };
    let Some(mut r) = bounder.bound(&[root], opts.root_iterations, deadline)? else {
        return Ok((f64::NEG_INFINITY, 0));
    };
    let mut leaves = vec![Leaf::from_bounded(vec![], r.remove(0), f64::NEG_INFINITY)];
    let mut count = 1;
    let lowest = |leaves: &[Leaf]| leaves.iter().map(|l| l.lb).fold(f64::INFINITY, f64::min);
    while count < opts.refine_domains && lowest(&leaves) < 0.0 {
        leaves.sort_by(|a, b| a.lb.total_cmp(&b.lb));
        // The worst leaves, as long as each can be split: a worst leaf without an unstable unit
        // left holds the minimum where it is.
        let take = leaves.iter().take(SPLITS_PER_ROUND).take_while(|l| l.split.is_some()).count();
        if take == 0 {
            break;
        }
        let parents: Vec<Leaf> = leaves.drain(..take).collect();
        let mut pending = Vec::with_capacity(2 * take);
        for p in &parents {
            let unit = p.split.expect("a split was checked");
            pending.extend(Pending::children(&p.decisions, &p.beta, Some(&p.alpha), &p.bounds, unit, 1));
        }
        let Some(children) = bounder.bound(&pending, opts.iterations, deadline)? else {
            leaves.extend(parents);
            break;
        };
        count += children.len();
        for (k, (c, p)) in children.into_iter().zip(pending).enumerate() {
            leaves.push(Leaf::from_bounded(p.decisions, c, parents[k / 2].lb));
        }
    }
    Ok((lowest(&leaves), count))
}
