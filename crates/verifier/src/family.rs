//! The bound family (CROWN, α-CROWN, IBP, CROWN-IBP of `dual_core::bounds`) as a
//! [`BoundMethod`], with the sensitivity of the bound to each input's width for branching.
//!
//! A box `[lo, hi]` is the l_inf ball with centre `m = (lo + hi)/2` and per-feature radius
//! `ρ = (hi − lo)/2` (rounded up so the ball covers the box). The method returns
//! `lb(C; m, ρ) ≤ min_{|x − m| ≤ ρ} C f(x)`. The sensitivity of a row is `s_i = −∂lb/∂ρ_i ≥ 0`
//! (autograd through the whole bound, intermediate bounds included): with fixed relaxations the
//! final bound is `Λ_0 m − |Λ_0| ρ + const`, so `s_i = |Λ_0,i|`, the weight of input `i` in the
//! bound's linear function; halving feature `i` shrinks its radius by `ρ_i / 2`, so
//! `s_i ρ_i` estimates what a split along `i` gains.

use crate::bounds::{balls, rows_tensor, BoundMethod, BoundsAndSensitivity, InputBox};
use candle_core::{DType, Device, Tensor, Var};
use dual_core::bounds::{BoundOptions, Method, Spec};
use dual_layers::{Epsilon, InfBall};
use nets::Network;

/// A method of the bound family on boxes.
#[derive(Debug, Clone)]
pub struct FamilyBound {
    /// The method.
    pub method: Method,
    /// Its options (α-CROWN's optimiser, memory budget).
    pub opts: BoundOptions,
}

impl FamilyBound {
    /// `method` with default options.
    pub fn new(method: Method) -> Self {
        FamilyBound { method, opts: BoundOptions::default() }
    }

    /// The bounds `[B, n]` for centre `x` and radius `rad`.
    fn run(&self, net: &Network, x: &Tensor, rad: &Tensor, rows: &[Vec<f64>]) -> Result<Tensor, String> {
        let c = rows_tensor(rows, x.dim(0).map_err(|e| e.to_string())?)?;
        let spec = Spec::new(c).map_err(|e| e.to_string())?;
        let ball = InfBall::new(x, Epsilon::Tensor(rad.clone())).map_err(|e| e.to_string())?;
        let out = net.spec_bounds(x, Box::new(ball), &spec, self.method, &self.opts).map_err(|e| e.to_string())?;
        out.lower.to_dtype(DType::F64).map_err(|e| e.to_string())
    }
}

/// `lb(m, ρ)` from `f` (`[B, n]` for centre `m` and radius `ρ`), and `|∂lb_best/∂ρ|` per box,
/// where `best` is the row with the largest `lb − rhs` in that box.
pub(crate) fn with_sensitivity(
    boxes: &[InputBox],
    rows: &[Vec<f64>],
    rhs: &[f64],
    f: impl Fn(&Tensor, &Tensor) -> Result<Tensor, String>,
) -> Result<BoundsAndSensitivity, String> {
    if !rows_ok(boxes, rows) {
        return Ok((vec![vec![]; boxes.len()], None));
    }
    let (x, rad) = balls(boxes)?;
    let rad = Var::from_tensor(&rad).map_err(|e| e.to_string())?;
    // Parameters as constants (`nets::no_grad`): only the radius's gradient is read.
    let lb = nets::no_grad(|| f(&x, rad.as_tensor()))?.to_dtype(DType::F64).map_err(|e| e.to_string())?;
    let vals = lb.to_vec2::<f64>().map_err(|e| e.to_string())?;
    let (b, n) = (vals.len(), rows.len());
    let mut mask = vec![0f64; b * n];
    for (i, v) in vals.iter().enumerate() {
        let best = (0..n).max_by(|&p, &q| (v[p] - rhs[p]).total_cmp(&(v[q] - rhs[q]))).unwrap_or(0);
        mask[i * n + best] = 1.0;
    }
    let grads = Tensor::from_vec(mask, (b, n), &Device::Cpu)
        .and_then(|mask| (lb * mask)?.sum_all()?.backward())
        .map_err(|e| e.to_string())?;
    let sens = match grads.get(rad.as_tensor()) {
        Some(g) => {
            let g = g.to_dtype(DType::F64).and_then(|g| g.abs()?.to_vec2::<f64>()).map_err(|e| e.to_string())?;
            Some(g.into_iter().map(|r| r.into_iter().map(|v| if v.is_finite() { v } else { 0.0 }).collect()).collect())
        }
        None => None,
    };
    Ok((vals, sens))
}

fn rows_ok(boxes: &[InputBox], rows: &[Vec<f64>]) -> bool {
    !boxes.is_empty() && !rows.is_empty()
}

impl BoundMethod for FamilyBound {
    fn name(&self) -> String {
        self.method.name().into()
    }

    fn lower_bounds(&self, net: &Network, boxes: &[InputBox], rows: &[Vec<f64>]) -> Result<Vec<Vec<f64>>, String> {
        if !rows_ok(boxes, rows) {
            return Ok(vec![vec![]; boxes.len()]);
        }
        let (x, rad) = balls(boxes)?;
        nets::no_grad(|| self.run(net, &x, &rad, rows))?.to_vec2::<f64>().map_err(|e| e.to_string())
    }

    fn lower_bounds_sensitivity(
        &self,
        net: &Network,
        boxes: &[InputBox],
        rows: &[Vec<f64>],
        rhs: &[f64],
    ) -> Result<BoundsAndSensitivity, String> {
        with_sensitivity(boxes, rows, rhs, |x, rad| self.run(net, x, rad, rows))
    }
}

/// One method for small inputs and another for large ones, chosen per call by the number of
/// input features: e.g. the exact dual for input splitting (cheap per box when the input is
/// small: its layer-wise bounds go forward from the input's few columns) and α-CROWN for
/// high-dimensional inputs, where only the root bound is computed.
pub struct BySize {
    /// Used for inputs of at most `threshold` features.
    pub small: Box<dyn BoundMethod>,
    /// Used for larger inputs.
    pub large: Box<dyn BoundMethod>,
    /// The largest input that counts as small.
    pub threshold: usize,
}

impl BySize {
    fn pick(&self, boxes: &[InputBox]) -> &dyn BoundMethod {
        match boxes.first() {
            Some((lo, _)) if lo.len() > self.threshold => self.large.as_ref(),
            _ => self.small.as_ref(),
        }
    }
}

impl BoundMethod for BySize {
    fn name(&self) -> String {
        format!("{} (≤ {} inputs) / {}", self.small.name(), self.threshold, self.large.name())
    }

    fn lower_bounds(&self, net: &Network, boxes: &[InputBox], rows: &[Vec<f64>]) -> Result<Vec<Vec<f64>>, String> {
        self.pick(boxes).lower_bounds(net, boxes, rows)
    }

    fn lower_bounds_sensitivity(
        &self,
        net: &Network,
        boxes: &[InputBox],
        rows: &[Vec<f64>],
        rhs: &[f64],
    ) -> Result<BoundsAndSensitivity, String> {
        self.pick(boxes).lower_bounds_sensitivity(net, boxes, rows, rhs)
    }

    fn stages(&self, num_inputs: usize) -> Option<Vec<(&dyn BoundMethod, f64)>> {
        let m = if num_inputs > self.threshold { self.large.as_ref() } else { self.small.as_ref() };
        m.stages(num_inputs).or_else(|| Some(vec![(m, 1.0)]))
    }
}

/// Input splitting with several methods in turn: e.g. CROWN for the first quarter of the time
/// (tighter on some boxes, 10–20× slower per box here) and then the exact dual for the rest
/// (cheap per box), which goes on from the open domains CROWN left (their CROWN bounds kept:
/// a child keeps the larger bound per row). Bounds outside input splitting come from the first
/// method.
pub struct Portfolio {
    /// The methods and their shares of the time left when each starts.
    pub stages: Vec<(Box<dyn BoundMethod>, f64)>,
}

impl BoundMethod for Portfolio {
    fn name(&self) -> String {
        let parts: Vec<String> = self.stages.iter().map(|(m, s)| format!("{} ({:.0}%)", m.name(), 100.0 * s)).collect();
        parts.join(" then ")
    }

    fn lower_bounds(&self, net: &Network, boxes: &[InputBox], rows: &[Vec<f64>]) -> Result<Vec<Vec<f64>>, String> {
        let (m, _) = self.stages.first().ok_or("a portfolio without methods")?;
        m.lower_bounds(net, boxes, rows)
    }

    fn lower_bounds_sensitivity(
        &self,
        net: &Network,
        boxes: &[InputBox],
        rows: &[Vec<f64>],
        rhs: &[f64],
    ) -> Result<BoundsAndSensitivity, String> {
        let (m, _) = self.stages.first().ok_or("a portfolio without methods")?;
        m.lower_bounds_sensitivity(net, boxes, rows, rhs)
    }

    fn stages(&self, _num_inputs: usize) -> Option<Vec<(&dyn BoundMethod, f64)>> {
        Some(self.stages.iter().map(|(m, s)| (m.as_ref(), *s)).collect())
    }
}
