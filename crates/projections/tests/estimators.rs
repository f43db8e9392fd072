//! The estimators and their high-probability corrections, on fixed matrices.
//!
//! * the median of `k` Cauchy projections estimates l1 norms with a relative error that shrinks
//!   like `1/sqrt(k)` (and so does the root mean square of normal projections for l2 norms);
//! * with the relative error `ε` of `median_epsilon(k, m, delta)` (resp. `normal_epsilon`) all `m`
//!   estimates lie within `(1 ± ε)` in at least `1 - delta` of many independent draws;
//! * the per-estimate Chernoff bounds dominate the exact binomial / Monte-Carlo failure rates;
//! * the same holds end to end through a projected input set in a dual network.

use candle_core::{DType, Device, Tensor, Var};
use dual_core::{DualNetwork, DualNode, DualOptions, DualSource};
use dual_layers::{InfBall, L2Ball};
use nets::spec::build::{linear, relu};
use nets::{Network, NetworkSpec};
use projections::random::{projection_tensor, Projection};
use projections::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

const ROWS: usize = 64;
const COLS: usize = 200;

/// A fixed matrix `[ROWS, COLS]` with rows of very different sparsity and scale.
fn fixed_matrix() -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(7);
    let mut a = vec![0.0; ROWS * COLS];
    for r in 0..ROWS {
        let density = 0.05 + 0.95 * (r as f64 / ROWS as f64);
        let scale = 10f64.powf(rng.random_range(-2.0..2.0));
        for c in 0..COLS {
            if rng.random_bool(density) {
                a[r * COLS + c] = scale * rng.random_range(-1.0..1.0);
            }
        }
        a[r * COLS + r] = scale; // no zero row
    }
    a
}

fn norms(a: &[f64], p: f64) -> Vec<f64> {
    a.chunks(COLS).map(|row| row.iter().map(|v| v.abs().powf(p)).sum::<f64>().powf(1.0 / p)).collect()
}

/// Propagated projections `P = R Aᵀ` `[1, k, ROWS]` for `k` projections drawn from `seed`.
fn propagate(a: &[f64], kind: Projection, k: usize, seed: u64) -> Tensor {
    let r = projection_tensor(kind, 1, k, &[COLS], seed, DType::F64, &Device::Cpu).unwrap();
    let at = Tensor::from_vec(a.to_vec(), (ROWS, COLS), &Device::Cpu).unwrap().t().unwrap();
    r.squeeze(0).unwrap().matmul(&at).unwrap().unsqueeze(0).unwrap()
}

fn estimates(a: &[f64], kind: Projection, k: usize, seed: u64) -> Vec<f64> {
    let p = propagate(a, kind, k, seed);
    let e = match kind {
        Projection::Cauchy => median_abs_over_columns(&p, 0, k).unwrap(),
        Projection::Normal => mean_square_over_columns(&p, k).unwrap().sqrt().unwrap(),
    };
    e.flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

/// Mean |relative error| over all rows and `seeds` draws.
fn mean_rel_err(a: &[f64], kind: Projection, k: usize, seeds: u64) -> f64 {
    let truth = norms(a, if kind == Projection::Cauchy { 1.0 } else { 2.0 });
    let mut s = 0.0;
    for seed in 0..seeds {
        let e = estimates(a, kind, k, 1000 + seed);
        s += e.iter().zip(&truth).map(|(e, t)| (e / t - 1.0).abs()).sum::<f64>();
    }
    s / (seeds as f64 * ROWS as f64)
}

#[test]
fn median_is_the_lower_middle_element_and_differentiable() {
    // Columns 1..5 of [1, 5, 1]: values (in |.|) 4, -1, 3, 2 -> sorted 1 2 3 4 -> lower middle 2.
    let v = Var::from_vec(vec![100.0f64, 4.0, -1.0, 3.0, 2.0], (1, 5, 1), &Device::Cpu).unwrap();
    let m = median_abs_over_columns(v.as_tensor(), 1, 4).unwrap();
    assert_eq!(m.flatten_all().unwrap().to_vec1::<f64>().unwrap(), vec![2.0]);
    let g = m.sum_all().unwrap().backward().unwrap();
    let g = g.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    assert_eq!(g, vec![0.0, 0.0, 0.0, 0.0, 1.0]);
    // Odd count: the middle one; f32 works the same.
    let v = Tensor::from_vec(vec![-5.0f32, 1.0, 9.0], (1, 3, 1), &Device::Cpu).unwrap();
    assert_eq!(median_abs_over_columns(&v, 0, 3).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![5.0]);
    assert_eq!((median_rank(1), median_rank(2), median_rank(3), median_rank(50)), (0, 0, 1, 24));
}

#[test]
fn linear_and_median_share_one_gradient() {
    // [2, 6, 3]: column 0 the linear part, columns 1..6 the projections; the fused op must give
    // the values and gradient of column 0 plus the median of |columns 1..6| computed apart.
    let mut rng = StdRng::seed_from_u64(77);
    for dtype in [DType::F64, DType::F32] {
        let vals: Vec<f64> = (0..36).map(|_| rng.random_range(-1.0..1.0)).collect();
        let v = Var::from_tensor(&Tensor::from_vec(vals, (2, 6, 3), &Device::Cpu).unwrap().to_dtype(dtype).unwrap())
            .unwrap();
        let (lin, med) = linear_and_median_abs(v.as_tensor(), 1, 5).unwrap();
        let want_lin = v.as_tensor().narrow(1, 0, 1).unwrap().squeeze(1).unwrap();
        let want_med = median_abs_over_columns(v.as_tensor(), 1, 5).unwrap();
        let flat = |t: &Tensor| t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(flat(&lin), flat(&want_lin));
        assert_eq!(flat(&med), flat(&want_med));
        // Weights 2 on the linear part and 3 on the median: every unit's gradient has a 2 in
        // column 0 and ±3 at its median's column (the sign of the selected value), zero elsewhere.
        let loss = ((lin * 2.0).unwrap() + (med * 3.0).unwrap()).unwrap().sum_all().unwrap();
        let g = flat(loss.backward().unwrap().get(v.as_tensor()).unwrap());
        let x = flat(v.as_tensor());
        for b in 0..2 {
            for j in 0..3 {
                let col: Vec<f64> = (0..6).map(|i| g[(b * 6 + i) * 3 + j]).collect();
                assert_eq!(col[0], 2.0, "{dtype:?} example {b} unit {j}: {col:?}");
                let picked: Vec<usize> = (1..6).filter(|&i| col[i] != 0.0).collect();
                assert_eq!(picked.len(), 1, "{dtype:?} {col:?}");
                let i = picked[0];
                let xv = x[(b * 6 + i) * 3 + j];
                assert!((xv.abs() - flat(&want_med)[b * 3 + j]).abs() < 1e-6);
                assert_eq!(col[i], 3.0 * xv.signum());
            }
        }
    }
    assert!(linear_and_median_abs(&Tensor::zeros((1, 4, 2), DType::F32, &Device::Cpu).unwrap(), 0, 3).is_err());
}

#[test]
fn median_error_shrinks_like_one_over_sqrt_k() {
    let a = fixed_matrix();
    let e100 = mean_rel_err(&a, Projection::Cauchy, 100, 12);
    let e400 = mean_rel_err(&a, Projection::Cauchy, 400, 12);
    // Asymptotically the sample median of |Cauchy| has sd π/(2√k): mean |err| ≈ 1.25/√k.
    eprintln!("median: mean |rel err| k=100 {e100:.4}, k=400 {e400:.4}, ratio {:.2}", e100 / e400);
    assert!((0.09..0.16).contains(&e100), "k=100: {e100}");
    assert!((1.6..2.5).contains(&(e100 / e400)), "ratio {}", e100 / e400);
}

#[test]
fn l2_error_shrinks_like_one_over_sqrt_k() {
    let a = fixed_matrix();
    let e100 = mean_rel_err(&a, Projection::Normal, 100, 12);
    let e400 = mean_rel_err(&a, Projection::Normal, 400, 12);
    // sqrt(χ²_k / k) has sd ≈ 1/√(2k): mean |err| ≈ 0.56/√k.
    eprintln!("l2: mean |rel err| k=100 {e100:.4}, k=400 {e400:.4}, ratio {:.2}", e100 / e400);
    assert!((0.04..0.075).contains(&e100), "k=100: {e100}");
    assert!((1.6..2.5).contains(&(e100 / e400)), "ratio {}", e100 / e400);
}

/// Fraction of `runs` draws in which all ROWS estimates lie within (1 ± eps).
fn all_within_rate(a: &[f64], kind: Projection, k: usize, eps: f64, runs: u64) -> f64 {
    let truth = norms(a, if kind == Projection::Cauchy { 1.0 } else { 2.0 });
    let ok = (0..runs)
        .filter(|s| estimates(a, kind, k, 50_000 + s).iter().zip(&truth).all(|(e, t)| (e / t - 1.0).abs() <= eps))
        .count();
    ok as f64 / runs as f64
}

#[test]
fn high_probability_epsilon_holds() {
    let a = fixed_matrix();
    let delta = 0.1;
    for k in [10, 50] {
        let eps = median_epsilon(k, ROWS, delta).unwrap();
        let rate = all_within_rate(&a, Projection::Cauchy, k, eps, 200);
        eprintln!("median k={k} m={ROWS}: eps {eps:.3}, all within in {rate:.3} of the runs");
        assert!(rate >= 1.0 - delta, "k={k}: {rate}");
        let eps = normal_epsilon(k, ROWS, delta).unwrap();
        let rate = all_within_rate(&a, Projection::Normal, k, eps, 200);
        eprintln!("l2 k={k} m={ROWS}: eps {eps:.3}, all within in {rate:.3} of the runs");
        assert!(rate >= 1.0 - delta, "k={k}: {rate}");
    }
}

/// `P(Bin(k, p) ≥ t)`, exactly.
fn binom_tail(k: usize, p: f64, t: usize) -> f64 {
    let mut s = 0.0;
    for i in t..=k {
        let mut c = 0f64; // ln C(k, i)
        for j in 0..i {
            c += ((k - j) as f64).ln() - ((j + 1) as f64).ln();
        }
        s += (c + i as f64 * p.ln() + (k - i) as f64 * (1.0 - p).ln()).exp();
    }
    s
}

#[test]
fn chernoff_bounds_dominate_the_exact_failure_probabilities() {
    for k in [5usize, 10, 50, 200] {
        for eps in [0.05, 0.2, 0.5, 0.9] {
            let (lo, hi) = median_failure(k, eps);
            let m0 = k.div_ceil(2); // rank of the lower middle, 1-based
            let exact_lo = binom_tail(k, cauchy_abs_cdf(1.0 - eps), m0);
            let exact_hi = binom_tail(k, 1.0 - cauchy_abs_cdf(1.0 + eps), k - m0 + 1);
            assert!(exact_lo <= lo * (1.0 + 1e-9), "k={k} eps={eps}: {exact_lo} > {lo}");
            assert!(exact_hi <= hi * (1.0 + 1e-9), "k={k} eps={eps}: {exact_hi} > {hi}");
        }
    }
    // Monte Carlo for the median itself (k = 11, eps = 0.3), and for the l2 estimate.
    let mut rng = StdRng::seed_from_u64(3);
    let c = rand_distr::Cauchy::new(0.0, 1.0).unwrap();
    let (k, eps, n) = (11usize, 0.3, 40_000);
    let (mut below, mut above) = (0, 0);
    for _ in 0..n {
        let mut v: Vec<f64> = (0..k).map(|_| rng.sample::<f64, _>(c).abs()).collect();
        v.sort_by(f64::total_cmp);
        let m = v[median_rank(k)];
        below += (m < 1.0 - eps) as usize;
        above += (m > 1.0 + eps) as usize;
    }
    let (lo, hi) = median_failure(k, eps);
    assert!((below as f64 / n as f64) < lo && (above as f64 / n as f64) < hi, "{below} {above} vs {lo} {hi}");
    let (lo2, hi2) = normal_failure(k, eps);
    let (mut below, mut above) = (0, 0);
    for _ in 0..n {
        let s: f64 = (0..k).map(|_| rng.sample::<f64, _>(rand_distr::StandardNormal).powi(2)).sum();
        let e = (s / k as f64).sqrt();
        below += (e < 1.0 - eps) as usize;
        above += (e > 1.0 + eps) as usize;
    }
    assert!((below as f64 / n as f64) < lo2 && (above as f64 / n as f64) < hi2);
}

#[test]
fn epsilon_functions_behave() {
    let e = |k, m, d| median_epsilon(k, m, d).unwrap();
    assert!(e(50, 100, 0.05) > e(200, 100, 0.05));
    assert!(e(50, 100, 0.05) < e(50, 10_000, 0.05));
    assert!(e(50, 100, 0.05) < e(50, 100, 0.01));
    assert_eq!(e(50, 0, 0.05), 0.0);
    for (k, m) in [(10, 10), (50, 1000), (200, 100_000)] {
        let two = e(k, m, 0.05);
        let one = median_epsilon_lower(k, m, 0.05).unwrap();
        let hoeff = median_epsilon_hoeffding(k, m, 0.05).unwrap();
        assert!(one <= two && two <= hoeff && one < 1.0, "k={k} m={m}: {one} {two} {hoeff}");
        // At the solution the bound is met (up to the bisection tolerance) and is tight.
        let (lo, hi) = median_failure(k, two);
        assert!(m as f64 * (lo + hi) <= 0.05 * (1.0 + 1e-9));
        let (lo, hi) = median_failure(k, two * 0.99);
        assert!(m as f64 * (lo + hi) > 0.05);
        assert!(normal_epsilon_lower(k, m, 0.05).unwrap() <= normal_epsilon(k, m, 0.05).unwrap());
    }
    // Small-eps form of the paper: failure ≈ 2 exp(-2kε²/π²).
    let (lo, hi) = median_failure(1000, 0.01);
    let approx = 2.0 * (-2.0 * 1000.0 * 1e-4 / std::f64::consts::PI.powi(2)).exp();
    assert!(((lo + hi) / approx - 1.0).abs() < 0.01);
    assert!(median_epsilon(0, 10, 0.1).is_err() && median_epsilon(10, 10, 1.0).is_err());
    assert!(inflation_factor(1.0).is_err() && (inflation_factor(0.5).unwrap() - 2.0).abs() < 1e-12);
}

/// Linear(COLS→ROWS) – ReLU – Linear(ROWS→2): the bounds at the ReLU input are `W x + b ∓ ε‖W_j‖₁`
/// (l_inf) or `∓ ε‖W_j‖₂` (l2).
fn one_layer_net() -> Network {
    let spec = NetworkSpec::sequential("one", &[COLS], vec![linear(COLS, ROWS), relu(), linear(ROWS, 2)]);
    Network::init(&spec, 5, DType::F64, &Device::Cpu).unwrap()
}

fn half_widths(dual: &DualNetwork) -> Vec<f64> {
    let b = &dual.bounds()[0];
    ((&b.upper - &b.lower).unwrap() * 0.5).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

fn build(x: &Tensor, nodes: Vec<DualNode>, input: Box<dyn DualSource>) -> DualNetwork {
    DualNetwork::build(x, input, nodes, &DualOptions::default()).unwrap()
}

#[test]
fn projected_input_sets_through_a_network() {
    let net = one_layer_net();
    let mut rng = StdRng::seed_from_u64(1);
    let b = 3;
    let x = Tensor::from_vec(
        (0..b * COLS).map(|_| rng.random_range(0.0..1.0)).collect::<Vec<f64>>(),
        (b, COLS),
        &Device::Cpu,
    )
    .unwrap();
    let exact_inf = half_widths(&build(&x, net.dual_nodes(&x).unwrap(), Box::new(InfBall::new(&x, 0.1).unwrap())));
    let exact_l2 = half_widths(&build(&x, net.dual_nodes(&x).unwrap(), Box::new(L2Ball::new(&x, 0.5).unwrap())));
    let m = b * ROWS;
    let delta = 0.1;
    for (k, runs) in [(25, 60u64), (100, 30)] {
        let eps_inf = median_epsilon(k, m, delta).unwrap();
        let eps_l2 = normal_epsilon(k, m, delta).unwrap();
        let (mut err_inf, mut err_l2, mut ok_inf, mut ok_l2, mut ok_infl) = (0.0, 0.0, 0, 0, 0);
        for s in 0..runs {
            let src = InfBallProj::new(&x, 0.1, k, s).unwrap();
            let got = half_widths(&build(&x, net.dual_nodes(&x).unwrap(), Box::new(src)));
            let rel: Vec<f64> = got.iter().zip(&exact_inf).map(|(g, e)| g / e - 1.0).collect();
            err_inf += rel.iter().map(|r| r.abs()).sum::<f64>() / rel.len() as f64;
            ok_inf += rel.iter().all(|r| r.abs() <= eps_inf) as usize;
            // Inflated with the one-sided epsilon: an over-estimate of every half width.
            let e1 = median_epsilon_lower(k, m, delta).unwrap();
            let src = InfBallProj::new(&x, 0.1, k, s).unwrap().inflate(e1).unwrap();
            let got = half_widths(&build(&x, net.dual_nodes(&x).unwrap(), Box::new(src)));
            ok_infl += got.iter().zip(&exact_inf).all(|(g, e)| g >= e) as usize;
            let src = L2BallProj::new(&x, 0.5, k, s).unwrap();
            let got = half_widths(&build(&x, net.dual_nodes(&x).unwrap(), Box::new(src)));
            let rel: Vec<f64> = got.iter().zip(&exact_l2).map(|(g, e)| g / e - 1.0).collect();
            err_l2 += rel.iter().map(|r| r.abs()).sum::<f64>() / rel.len() as f64;
            ok_l2 += rel.iter().all(|r| r.abs() <= eps_l2) as usize;
        }
        let n = runs as f64;
        eprintln!(
            "k={k}: l_inf mean |rel err| {:.4}, within eps {:.3}: {:.3}; inflated sound {:.3}; l2 mean |rel err| {:.4}, within eps {:.3}: {:.3}",
            err_inf / n, eps_inf, ok_inf as f64 / n, ok_infl as f64 / n, err_l2 / n, eps_l2, ok_l2 as f64 / n
        );
        assert!(err_inf / n < 1.6 / (k as f64).sqrt() && err_l2 / n < 0.8 / (k as f64).sqrt());
        assert!(
            ok_inf as f64 / n >= 1.0 - delta && ok_l2 as f64 / n >= 1.0 - delta && ok_infl as f64 / n >= 1.0 - delta
        );
    }
}

/// An activation that calls itself "ReLU" but is not one (its kind is the default, `Other`).
struct NamedReluButNot;

impl dual_core::DualActivation for NamedReluButNot {
    fn name(&self) -> String {
        "ReLU".into()
    }
    fn relax(&self, lower: &Tensor, upper: &Tensor) -> dual_core::Result<Box<dyn dual_core::Relaxation>> {
        dual_layers::DualReLU.relax(lower, upper)
    }
}

/// The projection policy is chosen per activation by its kind, never by its name: the built-in
/// ReLU is projected, an activation merely named "ReLU" is kept, affine nodes are kept.
#[test]
fn projection_policy_follows_the_activation_kind() {
    use dual_core::ActivationKind;
    let nodes = vec![
        DualNode::Activation(Box::new(dual_layers::DualReLU)),
        DualNode::Activation(Box::new(NamedReluButNot)),
        DualNode::Affine(Box::new(dual_layers::DualIdentity)),
    ];
    let cfg = ProjectionConfig::linf(0.1, 5, 1);
    let out = project_nodes(nodes, &cfg, &Inflation::default()).unwrap();
    let kinds: Vec<Option<ActivationKind>> = out
        .iter()
        .map(|n| match n {
            DualNode::Activation(a) => Some(a.kind()),
            DualNode::Affine(_) => None,
        })
        .collect();
    assert_eq!(kinds, [Some(ActivationKind::ReluProjected), Some(ActivationKind::Other), None]);
    assert!(out[0].name().starts_with("ReLU(proj"), "{}", out[0].name());
}
