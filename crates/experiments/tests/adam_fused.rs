//! Adam's one-pass update (`train/adam.rs`, what `Optimizer::step` runs on the CPU) against the
//! same update written with Candle's tensor ops (the optimizer's earlier code): the weights and
//! both moments equal bit for bit after several steps, f32 and f64, with and without weight
//! decay; a non-finite gradient is an error naming the divergence.

use candle_core::{DType, Device, Tensor, Var};
use experiments::train::{Optimizer, OptimizerConfig};
use rand::{rngs::StdRng, Rng, SeedableRng};

fn rand(rng: &mut StdRng, shape: &[usize], dtype: DType, scale: f64) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_vec((0..n).map(|_| scale * rng.random_range(-1.0..1.0)).collect::<Vec<f64>>(), shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn bits(t: &Tensor) -> Vec<u64> {
    let t = t.flatten_all().unwrap();
    match t.dtype() {
        DType::F32 => t.to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits() as u64).collect(),
        _ => t.to_vec1::<f64>().unwrap().iter().map(|v| v.to_bits()).collect(),
    }
}

/// One Adam step with Candle's ops: `(θ', m', v')`.
#[allow(clippy::too_many_arguments)]
fn tensor_adam(
    theta: &Tensor,
    g: &Tensor,
    m: Option<&Tensor>,
    v: Option<&Tensor>,
    (lr, beta1, beta2, eps, weight_decay): (f64, f64, f64, f64, f64),
    t: i32,
) -> (Tensor, Tensor, Tensor) {
    let g = if weight_decay != 0.0 { (g + (theta * weight_decay).unwrap()).unwrap() } else { g.clone() };
    let m = match m {
        None => (&g * (1.0 - beta1)).unwrap(),
        Some(m) => ((m * beta1).unwrap() + (&g * (1.0 - beta1)).unwrap()).unwrap(),
    };
    let v = match v {
        None => (g.sqr().unwrap() * (1.0 - beta2)).unwrap(),
        Some(v) => ((v * beta2).unwrap() + (g.sqr().unwrap() * (1.0 - beta2)).unwrap()).unwrap(),
    };
    let mhat = (&m / (1.0 - beta1.powi(t))).unwrap();
    let vhat = (&v / (1.0 - beta2.powi(t))).unwrap();
    let upd = (mhat / (vhat.sqrt().unwrap() + eps).unwrap()).unwrap();
    ((theta - (upd * lr).unwrap()).unwrap(), m, v)
}

#[test]
fn one_pass_adam_equals_the_tensor_ops_bit_for_bit() {
    let mut rng = StdRng::seed_from_u64(41);
    for dtype in [DType::F32, DType::F64] {
        for weight_decay in [0.0, 0.05] {
            let hp = (3e-3, 0.9, 0.999, 1e-8, weight_decay);
            let cfg = OptimizerConfig::Adam { lr: hp.0, beta1: hp.1, beta2: hp.2, eps: hp.3, weight_decay };
            // The last one is large enough to be split over threads (tasks of 2^14 elements).
            let shapes = [vec![7, 3, 3, 3], vec![10, 33], vec![5], vec![300, 257]];
            let vars: Vec<Var> =
                shapes.iter().map(|s| Var::from_tensor(&rand(&mut rng, s, dtype, 1.0)).unwrap()).collect();
            let mut theta: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().copy().unwrap()).collect();
            let (mut m, mut v): (Vec<Option<Tensor>>, Vec<Option<Tensor>>) =
                (vec![None; shapes.len()], vec![None; shapes.len()]);
            let mut opt = Optimizer::new(cfg, vars.clone());
            for t in 1..=4 {
                // A loss whose gradient is `w ⊙ θ + c` (a few gradient elements exactly 0).
                let mut loss = Tensor::zeros((), dtype, &Device::Cpu).unwrap();
                let mut expect_g = Vec::new();
                for (var, s) in vars.iter().zip(&shapes) {
                    let w = rand(&mut rng, s, dtype, 2.0);
                    let th = var.as_tensor();
                    let l = ((th.sqr().unwrap() * &w).unwrap() * 0.5).unwrap().sum_all().unwrap();
                    loss = (loss + l).unwrap();
                    expect_g.push(w);
                }
                let grads = loss.backward().unwrap();
                for (i, var) in vars.iter().enumerate() {
                    let g = grads.get(var).unwrap().detach();
                    let (th, mi, vi) = tensor_adam(&theta[i], &g, m[i].as_ref(), v[i].as_ref(), hp, t);
                    theta[i] = th;
                    m[i] = Some(mi);
                    v[i] = Some(vi);
                }
                opt.step(&grads).unwrap();
                for (i, var) in vars.iter().enumerate() {
                    assert_eq!(bits(var.as_tensor()), bits(&theta[i]), "{dtype:?} wd {weight_decay} step {t} θ{i}");
                }
                let (state, steps) = opt.state();
                assert_eq!(steps, t as u64);
                for (name, s) in &state {
                    let (kind, i) = name.split_once('.').unwrap();
                    let i: usize = i.parse().unwrap();
                    let want = if kind == "m" { &m[i] } else { &v[i] };
                    assert_eq!(bits(s), bits(want.as_ref().unwrap()), "{dtype:?} wd {weight_decay} step {t} {name}");
                    assert!(!s.track_op(), "{name} holds a graph");
                }
            }
        }
    }
}

#[test]
fn non_finite_gradient_is_an_error() {
    let w = Var::new(&[1.0f32, 2.0, 3.0], &Device::Cpu).unwrap();
    let mut opt = Optimizer::new(OptimizerConfig::adam(1e-3), vec![w.clone()]);
    let bad = Tensor::new(&[1.0f32, f32::NAN, 0.0], &Device::Cpu).unwrap();
    let loss = (w.as_tensor() * bad).unwrap().sum_all().unwrap();
    let e = opt.step(&loss.backward().unwrap()).expect_err("a NaN gradient");
    assert!(e.to_string().contains("non-finite gradient"), "{e}");
    assert_eq!(w.as_tensor().to_vec1::<f32>().unwrap(), vec![1.0, 2.0, 3.0], "the weights were changed");
}
