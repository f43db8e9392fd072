//! The engine on its own: test-only layers (a dense matrix, the Wong–Kolter ReLU relaxation, an
//! l_inf ball) written here against the traits, so `DualNetwork::build` and `J(c)` are checked
//! without `dual-layers` or `nets`.
//!
//! What is asserted: bounds by hand on a net small enough to do on paper; every form (forward,
//! backward, auto) and every memory budget gives the same bounds; the bounds contain every
//! sampled pre-activation and `J(c)` never exceeds `cᵀ f(x')` on samples of the ball; with no
//! unstable ReLU `J(c)` is the exact minimum (a vertex of the ball); skip connections (a layer
//! reading the last two outputs); bad input is an error, not a panic.

use candle_core::{DType, Device, Tensor};
use dual_core::{
    BoundForm, DualActivation, DualAffine, DualError, DualNetwork, DualNode, DualOptions, DualSource, Inputs,
    Relaxation, Result,
};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::ops::Range;

const DT: DType = DType::F64;

/// `z = Σ_i W_i x_i + b` over the last `W.len()` outputs (one: a plain linear layer).
struct Matrix {
    w: Vec<Tensor>,
    b: Tensor,
}

impl Matrix {
    fn new(w: &[Vec<Vec<f64>>], b: &[f64]) -> Self {
        let w = w.iter().map(|m| Tensor::new(m.clone(), &Device::Cpu).unwrap()).collect();
        Matrix { w, b: Tensor::new(b, &Device::Cpu).unwrap() }
    }
}

impl DualAffine for Matrix {
    fn name(&self) -> String {
        format!("Matrix(x{})", self.w.len())
    }
    fn inputs(&self) -> Inputs {
        if self.w.len() == 1 {
            Inputs::Last
        } else {
            Inputs::LastM(self.w.len())
        }
    }
    fn forward(&self, xs: &[Option<&Tensor>], with_bias: bool) -> Result<Option<Tensor>> {
        let mut out: Option<Tensor> = None;
        for (x, w) in xs.iter().zip(&self.w) {
            if let Some(x) = x {
                let y = x.broadcast_matmul(&w.t()?)?;
                out = Some(match out {
                    None => y,
                    Some(o) => o.broadcast_add(&y)?,
                });
            }
        }
        match (out, with_bias) {
            (Some(o), true) => Ok(Some(o.broadcast_add(&self.b)?)),
            (o, _) => Ok(o),
        }
    }
    fn transpose(&self, nu: &Tensor) -> Result<Vec<Option<Tensor>>> {
        self.w.iter().map(|w| Ok(Some(nu.broadcast_matmul(w)?))).collect()
    }
    fn bias_term(&self, nu: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(nu.broadcast_mul(&self.b)?.sum(2)?))
    }
}

/// ReLU with the Wong–Kolter relaxation: slope `d = u/(u−l)` on unstable units (1 active, 0
/// dead), and the gap `0 ≤ δ_j ≤ −d_j l_j` as a source of free variables.
struct Relu;

struct ReluRelaxation {
    d: Tensor,
    src: GapSource,
}

/// The gaps of the unstable units: per example, the list of unstable units and `w_j = −d_j l_j`.
struct GapSource {
    units: Vec<Vec<usize>>,
    width: Tensor,
    dim: usize,
}

impl DualActivation for Relu {
    fn name(&self) -> String {
        "Relu".into()
    }
    fn relax(&self, lower: &Tensor, upper: &Tensor) -> Result<Box<dyn Relaxation>> {
        let (l, u) = (lower.to_vec2::<f64>()?, upper.to_vec2::<f64>()?);
        let dim = l[0].len();
        let (mut d, mut w, mut units) = (Vec::new(), Vec::new(), Vec::new());
        for (lr, ur) in l.iter().zip(&u) {
            let mut un = Vec::new();
            for j in 0..dim {
                let (lj, uj) = (lr[j], ur[j]);
                let dj = if lj >= 0.0 {
                    1.0
                } else if uj <= 0.0 {
                    0.0
                } else {
                    un.push(j);
                    uj / (uj - lj)
                };
                d.push(dj);
                w.push(if lj < 0.0 && uj > 0.0 { -dj * lj } else { 0.0 });
            }
            units.push(un);
        }
        let b = l.len();
        let dev = &Device::Cpu;
        Ok(Box::new(ReluRelaxation {
            d: Tensor::from_vec(d, (b, dim), dev)?,
            src: GapSource { units, width: Tensor::from_vec(w, (b, dim), dev)?, dim },
        }))
    }
}

impl Relaxation for ReluRelaxation {
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.broadcast_mul(&self.d.unsqueeze(1)?)?)
    }
    fn source(&self) -> Option<&dyn DualSource> {
        self.src.units.iter().any(|u| !u.is_empty()).then_some(&self.src as &dyn DualSource)
    }
    fn unstable_counts(&self) -> Vec<usize> {
        self.src.units.iter().map(Vec::len).collect()
    }
}

impl DualSource for GapSource {
    fn num_columns(&self) -> usize {
        self.units.iter().map(Vec::len).max().unwrap_or(0)
    }
    fn columns(&self, range: Range<usize>) -> Result<Tensor> {
        let (b, len) = (self.units.len(), range.len());
        let mut v = vec![0.0; b * len * self.dim];
        for (e, un) in self.units.iter().enumerate() {
            for (c, col) in range.clone().enumerate() {
                if let Some(&j) = un.get(col) {
                    v[(e * len + c) * self.dim + j] = 1.0;
                }
            }
        }
        Ok(Tensor::from_vec(v, (b, len, self.dim), &Device::Cpu)?)
    }
    fn column_terms(&self, p: &Tensor, range: Range<usize>) -> Result<(Tensor, Tensor)> {
        // The gap of column c is w_j of its unit j (0 for padding): term = Σ_c min/max(0, p_c · w_c).
        let w = self.width.to_vec2::<f64>()?;
        let len = range.len();
        let mut wc = vec![0.0; w.len() * len];
        for (e, un) in self.units.iter().enumerate() {
            for (c, col) in range.clone().enumerate() {
                if let Some(&j) = un.get(col) {
                    wc[e * len + c] = w[e][j];
                }
            }
        }
        let wc = Tensor::from_vec(wc, (w.len(), len, 1), &Device::Cpu)?;
        let s = p.broadcast_mul(&wc)?;
        Ok((s.minimum(0.0)?.sum(1)?, s.maximum(0.0)?.sum(1)?))
    }
    fn lower_term(&self, g: &Tensor) -> Result<Tensor> {
        Ok(g.minimum(0.0)?.broadcast_mul(&self.width.unsqueeze(1)?)?.sum(2)?)
    }
    fn name(&self) -> String {
        "gaps".into()
    }
}

/// The l_inf ball of radius `eps` around the inputs: `−eps‖g‖₁` (Theorem 1).
struct Ball {
    eps: f64,
    dim: usize,
}

impl DualSource for Ball {
    fn num_columns(&self) -> usize {
        self.dim
    }
    fn columns(&self, range: Range<usize>) -> Result<Tensor> {
        let len = range.len();
        let mut v = vec![0.0; len * self.dim];
        for (c, j) in range.enumerate() {
            v[c * self.dim + j] = 1.0;
        }
        Ok(Tensor::from_vec(v, (1, len, self.dim), &Device::Cpu)?)
    }
    fn column_terms(&self, p: &Tensor, _range: Range<usize>) -> Result<(Tensor, Tensor)> {
        let r = (p.abs()?.sum(1)? * self.eps)?;
        Ok((r.neg()?, r))
    }
    fn lower_term(&self, g: &Tensor) -> Result<Tensor> {
        Ok((g.abs()?.sum(2)? * (-self.eps))?)
    }
    fn name(&self) -> String {
        format!("Ball(eps={})", self.eps)
    }
}

/// A random layer list: `dims[0]` inputs, ReLUs between matrices, `skip`: the last matrix also
/// reads the output two steps back (a Dense-style skip over the last ReLU).
fn random_net(dims: &[usize], skip: bool, rng: &mut StdRng) -> (Vec<NetLayer>, Vec<DualNode>) {
    let mut layers = Vec::new();
    let mut nodes = Vec::new();
    let mat = |i: usize, o: usize, rng: &mut StdRng| -> Vec<Vec<f64>> {
        (0..o).map(|_| (0..i).map(|_| rng.random_range(-1.0..1.0)).collect()).collect()
    };
    for k in 0..dims.len() - 1 {
        let last = k + 2 == dims.len();
        let w = mat(dims[k], dims[k + 1], rng);
        let b: Vec<f64> = (0..dims[k + 1]).map(|_| rng.random_range(-0.5..0.5)).collect();
        if last && skip && k >= 1 {
            // Reads the pre-activation of the last ReLU (output t-2) and its output (t-1).
            let w0 = mat(dims[k], dims[k + 1], rng);
            layers.push(NetLayer::Lin(vec![w0.clone(), w.clone()], b.clone()));
            nodes.push(DualNode::Affine(Box::new(Matrix::new(&[w0, w], &b))));
        } else {
            layers.push(NetLayer::Lin(vec![w.clone()], b.clone()));
            nodes.push(DualNode::Affine(Box::new(Matrix::new(&[w], &b))));
        }
        if !last {
            layers.push(NetLayer::Relu);
            nodes.push(DualNode::Activation(Box::new(Relu)));
        }
    }
    (layers, nodes)
}

/// The same network for plain f64 evaluation.
#[derive(Clone)]
enum NetLayer {
    Lin(Vec<Vec<Vec<f64>>>, Vec<f64>),
    Relu,
}

/// Every output of the network at `x` (output 0 is `x`).
fn eval(layers: &[NetLayer], x: &[f64]) -> Vec<Vec<f64>> {
    let mut outs = vec![x.to_vec()];
    for l in layers {
        let y = match l {
            NetLayer::Relu => outs.last().unwrap().iter().map(|v| v.max(0.0)).collect(),
            NetLayer::Lin(ws, b) => {
                let m = ws.len();
                let mut y = b.clone();
                for (i, w) in ws.iter().enumerate() {
                    let input = &outs[outs.len() - m + i];
                    for (yo, row) in y.iter_mut().zip(w) {
                        *yo += row.iter().zip(input).map(|(a, b)| a * b).sum::<f64>();
                    }
                }
                y
            }
        };
        outs.push(y);
    }
    outs
}

fn build(nodes: Vec<DualNode>, x: &[Vec<f64>], eps: f64, opts: &DualOptions) -> Result<DualNetwork> {
    let x = Tensor::new(x.to_vec(), &Device::Cpu)?.to_dtype(DT)?;
    let dim = x.dim(1)?;
    DualNetwork::build(&x, Box::new(Ball { eps, dim }), nodes, opts)
}

/// One activation's bounds: its layer, lower and upper `[B][K]`.
type Bounds = (usize, Vec<Vec<f64>>, Vec<Vec<f64>>);

fn bounds_of(net: &DualNetwork) -> Vec<Bounds> {
    net.bounds().iter().map(|b| (b.layer, b.lower.to_vec2().unwrap(), b.upper.to_vec2().unwrap())).collect()
}

#[test]
fn bounds_by_hand_on_a_two_unit_net() {
    // z = [x1 + x2, x1 − x2] at x = (0.5, 0), eps 1: z1 ∈ [−1.5, 2.5], z2 ∈ [−1.5, 2.5].
    // Output y = relu(z1) + relu(z2) − 1; both units unstable with d = 2.5/4 = 0.625.
    // Lower bound of y (c = 1): J = −1 + Σ terms; worked out: the relaxed path gives
    // y ≥ d·z1 + d·z2 − 1 = 0.625·(2·x1) − 1 ≥ 0.625·(2·(−0.5)) − 1 = −1.625, and the gap terms
    // only count for negative coefficients (here none).
    let nodes = vec![
        DualNode::Affine(Box::new(Matrix::new(&[vec![vec![1.0, 1.0], vec![1.0, -1.0]]], &[0.0, 0.0]))),
        DualNode::Activation(Box::new(Relu)),
        DualNode::Affine(Box::new(Matrix::new(&[vec![vec![1.0, 1.0]]], &[-1.0]))),
    ];
    let net = build(nodes, &[vec![0.5, 0.0]], 1.0, &DualOptions::default()).unwrap();
    let b = bounds_of(&net);
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].0, 2);
    for (got, want) in b[0].1[0].iter().zip([-1.5, -1.5]) {
        assert!((got - want).abs() < 1e-12, "lower {got} vs {want}");
    }
    for (got, want) in b[0].2[0].iter().zip([2.5, 2.5]) {
        assert!((got - want).abs() < 1e-12, "upper {got} vs {want}");
    }
    assert_eq!(net.unstable_counts(), vec![vec![2]]);
    let c = Tensor::new(&[[[1.0f64]]], &Device::Cpu).unwrap();
    let j = net.objective(&c).unwrap().to_vec2::<f64>().unwrap()[0][0];
    assert!((j + 1.625).abs() < 1e-12, "J(c) = {j}, by hand −1.625");
    // The upper bound (c = −1): y ≤ d(z1 − l1) + d(z2 − l2) − 1 = 1.25·x1 + 1.875 − 1 ≤ 2.75 at
    // x1 = 1.5; the true maximum is 2 (x = (1.5, ±1)).
    let up = -net.objective(&c.neg().unwrap()).unwrap().to_vec2::<f64>().unwrap()[0][0];
    assert!((up - 2.75).abs() < 1e-12, "upper bound {up}, by hand 2.75");
}

#[test]
fn every_form_and_budget_gives_the_same_bounds() {
    let mut rng = StdRng::seed_from_u64(7);
    for (case, dims) in [vec![3, 6, 5, 2], vec![4, 8, 8, 6, 3], vec![2, 5, 3]].into_iter().enumerate() {
        for skip in [false, true] {
            let x: Vec<Vec<f64>> =
                (0..3).map(|_| (0..dims[0]).map(|_| rng.random_range(-1.0..1.0)).collect()).collect();
            let seed = rng.random::<u64>();
            let make = || random_net(&dims, skip, &mut StdRng::seed_from_u64(seed)).1;
            let reference =
                build(make(), &x, 0.3, &DualOptions { bound_form: BoundForm::Forward, memory_budget: None }).unwrap();
            let want = bounds_of(&reference);
            assert!(reference.forms_used().iter().all(|f| f.backward == 0));
            for form in [BoundForm::Forward, BoundForm::Backward, BoundForm::Auto] {
                for budget in [None, Some(64), Some(1 << 20)] {
                    let net = build(make(), &x, 0.3, &DualOptions { bound_form: form, memory_budget: budget }).unwrap();
                    if form == BoundForm::Backward {
                        assert!(net.forms_used().iter().all(|f| f.forward == 0), "{:?}", net.forms_used());
                    }
                    for ((_, gl, gu), (_, wl, wu)) in bounds_of(&net).iter().zip(&want) {
                        for (g, w) in gl
                            .iter()
                            .flatten()
                            .zip(wl.iter().flatten())
                            .chain(gu.iter().flatten().zip(wu.iter().flatten()))
                        {
                            assert!((g - w).abs() < 1e-10, "case {case} skip {skip} {form:?} {budget:?}: {g} vs {w}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn bounds_and_objective_hold_on_samples_of_the_ball() {
    let mut rng = StdRng::seed_from_u64(11);
    for trial in 0..20 {
        let dims = [3, 7, 6, 4];
        let skip = trial % 2 == 1;
        let (layers, nodes) = random_net(&dims, skip, &mut rng);
        let eps = rng.random_range(0.05..0.8);
        let x: Vec<Vec<f64>> = (0..2).map(|_| (0..3).map(|_| rng.random_range(-1.0..1.0)).collect()).collect();
        let net = build(nodes, &x, eps, &DualOptions::default()).unwrap();
        let bounds = bounds_of(&net);
        let c_rows: Vec<Vec<f64>> = (0..3).map(|_| (0..4).map(|_| rng.random_range(-1.0..1.0)).collect()).collect();
        let c = Tensor::new(vec![c_rows.clone(), c_rows.clone()], &Device::Cpu).unwrap();
        let j = net.objective(&c).unwrap().to_vec2::<f64>().unwrap();
        for (e, xe) in x.iter().enumerate() {
            for s in 0..400 {
                // Corners half of the time: the extremes of a linear piece are there.
                let xp: Vec<f64> = xe
                    .iter()
                    .map(|v| {
                        if s % 2 == 0 {
                            v + eps * if rng.random::<bool>() { 1.0 } else { -1.0 }
                        } else {
                            v + rng.random_range(-eps..=eps)
                        }
                    })
                    .collect();
                let outs = eval(&layers, &xp);
                for (layer, lo, up) in &bounds {
                    for (k, z) in outs[layer - 1].iter().enumerate() {
                        assert!(
                            lo[e][k] - 1e-9 <= *z && *z <= up[e][k] + 1e-9,
                            "trial {trial}: ẑ {z} outside [{}, {}]",
                            lo[e][k],
                            up[e][k]
                        );
                    }
                }
                let y = outs.last().unwrap();
                for (r, row) in c_rows.iter().enumerate() {
                    let cy: f64 = row.iter().zip(y).map(|(a, b)| a * b).sum();
                    assert!(j[e][r] <= cy + 1e-9, "trial {trial}: J(c) {} above cᵀf(x') {cy}", j[e][r]);
                }
            }
        }
    }
}

#[test]
fn without_unstable_units_the_objective_is_the_exact_minimum() {
    // A tiny ball around a point where every ReLU is stable: f is affine on the ball, and J(c)
    // is its minimum, attained at a vertex.
    let mut rng = StdRng::seed_from_u64(3);
    let mut checked = 0;
    for _ in 0..50 {
        let (layers, nodes) = random_net(&[3, 5, 2], false, &mut rng);
        let x = vec![(0..3).map(|_| rng.random_range(-1.0..1.0)).collect::<Vec<f64>>()];
        let eps = 1e-3;
        let net = build(nodes, &x, eps, &DualOptions::default()).unwrap();
        if net.unstable_counts()[0][0] != 0 {
            continue;
        }
        checked += 1;
        let c = Tensor::new(&[[[1.0f64, -1.0]]], &Device::Cpu).unwrap();
        let j = net.objective(&c).unwrap().to_vec2::<f64>().unwrap()[0][0];
        let min = (0..8)
            .map(|v| {
                let xp: Vec<f64> = (0..3).map(|i| x[0][i] + if v >> i & 1 == 1 { eps } else { -eps }).collect();
                let y = eval(&layers, &xp).pop().unwrap();
                y[0] - y[1]
            })
            .fold(f64::INFINITY, f64::min);
        assert!((j - min).abs() < 1e-12, "J {j} vs vertex minimum {min}");
    }
    assert!(checked >= 10, "only {checked} nets without unstable units");
}

#[test]
fn bad_input_is_an_error_naming_the_problem() {
    let err = build(Vec::new(), &[vec![0.0]], 0.1, &DualOptions::default()).err().expect("no layers is refused");
    assert!(matches!(err, DualError::InvalidInput(_)) && err.to_string().contains("no layers"), "{err}");
    let (_, nodes) = random_net(&[2, 3, 2], false, &mut StdRng::seed_from_u64(1));
    let net = build(nodes, &[vec![0.0, 0.0]], 0.1, &DualOptions::default()).unwrap();
    let wrong = Tensor::zeros((1, 1, 3), DT, &Device::Cpu).unwrap();
    let err = net.objective(&wrong).expect_err("a c of the wrong shape is refused");
    assert!(err.to_string().contains("[1, 1, 3]") && err.to_string().contains("expected"), "{err}");
    // A layer that does not fit its input: Candle's shape error comes back as an error.
    let nodes = vec![
        DualNode::Affine(Box::new(Matrix::new(&[vec![vec![1.0, 1.0, 1.0]]], &[0.0]))),
        DualNode::Activation(Box::new(Relu)),
    ];
    assert!(build(nodes, &[vec![0.0, 0.0]], 0.1, &DualOptions::default()).is_err());
}
