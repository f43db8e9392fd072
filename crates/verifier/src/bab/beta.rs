//! β-CROWN bounds of a batch of ReLU-split domains, with α and β optimised jointly.
//!
//! A domain is the clause's input box `X` with split decisions on unstable pre-activations:
//! `ẑ_j ≥ 0` (active) or `ẑ_j ≤ 0` (inactive). Write each as `s_j ẑ_j(x) ≤ 0` with `s_j = −1`
//! for active and `s_j = +1` for inactive (the sign convention `S` of Wang et al. 2021, eq. (5));
//! the domain's set is `D = {x ∈ X : s_j ẑ_j(x) ≤ 0 for every decision j}`.
//!
//! **The bound.** For every `β ≥ 0` (one per decision and specification row) and `x ∈ D`,
//! `cᵀ f(x) ≥ cᵀ f(x) + Σ_j β_j s_j ẑ_j(x)` because each added term is `≤ 0` on `D`. So
//! `min_{x ∈ D} cᵀ f(x) ≥ min_{x ∈ X, relaxations} [cᵀ f(x) + Σ_j β_j s_j ẑ_j(x)]`
//! (weak duality, eq. (6)–(7) of the paper), and the right side is what CROWN's backward pass
//! computes when the coefficients `β_j s_j` join the pass at each split layer
//! ([`dual_core::bounds::crown::backward_lower_with_terms`]). Every relaxation used holds on `D`:
//! the layer bounds are valid on `D` (see below) and the ReLU's lines hold on them for every
//! lower slope `α ∈ [0, 1]`. Hence **any** `α ∈ [0, 1]`, `β ≥ 0` gives a valid bound, every
//! iterate of the optimiser is sound, and the best per row is kept.
//!
//! **Layer bounds on `D`.** A domain inherits its parent's layer bounds (valid on the parent's
//! set, a superset of `D`); its decisions clamp them (`ẑ_j ≥ 0`: `l_j = max(l_j, 0)`, the ReLU is
//! the identity; `ẑ_j ≤ 0`: `u_j = min(u_j, 0)`, the ReLU is 0). Layers above the newest
//! decision's layer may be refreshed ([`BetaOptions::refresh`], off by default) by CROWN under
//! the clamped relaxations below (adaptive slopes, no β) and intersected with the inherited ones. A domain whose bounds cross (`l > u`) is empty;
//! `u` is raised to `l` so the relaxation is defined (a bound of an empty set may be anything).
//!
//! **Optimisation.** Projected Adam on `−Σ_rows lb` over α (projected to `[0, 1]`) and β
//! (projected to `β ≥ 0`), all domains of the batch at once, starting from the parent's α (else
//! CROWN's adaptive slopes) and the parent's β for inherited decisions (0 for the new one).
//!
//! **Branching.** At the last iterate, the gradient of the domain's best row with respect to
//! the layer bounds, `g_l = ∂lb/∂l_j`, `g_u = ∂lb/∂u_j`, estimates the gain of splitting unit
//! `j`: `|g_l|·|l_j|` (active child) and `|g_u|·u_j` (inactive child); the unstable unit with
//! the largest smaller gain is split next.
//!
//! The clock is checked between layers and iterations: a call past the deadline returns `None`.

use candle_core::{DType, Device, Tensor, Var};
use dual_core::bounds::crown::{backward_lower_with_terms, layer_bounds, Relaxed};
use dual_core::bounds::SlopeRule;
use dual_core::DualNode;
use dual_layers::{Epsilon, InfBall};
use nets::Network;
use std::rc::Rc;
use std::time::Instant;

/// One split decision: activation `layer` (index into the activations, in network order), flat
/// `unit`, `active` (`ẑ ≥ 0`) or not (`ẑ ≤ 0`).
pub type Decision = (usize, usize, bool);

/// Layer bounds `(l, u)` per activation, flattened, valid on a domain's set.
pub type LayerBox = Vec<(Vec<f64>, Vec<f64>)>;

/// Settings of the β-CROWN bound.
#[derive(Debug, Clone)]
pub struct BetaOptions {
    /// Optimise β (with α); `false`: α only, the decisions act through the layer bounds alone.
    pub beta: bool,
    /// Adam steps per round (0: the start's bound, CROWN's slopes or the parent's α and β).
    pub iterations: usize,
    /// Adam steps at the root domain.
    pub root_iterations: usize,
    /// More Adam steps, continuing from its α and β, for a child whose bound is no better than
    /// its parent's (0: none). Measured on mnistfc `256x4`, one core: prop 10 (0.05) unsat in
    /// 42.6 s with 12 against 73.8 s without (51.6 s with 20 steps for every domain), prop 3
    /// (0.03) 76.3 s against 81.5 s (135.4 s).
    pub stuck_iterations: usize,
    /// Adam's learning rate for α.
    pub lr_alpha: f64,
    /// Adam's learning rate for β.
    pub lr_beta: f64,
    /// Refresh the layer bounds above a new decision by CROWN (default `false`: inherited and
    /// clamped only, as β-CROWN does; the split constraints then act through β. Measured on
    /// mnistfc 256x2 / prop 1 (0.03): unsat in 51 s without refresh, timeout at 60 s with it).
    pub refresh: bool,
    /// Branching candidates per domain (the best by the gradient score); with two or more, each
    /// is tried by one un-optimised bound of its two children (the parent's α and β, the new
    /// decision acting through the clamped layer bounds) and the split whose worse child is
    /// best is taken — filtered smart branching (De Palma et al. 2021). 1: the score alone.
    pub candidates: usize,
    /// Adam steps per activation for the intermediate layers' bounds at the root
    /// ([`super::layer_alpha::tighten_layers`]; 0: CROWN's layer bounds with α-CROWN's final
    /// bound, as before).
    pub layer_alpha: usize,
    /// Activations (from the second) whose unstable units' bounds are refined at the root by a
    /// tree each over the activations below ([`super::refine`]; 0: none).
    pub refine_layers: usize,
    /// Domains bounded per unit and side in [`super::refine`]'s trees.
    pub refine_domains: usize,
}

impl Default for BetaOptions {
    fn default() -> Self {
        BetaOptions {
            beta: true,
            iterations: 8,
            root_iterations: 20,
            stuck_iterations: 12,
            lr_alpha: 0.1,
            lr_beta: 0.05,
            refresh: false,
            candidates: 1,
            layer_alpha: 20,
            refine_layers: 16,
            refine_domains: 64,
        }
    }
}

/// A domain to bound: its decisions and what it inherits from its parent.
#[derive(Clone)]
pub struct Pending {
    /// All decisions from the root.
    pub decisions: Vec<Decision>,
    /// β per decision and row (`decisions.len() × rows`), the new decision's 0.
    pub beta: Vec<f32>,
    /// α per activation (`rows × K`), from the parent; `None`: CROWN's adaptive slopes.
    pub alpha: Option<Rc<Vec<Vec<f32>>>>,
    /// The parent's layer bounds.
    pub bounds: Rc<LayerBox>,
    /// Activations above this index are refreshed by CROWN (`usize::MAX`: none).
    pub refresh_above: usize,
}

impl Pending {
    /// The two children of splitting a domain (its `decisions`, `beta`, `alpha` and layer
    /// `bounds`) on unit `(li, j)`: `ẑ_j ≥ 0` first, then `ẑ_j ≤ 0`, each with the parent's α
    /// and β (the new decision's β 0 for each of the `rows`), the layers above `li` refreshed
    /// when [`BetaOptions::refresh`] is on.
    pub fn children(
        decisions: &[Decision],
        beta: &[f32],
        alpha: Option<&Rc<Vec<Vec<f32>>>>,
        bounds: &Rc<LayerBox>,
        (li, j): (usize, usize),
        rows: usize,
    ) -> [Pending; 2] {
        [true, false].map(|active| {
            let mut decisions = decisions.to_vec();
            decisions.push((li, j, active));
            let mut beta = beta.to_vec();
            beta.extend(std::iter::repeat_n(0.0, rows));
            Pending { decisions, beta, alpha: alpha.cloned(), bounds: bounds.clone(), refresh_above: li }
        })
    }
}

/// What bounding a domain gives.
pub struct BoundedDomain {
    /// Lower bounds per row (the best iterate's).
    pub lb: Vec<f64>,
    /// The units to split next, best score first (empty when none is unstable; at most
    /// [`BetaOptions::candidates`]).
    pub candidates: Vec<(usize, usize)>,
    /// The last iterate's α per activation (`rows × K`).
    pub alpha: Vec<Vec<f32>>,
    /// The last iterate's β per decision and row.
    pub beta: Vec<f32>,
    /// The domain's layer bounds (clamped and refreshed).
    pub bounds: LayerBox,
    /// The corner of the box where the last iterate's linear bound of the branching row is
    /// lowest (`x_i = lo_i` where its input coefficient `Λ_i > 0`, `hi_i` where `< 0`): the
    /// relaxation's minimiser over the box, a candidate counterexample (α,β-CROWN checks the
    /// same "primal" point).
    pub primal: Vec<f64>,
}

/// What [`DomainBounder::bound_impl`] gives: full results, or a probe's lower bounds alone.
enum Bounded {
    Full(Vec<BoundedDomain>),
    Probe(Vec<Vec<f64>>),
}

/// The network, box and rows the domains of one clause share.
pub struct DomainBounder<'a> {
    net: &'a Network,
    x1: Tensor,
    lo: Vec<f64>,
    hi: Vec<f64>,
    rad: Vec<f64>,
    rows_flat: Vec<f64>,
    rows: usize,
    rhs: Vec<f64>,
    /// Groups of rows (clauses): a domain is closed when every group has a proved row.
    groups: Vec<std::ops::Range<usize>>,
    /// The output the rows bound (the network's last; an activation's input when an
    /// intermediate layer's bounds are refined).
    top: usize,
    /// Per activation: its output index `t` and shape.
    layers: Vec<(usize, Vec<usize>)>,
    shapes: Vec<Vec<usize>>,
    /// Settings.
    pub opts: BetaOptions,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Adam's state for one variable.
pub(crate) struct Adam {
    m: Tensor,
    v: Tensor,
}

impl Adam {
    pub(crate) fn new(v: &Var) -> Result<Self, String> {
        Ok(Adam { m: v.zeros_like().map_err(err)?, v: v.zeros_like().map_err(err)? })
    }

    /// One projected Adam step of descent on `g`; `hi = None`: projection to `≥ 0` only.
    pub(crate) fn step(&mut self, var: &Var, g: &Tensor, step: usize, lr: f64, hi: Option<f64>) -> Result<(), String> {
        const B1: f64 = 0.9;
        const B2: f64 = 0.999;
        let mut f = || -> candle_core::Result<()> {
            let g = g.detach();
            self.m = ((&self.m * B1)? + (&g * (1.0 - B1))?)?;
            self.v = ((&self.v * B2)? + (g.sqr()? * (1.0 - B2))?)?;
            let (c1, c2) = (1.0 - B1.powi(step as i32), 1.0 - B2.powi(step as i32));
            let den = ((&self.v / c2)?.sqrt()? + 1e-8)?;
            let next = (var.as_tensor() - (((&self.m / c1)? / den)? * lr)?)?;
            let next = match hi {
                Some(h) => next.clamp(0.0, h)?,
                None => next.maximum(0.0)?,
            };
            var.set(&next.detach())
        };
        f().map_err(err)
    }
}

impl<'a> DomainBounder<'a> {
    /// The bounder for the box `[lo, hi]` and `rows` (each as long as the output) with right-hand sides
    /// `rhs` (for branching on the row nearest to proving); `layers` are the activations'
    /// output indices with their shapes.
    pub fn new(
        net: &'a Network,
        lo: &[f64],
        hi: &[f64],
        rows: &[Vec<f64>],
        rhs: &[f64],
        opts: BetaOptions,
    ) -> Result<Self, String> {
        Self::at_output(net, None, lo, hi, rows, rhs, opts)
    }

    /// [`DomainBounder::new`] for rows over output `top` of the network (`None`: the last):
    /// the domains then split and relax only the activations below it, whose outputs `t ≤ top`.
    pub fn at_output(
        net: &'a Network,
        top: Option<usize>,
        lo: &[f64],
        hi: &[f64],
        rows: &[Vec<f64>],
        rhs: &[f64],
        opts: BetaOptions,
    ) -> Result<Self, String> {
        let k = lo.len();
        let (mid, rad) = crate::bounds::box_ball(lo, hi);
        let x1 = Tensor::from_vec(mid, (1, k), &Device::Cpu).map_err(err)?;
        let nodes = nets::no_grad(|| net.dual_nodes(&x1)).map_err(err)?;
        let top = top.unwrap_or(nodes.len());
        if top == 0 || top > nodes.len() {
            return Err(format!("output {top} of a network of {} layers", nodes.len()));
        }
        let outs = net.forward_all(&x1).map_err(err)?;
        let shapes: Vec<Vec<usize>> = outs.iter().map(|o| o.dims()[1..].to_vec()).collect();
        let width: usize = shapes[top].iter().product();
        if let Some(r) = rows.iter().find(|r| r.len() != width) {
            return Err(format!("a row of {} numbers for output {top} of {width}", r.len()));
        }
        let layers = nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| matches!(n, DualNode::Activation(_)) && *i < top)
            .map(|(i, _)| (i + 1, shapes[i].clone()))
            .collect();
        Ok(DomainBounder {
            net,
            x1,
            lo: lo.to_vec(),
            hi: hi.to_vec(),
            rad,
            rows_flat: rows.iter().flatten().copied().collect(),
            rows: rows.len(),
            rhs: rhs.to_vec(),
            groups: std::iter::once(0..rows.len()).collect(),
            top,
            layers,
            shapes,
            opts,
        })
    }

    /// Splits the rows into groups (clauses of one tree; default: one group of every row). The
    /// branching score follows the best row of the domain's worst group (the group nearest to
    /// keeping the domain open).
    pub fn with_groups(mut self, groups: Vec<std::ops::Range<usize>>) -> Result<Self, String> {
        if groups.is_empty() || groups.iter().any(|g| g.is_empty() || g.end > self.rows) {
            return Err(format!("row groups {groups:?} for {} rows", self.rows));
        }
        self.groups = groups;
        Ok(self)
    }

    /// The activations' output indices and shapes.
    pub fn layers(&self) -> &[(usize, Vec<usize>)] {
        &self.layers
    }

    /// Rows of the specification.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Bounds the domains `doms` in one batch with `iterations` Adam steps; `None` when the
    /// deadline passes first.
    pub fn bound(
        &self,
        doms: &[Pending],
        iterations: usize,
        deadline: Instant,
    ) -> Result<Option<Vec<BoundedDomain>>, String> {
        match self.bound_impl(doms, iterations, deadline, false)? {
            Some(Bounded::Full(v)) => Ok(Some(v)),
            Some(Bounded::Probe(_)) => Err("a probe where a full bound was asked".into()),
            None => Ok(None),
        }
    }

    /// The bound of each domain at its start (the parent's α and β, no optimisation, no
    /// branching gradient): per domain, its rows' lower bounds. `None` past the deadline.
    pub fn probe(&self, doms: &[Pending], deadline: Instant) -> Result<Option<Vec<Vec<f64>>>, String> {
        match self.bound_impl(doms, 0, deadline, true)? {
            Some(Bounded::Probe(v)) => Ok(Some(v)),
            Some(Bounded::Full(_)) => Err("a full bound where a probe was asked".into()),
            None => Ok(None),
        }
    }

    fn bound_impl(
        &self,
        doms: &[Pending],
        iterations: usize,
        deadline: Instant,
        probe: bool,
    ) -> Result<Option<Bounded>, String> {
        let b = doms.len();
        if b == 0 {
            return Ok(Some(if probe { Bounded::Probe(vec![]) } else { Bounded::Full(vec![]) }));
        }
        let dev = Device::Cpu;
        let k = self.rad.len();
        let n = self.rows;
        let xb = self.x1.broadcast_as((b, k)).and_then(|t| t.contiguous()).map_err(err)?;
        let dt = xb.dtype();
        let rb = Tensor::from_vec(self.rad.repeat(b), (b, k), &dev).map_err(err)?;
        // Parameters as constants: no gradient is made for them (only α, β, the bounds and the centre's).
        let nodes = nets::no_grad(|| self.net.dual_nodes(&xb)).map_err(err)?;
        // The centre as a variable: the bound's gradient in it is the input coefficient Λ.
        let xv = Var::from_tensor(&xb).map_err(err)?;
        let ball = InfBall::new(xv.as_tensor(), Epsilon::Tensor(rb)).map_err(err)?;
        let netb = dual_core::bounds::Net { nodes: &nodes, x: &xb, input: &ball };
        let refresh_above = doms.iter().map(|d| d.refresh_above).min().unwrap_or(usize::MAX);
        let with_b = |shape: &[usize], r: Option<usize>| {
            let mut s = vec![b];
            s.extend(r);
            s.extend_from_slice(shape);
            s
        };

        // 1. Layer bounds on each domain's set.
        let mut plain: Relaxed = (0..=nodes.len()).map(|_| None).collect();
        let mut clamped: Vec<(Vec<f64>, Vec<f64>)> = Vec::with_capacity(self.layers.len());
        for (li, (t, shape)) in self.layers.iter().enumerate() {
            if Instant::now() > deadline {
                return Ok(None);
            }
            let size: usize = shape.iter().product();
            let (mut lv, mut uv) = (Vec::with_capacity(b * size), Vec::with_capacity(b * size));
            for d in doms {
                let (l, u) = d.bounds.get(li).ok_or("a domain without bounds for every activation")?;
                if l.len() != size || u.len() != size {
                    return Err(format!("layer {li}: bounds of {} units for {size}", l.len()));
                }
                lv.extend_from_slice(l);
                uv.extend_from_slice(u);
            }
            if self.opts.refresh && li > refresh_above {
                let units: Vec<usize> =
                    (0..size).filter(|&j| (0..b).any(|d| lv[d * size + j] < 0.0 && uv[d * size + j] > 0.0)).collect();
                if !units.is_empty() {
                    let (lc, uc) = layer_bounds(&netb, &plain, &self.shapes, t - 1, &units, 1 << 28).map_err(err)?;
                    let lc = lc.to_dtype(DType::F64).and_then(|t| t.to_vec2::<f64>()).map_err(err)?;
                    let uc = uc.to_dtype(DType::F64).and_then(|t| t.to_vec2::<f64>()).map_err(err)?;
                    for (d, dom) in doms.iter().enumerate() {
                        if li <= dom.refresh_above {
                            continue;
                        }
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
            for (d, dom) in doms.iter().enumerate() {
                for &(_, unit, active) in dom.decisions.iter().filter(|x| x.0 == li) {
                    let i = d * size + unit;
                    if active {
                        lv[i] = lv[i].max(0.0);
                    } else {
                        uv[i] = uv[i].min(0.0);
                    }
                }
            }
            for i in 0..lv.len() {
                if lv[i] > uv[i] {
                    uv[i] = lv[i];
                }
            }
            let DualNode::Activation(act) = &nodes[t - 1] else {
                return Err(format!("layer {t} is not an activation"));
            };
            let lt =
                Tensor::from_vec(lv.clone(), with_b(shape, None), &dev).and_then(|t| t.to_dtype(dt)).map_err(err)?;
            let ut =
                Tensor::from_vec(uv.clone(), with_b(shape, None), &dev).and_then(|t| t.to_dtype(dt)).map_err(err)?;
            plain[*t] = Some(act.linear_relax(&lt, &ut, SlopeRule::Adaptive).map_err(err)?);
            clamped.push((lv, uv));
        }

        // 2. Variables: layer bounds (for branching), α, β, and the signs s of the decisions.
        let mut lu_vars = Vec::new();
        let mut alphas = Vec::new();
        let mut betas: Vec<Option<(Var, Tensor, Adam)>> = Vec::new();
        for (li, ((_, shape), (lv, uv))) in self.layers.iter().zip(&clamped).enumerate() {
            let size: usize = shape.iter().product();
            let mk = |v: &[f64], s: Vec<usize>| {
                Tensor::from_vec(v.to_vec(), s, &dev).and_then(|t| t.to_dtype(dt)).and_then(|t| Var::from_tensor(&t))
            };
            lu_vars.push((mk(lv, with_b(shape, None)).map_err(err)?, mk(uv, with_b(shape, None)).map_err(err)?));
            let mut a0 = Vec::with_capacity(b * n * size);
            for (d, dom) in doms.iter().enumerate() {
                match dom.alpha.as_ref().and_then(|a| a.get(li)) {
                    Some(a) if a.len() == n * size => a0.extend(a.iter().map(|v| *v as f64)),
                    _ => {
                        // CROWN's adaptive slope: 1 where u > −l.
                        for _ in 0..n {
                            a0.extend((0..size).map(|j| {
                                let i = d * size + j;
                                if uv[i] > -lv[i] {
                                    1.0
                                } else {
                                    0.0
                                }
                            }));
                        }
                    }
                }
            }
            let av = mk(&a0, with_b(shape, Some(n))).map_err(err)?;
            let adam = Adam::new(&av)?;
            alphas.push((av, adam));
            let any = doms.iter().any(|d| d.decisions.iter().any(|x| x.0 == li));
            if self.opts.beta && any {
                let mut beta0 = vec![0f64; b * n * size];
                let mut sign = vec![0f64; b * size];
                for (d, dom) in doms.iter().enumerate() {
                    for (q, &(l, unit, active)) in dom.decisions.iter().enumerate() {
                        if l != li {
                            continue;
                        }
                        sign[d * size + unit] = if active { -1.0 } else { 1.0 };
                        for r in 0..n {
                            let v = dom.beta.get(q * n + r).copied().unwrap_or(0.0) as f64;
                            beta0[(d * n + r) * size + unit] = v.max(0.0);
                        }
                    }
                }
                let bv = mk(&beta0, with_b(shape, Some(n))).map_err(err)?;
                let s =
                    Tensor::from_vec(sign, with_b(shape, Some(1)), &dev).and_then(|t| t.to_dtype(dt)).map_err(err)?;
                let adam = Adam::new(&bv)?;
                betas.push(Some((bv, s, adam)));
            } else {
                betas.push(None);
            }
        }
        let c = Tensor::from_vec(self.rows_flat.repeat(b), with_b(&self.shapes[self.top], Some(n)), &dev)
            .and_then(|t| t.to_dtype(dt))
            .map_err(err)?;

        // 3. Projected Adam; the best iterate per row is kept.
        let mut best: Option<Vec<Vec<f64>>> = None;
        let mut branch_grads = None;
        for it in 0..=iterations {
            if Instant::now() > deadline {
                return Ok(None);
            }
            let mut relax: Relaxed = (0..=nodes.len()).map(|_| None).collect();
            let mut extra = Vec::new();
            for (li, (t, _)) in self.layers.iter().enumerate() {
                let DualNode::Activation(act) = &nodes[t - 1] else {
                    return Err(format!("layer {t} is not an activation"));
                };
                // The layer bounds are variables only for the last iterate's branching gradient;
                // the Adam steps read α's and β's gradients alone, so before it they are constants
                // (the same values, no gradient made for them).
                let (lt, ut) = &lu_vars[li];
                let (lt, ut) = if it == iterations {
                    (lt.as_tensor().clone(), ut.as_tensor().clone())
                } else {
                    (lt.as_tensor().detach(), ut.as_tensor().detach())
                };
                let a = alphas[li].0.as_tensor();
                relax[*t] = Some(act.linear_relax(&lt, &ut, SlopeRule::Given(a)).map_err(err)?);
                if let Some((bv, s, _)) = &betas[li] {
                    // β_j s_j on the activation's input ẑ (output t − 1).
                    extra.push((t - 1, bv.as_tensor().broadcast_mul(s).map_err(err)?));
                }
            }
            let lb = backward_lower_with_terms(&netb, &relax, self.top, c.clone(), &extra).map_err(err)?;
            let vals = lb.to_dtype(DType::F64).and_then(|t| t.to_vec2::<f64>()).map_err(err)?;
            if probe {
                return Ok(Some(Bounded::Probe(vals)));
            }
            best = Some(match best {
                None => vals.clone(),
                Some(bs) => bs
                    .iter()
                    .zip(&vals)
                    .map(|(p, q)| p.iter().zip(q).map(|(a, c)| if c.is_nan() { *a } else { a.max(*c) }).collect())
                    .collect(),
            });
            if it == iterations {
                // The gradient of each domain's best row, for branching.
                let mut mask = vec![0f64; b * n];
                for (i, v) in vals.iter().enumerate() {
                    let best_in = |g: &std::ops::Range<usize>| {
                        g.clone().max_by(|&p, &q| (v[p] - self.rhs[p]).total_cmp(&(v[q] - self.rhs[q]))).unwrap_or(0)
                    };
                    let r = self
                        .groups
                        .iter()
                        .map(best_in)
                        .min_by(|&p, &q| (v[p] - self.rhs[p]).total_cmp(&(v[q] - self.rhs[q])))
                        .unwrap_or(0);
                    mask[i * n + r] = 1.0;
                }
                let mask = Tensor::from_vec(mask, (b, n), &dev).and_then(|mk| mk.to_dtype(dt)).map_err(err)?;
                branch_grads = Some((lb * mask).and_then(|t| t.sum_all()?.backward()).map_err(err)?);
                break;
            }
            let grads = lb.sum_all().and_then(|t| t.neg()?.backward()).map_err(err)?;
            for (av, adam) in alphas.iter_mut() {
                if let Some(g) = grads.get(av.as_tensor()) {
                    adam.step(av, g, it + 1, self.opts.lr_alpha, Some(1.0))?;
                }
            }
            for (bv, _, adam) in betas.iter_mut().flatten() {
                if let Some(g) = grads.get(bv.as_tensor()) {
                    adam.step(bv, g, it + 1, self.opts.lr_beta, None)?;
                }
            }
        }
        let best = best.ok_or("no iterate")?;
        let grads = branch_grads.ok_or("no branching gradient")?;
        let lam = match grads.get(xv.as_tensor()) {
            Some(g) => g.to_dtype(DType::F64).and_then(|g| g.flatten_all()?.to_vec1::<f64>()).map_err(err)?,
            None => vec![0.0; b * k],
        };
        let primal = |d: usize| -> Vec<f64> {
            (0..k)
                .map(|i| match lam[d * k + i] {
                    v if v > 0.0 => self.lo[i],
                    v if v < 0.0 => self.hi[i],
                    _ => 0.5 * (self.lo[i] + self.hi[i]),
                })
                .collect()
        };

        // 4. The next unit to split per domain.
        let keep = self.opts.candidates.max(1);
        let mut next: Vec<Vec<(f64, (usize, usize))>> = vec![Vec::with_capacity(keep + 1); b];
        for (li, ((lt, ut), (lv, uv))) in lu_vars.iter().zip(&clamped).enumerate() {
            let get = |v: &Var| -> Result<Vec<f64>, String> {
                match grads.get(v.as_tensor()) {
                    Some(g) => g.to_dtype(DType::F64).and_then(|g| g.flatten_all()?.to_vec1()).map_err(err),
                    None => Ok(vec![0.0; lv.len()]),
                }
            };
            let (gl, gu) = (get(lt)?, get(ut)?);
            let size = lv.len() / b;
            for (d, nd) in next.iter_mut().enumerate() {
                for j in 0..size {
                    let i = d * size + j;
                    let (l, u) = (lv[i], uv[i]);
                    if !(l < 0.0 && u > 0.0) {
                        continue;
                    }
                    // Both children should gain; a tiny width term breaks ties among zero gradients.
                    let gain = (gl[i].abs() * -l).min(gu[i].abs() * u) + 1e-9 * (u * -l / (u - l));
                    if nd.len() < keep || gain > nd[nd.len() - 1].0 {
                        let at = nd.partition_point(|(g, _)| *g >= gain);
                        nd.insert(at, (gain, (li, j)));
                        nd.truncate(keep);
                    }
                }
            }
        }

        // 5. Per domain: α, β and the layer bounds for its children.
        let mut alpha_out: Vec<Vec<Vec<f32>>> = vec![Vec::with_capacity(self.layers.len()); b];
        for (av, _) in &alphas {
            let flat =
                av.as_tensor().to_dtype(DType::F32).and_then(|t| t.flatten_all()?.to_vec1::<f32>()).map_err(err)?;
            let per = flat.len() / b;
            for (d, out) in alpha_out.iter_mut().enumerate() {
                out.push(flat[d * per..(d + 1) * per].to_vec());
            }
        }
        let beta_flat: Vec<Option<Vec<f32>>> = betas
            .iter()
            .map(|x| {
                x.as_ref()
                    .map(|(bv, _, _)| {
                        bv.as_tensor().to_dtype(DType::F32).and_then(|t| t.flatten_all()?.to_vec1::<f32>()).map_err(err)
                    })
                    .transpose()
            })
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(b);
        for (d, ((dom, lb), (nx, alpha))) in doms.iter().zip(best).zip(next.into_iter().zip(alpha_out)).enumerate() {
            let mut beta = Vec::with_capacity(dom.decisions.len() * n);
            for &(li, unit, _) in &dom.decisions {
                let size: usize = self.layers[li].1.iter().product();
                for r in 0..n {
                    beta.push(beta_flat[li].as_ref().map_or(0.0, |v| v[(d * n + r) * size + unit]));
                }
            }
            let bounds = clamped
                .iter()
                .map(|(lv, uv)| {
                    let size = lv.len() / b;
                    (lv[d * size..(d + 1) * size].to_vec(), uv[d * size..(d + 1) * size].to_vec())
                })
                .collect();
            let candidates = nx.into_iter().map(|(_, u)| u).collect();
            out.push(BoundedDomain { lb, candidates, alpha, beta, bounds, primal: primal(d) });
        }
        Ok(Some(Bounded::Full(out)))
    }
}
