//! The forward form of the layer-wise bounds (Algorithm 1 as written): every source puts a basis
//! of its free variables — its columns — at its own output and pushes them forward through the
//! affine layers and the relaxation slopes `D`; at an activation's input the propagated columns
//! `P_s` give every unit's term of the source at once ([`DualSource::column_terms`]). The nominal
//! input goes the same way (one column, with biases): [`ColumnBlock::nominal`].

use super::chunking::{bytes_per_column, chunk_len, chunks};
use super::{numel, source_at, NetPrefix};
use crate::{
    layer::{DualNode, Relaxation},
    source::DualSource,
    DualError, Result,
};
use candle_core::{DType, Tensor};
use std::collections::BTreeMap;
use std::ops::Range;

/// Columns `range` of the source at output `pos`, carried forward: `states` holds the outputs
/// (`[B or 1, len, *shape]`) still needed, keyed by output index; `at` is the last output reached.
pub(super) struct ColumnBlock {
    pos: usize,
    range: Range<usize>,
    at: usize,
    with_bias: bool,
    states: BTreeMap<usize, Tensor>,
}

impl ColumnBlock {
    fn new(pos: usize, range: Range<usize>, cols: Tensor, with_bias: bool) -> Self {
        let mut states = BTreeMap::new();
        states.insert(pos, cols);
        ColumnBlock { pos, range, at: pos, with_bias, states }
    }

    /// The nominal pass: the inputs `x` (`[B, *in_shape]`) as one column per example, with
    /// biases and the ReLUs replaced by their slopes `D` (the `ẑ(x)` of the bounds).
    pub(super) fn nominal(x: &Tensor) -> Result<Self> {
        Ok(ColumnBlock::new(0, 0..1, x.unsqueeze(1)?, true))
    }

    /// The block's state at output `t`, which it must have reached and still hold.
    pub(super) fn output(&self, t: usize) -> &Tensor {
        self.states.get(&t).expect("a block holds the output it was advanced to")
    }
}

/// Pushes column blocks through the network, keeping only the outputs a later node reads.
pub(super) struct ForwardPass<'a> {
    nodes: &'a [DualNode],
    /// `last_use[i]`: the last node that reads output `i`.
    last_use: Vec<usize>,
}

impl<'a> ForwardPass<'a> {
    pub(super) fn new(nodes: &'a [DualNode]) -> Self {
        let mut last_use = vec![0usize; nodes.len() + 1];
        for (k, node) in nodes.iter().enumerate() {
            let t = k + 1;
            for i in node.inputs().indices(t).into_iter().flatten() {
                last_use[i] = last_use[i].max(t);
            }
        }
        ForwardPass { nodes, last_use }
    }

    /// Pushes the block forward to output `to`, keeping only outputs read later.
    pub(super) fn advance(
        &self,
        block: &mut ColumnBlock,
        to: usize,
        relax: &[Option<Box<dyn Relaxation>>],
    ) -> Result<()> {
        while block.at < to {
            let t = block.at + 1;
            let node = &self.nodes[t - 1];
            let out = match node {
                DualNode::Affine(a) => {
                    let idx = a.inputs().indices(t);
                    let xs: Vec<Option<&Tensor>> = idx.iter().map(|i| i.and_then(|i| block.states.get(&i))).collect();
                    a.forward(&xs, block.with_bias)?
                }
                DualNode::Activation(_) => {
                    let r = relax[t].as_ref().ok_or_else(|| {
                        DualError::shape(format!("activation {t} used before its bounds were computed"))
                    })?;
                    match block.states.get(&(t - 1)) {
                        Some(x) => Some(r.apply(x)?),
                        None => None,
                    }
                }
            };
            if let Some(out) = out {
                block.states.insert(t, out);
            }
            block.at = t;
            let last_use = &self.last_use;
            block.states.retain(|&i, _| i == t || last_use[i] > t);
        }
        Ok(())
    }
}

/// Without a memory budget, every source's columns are pushed once, as one block kept from
/// activation to activation (made on first use).
#[derive(Default)]
pub(super) struct PersistentColumns {
    blocks: Vec<ColumnBlock>,
}

impl PersistentColumns {
    fn block_for(&mut self, pos: usize, src: &dyn DualSource, ncols: usize) -> Result<&mut ColumnBlock> {
        let i = match self.blocks.iter().position(|bl| bl.pos == pos) {
            Some(i) => i,
            None => {
                self.blocks.push(ColumnBlock::new(pos, 0..ncols, src.columns(0..ncols)?, false));
                self.blocks.len() - 1
            }
        };
        Ok(&mut self.blocks[i])
    }
}

/// The sum of a source's partial terms over its column ranges.
struct TermSum<'s> {
    src: &'s dyn DualSource,
    k: usize,
    acc: Option<(Tensor, Tensor)>,
}

impl TermSum<'_> {
    /// Adds the terms of the propagated columns `p` (`[B or 1, range.len(), *shape]`, `K` units).
    fn add(&mut self, p: &Tensor, range: Range<usize>) -> Result<()> {
        let k = self.k;
        // Shared columns (batch 1) stay shared until a per-example layer.
        let pb = p.dim(0)?;
        // (A reshape that changes nothing is skipped: it would only add a node to the backward
        // pass.)
        let p = if p.dims() == [pb, range.len(), k] { p.clone() } else { p.reshape((pb, range.len(), k))? };
        let (l, u) = self.src.column_terms(&p, range)?;
        self.acc = Some(match self.acc.take() {
            None => (l, u),
            Some((al, au)) => (al.broadcast_add(&l)?, au.broadcast_add(&u)?),
        });
        Ok(())
    }

    fn finish(self) -> Result<Option<(Tensor, Tensor)>> {
        match self.acc {
            Some((l, u)) => Ok(Some(self.src.finish_terms(l, u)?)),
            None => Ok(None),
        }
    }
}

/// The term of the source at output `pos` for every one of the `k` units of output `t - 1`, in
/// forward form: `(lower, upper)`, each `[B, K]` or `[1, K]`; `None` for a source without
/// columns. Without a budget the source's persistent block moves on to `t - 1`; with one, the
/// columns go in chunks made afresh ([`super::chunking`]).
#[allow(clippy::too_many_arguments)]
pub(super) fn source_terms(
    net: &NetPrefix<'_>,
    pass: &ForwardPass<'_>,
    persistent: &mut PersistentColumns,
    pos: usize,
    t: usize,
    k: usize,
    batch: usize,
    dtype: DType,
    memory_budget: Option<usize>,
) -> Result<Option<(Tensor, Tensor)>> {
    let src = source_at(net.input, net.relax, pos);
    let ncols = src.num_columns();
    if ncols == 0 {
        return Ok(None);
    }
    let mut sum = TermSum { src, k, acc: None };
    match memory_budget {
        None => {
            let blk = persistent.block_for(pos, src, ncols)?;
            pass.advance(blk, t - 1, net.relax)?;
            sum.add(blk.output(t - 1), blk.range.clone())?;
        }
        Some(budget) => {
            let widest = net.shapes[pos..t].iter().map(|s| numel(s)).max().unwrap_or(1);
            let len = chunk_len(budget, bytes_per_column(batch, widest, dtype), ncols);
            for range in chunks(ncols, len) {
                let mut blk = ColumnBlock::new(pos, range.clone(), src.columns(range)?, false);
                pass.advance(&mut blk, t - 1, net.relax)?;
                sum.add(blk.output(t - 1), blk.range.clone())?;
            }
        }
    }
    sum.finish()
}
