//! The papers' schedules for epsilon and the learning rate.

use serde::{Deserialize, Serialize};

/// How epsilon rises during the ramp.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum RampShape {
    /// A straight line from `start` to `end`.
    #[default]
    Linear,
    /// Shi et al. 2021's smoothed ramp (after Gowal et al.'s code and auto_LiRPA's
    /// `SmoothedScheduler`, β = 4, mid-point 0.25): with `p` the position in the ramp,
    /// `f(p) = a p⁴` up to `p = 1/4`, then the straight line to `f(1) = 1` that leaves it with the
    /// same slope; `a = 1 / (β m^{β−1} (1 − m) + m^β)` makes the two pieces meet with equal
    /// derivatives. Epsilon is `start + (end − start) f(p)`.
    Smooth,
}

/// The smoothed ramp's exponent β and mid-point m (Shi et al. 2021, auto_LiRPA's defaults).
const SMOOTH_BETA: f64 = 4.0;
const SMOOTH_MID: f64 = 0.25;

impl RampShape {
    /// The ramp's fraction `f(p)` ∈ [0, 1] at position `p` ∈ [0, 1].
    pub fn fraction(&self, p: f64) -> f64 {
        let p = p.clamp(0.0, 1.0);
        match self {
            RampShape::Linear => p,
            RampShape::Smooth => {
                let (b, m) = (SMOOTH_BETA, SMOOTH_MID);
                let a = 1.0 / (b * m.powf(b - 1.0) * (1.0 - m) + m.powf(b));
                if p < m {
                    a * p.powf(b)
                } else {
                    let fm = a * m.powf(b);
                    fm + (1.0 - fm) * (p - m) / (1.0 - m)
                }
            }
        }
    }
}

/// Epsilon is 0 for the first `warmup_epochs` epochs (plain training: Shi et al. 2021's warm-up),
/// then rises from `start` to `end` over `ramp_epochs` epochs (per batch, linearly or along the
/// smoothed ramp), then stays at `end` (paper 1: over half the epochs; paper 2: schedule length
/// 20; Gowal et al. and Shi et al.: from 0).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct EpsilonSchedule {
    /// Starting epsilon.
    pub start: f64,
    /// Final epsilon.
    pub end: f64,
    /// Epochs of the ramp (0: constant).
    pub ramp_epochs: usize,
    /// Epochs at epsilon 0 before the ramp.
    #[serde(default)]
    pub warmup_epochs: usize,
    /// Shape of the ramp.
    #[serde(default)]
    pub shape: RampShape,
}

impl EpsilonSchedule {
    /// Constant epsilon.
    pub fn constant(eps: f64) -> Self {
        Self::linear(eps, eps, 0)
    }

    /// A linear ramp from `start` to `end` over `ramp_epochs` epochs, no warm-up.
    pub fn linear(start: f64, end: f64, ramp_epochs: usize) -> Self {
        EpsilonSchedule { start, end, ramp_epochs, warmup_epochs: 0, shape: RampShape::Linear }
    }

    /// Epsilon at `epoch` (0-based) after fraction `frac` ∈ [0, 1) of its batches.
    pub fn at(&self, epoch: usize, frac: f64) -> f64 {
        if epoch < self.warmup_epochs {
            return 0.0;
        }
        if self.ramp_epochs == 0 {
            return self.end;
        }
        let pos = ((epoch - self.warmup_epochs) as f64 + frac) / self.ramp_epochs as f64;
        if pos >= 1.0 {
            self.end
        } else {
            self.start + (self.end - self.start) * self.shape.fraction(pos)
        }
    }

    /// Where the run is in the schedule, `eps / end` ∈ [0, 1] (1 for a zero `end`): the
    /// mixing weights of the certified losses and the regularisers' intensity follow it.
    pub fn progress(&self, eps: f64) -> f64 {
        if self.end > 0.0 {
            (eps / self.end).clamp(0.0, 1.0)
        } else {
            1.0
        }
    }
}

/// A weight that moves from `start` to `end` as epsilon reaches its final value:
/// `start + (end − start) · eps_t / eps` (κ of Gowal et al. and κ, β of Zhang et al. 2020, whose
/// code moves them with epsilon's progress through the ramp).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Mix {
    /// Value at epsilon 0.
    pub start: f64,
    /// Value at the final epsilon.
    pub end: f64,
}

impl Mix {
    /// A constant weight.
    pub fn constant(v: f64) -> Self {
        Mix { start: v, end: v }
    }

    /// The weight at progress `p = eps_t / eps` ∈ [0, 1].
    pub fn at(&self, p: f64) -> f64 {
        self.start + (self.end - self.start) * p.clamp(0.0, 1.0)
    }
}

/// Step learning-rate schedule: the base rate until `after` epochs, then multiplied by `gamma`
/// at the end of every `every` epochs (paper 2: halve every 10 epochs after the epsilon ramp).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct LrSchedule {
    /// Base learning rate.
    pub base: f64,
    /// Epochs before decay starts.
    pub after: usize,
    /// Epochs between decays (0: never decay).
    pub every: usize,
    /// Factor per decay.
    pub gamma: f64,
}

impl LrSchedule {
    /// A constant learning rate.
    pub fn constant(lr: f64) -> Self {
        LrSchedule { base: lr, after: 0, every: 0, gamma: 1.0 }
    }

    /// Learning rate at `epoch` (0-based).
    pub fn at(&self, epoch: usize) -> f64 {
        if self.every == 0 || epoch < self.after {
            return self.base;
        }
        let k = (epoch - self.after) / self.every;
        self.base * self.gamma.powi(k as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn epsilon_ramps_then_stays() {
        let s = EpsilonSchedule::linear(0.01, 0.1, 10);
        assert!((s.at(0, 0.0) - 0.01).abs() < 1e-12);
        assert!((s.at(5, 0.0) - 0.055).abs() < 1e-12);
        assert!((s.at(4, 0.5) - (0.01 + 0.09 * 0.45)).abs() < 1e-12);
        assert_eq!(s.at(10, 0.0), 0.1);
        assert_eq!(s.at(30, 0.7), 0.1);
        assert_eq!(EpsilonSchedule::constant(0.2).at(0, 0.0), 0.2);
    }
    #[test]
    fn lr_halves_after_the_ramp() {
        let s = LrSchedule { base: 1e-3, after: 20, every: 10, gamma: 0.5 };
        assert_eq!(s.at(0), 1e-3);
        assert_eq!(s.at(19), 1e-3);
        assert_eq!(s.at(20), 1e-3);
        assert_eq!(s.at(29), 1e-3);
        assert_eq!(s.at(30), 5e-4);
        assert_eq!(s.at(40), 2.5e-4);
        assert_eq!(LrSchedule::constant(0.1).at(100), 0.1);
    }
}
