//! The bound family on one engine: IBP, CROWN, CROWN-IBP and α-CROWN, for a specification `C`.
//!
//! Every method bounds `C f(x')` from below over the input set with the same per-layer traits as
//! the dual of Wong & Kolter ([`crate::DualNetwork`]); they differ in how the layer-wise bounds
//! are computed and how the lower slopes of the activations are chosen:
//!
//! | method | layer-wise bounds | final bound | lower slopes |
//! |---|---|---|---|
//! | [`Method::Ibp`] | IBP | IBP (C folded into the last layer) | — |
//! | [`Method::CrownIbp`] | IBP | backward | adaptive |
//! | [`Method::Crown`] | backward | backward | adaptive |
//! | [`Method::AlphaCrown`] | backward ∩ IBP (∩ the dual's when given) | backward, at least IBP's | optimised per row |
//!
//! The dual itself (`exact`) is the backward pass with `a_L = a_U = u/(u − l)`.
//!
//! CROWN's layer-wise bounds are the backward pass on every unit. α-CROWN's are tighter: IBP
//! runs first and the backward pass bounds only the units IBP does not prove stable in every
//! example of the batch (the others keep IBP's bounds); where IBP proves a unit stable in an
//! example and CROWN does not, IBP's bounds are kept, so the relaxation is exact there; and with
//! the exact dual given, the bounds are intersected with the dual's. All are sound.

pub mod alpha;
pub mod crown;
pub mod ibp;
mod ibp_fused;
pub mod relaxation;
pub mod sparse;
pub mod spec;
pub(crate) mod window;

pub use alpha::AlphaOptions;
pub use relaxation::{gather_then_step, LinearRelaxation, SlopeRule};
pub use spec::Spec;
pub use window::rows_on_windows;

use crate::{interval_rows::CpuPool, layer::DualNode, source::DualSource, DualError, DualNetwork, LayerBounds, Result};
use candle_core::Tensor;
use crown::Relaxed;

/// A bound method of the family (the dual of Wong & Kolter is [`crate::DualNetwork`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Interval bound propagation (Gowal et al. 2018).
    Ibp,
    /// CROWN (Zhang et al. 2018) with adaptive lower slopes; layer-wise bounds by CROWN too.
    Crown,
    /// IBP layer-wise bounds, CROWN for the specification (Zhang et al. 2020).
    CrownIbp,
    /// CROWN with lower slopes optimised per row (Xu et al. 2021).
    AlphaCrown,
}

impl Method {
    /// The method's command-line name.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Ibp => "ibp",
            Method::Crown => "crown",
            Method::CrownIbp => "crown-ibp",
            Method::AlphaCrown => "alpha-crown",
        }
    }
}

impl std::str::FromStr for Method {
    type Err = DualError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "ibp" => Method::Ibp,
            "crown" => Method::Crown,
            "crown-ibp" => Method::CrownIbp,
            "alpha-crown" => Method::AlphaCrown,
            _ => {
                return Err(DualError::invalid(format!(
                    "unknown bound method `{s}`; expected ibp, crown, crown-ibp or alpha-crown"
                )))
            }
        })
    }
}

/// Options of the bound family.
#[derive(Debug, Clone, Default)]
pub struct BoundOptions {
    /// α-CROWN's optimiser.
    pub alpha: AlphaOptions,
    /// Bytes of backward coefficients live at once in CROWN's layer-wise bounds (default 1 GiB).
    pub memory_budget: Option<usize>,
}

/// What a method returns.
#[derive(Debug, Clone)]
pub struct SpecBounds {
    /// Lower bounds of `C f(x')`, `[B, m]`.
    pub lower: Tensor,
    /// The pre-activation bounds every activation was relaxed with, in network order.
    pub layers: Vec<LayerBounds>,
    /// α-CROWN's iterations (0 for the other methods).
    pub iterations: usize,
}

/// The network a method bounds: its nodes, the nominal input `[B, *in_shape]` and the input set.
#[derive(Clone, Copy)]
pub struct Net<'a> {
    /// The dual nodes, in order.
    pub nodes: &'a [DualNode],
    /// The nominal input.
    pub x: &'a Tensor,
    /// The input set around it.
    pub input: &'a dyn DualSource,
}

const DEFAULT_BUDGET: usize = 1 << 30;

/// Output shapes (without batch) of every output `0..=n`, from a nominal pass of the first
/// example in which activations keep the shape.
fn output_shapes(net: &Net<'_>) -> Result<Vec<Vec<usize>>> {
    let x1 = net.x.narrow(0, 0, 1)?.unsqueeze(1)?;
    let mut outs = vec![x1];
    for (k, node) in net.nodes.iter().enumerate() {
        let t = k + 1;
        let y = match node {
            DualNode::Affine(a) => {
                let xs: Vec<Option<&Tensor>> = a.inputs().indices(t).iter().map(|i| i.map(|i| &outs[i])).collect();
                a.forward(&xs, true)?
                    .ok_or_else(|| DualError::shape(format!("{} gave no output on the nominal input", a.name())))?
            }
            DualNode::Activation(act) => {
                let x = &outs[t - 1];
                let shape = act.output_shape(&x.dims()[2..])?;
                if shape == x.dims()[2..] {
                    x.clone()
                } else {
                    // Only the shape is read from here on.
                    Tensor::zeros([&[1, 1][..], &shape].concat(), x.dtype(), x.device())?
                }
            }
        };
        outs.push(y);
    }
    Ok(outs.iter().map(|o| o.dims()[2..].to_vec()).collect())
}

/// Output shapes (without batch) of every output, read from the interval boxes (the same as
/// [`output_shapes`], without its nominal pass).
fn box_shapes(boxes: &ibp::Boxes) -> Vec<Vec<usize>> {
    boxes.mid.iter().map(|m| m.dims()[2..].to_vec()).collect()
}

/// Whether per-example rows for the units `[lower, upper]` leaves unstable cost less than every
/// unit's rows: the shared rows of the first activation meet per-example work only at the input
/// set, so there per-example rows pay when the whole batch needs fewer rows than one example
/// has units; above an activation every row is per example anyway.
fn worth_skipping(net: &Net<'_>, lower: &Tensor, upper: &Tensor, top: usize) -> Result<bool> {
    let b = lower.dim(0)?;
    let k = lower.elem_count() / b.max(1);
    let need = sparse::unstable_per_example(lower, upper)?;
    let rmax = need.iter().map(|u| u.len()).max().unwrap_or(0);
    Ok(if activation_below(net, top) { rmax < k } else { b * rmax < k })
}

/// Whether an activation lies below output `top`: rows shared by the batch meet per-example
/// slopes there (else only at the input set).
fn activation_below(net: &Net<'_>, top: usize) -> bool {
    net.nodes[..top].iter().any(|n| matches!(n, DualNode::Activation(_)))
}

fn with_batch(b: usize, shape: &[usize]) -> Vec<usize> {
    let mut s = vec![b];
    s.extend_from_slice(shape);
    s
}

/// Lower bounds of `C f(x')` for `x'` in the input set by `method`. With `reference` (the exact
/// dual of the same nodes, input and batch), α-CROWN intersects its layer-wise bounds with the
/// dual's and returns at least the dual's bound on every row. α-CROWN also returns at least IBP's
/// bound on every row where IBP supports the network (tighter on interval-trained networks).
pub fn spec_bounds(
    net: &Net<'_>,
    spec: &Spec,
    method: Method,
    opts: &BoundOptions,
    reference: Option<&DualNetwork>,
) -> Result<SpecBounds> {
    if net.nodes.is_empty() {
        return Err(DualError::invalid("the network has no layers"));
    }
    let n = net.nodes.len();
    let b = net.x.dim(0)?;
    let need_ibp = matches!(method, Method::Ibp | Method::CrownIbp);
    // IBP alone: the rest of the bound is Candle ops, so its pool; the backward methods' kernels
    // run on rayon's (`CpuPool`).
    let pool = if method == Method::Ibp { CpuPool::of_candle_ops() } else { CpuPool::Rayon };
    let boxes = match ibp::propagate_on(net, n, pool) {
        Ok(bx) => Some(bx),
        Err(e @ DualError::Unsupported(_)) if need_ibp => return Err(e),
        Err(DualError::Unsupported(_)) => None,
        Err(e) => return Err(e),
    };
    let shapes = match &boxes {
        Some(bx) => box_shapes(bx),
        None => output_shapes(net)?,
    };
    let c = spec.checked(b, &shapes[n], net.x.dtype())?;
    if method == Method::Ibp {
        let boxes = boxes.expect("checked above");
        return ibp_bounds(net, &boxes, &c);
    }
    from_boxes(net, &shapes, &c, method, opts, reference, boxes.as_ref())
}

/// IBP's bounds from the boxes of every output.
fn ibp_bounds(net: &Net<'_>, boxes: &ibp::Boxes, c: &Tensor) -> Result<SpecBounds> {
    let mut layers = Vec::new();
    for (k, node) in net.nodes.iter().enumerate() {
        if matches!(node, DualNode::Activation(_)) {
            let (lower, upper) = boxes.interval(k)?;
            layers.push(LayerBounds { layer: k + 1, lower, upper });
        }
    }
    Ok(SpecBounds { lower: ibp::spec_lower(net, boxes, c)?, layers, iterations: 0 })
}

/// CROWN-IBP's bounds and IBP's lower bounds of `C f(x')` from one interval pass:
/// `(crown_ibp, ibp)`. CROWN-IBP's loss (Zhang et al. 2020) mixes the two; computed apart, the
/// interval pass (and its gradient) would run twice. The same numbers as two [`spec_bounds`] calls.
pub fn crown_ibp_and_ibp(net: &Net<'_>, spec: &Spec, opts: &BoundOptions) -> Result<(SpecBounds, SpecBounds)> {
    if net.nodes.is_empty() {
        return Err(DualError::invalid("the network has no layers"));
    }
    let n = net.nodes.len();
    let boxes = ibp::propagate(net, n)?;
    let shapes = box_shapes(&boxes);
    let c = spec.checked(net.x.dim(0)?, &shapes[n], net.x.dtype())?;
    let ibp = ibp_bounds(net, &boxes, &c)?;
    let ci = from_boxes(net, &shapes, &c, Method::CrownIbp, opts, None, Some(&boxes))?;
    Ok((ci, ibp))
}

/// The backward methods given the interval boxes (when the input set and layers allow them).
fn from_boxes(
    net: &Net<'_>,
    shapes: &[Vec<usize>],
    c: &Tensor,
    method: Method,
    opts: &BoundOptions,
    reference: Option<&DualNetwork>,
    boxes: Option<&ibp::Boxes>,
) -> Result<SpecBounds> {
    let n = net.nodes.len();
    let b = net.x.dim(0)?;
    let budget = opts.memory_budget.unwrap_or(DEFAULT_BUDGET);
    let c = c.clone();
    let mut relax: Relaxed = (0..=n).map(|_| None).collect();
    let mut layers = Vec::new();
    let ref_bounds = match (method, reference) {
        (Method::AlphaCrown, Some(d)) => Some(d.bounds()),
        _ => None,
    };
    for t in 1..=n {
        let DualNode::Activation(act) = &net.nodes[t - 1] else { continue };
        let shape = &shapes[t - 1];
        let k: usize = shape.iter().product();
        let ibp_lu = match boxes {
            Some(bx) => {
                let (l, u) = bx.interval(t - 1)?;
                Some((l.reshape((b, k))?, u.reshape((b, k))?))
            }
            None => None,
        };
        // An activation right after another one (ReLU → MaxPool2d): its input bounds are the
        // interval image of the previous activation's bounds, which is at least as tight as a
        // backward pass (that pass would bound each unit through the same unit's lines) and free.
        let shortcut = match (t >= 2, &net.nodes[t.saturating_sub(2)]) {
            (true, DualNode::Activation(pa)) if method != Method::CrownIbp => {
                match layers.iter().find(|lb: &&LayerBounds| lb.layer == t - 1) {
                    Some(lb) => match pa.interval(&lb.lower, &lb.upper) {
                        Ok((lo, hi)) => Some((lo.reshape((b, k))?, hi.reshape((b, k))?)),
                        Err(DualError::Unsupported(_)) => None,
                        Err(e) => return Err(e),
                    },
                    None => None,
                }
            }
            _ => None,
        };
        // One side first (`crown::layer_bounds_one_sign_first`) where a stable unit's relaxation
        // does not depend on its bounds' values and no activation reads these bounds directly
        // (ReLU → MaxPool2d would see the looser side).
        let one_sign = act.exact_off_zero() && !matches!(net.nodes.get(t), Some(DualNode::Activation(_)));
        let per_example = |need: &[Vec<usize>], guess: (&Tensor, &Tensor)| {
            if one_sign {
                crown::layer_bounds_one_sign_first(net, &relax, shapes, t - 1, need, guess, budget)
            } else {
                crown::layer_bounds_per_example(net, &relax, shapes, t - 1, need, guess, budget)
            }
        };
        // The first activation's input is one affine map `A x + b` of a box: its interval image
        // `A mid + b ± |A| rad` is the map's exact range, the value every backward method
        // computes with far more work (auto_LiRPA likewise bounds a first linear layer by IBP).
        let exact_interval = t == 2 && matches!(net.nodes[0], DualNode::Affine(_)) && net.input.is_box();
        let (mut l, mut u) = if let (true, Some((li, ui))) = (exact_interval, &ibp_lu) {
            (li.clone(), ui.clone())
        } else if let Some((lo, hi)) = shortcut {
            match &ibp_lu {
                Some((li, ui)) => (lo.maximum(li)?, hi.minimum(ui)?),
                None => (lo, hi),
            }
        } else if method == Method::CrownIbp {
            ibp_lu.expect("IBP ran")
        } else {
            match &ibp_lu {
                Some((li, ui)) if method == Method::AlphaCrown && !act.exact_off_zero() => {
                    let units: Vec<usize> = (0..k).collect();
                    let (lc, uc) = crown::layer_bounds(net, &relax, shapes, t - 1, &units, budget)?;
                    (lc.maximum(li)?, uc.minimum(ui)?)
                }
                Some((li, ui)) if method == Method::AlphaCrown => {
                    // Where IBP proves the unit stable in an example, keep IBP's bounds (the
                    // relaxation is then exact); the backward pass runs on the others only.
                    let need = sparse::unstable_per_example(li, ui)?;
                    per_example(&need, (li, ui))?
                }
                _ => match sparse::loose_bounds(net, &relax, t - 1)? {
                    // Units the looser bound proves stable are stable under CROWN too, with the
                    // same relaxation: the backward pass runs on the others only.
                    Some((lf, uf))
                        if (one_sign && activation_below(net, t - 1)) || worth_skipping(net, &lf, &uf, t - 1)? =>
                    {
                        let need = sparse::unstable_per_example(&lf, &uf)?;
                        per_example(&need, (&lf, &uf))?
                    }
                    // Every unit, one side first, guided by IBP's interval: CROWN's numbers.
                    // Above an activation only: below the first one, rows shared by the batch
                    // all the way to the input cost less than any per-example rows.
                    _ if one_sign && ibp_lu.is_some() && activation_below(net, t - 1) => {
                        let (li, ui) = ibp_lu.as_ref().expect("checked");
                        let need = vec![(0..k).collect::<Vec<_>>(); b];
                        per_example(&need, (li, ui))?
                    }
                    _ => {
                        let units: Vec<usize> = (0..k).collect();
                        crown::layer_bounds(net, &relax, shapes, t - 1, &units, budget)?
                    }
                },
            }
        };
        if let Some(rb) = ref_bounds.and_then(|rb| rb.iter().find(|lb| lb.layer == t)) {
            l = l.maximum(&rb.lower.reshape((b, k))?)?;
            u = u.minimum(&rb.upper.reshape((b, k))?)?;
        }
        let (l, u) = (l.reshape(with_batch(b, shape))?, u.reshape(with_batch(b, shape))?);
        relax[t] = Some(act.linear_relax(&l, &u, SlopeRule::Adaptive)?);
        layers.push(LayerBounds { layer: t, lower: l, upper: u });
    }
    if method == Method::AlphaCrown {
        let pre: Vec<(usize, Tensor, Tensor)> =
            layers.iter().map(|lb| (lb.layer, lb.lower.clone(), lb.upper.clone())).collect();
        let res = alpha::optimize(net, &pre, &c, &opts.alpha)?;
        let mut lower = match reference {
            Some(d) => res.lower.maximum(&d.objective(&c)?)?,
            None => res.lower,
        };
        // On interval-trained networks IBP's own bound of `C f(x')` can beat every backward
        // bound (Zhang et al. 2020, §3): both are sound, so the row keeps the larger.
        if let Some(bx) = boxes {
            lower = lower.maximum(&ibp::spec_lower(net, bx, &c)?)?;
        }
        return Ok(SpecBounds { lower, layers, iterations: res.iterations });
    }
    // The zero rows of C (the margins' `e_y − e_y`) bound to 0 without a backward pass.
    let lower = match spec::drop_zero_rows(&c)? {
        Some((reduced, pos)) => spec::expand_rows(&crown::backward_lower(net, &relax, n, reduced)?, &pos)?,
        None => crown::backward_lower(net, &relax, n, c)?,
    };
    Ok(SpecBounds { lower, layers, iterations: 0 })
}

/// Lower bounds of the margins `z_y − z_j` (`[B, classes]`, 0 at `j = y`) by `method`.
pub fn margin_bounds(
    net: &Net<'_>,
    y: &[u32],
    method: Method,
    opts: &BoundOptions,
    reference: Option<&DualNetwork>,
) -> Result<Tensor> {
    let b = net.x.dim(0)?;
    if y.len() != b {
        return Err(DualError::shape(format!("{} labels for a batch of {b}", y.len())));
    }
    if method == Method::Ibp && !net.nodes.is_empty() {
        // The bound alone: no layer-wise boxes to keep (`ibp::margins_fused`), on the pool of
        // the Candle ops around it (`CpuPool`).
        if let Some(lower) = ibp::margins_fused(net, y, CpuPool::of_candle_ops())? {
            return Ok(lower);
        }
    }
    let shapes = output_shapes(net)?;
    let out = &shapes[net.nodes.len()];
    if out.len() != 1 {
        return Err(DualError::shape(format!("margins need a flat output; the network gives {out:?}")));
    }
    let spec = Spec::margins(y, out[0], net.x.dtype(), net.x.device())?;
    Ok(spec_bounds(net, &spec, method, opts, reference)?.lower)
}
