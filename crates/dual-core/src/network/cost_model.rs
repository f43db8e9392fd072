//! Which form computes each activation's bounds: a count of multiply-adds per form
//! ([`crate::DualAffine::macs_per_column`]); both forms give the same numbers.

use super::{numel, source_at, BoundForm, NetPrefix};
use crate::layer::DualNode;

/// Multiply-adds per column of node `t` (1-based) of the network.
fn node_cost(nodes: &[DualNode], shapes: &[Vec<usize>], t: usize) -> usize {
    let out = numel(&shapes[t]);
    match &nodes[t - 1] {
        DualNode::Affine(a) => {
            let ins: Vec<Option<usize>> = a.inputs().indices(t).iter().map(|i| i.map(|i| numel(&shapes[i]))).collect();
            a.macs_per_column(&ins, out)
        }
        DualNode::Activation(_) => out,
    }
}

/// The sources before one activation, split by the form that computes their terms.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct FormChoice {
    /// Sources whose terms come from the backward form (oldest first).
    pub(super) backward: Vec<usize>,
    /// Sources whose columns are pushed forward.
    pub(super) forward: Vec<usize>,
}

/// Splits the sources before activation `t` (whose input has `k` units) into those computed in
/// backward form and those pushed forward, for a batch of `b`.
///
/// Cost in multiply-adds, `path(a, z)` being the cost per column of nodes `a+1 ..= z`:
/// forward `Σ_s columns_s · (b · path(start_s, t-1) + shared_s)`, where a shared source (the
/// input's identity) goes through the nodes before the first activation once for the batch
/// (`shared_s = path(pos_s, start_s)`, `start_s` that activation's input); backward
/// `K · (b · path(lowest, a) + path(a, t-1))`, `a` the last activation before `t`: the rows are
/// shared by the batch until they meet its slopes. With a batch of one nothing is amortised,
/// so small batches go forward more often. Sources whose term is an estimate from pushed
/// columns (random projections) always go forward.
pub(super) fn choose_forms(
    net: &NetPrefix<'_>,
    sources: &[usize],
    t: usize,
    k: usize,
    b: usize,
    form: BoundForm,
) -> FormChoice {
    let NetPrefix { nodes, shapes, input, relax } = *net;
    let exact = |pos: &usize| source_at(input, relax, *pos).exact_from_coefficients();
    let (eligible, rest): (Vec<usize>, Vec<usize>) = match form {
        BoundForm::Forward => (Vec::new(), sources.to_vec()),
        _ => sources.iter().partition(|p| exact(p)),
    };
    if eligible.is_empty() || form == BoundForm::Backward {
        return FormChoice { backward: eligible, forward: rest };
    }
    let is_act = |t: usize| matches!(nodes[t - 1], DualNode::Activation(_));
    let path = |from: usize, to: usize| -> usize { (from + 1..=to).map(|i| node_cost(nodes, shapes, i)).sum() };
    let forward: usize = eligible
        .iter()
        .map(|&pos| {
            let cols = source_at(input, relax, pos).num_columns();
            let start = if pos == 0 { (1..t).find(|&i| is_act(i)).map(|i| i - 1).unwrap_or(t - 1) } else { pos };
            cols.saturating_mul(b.saturating_mul(path(start, t - 1)).saturating_add(path(pos, start)))
        })
        .fold(0usize, |a, c| a.saturating_add(c));
    let lowest = eligible[0];
    let last_act = (lowest + 1..t).rev().find(|&i| is_act(i));
    let backward = match last_act {
        Some(a) => k.saturating_mul(b.saturating_mul(path(lowest, a)).saturating_add(path(a, t - 1))),
        None => k.saturating_mul(path(lowest, t - 1)),
    };
    if backward < forward {
        FormChoice { backward: eligible, forward: rest }
    } else {
        FormChoice { backward: Vec::new(), forward: sources.to_vec() }
    }
}
