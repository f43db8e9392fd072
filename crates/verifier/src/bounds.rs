//! Sound lower bounds of linear functions of the output over an input box: the pluggable
//! step of the verifier (the exact Wong–Kolter dual now; CROWN / α-CROWN can implement the
//! same trait).

use candle_core::{Device, Tensor};
use dual_core::DualOptions;
use dual_layers::{Epsilon, InfBall};
use nets::Network;

/// An axis-aligned box `[lo, hi]` of inputs.
pub type InputBox = (Vec<f64>, Vec<f64>);

/// Lower bounds per box and row, and per box the sensitivity to each input's radius (if any).
pub type BoundsAndSensitivity = (Vec<Vec<f64>>, Option<Vec<Vec<f64>>>);

/// The box `[lo, hi]` as an l_inf ball: centre `(lo + hi)/2` and per-feature radius, rounded up
/// so the ball covers the box despite the rounding of the centre.
pub(crate) fn box_ball(lo: &[f64], hi: &[f64]) -> (Vec<f64>, Vec<f64>) {
    lo.iter()
        .zip(hi)
        .map(|(l, h)| {
            let m = 0.5 * (l + h);
            (m, (h - m).max(m - l) * (1.0 + 4.0 * f64::EPSILON))
        })
        .unzip()
}

/// A method that bounds `cᵀ f(x)` from below for every `x` in a box.
pub trait BoundMethod: Send + Sync {
    /// A short name for logs.
    fn name(&self) -> String;
    /// For each box and each row `c` of `rows` (each `num_outputs` long), a number
    /// `≤ min_{lo ≤ x ≤ hi} cᵀ f(x)` computed in f64 (`result[box][row]`). Must be sound: never
    /// above the true minimum beyond f64 rounding.
    fn lower_bounds(&self, net: &Network, boxes: &[InputBox], rows: &[Vec<f64>]) -> Result<Vec<Vec<f64>>, String>;

    /// [`BoundMethod::lower_bounds`], and per box the sensitivity `s_i ≥ 0` of the bound of the
    /// row nearest to proving (largest `lb − rhs`) to the radius of input `i` (how much the bound
    /// grows per unit the box shrinks along `i`), for branching. `None` where the method has no
    /// such information (the default).
    fn lower_bounds_sensitivity(
        &self,
        net: &Network,
        boxes: &[InputBox],
        rows: &[Vec<f64>],
        _rhs: &[f64],
    ) -> Result<BoundsAndSensitivity, String> {
        Ok((self.lower_bounds(net, boxes, rows)?, None))
    }

    /// The methods input splitting runs one after the other (each on the open domains the one
    /// before left), each with its share of the time left (the last one gets all of it), for
    /// inputs of `num_inputs` features. Default `None`: this method alone.
    fn stages(&self, _num_inputs: usize) -> Option<Vec<(&dyn BoundMethod, f64)>> {
        None
    }
}

/// The exact dual of Wong & Kolter (2018) on each box written as an l_inf ball with a
/// per-feature radius: centre `(lo + hi) / 2`, radius `(hi − lo) / 2`. `J(c) ≤ cᵀ f(x)` for
/// every `x` in the box (their Theorem 1, with the layer-wise bounds of their Algorithm 1).
/// The boxes go through the dual network as one batch.
pub struct ExactDual;

impl BoundMethod for ExactDual {
    fn name(&self) -> String {
        "wong-kolter exact dual".into()
    }

    fn lower_bounds(&self, net: &Network, boxes: &[InputBox], rows: &[Vec<f64>]) -> Result<Vec<Vec<f64>>, String> {
        if boxes.is_empty() || rows.is_empty() {
            return Ok(vec![vec![]; boxes.len()]);
        }
        let (x, rad) = balls(boxes)?;
        nets::no_grad(|| exact_objective(net, &x, &rad, rows))?.to_vec2::<f64>().map_err(|e| e.to_string())
    }

    /// The dual's objective is differentiable in the radius: the sensitivity is its gradient.
    fn lower_bounds_sensitivity(
        &self,
        net: &Network,
        boxes: &[InputBox],
        rows: &[Vec<f64>],
        rhs: &[f64],
    ) -> Result<BoundsAndSensitivity, String> {
        crate::family::with_sensitivity(boxes, rows, rhs, |x, rad| exact_objective(net, x, rad, rows))
    }
}

/// `J(c)` of the exact dual for every row of `rows` on the balls with centres `x` `[B, k]` and
/// radii `rad` `[B, k]`: `[B, rows]`.
fn exact_objective(net: &Network, x: &Tensor, rad: &Tensor, rows: &[Vec<f64>]) -> Result<Tensor, String> {
    let ball = InfBall::new(x, Epsilon::Tensor(rad.clone())).map_err(|e| e.to_string())?;
    let dual = net.dual(x, Box::new(ball), &DualOptions::default()).map_err(|e| e.to_string())?;
    dual.objective(&rows_tensor(rows, x.dim(0).map_err(|e| e.to_string())?)?).map_err(|e| e.to_string())
}

/// `rows` (each `m` long) for each of `b` boxes: `[b, rows, m]`.
pub(crate) fn rows_tensor(rows: &[Vec<f64>], b: usize) -> Result<Tensor, String> {
    let (n, m) = (rows.len(), rows[0].len());
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (1, n, m), &Device::Cpu)
        .and_then(|c| c.broadcast_as((b, n, m))?.contiguous())
        .map_err(|e| e.to_string())
}

/// Centres `[B, k]` and radii `[B, k]` of the boxes as l_inf balls ([`box_ball`]).
pub(crate) fn balls(boxes: &[InputBox]) -> Result<(Tensor, Tensor), String> {
    let b = boxes.len();
    let k = boxes[0].0.len();
    let mut mid = Vec::with_capacity(b * k);
    let mut rad = Vec::with_capacity(b * k);
    for (lo, hi) in boxes {
        if lo.len() != k || hi.len() != k {
            return Err(format!("boxes of different sizes ({k} and {}/{})", lo.len(), hi.len()));
        }
        let (m, r) = box_ball(lo, hi);
        mid.extend(m);
        rad.extend(r);
    }
    let dev = Device::Cpu;
    let x = Tensor::from_vec(mid, (b, k), &dev).map_err(|e| e.to_string())?;
    let r = Tensor::from_vec(rad, (b, k), &dev).map_err(|e| e.to_string())?;
    Ok((x, r))
}
