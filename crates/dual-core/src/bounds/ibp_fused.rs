//! IBP's inference pass, fused per thread: the batch is cut into one slice per thread of a CPU
//! pool ([`CpuPool`]) and each thread pushes its slice through every node ([`IntervalRows`]) on its own, with
//! no pool wake-up, no allocation per op and no barrier between layers. The same boxes as the
//! op-by-op pass of [`super::ibp::propagate`] (each map computes what its node's ops compute; the
//! gemm blocking may differ, so sums can differ in the last bits). Taken only where nothing is
//! differentiated and every node up to the requested one offers a map on a plain chain (no skip
//! inputs); otherwise the caller runs the op-by-op pass.

use super::ibp::{input_box, Boxes};
use super::Net;
use crate::interval_rows::{chain_shapes, pool_threads, run_slots, through_chain, CpuPool, RowElem};
use crate::{layer::DualNode, IntervalRows, Result};
use candle_core::{DType, Tensor};

/// The fused pass of nodes `1..=upto`: their maps, the input box and the output shapes
/// `[in_shape, out_1, …, out_upto]` (read off the maps, with no forward pass). Built by
/// [`FusedChain::new`], run by [`FusedChain::boxes`] (every box) or [`FusedChain::last_box`].
pub(super) struct FusedChain<'a> {
    maps: Vec<Box<dyn IntervalRows + 'a>>,
    m0: Tensor,
    r0: Tensor,
    /// `[in_shape, out_1, …, out_upto]`.
    pub shapes: Vec<Vec<usize>>,
}

impl<'a> FusedChain<'a> {
    /// The chain of nodes `1..=upto`, or `None` where the fused pass does not apply.
    pub(super) fn new(net: &'a Net<'_>, upto: usize) -> Result<Option<Self>> {
        let x = net.x;
        if !x.device().is_cpu() || x.track_op() || !matches!(x.dtype(), DType::F32 | DType::F64) {
            return Ok(None);
        }
        let mut maps: Vec<Box<dyn IntervalRows + 'a>> = Vec::with_capacity(upto);
        for (t, node) in net.nodes[..upto].iter().enumerate() {
            if node.inputs().indices(t + 1) != [Some(t)] {
                return Ok(None);
            }
            let map = match node {
                DualNode::Affine(a) => a.interval_rows(),
                DualNode::Activation(a) => a.interval_rows(),
            };
            match map {
                Some(m) => maps.push(m?),
                None => return Ok(None),
            }
        }
        let (m0, r0) = input_box(net)?;
        if m0.track_op() || r0.track_op() {
            return Ok(None);
        }
        let shapes = chain_shapes(&maps, &x.dims()[1..])?;
        Ok(Some(FusedChain { maps, m0, r0, shapes }))
    }

    /// The boxes of every output `0..=upto`.
    pub(super) fn boxes(self, pool: CpuPool) -> Result<Boxes> {
        match self.m0.dtype() {
            DType::F32 => run::<f32>(self, pool),
            _ => run::<f64>(self, pool),
        }
    }

    /// The box of output `last ≤ upto` alone (`[B, 1, *shape]` each). Every box below it lives
    /// only in its thread's two scratch buffers (in cache, no batch-sized buffers to allocate and
    /// fill): what IBP's bound alone needs.
    pub(super) fn last_box(self, last: usize, pool: CpuPool) -> Result<(Tensor, Tensor)> {
        match self.m0.dtype() {
            DType::F32 => run_last::<f32>(self, last, pool),
            _ => run_last::<f64>(self, last, pool),
        }
    }

    /// The batch size and the input box's centres and radii as rows.
    fn input_rows<T: RowElem>(&self) -> Result<(usize, Vec<T>, Vec<T>)> {
        Ok((self.m0.dim(0)?, self.m0.flatten_all()?.to_vec1()?, self.r0.flatten_all()?.to_vec1()?))
    }
}

/// The boxes of outputs `0..=upto` by the fused pass, or `None` where it does not apply.
pub(super) fn propagate(net: &Net<'_>, upto: usize, pool: CpuPool) -> Result<Option<Boxes>> {
    FusedChain::new(net, upto)?.map(|c| c.boxes(pool)).transpose()
}

fn run_last<T: RowElem>(chain: FusedChain<'_>, last: usize, pool: CpuPool) -> Result<(Tensor, Tensor)> {
    let (b, mid0, rad0) = chain.input_rows::<T>()?;
    let (maps, shapes) = (&chain.maps[..last], &chain.shapes[..=last]);
    let [mid, rad] =
        through_chain(maps, shapes, b, [&mid0, &rad0], pool, |m, n, [mi, ri], [mo, ro]| T::map(m, n, mi, ri, mo, ro))?;
    let mut s = vec![b, 1];
    s.extend_from_slice(&shapes[last]);
    let dev = chain.m0.device();
    Ok((Tensor::from_vec(mid, s.clone(), dev)?, Tensor::from_vec(rad, s, dev)?))
}

/// One slice of the batch: its first example, its length, and its part of every output buffer.
type Slot<'a, T> = (usize, usize, Vec<(&'a mut [T], &'a mut [T])>);

fn run<T: RowElem>(chain: FusedChain<'_>, pool: CpuPool) -> Result<Boxes> {
    let (b, mid0, rad0) = chain.input_rows::<T>()?;
    let FusedChain { maps, m0, r0, shapes } = chain;
    let lens: Vec<usize> = shapes.iter().map(|s| s.iter().product()).collect();
    let tasks = pool_threads(pool).clamp(1, b.max(1));
    let per = b.div_ceil(tasks).max(1);
    let mut bufs: Vec<(Vec<T>, Vec<T>)> =
        lens[1..].iter().map(|&l| (vec![T::default(); b * l], vec![T::default(); b * l])).collect();
    {
        let mut slots: Vec<Slot<'_, T>> =
            (0..b.div_ceil(per)).map(|i| (i * per, per.min(b - i * per), Vec::new())).collect();
        for ((m, r), &l) in bufs.iter_mut().zip(&lens[1..]) {
            let ms = m.chunks_mut(per * l.max(1));
            let rs = r.chunks_mut(per * l.max(1));
            if l == 0 {
                for slot in slots.iter_mut() {
                    slot.2.push((&mut [], &mut []));
                }
                continue;
            }
            for (slot, (mc, rc)) in slots.iter_mut().zip(ms.zip(rs)) {
                slot.2.push((mc, rc));
            }
        }
        run_slots(pool, slots, |(first, n, outs)| -> Result<()> {
            let l0 = lens[0];
            let mut prev: (&[T], &[T]) = (&mid0[first * l0..(first + n) * l0], &rad0[first * l0..(first + n) * l0]);
            for (map, (om, or)) in maps.iter().zip(outs) {
                T::map(map.as_ref(), n, prev.0, prev.1, om, or)?;
                prev = (om, or);
            }
            Ok(())
        })?;
    }
    let dev = m0.device().clone();
    let (mut mid, mut rad) = (vec![m0], vec![r0]);
    for ((m, r), shape) in bufs.into_iter().zip(&shapes[1..]) {
        let mut s = vec![b, 1];
        s.extend_from_slice(shape);
        mid.push(Tensor::from_vec(m, s.clone(), &dev)?);
        rad.push(Tensor::from_vec(r, s, &dev)?);
    }
    Ok(Boxes { mid, rad })
}
