//! The dual bound against the LP of Wong & Kolter on tiny random MLPs: `J ≤ LP` for every
//! (example, j ≠ y), and the dual equals the LP of its own fixed-slope relaxation.

use candle_core::{DType, Device, Tensor};
use dual_core::{class_difference_c, DualOptions};
use dual_layers::InfBall;
use experiments::lp::{example_bounds, InputSet, LpNetwork, NetworkLp, Relaxation};
use experiments::primal::{compare, TOLERANCE};
use nets::spec::build::{conv, dense, flatten, linear, relu};
use nets::{BatchNormMode, LayerSpec, Network, NetworkSpec};
use rand::{rngs::StdRng, Rng, SeedableRng};

fn mlp(seed: u64) -> Network {
    let spec =
        NetworkSpec::sequential("tiny-mlp", &[5], vec![linear(5, 12), relu(), linear(12, 12), relu(), linear(12, 4)]);
    Network::init(&spec, seed, DType::F64, &Device::Cpu).unwrap()
}

fn dense_mlp(seed: u64) -> Network {
    let spec = NetworkSpec::dense_sequential(
        "tiny-dense",
        &[5],
        vec![
            linear(5, 8),
            relu(),
            dense(vec![Some(linear(5, 8)), None, Some(linear(8, 8))]),
            relu(),
            dense(vec![Some(LayerSpec::Identity), None, Some(linear(8, 8))]),
            relu(),
            linear(8, 4),
        ],
    );
    Network::init(&spec, seed, DType::F64, &Device::Cpu).unwrap()
}

fn inputs(seed: u64, b: usize) -> (Tensor, Vec<u32>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let v: Vec<f64> = (0..b * 5).map(|_| rng.random_range(0.0..1.0)).collect();
    let y: Vec<u32> = (0..b).map(|_| rng.random_range(0..4u32)).collect();
    (Tensor::from_vec(v, (b, 5), &Device::Cpu).unwrap(), y)
}

#[test]
fn dual_bound_is_below_the_lp() {
    let mut unstable = 0;
    for seed in 0..3 {
        for (net, bounded) in [(mlp(seed), false), (mlp(seed), true), (dense_mlp(seed), false)] {
            let (x, y) = inputs(10 + seed, 3);
            let rows = compare(&net, &x, &y, 0.3, bounded).unwrap();
            assert_eq!(rows.len(), 3 * 3);
            for r in &rows {
                assert_ne!(r.j, r.label as usize);
                assert!(r.valid(), "{} seed {seed} bounded {bounded}: {r:?}", net.spec().name);
                assert!(r.lp >= r.dual - TOLERANCE && (r.gap - (r.lp - r.dual)).abs() < 1e-12);
                assert!(r.dual.is_finite() && r.lp.is_finite());
                unstable += r.unstable;
            }
        }
    }
    assert!(unstable > 0, "no unstable unit: the comparison is trivial");
}

#[test]
fn zero_radius_lp_is_the_forward_pass() {
    let net = mlp(4);
    let (x, y) = inputs(5, 2);
    let logits = net.forward(&x).unwrap().to_vec2::<f64>().unwrap();
    for r in compare(&net, &x, &y, 0.0, false).unwrap() {
        let exact = logits[r.example][r.label as usize] - logits[r.example][r.j];
        assert!((r.lp - exact).abs() < 1e-6 && (r.dual - exact).abs() < 1e-9, "{r:?} vs {exact}");
    }
}

#[test]
fn dual_equals_its_fixed_slope_lp() {
    // Also in f32: `compare` computes in f64 whatever the network's dtype.
    let net = mlp(7);
    let (x, y) = inputs(8, 2);
    let rows32 = compare(&net.to_dtype(DType::F32).unwrap(), &x.to_dtype(DType::F32).unwrap(), &y, 0.3, false).unwrap();
    assert!(rows32.iter().all(|r| r.valid()));

    let lpnet = LpNetwork::from_network(&net).unwrap();
    assert_eq!(lpnet.relu_layers(), vec![2, 4]);
    let eps = 0.3;
    let dual = net.dual(&x, Box::new(InfBall::new(&x, eps).unwrap()), &DualOptions::default()).unwrap();
    let c = class_difference_c(&y, 4, DType::F64, &Device::Cpu).unwrap();
    let j = dual.objective(&c).unwrap().to_vec2::<f64>().unwrap();
    let xs = x.to_vec2::<f64>().unwrap();
    for b in 0..2 {
        let bounds = example_bounds(&dual, b).unwrap();
        let set = InputSet::linf(&xs[b], eps, None);
        let strip = NetworkLp::build(&lpnet, &set, &bounds, Relaxation::FixedSlope, None).unwrap();
        let tri = NetworkLp::build(&lpnet, &set, &bounds, Relaxation::Triangle, None).unwrap();
        assert!(strip.unstable > 0);
        for k in (0..4).filter(|&k| k != y[b] as usize) {
            let mut cv = vec![0.0; 4];
            cv[y[b] as usize] = 1.0;
            cv[k] = -1.0;
            let s = strip.minimize_output(&cv).unwrap().value;
            let t = tri.minimize_output(&cv).unwrap().value;
            assert!((s - j[b][k]).abs() <= 1e-6 * (1.0 + s.abs()), "fixed-slope LP {s} vs J {}", j[b][k]);
            assert!(t >= s - 1e-6, "triangle {t} below fixed slope {s}");
        }
        // The first ReLU's bounds are exact: the LP min / max of the first pre-activation.
        let first = NetworkLp::build(&lpnet, &set, &bounds, Relaxation::Triangle, Some(1)).unwrap();
        let (l, u) = &bounds[&2];
        for (unit, &v) in first.output().iter().enumerate() {
            let lo = first.lp.minimize(&[(v, 1.0)]).unwrap().value;
            let hi = -first.lp.minimize(&[(v, -1.0)]).unwrap().value;
            assert!((lo - l[unit]).abs() < 1e-6 && (hi - u[unit]).abs() < 1e-6);
        }
    }
    // The LP network's arithmetic is the forward pass (weight layout, biases): every output of
    // every layer agrees to rounding.
    let outs = net.forward_all(&x).unwrap();
    for (b, xb) in xs.iter().enumerate() {
        let lp_outs = lpnet.forward(xb).unwrap();
        assert_eq!(lp_outs.len(), outs.len());
        for (t, (ours, theirs)) in lp_outs.iter().zip(&outs).enumerate() {
            let theirs = theirs.get(b).unwrap().to_vec1::<f64>().unwrap();
            assert_eq!(ours.len(), theirs.len(), "width of output {t}");
            let d = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(d < 1e-12, "example {b}: output {t} of the LP network differs from the forward pass by {d:e}");
        }
    }
}

#[test]
fn unsupported_layers_are_reported() {
    let spec = NetworkSpec::sequential(
        "bn",
        &[1, 4, 4],
        vec![
            conv(1, 2, 3, 1, 1),
            LayerSpec::BatchNorm2d { num_features: 2, eps: 1e-5, mode: BatchNormMode::Eval },
            relu(),
            flatten(),
            linear(32, 2),
        ],
    );
    let net = Network::init(&spec, 0, DType::F32, &Device::Cpu).unwrap();
    let e = LpNetwork::from_network(&net).unwrap_err().to_string();
    assert!(e.contains("no LP for") && e.contains("BatchNorm2d"), "{e}");
    // The paper's convolutional architecture has an LP.
    let spec = nets::zoo::by_name("mnist-small").unwrap();
    let net = Network::init(&spec, 0, DType::F32, &Device::Cpu).unwrap();
    let lpnet = LpNetwork::from_network(&net).unwrap();
    assert_eq!(lpnet.widths, [784, 3136, 3136, 1568, 1568, 1568, 100, 100, 10]);
}
