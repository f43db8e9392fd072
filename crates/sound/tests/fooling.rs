//! Networks built to fool a verifier that trusts its floating point (after Jia & Rinard 2021,
//! "Exploiting verified neural networks via floating point numerical error"): each one is
//! certified by the plain f32 path, the certificate is false for the real-valued network (a
//! witness inside the input set, checked in exact rational arithmetic), and the sound check
//! refuses it. Each test fails if the sound path is weakened (the outward rounding of the input
//! set, the rounding charges of the layer-wise bounds, the slopes rounded up).

mod common;

use candle_core::{DType, Device, Tensor};
use common::{frac, pow2, q, Mlp, Q};
use num_traits::Signed;
use sound::{DataRounding, InputBox, SoundNetwork, SoundOptions};

fn sound_certifies(mlp: &Mlp, x: &[f64], eps: f64, y: u32, clip: Option<(f64, f64)>, opts: SoundOptions) -> bool {
    let net = mlp.network(DType::F32);
    let sn = SoundNetwork::new(&net, opts).unwrap();
    let xt = Tensor::from_vec(x.to_vec(), (1, x.len()), &Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    let b = InputBox::linf(&xt, eps, clip, DataRounding::Exact).unwrap();
    sn.certify(&b, &[y]).unwrap()[0]
}

/// `z_0 − z_1` of the real network at `x`, exactly.
fn exact_margin(mlp: &Mlp, x: &[Q]) -> Q {
    let z = mlp.exact(x);
    z[0].clone() - z[1].clone()
}

/// Construction 1. The ball's edge: `eps = 2⁻²⁴ + 2⁻⁵⁰` is `2⁻²⁴` in f32, so around `x = 1 − 2⁻²⁴` the f32
/// ball ends exactly at 1 and the unit `relu(x − 1)` looks dead. In the real ball it reaches
/// `2⁻⁵⁰`, and a weight of `−2⁶⁰` turns that into a flipped decision.
#[test]
fn ball_edge_rounded_inward_by_f32_epsilon() {
    let mlp = Mlp { layers: vec![(vec![vec![1.0]], vec![-1.0]), (vec![vec![-pow2(60)], vec![0.0]], vec![1.0, 0.0])] };
    let x0 = 1.0 - pow2(-24);
    let eps = pow2(-24) + pow2(-50);
    assert!(common::plain_certifies(&mlp.network(DType::F32), &[x0], eps, 0, false, DType::F32), "precondition");
    // Witness: x0 + eps, inside the real ball.
    let m = exact_margin(&mlp, &[q(x0) + q(eps)]);
    assert!(m.is_negative(), "the real network misclassifies at the ball's edge: {m}");
    assert!(!sound_certifies(&mlp, &[x0], eps, 0, None, SoundOptions::default()));
    assert!(!sound_certifies(&mlp, &[x0], eps, 0, None, SoundOptions { deployed_f32: true }));
}

/// Construction 2. The clipped ball's lower edge: with `x = 1`, `eps = 0.7` (f32: 0.699999988…), the f32
/// box `[fl(1 − 0.7f), 1]` starts at 0.30000001192…, above the real 0.3; a unit
/// `relu(0.30000001192… − x)` looks dead in f32 and is positive at the real edge.
#[test]
fn clipped_ball_lower_edge_rounded_inward() {
    let t = (1.0f32 - 0.7f32) as f64;
    assert!(t > 0.3, "f32 rounds the edge inward here");
    let mlp = Mlp { layers: vec![(vec![vec![-1.0]], vec![t]), (vec![vec![-pow2(40)], vec![0.0]], vec![1.0, 0.0])] };
    assert!(common::plain_certifies(&mlp.network(DType::F32), &[1.0], 0.7, 0, true, DType::F32), "precondition");
    // Witness: x = 3/10, the real ball's lower edge (1 − 7/10), inside [0, 1].
    let m = exact_margin(&mlp, &[frac(3, 10)]);
    assert!(m.is_negative(), "the real network misclassifies at 3/10: {m}");
    assert!(!sound_certifies(&mlp, &[1.0], 0.7, 0, Some((0.0, 1.0)), SoundOptions::default()));
}

/// Construction 3. Cancellation of large terms: `h₁ = relu(x + 2²⁴)` and `h₂ = relu(2²⁴)` cancel in the next
/// layer, `relu(h₁ − h₂ − 1/4)`. At `x = 3/4` f32 computes `x + 2²⁴ = 2²⁴`, so the centre of the
/// second layer's bounds is `−1/4` instead of `1/2` and, with `eps = 1/4`, the unit looks dead
/// while it is in fact always active; a weight of `−8` on it flips the decision everywhere.
#[test]
fn cancellation_of_large_terms() {
    let big = pow2(24);
    let mlp = Mlp {
        layers: vec![
            (vec![vec![1.0], vec![0.0]], vec![big, big]),
            (vec![vec![1.0, -1.0]], vec![-0.25]),
            (vec![vec![-8.0], vec![0.0]], vec![1.0, 0.0]),
        ],
    };
    assert!(common::plain_certifies(&mlp.network(DType::F32), &[0.75], 0.25, 0, false, DType::F32), "precondition");
    let m = exact_margin(&mlp, &[frac(3, 4)]);
    assert!(m.is_negative(), "the real network misclassifies even at the centre: {m}");
    assert!(!sound_certifies(&mlp, &[0.75], 0.25, 0, None, SoundOptions::default()));
}

/// Construction 4. The deployed network: `z₀ − z₁ = relu(x + 2²⁴) − 2²⁴ − 1/2` is `1/4` for the real network
/// at `x = 3/4` but `−1/2` when the network runs in f32 (`3/4 + 2²⁴` rounds to `2²⁴`). The real-valued check certifies the
/// point (correctly); the deployed-f32 option refuses it, and f32 evaluation indeed
/// misclassifies.
#[test]
fn deployed_f32_rounding_flips_a_really_robust_point() {
    let big = pow2(24);
    let mlp = Mlp { layers: vec![(vec![vec![1.0]], vec![big]), (vec![vec![1.0], vec![0.0]], vec![-big, 0.5])] };
    let m = exact_margin(&mlp, &[frac(3, 4)]);
    assert_eq!(m, frac(1, 4));
    let x = Tensor::from_vec(vec![0.75f32], (1, 1), &Device::Cpu).unwrap();
    let z = mlp.network(DType::F32).forward(&x).unwrap().to_vec2::<f32>().unwrap();
    assert!(z[0][0] < z[0][1], "f32 evaluation misclassifies: {:?}", z[0]);
    assert!(sound_certifies(&mlp, &[0.75], 0.0, 0, None, SoundOptions::default()));
    assert!(!sound_certifies(&mlp, &[0.75], 0.0, 0, None, SoundOptions { deployed_f32: true }));
}
