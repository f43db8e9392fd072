//! The training step's fused ops against Candle's compositions. The per-channel bias of
//! convolution outputs (`kernels::add_channel_bias`) against Candle's
//! `broadcast_add` of the bias reshaped to `[1, …, c, 1, 1]`: the sums equal bit for bit, the
//! gradients (to the outputs' input and to the bias) equal to float tolerance, f32 and f64, on
//! ranks 4 and 5 (the dual network's columns); and `abs_tracked`, IBP's `|W|`, against Candle's `abs`.

use candle_core::{DType, Device, Result, Tensor, Var};
use dual_layers::kernels::add_channel_bias;
use rand::{rngs::StdRng, Rng, SeedableRng};

fn rand(rng: &mut StdRng, shape: &[usize], dtype: DType) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    Tensor::from_vec((0..n).map(|_| rng.random_range(-1.0..1.0)).collect::<Vec<f64>>(), shape, &Device::Cpu)?
        .to_dtype(dtype)
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

fn close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * (1.0 + x.abs().max(y.abs())), "{what}[{i}]: {x} vs {y}");
    }
}

/// `broadcast_add` with the bias on the third axis from the end.
fn reference(y: &Tensor, b: &Tensor) -> Result<Tensor> {
    let mut shape = vec![1; y.rank()];
    shape[y.rank() - 3] = b.dim(0)?;
    y.broadcast_add(&b.reshape(shape)?)
}

#[test]
fn bias_sum_and_gradients_equal_broadcast_add() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(31);
    for dtype in [DType::F32, DType::F64] {
        let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
        for shape in [vec![3, 5, 7, 6], vec![4, 2, 8, 5, 3], vec![2, 1, 3, 1, 1]] {
            let c = shape[shape.len() - 3];
            let (y, b) =
                (Var::from_tensor(&rand(&mut rng, &shape, dtype)?)?, Var::from_tensor(&rand(&mut rng, &[c], dtype)?)?);
            let ours = add_channel_bias(y.as_tensor(), b.as_tensor())?;
            let theirs = reference(y.as_tensor(), b.as_tensor())?;
            assert_eq!(flat(&ours), flat(&theirs), "{dtype:?} {shape:?} values");
            // A loss that weighs every element differently (and non-linearly), so a wrong gradient shows.
            let w = rand(&mut rng, &shape, dtype)?;
            let loss = |t: &Tensor| -> Result<Tensor> { (t.sqr()? * &w)?.sum_all() };
            let (g1, g2) = (loss(&ours)?.backward()?, loss(&theirs)?.backward()?);
            for (v, name) in [(&y, "y"), (&b, "b")] {
                let (a, e) = (g1.get(v).expect("gradient"), g2.get(v).expect("gradient"));
                close(&flat(a), &flat(e), tol, &format!("{dtype:?} {shape:?} d{name}"));
            }
        }
    }
    Ok(())
}

#[test]
fn untracked_operands_give_the_same_values() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(32);
    let (y, b) = (rand(&mut rng, &[2, 3, 4, 4], DType::F32)?, rand(&mut rng, &[3], DType::F32)?);
    assert_eq!(flat(&add_channel_bias(&y, &b)?), flat(&reference(&y, &b)?));
    // A strided (transposed) view is made contiguous first.
    let yt = rand(&mut rng, &[2, 3, 4, 5], DType::F64)?.transpose(2, 3)?;
    let b = rand(&mut rng, &[3], DType::F64)?;
    assert_eq!(flat(&add_channel_bias(&yt, &b)?), flat(&reference(&yt, &b)?));
    Ok(())
}

#[test]
fn mismatched_shapes_are_errors() -> Result<()> {
    let y = Tensor::zeros((2, 3, 4, 4), DType::F32, &Device::Cpu)?;
    for b in [Tensor::zeros(4, DType::F32, &Device::Cpu)?, Tensor::zeros((3, 1), DType::F32, &Device::Cpu)?] {
        let e = add_channel_bias(&y, &b).expect_err("a bias of the wrong shape");
        assert!(e.to_string().contains("add_channel_bias"), "{e}");
    }
    let flat2 = Tensor::zeros((2, 3), DType::F32, &Device::Cpu)?;
    assert!(add_channel_bias(&flat2, &Tensor::zeros(3, DType::F32, &Device::Cpu)?).is_err());
    Ok(())
}

/// `kernels::abs_tracked` (IBP's `|W|`, one-pass backward) against Candle's `abs`: values and
/// gradients equal bit for bit, f32 and f64, with weights exactly 0 (sign +1 as Candle's).
#[test]
fn tracked_abs_equals_candle_abs_bit_for_bit() -> Result<()> {
    use dual_layers::kernels::abs_tracked;
    let mut rng = StdRng::seed_from_u64(33);
    for dtype in [DType::F32, DType::F64] {
        for shape in [vec![17, 3, 4, 4], vec![20_000], vec![3, 5]] {
            let mut w = rand(&mut rng, &shape, dtype)?.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
            for i in (0..w.len()).step_by(7) {
                w[i] = 0.0;
            }
            let w = Var::from_tensor(&Tensor::from_vec(w, shape.as_slice(), &Device::Cpu)?.to_dtype(dtype)?)?;
            let (ours, theirs) = (abs_tracked(w.as_tensor())?, w.as_tensor().abs()?);
            assert_eq!(flat(&ours), flat(&theirs), "{dtype:?} {shape:?} values");
            let k = rand(&mut rng, &shape, dtype)?;
            // The weight also reaches the loss directly, so its gradient is a sum of two parts.
            let loss = |a: &Tensor| -> Result<Tensor> { ((a * &k)? + (w.as_tensor() * 0.5)?)?.sqr()?.sum_all() };
            let (g1, g2) = (loss(&ours)?.backward()?, loss(&theirs)?.backward()?);
            let (a, b) = (g1.get(&w).expect("gradient"), g2.get(&w).expect("gradient"));
            let bits = |t: &Tensor| -> Vec<u64> { flat(t).iter().map(|v| v.to_bits()).collect() };
            assert_eq!(bits(a), bits(b), "{dtype:?} {shape:?} gradient");
        }
    }
    Ok(())
}
