//! Geometry of a 2-d convolution and the data movements around its gemm.
//!
//! A strided convolution reads its input with a stride, which makes a plain im2col a slow
//! element-by-element gather. Instead, each image is first split into its `s × s` *phases*
//! (polyphase decomposition of the zero-padded image: phase `(a, b)` holds the pixels
//! `x_pad[a + i·s, b + j·s]`). For kernel tap `(ki, kj)`, the inputs read by all output pixels
//! then form one contiguous window of phase `(ki mod s, kj mod s)`, provided the output grid is
//! given the phase's row length `wq` instead of its own width `ow`: the `wq − ow` extra columns
//! of each output row read pixels that belong to no output ("garbage columns"). So:
//!
//! * `im2col` becomes one `memcpy` of `oh·wq` elements per row of the patch matrix;
//! * its adjoint `col2im` becomes one contiguous vector add per row, into a phase buffer that is
//!   then interleaved back into the image;
//! * the gemm computes `wq / ow` more columns than needed (e.g. 8/7 for the 4x4 stride-2 layers
//!   of the MNIST models); garbage columns are dropped from outputs and set to zero in inputs.

use super::Elem;

/// Geometry of `y = conv2d(x, w)` with `x: [n, c, h, w]`, `w: [o, c, kh, kw]`,
/// `y: [n, o, oh, ow]`. A transposed convolution uses the same geometry read backwards: its
/// input lives on the `[o, oh, ow]` side and its output on the `[c, h, w]` side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Geom {
    /// Rows of the patch matrix: `c · kh · kw`.
    pub fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }
    /// Output pixels per image: `oh · ow`.
    pub fn p(&self) -> usize {
        self.oh * self.ow
    }
    /// Input length per image: `c · h · w`.
    pub fn in_len(&self) -> usize {
        self.c * self.h * self.w
    }
    /// Output length per image: `o · oh · ow`.
    pub fn out_len(&self) -> usize {
        self.o * self.p()
    }
    /// Multiply-adds of one image (`o · k · p`).
    pub fn macs_per_image(&self) -> usize {
        self.o * self.k() * self.p()
    }
    /// True when the patch matrix of an image is the image itself (1x1 kernel, stride 1, no
    /// padding), so no data movement is needed at all.
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }
    /// Rows of a phase: `⌈(h + 2·pad) / s⌉`.
    pub fn hq(&self) -> usize {
        (self.h + 2 * self.pad).div_ceil(self.stride)
    }
    /// Row length of a phase, and of the output grid the gemm computes: `⌈(w + 2·pad) / s⌉`.
    pub fn wq(&self) -> usize {
        (self.w + 2 * self.pad).div_ceil(self.stride)
    }
    /// Gemm columns per image: `oh · wq` (of which `oh · ow` are real outputs).
    pub fn pq(&self) -> usize {
        self.oh * self.wq()
    }
    /// Length of one channel of one phase, with one spare row so that every window stays inside.
    fn chan(&self) -> usize {
        (self.hq() + 1) * self.wq()
    }
    /// Length of the phase buffer of one image.
    pub fn phase_len(&self) -> usize {
        self.stride * self.stride * self.c * self.chan()
    }
    /// Start of channel `ci` of phase `(a, b)` in the phase buffer.
    #[inline]
    fn phase_start(&self, a: usize, b: usize, ci: usize) -> usize {
        ((a * self.stride + b) * self.c + ci) * self.chan()
    }

    /// For each residue `b` of padded columns mod `s`: the first image column `ix0` with
    /// `(ix0 + pad) mod s = b`, its phase column `j0`, and how many image columns follow it at
    /// step `s`.
    #[inline]
    fn column_runs(&self, len: usize) -> impl Iterator<Item = (usize, usize, usize, usize)> + '_ {
        let (s, p) = (self.stride, self.pad);
        (0..s).filter_map(move |b| {
            // Smallest ix ≥ 0 with (ix + p) ≡ b (mod s).
            let ix0 = (b + s - p % s) % s;
            (ix0 < len).then(|| (b, ix0, (ix0 + p) / s, (len - ix0).div_ceil(s)))
        })
    }
}

/// Strides of one image `[c, h, w]` inside a larger buffer, plus its start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ImageView {
    pub start: usize,
    pub sc: usize,
    pub sh: usize,
    pub sw: usize,
}

/// Scatters one image (any strides) into its phases. Positions of `ph` that hold no pixel
/// (padding, spare row) are left untouched: the caller zeroes the buffer once.
pub(crate) fn image_to_phases<T: Elem>(g: &Geom, x: &[T], v: ImageView, ph: &mut [T]) {
    let (s, p, wq) = (g.stride, g.pad, g.wq());
    let runs: Runs = g.column_runs(g.w).collect();
    if let (2, 1, &[r0, r1]) = (s, v.sw, runs.as_slice()) {
        return image_to_phases_s2(g, x, v, ph, [r0, r1]);
    }
    for ci in 0..g.c {
        for iy in 0..g.h {
            let (a, i) = ((iy + p) % s, (iy + p) / s);
            let src = v.start + ci * v.sc + iy * v.sh;
            for &(b, ix0, j0, cnt) in runs.as_slice() {
                let d0 = g.phase_start(a, b, ci) + i * wq + j0;
                let dst = &mut ph[d0..d0 + cnt];
                let (s0, step) = (src + ix0 * v.sw, s * v.sw);
                if step == 1 {
                    dst.copy_from_slice(&x[s0..s0 + cnt]);
                } else {
                    let row = &x[s0..s0 + (cnt - 1) * step + 1];
                    for (d, &e) in dst.iter_mut().zip(row.iter().step_by(step)) {
                        *d = e;
                    }
                }
            }
        }
    }
}

/// [`image_to_phases`] for stride 2 on rows of unit stride: each image row is split into its even
/// and odd columns in one pass over pairs (a loop the compiler vectorises), instead of two strided
/// walks. `runs` are the two column runs of the row (one per residue).
fn image_to_phases_s2<T: Elem>(g: &Geom, x: &[T], v: ImageView, ph: &mut [T], runs: [(usize, usize, usize, usize); 2]) {
    let (p, wq) = (g.pad, g.wq());
    // The run of the even image columns (ix0 = 0) and the run of the odd ones (ix0 = 1).
    let (even, odd) = if runs[0].1 == 0 { (runs[0], runs[1]) } else { (runs[1], runs[0]) };
    debug_assert!(even.1 == 0 && odd.1 == 1 && even.3 == g.w.div_ceil(2) && odd.3 == g.w / 2);
    let pairs = g.w / 2;
    for ci in 0..g.c {
        for iy in 0..g.h {
            let (a, i) = ((iy + p) % 2, (iy + p) / 2);
            let src = &x[v.start + ci * v.sc + iy * v.sh..][..g.w];
            let de = g.phase_start(a, even.0, ci) + i * wq + even.2;
            let dod = g.phase_start(a, odd.0, ci) + i * wq + odd.2;
            // The two destination runs lie in different phases, so they never overlap; split the
            // buffer between them to hold both mutably.
            let (e_run, o_run) = if de < dod {
                let (lo, hi) = ph.split_at_mut(dod);
                (&mut lo[de..de + even.3], &mut hi[..odd.3])
            } else {
                let (lo, hi) = ph.split_at_mut(de);
                (&mut hi[..even.3], &mut lo[dod..dod + odd.3])
            };
            for ((e, o), pair) in e_run.iter_mut().zip(o_run.iter_mut()).zip(src.chunks_exact(2)) {
                *e = pair[0];
                *o = pair[1];
            }
            if g.w % 2 == 1 {
                e_run[pairs] = src[g.w - 1];
            }
        }
    }
}

/// Interleaves the phases back into one contiguous image `[c, h, w]` (dropping the padding):
/// the inverse of [`image_to_phases`].
pub(crate) fn phases_to_image<T: Elem>(g: &Geom, ph: &[T], out: &mut [T]) {
    let (s, p, wq) = (g.stride, g.pad, g.wq());
    let runs: Runs = g.column_runs(g.w).collect();
    for ci in 0..g.c {
        for iy in 0..g.h {
            let (a, i) = ((iy + p) % s, (iy + p) / s);
            let row = &mut out[(ci * g.h + iy) * g.w..(ci * g.h + iy + 1) * g.w];
            for &(b, ix0, j0, cnt) in runs.as_slice() {
                let s0 = g.phase_start(a, b, ci) + i * wq + j0;
                let src = &ph[s0..s0 + cnt];
                if s == 1 {
                    row[ix0..ix0 + cnt].copy_from_slice(src);
                } else {
                    for (d, &e) in row[ix0..].iter_mut().step_by(s).zip(src) {
                        *d = e;
                    }
                }
            }
        }
    }
}

/// The column runs of [`Geom::column_runs`], on the stack for strides up to 4.
struct Runs {
    len: usize,
    inline: [(usize, usize, usize, usize); 4],
    heap: Vec<(usize, usize, usize, usize)>,
}

impl FromIterator<(usize, usize, usize, usize)> for Runs {
    fn from_iter<I: IntoIterator<Item = (usize, usize, usize, usize)>>(iter: I) -> Self {
        let mut r = Runs { len: 0, inline: [(0, 0, 0, 0); 4], heap: Vec::new() };
        for e in iter {
            if r.len < 4 {
                r.inline[r.len] = e;
            } else {
                if r.heap.is_empty() {
                    r.heap.extend_from_slice(&r.inline);
                }
                r.heap.push(e);
            }
            r.len += 1;
        }
        r
    }
}

impl Runs {
    fn as_slice(&self) -> &[(usize, usize, usize, usize)] {
        if self.len <= 4 {
            &self.inline[..self.len]
        } else {
            &self.heap
        }
    }
}

/// Start, in the phase buffer, of the window read by kernel tap `(ci, ki, kj)`.
#[inline]
fn window(g: &Geom, ci: usize, ki: usize, kj: usize) -> usize {
    let s = g.stride;
    g.phase_start(ki % s, kj % s, ci) + (ki / s) * g.wq() + kj / s
}

/// Writes the patch matrix of one image (`[k, pq]`, row `(ci, ki, kj)`, column `(oy, ox)` on
/// the `oh × wq` grid) into `dst`, rows `ld` apart: one contiguous copy per row.
pub(crate) fn phases_to_cols<T: Elem>(g: &Geom, ph: &[T], dst: &mut [T], ld: usize) {
    let pq = g.pq();
    for ci in 0..g.c {
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = (ci * g.kh + ki) * g.kw + kj;
                let src = window(g, ci, ki, kj);
                dst[row * ld..row * ld + pq].copy_from_slice(&ph[src..src + pq]);
            }
        }
    }
}

/// Adds the columns `src` (`[k, pq]`, rows `ld` apart, garbage columns zero) into the phase
/// buffer: the adjoint of [`phases_to_cols`].
pub(crate) fn cols_to_phases<T: Elem>(g: &Geom, src: &[T], ld: usize, ph: &mut [T]) {
    let pq = g.pq();
    for ci in 0..g.c {
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = (ci * g.kh + ki) * g.kw + kj;
                let d0 = window(g, ci, ki, kj);
                for (d, &v) in ph[d0..d0 + pq].iter_mut().zip(&src[row * ld..row * ld + pq]) {
                    *d += v;
                }
            }
        }
    }
}
