//! ReLU's fused interval map in centre–radius form (`kernels::relu_box`) against Candle's ops:
//! `(([m − r]₊ + [m + r]₊) / 2, ([m + r]₊ − [m − r]₊) / 2)`, f32 and f64, equal bit for bit, with
//! boxes whose ends sit exactly at 0; and its gradient against the gradient of Candle's ops.

use candle_core::{DType, Device, Result, Tensor, Var};
use dual_layers::kernels::relu_box;
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Centres and radii (radius ≥ 0), a fifth of the boxes with an end exactly at 0.
fn boxes(rng: &mut StdRng, n: usize, dtype: DType) -> Result<(Tensor, Tensor)> {
    let (mut m, mut r) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let rad: f64 = rng.random_range(0.0..1.0);
        let mid = match rng.random_range(0..5) {
            0 => rad,
            1 => -rad,
            _ => rng.random_range(-1.5..1.5),
        };
        m.push(mid);
        r.push(rad);
    }
    let t = |v: Vec<f64>| Tensor::from_vec(v, (2, n / 2), &Device::Cpu)?.to_dtype(dtype);
    Ok((t(m)?, t(r)?))
}

fn reference(m: &Tensor, r: &Tensor) -> Result<(Tensor, Tensor)> {
    let (lo, hi) = ((m - r)?.relu()?, (m + r)?.relu()?);
    Ok((((&lo + &hi)? * 0.5)?, ((hi - lo)? * 0.5)?))
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

#[test]
fn fused_box_equals_candle_ops() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(11);
    for dtype in [DType::F32, DType::F64] {
        let (m, r) = boxes(&mut rng, 20_000, dtype)?;
        let (gm, gr) = relu_box(&m, &r)?.expect("CPU operands are fused");
        let (wm, wr) = reference(&m, &r)?;
        assert_eq!(flat(&gm), flat(&wm), "{dtype:?} centres");
        assert_eq!(flat(&gr), flat(&wr), "{dtype:?} radii");
    }
    Ok(())
}

#[test]
fn fused_gradient_equals_candle_ops() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(12);
    let (m, r) = boxes(&mut rng, 2_000, DType::F64)?;
    let (vm, vr) = (Var::from_tensor(&m)?, Var::from_tensor(&r)?);
    let w1 = Tensor::from_vec(
        (0..2_000).map(|_| rng.random_range(-1.0..1.0)).collect::<Vec<f64>>(),
        (2, 1000),
        &Device::Cpu,
    )?;
    let w2 = Tensor::from_vec(
        (0..2_000).map(|_| rng.random_range(-1.0..1.0)).collect::<Vec<f64>>(),
        (2, 1000),
        &Device::Cpu,
    )?;
    let loss = |(a, b): (Tensor, Tensor)| -> Result<Tensor> { (a * &w1)?.sum_all()? + (b * &w2)?.sum_all()? };
    let gg = loss(relu_box(vm.as_tensor(), vr.as_tensor())?.expect("fused"))?.backward()?;
    let gw = loss(reference(vm.as_tensor(), vr.as_tensor())?)?.backward()?;
    for v in [&vm, &vr] {
        let (a, b) = (flat(gg.get(v.as_tensor()).expect("grad")), flat(gw.get(v.as_tensor()).expect("grad")));
        let err = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        assert!(err < 1e-12, "gradient differs by {err}");
        assert!(a.iter().any(|&x| x != 0.0));
    }
    Ok(())
}
