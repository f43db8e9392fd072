//! The bound family beyond the reference values: gradients of IBP and CROWN-IBP bounds with
//! respect to the parameters against central finite differences (f64, small convnet); every
//! method's margin bound at most the centre's margin and α-CROWN at least CROWN and the exact
//! dual; clear errors for bad specifications and for a layer without interval bounds.
//!
//! The bounds are piecewise smooth (their pieces change where an interval bound crosses zero),
//! so the inputs are drawn until every IBP bound is clear of zero.

use candle_core::{DType, Device, Tensor};
use dual_core::bounds::{BoundOptions, Method, Spec};
use dual_core::{cross_entropy, DualSource};
use dual_layers::{InfBall, InfBallBounded};
use nets::spec::build::{conv, flatten, linear, relu};
use nets::{Network, NetworkSpec};
use rand::{rngs::StdRng, Rng, SeedableRng};

const STEP: f64 = 1e-6;
const RTOL: f64 = 1e-5;
const ATOL: f64 = 1e-8;

fn flat(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

fn source(x: &Tensor, eps: f64, bounded: bool) -> Box<dyn DualSource> {
    if bounded {
        Box::new(InfBallBounded::new(x, eps, 0.0, 1.0).unwrap())
    } else {
        Box::new(InfBall::new(x, eps).unwrap())
    }
}

fn convnet() -> Network {
    let spec = NetworkSpec::sequential(
        "conv",
        &[1, 6, 6],
        vec![conv(1, 3, 3, 1, 1), relu(), conv(3, 4, 4, 2, 1), relu(), flatten(), linear(36, 8), relu(), linear(8, 4)],
    );
    Network::init(&spec, 3, DType::F64, &Device::Cpu).unwrap()
}

/// Cross-entropy of the negated margin bounds (the robust loss of the method).
fn loss(net: &Network, x: &Tensor, y: &[u32], eps: f64, bounded: bool, method: Method) -> Tensor {
    let m = net.margin_bounds(x, source(x, eps, bounded), y, method, &BoundOptions::default()).unwrap();
    cross_entropy(&m.neg().unwrap(), y).unwrap()
}

fn with_entry(sd: &[(String, Tensor)], name: &str, idx: usize, delta: f64) -> Vec<(String, Tensor)> {
    sd.iter()
        .map(|(n, t)| {
            if n == name {
                let mut v = flat(t);
                v[idx] += delta;
                (n.clone(), Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap())
            } else {
                (n.clone(), t.clone())
            }
        })
        .collect()
}

fn check_gradients(method: Method, bounded: bool) {
    let net = convnet();
    let spec = net.spec();
    let mut rng = StdRng::seed_from_u64(7 + bounded as u64);
    let (b, eps) = (2, 0.02);
    let mut tries = 0;
    let x = loop {
        let v: Vec<f64> = (0..b * 36).map(|_| rng.random_range(0.05..0.95)).collect();
        let x = Tensor::from_vec(v, (b, 1, 6, 6), &Device::Cpu).unwrap();
        let s = Spec::margins(&[0; 2], 4, DType::F64, &Device::Cpu).unwrap();
        let sb = net.spec_bounds(&x, source(&x, eps, bounded), &s, Method::Ibp, &BoundOptions::default()).unwrap();
        let vals: Vec<f64> = sb.layers.iter().flat_map(|l| flat(&l.lower).into_iter().chain(flat(&l.upper))).collect();
        let m = vals.iter().fold(f64::INFINITY, |m, v| m.min(v.abs()));
        let unstable = sb
            .layers
            .iter()
            .map(|l| flat(&l.lower).iter().zip(flat(&l.upper)).filter(|(l, u)| **l < 0.0 && *u > 0.0).count());
        if m > 1e-4 && unstable.sum::<usize>() > 0 {
            break x;
        }
        tries += 1;
        assert!(tries < 100, "no input with interval bounds clear of zero");
    };
    let y: Vec<u32> = (0..b).map(|_| rng.random_range(0..4)).collect();
    let l = loss(&net, &x, &y, eps, bounded, method);
    let grads = l.backward().unwrap();
    let sd = net.state_dict();
    let (mut checked, mut sizable) = (0, 0);
    for (name, var) in net.params() {
        let g = flat(grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name} has no gradient")));
        let n = var.as_tensor().elem_count();
        for _ in 0..3 {
            let idx = rng.random_range(0..n);
            let plus =
                Network::from_state_dict(&spec, &with_entry(&sd, &name, idx, STEP), DType::F64, &Device::Cpu).unwrap();
            let minus =
                Network::from_state_dict(&spec, &with_entry(&sd, &name, idx, -STEP), DType::F64, &Device::Cpu).unwrap();
            let lp = loss(&plus, &x, &y, eps, bounded, method).to_scalar::<f64>().unwrap();
            let lm = loss(&minus, &x, &y, eps, bounded, method).to_scalar::<f64>().unwrap();
            let fd = (lp - lm) / (2.0 * STEP);
            let an = g[idx];
            let tol = RTOL * fd.abs().max(an.abs()) + ATOL;
            assert!(
                (fd - an).abs() <= tol,
                "{} d loss / d {name}[{idx}]: autograd {an:e}, finite difference {fd:e}",
                method.name()
            );
            checked += 1;
            sizable += (an.abs() > 1e-4) as usize;
        }
    }
    assert!(sizable * 2 >= checked, "most checked gradients are negligible");
    println!("{} bounded {bounded}: {checked} entries, {sizable} sizable", method.name());
}

#[test]
fn ibp_gradients_match_finite_differences() {
    check_gradients(Method::Ibp, false);
    check_gradients(Method::Ibp, true);
}

#[test]
fn crown_ibp_gradients_match_finite_differences() {
    check_gradients(Method::CrownIbp, false);
    check_gradients(Method::CrownIbp, true);
}

/// On the same network and ball: CROWN-IBP ≥ IBP is not guaranteed, but every method's margin
/// bound is at most the true margin at the centre, and α-CROWN ≥ CROWN and ≥ the exact dual.
#[test]
fn bounds_are_ordered_and_below_the_centre() {
    let net = convnet();
    let mut rng = StdRng::seed_from_u64(11);
    let v: Vec<f64> = (0..4 * 36).map(|_| rng.random_range(0.05..0.95)).collect();
    let x = Tensor::from_vec(v, (4, 1, 6, 6), &Device::Cpu).unwrap();
    let logits = flat(&net.forward(&x).unwrap());
    let y: Vec<u32> = vec![0, 1, 2, 3];
    let opts = BoundOptions::default();
    let mut got = Vec::new();
    for m in [Method::Ibp, Method::CrownIbp, Method::Crown, Method::AlphaCrown] {
        let mb = flat(&net.margin_bounds(&x, source(&x, 0.05, true), &y, m, &opts).unwrap());
        for e in 0..4 {
            for j in 0..4 {
                let truth = logits[e * 4 + y[e] as usize] - logits[e * 4 + j];
                assert!(
                    mb[e * 4 + j] <= truth + 1e-9,
                    "{}: bound {} above the centre's margin {truth}",
                    m.name(),
                    mb[e * 4 + j]
                );
            }
        }
        got.push(mb);
    }
    let dual = net.dual(&x, source(&x, 0.05, true), &Default::default()).unwrap();
    let exact = flat(&dual_core::robust_bounds(&dual, &y).unwrap());
    for i in 0..16 {
        assert!(got[3][i] >= got[2][i] - 1e-9, "α-CROWN below CROWN");
        assert!(got[3][i] >= -exact[i] - 1e-9, "α-CROWN below the exact dual");
    }
}

#[test]
fn bad_specifications_are_clear_errors() {
    let net = convnet();
    let x = Tensor::full(0.5, (2, 1, 6, 6), &Device::Cpu).unwrap();
    let opts = BoundOptions::default();
    let wrong = Spec::new(Tensor::zeros((2, 3, 5), DType::F64, &Device::Cpu).unwrap()).unwrap();
    let e = net.spec_bounds(&x, source(&x, 0.1, false), &wrong, Method::Crown, &opts).err().unwrap().to_string();
    assert!(e.contains("specification"), "{e}");
    let nan = Tensor::full(f64::NAN, (2, 1, 4), &Device::Cpu).unwrap();
    assert!(Spec::new(nan).err().unwrap().to_string().contains("NaN"));
    let e = net.margin_bounds(&x, source(&x, 0.1, false), &[0, 9], Method::Ibp, &opts).err().unwrap().to_string();
    assert!(e.contains("label"), "{e}");
    assert!("alpha".parse::<Method>().err().unwrap().to_string().contains("alpha-crown"));
}

/// A layer whose dual has no `forward_abs` (the identity, written without it).
struct PlainIdentity;

impl dual_core::SingleInputAffine for PlainIdentity {
    fn name(&self) -> String {
        "PlainIdentity".into()
    }
    fn forward(&self, x: &Tensor, _with_bias: bool) -> dual_core::Result<Tensor> {
        Ok(x.clone())
    }
    fn transpose(&self, nu: &Tensor) -> dual_core::Result<Tensor> {
        Ok(nu.clone())
    }
}

/// IBP and CROWN-IBP refuse a layer without interval bounds by name; CROWN and α-CROWN, which
/// do not need them, give the same bounds as with the built-in identity.
#[test]
fn a_layer_without_interval_bounds_is_a_clear_error() {
    use dual_core::bounds::{spec_bounds, Net};
    use dual_core::DualNode;
    let net = convnet();
    let mut rng = StdRng::seed_from_u64(5);
    let v: Vec<f64> = (0..2 * 36).map(|_| rng.random_range(0.05..0.95)).collect();
    let x = Tensor::from_vec(v, (2, 1, 6, 6), &Device::Cpu).unwrap();
    let spec = Spec::margins(&[0, 1], 4, DType::F64, &Device::Cpu).unwrap();
    let input = source(&x, 0.05, false);
    let mut nodes = net.dual_nodes(&x).unwrap();
    let plain = net.dual_nodes(&x).unwrap();
    nodes.insert(0, DualNode::Affine(Box::new(PlainIdentity)));
    let mut with_builtin = plain;
    with_builtin.insert(0, DualNode::Affine(Box::new(dual_layers::DualIdentity)));
    let opts = BoundOptions::default();
    for m in [Method::Ibp, Method::CrownIbp] {
        let n = Net { nodes: &nodes, x: &x, input: input.as_ref() };
        let e = spec_bounds(&n, &spec, m, &opts, None).expect_err("an error").to_string();
        assert!(e.contains("PlainIdentity does not support interval bounds"), "{}: {e}", m.name());
    }
    for m in [Method::Crown, Method::AlphaCrown] {
        let a = spec_bounds(&Net { nodes: &nodes, x: &x, input: input.as_ref() }, &spec, m, &opts, None).unwrap();
        let b =
            spec_bounds(&Net { nodes: &with_builtin, x: &x, input: input.as_ref() }, &spec, m, &opts, None).unwrap();
        let d = flat(&a.lower).iter().zip(flat(&b.lower)).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
        // α-CROWN's layer-wise bounds use IBP where it is available, so only CROWN must agree exactly.
        if m == Method::Crown {
            assert!(d < 1e-12, "crown differs by {d:e}");
        }
    }
}
