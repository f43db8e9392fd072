//! The dense-chain kernel of the exact dual against the tensor engine's exact dual, against
//! sampled points, alone against batched, and its sensitivities.

use candle_core::{DType, Device, Tensor, Var};
use nets::layers::{Linear, ReLU};
use nets::{Layer, Network, NetworkKind};
use rand::{rngs::StdRng, Rng, SeedableRng};
use verifier::{BoundMethod, DenseChain, DenseExactDual, ExactDual, InputBox};

/// A random `Linear (ReLU Linear)*` network in f64 with layer widths `widths`.
fn random_net(widths: &[usize], rng: &mut StdRng) -> Network {
    let dev = Device::Cpu;
    let mut layers: Vec<Box<dyn Layer>> = Vec::new();
    for (i, pair) in widths.windows(2).enumerate() {
        if i > 0 {
            layers.push(Box::new(ReLU));
        }
        let (n_in, n_out) = (pair[0], pair[1]);
        let scale = (2.0 / n_in as f64).sqrt();
        let w: Vec<f64> = (0..n_in * n_out).map(|_| rng.random_range(-scale..scale)).collect();
        let b: Vec<f64> = (0..n_out).map(|_| rng.random_range(-0.3..0.3)).collect();
        let w = Tensor::from_vec(w, (n_out, n_in), &dev).unwrap();
        let b = Tensor::from_vec(b, n_out, &dev).unwrap();
        layers.push(Box::new(Linear {
            weight: Var::from_tensor(&w).unwrap(),
            bias: Some(Var::from_tensor(&b).unwrap()),
        }));
    }
    Network::new(NetworkKind::Sequential, "dense", &[widths[0]], layers).unwrap()
}

/// Boxes of widths from tiny to wide around random centres, some with a zero-width feature.
fn random_boxes(k: usize, count: usize, rng: &mut StdRng) -> Vec<InputBox> {
    (0..count)
        .map(|i| {
            let width = [1e-4, 1e-2, 0.1, 0.5, 1.0][i % 5];
            let mut lo = Vec::with_capacity(k);
            let mut hi = Vec::with_capacity(k);
            for f in 0..k {
                let c: f64 = rng.random_range(-1.0..1.0);
                let r = if (i + f) % 7 == 3 { 0.0 } else { width * rng.random_range(0.2..1.0) };
                lo.push(c - r);
                hi.push(c + r);
            }
            (lo, hi)
        })
        .collect()
}

fn random_rows(n_out: usize, count: usize, rng: &mut StdRng) -> Vec<Vec<f64>> {
    (0..count).map(|_| (0..n_out).map(|_| rng.random_range(-1.0..1.0)).collect()).collect()
}

fn forward(net: &Network, x: &[f64]) -> Vec<f64> {
    let t = Tensor::from_vec(x.to_vec(), (1, x.len()), &Device::Cpu).unwrap();
    net.forward(&t).unwrap().to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

const SHAPES: [&[usize]; 5] = [&[5, 50, 50, 50, 5], &[3, 7, 1, 4], &[10, 20, 20, 20, 20, 3], &[2, 9, 2], &[4, 6]];

#[test]
fn dense_kernel_gives_the_tensor_engines_exact_dual() {
    let mut rng = StdRng::seed_from_u64(7);
    for (s, widths) in SHAPES.iter().enumerate() {
        for trial in 0..3 {
            let net = random_net(widths, &mut rng);
            assert!(DenseChain::from_network(&net).is_some(), "shape {widths:?} is a dense chain");
            let boxes = random_boxes(widths[0], 40, &mut rng);
            let rows = random_rows(*widths.last().unwrap(), 3, &mut rng);
            let fast = DenseExactDual.lower_bounds(&net, &boxes, &rows).unwrap();
            let slow = ExactDual.lower_bounds(&net, &boxes, &rows).unwrap();
            for (b, (f, e)) in fast.iter().zip(&slow).enumerate() {
                for (r, (x, y)) in f.iter().zip(e).enumerate() {
                    assert!(
                        (x - y).abs() <= 1e-9 * (1.0 + y.abs()),
                        "shape {s} trial {trial} box {b} row {r}: dense {x} vs tensor engine {y}"
                    );
                }
            }
        }
    }
}

#[test]
fn dense_bounds_hold_at_sampled_points() {
    let mut rng = StdRng::seed_from_u64(11);
    for widths in SHAPES {
        let net = random_net(widths, &mut rng);
        let boxes = random_boxes(widths[0], 10, &mut rng);
        let rows = random_rows(*widths.last().unwrap(), 4, &mut rng);
        let lbs = DenseExactDual.lower_bounds(&net, &boxes, &rows).unwrap();
        for ((lo, hi), lb) in boxes.iter().zip(&lbs) {
            for p in 0..300 {
                // Corners every third sample, uniform points otherwise.
                let x: Vec<f64> = lo
                    .iter()
                    .zip(hi)
                    .map(|(l, h)| {
                        if p % 3 == 0 {
                            if rng.random_bool(0.5) {
                                *l
                            } else {
                                *h
                            }
                        } else {
                            rng.random_range(*l..=*h)
                        }
                    })
                    .collect();
                let y = forward(&net, &x);
                for (row, b) in rows.iter().zip(lb) {
                    let v: f64 = row.iter().zip(&y).map(|(c, y)| c * y).sum();
                    assert!(v >= b - 1e-9 * (1.0 + b.abs()), "bound {b} above the value {v} at {x:?}");
                }
            }
        }
    }
}

#[test]
fn a_box_gets_the_same_bound_alone_and_in_a_batch() {
    // Each thread's buffers serve box after box: nothing of one box may reach the next.
    let mut rng = StdRng::seed_from_u64(3);
    let net = random_net(&[5, 50, 50, 50, 50, 5], &mut rng);
    let boxes = random_boxes(5, 200, &mut rng);
    let rows = random_rows(5, 4, &mut rng);
    let rhs = vec![0.0; 4];
    let (batch, sens) = DenseExactDual.lower_bounds_sensitivity(&net, &boxes, &rows, &rhs).unwrap();
    let sens = sens.expect("the dense kernel gives sensitivities");
    for (i, bx) in boxes.iter().enumerate().rev().step_by(7) {
        let (alone, s) = DenseExactDual.lower_bounds_sensitivity(&net, std::slice::from_ref(bx), &rows, &rhs).unwrap();
        assert_eq!(alone[0], batch[i], "box {i}");
        assert_eq!(s.unwrap()[0], sens[i], "box {i}");
    }
}

#[test]
fn sensitivities_are_finite_non_negative_and_zero_for_an_unused_input() {
    let mut rng = StdRng::seed_from_u64(5);
    let dev = Device::Cpu;
    // Input 2 has a zero column in the first layer: the bound cannot depend on its radius.
    let mut w: Vec<f64> = (0..4 * 20).map(|_| rng.random_range(-0.5..0.5)).collect();
    for o in 0..20 {
        w[o * 4 + 2] = 0.0;
    }
    let w1 = Tensor::from_vec(w, (20, 4), &dev).unwrap();
    let b1 = Tensor::from_vec((0..20).map(|_| rng.random_range(-0.2..0.2)).collect::<Vec<f64>>(), 20, &dev).unwrap();
    let w2 = Tensor::from_vec((0..3 * 20).map(|_| rng.random_range(-0.5..0.5)).collect::<Vec<f64>>(), (3, 20), &dev)
        .unwrap();
    let layers: Vec<Box<dyn Layer>> = vec![
        Box::new(Linear { weight: Var::from_tensor(&w1).unwrap(), bias: Some(Var::from_tensor(&b1).unwrap()) }),
        Box::new(ReLU),
        Box::new(Linear { weight: Var::from_tensor(&w2).unwrap(), bias: None }),
    ];
    let net = Network::new(NetworkKind::Sequential, "unused-input", &[4], layers).unwrap();
    let boxes = random_boxes(4, 30, &mut rng);
    let rows = random_rows(3, 2, &mut rng);
    let (_, sens) = DenseExactDual.lower_bounds_sensitivity(&net, &boxes, &rows, &[0.0, 0.0]).unwrap();
    for s in sens.unwrap() {
        assert_eq!(s.len(), 4);
        assert!(s.iter().all(|v| v.is_finite() && *v >= 0.0), "{s:?}");
        assert_eq!(s[2], 0.0, "{s:?}");
    }
}

#[test]
fn other_networks_go_through_the_tensor_engine_and_bad_rows_are_refused() {
    let mut rng = StdRng::seed_from_u64(9);
    let dev = Device::Cpu;
    // Two affine layers in a row: not a dense chain of the kernel's form.
    let lin = |rng: &mut StdRng, o: usize, i: usize| -> Box<dyn Layer> {
        let w = Tensor::from_vec((0..o * i).map(|_| rng.random_range(-1.0..1.0)).collect::<Vec<f64>>(), (o, i), &dev)
            .unwrap();
        Box::new(Linear { weight: Var::from_tensor(&w).unwrap(), bias: None })
    };
    let layers = vec![lin(&mut rng, 6, 3), lin(&mut rng, 6, 6), Box::new(ReLU) as Box<dyn Layer>, lin(&mut rng, 2, 6)];
    let net = Network::new(NetworkKind::Sequential, "two-affine", &[3], layers).unwrap();
    assert!(DenseChain::from_network(&net).is_none());
    let boxes = random_boxes(3, 5, &mut rng);
    let rows = random_rows(2, 2, &mut rng);
    assert_eq!(
        DenseExactDual.lower_bounds(&net, &boxes, &rows).unwrap(),
        ExactDual.lower_bounds(&net, &boxes, &rows).unwrap()
    );
    let chain = random_net(&[3, 5, 2], &mut rng);
    let e = DenseExactDual.lower_bounds(&chain, &boxes, &[vec![1.0, 0.0, 0.0]]).unwrap_err();
    assert!(e.contains("3 entries") && e.contains("2 outputs"), "{e}");
    let e = DenseExactDual.lower_bounds(&chain, &[(vec![0.0; 4], vec![1.0; 4])], &rows).unwrap_err();
    assert!(e.contains("4/4 features") && e.contains("3 inputs"), "{e}");
}

/// The chain's forward pass over a batch of points (the primal points' screen in ReLU
/// splitting) gives each point what it gets alone, bit for bit, and the network's own forward
/// pass to rounding.
#[test]
fn forward_many_is_the_forward_pass_of_each_point() {
    let mut rng = StdRng::seed_from_u64(41);
    for widths in SHAPES {
        let net = random_net(widths, &mut rng);
        let chain = DenseChain::from_network(&net).expect("a dense chain");
        let xs: Vec<Vec<f64>> = (0..7).map(|_| (0..widths[0]).map(|_| rng.random_range(-2.0..2.0)).collect()).collect();
        let refs: Vec<&[f64]> = xs.iter().map(|x| x.as_slice()).collect();
        let many = chain.forward_many(&refs);
        assert_eq!(many.len(), xs.len());
        for (x, y) in xs.iter().zip(&many) {
            assert_eq!(y, &chain.forward(x), "{widths:?}: batched and one-point passes differ");
            for (a, b) in y.iter().zip(forward(&net, x)) {
                assert!((a - b).abs() <= 1e-9 * (1.0 + b.abs()), "{widths:?}: {a} vs the network's {b}");
            }
        }
        assert!(chain.forward_many(&[]).is_empty());
    }
}
