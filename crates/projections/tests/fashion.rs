//! The projected bounds on the paper's Fashion-MNIST model (reference weights, eps 0.1):
//! convergence to the exact robust bounds as k grows, exact equality when k is at least every
//! width, reproducible seeds, the ball ∩ [0, 1], the l2 ball, memory budgets, and gradients.

#[path = "../../nets/tests/common/mod.rs"]
mod common;
use candle_core::{DType, Tensor};
use common::*;
use dual_core::{robust_bounds, robust_loss, DualOptions};
use dual_layers::{InfBall, InfBallBounded, L2Ball};
use nets::Network;
use projections::*;

/// Widest layer of the model (16·14·14 units after the first convolution).
const WIDEST: usize = 3136;

/// The model and the first `n` reference images; the test fails when the shared data is missing
/// (`None` only under `CONVEX_SKIP_SHARED=1`).
fn data(n: usize, dtype: DType) -> Option<(Network, Tensor, Vec<u32>)> {
    let dir = fashion_ref()?;
    let net = fashion_model(&dir, dtype);
    let x = npy(&dir, "fashion_X20.npy").to_dtype(dtype).unwrap().narrow(0, 0, n).unwrap();
    let y = labels(&dir, "fashion_y20.npy")[..n].to_vec();
    Some((net, x, y))
}

fn exact_f(net: &Network, x: &Tensor, y: &[u32], bounded: bool) -> Tensor {
    let src: Box<dyn dual_core::DualSource> = if bounded {
        Box::new(InfBallBounded::new(x, 0.1, 0.0, 1.0).unwrap())
    } else {
        Box::new(InfBall::new(x, 0.1).unwrap())
    };
    robust_bounds(&net.dual(x, src, &DualOptions::default()).unwrap(), y).unwrap()
}

fn projected_f(net: &Network, x: &Tensor, y: &[u32], cfg: &ProjectionConfig) -> Tensor {
    let d = projected_dual(x, net.dual_nodes(x).unwrap(), cfg, &DualOptions::default()).unwrap();
    robust_bounds(&d, y).unwrap()
}

/// Mean |f_proj - f_exact| over the off-label entries.
fn gap(f: &Tensor, exact: &Tensor) -> f64 {
    mean_abs_diff(f, exact)
}

#[test]
fn converges_to_the_exact_bound_as_k_grows() {
    let Some((net, x, y)) = data(8, DType::F32) else { return };
    for bounded in [false, true] {
        let exact = exact_f(&net, &x, &y, bounded);
        let scale = flat(&exact).iter().map(|v| v.abs()).sum::<f64>() / exact.elem_count() as f64;
        let mut gaps = Vec::new();
        for k in [16, 64, 256] {
            // Averaged over two seeds.
            let g = (0..2)
                .map(|s| {
                    let mut cfg = ProjectionConfig::linf(0.1, k, s);
                    if bounded {
                        cfg = cfg.bounded(0.0, 1.0);
                    }
                    gap(&projected_f(&net, &x, &y, &cfg), &exact)
                })
                .sum::<f64>()
                / 2.0;
            gaps.push(g);
        }
        eprintln!("bounded {bounded}: mean |f - f_exact| at k = 16, 64, 256: {gaps:.4?} (mean |f_exact| {scale:.3})");
        // Roughly 1/sqrt(k): a factor of about 2 per 4x more projections.
        assert!(gaps[0] > 1.4 * gaps[1] && gaps[1] > 1.4 * gaps[2], "{gaps:?}");
        assert!(gaps[2] < 0.05 * scale, "{gaps:?} vs {scale}");
    }
}

#[test]
fn k_at_least_every_width_is_the_exact_bound() {
    let Some((net, x, y)) = data(4, DType::F32) else { return };
    for bounded in [false, true] {
        let exact = exact_f(&net, &x, &y, bounded);
        let mut cfg = ProjectionConfig::linf(0.1, WIDEST, 3);
        if bounded {
            cfg = cfg.bounded(0.0, 1.0);
        }
        assert_eq!(max_abs_diff(&projected_f(&net, &x, &y, &cfg), &exact), 0.0);
        // Also with the batch-total rule, since these 4 images have < 3136 unstable units per layer.
        assert_eq!(max_abs_diff(&projected_f(&net, &x, &y, &cfg.clone().rule(ReluRule::BatchTotal)), &exact), 0.0);
    }
    // l2: the input (784 features) is exact for k ≥ 784; ReLU layers for k ≥ their unstable counts.
    let l2 =
        robust_bounds(&net.dual(&x, Box::new(L2Ball::new(&x, 1.0).unwrap()), &DualOptions::default()).unwrap(), &y)
            .unwrap();
    assert_eq!(max_abs_diff(&projected_f(&net, &x, &y, &ProjectionConfig::l2(1.0, WIDEST, 3)), &l2), 0.0);
}

#[test]
fn seeds_reproduce_and_differ() {
    let Some((net, x, y)) = data(4, DType::F32) else { return };
    for cfg in [
        ProjectionConfig::linf(0.1, 20, 11),
        ProjectionConfig::linf(0.1, 20, 11).bounded(0.0, 1.0),
        ProjectionConfig::l2(1.0, 20, 11),
    ] {
        let a = projected_f(&net, &x, &y, &cfg);
        let b = projected_f(&net, &x, &y, &cfg);
        assert_eq!(max_abs_diff(&a, &b), 0.0, "same seed, {:?}", cfg.norm);
        let mut other = cfg.clone();
        other.seed = 12;
        assert!(max_abs_diff(&a, &projected_f(&net, &x, &y, &other)) > 1e-3, "another seed, {:?}", cfg.norm);
        // Every layer is projected: unstable counts are reported for all three ReLUs.
        let d = projected_dual(&x, net.dual_nodes(&x).unwrap(), &cfg, &DualOptions::default()).unwrap();
        assert_eq!(d.unstable_counts().len(), 3);
    }
}

#[test]
fn l2_projection_tracks_the_exact_l2_bound() {
    let Some((net, x, y)) = data(8, DType::F32) else { return };
    let exact =
        robust_bounds(&net.dual(&x, Box::new(L2Ball::new(&x, 1.0).unwrap()), &DualOptions::default()).unwrap(), &y)
            .unwrap();
    let scale = flat(&exact).iter().map(|v| v.abs()).sum::<f64>() / exact.elem_count() as f64;
    let g64 = gap(&projected_f(&net, &x, &y, &ProjectionConfig::l2(1.0, 64, 0)), &exact);
    let g256 = gap(&projected_f(&net, &x, &y, &ProjectionConfig::l2(1.0, 256, 0)), &exact);
    eprintln!("l2: mean |f - f_exact| at k = 64, 256: {g64:.4} {g256:.4} (mean |f_exact| {scale:.3})");
    assert!(g256 < g64 && g256 < 0.05 * scale);
}

#[test]
fn memory_budget() {
    let Some((net, x, y)) = data(4, DType::F32) else { return };
    let cfg = ProjectionConfig::linf(0.1, 20, 5);
    let full = projected_f(&net, &x, &y, &cfg);
    // A budget that holds each source's columns at once gives the same numbers.
    let big = DualOptions { memory_budget: Some(64 << 20), ..Default::default() };
    let d = projected_dual(&x, net.dual_nodes(&x).unwrap(), &cfg, &big).unwrap();
    assert!(max_abs_diff(&robust_bounds(&d, &y).unwrap(), &full) < 1e-4);
    // One too small to hold them is refused with a message (a median needs all its columns).
    let small = DualOptions { memory_budget: Some(1 << 20), ..Default::default() };
    let err = projected_dual(&x, net.dual_nodes(&x).unwrap(), &cfg, &small).err().expect("refused");
    assert!(err.to_string().contains("propagated together"), "{err}");
    // The l2 input sums partial means of squares, so it works in chunks.
    let l2 = L2BallProj::new(&x, 1.0, 64, 5).unwrap();
    let a = robust_bounds(&net.dual(&x, Box::new(l2), &DualOptions::default()).unwrap(), &y).unwrap();
    let l2 = L2BallProj::new(&x, 1.0, 64, 5).unwrap();
    let b = robust_bounds(&net.dual(&x, Box::new(l2), &small).unwrap(), &y).unwrap();
    assert!(max_abs_diff(&a, &b) < 1e-4);
}

#[test]
fn robust_loss_gradients_flow() {
    let Some((net, x, y)) = data(6, DType::F32) else { return };
    for cfg in [
        ProjectionConfig::linf(0.1, 10, 2),
        ProjectionConfig::linf(0.1, 10, 2).bounded(0.0, 1.0),
        ProjectionConfig::l2(1.0, 10, 2),
    ] {
        let d = projected_dual(&x, net.dual_nodes(&x).unwrap(), &cfg, &DualOptions::default()).unwrap();
        // Every ReLU layer is projected with k = 10.
        let counts = d.unstable_counts();
        assert!(counts.iter().take(2).all(|c| c.iter().max().unwrap() > &10));
        let rl = robust_loss(&d, &y).unwrap();
        let loss = rl.loss.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
        assert!(loss.is_finite() && loss > 0.0);
        let grads = rl.loss.backward().unwrap();
        for (name, var) in net.params() {
            let g = flat(grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}")));
            assert!(g.iter().all(|v| v.is_finite()), "{name}: non-finite gradient");
            assert!(g.iter().any(|v| *v != 0.0), "{name}: zero gradient ({:?})", cfg.norm);
        }
    }
}

#[test]
fn estimate_counts_of_the_model() {
    let Some((net, x, _)) = data(4, DType::F32) else { return };
    let nodes = net.dual_nodes(&x).unwrap();
    // ReLU inputs: 3136, 1568 and 100 units. Every projected source (input, ReLU layers wider
    // than k) estimates one norm per unit of every later ReLU input, per example.
    let count = |k| count_estimates(&x, &nodes, &ProjectionConfig::linf(0.1, k, 0)).unwrap();
    assert_eq!(count(50).median, 4 * (3136 + 1568 * 2 + 100 * 3));
    assert_eq!(count(200).median, 4 * (3136 + 1568 * 2 + 100 * 3)); // the last ReLU's source is never pushed
    assert_eq!(count(2000).median, 4 * (1568 + 100));
    assert_eq!(count(1000).median, 4 * (1568 + 100 * 2));
    assert_eq!(count(WIDEST).total(), 0);
    let l2 = count_estimates(&x, &nodes, &ProjectionConfig::l2(1.0, 50, 0)).unwrap();
    assert_eq!((l2.normal, l2.median), (4 * (3136 + 1568 + 100), 4 * (1568 + 100 * 2)));
    let eps = epsilon_from_model(&x, &nodes, &ProjectionConfig::linf(0.1, 50, 0), 0.05).unwrap();
    assert!((eps - median_epsilon(50, count(50).total(), 0.05).unwrap()).abs() < 1e-12);
}
