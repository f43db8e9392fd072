//! α-CROWN against the triangle-relaxation LP (Clarabel) with the same layer-wise bounds, on tiny
//! MLPs (f64): for fixed layer-wise bounds, every choice of lower slopes gives a lower bound of
//! the LP's optimum (weak duality), and the best slopes per row attain it (Salman et al. 2019),
//! so α-CROWN's bound is never above the LP and, after enough iterations, within 1e-3 of it.

use candle_core::{DType, Device, Tensor};
use dual_core::bounds::{spec_bounds, AlphaOptions, BoundOptions, Method, Net, Spec};
use dual_core::class_difference_c;
use dual_layers::{InfBall, InfBallBounded};
use experiments::lp::{InputSet, LpNetwork, NetworkLp, Relaxation, ReluBounds};
use nets::spec::build::{linear, relu};
use nets::{Network, NetworkSpec};
use rand::{rngs::StdRng, Rng, SeedableRng};

fn flat(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

fn mlp(seed: u64) -> Network {
    let spec = NetworkSpec::sequential("mlp", &[3], vec![linear(3, 8), relu(), linear(8, 8), relu(), linear(8, 3)]);
    Network::init(&spec, seed, DType::F64, &Device::Cpu).unwrap()
}

fn check(seed: u64, bounded: bool) -> (f64, usize) {
    let net = mlp(seed);
    let lpnet = LpNetwork::from_network(&net).unwrap();
    let mut rng = StdRng::seed_from_u64(seed + 40);
    let b = 3;
    let xv: Vec<f64> = (0..b * 3).map(|_| rng.random_range(0.1..0.9)).collect();
    let x = Tensor::from_vec(xv.clone(), (b, 3), &Device::Cpu).unwrap();
    let eps = 0.25;
    let y: Vec<u32> = flat(&net.forward(&x).unwrap().argmax(1).unwrap().to_dtype(DType::F64).unwrap())
        .iter()
        .map(|v| *v as u32)
        .collect();
    let c = class_difference_c(&y, 3, DType::F64, &Device::Cpu).unwrap();
    let spec = Spec::new(c.clone()).unwrap();
    let nodes = net.dual_nodes(&x).unwrap();
    let input: Box<dyn dual_core::DualSource> = if bounded {
        Box::new(InfBallBounded::new(&x, eps, 0.0, 1.0).unwrap())
    } else {
        Box::new(InfBall::new(&x, eps).unwrap())
    };
    let n = Net { nodes: &nodes, x: &x, input: input.as_ref() };
    let opts =
        BoundOptions { alpha: AlphaOptions { iterations: 400, lr: 0.05, early_stop: None }, memory_budget: None };
    let sb = spec_bounds(&n, &spec, Method::AlphaCrown, &opts, None).unwrap();
    let crown = spec_bounds(&n, &spec, Method::Crown, &opts, None).unwrap();
    let ours = flat(&sb.lower);
    let worst_gap = {
        let mut worst = 0.0f64;
        let mut unstable = 0;
        for e in 0..b {
            let mut rb = ReluBounds::new();
            for lb in &sb.layers {
                let (l, u) = (flat(&lb.lower.get(e).unwrap()), flat(&lb.upper.get(e).unwrap()));
                unstable += l.iter().zip(&u).filter(|(l, u)| **l < 0.0 && **u > 0.0).count();
                rb.insert(lb.layer, (l, u));
            }
            let set = InputSet::linf(&xv[e * 3..(e + 1) * 3], eps, bounded.then_some((0.0, 1.0)));
            let lp = NetworkLp::build(&lpnet, &set, &rb, Relaxation::Triangle, None).unwrap();
            let crow = flat(&crown.lower);
            for j in 0..3 {
                let row = flat(&c.get(e).unwrap().get(j).unwrap());
                if row.iter().all(|v| *v == 0.0) {
                    continue;
                }
                let sol = lp.minimize_output(&row).unwrap();
                assert_eq!(sol.status, "Solved");
                let a = ours[e * 3 + j];
                assert!(
                    a <= sol.value + 1e-7 * (1.0 + sol.value.abs()),
                    "α-CROWN {a} above the LP optimum {}",
                    sol.value
                );
                assert!(a >= crow[e * 3 + j] - 1e-9, "α-CROWN {a} below CROWN {}", crow[e * 3 + j]);
                worst = worst.max(sol.value - a);
            }
        }
        (worst, unstable)
    };
    worst_gap
}

#[test]
fn alpha_crown_reaches_the_triangle_lp() {
    let mut unstable = 0;
    for seed in 0..3 {
        for bounded in [false, true] {
            let (gap, u) = check(seed, bounded);
            println!("seed {seed} bounded {bounded}: {u} unstable units, largest LP − α-CROWN gap {gap:.2e}");
            assert!(gap < 1e-3, "seed {seed}, bounded {bounded}: α-CROWN {gap:e} below the LP optimum");
            unstable += u;
        }
    }
    assert!(unstable > 0, "no unstable unit: the test tests nothing");
}
