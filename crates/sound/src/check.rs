//! The checked bound: sound interval bounds forward, layer-wise bounds refined by backward
//! passes, the final bound by a backward pass; every rounding charged (see the crate docs).
//!
//! Notation: node `t` is the output of layer `t` (node 0 the input); `ẑ_t` bounds `|z_t|` over
//! the input set; `Δ_t` bounds, per output of affine layer `t`, everything a rounding can move
//! that output or its dual contraction by, relative to `|A| ẑ_in + |b|`.

use crate::fused::{signed_dots, SignedDots};
use crate::input::{check_finite, InputBox};
use crate::plan::{plan, Step};
use crate::rounding::{gamma, ETA, U32, U64};
use crate::sparse::{Csr, DENSE_ABOVE};
use crate::{Result, SoundError};
use candle_core::{DType, Device, Tensor};
use dual_core::{DualAffine, DualNode};
use nets::Network;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Which units of a layer an example's layer-wise bounds are recomputed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rows {
    /// Those its own intervals leave unstable.
    Each,
    /// Those the intervals leave unstable in any example of the batch.
    Union,
}

/// Settings of the check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SoundOptions {
    /// Also cover the deployed network's own f32 rounding: the bound then holds for the outputs
    /// that an f32 evaluation of the network (any summation order, FMA or not) computes on
    /// `fl32(x')`, for every real `x'` in the input set — not only for the real-valued network.
    pub deployed_f32: bool,
}

/// A network prepared for the check: its parameters in f64 (the f32 values taken as exact
/// reals) and the step of every layer.
pub struct SoundNetwork {
    net: Network,
    steps: Vec<Step>,
    opts: SoundOptions,
    /// Per node, the transpose of the identity on its units through the layer producing it.
    cache: Mutex<HashMap<usize, Vec<Option<Tensor>>>>,
    /// Per node produced by a Linear or Conv2d layer, that transpose by its non-zeros (`None`
    /// when it is too large to cache).
    sparse: Mutex<HashMap<usize, Option<Arc<Csr>>>>,
}

/// Largest cached transpose of an identity (elements, f64): 256 MB.
const CACHE_ELEMS: usize = 1 << 25;

/// Elements per large temporary (`[B, rows, numel]`): backward passes go in chunks of rows.
const CHUNK_ELEMS: usize = 1 << 23;

/// What one forward pass learned: the box and `ẑ` of every node, and per layer its data.
struct Pass {
    nodes: Vec<DualNode>,
    lo: Vec<Tensor>,
    hi: Vec<Tensor>,
    zmax: Vec<Tensor>,
    /// Per layer `t` (index `t − 1`): `Δ_t` of an affine layer, or the ReLU data.
    data: Vec<LayerData>,
    batch: usize,
}

enum LayerData {
    Affine { delta: Tensor, bias: Tensor },
    Relu { slope: Tensor, neg_lower: Tensor, weight: Tensor },
}

/// Sums of terms and of their magnitudes, per example and row.
struct Acc {
    lower: Tensor,
    upper: Tensor,
    abs: Tensor,
    err: Tensor,
    terms: usize,
}

impl Acc {
    fn add(&mut self, lo: &Tensor, up: &Tensor) -> Result<()> {
        self.lower = self.lower.broadcast_add(lo)?;
        self.upper = self.upper.broadcast_add(up)?;
        self.abs = self.abs.broadcast_add(&lo.abs()?.broadcast_maximum(&up.abs()?)?)?;
        self.terms += 1;
        Ok(())
    }
    fn add_err(&mut self, e: &Tensor) -> Result<()> {
        self.err = self.err.broadcast_add(e)?;
        Ok(())
    }
}

/// Coefficients of a backward pass, `[1 or B, R, *shape]`: a tensor, or rows stored by their
/// non-zeros (the same numbers).
enum Coef {
    Dense(Tensor),
    Sparse(Csr),
}

/// What [`Coef::signed_dots`] gives: the scaled coefficients (when scaled) and the sums over the
/// positive and the negative parts, one `[B, R]` per vector.
struct Dots {
    scaled: Option<Coef>,
    pos: Vec<Tensor>,
    neg: Vec<Tensor>,
}

impl Dots {
    fn sums(self) -> (Vec<Tensor>, Vec<Tensor>) {
        (self.pos, self.neg)
    }
    fn scaled(self) -> Result<(Coef, Vec<Tensor>, Vec<Tensor>)> {
        let h = self.scaled.ok_or_else(|| SoundError::BadInput("no scaled coefficients".into()))?;
        Ok((h, self.pos, self.neg))
    }
}

impl Coef {
    /// Sparse rows, or a tensor when they are too dense to gain from it.
    fn new(csr: Csr) -> Result<Self> {
        Ok(if csr.density() > DENSE_ABOVE { Coef::Dense(csr.to_dense()?) } else { Coef::Sparse(csr) })
    }
    fn dense(self) -> Result<Tensor> {
        match self {
            Coef::Dense(t) => Ok(t),
            Coef::Sparse(c) => c.to_dense(),
        }
    }
    /// `h = fl(g ∘ s)` (or `g`) and `Σ max(h, 0) v_k`, `Σ min(h, 0) v_k` (see [`crate::fused`]).
    fn signed_dots(&self, scale: Option<&Tensor>, vs: &[&Tensor], batch: usize) -> Result<Dots> {
        Ok(match self {
            Coef::Dense(g) => {
                let SignedDots { scaled, pos, neg } = signed_dots(g, scale, vs, batch)?;
                Dots { scaled: scaled.map(Coef::Dense), pos, neg }
            }
            Coef::Sparse(c) => {
                let (scaled, pos, neg) = c.signed_dots(scale, vs, batch)?;
                Dots { scaled: scaled.map(Coef::Sparse), pos, neg }
            }
        })
    }
}

/// `Σ_s g[b, r, s] v_k[b, s]` as `[B, R]` for each `v_k` (`g` may have batch 1): one matrix
/// product per call, no `[B, R, N]` temporary.
fn dots(g: &Tensor, vs: &[&Tensor]) -> Result<Vec<Tensor>> {
    let (bg, r) = (g.dim(0)?, g.dim(1)?);
    let g3 = g.flatten_from(2)?.contiguous()?;
    let n = g3.dim(2)?;
    let v = Tensor::stack(&vs.iter().map(|v| v.flatten_from(1)).collect::<candle_core::Result<Vec<_>>>()?, 2)?;
    let b = v.dim(0)?;
    // [B, N, k]
    let out = if bg == b {
        g3.matmul(&v.contiguous()?)?
    } else if bg == 1 {
        // [R, N] × [N, B·k] → [R, B, k] → [B, R, k]
        let vk = v.permute((1, 0, 2))?.reshape((n, b * vs.len()))?.contiguous()?;
        g3.reshape((r, n))?.matmul(&vk)?.reshape((r, b, vs.len()))?.transpose(0, 1)?.contiguous()?
    } else {
        return Err(SoundError::BadInput(format!("coefficients for {bg} examples, values for {b}")));
    };
    (0..vs.len()).map(|k| Ok(out.narrow(2, k, 1)?.squeeze(2)?)).collect()
}

fn dot(g: &Tensor, v: &Tensor) -> Result<Tensor> {
    Ok(dots(g, &[v])?.remove(0))
}

/// The identity's rows `rows` on a node of `shape` (`numel` units), `[1, R, *shape]`.
fn eye_rows(rows: &[usize], numel: usize, shape: &[usize], dev: &Device) -> Result<Tensor> {
    let mut eye = vec![0f64; rows.len() * numel];
    for (r, &j) in rows.iter().enumerate() {
        eye[r * numel + j] = 1.0;
    }
    Ok(Tensor::from_vec(eye, [&[1usize, rows.len()][..], shape].concat(), dev)?)
}

fn zeros_like_rows(b: usize, r: usize, dev: &Device) -> Result<Tensor> {
    Ok(Tensor::zeros((b, r), DType::F64, dev)?)
}

fn map2(a: &Tensor, b: &Tensor, f: impl Fn(f64, f64) -> f64) -> Result<Tensor> {
    let (va, vb) = (a.flatten_all()?.to_vec1::<f64>()?, b.flatten_all()?.to_vec1::<f64>()?);
    let v: Vec<f64> = va.iter().zip(&vb).map(|(x, y)| f(*x, *y)).collect();
    Ok(Tensor::from_vec(v, a.dims(), a.device())?)
}

fn refs(v: &[Option<Tensor>]) -> Vec<Option<&Tensor>> {
    v.iter().map(|t| t.as_ref()).collect()
}

fn map1(a: &Tensor, f: impl Fn(f64) -> f64) -> Result<Tensor> {
    let v: Vec<f64> = a.flatten_all()?.to_vec1::<f64>()?.into_iter().map(f).collect();
    Ok(Tensor::from_vec(v, a.dims(), a.device())?)
}

impl SoundNetwork {
    /// Prepares `net` (any dtype): an error names the first layer the check does not cover.
    pub fn new(net: &Network, opts: SoundOptions) -> Result<Self> {
        let net = net.to_dtype(DType::F64)?;
        let steps = plan(&net)?;
        for (n, p) in net.state_dict() {
            check_finite(&p, &format!("parameter {n}"))?;
        }
        Ok(SoundNetwork { net, steps, opts, cache: Mutex::new(HashMap::new()), sparse: Mutex::new(HashMap::new()) })
    }

    /// The options.
    pub fn options(&self) -> SoundOptions {
        self.opts
    }

    /// Sound lower bounds of `C f(x')` over the box, `[B, m]` f64, for `c` shaped
    /// `[B, m, *out_shape]` (or `[1, m, ...]`, shared): every entry is `≤ min cᵀ f(x')` over the
    /// box for the real-valued network (and for the deployed f32 one with `deployed_f32`).
    pub fn lower_bounds(&self, input: &InputBox, c: &Tensor) -> Result<Tensor> {
        self.lower_bounds_with(input, c, Rows::Union)
    }

    fn lower_bounds_with(&self, input: &InputBox, c: &Tensor, rows: Rows) -> Result<Tensor> {
        let pass = self.forward(input, rows)?;
        let c = c.to_dtype(DType::F64)?;
        check_finite(&c, "specification C")?;
        let top = self.steps.len();
        let out = pass.lo[top].dims()[1..].to_vec();
        if c.rank() < 2 || c.dims()[2..] != out[..] || (c.dim(0)? != 1 && c.dim(0)? != pass.batch) {
            return Err(SoundError::BadInput(format!(
                "specification of shape {:?} for a batch of {} and outputs of shape {out:?}",
                c.dims(),
                pass.batch
            )));
        }
        let (lower, _) = self.backward(&pass, top, &c)?;
        Ok(lower)
    }

    /// Sound lower bounds of the margins `z_y − z_j` (`[B, classes]`, 0 at `j = y`).
    pub fn margins(&self, input: &InputBox, y: &[u32]) -> Result<Tensor> {
        self.margins_with(input, y, Rows::Union)
    }

    fn margins_with(&self, input: &InputBox, y: &[u32], rows: Rows) -> Result<Tensor> {
        let classes = self.output_len()?;
        if y.len() != input.batch() {
            return Err(SoundError::BadInput(format!("{} labels for {} boxes", y.len(), input.batch())));
        }
        let mut c = vec![0f64; y.len() * classes * classes];
        for (b, &yb) in y.iter().enumerate() {
            if yb as usize >= classes {
                return Err(SoundError::BadInput(format!("label {yb} for a network with {classes} outputs")));
            }
            for j in 0..classes {
                if j != yb as usize {
                    let row = (b * classes + j) * classes;
                    c[row + yb as usize] = 1.0;
                    c[row + j] = -1.0;
                }
            }
        }
        let c = Tensor::from_vec(c, (y.len(), classes, classes), &Device::Cpu)?;
        self.lower_bounds_with(input, &c, rows)
    }

    /// Per box: is the label `y` certified (every margin's sound lower bound `> 0`)?
    pub fn certify(&self, input: &InputBox, y: &[u32]) -> Result<Vec<bool>> {
        Self::verdicts(&self.margins(input, y)?, y)
    }

    /// [`Self::certify`] with every example checked as in a batch of its own: the layer-wise
    /// bounds are recomputed on the units its own intervals leave unstable (in a batch, the
    /// units unstable in any example are recomputed for all, as the dual does); same cost per
    /// example, one call for the batch. Either way every bound is sound.
    pub fn certify_each(&self, input: &InputBox, y: &[u32]) -> Result<Vec<bool>> {
        Self::verdicts(&self.margins_each(input, y)?, y)
    }

    /// [`Self::margins`] with every example bounded as in a batch of its own (see
    /// [`Self::certify_each`]).
    pub fn margins_each(&self, input: &InputBox, y: &[u32]) -> Result<Tensor> {
        self.margins_with(input, y, Rows::Each)
    }

    fn verdicts(m: &Tensor, y: &[u32]) -> Result<Vec<bool>> {
        let m = m.to_vec2::<f64>()?;
        Ok(m.iter().zip(y).map(|(r, &yb)| r.iter().enumerate().all(|(j, &v)| j == yb as usize || v > 0.0)).collect())
    }

    /// The sound box `[lo, hi]` of every node's values over the input set (node 0 the input),
    /// each `[B, *shape]`.
    pub fn layer_bounds(&self, input: &InputBox) -> Result<Vec<(Tensor, Tensor)>> {
        let p = self.forward(input, Rows::Union)?;
        Ok(p.lo.into_iter().zip(p.hi).collect())
    }

    fn output_len(&self) -> Result<usize> {
        let spec = self.net.spec();
        let x = Tensor::zeros([&[1usize][..], &spec.input_shape].concat(), DType::F64, &Device::Cpu)?;
        let out = self.net.forward(&x)?;
        if out.rank() != 2 {
            return Err(SoundError::BadInput(format!(
                "margins need a flat output; the network gives {:?}",
                out.dims()
            )));
        }
        Ok(out.dim(1)?)
    }

    /// `γ` for our own f64 work at an affine layer with `terms` products per output and `numel`
    /// outputs (the bias term sums over all of them), plus the deployed network's f32 rounding.
    fn coefficients(&self, terms: usize, numel: usize) -> (f64, f64) {
        let ours = 2.0 * gamma(terms.max(numel) + 3, U64);
        let deployed = if self.opts.deployed_f32 { gamma(terms + 1, U32) } else { 0.0 };
        (ours, deployed)
    }

    /// Sound interval bounds forward, refined at every ReLU input after the first by a backward
    /// pass on the units the intervals leave unstable.
    fn forward(&self, input: &InputBox, rows: Rows) -> Result<Pass> {
        let mut ib = input.clone();
        if self.opts.deployed_f32 {
            ib = ib.widened_for_f32()?;
        }
        let want: Vec<usize> = self.net.input_shape().to_vec();
        if ib.lo.rank() < 1 || ib.lo.dims()[1..] != want[..] {
            return Err(SoundError::BadInput(format!(
                "input box of shape {:?}, the network takes [B, {}]",
                ib.lo.dims(),
                want.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
            )));
        }
        let batch = ib.batch();
        if batch == 0 {
            return Err(SoundError::BadInput("an empty batch of boxes".into()));
        }
        let nodes = nets::no_grad(|| self.net.dual_nodes(&ib.lo))?;
        let zmax0 = ib.lo.abs()?.maximum(&ib.hi.abs()?)?;
        let mut pass = Pass { nodes, lo: vec![ib.lo], hi: vec![ib.hi], zmax: vec![zmax0], data: vec![], batch };
        for t in 1..=self.steps.len() {
            let idx = pass.nodes[t - 1].inputs().indices(t);
            match (&self.steps[t - 1], &pass.nodes[t - 1]) {
                (Step::Affine { terms, bias_error, .. }, DualNode::Affine(a)) => {
                    let (lo, hi, delta, bias) =
                        self.affine_forward(&pass, a.as_ref(), &idx, *terms, bias_error.as_ref())?;
                    pass.zmax.push(lo.abs()?.maximum(&hi.abs()?)?);
                    pass.lo.push(lo);
                    pass.hi.push(hi);
                    pass.data.push(LayerData::Affine { delta, bias });
                }
                (Step::Relu, DualNode::Activation(_)) => {
                    let p = t - 1;
                    if p >= 2 {
                        self.refine(&mut pass, p, rows)?;
                    }
                    let (l, u) = (&pass.lo[p], &pass.hi[p]);
                    let numel = l.elem_count() / batch;
                    let g = gamma(numel + 1, U64);
                    let slope = map2(l, u, |l, u| {
                        if l >= 0.0 {
                            1.0
                        } else if u <= 0.0 {
                            0.0
                        } else {
                            (u / (u - l) * (1.0 + 4.0 * U64)).min(1.0)
                        }
                    })?;
                    let neg_lower = map2(l, u, |l, u| if l < 0.0 && u > 0.0 { -l } else { 0.0 })?;
                    // ⟨|g s|, 1.01u (ẑ + |l|) + γ_{N+1} |l|⟩ bounds the product g·s and the two
                    // offset sums' rounding.
                    let weight =
                        ((((&pass.zmax[p] + &neg_lower)? * (1.01 * U64))? + (&neg_lower * (1.01 * g))?)? + ETA)?;
                    pass.lo.push(l.relu()?);
                    pass.hi.push(u.relu()?);
                    pass.zmax.push(pass.hi[t].clone());
                    pass.data.push(LayerData::Relu { slope, neg_lower, weight });
                }
                _ => return Err(SoundError::Unsupported(format!("layer {}: {}", t - 1, pass.nodes[t - 1].name()))),
            }
        }
        Ok(pass)
    }

    /// Interval bounds of an affine layer's output, rounded outward, and its `Δ`.
    fn affine_forward(
        &self,
        pass: &Pass,
        a: &dyn DualAffine,
        idx: &[Option<usize>],
        terms: usize,
        bias_error: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
        let col = |t: &Tensor| -> Result<Tensor> { Ok(t.unsqueeze(1)?) };
        let (mut mids, mut rads, mut zs, mut zeros) = (vec![], vec![], vec![], vec![]);
        for i in idx {
            match i {
                Some(i) => {
                    let (lo, hi, z) = (&pass.lo[*i], &pass.hi[*i], &pass.zmax[*i]);
                    let mid = ((lo + hi)? * 0.5)?;
                    // Covers [lo, hi] despite the rounding of mid and of the half-width.
                    let rad = ((((hi - lo)? * (0.5 * (1.0 + 4.0 * U64)))? + (z * (4.0 * U64))?)? + ETA)?;
                    mids.push(Some(col(&mid)?));
                    rads.push(Some(col(&rad)?));
                    zs.push(Some(col(z)?));
                    zeros.push(Some(col(&mid.zeros_like()?)?));
                }
                None => {
                    mids.push(None);
                    rads.push(None);
                    zs.push(None);
                    zeros.push(None);
                }
            }
        }
        // Two columns per call: (mid, 0) through the layer gives the centre and the bias, and
        // (radius, ẑ) through |A| the radius and |A| ẑ (each column is computed on its own).
        let pair = |a: &[Option<Tensor>], b: &[Option<Tensor>]| -> Result<Vec<Option<Tensor>>> {
            a.iter()
                .zip(b)
                .map(|(x, y)| match (x, y) {
                    (Some(x), Some(y)) => Ok(Some(Tensor::cat(&[x, y], 1)?)),
                    _ => Ok(None),
                })
                .collect()
        };
        let split = |t: Option<Tensor>| -> Result<(Option<Tensor>, Option<Tensor>)> {
            match t {
                Some(t) => Ok((
                    Some(t.narrow(1, 0, 1)?.squeeze(1)?.contiguous()?),
                    Some(t.narrow(1, 1, 1)?.squeeze(1)?.contiguous()?),
                )),
                None => Ok((None, None)),
            }
        };
        let (center, bias) = split(a.forward(&refs(&pair(&mids, &zeros)?), true)?)?;
        let center = center.ok_or_else(|| SoundError::BadInput(format!("{} produced no output", a.name())))?;
        let bias = bias.unwrap_or(center.zeros_like()?);
        let (radius, absz) = split(a.forward_abs(&refs(&pair(&rads, &zs)?))?)?;
        let radius = radius.unwrap_or(center.zeros_like()?);
        let absz = absz.unwrap_or(center.zeros_like()?);
        let r = (absz + bias.abs()?)?;
        let numel = center.elem_count() / pass.batch;
        let (ours, deployed) = self.coefficients(terms, numel);
        let mut delta = (&r * ((ours + deployed) * (1.0 + 1e-6)))?;
        if let Some(be) = bias_error {
            let g8 = gamma(8, U64) + if self.opts.deployed_f32 { gamma(8, U32) } else { 0.0 };
            delta = delta.broadcast_add(&(be * g8)?)?;
        }
        let delta = (delta + ETA * (terms as f64 + 2.0))?;
        let lo = ((&center - &radius)? - &delta)?;
        let hi = ((&center + &radius)? + &delta)?;
        let lo = map1(&lo, crate::rounding::down)?;
        let hi = map1(&hi, crate::rounding::up)?;
        Ok((lo, hi, delta, bias))
    }

    /// Replaces the box of node `p` by the backward pass's bounds (the dual's layer-wise bounds)
    /// on the units the intervals leave unstable: in any example of the batch ([`Rows::Union`]),
    /// or in that example ([`Rows::Each`]: its result is the same as in a batch of one). The
    /// intervals are kept on the other units (their bounds then only serve `ẑ`). Not
    /// intersecting the two keeps the slopes those of the dual: tighter bounds do not always give
    /// a tighter bound with the slope rule `u/(u−l)`. The examples go together, row position by
    /// row position (example `e`'s `r`-th unit in row `r`, rows past its count left empty).
    fn refine(&self, pass: &mut Pass, p: usize, rows: Rows) -> Result<()> {
        let (b, dev) = (pass.batch, pass.lo[p].device().clone());
        let shape = pass.lo[p].dims()[1..].to_vec();
        let numel: usize = shape.iter().product();
        let mut lo = pass.lo[p].flatten_all()?.to_vec1::<f64>()?;
        let mut hi = pass.hi[p].flatten_all()?.to_vec1::<f64>()?;
        let unstable = |e: usize, j: usize| lo[e * numel + j] < 0.0 && hi[e * numel + j] > 0.0;
        let per: Vec<Vec<usize>> = match rows {
            Rows::Each => (0..b).map(|e| (0..numel).filter(|&j| unstable(e, j)).collect()).collect(),
            Rows::Union => vec![(0..numel).filter(|&j| (0..b).any(|e| unstable(e, j))).collect(); b],
        };
        let rmax = per.iter().map(Vec::len).max().unwrap_or(0);
        if rmax == 0 {
            return Ok(());
        }
        let widest = pass.lo.iter().map(|t| t.elem_count() / b).max().unwrap_or(1);
        let chunk = (CHUNK_ELEMS / (b * widest).max(1)).max(1);
        for start in (0..rmax).step_by(chunk) {
            let width = chunk.min(rmax - start);
            let sel: Vec<Vec<Option<usize>>> =
                per.iter().map(|u| (start..start + width).map(|r| u.get(r).copied()).collect()).collect();
            let (l, u) = self.backward_rows(pass, p, &sel, &shape)?;
            let (l, u) = (l.to_vec2::<f64>()?, u.to_vec2::<f64>()?);
            for (e, row) in sel.iter().enumerate() {
                for (r, j) in row.iter().enumerate() {
                    if let Some(j) = j {
                        lo[e * numel + j] = l[e][r];
                        hi[e * numel + j] = u[e][r];
                    }
                }
            }
        }
        let dims = pass.lo[p].dims().to_vec();
        pass.lo[p] = Tensor::from_vec(lo, dims.clone(), &dev)?;
        pass.hi[p] = Tensor::from_vec(hi, dims, &dev)?;
        pass.zmax[p] = pass.lo[p].abs()?.maximum(&pass.hi[p].abs()?)?;
        Ok(())
    }

    /// Sound lower and upper bounds of `gᵀ z_top` over the input set, `[B, R]`, for `g`
    /// shaped `[1 or B, R, *shape_top]`: the coefficients run backwards through the layers
    /// (ReLUs relaxed with the slopes of the pass), every term and every rounding accounted.
    fn backward(&self, pass: &Pass, top: usize, g: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, rows, dev) = (pass.batch, g.dim(1)?, g.device().clone());
        let z = zeros_like_rows(b, rows, &dev)?;
        let acc = Acc { lower: z.clone(), upper: z.clone(), abs: z.clone(), err: z, terms: 0 };
        let mut contrib: Vec<Vec<Coef>> = (0..=top).map(|_| vec![]).collect();
        contrib[top].push(Coef::Dense(g.clone()));
        self.backward_from(pass, top, acc, contrib)
    }

    /// [`Self::backward`] for unit rows of node `p`, an affine layer's output: row `r` of example
    /// `e` is the unit `sel[e][r]` (`None`: an empty row, its result meaningless). The layer's
    /// transpose of the identity does not depend on the example, so it is computed once per
    /// network and node (when it fits [`CACHE_ELEMS`]; by its non-zeros for Linear and Conv2d)
    /// and the rows are picked from it; its bias and `Δ` rows start the sums.
    fn backward_rows(
        &self,
        pass: &Pass,
        p: usize,
        sel: &[Vec<Option<usize>>],
        shape: &[usize],
    ) -> Result<(Tensor, Tensor)> {
        let (b, dev) = (pass.batch, pass.lo[p].device().clone());
        let numel: usize = shape.iter().product();
        let width = sel.first().map(Vec::len).unwrap_or(0);
        let eye = || -> Result<Tensor> {
            let mut v = vec![0f64; b * width * numel];
            for (e, row) in sel.iter().enumerate() {
                for (r, j) in row.iter().enumerate() {
                    if let Some(j) = j {
                        v[(e * width + r) * numel + j] = 1.0;
                    }
                }
            }
            Ok(Tensor::from_vec(v, [&[b, width][..], shape].concat(), &dev)?)
        };
        let (DualNode::Affine(a), LayerData::Affine { delta, bias }) = (&pass.nodes[p - 1], &pass.data[p - 1]) else {
            return self.backward(pass, p, &eye()?);
        };
        // [B, width] indices (empty rows read unit 0; their results are not used).
        let flat: Vec<u32> = sel.iter().flat_map(|row| row.iter().map(|j| j.unwrap_or(0) as u32)).collect();
        let idx = Tensor::from_vec(flat.clone(), (b, width), &dev)?;
        let pick = |t: &Tensor| -> Result<Tensor> { Ok(t.flatten_from(1)?.contiguous()?.gather(&idx, 1)?) };
        let start = || -> Result<Acc> {
            let bias = pick(bias)?;
            Ok(Acc { lower: bias.clone(), upper: bias.clone(), abs: bias.abs()?, err: pick(delta)?, terms: 1 })
        };
        let in_numel: usize =
            pass.nodes[p - 1].inputs().indices(p).iter().flatten().map(|i| pass.lo[*i].elem_count() / b).sum();
        if let Some(tr) = self.sparse_transpose(pass, p)? {
            let mut contrib: Vec<Vec<Coef>> = (0..p).map(|_| vec![]).collect();
            let input = pass.nodes[p - 1].inputs().indices(p).first().copied().flatten();
            let Some(input) = input else {
                return Err(SoundError::BadInput(format!("node {p}: a layer without input")));
            };
            contrib[input].push(Coef::new(tr.select_rows(sel))?);
            return self.backward_from(pass, p - 1, start()?, contrib);
        }
        if numel * in_numel.max(numel) > CACHE_ELEMS {
            return self.backward(pass, p, &eye()?);
        }
        let cached = {
            let mut cache = self.cache.lock().map_err(|_| SoundError::BadInput("a poisoned cache".into()))?;
            match cache.get(&p) {
                Some(c) => c.clone(),
                None => {
                    let all: Vec<usize> = (0..numel).collect();
                    let t = a.transpose(&eye_rows(&all, numel, shape, &dev)?)?;
                    cache.insert(p, t.clone());
                    t
                }
            }
        };
        let flat = Tensor::from_vec(flat, b * width, &dev)?;
        let mut contrib: Vec<Vec<Coef>> = (0..=p).map(|_| vec![]).collect();
        for (i, t) in pass.nodes[p - 1].inputs().indices(p).iter().zip(cached) {
            if let (Some(i), Some(t)) = (i, t) {
                let rows = t.index_select(&flat, 1)?;
                let dims = [&[b, width][..], &t.dims()[2..]].concat();
                contrib[*i].push(Coef::Dense(rows.reshape(dims)?));
            }
        }
        self.backward_from(pass, p - 1, start()?, contrib)
    }

    /// The transpose of the identity through the Linear or Conv2d layer producing node `t`,
    /// by its non-zeros: row `k` is `Aᵀ e_k`, i.e. the weights (exactly). Computed once per
    /// network and node; `None` for other layers and when the identity would exceed
    /// [`CACHE_ELEMS`].
    fn sparse_transpose(&self, pass: &Pass, t: usize) -> Result<Option<Arc<Csr>>> {
        let (Some(Step::Affine { plain: true, .. }), Some(DualNode::Affine(a))) =
            (self.steps.get(t - 1), pass.nodes.get(t - 1))
        else {
            return Ok(None);
        };
        let mut cache = self.sparse.lock().map_err(|_| SoundError::BadInput("a poisoned cache".into()))?;
        if let Some(c) = cache.get(&t) {
            return Ok(c.clone());
        }
        let b = pass.batch;
        let shape = pass.lo[t].dims()[1..].to_vec();
        let numel: usize = shape.iter().product();
        let inputs = pass.nodes[t - 1].inputs().indices(t);
        let built = match inputs.as_slice() {
            [Some(i)] if numel * numel.max(pass.lo[*i].elem_count() / b) <= CACHE_ELEMS => {
                let all: Vec<usize> = (0..numel).collect();
                let eye = eye_rows(&all, numel, &shape, pass.lo[t].device())?;
                match a.transpose(&eye)?.into_iter().next().flatten() {
                    Some(tr) => Some(Arc::new(Csr::from_dense(&tr)?)),
                    None => None,
                }
            }
            _ => None,
        };
        cache.insert(t, built.clone());
        Ok(built)
    }

    /// The backward pass from node `top` down, with sums and coefficients so far.
    fn backward_from(
        &self,
        pass: &Pass,
        top: usize,
        mut acc: Acc,
        mut contrib: Vec<Vec<Coef>>,
    ) -> Result<(Tensor, Tensor)> {
        let b = pass.batch;
        for t in (0..=top).rev() {
            let cs = std::mem::take(&mut contrib[t]);
            if cs.is_empty() {
                continue;
            }
            let g = if cs.len() == 1 {
                cs.into_iter().next().expect("one contribution")
            } else {
                let cs = cs.into_iter().map(Coef::dense).collect::<Result<Vec<_>>>()?;
                // The sum's rounding: γ_m Σ|c| against |z_t|.
                let mut sum = cs[0].clone();
                let mut abs = cs[0].abs()?;
                for c in &cs[1..] {
                    sum = sum.broadcast_add(c)?;
                    abs = abs.broadcast_add(&c.abs()?)?;
                }
                acc.add_err(&(dot(&abs, &pass.zmax[t])? * gamma(cs.len() + 1, U64))?)?;
                Coef::Dense(sum)
            };
            if t == 0 {
                let (l0, h0, z0) = (&pass.lo[0], &pass.hi[0], &pass.zmax[0]);
                let (p, m) = g.signed_dots(None, &[l0, h0, z0], b)?.sums();
                acc.add(&(&p[0] + &m[1])?, &(&p[1] + &m[0])?)?;
                let n0 = l0.elem_count() / b;
                acc.add_err(&((&p[2] - &m[2])? * (gamma(n0 + 2, U64) * (1.0 + 1e-6)))?)?;
                continue;
            }
            let idx = pass.nodes[t - 1].inputs().indices(t);
            match (&pass.data[t - 1], &pass.nodes[t - 1]) {
                (LayerData::Relu { slope, neg_lower, weight }, _) => {
                    let (gs, p, m) = g.signed_dots(Some(slope), &[neg_lower, weight], b)?.scaled()?;
                    acc.add(&m[0], &p[0])?;
                    acc.add_err(&((&p[1] - &m[1])? * (1.0 + 1e-6))?)?;
                    if let Some(Some(p)) = idx.last() {
                        contrib[*p].push(gs);
                    }
                }
                (LayerData::Affine { delta, bias }, DualNode::Affine(a)) => {
                    if let Coef::Sparse(csr) = &g {
                        if let Some(tr) = self.sparse_transpose(pass, t)? {
                            // gᵀ b (b: the output at a zero input) and ⟨|g|, Δ⟩; then gᵀ A.
                            let (_, p, m) = csr.signed_dots(None, &[bias, delta], b)?;
                            let bt = (&p[0] + &m[0])?;
                            acc.add(&bt, &bt)?;
                            acc.add_err(&(&p[1] - &m[1])?)?;
                            let in_shape = tr.shape.clone();
                            if let Some(Some(i)) = idx.first() {
                                contrib[*i].push(Coef::new(csr.matmul(&tr, &in_shape)?)?);
                            }
                            continue;
                        }
                    }
                    let g = g.dense()?;
                    if let Some(bt) = a.bias_term(&g)? {
                        acc.add(&bt, &bt)?;
                    }
                    let SignedDots { pos: p, neg: m, .. } = signed_dots(&g, None, &[delta], b)?;
                    acc.add_err(&(&p[0] - &m[0])?)?;
                    for (i, gi) in idx.iter().zip(a.transpose(&g)?) {
                        if let (Some(i), Some(gi)) = (i, gi) {
                            contrib[*i].push(Coef::Dense(gi));
                        }
                    }
                }
                _ => return Err(SoundError::Unsupported(format!("layer {}: {}", t - 1, pass.nodes[t - 1].name()))),
            }
        }
        // The additions of the terms (≤ `terms` roundings of partial sums bounded by Σ|term|)
        // and the error sums' own rounding (relative, far below 10⁻⁶).
        let slack = ((&acc.abs * gamma(acc.terms + 1, U64))? + (&acc.err * (1.0 + 1e-6))?)?;
        let lower = map1(&(&acc.lower - &slack)?, crate::rounding::down)?;
        let upper = map1(&(&acc.upper + &slack)?, crate::rounding::up)?;
        Ok((lower, upper))
    }
}
