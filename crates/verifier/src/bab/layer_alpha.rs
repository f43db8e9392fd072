//! Intermediate-layer α at the root: the bounds `l ≤ ẑ ≤ u` of every activation's unstable
//! units optimised with their own lower slopes, as α-CROWN does for every layer (not only the
//! specification's rows).
//!
//! For activation `i` with pre-activation `ẑ_i` and unstable units `U_i` (`l_j < 0 < u_j`), the
//! rows `+e_j` and `−e_j` (`j ∈ U_i`) run CROWN's backward pass down to the input through the
//! activations below `i`, each with lower slopes `α ∈ [0, 1]` of its own per row
//! (`[1, 2|U_i|, *shape]` per activation below). For every such `α` the pass gives
//! `lb(+e_j) ≤ ẑ_j(x)` and `lb(−e_j) ≤ −ẑ_j(x)` on the box (each relaxation holds on the layer
//! bounds below, which are valid), so `max(l_j, lb(+e_j)) ≤ ẑ_j ≤ min(u_j, −lb(−e_j))` is a valid
//! bound for **every** iterate; projected Adam ascends `Σ lb` and the best value per row is kept.
//! The layers are tightened from the bottom up, so each uses the tightened bounds below it.
//! Tighter bounds shrink the relaxation of every domain that inherits them, so branch and bound
//! keeps them for all its children.

use super::beta::{Adam, LayerBox};
use candle_core::{DType, Device, Tensor, Var};
use dual_core::bounds::crown::{backward_lower, Relaxed};
use dual_core::bounds::{Net, SlopeRule};
use dual_core::DualNode;
use dual_layers::{Epsilon, InfBall};
use nets::Network;
use std::time::Instant;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// What the tightening did.
#[derive(Debug, Clone, Default)]
pub struct LayerAlphaStats {
    /// Unstable units per activation before.
    pub unstable_before: Vec<usize>,
    /// Unstable units per activation after.
    pub unstable_after: Vec<usize>,
}

/// The units with `l < 0 < u`.
pub(crate) fn unstable(l: &[f64], u: &[f64]) -> Vec<usize> {
    (0..l.len()).filter(|&j| l[j] < 0.0 && u[j] > 0.0).collect()
}

/// Tightens `layers` (per activation of `net`, flattened, valid on the box `[lo, hi]`) in place
/// with `iterations` projected Adam steps of learning rate `lr` per activation (see the module
/// doc). Stops early, with the bounds tightened so far (all valid), when `deadline` passes.
pub fn tighten_layers(
    net: &Network,
    lo: &[f64],
    hi: &[f64],
    layers: &mut LayerBox,
    iterations: usize,
    lr: f64,
    deadline: Instant,
) -> Result<LayerAlphaStats, String> {
    tighten_layers_in(net, lo, hi, layers, 0..layers.len(), iterations, lr, deadline)
}

/// [`tighten_layers`] on the activations in `range` only (the first has no α below it and is
/// skipped), from the bottom up.
#[allow(clippy::too_many_arguments)]
pub fn tighten_layers_in(
    net: &Network,
    lo: &[f64],
    hi: &[f64],
    layers: &mut LayerBox,
    range: std::ops::Range<usize>,
    iterations: usize,
    lr: f64,
    deadline: Instant,
) -> Result<LayerAlphaStats, String> {
    let k = lo.len();
    if hi.len() != k {
        return Err(format!("a box of {k} lower and {} upper corners", hi.len()));
    }
    let dev = Device::Cpu;
    let (mid, rad) = crate::bounds::box_ball(lo, hi);
    let x1 = Tensor::from_vec(mid, (1, k), &dev).map_err(err)?;
    let r1 = Tensor::from_vec(rad, (1, k), &dev).map_err(err)?;
    let nodes = nets::no_grad(|| net.dual_nodes(&x1)).map_err(err)?;
    let ball = InfBall::new(&x1, Epsilon::Tensor(r1)).map_err(err)?;
    let net1 = Net { nodes: &nodes, x: &x1, input: &ball };
    let dt = x1.dtype();
    let shapes: Vec<Vec<usize>> = net.forward_all(&x1).map_err(err)?.iter().map(|o| o.dims()[1..].to_vec()).collect();
    // Per activation: its output index t (its input is output t − 1).
    let acts: Vec<usize> =
        nodes.iter().enumerate().filter(|(_, n)| matches!(n, DualNode::Activation(_))).map(|(i, _)| i + 1).collect();
    if acts.len() != layers.len() {
        return Err(format!("bounds for {} activations, the network has {}", layers.len(), acts.len()));
    }
    for (li, &t) in acts.iter().enumerate() {
        let size: usize = shapes[t - 1].iter().product();
        if layers[li].0.len() != size || layers[li].1.len() != size {
            return Err(format!("activation {li}: bounds of {} units for {size}", layers[li].0.len()));
        }
    }
    let mut stats = LayerAlphaStats {
        unstable_before: layers.iter().map(|(l, u)| unstable(l, u).len()).collect(),
        ..Default::default()
    };
    let to_t = |v: &[f64], shape: Vec<usize>| {
        Tensor::from_vec(v.to_vec(), shape, &dev).and_then(|t| t.to_dtype(dt)).map_err(err)
    };
    'layers: for li in range.start.max(1)..range.end.min(acts.len()) {
        let top = acts[li] - 1;
        let units = unstable(&layers[li].0, &layers[li].1);
        if units.is_empty() {
            continue;
        }
        let (nu, size) = (units.len(), layers[li].0.len());
        let mut rows = vec![0f64; 2 * nu * size];
        for (r, &j) in units.iter().enumerate() {
            rows[r * size + j] = 1.0;
            rows[(nu + r) * size + j] = -1.0;
        }
        let c = to_t(&rows, [&[1, 2 * nu][..], &shapes[top]].concat())?;
        // Layer bounds and α (CROWN's adaptive start) of every activation below.
        let mut below = Vec::with_capacity(li);
        for (lj, &tj) in acts[..li].iter().enumerate() {
            let (l, u) = &layers[lj];
            let shape = [&[1][..], &shapes[tj - 1]].concat();
            let a0: Vec<f64> = l.iter().zip(u).map(|(l, u)| if *u > -*l { 1.0 } else { 0.0 }).collect();
            let a0 = to_t(&a0.repeat(2 * nu), [&[1, 2 * nu][..], &shapes[tj - 1]].concat())?;
            let var = Var::from_tensor(&a0).map_err(err)?;
            let adam = Adam::new(&var)?;
            below.push((tj, to_t(l, shape.clone())?, to_t(u, shape)?, var, adam));
        }
        let mut best = vec![f64::NEG_INFINITY; 2 * nu];
        for it in 0..=iterations {
            if Instant::now() > deadline {
                break 'layers;
            }
            let mut relax: Relaxed = (0..=nodes.len()).map(|_| None).collect();
            for (tj, l, u, var, _) in &below {
                let DualNode::Activation(act) = &nodes[tj - 1] else {
                    return Err(format!("node {tj} is not an activation"));
                };
                relax[*tj] = Some(act.linear_relax(l, u, SlopeRule::Given(var.as_tensor())).map_err(err)?);
            }
            let lb = backward_lower(&net1, &relax, top, c.clone()).map_err(err)?;
            let vals = lb.to_dtype(DType::F64).and_then(|t| t.flatten_all()?.to_vec1::<f64>()).map_err(err)?;
            for (b, v) in best.iter_mut().zip(&vals) {
                if v.is_finite() {
                    *b = b.max(*v);
                }
            }
            if it == iterations {
                break;
            }
            let grads = lb.sum_all().and_then(|t| t.neg()?.backward()).map_err(err)?;
            for (_, _, _, var, adam) in below.iter_mut() {
                if let Some(g) = grads.get(var.as_tensor()) {
                    adam.step(var, g, it + 1, lr, Some(1.0))?;
                }
            }
        }
        let (l, u) = &mut layers[li];
        for (r, &j) in units.iter().enumerate() {
            l[j] = l[j].max(best[r]);
            u[j] = u[j].min(-best[nu + r]);
        }
    }
    stats.unstable_after = layers.iter().map(|(l, u)| unstable(l, u).len()).collect();
    Ok(stats)
}
