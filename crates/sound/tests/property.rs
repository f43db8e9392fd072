//! Randomised property: on many small random networks and boxes, the sound lower bound of
//! `cᵀ f(x)` is never above the true minimum over the box's vertices and an exhaustive grid,
//! computed in exact rational arithmetic (a minimum over a finite subset of the box is above
//! the true minimum, so the bound must be below it). Weights span many binades and some boxes
//! are points or nearly so, where an unchecked floating-point bound does exceed the truth —
//! the test counts that too, to show it has teeth.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{pow2, q, Mlp, Q};
use dual_core::DualOptions;
use dual_layers::{Epsilon, InfBall};
use rand::{rngs::StdRng, Rng, SeedableRng};
use sound::{InputBox, SoundNetwork, SoundOptions};

fn random_mlp(rng: &mut StdRng, inputs: usize) -> Mlp {
    let depth = rng.random_range(1..=3);
    let mut widths = vec![inputs];
    for _ in 0..depth - 1 {
        widths.push(rng.random_range(2..=4));
    }
    widths.push(rng.random_range(2..=3));
    let spread = rng.random_range(0..=20);
    let w = |rng: &mut StdRng| -> f64 {
        let v: f64 = rng.random_range(-1.0..1.0);
        // Round to an f32 value so the network is the same in f32 and f64.
        (v * pow2(rng.random_range(-spread..=spread))) as f32 as f64
    };
    let layers = widths
        .windows(2)
        .map(|p| {
            let wm: Vec<Vec<f64>> = (0..p[1]).map(|_| (0..p[0]).map(|_| w(rng)).collect()).collect();
            let b: Vec<f64> = (0..p[1]).map(|_| w(rng)).collect();
            (wm, b)
        })
        .collect();
    Mlp { layers }
}

/// Every point of the grid with `g` steps per side (vertices included), exactly.
fn grid(lo: &[f64], hi: &[f64], g: i64) -> Vec<Vec<Q>> {
    let mut pts: Vec<Vec<Q>> = vec![vec![]];
    for (l, h) in lo.iter().zip(hi) {
        let (l, h) = (q(*l), q(*h));
        let mut next = Vec::new();
        for p in &pts {
            for k in 0..=g {
                let mut p = p.clone();
                p.push(l.clone() + (h.clone() - l.clone()) * common::frac(k, g));
                next.push(p);
            }
        }
        pts = next;
    }
    pts
}

#[test]
fn sound_bound_never_above_the_exact_minimum() {
    let mut rng = StdRng::seed_from_u64(20);
    let (mut cases, mut tight, mut plain_above) = (0, 0, 0);
    for case in 0..300 {
        let inputs = rng.random_range(1..=3);
        let mlp = random_mlp(&mut rng, inputs);
        let outputs = mlp.layers.last().unwrap().1.len();
        let centre: Vec<f64> = (0..inputs).map(|_| (rng.random_range(-2.0..2.0) as f32) as f64).collect();
        let width = [0.0, pow2(-40), pow2(-20), 0.01, 0.5][case % 5];
        let lo: Vec<f64> = centre.iter().map(|c| c - width).collect();
        let hi: Vec<f64> = centre.iter().map(|c| c + width).collect();
        let c: Vec<f64> = (0..outputs).map(|_| rng.random_range(-1.0..1.0)).collect();

        let net = mlp.network(DType::F64);
        let sn = SoundNetwork::new(&net, SoundOptions::default()).unwrap();
        let t = |v: &[f64]| Tensor::from_vec(v.to_vec(), (1, v.len()), &Device::Cpu).unwrap();
        let bx = InputBox::new(&t(&lo), &t(&hi)).unwrap();
        let ct = Tensor::from_vec(c.clone(), (1, 1, outputs), &Device::Cpu).unwrap();
        let bound = sn.lower_bounds(&bx, &ct).unwrap().to_vec2::<f64>().unwrap()[0][0];
        assert!(bound.is_finite(), "case {case}: bound {bound}");

        let g = if inputs == 3 { 4 } else { 8 };
        let exact_min = grid(&lo, &hi, if width == 0.0 { 1 } else { g })
            .iter()
            .map(|x| mlp.exact(x).iter().zip(&c).fold(q(0.0), |acc, (z, ci)| acc + q(*ci) * z))
            .min()
            .unwrap();
        assert!(
            q(bound) <= exact_min,
            "case {case}: sound bound {bound} above the exact minimum {exact_min} ({mlp:?})"
        );
        cases += 1;

        // The same dual without the checks, in f64: for point boxes it should sit on the exact
        // value, on either side of it.
        let x = t(&centre);
        let eps = Tensor::from_vec(vec![width; inputs], (1, inputs), &Device::Cpu).unwrap();
        let dual =
            net.dual(&x, Box::new(InfBall::new(&x, Epsilon::Tensor(eps)).unwrap()), &DualOptions::default()).unwrap();
        let plain = dual.objective(&ct).unwrap().to_vec2::<f64>().unwrap()[0][0];
        if q(plain) > exact_min {
            plain_above += 1;
        }
        if width == 0.0 && (bound - plain).abs() <= 1e-6 * (1.0 + plain.abs()) {
            tight += 1;
        }
    }
    println!(
        "{cases} cases; unchecked f64 dual above the exact minimum in {plain_above}; point boxes tight in {tight}"
    );
    assert!(plain_above > 0, "the cases should include some where unchecked rounding overshoots");
    assert!(tight >= 40, "the check should lose nothing visible on most point boxes ({tight} of 60)");
}
