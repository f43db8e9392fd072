//! The dual network: layer-wise bounds (Algorithm 1) and the objective J(c) (Theorem 1).
//!
//! Bounds are computed in *forward* form: every source (the input set, the unstable units of
//! every relaxed ReLU) puts a basis of its free variables — its columns — at its own output and
//! pushes them forward through the affine layers and the relaxation slopes `D`. At a ReLU input
//! with `K` units, the propagated columns `P` of each source give, for every unit `j` at once,
//! the source's term of `J(±e_j)`, and the nominal input pushed the same way (with biases, ReLUs
//! replaced by `D`) gives the rest:
//!
//! `l_j = ẑ_j(x) + Σ_s lower_s(P_s[:, j])`, `u_j = ẑ_j(x) + Σ_s upper_s(P_s[:, j])`.
//!
//! The objective J(c) for a given `c` runs the dual network itself: `c` goes backwards through
//! the transposed layers, and every node adds its term (bias, source) on the way (Theorem 1).
//!
//! With a memory budget the columns of each source are pushed in chunks, recomputed from the
//! source for every ReLU, so memory stays bounded at the price of repeated work; the numbers are
//! the same up to the order of summation.

use crate::{
    layer::{DualNode, Relaxation},
    source::DualSource,
    DualError, Result,
};
use candle_core::{DType, Tensor};
use std::collections::BTreeMap;
use std::ops::Range;

/// How the dual network is built.
#[derive(Debug, Clone, Default)]
pub struct DualOptions {
    /// Upper limit, in bytes, for the propagated columns held at once. `None`: push every column
    /// of every source at once (fastest). With a budget, columns go in chunks sized to fit.
    pub memory_budget: Option<usize>,
}

/// Pre-activation bounds of one activation layer.
#[derive(Debug, Clone)]
pub struct LayerBounds {
    /// Index of the activation's output (1-based layer index in the network).
    pub layer: usize,
    /// Lower bounds `l`, `[B, *shape]`.
    pub lower: Tensor,
    /// Upper bounds `u`, `[B, *shape]`.
    pub upper: Tensor,
}

/// A dual network for a batch of inputs: the relaxations chosen at every activation and what is
/// needed to evaluate the objective J(c).
pub struct DualNetwork {
    nodes: Vec<DualNode>,
    x: Tensor,
    input: Box<dyn DualSource>,
    relaxations: Vec<Option<Box<dyn Relaxation>>>,
    bounds: Vec<LayerBounds>,
    shapes: Vec<Vec<usize>>,
}

/// Columns `range` of the source at output `pos`, carried forward; `states` holds the outputs
/// still needed, keyed by output index.
struct Block {
    pos: usize,
    range: Range<usize>,
    at: usize,
    with_bias: bool,
    states: BTreeMap<usize, Tensor>,
}

impl Block {
    fn new(pos: usize, range: Range<usize>, cols: Tensor, with_bias: bool) -> Self {
        let mut states = BTreeMap::new();
        states.insert(pos, cols);
        Block { pos, range, at: pos, with_bias, states }
    }
}

struct Plan<'a> {
    nodes: &'a [DualNode],
    last_use: Vec<usize>,
}

impl Plan<'_> {
    /// Pushes the block forward to output `to`, keeping only outputs read later.
    fn advance(&self, block: &mut Block, to: usize, relax: &[Option<Box<dyn Relaxation>>]) -> Result<()> {
        while block.at < to {
            let t = block.at + 1;
            let node = &self.nodes[t - 1];
            let out = match node {
                DualNode::Affine(a) => {
                    let idx = a.inputs().indices(t);
                    let xs: Vec<Option<&Tensor>> = idx
                        .iter()
                        .map(|i| i.and_then(|i| block.states.get(&i)))
                        .collect();
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

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl DualNetwork {
    /// Builds the dual network for inputs `x` (`[B, *in_shape]`) in the input set `input`
    /// (Algorithm 1): walks the layers, computes the bounds of every activation's input from the
    /// sources before it, and relaxes the activation with them.
    pub fn build(x: &Tensor, input: Box<dyn DualSource>, nodes: Vec<DualNode>, opts: &DualOptions) -> Result<Self> {
        if nodes.is_empty() {
            return Err(DualError::invalid("the network has no layers"));
        }
        let n = nodes.len();
        // last_use[i]: the last node that reads output i.
        let mut last_use = vec![0usize; n + 1];
        for (k, node) in nodes.iter().enumerate() {
            let t = k + 1;
            for i in node.inputs().indices(t).into_iter().flatten() {
                last_use[i] = last_use[i].max(t);
            }
        }
        let last_act = nodes
            .iter()
            .rposition(|nd| matches!(nd, DualNode::Activation(_)))
            .map(|k| k + 1)
            .unwrap_or(0);
        let b = x.dim(0)?;
        let mut relaxations: Vec<Option<Box<dyn Relaxation>>> = (0..=n).map(|_| None).collect();
        let mut bounds = Vec::new();
        let mut shapes: Vec<Vec<usize>> = vec![x.dims()[1..].to_vec()];
        let plan = Plan { nodes: &nodes, last_use };
        let mut center = Block::new(0, 0..1, x.unsqueeze(1)?, true);
        // Full mode: one persistent block per source.
        let mut blocks: Vec<Block> = Vec::new();
        if opts.memory_budget.is_none() && input.num_columns() > 0 {
            blocks.push(Block::new(0, 0..input.num_columns(), input.columns(0..input.num_columns())?, false));
        }
        for t in 1..=n {
            if let DualNode::Activation(act) = &nodes[t - 1] {
                plan.advance(&mut center, t - 1, &relaxations)?;
                let c = center.states.get(&(t - 1)).expect("center holds its latest output");
                let shape = c.dims()[2..].to_vec();
                let k = numel(&shape);
                let c = c.reshape((b, k))?;
                let (mut lo, mut up) = (c.clone(), c);
                let sources = source_positions(&relaxations, t);
                for pos in sources {
                    let src = source_at(input.as_ref(), &relaxations, pos);
                    let ncols = src.num_columns();
                    if ncols == 0 {
                        continue;
                    }
                    let mut acc: Option<(Tensor, Tensor)> = None;
                    let mut add = |p: &Tensor, range: Range<usize>| -> Result<()> {
                        // Shared columns (batch 1) stay shared until a per-example layer.
                        let pb = p.dim(0)?;
                        let p = p.reshape((pb, range.len(), k))?;
                        let (l, u) = src.column_terms(&p, range)?;
                        acc = Some(match acc.take() {
                            None => (l, u),
                            Some((al, au)) => (al.broadcast_add(&l)?, au.broadcast_add(&u)?),
                        });
                        Ok(())
                    };
                    match opts.memory_budget {
                        None => {
                            let blk = blocks.iter_mut().find(|bl| bl.pos == pos).expect("one block per source");
                            plan.advance(blk, t - 1, &relaxations)?;
                            add(&blk.states[&(t - 1)], blk.range.clone())?;
                        }
                        Some(budget) => {
                            let widest = shapes[pos..t].iter().map(|s| numel(s)).max().unwrap_or(1);
                            let per_col = b * widest * x.dtype().size_in_bytes() * BYTES_FACTOR;
                            let chunk = (budget / per_col.max(1)).clamp(1, ncols);
                            let mut start = 0;
                            while start < ncols {
                                let range = start..(start + chunk).min(ncols);
                                let mut blk = Block::new(pos, range.clone(), src.columns(range)?, false);
                                plan.advance(&mut blk, t - 1, &relaxations)?;
                                add(&blk.states[&(t - 1)], blk.range.clone())?;
                                start += chunk;
                            }
                        }
                    }
                    if let Some((al, au)) = acc {
                        let (l, u) = src.finish_terms(al, au)?;
                        lo = lo.broadcast_add(&l)?;
                        up = up.broadcast_add(&u)?;
                    }
                }
                let mut full_shape = vec![b];
                full_shape.extend_from_slice(&shape);
                let lo = lo.reshape(full_shape.clone())?;
                let up = up.reshape(full_shape)?;
                let relax = act.relax(&lo, &up)?;
                bounds.push(LayerBounds { layer: t, lower: lo, upper: up });
                relaxations[t] = Some(relax);
                if opts.memory_budget.is_none() {
                    if let Some(src) = relaxations[t].as_ref().and_then(|r| r.source()) {
                        let m = src.num_columns();
                        if m > 0 && t < last_act {
                            blocks.push(Block::new(t, 0..m, src.columns(0..m)?, false));
                        }
                    }
                }
            }
            if t <= last_act || t == n {
                plan.advance(&mut center, t, &relaxations)?;
                let c = &center.states[&t];
                shapes.push(c.dims()[2..].to_vec());
            } else {
                shapes.push(Vec::new());
            }
        }
        let _ = last_act;
        Ok(DualNetwork { nodes, x: x.clone(), input, relaxations, bounds, shapes })
    }

    /// Pre-activation bounds of every activation, in network order.
    pub fn bounds(&self) -> &[LayerBounds] {
        &self.bounds
    }

    /// Number of unstable units of every activation, per example.
    pub fn unstable_counts(&self) -> Vec<Vec<usize>> {
        self.relaxations.iter().flatten().map(|r| r.unstable_counts()).collect()
    }

    /// Shape of the network output, without the batch dimension.
    pub fn output_shape(&self) -> &[usize] {
        self.shapes.last().expect("at least one layer")
    }

    /// Batch size.
    pub fn batch_size(&self) -> usize {
        self.x.dims()[0]
    }

    /// The objective `J(c)` of Theorem 1: a lower bound of `cᵀ f(x')` over the input set, for
    /// `c` shaped `[B, n, *out_shape]` (n objectives per example); returns `[B, n]`.
    ///
    /// `J(c) = -Σ_i ν_{i+1}ᵀ b_i - xᵀ ν̂_1 - ε‖ν̂_1‖₁ + Σ_i Σ_{j∈I_i} l_ij [ν_ij]_+`, with
    /// `ν_k = -c`, `ν̂_i = W_iᵀ ν_{i+1}`, `ν_i = D_i ν̂_i`: here computed with `g = -ν`.
    pub fn objective(&self, c: &Tensor) -> Result<Tensor> {
        let n = self.nodes.len();
        let b = self.batch_size();
        let dims = c.dims();
        if dims.len() < 2 || dims[0] != b || dims[2..] != *self.output_shape() {
            return Err(DualError::shape(format!(
                "c has shape {:?}; expected [{b}, n, {:?}]",
                dims,
                self.output_shape()
            )));
        }
        let nc = dims[1];
        let c = c.to_dtype(self.x.dtype())?;
        let mut g: Vec<Option<Tensor>> = (0..=n).map(|_| None).collect();
        g[n] = Some(c);
        let mut j = Tensor::zeros((b, nc), self.x.dtype(), self.x.device())?;
        for t in (1..=n).rev() {
            let Some(gt) = g[t].take() else { continue };
            match &self.nodes[t - 1] {
                DualNode::Affine(a) => {
                    if let Some(bt) = a.bias_term(&gt)? {
                        j = (j + bt)?;
                    }
                    let contribs = a.transpose(&gt)?;
                    for (i, v) in a.inputs().indices(t).into_iter().zip(contribs) {
                        if let (Some(i), Some(v)) = (i, v) {
                            accumulate(&mut g[i], v)?;
                        }
                    }
                }
                DualNode::Activation(_) => {
                    let r = self.relaxations[t].as_ref().expect("every activation is relaxed");
                    if let Some(src) = r.source() {
                        j = (j + src.lower_term(&gt)?)?;
                    }
                    accumulate(&mut g[t - 1], r.apply(&gt)?)?;
                }
            }
        }
        if let Some(g0) = g[0].take() {
            let xg = g0.broadcast_mul(&self.x.unsqueeze(1)?)?.flatten_from(2)?.sum(2)?;
            j = (j + xg)?;
            j = (j + self.input.lower_term(&g0)?)?;
        }
        Ok(j)
    }

    /// The device the network computes on.
    pub fn device(&self) -> &candle_core::Device {
        self.x.device()
    }

    /// The dtype the network computes in.
    pub fn dtype(&self) -> DType {
        self.x.dtype()
    }
}

/// Propagated tensors and their temporaries take a few times the size of one state.
const BYTES_FACTOR: usize = 4;

fn accumulate(slot: &mut Option<Tensor>, v: Tensor) -> Result<()> {
    *slot = Some(match slot.take() {
        None => v,
        Some(s) => (s + v)?,
    });
    Ok(())
}

/// Positions of the sources that exist before output `t`: the input and every relaxed activation
/// with a source.
fn source_positions(relax: &[Option<Box<dyn Relaxation>>], t: usize) -> Vec<usize> {
    let mut v = vec![0];
    v.extend((1..t).filter(|&i| relax[i].as_ref().map(|r| r.source().is_some()).unwrap_or(false)));
    v
}

fn source_at<'a>(input: &'a dyn DualSource, relax: &'a [Option<Box<dyn Relaxation>>], pos: usize) -> &'a dyn DualSource {
    if pos == 0 {
        input
    } else {
        relax[pos].as_ref().and_then(|r| r.source()).expect("source position holds a source")
    }
}
