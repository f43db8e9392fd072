//! The LP of a network over an input set, every ReLU replaced by a convex relaxation given the
//! bounds of its input.

use super::network::{to_f64, LpNetwork, Step};
use super::program::{LinearProgram, LpSolution};
use anyhow::{bail, Context, Result};
use dual_core::DualNetwork;
use serde::Serialize;
use std::collections::BTreeMap;

/// Bounds `(l, u)` of the input of every ReLU, keyed by the ReLU's layer index `t` (1-based).
pub type ReluBounds = BTreeMap<usize, (Vec<f64>, Vec<f64>)>;

/// Example `b`'s ReLU bounds as the dual network computed them.
pub fn example_bounds(dual: &DualNetwork, b: usize) -> Result<ReluBounds> {
    let n = dual.batch_size();
    if b >= n {
        bail!("example {b} of a batch of {n}");
    }
    let mut out = ReluBounds::new();
    for lb in dual.bounds() {
        let l = to_f64(&lb.lower.get(b)?)?;
        let u = to_f64(&lb.upper.get(b)?)?;
        out.insert(lb.layer, (l, u));
    }
    Ok(out)
}

/// The input set of the LP.
#[derive(Debug, Clone)]
pub enum InputSet {
    /// `lo ≤ x' ≤ hi` (an l_inf ball, optionally intersected with a box).
    Box {
        /// Lower corner.
        lo: Vec<f64>,
        /// Upper corner.
        hi: Vec<f64>,
    },
    /// `‖x' - center‖₂ ≤ radius`.
    L2 {
        /// Center.
        center: Vec<f64>,
        /// Radius.
        radius: f64,
    },
}

impl InputSet {
    /// The l_inf ball of radius `eps` around `x`, intersected with `clip` if given.
    pub fn linf(x: &[f64], eps: f64, clip: Option<(f64, f64)>) -> Self {
        Self::linf_per_feature(x, &vec![eps; x.len()], clip)
    }

    /// The l_inf box `|x'_i - x_i| ≤ eps_i` (one radius per feature), intersected with `clip` if
    /// given.
    pub fn linf_per_feature(x: &[f64], eps: &[f64], clip: Option<(f64, f64)>) -> Self {
        assert_eq!(x.len(), eps.len(), "one radius per feature");
        let (a, b) = clip.unwrap_or((f64::NEG_INFINITY, f64::INFINITY));
        InputSet::Box {
            lo: x.iter().zip(eps).map(|(v, e)| (v - e).max(a)).collect(),
            hi: x.iter().zip(eps).map(|(v, e)| (v + e).min(b)).collect(),
        }
    }

    fn size(&self) -> usize {
        match self {
            InputSet::Box { lo, .. } => lo.len(),
            InputSet::L2 { center, .. } => center.len(),
        }
    }
}

/// How an unstable ReLU is relaxed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Relaxation {
    /// `z ≥ 0, z ≥ ẑ, z ≤ u (ẑ - l) / (u - l)`: the LP of Wong & Kolter.
    Triangle,
    /// `d ẑ ≤ z ≤ d (ẑ - l)`, `d = u / (u - l)`: what the dual network solves exactly.
    FixedSlope,
}

/// The LP of a network's outputs `0..=last` over an input set.
#[derive(Debug, Clone)]
pub struct NetworkLp {
    /// The program.
    pub lp: LinearProgram,
    /// The variables of every output `0..=last`.
    pub outputs: Vec<Vec<usize>>,
    /// Unstable ReLU units relaxed.
    pub unstable: usize,
}

impl NetworkLp {
    /// Builds the relaxation of layers `1..=last` (`None`: the whole network).
    pub fn build(
        net: &LpNetwork,
        set: &InputSet,
        bounds: &ReluBounds,
        relax: Relaxation,
        last: Option<usize>,
    ) -> Result<Self> {
        let last = last.unwrap_or(net.steps.len());
        if last > net.steps.len() {
            bail!("layer {last} of a network of {} layers", net.steps.len());
        }
        if set.size() != net.input_size {
            bail!("input set of size {} for a network with {} inputs", set.size(), net.input_size);
        }
        let mut lp = LinearProgram::new();
        let x = lp.add_vars(net.input_size);
        match set {
            InputSet::Box { lo, hi } => {
                for (i, &v) in x.iter().enumerate() {
                    if !(lo[i] <= hi[i]) {
                        bail!("empty input box at feature {i}: [{}, {}]", lo[i], hi[i]);
                    }
                    lp.add_le(vec![(v, 1.0)], hi[i]);
                    lp.add_le(vec![(v, -1.0)], -lo[i]);
                }
            }
            InputSet::L2 { center, radius } => {
                if !(*radius >= 0.0) {
                    bail!("negative l2 radius {radius}");
                }
                lp.set_l2_ball(&x, center, *radius);
            }
        }
        let mut outs = vec![x];
        let mut unstable = 0;
        for (k, step) in net.steps[..last].iter().enumerate() {
            let t = k + 1;
            let v = match step {
                Step::Same => outs[t - 1].clone(),
                Step::Relu => {
                    let (l, u) = bounds.get(&t).with_context(|| format!("no bounds for the ReLU at layer {t}"))?;
                    let zhat = outs[t - 1].clone();
                    if l.len() != zhat.len() || u.len() != zhat.len() {
                        bail!(
                            "bounds of the ReLU at layer {t} have {} / {} entries for {} units",
                            l.len(),
                            u.len(),
                            zhat.len()
                        );
                    }
                    let z = lp.add_vars(zhat.len());
                    for j in 0..zhat.len() {
                        let (l, u, zh, zo) = (l[j], u[j], zhat[j], z[j]);
                        if !(l <= u) {
                            bail!("ReLU at layer {t}, unit {j}: lower bound {l} above upper bound {u}");
                        }
                        if l >= 0.0 {
                            lp.add_eq(vec![(zo, 1.0), (zh, -1.0)], 0.0);
                        } else if u <= 0.0 {
                            lp.add_eq(vec![(zo, 1.0)], 0.0);
                        } else {
                            unstable += 1;
                            let d = u / (u - l);
                            match relax {
                                Relaxation::Triangle => {
                                    lp.add_le(vec![(zo, -1.0)], 0.0);
                                    lp.add_le(vec![(zh, 1.0), (zo, -1.0)], 0.0);
                                }
                                Relaxation::FixedSlope => lp.add_le(vec![(zh, d), (zo, -1.0)], 0.0),
                            }
                            // z ≤ d (ẑ - l).
                            lp.add_le(vec![(zo, 1.0), (zh, -d)], -d * l);
                        }
                    }
                    z
                }
                Step::Affine { parts, bias } => {
                    let z = lp.add_vars(bias.len());
                    for (r, &zr) in z.iter().enumerate() {
                        let mut e = vec![(zr, 1.0)];
                        for (src, w) in parts {
                            match w {
                                Some(w) => e.extend(w.row(r).iter().map(|&(col, a)| (outs[*src][col], -a))),
                                None => e.push((outs[*src][r], -1.0)),
                            }
                        }
                        lp.add_eq(e, bias[r]);
                    }
                    z
                }
            };
            outs.push(v);
        }
        Ok(NetworkLp { lp, outputs: outs, unstable })
    }

    /// The variables of the last output built.
    pub fn output(&self) -> &[usize] {
        self.outputs.last().expect("at least the input")
    }

    /// `min cᵀ out` over the relaxation.
    pub fn minimize_output(&self, c: &[f64]) -> Result<LpSolution> {
        let out = self.output();
        if c.len() != out.len() {
            bail!("objective of size {} for {} outputs", c.len(), out.len());
        }
        self.lp.minimize(&out.iter().zip(c).filter(|(_, a)| **a != 0.0).map(|(&v, &a)| (v, a)).collect::<Vec<_>>())
    }
}
