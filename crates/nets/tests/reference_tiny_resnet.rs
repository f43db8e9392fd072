//! Conformance with the PyTorch package on a small residual (DenseSequential) network with
//! random weights, loaded from a zip-format checkpoint: logits and robust bounds f for eps
//! 2/255 and 8/255, ball and ball ∩ [0,1], f32 and f64.

mod common;
use candle_core::{DType, Device};
use common::*;
use dual_core::{robust_bounds, DualOptions, DualSource};
use dual_layers::{InfBall, InfBallBounded};
use nets::spec::{build::*, LayerSpec, NetworkSpec};
use nets::Network;

fn tiny_resnet_spec() -> NetworkSpec {
    NetworkSpec::dense_sequential(
        "tiny-resnet",
        &[3, 16, 16],
        vec![
            conv(3, 8, 3, 1, 1),
            relu(),
            dense(vec![Some(conv(8, 8, 3, 1, 1))]),
            relu(),
            dense(vec![Some(LayerSpec::Identity), None, Some(conv(8, 8, 3, 1, 1))]),
            relu(),
            dense(vec![Some(conv(8, 16, 4, 2, 1))]),
            relu(),
            dense(vec![Some(conv(8, 16, 2, 2, 0)), None, Some(conv(16, 16, 3, 1, 1))]),
            relu(),
            flatten(),
            linear(1024, 50),
            relu(),
            linear(50, 10),
        ],
    )
}

#[test]
fn tiny_resnet_matches_reference() {
    let Some(dir) = shared_data::shared_path("reference/tiny_resnet") else { return };
    let sd = nets::pth::read_pth(&dir.join("tiny_resnet.pth")).unwrap();
    assert_eq!(sd.len(), 1);
    for dtype in [DType::F32, DType::F64] {
        let sfx = if dtype == DType::F64 { "_fp64" } else { "" };
        let tol = if dtype == DType::F64 { 1e-8 } else { 1e-4 };
        let net = Network::from_state_dict(&tiny_resnet_spec(), &sd[0].tensors, dtype, &Device::Cpu).unwrap();
        let x = npy(&dir, "X10.npy").to_dtype(dtype).unwrap();
        let y = labels(&dir, "y10.npy");
        let logits = net.forward(&x).unwrap();
        let d = max_abs_diff(&logits, &npy(&dir, &format!("logits10{sfx}.npy")));
        assert!(d < tol, "logits differ by {d:e}");
        for px in [2, 8] {
            let eps = px as f64 / 255.0;
            for bounded in [false, true] {
                let input: Box<dyn DualSource> = if bounded {
                    Box::new(InfBallBounded::new(&x, eps, 0.0, 1.0).unwrap())
                } else {
                    Box::new(InfBall::new(&x, eps).unwrap())
                };
                let dual = net.dual(&x, input, &DualOptions::default()).unwrap();
                let f = robust_bounds(&dual, &y).unwrap();
                let want = npy(&dir, &format!("f_eps{px}px_bounded{}{sfx}.npy", bounded as u8));
                let d = max_abs_diff(&f, &want);
                assert!(d < tol, "f differs by {d:e} (eps {px}/255, bounded {bounded}, {dtype:?})");
            }
        }
    }
}
