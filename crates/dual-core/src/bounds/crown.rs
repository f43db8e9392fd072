//! The backward (CROWN) pass: lower bounds of `Λ z_t` from linear relaxations with separate
//! lines, and CROWN's layer-wise bounds.
//!
//! For coefficients `Λ` on output `t`, the pass walks the nodes backwards: an affine node adds
//! `Λ b` (`bias_term`) and hands `Aᵀ Λ` (`transpose`) to its inputs; an activation replaces `Λ` by
//! `[Λ]₊ a_L + [Λ]₋ a_U` and adds `Σ [Λ]₊ b_L + [Λ]₋ b_U` ([`LinearRelaxation::backward_lower`]);
//! at the input, `Λ_0 x` plus the input set's lower term (`DualSource::coefficient_terms`). The
//! result is a lower bound of `Λ z_t` over the input set, `[B, m]`. An upper bound is minus the
//! lower bound of `−Λ`.
//!
//! Layer-wise bounds of an activation's input (`K` units) run the rows `±e_j`, shared by the
//! batch until they meet the first per-example slopes, in chunks of rows.

use super::{
    relaxation::{gather_rows, LinearRelaxation},
    window::{self, Windows},
    Net,
};
use crate::{layer::DualNode, DualError, Result};
use candle_core::{DType, Tensor};

/// The relaxations chosen so far, indexed by output (`Some` at activations).
pub type Relaxed = Vec<Option<Box<dyn LinearRelaxation>>>;

/// `Σ_p lam[b, r, p] · v[b, p]` for `lam` `[Bλ, m, *shape]` (`Bλ` = 1: shared) and `v` with `B`
/// examples of the same `shape` (any leading layout, e.g. `[B, 1, *shape]`), as `[B, m]`.
pub(crate) fn contract(lam: &Tensor, v: &Tensor) -> Result<Tensor> {
    let lam = lam.flatten_from(2)?;
    let (bl, m, k) = lam.dims3()?;
    let b = v.dim(0)?;
    let v = v.reshape((b, k))?.to_dtype(lam.dtype())?;
    if bl == 1 && b != 1 {
        return Ok(v.matmul(&lam.squeeze(0)?.t()?)?);
    }
    if bl != b {
        return Err(DualError::shape(format!("coefficients for {bl} examples met values for {b}")));
    }
    Ok(lam.contiguous()?.matmul(&v.unsqueeze(2)?)?.reshape((b, m))?)
}

/// Rows `+e_j` for `j` in `units` (then `−e_j` for the same units when `signed`), shared by the
/// batch: `[1, rows, *shape]`.
pub(crate) fn signed_identity_rows(units: &[usize], signed: bool, shape: &[usize], like: &Tensor) -> Result<Tensor> {
    let k: usize = shape.iter().product();
    let rows = if signed { 2 * units.len() } else { units.len() };
    let mut s = vec![1, rows];
    s.extend_from_slice(shape);
    // Built in the target type: the rows of a layer of K units are K² numbers.
    fn fill<T: candle_core::WithDType>(units: &[usize], signed: bool, rows: usize, k: usize) -> Vec<T> {
        let mut data = vec![T::from_f64(0.0); rows * k];
        for (r, &j) in units.iter().enumerate() {
            data[r * k + j] = T::from_f64(1.0);
            if signed {
                data[(units.len() + r) * k + j] = T::from_f64(-1.0);
            }
        }
        data
    }
    Ok(match like.dtype() {
        DType::F32 => Tensor::from_vec(fill::<f32>(units, signed, rows, k), s, like.device())?,
        dt => Tensor::from_vec(fill::<f64>(units, signed, rows, k), s, like.device())?.to_dtype(dt)?,
    })
}

fn accumulate(slot: &mut Option<Tensor>, v: Tensor) -> Result<()> {
    *slot = Some(match slot.take() {
        None => v,
        Some(s) => s.broadcast_add(&v)?,
    });
    Ok(())
}

/// The state of a backward pass: coefficients on every output below the current one, and the
/// constant terms gathered so far (`[Bλ, m]`).
struct Pass {
    g: Vec<Option<Tensor>>,
    acc: Option<Tensor>,
}

impl Pass {
    fn new(top: usize, lam: Tensor) -> Self {
        let mut g: Vec<Option<Tensor>> = (0..=top).map(|_| None).collect();
        g[top] = Some(lam);
        Pass { g, acc: None }
    }

    /// Hands the coefficients on output `t` to the inputs of node `t`.
    fn step(&mut self, net: &Net<'_>, relax: &Relaxed, t: usize) -> Result<()> {
        let Some(gt) = self.g[t].take() else { return Ok(()) };
        match &net.nodes[t - 1] {
            DualNode::Affine(a) => {
                if let Some(bt) = a.bias_term(&gt)? {
                    accumulate(&mut self.acc, bt)?;
                }
                for (i, v) in a.inputs().indices(t).into_iter().zip(a.transpose(&gt)?) {
                    if let (Some(i), Some(v)) = (i, v) {
                        accumulate(&mut self.g[i], v)?;
                    }
                }
            }
            DualNode::Activation(act) => {
                let r = relax[t].as_ref().ok_or_else(|| {
                    DualError::shape(format!("activation {} at {t} has no linear relaxation", act.name()))
                })?;
                let (gin, off) = r.backward_lower(&gt)?;
                if let Some(off) = off {
                    accumulate(&mut self.acc, off)?;
                }
                accumulate(&mut self.g[t - 1], gin)?;
            }
        }
        Ok(())
    }

    /// Steps from output `from` down to the input and adds the input set's term: `[B, m]`.
    fn finish(mut self, net: &Net<'_>, relax: &Relaxed, from: usize, m: usize) -> Result<Tensor> {
        for t in (1..=from).rev() {
            self.step(net, relax, t)?;
        }
        if let Some(g0) = self.g[0].take() {
            accumulate(&mut self.acc, contract(&g0, net.x)?)?;
            let (lo, _) = net.input.coefficient_terms(&g0)?;
            accumulate(&mut self.acc, lo)?;
        }
        let zeros = Tensor::zeros((net.x.dim(0)?, m), net.x.dtype(), net.x.device())?;
        Ok(match self.acc {
            Some(a) => zeros.broadcast_add(&a)?,
            None => zeros,
        })
    }
}

/// Lower bound of `Λ z_top` over the input set for `lam` `[Bλ, m, *shape_top]`, given the
/// relaxations of every activation at or below `top`; `[B, m]`.
pub fn backward_lower(net: &Net<'_>, relax: &Relaxed, top: usize, lam: Tensor) -> Result<Tensor> {
    let m = lam.dim(1)?;
    Pass::new(top, lam).finish(net, relax, top, m)
}

/// [`backward_lower`] of `Λ z_top + Σ_i E_i z_i` for extra coefficients `E_i` (`[B, m, *shape_i]`)
/// on outputs `i < top`: a lower bound, over the input set, of the objective with extra linear
/// terms. The pass is linear in its coefficients, so `E_i` simply joins what reaches output `i`
/// from above. β-CROWN (Wang et al. 2021, eq. (5)–(7)) uses it for the split terms
/// `Σ_j β_j s_j ẑ_j` (`β ≥ 0`, `s_j ẑ_j ≤ 0` on the split domain): a lower bound of
/// `cᵀ f(x) + Σ β_j s_j ẑ_j(x)` over the box is a lower bound of `cᵀ f(x)` on the domain.
pub fn backward_lower_with_terms(
    net: &Net<'_>,
    relax: &Relaxed,
    top: usize,
    lam: Tensor,
    extra: &[(usize, Tensor)],
) -> Result<Tensor> {
    let m = lam.dim(1)?;
    let mut pass = Pass::new(top, lam);
    for (i, e) in extra {
        if *i >= top {
            return Err(DualError::shape(format!("extra terms on output {i}, not below the top {top}")));
        }
        if e.dim(1)? != m {
            return Err(DualError::shape(format!("extra terms with {} rows for {m} rows", e.dim(1)?)));
        }
        accumulate(&mut pass.g[*i], e.clone())?;
    }
    pass.finish(net, relax, top, m)
}

/// Rows of `K` per chunk so that about `budget` bytes of coefficients are live at once.
fn chunk_rows(net: &Net<'_>, shapes: &[Vec<usize>], top: usize, budget: usize) -> usize {
    let b = net.x.dim(0).unwrap_or(1);
    let widest = shapes[..=top].iter().map(|s| s.iter().product::<usize>()).max().unwrap_or(1);
    let per_row = b * widest * net.x.dtype().size_in_bytes() * 4;
    (budget / per_row.max(1)).max(1)
}

/// CROWN's bounds of output `top` (`[B, *shape]` each) on `units` (flat indices; the others are
/// returned as given in `fallback`), with the relaxations chosen so far. Rows `±e_j` go in
/// chunks of about `budget` bytes.
pub fn layer_bounds(
    net: &Net<'_>,
    relax: &Relaxed,
    shapes: &[Vec<usize>],
    top: usize,
    units: &[usize],
    budget: usize,
) -> Result<(Tensor, Tensor)> {
    let shape = &shapes[top];
    let b = net.x.dim(0)?;
    let chunk = chunk_rows(net, shapes, top, budget) / 2;
    let (mut lows, mut ups) = (Vec::new(), Vec::new());
    for part in units.chunks(chunk.max(1)) {
        let rows = signed_identity_rows(part, true, shape, net.x)?;
        let lb = backward_lower(net, relax, top, rows)?; // [B, 2 len]
        let len = part.len();
        lows.push(lb.narrow(1, 0, len)?);
        ups.push(lb.narrow(1, len, len)?.neg()?);
    }
    let cat = |v: Vec<Tensor>| -> Result<Tensor> {
        if v.is_empty() {
            Ok(Tensor::zeros((b, 0), net.x.dtype(), net.x.device())?)
        } else {
            Ok(Tensor::cat(&v, 1)?)
        }
    };
    Ok((cat(lows)?, cat(ups)?))
}

/// One backward row of a layer-wise bound: unit `j` (flat index) and the side it bounds
/// (`upper`: the row `−e_j`, whose lower bound is minus the unit's upper bound; else `+e_j`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SideRow {
    pub unit: usize,
    pub upper: bool,
}

/// Rows `±e_j` for the rows `rows[i][r0..r0 + len]` of every example `i` (zero rows where an
/// example has fewer), `[B, len, *shape]`.
fn per_example_rows(rows: &[Vec<SideRow>], r0: usize, len: usize, shape: &[usize], like: &Tensor) -> Result<Tensor> {
    let k: usize = shape.iter().product();
    let b = rows.len();
    let mut ones = Vec::new();
    for (i, list) in rows.iter().enumerate() {
        let end = list.len().min(r0 + len);
        for (r, row) in list[r0.min(end)..end].iter().enumerate() {
            ones.push(((i * len + r) * k + row.unit, if row.upper { -1.0 } else { 1.0 }));
        }
    }
    let mut s = vec![b, len];
    s.extend_from_slice(shape);
    Ok(match like.dtype() {
        DType::F32 => {
            let mut data = vec![0f32; b * len * k];
            for &(p, v) in &ones {
                data[p] = v as f32;
            }
            Tensor::from_vec(data, s, like.device())?
        }
        dt => {
            let mut data = vec![0f64; b * len * k];
            for &(p, v) in &ones {
                data[p] = v;
            }
            Tensor::from_vec(data, s, like.device())?.to_dtype(dt)?
        }
    })
}

/// The rows `+e_j` of every unit of output `top` (`[1, K, *shape]`) run backwards through the
/// affine nodes above the first activation below `top`, where they are still shared by the batch
/// and linear in the row (the rows `−e_j` are their negatives there). `None` when some
/// coefficient there is already per example.
fn shared_prefix(net: &Net<'_>, relax: &Relaxed, shapes: &[Vec<usize>], top: usize) -> Result<Option<(Pass, usize)>> {
    let k: usize = shapes[top].iter().product();
    let eye = signed_identity_rows(&(0..k).collect::<Vec<_>>(), false, &shapes[top], net.x)?;
    let mut pass = Pass::new(top, eye);
    let mut t = top;
    while t >= 1 {
        if pass.g[t].is_some() && matches!(net.nodes[t - 1], DualNode::Activation(_)) {
            break;
        }
        pass.step(net, relax, t)?;
        t -= 1;
    }
    let shared = pass.g.iter().flatten().chain(pass.acc.iter()).all(|v| v.dim(0).is_ok_and(|d| d == 1));
    Ok(shared.then_some((pass, t)))
}

/// The rows `+e_j` of every unit of a layer, then their negatives (`[1, 2K, ...]` on every
/// output they reached), run through the affine nodes down to the first activation, where they
/// are still shared by the batch: each example's rows are gathered from them. Built once per
/// layer (both sides' passes use it).
struct SharedRows {
    g: Vec<Option<Tensor>>,
    acc: Option<Tensor>,
    from: usize,
    /// The table at `from` grouped by window, where the rows run on windows
    /// ([`super::window`]).
    windows: Option<Windows>,
}

impl SharedRows {
    fn new(net: &Net<'_>, relax: &Relaxed, shapes: &[Vec<usize>], top: usize) -> Result<Option<Self>> {
        let Some((pass, from)) = shared_prefix(net, relax, shapes, top)? else { return Ok(None) };
        let both = |v: &Tensor| -> Result<Tensor> { Ok(Tensor::cat(&[v, &v.neg()?], 1)?) };
        let g = pass.g.iter().map(|v| v.as_ref().map(both).transpose()).collect::<Result<Vec<_>>>()?;
        let acc = match &pass.acc {
            Some(a) => Some(both(&a.unsqueeze(2)?)?),
            None => None,
        };
        let only_table = g.iter().enumerate().all(|(t, v)| v.is_none() || t == from);
        let windows = match (&g[from], only_table) {
            (Some(table), true) => Windows::new(net, shapes, from, table, true)?,
            _ => None,
        };
        Ok(Some(SharedRows { g, acc, from, windows }))
    }
}

#[allow(clippy::too_many_arguments)]
fn run_rows(
    net: &Net<'_>,
    relax: &Relaxed,
    shapes: &[Vec<usize>],
    top: usize,
    prefix: Option<&SharedRows>,
    rows: &[Vec<SideRow>],
    (lo, up): (&mut Tensor, &mut Tensor),
    budget: usize,
) -> Result<()> {
    let shape = &shapes[top];
    let b = net.x.dim(0)?;
    let k: usize = shape.iter().product();
    let rmax = rows.iter().map(|u| u.len()).max().unwrap_or(0);
    if rmax == 0 {
        return Ok(());
    }
    // Per-example rows make `[Λ]₊` and `[Λ]₋` per example too at the first activation: half the
    // rows of `layer_bounds` per chunk keeps the same memory.
    let chunk = (chunk_rows(net, shapes, top, budget) / 2).max(1);
    let mut r0 = 0;
    while r0 < rmax {
        let len = chunk.min(rmax - r0);
        let (mut pos_l, mut mask_l) = (vec![len as u32; b * k], vec![0u8; b * k]);
        let (mut pos_u, mut mask_u) = (vec![len as u32; b * k], vec![0u8; b * k]);
        let mut sign = vec![0f64; b * len];
        // Each row's place in the shared table `[+e_j; −e_j]` (padding: row 0).
        let mut idx = vec![0u32; b * len];
        for (i, list) in rows.iter().enumerate() {
            let end = list.len().min(r0 + len);
            for (r, row) in list[r0.min(end)..end].iter().enumerate() {
                let (pos, mask) = if row.upper { (&mut pos_u, &mut mask_u) } else { (&mut pos_l, &mut mask_l) };
                pos[i * k + row.unit] = r as u32;
                mask[i * k + row.unit] = 1;
                sign[i * len + r] = if row.upper { -1.0 } else { 1.0 };
                idx[i * len + r] = (row.unit + if row.upper { k } else { 0 }) as u32;
            }
        }
        let counts: Vec<usize> = rows.iter().map(|l| l.len().saturating_sub(r0).min(len)).collect();
        let windowed = match prefix {
            Some(SharedRows { windows: Some(w), from, .. }) => {
                window::rows_lower(net, relax, shapes, *from, w, &idx, &counts, len)?
            }
            _ => None,
        };
        let lb = match (windowed, prefix) {
            // The rows ran on windows: the constants the shared rows gathered on the way remain.
            (Some(lb), Some(SharedRows { acc: Some(a), .. })) => (lb + gather_rows(a, &idx, b, len)?.squeeze(2)?)?,
            (Some(lb), _) => lb,
            (None, Some(SharedRows { g: g2, acc: acc2, from, .. })) => {
                // Every example's own rows, gathered from the shared ones.
                let from = *from;
                // The activation at `from` takes its rows straight from the table (its step may
                // fuse the gather); anything else is gathered first.
                let fused = match (from, g2.get(from)) {
                    (1.., Some(Some(table))) => match (&net.nodes[from - 1], relax[from].as_ref()) {
                        (DualNode::Activation(_), Some(r)) => Some(r.backward_lower_gathered(table, &idx, b, len)?),
                        _ => None,
                    },
                    _ => None,
                };
                let mut g = Vec::with_capacity(g2.len());
                for (t, v) in g2.iter().enumerate() {
                    let skip = fused.is_some() && t == from;
                    g.push(match v {
                        Some(v) if !skip => Some(gather_rows(v, &idx, b, len)?),
                        _ => None,
                    });
                }
                let acc = match acc2 {
                    Some(a) => Some(gather_rows(a, &idx, b, len)?.squeeze(2)?),
                    None => None,
                };
                let mut pass = Pass { g, acc };
                match fused {
                    Some((gin, off)) => {
                        if let Some(off) = off {
                            accumulate(&mut pass.acc, off)?;
                        }
                        accumulate(&mut pass.g[from - 1], gin)?;
                        pass.finish(net, relax, from - 1, len)?
                    }
                    None => pass.finish(net, relax, from, len)?,
                }
            }
            (None, None) => backward_lower(net, relax, top, per_example_rows(rows, r0, len, shape, net.x)?)?,
        };
        // A row `−e_j` bounds `−z_j` from below: the unit's upper bound is minus that.
        let sign = Tensor::from_vec(sign, (b, len), lb.device())?.to_dtype(lb.dtype())?;
        let zero = Tensor::zeros((b, 1), lb.dtype(), lb.device())?;
        let ext = Tensor::cat(&[&(lb * sign)?, &zero], 1)?;
        let put = |pos: Vec<u32>, mask: Vec<u8>, into: &mut Tensor| -> Result<()> {
            if mask.iter().any(|&m| m != 0) {
                let pos = Tensor::from_vec(pos, (b, k), ext.device())?;
                let mask = Tensor::from_vec(mask, (b, k), ext.device())?;
                *into = mask.where_cond(&ext.gather(&pos, 1)?, into)?;
            }
            Ok(())
        };
        put(pos_l, mask_l, lo)?;
        put(pos_u, mask_u, up)?;
        r0 += len;
    }
    Ok(())
}

fn check_fallback(b: usize, k: usize, need: &[Vec<usize>], fallback: (&Tensor, &Tensor)) -> Result<()> {
    if need.len() != b || fallback.0.dims() != [b, k] || fallback.1.dims() != [b, k] {
        return Err(DualError::shape(format!(
            "per-example units for {} examples and fallback bounds {:?} / {:?}; expected {b} and [{b}, {k}]",
            need.len(),
            fallback.0.dims(),
            fallback.1.dims()
        )));
    }
    Ok(())
}

/// CROWN's bounds of output `top`, `(lower, upper)` `[B, K]`, on the units `need[i]` of each
/// example `i`, and `fallback` elsewhere, with the relaxations chosen so far: both sides of
/// every unit needed. The same numbers as [`layer_bounds`] on the units computed
/// (differentiable in both).
pub fn layer_bounds_per_example(
    net: &Net<'_>,
    relax: &Relaxed,
    shapes: &[Vec<usize>],
    top: usize,
    need: &[Vec<usize>],
    fallback: (&Tensor, &Tensor),
    budget: usize,
) -> Result<(Tensor, Tensor)> {
    let b = net.x.dim(0)?;
    let k: usize = shapes[top].iter().product();
    check_fallback(b, k, need, fallback)?;
    let rows: Vec<Vec<SideRow>> = need
        .iter()
        .map(|u| u.iter().flat_map(|&unit| [false, true].map(|upper| SideRow { unit, upper })).collect())
        .collect();
    let (mut lo, mut up) = (fallback.0.clone(), fallback.1.clone());
    let prefix = SharedRows::new(net, relax, shapes, top)?;
    run_rows(net, relax, shapes, top, prefix.as_ref(), &rows, (&mut lo, &mut up), budget)?;
    Ok((lo, up))
}

/// CROWN's layer-wise bounds for an activation whose relaxation of a unit depends only on its
/// class once the unit is stable (ReLU: `l ≥ 0` identity, `u ≤ 0` zero). Each unit of `need[i]`
/// first runs the side that is likelier to prove it stable (the lower bound where the sound
/// `guess` interval leans positive, `l̃ + ũ ≥ 0`, else the upper); the other side runs only for
/// the units that side left unstable. A unit proved stable keeps `guess` on its other side: a
/// sound bound, looser than CROWN's, that changes no relaxation (the unit is stable either way),
/// so every bound computed from these relaxations is CROWN's. Units outside `need` keep `guess`.
/// Rows run: `Σ_j (1 + [j left unstable by its first side])` instead of `2 |need|`.
pub fn layer_bounds_one_sign_first(
    net: &Net<'_>,
    relax: &Relaxed,
    shapes: &[Vec<usize>],
    top: usize,
    need: &[Vec<usize>],
    guess: (&Tensor, &Tensor),
    budget: usize,
) -> Result<(Tensor, Tensor)> {
    let b = net.x.dim(0)?;
    let k: usize = shapes[top].iter().product();
    check_fallback(b, k, need, guess)?;
    let flat = |t: &Tensor| -> Result<Vec<f64>> { Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?) };
    let (gl, gu) = (flat(guess.0)?, flat(guess.1)?);
    let upper_first = |i: usize, j: usize| gl[i * k + j] + gu[i * k + j] < 0.0;
    let first: Vec<Vec<SideRow>> = need
        .iter()
        .enumerate()
        .map(|(i, u)| u.iter().map(|&unit| SideRow { unit, upper: upper_first(i, unit) }).collect())
        .collect();
    let (mut lo, mut up) = (guess.0.clone(), guess.1.clone());
    let prefix = SharedRows::new(net, relax, shapes, top)?;
    run_rows(net, relax, shapes, top, prefix.as_ref(), &first, (&mut lo, &mut up), budget)?;
    let (l1, u1) = (flat(&lo)?, flat(&up)?);
    let second: Vec<Vec<SideRow>> = first
        .iter()
        .enumerate()
        .map(|(i, rows)| {
            rows.iter()
                .filter(|r| if r.upper { u1[i * k + r.unit] > 0.0 } else { l1[i * k + r.unit] < 0.0 })
                .map(|r| SideRow { unit: r.unit, upper: !r.upper })
                .collect()
        })
        .collect();
    run_rows(net, relax, shapes, top, prefix.as_ref(), &second, (&mut lo, &mut up), budget)?;
    Ok((lo, up))
}
