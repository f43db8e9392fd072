//! Input splitting: which feature of a box to halve.
//!
//! Score of feature `i` on a box of radius `ρ` (half-widths): `s_i ρ_i`, where `s_i` is the
//! sensitivity of the bound to `ρ_i` (the weight of input `i` in the bound's linear function,
//! see `crate::family`). To first order, halving along `i` raises the bound by `s_i ρ_i / 2` on
//! both halves, so the feature with the largest score is split. A small term `ε ρ_i / ρ⁰_i`
//! (relative width against the clause's box) breaks ties and keeps every feature splittable
//! when the sensitivities vanish; without sensitivities the relative width alone decides.

/// The feature to halve on `[lo, hi]`, or `None` when no feature can be halved in f64 (its
/// midpoint equals an end).
pub fn choose_feature(lo: &[f64], hi: &[f64], root_width: &[f64], sens: Option<&[f64]>) -> Option<usize> {
    let score = |i: usize| {
        let r = 0.5 * (hi[i] - lo[i]);
        let rel = if root_width[i] > 0.0 { 2.0 * r / root_width[i] } else { 0.0 };
        match sens {
            Some(s) => s[i] * r + 1e-6 * rel * s.iter().copied().fold(0.0, f64::max).max(1e-12),
            None => rel,
        }
    };
    (0..lo.len()).filter(|&i| splittable(lo[i], hi[i])).max_by(|&a, &b| score(a).total_cmp(&score(b)))
}

/// Whether `[l, h]` has a midpoint strictly inside it in f64.
pub fn splittable(l: f64, h: f64) -> bool {
    let m = 0.5 * (l + h);
    m > l && m < h
}

/// The two halves of `[lo, hi]` along feature `i` (they share the midpoint, so together they
/// cover the box).
pub fn halve(lo: &[f64], hi: &[f64], i: usize) -> [(Vec<f64>, Vec<f64>); 2] {
    let m = 0.5 * (lo[i] + hi[i]);
    let (mut l2, mut h1) = (lo.to_vec(), hi.to_vec());
    h1[i] = m;
    l2[i] = m;
    [(lo.to_vec(), h1), (l2, hi.to_vec())]
}
