//! Attacks on hand-made models whose worst cases are known analytically.

use candle_core::{DType, Device, Tensor};
use experiments::attacks::{
    count_errors, cross_entropy, cross_entropy_values, fgsm, pgd, pgd_error_counts, pgd_l2, PgdConfig,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const D: usize = 6;
const B: usize = 4;

/// W: [D, 2] for a two-class linear model logits = x·W.
fn two_class_weights() -> Vec<f64> {
    // Column differences w1 - w0 per input: +, -, +, -, +, - (no zeros).
    vec![
        0.5, -0.2, //
        -0.3, 0.4, //
        0.1, 0.9, //
        0.7, -0.6, //
        -0.2, 0.3, //
        0.8, 0.0, //
    ]
}

fn linear_model(w: Vec<f64>, d: usize, k: usize, dtype: DType) -> impl Fn(&Tensor) -> candle_core::Result<Tensor> {
    let w = Tensor::from_vec(w, (d, k), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
    move |x: &Tensor| x.flatten_from(1)?.matmul(&w)
}

fn random_tensor(shape: &[usize], lo: f64, hi: f64, seed: u64, dtype: DType) -> Tensor {
    let mut rng = StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
}

fn to_vec(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// The worst point of the l_inf box for the two-class linear model: each coordinate moves by
/// eps in the direction of sign(w_other - w_true), then is clipped.
fn analytic_corner(x: &[f64], y: &[u32], w: &[f64], eps: f64, clip: Option<(f64, f64)>) -> Vec<f64> {
    let mut out = x.to_vec();
    for (i, &yi) in y.iter().enumerate() {
        for j in 0..D {
            let (wt, wo) = (w[j * 2 + yi as usize], w[j * 2 + 1 - yi as usize]);
            let v = x[i * D + j] + eps * (wo - wt).signum();
            out[i * D + j] = match clip {
                Some((lo, hi)) => v.clamp(lo, hi),
                None => v,
            };
        }
    }
    out
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max)
}

#[test]
fn pgd_reaches_analytic_corner_of_linear_model() {
    let w = two_class_weights();
    let y = [0u32, 1, 1, 0];
    for dtype in [DType::F32, DType::F64] {
        let model = linear_model(w.clone(), D, 2, dtype);
        let tol = if dtype == DType::F32 { 1e-6 } else { 1e-12 };
        // Unclipped, points well inside [0, 1].
        let x = random_tensor(&[B, D], 0.2, 0.8, 1, dtype);
        let cfg = PgdConfig::new(0.1);
        let x_adv = pgd(&model, &x, &y, &cfg).unwrap();
        assert_eq!(x_adv.dims(), x.dims());
        assert_eq!(x_adv.dtype(), dtype);
        let corner = analytic_corner(&to_vec(&x), &y, &w, 0.1, None);
        assert!(max_abs_diff(&to_vec(&x_adv), &corner) < tol, "{dtype:?}");

        // Clipped to [0, 1] with points at the edges of the range, random start.
        let x = random_tensor(&[B, D], 0.0, 1.0, 2, dtype);
        let cfg =
            PgdConfig { epsilon: 0.3, step_size: 0.05, steps: 40, clip: Some((0.0, 1.0)), random_start: true, seed: 7 };
        let x_adv = pgd(&model, &x, &y, &cfg).unwrap();
        let corner = analytic_corner(&to_vec(&x), &y, &w, 0.3, Some((0.0, 1.0)));
        assert!(max_abs_diff(&to_vec(&x_adv), &corner) < tol, "{dtype:?} clipped");
    }
}

#[test]
fn fgsm_equals_analytic_corner_of_linear_model() {
    let w = two_class_weights();
    let y = [1u32, 0, 0, 1];
    let model = linear_model(w.clone(), D, 2, DType::F32);
    let x = random_tensor(&[B, D], 0.0, 1.0, 3, DType::F32);
    for clip in [None, Some((0.0, 1.0))] {
        let x_adv = fgsm(&model, &x, &y, 0.25, clip).unwrap();
        let corner = analytic_corner(&to_vec(&x), &y, &w, 0.25, clip);
        assert!(max_abs_diff(&to_vec(&x_adv), &corner) < 1e-6, "{clip:?}");
    }
    // 4-D image-shaped input through the same model.
    let x4 = x.reshape((B, 1, 2, 3)).unwrap();
    let x_adv = fgsm(&model, &x4, &y, 0.25, None).unwrap();
    assert_eq!(x_adv.dims(), &[B, 1, 2, 3]);
    let corner = analytic_corner(&to_vec(&x), &y, &w, 0.25, None);
    assert!(max_abs_diff(&to_vec(&x_adv), &corner) < 1e-6);
}

/// A small fixed two-layer ReLU network on [b, 1, 4, 4] inputs with 5 classes.
fn mlp(seed: u64) -> impl Fn(&Tensor) -> candle_core::Result<Tensor> {
    let w1 = random_tensor(&[16, 32], -1.0, 1.0, seed, DType::F32);
    let b1 = random_tensor(&[32], -0.2, 0.2, seed + 1, DType::F32);
    let w2 = random_tensor(&[32, 5], -1.0, 1.0, seed + 2, DType::F32);
    move |x: &Tensor| x.flatten_from(1)?.matmul(&w1)?.broadcast_add(&b1)?.relu()?.matmul(&w2)
}

#[test]
fn pgd_stays_in_ball_and_range_and_increases_loss() {
    let model = mlp(10);
    let n = 32;
    let x = random_tensor(&[n, 1, 4, 4], 0.0, 1.0, 11, DType::F32);
    let y: Vec<u32> = (0..n as u32).map(|i| i % 5).collect();
    let clean = cross_entropy_values(&model(&x).unwrap(), &y).unwrap();
    let xv = to_vec(&x);
    for (random_start, clip) in [(false, None), (true, Some((0.0, 1.0))), (false, Some((0.0, 1.0)))] {
        let cfg = PgdConfig { epsilon: 0.1, step_size: 0.01, steps: 30, clip, random_start, seed: 3 };
        let x_adv = pgd(&model, &x, &y, &cfg).unwrap();
        let av = to_vec(&x_adv);
        assert!(max_abs_diff(&av, &xv) <= 0.1 + 1e-6);
        if let Some((lo, hi)) = clip {
            assert!(av.iter().all(|&v| v >= lo && v <= hi));
        }
        let adv = cross_entropy_values(&model(&x_adv).unwrap(), &y).unwrap();
        for (i, (a, c)) in adv.iter().zip(&clean).enumerate() {
            assert!(a >= &(c - 1e-5), "example {i}: adversarial loss {a} < clean loss {c} ({cfg:?})");
        }
        let mean_adv = cross_entropy(&model(&x_adv).unwrap(), &y).unwrap().to_scalar::<f32>().unwrap() as f64;
        let mean_clean = clean.iter().sum::<f64>() / n as f64;
        assert!(mean_adv > mean_clean + 0.01, "{mean_adv} vs {mean_clean}");
        // The attack never lowers the error count below the clean one on this easy setting.
        let (e_clean, e_adv) = pgd_error_counts(&model, &x, &y, &cfg).unwrap();
        assert_eq!(e_clean, count_errors(&model(&x).unwrap(), &y).unwrap());
        assert!(e_adv >= e_clean, "{e_adv} < {e_clean}");
    }
    // Same seed, same result; the input is left untouched.
    let cfg = PgdConfig { random_start: true, seed: 5, steps: 5, ..PgdConfig::default() };
    let a = to_vec(&pgd(&model, &x, &y, &cfg).unwrap());
    let b = to_vec(&pgd(&model, &x, &y, &cfg).unwrap());
    assert_eq!(a, b);
    assert_eq!(to_vec(&x), xv);
}

#[test]
fn pgd_l2_reaches_analytic_optimum_and_stays_in_ball() {
    let w = two_class_weights();
    let y = [0u32, 1, 0, 1];
    let model = linear_model(w.clone(), D, 2, DType::F64);
    let x = random_tensor(&[B, D], 0.3, 0.7, 4, DType::F64);
    let eps = 0.2;
    for random_start in [false, true] {
        let cfg = PgdConfig {
            epsilon: eps,
            step_size: 0.01,
            // On the sphere the off-optimum component shrinks by about eps / (eps + step) per
            // step once the ball's boundary is reached, so a random start needs a few hundred.
            steps: 300,
            clip: None,
            random_start,
            seed: 9,
        };
        let x_adv = to_vec(&pgd_l2(&model, &x, &y, &cfg).unwrap());
        let xv = to_vec(&x);
        // Optimum: x + eps * (w_other - w_true) / ||w_other - w_true||_2.
        for (i, &yi) in y.iter().enumerate() {
            let dir: Vec<f64> = (0..D).map(|j| w[j * 2 + 1 - yi as usize] - w[j * 2 + yi as usize]).collect();
            let norm = dir.iter().map(|v| v * v).sum::<f64>().sqrt();
            let delta: Vec<f64> = (0..D).map(|j| x_adv[i * D + j] - xv[i * D + j]).collect();
            let dnorm = delta.iter().map(|v| v * v).sum::<f64>().sqrt();
            assert!(dnorm <= eps + 1e-9, "l2 norm {dnorm}");
            for j in 0..D {
                let expected = eps * dir[j] / norm;
                assert!(
                    (delta[j] - expected).abs() < 1e-5,
                    "ex {i} coord {j}: {} vs {expected} (random_start {random_start})",
                    delta[j]
                );
            }
        }
    }
    // With clipping to [0, 1]: inside the ball and the range.
    let model = mlp(20);
    let x = random_tensor(&[8, 1, 4, 4], 0.0, 1.0, 21, DType::F32);
    let y: Vec<u32> = (0..8).map(|i| i % 5).collect();
    let cfg =
        PgdConfig { epsilon: 0.5, step_size: 0.05, steps: 20, clip: Some((0.0, 1.0)), random_start: true, seed: 1 };
    let x_adv = pgd_l2(&model, &x, &y, &cfg).unwrap();
    let (av, xv) = (to_vec(&x_adv), to_vec(&x));
    assert!(av.iter().all(|&v| (0.0..=1.0).contains(&v)));
    for i in 0..8 {
        let n2: f64 = (0..16).map(|j| (av[i * 16 + j] - xv[i * 16 + j]).powi(2)).sum::<f64>().sqrt();
        assert!(n2 <= 0.5 + 1e-5, "example {i}: l2 distance {n2}");
    }
    let clean = cross_entropy_values(&model(&x).unwrap(), &y).unwrap();
    let adv = cross_entropy_values(&model(&x_adv).unwrap(), &y).unwrap();
    assert!(adv.iter().sum::<f64>() > clean.iter().sum::<f64>());
}

#[test]
fn count_errors_and_cross_entropy_by_hand() {
    let logits =
        Tensor::new(&[[2.0f32, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 1.0, 5.0], [0.5, 0.0, 0.1]], &Device::Cpu).unwrap();
    assert_eq!(count_errors(&logits, &[0, 1, 2, 0]).unwrap(), 0);
    assert_eq!(count_errors(&logits, &[1, 1, 0, 2]).unwrap(), 3);
    assert!(count_errors(&logits, &[0, 1]).is_err());

    let y = [0u32, 2, 2, 1];
    let ours = cross_entropy_values(&logits, &y).unwrap();
    let rows = to_vec(&logits);
    for (i, &yi) in y.iter().enumerate() {
        let r = &rows[i * 3..i * 3 + 3];
        let lse = r.iter().map(|v| v.exp()).sum::<f64>().ln();
        assert!((ours[i] - (lse - r[yi as usize])).abs() < 1e-5);
    }
    let mean = cross_entropy(&logits, &y).unwrap().to_scalar::<f32>().unwrap() as f64;
    let candle_ce = candle_nn::loss::cross_entropy(&logits, &Tensor::new(&y, &Device::Cpu).unwrap())
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
    assert!((mean - candle_ce).abs() < 1e-5);
    assert!((mean - ours.iter().sum::<f64>() / 4.0).abs() < 1e-5);
    // Large logits stay finite.
    let big = Tensor::new(&[[1000.0f32, -1000.0]], &Device::Cpu).unwrap();
    let v = cross_entropy_values(&big, &[1]).unwrap();
    assert!((v[0] - 2000.0).abs() < 1e-2);
}

#[test]
fn mismatched_labels_are_errors() {
    let model = linear_model(two_class_weights(), D, 2, DType::F32);
    let x = random_tensor(&[B, D], 0.0, 1.0, 5, DType::F32);
    assert!(fgsm(&model, &x, &[0, 1], 0.1, None).is_err());
    assert!(pgd(&model, &x, &[0, 1, 0], &PgdConfig::default()).is_err());
    assert!(pgd_l2(&model, &x, &[0], &PgdConfig::default()).is_err());
    // A model that ignores its input: zero gradient, the attack does not move.
    let constant = |x: &Tensor| Tensor::zeros((x.dim(0)?, 3), DType::F32, x.device());
    let x_adv = pgd(constant, &x, &[0, 1, 2, 0], &PgdConfig::default()).unwrap();
    assert_eq!(to_vec(&x_adv), to_vec(&x));
}
