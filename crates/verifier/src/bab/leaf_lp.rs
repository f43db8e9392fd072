//! A ReLU-split leaf with every unit fixed: the network is affine on its set, and one linear
//! program finds the clause's worst point there — the counterexample β-CROWN's bound can only
//! approach.
//!
//! On a domain `D = {x ∈ X : s_j ẑ_j(x) ≤ 0 for every decision j}` whose layer bounds leave no
//! unit unstable (`l ≥ 0`: active, `u ≤ 0`: inactive, valid on `D`), each pre-activation is
//! affine in the input: `ẑ_1 = W_1 x + b_1`, `ẑ_{i+1} = W_{i+1} P_i ẑ_i + b_{i+1}` with `P_i` the
//! diagonal 0/1 pattern. The clause `c_kᵀ y ≤ r_k` (all `k`) is reachable on `D` iff
//!
//! `min t  s.t.  lo ≤ x ≤ hi,  s_j ẑ_j(x) ≤ 0,  c_kᵀ y(x) − r_k ≤ t`
//!
//! has `t ≤ 0`. The LP's point is only a candidate: the graph's own f64 forward pass decides
//! (a point on a face may round either way). An LP never proves a leaf here.

use super::beta::{Decision, LayerBox};
use crate::dense_dual::DenseChain;
use lp_check::LinearProgram;

/// The LP's point for the clause `rows`/`rhs` on the leaf (`bounds`, `decisions`) over
/// `[lo, hi]`, when its optimum `t` is negative; `None` otherwise (or when the leaf has an
/// unstable unit, the shapes disagree or the solver fails).
pub(crate) fn leaf_point(
    chain: &DenseChain,
    bounds: &LayerBox,
    decisions: &[Decision],
    lo: &[f64],
    hi: &[f64],
    rows: &[Vec<f64>],
    rhs: &[f64],
) -> Option<Vec<f64>> {
    let k = lo.len();
    if rows.is_empty() || k != chain.num_inputs() {
        return None;
    }
    let mut patterns = Vec::with_capacity(bounds.len());
    for (l, u) in bounds {
        let mut p = Vec::with_capacity(l.len());
        for (a, b) in l.iter().zip(u) {
            match (*a >= 0.0, *b <= 0.0) {
                (true, _) => p.push(true),
                (false, true) => p.push(false),
                (false, false) => return None,
            }
        }
        patterns.push(p);
    }
    let maps = chain.affine_maps(&patterns)?;
    let t = k;
    let mut lp = LinearProgram::new();
    lp.add_vars(k + 1);
    for i in 0..k {
        lp.add_le(vec![(i, 1.0)], hi[i]);
        lp.add_le(vec![(i, -1.0)], -lo[i]);
    }
    let row_of = |a: &[f64], scale: f64| -> Vec<(usize, f64)> {
        a.iter().enumerate().filter(|(_, v)| **v != 0.0).map(|(i, v)| (i, scale * v)).collect()
    };
    for &(li, unit, active) in decisions {
        let (a, c) = maps.get(li)?;
        let row = a.get(unit * k..(unit + 1) * k)?;
        // Active: ẑ ≥ 0, i.e. −a·x ≤ c; inactive: ẑ ≤ 0, i.e. a·x ≤ −c.
        if active {
            lp.add_le(row_of(row, -1.0), c[unit]);
        } else {
            lp.add_le(row_of(row, 1.0), -c[unit]);
        }
    }
    let (a_out, c_out) = maps.last()?;
    let n_out = c_out.len();
    for (row, r) in rows.iter().zip(rhs) {
        if row.len() != n_out {
            return None;
        }
        let mut g = vec![0.0; k];
        let mut g0 = 0.0;
        for (o, &co) in row.iter().enumerate() {
            if co != 0.0 {
                g0 += co * c_out[o];
                g.iter_mut().zip(&a_out[o * k..(o + 1) * k]).for_each(|(gi, ai)| *gi += co * ai);
            }
        }
        let mut e = row_of(&g, 1.0);
        e.push((t, -1.0));
        lp.add_le(e, r - g0);
    }
    let sol = lp.minimize(&[(t, 1.0)]).ok()?;
    if sol.value.is_nan() || sol.value >= 0.0 || sol.x.len() != k + 1 {
        return None;
    }
    Some(sol.x[..k].iter().zip(lo.iter().zip(hi)).map(|(v, (l, h))| v.clamp(*l, *h)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor, Var};
    use nets::layers::{Linear, ReLU};
    use nets::{Layer, Network, NetworkKind};
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn random_chain(widths: &[usize], rng: &mut StdRng) -> DenseChain {
        let dev = Device::Cpu;
        let mut layers: Vec<Box<dyn Layer>> = Vec::new();
        for (i, pair) in widths.windows(2).enumerate() {
            if i > 0 {
                layers.push(Box::new(ReLU));
            }
            let w: Vec<f64> = (0..pair[0] * pair[1]).map(|_| rng.random_range(-1.0..1.0)).collect();
            let b: Vec<f64> = (0..pair[1]).map(|_| rng.random_range(-0.5..0.5)).collect();
            let w = Var::from_tensor(&Tensor::from_vec(w, (pair[1], pair[0]), &dev).unwrap()).unwrap();
            let b = Var::from_tensor(&Tensor::from_vec(b, pair[1], &dev).unwrap()).unwrap();
            layers.push(Box::new(Linear { weight: w, bias: Some(b) }));
        }
        let net = Network::new(NetworkKind::Sequential, "leaf", &[widths[0]], layers).unwrap();
        DenseChain::from_network(&net).unwrap()
    }

    /// Pre-activations of every hidden layer and the output at `x`.
    fn pre_activations(chain: &DenseChain, x: &[f64]) -> (Vec<Vec<f64>>, Vec<f64>) {
        let mut pres = Vec::new();
        let mut z = x.to_vec();
        let n = chain.num_layers();
        for li in 0..n {
            z = chain.layer_forward(li, &z);
            if li + 1 < n {
                pres.push(z.clone());
                z.iter_mut().for_each(|v| *v = v.max(0.0));
            }
        }
        (pres, z)
    }

    #[test]
    fn the_leaf_lp_point_keeps_the_pattern_and_reaches_the_clause() {
        let mut rng = StdRng::seed_from_u64(21);
        let mut found = 0;
        for trial in 0..20 {
            let chain = random_chain(&[4, 8, 6, 3], &mut rng);
            let lo: Vec<f64> = (0..4).map(|_| rng.random_range(-1.0..0.0)).collect();
            let hi: Vec<f64> = lo.iter().map(|l| l + rng.random_range(0.2..1.0)).collect();
            let x0: Vec<f64> = lo.iter().zip(&hi).map(|(l, h)| rng.random_range(*l..*h)).collect();
            let (pres, y0) = pre_activations(&chain, &x0);
            // Every unit decided as at x0; the clause y_0 − y_1 ≤ its value at x0 holds there.
            let mut decisions = Vec::new();
            let mut bounds = Vec::new();
            for (li, z) in pres.iter().enumerate() {
                let (mut l, mut u) = (vec![], vec![]);
                for (j, v) in z.iter().enumerate() {
                    decisions.push((li, j, *v >= 0.0));
                    l.push(if *v >= 0.0 { 0.0 } else { -10.0 });
                    u.push(if *v >= 0.0 { 10.0 } else { 0.0 });
                }
                bounds.push((l, u));
            }
            let rows = vec![vec![1.0, -1.0, 0.0]];
            let rhs = vec![y0[0] - y0[1] + 1e-3];
            let x = leaf_point(&chain, &bounds, &decisions, &lo, &hi, &rows, &rhs)
                .unwrap_or_else(|| panic!("trial {trial}: x0 is a point of the leaf with t < 0"));
            let (p, y) = pre_activations(&chain, &x);
            for (li, z) in p.iter().enumerate() {
                for (j, v) in z.iter().enumerate() {
                    let want = pres[li][j] >= 0.0;
                    assert!(if want { *v >= -1e-6 } else { *v <= 1e-6 }, "trial {trial}: unit ({li}, {j}) = {v}");
                }
            }
            assert!(y[0] - y[1] <= rhs[0] + 1e-6, "trial {trial}: {} > {}", y[0] - y[1], rhs[0]);
            assert!(x.iter().zip(lo.iter().zip(&hi)).all(|(v, (l, h))| v >= l && v <= h));
            // Far below the leaf's minimum: no point.
            assert_eq!(leaf_point(&chain, &bounds, &decisions, &lo, &hi, &rows, &[-1e6]), None);
            found += 1;
        }
        assert_eq!(found, 20);
    }

    #[test]
    fn a_leaf_with_an_unstable_unit_gets_no_lp() {
        let mut rng = StdRng::seed_from_u64(2);
        let chain = random_chain(&[2, 3, 1], &mut rng);
        let bounds = vec![(vec![-1.0, 0.0, -1.0], vec![1.0, 1.0, 0.0])];
        assert_eq!(leaf_point(&chain, &bounds, &[], &[0.0; 2], &[1.0; 2], &[vec![1.0]], &[0.0]), None);
    }
}
