//! Convolution of mostly-zero inputs by scattering from the non-zeros.
//!
//! Columns of the dual network are often almost all zeros: the identity pushed into the first
//! convolution (one non-zero per column), and the projected columns of a ReLU layer, which live
//! on its unstable units only (on the paper's MNIST model 2–3 % of the units). A gemm spends the
//! same time on zeros as on anything else; here every non-zero input adds its value times the
//! kernel to the outputs it reaches, `c_out` multiply-adds per kernel tap, vectorised over the
//! output channels. Only the forward pass changes: gradients are those of the convolution, from
//! the dense kernels, whatever the input holds.

use super::gemm_conv::View4;
use super::im2col::Geom;
use super::Elem;
use rayon::prelude::*;

/// Whether fewer than `fraction` of the input's elements are non-zero. Stops reading as soon as
/// the count is exceeded, so a dense input costs a small fraction of one pass.
pub(crate) fn mostly_zero<T: Elem>(g: &Geom, x: View4<'_, T>, fraction: f64) -> bool {
    let total = g.n * g.c * g.h * g.w;
    if fraction <= 0.0 || total == 0 {
        return false;
    }
    let limit = (fraction * total as f64) as usize;
    let mut count = 0usize;
    if let Some(flat) = contiguous(g, x) {
        for chunk in flat.chunks(1 << 12) {
            count += chunk.iter().filter(|&&v| v != T::ZERO).count();
            if count > limit {
                return false;
            }
        }
        return true;
    }
    for i in 0..g.n {
        let base = x.start + i * x.stride[0];
        for c in 0..g.c {
            for y in 0..g.h {
                let row = base + c * x.stride[1] + y * x.stride[2];
                count += (0..g.w).filter(|&xx| x.data[row + xx * x.stride[3]] != T::ZERO).count();
                if count > limit {
                    return false;
                }
            }
        }
    }
    true
}

/// The input as one row-major slice `[n, c, h, w]`, when it is stored that way.
fn contiguous<'a, T>(g: &Geom, x: View4<'a, T>) -> Option<&'a [T]> {
    let img = g.c * g.h * g.w;
    (x.stride == [img, g.h * g.w, g.w, 1]).then(|| &x.data[x.start..x.start + g.n * img])
}

/// `y = conv2d(x, w)` for a mostly-zero `x` (any strides), `w` contiguous `[o, c·kh·kw]`;
/// returns `[n, o, oh, ow]`, the same values as the gemm kernel up to the order of summation.
pub(crate) fn conv2d_forward<T: Elem>(g: &Geom, x: View4<'_, T>, w: &[T]) -> Vec<T> {
    let (o, p, k) = (g.o, g.p(), g.k());
    // Kernel taps with the output channels contiguous: wt[(c, ky, kx), o].
    let mut wt = vec![T::ZERO; k * o];
    for oc in 0..o {
        for r in 0..k {
            wt[r * o + oc] = w[oc * k + r];
        }
    }
    let mut out = vec![T::ZERO; g.n * o * p];
    if out.is_empty() {
        return out;
    }
    let (s, pad) = (g.stride, g.pad);
    let flat = contiguous(g, x);
    let img = g.c * g.h * g.w;
    out.par_chunks_mut(o * p).with_min_len(8).enumerate().for_each(|(i, dst)| {
        // The image's non-zeros as (flat index c·h·w + y·w + x, value).
        let mut nz: Vec<(usize, T)> = Vec::new();
        match flat {
            Some(f) => nz.extend(f[i * img..(i + 1) * img].iter().enumerate().filter(|(_, &v)| v != T::ZERO).map(|(j, &v)| (j, v))),
            None => {
                let base = x.start + i * x.stride[0];
                for c in 0..g.c {
                    for y in 0..g.h {
                        for xx in 0..g.w {
                            let v = x.data[base + c * x.stride[1] + y * x.stride[2] + xx * x.stride[3]];
                            if v != T::ZERO {
                                nz.push(((c * g.h + y) * g.w + xx, v));
                            }
                        }
                    }
                }
            }
        }
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
                    let taps = &wt[((c * g.kh + ky) * g.kw + kx) * o..][..o];
                    let a = &mut acc[(oy * g.ow + ox) * o..][..o];
                    for (a, &t) in a.iter_mut().zip(taps) {
                        *a += v * t;
                    }
                }
            }
        }
        for q in 0..p {
            for oc in 0..o {
                dst[oc * p + q] = acc[q * o + oc];
            }
        }
    });
    out
}
