//! The backward form's rows of single units on spatial windows (the exact dual's counterpart of
//! [`crate::bounds::window`]).
//!
//! The identity row `e_j` of a convolution's output unit, pushed back through that convolution,
//! is non-zero on the unit's `k × k` window of the layer below only; the slopes `D` keep it there
//! and each convolution below widens it by its kernel. On the papers' Fashion-MNIST model the
//! whole-image backward form spent two thirds of the exact bound's time transposing the zeros
//! around those windows. Here the rows, shared by the batch after the top layer's transpose,
//! are grouped by the bounding box of their non-zeros, and each group runs on its window: the
//! relaxations through [`crate::Relaxation::apply_window`], their sources through
//! [`crate::DualSource::coefficient_terms_window`], the affine layers through
//! [`crate::DualAffine::transpose_window`] (entries past a grid's edge multiply zero padding and
//! are dropped), the input box by centre and radius. Only zeros are left out: the terms are the
//! whole-image form's up to the order of the sums.

use super::NetPrefix;
use crate::bounds::window::{accumulate, box_terms, chain_applies, clip, input_box, map_threads, Windows};
use crate::{layer::DualNode, Result};
use candle_core::Tensor;

/// Elements of the shared table (rows × their size) above which the path is not tried.
const MAX_TABLE: usize = 1 << 24;

/// The terms `backward_terms` computes for every unit of output `t − 1` (`[B, K]` each), on
/// windows; `None` when the path does not apply (then nothing was computed that matters).
pub(super) fn window_terms(
    net: &NetPrefix<'_>,
    positions: &[usize],
    t: usize,
    x: &Tensor,
) -> Result<Option<(Tensor, Tensor)>> {
    let NetPrefix { nodes, shapes, input, relax } = *net;
    let top = t - 1;
    let lowest = positions[0];
    // Every node up to the top an activation or an affine layer reading the output just below
    // it, the top's own node affine (its transpose makes the shared table).
    if top < 2 || lowest > 0 || !chain_applies(nodes, shapes, input, top) {
        return Ok(None);
    }
    let DualNode::Affine(a) = &nodes[top - 1] else { return Ok(None) };
    let k: usize = shapes[top].iter().product();
    let below: usize = shapes[top - 1].iter().product();
    if k.saturating_mul(below) > MAX_TABLE {
        return Ok(None);
    }
    // The identity rows through the top layer, shared by the batch: `[1, K, C, H, W]`.
    let mut s = vec![1, k];
    s.extend_from_slice(&shapes[top]);
    let eye = Tensor::eye(k, x.dtype(), x.device())?.reshape(s)?;
    let Some(Some(table)) = a.transpose(&eye)?.into_iter().next() else { return Ok(None) };
    let Some(windows) = Windows::group(&table, false)? else { return Ok(None) };
    let Some(bx) = input_box(input, &shapes[0], x) else { return Ok(None) };
    let (m, rad) = bx?;
    // The groups are independent: they run on the threads of the pool's size.
    let run = |group: &crate::bounds::window::Group| -> Result<Option<(Tensor, Tensor)>> {
        let n = group.zero as usize;
        let mut g = group.rows.narrow(1, 0, n)?;
        let mut origin = (group.bbox.y0 as isize, group.bbox.x0 as isize);
        let (mut lo, mut up): (Option<Tensor>, Option<Tensor>) = (None, None);
        let mut add = |l: Tensor, u: Tensor| -> Result<()> {
            accumulate(&mut lo, l)?;
            accumulate(&mut up, u)
        };
        let mut s = top - 1;
        loop {
            let Some((inside, at)) = clip(g, origin, shapes[s][1], shapes[s][2])? else { break };
            if s == 0 {
                let (lin, abs) = box_terms(&inside, at, &m, &rad)?;
                add((&lin - &abs)?, (lin + abs)?)?;
                break;
            }
            match &nodes[s - 1] {
                DualNode::Activation(_) => {
                    let Some(r) = relax[s].as_ref() else { return Ok(None) };
                    if positions.contains(&s) {
                        if let Some(src) = r.source() {
                            let Some(terms) = src.coefficient_terms_window(&inside, at) else { return Ok(None) };
                            let (l, u) = terms?;
                            add(l, u)?;
                        }
                    }
                    let Some(next) = r.apply_window(&inside, at) else { return Ok(None) };
                    g = next?;
                    origin = (at.0 as isize, at.1 as isize);
                }
                DualNode::Affine(a) => {
                    let Some(step) = a.transpose_window(&inside, (at.0 as isize, at.1 as isize)) else {
                        return Ok(None);
                    };
                    let step = step?;
                    g = step.g;
                    origin = step.origin;
                }
            }
            s -= 1;
        }
        let zeros = || Tensor::zeros((1, n), x.dtype(), x.device());
        Ok(Some((lo.map_or_else(zeros, Ok)?, up.map_or_else(zeros, Ok)?)))
    };
    let (mut los, mut ups) = (Vec::new(), Vec::new());
    for part in map_threads(windows.groups.iter().collect(), run)? {
        let Some((lo, up)) = part else { return Ok(None) };
        los.push(lo);
        ups.push(up);
    }
    crate::bounds::window::count_rows(k);
    // Back to the units' order: unit `j` is row `place[j]` of its group.
    let b = x.dim(0)?;
    let mut starts = Vec::with_capacity(windows.groups.len());
    let mut acc = 0u32;
    for gr in &windows.groups {
        starts.push(acc);
        acc += gr.zero;
    }
    let order: Vec<u32> = windows.place.iter().map(|&(g, q)| starts[g as usize] + q).collect();
    let order = Tensor::from_vec(order, k, x.device())?;
    let full = |v: Vec<Tensor>| -> Result<Tensor> {
        let v: Vec<Tensor> = v.iter().map(|t| t.broadcast_as((b, t.dim(1)?))).collect::<candle_core::Result<_>>()?;
        Ok(Tensor::cat(&v, 1)?.index_select(&order, 1)?.contiguous()?)
    };
    Ok(Some((full(los)?, full(ups)?)))
}
