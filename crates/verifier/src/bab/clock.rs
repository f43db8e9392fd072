//! Rounds that fit the time left: how many domains the next batched bound call may take so it
//! ends by the deadline.
//!
//! The cost of a domain is the running mean `c` of the seconds per domain of the calls so far
//! (an exponential mean with weight 1/2 on the newest call, so it follows a batch that grows
//! costlier as the domains deepen). With `T` seconds left, the next call takes
//! `n = clamp(⌊T / c⌋, 1, max)` domains: a round of `n` domains then ends near the deadline at
//! the latest, instead of a full batch running seconds past it. The bound calls also check the
//! clock between their own steps, so even one slow domain stops at the deadline.

use std::time::{Duration, Instant};

/// The running cost per domain of the batched bound calls.
#[derive(Debug, Clone, Default)]
pub struct RoundClock {
    per_domain: Option<f64>,
}

impl RoundClock {
    /// No call measured yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a call that bounded `domains` domains in `took`.
    pub fn record(&mut self, domains: usize, took: Duration) {
        if domains == 0 {
            return;
        }
        let c = took.as_secs_f64() / domains as f64;
        self.per_domain = Some(match self.per_domain {
            Some(p) => 0.5 * (p + c),
            None => c,
        });
    }

    /// Domains the next call may take (at most `max`, at least 1) to end by `deadline`.
    pub fn fit(&self, max: usize, deadline: Instant) -> usize {
        let max = max.max(1);
        let Some(c) = self.per_domain.filter(|c| *c > 0.0) else { return max };
        let left = deadline.saturating_duration_since(Instant::now()).as_secs_f64();
        let n = (left / c).floor();
        if n >= max as f64 {
            max
        } else {
            (n as usize).max(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_the_time_left() {
        let mut c = RoundClock::new();
        let far = Instant::now() + Duration::from_secs(100);
        assert_eq!(c.fit(64, far), 64, "unmeasured: the full batch");
        c.record(10, Duration::from_secs(10));
        assert!((c.per_domain.unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(c.fit(64, far), 64);
        let near = Instant::now() + Duration::from_millis(5500);
        assert!((4..=5).contains(&c.fit(64, near)));
        assert_eq!(c.fit(64, Instant::now()), 1, "always at least one");
        c.record(1, Duration::from_secs(3));
        assert!((c.per_domain.unwrap() - 2.0).abs() < 1e-12);
    }
}
