//! A node's interval map on raw rows, for IBP's fused inference pass.
//!
//! Interval bound propagation (Gowal et al. 2018, Eq. 6) maps a box `mid ± rad` through an affine
//! layer as `A mid + b ± |A| rad` and through a monotone activation σ as the image
//! `[σ(mid − rad), σ(mid + rad)]`. With one Candle op per step, a small network's IBP is mostly
//! per-op overhead: each op wakes the thread pool, allocates and waits for its slowest thread.
//! When nothing is differentiated, `bounds::ibp` instead cuts the batch into one slice per thread
//! and runs every node's [`IntervalRows`] on its slice, one node after the other, with no pool
//! and no synchronisation until the end. A node offers the map through
//! `SingleInputAffine::interval_rows`, `DualAffine::interval_rows` or
//! `DualActivation::interval_rows`; a node without one (the default) keeps the op-by-op pass for
//! the whole network. The map must compute the same numbers as the node's
//! `forward`/`forward_abs` (or `interval_mid_rad`): IBP's results do not depend on the path.
//!
//! The same maps give the plain forward pass of a chain of layers ([`forward_chain`]): a network
//! crate's inference pass (the prediction beside every certificate) runs fused the same way.

use crate::{DualError, Result};
use candle_core::{DType, Tensor, WithDType};
use std::sync::Mutex;

/// The interval map of one node on the rows of a few examples, on the calling thread only (no
/// thread pool, no Candle ops: many run at once, one per slice of the batch). A node offers one
/// only when nothing is differentiated through it (its parameters track no ops).
pub trait IntervalRows: Send + Sync {
    /// The output shape (without batch) for an input shaped `in_shape`; an error naming the
    /// layer when it does not take that shape.
    fn out_shape(&self, in_shape: &[usize]) -> Result<Vec<usize>>;

    /// `n` examples: `mid`, `rad` `[n, in_len]` row-major in; `out_mid`, `out_rad` `[n, out_len]`
    /// written in full.
    fn map_f32(&self, n: usize, mid: &[f32], rad: &[f32], out_mid: &mut [f32], out_rad: &mut [f32]) -> Result<()>;

    /// [`IntervalRows::map_f32`] in f64.
    fn map_f64(&self, n: usize, mid: &[f64], rad: &[f64], out_mid: &mut [f64], out_rad: &mut [f64]) -> Result<()>;

    /// The node's plain forward pass (bias included) on `n` examples: `x` `[n, in_len]` in,
    /// `out` `[n, out_len]` written in full.
    fn forward_f32(&self, n: usize, x: &[f32], out: &mut [f32]) -> Result<()>;

    /// [`IntervalRows::forward_f32`] in f64.
    fn forward_f64(&self, n: usize, x: &[f64], out: &mut [f64]) -> Result<()>;
}

/// The element types of the fused passes, each with its entries of [`IntervalRows`].
pub(crate) trait RowElem: WithDType + Default + crate::scratch::ScratchElem {
    fn map(m: &dyn IntervalRows, n: usize, mid: &[Self], rad: &[Self], om: &mut [Self], or: &mut [Self]) -> Result<()>;
    fn forward(m: &dyn IntervalRows, n: usize, x: &[Self], out: &mut [Self]) -> Result<()>;
}

impl RowElem for f32 {
    fn map(m: &dyn IntervalRows, n: usize, mid: &[f32], rad: &[f32], om: &mut [f32], or: &mut [f32]) -> Result<()> {
        m.map_f32(n, mid, rad, om, or)
    }
    fn forward(m: &dyn IntervalRows, n: usize, x: &[f32], out: &mut [f32]) -> Result<()> {
        m.forward_f32(n, x, out)
    }
}

impl RowElem for f64 {
    fn map(m: &dyn IntervalRows, n: usize, mid: &[f64], rad: &[f64], om: &mut [f64], or: &mut [f64]) -> Result<()> {
        m.map_f64(n, mid, rad, om, or)
    }
    fn forward(m: &dyn IntervalRows, n: usize, x: &[f64], out: &mut [f64]) -> Result<()> {
        m.forward_f64(n, x, out)
    }
}

/// The shapes along the chain `maps` for inputs shaped `in_shape` (without batch):
/// `[in_shape, out_1, …, out_n]`; an error where a map does not take its input's shape.
pub(crate) fn chain_shapes(maps: &[Box<dyn IntervalRows + '_>], in_shape: &[usize]) -> Result<Vec<Vec<usize>>> {
    let mut shapes = vec![in_shape.to_vec()];
    for (t, m) in maps.iter().enumerate() {
        shapes.push(m.out_shape(&shapes[t])?);
    }
    Ok(shapes)
}

/// The forward pass of the chain `maps` (each reading the previous output) on the CPU f32/f64
/// batch `x` (`[B, *in_shape]`), one slice of the batch per thread of `pool`, each slice
/// through every map with two scratch buffers of its own; the output `[B, *out_shape]`. `None`
/// where it does not apply (another device or dtype, `x` tracks its ops).
pub fn forward_chain(maps: &[Box<dyn IntervalRows + '_>], x: &Tensor, pool: CpuPool) -> Result<Option<Tensor>> {
    if !x.device().is_cpu() || x.track_op() || x.rank() == 0 {
        return Ok(None);
    }
    let shapes = chain_shapes(maps, &x.dims()[1..])?;
    match x.dtype() {
        DType::F32 => forward_run::<f32>(maps, &shapes, x, pool).map(Some),
        DType::F64 => forward_run::<f64>(maps, &shapes, x, pool).map(Some),
        _ => Ok(None),
    }
}

fn forward_run<T: RowElem>(
    maps: &[Box<dyn IntervalRows + '_>],
    shapes: &[Vec<usize>],
    x: &Tensor,
    pool: CpuPool,
) -> Result<Tensor> {
    let b = x.dim(0)?;
    let xs: Vec<T> = x.flatten_all()?.to_vec1()?;
    let [out] = through_chain(maps, shapes, b, [&xs], pool, |m, n, [x], [o]| T::forward(m, n, x, o))?;
    let mut s = vec![b];
    s.extend_from_slice(&shapes[shapes.len() - 1]);
    Ok(Tensor::from_vec(out, s, x.device())?)
}

/// The chain `maps` on `K` streams of rows (`ins[k]`: `b` examples of the chain's input, row
/// after row), one slice of the batch per thread of `pool`, each slice through every map with two
/// scratch buffers per stream of its own (no batch-sized buffer between maps); `step` applies one
/// map to a slice. Returns the last map's output of every stream, `b` rows each. The forward pass
/// is one stream, an interval pass two (centres and radii).
pub(crate) fn through_chain<T: RowElem, const K: usize>(
    maps: &[Box<dyn IntervalRows + '_>],
    shapes: &[Vec<usize>],
    b: usize,
    ins: [&[T]; K],
    pool: CpuPool,
    step: impl Fn(&dyn IntervalRows, usize, [&[T]; K], [&mut [T]; K]) -> Result<()> + Sync,
) -> Result<[Vec<T>; K]> {
    let lens: Vec<usize> = shapes.iter().map(|s| s.iter().product()).collect();
    let (l0, ln) = (lens[0], lens[lens.len() - 1]);
    if let Some(bad) = ins.iter().find(|v| v.len() != b * l0) {
        return Err(DualError::shape(format!("chain rows: {} values for a batch of {b} × {l0}", bad.len())));
    }
    let per = b.div_ceil(pool_threads(pool).clamp(1, b.max(1))).max(1);
    let widest = lens.iter().copied().max().unwrap_or(0);
    let mut outs: [Vec<T>; K] = std::array::from_fn(|_| vec![T::default(); b * ln]);
    if ln > 0 && b > 0 {
        let mut chunks = outs.each_mut().map(|o| o.chunks_mut(per * ln));
        let slots: Vec<[&mut [T]; K]> =
            (0..b.div_ceil(per)).map(|_| chunks.each_mut().map(|c| c.next().expect("one chunk per slot"))).collect();
        run_slots(pool, slots.into_iter().enumerate().collect(), |(i, mut dst)| -> Result<()> {
            let (first, n) = (i * per, dst[0].len() / ln);
            // Two ping-pong buffers per stream from the thread's scratch (no zero fill per call).
            let sizes = vec![n * widest; 2 * K];
            let mut scratch = crate::scratch::Scratch::<T>::take(&sizes);
            let mut bufs = scratch.all(&sizes).into_iter();
            let mut a: [&mut [T]; K] = std::array::from_fn(|_| bufs.next().expect("2K buffers"));
            let mut c: [&mut [T]; K] = std::array::from_fn(|_| bufs.next().expect("2K buffers"));
            let rows_in: [&[T]; K] = ins.map(|src| &src[first * l0..(first + n) * l0]);
            let last = maps.len().saturating_sub(1);
            for (t, m) in maps.iter().enumerate() {
                let (li, lo) = (lens[t] * n, lens[t + 1] * n);
                // The first map reads the slice of the input in place.
                let from = if t == 0 { rows_in } else { a.each_ref().map(|v| &v[..li]) };
                if t == last {
                    step(m.as_ref(), n, from, dst.each_mut().map(|d| &mut **d))?;
                } else {
                    step(m.as_ref(), n, from, c.each_mut().map(|v| &mut v[..lo]))?;
                    std::mem::swap(&mut a, &mut c);
                }
            }
            if maps.is_empty() {
                for (d, src) in dst.iter_mut().zip(rows_in) {
                    d.copy_from_slice(src);
                }
            }
            Ok(())
        })?;
    }
    Ok(outs)
}

/// The CPU thread pool a fused pass runs on. Candle runs its own ops on its barrier pool and its
/// matmuls (and this workspace's kernels) on rayon's; a pass is fastest on the pool whose threads
/// the work around it keeps busy: with the other one the two sets of threads take turns on the
/// CPUs (wake-ups across pools, preemptions; measured 2026-12-05, docs/PERFORMANCE.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuPool {
    /// Candle's barrier pool (its workers and the calling thread): where IBP alone, whose other
    /// steps are Candle ops, runs best (0.77–0.83 ms per batch of 50 against 0.77–1.39 on rayon's).
    Candle,
    /// Rayon's global pool: where the backward methods' kernels run (CROWN-IBP 4.7–5.0 ms per
    /// batch of 50 against 6.0–10.5 with its interval pass on Candle's pool).
    Rayon,
}

impl CpuPool {
    /// The pool that runs Candle's own ops: its barrier pool, or rayon's where the barrier pool
    /// has no workers (`CANDLE_NUM_THREADS=1`: Candle's ops then run on the calling thread alone).
    pub fn of_candle_ops() -> Self {
        if candle_core::utils::barrier_pool().n_workers() > 0 {
            CpuPool::Candle
        } else {
            CpuPool::Rayon
        }
    }
}

/// Threads of `pool`: one slice of the batch each.
pub(crate) fn pool_threads(pool: CpuPool) -> usize {
    match pool {
        CpuPool::Candle => candle_core::utils::barrier_pool().n_workers() + 1,
        CpuPool::Rayon => rayon::current_num_threads(),
    }
}

/// Runs `f` once on every slot, the slots spread over `pool` (on Candle's the calling thread
/// takes part), and returns the first error. `f` must not call Candle ops (its pool is not
/// re-entrant).
pub(crate) fn run_slots<S: Send>(pool: CpuPool, slots: Vec<S>, f: impl Fn(S) -> Result<()> + Sync) -> Result<()> {
    let cells: Vec<Mutex<Option<S>>> = slots.into_iter().map(|s| Mutex::new(Some(s))).collect();
    let first_err: Mutex<Option<DualError>> = Mutex::new(None);
    let run = |cell: &Mutex<Option<S>>| {
        let slot = cell.lock().ok().and_then(|mut c| c.take());
        if let Some(Err(e)) = slot.map(&f) {
            if let Ok(mut fe) = first_err.lock() {
                fe.get_or_insert(e);
            }
        }
    };
    match pool {
        CpuPool::Candle => candle_core::utils::barrier_pool().execute_chunked(cells.len(), |range| {
            cells[range].iter().for_each(run);
        }),
        CpuPool::Rayon => {
            use rayon::prelude::*;
            cells.par_iter().for_each(run);
        }
    }
    match first_err.into_inner() {
        Ok(Some(e)) => Err(e),
        _ => Ok(()),
    }
}
