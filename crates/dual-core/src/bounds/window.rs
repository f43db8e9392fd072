//! CROWN's rows of single units on spatial windows (auto_LiRPA's "patches").
//!
//! The row `±e_j` of a convolution's output unit `j`, pushed back through that convolution, is
//! non-zero only on the `k × k` window of its input that the unit reads; a ReLU keeps it there
//! (its step is elementwise), and the convolution below widens it to `(k − 1)·s + k'` pixels. On
//! the papers' Fashion-MNIST model, the rows of the second convolution's units live on 4×4 of the
//! 14×14 pixels of the first ReLU and on 10×10 of the 28×28 input pixels, yet the whole-image pass
//! carried, relaxed and transposed every pixel of every row: two thirds of CROWN's time.
//!
//! Here the shared rows at the first activation below the layer (the table of
//! [`super::crown`]'s shared prefix) are grouped by the bounding box of their non-zeros, each
//! group is cut to its box once per layer, and every example's rows run on those windows down to
//! the input: an activation through [`super::LinearRelaxation::crop`], an affine layer through
//! [`crate::DualAffine::transpose_window`] (entries past the edge of a grid multiply zero padding
//! and are dropped), the input box by its centre and radius on the window,
//! `Λ₀(x + m) − |Λ₀| ρ` (Zhang et al. 2018, eq. for the input layer). The numbers are those of
//! the whole-image pass up to the order of the sums: only zeros are left out.

use super::crown::Relaxed;
use super::Net;
use crate::{layer::DualNode, source::DualSource, Result};
use candle_core::{DType, Tensor};
use std::cell::Cell;
use std::collections::BTreeMap;

thread_local! {
    static ROWS_ON_WINDOWS: Cell<usize> = const { Cell::new(0) };
}

/// How many rows this thread has run on windows so far, CROWN's and the exact dual's backward
/// form's (tests and diagnostics: whether the path was taken).
pub fn rows_on_windows() -> usize {
    ROWS_ON_WINDOWS.with(Cell::get)
}

/// Adds `n` rows to [`rows_on_windows`].
pub(crate) fn count_rows(n: usize) {
    ROWS_ON_WINDOWS.with(|c| c.set(c.get() + n));
}

/// Rows `y0..y0 + h`, columns `x0..x0 + w` of a grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Bbox {
    pub y0: usize,
    pub h: usize,
    pub x0: usize,
    pub w: usize,
}

/// One group of the table's rows: their common box and the rows cut to it, `[1, m + 1, C, h, w]`
/// (the last row zero, for the examples with fewer rows in the group).
pub(crate) struct Group {
    pub bbox: Bbox,
    pub rows: Tensor,
    /// Index of the zero row.
    pub zero: u32,
}

/// The table's rows grouped by window, built once per layer.
pub(crate) struct Windows {
    pub groups: Vec<Group>,
    /// For every row of the table: its group and its place in the group.
    pub place: Vec<(u32, u32)>,
}

/// Whether the windowed path applies below output `from`: the input set is a box, and every
/// node below is an activation or an affine layer reading the output just below it, on
/// `[C, H, W]` outputs. (Whether each layer has a windowed form is asked as the rows run.)
pub(crate) fn chain_applies(nodes: &[DualNode], shapes: &[Vec<usize>], input: &dyn DualSource, from: usize) -> bool {
    if !input.is_box() || from == 0 || shapes.len() <= from {
        return false;
    }
    (1..=from).all(|t| {
        let reads_below = match &nodes[t - 1] {
            DualNode::Activation(_) => true,
            DualNode::Affine(a) => a.inputs().indices(t) == vec![Some(t - 1)],
        };
        reads_below && shapes[t].len() == 3
    }) && shapes[0].len() == 3
}

/// The input set's box (`x + [m − ρ, m + ρ]`, relative to `x`) as `(m, ρ)`, each
/// `[B or 1, C, H, W]` on the input's `[C, H, W]` grid; `None` when the set states no box.
pub(crate) fn input_box(input: &dyn DualSource, in_shape: &[usize], x: &Tensor) -> Option<Result<(Tensor, Tensor)>> {
    let f = |(m, rad): (Tensor, Tensor)| -> Result<(Tensor, Tensor)> {
        let grid = |v: &Tensor| -> Result<Tensor> {
            let lead = v.elem_count() / in_shape.iter().product::<usize>().max(1);
            Ok(v.to_dtype(x.dtype())?.reshape((lead, in_shape[0], in_shape[1], in_shape[2]))?)
        };
        Ok((grid(&m)?, grid(&rad)?))
    };
    input.interval_box().map(|bx| bx.and_then(f))
}

/// The bounding box of the non-zeros of one row `[C, H, W]` (`None`: all zero).
fn bbox_of<T: PartialEq + Default + Copy>(row: &[T], c: usize, h: usize, w: usize) -> Option<Bbox> {
    let (mut y0, mut y1, mut x0, mut x1) = (usize::MAX, 0, usize::MAX, 0);
    let zero = T::default();
    for ch in 0..c {
        for y in 0..h {
            let line = &row[(ch * h + y) * w..(ch * h + y + 1) * w];
            let Some(first) = line.iter().position(|v| *v != zero) else { continue };
            let last = line.iter().rposition(|v| *v != zero).unwrap_or(first);
            y0 = y0.min(y);
            y1 = y1.max(y + 1);
            x0 = x0.min(first);
            x1 = x1.max(last + 1);
        }
    }
    (y0 != usize::MAX).then_some(Bbox { y0, h: y1 - y0, x0, w: x1 - x0 })
}

impl Windows {
    /// Groups the rows of `table` (`[1, R, C, H, W]`, the coefficients on output `from`; with
    /// `mirrored`, row `R/2 + i` is minus row `i`) by the box of their non-zeros, when the path
    /// applies below `from` and the boxes cover on average at most a quarter of the grid (else
    /// the whole-image pass costs no more). All-zero rows go to a 1×1 box.
    pub(crate) fn new(
        net: &Net<'_>,
        shapes: &[Vec<usize>],
        from: usize,
        table: &Tensor,
        mirrored: bool,
    ) -> Result<Option<Self>> {
        if !chain_applies(net.nodes, shapes, net.input, from) {
            return Ok(None);
        }
        Self::group(table, mirrored)
    }

    /// The grouping of [`Self::new`] without the check of the layers below.
    pub(crate) fn group(table: &Tensor, mirrored: bool) -> Result<Option<Self>> {
        if table.rank() != 5 || table.dim(0)? != 1 {
            return Ok(None);
        }
        let (_, r, c, h, w) = table.dims5()?;
        let half = if mirrored && r % 2 == 0 { r / 2 } else { r };
        // The scanned rows as f64 when the table tracks gradients (the boxes only), else in
        // the table's own type (also the source of the cut rows).
        let scanned = table.narrow(1, 0, half)?.flatten_all()?;
        let data = match table.dtype() {
            DType::F32 => Data::F32(scanned.to_vec1::<f32>()?),
            _ => Data::F64(scanned.to_dtype(DType::F64)?.to_vec1::<f64>()?),
        };
        let per = c * h * w;
        let boxes: Vec<Option<Bbox>> = (0..half)
            .map(|i| match &data {
                Data::F32(v) => bbox_of(&v[i * per..(i + 1) * per], c, h, w),
                Data::F64(v) => bbox_of(&v[i * per..(i + 1) * per], c, h, w),
            })
            .collect();
        let area: usize = boxes.iter().map(|b| b.map_or(1, |b| b.h * b.w)).sum();
        if half == 0 || 4 * area > half * h * w {
            return Ok(None);
        }
        let mut members: BTreeMap<Bbox, Vec<u32>> = BTreeMap::new();
        for i in 0..r {
            let b = boxes[i % half].unwrap_or(Bbox { y0: 0, h: 1, x0: 0, w: 1 });
            members.entry(b).or_default().push(i as u32);
        }
        let mut place = vec![(0u32, 0u32); r];
        let mut groups = Vec::with_capacity(members.len());
        for (g, (bbox, ids)) in members.into_iter().enumerate() {
            for (s, &i) in ids.iter().enumerate() {
                place[i as usize] = (g as u32, s as u32);
            }
            let rows = if table.track_op() || table.dtype() != data.dtype() {
                // Candle's ops, so that gradients reach the table.
                let sel = Tensor::from_vec(ids.clone(), ids.len(), table.device())?;
                let cut = table.index_select(&sel, 1)?.narrow(3, bbox.y0, bbox.h)?.narrow(4, bbox.x0, bbox.w)?;
                let zero = Tensor::zeros((1, 1, c, bbox.h, bbox.w), table.dtype(), table.device())?;
                Tensor::cat(&[&cut, &zero], 1)?
            } else {
                let shape = (1, ids.len() + 1, c, bbox.h, bbox.w);
                match &data {
                    Data::F32(v) => Tensor::from_vec(cut_rows(v, &ids, half, bbox, (c, h, w)), shape, table.device())?,
                    Data::F64(v) => Tensor::from_vec(cut_rows(v, &ids, half, bbox, (c, h, w)), shape, table.device())?,
                }
            };
            groups.push(Group { bbox, rows, zero: ids.len() as u32 });
        }
        Ok(Some(Windows { groups, place }))
    }
}

/// The scanned rows of the table, in its own element type where it has one here.
enum Data {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Data {
    fn dtype(&self) -> DType {
        match self {
            Data::F32(_) => DType::F32,
            Data::F64(_) => DType::F64,
        }
    }
}

/// Rows `ids` of a table whose first `half` rows are `v` (`[half, C, H, W]`) and whose others
/// are their negatives, cut to `bbox`, then one zero row: `(|ids| + 1) · C · h · w` values.
fn cut_rows<T: Copy + Default + std::ops::Neg<Output = T>>(
    v: &[T],
    ids: &[u32],
    half: usize,
    bbox: Bbox,
    (c, h, w): (usize, usize, usize),
) -> Vec<T> {
    let mut out = Vec::with_capacity((ids.len() + 1) * c * bbox.h * bbox.w);
    for &i in ids {
        let (src, negate) = ((i as usize) % half, (i as usize) >= half);
        let row = &v[src * c * h * w..(src + 1) * c * h * w];
        for ch in 0..c {
            for y in bbox.y0..bbox.y0 + bbox.h {
                let line = &row[(ch * h + y) * w + bbox.x0..(ch * h + y) * w + bbox.x0 + bbox.w];
                if negate {
                    out.extend(line.iter().map(|&e| -e));
                } else {
                    out.extend_from_slice(line);
                }
            }
        }
    }
    out.resize((ids.len() + 1) * c * bbox.h * bbox.w, T::default());
    out
}

/// Narrows `g` (`[B, n, C, h, w]` at `origin`) to the part inside an `hh × ww` grid: the part and
/// its origin, `None` when nothing is inside.
pub(crate) fn clip(
    g: Tensor,
    origin: (isize, isize),
    hh: usize,
    ww: usize,
) -> Result<Option<(Tensor, (usize, usize))>> {
    let (_, _, _, h, w) = g.dims5()?;
    let range = |o: isize, len: usize, grid: usize| -> Option<(usize, usize, usize)> {
        let lo = o.max(0);
        let hi = (o + len as isize).min(grid as isize);
        (hi > lo).then(|| ((lo - o) as usize, lo as usize, (hi - lo) as usize))
    };
    let (Some((sy, y, ny)), Some((sx, x, nx))) = (range(origin.0, h, hh), range(origin.1, w, ww)) else {
        return Ok(None);
    };
    let g = if (sy, ny, sx, nx) == (0, h, 0, w) { g } else { g.narrow(3, sy, ny)?.narrow(4, sx, nx)? };
    Ok(Some((g, (y, x))))
}

/// `(Σ g m, Σ |g| ρ)` over a window (`g` `[B or 1, n, C, h, w]` at `at`) of a box with centre `m`
/// and radius `ρ` (`[B or 1, C, H, W]`): the input term of a windowed row is `Σ g m ∓ Σ |g| ρ`.
pub(crate) fn box_terms(g: &Tensor, at: (usize, usize), mid: &Tensor, rad: &Tensor) -> Result<(Tensor, Tensor)> {
    let (_, _, _, h, w) = g.dims5()?;
    let cut = |v: &Tensor| -> Result<Tensor> { Ok(v.narrow(2, at.0, h)?.narrow(3, at.1, w)?) };
    Ok((dot3(g, &cut(mid)?)?, dot3(&g.abs()?, &cut(rad)?)?))
}

/// `Σ_p g[·, ·, p] v[·, p]` over the last three axes, `g` `[B, n, C, h, w]`, `v` `[B or 1, C, h, w]`:
/// `[B, n]`.
fn dot3(g: &Tensor, v: &Tensor) -> Result<Tensor> {
    let v = v.unsqueeze(1)?.flatten_from(2)?;
    Ok(g.flatten_from(2)?.broadcast_mul(&v)?.sum(2)?)
}

/// `acc += v` (broadcasting), `acc = v` the first time: the terms a windowed walk collects.
pub(crate) fn accumulate(acc: &mut Option<Tensor>, v: Tensor) -> Result<()> {
    *acc = Some(match acc.take() {
        None => v,
        Some(a) => a.broadcast_add(&v)?,
    });
    Ok(())
}

/// `f` on every item, in order, on as many scoped threads as the CPU pool has (Candle's
/// `get_num_threads`); items are dealt round-robin. The first error wins.
pub(crate) fn map_threads<I: Send, R: Send>(items: Vec<I>, f: impl Fn(I) -> Result<R> + Sync) -> Result<Vec<R>> {
    let threads = candle_core::utils::get_num_threads().clamp(1, items.len().max(1));
    if threads == 1 {
        return items.into_iter().map(f).collect();
    }
    let count = items.len();
    let mut lanes: Vec<Vec<(usize, I)>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        lanes[i % threads].push((i, item));
    }
    let f = &f;
    let done: Vec<Vec<(usize, Result<R>)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = lanes
            .into_iter()
            .map(|lane| scope.spawn(move || lane.into_iter().map(|(i, item)| (i, f(item))).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    });
    let mut out: Vec<Option<R>> = (0..count).map(|_| None).collect();
    for (i, r) in done.into_iter().flatten() {
        out[i] = Some(r?);
    }
    Ok(out.into_iter().map(|r| r.expect("every item ran")).collect())
}

/// Lower bounds of the rows `idx` (`b · len`, example-major, indices into the table `Windows`
/// was built from; example `e` has `counts[e]` real rows, the rest are padding and get 0) over
/// the input set, without the table's own constant terms: `[b, len]`. `None` when some layer
/// below has no windowed form (the caller then runs the whole-image pass).
#[allow(clippy::too_many_arguments)]
pub(crate) fn rows_lower(
    net: &Net<'_>,
    relax: &Relaxed,
    shapes: &[Vec<usize>],
    from: usize,
    windows: &Windows,
    idx: &[u32],
    counts: &[usize],
    len: usize,
) -> Result<Option<Tensor>> {
    let b = counts.len();
    // The input box in absolute coordinates: centre `x + m`, radius `ρ`.
    let Some(bx) = input_box(net.input, &shapes[0], net.x) else { return Ok(None) };
    let (m, rad) = bx?;
    let centre = net.x.broadcast_add(&m)?;
    // Rows per group and example: (row slot in the chunk, place in the group).
    let mut by_group: BTreeMap<u32, Vec<Vec<(usize, u32)>>> = BTreeMap::new();
    for (e, &count) in counts.iter().enumerate() {
        for r in 0..count.min(len) {
            let (g, s) = windows.place[idx[e * len + r] as usize];
            by_group.entry(g).or_insert_with(|| vec![Vec::new(); b])[e].push((r, s));
        }
    }
    // Each group's rows (table places, example-major, `n` per example) and where its values go.
    let mut pos = vec![u32::MAX; b * len];
    let mut offset = 0usize;
    let mut jobs = Vec::with_capacity(by_group.len());
    for (gi, per_example) in by_group {
        let group = &windows.groups[gi as usize];
        let n = per_example.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = vec![group.zero; b * n];
        for (e, list) in per_example.iter().enumerate() {
            for (q, &(r, s)) in list.iter().enumerate() {
                ids[e * n + q] = s;
                pos[e * len + r] = (offset + e * n + q) as u32;
            }
        }
        jobs.push((group, ids, n));
        offset += b * n;
    }
    // The groups are independent: they run on the threads of the pool's size.
    let run = |(group, ids, n): (&Group, Vec<u32>, usize)| -> Result<Option<Tensor>> {
        let sel = Tensor::from_vec(ids, b * n, net.x.device())?;
        let bb = group.bbox;
        let (c, h, w) = (group.rows.dim(2)?, bb.h, bb.w);
        let mut g = group.rows.index_select(&sel, 1)?.reshape((b, n, c, h, w))?;
        let mut origin = (bb.y0 as isize, bb.x0 as isize);
        let mut acc: Option<Tensor> = None;
        let mut t = from;
        loop {
            let Some((inside, at)) = clip(g, origin, shapes[t][1], shapes[t][2])? else { break };
            if t == 0 {
                let (lin, abs) = box_terms(&inside, at, &centre, &rad)?;
                accumulate(&mut acc, (lin - abs)?)?;
                break;
            }
            match &net.nodes[t - 1] {
                DualNode::Activation(_) => {
                    let (_, _, _, h, w) = inside.dims5()?;
                    let Some(r) = relax[t].as_ref() else { return Ok(None) };
                    let Some(cropped) = r.crop(at.0, h, at.1, w) else { return Ok(None) };
                    let (gin, off) = cropped?.backward_lower(&inside)?;
                    if let Some(off) = off {
                        accumulate(&mut acc, off)?;
                    }
                    g = gin;
                    origin = (at.0 as isize, at.1 as isize);
                }
                DualNode::Affine(a) => {
                    let Some(step) = a.transpose_window(&inside, (at.0 as isize, at.1 as isize)) else {
                        return Ok(None);
                    };
                    let step = step?;
                    if let Some(bias) = step.bias {
                        accumulate(&mut acc, bias)?;
                    }
                    g = step.g;
                    origin = step.origin;
                }
            }
            t -= 1;
        }
        let value = acc.map_or_else(|| Tensor::zeros((b, n), net.x.dtype(), net.x.device()), Ok)?;
        Ok(Some(value.flatten_all()?))
    };
    let mut parts = Vec::with_capacity(jobs.len() + 1);
    for part in map_threads(jobs, run)? {
        match part {
            Some(p) => parts.push(p),
            None => return Ok(None),
        }
    }
    count_rows(counts.iter().map(|&n| n.min(len)).sum::<usize>());
    parts.push(Tensor::zeros(1, net.x.dtype(), net.x.device())?);
    let zero_at = offset as u32;
    let pos: Vec<u32> = pos.into_iter().map(|p| if p == u32::MAX { zero_at } else { p }).collect();
    let all = Tensor::cat(&parts, 0)?;
    let pos = Tensor::from_vec(pos, b * len, net.x.device())?;
    Ok(Some(all.index_select(&pos, 0)?.reshape((b, len))?))
}
