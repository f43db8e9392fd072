//! The projected ReLU's columns `[w; r_1 ⊙ w; …; r_k ⊙ w]` as one op that knows where they are
//! zero.
//!
//! The `1 + k` columns of a projected ReLU (see `relu.rs`) are non-zero only on its unstable
//! units, 2–7 % of a layer on the paper's MNIST model. Built as a dense random matrix times the
//! weights, they cost a full-size random tensor (zero-filled, then scattered into), a full-size
//! product, and in the backward pass a full-size contraction of the gradient with that random
//! tensor. Here the draws stay compact (`k · m_b` values for the `m_b` unstable units of example
//! `b`, the same draws in the same order as [`crate::random::projection_tensor_on`]), the forward
//! pass writes the non-zeros only, and the gradient of `w` reads the gradient at the support only:
//!
//! `cols[b, 0, u] = w[b, u]`, `cols[b, 1 + i, u_j] = r[b, i, j] · w[b, u_j]`;
//! `∂/∂w[b, u] = g[b, 0, u] + Σ_i g[b, 1 + i, u] · r[b, i, j]` (the sum for `u = u_j` only).

use crate::random::{draws_at, projection_tensor_on, Projection};
use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use dual_core::Result;
use dual_layers::kernels::cpu::Elem;
use rayon::prelude::*;
use std::sync::Arc;

/// The compact draws of every example: `k · m_b` values for its `m_b` supported features.
struct Draws {
    k: usize,
    support: Vec<Vec<u32>>,
    values: Vec<Vec<f64>>,
}

/// The columns `[B, 1 + k, *shape]` of a projected ReLU with weights `w` (`[B, K]`, zero off the
/// support), `k` Cauchy projections on the features `support[b]` of example `b`, drawn from
/// stream `b` of `seed`. Same values as `projection_tensor_on(.., leading_ones) ⊙ w`.
pub(crate) fn relu_proj_columns(
    w: &Tensor,
    shape: &[usize],
    support: &[Vec<u32>],
    k: usize,
    seed: u64,
) -> Result<Tensor> {
    let (b, kk) = w.dims2()?;
    if support.len() != b || shape.iter().product::<usize>() != kk {
        return Err(dual_core::DualError::shape(format!(
            "projected ReLU columns: weights {:?} for {} examples of shape {shape:?}",
            w.dims(),
            support.len()
        )));
    }
    if !w.device().is_cpu() || !matches!(w.dtype(), DType::F32 | DType::F64) {
        let r = projection_tensor_on(Projection::Cauchy, k, shape, support, seed, w.dtype(), w.device(), true)?;
        let mut wdims = vec![b];
        wdims.extend_from_slice(shape);
        return Ok(dual_layers::kernels::scale_columns(&r, &w.reshape(wdims)?)?);
    }
    let values = (0..b)
        .into_par_iter()
        .map(|i| draws_at(Projection::Cauchy, k, support[i].len(), crate::random::stream_seed(seed, i as u64)))
        .collect();
    let draws = Arc::new(Draws { k, support: support.to_vec(), values });
    let mut dims = vec![b, 1 + k];
    dims.extend_from_slice(shape);
    Ok(w.contiguous()?.apply_op1(ReluProjColumns { draws, dims })?)
}

/// Per example: `f(b, draws of b, its support)`, in parallel over the rows of `out`.
fn per_example<T: Send>(out: &mut [T], row: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    if row > 0 {
        out.par_chunks_mut(row).enumerate().for_each(|(i, o)| f(i, o));
    }
}

fn slice<'a, T>(data: &'a [T], l: &Layout) -> candle_core::Result<&'a [T]> {
    dual_layers::kernels::cpu::contiguous_slice(data, l, "projected ReLU columns")
}

struct ReluProjColumns {
    draws: Arc<Draws>,
    dims: Vec<usize>,
}

impl ReluProjColumns {
    fn fwd<T: Elem>(&self, w: &[T], conv: impl Fn(f64) -> T + Sync + Send) -> Vec<T> {
        let d = &self.draws;
        let kk = w.len() / d.support.len().max(1);
        let mut out = dual_layers::kernels::cpu::zeroed::<T>(d.support.len() * (1 + d.k) * kk);
        per_example(&mut out, (1 + d.k) * kk, |b, o| {
            let wb = &w[b * kk..(b + 1) * kk];
            o[..kk].copy_from_slice(wb);
            let (idx, vals) = (&d.support[b], &d.values[b]);
            let m = idx.len();
            for i in 0..d.k {
                let row = &mut o[(1 + i) * kk..(2 + i) * kk];
                for (j, &u) in idx.iter().enumerate() {
                    row[u as usize] = conv(vals[i * m + j]) * wb[u as usize];
                }
            }
        });
        out
    }
}

impl CustomOp1 for ReluProjColumns {
    fn name(&self) -> &'static str {
        "relu-proj-columns"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F32(w) => CpuStorage::F32(self.fwd(slice(w, l)?, |x| x as f32)),
            CpuStorage::F64(w) => CpuStorage::F64(self.fwd(slice(w, l)?, |x| x)),
            _ => bail!("projected ReLU columns: f32 or f64 only"),
        };
        Ok((out, Shape::from(self.dims.clone())))
    }

    fn bwd(&self, w: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        if !w.track_op() {
            return Ok(None);
        }
        Ok(Some(
            grad.contiguous()?
                .apply_op1_no_bwd(&ReluProjColumnsGrad { draws: self.draws.clone(), dims: w.dims().to_vec() })?,
        ))
    }
}

/// `∂/∂w` from the gradient of the columns, read at row 0 and at the support only.
struct ReluProjColumnsGrad {
    draws: Arc<Draws>,
    dims: Vec<usize>,
}

impl ReluProjColumnsGrad {
    fn bwd<T: Elem>(&self, g: &[T], conv: impl Fn(f64) -> T + Sync + Send) -> Vec<T> {
        let d = &self.draws;
        let b = d.support.len();
        let kk = g.len() / (b * (1 + d.k)).max(1);
        let mut out = vec![T::ZERO; b * kk];
        per_example(&mut out, kk, |e, o| {
            let gb = &g[e * (1 + d.k) * kk..(e + 1) * (1 + d.k) * kk];
            o.copy_from_slice(&gb[..kk]);
            let (idx, vals) = (&d.support[e], &d.values[e]);
            let m = idx.len();
            for i in 0..d.k {
                let row = &gb[(1 + i) * kk..(2 + i) * kk];
                for (j, &u) in idx.iter().enumerate() {
                    o[u as usize] += row[u as usize] * conv(vals[i * m + j]);
                }
            }
        });
        out
    }
}

impl CustomOp1 for ReluProjColumnsGrad {
    fn name(&self) -> &'static str {
        "relu-proj-columns-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F32(g) => CpuStorage::F32(self.bwd(slice(g, l)?, |x| x as f32)),
            CpuStorage::F64(g) => CpuStorage::F64(self.bwd(slice(g, l)?, |x| x)),
            _ => bail!("projected ReLU columns: f32 or f64 only"),
        };
        Ok((out, Shape::from(self.dims.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn compact_columns_equal_the_dense_product_with_the_same_gradient() -> Result<()> {
        // Two examples with different supports (one empty), f32 and f64: the values and the
        // gradient of w match the dense random matrix times w exactly (same draws, same order).
        let shape = [2usize, 3, 4];
        let support: Vec<Vec<u32>> = vec![vec![0, 5, 7, 23], vec![], vec![11]];
        for dtype in [DType::F64, DType::F32] {
            let mut w = vec![0f64; 3 * 24];
            for (b, idx) in support.iter().enumerate() {
                for &u in idx {
                    w[b * 24 + u as usize] = 0.5 + u as f64 / 10.0;
                }
            }
            let wv = Var::from_tensor(&Tensor::from_vec(w, (3, 24), &Device::Cpu)?.to_dtype(dtype)?)?;
            let got = relu_proj_columns(wv.as_tensor(), &shape, &support, 5, 42)?;
            let r = projection_tensor_on(Projection::Cauchy, 5, &shape, &support, 42, dtype, &Device::Cpu, true)?;
            let want = dual_layers::kernels::scale_columns(&r, &wv.as_tensor().reshape((3, 2, 3, 4))?)?;
            assert_eq!(got.dims(), want.dims());
            let diff = (&got - &want)?.abs()?.max_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            assert_eq!(diff, 0.0, "{dtype:?} values");
            let up =
                Tensor::arange(0f64, got.elem_count() as f64, &Device::Cpu)?.to_dtype(dtype)?.reshape(got.dims())?;
            let a = (got * &up)?.sum_all()?.backward()?;
            let b = (want * &up)?.sum_all()?.backward()?;
            let (ga, gb) = (a.get(wv.as_tensor()).expect("gradient"), b.get(wv.as_tensor()).expect("gradient"));
            let rel = ((ga - gb)?.abs()?.max_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?)
                / gb.abs()?.max_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            assert!(rel < 1e-6, "{dtype:?} gradient: relative difference {rel}");
        }
        assert!(
            relu_proj_columns(&Tensor::zeros((2, 24), DType::F32, &Device::Cpu)?, &shape, &support, 5, 1).is_err(),
            "3 supports for 2 examples"
        );
        Ok(())
    }
}
