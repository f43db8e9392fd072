//! Soundness of the dual network on random small networks, in f64.
//!
//! The objective J(c) must be a lower bound of cᵀ f(x') and every pre-activation must lie in its
//! layer bounds, for every x' in the input set. These tests evaluate the network at many points
//! of the set — uniform samples, corners (sign vectors), points on the l2 sphere, and the end
//! points of a projected sign-gradient attack on cᵀ f and on single pre-activations — for MLPs,
//! convnets, DenseSequential nets with skip connections and nets with BatchNorm2d, and for every
//! input set (l_inf ball, ball ∩ [0,1], l2 ball; scalar, per-example and per-feature radii).
//! Further checks: the memory-budget path gives the same numbers, eps = 0 gives the network
//! itself, an eval-mode BatchNorm gives the same bounds as the BatchNorm folded into the
//! convolution, batch-statistics BatchNorm equals eval mode with the batch's statistics, and an
//! exhaustive grid over a 2-input net.

use candle_core::{DType, Device, Tensor, Var};
use dual_core::bounds::{BoundOptions, Method, Spec};
use dual_core::{class_difference_c, BoundForm, DualNetwork, DualOptions, DualSource, LayerBounds};
use dual_layers::{Epsilon, InfBall, InfBallBounded, L2Ball};
use nets::spec::build::{conv, dense, flatten, linear, relu};
use nets::{BatchNormMode, LayerSpec, Network, NetworkSpec};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::StandardNormal;

#[path = "common/deep_conv.rs"]
mod deep_conv;
use deep_conv::deep_conv_spec;

/// Slack allowed on every checked inequality (absolute, scaled by 1 + |value|).
const TOL: f64 = 1e-9;

fn dev() -> Device {
    Device::Cpu
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

fn tensor(v: Vec<f64>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape, &dev()).unwrap()
}

fn uniform(rng: &mut StdRng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

fn gauss(rng: &mut StdRng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.sample::<f64, _>(StandardNormal)).collect()
}

fn shape_with_batch(b: usize, s: &[usize]) -> Vec<usize> {
    let mut v = vec![b];
    v.extend_from_slice(s);
    v
}

// ------------------------------------------------------------------------------------------
// Input sets.

#[derive(Clone, Debug)]
enum Radius {
    Scalar(f64),
    PerExample(Vec<f64>),
    /// `[B * K]`, laid out like the input.
    PerFeature(Vec<f64>),
}

impl Radius {
    fn kind(&self) -> &'static str {
        match self {
            Radius::Scalar(_) => "scalar",
            Radius::PerExample(_) => "per-example",
            Radius::PerFeature(_) => "per-feature",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Norm {
    /// `|x' - x| ≤ ε`.
    Inf,
    /// `|x' - x| ≤ ε` and `0 ≤ x' ≤ 1`.
    InfUnitBox,
    /// `‖(x' - x) / ε‖₂ ≤ 1`.
    L2,
}

#[derive(Clone, Debug)]
struct Ball {
    norm: Norm,
    radius: Radius,
}

impl Ball {
    fn new(norm: Norm, radius: Radius) -> Self {
        Ball { norm, radius }
    }

    fn epsilon(&self, x: &Tensor) -> Epsilon {
        match &self.radius {
            Radius::Scalar(e) => Epsilon::Scalar(*e),
            Radius::PerExample(v) => Epsilon::Tensor(tensor(v.clone(), &[v.len()])),
            Radius::PerFeature(v) => Epsilon::Tensor(tensor(v.clone(), x.dims())),
        }
    }

    fn source(&self, x: &Tensor) -> Box<dyn DualSource> {
        let e = self.epsilon(x);
        match self.norm {
            Norm::Inf => Box::new(InfBall::new(x, e).unwrap()),
            Norm::InfUnitBox => Box::new(InfBallBounded::new(x, e, 0.0, 1.0).unwrap()),
            Norm::L2 => Box::new(L2Ball::new(x, e).unwrap()),
        }
    }

    /// Radius of feature `j` of example `b` (`k` features per example).
    fn r(&self, b: usize, j: usize, k: usize) -> f64 {
        match &self.radius {
            Radius::Scalar(e) => *e,
            Radius::PerExample(v) => v[b],
            Radius::PerFeature(v) => v[b * k + j],
        }
    }

    /// The box `[lo, hi]` of example `b` (l_inf sets only).
    fn bounds(&self, x: &[f64], b: usize) -> (Vec<f64>, Vec<f64>) {
        let k = x.len();
        let mut lo = Vec::with_capacity(k);
        let mut hi = Vec::with_capacity(k);
        for (j, &v) in x.iter().enumerate() {
            let r = self.r(b, j, k);
            let (mut a, mut c) = (v - r, v + r);
            if self.norm == Norm::InfUnitBox {
                a = a.max(0.0);
                c = c.min(1.0);
            }
            lo.push(a);
            hi.push(c);
        }
        (lo, hi)
    }

    /// Does `p` lie in the set around `x` (example `b`)? Guards the test's own sampling.
    fn contains(&self, x: &[f64], b: usize, p: &[f64]) -> bool {
        let k = x.len();
        match self.norm {
            Norm::Inf | Norm::InfUnitBox => {
                let (lo, hi) = self.bounds(x, b);
                p.iter().zip(lo.iter().zip(&hi)).all(|(&v, (&l, &h))| v >= l - 1e-12 && v <= h + 1e-12)
            }
            Norm::L2 => {
                let mut s = 0.0;
                for j in 0..k {
                    let d = p[j] - x[j];
                    let r = self.r(b, j, k);
                    if r == 0.0 {
                        if d.abs() > 1e-12 {
                            return false;
                        }
                    } else {
                        s += (d / r).powi(2);
                    }
                }
                s <= 1.0 + 1e-9
            }
        }
    }

    /// Points of the set around `x` (example `b`): corners or surface points, uniform samples,
    /// and for l2 the axis points `x ± ε_j e_j`.
    fn sample(&self, x: &[f64], b: usize, n: usize, rng: &mut StdRng) -> Vec<Vec<f64>> {
        let k = x.len();
        let mut pts = Vec::new();
        match self.norm {
            Norm::Inf | Norm::InfUnitBox => {
                let (lo, hi) = self.bounds(x, b);
                // Corners: every sign vector when there are few, random ones otherwise.
                if k <= 8 {
                    for m in 0..(1usize << k) {
                        pts.push((0..k).map(|j| if m >> j & 1 == 1 { hi[j] } else { lo[j] }).collect());
                    }
                } else {
                    for _ in 0..n {
                        pts.push((0..k).map(|j| if rng.random_bool(0.5) { hi[j] } else { lo[j] }).collect());
                    }
                }
                for _ in 0..n {
                    pts.push((0..k).map(|j| lo[j] + (hi[j] - lo[j]) * rng.random::<f64>()).collect());
                }
            }
            Norm::L2 => {
                for i in 0..2 * n {
                    let g = gauss(rng, k);
                    let norm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
                    // Half on the surface, half inside (uniform in the ball).
                    let scale = if i % 2 == 0 { 1.0 } else { rng.random::<f64>().powf(1.0 / k as f64) };
                    pts.push((0..k).map(|j| x[j] + self.r(b, j, k) * g[j] / norm * scale * (1.0 - 1e-12)).collect());
                }
                for j in 0..k.min(n) {
                    for s in [-1.0, 1.0] {
                        let mut p = x.to_vec();
                        p[j] += s * self.r(b, j, k);
                        pts.push(p);
                    }
                }
            }
        }
        pts
    }

    /// One attack step on `p` descending the gradient `g`, then back into the set.
    fn step(&self, x: &[f64], b: usize, p: &mut [f64], g: &[f64], steps: usize) {
        let k = x.len();
        match self.norm {
            Norm::Inf | Norm::InfUnitBox => {
                let (lo, hi) = self.bounds(x, b);
                for j in 0..k {
                    let a = 2.5 * self.r(b, j, k) / steps as f64;
                    let s = if g[j] > 0.0 {
                        1.0
                    } else if g[j] < 0.0 {
                        -1.0
                    } else {
                        0.0
                    };
                    p[j] = (p[j] - a * s).clamp(lo[j], hi[j]);
                }
            }
            Norm::L2 => {
                // In the scaled coordinates u = (p - x) / ε: a normalised gradient step, then
                // back onto the unit ball.
                let gs: Vec<f64> = (0..k).map(|j| g[j] * self.r(b, j, k)).collect();
                let gn = gs.iter().map(|v| v * v).sum::<f64>().sqrt();
                let a = 2.5 / steps as f64;
                let mut u: Vec<f64> = (0..k)
                    .map(|j| {
                        let r = self.r(b, j, k);
                        if r == 0.0 {
                            0.0
                        } else {
                            (p[j] - x[j]) / r - if gn > 0.0 { a * gs[j] / gn } else { 0.0 }
                        }
                    })
                    .collect();
                let un = u.iter().map(|v| v * v).sum::<f64>().sqrt();
                if un > 1.0 {
                    u.iter_mut().for_each(|v| *v /= un * (1.0 + 1e-12));
                }
                for j in 0..k {
                    p[j] = x[j] + self.r(b, j, k) * u[j];
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// One dual network and the checks against it.

/// A linear functional to attack: `coef · outs[out]` for example `b`.
struct Target {
    b: usize,
    out: usize,
    coef: Vec<f64>,
}

struct Problem<'a> {
    /// Evaluates points (the network itself, or for batch-statistics BatchNorm the same network
    /// with the nominal batch's statistics frozen).
    eval: &'a Network,
    ball: Ball,
    in_shape: Vec<usize>,
    /// Centers, `[B][K]`.
    xs: Vec<Vec<f64>>,
    /// `[B, n, O]`.
    c: Vec<f64>,
    nc: usize,
    nout: usize,
    /// `J(c)`, `[B, n]`.
    j: Vec<f64>,
    /// (layer, lower `[B, K]`, upper `[B, K]`, K).
    bounds: Vec<(usize, Vec<f64>, Vec<f64>, usize)>,
}

impl<'a> Problem<'a> {
    fn from_dual(dual: &DualNetwork, eval: &'a Network, x: &Tensor, ball: Ball, c: &Tensor) -> Self {
        Self::from_bounds(&dual.objective(c).unwrap(), dual.bounds(), eval, x, ball, c)
    }

    /// From a lower bound `j` of `c f(x')` (`[B, n]`) and the layer-wise bounds it used.
    fn from_bounds(j: &Tensor, layers: &[LayerBounds], eval: &'a Network, x: &Tensor, ball: Ball, c: &Tensor) -> Self {
        let b = x.dim(0).unwrap();
        let xv = flat(x);
        let k = xv.len() / b;
        let xs = (0..b).map(|i| xv[i * k..(i + 1) * k].to_vec()).collect();
        let j = flat(j);
        let (nc, nout) = (c.dim(1).unwrap(), c.dim(2).unwrap());
        let bounds = layers
            .iter()
            .map(|lb| {
                let lo = flat(&lb.lower);
                let up = flat(&lb.upper);
                let kk = lo.len() / b;
                for (l, u) in lo.iter().zip(&up) {
                    assert!(l <= u, "layer {}: lower bound {l} above upper bound {u}", lb.layer);
                }
                (lb.layer, lo, up, kk)
            })
            .collect();
        Problem { eval, ball, in_shape: x.dims()[1..].to_vec(), xs, c: flat(c), nc, nout, j, bounds }
    }

    /// Checks the bounds and J at every point; returns the smallest slack of cᵀ f(x') - J(c).
    fn check(&self, pts: &[(usize, Vec<f64>)], what: &str) -> f64 {
        if pts.is_empty() {
            return f64::INFINITY;
        }
        for (b, p) in pts {
            assert!(self.ball.contains(&self.xs[*b], *b, p), "{what}: test bug, point outside the set");
        }
        let k = self.xs[0].len();
        let n = pts.len();
        let data: Vec<f64> = pts.iter().flat_map(|(_, p)| p.iter().copied()).collect();
        let x = tensor(data, &shape_with_batch(n, &self.in_shape));
        let outs = self.eval.forward_all(&x).unwrap();
        debug_assert_eq!(k * n, x.elem_count());
        for (layer, lo, up, kk) in &self.bounds {
            let z = flat(&outs[layer - 1]);
            assert_eq!(z.len(), n * kk);
            for (i, (b, _)) in pts.iter().enumerate() {
                for u in 0..*kk {
                    let v = z[i * kk + u];
                    let (l, h) = (lo[b * kk + u], up[b * kk + u]);
                    assert!(
                        v >= l - TOL * (1.0 + l.abs()) && v <= h + TOL * (1.0 + h.abs()),
                        "{what}: example {b}, ReLU layer {layer}, unit {u}: pre-activation {v} outside [{l}, {h}]"
                    );
                }
            }
        }
        let f = flat(outs.last().unwrap());
        assert_eq!(f.len(), n * self.nout);
        let mut slack = f64::INFINITY;
        for (i, (b, _)) in pts.iter().enumerate() {
            for r in 0..self.nc {
                let c = &self.c[(b * self.nc + r) * self.nout..(b * self.nc + r + 1) * self.nout];
                let v: f64 = c.iter().zip(&f[i * self.nout..(i + 1) * self.nout]).map(|(a, b)| a * b).sum();
                let j = self.j[b * self.nc + r];
                assert!(
                    v >= j - TOL * (1.0 + j.abs()),
                    "{what}: example {b}, objective {r}: J(c) = {j} > cᵀf(x') = {v}"
                );
                if c.iter().any(|&a| a != 0.0) {
                    slack = slack.min(v - j);
                }
            }
        }
        slack
    }

    fn samples(&self, n: usize, rng: &mut StdRng) -> Vec<(usize, Vec<f64>)> {
        let mut v = Vec::new();
        for (b, x) in self.xs.iter().enumerate() {
            for p in self.ball.sample(x, b, n, rng) {
                v.push((b, p));
            }
        }
        v
    }

    /// Targets: every row of c, and `±ẑ_u` for a few units `u` of every ReLU input.
    fn targets(&self, units: usize, rng: &mut StdRng) -> Vec<Target> {
        let mut t = Vec::new();
        let last = self.eval.layers().len();
        for b in 0..self.xs.len() {
            for r in 0..self.nc {
                let coef = self.c[(b * self.nc + r) * self.nout..(b * self.nc + r + 1) * self.nout].to_vec();
                t.push(Target { b, out: last, coef });
            }
            for (layer, _, _, kk) in &self.bounds {
                for _ in 0..units {
                    let u = rng.random_range(0..*kk);
                    for s in [-1.0, 1.0] {
                        let mut coef = vec![0.0; *kk];
                        coef[u] = s;
                        t.push(Target { b, out: layer - 1, coef });
                    }
                }
            }
        }
        t
    }

    /// Projected sign-gradient descent (l2: normalised gradient) on every target from a random
    /// start in the set; returns the end points.
    fn attack(&self, targets: &[Target], steps: usize, rng: &mut StdRng) -> Vec<(usize, Vec<f64>)> {
        let n = targets.len();
        let k = self.xs[0].len();
        let mut pts: Vec<Vec<f64>> = targets
            .iter()
            .map(|t| {
                let s = self.ball.sample(&self.xs[t.b], t.b, 1, rng);
                s[rng.random_range(0..s.len())].clone()
            })
            .collect();
        // One coefficient matrix per attacked output.
        let mut outs: Vec<usize> = targets.iter().map(|t| t.out).collect();
        outs.sort();
        outs.dedup();
        let masks: Vec<(usize, Tensor)> = outs
            .iter()
            .map(|&o| {
                let width = targets.iter().find(|t| t.out == o).unwrap().coef.len();
                let mut m = vec![0.0; n * width];
                for (i, t) in targets.iter().enumerate() {
                    if t.out == o {
                        m[i * width..(i + 1) * width].copy_from_slice(&t.coef);
                    }
                }
                (o, tensor(m, &[n, width]))
            })
            .collect();
        for _ in 0..steps {
            let data: Vec<f64> = pts.iter().flat_map(|p| p.iter().copied()).collect();
            let xv = Var::from_tensor(&tensor(data, &shape_with_batch(n, &self.in_shape))).unwrap();
            let all = self.eval.forward_all(xv.as_tensor()).unwrap();
            let mut obj: Option<Tensor> = None;
            for (o, m) in &masks {
                let term = (all[*o].flatten_from(1).unwrap() * m).unwrap().sum_all().unwrap();
                obj = Some(match obj {
                    None => term,
                    Some(s) => (s + term).unwrap(),
                });
            }
            let grads = obj.unwrap().backward().unwrap();
            let g = flat(grads.get(xv.as_tensor()).expect("gradient w.r.t. the input"));
            for (i, t) in targets.iter().enumerate() {
                self.ball.step(&self.xs[t.b], t.b, &mut pts[i], &g[i * k..(i + 1) * k], steps);
            }
        }
        targets.iter().map(|t| t.b).zip(pts).collect()
    }
}

impl Problem<'_> {
    /// Everything before the first ReLU is affine, so its bounds are exact and the attack on
    /// one of its units (a linear function of x') ends at a corner that attains the bound.
    /// Returns the largest distance between such an end value and its bound.
    fn first_layer_gap(&self, targets: &[Target], pts: &[(usize, Vec<f64>)]) -> f64 {
        let (layer, lo, up, kk) = &self.bounds[0];
        let data: Vec<f64> = pts.iter().flat_map(|(_, p)| p.iter().copied()).collect();
        let x = tensor(data, &shape_with_batch(pts.len(), &self.in_shape));
        let z = flat(&self.eval.forward_all(&x).unwrap()[layer - 1]);
        let mut gap = 0.0f64;
        for (i, t) in targets.iter().enumerate() {
            if t.out != layer - 1 {
                continue;
            }
            let u = t.coef.iter().position(|&a| a != 0.0).unwrap();
            let v = z[i * kk + u];
            let bound = if t.coef[u] > 0.0 { lo[t.b * kk + u] } else { up[t.b * kk + u] };
            gap = gap.max((v - bound).abs() / (1.0 + bound.abs()));
        }
        gap
    }
}

// ------------------------------------------------------------------------------------------
// Networks and inputs.

fn mlp_spec() -> NetworkSpec {
    NetworkSpec::sequential("mlp", &[6], vec![linear(6, 20), relu(), linear(20, 20), relu(), linear(20, 4)])
}

fn conv_spec() -> NetworkSpec {
    NetworkSpec::sequential(
        "conv",
        &[1, 8, 8],
        vec![
            conv(1, 4, 3, 1, 1),
            relu(),
            conv(4, 8, 4, 2, 1),
            relu(),
            flatten(),
            linear(128, 20),
            relu(),
            linear(20, 5),
        ],
    )
}

/// A small residual convnet: a Dense over a slot before the input, an identity skip with a
/// skipped (`None`) output, a strided block with a strided skip.
fn resnet_spec() -> NetworkSpec {
    NetworkSpec::dense_sequential(
        "resnet",
        &[2, 6, 6],
        vec![
            dense(vec![None, Some(conv(2, 4, 3, 1, 1))]),                            // 1
            relu(),                                                                  // 2
            dense(vec![Some(conv(4, 4, 3, 1, 1))]),                                  // 3
            relu(),                                                                  // 4
            dense(vec![Some(LayerSpec::Identity), None, Some(conv(4, 4, 3, 1, 1))]), // 5: reads 2, 3, 4
            relu(),                                                                  // 6
            dense(vec![Some(conv(4, 6, 4, 2, 1))]),                                  // 7
            relu(),                                                                  // 8
            dense(vec![Some(conv(4, 6, 2, 2, 0)), None, Some(conv(6, 6, 3, 1, 1))]), // 9: reads 6, 7, 8
            relu(),                                                                  // 10
            flatten(),
            linear(54, 12),
            relu(),
            linear(12, 4),
        ],
    )
}

/// A DenseSequential MLP whose skip connections read the network input itself.
fn dense_mlp_spec() -> NetworkSpec {
    NetworkSpec::dense_sequential(
        "dense-mlp",
        &[6],
        vec![
            linear(6, 12),                                                                      // 1
            relu(),                                                                             // 2
            dense(vec![Some(linear(6, 12)), None, Some(linear(12, 12))]),                       // 3: reads 0, 1, 2
            relu(),                                                                             // 4
            dense(vec![Some(LayerSpec::Identity), None, Some(linear(12, 12))]),                 // 5: reads 2, 3, 4
            relu(),                                                                             // 6
            dense(vec![Some(linear(6, 4)), None, None, None, None, None, Some(linear(12, 4))]), // 7: reads 0..6
        ],
    )
}

fn bn(c: usize, mode: BatchNormMode) -> LayerSpec {
    LayerSpec::BatchNorm2d { num_features: c, eps: 1e-5, mode }
}

fn bn_spec(mode: BatchNormMode) -> NetworkSpec {
    NetworkSpec::sequential(
        "bn",
        &[1, 8, 8],
        vec![
            conv(1, 4, 3, 1, 1),
            bn(4, mode),
            relu(),
            conv(4, 6, 4, 2, 1),
            bn(6, mode),
            relu(),
            flatten(),
            linear(96, 10),
            relu(),
            linear(10, 4),
        ],
    )
}

/// A network with PyTorch's initialisation, then non-trivial BatchNorm parameters and running
/// statistics (some scales negative).
fn init(spec: &NetworkSpec, seed: u64) -> Network {
    let net = Network::init(spec, seed, DType::F64, &dev()).unwrap();
    let mut rng = StdRng::seed_from_u64(seed ^ 0xb17);
    let mut sd = net.state_dict();
    let mut changed = false;
    for (name, t) in sd.iter_mut() {
        let n = t.elem_count();
        let v = if name.ends_with("running_var") {
            uniform(&mut rng, n, 0.3, 2.0)
        } else if name.ends_with("running_mean") {
            uniform(&mut rng, n, -0.4, 0.4)
        } else if spec_is_bn_param(spec, name) && name.ends_with("weight") {
            uniform(&mut rng, n, 0.5, 1.5).into_iter().map(|v| if rng.random_bool(0.25) { -v } else { v }).collect()
        } else if spec_is_bn_param(spec, name) && name.ends_with("bias") {
            uniform(&mut rng, n, -0.3, 0.3)
        } else {
            continue;
        };
        *t = tensor(v, t.dims());
        changed = true;
    }
    if changed {
        Network::from_state_dict(spec, &sd, DType::F64, &dev()).unwrap()
    } else {
        net
    }
}

fn spec_is_bn_param(spec: &NetworkSpec, name: &str) -> bool {
    let i: usize = name.split('.').next().unwrap().parse().unwrap();
    matches!(spec.layers.get(i), Some(LayerSpec::BatchNorm2d { .. }))
}

/// Eval-mode copy of a batch-statistics network with the statistics of the nominal batch `x`
/// frozen as running statistics: the function the dual network bounds.
fn freeze_batch_stats(net: &Network, x: &Tensor) -> Network {
    let mut spec = net.spec();
    let outs = net.forward_all(x).unwrap();
    let mut sd = net.state_dict();
    for (i, l) in spec.layers.iter_mut().enumerate() {
        if let LayerSpec::BatchNorm2d { mode, .. } = l {
            *mode = BatchNormMode::Eval;
            let input = &outs[i];
            let (b, c, h, w) = input.dims4().unwrap();
            let v = flat(input);
            let m = (b * h * w) as f64;
            let mut mean = vec![0.0; c];
            let mut var = vec![0.0; c];
            for bi in 0..b {
                for ci in 0..c {
                    for p in 0..h * w {
                        mean[ci] += v[(bi * c + ci) * h * w + p] / m;
                    }
                }
            }
            for bi in 0..b {
                for ci in 0..c {
                    for p in 0..h * w {
                        var[ci] += (v[(bi * c + ci) * h * w + p] - mean[ci]).powi(2) / m;
                    }
                }
            }
            for (name, t) in sd.iter_mut() {
                if *name == format!("{i}.running_mean") {
                    *t = tensor(mean.clone(), &[c]);
                } else if *name == format!("{i}.running_var") {
                    *t = tensor(var.clone(), &[c]);
                }
            }
        }
    }
    Network::from_state_dict(&spec, &sd, DType::F64, &dev()).unwrap()
}

fn inputs(net: &Network, b: usize, rng: &mut StdRng) -> Tensor {
    let k: usize = net.input_shape().iter().product();
    tensor(uniform(rng, b * k, 0.05, 0.95), &shape_with_batch(b, net.input_shape()))
}

/// `e_y - e_j` for every class `j ≠ y` (y = the predicted class), then `extra` random rows.
fn objectives(net: &Network, x: &Tensor, extra: usize, rng: &mut StdRng) -> Tensor {
    let logits = net.forward(x).unwrap();
    let y: Vec<u32> = logits.argmax(1).unwrap().to_vec1::<u32>().unwrap();
    let (b, o) = logits.dims2().unwrap();
    let cd = class_difference_c(&y, o, DType::F64, &dev()).unwrap();
    let r = tensor(gauss(rng, b * extra * o), &[b, extra, o]);
    Tensor::cat(&[&cd, &r], 1).unwrap()
}

/// The input sets of a case, with radii drawn around `eps`.
fn balls(x: &Tensor, eps: f64, rng: &mut StdRng) -> Vec<Ball> {
    let b = x.dim(0).unwrap();
    let n = x.elem_count();
    let k = n / b;
    let l2 = eps * (k as f64).sqrt() * 0.7;
    let per_ex = uniform(rng, b, 0.5 * eps, 1.5 * eps);
    // Per feature, with some features fixed (radius 0).
    let per_feat: Vec<f64> =
        (0..n).map(|_| if rng.random_bool(0.15) { 0.0 } else { rng.random_range(0.2 * eps..2.0 * eps) }).collect();
    vec![
        Ball::new(Norm::Inf, Radius::Scalar(eps)),
        Ball::new(Norm::InfUnitBox, Radius::Scalar(eps * 2.0)),
        Ball::new(Norm::L2, Radius::Scalar(l2)),
        Ball::new(Norm::Inf, Radius::PerExample(per_ex.clone())),
        Ball::new(Norm::Inf, Radius::PerFeature(per_feat.clone())),
        Ball::new(Norm::InfUnitBox, Radius::PerExample(per_ex.iter().map(|e| 2.0 * e).collect())),
        Ball::new(Norm::InfUnitBox, Radius::PerFeature(per_feat.iter().map(|e| 2.0 * e).collect())),
        Ball::new(Norm::L2, Radius::PerExample(per_ex.iter().map(|e| e * (k as f64).sqrt() * 0.7).collect())),
        Ball::new(Norm::L2, Radius::PerFeature(per_feat.iter().map(|e| e * (k as f64).sqrt() * 0.7).collect())),
    ]
}

/// How hard to look: `samples` points per example and set (plus corners); an attack of 50 steps
/// on every `attack_every`-th set, on `units` units per ReLU layer.
struct Effort {
    samples: usize,
    attack_every: usize,
    units: usize,
}

const FULL: Effort = Effort { samples: 150, attack_every: 1, units: 3 };
/// For convnets, whose attack steps are slow on the CPU.
const LIGHT: Effort = Effort { samples: 100, attack_every: 2, units: 2 };

/// Samples and attacks every input set of a network; `eval` evaluates points.
fn check_net(label: &str, net: &Network, eval: &Network, seed: u64, batch: usize, eps: f64, effort: &Effort) {
    let mut rng = StdRng::seed_from_u64(seed);
    let x = inputs(net, batch, &mut rng);
    let c = objectives(eval, &x, 3, &mut rng);
    for (i, ball) in balls(&x, eps, &mut rng).into_iter().enumerate() {
        let what = format!("{label} {:?} {}", ball.norm, ball.radius.kind());
        let dual = net.dual(&x, ball.source(&x), &DualOptions::default()).unwrap();
        let unstable: usize = dual.unstable_counts().iter().flatten().sum();
        assert!(unstable > 0, "{what}: no unstable unit; the case tests nothing");
        let p = Problem::from_dual(&dual, eval, &x, ball.clone(), &c);
        let s1 = p.check(&p.samples(effort.samples, &mut rng), &format!("{what}, samples"));
        let mut line = format!("{what}: {unstable} unstable units; min slack cᵀf - J: samples {s1:.4}");
        if i % effort.attack_every == 0 {
            let targets = p.targets(effort.units, &mut rng);
            let pts = p.attack(&targets, 50, &mut rng);
            let s2 = p.check(&pts, &format!("{what}, attack"));
            line += &format!(", attack {s2:.4}");
            if ball.norm != Norm::L2 {
                let gap = p.first_layer_gap(&targets, &pts);
                assert!(gap < 1e-9, "{what}: the first ReLU's bounds are not attained (gap {gap:e})");
                line += &format!(", first-ReLU bound gap {gap:.1e}");
            }
        }
        println!("{line}");
    }
}

/// [`check_net`] for a method of the bound family: its final bound and the layer-wise bounds it
/// used, against samples and attacks, on every input set the method supports.
fn check_family(label: &str, net: &Network, eval: &Network, seed: u64, batch: usize, eps: f64, method: Method) {
    let mut rng = StdRng::seed_from_u64(seed);
    let x = inputs(net, batch, &mut rng);
    let c = objectives(eval, &x, 3, &mut rng);
    let spec = Spec::new(c.clone()).unwrap();
    let opts = BoundOptions::default();
    for (i, ball) in balls(&x, eps, &mut rng).into_iter().enumerate() {
        let what = format!("{label} {} {:?} {}", method.name(), ball.norm, ball.radius.kind());
        let sb = net.spec_bounds(&x, ball.source(&x), &spec, method, &opts).unwrap();
        let p = Problem::from_bounds(&sb.lower, &sb.layers, eval, &x, ball.clone(), &c);
        let s1 = p.check(&p.samples(60, &mut rng), &format!("{what}, samples"));
        let mut line = format!("{what}: min slack cᵀf - bound: samples {s1:.4}");
        if i % 3 == 0 {
            let targets = p.targets(2, &mut rng);
            let pts = p.attack(&targets, 30, &mut rng);
            let s2 = p.check(&pts, &format!("{what}, attack"));
            line += &format!(", attack {s2:.4}");
        }
        println!("{line}");
    }
}

/// Every network of the exact dual's soundness tests, for one method.
fn family_is_sound(method: Method) {
    let mlp = init(&mlp_spec(), 0);
    check_family("mlp", &mlp, &mlp, 1100, 3, 0.15, method);
    let conv = init(&conv_spec(), 0);
    check_family("conv", &conv, &conv, 1200, 2, 0.08, method);
    let resnet = init(&resnet_spec(), 0);
    check_family("resnet", &resnet, &resnet, 1300, 2, 0.05, method);
    let dmlp = init(&dense_mlp_spec(), 0);
    check_family("dense-mlp", &dmlp, &dmlp, 1400, 3, 0.15, method);
    let bn = init(&bn_spec(BatchNormMode::Eval), 5);
    check_family("bn eval", &bn, &bn, 1500, 2, 0.05, method);
    let bns = init(&bn_spec(BatchNormMode::BatchStats), 6);
    let mut rng = StdRng::seed_from_u64(1600);
    let x = inputs(&bns, 3, &mut rng);
    let frozen = freeze_batch_stats(&bns, &x);
    check_family("bn batch-stats", &bns, &frozen, 1600, 3, 0.05, method);
}

#[test]
fn ibp_is_sound() {
    family_is_sound(Method::Ibp);
}

#[test]
fn crown_is_sound() {
    family_is_sound(Method::Crown);
}

#[test]
fn crown_ibp_is_sound() {
    family_is_sound(Method::CrownIbp);
}

#[test]
fn alpha_crown_is_sound() {
    family_is_sound(Method::AlphaCrown);
}

#[test]
fn mlp_is_sound() {
    for seed in 0..3 {
        let net = init(&mlp_spec(), seed);
        check_net(&format!("mlp seed {seed}"), &net, &net, 100 + seed, 3, 0.15, &FULL);
    }
}

#[test]
fn conv_is_sound() {
    for seed in 0..2 {
        let net = init(&conv_spec(), seed);
        check_net(&format!("conv seed {seed}"), &net, &net, 200 + seed, 3, 0.08, &LIGHT);
    }
}

#[test]
fn dense_sequential_resnet_is_sound() {
    for seed in 0..1 {
        let net = init(&resnet_spec(), seed);
        check_net(&format!("resnet seed {seed}"), &net, &net, 300 + seed, 2, 0.05, &LIGHT);
    }
}

#[test]
fn dense_sequential_mlp_with_input_skips_is_sound() {
    for seed in 0..2 {
        let net = init(&dense_mlp_spec(), seed);
        check_net(&format!("dense-mlp seed {seed}"), &net, &net, 400 + seed, 3, 0.15, &FULL);
    }
}

#[test]
fn batchnorm_eval_is_sound() {
    let net = init(&bn_spec(BatchNormMode::Eval), 5);
    check_net("bn eval", &net, &net, 500, 3, 0.05, &LIGHT);
}

#[test]
fn batchnorm_batch_stats_is_sound() {
    // The dual fixes the statistics of the nominal batch; the function it bounds is the network
    // with those statistics frozen.
    let net = init(&bn_spec(BatchNormMode::BatchStats), 6);
    let mut rng = StdRng::seed_from_u64(600);
    let x = inputs(&net, 3, &mut rng);
    let frozen = freeze_batch_stats(&net, &x);
    let d = max_diff(&net.forward(&x).unwrap(), &frozen.forward(&x).unwrap());
    assert!(d < 1e-12, "the frozen network differs from the batch-statistics one on the nominal batch by {d:e}");
    check_net("bn batch-stats", &net, &frozen, 600, 3, 0.05, &LIGHT);
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (flat(a), flat(b));
    assert_eq!(a.len(), b.len());
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// Bounds and J of two dual networks agree to `tol` (relative to 1 + |value|).
fn assert_same_dual(a: &DualNetwork, b: &DualNetwork, c: &Tensor, tol: f64, what: &str) {
    assert_eq!(a.bounds().len(), b.bounds().len());
    for (la, lb) in a.bounds().iter().zip(b.bounds()) {
        assert_eq!(la.layer, lb.layer, "{what}");
        for (ta, tb, which) in [(&la.lower, &lb.lower, "lower"), (&la.upper, &lb.upper, "upper")] {
            let (va, vb) = (flat(ta), flat(tb));
            for (x, y) in va.iter().zip(&vb) {
                assert!((x - y).abs() <= tol * (1.0 + x.abs()), "{what}: layer {} {which} bound {x} vs {y}", la.layer);
            }
        }
    }
    let (ja, jb) = (flat(&a.objective(c).unwrap()), flat(&b.objective(c).unwrap()));
    for (x, y) in ja.iter().zip(&jb) {
        assert!((x - y).abs() <= tol * (1.0 + x.abs()), "{what}: J {x} vs {y}");
    }
}

#[test]
fn batch_stats_equals_eval_with_the_batch_statistics() {
    let net = init(&bn_spec(BatchNormMode::BatchStats), 7);
    let mut rng = StdRng::seed_from_u64(700);
    let x = inputs(&net, 4, &mut rng);
    let frozen = freeze_batch_stats(&net, &x);
    let c = objectives(&net, &x, 2, &mut rng);
    for ball in balls(&x, 0.05, &mut rng).into_iter().take(3) {
        let a = net.dual(&x, ball.source(&x), &DualOptions::default()).unwrap();
        let b = frozen.dual(&x, ball.source(&x), &DualOptions::default()).unwrap();
        assert_same_dual(&a, &b, &c, 1e-10, &format!("batch stats vs frozen, {:?}", ball.norm));
    }
}

/// The checks are able to fail: a dual network built for a smaller ball than the one sampled
/// and attacked must be caught by both the samples and the attack.
#[test]
fn the_checks_catch_bounds_of_a_smaller_ball() {
    let net = init(&mlp_spec(), 50);
    let mut rng = StdRng::seed_from_u64(5000);
    let x = inputs(&net, 2, &mut rng);
    let c = objectives(&net, &x, 3, &mut rng);
    for norm in [Norm::Inf, Norm::InfUnitBox, Norm::L2] {
        let eps = if norm == Norm::L2 { 0.3 } else { 0.15 };
        let small = Ball::new(norm, Radius::Scalar(0.9 * eps));
        let dual = net.dual(&x, small.source(&x), &DualOptions::default()).unwrap();
        let p = Problem::from_dual(&dual, &net, &x, Ball::new(norm, Radius::Scalar(eps)), &c);
        let samples = p.samples(150, &mut rng);
        let caught =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.check(&samples, "samples, smaller ball")));
        assert!(caught.is_err(), "{norm:?}: the samples did not catch a bound for a smaller ball");
        let targets = p.targets(3, &mut rng);
        let pts = p.attack(&targets, 50, &mut rng);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.check(&pts, "attack, smaller ball")));
        assert!(caught.is_err(), "{norm:?}: the attack did not catch a bound for a smaller ball");
    }
}

// ------------------------------------------------------------------------------------------
// Memory budget and eps = 0.

#[test]
fn memory_budget_gives_the_same_bounds() {
    // 1 byte: one column at a time; the others: chunks that do not divide the column counts.
    let small = vec![1usize, 7_000];
    let large = vec![60_000usize, 200_000];
    let cases: Vec<(Network, f64, Vec<usize>)> = vec![
        (init(&mlp_spec(), 11), 0.15, small.clone()),
        (init(&conv_spec(), 12), 0.08, large.clone()),
        (init(&resnet_spec(), 13), 0.05, large.clone()),
        (init(&dense_mlp_spec(), 14), 0.15, small),
        (init(&bn_spec(BatchNormMode::BatchStats), 15), 0.05, large),
    ];
    let mut rng = StdRng::seed_from_u64(800);
    for (net, eps, budgets) in &cases {
        let x = inputs(net, 3, &mut rng);
        let c = objectives(net, &x, 2, &mut rng);
        for ball in balls(&x, *eps, &mut rng).into_iter().step_by(2) {
            let full = net.dual(&x, ball.source(&x), &DualOptions::default()).unwrap();
            assert!(full.unstable_counts().iter().flatten().sum::<usize>() > 0);
            for &budget in budgets {
                let opts = DualOptions { memory_budget: Some(budget), ..Default::default() };
                let chunked = net.dual(&x, ball.source(&x), &opts).unwrap();
                assert_same_dual(
                    &full,
                    &chunked,
                    &c,
                    1e-10,
                    &format!("{} {:?} budget {budget}", net.spec().name, ball.norm),
                );
            }
        }
    }
}

#[test]
fn forward_and_backward_forms_give_the_same_bounds() {
    // Columns pushed forward (Algorithm 1 as written) and the identity on each activation's units
    // pushed backward (chunked by a small budget too) must agree on every bound and objective.
    let cases: Vec<(Network, f64)> = vec![
        (init(&mlp_spec(), 31), 0.15),
        (init(&conv_spec(), 32), 0.08),
        (init(&resnet_spec(), 33), 0.05),
        (init(&dense_mlp_spec(), 34), 0.15),
        (init(&bn_spec(BatchNormMode::BatchStats), 35), 0.05),
        (init(&avgpool_pad_spec(), 36), 0.1),
        (init(&smooth_mlp_spec(), 37), 0.3),
        (init(&deep_conv_spec(), 38), 0.1),
    ];
    let windows_before = dual_core::bounds::rows_on_windows();
    let mut rng = StdRng::seed_from_u64(810);
    for (net, eps) in &cases {
        let x = inputs(net, 3, &mut rng);
        let c = objectives(net, &x, 2, &mut rng);
        for ball in balls(&x, *eps, &mut rng) {
            let what = format!("{} {:?} {}", net.spec().name, ball.norm, ball.radius.kind());
            let opts = |form, budget| DualOptions { memory_budget: budget, bound_form: form };
            let columns = net.dual(&x, ball.source(&x), &opts(BoundForm::Forward, None)).unwrap();
            assert!(columns.unstable_counts().iter().flatten().sum::<usize>() > 0, "{what}");
            assert!(columns.forms_used().iter().all(|f| f.backward == 0), "{what}: {:?}", columns.forms_used());
            for (form, budget) in
                [(BoundForm::Backward, None), (BoundForm::Backward, Some(5_000)), (BoundForm::Auto, None)]
            {
                let other = net.dual(&x, ball.source(&x), &opts(form, budget)).unwrap();
                if form == BoundForm::Backward {
                    assert!(
                        other.forms_used().iter().all(|f| f.forward == 0 && f.backward > 0),
                        "{what}: {:?}",
                        other.forms_used()
                    );
                }
                assert_same_dual(&columns, &other, &c, 1e-10, &format!("{what} {form:?} budget {budget:?}"));
            }
        }
    }
    // The l_inf balls of the three-convolution net took the windowed rows.
    assert!(dual_core::bounds::rows_on_windows() > windows_before, "no backward row ran on windows");
}

#[test]
fn auto_form_goes_backward_on_the_mnist_conv_model_at_batch_50() {
    // The paper's small MNIST model: at batch 50 the identity on the units of the second and
    // third ReLU, pushed backward, costs a fraction of the forward columns (one shared transpose,
    // then small ones per example), so the cost model must pick the backward form there; the
    // first ReLU's bounds are the input's identity through one convolution, shared by the
    // batch: forward, once.
    let net = init(&nets::zoo::small_conv("mnist-small", 1, 28), 41);
    let mut rng = StdRng::seed_from_u64(820);
    let x = tensor(uniform(&mut rng, 50 * 784, 0.0, 1.0), &[50, 1, 28, 28]);
    let ball = Ball::new(Norm::Inf, Radius::Scalar(0.05));
    let dual = net.dual(&x, ball.source(&x), &DualOptions::default()).unwrap();
    let forms = dual.forms_used();
    assert_eq!(forms.iter().map(|f| f.layer).collect::<Vec<_>>(), vec![2, 4, 7], "{forms:?}");
    assert_eq!((forms[0].backward, forms[0].forward), (0, 1), "{forms:?}");
    assert!(forms[1..].iter().all(|f| f.forward == 0 && f.backward > 0), "{forms:?}");
}

#[test]
fn zero_radius_gives_the_network_itself() {
    let nets = [
        init(&mlp_spec(), 21),
        init(&conv_spec(), 22),
        init(&resnet_spec(), 23),
        init(&dense_mlp_spec(), 24),
        init(&bn_spec(BatchNormMode::Eval), 25),
    ];
    let mut rng = StdRng::seed_from_u64(900);
    for net in &nets {
        let x = inputs(net, 3, &mut rng);
        let c = objectives(net, &x, 3, &mut rng);
        let outs = net.forward_all(&x).unwrap();
        let f = flat(outs.last().unwrap());
        let zeros = Radius::PerFeature(vec![0.0; x.elem_count()]);
        let sets = [
            Ball::new(Norm::Inf, Radius::Scalar(0.0)),
            Ball::new(Norm::InfUnitBox, Radius::Scalar(0.0)),
            Ball::new(Norm::L2, Radius::Scalar(0.0)),
            Ball::new(Norm::Inf, zeros.clone()),
            Ball::new(Norm::L2, zeros),
        ];
        for ball in sets {
            let what = &format!("{} {:?} {}", net.spec().name, ball.norm, ball.radius.kind());
            let dual = net.dual(&x, ball.source(&x), &DualOptions::default()).unwrap();
            assert_eq!(dual.unstable_counts().iter().flatten().sum::<usize>(), 0, "{what}");
            for lb in dual.bounds() {
                let z = flat(&outs[lb.layer - 1]);
                for (which, t) in [("lower", &lb.lower), ("upper", &lb.upper)] {
                    for (a, b) in flat(t).iter().zip(&z) {
                        assert!(
                            (a - b).abs() <= 1e-9 * (1.0 + b.abs()),
                            "{what}: layer {} {which} bound {a} vs ẑ {b}",
                            lb.layer
                        );
                    }
                }
            }
            let j = flat(&dual.objective(&c).unwrap());
            let cv = flat(&c);
            let (nc, o) = (c.dim(1).unwrap(), c.dim(2).unwrap());
            for b in 0..x.dim(0).unwrap() {
                for r in 0..nc {
                    let v: f64 = (0..o).map(|i| cv[(b * nc + r) * o + i] * f[b * o + i]).sum();
                    let jj = j[b * nc + r];
                    assert!((jj - v).abs() <= 1e-9 * (1.0 + v.abs()), "{what}: J = {jj}, cᵀf(x) = {v}");
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// BatchNorm folded into the convolution.

/// The network without its BatchNorm2d layers, each folded into the convolution before it:
/// `w' = w s`, `b' = (b - μ) s + β` with `s = γ / √(σ² + ε)`.
fn fold_batchnorm(net: &Network) -> Network {
    let spec = net.spec();
    let sd: std::collections::HashMap<String, Tensor> = net.state_dict().into_iter().collect();
    let get = |n: String| flat(&sd[&n]);
    let mut layers = Vec::new();
    let mut out: Vec<(String, Tensor)> = Vec::new();
    let mut i = 0;
    while i < spec.layers.len() {
        let l = &spec.layers[i];
        let k = layers.len();
        match (l, spec.layers.get(i + 1)) {
            (
                LayerSpec::Conv2d { out_channels, .. },
                Some(LayerSpec::BatchNorm2d { eps, mode: BatchNormMode::Eval, .. }),
            ) => {
                let co = *out_channels;
                let w = get(format!("{i}.weight"));
                let b = get(format!("{i}.bias"));
                let (g, beta, mu, var) = (
                    get(format!("{}.weight", i + 1)),
                    get(format!("{}.bias", i + 1)),
                    get(format!("{}.running_mean", i + 1)),
                    get(format!("{}.running_var", i + 1)),
                );
                let s: Vec<f64> = (0..co).map(|c| g[c] / (var[c] + eps).sqrt()).collect();
                let per = w.len() / co;
                let w2: Vec<f64> = w.iter().enumerate().map(|(p, v)| v * s[p / per]).collect();
                let b2: Vec<f64> = (0..co).map(|c| (b[c] - mu[c]) * s[c] + beta[c]).collect();
                out.push((format!("{k}.weight"), tensor(w2, sd[&format!("{i}.weight")].dims())));
                out.push((format!("{k}.bias"), tensor(b2, &[co])));
                layers.push(l.clone());
                i += 2;
            }
            _ => {
                for (n, t) in &sd {
                    if let Some(rest) = n.strip_prefix(&format!("{i}.")) {
                        out.push((format!("{k}.{rest}"), t.clone()));
                    }
                }
                layers.push(l.clone());
                i += 1;
            }
        }
    }
    let folded = NetworkSpec::sequential("folded", &spec.input_shape, layers);
    Network::from_state_dict(&folded, &out, DType::F64, &dev()).unwrap()
}

#[test]
fn eval_batchnorm_equals_folded_convolution() {
    for seed in 0..2 {
        let net = init(&bn_spec(BatchNormMode::Eval), 30 + seed);
        let folded = fold_batchnorm(&net);
        assert_eq!(folded.layers().len(), net.layers().len() - 2);
        let mut rng = StdRng::seed_from_u64(1000 + seed);
        let x = inputs(&net, 3, &mut rng);
        let d = max_diff(&net.forward(&x).unwrap(), &folded.forward(&x).unwrap());
        assert!(d < 1e-12, "folding changed the forward pass by {d:e}");
        let c = objectives(&net, &x, 3, &mut rng);
        for ball in balls(&x, 0.05, &mut rng) {
            let a = net.dual(&x, ball.source(&x), &DualOptions::default()).unwrap();
            let b = folded.dual(&x, ball.source(&x), &DualOptions::default()).unwrap();
            assert!(a.unstable_counts().iter().flatten().sum::<usize>() > 0);
            // Bounds: the BN net has two more layers, so compare in order (its ReLUs sit one
            // and two places later).
            assert_eq!(a.bounds().len(), b.bounds().len());
            for (la, lb) in a.bounds().iter().zip(b.bounds()) {
                for (ta, tb) in [(&la.lower, &lb.lower), (&la.upper, &lb.upper)] {
                    let d = max_diff(ta, tb);
                    assert!(
                        d < 1e-9,
                        "seed {seed} {:?}: ReLU at layer {} vs {}: bounds differ by {d:e}",
                        ball.norm,
                        la.layer,
                        lb.layer
                    );
                }
            }
            let d = max_diff(&a.objective(&c).unwrap(), &b.objective(&c).unwrap());
            assert!(d < 1e-9, "seed {seed} {:?}: J differs by {d:e}", ball.norm);
        }
    }
}

// ------------------------------------------------------------------------------------------
// Exhaustive search on a 2-input net.

#[test]
fn two_input_net_grid_search() {
    let spec = NetworkSpec::sequential("2d", &[2], vec![linear(2, 16), relu(), linear(16, 16), relu(), linear(16, 2)]);
    const N: usize = 401;
    for seed in 0..3u64 {
        let net = init(&spec, 40 + seed);
        let mut rng = StdRng::seed_from_u64(1100 + seed);
        let x0 = uniform(&mut rng, 2, -0.5, 0.5);
        let eps = 0.4;
        let x = tensor(x0.clone(), &[1, 2]);
        let mut c = vec![1.0, -1.0, -1.0, 1.0];
        c.extend(gauss(&mut rng, 8));
        let nc = c.len() / 2;
        let ct = tensor(c.clone(), &[1, nc, 2]);
        for bounded in [false, true] {
            let (src, lo, hi): (Box<dyn DualSource>, Vec<f64>, Vec<f64>) = if bounded {
                // A box that clips the ball on one side.
                let b = InfBallBounded::new(&x, eps, x0[0].min(x0[1]) - 0.2, 1.0).unwrap();
                let l = x0[0].min(x0[1]) - 0.2;
                (
                    Box::new(b),
                    x0.iter().map(|v| (v - eps).max(l)).collect(),
                    x0.iter().map(|v| (v + eps).min(1.0)).collect(),
                )
            } else {
                (
                    Box::new(InfBall::new(&x, eps).unwrap()),
                    x0.iter().map(|v| v - eps).collect(),
                    x0.iter().map(|v| v + eps).collect(),
                )
            };
            let dual = net.dual(&x, src, &DualOptions::default()).unwrap();
            let unstable: usize = dual.unstable_counts().iter().flatten().sum();
            assert!(unstable > 0);
            let j = flat(&dual.objective(&ct).unwrap());
            let mut grid = Vec::with_capacity(N * N * 2);
            for a in 0..N {
                for b in 0..N {
                    grid.push(lo[0] + (hi[0] - lo[0]) * a as f64 / (N - 1) as f64);
                    grid.push(lo[1] + (hi[1] - lo[1]) * b as f64 / (N - 1) as f64);
                }
            }
            let outs = net.forward_all(&tensor(grid, &[N * N, 2])).unwrap();
            for lb in dual.bounds() {
                let z = flat(&outs[lb.layer - 1]);
                let (l, u) = (flat(&lb.lower), flat(&lb.upper));
                let k = l.len();
                for p in 0..N * N {
                    for i in 0..k {
                        let v = z[p * k + i];
                        assert!(
                            v >= l[i] - TOL && v <= u[i] + TOL,
                            "seed {seed}: layer {} unit {i}: {v} outside [{}, {}]",
                            lb.layer,
                            l[i],
                            u[i]
                        );
                    }
                }
            }
            let f = flat(outs.last().unwrap());
            for r in 0..nc {
                let min =
                    (0..N * N).map(|p| c[2 * r] * f[2 * p] + c[2 * r + 1] * f[2 * p + 1]).fold(f64::INFINITY, f64::min);
                assert!(
                    j[r] <= min + TOL,
                    "seed {seed} bounded {bounded}, c #{r}: J = {} above the grid minimum {min}",
                    j[r]
                );
                println!("seed {seed} bounded {bounded} c #{r}: J = {:.5}, grid min = {min:.5}, gap {:.5} ({unstable} unstable)", j[r], min - j[r]);
            }
        }
    }
}

// ---- Pooling, padding and smooth activations (issue 16) ----

/// MaxPool with overlapping padded windows and a plain one, AvgPool without the padding in its
/// divisor, zero padding, Sigmoid and Tanh.
fn pool_smooth_spec() -> NetworkSpec {
    use nets::spec::build::{maxpool, sigmoid, tanh, zero_pad};
    let avg = LayerSpec::AvgPool2d { kernel_size: [3, 3], stride: [1, 1], padding: [1; 4], count_include_pad: false };
    NetworkSpec::sequential(
        "pool-smooth",
        &[1, 8, 8],
        vec![
            conv(1, 4, 3, 1, 1),
            relu(),
            maxpool(3, 2, 1),
            conv(4, 6, 3, 1, 1),
            avg,
            relu(),
            zero_pad([1, 0, 0, 1]),
            maxpool(2, 1, 0),
            flatten(),
            linear(96, 16),
            sigmoid(),
            linear(16, 12),
            tanh(),
            linear(12, 5),
        ],
    )
}

/// The affine new layers only (the exact dual takes them): AvgPool (PyTorch's divisor, padded)
/// and zero padding between convolutions.
fn avgpool_pad_spec() -> NetworkSpec {
    use nets::spec::build::{avgpool, zero_pad};
    NetworkSpec::sequential(
        "avgpool-pad",
        &[1, 8, 8],
        vec![
            conv(1, 4, 3, 1, 1),
            relu(),
            avgpool(3, 2, 1),
            zero_pad([0, 1, 2, 0]),
            conv(4, 6, 3, 1, 0),
            relu(),
            flatten(),
            linear(72, 10),
            relu(),
            linear(10, 4),
        ],
    )
}

#[test]
fn pooling_padding_and_smooth_layers_are_sound_for_every_family_method() {
    let net = init(&pool_smooth_spec(), 3);
    let avg = init(&avgpool_pad_spec(), 4);
    for method in [Method::Ibp, Method::Crown, Method::CrownIbp, Method::AlphaCrown] {
        check_family("pool-smooth", &net, &net, 1700, 2, 0.1, method);
        check_family("avgpool-pad", &avg, &avg, 1800, 2, 0.1, method);
    }
}

#[test]
fn exact_dual_of_avgpool_and_pad_is_sound() {
    let avg = init(&avgpool_pad_spec(), 4);
    check_net("avgpool-pad", &avg, &avg, 1900, 2, 0.1, &LIGHT);
}

/// Sigmoid and Tanh between ReLU layers, for the exact dual (one slope per unit and a box).
fn smooth_mlp_spec() -> NetworkSpec {
    use nets::spec::build::{sigmoid, tanh};
    NetworkSpec::sequential(
        "smooth-mlp",
        &[6],
        vec![linear(6, 16), sigmoid(), linear(16, 16), relu(), linear(16, 12), tanh(), linear(12, 4)],
    )
}

#[test]
fn exact_dual_of_sigmoid_and_tanh_is_sound() {
    let net = init(&smooth_mlp_spec(), 8);
    check_net("smooth-mlp", &net, &net, 2200, 3, 0.3, &FULL);
    for method in [Method::Ibp, Method::Crown, Method::CrownIbp, Method::AlphaCrown] {
        check_family("smooth-mlp", &net, &net, 2300, 3, 0.3, method);
    }
}

#[test]
fn exact_dual_refuses_maxpool_by_name() {
    use nets::spec::build::maxpool;
    let mut rng = StdRng::seed_from_u64(2000);
    let spec = NetworkSpec::sequential("one", &[1, 4, 4], vec![conv(1, 2, 3, 1, 1), maxpool(2, 2, 0), flatten()]);
    let net = init(&spec, 1);
    let x = inputs(&net, 2, &mut rng);
    let err = net.dual(&x, Box::new(InfBall::new(&x, 0.1).unwrap()), &DualOptions::default()).err();
    let msg = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(msg.contains("MaxPool2d is not supported by the exact dual"), "{msg}");
    assert!(msg.contains("--bound crown"), "{msg}");
    // α-CROWN, which uses the exact dual as a reference where it can, runs without it here.
    let sb = net.spec_bounds(
        &x,
        Box::new(InfBall::new(&x, 0.1).unwrap()),
        &Spec::new(Tensor::ones((2, 1, 8), DType::F64, &dev()).unwrap()).unwrap(),
        Method::AlphaCrown,
        &BoundOptions::default(),
    );
    assert!(sb.is_ok(), "α-CROWN runs without the exact dual's reference: {:?}", sb.err());
}

/// α-CROWN, CROWN and IBP on a network with MaxPool, Sigmoid and Tanh: in sum, α-CROWN (layer-wise
/// bounds CROWN's ∩ IBP's, ReLU slopes optimised) is at least as tight as CROWN, and CROWN tighter
/// than IBP. (Not per row: the pooling and smooth lines depend on the bounds non-monotonically.)
#[test]
fn alpha_crown_is_at_least_crown_with_pooling_and_smooth_layers() {
    let net = init(&pool_smooth_spec(), 3);
    let mut rng = StdRng::seed_from_u64(2100);
    let x = inputs(&net, 2, &mut rng);
    let c = objectives(&net, &x, 2, &mut rng);
    let spec = Spec::new(c).unwrap();
    let opts = BoundOptions::default();
    let ball = || Box::new(InfBall::new(&x, 0.1).unwrap());
    let crown = net.spec_bounds(&x, ball(), &spec, Method::Crown, &opts).unwrap().lower;
    let alpha = net.spec_bounds(&x, ball(), &spec, Method::AlphaCrown, &opts).unwrap().lower;
    let ibp = net.spec_bounds(&x, ball(), &spec, Method::Ibp, &opts).unwrap().lower;
    let (cv, av, iv) = (flat(&crown), flat(&alpha), flat(&ibp));
    let (ma, mc, mi) = (av.iter().sum::<f64>(), cv.iter().sum::<f64>(), iv.iter().sum::<f64>());
    println!("sum of bounds: α-CROWN {ma}, CROWN {mc}, IBP {mi}");
    assert!(ma >= mc, "α-CROWN's bounds ({ma}) should beat CROWN's ({mc}) on this net");
    assert!(mc > mi, "CROWN's bounds ({mc}) should beat IBP's ({mi}) on this net");
}
