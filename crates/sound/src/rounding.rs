//! Constants and helpers of the rounding-error analysis.
//!
//! Round-to-nearest IEEE arithmetic with unit roundoff `u` (f64: `2^-53`, f32: `2^-24`) gives,
//! for a sum of `n` products computed in **any** order (FMA or not, blocked or threaded),
//! `|fl(Σ a_i b_i) − Σ a_i b_i| ≤ γ_n Σ |a_i b_i|` with `γ_n = n u / (1 − n u)` (Higham,
//! *Accuracy and Stability of Numerical Algorithms*, §3.1), as long as nothing overflows or
//! underflows. Underflow adds at most `η = 2^-1074` (f64) per operation; [`ETA`] covers it with room.

/// Unit roundoff of f64, `2^-53`.
pub const U64: f64 = f64::EPSILON / 2.0;
/// Unit roundoff of f32, `2^-24`.
pub const U32: f64 = f32::EPSILON as f64 / 2.0;
/// An absolute slack for underflow, far above `n · 2^-1074` for any `n` we meet.
pub const ETA: f64 = 1e-290;

/// `γ_n = n u / (1 − n u)` for unit roundoff `u`, rounded up (the result is inflated by a
/// factor far above the rounding of this short computation). Infinite when `n u ≥ 1/2`.
pub fn gamma(n: usize, u: f64) -> f64 {
    let nu = n as f64 * u;
    if nu >= 0.5 {
        return f64::INFINITY;
    }
    nu / (1.0 - nu) * (1.0 + 8.0 * U64)
}

/// A number `≤ v` for every real `v` that `x` approximates to within one rounding
/// (`|x − v| ≤ u|v|`), i.e. `x` moved down by a few units in the last place, plus [`ETA`].
pub fn down(x: f64) -> f64 {
    x - 4.0 * U64 * x.abs() - ETA
}

/// A number `≥ v` for every real `v` that `x` approximates to within one rounding.
pub fn up(x: f64) -> f64 {
    x + 4.0 * U64 * x.abs() + ETA
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gamma_is_monotone_and_above_n_u() {
        assert!(gamma(10, U64) > 10.0 * U64);
        assert!(gamma(11, U64) > gamma(10, U64));
        assert_eq!(gamma(0, U64), 0.0);
        assert!(gamma(1 << 30, U32).is_infinite());
    }

    #[test]
    fn down_and_up_bracket() {
        for x in [0.0, 1.0, -1.0, 1e-300, 3.7e12, -2.5e-7] {
            assert!(down(x) < x && up(x) > x);
        }
    }
}
