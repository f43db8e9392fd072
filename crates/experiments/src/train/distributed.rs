//! Data-parallel training over a group of processes (MPI ranks): every rank holds the whole
//! model, takes its contiguous part of each global batch, and after the backward pass the
//! gradients of all ranks are summed in one fused buffer per step. With `n_r` examples on rank
//! `r` of a batch of `n = Σ n_r` and the loss a mean over the batch, rank `r` weights its gradient
//! by `n_r / n` before the sum, so every rank ends up with `∇ (1/n) Σ_i ℓ_i` — the gradient of
//! the whole batch — and takes the same optimizer step on the same weights (broadcast from rank
//! 0 at the start). Every rank uses the same seed, so they agree on the data order,
//! augmentation and projections; what differs is only which rows of the batch each evaluates.

use anyhow::{bail, Result};
use candle_core::{backprop::GradStore, DType, Tensor, Var};
use std::ops::Range;

/// The collective operations data-parallel training needs (MPI's `Allreduce` and `Bcast`).
pub trait Collective {
    /// This process's rank, `0 ≤ rank < size`.
    fn rank(&self) -> usize;
    /// How many processes train together.
    fn size(&self) -> usize;
    /// Element-wise sum over all ranks, in place; every rank gets the same values.
    fn all_reduce_sum(&self, buf: &mut Fused) -> Result<()>;
    /// Rank `root`'s values to every rank, in place.
    fn broadcast(&self, buf: &mut Fused, root: usize) -> Result<()>;
}

/// One fused buffer in the training precision.
#[derive(Debug, Clone, PartialEq)]
pub enum Fused {
    /// f32 values.
    F32(Vec<f32>),
    /// f64 values.
    F64(Vec<f64>),
}

impl Fused {
    /// The values of a 1-D tensor (f32 or f64).
    pub fn from_tensor(t: &Tensor) -> Result<Fused> {
        Ok(match t.dtype() {
            DType::F32 => Fused::F32(t.to_vec1()?),
            DType::F64 => Fused::F64(t.to_vec1()?),
            d => bail!("data-parallel training needs f32 or f64 parameters, got {d:?}"),
        })
    }

    /// As a 1-D tensor on `like`'s device.
    pub fn to_tensor(&self, like: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Fused::F32(v) => Tensor::from_slice(v, v.len(), like.device())?,
            Fused::F64(v) => Tensor::from_slice(v, v.len(), like.device())?,
        })
    }

    /// Bytes sent per rank in a collective.
    pub fn bytes(&self) -> usize {
        match self {
            Fused::F32(v) => 4 * v.len(),
            Fused::F64(v) => 8 * v.len(),
        }
    }
}

/// One process alone: the collectives do nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _: &mut Fused) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, _: &mut Fused, _: usize) -> Result<()> {
        Ok(())
    }
}

/// Rank `rank`'s part of a batch of `len` examples: the contiguous rows
/// `⌊rank·len/size⌋ .. ⌊(rank+1)·len/size⌋` (sizes differ by at most one).
pub fn local_part(len: usize, rank: usize, size: usize) -> Range<usize> {
    (rank * len / size)..((rank + 1) * len / size)
}

fn fuse(ts: &[Tensor]) -> Result<Tensor> {
    let flat: Vec<Tensor> = ts.iter().map(|t| t.flatten_all()).collect::<candle_core::Result<_>>()?;
    Ok(Tensor::cat(&flat, 0)?)
}

/// Rank 0's parameters to every rank (one fused broadcast).
pub fn broadcast_params(comm: &dyn Collective, vars: &[Var]) -> Result<()> {
    if comm.size() == 1 || vars.is_empty() {
        return Ok(());
    }
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().detach()).collect();
    let fused = fuse(&ts)?;
    let mut buf = Fused::from_tensor(&fused)?;
    comm.broadcast(&mut buf, 0)?;
    let all = buf.to_tensor(&fused)?;
    let mut at = 0;
    for v in vars {
        let n = v.elem_count();
        v.set(&all.narrow(0, at, n)?.reshape(v.shape())?)?;
        at += n;
    }
    Ok(())
}

/// Replaces every parameter's gradient in `grads` by `Σ_r weight_r · grad_r` over the ranks (a
/// missing gradient counts as zero), in one fused all-reduce that also sums `extra` (statistics
/// of the step: loss, error counts). Returns the summed `extra`.
pub fn all_reduce_grads(
    comm: &dyn Collective,
    vars: &[Var],
    grads: &mut GradStore,
    weight: f64,
    extra: &[f64],
) -> Result<Vec<f64>> {
    if comm.size() == 1 {
        return Ok(extra.to_vec());
    }
    let Some(first) = vars.first() else { bail!("no parameters to train") };
    let dtype = first.dtype();
    let mut parts = Vec::with_capacity(vars.len() + 1);
    for v in vars {
        let g = match grads.get(v.as_tensor()) {
            Some(g) => g.detach().affine(weight, 0.0)?,
            None => v.as_tensor().zeros_like()?,
        };
        parts.push(g.to_dtype(dtype)?);
    }
    parts.push(Tensor::from_slice(extra, extra.len(), first.device())?.to_dtype(dtype)?);
    let fused = fuse(&parts)?;
    let mut buf = Fused::from_tensor(&fused)?;
    comm.all_reduce_sum(&mut buf)?;
    let all = buf.to_tensor(&fused)?;
    let mut at = 0;
    for v in vars {
        let n = v.elem_count();
        grads.insert(v.as_tensor(), all.narrow(0, at, n)?.reshape(v.shape())?);
        at += n;
    }
    Ok(all.narrow(0, at, extra.len())?.to_dtype(DType::F64)?.to_vec1()?)
}
