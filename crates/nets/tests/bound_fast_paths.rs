//! The bound family's shortcuts give the numbers of the long ways: the input box stated by the
//! input set equals the one from its terms on the unit rows; CROWN-IBP's and IBP's bounds from one
//! interval pass equal two separate calls (values and parameter gradients); a specification's
//! zero rows (dropped from the backward pass) bound to 0 and the other rows as when each row is
//! bounded alone; IBP's and the forward pass's fused passes (one slice of the batch per thread)
//! give the op-by-op numbers and step aside where a layer has no map on raw rows.

use candle_core::{DType, Device, Tensor};
use dual_core::bounds::{crown_ibp_and_ibp, ibp, spec_bounds, BoundOptions, Method, Net, Spec};
use dual_core::DualSource;
use dual_layers::{InfBall, InfBallBounded};
use nets::spec::build::{conv, flatten, linear, relu};
use nets::{Network, NetworkSpec};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::ops::Range;

#[path = "common/deep_conv.rs"]
mod deep_conv;
use deep_conv::deep_conv_spec;

fn flat(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    flat(a).iter().zip(flat(b)).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn convnet() -> Network {
    let spec = NetworkSpec::sequential(
        "conv",
        &[1, 6, 6],
        vec![conv(1, 3, 3, 1, 1), relu(), conv(3, 4, 4, 2, 1), relu(), flatten(), linear(36, 8), relu(), linear(8, 4)],
    );
    Network::init(&spec, 5, DType::F64, &Device::Cpu).unwrap()
}

fn inputs(b: usize, seed: u64) -> Tensor {
    inputs_side(b, 6, seed)
}

fn inputs_side(b: usize, side: usize, seed: u64) -> Tensor {
    let mut rng = StdRng::seed_from_u64(seed);
    let v: Vec<f64> = (0..b * side * side).map(|_| rng.random_range(0.0..1.0)).collect();
    Tensor::from_vec(v, (b, 1, side, side), &Device::Cpu).unwrap()
}

/// [`deep_conv_spec`] with seeded weights.
fn deep_convnet() -> Network {
    Network::init(&deep_conv_spec(), 9, DType::F64, &Device::Cpu).unwrap()
}

/// An input set that hides its box: the caller falls back to the unit rows.
struct NoBox(Box<dyn DualSource>);

impl DualSource for NoBox {
    fn num_columns(&self) -> usize {
        self.0.num_columns()
    }
    fn columns(&self, range: Range<usize>) -> dual_core::Result<Tensor> {
        self.0.columns(range)
    }
    fn column_terms(&self, p: &Tensor, range: Range<usize>) -> dual_core::Result<(Tensor, Tensor)> {
        self.0.column_terms(p, range)
    }
    fn lower_term(&self, g: &Tensor) -> dual_core::Result<Tensor> {
        self.0.lower_term(g)
    }
    fn coefficient_terms(&self, g: &Tensor) -> dual_core::Result<(Tensor, Tensor)> {
        self.0.coefficient_terms(g)
    }
    fn name(&self) -> String {
        self.0.name()
    }
}

#[test]
fn stated_input_box_equals_the_unit_rows_box() {
    let net = convnet();
    let x = inputs(3, 1);
    let nodes = net.dual_nodes(&x).unwrap();
    let eps_t = Tensor::from_vec(vec![0.01, 0.2, 0.05], 3, &Device::Cpu).unwrap();
    let sets: Vec<Box<dyn Fn() -> Box<dyn DualSource>>> = vec![
        Box::new(|| Box::new(InfBall::new(&x, 0.1).unwrap())),
        Box::new(|| Box::new(InfBall::new(&x, dual_layers::Epsilon::Tensor(eps_t.clone())).unwrap())),
        Box::new(|| Box::new(InfBallBounded::new(&x, 0.3, 0.0, 1.0).unwrap())),
    ];
    for make in sets {
        let (a, b) = (make(), NoBox(make()));
        let fast = ibp::input_box(&Net { nodes: &nodes, x: &x, input: a.as_ref() }).unwrap();
        let slow = ibp::input_box(&Net { nodes: &nodes, x: &x, input: &b }).unwrap();
        assert!(max_diff(&fast.0, &slow.0) < 1e-15 && max_diff(&fast.1, &slow.1) < 1e-15, "{}", a.name());
        assert!(flat(&fast.1).iter().any(|&r| r > 0.0));
    }
}

#[test]
fn one_interval_pass_gives_both_bounds_and_their_gradients() {
    let net = convnet();
    let x = inputs(4, 2);
    let y = [0u32, 1, 2, 3];
    let nodes = net.dual_nodes(&x).unwrap();
    let set = InfBallBounded::new(&x, 0.05, 0.0, 1.0).unwrap();
    let n = Net { nodes: &nodes, x: &x, input: &set };
    let spec = Spec::margins(&y, 4, DType::F64, &Device::Cpu).unwrap();
    let o = BoundOptions::default();
    let (ci, ib) = crown_ibp_and_ibp(&n, &spec, &o).unwrap();
    let ci2 = spec_bounds(&n, &spec, Method::CrownIbp, &o, None).unwrap();
    let ib2 = spec_bounds(&n, &spec, Method::Ibp, &o, None).unwrap();
    assert_eq!(max_diff(&ci.lower, &ci2.lower), 0.0);
    assert_eq!(max_diff(&ib.lower, &ib2.lower), 0.0);
    assert_eq!(ib.layers.len(), 3);
    // The mixed loss's gradient in every parameter.
    let mix = |a: &Tensor, b: &Tensor| {
        (a.sum_all().unwrap() * 0.3).unwrap().add(&(b.sum_all().unwrap() * 0.7).unwrap()).unwrap()
    };
    let g1 = mix(&ci.lower, &ib.lower).backward().unwrap();
    let g2 = mix(&ci2.lower, &ib2.lower).backward().unwrap();
    let mut seen = 0;
    for v in net.trainable() {
        let (a, b) = (g1.get(v.as_tensor()), g2.get(v.as_tensor()));
        let (a, b) = (a.expect("a gradient"), b.expect("a gradient"));
        assert!(max_diff(a, b) < 1e-12);
        seen += flat(a).iter().any(|&t| t != 0.0) as usize;
    }
    assert!(seen > 0);
}

#[test]
fn zero_rows_bound_to_zero_and_the_others_as_alone() {
    let net = convnet();
    let x = inputs(3, 3);
    let nodes = net.dual_nodes(&x).unwrap();
    let set = InfBall::new(&x, 0.05).unwrap();
    let n = Net { nodes: &nodes, x: &x, input: &set };
    let o = BoundOptions::default();
    let mut rng = StdRng::seed_from_u64(9);
    // Per example: 5 rows, one of them zero at a different place (dropped), then a spec whose
    // examples have different numbers of zero rows (kept).
    for zeros in [vec![vec![1], vec![4], vec![0]], vec![vec![1], vec![], vec![0, 2]]] {
        let mut c = vec![0f64; 3 * 5 * 4];
        for (i, z) in zeros.iter().enumerate() {
            for r in 0..5 {
                if !z.contains(&r) {
                    for j in 0..4 {
                        c[(i * 5 + r) * 4 + j] = rng.random_range(-1.0..1.0);
                    }
                }
            }
        }
        let ct = Tensor::from_vec(c, (3, 5, 4), &Device::Cpu).unwrap();
        for method in [Method::CrownIbp, Method::Crown] {
            let all = spec_bounds(&n, &Spec::new(ct.clone()).unwrap(), method, &o, None).unwrap().lower;
            let all = flat(&all);
            for r in 0..5 {
                let row = Spec::new(ct.narrow(1, r, 1).unwrap()).unwrap();
                let alone = flat(&spec_bounds(&n, &row, method, &o, None).unwrap().lower);
                for i in 0..3 {
                    let got = all[i * 5 + r];
                    if zeros[i].contains(&r) {
                        assert_eq!(got, 0.0);
                    }
                    assert!((got - alone[i]).abs() < 1e-12, "{method:?} row {r} example {i}: {got} vs {}", alone[i]);
                }
            }
        }
    }
}

/// CROWN's bounds the long way: every unit of every activation's input, both sides, by
/// `crown::layer_bounds`, then the specification's backward pass.
fn crown_long_way(n: &Net<'_>, c: &Tensor) -> (Tensor, Vec<(Tensor, Tensor)>) {
    use dual_core::bounds::{crown, SlopeRule};
    use dual_core::DualNode;
    let nn = n.nodes.len();
    let boxes = ibp::propagate(n, nn).unwrap();
    let shapes: Vec<Vec<usize>> = boxes.mid.iter().map(|m| m.dims()[2..].to_vec()).collect();
    let b = n.x.dim(0).unwrap();
    let mut relax: crown::Relaxed = (0..=nn).map(|_| None).collect();
    let mut layers = Vec::new();
    for t in 1..=nn {
        let DualNode::Activation(act) = &n.nodes[t - 1] else { continue };
        let k: usize = shapes[t - 1].iter().product();
        let units: Vec<usize> = (0..k).collect();
        let (l, u) = crown::layer_bounds(n, &relax, &shapes, t - 1, &units, 1 << 30).unwrap();
        let mut s = vec![b];
        s.extend_from_slice(&shapes[t - 1]);
        let (l, u) = (l.reshape(s.clone()).unwrap(), u.reshape(s).unwrap());
        relax[t] = Some(act.linear_relax(&l, &u, SlopeRule::Adaptive).unwrap());
        layers.push((l, u));
    }
    (crown::backward_lower(n, &relax, nn, c.clone()).unwrap(), layers)
}

/// CROWN's layer-wise bounds one side first (the side likelier to prove the unit stable, the
/// other only where it does not) give CROWN's margin bounds, and per unit: the same side(s) where
/// computed, a sound looser bound on the side skipped, and the same stability everywhere.
///
/// Run with tracked parameters (Candle's gather and step) and inside `no_grad` (the ReLU's fused
/// gather + step, `kernels::relax_gathered`).
#[test]
fn one_side_first_gives_crowns_bounds() {
    let (small, x) = (convnet(), inputs(6, 4));
    one_side_first_case(&small, &x, false);
    nets::no_grad(|| one_side_first_case(&small, &x, true));
    // Rows on windows (`bounds::window`): the same numbers, through two ReLUs and three
    // convolutions, windows clipped at the edges of every grid.
    let (deep, x) = (deep_convnet(), inputs_side(6, 16, 7));
    let before = dual_core::bounds::rows_on_windows();
    one_side_first_case(&deep, &x, false);
    let tracked = dual_core::bounds::rows_on_windows();
    assert!(tracked > before, "no row ran on windows (tracked)");
    nets::no_grad(|| one_side_first_case(&deep, &x, true));
    assert!(dual_core::bounds::rows_on_windows() > tracked, "no row ran on windows (no_grad)");
}

fn one_side_first_case(net: &Network, x: &Tensor, plain: bool) {
    let y = [0u32, 1, 2, 3, 0, 1];
    let nodes = net.dual_nodes(x).unwrap();
    let mode = if plain { "no_grad" } else { "tracked" };
    for eps in [0.02, 0.1, 0.3] {
        let set = InfBallBounded::new(x, eps, 0.0, 1.0).unwrap();
        let n = Net { nodes: &nodes, x, input: &set };
        let spec = Spec::margins(&y, 4, DType::F64, &Device::Cpu).unwrap();
        let c = spec.matrix().clone();
        let fast = spec_bounds(&n, &spec, Method::Crown, &BoundOptions::default(), None).unwrap();
        let (slow, slow_layers) = crown_long_way(&n, &c);
        assert!(max_diff(&fast.lower, &slow) < 1e-10, "{mode} eps {eps}: {}", max_diff(&fast.lower, &slow));
        let (mut skipped, mut unstable) = (0, 0);
        for (lb, (sl, su)) in fast.layers.iter().zip(&slow_layers) {
            let (fl, fu, sl, su) = (flat(&lb.lower), flat(&lb.upper), flat(sl), flat(su));
            for j in 0..fl.len() {
                assert!(fl[j] <= sl[j] + 1e-10 && fu[j] >= su[j] - 1e-10, "eps {eps} unit {j}: not sound");
                let same = |a: f64, b: f64| (a - b).abs() < 1e-10;
                if sl[j] < 0.0 && su[j] > 0.0 {
                    assert!(same(fl[j], sl[j]) && same(fu[j], su[j]), "eps {eps} unit {j}: unstable, not CROWN's");
                    unstable += 1;
                } else {
                    assert!(!(fl[j] < 0.0 && fu[j] > 0.0), "eps {eps} unit {j}: stable under CROWN, not here");
                    skipped += (!same(fl[j], sl[j]) || !same(fu[j], su[j])) as usize;
                }
            }
        }
        if eps == 0.1 {
            assert!(skipped > 0 && unstable > 0, "eps 0.1: {skipped} sides skipped, {unstable} unstable");
        }
    }
}

/// The papers' `mnist-small` layer kinds on 12×12 inputs (conv, ReLU, conv, ReLU, flatten,
/// linear, ReLU, linear), seeded weights.
fn mnist_small_like(dtype: DType, seed: u64) -> Network {
    let layers = vec![
        conv(1, 4, 4, 2, 1),
        relu(),
        conv(4, 8, 4, 2, 1),
        relu(),
        flatten(),
        linear(72, 20),
        relu(),
        linear(20, 10),
    ];
    Network::init(&NetworkSpec::sequential("mnist-small-like", &[1, 12, 12], layers), seed, dtype, &Device::Cpu)
        .unwrap()
}

/// IBP's fused inference pass (one slice of the batch per thread, raw rows) gives the boxes of
/// the op-by-op pass, in f64 and f32, for batches that do not split evenly over the threads; it
/// is not taken where something is differentiated.
#[test]
fn fused_interval_pass_equals_the_op_by_op_pass() {
    for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
        let net = mnist_small_like(dtype, 11);
        for b in [1usize, 2, 7, 13] {
            let x = inputs_side(b, 12, 30 + b as u64).to_dtype(dtype).unwrap();
            nets::no_grad(|| {
                let nodes = net.dual_nodes(&x).unwrap();
                let set = InfBallBounded::new(&x, 0.1, 0.0, 1.0).unwrap();
                let n = Net { nodes: &nodes, x: &x, input: &set };
                let upto = nodes.len() - 1;
                let fused = ibp::propagate_fused(&n, upto).unwrap().expect("the fused pass applies");
                // A tracked input takes the op-by-op pass.
                let xv = candle_core::Var::from_tensor(&x).unwrap();
                let setv = InfBallBounded::new(xv.as_tensor(), 0.1, 0.0, 1.0).unwrap();
                let nv = Net { nodes: &nodes, x: xv.as_tensor(), input: &setv };
                assert!(ibp::propagate_fused(&nv, upto).unwrap().is_none());
                let ops = ibp::propagate(&nv, upto).unwrap();
                assert_eq!(fused.mid.len(), upto + 1);
                for t in 0..=upto {
                    assert_eq!(fused.mid[t].dims(), ops.mid[t].dims(), "output {t}");
                    let scale =
                        1.0 + flat(&ops.mid[t]).iter().chain(&flat(&ops.rad[t])).fold(0.0f64, |m, v| m.max(v.abs()));
                    let d = max_diff(&fused.mid[t], &ops.mid[t]).max(max_diff(&fused.rad[t], &ops.rad[t]));
                    assert!(d <= tol * scale, "{dtype:?} batch {b} output {t}: fused and op-by-op differ by {d}");
                }
            });
        }
    }
}

/// The fused inference pass of `Network::forward` gives the logits of the layer-by-layer pass,
/// in f64 and f32 and for batches that split unevenly over the threads; it is not taken while
/// gradients are on.
#[test]
fn fused_forward_equals_the_layer_by_layer_pass() {
    for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
        let net = mnist_small_like(dtype, 12);
        for b in [1usize, 3, 8, 13] {
            let x = inputs_side(b, 12, 50 + b as u64).to_dtype(dtype).unwrap();
            assert!(net.forward_fused(&x).unwrap().is_none(), "gradients are on: layer by layer");
            let want = net.forward_all(&x).unwrap().pop().unwrap();
            let got = nets::no_grad(|| net.forward_fused(&x).unwrap()).expect("the fused pass applies");
            assert_eq!(got.dims(), want.dims());
            let scale = 1.0 + flat(&want).iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let d = max_diff(&got, &want);
            assert!(d <= tol * scale, "{dtype:?} batch {b}: fused and layer-by-layer logits differ by {d}");
        }
    }
}

/// A layer without a map on raw rows (MaxPool2d) keeps the whole network on the op-by-op passes:
/// neither fused pass is taken, and IBP and the forward pass still give their numbers.
#[test]
fn a_layer_without_rows_keeps_the_op_by_op_passes() {
    let layers = vec![conv(1, 4, 3, 1, 1), relu(), nets::spec::build::maxpool(2, 2, 0), flatten(), linear(64, 5)];
    let spec = NetworkSpec::sequential("pooled", &[1, 8, 8], layers);
    let net = Network::init(&spec, 13, DType::F64, &Device::Cpu).unwrap();
    let x = inputs_side(3, 8, 70).to_dtype(DType::F64).unwrap();
    nets::no_grad(|| {
        assert!(net.forward_fused(&x).unwrap().is_none());
        let logits = net.forward(&x).unwrap();
        assert_eq!(logits.dims(), &[3, 5]);
        let nodes = net.dual_nodes(&x).unwrap();
        let set = InfBallBounded::new(&x, 0.05, 0.0, 1.0).unwrap();
        let n = Net { nodes: &nodes, x: &x, input: &set };
        assert!(ibp::propagate_fused(&n, nodes.len()).unwrap().is_none());
        let boxes = ibp::propagate(&n, nodes.len()).unwrap();
        // The clean logits lie in the output box.
        let (lo, hi) = boxes.interval(nodes.len()).unwrap();
        let (lo, hi, z) = (flat(&lo), flat(&hi), flat(&logits));
        assert!(z.iter().zip(lo.iter().zip(&hi)).all(|(v, (l, h))| *l - 1e-12 <= *v && *v <= *h + 1e-12));
    });
}

/// IBP's margin bounds alone (`margin_bounds`: the fused pass keeping only the box the last layer
/// reads, on Candle's pool) equal the bounds from the op-by-op boxes, in f64 and f32 and for
/// batches that split unevenly over the threads; with a tracked input the long way is taken and
/// gives the same numbers.
#[test]
fn ibp_margins_alone_equal_the_op_by_op_bound() {
    for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
        let net = mnist_small_like(dtype, 14);
        for b in [1usize, 3, 8, 13] {
            let x = inputs_side(b, 12, 90 + b as u64).to_dtype(dtype).unwrap();
            let y: Vec<u32> = (0..b as u32).map(|i| (i * 7) % 10).collect();
            let (got, want, tracked) = nets::no_grad(|| {
                let nodes = net.dual_nodes(&x).unwrap();
                let set = InfBallBounded::new(&x, 0.1, 0.0, 1.0).unwrap();
                let n = Net { nodes: &nodes, x: &x, input: &set };
                let got =
                    dual_core::bounds::margin_bounds(&n, &y, Method::Ibp, &BoundOptions::default(), None).unwrap();
                // The long way: every box op by op (a tracked input), the specification folded in.
                let xv = candle_core::Var::from_tensor(&x).unwrap();
                let setv = InfBallBounded::new(xv.as_tensor(), 0.1, 0.0, 1.0).unwrap();
                let nv = Net { nodes: &nodes, x: xv.as_tensor(), input: &setv };
                let boxes = ibp::propagate(&nv, nodes.len()).unwrap();
                let c = Spec::margins(&y, 10, dtype, &Device::Cpu).unwrap();
                let want = ibp::spec_lower(&nv, &boxes, c.matrix()).unwrap();
                let tracked =
                    dual_core::bounds::margin_bounds(&nv, &y, Method::Ibp, &BoundOptions::default(), None).unwrap();
                (got, want, tracked)
            });
            assert_eq!(got.dims(), &[b, 10]);
            let scale = 1.0 + flat(&want).iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let d = max_diff(&got, &want);
            assert!(d <= tol * scale, "{dtype:?} batch {b}: lean and op-by-op IBP margins differ by {d}");
            assert!(max_diff(&tracked, &want) <= tol * scale, "{dtype:?} batch {b}: tracked input");
        }
    }
}

/// The dual nodes made from the layers' shapes alone (no forward pass, where every dual reads
/// only shapes) give the same bounds as the nodes made after a forward pass, for every method.
#[test]
fn dual_nodes_by_shape_equal_those_after_a_forward_pass() {
    let net = mnist_small_like(DType::F64, 21);
    let x = inputs_side(5, 12, 77).to_dtype(DType::F64).unwrap();
    let y: Vec<u32> = vec![1, 4, 0, 9, 3];
    nets::no_grad(|| {
        let by_shape = net.dual_nodes(&x).unwrap();
        let (after_forward, _) = net.dual_nodes_and_logits(&x).unwrap();
        assert_eq!(by_shape.len(), after_forward.len());
        let set = InfBallBounded::new(&x, 0.05, 0.0, 1.0).unwrap();
        for method in [Method::Ibp, Method::CrownIbp, Method::Crown] {
            let bound = |nodes: &[dual_core::DualNode]| {
                let n = Net { nodes, x: &x, input: &set };
                flat(&dual_core::bounds::margin_bounds(&n, &y, method, &BoundOptions::default(), None).unwrap())
            };
            assert_eq!(bound(&by_shape), bound(&after_forward), "{method:?}");
        }
    });
}
