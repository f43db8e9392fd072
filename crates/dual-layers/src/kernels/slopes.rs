//! Elementwise kernels of the dual network with fused backward passes: the ReLU slopes applied
//! to propagated columns (`D x`, Eq. 10's `ν_i = D_i ν̂_i`) and the weighted absolute sums that
//! turn coefficients into source terms (`ε‖ν̂₁‖₁`, the box term, `Σ l_ij [ν_ij]_+`).
//!
//! These run on the largest tensors of the dual network (`[B, n, K]`: examples × columns ×
//! units). Written with Candle's broadcasting ops, their backward passes materialise several
//! full-size temporaries each (broadcast products, masks, sign tensors) and reduce over the
//! broadcast dimension with a slow strided sum; here every gradient is one pass over the data.
//!
//! | op | gradient of the first argument | gradient of the second |
//! |---|---|---|
//! | `scale_columns(x, d) = x ⊙ d` (d per example, broadcast over columns) | `grad ⊙ d` (summed over the batch when `x` is shared) | `Σ_n grad ⊙ x` |
//! | `abs_contract(g, w) = Σ_p |g_p| w_p` | `sign(g) grad w` | `Σ_r grad |g|` |
//!
//! The gradient helpers are first-order only (a second derivative through them is reported as
//! unsupported). On other devices or dtypes the functions use Candle's own ops.

use super::{contiguous_slice, cpu_float, Elem};
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Rows of work below which a loop stays on the calling thread.
const MIN_ROWS: usize = 16;

// ---------------------------------------------------------------------------------------------
// scale_columns

/// `out[b, j, i] = x[b', j, i] · d[b, i]` for columns `x` `[Bx, n, *shape]` (`Bx` = `B`, or 1 when
/// shared by the batch) and per-example slopes `d` `[B, *shape]` (or `[B, K]`): the relaxation
/// `D x` on every column (Eq. 10). Returns `[B, n, *shape]` (the shape of `x`, batch `B`). Any
/// trailing shape works without a reshape (each would cost a full-size gradient accumulation).
pub fn scale_columns(x: &Tensor, d: &Tensor) -> Result<Tensor> {
    if x.rank() < 2 || d.rank() < 1 {
        bail!("scale_columns: columns {:?} and slopes {:?} do not match", x.dims(), d.dims());
    }
    let (bx, n) = (x.dim(0)?, x.dim(1)?);
    let b = d.dim(0)?;
    let k = x.elem_count() / (bx * n).max(1);
    if d.elem_count() != b * k || (bx != 1 && bx != b) {
        bail!("scale_columns: columns {:?} and slopes {:?} do not match", x.dims(), d.dims());
    }
    if !cpu_float(&[x, d]) {
        let mut ds = vec![b, 1];
        ds.extend_from_slice(&x.dims()[2..]);
        return x.broadcast_mul(&d.reshape(ds)?);
    }
    x.contiguous()?.apply_op2(&d.contiguous()?, ScaleColumns)
}

struct ScaleColumns;

/// `(Bx, n, K)` of columns and `B` of slopes.
fn columns_dims(x: &Layout, d: &Layout) -> Result<(usize, usize, usize, usize)> {
    let (bx, n) = (x.dims()[0], x.dims()[1]);
    let b = d.dims()[0];
    Ok((bx, n, x.shape().elem_count() / (bx * n).max(1), b))
}

fn scale_rows<T: Elem>(x: &[T], d: &[T], bx: usize, b: usize, n: usize, k: usize) -> Vec<T> {
    // SAFETY: every row of `k` is zipped with two slices of `k` and so written in full.
    unsafe {
        super::rows_filled(b * n, k, MIN_ROWS, |q, row| {
            let (e, j) = (q / n, q % n);
            let src = &x[((if bx == 1 { 0 } else { e }) * n + j) * k..][..k];
            let dd = &d[e * k..][..k];
            for ((o, &s), &w) in row.iter_mut().zip(src).zip(dd) {
                o.write(s * w);
            }
        })
    }
}

impl CustomOp2 for ScaleColumns {
    fn name(&self) -> &'static str {
        "scale-columns"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (bx, n, k, b) = columns_dims(l1, l2)?;
        let out = dispatch!("scale_columns", s1, s2; |x, d| {
            scale_rows(contiguous_slice(x, l1, "scale_columns")?, contiguous_slice(d, l2, "scale_columns")?, bx, b, n, k)
        });
        let mut dims = l1.dims().to_vec();
        dims[0] = b;
        Ok((out, Shape::from(dims)))
    }
    fn bwd(&self, x: &Tensor, d: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = if x.track_op() {
            Some(if x.dim(0)? == d.dim(0)? {
                scale_columns(&grad, d)?
            } else {
                grad.apply_op2_no_bwd(d, &BatchWeightedSum)?
            })
        } else {
            None
        };
        let dd =
            if d.track_op() { Some(grad.apply_op2_no_bwd(x, &ColumnDot { out: d.shape().clone() })?) } else { None };
        Ok((dx, dd))
    }
}

/// `out[0, j, i] = Σ_b g[b, j, i] d[b, i]`: the gradient of shared columns (shape of `g`, batch 1).
struct BatchWeightedSum;

impl CustomOp2 for BatchWeightedSum {
    fn name(&self) -> &'static str {
        "batch-weighted-sum"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, n, k, _) = columns_dims(l1, l2)?;
        let out = dispatch!("batch_weighted_sum", s1, s2; |g, d| {
            let (g, d) = (contiguous_slice(g, l1, "batch_weighted_sum")?, contiguous_slice(d, l2, "batch_weighted_sum")?);
            let mut out = vec![Default::default(); n * k];
            out.par_chunks_mut(k.max(1)).with_min_len(MIN_ROWS).enumerate().for_each(|(j, row)| {
                for e in 0..b {
                    let src = &g[(e * n + j) * k..][..k];
                    for ((o, &s), &w) in row.iter_mut().zip(src).zip(&d[e * k..][..k]) {
                        *o += s * w;
                    }
                }
            });
            out
        });
        let mut dims = l1.dims().to_vec();
        dims[0] = 1;
        Ok((out, Shape::from(dims)))
    }
}

/// `out[b, i] = Σ_j g[b, j, i] x[b', j, i]`: the gradient of the slopes, shaped like them.
struct ColumnDot {
    out: Shape,
}

impl CustomOp2 for ColumnDot {
    fn name(&self) -> &'static str {
        "column-dot"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, n, k, bx) = columns_dims(l1, l2)?;
        // Tasks: (example, block of units), so one example still uses every core.
        const BLOCK: usize = 1024;
        let blocks = k.div_ceil(BLOCK);
        let out = dispatch!("column_dot", s1, s2; |g, x| {
            let (g, x) = (contiguous_slice(g, l1, "column_dot")?, contiguous_slice(x, l2, "column_dot")?);
            let mut out = vec![Default::default(); b * k];
            let mut tasks: Vec<(usize, usize, &mut [_])> = Vec::with_capacity(b * blocks);
            for (e, row) in out.chunks_mut(k.max(1)).enumerate() {
                for (blk, part) in row.chunks_mut(BLOCK).enumerate() {
                    tasks.push((e, blk * BLOCK, part));
                }
            }
            tasks.into_par_iter().for_each(|(e, i0, part)| {
                let xe = if bx == 1 { 0 } else { e };
                let len = part.len();
                for j in 0..n {
                    let gs = &g[(e * n + j) * k + i0..][..len];
                    let xs = &x[(xe * n + j) * k + i0..][..len];
                    for ((o, &a), &c) in part.iter_mut().zip(gs).zip(xs) {
                        *o += a * c;
                    }
                }
            });
            out
        });
        Ok((out, self.out.clone()))
    }
}

// ---------------------------------------------------------------------------------------------
// abs_contract, neg_part_contract

/// The piecewise-linear function of the coefficients that a contraction weighs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    /// `|a|`, with the subgradient `sign(0) = 0` (as PyTorch's `abs`).
    Abs,
    /// `min(a, 0)`, with the derivative 1 at 0 (as PyTorch's `clamp`).
    NegPart,
}

impl Piece {
    #[inline]
    fn value<T: Elem>(self, a: T) -> T {
        match self {
            Piece::Abs => a.abs(),
            Piece::NegPart => {
                if a < T::ZERO {
                    a
                } else {
                    T::ZERO
                }
            }
        }
    }
    #[inline]
    fn slope<T: Elem>(self, a: T) -> T {
        match self {
            Piece::Abs => a.signum0(),
            Piece::NegPart => {
                if a <= T::ZERO {
                    T::ONE
                } else {
                    T::ZERO
                }
            }
        }
    }
    /// The same function from Candle's ops, with the same (sub)gradient at 0.
    fn candle(self, g: &Tensor) -> Result<Tensor> {
        match self {
            // |g| = g · sign(g) keeps sign(0) = 0.
            Piece::Abs => g * (g.gt(0.0)?.to_dtype(g.dtype())? - g.lt(0.0)?.to_dtype(g.dtype())?)?,
            // min(g, 0) = g · 1{g ≤ 0} has the slope 1 at 0.
            Piece::NegPart => g * g.le(0.0)?.to_dtype(g.dtype())?,
        }
    }
}

/// `out[b, r] = Σ_p |g[b, r, p]| · w[b, p]` for coefficients `g` `[B, R, *shape]` (or
/// `[1, R, *shape]`, shared by the batch) and weights `w` `[B, P]`: the weighted l1 norms behind
/// the source terms (`ε‖ν̂₁‖₁` of Theorem 1, the box term). Returns `[B, R]`.
pub fn abs_contract(g: &Tensor, w: &Tensor) -> Result<Tensor> {
    piece_contract(g, w, Piece::Abs)
}

/// `out[b, r] = Σ_p min(g[b, r, p], 0) · w[b, p]`, shaped like [`abs_contract`]: the ReLU term
/// `Σ_{j∈I} l_j [ν_j]_+` of Theorem 1 with `g = -ν` and `w = -d l` (zero off `I`).
pub fn neg_part_contract(g: &Tensor, w: &Tensor) -> Result<Tensor> {
    piece_contract(g, w, Piece::NegPart)
}

fn piece_contract(g: &Tensor, w: &Tensor, piece: Piece) -> Result<Tensor> {
    let g = g.flatten_from(2)?;
    let (gb, r, p) = g.dims3()?;
    let b = w.dim(0)?;
    let w = w.reshape((b, p))?.to_dtype(g.dtype())?;
    if gb == 1 && b != 1 {
        // Shared coefficients: one small piece(g) and a matmul.
        return w.matmul(&piece.candle(&g.squeeze(0)?)?.t()?);
    }
    if gb != b {
        bail!("{piece:?} contraction: coefficients {:?} and weights {:?} do not match", g.dims(), w.dims());
    }
    if !cpu_float(&[&g, &w]) {
        return piece.candle(&g)?.contiguous()?.matmul(&w.unsqueeze(2)?)?.reshape((b, r));
    }
    g.contiguous()?.apply_op2(&w.contiguous()?, PieceContract(piece))
}

struct PieceContract(Piece);

impl CustomOp2 for PieceContract {
    fn name(&self) -> &'static str {
        match self.0 {
            Piece::Abs => "abs-contract",
            Piece::NegPart => "neg-part-contract",
        }
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, r, p) = l1.shape().dims3()?;
        let piece = self.0;
        let out = dispatch!("piece_contract", s1, s2; |g, w| {
            let (g, w) = (contiguous_slice(g, l1, "piece_contract")?, contiguous_slice(w, l2, "piece_contract")?);
            let mut out = vec![Default::default(); b * r];
            out.par_iter_mut().with_min_len(MIN_ROWS).enumerate().for_each(|(q, o)| {
                let ws = &w[(q / r) * p..][..p];
                let gs = &g[q * p..][..p];
                *o = match piece {
                    Piece::Abs => super::dot_lanes(gs, ws, |a| Piece::Abs.value(a)),
                    Piece::NegPart => super::dot_lanes(gs, ws, |a| Piece::NegPart.value(a)),
                };
            });
            out
        });
        Ok((out, Shape::from((b, r))))
    }
    fn bwd(&self, g: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dg = if g.track_op() { Some(g.apply_op3_no_bwd(&grad, w, &SlopeOuter(self.0))?) } else { None };
        let dw = if w.track_op() { Some(grad.apply_op2_no_bwd(g, &PieceWeightedRows(self.0))?) } else { None };
        Ok((dg, dw))
    }
}

/// `out[b, r, p] = piece'(g[b, r, p]) · grad[b, r] · w[b, p]`: the gradient of the coefficients.
struct SlopeOuter(Piece);

impl CustomOp3 for SlopeOuter {
    fn name(&self) -> &'static str {
        "slope-outer"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, r, p) = l1.shape().dims3()?;
        let piece = self.0;
        let out = dispatch!("slope_outer", s1, s2, s3; |g, gr, w| {
            let (g, gr, w) = (contiguous_slice(g, l1, "slope_outer")?, contiguous_slice(gr, l2, "slope_outer")?, contiguous_slice(w, l3, "slope_outer")?);
            // SAFETY: every row of `p` is zipped with two slices of `p` and so written in full.
            unsafe {
                super::rows_filled(b * r, p, MIN_ROWS, |q, row| {
                    let s = gr[q];
                    let ws = &w[(q / r) * p..][..p];
                    for ((o, &a), &c) in row.iter_mut().zip(&g[q * p..][..p]).zip(ws) {
                        o.write(piece.slope(a) * s * c);
                    }
                })
            }
        });
        Ok((out, Shape::from((b, r, p))))
    }
}

/// `out[b, p] = Σ_r grad[b, r] · piece(g[b, r, p])`: the gradient of the weights.
struct PieceWeightedRows(Piece);

impl CustomOp2 for PieceWeightedRows {
    fn name(&self) -> &'static str {
        "piece-weighted-rows"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, r) = l1.shape().dims2()?;
        let (_, _, p) = l2.shape().dims3()?;
        const BLOCK: usize = 1024;
        let piece = self.0;
        let out = dispatch!("piece_weighted_rows", s1, s2; |gr, g| {
            let (gr, g) = (contiguous_slice(gr, l1, "piece_weighted_rows")?, contiguous_slice(g, l2, "piece_weighted_rows")?);
            let mut out = vec![Default::default(); b * p];
            let mut tasks: Vec<(usize, usize, &mut [_])> = Vec::new();
            for (e, row) in out.chunks_mut(p).enumerate() {
                for (blk, part) in row.chunks_mut(BLOCK).enumerate() {
                    tasks.push((e, blk * BLOCK, part));
                }
            }
            tasks.into_par_iter().for_each(|(e, i0, part)| {
                let len = part.len();
                for j in 0..r {
                    let s = gr[e * r + j];
                    for (o, &a) in part.iter_mut().zip(&g[(e * r + j) * p + i0..][..len]) {
                        *o += s * piece.value(a);
                    }
                }
            });
            out
        });
        Ok((out, Shape::from((b, p))))
    }
}
