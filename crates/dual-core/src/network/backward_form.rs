//! The backward form of the layer-wise bounds (the form CROWN uses) and the dual network's
//! backward pass itself (Theorem 1).
//!
//! For the `K` units of an activation's input, the identity `g = I_K` goes backwards through the
//! transposed layers and the slopes `D`, like `c` in `J(c)`, and every source reduces the
//! coefficients `g` on its own variables to its term for all `K` units at once
//! ([`DualSource::coefficient_terms`]). `P_s` of the forward form is exactly `g` at source `s`,
//! transposed, so both forms give the same numbers up to the order of summation.

use super::chunking::{bytes_per_column, chunk_len, chunks, BACKWARD_CHUNK_BYTES, BYTES_FACTOR};
use super::{numel, NetPrefix};
use crate::{
    layer::{DualNode, Relaxation},
    source::DualSource,
    DualError, Result,
};
use candle_core::{DType, Device, Tensor};
use std::ops::Range;

/// Rows `range` of the identity on the `K` units of an output shaped `shape`, shared by the
/// batch: `[1, len, *shape]`.
fn identity_rows(range: Range<usize>, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
    let k = numel(shape);
    let len = range.len();
    let mut data = vec![0f32; len * k];
    for (j, r) in range.enumerate() {
        data[j * k + r] = 1.0;
    }
    let mut s = vec![1, len];
    s.extend_from_slice(shape);
    Ok(Tensor::from_vec(data, s, device)?.to_dtype(dtype)?)
}

/// The terms of the sources at `positions` (oldest first) for every unit of output `t - 1`, in
/// backward form: `g = I_K` goes back through the transposed layers and the slopes `D`, and
/// each source adds `(min, max)` of `gᵀδ` over its variables ([`DualSource::coefficient_terms`]).
/// Rows go in chunks sized by the memory budget (or [`BACKWARD_CHUNK_BYTES`] without one);
/// returns `([B, K], [B, K])`.
pub(super) fn backward_terms(
    net: &NetPrefix<'_>,
    positions: &[usize],
    t: usize,
    b: usize,
    x: &Tensor,
    memory_budget: Option<usize>,
) -> Result<(Tensor, Tensor)> {
    // Rows of single units on windows where the layers allow it (the same terms).
    if let Some(terms) = super::window_form::window_terms(net, positions, t, x)? {
        return Ok(terms);
    }
    let NetPrefix { nodes, shapes, input, relax } = *net;
    let top = t - 1;
    let shape = &shapes[top];
    let k = numel(shape);
    let lowest = positions[0];
    let widest = shapes[lowest..t].iter().map(|s| numel(s)).max().unwrap_or(1);
    let budget = memory_budget.unwrap_or(BACKWARD_CHUNK_BYTES * BYTES_FACTOR);
    let len = chunk_len(budget, bytes_per_column(b, widest, x.dtype()), k);
    let (mut lows, mut ups) = (Vec::new(), Vec::new());
    for range in chunks(k, len) {
        let len = range.len();
        let mut g: Vec<Option<Tensor>> = (0..=top).map(|_| None).collect();
        g[top] = Some(identity_rows(range, shape, x.dtype(), x.device())?);
        let (mut lo, mut up): (Option<Tensor>, Option<Tensor>) = (None, None);
        let add = |src: &dyn DualSource, gt: &Tensor, lo: &mut Option<Tensor>, up: &mut Option<Tensor>| -> Result<()> {
            let (l, u) = src.coefficient_terms(gt)?;
            accumulate(lo, l)?;
            accumulate(up, u)
        };
        let g0 =
            propagate_back(nodes, relax, g, lowest, |s, _, gs| match relax[s].as_ref().and_then(|r| r.source()) {
                Some(src) if positions.contains(&s) => add(src, gs, &mut lo, &mut up),
                _ => Ok(()),
            })?;
        if let Some(g0) = g0 {
            add(input, &g0, &mut lo, &mut up)?;
        }
        let full = |v: Option<Tensor>| -> Result<Tensor> {
            match v {
                Some(v) => Ok(v.broadcast_as((b, len))?.contiguous()?),
                None => Ok(Tensor::zeros((b, len), x.dtype(), x.device())?),
            }
        };
        lows.push(full(lo)?);
        ups.push(full(up)?);
    }
    let cat = |v: Vec<Tensor>| -> Result<Tensor> {
        if v.len() == 1 {
            Ok(v.into_iter().next().expect("one chunk"))
        } else {
            Ok(Tensor::cat(&v, 1)?)
        }
    };
    Ok((cat(lows)?, cat(ups)?))
}

/// Adds `v` into `slot` (broadcasting: coefficients shared by the batch meet per-example ones).
pub(super) fn accumulate(slot: &mut Option<Tensor>, v: Tensor) -> Result<()> {
    *slot = Some(match slot.take() {
        None => v,
        Some(s) => s.broadcast_add(&v)?,
    });
    Ok(())
}

/// Runs the coefficients `g` (indexed by output, the last one set) backwards through the
/// transposed layers and the relaxations' slopes, down to output `lowest` (Theorem 1's dual
/// network): `visit(t, node, g_t)` sees the coefficients at the output of every node
/// `t = top, …, max(lowest, 1)` before they move on; contributions to outputs below `lowest` are
/// dropped, and an activation at `lowest` is visited but not passed through. Returns the
/// coefficients on the network input when `lowest` is 0.
pub(super) fn propagate_back(
    nodes: &[DualNode],
    relax: &[Option<Box<dyn Relaxation>>],
    mut g: Vec<Option<Tensor>>,
    lowest: usize,
    mut visit: impl FnMut(usize, &DualNode, &Tensor) -> Result<()>,
) -> Result<Option<Tensor>> {
    let top = g.len() - 1;
    for t in (lowest.max(1)..=top).rev() {
        let Some(gt) = g[t].take() else { continue };
        let node = &nodes[t - 1];
        visit(t, node, &gt)?;
        if t == lowest {
            break;
        }
        match node {
            DualNode::Affine(a) => {
                for (i, v) in a.inputs().indices(t).into_iter().zip(a.transpose(&gt)?) {
                    if let (Some(i), Some(v)) = (i, v) {
                        if i >= lowest {
                            accumulate(&mut g[i], v)?;
                        }
                    }
                }
            }
            DualNode::Activation(_) => {
                let r =
                    relax[t].as_ref().ok_or_else(|| DualError::shape(format!("activation {t} has no relaxation")))?;
                accumulate(&mut g[t - 1], r.apply(&gt)?)?;
            }
        }
    }
    Ok(if lowest == 0 { g[0].take() } else { None })
}
