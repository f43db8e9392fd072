//! Inflated projected bounds (`ProjectionConfig::inflate(delta)`) are bounds with probability at
//! least `1 - delta`: on small random networks (MLP, convnet, DenseSequential with skips; l_inf
//! ball, ball ∩ [0, 1], l2 ball; f64) the objective J(c) must lie below `cᵀ f(x')` and every
//! pre-activation inside its layer bounds at points `x'` of the input set (random corners or
//! surface points, uniform samples, and the end points of projected gradient descent on each
//! `cᵀ f`). This must hold in at least `1 - delta` of many seeds, while the same points catch the
//! plain (uninflated, unsound) estimates in most seeds (the negative control). Also: with `k` at
//! least every width the projected network is the exact one, and gradients flow on every
//! architecture.

use candle_core::{DType, Device, Tensor, Var, D};
use dual_core::{class_difference_c, robust_loss, DualNetwork, DualOptions, DualSource};
use dual_layers::{InfBall, InfBallBounded, L2Ball};
use nets::spec::build::{conv, dense, flatten, linear, relu};
use nets::{LayerSpec, Network, NetworkSpec};
use projections::*;
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::StandardNormal;

const DELTA: f64 = 0.1;
const B: usize = 3;
const TOL: f64 = 1e-9;

fn dev() -> Device {
    Device::Cpu
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

fn mlp() -> NetworkSpec {
    NetworkSpec::sequential("mlp", &[16], vec![linear(16, 40), relu(), linear(40, 40), relu(), linear(40, 4)])
}

fn wide_mlp() -> NetworkSpec {
    NetworkSpec::sequential("wide-mlp", &[40], vec![linear(40, 80), relu(), linear(80, 80), relu(), linear(80, 4)])
}

fn convnet() -> NetworkSpec {
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
            linear(20, 4),
        ],
    )
}

fn dense_mlp() -> NetworkSpec {
    NetworkSpec::dense_sequential(
        "dense-mlp",
        &[10],
        vec![
            linear(10, 24),                                                                      // 1
            relu(),                                                                              // 2
            dense(vec![Some(linear(10, 24)), None, Some(linear(24, 24))]),                       // 3: reads 0, 1, 2
            relu(),                                                                              // 4
            dense(vec![Some(LayerSpec::Identity), None, Some(linear(24, 24))]),                  // 5: reads 2, 3, 4
            relu(),                                                                              // 6
            dense(vec![Some(linear(10, 4)), None, None, None, None, None, Some(linear(24, 4))]), // 7
        ],
    )
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Set {
    Inf,
    InfUnitBox,
    L2,
}

struct Case {
    net: Network,
    x: Tensor,
    eps: f64,
    set: Set,
    k: usize,
}

impl Case {
    fn new(spec: NetworkSpec, set: Set, k: usize, seed: u64) -> Self {
        let net = Network::init(&spec, seed, DType::F64, &dev()).unwrap();
        let mut rng = StdRng::seed_from_u64(seed + 100);
        let n: usize = spec.input_shape.iter().product();
        let x: Vec<f64> = (0..B * n).map(|_| rng.random_range(0.0..1.0)).collect();
        let mut shape = vec![B];
        shape.extend_from_slice(&spec.input_shape);
        let eps = if set == Set::L2 { 0.5 } else { 0.1 };
        Case { net, x: Tensor::from_vec(x, shape, &dev()).unwrap(), eps, set, k }
    }

    fn cfg(&self, seed: u64) -> ProjectionConfig {
        match self.set {
            Set::Inf => ProjectionConfig::linf(self.eps, self.k, seed),
            Set::InfUnitBox => ProjectionConfig::linf(self.eps, self.k, seed).bounded(0.0, 1.0),
            Set::L2 => ProjectionConfig::l2(self.eps, self.k, seed),
        }
    }

    fn exact_source(&self) -> Box<dyn DualSource> {
        match self.set {
            Set::Inf => Box::new(InfBall::new(&self.x, self.eps).unwrap()),
            Set::InfUnitBox => Box::new(InfBallBounded::new(&self.x, self.eps, 0.0, 1.0).unwrap()),
            Set::L2 => Box::new(L2Ball::new(&self.x, self.eps).unwrap()),
        }
    }

    fn projected(&self, cfg: &ProjectionConfig) -> DualNetwork {
        projected_dual(&self.x, self.net.dual_nodes(&self.x).unwrap(), cfg, &DualOptions::default()).unwrap()
    }

    fn exact(&self) -> DualNetwork {
        self.net.dual(&self.x, self.exact_source(), &DualOptions::default()).unwrap()
    }

    /// Projects points `[N, *in]` of example `b` back into its set.
    fn project(&self, p: &Tensor, b: usize) -> Tensor {
        let x0 = self.x.narrow(0, b, 1).unwrap();
        let d = p.broadcast_sub(&x0).unwrap();
        let d = match self.set {
            Set::Inf | Set::InfUnitBox => d.clamp(-self.eps, self.eps).unwrap(),
            Set::L2 => {
                let n = d.flatten_from(1).unwrap().sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap();
                let f = (n / self.eps).unwrap().maximum(1.0).unwrap();
                let mut s = vec![d.dim(0).unwrap()];
                s.extend(std::iter::repeat_n(1, d.rank() - 1));
                d.broadcast_div(&f.reshape(s).unwrap()).unwrap()
            }
        };
        let mut q = d.broadcast_add(&x0).unwrap();
        if self.set == Set::InfUnitBox {
            q = q.clamp(0.0, 1.0).unwrap();
        }
        q
    }

    /// Points of the set around example `b`: random corners (l_inf) or surface points (l2),
    /// uniform samples, then 30 steps of projected gradient descent on `f_0 - f_j` for every `j`.
    fn points(&self, b: usize, rng: &mut StdRng) -> Tensor {
        let x0 = flat(&self.x.narrow(0, b, 1).unwrap());
        let in_shape = &self.x.dims()[1..];
        let mut pts: Vec<f64> = Vec::new();
        let count = 64;
        for i in 0..count {
            for &v in &x0 {
                let d = match self.set {
                    Set::Inf | Set::InfUnitBox => {
                        if i % 2 == 0 {
                            if rng.random_bool(0.5) {
                                self.eps
                            } else {
                                -self.eps
                            }
                        } else {
                            rng.random_range(-self.eps..self.eps)
                        }
                    }
                    Set::L2 => rng.sample::<f64, _>(StandardNormal) * self.eps, // projected below
                };
                pts.push(v + d);
            }
        }
        let mut shape = vec![count];
        shape.extend_from_slice(in_shape);
        let start = self.project(&Tensor::from_vec(pts, shape, &dev()).unwrap(), b);
        let classes = 4;
        let mut all = vec![start.clone()];
        for j in 1..classes {
            let mut p = start.narrow(0, 0, 16).unwrap();
            for _ in 0..30 {
                let v = Var::from_tensor(&p).unwrap();
                let f = self.net.forward(v.as_tensor()).unwrap();
                let obj = (f.narrow(1, 0, 1).unwrap() - f.narrow(1, j, 1).unwrap()).unwrap().sum_all().unwrap();
                let g = obj.backward().unwrap().get(v.as_tensor()).unwrap().clone();
                let step = match self.set {
                    Set::L2 => {
                        let nrm = g.flatten_from(1).unwrap().sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap();
                        let mut s = vec![g.dim(0).unwrap()];
                        s.extend(std::iter::repeat_n(1, g.rank() - 1));
                        (g.broadcast_div(&(nrm + 1e-12).unwrap().reshape(s).unwrap()).unwrap() * (0.1 * self.eps))
                            .unwrap()
                    }
                    _ => (g.sign().unwrap() * (0.1 * self.eps)).unwrap(),
                };
                p = self.project(&(p - step).unwrap(), b);
            }
            all.push(p);
        }
        Tensor::cat(&all, 0).unwrap()
    }
}

/// Checks a dual network against sampled points: J(e_0 - e_j) ≤ f_0(x') - f_j(x'), and every
/// pre-activation inside its bounds. `samples[b]` are the points of example `b`.
fn consistent(case: &Case, dual: &DualNetwork, samples: &[Tensor]) -> bool {
    let c = class_difference_c(&[0; B], 4, DType::F64, &dev()).unwrap();
    let j = flat(&dual.objective(&c).unwrap());
    for (b, pts) in samples.iter().enumerate() {
        let outs = case.net.forward_all(pts).unwrap();
        let f = outs.last().unwrap();
        let diff = f.narrow(1, 0, 1).unwrap().broadcast_sub(f).unwrap().min(0).unwrap();
        let mins = flat(&diff);
        for cls in 0..4 {
            if j[b * 4 + cls] > mins[cls] + TOL * (1.0 + mins[cls].abs()) {
                return false;
            }
        }
        for lb in dual.bounds() {
            let z = outs[lb.layer - 1].flatten_from(1).unwrap();
            let lo = lb.lower.narrow(0, b, 1).unwrap().flatten_from(1).unwrap();
            let up = lb.upper.narrow(0, b, 1).unwrap().flatten_from(1).unwrap();
            let below = z.broadcast_sub(&(lo - TOL).unwrap()).unwrap().min(D::Minus1).unwrap().min(0).unwrap();
            let above = up.broadcast_sub(&z).unwrap();
            let above = (above + TOL).unwrap().min(D::Minus1).unwrap().min(0).unwrap();
            if below.to_scalar::<f64>().unwrap() < 0.0 || above.to_scalar::<f64>().unwrap() < 0.0 {
                return false;
            }
        }
    }
    true
}

/// Inflated estimates consistent with the samples in at least `1 - DELTA` of `runs` seeds, plain
/// ones in at most half. Every network's input is wider than `k`, so the input is projected.
fn check(spec: NetworkSpec, set: Set, k: usize, runs: u64) {
    assert!(spec.input_shape.iter().product::<usize>() > k, "the input is not projected");
    let case = Case::new(spec.clone(), set, k, 1);
    let mut rng = StdRng::seed_from_u64(9);
    let samples: Vec<Tensor> = (0..B).map(|b| case.points(b, &mut rng)).collect();
    let exact = case.exact();
    assert!(consistent(&case, &exact, &samples), "the exact bound itself fails");
    let infl = inflation(&case.x, &case.net.dual_nodes(&case.x).unwrap(), &case.cfg(0).inflate(DELTA)).unwrap();
    let m = count_estimates(&case.x, &case.net.dual_nodes(&case.x).unwrap(), &case.cfg(0)).unwrap();
    let (mut sound, mut sound_plain, mut below_exact) = (0, 0, 0);
    let c = class_difference_c(&[0; B], 4, DType::F64, &dev()).unwrap();
    let j_exact = flat(&exact.objective(&c).unwrap());
    for s in 0..runs {
        let d = case.projected(&case.cfg(s).inflate(DELTA));
        assert!(d.unstable_counts().iter().any(|c| c.iter().max().unwrap() > &k), "no layer was projected");
        sound += consistent(&case, &d, &samples) as usize;
        let j = flat(&d.objective(&c).unwrap());
        below_exact += j.iter().zip(&j_exact).all(|(a, b)| a <= &(b + TOL)) as usize;
        sound_plain += consistent(&case, &case.projected(&case.cfg(s)), &samples) as usize;
    }
    let n = runs as f64;
    eprintln!(
        "{} {set:?} k={k}: {m:?} estimates, inflation eps {:.3} (median) {:.3} (normal); consistent with samples: inflated {:.2}, plain {:.2}; inflated J below exact J {:.2}",
        spec.name, infl.median, infl.normal, sound as f64 / n, sound_plain as f64 / n, below_exact as f64 / n
    );
    assert!(sound as f64 / n >= 1.0 - DELTA, "inflated bound inconsistent in {} of {runs} runs", runs as usize - sound);
    // Negative control: the sampled points must catch an unsound bound, or the check above could
    // pass without checking anything. The plain (uninflated) estimates are one: the input is
    // projected, so the first layer's bounds are median estimates of norms that the exact bound
    // attains at a point of the set, each too small with probability 1/2.
    assert!(
        sound_plain * 2 <= runs as usize,
        "negative control: the samples catch the uninflated (unsound) estimate in only {} of {runs} runs",
        runs as usize - sound_plain
    );
}

#[test]
fn inflated_mlp_linf() {
    check(mlp(), Set::Inf, 6, 30);
}

#[test]
fn inflated_mlp_unit_box() {
    check(mlp(), Set::InfUnitBox, 6, 30);
}

#[test]
fn inflated_mlp_l2() {
    check(mlp(), Set::L2, 6, 30);
}

#[test]
fn inflated_wide_mlp_more_projections() {
    check(wide_mlp(), Set::Inf, 20, 20);
}

#[test]
fn inflated_convnet() {
    check(convnet(), Set::Inf, 8, 20);
}

#[test]
fn inflated_dense_sequential() {
    check(dense_mlp(), Set::Inf, 4, 30);
}

#[test]
fn k_at_least_every_width_is_exact_and_gradients_flow_everywhere() {
    for spec in [mlp(), convnet(), dense_mlp()] {
        for set in [Set::Inf, Set::InfUnitBox, Set::L2] {
            let case = Case::new(spec.clone(), set, 1000, 2);
            let c = class_difference_c(&[0; B], 4, DType::F64, &dev()).unwrap();
            let a = flat(&case.exact().objective(&c).unwrap());
            let b = flat(&case.projected(&case.cfg(0)).objective(&c).unwrap());
            assert_eq!(a, b, "{} {set:?}", spec.name);
            // Projected everywhere (k = 2): the robust loss has finite, non-zero gradients.
            let case = Case { k: 2, ..case };
            let d = case.projected(&case.cfg(4));
            let rl = robust_loss(&d, &[0, 1, 2]).unwrap();
            let grads = rl.loss.backward().unwrap();
            for (name, var) in case.net.params() {
                let g =
                    flat(grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{}: no gradient for {name}", spec.name)));
                assert!(
                    g.iter().all(|v| v.is_finite()) && g.iter().any(|v| *v != 0.0),
                    "{} {set:?}: gradient of {name}",
                    spec.name
                );
            }
        }
    }
}
