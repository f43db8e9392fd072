//! High-probability error bounds for the projected estimates (derivation in docs/PROJECTIONS.md).
//!
//! **Median of `k` Cauchy projections.** For a row `a` with `s = ‖a‖₁`, the `k` values
//! `X_i = |aᵀ r_i|` are i.i.d. `s·|C|` with `C` standard Cauchy, `P(|C| ≤ t) = (2/π)·atan t`.
//! The estimate `M` is the `⌈k/2⌉`-th smallest `X_i` (the lower middle for even `k`).
//! * `M < (1-ε)s` needs at least `⌈k/2⌉ ≥ k/2` of the `X_i` below `(1-ε)s`: a binomial count with
//!   success probability `p₋ = (2/π)·atan(1-ε) < 1/2`;
//! * `M > (1+ε)s` needs at least `k - ⌈k/2⌉ + 1 ≥ k/2` of them above `(1+ε)s`: probability
//!   `p₊ = 1 - (2/π)·atan(1+ε) < 1/2`.
//!
//! The Chernoff bound in relative-entropy form, `P(Bin(k, p) ≥ k/2) ≤ exp(-k·KL(½‖p)) =
//! (4p(1-p))^{k/2}`, bounds each side; Hoeffding's weaker `exp(-2k(½-p)²)` gives the paper's form
//! `2·exp(-c k ε²)` with `c ≈ 2/π²` for small `ε`. A union bound over `m` estimates and solving
//! `m·(failure) ≤ δ` for `ε` (by bisection: the failure bound decreases in `ε`) gives the `ε`
//! below.
//!
//! **Root mean square of `k` normal projections.** `k·est²/‖a‖₂² ~ χ²_k`, and the Chernoff bound
//! `P(χ²_k ≤ ak) ≤ (a·e^{1-a})^{k/2}` (`a < 1`), `P(χ²_k ≥ ak) ≤ (a·e^{1-a})^{k/2}` (`a > 1`)
//! with `a = (1 ∓ ε)²` bounds the two sides.

use dual_core::{DualError, Result};
use std::f64::consts::PI;

fn check(k: usize, delta: f64) -> Result<()> {
    if k == 0 {
        return Err(DualError::invalid("the number of projections k must be positive"));
    }
    if !(delta > 0.0 && delta < 1.0) {
        return Err(DualError::invalid(format!("the failure probability delta must lie in (0, 1), got {delta}")));
    }
    Ok(())
}

/// `P(|C| ≤ t)` for a standard Cauchy `C` and `t ≥ 0`.
pub fn cauchy_abs_cdf(t: f64) -> f64 {
    if t <= 0.0 {
        0.0
    } else {
        2.0 / PI * t.atan()
    }
}

/// `(4p(1-p))^{k/2}`: the Chernoff bound on `P(Bin(k, p) ≥ k/2)` for `p ≤ 1/2`.
fn chernoff_half(k: usize, p: f64) -> f64 {
    if p <= 0.0 {
        return 0.0;
    }
    let q = (4.0 * p * (1.0 - p)).min(1.0);
    (0.5 * k as f64 * q.ln()).exp()
}

/// Bounds on the probability that the median of `k` Cauchy projections falls below `(1-ε)` and
/// above `(1+ε)` times the true l1 norm: `(lower, upper)`.
pub fn median_failure(k: usize, eps: f64) -> (f64, f64) {
    let p_lo = cauchy_abs_cdf(1.0 - eps);
    let p_hi = 1.0 - cauchy_abs_cdf(1.0 + eps);
    (chernoff_half(k, p_lo), chernoff_half(k, p_hi))
}

/// `(a e^{1-a})^{k/2}`: the Chernoff bound on `P(χ²_k ≤ ak)` (`a < 1`) or `P(χ²_k ≥ ak)` (`a > 1`).
fn chi2_chernoff(k: usize, a: f64) -> f64 {
    if a <= 0.0 {
        return 0.0;
    }
    (0.5 * k as f64 * (a.ln() + 1.0 - a)).exp().min(1.0)
}

/// Bounds on the probability that the root-mean-square estimate of `k` normal projections falls
/// below `(1-ε)` and above `(1+ε)` times the true l2 norm: `(lower, upper)`.
pub fn normal_failure(k: usize, eps: f64) -> (f64, f64) {
    let lower = if eps >= 1.0 { 0.0 } else { chi2_chernoff(k, (1.0 - eps).powi(2)) };
    (lower, chi2_chernoff(k, (1.0 + eps).powi(2)))
}

/// Smallest `ε` (up to 1e-12, rounded up) with `m · fail(ε) ≤ δ`, for a decreasing `fail`.
fn solve(m: usize, delta: f64, fail: impl Fn(f64) -> f64) -> f64 {
    if m == 0 {
        return 0.0;
    }
    let m = m as f64;
    let ok = |e: f64| m * fail(e) <= delta;
    let mut hi = 1.0;
    while !ok(hi) {
        hi *= 2.0;
        if hi > 1e300 {
            return f64::INFINITY;
        }
    }
    let mut lo = 0.0;
    while hi - lo > 1e-12 * hi.max(1.0) {
        let mid = 0.5 * (lo + hi);
        if ok(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

/// The relative error `ε` such that all `m` median estimates (each from `k` Cauchy projections)
/// lie within `(1 ± ε)` of their true l1 norms with probability at least `1 - delta` (Chernoff
/// bound per side, union bound over both sides and the `m` estimates).
pub fn median_epsilon(k: usize, m: usize, delta: f64) -> Result<f64> {
    check(k, delta)?;
    Ok(solve(m, delta, |e| {
        let (a, b) = median_failure(k, e);
        a + b
    }))
}

/// One-sided version of [`median_epsilon`]: with probability at least `1 - delta` no estimate
/// falls below `(1 - ε)` times its true norm, so `median / (1 - ε)` over-estimates every norm.
/// This is the side soundness needs; always `< 1`.
pub fn median_epsilon_lower(k: usize, m: usize, delta: f64) -> Result<f64> {
    check(k, delta)?;
    Ok(solve(m, delta, |e| median_failure(k, e).0).min(1.0))
}

/// The paper's closed form from Hoeffding's inequality (looser than [`median_epsilon`]):
/// `2m·exp(-2k g(ε)²) ≤ δ` with `g(ε) = (2/π)·atan(ε/(2+ε))`, the smaller of the two gaps
/// `½ - p±`, i.e. `ε = 2 tan θ / (1 - tan θ)` with `θ = (π/2)·sqrt(ln(2m/δ)/(2k))`; infinite when
/// `θ ≥ π/4` (no `ε` works).
pub fn median_epsilon_hoeffding(k: usize, m: usize, delta: f64) -> Result<f64> {
    check(k, delta)?;
    if m == 0 {
        return Ok(0.0);
    }
    let theta = PI / 2.0 * ((2.0 * m as f64 / delta).ln() / (2.0 * k as f64)).sqrt();
    if theta >= PI / 4.0 {
        return Ok(f64::INFINITY);
    }
    let t = theta.tan();
    Ok(2.0 * t / (1.0 - t))
}

/// The relative error `ε` such that all `m` root-mean-square estimates (each from `k` normal
/// projections) lie within `(1 ± ε)` of their true l2 norms with probability at least `1 - delta`.
pub fn normal_epsilon(k: usize, m: usize, delta: f64) -> Result<f64> {
    check(k, delta)?;
    Ok(solve(m, delta, |e| {
        let (a, b) = normal_failure(k, e);
        a + b
    }))
}

/// One-sided version of [`normal_epsilon`] (no estimate below `(1 - ε)` times its norm).
pub fn normal_epsilon_lower(k: usize, m: usize, delta: f64) -> Result<f64> {
    check(k, delta)?;
    Ok(solve(m, delta, |e| normal_failure(k, e).0).min(1.0))
}
