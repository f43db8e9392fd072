//! The papers' schedules for epsilon and the learning rate.

use serde::{Deserialize, Serialize};

/// Epsilon rises linearly from `start` to `end` over the first `ramp_epochs` epochs (per batch),
/// then stays at `end` (paper 1: over half the epochs; paper 2: schedule length 20).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct EpsilonSchedule {
    /// Starting epsilon.
    pub start: f64,
    /// Final epsilon.
    pub end: f64,
    /// Epochs of the ramp (0: constant).
    pub ramp_epochs: usize,
}

impl EpsilonSchedule {
    /// Constant epsilon.
    pub fn constant(eps: f64) -> Self {
        EpsilonSchedule { start: eps, end: eps, ramp_epochs: 0 }
    }

    /// Epsilon at `epoch` (0-based) after fraction `frac` ∈ [0, 1) of its batches.
    pub fn at(&self, epoch: usize, frac: f64) -> f64 {
        if self.ramp_epochs == 0 {
            return self.end;
        }
        let pos = (epoch as f64 + frac) / self.ramp_epochs as f64;
        if pos >= 1.0 {
            self.end
        } else {
            self.start + (self.end - self.start) * pos
        }
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
        let s = EpsilonSchedule { start: 0.01, end: 0.1, ramp_epochs: 10 };
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
