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
//!
//! The parts, one file each under `network/`: `forward_columns.rs` (the forward form and the
//! nominal pass), `backward_form.rs` (the backward form and the backward pass of `J(c)`),
//! `cost_model.rs` (which form per activation), `chunking.rs` (how many columns or rows at once). This file walks the
//! layers ([`DualNetwork::build`]) and evaluates the objective.

mod backward_form;
mod chunking;
mod cost_model;
mod forward_columns;
mod window_form;

use crate::{
    layer::{DualNode, Relaxation},
    source::DualSource,
    DualError, Result,
};
use backward_form::{backward_terms, propagate_back};
use candle_core::{DType, Tensor};
use cost_model::{choose_forms, FormChoice};
use forward_columns::{ColumnBlock, ForwardPass, PersistentColumns};

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
    Forward,
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
        let last_act = nodes.iter().rposition(|nd| matches!(nd, DualNode::Activation(_))).map(|k| k + 1).unwrap_or(0);
        let b = x.dim(0)?;
        let mut relaxations: Vec<Option<Box<dyn Relaxation>>> = (0..=n).map(|_| None).collect();
        let (mut bounds, mut forms) = (Vec::new(), Vec::new());
        let mut shapes: Vec<Vec<usize>> = vec![x.dims()[1..].to_vec()];
        let pass = ForwardPass::new(&nodes);
        let mut nominal = ColumnBlock::nominal(x)?;
        let mut persistent = PersistentColumns::default();
        for t in 1..=n {
            if let DualNode::Activation(act) = &nodes[t - 1] {
                pass.advance(&mut nominal, t - 1, &relaxations)?;
                let z = nominal.output(t - 1);
                let shape = z.dims()[2..].to_vec();
                let z = z.reshape((b, numel(&shape)))?;
                let net = NetPrefix { nodes: &nodes, shapes: &shapes, input: input.as_ref(), relax: &relaxations };
                let (lo, up, used) = activation_input_bounds(&net, &pass, &mut persistent, z, t, x, opts)?;
                forms.push(used);
                let mut full_shape = vec![b];
                full_shape.extend_from_slice(&shape);
                let lo = lo.reshape(full_shape.clone())?;
                let up = up.reshape(full_shape)?;
                let relax = act.relax(&lo, &up)?;
                bounds.push(LayerBounds { layer: t, lower: lo, upper: up });
                relaxations[t] = Some(relax);
            }
            if t <= last_act || t == n {
                pass.advance(&mut nominal, t, &relaxations)?;
                shapes.push(nominal.output(t).dims()[2..].to_vec());
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

/// The network up to one activation, as its bounds read it: the nodes, the output shapes known
/// so far, the input set and the relaxations chosen so far.
#[derive(Clone, Copy)]
struct NetPrefix<'a> {
    nodes: &'a [DualNode],
    shapes: &'a [Vec<usize>],
    input: &'a dyn DualSource,
    relax: &'a [Option<Box<dyn Relaxation>>],
}

/// The bounds `l = ẑ(x) + Σ_s lower_s`, `u = ẑ(x) + Σ_s upper_s` of the input of activation `t`,
/// each `[B, K]`, from its nominal value `z = ẑ(x)` (`[B, K]`) and the terms of every source
/// before it, each in the form [`choose_forms`] picks.
fn activation_input_bounds(
    net: &NetPrefix<'_>,
    pass: &ForwardPass<'_>,
    persistent: &mut PersistentColumns,
    z: Tensor,
    t: usize,
    x: &Tensor,
    opts: &DualOptions,
) -> Result<(Tensor, Tensor, FormsUsed)> {
    let (b, k) = z.dims2()?;
    let (mut lo, mut up) = (z.clone(), z);
    let sources = source_positions(net.relax, t);
    let FormChoice { backward, forward } = choose_forms(net, &sources, t, k, b, opts.bound_form);
    let used = FormsUsed { layer: t, backward: backward.len(), forward: forward.len() };
    if !backward.is_empty() {
        let (l, u) = backward_terms(net, &backward, t, b, x, opts.memory_budget)?;
        lo = lo.broadcast_add(&l)?;
        up = up.broadcast_add(&u)?;
    }
    for pos in forward {
        let terms = forward_columns::source_terms(net, pass, persistent, pos, t, k, b, x.dtype(), opts.memory_budget)?;
        if let Some((l, u)) = terms {
            lo = lo.broadcast_add(&l)?;
            up = up.broadcast_add(&u)?;
        }
    }
    Ok((lo, up, used))
}

/// Positions of the sources that exist before output `t`: the input and every relaxed activation
/// with a source.
fn source_positions(relax: &[Option<Box<dyn Relaxation>>], t: usize) -> Vec<usize> {
    let mut v = vec![0];
    v.extend((1..t).filter(|&i| relax[i].as_ref().map(|r| r.source().is_some()).unwrap_or(false)));
    v
}

/// The source at output `pos`: the input set at 0, else the relaxation's unstable units.
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
