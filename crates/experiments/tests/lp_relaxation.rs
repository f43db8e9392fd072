//! The dual network against linear programs solved with Clarabel, on tiny MLPs, a convolutional
//! network and a residual (DenseSequential, convolutional skips) network, all f64, through
//! [`experiments::lp`].
//!
//! Two relaxations of the ReLUs, both with the intermediate bounds `l, u` the dual network
//! computed (unstable units `l < 0 < u`, slope `d = u / (u - l)`; `z = ẑ` where `l ≥ 0`, `z = 0`
//! where `u ≤ 0`):
//! * the triangle (the LP of Wong & Kolter): `z ≥ 0, z ≥ ẑ, z ≤ u (ẑ - l) / (u - l)`. The dual
//!   with its fixed slopes is a feasible point of this LP's dual, so `J(c) ≤ LP` (weak duality);
//! * the strip with the dual's fixed slopes: `d ẑ ≤ z ≤ d (ẑ - l)`. The dual network solves this
//!   LP exactly (it is an affine image of the input set and a box), so `J(c)` and every layer
//!   bound must equal its optimum.
//!
//! On the first ReLU both relaxations are irrelevant and the bounds are exact: they equal the
//! LP minimum and maximum of each pre-activation over the input set.

use candle_core::{DType, Device, Tensor};
use dual_core::{class_difference_c, DualOptions, DualSource};
use dual_layers::{Epsilon, InfBall, InfBallBounded, L2Ball};
use experiments::lp::{example_bounds, InputSet, LinearProgram, LpNetwork, NetworkLp, Relaxation};
use nets::spec::build::{conv, dense, flatten, linear, relu};
use nets::{LayerSpec, Network, NetworkSpec};
use rand::{rngs::StdRng, Rng, SeedableRng};

fn dev() -> Device {
    Device::Cpu
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

/// `min objective · v`, asserting the solver reached full accuracy.
fn solve(lp: &LinearProgram, objective: &[(usize, f64)]) -> f64 {
    let sol = lp.minimize(objective).unwrap();
    assert_eq!(sol.status, "Solved", "LP not solved: {}", sol.status);
    sol.value
}

fn mlp(seed: u64) -> Network {
    let spec = NetworkSpec::sequential("mlp", &[3], vec![linear(3, 8), relu(), linear(8, 8), relu(), linear(8, 3)]);
    Network::init(&spec, seed, DType::F64, &dev()).unwrap()
}

/// A DenseSequential MLP with skips from the input and an identity skip past a `None` part.
fn dense_mlp(seed: u64) -> Network {
    let spec = NetworkSpec::dense_sequential(
        "dense-mlp",
        &[3],
        vec![
            linear(3, 6),                                                                      // 1
            relu(),                                                                            // 2
            dense(vec![Some(linear(3, 6)), None, Some(linear(6, 6))]),                         // 3: reads 0, 1, 2
            relu(),                                                                            // 4
            dense(vec![Some(LayerSpec::Identity), None, Some(linear(6, 6))]),                  // 5: reads 2, 3, 4
            relu(),                                                                            // 6
            dense(vec![Some(linear(3, 3)), None, None, None, None, None, Some(linear(6, 3))]), // 7: reads 0..6
        ],
    );
    Network::init(&spec, seed, DType::F64, &dev()).unwrap()
}

/// Convolutions with and without padding, stride 2 and 1, one and several input channels:
/// `[1, 6, 6]` → Conv(1→2, k3, s2, p1) `[2, 3, 3]` → ReLU → Conv(2→3, k2, s1) `[3, 2, 2]` → ReLU →
/// Flatten → Linear(12→6) → ReLU → Linear(6→3).
fn conv_net(seed: u64) -> Network {
    let spec = NetworkSpec::sequential(
        "conv",
        &[1, 6, 6],
        vec![conv(1, 2, 3, 2, 1), relu(), conv(2, 3, 2, 1, 0), relu(), flatten(), linear(12, 6), relu(), linear(6, 3)],
    );
    Network::init(&spec, seed, DType::F64, &dev()).unwrap()
}

/// A residual network: convolutional Dense layers, an identity skip and a convolution of the
/// input summed into a later layer (every skip a sum of parts, all `[2, 3, 3]`).
fn residual_net(seed: u64) -> Network {
    let spec = NetworkSpec::dense_sequential(
        "residual",
        &[1, 6, 6],
        vec![
            conv(1, 2, 3, 2, 1),                    // 1: [2, 3, 3]
            relu(),                                 // 2
            dense(vec![Some(conv(2, 2, 3, 1, 1))]), // 3: reads 2
            relu(),                                 // 4
            dense(vec![
                Some(conv(1, 2, 3, 2, 1)), // reads the input 0
                None,                      // skips 1
                Some(LayerSpec::Identity), // reads 2
                None,                      // skips 3
                Some(conv(2, 2, 3, 1, 1)), // reads 4
            ]), // 5
            relu(),                                 // 6
            flatten(),                              // 7: 18
            linear(18, 3),                          // 8
        ],
    );
    Network::init(&spec, seed, DType::F64, &dev()).unwrap()
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Inf,
    InfUnitBox,
    InfPerFeature,
    L2,
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
}

/// Checks `net` on two random inputs over the input set `kind` of radius `eps` (`2 eps` for the
/// l2 ball and the clipped box).
fn check_net(net: &Network, seed: u64, kind: Kind, eps: f64) {
    let lpnet = LpNetwork::from_network(net).unwrap();
    let name = net.spec().name;
    let in_shape = net.input_shape().to_vec();
    let n: usize = in_shape.iter().product();
    let k = lpnet.output_size();
    let mut rng = StdRng::seed_from_u64(100 + seed);
    let bsz = 2;
    let shape: Vec<usize> = std::iter::once(bsz).chain(in_shape.iter().copied()).collect();
    let xv: Vec<f64> = (0..bsz * n).map(|_| rng.random_range(0.05..0.95)).collect();
    let x = Tensor::from_vec(xv.clone(), shape.clone(), &dev()).unwrap();
    let per_feature: Vec<f64> = (0..bsz * n).map(|_| rng.random_range(0.2 * eps..2.0 * eps)).collect();
    let src: Box<dyn DualSource> = match kind {
        Kind::Inf => Box::new(InfBall::new(&x, eps).unwrap()),
        Kind::InfUnitBox => Box::new(InfBallBounded::new(&x, 2.0 * eps, 0.0, 1.0).unwrap()),
        Kind::InfPerFeature => Box::new(
            InfBall::new(&x, Epsilon::Tensor(Tensor::from_vec(per_feature.clone(), shape.clone(), &dev()).unwrap()))
                .unwrap(),
        ),
        Kind::L2 => Box::new(L2Ball::new(&x, 2.0 * eps).unwrap()),
    };
    let dual = net.dual(&x, src, &DualOptions::default()).unwrap();
    let unstable: usize = dual.unstable_counts().iter().flatten().sum();
    assert!(unstable > 0, "{name} seed {seed} {kind:?}: no unstable unit");
    // The LP's arithmetic is the network's (weight layouts, convolution indexing, skips).
    let outs = net.forward_all(&x).unwrap();
    for b in 0..bsz {
        let lp_outs = lpnet.forward(&xv[b * n..(b + 1) * n]).unwrap();
        assert_eq!(lp_outs.len(), outs.len());
        for (t, (ours, theirs)) in lp_outs.iter().zip(&outs).enumerate() {
            let theirs = flat(&theirs.get(b).unwrap());
            assert_eq!(ours.len(), theirs.len(), "{name}: width of output {t}");
            let d = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(
                d < 1e-12,
                "{name} seed {seed}: output {t} of the LP network differs from the forward pass by {d:e}"
            );
        }
    }
    let y: Vec<u32> = net.forward(&x).unwrap().argmax(1).unwrap().to_vec1::<u32>().unwrap();
    let cd = class_difference_c(&y, k, DType::F64, &dev()).unwrap();
    let rnd: Vec<f64> = (0..bsz * 2 * k).map(|_| rng.random_range(-1.0..1.0)).collect();
    let c = Tensor::cat(&[cd, Tensor::from_vec(rnd, (bsz, 2, k), &dev()).unwrap()], 1).unwrap();
    let nc = c.dim(1).unwrap();
    let cv = flat(&c);
    let j = flat(&dual.objective(&c).unwrap());
    assert_eq!(dual.bounds().len(), lpnet.relu_layers().len());
    for b in 0..bsz {
        let xb = &xv[b * n..(b + 1) * n];
        let set = match kind {
            Kind::Inf => InputSet::linf(xb, eps, None),
            Kind::InfUnitBox => InputSet::linf(xb, 2.0 * eps, Some((0.0, 1.0))),
            Kind::InfPerFeature => InputSet::linf_per_feature(xb, &per_feature[b * n..(b + 1) * n], None),
            Kind::L2 => InputSet::L2 { center: xb.to_vec(), radius: 2.0 * eps },
        };
        // This example's bounds.
        let bnd = example_bounds(&dual, b).unwrap();
        // Layer bounds: the strip LP's min and max of every pre-activation; on the first ReLU
        // also the exact (triangle = no relaxation) LP.
        for (i, lb) in dual.bounds().iter().enumerate() {
            let (l, u) = &bnd[&lb.layer];
            for relax in [Relaxation::FixedSlope, Relaxation::Triangle] {
                if relax == Relaxation::Triangle && i > 0 {
                    continue;
                }
                let nlp = NetworkLp::build(&lpnet, &set, &bnd, relax, Some(lb.layer - 1)).unwrap();
                for (unit, &v) in nlp.output().iter().enumerate() {
                    let lo = solve(&nlp.lp, &[(v, 1.0)]);
                    let hi = -solve(&nlp.lp, &[(v, -1.0)]);
                    assert!(
                        close(l[unit], lo, 1e-6) && close(u[unit], hi, 1e-6),
                        "{name} seed {seed} {kind:?} example {b}: ReLU {i} unit {unit} ({relax:?} LP): bounds [{}, {}], LP [{lo}, {hi}]",
                        l[unit],
                        u[unit]
                    );
                }
            }
        }
        // The objective.
        let strip = NetworkLp::build(&lpnet, &set, &bnd, Relaxation::FixedSlope, None).unwrap();
        let tri = NetworkLp::build(&lpnet, &set, &bnd, Relaxation::Triangle, None).unwrap();
        for r in 0..nc {
            let cr = &cv[(b * nc + r) * k..(b * nc + r + 1) * k];
            if cr.iter().all(|&a| a == 0.0) {
                continue;
            }
            let jr = j[b * nc + r];
            let objective = |n: &NetworkLp| n.output().iter().zip(cr).map(|(&v, &a)| (v, a)).collect::<Vec<_>>();
            let ls = solve(&strip.lp, &objective(&strip));
            let lt = solve(&tri.lp, &objective(&tri));
            println!(
                "{name} seed {seed} {kind:?} example {b} c #{r}: J = {jr:.8}, strip LP = {ls:.8} (|J - strip| {:.1e}), triangle LP = {lt:.8}",
                (jr - ls).abs()
            );
            assert!(
                close(jr, ls, 1e-6),
                "{name} seed {seed} {kind:?} example {b} c #{r}: J = {jr} differs from the strip LP {ls}"
            );
            assert!(
                jr <= lt + 1e-6 * (1.0 + lt.abs()),
                "{name} seed {seed} {kind:?} example {b} c #{r}: J = {jr} above the triangle LP {lt}"
            );
        }
    }
}

fn check_all(kind: Kind) {
    for seed in 0..4 {
        check_net(&mlp(seed), seed, kind, 0.25);
        check_net(&dense_mlp(seed), seed, kind, 0.25);
    }
    for seed in 0..2 {
        check_net(&conv_net(seed), seed, kind, 0.1);
        check_net(&residual_net(seed), seed, kind, 0.1);
    }
}

#[test]
fn linf_ball() {
    check_all(Kind::Inf);
}

#[test]
fn linf_ball_in_unit_box() {
    check_all(Kind::InfUnitBox);
}

#[test]
fn linf_ball_per_feature_radius() {
    check_all(Kind::InfPerFeature);
}

#[test]
fn l2_ball() {
    check_all(Kind::L2);
}
