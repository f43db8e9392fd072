//! The gemm convolution kernels against Candle's own `conv2d` / `conv_transpose2d`: forward
//! values and both gradients, in f64 (to 1e-10) and f32 (to 1e-4 relative), on many shapes —
//! including the ones that broke Candle's CPU paths before (C == H == W, non-contiguous inputs
//! and kernels, non-zero start offsets). Then the fused slope and weighted-l1 ops against the
//! same maths written with Candle's broadcasting ops (values and both gradients, shared and
//! per-example columns, exact zeros included, whose subgradient of |·| is 0 on both sides).

use candle_core::{DType, Device, Result, Tensor, Var};
use dual_layers::kernels::{
    abs_contract, conv2d_fast, conv2d_weight_grad, conv_transpose2d_fast, conv_transpose2d_fast_hw, linear_columns,
    linear_weight_grad, neg_part_contract, record_paths, scale_columns, with_tuning, KernelPath, PathTaken, Tuning,
};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// A generator of random test tensors: `(rng, shape, dtype) → tensor`.
type Gen = fn(&mut StdRng, &[usize], DType) -> Result<Tensor>;

fn rand_tensor(rng: &mut StdRng, shape: &[usize], dtype: DType) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)
}

fn tol(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-10,
        _ => 1e-4,
    }
}

/// Max abs difference relative to the reference's scale (at least 1).
fn assert_close(got: &Tensor, want: &Tensor, dtype: DType, what: &str) -> Result<()> {
    assert_eq!(got.dims(), want.dims(), "{what}: shapes differ");
    let g = got.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let w = want.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let scale = w.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let err = g.iter().zip(&w).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(err <= tol(dtype) * scale, "{what}: max error {err:e} (scale {scale:e}, dtype {dtype:?})");
    Ok(())
}

/// The gradients of `Σ got · up` and of `Σ want · up` agree in every variable of `vars` (`what`
/// and the variable's name label a failure).
fn assert_same_gradients(
    got: Tensor,
    want: Tensor,
    up: &Tensor,
    vars: &[(&Var, &str)],
    dtype: DType,
    what: &str,
) -> Result<()> {
    let a = (got * up)?.sum_all()?.backward()?;
    let b = (want * up)?.sum_all()?.backward()?;
    for (v, name) in vars {
        let (ga, gb) = (a.get(v.as_tensor()).expect("gradient"), b.get(v.as_tensor()).expect("gradient"));
        assert_close(ga, gb, dtype, &format!("{what} {name}"))?;
    }
    Ok(())
}

/// Candle's `conv2d`, as the reference. Candle's backward of `conv2d` uses one output padding
/// for both axes (taken from the height), which fails when the two axes need different ones; the
/// input is zero-extended at the bottom or right until they agree, which changes no output.
fn candle_conv2d(x: &Tensor, w: &Tensor, pad: usize, stride: usize) -> Result<Tensor> {
    let (_, _, h, wd) = x.dims4()?;
    let (_, _, kh, kw) = w.dims4()?;
    let op_h = (h + 2 * pad - kh) % stride;
    let op_w = (wd + 2 * pad - kw) % stride;
    let x = if op_h < op_w {
        x.pad_with_zeros(2, 0, op_w - op_h)?
    } else if op_w < op_h {
        x.pad_with_zeros(3, 0, op_h - op_w)?
    } else {
        x.clone()
    };
    x.conv2d(w, pad, stride, 1, 1)
}

/// How an argument reaches the op: contiguous, with a start offset, or through a permutation.
#[derive(Debug, Clone, Copy)]
enum Form {
    Contiguous,
    /// A `narrow` of a larger tensor along dim 0 (non-zero start offset, contiguous strides).
    Offset,
    /// Stored as `[d0, d2, d3, d1]` and permuted back (channels last).
    ChannelsLast,
    /// Stored with the two spatial axes swapped and transposed back.
    SpatialSwap,
    /// A `narrow` along the last axis of a wider tensor (row stride ≠ width).
    Padded,
}

const FORMS: [Form; 5] = [Form::Contiguous, Form::Offset, Form::ChannelsLast, Form::SpatialSwap, Form::Padded];

/// A variable holding `shape` and the view of it in `form` that the op will see.
fn make_arg(rng: &mut StdRng, shape: &[usize], dtype: DType, form: Form) -> Result<(Var, Tensor)> {
    make_arg_with(rng, shape, dtype, form, rand_tensor)
}

/// [`make_arg`] with the values drawn by `rand_tensor`.
fn make_arg_with(
    rng: &mut StdRng,
    shape: &[usize],
    dtype: DType,
    form: Form,
    rand_tensor: fn(&mut StdRng, &[usize], DType) -> Result<Tensor>,
) -> Result<(Var, Tensor)> {
    let (a, b, c, d) = (shape[0], shape[1], shape[2], shape[3]);
    let (var, view) = match form {
        Form::Contiguous => {
            let v = Var::from_tensor(&rand_tensor(rng, shape, dtype)?)?;
            let t = v.as_tensor().clone();
            (v, t)
        }
        Form::Offset => {
            let v = Var::from_tensor(&rand_tensor(rng, &[a + 2, b, c, d], dtype)?)?;
            let t = v.as_tensor().narrow(0, 1, a)?;
            (v, t)
        }
        Form::ChannelsLast => {
            let v = Var::from_tensor(&rand_tensor(rng, &[a, c, d, b], dtype)?)?;
            let t = v.as_tensor().permute((0, 3, 1, 2))?;
            (v, t)
        }
        Form::SpatialSwap => {
            let v = Var::from_tensor(&rand_tensor(rng, &[a, b, d, c], dtype)?)?;
            let t = v.as_tensor().transpose(2, 3)?;
            (v, t)
        }
        Form::Padded => {
            let v = Var::from_tensor(&rand_tensor(rng, &[a, b, c, d + 3], dtype)?)?;
            let t = v.as_tensor().narrow(3, 2, d)?;
            (v, t)
        }
    };
    assert_eq!(view.dims(), shape);
    Ok((var, view))
}

#[derive(Debug, Clone, Copy)]
struct Case {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    k: usize,
    stride: usize,
    pad: usize,
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    // A sweep of small shapes: kernels 1-4, strides 1-2, paddings 0-2, square and not.
    for k in 1..=4 {
        for stride in 1..=2 {
            for pad in 0..=2 {
                for &(c, h, w) in &[(3, 7, 7), (2, 6, 9), (4, 5, 4)] {
                    if h + 2 * pad < k || w + 2 * pad < k {
                        continue;
                    }
                    v.push(Case { n: 3, c, h, w, o: 5, k, stride, pad });
                }
            }
        }
    }
    // C == H == W (broke Candle's tiled im2col before 0.10).
    v.push(Case { n: 2, c: 5, h: 5, w: 5, o: 5, k: 3, stride: 1, pad: 1 });
    v.push(Case { n: 4, c: 8, h: 8, w: 8, o: 6, k: 4, stride: 2, pad: 1 });
    v.push(Case { n: 2, c: 3, h: 3, w: 3, o: 2, k: 3, stride: 1, pad: 0 });
    // Single image, single channel, one output pixel.
    v.push(Case { n: 1, c: 1, h: 4, w: 4, o: 1, k: 4, stride: 1, pad: 0 });
    // The dual network's shapes, scaled down: first and second conv of the small MNIST model.
    v.push(Case { n: 40, c: 1, h: 28, w: 28, o: 16, k: 4, stride: 2, pad: 1 });
    v.push(Case { n: 40, c: 16, h: 14, w: 14, o: 32, k: 4, stride: 2, pad: 1 });
    // Large enough batches to run in parallel, with several images per gemm group.
    v.push(Case { n: 64, c: 8, h: 12, w: 12, o: 8, k: 3, stride: 1, pad: 1 });
    v.push(Case { n: 33, c: 4, h: 9, w: 11, o: 7, k: 1, stride: 1, pad: 0 });
    v.push(Case { n: 37, c: 6, h: 10, w: 10, o: 12, k: 3, stride: 2, pad: 2 });
    v
}

/// Forward and both gradients of `conv2d_fast` against Candle's `conv2d`.
fn check_conv2d(case: Case, dtype: DType, xform: Form, wform: Form, seed: u64) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let Case { n, c, h, w, o, k, stride, pad } = case;
    let (xv, x) = make_arg(&mut rng, &[n, c, h, w], dtype, xform)?;
    let (wv, wt) = make_arg(&mut rng, &[o, c, k, k], dtype, wform)?;
    let what = format!("conv2d {case:?} x:{xform:?} w:{wform:?}");

    let got = conv2d_fast(&x, &wt, stride, pad)?;
    let want = candle_conv2d(&x.contiguous()?, &wt.contiguous()?, pad, stride)?;
    assert_close(&got, &want, dtype, &format!("{what} forward"))?;

    let r = rand_tensor(&mut rng, want.dims(), dtype)?;
    assert_same_gradients(got, want, &r, &[(&xv, "input grad"), (&wv, "kernel grad")], dtype, &what)
}

/// Forward and both gradients of `conv_transpose2d_fast` against Candle's `conv_transpose2d`.
fn check_conv_transpose2d(
    case: Case,
    output_padding: usize,
    dtype: DType,
    xform: Form,
    wform: Form,
    seed: u64,
) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let Case { n, c, h, w, o, k, stride, pad } = case;
    // The transposed convolution maps the conv's output side [n, o, oh, ow] to [n, c, h', w'].
    let oh = (h + 2 * pad - k) / stride + 1;
    let ow = (w + 2 * pad - k) / stride + 1;
    if (oh - 1) * stride + k + output_padding <= 2 * pad {
        return Ok(());
    }
    let (xv, x) = make_arg(&mut rng, &[n, o, oh, ow], dtype, xform)?;
    let (wv, wt) = make_arg(&mut rng, &[o, c, k, k], dtype, wform)?;
    let what = format!("conv_transpose2d {case:?} op {output_padding} x:{xform:?} w:{wform:?}");

    let got = conv_transpose2d_fast(&x, &wt, stride, pad, output_padding)?;
    let want = x.contiguous()?.conv_transpose2d(&wt.contiguous()?, pad, output_padding, stride, 1)?;
    assert_close(&got, &want, dtype, &format!("{what} forward"))?;

    let r = rand_tensor(&mut rng, want.dims(), dtype)?;
    assert_same_gradients(got, want, &r, &[(&xv, "input grad"), (&wv, "kernel grad")], dtype, &what)
}

fn run_all(dtype: DType) -> Result<()> {
    let mut seed = 0u64;
    for case in cases() {
        for (i, &xform) in FORMS.iter().enumerate() {
            // Every input form with a contiguous kernel, and the kernel forms cycled alongside.
            let wform = FORMS[(i + case.k) % FORMS.len()];
            for wf in [Form::Contiguous, wform] {
                seed += 1;
                check_conv2d(case, dtype, xform, wf, seed)?;
                for op in 0..case.stride {
                    seed += 1;
                    check_conv_transpose2d(case, op, dtype, xform, wf, seed)?;
                }
            }
        }
    }
    Ok(())
}

#[test]
fn conv_kernels_match_candle_f64() -> Result<()> {
    run_all(DType::F64)
}

#[test]
fn conv_kernels_match_candle_f32() -> Result<()> {
    run_all(DType::F32)
}

/// Every scheduling gives the same numbers: one image per gemm, huge groups, gemm's threading,
/// and no parallelism at all.
#[test]
fn conv_kernels_any_tuning() -> Result<()> {
    let variants = [
        Tuning { group_bytes: 1, ..Tuning::DEFAULT },
        Tuning { group_bytes: 1 << 30, ..Tuning::DEFAULT },
        Tuning { gemm_threads: true, ..Tuning::DEFAULT },
        Tuning { serial_macs: usize::MAX, ..Tuning::DEFAULT },
        Tuning { tasks_per_thread: 1, serial_macs: 0, ..Tuning::DEFAULT },
    ];
    let case = Case { n: 23, c: 6, h: 10, w: 10, o: 12, k: 3, stride: 2, pad: 1 };
    let mut seed = 1000;
    for t in variants {
        // The knobs hold on this thread only, for this scope: tests running beside it keep theirs.
        let (res, paths) = record_paths(|| {
            with_tuning(t, || -> Result<()> {
                for form in [Form::Contiguous, Form::ChannelsLast] {
                    seed += 1;
                    check_conv2d(case, DType::F64, form, Form::Contiguous, seed)?;
                    check_conv_transpose2d(case, 1, DType::F64, form, Form::Contiguous, seed)?;
                    check_conv2d(Case { k: 1, stride: 1, pad: 0, ..case }, DType::F64, form, Form::Contiguous, seed)?;
                }
                Ok(())
            })
        });
        res?;
        let paths = paths_of(&paths);
        for op in ["conv2d", "conv_transpose2d", "conv2d_weight_grad"] {
            assert!(paths.contains(&(op, KernelPath::Dense)), "{t:?}: {op} never ran the gemm path: {paths:?}");
        }
    }
    Ok(())
}

/// Fills the calling thread's scratch pools (`dual_core::scratch`) with NaN buffers of many sizes:
/// a kernel that read a lent buffer before writing it would then return NaN.
fn poison_scratch() {
    use dual_core::scratch::Scratch;
    let lens: Vec<usize> = (0..12).map(|i| 64usize << i).collect();
    let mut a = Scratch::<f32>::take(&lens);
    let mut b = Scratch::<f64>::take(&lens);
    for (i, &l) in lens.iter().enumerate() {
        a.get(i, l).fill(f32::NAN);
        b.get(i, l).fill(f64::NAN);
    }
}

/// The kernels' buffers come from a per-thread pool without a zero fill: whatever an earlier call
/// left in them (here NaN) never reaches a result. Every case on the calling thread.
#[test]
fn left_over_scratch_never_reaches_a_result() -> Result<()> {
    let serial = Tuning { serial_macs: usize::MAX, ..Tuning::DEFAULT };
    let mut seed = 5000;
    with_tuning(serial, || -> Result<()> {
        for case in cases() {
            for dtype in [DType::F32, DType::F64] {
                seed += 1;
                poison_scratch();
                check_conv2d(case, dtype, Form::Contiguous, Form::Contiguous, seed)?;
                poison_scratch();
                check_conv_transpose2d(case, 0, dtype, Form::Contiguous, Form::Contiguous, seed)?;
            }
        }
        Ok(())
    })
}

/// Non-square inputs whose transpose needs different output paddings per axis.
#[test]
fn conv_transpose_per_axis_output_padding() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(7);
    let x = rand_tensor(&mut rng, &[3, 4, 5, 6], DType::F64)?;
    let w = rand_tensor(&mut rng, &[4, 2, 3, 3], DType::F64)?;
    let got = conv_transpose2d_fast_hw(&x, &w, 2, 1, (0, 1))?;
    assert_eq!(got.dims(), &[3, 2, 9, 12]);
    // Reference: the wider output, narrowed; the extra column only gets contributions that the
    // wider reference also has, so compare on the common part and through conv2d's adjoint.
    let wide = x.conv_transpose2d(&w, 1, 1, 2, 1)?;
    assert_close(&got, &wide.narrow(2, 0, 9)?, DType::F64, "per-axis output padding")?;

    // conv2d's input gradient on such an input goes through the per-axis transpose.
    let xv = Var::from_tensor(&rand_tensor(&mut rng, &[2, 2, 9, 12], DType::F64)?)?;
    let r = rand_tensor(&mut rng, &[2, 4, 5, 6], DType::F64)?;
    let g_got = (conv2d_fast(xv.as_tensor(), &w, 2, 1)? * &r)?.sum_all()?.backward()?;
    let g_want = (candle_conv2d(xv.as_tensor(), &w, 1, 2)? * &r)?.sum_all()?.backward()?;
    assert_close(g_got.get(&xv).unwrap(), g_want.get(&xv).unwrap(), DType::F64, "conv2d input grad, 9x12")?;
    Ok(())
}

/// The kernel gradient as an op of its own, and its gradients: `<R, dW(x, g)> = <g, conv2d(x, R)>`.
#[test]
fn weight_grad_op_and_its_gradients() -> Result<()> {
    for (i, &(n, c, h, w, o, k, s, p)) in
        [(3, 2, 7, 7, 4, 3, 1, 1), (5, 3, 9, 8, 2, 4, 2, 1), (40, 4, 10, 10, 6, 3, 2, 0), (6, 5, 5, 5, 3, 1, 1, 0)]
            .iter()
            .enumerate()
    {
        let mut rng = StdRng::seed_from_u64(100 + i as u64);
        let oh = (h + 2 * p - k) / s + 1;
        let ow = (w + 2 * p - k) / s + 1;
        let (xv, x) = make_arg(&mut rng, &[n, c, h, w], DType::F64, FORMS[i % FORMS.len()])?;
        let (gv, g) = make_arg(&mut rng, &[n, o, oh, ow], DType::F64, FORMS[(i + 2) % FORMS.len()])?;
        let r = rand_tensor(&mut rng, &[o, c, k, k], DType::F64)?;

        let dw = conv2d_weight_grad(&x, &g, (k, k), s, p)?;
        // Reference kernel gradient through Candle's autograd of its own conv2d.
        let wv = Var::from_tensor(&Tensor::zeros((o, c, k, k), DType::F64, &Device::Cpu)?)?;
        let y = candle_conv2d(&x.contiguous()?.detach(), wv.as_tensor(), p, s)?;
        let gw = (y * g.contiguous()?.detach())?.sum_all()?.backward()?;
        assert_close(&dw, gw.get(&wv).unwrap(), DType::F64, "weight grad op")?;

        let l_got = (dw * &r)?.sum_all()?;
        let l_want = (g.contiguous()? * candle_conv2d(&x.contiguous()?, &r, p, s)?)?.sum_all()?;
        assert_close(&l_got, &l_want, DType::F64, "bilinear identity")?;
        let a = l_got.backward()?;
        let b = l_want.backward()?;
        for (name, v) in [("d/dx", &xv), ("d/dg", &gv)] {
            assert_close(a.get(v).unwrap(), b.get(v).unwrap(), DType::F64, &format!("weight grad {name}"))?;
        }
    }
    Ok(())
}

/// Gradients are computed only for tracked arguments; constants get none and cost nothing.
#[test]
fn untracked_arguments_get_no_gradient() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(3);
    let x = rand_tensor(&mut rng, &[4, 3, 8, 8], DType::F32)?;
    let wv = Var::from_tensor(&rand_tensor(&mut rng, &[5, 3, 3, 3], DType::F32)?)?;
    let y = conv2d_fast(&x, wv.as_tensor(), 1, 1)?;
    let g = y.sum_all()?.backward()?;
    assert!(g.get(&x).is_none());
    let want = x.conv2d(wv.as_tensor(), 1, 1, 1, 1)?.sum_all()?.backward()?;
    assert_close(g.get(&wv).unwrap(), want.get(&wv).unwrap(), DType::F32, "kernel grad, constant input")?;
    Ok(())
}

#[test]
fn bad_shapes_are_errors() -> Result<()> {
    let x = Tensor::zeros((2, 3, 4, 4), DType::F32, &Device::Cpu)?;
    let w = Tensor::zeros((5, 2, 3, 3), DType::F32, &Device::Cpu)?;
    assert!(conv2d_fast(&x, &w, 1, 0).is_err(), "channel mismatch");
    let w = Tensor::zeros((5, 3, 7, 7), DType::F32, &Device::Cpu)?;
    assert!(conv2d_fast(&x, &w, 1, 1).is_err(), "kernel larger than the padded input");
    let w = Tensor::zeros((3, 2, 3, 3), DType::F32, &Device::Cpu)?;
    assert!(conv_transpose2d_fast(&x, &w, 2, 1, 2).is_err(), "output padding >= stride");
    let wd = Tensor::zeros((3, 2, 3, 3), DType::F64, &Device::Cpu)?;
    assert!(conv_transpose2d_fast(&x, &wd, 2, 1, 1).is_err(), "dtype mismatch");
    Ok(())
}

/// f16 falls back to Candle's convolutions.
#[test]
fn other_dtypes_fall_back() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(5);
    let x = rand_tensor(&mut rng, &[2, 3, 6, 6], DType::F32)?;
    let w = rand_tensor(&mut rng, &[4, 3, 3, 3], DType::F32)?;
    let got = conv2d_fast(&x.to_dtype(DType::F16)?, &w.to_dtype(DType::F16)?, 1, 1)?;
    assert_eq!(got.dtype(), DType::F16);
    let want = x.conv2d(&w, 1, 1, 1, 1)?;
    let err = (got.to_dtype(DType::F32)? - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(err < 0.1, "f16 fallback error {err}");
    Ok(())
}

#[test]
fn column_convolutions_equal_the_merged_batch() -> Result<()> {
    // [B, n, c, h, w] columns straight into the ops equal the [B·n, c, h, w] kernels, values and
    // both gradients, also for shared (batch 1) and for leading dims that do not merge (a
    // transpose of B and n, which takes the copying path).
    use dual_layers::kernels::{conv2d_columns, conv_transpose2d_columns};
    let mut rng = StdRng::seed_from_u64(41);
    for dtype in [DType::F64, DType::F32] {
        for (b, n, permuted) in [(2, 3, false), (1, 4, false), (3, 2, true)] {
            let what = format!("{dtype:?} b {b} n {n} permuted {permuted}");
            let w = Var::from_tensor(&rand_tensor(&mut rng, &[4, 3, 3, 3], dtype)?)?;
            let base = Var::from_tensor(&rand_tensor(&mut rng, &[n, b, 3, 7, 7], dtype)?)?;
            let x =
                if permuted { base.as_tensor().transpose(0, 1)? } else { base.as_tensor().reshape((b, n, 3, 7, 7))? };
            let up = rand_tensor(&mut rng, &[b, n, 4, 4, 4], dtype)?;
            let got = conv2d_columns(&x, w.as_tensor(), 2, 1)?;
            let want = conv2d_fast(&x.contiguous()?.reshape((b * n, 3, 7, 7))?, w.as_tensor(), 2, 1)?
                .reshape((b, n, 4, 4, 4))?;
            assert_close(&got, &want, dtype, &format!("{what} conv"))?;
            assert_same_gradients(got, want, &up, &[(&base, "dx"), (&w, "dw")], dtype, &format!("{what} conv"))?;
            let y = up.clone();
            let yv = Var::from_tensor(&y)?;
            let got = conv_transpose2d_columns(yv.as_tensor(), w.as_tensor(), 2, 1, 0)?;
            let want = conv_transpose2d_fast(&yv.as_tensor().reshape((b * n, 4, 4, 4))?, w.as_tensor(), 2, 1, 0)?
                .reshape((b, n, 3, 7, 7))?;
            assert_close(&got, &want, dtype, &format!("{what} transpose"))?;
            let up2 = rand_tensor(&mut rng, &[b, n, 3, 7, 7], dtype)?;
            assert_same_gradients(got, want, &up2, &[(&yv, "dx"), (&w, "dw")], dtype, &format!("{what} transpose"))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The slope and weighted-l1 ops.

/// Values in [-1, 1] with about one in eight exactly zero.
fn rand_with_zeros(rng: &mut StdRng, shape: &[usize], dtype: DType) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f64> =
        (0..n).map(|_| if rng.random_range(0..8) == 0 { 0.0 } else { rng.random_range(-1.0..1.0) }).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)
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
            let x = Var::from_tensor(&rand_with_zeros(&mut rng, &[bx, n, k], dtype)?)?;
            let d = Var::from_tensor(&rand_with_zeros(&mut rng, &[b, k], dtype)?)?;
            let up = rand_with_zeros(&mut rng, &[b, n, k], dtype)?;
            let got = scale_columns(x.as_tensor(), d.as_tensor())?;
            let want = x.as_tensor().broadcast_mul(&d.as_tensor().unsqueeze(1)?)?;
            assert_close(&got, &want, dtype, &format!("{what} forward"))?;
            assert_same_gradients(got, want, &up, &[(&x, "dx"), (&d, "dd")], dtype, &what)?;
        }
    }
    Ok(())
}

#[test]
fn abs_and_neg_part_contract_match_candle_ops() -> Result<()> {
    // Σ_p |g| w and Σ_p min(g, 0) w, written with Candle's ops as g·sign(g) and g·1{g ≤ 0} so
    // that Candle's gradient has the same (sub)gradient at the exact zeros: sign(0) = 0 for |·|
    // (PyTorch's abs) and slope 1 at 0 for min(·, 0) (PyTorch's clamp).
    type Contract = fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>;
    type Slope = fn(&Tensor) -> Result<Tensor>;
    let pieces: [(&str, Contract, Slope); 2] =
        [("abs", abs_contract, sign), ("neg part", neg_part_contract, |g| g.le(0.0)?.to_dtype(g.dtype()))];
    let mut rng = StdRng::seed_from_u64(2);
    for (name, contract, factor) in pieces {
        for dtype in [DType::F64, DType::F32] {
            for (gb, b, r, p) in [(3, 3, 5, 7), (1, 3, 5, 7), (1, 1, 2, 5000), (4, 4, 30, 17)] {
                let what = format!("{name} gb {gb} b {b} r {r} p {p}");
                let g = Var::from_tensor(&rand_with_zeros(&mut rng, &[gb, r, p], dtype)?)?;
                let w = Var::from_tensor(&rand_with_zeros(&mut rng, &[b, p], dtype)?)?;
                let up = rand_with_zeros(&mut rng, &[b, r], dtype)?;
                let got = contract(g.as_tensor(), w.as_tensor())?;
                let gt = g.as_tensor();
                let piece = (gt * factor(gt)?.detach())?;
                let want = piece.broadcast_mul(&w.as_tensor().unsqueeze(1)?)?.sum(2)?;
                assert_close(&got, &want, dtype, &format!("{what} forward"))?;
                assert_same_gradients(got, want, &up, &[(&g, "dg"), (&w, "dw")], dtype, &what)?;
            }
        }
    }
    Ok(())
}

#[test]
fn untracked_arguments_and_bad_shapes() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(3);
    let x = Var::from_tensor(&rand_with_zeros(&mut rng, &[2, 3, 4], DType::F32)?)?;
    let d = rand_with_zeros(&mut rng, &[2, 4], DType::F32)?;
    let grads = scale_columns(x.as_tensor(), &d)?.sum_all()?.backward()?;
    assert!(grads.get(x.as_tensor()).is_some());
    assert!(grads.get(&d).is_none(), "a constant got a gradient");
    // Slopes for 5 units on columns of 4; 3 examples of slopes for 2 examples of columns.
    assert!(scale_columns(x.as_tensor(), &rand_with_zeros(&mut rng, &[2, 5], DType::F32)?).is_err());
    assert!(scale_columns(x.as_tensor(), &rand_with_zeros(&mut rng, &[3, 4], DType::F32)?).is_err());
    assert!(abs_contract(x.as_tensor(), &rand_with_zeros(&mut rng, &[3, 4], DType::F32)?).is_err());
    Ok(())
}

#[test]
fn sparse_inputs_scatter_to_the_same_convolution() -> Result<()> {
    // Inputs with 0–3 % non-zeros (and one all-zero image) take the scatter path; the result
    // must equal Candle's conv2d and the gemm path, and gradients stay those of the convolution.
    let mut rng = StdRng::seed_from_u64(51);
    for dtype in [DType::F64, DType::F32] {
        for case in cases() {
            let Case { n, c, h, w, o, k, stride, pad } = case;
            let len = n * c * h * w;
            let mut v = vec![0f64; len];
            for _ in 0..(len / 40).max(1) {
                v[rng.random_range(0..len)] = rng.random_range(-1.0..1.0);
            }
            // The first image stays all zero.
            v[..c * h * w].iter_mut().for_each(|e| *e = 0.0);
            let x = Var::from_tensor(&Tensor::from_vec(v, (n, c, h, w), &Device::Cpu)?.to_dtype(dtype)?)?;
            let wt = Var::from_tensor(&rand_tensor(&mut rng, &[o, c, k, k], dtype)?)?;
            let what = format!("{case:?} {dtype:?}");
            let got = conv2d_fast(x.as_tensor(), wt.as_tensor(), stride, pad)?;
            assert_close(
                &got,
                &candle_conv2d(x.as_tensor(), wt.as_tensor(), pad, stride)?,
                dtype,
                &format!("{what} vs candle"),
            )?;
            let dense = dense_only(|| conv2d_fast(x.as_tensor(), wt.as_tensor(), stride, pad))?;
            assert_close(&got, &dense, dtype, &format!("{what} vs gemm"))?;
            let up = rand_tensor(&mut rng, got.dims(), dtype)?;
            let want = candle_conv2d(x.as_tensor(), wt.as_tensor(), pad, stride)?;
            assert_same_gradients(got, want, &up, &[(&x, "dx"), (&wt, "dw")], dtype, &what)?;
        }
    }
    Ok(())
}

/// About 2 % non-zeros, the first image (along dim 0) all zero: the dual network's projected
/// columns and their gradients look like this.
fn rand_sparse(rng: &mut StdRng, shape: &[usize], dtype: DType) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let first = n / shape[0].max(1);
    let v: Vec<f64> = (0..n)
        .map(|i| if i < first || rng.random_range(0..50) != 0 { 0.0 } else { rng.random_range(-1.0..1.0) })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)
}

/// Mostly zero with a few dense images: about every 30th image (along dim 0) fully non-zero,
/// 0.5 % non-zeros elsewhere — the shape of a projected bound's gradient, whose few columns that
/// meet a later layer's unstable units are dense.
fn rand_row_sparse(rng: &mut StdRng, shape: &[usize], dtype: DType) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let img = n / shape[0].max(1);
    let v: Vec<f64> = (0..n)
        .map(|i| {
            let dense = (i / img) % 30 == 7;
            if dense || rng.random_range(0..200) == 0 {
                rng.random_range(-1.0..1.0)
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)
}

/// `f` run with the sparse paths turned off (the gemm kernels only).
fn dense_only<R>(f: impl FnOnce() -> R) -> R {
    with_tuning(Tuning { sparse_below: 0.0, ..Tuning::DEFAULT }, f)
}

/// The (op, path) pairs of recorded kernel calls.
fn paths_of(calls: &[PathTaken]) -> Vec<(&'static str, KernelPath)> {
    calls.iter().map(|c| (c.op, c.path)).collect()
}

/// Each public op reports the path it took: the sparse product on a mostly-zero operand, the
/// gemm on a dense one or when the tuning turns sparsity off, Candle's op when the tuning routes
/// there or for another dtype; nested recordings see their own calls, the outer one all.
#[test]
fn kernel_calls_report_their_path() -> Result<()> {
    use KernelPath::{Candle, Dense, Sparse};
    let mut rng = StdRng::seed_from_u64(5);
    let dense_x = rand_tensor(&mut rng, &[4, 3, 9, 9], DType::F64)?;
    let mut one = vec![0.0; 4 * 3 * 9 * 9];
    one[17] = 1.0;
    let sparse_x = Tensor::from_vec(one, (4, 3, 9, 9), &Device::Cpu)?;
    let w = rand_tensor(&mut rng, &[5, 3, 3, 3], DType::F64)?;
    let call = |x: &Tensor| conv2d_fast(x, &w, 1, 1);
    let (y, p) = record_paths(|| call(&sparse_x));
    let y = y?;
    assert_eq!(paths_of(&p), [("conv2d", Sparse)]);
    let (yd, p) = record_paths(|| dense_only(|| call(&sparse_x)));
    assert_eq!(paths_of(&p), [("conv2d", Dense)]);
    assert_close(&y, &yd?, DType::F64, "sparse vs dense path")?;
    let (_, p) = record_paths(|| call(&dense_x));
    assert_eq!(paths_of(&p), [("conv2d", Dense)]);
    let (_, p) = record_paths(|| with_tuning(Tuning { candle: true, ..Tuning::DEFAULT }, || call(&dense_x)));
    assert_eq!(paths_of(&p), [("conv2d", Candle)]);
    let (_, p) = record_paths(|| conv2d_fast(&dense_x.to_dtype(DType::F32)?, &w.to_dtype(DType::F16)?, 1, 1));
    assert_eq!(paths_of(&p), [("conv2d", Candle)], "mixed dtypes go to Candle (which then refuses them)");

    // Gradients: the transposed convolution and the kernel gradient of a dense upstream gradient.
    let (xv, wv) = (Var::from_tensor(&dense_x)?, Var::from_tensor(&w)?);
    let (g, p) = record_paths(|| conv2d_fast(xv.as_tensor(), wv.as_tensor(), 1, 1)?.sqr()?.sum_all()?.backward());
    g?;
    let p = paths_of(&p);
    for want in [("conv2d", Dense), ("conv_transpose2d", Dense), ("conv2d_weight_grad", Dense)] {
        assert!(p.contains(&want), "{want:?} missing from {p:?}");
    }

    // Linear: mostly-zero and dense columns; nested recordings.
    let lw = rand_tensor(&mut rng, &[64, 40], DType::F64)?;
    let mut v = vec![0.0; 2 * 50 * 40];
    v[3] = 1.0;
    let lx = Tensor::from_vec(v, (2, 50, 40), &Device::Cpu)?;
    let (inner, outer) = record_paths(|| {
        let (_, inner) = record_paths(|| linear_columns(&lx, &lw));
        linear_columns(&rand_tensor(&mut StdRng::seed_from_u64(6), &[2, 50, 40], DType::F64).unwrap(), &lw).unwrap();
        inner
    });
    assert_eq!(paths_of(&inner), [("linear_columns", Sparse)]);
    assert_eq!(paths_of(&outer), [("linear_columns", Sparse), ("linear_columns", Dense)]);
    let (_, none) = record_paths(|| ());
    assert!(none.is_empty());
    Ok(())
}

#[test]
fn mostly_zero_gradients_take_the_sparse_paths() -> Result<()> {
    // The transposed convolution of a mostly-zero input (the input gradient of conv2d), the
    // kernel gradient of a mostly-zero output gradient, and conv2d's gradients under a
    // mostly-zero upstream gradient — scattered non-zeros, or a few dense images among them
    // (which go to the gemm) — equal Candle's and the gemm paths', for every shape and operand
    // layout.
    let mut rng = StdRng::seed_from_u64(77);
    let gens: [(&str, Gen); 2] = [("scattered", rand_sparse), ("dense images", rand_row_sparse)];
    for (dtype, (kind, sparse_gen)) in [DType::F64, DType::F32].into_iter().flat_map(|d| gens.map(|g| (d, g))) {
        for (i, case) in cases().into_iter().enumerate() {
            let Case { n, c, h, w, o, k, stride, pad } = case;
            let (form, wform) = (FORMS[i % FORMS.len()], FORMS[(i + 1) % FORMS.len()]);
            let what = format!("{case:?} {dtype:?} {form:?} {kind}");
            let (oh, ow) = ((h + 2 * pad - k) / stride + 1, (w + 2 * pad - k) / stride + 1);
            let (_, wt) = make_arg(&mut rng, &[o, c, k, k], dtype, wform)?;

            if (oh - 1) * stride + k > 2 * pad {
                let (_, y) = make_arg_with(&mut rng, &[n, o, oh, ow], dtype, form, sparse_gen)?;
                let got = conv_transpose2d_fast(&y, &wt, stride, pad, 0)?;
                let want = y.contiguous()?.conv_transpose2d(&wt.contiguous()?, pad, 0, stride, 1)?;
                assert_close(&got, &want, dtype, &format!("{what} sparse transposed conv vs candle"))?;
                let dense = dense_only(|| conv_transpose2d_fast(&y, &wt, stride, pad, 0))?;
                assert_close(&got, &dense, dtype, &format!("{what} sparse transposed conv vs gemm"))?;
            }

            let (_, x) = make_arg(&mut rng, &[n, c, h, w], dtype, form)?;
            let (_, gy) = make_arg_with(&mut rng, &[n, o, oh, ow], dtype, wform, sparse_gen)?;
            let got = conv2d_weight_grad(&x, &gy, (k, k), stride, pad)?;
            let dense = dense_only(|| conv2d_weight_grad(&x, &gy, (k, k), stride, pad))?;
            assert_close(&got, &dense, dtype, &format!("{what} sparse kernel gradient vs gemm"))?;
            let wv = Var::from_tensor(&Tensor::zeros((o, c, k, k), dtype, &Device::Cpu)?)?;
            let y = candle_conv2d(&x.contiguous()?, wv.as_tensor(), pad, stride)?;
            let want = (y * gy.contiguous()?)?.sum_all()?.backward()?;
            assert_close(&got, want.get(&wv).unwrap(), dtype, &format!("{what} sparse kernel gradient vs candle"))?;

            let xv = Var::from_tensor(&x.contiguous()?)?;
            let kv = Var::from_tensor(&wt.contiguous()?)?;
            let up = sparse_gen(&mut rng, &[n, o, oh, ow], dtype)?;
            let got = conv2d_fast(xv.as_tensor(), kv.as_tensor(), stride, pad)?;
            let want = candle_conv2d(xv.as_tensor(), kv.as_tensor(), pad, stride)?;
            assert_same_gradients(
                got,
                want,
                &up,
                &[(&xv, "dx"), (&kv, "dw")],
                dtype,
                &format!("{what} conv2d under a sparse gradient"),
            )?;
        }
    }
    Ok(())
}

/// `x Wᵀ` with Candle's matmul, as the reference.
fn candle_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let d = x.dims();
    let k = d[d.len() - 1];
    let rows = x.elem_count() / k;
    let mut shape = d[..d.len() - 1].to_vec();
    shape.push(w.dim(0)?);
    x.contiguous()?.reshape((rows, k))?.matmul(&w.t()?)?.reshape(shape)
}

#[test]
fn linear_columns_match_candle_matmul() -> Result<()> {
    // Dense and mostly-zero columns, contiguous and transposed weights, dense and mostly-zero
    // upstream gradients: values and both gradients equal Candle's matmul, in f64 and f32.
    let mut rng = StdRng::seed_from_u64(91);
    let gens: [Gen; 2] = [rand_tensor, rand_sparse];
    for dtype in [DType::F64, DType::F32] {
        for &(b, n, k, o) in &[(1, 1, 1, 1), (3, 4, 7, 5), (2, 60, 98, 10), (5, 51, 200, 37)] {
            for (xi, xgen) in gens.iter().enumerate() {
                for (gi, ggen) in gens.iter().enumerate() {
                    for transposed in [false, true] {
                        let what = format!("[{b}, {n}, {k}] x [{o}, {k}] {dtype:?} sparse x {xi} sparse g {gi} transposed w {transposed}");
                        let xv = Var::from_tensor(&xgen(&mut rng, &[b, n, k], dtype)?)?;
                        // The weight as stored, or as the transpose of a stored [k, o].
                        let (wv, wt) = if transposed {
                            let v = Var::from_tensor(&rand_tensor(&mut rng, &[k, o], dtype)?)?;
                            let t = v.as_tensor().t()?;
                            (v, t)
                        } else {
                            let v = Var::from_tensor(&rand_tensor(&mut rng, &[o, k], dtype)?)?;
                            let t = v.as_tensor().clone();
                            (v, t)
                        };
                        let got = linear_columns(xv.as_tensor(), &wt)?;
                        let want = candle_linear(xv.as_tensor(), &wt)?;
                        assert_close(&got, &want, dtype, &format!("{what} forward"))?;
                        let up = ggen(&mut rng, &[b, n, o], dtype)?;
                        assert_same_gradients(got, want, &up, &[(&xv, "dx"), (&wv, "dw")], dtype, &what)?;
                    }
                }
            }
        }
    }
    Ok(())
}

#[test]
fn linear_weight_grad_op_and_its_gradients() -> Result<()> {
    // dW = Σ_r g_rᵀ x_r for dense and mostly-zero operands, and its own gradients (the op is
    // bilinear: <G, dW> = Σ_r g_r G x_rᵀ) against Candle's matmuls.
    let mut rng = StdRng::seed_from_u64(92);
    let gens: [Gen; 2] = [rand_tensor, rand_sparse];
    for (xi, xgen) in gens.iter().enumerate() {
        for (gi, ggen) in gens.iter().enumerate() {
            let (b, n, k, o) = (4, 30, 23, 9);
            let what = format!("sparse x {xi} sparse g {gi}");
            let xv = Var::from_tensor(&xgen(&mut rng, &[b, n, k], DType::F64)?)?;
            let gv = Var::from_tensor(&ggen(&mut rng, &[b, n, o], DType::F64)?)?;
            let dw = linear_weight_grad(xv.as_tensor(), gv.as_tensor())?;
            let want = gv.as_tensor().reshape((b * n, o))?.t()?.matmul(&xv.as_tensor().reshape((b * n, k))?)?;
            assert_close(&dw, &want, DType::F64, &format!("{what} value"))?;
            let r = rand_tensor(&mut rng, &[o, k], DType::F64)?;
            assert_same_gradients(dw, want, &r, &[(&xv, "d/dx"), (&gv, "d/dg")], DType::F64, &what)?;
        }
    }
    let x = Tensor::zeros((2, 3, 4), DType::F32, &Device::Cpu)?;
    assert!(linear_columns(&x, &Tensor::zeros((5, 3), DType::F32, &Device::Cpu)?).is_err(), "width mismatch");
    assert!(linear_columns(&x, &Tensor::zeros((5, 4, 1), DType::F32, &Device::Cpu)?).is_err(), "weight of rank 3");
    assert!(linear_weight_grad(&x, &Tensor::zeros((2, 4, 5), DType::F32, &Device::Cpu)?).is_err(), "rows mismatch");
    // Other dtypes go to Candle's matmul.
    let h = linear_columns(&x.to_dtype(DType::F16)?, &Tensor::ones((5, 4), DType::F16, &Device::Cpu)?)?;
    assert_eq!(h.dims(), &[2, 3, 5]);
    Ok(())
}

#[test]
fn transposes_match_the_definition() {
    // The 8×8 SIMD tiles (f32) and the element-by-element edges, on the kernels' shapes and odd
    // ones, against dst[j·rows + i] = src[i·cols + j].
    use dual_layers::kernels::cpu::Elem;
    fn check<T: Elem + From<u16>>(rows: usize, cols: usize) {
        let src: Vec<T> = (0..rows * cols).map(|v| T::from((v % 60_000) as u16)).collect();
        let mut dst = vec![T::ZERO; rows * cols];
        T::transpose(&src, rows, cols, &mut dst);
        for i in 0..rows {
            for j in 0..cols {
                assert_eq!(dst[j * rows + i], src[i * cols + j], "{rows}x{cols} at ({i}, {j})");
            }
        }
    }
    for (rows, cols) in [(1, 1), (3, 5), (8, 8), (9, 17), (16, 196), (196, 16), (49, 32), (64, 8), (7, 64)] {
        check::<f32>(rows, cols);
        check::<f64>(rows, cols);
    }
}

/// The fused gather + ReLU step + offset (`relax_gathered`) against the long way: rows gathered
/// with `index_select`, `[λ]₊ a_L + [λ]₋ a_U` and `Σ min(λ, 0) b_U` with Candle's ops; exact
/// zeros in the rows and the lines included, repeated and padding indices too. `None` when the
/// table tracks its ops.
#[test]
fn relax_gathered_matches_gather_then_step() -> Result<()> {
    use dual_layers::kernels::relax_gathered;
    for dtype in [DType::F64, DType::F32] {
        let mut rng = StdRng::seed_from_u64(17);
        let (rows, shape, b, len) = (7usize, [2usize, 3, 3], 3usize, 5usize);
        let k: usize = shape.iter().product();
        let mut tab = rand_tensor(&mut rng, &[1, rows, 2, 3, 3], dtype)?;
        // Some exact zeros in the table.
        let mask: Vec<f64> = (0..rows * k).map(|i| if i % 5 == 0 { 0.0 } else { 1.0 }).collect();
        tab = tab.mul(&Tensor::from_vec(mask, (1, rows, 2, 3, 3), &Device::Cpu)?.to_dtype(dtype)?)?;
        let a_l = rand_tensor(&mut rng, &[b, 1, 2, 3, 3], dtype)?.abs()?;
        let a_u = rand_tensor(&mut rng, &[b, 2, 3, 3], dtype)?.abs()?.relu()?;
        let b_u = rand_tensor(&mut rng, &[b, k], dtype)?;
        let idx: Vec<u32> = (0..b * len).map(|i| ((i * 3) % rows) as u32).collect();
        let (got, off) = relax_gathered(&tab, &idx, len, (&a_l, &a_u, &b_u))?.expect("applies");
        let ids = Tensor::from_vec(idx.clone(), idx.len(), &Device::Cpu)?;
        let lam = tab.index_select(&ids, 1)?.reshape((b, len, 2, 3, 3))?;
        let pos = lam.maximum(0.0)?;
        let neg = (&lam - &pos)?;
        let want = (pos.broadcast_mul(&a_l)? + neg.broadcast_mul(&a_u.unsqueeze(1)?)?)?;
        let want_off = neg.reshape((b, len, k))?.broadcast_mul(&b_u.unsqueeze(1)?)?.sum(2)?;
        assert_close(&got, &want, dtype, "relax_gathered step")?;
        assert_close(&off, &want_off, dtype, "relax_gathered offset")?;
        let v = Var::from_tensor(&tab)?;
        assert!(relax_gathered(v.as_tensor(), &idx, len, (&a_l, &a_u, &b_u))?.is_none());
    }
    Ok(())
}
