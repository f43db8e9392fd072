//! The linear program behind the dual network, solved with Clarabel (f64).
//!
//! Wong & Kolter bound `min cᵀ f(x')` over an input set by the LP in which every ReLU is replaced
//! by its convex relaxation, given bounds `l ≤ ẑ ≤ u` of its input (those the dual network
//! computed):
//! * `l ≥ 0`: `z = ẑ`; `u ≤ 0`: `z = 0`;
//! * unstable (`l < 0 < u`), [`Relaxation::Triangle`] (the paper's LP):
//!   `z ≥ 0, z ≥ ẑ, z ≤ u (ẑ - l) / (u - l)`;
//! * unstable, [`Relaxation::FixedSlope`] (the relaxation the dual network solves exactly, with
//!   `d = u / (u - l)`): `d ẑ ≤ z ≤ d (ẑ - l)`.
//!
//! The dual objective `J(c)` is a feasible value of the triangle LP's dual, hence `J(c) ≤ LP`,
//! and it equals the optimum of the fixed-slope LP.
//!
//! Networks: sequential or DenseSequential chains of Linear, ReLU, Flatten and Identity layers
//! (Dense layers whose parts are Linear or Identity). Inputs are flattened row-major, as
//! PyTorch's `Flatten` does. Input sets: an l_inf box (one radius or one per feature, optionally
//! clipped, e.g. to `[0, 1]`) or an l2 ball.

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Tensor};
use clarabel::algebra::CscMatrix;
use clarabel::solver::{DefaultSettingsBuilder, DefaultSolver, IPSolver, SolverStatus, SupportedConeT};
use dual_core::DualNetwork;
use nets::{LayerSpec, Network};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// A sparse linear form `Σ a_i v_i` as `(variable, coefficient)` pairs.
pub type LinExpr = Vec<(usize, f64)>;

/// `minimise qᵀv` subject to equalities `aᵀv = b`, inequalities `aᵀv ≤ b` and at most one
/// second-order cone on affine rows `b - aᵀv` (first row the radius).
#[derive(Debug, Default, Clone)]
pub struct LinearProgram {
    n: usize,
    eq: Vec<(LinExpr, f64)>,
    le: Vec<(LinExpr, f64)>,
    soc: Vec<(LinExpr, f64)>,
}

/// What the solver found.
#[derive(Debug, Clone, Serialize)]
pub struct LpSolution {
    /// The primal objective value.
    pub value: f64,
    /// The dual objective value (equal to `value` up to the solver's tolerance).
    pub dual_value: f64,
    /// `Solved` or `AlmostSolved` (reduced accuracy).
    pub status: String,
    /// Interior-point iterations.
    pub iterations: u32,
    /// The optimal point.
    #[serde(skip)]
    pub x: Vec<f64>,
}

impl LinearProgram {
    /// An empty program.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of variables.
    pub fn num_vars(&self) -> usize {
        self.n
    }

    /// Number of constraint rows (equalities, inequalities, cone rows).
    pub fn num_rows(&self) -> usize {
        self.eq.len() + self.le.len() + self.soc.len()
    }

    /// Adds `k` free variables; returns their indices.
    pub fn add_vars(&mut self, k: usize) -> Vec<usize> {
        let v = (self.n..self.n + k).collect();
        self.n += k;
        v
    }

    /// `e · v = rhs`.
    pub fn add_eq(&mut self, e: LinExpr, rhs: f64) {
        self.eq.push((e, rhs));
    }

    /// `e · v ≤ rhs`.
    pub fn add_le(&mut self, e: LinExpr, rhs: f64) {
        self.le.push((e, rhs));
    }

    /// `‖v[vars] - center‖₂ ≤ radius` (replaces an earlier cone).
    pub fn set_l2_ball(&mut self, vars: &[usize], center: &[f64], radius: f64) {
        self.soc.clear();
        // Rows b - a v: (radius - 0, -center_i - (-v_i)).
        self.soc.push((Vec::new(), radius));
        for (&v, &c) in vars.iter().zip(center) {
            self.soc.push((vec![(v, -1.0)], -c));
        }
    }

    /// Minimises `objective · v`. Errors unless the solver reports an optimum (possibly of
    /// reduced accuracy).
    pub fn minimize(&self, objective: &[(usize, f64)]) -> Result<LpSolution> {
        let mut q = vec![0.0; self.n];
        for &(i, a) in objective {
            if i >= self.n {
                bail!("objective refers to variable {i} of {}", self.n);
            }
            q[i] += a;
        }
        let (mut ri, mut ci, mut vals, mut b) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut cones = Vec::new();
        for (k, rows) in [&self.eq, &self.le, &self.soc].into_iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            for (row, rhs) in rows {
                let r = b.len();
                for &(j, a) in row {
                    ri.push(r);
                    ci.push(j);
                    vals.push(a);
                }
                b.push(*rhs);
            }
            cones.push(match k {
                0 => SupportedConeT::ZeroConeT(rows.len()),
                1 => SupportedConeT::NonnegativeConeT(rows.len()),
                _ => SupportedConeT::SecondOrderConeT(rows.len()),
            });
        }
        let a = CscMatrix::new_from_triplets(b.len(), self.n, ri, ci, vals);
        let p = CscMatrix::<f64>::zeros((self.n, self.n));
        let settings = DefaultSettingsBuilder::default()
            .verbose(false)
            .tol_gap_abs(1e-9)
            .tol_gap_rel(1e-9)
            .tol_feas(1e-9)
            .max_iter(500)
            .build()
            .map_err(|e| anyhow!("clarabel settings: {e:?}"))?;
        let mut solver =
            DefaultSolver::new(&p, &q, &a, &b, &cones, settings).map_err(|e| anyhow!("clarabel setup: {e}"))?;
        solver.solve();
        let s = &solver.solution;
        match s.status {
            SolverStatus::Solved | SolverStatus::AlmostSolved => Ok(LpSolution {
                value: s.obj_val,
                dual_value: s.obj_val_dual,
                status: format!("{:?}", s.status),
                iterations: s.iterations,
                x: s.x.clone(),
            }),
            other => bail!("the LP was not solved: {other:?} after {} iterations", s.iterations),
        }
    }
}

// ------------------------------------------------------------------------------------------
// The network as plain numbers.

/// A dense matrix, row-major.
#[derive(Debug, Clone)]
pub struct Matrix {
    /// Rows (outputs).
    pub rows: usize,
    /// Columns (inputs).
    pub cols: usize,
    /// `rows * cols` entries.
    pub data: Vec<f64>,
}

impl Matrix {
    fn row(&self, r: usize) -> &[f64] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
}

/// One layer of a [`LpNetwork`].
#[derive(Debug, Clone)]
pub enum Step {
    /// `Σ_s W_s outs[s] + b` (a Linear layer, or a Dense sum of Linear / Identity parts).
    /// `None` as a matrix stands for the identity.
    Affine {
        /// `(index of the output read, W or None for the identity)`.
        parts: Vec<(usize, Option<Matrix>)>,
        /// The bias.
        bias: Vec<f64>,
    },
    /// ReLU of the previous output.
    Relu,
    /// The previous output unchanged (Flatten, a bare Identity layer).
    Same,
}

/// A piecewise-linear network in f64, read from a [`Network`]: `outs[0]` is the flattened
/// input, `outs[t]` the output of layer `t` (1-based, as in the dual network's bounds).
#[derive(Debug, Clone)]
pub struct LpNetwork {
    /// Size of the flattened input.
    pub input_size: usize,
    /// The layers.
    pub steps: Vec<Step>,
    /// Size of every output, `widths[0] = input_size`.
    pub widths: Vec<usize>,
}

fn to_f64(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

impl LpNetwork {
    /// Reads the layers and weights of `net`. Errors on layers with no LP here (convolutions,
    /// batch norm, custom layers).
    pub fn from_network(net: &Network) -> Result<Self> {
        let sd: HashMap<String, Tensor> = net.state_dict().into_iter().collect();
        let input_size: usize = net.input_shape().iter().product();
        let mut widths = vec![input_size];
        let mut steps = Vec::new();
        for (i, layer) in net.spec().layers.iter().enumerate() {
            let t = i + 1;
            let prev = widths[t - 1];
            let parts: Vec<(usize, &LayerSpec, String)> = match layer {
                LayerSpec::ReLU => {
                    steps.push(Step::Relu);
                    widths.push(prev);
                    continue;
                }
                LayerSpec::Flatten | LayerSpec::Identity => {
                    steps.push(Step::Same);
                    widths.push(prev);
                    continue;
                }
                LayerSpec::Dense { parts } => {
                    let m = parts.len();
                    if m == 0 || m > t {
                        bail!("layer {i}: a Dense layer with {m} parts at position {t}");
                    }
                    parts
                        .iter()
                        .enumerate()
                        .filter_map(|(p, s)| s.as_ref().map(|s| (t - m + p, s, format!("{i}.Ws.{p}."))))
                        .collect()
                }
                other => vec![(t - 1, other, format!("{i}."))],
            };
            let mut mats = Vec::new();
            let mut bias: Option<Vec<f64>> = None;
            let mut width: Option<usize> = None;
            for (src, spec, prefix) in parts {
                let (w, out) = match spec {
                    LayerSpec::Linear { in_features, out_features, .. } => {
                        if *in_features != widths[src] {
                            bail!("layer {i}: Linear expects {in_features} inputs, output {src} has {}", widths[src]);
                        }
                        let w =
                            sd.get(&format!("{prefix}weight")).with_context(|| format!("no weight {prefix}weight"))?;
                        if let Some(b) = sd.get(&format!("{prefix}bias")) {
                            let b = to_f64(b)?;
                            bias = Some(match bias {
                                None => b,
                                Some(a) => a.iter().zip(&b).map(|(x, y)| x + y).collect(),
                            });
                        }
                        (Some(Matrix { rows: *out_features, cols: *in_features, data: to_f64(w)? }), *out_features)
                    }
                    LayerSpec::Identity => (None, widths[src]),
                    other => {
                        bail!("layer {i}: no LP for {other:?} (only Linear, ReLU, Flatten, Identity and Dense layers)")
                    }
                };
                if width.is_some_and(|k| k != out) {
                    bail!("layer {i}: Dense parts of different widths");
                }
                width = Some(out);
                mats.push((src, w));
            }
            let k = width.with_context(|| format!("layer {i}: a Dense layer without parts"))?;
            widths.push(k);
            steps.push(Step::Affine { parts: mats, bias: bias.unwrap_or_else(|| vec![0.0; k]) });
        }
        Ok(LpNetwork { input_size, steps, widths })
    }

    /// The indices `t` of the ReLU layers (the keys of [`ReluBounds`]).
    pub fn relu_layers(&self) -> Vec<usize> {
        self.steps.iter().enumerate().filter(|(_, s)| matches!(s, Step::Relu)).map(|(k, _)| k + 1).collect()
    }

    /// Number of outputs of the last layer.
    pub fn output_size(&self) -> usize {
        *self.widths.last().expect("at least the input")
    }
}

/// Bounds `(l, u)` of the input of every ReLU, keyed by the ReLU's layer index `t` (1-based).
pub type ReluBounds = BTreeMap<usize, (Vec<f64>, Vec<f64>)>;

/// Example `b`'s ReLU bounds as the dual network computed them.
pub fn example_bounds(dual: &DualNetwork, b: usize) -> Result<ReluBounds> {
    let n = dual.batch_size();
    if b >= n {
        bail!("example {b} of a batch of {n}");
    }
    let mut out = ReluBounds::new();
    for lb in dual.bounds() {
        let l = to_f64(&lb.lower.get(b)?)?;
        let u = to_f64(&lb.upper.get(b)?)?;
        out.insert(lb.layer, (l, u));
    }
    Ok(out)
}

/// The input set of the LP.
#[derive(Debug, Clone)]
pub enum InputSet {
    /// `lo ≤ x' ≤ hi` (an l_inf ball, optionally intersected with a box).
    Box {
        /// Lower corner.
        lo: Vec<f64>,
        /// Upper corner.
        hi: Vec<f64>,
    },
    /// `‖x' - center‖₂ ≤ radius`.
    L2 {
        /// Center.
        center: Vec<f64>,
        /// Radius.
        radius: f64,
    },
}

impl InputSet {
    /// The l_inf ball of radius `eps` around `x`, intersected with `clip` if given.
    pub fn linf(x: &[f64], eps: f64, clip: Option<(f64, f64)>) -> Self {
        Self::linf_per_feature(x, &vec![eps; x.len()], clip)
    }

    /// The l_inf box `|x'_i - x_i| ≤ eps_i` (one radius per feature), intersected with `clip` if
    /// given.
    pub fn linf_per_feature(x: &[f64], eps: &[f64], clip: Option<(f64, f64)>) -> Self {
        assert_eq!(x.len(), eps.len(), "one radius per feature");
        let (a, b) = clip.unwrap_or((f64::NEG_INFINITY, f64::INFINITY));
        InputSet::Box {
            lo: x.iter().zip(eps).map(|(v, e)| (v - e).max(a)).collect(),
            hi: x.iter().zip(eps).map(|(v, e)| (v + e).min(b)).collect(),
        }
    }

    fn size(&self) -> usize {
        match self {
            InputSet::Box { lo, .. } => lo.len(),
            InputSet::L2 { center, .. } => center.len(),
        }
    }
}

/// How an unstable ReLU is relaxed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Relaxation {
    /// `z ≥ 0, z ≥ ẑ, z ≤ u (ẑ - l) / (u - l)`: the LP of Wong & Kolter.
    Triangle,
    /// `d ẑ ≤ z ≤ d (ẑ - l)`, `d = u / (u - l)`: what the dual network solves exactly.
    FixedSlope,
}

/// The LP of a network's outputs `0..=last` over an input set.
#[derive(Debug, Clone)]
pub struct NetworkLp {
    /// The program.
    pub lp: LinearProgram,
    /// The variables of every output `0..=last`.
    pub outputs: Vec<Vec<usize>>,
    /// Unstable ReLU units relaxed.
    pub unstable: usize,
}

impl NetworkLp {
    /// Builds the relaxation of layers `1..=last` (`None`: the whole network).
    pub fn build(
        net: &LpNetwork,
        set: &InputSet,
        bounds: &ReluBounds,
        relax: Relaxation,
        last: Option<usize>,
    ) -> Result<Self> {
        let last = last.unwrap_or(net.steps.len());
        if last > net.steps.len() {
            bail!("layer {last} of a network of {} layers", net.steps.len());
        }
        if set.size() != net.input_size {
            bail!("input set of size {} for a network with {} inputs", set.size(), net.input_size);
        }
        let mut lp = LinearProgram::new();
        let x = lp.add_vars(net.input_size);
        match set {
            InputSet::Box { lo, hi } => {
                for (i, &v) in x.iter().enumerate() {
                    if !(lo[i] <= hi[i]) {
                        bail!("empty input box at feature {i}: [{}, {}]", lo[i], hi[i]);
                    }
                    lp.add_le(vec![(v, 1.0)], hi[i]);
                    lp.add_le(vec![(v, -1.0)], -lo[i]);
                }
            }
            InputSet::L2 { center, radius } => {
                if !(*radius >= 0.0) {
                    bail!("negative l2 radius {radius}");
                }
                lp.set_l2_ball(&x, center, *radius);
            }
        }
        let mut outs = vec![x];
        let mut unstable = 0;
        for (k, step) in net.steps[..last].iter().enumerate() {
            let t = k + 1;
            let v = match step {
                Step::Same => outs[t - 1].clone(),
                Step::Relu => {
                    let (l, u) = bounds.get(&t).with_context(|| format!("no bounds for the ReLU at layer {t}"))?;
                    let zhat = outs[t - 1].clone();
                    if l.len() != zhat.len() || u.len() != zhat.len() {
                        bail!(
                            "bounds of the ReLU at layer {t} have {} / {} entries for {} units",
                            l.len(),
                            u.len(),
                            zhat.len()
                        );
                    }
                    let z = lp.add_vars(zhat.len());
                    for j in 0..zhat.len() {
                        let (l, u, zh, zo) = (l[j], u[j], zhat[j], z[j]);
                        if !(l <= u) {
                            bail!("ReLU at layer {t}, unit {j}: lower bound {l} above upper bound {u}");
                        }
                        if l >= 0.0 {
                            lp.add_eq(vec![(zo, 1.0), (zh, -1.0)], 0.0);
                        } else if u <= 0.0 {
                            lp.add_eq(vec![(zo, 1.0)], 0.0);
                        } else {
                            unstable += 1;
                            let d = u / (u - l);
                            match relax {
                                Relaxation::Triangle => {
                                    lp.add_le(vec![(zo, -1.0)], 0.0);
                                    lp.add_le(vec![(zh, 1.0), (zo, -1.0)], 0.0);
                                }
                                Relaxation::FixedSlope => lp.add_le(vec![(zh, d), (zo, -1.0)], 0.0),
                            }
                            // z ≤ d (ẑ - l).
                            lp.add_le(vec![(zo, 1.0), (zh, -d)], -d * l);
                        }
                    }
                    z
                }
                Step::Affine { parts, bias } => {
                    let z = lp.add_vars(bias.len());
                    for (r, &zr) in z.iter().enumerate() {
                        let mut e = vec![(zr, 1.0)];
                        for (src, w) in parts {
                            match w {
                                Some(w) => e.extend(
                                    w.row(r)
                                        .iter()
                                        .zip(&outs[*src])
                                        .filter(|(a, _)| **a != 0.0)
                                        .map(|(&a, &v)| (v, -a)),
                                ),
                                None => e.push((outs[*src][r], -1.0)),
                            }
                        }
                        lp.add_eq(e, bias[r]);
                    }
                    z
                }
            };
            outs.push(v);
        }
        Ok(NetworkLp { lp, outputs: outs, unstable })
    }

    /// The variables of the last output built.
    pub fn output(&self) -> &[usize] {
        self.outputs.last().expect("at least the input")
    }

    /// `min cᵀ out` over the relaxation.
    pub fn minimize_output(&self, c: &[f64]) -> Result<LpSolution> {
        let out = self.output();
        if c.len() != out.len() {
            bail!("objective of size {} for {} outputs", c.len(), out.len());
        }
        self.lp.minimize(&out.iter().zip(c).filter(|(_, a)| **a != 0.0).map(|(&v, &a)| (v, a)).collect::<Vec<_>>())
    }
}
