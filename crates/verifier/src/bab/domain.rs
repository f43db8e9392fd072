//! Sub-domains of branch and bound and the queue that orders them.
//!
//! A domain is a box `[lo, hi]` inside the clause's box with the lower bounds `lb_k` of the
//! clause's rows over it. Its margin is `max_k (lb_k − r_k)`: the clause is unreachable on the
//! box when some row has `lb_k > r_k`, so a domain stays open while its margin is ≤ 0, and the
//! lowest margin is the worst. Since a child box lies inside its parent, the parent's bounds hold
//! on the child too and the child keeps the larger of the two per row.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// One open sub-domain.
#[derive(Debug, Clone)]
pub struct Domain {
    /// Lower corner.
    pub lo: Vec<f64>,
    /// Upper corner.
    pub hi: Vec<f64>,
    /// Lower bounds of the clause's rows over the box.
    pub lb: Vec<f64>,
    /// `max_k (lb_k − r_k)`.
    pub margin: f64,
    /// Sensitivity of the bound to each input's radius (see `BoundMethod::lower_bounds_sensitivity`).
    pub sens: Option<Vec<f64>>,
    /// Splits from the root.
    pub depth: usize,
}

/// A sub-domain's bounds per row: its own or its parent's, whichever is larger (the parent's
/// hold on the child's set; a NaN on one side yields the other, as `f64::max` does).
pub fn keep_larger(child: &[f64], parent: &[f64]) -> Vec<f64> {
    child.iter().zip(parent).map(|(c, p)| c.max(*p)).collect()
}

/// `max_k (lb_k − r_k)` (−∞ without rows, and NaN bounds count as −∞).
pub fn margin(lb: &[f64], rhs: &[f64]) -> f64 {
    lb.iter()
        .zip(rhs)
        .map(|(l, r)| if l.is_nan() { f64::NEG_INFINITY } else { l - r })
        .fold(f64::NEG_INFINITY, f64::max)
}

struct Entry(Domain);

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    /// Reversed, so the max-heap pops the lowest margin first.
    fn cmp(&self, o: &Self) -> Ordering {
        o.0.margin.total_cmp(&self.0.margin)
    }
}

/// Open domains, worst (lowest margin) first.
#[derive(Default)]
pub struct DomainQueue {
    heap: BinaryHeap<Entry>,
}

impl DomainQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a domain.
    pub fn push(&mut self, d: Domain) {
        self.heap.push(Entry(d));
    }

    /// Removes up to `n` of the worst domains.
    pub fn pop_worst(&mut self, n: usize) -> Vec<Domain> {
        std::iter::from_fn(|| self.heap.pop().map(|e| e.0)).take(n).collect()
    }

    /// The worst domain.
    pub fn peek_worst(&self) -> Option<&Domain> {
        self.heap.peek().map(|e| &e.0)
    }

    /// Open domains.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// No open domain.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}
