//! `nets::no_grad`: the same bounds as with tracked parameters, but no autograd graph; the mode
//! is restored afterwards (nested, and after a panic).

use candle_core::{DType, Device, Tensor};
use dual_core::{robust_bounds, DualOptions};
use dual_layers::InfBall;
use nets::{no_grad, spec::build::*, Network, NetworkSpec};

fn net() -> Network {
    let spec = NetworkSpec::sequential(
        "g",
        &[1, 6, 6],
        vec![conv(1, 3, 3, 2, 1), relu(), flatten(), linear(27, 8), relu(), linear(8, 3)],
    );
    Network::init(&spec, 4, DType::F64, &Device::Cpu).unwrap()
}

fn bounds(net: &Network, x: &Tensor) -> Tensor {
    let dual = net.dual(x, Box::new(InfBall::new(x, 0.1).unwrap()), &DualOptions::default()).unwrap();
    robust_bounds(&dual, &[0, 2]).unwrap()
}

#[test]
fn no_grad_gives_the_same_bounds_without_a_graph() {
    let net = net();
    let x = Tensor::rand(0.0f64, 1.0, (2, 1, 6, 6), &Device::Cpu).unwrap();
    let tracked = bounds(&net, &x);
    assert!(tracked.track_op(), "with parameters tracked, the bounds carry a graph");
    assert!(nets::grad_enabled());
    let (plain, nested_off) = no_grad(|| {
        let inner = no_grad(nets::grad_enabled);
        (bounds(&net, &x), !inner && !nets::grad_enabled())
    });
    assert!(nested_off);
    assert!(nets::grad_enabled(), "the mode is restored");
    assert!(!plain.track_op(), "inside no_grad nothing is recorded");
    assert!(!no_grad(|| net.forward(&x).unwrap()).track_op());
    let d = (tracked - plain).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
    assert_eq!(d, 0.0, "same numbers");
    // Gradients still flow outside no_grad.
    let loss = bounds(&net, &x).sum_all().unwrap();
    let g = loss.backward().unwrap();
    assert!(net.trainable().iter().all(|v| g.get(v).is_some()));
}

#[test]
fn the_mode_is_restored_after_a_panic() {
    let r = std::panic::catch_unwind(|| no_grad(|| panic!("boom")));
    assert!(r.is_err());
    assert!(nets::grad_enabled());
}
