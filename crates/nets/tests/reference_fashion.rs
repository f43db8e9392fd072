//! Conformance with the PyTorch package on the paper's Fashion-MNIST model (20 test images,
//! eps 0.1): robust bounds f, layer-wise bounds, l2 ball, tensor epsilon, robust loss and its
//! gradients, in f32 (to 1e-4) and f64 (to 1e-8).

mod common;
use candle_core::{DType, Tensor};
use common::*;
use dual_core::{robust_bounds, robust_loss, DualOptions, DualSource};
use dual_layers::{Epsilon, InfBall, InfBallBounded, L2Ball};

fn input(x: &Tensor, bounded: bool, eps: Epsilon) -> Box<dyn DualSource> {
    if bounded {
        Box::new(InfBallBounded::new(x, eps, 0.0, 1.0).unwrap())
    } else {
        Box::new(InfBall::new(x, eps).unwrap())
    }
}

fn check_f(dtype: DType, bounded: bool, budget: Option<usize>) {
    let Some(dir) = fashion_ref() else { return };
    let net = fashion_model(&dir, dtype);
    let x = npy(&dir, "fashion_X20.npy").to_dtype(dtype).unwrap();
    let y = labels(&dir, "fashion_y20.npy");
    let logits = net.forward(&x).unwrap();
    assert!(max_abs_diff(&logits, &npy(&dir, "logits20.npy")) < 1e-4);
    let opts = DualOptions { memory_budget: budget, ..Default::default() };
    let dual = net.dual(&x, input(&x, bounded, 0.1.into()), &opts).unwrap();
    let f = robust_bounds(&dual, &y).unwrap();
    let b = bounded as u8;
    let want = npy(&dir, &format!("f_bounded{b}{}.npy", suffix(dtype)));
    let d = max_abs_diff(&f, &want);
    assert!(d < tol(dtype), "f differs by {d:e} ({dtype:?}, bounded {bounded})");
    // Layer-wise bounds, images 0 and 1.
    let lb = dual.bounds();
    assert_eq!(lb.len(), 3);
    for (i, l) in lb.iter().enumerate() {
        for (which, t) in [("zl", &l.lower), ("zu", &l.upper)] {
            let want = npy(&dir, &format!("relu{}_{which}_bounded{b}{}.npy", i + 1, suffix(dtype)));
            let got = t.narrow(0, 0, 2).unwrap();
            let d = max_abs_diff(&got, &want);
            assert!(d < tol(dtype), "relu{} {which} differs by {d:e}", i + 1);
        }
    }
}

#[test]
fn f_and_layer_bounds_f32_ball() {
    check_f(DType::F32, false, None);
}
#[test]
fn f_and_layer_bounds_f32_bounded() {
    check_f(DType::F32, true, None);
}
#[test]
fn f_and_layer_bounds_f64_ball() {
    check_f(DType::F64, false, None);
}
#[test]
fn f_and_layer_bounds_f64_bounded() {
    check_f(DType::F64, true, None);
}
#[test]
fn memory_budget_gives_the_same_numbers() {
    // 8 MiB forces dozens of chunks per source.
    check_f(DType::F64, true, Some(8 << 20));
}

#[test]
fn l2_ball() {
    let Some(dir) = fashion_ref() else { return };
    for dtype in [DType::F32, DType::F64] {
        let net = fashion_model(&dir, dtype);
        let x = npy(&dir, "fashion_X20.npy").to_dtype(dtype).unwrap();
        let y = labels(&dir, "fashion_y20.npy");
        let dual = net.dual(&x, Box::new(L2Ball::new(&x, 1.0).unwrap()), &DualOptions::default()).unwrap();
        let f = robust_bounds(&dual, &y).unwrap();
        let d = max_abs_diff(&f, &npy(&dir, &format!("l2/f_l2_eps1.0{}.npy", suffix(dtype))));
        assert!(d < tol(dtype), "l2 f differs by {d:e} ({dtype:?})");
    }
}

#[test]
fn tensor_epsilon() {
    let Some(dir) = fashion_ref() else { return };
    for dtype in [DType::F32, DType::F64] {
        let net = fashion_model(&dir, dtype);
        let x = npy(&dir, "fashion_X20.npy").to_dtype(dtype).unwrap();
        let y = labels(&dir, "fashion_y20.npy");
        for which in ["per_example", "per_pixel"] {
            let eps = npy(&dir, &format!("tensor_eps/eps_{which}.npy")).to_dtype(dtype).unwrap();
            let dual = net.dual(&x, input(&x, false, Epsilon::Tensor(eps)), &DualOptions::default()).unwrap();
            let f = robust_bounds(&dual, &y).unwrap();
            let d = max_abs_diff(&f, &npy(&dir, &format!("tensor_eps/f_eps_{which}{}.npy", suffix(dtype))));
            assert!(d < tol(dtype), "{which} f differs by {d:e} ({dtype:?})");
        }
    }
}

#[test]
fn robust_loss_and_gradients() {
    let Some(dir) = fashion_ref() else { return };
    for dtype in [DType::F32, DType::F64] {
        for bounded in [false, true] {
            let net = fashion_model(&dir, dtype);
            let x = npy(&dir, "fashion_X20.npy").to_dtype(dtype).unwrap();
            let y = labels(&dir, "fashion_y20.npy");
            let dual = net.dual(&x, input(&x, bounded, 0.1.into()), &DualOptions::default()).unwrap();
            let rl = robust_loss(&dual, &y).unwrap();
            let b = bounded as u8;
            let sfx = suffix(dtype);
            let want_loss = npy(&dir, &format!("robust_loss/loss_bounded{b}{sfx}.npy"));
            assert!(max_abs_diff(&rl.loss.reshape(1).unwrap(), &want_loss.reshape(1).unwrap()) < tol(dtype));
            let want_err = npy(&dir, &format!("robust_loss/err_bounded{b}{sfx}.npy")).to_dtype(DType::F64).unwrap();
            let want_err = want_err.flatten_all().unwrap().to_vec1::<f64>().unwrap()[0];
            assert!((rl.error - want_err).abs() < 1e-9, "robust error {} vs {want_err}", rl.error);
            let grads = rl.loss.backward().unwrap();
            for (name, var) in net.params() {
                let g = grads.get(var.as_tensor()).expect("every parameter gets a gradient");
                let want = npy(&dir, &format!("robust_loss/grad_{name}_bounded{b}{sfx}.npy"));
                let scale = want
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
                    .max(1.0);
                let d = max_abs_diff(g, &want);
                assert!(d < tol(dtype) * scale, "gradient of {name} differs by {d:e} ({dtype:?}, bounded {bounded})");
            }
        }
    }
}
