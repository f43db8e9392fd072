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
//! Networks: sequential or DenseSequential chains of Linear, Conv2d (a sparse linear map), ReLU,
//! Flatten and Identity layers (Dense layers whose parts are Linear, Conv2d or Identity, summed).
//! Inputs and every output are flattened row-major (`[C, H, W]` as PyTorch's `Flatten` does).
//! Input sets: an l_inf box (one radius or one per feature, optionally clipped, e.g. to
//! `[0, 1]`) or an l2 ball.

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

/// A sparse matrix stored row by row: row `r` holds the nonzero `(column, value)` pairs
/// `entries[row_start[r]..row_start[r + 1]]`.
#[derive(Debug, Clone)]
pub struct Matrix {
    /// Rows (outputs).
    pub rows: usize,
    /// Columns (inputs).
    pub cols: usize,
    row_start: Vec<usize>,
    entries: Vec<(usize, f64)>,
}

impl Matrix {
    /// The matrix of a dense row-major array of `rows * cols` values (zeros dropped).
    pub fn from_dense(rows: usize, cols: usize, data: &[f64]) -> Result<Self> {
        if data.len() != rows * cols {
            bail!("{} values for a {rows} x {cols} matrix", data.len());
        }
        let mut m = Matrix { rows, cols, row_start: vec![0], entries: Vec::new() };
        for r in 0..rows {
            let row = &data[r * cols..(r + 1) * cols];
            m.entries.extend(row.iter().enumerate().filter(|(_, a)| **a != 0.0).map(|(c, &a)| (c, a)));
            m.row_start.push(m.entries.len());
        }
        Ok(m)
    }

    /// The linear map of a 2-d convolution (PyTorch's cross-correlation, no bias) on inputs of
    /// shape `[C, H, W]`, both sides flattened row-major: output `(o, i, j)` is
    /// `Σ_{c,a,b} weight[o, c, a, b] · in[c, s·i − p + a, s·j − p + b]`, the terms outside the
    /// input being the zero padding. `weight` is `[O, C, k, k]` row-major. Returns the matrix and
    /// the output shape `[O, H', W']`, `H' = (H + 2p − k) / s + 1` (rounded down), likewise `W'`.
    pub fn conv2d(
        weight: &[f64],
        in_shape: [usize; 3],
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<(Self, [usize; 3])> {
        let [c_in, h, w] = in_shape;
        if weight.len() != out_channels * c_in * kernel * kernel {
            bail!("{} weights for a {out_channels} x {c_in} x {kernel} x {kernel} convolution", weight.len());
        }
        if stride == 0 || kernel == 0 || h + 2 * padding < kernel || w + 2 * padding < kernel {
            bail!("a convolution with kernel {kernel}, stride {stride}, padding {padding} on a {h} x {w} input");
        }
        let (ho, wo) = ((h + 2 * padding - kernel) / stride + 1, (w + 2 * padding - kernel) / stride + 1);
        let mut m =
            Matrix { rows: out_channels * ho * wo, cols: c_in * h * w, row_start: vec![0], entries: Vec::new() };
        for o in 0..out_channels {
            for i in 0..ho {
                for j in 0..wo {
                    for c in 0..c_in {
                        for a in 0..kernel {
                            let Some(y) = (i * stride + a).checked_sub(padding).filter(|&y| y < h) else { continue };
                            for b in 0..kernel {
                                let Some(x) = (j * stride + b).checked_sub(padding).filter(|&x| x < w) else {
                                    continue;
                                };
                                let v = weight[((o * c_in + c) * kernel + a) * kernel + b];
                                if v != 0.0 {
                                    m.entries.push(((c * h + y) * w + x, v));
                                }
                            }
                        }
                    }
                    m.row_start.push(m.entries.len());
                }
            }
        }
        Ok((m, [out_channels, ho, wo]))
    }

    /// The nonzero `(column, value)` pairs of row `r`.
    pub fn row(&self, r: usize) -> &[(usize, f64)] {
        &self.entries[self.row_start[r]..self.row_start[r + 1]]
    }

    /// `M x`.
    pub fn apply(&self, x: &[f64]) -> Vec<f64> {
        (0..self.rows).map(|r| self.row(r).iter().map(|&(c, a)| a * x[c]).sum()).collect()
    }
}

/// One layer of a [`LpNetwork`].
#[derive(Debug, Clone)]
pub enum Step {
    /// `Σ_s W_s outs[s] + b` (a Linear or Conv2d layer, or a Dense sum of Linear, Conv2d and
    /// Identity parts). `None` as a matrix stands for the identity.
    Affine {
        /// `(index of the output read, W or None for the identity)`.
        parts: Vec<(usize, Option<Matrix>)>,
        /// The bias (of a convolution: one value per output unit, the channel's bias repeated).
        bias: Vec<f64>,
    },
    /// ReLU of the previous output.
    Relu,
    /// The previous output unchanged (Flatten, a bare Identity layer).
    Same,
}

/// A piecewise-linear network in f64, read from a [`Network`]: `outs[0]` is the flattened
/// input, `outs[t]` the output of layer `t` (1-based, as in the dual network's bounds), every
/// output flattened row-major.
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

/// Adds `b` to the running sum of a Dense layer's biases.
fn add_bias(sum: &mut Option<Vec<f64>>, b: Vec<f64>) {
    *sum = Some(match sum.take() {
        None => b,
        Some(a) => a.iter().zip(&b).map(|(x, y)| x + y).collect(),
    });
}

impl LpNetwork {
    /// Reads the layers and weights of `net`. Errors on layers with no LP here (batch norm,
    /// custom layers).
    pub fn from_network(net: &Network) -> Result<Self> {
        let sd: HashMap<String, Tensor> = net.state_dict().into_iter().collect();
        let weight =
            |name: String| -> Result<Vec<f64>> { to_f64(sd.get(&name).with_context(|| format!("no weight {name}"))?) };
        let input_size: usize = net.input_shape().iter().product();
        // The shape of every output (without the batch dimension); its product is the width.
        let mut shapes = vec![net.input_shape().to_vec()];
        let mut steps = Vec::new();
        for (i, layer) in net.spec().layers.iter().enumerate() {
            let t = i + 1;
            let prev = shapes[t - 1].clone();
            let parts: Vec<(usize, &LayerSpec, String)> = match layer {
                LayerSpec::ReLU | LayerSpec::Identity => {
                    steps.push(if matches!(layer, LayerSpec::ReLU) { Step::Relu } else { Step::Same });
                    shapes.push(prev);
                    continue;
                }
                LayerSpec::Flatten => {
                    steps.push(Step::Same);
                    shapes.push(vec![prev.iter().product()]);
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
            let mut shape: Option<Vec<usize>> = None;
            for (src, spec, prefix) in parts {
                let width: usize = shapes[src].iter().product();
                let (w, out) = match spec {
                    LayerSpec::Linear { in_features, out_features, .. } => {
                        // A Linear layer acts on the last dimension: one vector only if the
                        // others are 1.
                        if *in_features != width || shapes[src].last() != Some(in_features) {
                            bail!(
                                "layer {i}: Linear expects {in_features} inputs, output {src} has shape {:?}",
                                shapes[src]
                            );
                        }
                        if let Some(b) = sd.get(&format!("{prefix}bias")) {
                            add_bias(&mut bias, to_f64(b)?);
                        }
                        let w = Matrix::from_dense(*out_features, *in_features, &weight(format!("{prefix}weight"))?)?;
                        let mut out = shapes[src].clone();
                        *out.last_mut().expect("a nonempty shape") = *out_features;
                        (Some(w), out)
                    }
                    LayerSpec::Conv2d { in_channels, out_channels, kernel_size, stride, padding, .. } => {
                        let in_shape: [usize; 3] = match shapes[src][..] {
                            [c, h, w] if c == *in_channels => [c, h, w],
                            _ => bail!(
                                "layer {i}: Conv2d expects {in_channels} channels, output {src} has shape {:?}",
                                shapes[src]
                            ),
                        };
                        let w = weight(format!("{prefix}weight"))?;
                        let (m, out) = Matrix::conv2d(&w, in_shape, *out_channels, *kernel_size, *stride, *padding)
                            .with_context(|| format!("layer {i}"))?;
                        if let Some(b) = sd.get(&format!("{prefix}bias")) {
                            let per_unit = out[1] * out[2];
                            add_bias(
                                &mut bias,
                                to_f64(b)?.iter().flat_map(|&v| std::iter::repeat_n(v, per_unit)).collect(),
                            );
                        }
                        (Some(m), out.to_vec())
                    }
                    LayerSpec::Identity => (None, shapes[src].clone()),
                    other => {
                        bail!(
                            "layer {i}: no LP for {other:?} (only Linear, Conv2d, ReLU, Flatten, Identity and Dense layers)"
                        )
                    }
                };
                if shape.as_ref().is_some_and(|s| *s != out) {
                    bail!("layer {i}: Dense parts of different shapes ({:?} and {out:?})", shape.unwrap());
                }
                shape = Some(out);
                mats.push((src, w));
            }
            let shape = shape.with_context(|| format!("layer {i}: a Dense layer without parts"))?;
            let k = shape.iter().product();
            steps.push(Step::Affine { parts: mats, bias: bias.unwrap_or_else(|| vec![0.0; k]) });
            shapes.push(shape);
        }
        let widths = shapes.iter().map(|s| s.iter().product()).collect();
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

    /// Every output `outs[0..=L]` of the network at the flattened input `x`, in f64: the exact
    /// arithmetic the LP constrains, to compare with the network's own forward pass.
    pub fn forward(&self, x: &[f64]) -> Result<Vec<Vec<f64>>> {
        if x.len() != self.input_size {
            bail!("input of size {} for a network with {} inputs", x.len(), self.input_size);
        }
        let mut outs = vec![x.to_vec()];
        for step in &self.steps {
            let prev = outs.last().expect("at least the input");
            let y = match step {
                Step::Same => prev.clone(),
                Step::Relu => prev.iter().map(|v| v.max(0.0)).collect(),
                Step::Affine { parts, bias } => {
                    let mut y = bias.clone();
                    for (src, w) in parts {
                        let term = match w {
                            Some(w) => w.apply(&outs[*src]),
                            None => outs[*src].clone(),
                        };
                        y.iter_mut().zip(term).for_each(|(a, b)| *a += b);
                    }
                    y
                }
            };
            outs.push(y);
        }
        Ok(outs)
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
                                Some(w) => e.extend(w.row(r).iter().map(|&(col, a)| (outs[*src][col], -a))),
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
