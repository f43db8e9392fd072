//! The gradient of a mean loss over a batch, computed a chunk of examples at a time.
//!
//! For a loss that is a mean of per-example terms, `L = (1/B) Σ_i ℓ_i`, the batch splits into
//! chunks `C_1, …, C_m` with `L = Σ_c (|C_c|/B) · mean_{i ∈ C_c} ℓ_i`, so
//! `∇L = Σ_c (|C_c|/B) ∇ mean_c`: each chunk's graph is built, differentiated and dropped before
//! the next one. Peak memory follows the chunk, not the batch — for the dual network that is
//! the columns (`[B, n, K]`, examples × input columns × units) the backward pass needs — while the
//! value and the gradients are those of the whole batch up to the order of float additions.
//!
//! Only for losses whose examples are independent: a layer that computes batch statistics
//! (BatchNorm in training mode) couples them, and the caller must then pass one chunk.

use anyhow::{bail, Result};

/// Memory the graph of one pass may take before the batch is split ([`examples_per_pass`]):
/// 2 GiB keeps the exact dual's forward + backward at batch 50 on the papers' MNIST model in
/// two passes of 25 (peak 1.9 GiB instead of 2.8; the PyTorch package: 2.3).
pub const PASS_MEMORY_BUDGET: usize = 2 << 30;

/// Bytes of a dual network's graph per example, estimated: every node's output carries
/// `columns` columns (the input's elements for the exact dual, `k` for random projections), and
/// the backward pass keeps about two tensors of that size per node (the propagated columns and
/// their scaled copy). On the papers' MNIST model (f32, 784 columns) this gives 70 MB per
/// example; measured: 57 MB (2.77 GiB at batch 50).
pub fn dual_bytes_per_example(columns: usize, node_lens: &[usize], dtype_bytes: usize) -> usize {
    2 * columns * node_lens.iter().sum::<usize>() * dtype_bytes
}

/// The chunk size for `n` examples of `bytes_per_example` each under `budget`: the fewest
/// passes that fit, with the examples spread evenly over them (`n` itself when one pass fits).
pub fn examples_per_pass(n: usize, bytes_per_example: usize, budget: usize) -> usize {
    let per = (budget / bytes_per_example.max(1)).max(1);
    let passes = n.div_ceil(per).max(1);
    n.div_ceil(passes).max(1)
}
use candle_core::{backprop::GradStore, DType, Tensor};
use std::ops::Range;

/// What [`mean_loss_grads_in_chunks`] returns: the batch's mean loss and mean of the chunks'
/// side statistic (weighted by their sizes), and the gradients of the batch's mean loss.
pub struct ChunkedGrads {
    /// `(1/B) Σ_i ℓ_i`.
    pub loss: f64,
    /// The size-weighted mean of the per-chunk statistic (e.g. the robust error).
    pub stat: f64,
    /// Gradients of `loss` with respect to every variable the chunks' losses depend on.
    pub grads: GradStore,
}

/// Runs `chunk_loss(range)` on consecutive ranges of at most `chunk` of the `n` examples; it
/// returns the mean loss of those examples (a scalar tensor) and a statistic of them. Each
/// chunk's loss is scaled by its share of the batch and differentiated at once, and its graph
/// dropped before the next chunk starts.
pub fn mean_loss_grads_in_chunks(
    n: usize,
    chunk: usize,
    mut chunk_loss: impl FnMut(Range<usize>) -> Result<(Tensor, f64)>,
) -> Result<ChunkedGrads> {
    if n == 0 || chunk == 0 {
        bail!("a loss over {n} examples in chunks of {chunk}: both must be at least 1");
    }
    let (mut loss, mut stat) = (0.0, 0.0);
    let mut grads: Option<GradStore> = None;
    let mut start = 0;
    while start < n {
        let end = (start + chunk).min(n);
        let share = (end - start) as f64 / n as f64;
        let (l, s) = chunk_loss(start..end)?;
        let l = if end - start == n { l } else { (l * share)? };
        loss += l.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        stat += s * share;
        let g = l.backward_consuming()?;
        match grads.as_mut() {
            None => grads = Some(g),
            Some(acc) => acc.extend(g)?,
        }
        start = end;
    }
    Ok(ChunkedGrads { loss, stat, grads: grads.expect("at least one chunk") })
}
