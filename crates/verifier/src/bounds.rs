//! Sound lower bounds of linear functions of the output over an input box: the pluggable
//! step of the verifier (the exact Wong–Kolter dual now; CROWN / α-CROWN can implement the
//! same trait).

use candle_core::{DType, Device, Tensor};
use dual_core::DualOptions;
use dual_layers::{Epsilon, InfBall};
use nets::Network;

/// A method that bounds `cᵀ f(x)` from below for every `x` in a box.
pub trait BoundMethod: Send + Sync {
    /// A short name for logs.
    fn name(&self) -> String;
    /// For each row `c` of `rows` (each `num_outputs` long), a number `≤ min_{lo ≤ x ≤ hi} cᵀ f(x)`
    /// computed in f64. Must be sound: never above the true minimum beyond f64 rounding.
    fn lower_bounds(&self, net: &Network, lo: &[f64], hi: &[f64], rows: &[Vec<f64>]) -> Result<Vec<f64>, String>;
}

/// The exact dual of Wong & Kolter (2018) on the box written as an l_inf ball with a
/// per-feature radius: centre `(lo + hi) / 2`, radius `(hi − lo) / 2`. `J(c) ≤ cᵀ f(x)` for
/// every `x` in the box (their Theorem 1, with the layer-wise bounds of their Algorithm 1).
pub struct ExactDual;

impl BoundMethod for ExactDual {
    fn name(&self) -> String {
        "wong-kolter exact dual".into()
    }

    fn lower_bounds(&self, net: &Network, lo: &[f64], hi: &[f64], rows: &[Vec<f64>]) -> Result<Vec<f64>, String> {
        let k = lo.len();
        let mid: Vec<f64> = lo.iter().zip(hi).map(|(l, h)| 0.5 * (l + h)).collect();
        // The radius rounded up so the ball covers the box despite the rounding of the centre.
        let rad: Vec<f64> =
            lo.iter().zip(hi).zip(&mid).map(|((l, h), m)| ((h - m).max(m - l)) * (1.0 + 4.0 * f64::EPSILON)).collect();
        let dev = Device::Cpu;
        let run = || -> candle_core::Result<Result<Vec<f64>, String>> {
            let x = Tensor::from_vec(mid, (1, k), &dev)?.to_dtype(DType::F64)?;
            let eps = Tensor::from_vec(rad, (1, k), &dev)?;
            let ball = match InfBall::new(&x, Epsilon::Tensor(eps)) {
                Ok(b) => b,
                Err(e) => return Ok(Err(e.to_string())),
            };
            let dual = match net.dual(&x, Box::new(ball), &DualOptions::default()) {
                Ok(d) => d,
                Err(e) => return Ok(Err(e.to_string())),
            };
            let m = rows.first().map_or(0, |r| r.len());
            let flat: Vec<f64> = rows.iter().flatten().copied().collect();
            let c = Tensor::from_vec(flat, (1, rows.len(), m), &dev)?;
            match dual.objective(&c) {
                Ok(j) => Ok(Ok(j.flatten_all()?.to_vec1::<f64>()?)),
                Err(e) => Ok(Err(e.to_string())),
            }
        };
        nets::no_grad(run).map_err(|e| e.to_string())?
    }
}
