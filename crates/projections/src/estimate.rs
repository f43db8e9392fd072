//! The norm estimators, applied to propagated projections.
//!
//! A source with projected columns sees, at a layer with `K` units, the propagated columns
//! `P` `[B, n, K]`: column `i` holds `A r_i` for the linear map `A` from the source to the layer
//! (one row `a_j` per unit `j`). Reduced over the projections:
//! * Cauchy `r_i`: `(A r_i)_j ~ Cauchy(0, ‖a_j‖₁)`, and `|Cauchy(0, s)|` has median `s`, so the
//!   sample median of `|P_ij|` over `i` estimates `‖a_j‖₁` ([`median_abs_over_columns`]);
//! * normal `r_i`: `(A r_i)_j ~ N(0, ‖a_j‖₂²)`, so `sqrt(mean_i P_ij²)` estimates `‖a_j‖₂`
//!   ([`mean_square_over_columns`], then a square root).
//!
//! Both are differentiable: the median is a `gather` of the middle element (its index is found on
//! the host, where a selection is linear in `k`), and the gradient flows to that element only.

use candle_core::{DType, Tensor};
use dual_core::{DualError, Result};
use dual_layers::kernels::cpu::Elem;
use dual_layers::sum_over_columns;

/// Index (0-based) of the median among `k` sorted values: the middle one for odd `k`, the lower
/// of the two middle ones for even `k` (as PyTorch's `median`).
pub fn median_rank(k: usize) -> usize {
    k.saturating_sub(1) / 2
}

/// Units handled per block: a block of `BLOCK` units × `k` projections is copied into a small
/// buffer, so the strided reads stay in cache.
const BLOCK: usize = 64;

/// Up to this many projections the median is found by counting ranks across a block of units
/// (`k²` compares per unit, all in SIMD lanes); above it by a selection per unit (`O(k)`, scalar).
const RANK_COUNT_MAX_K: usize = 96;

/// Order-preserving integer keys of absolute values: for non-negative IEEE floats the bit
/// pattern orders like the value (NaN above infinity, as `total_cmp` orders a positive NaN).
trait Key: Copy + Ord + Default + Send + Sync {
    fn abs_key(self) -> Self;
}

impl Key for u32 {
    fn abs_key(self) -> Self {
        self & 0x7fff_ffff
    }
}

impl Key for u64 {
    fn abs_key(self) -> Self {
        self & 0x7fff_ffff_ffff_ffff
    }
}

/// The median of one block by counting: for every column `i`, the rank of unit `jj`'s value in
/// it (ties broken by column) is the number of smaller values; the median value is the one of
/// rank `mid`. Then the lowest column holding that value (the same choice as a selection).
/// `keys` is `[k][BLOCK]`; writes the chosen column of every lane to `out`.
#[inline(always)]
fn block_median_by_rank<K: Key>(keys: &[[K; BLOCK]], mid: usize, out: &mut [u32; BLOCK]) {
    let k = keys.len();
    let mut med = [K::default(); BLOCK];
    for i in 0..k {
        let ki = &keys[i];
        let mut rank = [0u32; BLOCK];
        for kj in &keys[..i] {
            for l in 0..BLOCK {
                rank[l] += (kj[l] <= ki[l]) as u32;
            }
        }
        for kj in &keys[i + 1..] {
            for l in 0..BLOCK {
                rank[l] += (kj[l] < ki[l]) as u32;
            }
        }
        for l in 0..BLOCK {
            if rank[l] == mid as u32 {
                med[l] = ki[l];
            }
        }
    }
    let mut first = [k as u32; BLOCK];
    for i in (0..k).rev() {
        for l in 0..BLOCK {
            if keys[i][l] == med[l] {
                first[l] = i as u32;
            }
        }
    }
    *out = first;
}

/// [`block_median_by_rank`] compiled for AVX-512.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn block_median_by_rank_avx512<K: Key>(keys: &[[K; BLOCK]], mid: usize, out: &mut [u32; BLOCK]) {
    block_median_by_rank(keys, mid, out)
}

/// [`block_median_by_rank`] compiled for AVX2.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn block_median_by_rank_avx2<K: Key>(keys: &[[K; BLOCK]], mid: usize, out: &mut [u32; BLOCK]) {
    block_median_by_rank(keys, mid, out)
}

fn block_median<K: Key>(keys: &[[K; BLOCK]], mid: usize, out: &mut [u32; BLOCK]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512bw") && std::arch::is_x86_feature_detected!("avx512vl") {
        // SAFETY: the CPU supports AVX-512 F/BW/VL (checked just above).
        return unsafe { block_median_by_rank_avx512(keys, mid, out) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { block_median_by_rank_avx2(keys, mid, out) };
    }
    block_median_by_rank(keys, mid, out)
}

/// One example's medians (`example` laid out `[n, K]`) by counting ranks, a block of `BLOCK`
/// units at a time; writes the chosen column of every unit to `out` (`[K]`).
fn example_medians_by_rank<K: Key>(example: &[K], kk: usize, offset: usize, k: usize, mid: usize, out: &mut [u32]) {
    let mut keys = vec![[K::default(); BLOCK]; k];
    let mut res = [0u32; BLOCK];
    for j0 in (0..kk).step_by(BLOCK) {
        let w = BLOCK.min(kk - j0);
        for (i, row) in keys.iter_mut().enumerate() {
            let src = &example[(offset + i) * kk + j0..][..w];
            for (d, x) in row.iter_mut().zip(src) {
                *d = x.abs_key();
            }
            row[w..].fill(K::default());
        }
        block_median(&keys, mid, &mut res);
        for (o, r) in out[j0..j0 + w].iter_mut().zip(&res) {
            *o = offset as u32 + r;
        }
    }
}

/// One example's medians by a selection per unit (for large `k`); the same choice of column
/// as [`example_medians_by_rank`].
fn example_medians_by_selection<K: Key>(
    example: &[K],
    kk: usize,
    offset: usize,
    k: usize,
    mid: usize,
    out: &mut [u32],
) {
    let mut buf: Vec<K> = Vec::with_capacity(BLOCK * k);
    let mut row: Vec<K> = Vec::with_capacity(k);
    for j0 in (0..kk).step_by(BLOCK) {
        let w = BLOCK.min(kk - j0);
        buf.clear();
        buf.resize(w * k, K::default());
        for i in 0..k {
            let src = &example[(offset + i) * kk + j0..][..w];
            for (jj, x) in src.iter().enumerate() {
                buf[jj * k + i] = x.abs_key();
            }
        }
        for jj in 0..w {
            let vals = &buf[jj * k..(jj + 1) * k];
            row.clear();
            row.extend_from_slice(vals);
            let (_, m, _) = row.select_nth_unstable(mid);
            let m = *m;
            let i = vals.iter().position(|x| *x == m).expect("the median is one of the values");
            out[jj + j0] = (offset + i) as u32;
        }
    }
}

/// For `v` laid out `[B, n, K]` (as integer keys of floats), the column (in
/// `offset..offset + k`) holding the lower median of `|v[b, offset + i, j]|` over `i` for every
/// `(b, j)`, as `[B, K]` row-major indices into dim 1. Equal values resolve to the lowest
/// column, so the choice is deterministic. Parallel over examples.
fn median_indices<K: Key>(v: &[K], b: usize, n: usize, kk: usize, offset: usize, k: usize) -> Vec<u32> {
    let mid = median_rank(k);
    let mut out = vec![0u32; b * kk];
    let one = |bi: usize, out: &mut [u32]| {
        let example = &v[bi * n * kk..(bi + 1) * n * kk];
        if k <= RANK_COUNT_MAX_K {
            example_medians_by_rank(example, kk, offset, k, mid, out)
        } else {
            example_medians_by_selection(example, kk, offset, k, mid, out)
        }
    };
    // Rayon's pool, not threads of our own: a thread spawned per call costs its creation, a
    // fresh stack and a fresh allocator heap (zeroed pages) each time, several times per bound.
    let threads = rayon::current_num_threads().min(b);
    if threads <= 1 || b * k * kk < 1 << 16 {
        for (bi, o) in out.chunks_mut(kk).enumerate() {
            one(bi, o);
        }
    } else {
        use rayon::prelude::*;
        let per = b.div_ceil(threads);
        out.par_chunks_mut(per * kk).enumerate().for_each(|(c, chunk)| {
            for (i, o) in chunk.chunks_mut(kk).enumerate() {
                one(c * per + i, o);
            }
        });
    }
    out
}

/// Runs `f` on the bit patterns of a contiguous f32 (`u32`) or f64 (`u64`) tensor, without
/// copying them when possible.
fn with_bits<T: candle_core::WithDType, K: Key + bytemuck_free::FromBits<T>, R>(
    t: &Tensor,
    f: impl FnOnce(&[K]) -> R,
) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(cpu) => {
            let all = cpu.as_slice::<T>()?;
            let start = layout.start_offset();
            Ok(f(K::cast_slice(&all[start..start + t.elem_count()])))
        }
        _ => {
            drop(storage);
            let v = t.flatten_all()?.to_vec1::<T>()?;
            Ok(f(K::cast_slice(&v)))
        }
    }
}

/// Reinterpreting float slices as their bit patterns (same size and alignment, every bit
/// pattern valid), without a dependency.
mod bytemuck_free {
    pub trait FromBits<T> {
        fn cast_slice(v: &[T]) -> &[Self]
        where
            Self: Sized;
    }
    impl FromBits<f32> for u32 {
        fn cast_slice(v: &[f32]) -> &[u32] {
            // SAFETY: f32 and u32 have the same size and alignment; any bits are a valid u32.
            unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u32>(), v.len()) }
        }
    }
    impl FromBits<f64> for u64 {
        fn cast_slice(v: &[f64]) -> &[u64] {
            // SAFETY: f64 and u64 have the same size and alignment; any bits are a valid u64.
            unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u64>(), v.len()) }
        }
    }
}

/// `median_i |p[b, offset + i, j]|` over `i < k`, for `p` shaped `[B, n, K]`; returns `[B, K]`.
/// Differentiable in `p` (the gradient goes to the selected element).
pub fn median_abs_over_columns(p: &Tensor, offset: usize, k: usize) -> Result<Tensor> {
    Ok(median_terms(p, offset, k, false)?.squeeze(1)?)
}

/// Column 0 of `p` (the exact linear part of a projected source) and
/// `median_i |p[b, offset + i, j]|` over `i < k` (`offset ≥ 1`), for `p` `[B, n, K]`: both
/// `[B, K]`, from one fused op whose backward writes a single gradient of `p` (the linear part's
/// gradient to column 0, the median's to the selected column) instead of one full-size
/// gradient per use.
pub fn linear_and_median_abs(p: &Tensor, offset: usize, k: usize) -> Result<(Tensor, Tensor)> {
    if offset == 0 {
        return Err(DualError::shape("the linear part is column 0: the projected columns must start at 1"));
    }
    let both = median_terms(p, offset, k, true)?;
    Ok((both.narrow(1, 0, 1)?.squeeze(1)?, both.narrow(1, 1, 1)?.squeeze(1)?))
}

/// `[B, 1 + with_linear, K]`: (column 0 if `with_linear`,) the median of the absolute values.
fn median_terms(p: &Tensor, offset: usize, k: usize, with_linear: bool) -> Result<Tensor> {
    let (b, n, kk) = p.dims3()?;
    if k == 0 || offset + k > n {
        return Err(DualError::shape(format!(
            "median over columns {offset}..{} of a tensor with {n} columns",
            offset + k
        )));
    }
    let p = if matches!(p.dtype(), DType::F32 | DType::F64) {
        p.contiguous()?
    } else {
        p.to_dtype(DType::F32)?.contiguous()?
    };
    let idx = match p.dtype() {
        DType::F64 => with_bits::<f64, u64, _>(&p, |v| median_indices(v, b, n, kk, offset, k))?,
        _ => with_bits::<f32, u32, _>(&p, |v| median_indices(v, b, n, kk, offset, k))?,
    };
    if !p.device().is_cpu() {
        // Other devices: the same values from Candle's gather.
        let idx = Tensor::from_vec(idx, (b, 1, kk), p.device())?;
        let med = p.gather(&idx, 1)?.abs()?;
        return Ok(if with_linear { Tensor::cat(&[p.narrow(1, 0, 1)?, med], 1)? } else { med });
    }
    Ok(p.apply_op1(MedianTerms { idx: std::sync::Arc::new(idx), with_linear })?)
}

/// The fused op behind [`linear_and_median_abs`]: the selected columns are fixed when it is built.
struct MedianTerms {
    /// `[B, K]` row-major: the column of each unit's median.
    idx: std::sync::Arc<Vec<u32>>,
    with_linear: bool,
}

fn median_terms_fwd<T: Elem>(p: &[T], b: usize, n: usize, kk: usize, idx: &[u32], lin: bool) -> Vec<T> {
    let rows = 1 + lin as usize;
    let mut out = vec![T::ZERO; b * rows * kk];
    for bi in 0..b {
        let o = &mut out[bi * rows * kk..(bi + 1) * rows * kk];
        if lin {
            o[..kk].copy_from_slice(&p[bi * n * kk..bi * n * kk + kk]);
        }
        let m = &mut o[(rows - 1) * kk..];
        for j in 0..kk {
            let v = p[(bi * n + idx[bi * kk + j] as usize) * kk + j];
            m[j] = v.abs();
        }
    }
    out
}

/// The gradient of `p`: zero except column 0 (the linear part's gradient) and the selected
/// columns (the median's gradient times the sign of the selected value).
fn median_terms_bwd<T: Elem>(p: &[T], g: &[T], b: usize, n: usize, kk: usize, idx: &[u32], lin: bool) -> Vec<T> {
    use rayon::prelude::*;
    let rows = 1 + lin as usize;
    let mut out = dual_layers::kernels::cpu::zeroed::<T>(b * n * kk);
    if kk == 0 || n == 0 {
        return out;
    }
    out.par_chunks_mut(n * kk).enumerate().for_each(|(bi, ob)| {
        let gb = &g[bi * rows * kk..(bi + 1) * rows * kk];
        if lin {
            ob[..kk].copy_from_slice(&gb[..kk]);
        }
        let gm = &gb[(rows - 1) * kk..];
        for j in 0..kk {
            let at = idx[bi * kk + j] as usize * kk + j;
            ob[at] = p[bi * n * kk + at].signum0() * gm[j];
        }
    });
    out
}

fn cpu_slice<'a, T>(data: &'a [T], l: &candle_core::Layout) -> candle_core::Result<&'a [T]> {
    dual_layers::kernels::cpu::contiguous_slice(data, l, "median terms")
}

impl candle_core::CustomOp1 for MedianTerms {
    fn name(&self) -> &'static str {
        "median-terms"
    }
    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage as S;
        let (b, n, kk) = l.shape().dims3()?;
        let out = match s {
            S::F32(v) => S::F32(median_terms_fwd(cpu_slice(v, l)?, b, n, kk, &self.idx, self.with_linear)),
            S::F64(v) => S::F64(median_terms_fwd(cpu_slice(v, l)?, b, n, kk, &self.idx, self.with_linear)),
            _ => candle_core::bail!("median terms: unsupported dtype"),
        };
        Ok((out, candle_core::Shape::from((b, 1 + self.with_linear as usize, kk))))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let op = MedianTermsGrad { idx: self.idx.clone(), with_linear: self.with_linear };
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &op)?))
    }
}

/// `(p, grad) ↦ dp` of [`MedianTerms`] (first order only).
struct MedianTermsGrad {
    idx: std::sync::Arc<Vec<u32>>,
    with_linear: bool,
}

impl candle_core::CustomOp2 for MedianTermsGrad {
    fn name(&self) -> &'static str {
        "median-terms-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage as S;
        let (b, n, kk) = l1.shape().dims3()?;
        let out = match (s1, s2) {
            (S::F32(p), S::F32(g)) => {
                S::F32(median_terms_bwd(cpu_slice(p, l1)?, cpu_slice(g, l2)?, b, n, kk, &self.idx, self.with_linear))
            }
            (S::F64(p), S::F64(g)) => {
                S::F64(median_terms_bwd(cpu_slice(p, l1)?, cpu_slice(g, l2)?, b, n, kk, &self.idx, self.with_linear))
            }
            _ => candle_core::bail!("median terms: unsupported or mixed dtypes"),
        };
        Ok((out, candle_core::Shape::from((b, n, kk))))
    }
}

/// `Σ_{i<len} p[b, i, j]² / k` for `p` shaped `[B, len, K]` (a partial mean of squares over `k`
/// projections in all); returns `[B, K]`.
pub fn mean_square_over_columns(p: &Tensor, k: usize) -> Result<Tensor> {
    let (b, n, _) = p.dims3()?;
    let w = Tensor::full(1.0 / k as f64, (b, n), p.device())?.to_dtype(p.dtype())?;
    Ok(sum_over_columns(&p.sqr()?, &w)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    /// The reference: sort the absolute values of each unit's `k` columns (stable, so ties keep
    /// column order), take the lower middle value, return the lowest column holding it.
    fn naive(v: &[f32], b: usize, n: usize, kk: usize, offset: usize, k: usize) -> Vec<u32> {
        let mut out = Vec::new();
        for bi in 0..b {
            for j in 0..kk {
                let vals: Vec<f32> = (0..k).map(|i| v[bi * n * kk + (offset + i) * kk + j].abs()).collect();
                let mut s = vals.clone();
                s.sort_by(|a, b| a.total_cmp(b));
                let m = s[median_rank(k)];
                out.push((offset + vals.iter().position(|x| *x == m).unwrap()) as u32);
            }
        }
        out
    }

    #[test]
    fn both_median_paths_match_a_sort_with_ties_and_tails() {
        let mut rng = StdRng::seed_from_u64(5);
        // k on both sides of RANK_COUNT_MAX_K, unit counts with partial blocks, few distinct
        // values (many ties, signed zeros) and continuous values.
        for &(b, kk, k, offset, distinct) in &[
            (3, 70, 5, 1, 3),
            (2, 64, 50, 0, 4),
            (4, 131, 51, 2, 0),
            (2, 10, 97, 1, 5),
            (1, 65, 200, 0, 0),
            (5, 1, 1, 0, 0),
            (2, 3, 2, 0, 2),
        ] {
            let n = offset + k + 1;
            let v: Vec<f32> = (0..b * n * kk)
                .map(|_| {
                    if distinct > 0 {
                        rng.random_range(0..distinct) as f32 * if rng.random::<bool>() { -1.0 } else { 1.0 }
                    } else {
                        rng.random_range(-3.0f32..3.0)
                    }
                })
                .collect();
            let bits: Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
            let got = median_indices(&bits, b, n, kk, offset, k);
            assert_eq!(got, naive(&v, b, n, kk, offset, k), "b {b} K {kk} k {k} offset {offset} distinct {distinct}");
        }
    }
}
