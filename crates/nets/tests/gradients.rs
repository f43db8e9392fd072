//! Gradients of the robust loss with respect to the parameters against central finite
//! differences (f64), on a small convnet, a small DenseSequential net with skip connections, and
//! convnets with BatchNorm2d in both modes.
//!
//! The bound is piecewise smooth: its pieces change where a pre-activation bound crosses zero
//! (the unstable set changes). Every case checks that no bound lies near zero, so that a step of
//! the finite difference stays on one piece.

use candle_core::{DType, Device, Tensor};
use dual_core::{robust_loss, DualOptions, DualSource};
use dual_layers::{InfBall, InfBallBounded, L2Ball};
use nets::spec::build::{conv, dense, flatten, linear, relu};
use nets::{BatchNormMode, LayerSpec, Network, NetworkSpec};
use rand::{rngs::StdRng, Rng, SeedableRng};

const STEP: f64 = 1e-6;
const RTOL: f64 = 1e-5;
/// Absolute floor of the tolerance (the round-off of a central difference of an O(1) loss is
/// about 1e-10).
const ATOL: f64 = 1e-8;
/// Smallest distance of any bound from zero for a case to count as smooth.
const MARGIN: f64 = 1e-4;

fn dev() -> Device {
    Device::Cpu
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

#[derive(Clone, Copy, Debug)]
enum Set {
    Inf,
    InfUnitBox,
    L2,
}

fn source(set: Set, x: &Tensor, eps: f64) -> Box<dyn DualSource> {
    match set {
        Set::Inf => Box::new(InfBall::new(x, eps).unwrap()),
        Set::InfUnitBox => Box::new(InfBallBounded::new(x, eps, 0.0, 1.0).unwrap()),
        Set::L2 => Box::new(L2Ball::new(x, eps).unwrap()),
    }
}

fn loss_of(net: &Network, x: &Tensor, y: &[u32], set: Set, eps: f64) -> f64 {
    let dual = net.dual(x, source(set, x, eps), &DualOptions::default()).unwrap();
    robust_loss(&dual, y).unwrap().loss.to_scalar::<f64>().unwrap()
}

/// Smallest |l|, |u| over every bound and the number of unstable units.
fn margin(net: &Network, x: &Tensor, set: Set, eps: f64) -> (f64, usize) {
    let dual = net.dual(x, source(set, x, eps), &DualOptions::default()).unwrap();
    let m = dual
        .bounds()
        .iter()
        .flat_map(|b| flat(&b.lower).into_iter().chain(flat(&b.upper)))
        .fold(f64::INFINITY, |m, v| m.min(v.abs()));
    (m, dual.unstable_counts().iter().flatten().sum())
}

fn with_entry(sd: &[(String, Tensor)], name: &str, idx: usize, delta: f64) -> Vec<(String, Tensor)> {
    sd.iter()
        .map(|(n, t)| {
            if n == name {
                let mut v = flat(t);
                v[idx] += delta;
                (n.clone(), Tensor::from_vec(v, t.dims(), &dev()).unwrap())
            } else {
                (n.clone(), t.clone())
            }
        })
        .collect()
}

/// Checks `entries` random entries of every parameter, for every input set.
fn check(net: &Network, seed: u64, eps: f64, entries: usize) {
    let spec = net.spec();
    let mut rng = StdRng::seed_from_u64(seed);
    let b = 2;
    let k: usize = net.input_shape().iter().product();
    let mut shape = vec![b];
    shape.extend_from_slice(net.input_shape());
    for set in [Set::Inf, Set::InfUnitBox, Set::L2] {
        let eps = if matches!(set, Set::L2) { eps * (k as f64).sqrt() * 0.5 } else { eps };
        // Inputs whose bounds all stay clear of zero.
        let mut tries = 0;
        let x = loop {
            let v: Vec<f64> = (0..b * k).map(|_| rng.random_range(0.05..0.95)).collect();
            let x = Tensor::from_vec(v, shape.as_slice(), &dev()).unwrap();
            let (m, unstable) = margin(net, &x, set, eps);
            if m > MARGIN && unstable > 0 {
                break x;
            }
            tries += 1;
            assert!(tries < 50, "{set:?}: no input with bounds clear of zero");
        };
        let classes = net.forward(&x).unwrap().dim(1).unwrap();
        let y: Vec<u32> = (0..b).map(|_| rng.random_range(0..classes as u32)).collect();
        let dual = net.dual(&x, source(set, &x, eps), &DualOptions::default()).unwrap();
        let rl = robust_loss(&dual, &y).unwrap();
        let grads = rl.loss.backward().unwrap();
        let sd = net.state_dict();
        // Largest error as a fraction of its tolerance; entries checked; those with |g| > 1e-4.
        let mut worst = 0.0f64;
        let (mut checked, mut sizable) = (0, 0);
        for (name, var) in net.params() {
            let g = grads.get(var.as_tensor()).map(flat);
            if !name.contains("running_") {
                assert!(g.is_some(), "{}: {name} has no gradient", spec.name);
            }
            let n = var.as_tensor().elem_count();
            let picks: Vec<usize> =
                if n <= entries { (0..n).collect() } else { (0..entries).map(|_| rng.random_range(0..n)).collect() };
            for idx in picks {
                let plus =
                    Network::from_state_dict(&spec, &with_entry(&sd, &name, idx, STEP), DType::F64, &dev()).unwrap();
                let minus =
                    Network::from_state_dict(&spec, &with_entry(&sd, &name, idx, -STEP), DType::F64, &dev()).unwrap();
                let fd = (loss_of(&plus, &x, &y, set, eps) - loss_of(&minus, &x, &y, set, eps)) / (2.0 * STEP);
                let an = g.as_ref().map(|g| g[idx]).unwrap_or(0.0);
                let err = (fd - an).abs();
                let tol = RTOL * fd.abs().max(an.abs()) + ATOL;
                assert!(
                    err <= tol,
                    "{} {set:?}: d loss / d {name}[{idx}]: autograd {an:e}, finite difference {fd:e}",
                    spec.name
                );
                worst = worst.max(err / tol);
                checked += 1;
                sizable += (an.abs() > 1e-4) as usize;
            }
        }
        assert!(sizable * 2 >= checked, "{} {set:?}: most checked gradients are negligible", spec.name);
        println!(
            "{} {set:?}: loss {:.6}, {checked} entries ({sizable} with |g| > 1e-4), worst error {worst:.2e} of the tolerance",
            spec.name,
            rl.loss.to_scalar::<f64>().unwrap()
        );
    }
}

#[test]
fn convnet() {
    let spec = NetworkSpec::sequential(
        "conv",
        &[1, 6, 6],
        vec![conv(1, 3, 3, 1, 1), relu(), conv(3, 4, 4, 2, 1), relu(), flatten(), linear(36, 8), relu(), linear(8, 4)],
    );
    let net = Network::init(&spec, 1, DType::F64, &dev()).unwrap();
    check(&net, 10, 0.08, 3);
}

#[test]
fn dense_sequential() {
    let spec = NetworkSpec::dense_sequential(
        "resnet",
        &[1, 6, 6],
        vec![
            conv(1, 3, 3, 1, 1),                                                                       // 1
            relu(),                                                                                    // 2
            dense(vec![Some(conv(3, 3, 3, 1, 1))]),                                                    // 3
            relu(),                                                                                    // 4
            dense(vec![Some(LayerSpec::Identity), None, Some(conv(3, 3, 3, 1, 1))]), // 5: reads 2, 3, 4
            relu(),                                                                  // 6
            dense(vec![Some(conv(3, 4, 2, 2, 0)), None, None, None, None, Some(conv(3, 4, 4, 2, 1))]), // 7: reads 1..6
            relu(),                                                                  // 8
            flatten(),
            linear(36, 4),
        ],
    );
    let net = Network::init(&spec, 2, DType::F64, &dev()).unwrap();
    check(&net, 20, 0.05, 2);
}

fn bn_net(mode: BatchNormMode, seed: u64) -> Network {
    let bn = |c| LayerSpec::BatchNorm2d { num_features: c, eps: 1e-5, mode };
    let spec = NetworkSpec::sequential(
        &format!("bn-{mode:?}"),
        &[1, 6, 6],
        vec![conv(1, 3, 3, 1, 1), bn(3), relu(), conv(3, 4, 4, 2, 1), bn(4), relu(), flatten(), linear(36, 4)],
    );
    let net = Network::init(&spec, seed, DType::F64, &dev()).unwrap();
    // Non-trivial BatchNorm parameters and statistics.
    let mut rng = StdRng::seed_from_u64(seed + 77);
    let sd: Vec<(String, Tensor)> = net
        .state_dict()
        .into_iter()
        .map(|(n, t)| {
            let layer: usize = n.split('.').next().unwrap().parse().unwrap();
            if !matches!(spec.layers[layer], LayerSpec::BatchNorm2d { .. }) {
                return (n, t);
            }
            let (lo, hi) = if n.ends_with("running_var") {
                (0.3, 2.0)
            } else if n.ends_with("weight") {
                (0.5, 1.5)
            } else {
                (-0.3, 0.3)
            };
            let v: Vec<f64> = (0..t.elem_count()).map(|_| rng.random_range(lo..hi)).collect();
            (n, Tensor::from_vec(v, t.dims(), &dev()).unwrap())
        })
        .collect();
    Network::from_state_dict(&spec, &sd, DType::F64, &dev()).unwrap()
}

#[test]
fn batchnorm_eval() {
    check(&bn_net(BatchNormMode::Eval, 3), 30, 0.05, 2);
}

/// With batch statistics the statistics depend on the parameters before the layer; the loss is
/// differentiated through them, as in training.
#[test]
fn batchnorm_batch_stats() {
    check(&bn_net(BatchNormMode::BatchStats, 4), 40, 0.05, 2);
}
