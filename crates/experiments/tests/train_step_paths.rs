//! The training step's two ways to the interval bounds give the same numbers: the bound alone
//! (`margin_bounds_with_layers`, dual nodes from one example's forward pass, no forward pass of
//! the batch) and the bound from the batch's forward pass (`margin_bounds_from_outputs`, what
//! the trainer uses to share that pass with the clean loss): the margin lower bounds and the
//! gradients of their cross-entropy in every parameter equal bit for bit, IBP and CROWN-IBP, on
//! a convolutional and a fully connected network, f32 and f64.

use candle_core::{DType, Device, Tensor};
use dual_core::bounds::Method;
use experiments::certify::Norm;
use experiments::train::certified::{bound_cross_entropy, margin_bounds_from_outputs, margin_bounds_with_layers};
use nets::Network;
use rand::{rngs::StdRng, Rng, SeedableRng};

fn bits(t: &Tensor) -> Vec<u64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

#[test]
fn bound_alone_equals_bound_from_the_forward_pass() {
    let mut rng = StdRng::seed_from_u64(51);
    for arch in ["mnist-small", "mnist-mlp"] {
        for dtype in [DType::F32, DType::F64] {
            let net = Network::init(&nets::zoo::by_name(arch).unwrap(), 3, dtype, &Device::Cpu).unwrap();
            let b = 4;
            let x = Tensor::from_vec(
                (0..b * 784).map(|_| rng.random_range(0.0..1.0)).collect::<Vec<f64>>(),
                (b, 1, 28, 28),
                &Device::Cpu,
            )
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
            let x = if arch == "mnist-mlp" { x.reshape((b, 784)).unwrap() } else { x };
            let y = [3u32, 0, 9, 3];
            for method in [Method::Ibp, Method::CrownIbp] {
                let what = format!("{arch} {dtype:?} {method:?}");
                let (alone, _) = margin_bounds_with_layers(&net, &x, &y, 0.05, Norm::Linf, true, method).unwrap();
                let outs = net.forward_all(&x).unwrap();
                let (shared, _) = margin_bounds_from_outputs(&net, &outs, &y, 0.05, Norm::Linf, true, method).unwrap();
                assert_eq!(bits(&alone), bits(&shared), "{what}: margin bounds");
                let ga = bound_cross_entropy(&alone, &y).unwrap().backward().unwrap();
                let gs = bound_cross_entropy(&shared, &y).unwrap().backward().unwrap();
                for (name, v) in net.params() {
                    let (a, s) = (ga.get(&v), gs.get(&v));
                    assert!(a.is_some() && s.is_some(), "{what}: no gradient for {name}");
                    assert_eq!(bits(a.unwrap()), bits(s.unwrap()), "{what}: gradient of {name}");
                }
            }
        }
    }
}
