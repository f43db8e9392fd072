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
//! The same bounds also have a *backward* form (the form CROWN uses): the identity on the `K`
//! units, `g = I_K`, goes backwards through the transposed layers and the slopes like `c` in
//! `J(c)`, and every source reduces the coefficients `g` on its own variables to its term for all
//! `K` units at once. `P_s` of the forward form is exactly `g` at source `s`, transposed, so both
//! forms give the same numbers (up to the order of summation); their costs differ: forward is
//! `#columns × layers`, backward `K × layers`, and the first layer of each is shared by the
//! whole batch. [`BoundForm::Auto`] picks the cheaper per activation; sources whose term is an
//! estimate from pushed columns (random projections) always go forward.
//!
//! With a memory budget the columns of each source (forward) or the rows of `g` (backward) go in
//! chunks, so memory stays bounded; the numbers are the same up to the order of summation.

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
    /// Which form computes the layer-wise bounds of sources with exact terms.
    pub bound_form: BoundForm,
}

/// The form in which layer-wise bounds are computed (both give the same numbers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BoundForm {
    /// Per activation, the cheaper of the two by a count of multiply-adds
    /// ([`crate::DualAffine::macs_per_column`]).
    #[default]
    Auto,
    /// Forward: every source's columns are pushed to the activation (Algorithm 1 as written).
    Columns,
    /// Backward: the identity on the activation's units goes back through the transposed
    /// layers to every source with an exact term.
    Backward,
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

/// How the layer-wise bounds of one activation were computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormsUsed {
    /// Index of the activation's output (1-based layer index in the network).
    pub layer: usize,
    /// Sources whose terms came from the backward form.
    pub backward: usize,
    /// Sources whose columns were pushed forward.
    pub forward: usize,
}

/// A dual network for a batch of inputs: the relaxations chosen at every activation and what is
/// needed to evaluate the objective J(c).
pub struct DualNetwork {
    nodes: Vec<DualNode>,
    x: Tensor,
    input: Box<dyn DualSource>,
    relaxations: Vec<Option<Box<dyn Relaxation>>>,
    bounds: Vec<LayerBounds>,
    forms: Vec<FormsUsed>,
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
        let last_act = nodes.iter().rposition(|nd| matches!(nd, DualNode::Activation(_))).map(|k| k + 1).unwrap_or(0);
        let b = x.dim(0)?;
        let mut relaxations: Vec<Option<Box<dyn Relaxation>>> = (0..=n).map(|_| None).collect();
        let mut bounds = Vec::new();
        let mut forms = Vec::new();
        let mut shapes: Vec<Vec<usize>> = vec![x.dims()[1..].to_vec()];
        let plan = Plan { nodes: &nodes, last_use };
        let mut center = Block::new(0, 0..1, x.unsqueeze(1)?, true);
        // Full mode: one persistent block per source pushed forward, made on first use.
        let mut blocks: Vec<Block> = Vec::new();
        for t in 1..=n {
            if let DualNode::Activation(act) = &nodes[t - 1] {
                plan.advance(&mut center, t - 1, &relaxations)?;
                let c = center.states.get(&(t - 1)).expect("center holds its latest output");
                let shape = c.dims()[2..].to_vec();
                let k = numel(&shape);
                let c = c.reshape((b, k))?;
                let (mut lo, mut up) = (c.clone(), c);
                let sources = source_positions(&relaxations, t);
                let walk = Walk { nodes: &nodes, shapes: &shapes, input: input.as_ref(), relax: &relaxations };
                let (backward, forward) = choose_forms(&walk, &sources, t, k, b, opts.bound_form);
                forms.push(FormsUsed { layer: t, backward: backward.len(), forward: forward.len() });
                if !backward.is_empty() {
                    let (l, u) = backward_terms(&walk, &backward, t, b, x, opts)?;
                    lo = lo.broadcast_add(&l)?;
                    up = up.broadcast_add(&u)?;
                }
                for pos in forward {
                    let src = source_at(input.as_ref(), &relaxations, pos);
                    let ncols = src.num_columns();
                    if ncols == 0 {
                        continue;
                    }
                    let mut acc: Option<(Tensor, Tensor)> = None;
                    let mut add = |p: &Tensor, range: Range<usize>| -> Result<()> {
                        // Shared columns (batch 1) stay shared until a per-example layer.
                        let pb = p.dim(0)?;
                        // (A reshape that changes nothing is skipped: it would only add a node to
                        // the backward pass.)
                        let p =
                            if p.dims() == [pb, range.len(), k] { p.clone() } else { p.reshape((pb, range.len(), k))? };
                        let (l, u) = src.column_terms(&p, range)?;
                        acc = Some(match acc.take() {
                            None => (l, u),
                            Some((al, au)) => (al.broadcast_add(&l)?, au.broadcast_add(&u)?),
                        });
                        Ok(())
                    };
                    match opts.memory_budget {
                        None => {
                            if !blocks.iter().any(|bl| bl.pos == pos) {
                                blocks.push(Block::new(pos, 0..ncols, src.columns(0..ncols)?, false));
                            }
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
            }
            if t <= last_act || t == n {
                plan.advance(&mut center, t, &relaxations)?;
                let c = &center.states[&t];
                shapes.push(c.dims()[2..].to_vec());
            } else {
                shapes.push(Vec::new());
            }
        }
        Ok(DualNetwork { nodes, x: x.clone(), input, relaxations, bounds, forms, shapes })
    }

    /// Pre-activation bounds of every activation, in network order.
    pub fn bounds(&self) -> &[LayerBounds] {
        &self.bounds
    }

    /// Which form computed the bounds of every activation, in network order.
    pub fn forms_used(&self) -> &[FormsUsed] {
        &self.forms
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
        let g0 = propagate_back(&self.nodes, &self.relaxations, g, 0, |t, node, gt| {
            let term = match node {
                DualNode::Affine(a) => a.bias_term(gt)?,
                DualNode::Activation(_) => match self.relaxations[t].as_ref().and_then(|r| r.source()) {
                    Some(src) => Some(src.lower_term(gt)?),
                    None => None,
                },
            };
            if let Some(term) = term {
                j = (&j + term)?;
            }
            Ok(())
        })?;
        if let Some(g0) = g0 {
            let xg = g0.broadcast_mul(&self.x.unsqueeze(1)?)?.flatten_from(2)?.sum(2)?;
            j = (j + xg)?;
            j = (j + self.input.lower_term(&g0)?)?;
        }
        Ok(j)
    }

    /// The dual nodes, in network order.
    pub fn nodes(&self) -> &[DualNode] {
        &self.nodes
    }

    /// The input set.
    pub fn input(&self) -> &dyn DualSource {
        self.input.as_ref()
    }

    /// The nominal input `[B, *in_shape]`.
    pub fn x(&self) -> &Tensor {
        &self.x
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

/// Without a memory budget, the rows of the backward form still go in chunks of about this
/// many bytes per state: the numbers are the same, the working set stays in memory that is
/// reused (a forward pass without gradients then peaks far lower, at no cost in speed).
const BACKWARD_CHUNK_BYTES: usize = 256 << 20;

/// What the layer-wise bounds of one activation read: the nodes, the output shapes known so far,
/// the input set and the relaxations chosen so far.
#[derive(Clone, Copy)]
struct Walk<'a> {
    nodes: &'a [DualNode],
    shapes: &'a [Vec<usize>],
    input: &'a dyn DualSource,
    relax: &'a [Option<Box<dyn Relaxation>>],
}

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

/// Splits the sources before activation `t` (whose input has `k` units) into those computed in
/// backward form and those pushed forward, for a batch of `b`.
///
/// Cost in multiply-adds, `path(a, z)` being the cost per column of nodes `a+1 ..= z`:
/// forward `Σ_s columns_s · (b · path(start_s, t-1) + shared_s)`, where a shared source (the
/// input's identity) goes through the nodes before the first activation once for the batch
/// (`shared_s = path(pos_s, start_s)`, `start_s` that activation's input); backward
/// `K · (b · path(lowest, a) + path(a, t-1))`, `a` the last activation before `t`: the rows are
/// shared by the batch until they meet its slopes. With a batch of one nothing is amortised,
/// so small batches go forward more often.
fn choose_forms(
    net: &Walk<'_>,
    sources: &[usize],
    t: usize,
    k: usize,
    b: usize,
    form: BoundForm,
) -> (Vec<usize>, Vec<usize>) {
    let Walk { nodes, shapes, input, relax } = *net;
    let exact = |pos: &usize| source_at(input, relax, *pos).exact_from_coefficients();
    let (eligible, rest): (Vec<usize>, Vec<usize>) = match form {
        BoundForm::Columns => (Vec::new(), sources.to_vec()),
        _ => sources.iter().partition(|p| exact(p)),
    };
    if eligible.is_empty() || form == BoundForm::Backward {
        return (eligible, rest);
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
        (eligible, rest)
    } else {
        (Vec::new(), sources.to_vec())
    }
}

/// Rows `range` of the identity on the `K` units of output `t`, shared by the batch:
/// `[1, len, *shape]`.
fn identity_rows(range: Range<usize>, shape: &[usize], dtype: DType, device: &candle_core::Device) -> Result<Tensor> {
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
/// Rows go in chunks sized by the memory budget; returns `([B, K], [B, K])`.
fn backward_terms(
    net: &Walk<'_>,
    positions: &[usize],
    t: usize,
    b: usize,
    x: &Tensor,
    opts: &DualOptions,
) -> Result<(Tensor, Tensor)> {
    let Walk { nodes, shapes, input, relax } = *net;
    let top = t - 1;
    let shape = &shapes[top];
    let k = numel(shape);
    let lowest = positions[0];
    let widest = shapes[lowest..t].iter().map(|s| numel(s)).max().unwrap_or(1);
    let per_row = b * widest * x.dtype().size_in_bytes() * BYTES_FACTOR;
    let budget = opts.memory_budget.unwrap_or(BACKWARD_CHUNK_BYTES * BYTES_FACTOR);
    let chunk = (budget / per_row.max(1)).clamp(1, k.max(1));
    let (mut lows, mut ups) = (Vec::new(), Vec::new());
    let mut start = 0;
    while start < k {
        let range = start..(start + chunk).min(k);
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
        let zeros = || Tensor::zeros((b, len), x.dtype(), x.device());
        let full = |v: Option<Tensor>| -> Result<Tensor> {
            match v {
                Some(v) => Ok(v.broadcast_as((b, len))?.contiguous()?),
                None => Ok(zeros()?),
            }
        };
        lows.push(full(lo)?);
        ups.push(full(up)?);
        start += chunk;
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
fn accumulate(slot: &mut Option<Tensor>, v: Tensor) -> Result<()> {
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
fn propagate_back(
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

/// Positions of the sources that exist before output `t`: the input and every relaxed activation
/// with a source.
fn source_positions(relax: &[Option<Box<dyn Relaxation>>], t: usize) -> Vec<usize> {
    let mut v = vec![0];
    v.extend((1..t).filter(|&i| relax[i].as_ref().map(|r| r.source().is_some()).unwrap_or(false)));
    v
}

fn source_at<'a>(
    input: &'a dyn DualSource,
    relax: &'a [Option<Box<dyn Relaxation>>],
    pos: usize,
) -> &'a dyn DualSource {
    if pos == 0 {
        input
    } else {
        relax[pos].as_ref().and_then(|r| r.source()).expect("source position holds a source")
    }
}
