//! The new layers' duals on tiny inputs, in f64: MaxPool2d's linear bounds against an exhaustive
//! grid of every window (and exact where one input decides the max), Sigmoid / Tanh lines on
//! dense grids of `[l, u]` for many bounds (l = u, tiny widths, large |l|, |u|), AvgPool2d and
//! Pad against their definitions and their adjoints.

use candle_core::{DType, Device, Tensor};
use dual_core::bounds::{LinearRelaxation, SlopeRule};
use dual_core::{DualActivation, DualAffine};
use dual_layers::{slope_and_box, DualAvgPool2d, DualMaxPool2d, DualPad, DualSmooth, Smooth, SmoothLinear, Windows};
use rand::{rngs::StdRng, Rng, SeedableRng};

fn dev() -> Device {
    Device::Cpu
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

fn tensor(v: Vec<f64>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape, &dev()).unwrap()
}

/// Rows `+e_r` then `−e_r` for every unit of `shape`, shared by the batch: `[1, 2K, *shape]`.
fn signed_rows(shape: &[usize]) -> Tensor {
    let k: usize = shape.iter().product();
    let mut d = vec![0.0; 2 * k * k];
    for r in 0..k {
        d[r * k + r] = 1.0;
        d[(k + r) * k + r] = -1.0;
    }
    let mut s = vec![1, 2 * k];
    s.extend_from_slice(shape);
    tensor(d, &s)
}

/// The slots (input indices) of window `o`, valid ones only.
fn window_inputs(w: &Windows, o: usize) -> Vec<usize> {
    let kk = w.slots();
    let mut v: Vec<usize> = (0..kk).filter(|&s| w.valid[o * kk + s]).map(|s| w.index[o * kk + s] as usize).collect();
    v.dedup();
    v
}

fn maxpool_case(
    rng: &mut StdRng,
    hw: (usize, usize),
    k: (usize, usize),
    s: (usize, usize),
    p: [usize; 4],
    decided: bool,
    alpha: bool,
) {
    let w = Windows::new(hw, k, s, p).unwrap();
    let pool = DualMaxPool2d::new(w.clone());
    let (b, c) = (2, 2);
    let n = hw.0 * hw.1;
    let mut lo = vec![0.0; b * c * n];
    let mut up = vec![0.0; b * c * n];
    for i in 0..lo.len() {
        let mid = rng.random_range(-1.0..1.0);
        let half = match rng.random_range(0..4) {
            0 => 0.0,
            1 => 1e-9,
            _ => rng.random_range(0.0..0.8),
        };
        lo[i] = mid - half;
        up[i] = mid + half;
    }
    if decided {
        // In every plane, the first input dominates every other input's upper bound.
        for plane in 0..b * c {
            lo[plane * n] = 5.0;
            up[plane * n] = 5.5;
        }
    }
    let shape = [b, c, hw.0, hw.1];
    let (l, u) = (tensor(lo.clone(), &shape), tensor(up.clone(), &shape));
    // IBP: the max of the bounds.
    let (il, iu) = pool.interval(&l, &u).unwrap();
    let (il, iu) = (flat(&il), flat(&iu));
    // α-CROWN's convex weights over each window (random in [0, 1], zeros included).
    let a = tensor(
        (0..b * c * w.windows() * w.slots())
            .map(|_| if rng.random_bool(0.2) { 0.0 } else { rng.random_range(0.0..1.0) })
            .collect(),
        &[b, 1, c, w.windows(), w.slots()],
    );
    let rule = if alpha { SlopeRule::Given(&a) } else { SlopeRule::Adaptive };
    let rel = pool.linear_relax(&l, &u, rule).unwrap();
    let out_shape = [c, w.out_hw.0, w.out_hw.1];
    let ko: usize = out_shape.iter().product();
    let (lam_in, off) = rel.backward_lower(&signed_rows(&out_shape)).unwrap();
    assert_eq!(lam_in.dims(), [b, 2 * ko, c, hw.0, hw.1]);
    let (li, of) = (flat(&lam_in), flat(off.as_ref().unwrap()));
    let o_n = w.windows();
    let mut checked = 0usize;
    for bi in 0..b {
        for ci in 0..c {
            let plane = (bi * c + ci) * n;
            for o in 0..o_n {
                let ins = window_inputs(&w, o);
                let unit = ci * o_n + o;
                let row = |r: usize| &li[(bi * 2 * ko + r) * c * n..(bi * 2 * ko + r + 1) * c * n];
                let (rl, ru) = (row(unit), row(ko + unit));
                let (ol, ou) = (of[bi * 2 * ko + unit], of[bi * 2 * ko + ko + unit]);
                // The lines read only this window's inputs (of this channel).
                for (e, (&a, &bb)) in rl.iter().zip(ru).enumerate() {
                    if e / n != ci || !ins.contains(&(e % n)) {
                        assert!(a == 0.0 && bb == 0.0, "a line reads input {e} outside window {o}");
                    }
                }
                let lmax = ins.iter().map(|&i| lo[plane + i]).fold(f64::MIN, f64::max);
                let umax = ins.iter().map(|&i| up[plane + i]).fold(f64::MIN, f64::max);
                assert_eq!((il[(bi * c + ci) * o_n + o], iu[(bi * c + ci) * o_n + o]), (lmax, umax));
                let is_decided =
                    ins.iter().any(|&i| ins.iter().all(|&j| j == i || lo[plane + i] >= up[plane + j]) && ins.len() > 1);
                // Every grid point of the window's box: 3 values per input (4 for small windows).
                let g: usize = if ins.len() <= 4 { 4 } else { 3 };
                let total = g.pow(ins.len() as u32);
                for idx in 0..total {
                    let mut t = idx;
                    let mut x = vec![0.0; ins.len()];
                    for (q, &i) in ins.iter().enumerate() {
                        let f = (t % g) as f64 / (g - 1) as f64;
                        t /= g;
                        x[q] = lo[plane + i] + f * (up[plane + i] - lo[plane + i]);
                    }
                    let y = x.iter().copied().fold(f64::MIN, f64::max);
                    let dot = |r: &[f64]| ins.iter().zip(&x).map(|(&i, v)| r[ci * n + i] * v).sum::<f64>();
                    let low = dot(rl) + ol;
                    let high = -(dot(ru) + ou);
                    let tol = 1e-12 * (1.0 + y.abs());
                    assert!(low <= y + tol, "window {o}: lower line {low} above max {y} at {x:?}");
                    assert!(high >= y - tol, "window {o}: upper line {high} below max {y} at {x:?}");
                    if is_decided && !alpha {
                        assert!(high - low <= 1e-12, "window {o}: decided but lines {low}..{high} differ");
                    }
                    checked += 1;
                }
                // Never looser than IBP at the box's extremes: the upper line is at most max u.
                let at_top: f64 = -(ins.iter().map(|&i| ru[ci * n + i] * up[plane + i]).sum::<f64>() + ou);
                assert!(at_top <= umax + 1e-12, "window {o}: upper line {at_top} above max u {umax}");
            }
        }
    }
    assert!(checked > 100);
}

#[test]
fn maxpool_lines_hold_on_an_exhaustive_grid_and_are_exact_when_decided_alpha_weights_too() {
    let mut rng = StdRng::seed_from_u64(7);
    for alpha in [false, true] {
        for decided in [false, true] {
            for _ in 0..3 {
                maxpool_case(&mut rng, (3, 3), (2, 2), (1, 1), [0; 4], decided, alpha); // overlapping
                maxpool_case(&mut rng, (4, 4), (3, 3), (2, 2), [1; 4], decided, alpha); // overlapping, padded
                maxpool_case(&mut rng, (3, 4), (2, 3), (1, 2), [0, 1, 1, 0], decided, alpha); // asymmetric
                maxpool_case(&mut rng, (2, 2), (2, 2), (2, 2), [0; 4], decided, alpha); // one window
                maxpool_case(&mut rng, (3, 3), (1, 1), (1, 1), [0; 4], decided, alpha);
                // identity windows
            }
        }
    }
}

#[test]
fn maxpool_rejects_windows_in_the_padding_and_refuses_the_exact_dual() {
    let err = Windows::new((2, 2), (1, 1), (1, 1), [1, 1, 1, 1]).unwrap_err().to_string();
    assert!(err.contains("entirely in the padding"), "{err}");
    let err = Windows::new((2, 2), (3, 3), (1, 1), [0; 4]).unwrap_err().to_string();
    assert!(err.contains("larger than the padded input"), "{err}");
    let pool = DualMaxPool2d::new(Windows::new((2, 2), (2, 2), (2, 2), [0; 4]).unwrap());
    let z = Tensor::zeros((1, 1, 2, 2), DType::F64, &dev()).unwrap();
    let err = pool.relax(&z, &z).err().unwrap().to_string();
    assert!(err.contains("MaxPool2d is not supported by the exact dual"), "{err}");
}

/// `(l, u)` pairs: random at several scales and widths, and the edge cases.
fn smooth_pairs(rng: &mut StdRng) -> Vec<(f64, f64)> {
    let mut v = vec![
        (0.0, 0.0),
        (3.0, 3.0),
        (-2.0, -2.0),
        (-1e4, 1e4),
        (-1e4, -1e4 + 1.0),
        (1e4 - 1.0, 1e4),
        (1e-8, 2e-8),
        (-1e-8, 1e-8),
        (-5.0, 5.0),
        (-0.1, 10.0),
        (-10.0, 0.1),
        (-40.0, 0.5),
        (0.0, 7.0),
        (-7.0, 0.0),
    ];
    for _ in 0..400 {
        let scale = [1.0, 4.0, 30.0, 1e3][rng.random_range(0..4)];
        let mid = rng.random_range(-scale..scale);
        let half = match rng.random_range(0..6) {
            0 => 0.0,
            1 => 1e-12,
            2 => 1e-6,
            3 => rng.random_range(0.0..0.5),
            4 => rng.random_range(0.0..5.0),
            _ => rng.random_range(0.0..50.0),
        };
        v.push((mid - half, mid + half));
    }
    v
}

fn check_smooth(f: Smooth, dtype: DType) {
    let mut rng = StdRng::seed_from_u64(11);
    let pairs = smooth_pairs(&mut rng);
    let k = pairs.len();
    let l = tensor(pairs.iter().map(|p| p.0).collect(), &[1, k]).to_dtype(dtype).unwrap();
    let u = tensor(pairs.iter().map(|p| p.1).collect(), &[1, k]).to_dtype(dtype).unwrap();
    let rel = SmoothLinear::new(f, &l, &u).unwrap();
    let (lam_in, off) = rel.backward_lower(&signed_rows(&[k]).to_dtype(dtype).unwrap()).unwrap();
    let (li, of) = (flat(&lam_in), flat(off.as_ref().unwrap()));
    let (lv, uv) = (flat(&l), flat(&u));
    let (il, iu) = DualSmooth(f).interval(&l, &u).unwrap();
    let (il, iu) = (flat(&il), flat(&iu));
    for j in 0..k {
        let (lo, hi) = (lv[j], uv[j]);
        let (al, bl) = (li[j * k + j], of[j]);
        let (au, bu) = (-li[(k + j) * k + j], -of[k + j]);
        assert!(il[j] <= f.f(lo) && iu[j] >= f.f(hi), "{f:?} [{lo}, {hi}]: interval misses the image");
        let steps = 2000;
        let mut min_gap_l = f64::INFINITY;
        let mut min_gap_u = f64::INFINITY;
        for s in 0..=steps {
            let z = if s == steps { hi } else { lo + (hi - lo) * s as f64 / steps as f64 };
            let fz = f.f(z);
            let (low, high) = (al * z + bl, au * z + bu);
            assert!(low <= fz, "{f:?} {dtype:?} [{lo}, {hi}] at {z}: lower line {low} above {fz}");
            assert!(high >= fz, "{f:?} {dtype:?} [{lo}, {hi}] at {z}: upper line {high} below {fz}");
            min_gap_l = min_gap_l.min(fz - low);
            min_gap_u = min_gap_u.min(high - fz);
        }
        // Tight: each line touches σ somewhere on [l, u] (up to the grid and the rounding margin).
        let h = (hi - lo) / steps as f64;
        let eps = if dtype == DType::F64 { f64::EPSILON } else { f32::EPSILON as f64 };
        let slack =
            h * h + 64.0 * eps * (1.0 + bl.abs().max(bu.abs()) + (al.abs() + au.abs()) * lo.abs().max(hi.abs()));
        assert!(min_gap_l <= slack, "{f:?} [{lo}, {hi}]: lower line never touches (gap {min_gap_l:e} > {slack:e})");
        assert!(min_gap_u <= slack, "{f:?} [{lo}, {hi}]: upper line never touches (gap {min_gap_u:e} > {slack:e})");
    }
}

#[test]
fn sigmoid_and_tanh_lines_hold_on_dense_grids_f64() {
    check_smooth(Smooth::Sigmoid, DType::F64);
    check_smooth(Smooth::Tanh, DType::F64);
}

#[test]
fn sigmoid_and_tanh_lines_hold_on_dense_grids_f32_coefficients() {
    check_smooth(Smooth::Sigmoid, DType::F32);
    check_smooth(Smooth::Tanh, DType::F32);
}

#[test]
fn smooth_lines_refuse_non_finite_bounds() {
    let l = tensor(vec![f64::NEG_INFINITY], &[1, 1]);
    let u = tensor(vec![0.0], &[1, 1]);
    let err = SmoothLinear::new(Smooth::Tanh, &l, &u).err().unwrap().to_string();
    assert!(err.contains("not finite"), "{err}");
}

/// Average pooling by its definition, `[planes, H, W]`.
fn avgpool_naive(
    x: &[f64],
    planes: usize,
    hw: (usize, usize),
    k: (usize, usize),
    s: (usize, usize),
    p: [usize; 4],
    include: bool,
) -> Vec<f64> {
    let oh = (hw.0 + p[0] + p[2] - k.0) / s.0 + 1;
    let ow = (hw.1 + p[1] + p[3] - k.1) / s.1 + 1;
    let mut y = vec![0.0; planes * oh * ow];
    for pl in 0..planes {
        for oy in 0..oh {
            for ox in 0..ow {
                let (mut sum, mut cnt) = (0.0, 0);
                for ky in 0..k.0 {
                    for kx in 0..k.1 {
                        let iy = (oy * s.0 + ky) as isize - p[0] as isize;
                        let ix = (ox * s.1 + kx) as isize - p[1] as isize;
                        if iy >= 0 && ix >= 0 && (iy as usize) < hw.0 && (ix as usize) < hw.1 {
                            sum += x[pl * hw.0 * hw.1 + iy as usize * hw.1 + ix as usize];
                            cnt += 1;
                        }
                    }
                }
                y[(pl * oh + oy) * ow + ox] = sum / if include { (k.0 * k.1) as f64 } else { cnt as f64 };
            }
        }
    }
    y
}

fn dot(a: &Tensor, b: &Tensor) -> Vec<f64> {
    // per [B, n]: Σ over the rest
    let (bb, n) = (a.dim(0).unwrap(), a.dim(1).unwrap());
    let p = (a * b).unwrap().reshape((bb, n, ())).unwrap().sum(2).unwrap();
    flat(&p)
}

fn gauss(rng: &mut StdRng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

#[test]
fn avgpool_is_its_definition_and_its_transpose_is_the_adjoint() {
    let mut rng = StdRng::seed_from_u64(3);
    let cases = [
        ((5, 5), (3, 3), (2, 2), [1; 4]),
        ((4, 6), (2, 3), (1, 2), [0, 1, 1, 0]),
        ((3, 3), (3, 3), (1, 1), [1; 4]),
        ((4, 4), (2, 2), (2, 2), [0; 4]),
    ];
    for (hw, k, s, p) in cases {
        for include in [true, false] {
            let w = Windows::new(hw, k, s, p).unwrap();
            let pool = DualAvgPool2d::new(w.clone(), include);
            let (b, n, c) = (2, 3, 2);
            let x = tensor(gauss(&mut rng, b * n * c * hw.0 * hw.1), &[b, n, c, hw.0, hw.1]);
            let y = pool.forward(&[Some(&x)], true).unwrap().unwrap();
            let want = avgpool_naive(&flat(&x), b * n * c, hw, k, s, p, include);
            for (a, e) in flat(&y).iter().zip(&want) {
                assert!((a - e).abs() <= 1e-12, "avgpool {hw:?} {k:?}: {a} vs {e}");
            }
            let nu = tensor(gauss(&mut rng, y.elem_count()), y.dims());
            let back = pool.transpose(&nu).unwrap().remove(0).unwrap();
            for (a, e) in dot(&y, &nu).iter().zip(dot(&x, &back)) {
                assert!((a - e).abs() <= 1e-12, "avgpool adjoint: {a} vs {e}");
            }
            let r = x.abs().unwrap();
            let ra = pool.forward_abs(&[Some(&r)]).unwrap().unwrap();
            assert!(flat(&ra)
                .iter()
                .zip(flat(&pool.forward(&[Some(&r)], false).unwrap().unwrap()))
                .all(|(a, b)| a == &b));
        }
    }
}

#[test]
fn pad_is_its_definition_and_its_transpose_and_bias_term_are_the_adjoint() {
    let mut rng = StdRng::seed_from_u64(5);
    for (pads, value) in [([1, 2, 0, 1], 0.0), ([0, 0, 2, 2], 0.5), ([1, 1, 1, 1], -1.25)] {
        let hw = (3, 4);
        let pad = DualPad::new(pads, value, hw).unwrap();
        let (b, n, c) = (2, 3, 2);
        let x = tensor(gauss(&mut rng, b * n * c * 12), &[b, n, c, hw.0, hw.1]);
        let y = pad.forward(&[Some(&x)], true).unwrap().unwrap();
        let (oh, ow) = (hw.0 + pads[0] + pads[2], hw.1 + pads[1] + pads[3]);
        assert_eq!(y.dims(), [b, n, c, oh, ow]);
        let (xv, yv) = (flat(&x), flat(&y));
        for pl in 0..b * n * c {
            for i in 0..oh {
                for j in 0..ow {
                    let inside = i >= pads[0] && i < pads[0] + hw.0 && j >= pads[1] && j < pads[1] + hw.1;
                    let want = if inside { xv[pl * 12 + (i - pads[0]) * hw.1 + (j - pads[1])] } else { value };
                    assert_eq!(yv[(pl * oh + i) * ow + j], want);
                }
            }
        }
        let y0 = pad.forward(&[Some(&x)], false).unwrap().unwrap();
        let nu = tensor(gauss(&mut rng, y.elem_count()), y.dims());
        let back = pad.transpose(&nu).unwrap().remove(0).unwrap();
        for (a, e) in dot(&y0, &nu).iter().zip(dot(&x, &back)) {
            assert!((a - e).abs() <= 1e-12, "pad adjoint: {a} vs {e}");
        }
        let bias = (&y - &y0).unwrap();
        let want = dot(&bias, &nu);
        match pad.bias_term(&nu).unwrap() {
            Some(t) => flat(&t).iter().zip(&want).for_each(|(a, e)| assert!((a - e).abs() <= 1e-12)),
            None => assert!(want.iter().all(|v| *v == 0.0)),
        }
    }
    assert!(DualPad::new([1; 4], f64::NAN, (2, 2)).is_err());
}

/// The exact dual's single-slope relaxation: `σ(z) − d z ∈ [β⁻, β⁺]` on a dense grid, and the box
/// is tight (attained up to the grid) for every pair.
#[test]
fn sigmoid_and_tanh_single_slope_boxes_hold_and_are_tight() {
    let mut rng = StdRng::seed_from_u64(13);
    for f in [Smooth::Sigmoid, Smooth::Tanh] {
        for (lo, hi) in smooth_pairs(&mut rng) {
            let (d, bl, bu) = slope_and_box(f, lo, hi, f64::EPSILON);
            assert!(bl <= bu, "{f:?} [{lo}, {hi}]: empty box");
            let steps = 4000;
            let (mut gmin, mut gmax) = (f64::INFINITY, f64::NEG_INFINITY);
            for s in 0..=steps {
                let z = if s == steps { hi } else { lo + (hi - lo) * s as f64 / steps as f64 };
                let g = f.f(z) - d * z;
                assert!(g >= bl && g <= bu, "{f:?} [{lo}, {hi}] at {z}: {g} outside [{bl}, {bu}]");
                gmin = gmin.min(g);
                gmax = gmax.max(g);
            }
            let h = (hi - lo) / steps as f64;
            let slack = h * h + 1e-12 * (1.0 + bl.abs().max(bu.abs()) + d.abs() * lo.abs().max(hi.abs()));
            assert!(
                gmin - bl <= slack && bu - gmax <= slack,
                "{f:?} [{lo}, {hi}]: box [{bl}, {bu}] vs [{gmin}, {gmax}]"
            );
        }
    }
}
