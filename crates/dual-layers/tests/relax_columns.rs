//! The fused backward step of a two-line relaxation (`kernels::relax_columns`) against Candle's
//! ops: `[λ]₊ a_L + [λ]₋ a_U`, shared and per-example coefficients, f32 and f64, equal bit for
//! bit; and its fused gradient against the gradient of Candle's ops.

use candle_core::{DType, Device, Result, Tensor, Var};
use dual_layers::kernels::relax_columns;
use rand::{rngs::StdRng, Rng, SeedableRng};

fn rand_tensor(rng: &mut StdRng, shape: &[usize], dtype: DType) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    // Exact zeros too: the fused op must send them down the same branch as Candle's ops.
    let v: Vec<f64> = (0..n).map(|_| if rng.random_bool(0.2) { 0.0 } else { rng.random_range(-1.0..1.0) }).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)
}

fn reference(lam: &Tensor, a_l: &Tensor, a_u: &Tensor) -> Result<Tensor> {
    let pos = lam.maximum(0.0)?;
    let neg = (lam - &pos)?;
    let b = a_l.dim(0)?;
    let mut s = vec![b, 1];
    s.extend_from_slice(&lam.dims()[2..]);
    let (al, au) = (a_l.reshape(s.clone())?, a_u.reshape(s)?);
    pos.broadcast_mul(&al)? + neg.broadcast_mul(&au)?
}

#[test]
fn fused_step_equals_candle_ops() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(3);
    for dtype in [DType::F32, DType::F64] {
        for (bl, b, n, shape) in
            [(1, 4, 7, vec![3, 5, 5]), (4, 4, 7, vec![3, 5, 5]), (1, 2, 33, vec![40]), (3, 3, 1, vec![9])]
        {
            let mut ls = vec![bl, n];
            ls.extend_from_slice(&shape);
            let mut ps = vec![b];
            ps.extend_from_slice(&shape);
            let lam = rand_tensor(&mut rng, &ls, dtype)?;
            let a_l = rand_tensor(&mut rng, &ps, dtype)?.abs()?;
            let a_u = rand_tensor(&mut rng, &ps, dtype)?.abs()?;
            let got = relax_columns(&lam, &a_l, &a_u)?.expect("untracked CPU operands are fused");
            let want = reference(&lam, &a_l, &a_u)?;
            assert_eq!(got.dims(), want.dims());
            let (g, w) = (
                got.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?,
                want.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?,
            );
            assert!(g.iter().zip(&w).all(|(a, b)| a == b), "fused step differs ({dtype:?}, lam {ls:?})");
        }
    }
    Ok(())
}

/// Gradients of `Σ w ⊙ out` in the three operands, fused and by Candle's ops (f64, exact zeros
/// in `λ` included: both give the tie the mean of the two sides).
#[test]
fn fused_gradient_equals_candle_ops() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(4);
    for (bl, b, n, shape) in [(1, 4, 7, vec![3, 5, 5]), (4, 4, 7, vec![3, 5, 5]), (1, 2, 33, vec![40])] {
        let mut ls = vec![bl, n];
        ls.extend_from_slice(&shape);
        let mut ps = vec![b];
        ps.extend_from_slice(&shape);
        let mut os = vec![b, n];
        os.extend_from_slice(&shape);
        let lam = Var::from_tensor(&rand_tensor(&mut rng, &ls, DType::F64)?)?;
        let a_l = Var::from_tensor(&rand_tensor(&mut rng, &ps, DType::F64)?.abs()?)?;
        let a_u = Var::from_tensor(&rand_tensor(&mut rng, &ps, DType::F64)?.abs()?)?;
        let w = rand_tensor(&mut rng, &os, DType::F64)?;
        let got = relax_columns(lam.as_tensor(), a_l.as_tensor(), a_u.as_tensor())?.expect("CPU operands are fused");
        let want = reference(lam.as_tensor(), a_l.as_tensor(), a_u.as_tensor())?;
        let gg = (got * &w)?.sum_all()?.backward()?;
        let gw = (want * &w)?.sum_all()?.backward()?;
        for v in [&lam, &a_l, &a_u] {
            let a = gg.get(v.as_tensor()).expect("a gradient").flatten_all()?.to_vec1::<f64>()?;
            let c = gw.get(v.as_tensor()).expect("a gradient").flatten_all()?.to_vec1::<f64>()?;
            assert_eq!(a.len(), c.len());
            let err = a.iter().zip(&c).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
            assert!(err < 1e-12, "fused gradient differs by {err} (lam {ls:?}, operand {:?})", v.dims());
        }
    }
    Ok(())
}

#[test]
fn mismatched_shapes_are_not_fused() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(5);
    let lam = rand_tensor(&mut rng, &[1, 3, 4], DType::F64)?;
    let a = rand_tensor(&mut rng, &[2, 4], DType::F64)?.abs()?;
    assert!(relax_columns(&lam, &a, &a)?.is_some());
    // Shapes that do not match are left to the caller's ops (which report them).
    assert!(relax_columns(&lam, &a.narrow(1, 0, 3)?, &a)?.is_none());
    Ok(())
}
