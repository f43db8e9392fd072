//! The fused slope and weighted-l1 kernels against the same maths written with Candle's own
//! broadcasting ops: forward values and the gradients of both arguments, f64 (1e-10) and f32
//! (1e-4 relative), shared (batch 1) and per-example columns, exact zeros included (whose
//! subgradient of |·| is taken as 0 on both sides).

use candle_core::{DType, Device, Result, Tensor, Var};
use dual_layers::kernels::{abs_contract, scale_columns};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Values in [-1, 1] with about one in eight exactly zero.
fn rand_tensor(rng: &mut StdRng, shape: &[usize], dtype: DType) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| if rng.random_range(0..8) == 0 { 0.0 } else { rng.random_range(-1.0..1.0) }).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)
}

fn assert_close(got: &Tensor, want: &Tensor, dtype: DType, what: &str) -> Result<()> {
    assert_eq!(got.dims(), want.dims(), "{what}: shapes differ");
    let g = got.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let w = want.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let scale = w.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let err = g.iter().zip(&w).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    let tol = if dtype == DType::F64 { 1e-10 } else { 1e-4 };
    assert!(err <= tol * scale, "{what}: max error {err:e} (scale {scale:e}, {dtype:?})");
    Ok(())
}

/// sign(x) with sign(0) = 0, from Candle ops.
fn sign(x: &Tensor) -> Result<Tensor> {
    x.gt(0.0)?.to_dtype(x.dtype())? - x.lt(0.0)?.to_dtype(x.dtype())?
}

#[test]
fn scale_columns_matches_broadcast_mul() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(1);
    for dtype in [DType::F64, DType::F32] {
        for (bx, b, n, k) in [(1, 3, 5, 7), (3, 3, 5, 7), (1, 1, 4, 3000), (2, 2, 40, 33), (1, 4, 1, 1)] {
            let what = format!("bx {bx} b {b} n {n} k {k}");
            let x = Var::from_tensor(&rand_tensor(&mut rng, &[bx, n, k], dtype)?)?;
            let d = Var::from_tensor(&rand_tensor(&mut rng, &[b, k], dtype)?)?;
            let up = rand_tensor(&mut rng, &[b, n, k], dtype)?;
            let got = scale_columns(x.as_tensor(), d.as_tensor())?;
            let want = x.as_tensor().broadcast_mul(&d.as_tensor().unsqueeze(1)?)?;
            assert_close(&got, &want, dtype, &format!("{what} forward"))?;
            let gg = (got * &up)?.sum_all()?.backward()?;
            let gw = (want * &up)?.sum_all()?.backward()?;
            for (v, name) in [(&x, "dx"), (&d, "dd")] {
                assert_close(gg.get(v.as_tensor()).unwrap(), gw.get(v.as_tensor()).unwrap(), dtype, &format!("{what} {name}"))?;
            }
        }
    }
    Ok(())
}

#[test]
fn abs_contract_matches_candle_ops() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(2);
    for dtype in [DType::F64, DType::F32] {
        for (gb, b, r, p) in [(3, 3, 5, 7), (1, 3, 5, 7), (1, 1, 2, 5000), (4, 4, 30, 17)] {
            let what = format!("gb {gb} b {b} r {r} p {p}");
            let g = Var::from_tensor(&rand_tensor(&mut rng, &[gb, r, p], dtype)?)?;
            let w = Var::from_tensor(&rand_tensor(&mut rng, &[b, p], dtype)?)?;
            let up = rand_tensor(&mut rng, &[b, r], dtype)?;
            let got = abs_contract(g.as_tensor(), w.as_tensor())?;
            // Σ_p |g| w with |g| = g·sign(g), so Candle's gradient also uses sign(0) = 0.
            let gt = g.as_tensor();
            let absg = (gt * sign(gt)?.detach())?;
            let want = absg.broadcast_mul(&w.as_tensor().unsqueeze(1)?)?.sum(2)?;
            assert_close(&got, &want, dtype, &format!("{what} forward"))?;
            let gg = (got * &up)?.sum_all()?.backward()?;
            let gw = (want * &up)?.sum_all()?.backward()?;
            for (v, name) in [(&g, "dg"), (&w, "dw")] {
                assert_close(gg.get(v.as_tensor()).unwrap(), gw.get(v.as_tensor()).unwrap(), dtype, &format!("{what} {name}"))?;
            }
        }
    }
    Ok(())
}

#[test]
fn untracked_arguments_and_bad_shapes() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(3);
    let x = Var::from_tensor(&rand_tensor(&mut rng, &[2, 3, 4], DType::F32)?)?;
    let d = rand_tensor(&mut rng, &[2, 4], DType::F32)?;
    let grads = scale_columns(x.as_tensor(), &d)?.sum_all()?.backward()?;
    assert!(grads.get(x.as_tensor()).is_some());
    assert!(grads.get(&d).is_none(), "a constant got a gradient");
    // Slopes for 5 units on columns of 4; 3 examples of slopes for 2 examples of columns.
    assert!(scale_columns(x.as_tensor(), &rand_tensor(&mut rng, &[2, 5], DType::F32)?).is_err());
    assert!(scale_columns(x.as_tensor(), &rand_tensor(&mut rng, &[3, 4], DType::F32)?).is_err());
    assert!(abs_contract(x.as_tensor(), &rand_tensor(&mut rng, &[3, 4], DType::F32)?).is_err());
    Ok(())
}
