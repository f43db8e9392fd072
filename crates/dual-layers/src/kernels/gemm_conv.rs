//! The three convolution products, each as im2col/col2im + one `gemm` call per group of images:
//!
//! * [`conv2d_forward`]: `y_n = W · col(x_n)` (`[o, k] · [k, p]`);
//! * [`conv2d_backward_data`]: `x_n = col2im(Wᵀ · y_n)` — the transposed convolution, and the
//!   input gradient of `conv2d`;
//! * [`conv2d_backward_weight`]: `dW = Σ_n g_n · col(x_n)ᵀ` — the kernel gradient, a correlation.
//!
//! Images are split into one contiguous range per task, tasks run on rayon's pool with a
//! single-threaded gemm each (or, when there are fewer images than threads, one task with gemm's
//! own threading). Within a task, a group of images shares one patch buffer so that the gemm is
//! wide even when an image has few output pixels; the buffers are allocated once per task and
//! sized to stay in the core's L2 cache. The patch matrices are built through the phase
//! decomposition of `im2col.rs`, on an output grid of `oh × wq` columns per image.

use super::im2col::{cols_to_phases, image_to_phases, phases_to_cols, phases_to_image, Geom, ImageView};
use super::{tuning, Elem};
use dual_core::scratch::Scratch;
use gemm::Parallelism;
use rayon::prelude::*;

/// Strided 4-d view `[n, c, h, w]` of a buffer (a tensor's storage with its layout).
#[derive(Debug, Clone, Copy)]
pub(crate) struct View4<'a, T> {
    pub data: &'a [T],
    pub start: usize,
    pub stride: [usize; 4],
}

impl<T> View4<'_, T> {
    fn image(&self, i: usize) -> ImageView {
        ImageView { start: self.start + i * self.stride[0], sc: self.stride[1], sh: self.stride[2], sw: self.stride[3] }
    }

    /// Stride between consecutive pixels when `(h, w)` of an image can be read as one axis of
    /// `h·w` pixels, i.e. an image is a plain `[c, h·w]` matrix.
    pub fn pixel_stride(&self, h: usize, w: usize) -> Option<usize> {
        let [_, _, sh, sw] = self.stride;
        if h <= 1 {
            Some(sw)
        } else if w <= 1 {
            Some(sh)
        } else if sh == w * sw {
            Some(sw)
        } else {
            None
        }
    }
}

/// A read-only matrix inside a slice: element `(i, j)` at `off + i·rs + j·cs`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a, T> {
    pub data: &'a [T],
    pub off: usize,
    pub rs: usize,
    pub cs: usize,
}

/// `dst (+)= lhs · rhs` for `dst: [m, n]` (row stride `ld`, unit column stride),
/// `lhs: [m, kk]`, `rhs: [kk, n]`; `accumulate` adds to what `dst` holds.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul<T: Elem>(
    m: usize,
    n: usize,
    kk: usize,
    dst: &mut [T],
    ld: usize,
    accumulate: bool,
    lhs: Mat<'_, T>,
    rhs: Mat<'_, T>,
    par: Parallelism,
) {
    gemm_into(m, n, kk, dst, (ld, 1), accumulate, lhs, rhs, par);
}

/// `dst = lhs · rhs` for `dst: [m, n]` stored column-major (`dst[i + j·m]`), on the calling
/// thread.
pub(crate) fn matmul_col_major<T: Elem>(
    m: usize,
    n: usize,
    kk: usize,
    dst: &mut [T],
    lhs: Mat<'_, T>,
    rhs: Mat<'_, T>,
) {
    gemm_into(m, n, kk, dst, (1, m), false, lhs, rhs, Parallelism::None);
}

/// `dst (+)= lhs · rhs` with `dst`'s element `(i, j)` at `i·rs + j·cs` (`(rs, cs)` = `strides`),
/// every operand checked to lie inside its slice.
#[allow(clippy::too_many_arguments)]
fn gemm_into<T: Elem>(
    m: usize,
    n: usize,
    kk: usize,
    dst: &mut [T],
    strides: (usize, usize),
    accumulate: bool,
    lhs: Mat<'_, T>,
    rhs: Mat<'_, T>,
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    let (drs, dcs) = strides;
    let last = |a: Mat<'_, T>, r: usize, c: usize| a.off + (r - 1) * a.rs + (c - 1) * a.cs;
    assert!((m - 1) * drs + (n - 1) * dcs < dst.len(), "gemm destination out of bounds");
    if kk == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst[i * drs + j * dcs] = T::ZERO;
                }
            }
        }
        return;
    }
    assert!(last(lhs, m, kk) < lhs.data.len(), "gemm lhs out of bounds");
    assert!(last(rhs, kk, n) < rhs.data.len(), "gemm rhs out of bounds");
    // SAFETY: every element gemm touches lies inside the slices (checked above); `dst` is an
    // exclusive borrow that overlaps neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            kk,
            dst.as_mut_ptr(),
            dcs as isize,
            drs as isize,
            accumulate,
            lhs.data.as_ptr().add(lhs.off),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr().add(rhs.off),
            rhs.cs as isize,
            rhs.rs as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            par,
        )
    }
}

/// How the images are split: `tasks` tasks of `per_task` images each (the last may have fewer),
/// each running gemm with `par`.
struct Plan {
    tasks: usize,
    per_task: usize,
    par: Parallelism,
    /// [`super::Tuning::group_bytes`], read on the calling thread (the tasks run on others).
    group_bytes: usize,
}

fn plan(n: usize, macs_per_image: usize) -> Plan {
    let threads = rayon::current_num_threads().max(1);
    let total = n.saturating_mul(macs_per_image);
    let t = tuning();
    let (tasks, par) = if threads == 1 || total < t.serial_macs || n == 0 {
        (1, Parallelism::None)
    } else if t.gemm_threads || n < 2 * threads {
        (1, Parallelism::Rayon(threads))
    } else {
        (n.min(t.tasks_per_thread * threads), Parallelism::None)
    };
    let per_task = n.div_ceil(tasks.max(1)).max(1);
    let tasks = n.div_ceil(per_task).max(1);
    Plan { tasks, per_task, par, group_bytes: t.group_bytes }
}

/// Images per group: as many as keep the `[k, group·pq]` patch buffer within the target size.
fn group_size<T>(g: &Geom, per_task: usize, group_bytes: usize) -> usize {
    let per_image = (g.k() * g.pq() * std::mem::size_of::<T>()).max(1);
    (group_bytes / per_image).clamp(1, per_task.max(1))
}

/// One task's buffers for groups of images: a phase image (zero-filled: its padding is read),
/// the `[k, group·pq]` patch matrix and the `[o, group·pq]` side of the product, sized for groups
/// of `gmax` images. The last two are written in full before they are read, so they come from
/// the thread's scratch pool (`dual_core::scratch`) without a zero fill.
struct GroupBuffers<T: Elem> {
    gmax: usize,
    ph: Vec<T>,
    cols: Vec<T>,
    side: Vec<T>,
    lent: Scratch<T>,
}

impl<T: Elem> GroupBuffers<T> {
    /// For a task of `count` images, groups kept within `group_bytes` ([`group_size`]).
    fn new(g: &Geom, count: usize, group_bytes: usize) -> Self {
        let gmax = group_size::<T>(g, count, group_bytes);
        let (k, o, pq) = (g.k(), g.o, g.pq());
        let mut lent = Scratch::<T>::take(&[k * gmax * pq, o * gmax * pq]);
        let cols = std::mem::take(lent.vec(0));
        let side = std::mem::take(lent.vec(1));
        GroupBuffers { gmax, ph: vec![T::ZERO; g.phase_len()], cols, side, lent }
    }
}

impl<T: Elem> Drop for GroupBuffers<T> {
    fn drop(&mut self) {
        *self.lent.vec(0) = std::mem::take(&mut self.cols);
        *self.lent.vec(1) = std::mem::take(&mut self.side);
    }
}

/// `(j0, gc)`: the first image and the size of each group of at most `gmax` of `count` images.
fn groups(count: usize, gmax: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..count).step_by(gmax.max(1)).map(move |j0| (j0, gmax.min(count - j0)))
}

/// Writes the patch matrices of images `first..first+gc` of `x` into `cols` as one
/// `[k, gc·pq]` matrix (image `j` in columns `j·pq..(j+1)·pq`), through the phase image `ph`.
fn patch_group<T: Elem>(g: &Geom, x: &View4<'_, T>, first: usize, gc: usize, ph: &mut [T], cols: &mut [T]) {
    let (pq, ld) = (g.pq(), gc * g.pq());
    for j in 0..gc {
        image_to_phases(g, x.data, x.image(first + j), ph);
        phases_to_cols(g, ph, &mut cols[j * pq..], ld);
    }
}

/// Copies images `first..first+gc` of the `[n, o, oh, ow]` side (pixel stride `ps`) into `buf`
/// as one `[o, gc·pq]` matrix on the `oh × wq` grid (image `j` in columns `j·pq..(j+1)·pq`),
/// with zeros in the garbage columns.
fn expand_group<T: Elem>(g: &Geom, y: &View4<'_, T>, ps: usize, first: usize, gc: usize, buf: &mut [T]) {
    let (pq, wq, ow) = (g.pq(), g.wq(), g.ow);
    let ld = gc * pq;
    for j in 0..gc {
        let base = y.start + (first + j) * y.stride[0];
        for oc in 0..g.o {
            for oy in 0..g.oh {
                let d0 = oc * ld + j * pq + oy * wq;
                let dst = &mut buf[d0..d0 + wq];
                let src = base + oc * y.stride[1] + oy * ow * ps;
                if ps == 1 {
                    dst[..ow].copy_from_slice(&y.data[src..src + ow]);
                } else {
                    for (q, d) in dst[..ow].iter_mut().enumerate() {
                        *d = y.data[src + q * ps];
                    }
                }
                dst[ow..].fill(T::ZERO);
            }
        }
    }
}

/// `y = conv2d(x, w)`: `x` any strides, `w` contiguous `[o, k]`. Returns `[n, o, oh, ow]`.
pub(crate) fn conv2d_forward<T: Elem>(g: &Geom, x: View4<'_, T>, w: &[T]) -> Vec<T> {
    let out_len = g.out_len();
    let mut out = super::zeroed::<T>(g.n * out_len);
    if out.is_empty() {
        return out;
    }
    let pl = plan(g.n, g.macs_per_image());
    let body = |(t, chunk): (usize, &mut [T])| forward_images(g, &x, w, t * pl.per_task, chunk, pl.par, pl.group_bytes);
    if pl.tasks == 1 {
        body((0, &mut out[..]));
    } else {
        out.par_chunks_mut(pl.per_task * out_len).enumerate().for_each(body);
    }
    out
}

/// [`conv2d_forward`] of the contiguous images `x` (`[n, c, h, w]`, `n = out.len() / out_len`)
/// into `out`, on the calling thread (IBP's fused pass runs one per thread).
pub(crate) fn conv2d_forward_serial<T: Elem>(g: &Geom, x: &[T], w: &[T], out: &mut [T]) {
    let (c, h, wd) = (g.c, g.h, g.w);
    let view = View4 { data: x, start: 0, stride: [c * h * wd, h * wd, wd, 1] };
    forward_images(g, &view, w, 0, out, Parallelism::None, tuning().group_bytes);
}

/// The convolution of images `first..` of `x` into `chunk` (whole output images; every element
/// written), gemm with `par`.
fn forward_images<T: Elem>(
    g: &Geom,
    x: &View4<'_, T>,
    w: &[T],
    first: usize,
    chunk: &mut [T],
    par: Parallelism,
    group_bytes: usize,
) {
    let (k, p, o, pq, wq, ow) = (g.k(), g.p(), g.o, g.pq(), g.wq(), g.ow);
    let out_len = g.out_len();
    let count = chunk.len() / out_len.max(1);
    if count == 0 {
        return;
    }
    let wmat = Mat { data: w, off: 0, rs: k, cs: 1 };
    if let Some(ps) = if g.is_pointwise() { x.pixel_stride(g.h, g.w) } else { None } {
        // 1x1 stride-1 kernel: the image is its own patch matrix.
        for j in 0..count {
            let v = x.image(first + j);
            let rhs = Mat { data: x.data, off: v.start, rs: v.sc, cs: ps };
            matmul(o, p, k, &mut chunk[j * out_len..(j + 1) * out_len], p, false, wmat, rhs, par);
        }
        return;
    }
    let mut bufs = GroupBuffers::new(g, count, group_bytes);
    for (j0, gc) in groups(count, bufs.gmax) {
        let ld = gc * pq;
        patch_group(g, x, first + j0, gc, &mut bufs.ph, &mut bufs.cols[..k * ld]);
        let rhs = Mat { data: &bufs.cols[..k * ld], off: 0, rs: ld, cs: 1 };
        matmul(o, ld, k, &mut bufs.side[..o * ld], ld, false, wmat, rhs, par);
        for j in 0..gc {
            let dst = &mut chunk[(j0 + j) * out_len..(j0 + j + 1) * out_len];
            for oc in 0..o {
                for oy in 0..g.oh {
                    let s0 = oc * ld + j * pq + oy * wq;
                    dst[oc * p + oy * ow..oc * p + (oy + 1) * ow].copy_from_slice(&bufs.side[s0..s0 + ow]);
                }
            }
        }
    }
}

/// `x = conv_transpose2d(y, w)` (the adjoint of [`conv2d_forward`] in its input): `y` is the
/// `[n, o, oh, ow]` side with `(oh, ow)` mergeable (see [`View4::pixel_stride`]), `w` contiguous
/// `[o, k]`. Returns `[n, c, h, w]`.
pub(crate) fn conv2d_backward_data<T: Elem>(g: &Geom, y: View4<'_, T>, ps: usize, w: &[T]) -> Vec<T> {
    let (k, p, o, pq) = (g.k(), g.p(), g.o, g.pq());
    let in_len = g.in_len();
    let mut out = super::zeroed::<T>(g.n * in_len);
    if out.is_empty() {
        return out;
    }
    let pl = plan(g.n, g.macs_per_image());
    // Wᵀ as a [k, o] matrix.
    let wt = Mat { data: w, off: 0, rs: 1, cs: k };
    let pointwise = g.is_pointwise();
    let body = |(t, chunk): (usize, &mut [T])| {
        let first = t * pl.per_task;
        let count = chunk.len() / in_len;
        if pointwise {
            for j in 0..count {
                let rhs = Mat { data: y.data, off: y.start + (first + j) * y.stride[0], rs: y.stride[1], cs: ps };
                matmul(k, p, o, &mut chunk[j * in_len..(j + 1) * in_len], p, false, wt, rhs, pl.par);
            }
            return;
        }
        let mut bufs = GroupBuffers::new(g, count, pl.group_bytes);
        for (j0, gc) in groups(count, bufs.gmax) {
            let ld = gc * pq;
            expand_group(g, &y, ps, first + j0, gc, &mut bufs.side[..o * ld]);
            let rhs = Mat { data: &bufs.side[..o * ld], off: 0, rs: ld, cs: 1 };
            matmul(k, ld, o, &mut bufs.cols[..k * ld], ld, false, wt, rhs, pl.par);
            for j in 0..gc {
                bufs.ph.fill(T::ZERO);
                cols_to_phases(g, &bufs.cols[j * pq..k * ld], ld, &mut bufs.ph);
                phases_to_image(g, &bufs.ph, &mut chunk[(j0 + j) * in_len..(j0 + j + 1) * in_len]);
            }
        }
    };
    if pl.tasks == 1 {
        body((0, &mut out[..]));
    } else {
        out.par_chunks_mut(pl.per_task * in_len).enumerate().for_each(body);
    }
    out
}

/// `dW = Σ_n g_n · col(x_n)ᵀ`: the kernel gradient of `y = conv2d(x, w)` for the output
/// gradient `gy` (`[n, o, oh, ow]`, `(oh, ow)` mergeable with pixel stride `ps`). `x` any
/// strides. Returns `[o, k]`.
pub(crate) fn conv2d_backward_weight<T: Elem>(g: &Geom, x: View4<'_, T>, gy: View4<'_, T>, ps: usize) -> Vec<T> {
    let (k, p, o, pq) = (g.k(), g.p(), g.o, g.pq());
    if g.n == 0 {
        return vec![T::ZERO; o * k];
    }
    let pl = plan(g.n, g.macs_per_image());
    let pointwise = if g.is_pointwise() { x.pixel_stride(g.h, g.w) } else { None };
    let task = |t: usize| -> Vec<T> {
        let mut acc = vec![T::ZERO; o * k];
        let first = t * pl.per_task;
        let count = pl.per_task.min(g.n - first);
        if let Some(xs) = pointwise {
            for j in 0..count {
                let v = x.image(first + j);
                let lhs = Mat { data: gy.data, off: gy.start + (first + j) * gy.stride[0], rs: gy.stride[1], cs: ps };
                let rhs = Mat { data: x.data, off: v.start, rs: xs, cs: v.sc };
                matmul(o, k, p, &mut acc, k, true, lhs, rhs, pl.par);
            }
            return acc;
        }
        let mut bufs = GroupBuffers::new(g, count, pl.group_bytes);
        // Accumulated as dWᵀ ([k, o]): gemm then runs its microkernel with the patch matrix as
        // the packed left operand, which is measurably faster than packing its transpose.
        let mut acc_t = vec![T::ZERO; k * o];
        for (j0, gc) in groups(count, bufs.gmax) {
            let ld = gc * pq;
            patch_group(g, &x, first + j0, gc, &mut bufs.ph, &mut bufs.cols[..k * ld]);
            expand_group(g, &gy, ps, first + j0, gc, &mut bufs.side[..o * ld]);
            let lhs = Mat { data: &bufs.cols[..k * ld], off: 0, rs: ld, cs: 1 };
            let rhs = Mat { data: &bufs.side[..o * ld], off: 0, rs: 1, cs: ld };
            matmul(k, o, ld, &mut acc_t, o, true, lhs, rhs, pl.par);
        }
        for kk in 0..k {
            for oc in 0..o {
                acc[oc * k + kk] += acc_t[kk * o + oc];
            }
        }
        acc
    };
    if pl.tasks == 1 {
        return task(0);
    }
    let parts: Vec<Vec<T>> = (0..pl.tasks).into_par_iter().map(task).collect();
    let mut parts = parts.into_iter();
    let mut acc = parts.next().unwrap_or_else(|| vec![T::ZERO; o * k]);
    for part in parts {
        super::add_into(&mut acc, &part);
    }
    acc
}
