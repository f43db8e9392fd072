//! Convolution products with a mostly-zero operand, by visiting the non-zeros only.
//!
//! Columns of the dual network are often almost all zeros: the identity pushed into the first
//! convolution (one non-zero per column), and the projected columns of a ReLU layer, which live
//! on its unstable units only (on the paper's MNIST model 2–3 % of the units). Their gradients
//! are sparser still: the loss depends on a layer's bounds through its unstable units only (a
//! stable unit's slope is a constant 0 or 1), and a median over `k` projections passes its
//! gradient to one or two of them, so the gradient reaching the columns of a projected bound is
//! a few per cent non-zero. A gemm spends the same time on zeros as on anything else; here every
//! non-zero adds its products to the entries it reaches:
//!
//! * [`conv2d_forward`]: a mostly-zero input scatters `value × kernel tap` to its outputs;
//! * [`conv2d_backward_data`] (the transposed convolution, the input gradient of `conv2d`): a
//!   mostly-zero gradient scatters `value × kernel` to the input pixels it reads;
//! * [`conv2d_backward_weight`]: a mostly-zero gradient adds `value × input patch` to the kernel.
//!
//! Each gives the same numbers as its gemm kernel up to the order of summation; the choice is
//! made per call by counting non-zeros ([`mostly_zero`]), so it holds whatever the operands hold.

use super::gemm_conv::View4;
use super::im2col::Geom;
use super::{add_into, axpy, tuning, Elem};
use rayon::prelude::*;

/// Finding the non-zeros reads every element once, which takes about as long as this many of the
/// gemm's multiply-adds (measured on the MNIST models' shapes).
const SCAN_MACS: f64 = 20.0;
/// A multiply-add of the scatter/gather loops takes about this many of the gemm's.
const SPARSE_MAC_COST: f64 = 5.0;

/// The largest fraction of non-zeros at which visiting the non-zeros of an operand beats the
/// gemm, when each of its elements costs `macs` multiply-adds in the dense product: with
/// density `ρ`, `SCAN_MACS + ρ · macs · SPARSE_MAC_COST < macs`. Capped by
/// `Tuning::sparse_below`; 0 (never) when a scan alone costs more than the dense product, as for
/// the transposed convolution of a one-channel image.
pub(crate) fn density_limit(macs: usize) -> f64 {
    break_even_density(macs).min(tuning().sparse_below)
}

/// The density `ρ` below which `SCAN_MACS + ρ · macs · SPARSE_MAC_COST < macs` (0 when a scan
/// alone costs more than the dense product).
fn break_even_density(macs: usize) -> f64 {
    let m = macs as f64;
    if m <= SCAN_MACS {
        return 0.0;
    }
    (m - SCAN_MACS) / (SPARSE_MAC_COST * m)
}

/// Whether fewer than `fraction` of the elements of the `[d0, d1, d2, d3]` view are non-zero.
/// Stops reading as soon as the count is exceeded, so a dense operand costs a small fraction of
/// one pass.
pub(crate) fn mostly_zero<T: Elem>(dims: [usize; 4], x: View4<'_, T>, fraction: f64) -> bool {
    let total: usize = dims.iter().product();
    if fraction <= 0.0 || total == 0 {
        return false;
    }
    let limit = (fraction * total as f64) as usize;
    let mut count = 0usize;
    if let Some(flat) = contiguous(dims, x) {
        for chunk in flat.chunks(1 << 12) {
            count += chunk.iter().filter(|&&v| v != T::ZERO).count();
            if count > limit {
                return false;
            }
        }
        return true;
    }
    for i in 0..dims[0] {
        let base = x.start + i * x.stride[0];
        for c in 0..dims[1] {
            for y in 0..dims[2] {
                let row = base + c * x.stride[1] + y * x.stride[2];
                count += (0..dims[3]).filter(|&xx| x.data[row + xx * x.stride[3]] != T::ZERO).count();
                if count > limit {
                    return false;
                }
            }
        }
    }
    true
}

/// The view as one row-major slice `[d0, d1, d2, d3]`, when it is stored that way.
fn contiguous<T>(dims: [usize; 4], x: View4<'_, T>) -> Option<&[T]> {
    let img = dims[1] * dims[2] * dims[3];
    (x.stride == [img, dims[2] * dims[3], dims[3], 1]).then(|| &x.data[x.start..x.start + dims[0] * img])
}

/// Appends the non-zeros of image `i` of the `[d0, d1, d2, d3]` view to `nz`, as (flat index
/// within the image, value).
fn image_nonzeros<T: Elem>(dims: [usize; 4], x: View4<'_, T>, i: usize, nz: &mut Vec<(usize, T)>) {
    let [_, c, h, w] = dims;
    let img = c * h * w;
    match contiguous(dims, x) {
        Some(f) => {
            // Blocks of 16 are tested for any non-zero without branches (vectorised) first.
            for (b, block) in f[i * img..(i + 1) * img].chunks(16).enumerate() {
                if block.iter().fold(false, |a, &v| a | (v != T::ZERO)) {
                    nz.extend(block.iter().enumerate().filter(|(_, &v)| v != T::ZERO).map(|(j, &v)| (b * 16 + j, v)));
                }
            }
        }
        None => {
            let base = x.start + i * x.stride[0];
            for cc in 0..c {
                for y in 0..h {
                    for xx in 0..w {
                        let v = x.data[base + cc * x.stride[1] + y * x.stride[2] + xx * x.stride[3]];
                        if v != T::ZERO {
                            nz.push(((cc * h + y) * w + xx, v));
                        }
                    }
                }
            }
        }
    }
}

/// Along one axis: the kernel taps `k0..k1` through which output position `o` reads an input
/// inside `0..len` (tap `t` reads input `o·s + t − pad`), and the input position of tap `k0`
/// (0 when there is none).
fn taps(o: usize, s: usize, pad: usize, k: usize, len: usize) -> (usize, usize, usize) {
    let base = o * s;
    let k0 = pad.saturating_sub(base).min(k);
    let k1 = (len + pad).saturating_sub(base).clamp(k0, k);
    if k1 == k0 {
        return (k0, k0, 0);
    }
    (k0, k1, base + k0 - pad)
}

/// The images of a mostly-zero `[n, o, oh, ow]` gradient that are dense enough for the gemm
/// (above the break-even density of a product costing `macs` per element; the gradient of a
/// projected bound is mostly zero overall, but the few columns that meet a later layer's
/// unstable units carry a dense row each): their indices, and a mask over all images.
fn dense_images<T: Elem>(dims: [usize; 4], x: View4<'_, T>, macs: usize) -> (Vec<usize>, Vec<bool>) {
    let img = dims[1] * dims[2] * dims[3];
    let limit = (break_even_density(macs) * img as f64) as usize;
    let dense: Vec<usize> = (0..dims[0])
        .into_par_iter()
        .with_min_len(16)
        .map_init(Vec::new, |nz, i| {
            nz.clear();
            image_nonzeros(dims, x, i, nz);
            (i, nz.len() > limit)
        })
        .filter_map(|(i, dense)| dense.then_some(i))
        .collect();
    let mut mask = vec![false; dims[0]];
    dense.iter().for_each(|&i| mask[i] = true);
    (dense, mask)
}

/// The images `idx` of the `[d0, d1, d2, d3]` view copied into a contiguous buffer
/// `[idx.len(), d1, d2, d3]`.
fn gather_images<T: Elem>(dims: [usize; 4], x: View4<'_, T>, idx: &[usize]) -> Vec<T> {
    let [_, c, h, w] = dims;
    let img = c * h * w;
    let mut out = vec![T::ZERO; idx.len() * img];
    out.par_chunks_mut(img.max(1)).zip(idx.par_iter()).for_each(|(dst, &i)| {
        let base = x.start + i * x.stride[0];
        for cc in 0..c {
            for y in 0..h {
                for xx in 0..w {
                    dst[(cc * h + y) * w + xx] = x.data[base + cc * x.stride[1] + y * x.stride[2] + xx * x.stride[3]];
                }
            }
        }
    });
    out
}

/// A contiguous `[n, d1, d2, d3]` buffer as a view.
fn packed<T>(data: &[T], dims: [usize; 4]) -> View4<'_, T> {
    let img = dims[1] * dims[2] * dims[3];
    View4 { data, start: 0, stride: [img, dims[2] * dims[3], dims[3], 1] }
}

/// `w` `[o, c, kh, kw]` (contiguous `[o, c·kh·kw]`) with the channels last:
/// `[o, kh, kw, c]`.
fn channels_last_kernel<T: Elem>(g: &Geom, w: &[T]) -> Vec<T> {
    let (c, kk, k) = (g.c, g.kh * g.kw, g.k());
    let mut wt = vec![T::ZERO; g.o * k];
    for (src, dst) in w[..g.o * k].chunks(k.max(1)).zip(wt.chunks_mut(k.max(1))) {
        T::transpose(src, c, kk, dst);
    }
    wt
}

/// `dx = conv_transpose2d(gy, w)` (the input gradient of `conv2d`) for a mostly-zero `gy`
/// `[n, o, oh, ow]` (any strides) and `w` contiguous `[o, c·kh·kw]`: every non-zero `gy[o, y, x]`
/// adds `gy · w[o, :, ky, kx]` to `dx[:, y·s + ky − pad, x·s + kx − pad]`, vectorised over the
/// input channels (an image is accumulated channels-last, then transposed). Returns
/// `[n, c, h, w]`.
pub(crate) fn conv2d_backward_data<T: Elem>(g: &Geom, gy: View4<'_, T>, w: &[T]) -> Vec<T> {
    let (c, h, wd, kh, kw) = (g.c, g.h, g.w, g.kh, g.kw);
    let hw = h * wd;
    let mut out = super::zeroed::<T>(g.n * g.in_len());
    if out.is_empty() {
        return out;
    }
    let wt = channels_last_kernel(g, w);
    let dims = [g.n, g.o, g.oh, g.ow];
    let (dense, is_dense) = dense_images(dims, gy, g.k());
    out.par_chunks_mut(g.in_len()).with_min_len(8).enumerate().for_each_init(
        || (Vec::new(), vec![T::ZERO; hw * c]),
        |(nz, acc), (i, dst)| {
            if is_dense[i] {
                return;
            }
            nz.clear();
            image_nonzeros(dims, gy, i, nz);
            if nz.is_empty() {
                return;
            }
            acc.fill(T::ZERO);
            for &(j, v) in nz.iter() {
                let (oc, oy, ox) = (j / g.p(), (j / g.ow) % g.oh, j % g.ow);
                let (ky0, ky1, iy0) = taps(oy, g.stride, g.pad, kh, h);
                let (kx0, kx1, ix0) = taps(ox, g.stride, g.pad, kw, wd);
                for (dy, ky) in (ky0..ky1).enumerate() {
                    let len = (kx1 - kx0) * c;
                    let a = &mut acc[((iy0 + dy) * wd + ix0) * c..][..len];
                    axpy(a, v, &wt[((oc * kh + ky) * kw + kx0) * c..][..len]);
                }
            }
            T::transpose(acc, hw, c, dst);
        },
    );
    if !dense.is_empty() {
        // The dense images through the gemm kernel, as one packed batch.
        let buf = gather_images(dims, gy, &dense);
        let gd = Geom { n: dense.len(), ..*g };
        let dx = super::gemm_conv::conv2d_backward_data(&gd, packed(&buf, [gd.n, g.o, g.oh, g.ow]), 1, w);
        let len = g.in_len();
        for (j, &i) in dense.iter().enumerate() {
            out[i * len..(i + 1) * len].copy_from_slice(&dx[j * len..(j + 1) * len]);
        }
    }
    out
}

/// `dW[o, c, ky, kx] = Σ_n Σ_{y,x} gy_n[o, y, x] · x_n[c, y·s + ky − pad, x·s + kx − pad]` (the
/// kernel gradient of `conv2d`) for a mostly-zero `gy` `[n, o, oh, ow]`, visiting its non-zeros
/// only, vectorised over the input channels (each image of `x` is read channels-last); `x`
/// `[n, c, h, w]`, both with any strides. Returns `[o, c, kh, kw]`.
pub(crate) fn conv2d_backward_weight<T: Elem>(g: &Geom, x: View4<'_, T>, gy: View4<'_, T>) -> Vec<T> {
    let (c, h, wd, kh, kw) = (g.c, g.h, g.w, g.kh, g.kw);
    let (hw, kk) = (h * wd, kh * kw);
    let klen = g.o * g.k();
    let dims = [g.n, g.o, g.oh, g.ow];
    let [_, sc, sy, sx] = x.stride;
    let (dense, is_dense) = dense_images(dims, gy, g.k());
    // acc[((o·kh + ky)·kw + kx)·c + cc]: the kernel gradient with the channels last.
    let acc = (0..g.n)
        .into_par_iter()
        .with_min_len(8)
        .fold(
            || (vec![T::ZERO; klen], Vec::new(), vec![T::ZERO; hw * c]),
            |(mut acc, mut nz, mut xt), i| {
                if is_dense[i] {
                    return (acc, nz, xt);
                }
                nz.clear();
                image_nonzeros(dims, gy, i, &mut nz);
                if nz.is_empty() {
                    return (acc, nz, xt);
                }
                let base = x.start + i * x.stride[0];
                if sy == wd * sx && sx == 1 && sc == hw {
                    T::transpose(&x.data[base..base + c * hw], c, hw, &mut xt);
                } else {
                    for cc in 0..c {
                        for y in 0..h {
                            for xx in 0..wd {
                                xt[(y * wd + xx) * c + cc] = x.data[base + cc * sc + y * sy + xx * sx];
                            }
                        }
                    }
                }
                for &(j, v) in &nz {
                    let (oc, oy, ox) = (j / g.p(), (j / g.ow) % g.oh, j % g.ow);
                    let (ky0, ky1, iy0) = taps(oy, g.stride, g.pad, kh, h);
                    let (kx0, kx1, ix0) = taps(ox, g.stride, g.pad, kw, wd);
                    for (dy, ky) in (ky0..ky1).enumerate() {
                        let len = (kx1 - kx0) * c;
                        let a = &mut acc[((oc * kh + ky) * kw + kx0) * c..][..len];
                        axpy(a, v, &xt[((iy0 + dy) * wd + ix0) * c..][..len]);
                    }
                }
                (acc, nz, xt)
            },
        )
        .map(|(acc, _, _)| acc)
        .reduce(
            || vec![T::ZERO; klen],
            |mut a, b| {
                add_into(&mut a, &b);
                a
            },
        );
    // Back from channels last: [o, kh·kw, c] → [o, c, kh·kw].
    let mut out = vec![T::ZERO; klen];
    for (src, dst) in acc.chunks(g.k().max(1)).zip(out.chunks_mut(g.k().max(1))) {
        T::transpose(src, kk, c, dst);
    }
    if !dense.is_empty() {
        // The dense images through the gemm kernel, as one packed batch.
        let gd = Geom { n: dense.len(), ..*g };
        let xs = gather_images([g.n, c, h, wd], x, &dense);
        let gys = gather_images(dims, gy, &dense);
        let dw = super::gemm_conv::conv2d_backward_weight(
            &gd,
            packed(&xs, [gd.n, c, h, wd]),
            packed(&gys, [gd.n, g.o, g.oh, g.ow]),
            1,
        );
        for (o, d) in out.iter_mut().zip(dw) {
            *o += d;
        }
    }
    out
}

/// `y = conv2d(x, w)` for a mostly-zero `x` (any strides), `w` contiguous `[o, c·kh·kw]`;
/// returns `[n, o, oh, ow]`, the same values as the gemm kernel up to the order of summation.
pub(crate) fn conv2d_forward<T: Elem>(g: &Geom, x: View4<'_, T>, w: &[T]) -> Vec<T> {
    let (o, p, k) = (g.o, g.p(), g.k());
    // Kernel taps with the output channels contiguous: wt[(c, ky, kx), o].
    let mut wt = vec![T::ZERO; k * o];
    T::transpose(&w[..o * k], o, k, &mut wt);
    let mut out = super::zeroed::<T>(g.n * o * p);
    if out.is_empty() {
        return out;
    }
    let (s, pad) = (g.stride, g.pad);
    let dims = [g.n, g.c, g.h, g.w];
    out.par_chunks_mut(o * p).with_min_len(8).enumerate().for_each(|(i, dst)| {
        let mut nz: Vec<(usize, T)> = Vec::new();
        image_nonzeros(dims, x, i, &mut nz);
        if nz.is_empty() {
            return;
        }
        let mut acc = vec![T::ZERO; p * o]; // [oy, ox, o]
        for (j, v) in nz {
            let (c, y, xx) = (j / (g.h * g.w), (j / g.w) % g.h, j % g.w);
            for ky in 0..g.kh {
                // Output row oy reads input row oy·s + ky - pad.
                let ty = y + pad;
                if ty < ky || (ty - ky) % s != 0 || (ty - ky) / s >= g.oh {
                    continue;
                }
                let oy = (ty - ky) / s;
                for kx in 0..g.kw {
                    let tx = xx + pad;
                    if tx < kx || (tx - kx) % s != 0 || (tx - kx) / s >= g.ow {
                        continue;
                    }
                    let ox = (tx - kx) / s;
                    axpy(&mut acc[(oy * g.ow + ox) * o..][..o], v, &wt[((c * g.kh + ky) * g.kw + kx) * o..][..o]);
                }
            }
        }
        T::transpose(&acc, p, o, dst);
    });
    out
}
