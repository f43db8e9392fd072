//! The batched branch-and-bound loop over input boxes for one clause.
//!
//! Open domains wait in a queue, worst margin first. Each round pops up to `batch` of them,
//! halves each along the feature [`choose_feature`] picks, and bounds all the halves in ONE call
//! of the bound method (the boxes are stacked along the batch dimension). A half is closed when
//! some row's lower bound exceeds its right-hand side ([`proves_above`]); the open halves'
//! centres are checked as counterexamples with the graph's f64 forward pass, and every
//! `pgd_every` rounds PGD runs from the centres of the worst open boxes. The answer:
//! * `Unsat` when the queue empties: the closed boxes cover the clause's box (halves share their
//!   midpoint), and each is unreachable by a sound bound;
//! * `Sat` only with a point that [`crate::check_counterexample`] confirms (with `sound`,
//!   [`crate::confirm_counterexample`]);
//! * `Timeout` at the deadline, `Unknown` when a box cannot be halved in f64 any more.
//!
//! Near the deadline a round takes only the domains that fit the time left
//! ([`super::clock::RoundClock`]), so a run ends close to its deadline.

use super::clock::RoundClock;
use super::domain::{keep_larger, margin, Domain, DomainQueue};
use super::input_split::{choose_feature, halve};
use crate::answer::Answer;
use crate::bounds::{BoundMethod, InputBox};
use crate::dense_dual::DenseChain;
use crate::driver::{confirm, proves_above, ClauseWork};
use crate::falsify::{pgd_from, PgdConfig, Target};
use nets::Network;
use onnx_import::Model;
use std::time::{Duration, Instant};
use vnnlib::Property;

/// Settings of branch and bound.
#[derive(Debug, Clone)]
pub struct BabOptions {
    /// Domains split per round (each gives two boxes to bound).
    pub batch: usize,
    /// Score features by the bound's sensitivity (one backward pass more per round) instead of
    /// by relative width alone.
    pub smart: bool,
    /// Rounds between PGD runs from the centres of the worst open boxes (0: never).
    pub pgd_every: usize,
    /// Largest share of the run's time PGD may take: a PGD run is skipped while the runs so far
    /// took more (with fast bounds a round is a few milliseconds and PGD's 32 starts of 60 steps
    /// as long as several rounds).
    pub pgd_share: f64,
    /// PGD's first step there, as a fraction of the clause box's width.
    pub pgd_step_fraction: f64,
    /// Print a progress line this often (`None`: silent).
    pub progress: Option<Duration>,
    /// ReLU splitting on inputs too large for input splitting.
    pub relu_split: bool,
    /// Domains split per round of ReLU splitting.
    pub relu_batch: usize,
    /// ReLU splitting: the open clauses over one box share one tree (a domain closes when
    /// every clause is proved on it) instead of one tree per clause in turn. Off by default:
    /// on mnistfc at a 15 s cap one tree per clause solved 2 of 6 hard instances, one tree 1
    /// (every domain then carries every clause's rows, most of them easy ones).
    pub relu_one_tree: bool,
    /// β-CROWN's settings for ReLU splitting.
    pub beta: super::beta::BetaOptions,
}

impl Default for BabOptions {
    fn default() -> Self {
        BabOptions {
            batch: 128,
            smart: true,
            pgd_every: 5,
            pgd_share: 0.1,
            pgd_step_fraction: 0.02,
            progress: None,
            relu_split: true,
            relu_batch: 64,
            relu_one_tree: false,
            beta: super::beta::BetaOptions::default(),
        }
    }
}

/// What one run of branch and bound did.
#[derive(Debug, Clone, Default)]
pub struct BabStats {
    /// Rounds (batched bound calls).
    pub rounds: usize,
    /// Boxes bounded.
    pub bounded: usize,
    /// Boxes proved unreachable.
    pub proved: usize,
    /// Open boxes left.
    pub open: usize,
}

/// The clause a run works on, and what it may use.
pub struct InputBab<'a> {
    /// The network's graph (for f64 checks).
    pub model: &'a Model,
    /// The property (for f64 checks).
    pub prop: &'a Property,
    /// The lowered network (for bounds and PGD).
    pub net: &'a Network,
    /// The bound method.
    pub method: &'a dyn BoundMethod,
    /// Settings.
    pub opts: &'a BabOptions,
    /// PGD settings.
    pub pgd: &'a PgdConfig,
    /// `--sound`: counterexamples must be confirmed in f64 and f32 ([`crate::confirm_counterexample`]).
    pub sound: bool,
}

/// A box's lower bounds per row and its sensitivities.
type Bounded = (Vec<f64>, Option<Vec<f64>>);

fn is_proved(lb: &[f64], rhs: &[f64]) -> bool {
    lb.iter().zip(rhs).any(|(l, r)| proves_above(*l, *r))
}

impl InputBab<'_> {
    /// Bounds `boxes`; returns `(lb, sensitivity)` per box.
    fn bound(&self, w: &ClauseWork, boxes: &[InputBox]) -> Result<Vec<Bounded>, String> {
        let (lbs, sens) = if self.opts.smart {
            self.method.lower_bounds_sensitivity(self.net, boxes, &w.bound_rows, &w.bound_rhs)?
        } else {
            (self.method.lower_bounds(self.net, boxes, &w.bound_rows)?, None)
        };
        if lbs.len() != boxes.len() {
            return Err(format!("the bound method gave {} results for {} boxes", lbs.len(), boxes.len()));
        }
        let sens: Vec<Option<Vec<f64>>> = match sens {
            Some(s) if s.len() == boxes.len() => s.into_iter().map(Some).collect(),
            _ => vec![None; boxes.len()],
        };
        Ok(lbs.into_iter().zip(sens).collect())
    }

    /// PGD over the clause's box from the centres of the worst open domains, with short steps
    /// (a fraction of the clause's box) so each start searches near its domain.
    fn pgd_from_worst(&self, w: &ClauseWork, queue: &mut DomainQueue, deadline: Instant) -> Option<Answer> {
        let worst = queue.pop_worst(self.pgd.starts.max(1));
        let starts: Vec<Vec<f64>> =
            worst.iter().map(|d| d.lo.iter().zip(&d.hi).map(|(l, h)| 0.5 * (l + h)).collect()).collect();
        for d in worst {
            queue.push(d);
        }
        let cfg = PgdConfig { step_fraction: self.opts.pgd_step_fraction, ..self.pgd.clone() };
        let t = Target { lo: &w.lo, hi: &w.hi, rows: &w.rows, rhs: &w.rhs };
        let cands = pgd_from(self.net, &t, starts, &cfg, deadline).unwrap_or_default();
        cands.iter().find_map(|x| confirm(self.model, Some(self.net), self.prop, x, &w.lo, &w.hi, self.sound))
    }

    /// Branch and bound on the clause `w` over `[lo, hi]` (its box) until `deadline`.
    ///
    /// `carry`: the open domains an earlier stage left on this clause (they cover what it did
    /// not prove; their bounds hold and children keep the larger per row), or `None` to start
    /// from the clause's box. On a timeout the open domains are left there for the next stage.
    pub(crate) fn run(
        &self,
        w: &ClauseWork,
        deadline: Instant,
        stats: &mut BabStats,
        carry: &mut Option<DomainQueue>,
    ) -> Answer {
        if w.bound_rows.is_empty() {
            return Answer::Unknown;
        }
        let start = Instant::now();
        let root_width: Vec<f64> = w.lo.iter().zip(&w.hi).map(|(l, h)| h - l).collect();
        let mut queue = match carry.take() {
            Some(q) if !q.is_empty() => q,
            _ => {
                let root = match self.bound(w, &[(w.lo.clone(), w.hi.clone())]) {
                    Ok(mut r) => r.remove(0),
                    Err(e) => return Answer::Error(format!("bound ({}): {e}", self.method.name())),
                };
                stats.bounded += 1;
                if is_proved(&root.0, &w.bound_rhs) {
                    stats.proved += 1;
                    return Answer::Unsat;
                }
                let mut queue = DomainQueue::new();
                let m = margin(&root.0, &w.bound_rhs);
                queue.push(Domain {
                    lo: w.lo.clone(),
                    hi: w.hi.clone(),
                    lb: root.0,
                    margin: m,
                    sens: root.1,
                    depth: 0,
                });
                queue
            }
        };
        let mut last_print = Instant::now();
        let mut clock = RoundClock::new();
        let chain = DenseChain::from_network(self.net);
        let mut pgd_time = Duration::ZERO;
        while !queue.is_empty() {
            if Instant::now() > deadline {
                stats.open = queue.len();
                *carry = Some(queue);
                return Answer::Timeout;
            }
            stats.rounds += 1;
            // A full batch when time allows; near the deadline only what fits the time left.
            let parents = queue.pop_worst(clock.fit(self.opts.batch, deadline));
            let mut boxes: Vec<InputBox> = Vec::with_capacity(2 * parents.len());
            for p in &parents {
                let Some(i) = choose_feature(&p.lo, &p.hi, &root_width, p.sens.as_deref()) else {
                    stats.open = queue.len() + parents.len();
                    return Answer::Unknown;
                };
                boxes.extend(halve(&p.lo, &p.hi, i));
            }
            let t0 = Instant::now();
            let bounds = match self.bound(w, &boxes) {
                Ok(b) => b,
                Err(e) => return Answer::Error(format!("bound ({}): {e}", self.method.name())),
            };
            clock.record(parents.len(), t0.elapsed());
            stats.bounded += boxes.len();
            for (k, ((lo, hi), (lb, sens))) in boxes.into_iter().zip(bounds).enumerate() {
                let parent = &parents[k / 2];
                // The parent's bounds hold on the child (a sub-box): keep the larger per row.
                let lb = keep_larger(&lb, &parent.lb);
                if is_proved(&lb, &w.bound_rhs) {
                    stats.proved += 1;
                    continue;
                }
                let centre: Vec<f64> = lo.iter().zip(&hi).map(|(l, h)| 0.5 * (l + h)).collect();
                // The dense chain's own f64 pass screens the centre; the graph confirms a hit.
                let hit = chain.as_ref().is_none_or(|c| c.may_violate(self.prop, &centre));
                if hit {
                    if let Some(a) = confirm(self.model, Some(self.net), self.prop, &centre, &w.lo, &w.hi, self.sound) {
                        return a;
                    }
                }
                let m = margin(&lb, &w.bound_rhs);
                queue.push(Domain { lo, hi, lb, margin: m, sens, depth: parent.depth + 1 });
            }
            let pgd_due = self.opts.pgd_every > 0 && stats.rounds.is_multiple_of(self.opts.pgd_every);
            if pgd_due
                && !w.rows.is_empty()
                && pgd_time.as_secs_f64() <= self.opts.pgd_share * start.elapsed().as_secs_f64()
            {
                let t = Instant::now();
                let found = self.pgd_from_worst(w, &mut queue, deadline);
                pgd_time += t.elapsed();
                if let Some(a) = found {
                    return a;
                }
            }
            if let Some(every) = self.opts.progress {
                if last_print.elapsed() >= every {
                    last_print = Instant::now();
                    eprintln!(
                        "  bab {:.1} s: {} open, {} proved, {} bounded, worst margin {:.4e}",
                        start.elapsed().as_secs_f64(),
                        queue.len(),
                        stats.proved,
                        stats.bounded,
                        queue.peek_worst().map_or(f64::NAN, |d| d.margin)
                    );
                }
            }
        }
        Answer::Unsat
    }
}
