//! The threat model: which inputs an adversary may choose, as one typed value.
//!
//! `S(x) = {x' : ‖x' − x‖ ≤ ε} ∩ [lo, hi]ⁿ` (the clip only for l_inf). Every exact input set of
//! the workspace is built here ([`ThreatModel::exact_set`]); the projected sets are built from
//! the same value by the `projections` crate.

use crate::input::{Epsilon, InfBall, InfBallBounded, L2Ball};
use candle_core::Tensor;
use dual_core::{DualError, DualSource, Result};

/// The norm of the ball.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BallNorm {
    /// `‖x' − x‖_∞ ≤ ε` (the dual term `−ε‖g‖₁`).
    Linf,
    /// `‖x' − x‖₂ ≤ ε` (the dual term `−ε‖g‖₂`).
    L2,
}

/// A ball around each input, optionally clipped to a box.
#[derive(Debug, Clone)]
pub struct ThreatModel {
    /// The ball's norm.
    pub norm: BallNorm,
    /// Its radius (one number, per example or per feature).
    pub eps: Epsilon,
    /// `Some((lo, hi))`: the ball ∩ `[lo, hi]ⁿ` (l_inf only).
    pub clip: Option<(f64, f64)>,
}

impl ThreatModel {
    /// The l_inf ball of radius `eps`.
    pub fn linf(eps: impl Into<Epsilon>) -> Self {
        ThreatModel { norm: BallNorm::Linf, eps: eps.into(), clip: None }
    }

    /// The l2 ball of radius `eps`.
    pub fn l2(eps: impl Into<Epsilon>) -> Self {
        ThreatModel { norm: BallNorm::L2, eps: eps.into(), clip: None }
    }

    /// The ball of `norm`, clipped to `[0, 1]` when `unit_box` (an l2 ball with it is refused by
    /// [`ThreatModel::exact_set`]).
    pub fn new(norm: BallNorm, eps: impl Into<Epsilon>, unit_box: bool) -> Self {
        ThreatModel { norm, eps: eps.into(), clip: unit_box.then_some((0.0, 1.0)) }
    }

    /// The same ball clipped to `[lo, hi]ⁿ`.
    pub fn clipped(mut self, lo: f64, hi: f64) -> Self {
        self.clip = Some((lo, hi));
        self
    }

    /// The exact input set for inputs `x` (`[B, *in_shape]`): [`InfBall`], [`InfBallBounded`] or
    /// [`L2Ball`]. Errors: an l2 ball with a clip box, a bad radius or box (from the sets).
    pub fn exact_set(&self, x: &Tensor) -> Result<Box<dyn DualSource>> {
        Ok(match (self.norm, self.clip) {
            (BallNorm::Linf, None) => Box::new(InfBall::new(x, self.eps.clone())?),
            (BallNorm::Linf, Some((lo, hi))) => Box::new(InfBallBounded::new(x, self.eps.clone(), lo, hi)?),
            (BallNorm::L2, None) => Box::new(L2Ball::new(x, self.eps.clone())?),
            (BallNorm::L2, Some(_)) => {
                return Err(DualError::invalid("an l2 ball cannot be clipped to a box (use an l_inf ball)"))
            }
        })
    }

    /// A short description: "l_inf ball ∩ [0, 1]", "l2 ball".
    pub fn describe(&self) -> String {
        let ball = match self.norm {
            BallNorm::Linf => "l_inf ball",
            BallNorm::L2 => "l2 ball",
        };
        match self.clip {
            None => ball.to_string(),
            Some((lo, hi)) => format!("{ball} ∩ [{lo}, {hi}]"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn each_threat_model_builds_its_set_and_l2_with_a_box_is_refused() {
        let x = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let name = |t: ThreatModel| t.exact_set(&x).unwrap().name();
        assert_eq!(name(ThreatModel::linf(0.1)), InfBall::new(&x, 0.1).unwrap().name());
        assert_eq!(
            name(ThreatModel::linf(0.1).clipped(0.0, 1.0)),
            InfBallBounded::new(&x, 0.1, 0.0, 1.0).unwrap().name()
        );
        assert_eq!(name(ThreatModel::new(BallNorm::L2, 0.1, false)), L2Ball::new(&x, 0.1).unwrap().name());
        let err = ThreatModel::new(BallNorm::L2, 0.1, true).exact_set(&x).err().expect("l2 with a box is refused");
        assert!(err.to_string().contains("l2 ball cannot be clipped"), "{err}");
        let err = ThreatModel::linf(-1.0).exact_set(&x).err().expect("a negative radius is refused");
        assert!(err.to_string().contains("non-negative"), "{err}");
        assert_eq!(ThreatModel::linf(0.1).clipped(0.0, 1.0).describe(), "l_inf ball ∩ [0, 1]");
    }
}
