//! Falsification: projected gradient descent on a clause's violation margin from several
//! starts inside the box, and random sampling where no gradient is available. Only proposes
//! points: every candidate is checked by the caller with the graph's own f64 forward pass.

use candle_core::{DType, Device, Tensor, Var};
use nets::Network;
use rand::{rngs::StdRng, Rng};
use std::time::Instant;
use vnnlib::Clause;

/// PGD settings.
#[derive(Debug, Clone)]
pub struct PgdConfig {
    /// Starts run together (the first is the box's centre, the others uniform in the box).
    pub starts: usize,
    /// Steps per round.
    pub steps: usize,
    /// First step as a fraction of each feature's width (decays geometrically to 1/100 of it).
    pub step_fraction: f64,
}

impl Default for PgdConfig {
    fn default() -> Self {
        PgdConfig { starts: 32, steps: 60, step_fraction: 0.25 }
    }
}

/// The clause's inequalities over outputs alone as rows `c` and right-hand sides `r`
/// (`cᵀy ≤ r`). Inequalities that involve inputs (other than the box) are left out: bounds
/// never use them (sound: fewer inequalities, a larger set) and the final check evaluates them.
pub fn output_rows(clause: &Clause, num_outputs: usize) -> (Vec<Vec<f64>>, Vec<f64>) {
    let mut rows = Vec::new();
    let mut rhs = Vec::new();
    for c in clause.other_constraints().filter(|c| c.x.is_empty() && !c.y.is_empty()) {
        let mut row = vec![0.0; num_outputs];
        for &(j, b) in &c.y {
            row[j] += b;
        }
        rows.push(row);
        rhs.push(c.rhs);
    }
    (rows, rhs)
}

/// What PGD minimises over: the box `[lo, hi]` and the rows `cᵀy ≤ r` of one clause.
pub struct Target<'a> {
    /// Lower corner of the box.
    pub lo: &'a [f64],
    /// Upper corner of the box.
    pub hi: &'a [f64],
    /// Rows `c` over the outputs.
    pub rows: &'a [Vec<f64>],
    /// Right-hand sides `r`.
    pub rhs: &'a [f64],
}

/// One PGD round on `net` for the clause's output rows: minimises `max_k (c_kᵀ f(x) − r_k)` over
/// the box by signed-gradient steps, clipped to the box. Returns candidate points (those whose
/// margin went ≤ 0 in the network's own arithmetic, best first), or the best point found.
pub fn pgd(
    net: &Network,
    target: &Target,
    cfg: &PgdConfig,
    rng: &mut StdRng,
    deadline: Instant,
) -> candle_core::Result<Vec<Vec<f64>>> {
    let Target { lo, hi, .. } = *target;
    let k = lo.len();
    let starts: Vec<Vec<f64>> = (0..cfg.starts.max(1))
        .map(|start| {
            (0..k)
                .map(|i| if start == 0 { 0.5 * (lo[i] + hi[i]) } else { lo[i] + rng.random::<f64>() * (hi[i] - lo[i]) })
                .collect()
        })
        .collect();
    pgd_from(net, target, starts, cfg, deadline)
}

/// [`pgd`] from the given starts (clipped into the box; `cfg.starts` is ignored).
pub fn pgd_from(
    net: &Network,
    target: &Target,
    starts: Vec<Vec<f64>>,
    cfg: &PgdConfig,
    deadline: Instant,
) -> candle_core::Result<Vec<Vec<f64>>> {
    let Target { lo, hi, rows, rhs } = *target;
    let k = lo.len();
    let s = starts.len();
    if s == 0 {
        return Ok(vec![]);
    }
    let dev = Device::Cpu;
    let x0: Vec<f64> =
        starts.iter().flat_map(|x| x.iter().zip(lo.iter().zip(hi)).map(|(v, (l, h))| v.clamp(*l, *h))).collect();
    let lo_t = Tensor::from_vec(lo.to_vec(), (1, k), &dev)?;
    let hi_t = Tensor::from_vec(hi.to_vec(), (1, k), &dev)?;
    let width = (&hi_t - &lo_t)?;
    let m = rows[0].len();
    let c = Tensor::from_vec(rows.iter().flatten().copied().collect::<Vec<_>>(), (rows.len(), m), &dev)?;
    let r = Tensor::from_vec(rhs.to_vec(), (1, rhs.len()), &dev)?;
    let mut x = Tensor::from_vec(x0, (s, k), &dev)?.to_dtype(DType::F64)?;
    let margins = |x: &Tensor| -> candle_core::Result<Tensor> {
        let y = net.forward(x).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        y.matmul(&c.t()?)?.broadcast_sub(&r)?.max_keepdim(1)?.squeeze(1)
    };
    let mut best: Vec<(f64, Vec<f64>)> = Vec::new();
    for step in 0..cfg.steps {
        if Instant::now() > deadline {
            break;
        }
        let frac = cfg.step_fraction * (0.01f64).powf(step as f64 / cfg.steps.max(2) as f64 - 0.0);
        let xv = Var::from_tensor(&x)?;
        let marg = nets::no_grad(|| margins(xv.as_tensor()))?;
        let vals = marg.to_vec1::<f64>()?;
        let xs = x.to_vec2::<f64>()?;
        for (v, p) in vals.iter().zip(xs) {
            if *v <= 0.0 || best.is_empty() || *v < best[0].0 {
                best.push((*v, p));
            }
        }
        best.sort_by(|a, b| a.0.total_cmp(&b.0));
        best.truncate(s);
        if best.first().is_some_and(|b| b.0 <= 0.0) {
            break;
        }
        let grads = marg.sum_all()?.backward()?;
        let g = grads.get(xv.as_tensor()).cloned().unwrap_or(Tensor::zeros((s, k), DType::F64, &dev)?);
        let stepped = (&x - g.sign()?.broadcast_mul(&width)?.affine(frac, 0.0)?)?;
        x = stepped.broadcast_maximum(&lo_t)?.broadcast_minimum(&hi_t)?;
    }
    let cands: Vec<Vec<f64>> = best.iter().filter(|b| b.0 <= 0.0).map(|b| b.1.clone()).collect();
    Ok(if cands.is_empty() { best.into_iter().take(1).map(|b| b.1).collect() } else { cands })
}

/// `n` points uniform in the box (the centre and the corners nearest it come first).
pub fn samples(lo: &[f64], hi: &[f64], n: usize, rng: &mut StdRng) -> Vec<Vec<f64>> {
    let mut out = vec![lo.iter().zip(hi).map(|(l, h)| 0.5 * (l + h)).collect::<Vec<f64>>()];
    out.extend((1..n).map(|_| lo.iter().zip(hi).map(|(l, h)| l + rng.random::<f64>() * (h - l)).collect()));
    out
}
