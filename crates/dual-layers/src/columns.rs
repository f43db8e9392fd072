//! Shape helpers for propagated columns `[B, n, *shape]`.

use candle_core::{Result, Tensor};

/// `[B, n, *shape]` → `[B·n, *shape]`, so a layer can treat columns as a batch.
pub fn merge_columns(x: &Tensor) -> Result<(Tensor, usize, usize)> {
    let d = x.dims();
    let (b, n) = (d[0], d[1]);
    let mut s = vec![b * n];
    s.extend_from_slice(&d[2..]);
    Ok((x.reshape(s)?, b, n))
}

/// `[B·n, *shape]` → `[B, n, *shape]`.
pub fn split_columns(x: &Tensor, b: usize, n: usize) -> Result<Tensor> {
    let d = x.dims();
    let mut s = vec![b, n];
    s.extend_from_slice(&d[1..]);
    x.reshape(s)
}

/// `Σ_r w[b, r] · p[b, r, k]` for `p` `[B, n, K]` and `w` `[B, n]` as a batched matmul → `[B, K]`.
/// (A sum over the middle dimension is much slower than a matmul on the CPU.)
/// Columns shared by the whole batch (`p` `[1, n, K]`, `w` `[B, n]`) make it one matmul
/// `[B, n] × [n, K]`.
pub fn sum_over_columns(p: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (pb, n, _k) = p.dims3()?;
    let b = w.elem_count() / n.max(1);
    let w = w.to_dtype(p.dtype())?;
    if pb == 1 && b != 1 {
        return w.reshape((b, n))?.matmul(&p.squeeze(0)?.contiguous()?);
    }
    let w = w.reshape((b, 1, n))?;
    w.matmul(&p.contiguous()?)?.squeeze(1)
}

/// `Σ_p g[b, k, p] · w[b, p]` for coefficients `g` `[B, K, *shape]` (or `[1, K, *shape]`, shared by
/// the batch) and per-example weights `w` `[B, P]` (`P` the elements of `shape`) → `[B, K]`, as a
/// matmul: `[B, K, P] × [B, P, 1]`, or `[B, P] × [P, K]` when `g` is shared.
pub fn contract_features(g: &Tensor, w: &Tensor) -> Result<Tensor> {
    let g = g.flatten_from(2)?;
    let (gb, k, p) = g.dims3()?;
    let b = w.elem_count() / p.max(1);
    let w = w.to_dtype(g.dtype())?.reshape((b, p))?;
    if gb == 1 && b != 1 {
        return w.matmul(&g.squeeze(0)?.t()?);
    }
    g.contiguous()?.matmul(&w.unsqueeze(2)?)?.reshape((gb, k))
}
