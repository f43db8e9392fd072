//! The exact Wong–Kolter dual on dense ReLU chains, box by box in plain f64: the bound input
//! splitting calls hundreds of thousands of times on small networks (ACAS Xu: 5 inputs, six
//! layers of 50), where the tensor engine's per-op cost is most of the work.
//!
//! For `z_1 = W_1 x + b_1`, `z_{i+1} = W_{i+1} ReLU(z_i) + b_{i+1}` over the box `|x − m| ≤ ρ`,
//! the dual of Wong & Kolter (2018, Theorem 1, with the layer-wise bounds of their Algorithm 1)
//! takes for each unstable unit (`l < 0 < u`) the dual variable `ν = d ν̂` with `d = u/(u − l)`:
//! its objective `J(c)` is the minimum of `cᵀ z_L` when every unstable ReLU is replaced by
//! `d z + e` with `e ∈ [0, h]`, `h = −d l` (the line of slope `d` through 0 below, the chord
//! above; the `l [ν]₊` terms of `J` are the `e`'s). Written forward, every pre-activation is
//! affine in the inputs and in the `e`'s of the units below it:
//!
//! `z = c + Σ_i G_i ρ_i t_i + Σ_e G_e (h_e/2) t_e`, every `t ∈ [−1, 1]`,
//!
//! (centre `c`, `x = m + ρ ⊙ t`, `e = h/2 + (h/2) t`), so `l, u = c ∓ Σ |G| R` with `R` the
//! columns' radii; a dead unit (`u ≤ 0`) drops its row, an active one (`l ≥ 0`) keeps it, an
//! unstable one scales it by `d`, adds `h/2` to its centre and opens a column of its own. The
//! lower bound of `cᵀ z_L` is the same expression on the last layer: the same number as the
//! tensor engine's [`crate::ExactDual`] (within 1e-9 relative, tested), with the work
//! proportional to the columns actually open (inputs plus unstable units so far).
//!
//! **Sensitivity for branching.** The bound is `lb = … − Σ_i |g_i| ρ_i + Σ_e min(g_e, 0) h_e`
//! (`g` the row's coefficients); `−∂lb/∂ρ_i` is taken through the inputs' own term and through
//! each `h_e`: `∂h/∂u = l²/(u−l)²`, `∂h/∂l = −u²/(u−l)²`, with `∂u/∂ρ_i = |G_i| + Σ_{e'}
//! max(G_{e'}, 0) ∂h_{e'}/∂ρ_i` and `∂l/∂ρ_i = −|G_i| + Σ_{e'} min(G_{e'}, 0) ∂h_{e'}/∂ρ_i`
//! (the slopes' own dependence on `ρ` left out): a first-order estimate of what halving each
//! feature gains, for [`crate::bab::input_split::choose_feature`] only; soundness does not
//! depend on it.

use crate::bounds::{box_ball, BoundMethod, BoundsAndSensitivity, ExactDual, InputBox};
use candle_core::DType;
use nets::{LayerSpec, Network, NetworkKind};
use rayon::prelude::*;
use vnnlib::Property;

/// Output rows computed together by the product's inner kernel.
const ROWS: usize = 4;
/// Columns computed together by the product's inner kernel (one block of the column stride).
const LANES: usize = 8;

/// One affine layer `W z + b`.
#[derive(Debug, Clone)]
struct Dense {
    n_in: usize,
    n_out: usize,
    /// `W`, `[n_out][n_in]`.
    w: Vec<f64>,
    /// `Wᵀ`, `[n_in][n_out_pad]` with the padding rows zero.
    wt: Vec<f64>,
    b: Vec<f64>,
}

impl Dense {
    fn n_out_pad(&self) -> usize {
        self.n_out.div_ceil(ROWS) * ROWS
    }
}

/// A network of the form `Linear (ReLU Linear)*` on a flat input (Flatten, Reshape and Identity
/// layers are views of the same numbers and are skipped), with its weights in f64.
#[derive(Debug, Clone)]
pub struct DenseChain {
    layers: Vec<Dense>,
}

impl DenseChain {
    /// The chain of `net`, or `None` when `net` is not of this form (a Dense skip connection,
    /// a convolution, two affine layers in a row, an activation other than ReLU, a ReLU first
    /// or last).
    pub fn from_network(net: &Network) -> Option<DenseChain> {
        if net.spec().kind != NetworkKind::Sequential {
            return None;
        }
        let mut layers = Vec::new();
        let mut relu_pending = false;
        let mut n_cur: usize = net.input_shape().iter().product();
        for layer in net.layers() {
            match layer.spec() {
                LayerSpec::Flatten | LayerSpec::Identity | LayerSpec::Reshape { .. } => {}
                LayerSpec::ReLU => {
                    if layers.is_empty() || relu_pending {
                        return None;
                    }
                    relu_pending = true;
                }
                LayerSpec::Linear { in_features, out_features, .. } => {
                    if !layers.is_empty() && !relu_pending || in_features != n_cur {
                        return None;
                    }
                    relu_pending = false;
                    let mut w = None;
                    let mut b = vec![0.0; out_features];
                    for (name, v) in layer.params() {
                        let vals =
                            v.as_tensor().to_dtype(DType::F64).ok()?.flatten_all().ok()?.to_vec1::<f64>().ok()?;
                        match name.as_str() {
                            "weight" if vals.len() == in_features * out_features => w = Some(vals),
                            "bias" if vals.len() == out_features => b = vals,
                            _ => return None,
                        }
                    }
                    let w = w?;
                    let pad = out_features.div_ceil(ROWS) * ROWS;
                    let mut wt = vec![0.0; in_features * pad];
                    for o in 0..out_features {
                        for i in 0..in_features {
                            wt[i * pad + o] = w[o * in_features + i];
                        }
                    }
                    layers.push(Dense { n_in: in_features, n_out: out_features, w, wt, b });
                    n_cur = out_features;
                }
                _ => return None,
            }
        }
        if layers.is_empty() || relu_pending {
            return None;
        }
        Some(DenseChain { layers })
    }

    /// Affine layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Affine layer `li` alone on `z` (no ReLU).
    pub fn layer_forward(&self, li: usize, z: &[f64]) -> Vec<f64> {
        let layer = &self.layers[li];
        layer.w.chunks_exact(layer.n_in).zip(&layer.b).map(|(row, b)| b + dot(row, z)).collect()
    }

    /// Input features.
    pub fn num_inputs(&self) -> usize {
        self.layers[0].n_in
    }

    /// Outputs.
    pub fn num_outputs(&self) -> usize {
        self.layers[self.layers.len() - 1].n_out
    }

    /// Column stride: inputs plus every hidden unit (each may open a column), in whole blocks.
    fn stride(&self) -> usize {
        let hidden: usize = self.layers[..self.layers.len() - 1].iter().map(|l| l.n_out).sum();
        (self.num_inputs() + hidden).div_ceil(LANES) * LANES
    }

    fn max_rows(&self) -> usize {
        self.layers.iter().map(Dense::n_out_pad).max().unwrap_or(0)
    }

    /// The lower bounds of `rows` (`[n_rows][num_outputs]`, flat) over the box with centre `m`
    /// and radius `rho`, and with `rhs`, the sensitivity of the row nearest to proving (largest
    /// `lb − rhs`) to each input's radius (see the module's doc).
    fn bound_box(
        &self,
        m: &[f64],
        rho: &[f64],
        rows: &[f64],
        rhs: Option<&[f64]>,
        w: &mut Work,
    ) -> (Vec<f64>, Option<Vec<f64>>) {
        let k = self.num_inputs();
        let stride = w.stride;
        let first = &self.layers[0];
        let pad0 = first.n_out_pad();
        // Layer 1: G = W_1 on the input columns, c = W_1 m + b_1.
        let mut cols = k;
        let padded = cols.div_ceil(LANES) * LANES;
        for o in 0..first.n_out {
            let row = &mut w.g[o * stride..o * stride + padded];
            row.fill(0.0);
            let mut c = first.b[o];
            for i in 0..k {
                let v = first.wt[i * pad0 + o];
                row[i] = v;
                c += v * m[i];
            }
            w.c[o] = c;
        }
        w.r[..k].copy_from_slice(rho);
        let want_sens = rhs.is_some();
        let mut symbols = 0usize;
        for li in 1..self.layers.len() {
            let n = self.layers[li - 1].n_out;
            // ReLU of the previous layer's output.
            w.alive.clear();
            for j in 0..n {
                let base = j * stride;
                let rad = abs_dot(&w.g[base..base + cols], &w.r[..cols]);
                let (l, u) = (w.c[j] - rad, w.c[j] + rad);
                if u <= 0.0 {
                    continue;
                }
                w.alive.push(j);
                if l >= 0.0 {
                    continue;
                }
                let d = u / (u - l);
                let h = -d * l;
                if want_sens {
                    let (hu, hl) = (l * l / ((u - l) * (u - l)), -(u * u) / ((u - l) * (u - l)));
                    let row = &w.g[base..base + cols];
                    for i in 0..k {
                        let (mut du, mut dl) = (row[i].abs(), -row[i].abs());
                        for e in 0..symbols {
                            let ge = row[k + e];
                            let he = w.hsens[e * k + i];
                            du += ge.max(0.0) * he;
                            dl += ge.min(0.0) * he;
                        }
                        w.hsens[symbols * k + i] = hu * du + hl * dl;
                    }
                }
                w.g[base..base + cols].iter_mut().for_each(|g| *g *= d);
                w.c[j] = d * w.c[j] + 0.5 * h;
                if cols.is_multiple_of(LANES) {
                    for jj in 0..n {
                        w.g[jj * stride + cols..jj * stride + cols + LANES].fill(0.0);
                    }
                }
                w.g[base + cols] = 1.0;
                w.r[cols] = 0.5 * h;
                cols += 1;
                symbols += 1;
            }
            // The next affine layer on the live rows.
            let layer = &self.layers[li];
            let blocks = cols.div_ceil(LANES);
            product(layer, &w.alive, &w.g, &mut w.g2, stride, blocks);
            let pad = layer.n_out_pad();
            let c2 = &mut w.c2[..pad];
            c2[..layer.n_out].copy_from_slice(&layer.b);
            c2[layer.n_out..].fill(0.0);
            for &j in &w.alive {
                let cj = w.c[j];
                c2.iter_mut().zip(&layer.wt[j * pad..(j + 1) * pad]).for_each(|(a, wv)| *a += wv * cj);
            }
            std::mem::swap(&mut w.g, &mut w.g2);
            std::mem::swap(&mut w.c, &mut w.c2);
        }
        // The rows on the last layer.
        let n = self.num_outputs();
        let n_rows = rows.len() / n;
        let mut lbs = Vec::with_capacity(n_rows);
        let mut best: Option<(f64, Vec<f64>)> = None;
        for (q, row) in rows.chunks_exact(n).enumerate() {
            let gr = &mut w.gr[..cols];
            gr.fill(0.0);
            let mut cc = 0.0;
            for (o, &ro) in row.iter().enumerate() {
                if ro == 0.0 {
                    continue;
                }
                cc += ro * w.c[o];
                gr.iter_mut().zip(&w.g[o * stride..o * stride + cols]).for_each(|(a, g)| *a += ro * g);
            }
            let lb = cc - abs_dot(gr, &w.r[..cols]);
            lbs.push(lb);
            if let Some(rhs) = rhs {
                let score = if lb.is_nan() { f64::NEG_INFINITY } else { lb - rhs[q] };
                if best.as_ref().is_none_or(|(s, _)| score > *s) {
                    let sens: Vec<f64> = (0..k)
                        .map(|i| {
                            let through: f64 = (0..symbols).map(|e| (-gr[k + e]).max(0.0) * w.hsens[e * k + i]).sum();
                            let s = (gr[i].abs() + through).abs();
                            if s.is_finite() {
                                s
                            } else {
                                0.0
                            }
                        })
                        .collect();
                    best = Some((score, sens));
                }
            }
        }
        (lbs, best.map(|(_, s)| s))
    }

    /// Each layer's output as an affine map of the input, `(A_i [n_i × k] row-major, a_i)`, when
    /// the ReLU after layer `i` is fixed to `patterns[i]` (`true`: identity, `false`: zero):
    /// `A_1 = W_1`, `A_{i+1} = W_{i+1} P_i A_i`, `a_{i+1} = W_{i+1} P_i a_i + b_{i+1}`. `None`
    /// when the patterns do not fit the hidden layers.
    pub(crate) fn affine_maps(&self, patterns: &[Vec<bool>]) -> Option<Vec<(Vec<f64>, Vec<f64>)>> {
        if patterns.len() + 1 != self.layers.len() {
            return None;
        }
        let k = self.num_inputs();
        let first = &self.layers[0];
        let mut maps = vec![(first.w.clone(), first.b.clone())];
        for (layer, p) in self.layers[1..].iter().zip(patterns) {
            let (a, c) = maps.last()?;
            if p.len() != layer.n_in {
                return None;
            }
            let mut a2 = vec![0.0; layer.n_out * k];
            let mut c2 = layer.b.clone();
            for o in 0..layer.n_out {
                let dst = &mut a2[o * k..(o + 1) * k];
                for j in (0..layer.n_in).filter(|&j| p[j]) {
                    let wv = layer.w[o * layer.n_in + j];
                    if wv != 0.0 {
                        dst.iter_mut().zip(&a[j * k..(j + 1) * k]).for_each(|(d, s)| *d += wv * s);
                        c2[o] += wv * c[j];
                    }
                }
            }
            maps.push((a2, c2));
        }
        Some(maps)
    }

    /// The chain's forward pass in f64 ([`DenseChain::forward_many`] of one point).
    pub fn forward(&self, x: &[f64]) -> Vec<f64> {
        self.forward_many(&[x]).pop().unwrap_or_default()
    }

    /// The chain's forward pass in f64 of every point of `xs`: each weight row is read once for
    /// all points, not once per point, so the pass runs from cache.
    pub fn forward_many(&self, xs: &[&[f64]]) -> Vec<Vec<f64>> {
        let mut z: Vec<Vec<f64>> = xs.iter().map(|x| x.to_vec()).collect();
        for (li, layer) in self.layers.iter().enumerate() {
            if li > 0 {
                z.iter_mut().flatten().for_each(|v| *v = v.max(0.0));
            }
            let mut next = vec![vec![0.0; layer.n_out]; z.len()];
            for (o, (row, b)) in layer.w.chunks_exact(layer.n_in).zip(&layer.b).enumerate() {
                for (zp, np) in z.iter().zip(next.iter_mut()) {
                    np[o] = b + dot(row, zp);
                }
            }
            z = next;
        }
        z
    }

    /// Does the chain's own f64 pass put `(x, f(x))` in `prop`'s unsafe set? A cheap screen of
    /// a candidate counterexample: only the graph's forward pass may confirm one.
    pub(crate) fn may_violate(&self, prop: &Property, x: &[f64]) -> bool {
        self.may_violate_many(prop, &[x])[0]
    }

    /// [`DenseChain::may_violate`] of every point of `xs`, by one [`DenseChain::forward_many`].
    pub(crate) fn may_violate_many(&self, prop: &Property, xs: &[&[f64]]) -> Vec<bool> {
        self.forward_many(xs).iter().zip(xs).map(|(y, x)| prop.violated_by(x, y).is_some()).collect()
    }

    /// [`DenseChain::bound_box`] on every box (in parallel over rayon's threads).
    fn bound_boxes(
        &self,
        boxes: &[InputBox],
        rows: &[Vec<f64>],
        rhs: Option<&[f64]>,
    ) -> Vec<(Vec<f64>, Option<Vec<f64>>)> {
        let flat: Vec<f64> = rows.iter().flatten().copied().collect();
        boxes
            .par_iter()
            .with_min_len(8)
            .map_init(
                || Work::new(self),
                |w, (lo, hi)| {
                    let (m, rho) = box_ball(lo, hi);
                    self.bound_box(&m, &rho, &flat, rhs, w)
                },
            )
            .collect()
    }
}

/// `Σ f(a_i) b_i` in four interleaved sums (a serial sum cannot be vectorised: its additions
/// must keep their order).
#[inline(always)]
fn dot_by(a: &[f64], b: &[f64], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0.0f64; 4];
    let (a4, b4) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = a4.remainder().iter().zip(b4.remainder()).map(|(x, y)| f(*x) * y).sum();
    for (x, y) in a4.zip(b4) {
        for q in 0..4 {
            acc[q] += f(x[q]) * y[q];
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// `Σ a_i b_i`.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    dot_by(a, b, |x| x)
}

/// `Σ |a_i| b_i`.
fn abs_dot(a: &[f64], b: &[f64]) -> f64 {
    dot_by(a, b, f64::abs)
}

/// `g2[o][..] = Σ_{j ∈ alive} W[o][j] g[j][..]` over `blocks` column blocks, `ROWS × LANES`
/// outputs at a time held in registers.
fn product(layer: &Dense, alive: &[usize], g: &[f64], g2: &mut [f64], stride: usize, blocks: usize) {
    let pad = layer.n_out_pad();
    for o in (0..pad).step_by(ROWS) {
        for blk in 0..blocks {
            let col = blk * LANES;
            let mut acc = [[0.0f64; LANES]; ROWS];
            for &j in alive {
                let wv: &[f64; ROWS] = layer.wt[j * pad + o..j * pad + o + ROWS].try_into().expect("ROWS weights");
                let gv: &[f64; LANES] =
                    g[j * stride + col..j * stride + col + LANES].try_into().expect("LANES columns");
                for r in 0..ROWS {
                    for q in 0..LANES {
                        acc[r][q] += wv[r] * gv[q];
                    }
                }
            }
            for (r, a) in acc.iter().enumerate() {
                g2[(o + r) * stride + col..(o + r) * stride + col + LANES].copy_from_slice(a);
            }
        }
    }
}

/// One thread's buffers.
struct Work {
    stride: usize,
    g: Vec<f64>,
    g2: Vec<f64>,
    c: Vec<f64>,
    c2: Vec<f64>,
    r: Vec<f64>,
    gr: Vec<f64>,
    alive: Vec<usize>,
    hsens: Vec<f64>,
}

impl Work {
    fn new(chain: &DenseChain) -> Work {
        let stride = chain.stride();
        let rows = chain.max_rows();
        let k = chain.num_inputs();
        Work {
            stride,
            g: vec![0.0; rows * stride],
            g2: vec![0.0; rows * stride],
            c: vec![0.0; rows],
            c2: vec![0.0; rows],
            r: vec![0.0; stride],
            gr: vec![0.0; stride],
            alive: Vec::with_capacity(rows),
            hsens: vec![0.0; stride * k],
        }
    }
}

/// The exact Wong–Kolter dual ([`ExactDual`]'s numbers) through [`DenseChain`] where the network
/// is a dense ReLU chain, and through the tensor engine otherwise.
pub struct DenseExactDual;

impl BoundMethod for DenseExactDual {
    fn name(&self) -> String {
        "wong-kolter exact dual".into()
    }

    fn lower_bounds(&self, net: &Network, boxes: &[InputBox], rows: &[Vec<f64>]) -> Result<Vec<Vec<f64>>, String> {
        match checked_chain(net, boxes, rows)? {
            Some(chain) => Ok(chain.bound_boxes(boxes, rows, None).into_iter().map(|(lb, _)| lb).collect()),
            None => ExactDual.lower_bounds(net, boxes, rows),
        }
    }

    fn lower_bounds_sensitivity(
        &self,
        net: &Network,
        boxes: &[InputBox],
        rows: &[Vec<f64>],
        rhs: &[f64],
    ) -> Result<BoundsAndSensitivity, String> {
        match checked_chain(net, boxes, rows)? {
            Some(chain) => {
                if rhs.len() != rows.len() {
                    return Err(format!("{} right-hand sides for {} rows", rhs.len(), rows.len()));
                }
                let (lbs, sens) = chain.bound_boxes(boxes, rows, Some(rhs)).into_iter().unzip::<_, _, Vec<_>, Vec<_>>();
                let sens: Option<Vec<Vec<f64>>> = sens.into_iter().collect();
                Ok((lbs, sens))
            }
            None => ExactDual.lower_bounds_sensitivity(net, boxes, rows, rhs),
        }
    }
}

/// The dense chain of `net` when it has one and the boxes and rows fit it; an error for boxes
/// or rows of the wrong size, `None` for another kind of network (or nothing to bound).
fn checked_chain(net: &Network, boxes: &[InputBox], rows: &[Vec<f64>]) -> Result<Option<DenseChain>, String> {
    if boxes.is_empty() || rows.is_empty() {
        return Ok(None);
    }
    let Some(chain) = DenseChain::from_network(net) else { return Ok(None) };
    let k = chain.num_inputs();
    if let Some((lo, hi)) = boxes.iter().find(|(lo, hi)| lo.len() != k || hi.len() != k) {
        return Err(format!("a box of {}/{} features for a network of {k} inputs", lo.len(), hi.len()));
    }
    let n = chain.num_outputs();
    if let Some(r) = rows.iter().find(|r| r.len() != n) {
        return Err(format!("a row of {} entries for a network of {n} outputs", r.len()));
    }
    Ok(Some(chain))
}
