//! A layer and an input set added outside the library (`examples/custom_dual_layer.rs`, included
//! here as a module) must give sound bounds, exactly the bounds of the equivalent network built
//! from built-in layers, and gradients that reach their parameters.

#[allow(dead_code)]
#[path = "../custom_dual_layer.rs"]
mod custom_dual_layer;

use candle_core::{DType, Device, Tensor};
use custom_dual_layer::*;
use dual_core::{robust_bounds, robust_loss, DualAffine, DualNetwork, DualNode, DualOptions, Result as DResult};
use dual_layers::{Epsilon, InfBall};
use nets::{Layer, LayerSpec, Network};
use rand::{rngs::StdRng, Rng, SeedableRng};

const DT: DType = DType::F64;

fn randn(seed: u64, shape: &[usize]) -> Tensor {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

fn dot(a: &Tensor, b: &Tensor) -> f64 {
    (a * b).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
}

fn max_abs(a: &Tensor) -> f64 {
    a.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap()
}

fn dual_of(layer: &dyn Layer, x: &Tensor) -> Box<dyn DualAffine> {
    match layer.dual(&[Some(x)]).unwrap() {
        DualNode::Affine(a) => a,
        DualNode::Activation(_) => panic!("ChannelAffine is affine"),
    }
}

fn setup(seed: u64) -> (Params, Network, Tensor, Vec<u32>) {
    let p = Params::random(seed, DT).unwrap();
    let net = network(&p).unwrap();
    let x = random_inputs(seed + 100, 4, DT).unwrap();
    let y = predictions(&net, &x).unwrap();
    (p, net, x, y)
}

fn ball(x: &Tensor, eps: f64) -> Box<InfBall> {
    Box::new(InfBall::new(x, eps).unwrap())
}

fn center_patch() -> Vec<bool> {
    (0..64).map(|p| (2..6).contains(&(p / 8)) && (2..6).contains(&(p % 8))).collect()
}

/// The dual's forward pass is the layer's, and its transpose and bias term are the adjoint and
/// the offset of that map: `⟨A x, ν⟩ = ⟨x, Aᵀ ν⟩`, `⟨(A x + b) - A x, ν⟩ = νᵀ b`.
#[test]
fn dual_is_the_layer_and_its_adjoint() {
    let p = Params::random(3, DT).unwrap();
    let layer = ChannelAffine::new(&p.affine.0, &p.affine.1).unwrap();
    for shape in [vec![2usize, 4, 5, 5], vec![2, 4]] {
        let x = randn(1, &shape);
        let dual = dual_of(&layer, &x);
        let y = layer.forward(&[Some(&x)]).unwrap();
        let yd = dual.forward(&[Some(&x.unsqueeze(1).unwrap())], true).unwrap().unwrap().squeeze(1).unwrap();
        assert!(max_abs_diff(&y, &yd) < 1e-12, "dual forward differs from the layer ({shape:?})");

        let mut cols = vec![2usize, 3];
        cols.extend_from_slice(&shape[1..]);
        let xc = randn(2, &cols);
        let nu = randn(3, &cols);
        let ax = dual.forward(&[Some(&xc)], false).unwrap().unwrap();
        let atnu = dual.transpose(&nu).unwrap().pop().unwrap().unwrap();
        let (lhs, rhs) = (dot(&ax, &nu), dot(&xc, &atnu));
        assert!((lhs - rhs).abs() < 1e-10 * lhs.abs().max(1.0), "transpose is not the adjoint: {lhs} vs {rhs}");

        let axb = dual.forward(&[Some(&xc)], true).unwrap().unwrap();
        let bt = dual.bias_term(&nu).unwrap().unwrap();
        assert_eq!(bt.dims(), &[2, 3]);
        let want = ((&axb - &ax).unwrap() * &nu).unwrap().flatten_from(2).unwrap().sum(2).unwrap();
        assert!(max_abs_diff(&bt, &want) < 1e-10, "bias term is not νᵀb ({shape:?})");
    }
}

#[test]
fn spec_describes_the_custom_layer() {
    let (_, net, _, _) = setup(0);
    let spec = net.spec();
    assert_eq!(spec.layers.len(), 9);
    match &spec.layers[1] {
        LayerSpec::Custom { kind, config } => {
            assert_eq!(kind, "ChannelAffine");
            assert_eq!(config["channels"], 4);
        }
        other => panic!("layer 1 is described as {other:?}"),
    }
    assert!(spec.to_json().contains("\"ChannelAffine\""));
    let names: Vec<String> = net.params().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"1.scale".to_string()) && names.contains(&"1.shift".to_string()), "{names:?}");
}

fn assert_sound(name: &str, net: &Network, dual: &DualNetwork, x: &Tensor, y: &[u32], radius: &Tensor) {
    let j = objectives(dual, y).unwrap();
    let s = sample(net, dual, x, y, radius, 1000, 11).unwrap();
    let gap = worst_gap(&j, &s, y);
    assert!(gap <= 1e-9, "{name}: a sampled output beats the bound J(c) by {gap:e}");
    assert!(s.bound_violation <= 1e-9, "{name}: a sampled pre-activation leaves its bounds by {:e}", s.bound_violation);
}

/// Where no ReLU is unstable the network is affine on the input set, and the dual bound is the
/// exact minimum of the margin `m_j = f_y − f_j` over the box `|x' − x| ≤ r` (a per-pixel
/// radius): `J(e_y − e_j) = m_j(x) − Σ_i r_i |∂m_j/∂x_i|`. The gradient comes from automatic
/// differentiation of the forward pass, independently of the dual; a loose (or vacuous) bound, a
/// transpose that is not the adjoint, a lost bias term or a wrong input-set norm all break this.
fn assert_exact_when_stable(name: &str, net: &Network, dual: &DualNetwork, x: &Tensor, y: &[u32], radius: &Tensor) {
    assert!(dual.unstable_counts().iter().flatten().all(|&c| c == 0), "{name}: a ReLU is unstable");
    let j = objectives(dual, y).unwrap();
    let r = radius.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let xv = candle_core::Var::from_tensor(x).unwrap();
    let logits = net.forward(xv.as_tensor()).unwrap();
    let fy = logits.gather(&Tensor::from_vec(y.to_vec(), (y.len(), 1), &Device::Cpu).unwrap(), 1).unwrap();
    let margins = fy.broadcast_sub(&logits).unwrap();
    let m0 = margins.to_vec2::<f64>().unwrap();
    let mut tested = 0;
    for c in 0..CLASSES {
        // The examples are independent: the gradient of the sum is every example's own.
        let g = margins.narrow(1, c, 1).unwrap().sum_all().unwrap().backward().unwrap();
        let g = g.get(xv.as_tensor()).unwrap().flatten_from(1).unwrap().to_vec2::<f64>().unwrap();
        for (b, gb) in g.iter().enumerate() {
            let want = m0[b][c] - gb.iter().zip(&r).map(|(d, ri)| ri * d.abs()).sum::<f64>();
            let got = j[b][c];
            assert!(
                (got - want).abs() <= 1e-9 * (1.0 + want.abs()),
                "{name}: example {b}, class {c}: J = {got}, exact minimum over the set {want}"
            );
            tested += (want < m0[b][c]) as usize;
        }
    }
    assert!(tested > 0, "{name}: the set never moves the margin: the comparison is trivial");
}

#[test]
fn bounds_are_sound_on_sampled_points() {
    for seed in [0, 1] {
        let (_, net, x, y) = setup(seed);
        for eps in [0.01, 0.05] {
            let dual = net.dual(&x, ball(&x, eps), &DualOptions::default()).unwrap();
            assert!(
                dual.unstable_counts().iter().flatten().any(|&c| c > 0),
                "no unstable ReLU: the test would be trivial"
            );
            let radius = Tensor::full(eps, INPUT.to_vec(), &Device::Cpu).unwrap();
            assert_sound(&format!("seed {seed}, l_inf {eps}"), &net, &dual, &x, &y, &radius);
        }
        let masked = MaskedInfBall::new(&x, 0.1, &center_patch()).unwrap();
        let radius = masked.radius().unwrap();
        let dual = net.dual(&x, Box::new(masked), &DualOptions::default()).unwrap();
        assert_sound(&format!("seed {seed}, patch"), &net, &dual, &x, &y, &radius);
    }
}

/// The bounds are not merely sound but exact where they should be: on a radius so small that no
/// ReLU is unstable (the largest `10⁻ᵏ` that is), for the l_inf ball and the custom patch set.
#[test]
fn bounds_are_exact_where_the_network_is_affine() {
    for seed in [0, 1] {
        let (_, net, x, y) = setup(seed);
        let stable = |eps: f64| {
            let dual = net.dual(&x, ball(&x, eps), &DualOptions::default()).unwrap();
            dual.unstable_counts().iter().flatten().all(|&c| c == 0)
        };
        let eps = (3..10).map(|k| 10f64.powi(-k)).find(|&e| stable(e)).expect("a ReLU input is 0 at x");
        eprintln!("seed {seed}: no unstable ReLU at eps {eps:e}");
        let dual = net.dual(&x, ball(&x, eps), &DualOptions::default()).unwrap();
        let radius = Tensor::full(eps, INPUT.to_vec(), &Device::Cpu).unwrap();
        assert_exact_when_stable(&format!("seed {seed}, l_inf {eps}"), &net, &dual, &x, &y, &radius);
        let masked = MaskedInfBall::new(&x, eps, &center_patch()).unwrap();
        let radius = masked.radius().unwrap();
        let dual = net.dual(&x, Box::new(masked), &DualOptions::default()).unwrap();
        assert_exact_when_stable(&format!("seed {seed}, patch {eps}"), &net, &dual, &x, &y, &radius);
    }
}

fn assert_same_duals(what: &str, a: &DualNetwork, b: &DualNetwork, y: &[u32]) {
    assert_eq!(a.bounds().len(), b.bounds().len());
    for (la, lb) in a.bounds().iter().zip(b.bounds()) {
        assert_eq!(la.layer, lb.layer);
        let d = max_abs_diff(&la.lower, &lb.lower).max(max_abs_diff(&la.upper, &lb.upper));
        assert!(d < 1e-9, "{what}: bounds of layer {} differ by {d:e}", la.layer);
    }
    let (ja, jb) = (objectives(a, y).unwrap(), objectives(b, y).unwrap());
    for (ra, rb) in ja.iter().zip(&jb) {
        for (va, vb) in ra.iter().zip(rb) {
            assert!((va - vb).abs() < 1e-9, "{what}: J differs: {va} vs {vb}");
        }
    }
    // Arbitrary objectives too, not only class differences.
    let c = randn(9, &[y.len(), 5, CLASSES]);
    let d = max_abs_diff(&a.objective(&c).unwrap(), &b.objective(&c).unwrap());
    assert!(d < 1e-9, "{what}: J(c) for random c differs by {d:e}");
}

/// Folding `a ⊙ (W x + b) + s` into the convolution gives the same function from built-in layers
/// only, so the dual network must give the same bounds to rounding.
#[test]
fn same_bounds_as_the_conv_with_the_affine_folded_in() {
    for seed in [0, 1, 2] {
        let (p, net, x, y) = setup(seed);
        let folded = folded_network(&p).unwrap();
        assert!(max_abs_diff(&net.forward(&x).unwrap(), &folded.forward(&x).unwrap()) < 1e-12);
        for budget in [None, Some(100_000)] {
            let opts = DualOptions { memory_budget: budget, ..Default::default() };
            let a = net.dual(&x, ball(&x, 0.03), &opts).unwrap();
            let b = folded.dual(&x, ball(&x, 0.03), &opts).unwrap();
            assert_same_duals(&format!("seed {seed}, budget {budget:?}"), &a, &b, &y);
        }
    }
}

/// The custom input set is the built-in l_inf ball with a per-pixel radius `ε · mask`; with a
/// memory budget its columns are asked for in chunks.
#[test]
fn masked_ball_equals_a_per_pixel_radius() {
    let (_, net, x, y) = setup(4);
    let masked = MaskedInfBall::new(&x, 0.1, &center_patch()).unwrap();
    let radius = masked.radius().unwrap();
    let per_pixel = radius.unsqueeze(0).unwrap().broadcast_as(x.dims()).unwrap().contiguous().unwrap();
    let reference =
        net.dual(&x, Box::new(InfBall::new(&x, Epsilon::Tensor(per_pixel)).unwrap()), &DualOptions::default()).unwrap();
    for budget in [None, Some(100_000)] {
        let opts = DualOptions { memory_budget: budget, ..Default::default() };
        let m = MaskedInfBall::new(&x, 0.1, &center_patch()).unwrap();
        let dual = net.dual(&x, Box::new(m), &opts).unwrap();
        assert_same_duals(&format!("patch, budget {budget:?}"), &dual, &reference, &y);
    }
    // The empty mask fixes the input: the bounds are the nominal values.
    let none = MaskedInfBall::new(&x, 0.1, &[false; 64]).unwrap();
    let dual = net.dual(&x, Box::new(none), &DualOptions::default()).unwrap();
    let f = robust_bounds(&dual, &y).unwrap();
    let logits = net.forward(&x).unwrap();
    let fy = logits.gather(&Tensor::from_vec(y.clone(), (y.len(), 1), &Device::Cpu).unwrap(), 1).unwrap();
    assert!(max_abs_diff(&f, &logits.broadcast_sub(&fy).unwrap()) < 1e-12);
}

fn grad(grads: &candle_core::backprop::GradStore, net: &Network, name: &str) -> Tensor {
    let (_, v) = net.params().into_iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no parameter {name}"));
    grads.get(v.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}")).clone()
}

/// The robust loss is differentiable in the custom layer's parameters, and its gradient is the
/// one the chain rule gives from the folded network: with `W' = a ⊙ W`, `b' = a ⊙ b + s`,
/// `∂L/∂s = ∂L/∂b'`, `∂L/∂a_c = Σ ∂L/∂W'_c ⊙ W_c + ∂L/∂b'_c b_c`, `∂L/∂W = a ⊙ ∂L/∂W'`.
#[test]
fn robust_loss_gradient_reaches_the_custom_parameters() {
    let (p, net, x, y) = setup(5);
    let folded = folded_network(&p).unwrap();
    let loss = |n: &Network| {
        let dual = n.dual(&x, ball(&x, 0.03), &DualOptions::default()).unwrap();
        robust_loss(&dual, &y).unwrap()
    };
    let (l, lf) = (loss(&net), loss(&folded));
    let (lv, lfv) = (l.loss.to_scalar::<f64>().unwrap(), lf.loss.to_scalar::<f64>().unwrap());
    assert!((lv - lfv).abs() < 1e-9, "robust loss {lv} vs folded {lfv}");
    let g = l.loss.backward().unwrap();
    let gf = lf.loss.backward().unwrap();

    let g_scale = grad(&g, &net, "1.scale");
    let g_shift = grad(&g, &net, "1.shift");
    assert!(max_abs(&g_scale) > 1e-6 && max_abs(&g_shift) > 1e-6, "zero gradient: {g_scale} {g_shift}");

    let (gw_f, gb_f) = (grad(&gf, &folded, "0.weight"), grad(&gf, &folded, "0.bias"));
    let (a, (w, b)) = (&p.affine.0, &p.conv1);
    let want_shift = gb_f.clone();
    let want_scale = ((&gw_f * w).unwrap().flatten_from(1).unwrap().sum(1).unwrap() + (&gb_f * b).unwrap()).unwrap();
    let want_w = gw_f.broadcast_mul(&a.reshape((4, 1, 1, 1)).unwrap()).unwrap();
    let want_b = (&gb_f * a).unwrap();
    for (name, got, want) in [
        ("shift", g_shift, want_shift),
        ("scale", g_scale, want_scale),
        ("conv weight", grad(&g, &net, "0.weight"), want_w),
        ("conv bias", grad(&g, &net, "0.bias"), want_b),
    ] {
        let d = max_abs_diff(&got, &want);
        assert!(d < 1e-9 * max_abs(&want).max(1.0), "gradient of {name} differs from the chain rule by {d:e}");
    }
}

/// A dual that forgets its bias term: the folding check must catch it.
struct ForgetsBias(ChannelAffine);
struct ForgetsBiasDual(Box<dyn DualAffine>);

impl DualAffine for ForgetsBiasDual {
    fn name(&self) -> String {
        self.0.name()
    }
    fn forward(&self, xs: &[Option<&Tensor>], with_bias: bool) -> DResult<Option<Tensor>> {
        self.0.forward(xs, with_bias)
    }
    fn transpose(&self, nu: &Tensor) -> DResult<Vec<Option<Tensor>>> {
        self.0.transpose(nu)
    }
    fn bias_term(&self, _nu: &Tensor) -> DResult<Option<Tensor>> {
        Ok(None)
    }
}

impl Layer for ForgetsBias {
    fn spec(&self) -> LayerSpec {
        self.0.spec()
    }
    fn forward(&self, xs: &[Option<&Tensor>]) -> candle_core::Result<Tensor> {
        self.0.forward(xs)
    }
    fn dual(&self, xs: &[Option<&Tensor>]) -> DResult<DualNode> {
        match self.0.dual(xs)? {
            DualNode::Affine(a) => Ok(DualNode::Affine(Box::new(ForgetsBiasDual(a)))),
            other => Ok(other),
        }
    }
    fn params(&self) -> Vec<(String, candle_core::Var)> {
        self.0.params()
    }
}

#[test]
fn the_folding_check_catches_a_wrong_dual() {
    let (p, net, x, y) = setup(0);
    // The same network (same Vars) with the faulty layer in place of ChannelAffine.
    let params = net.params();
    let mut layers: Vec<Box<dyn Layer>> = Vec::new();
    let var = |n: &str| params.iter().find(|(k, _)| k == n).unwrap().1.clone();
    layers.push(Box::new(nets::layers::Conv2d {
        weight: var("0.weight"),
        bias: Some(var("0.bias")),
        stride: 1,
        padding: 1,
    }));
    layers.push(Box::new(ForgetsBias(ChannelAffine::new(&p.affine.0, &p.affine.1).unwrap())));
    layers.push(Box::new(nets::layers::ReLU));
    layers.push(Box::new(nets::layers::Conv2d {
        weight: var("3.weight"),
        bias: Some(var("3.bias")),
        stride: 2,
        padding: 1,
    }));
    layers.push(Box::new(nets::layers::ReLU));
    layers.push(Box::new(nets::layers::Flatten));
    layers.push(Box::new(nets::layers::Linear { weight: var("6.weight"), bias: Some(var("6.bias")) }));
    layers.push(Box::new(nets::layers::ReLU));
    layers.push(Box::new(nets::layers::Linear { weight: var("8.weight"), bias: Some(var("8.bias")) }));
    let broken = Network::new(nets::NetworkKind::Sequential, "broken", &INPUT, layers).unwrap();
    assert!(max_abs_diff(&net.forward(&x).unwrap(), &broken.forward(&x).unwrap()) < 1e-12, "same function");
    let folded = folded_network(&p).unwrap();
    let a = broken.dual(&x, ball(&x, 0.03), &DualOptions::default()).unwrap();
    let b = folded.dual(&x, ball(&x, 0.03), &DualOptions::default()).unwrap();
    let (ja, jb) = (objectives(&a, &y).unwrap(), objectives(&b, &y).unwrap());
    let d = ja.iter().flatten().zip(jb.iter().flatten()).map(|(u, v)| (u - v).abs()).fold(0.0, f64::max);
    assert!(d > 1e-6, "a dual without its bias term went unnoticed (|ΔJ| = {d:e})");
}
