//! Fast CPU kernels for the convolutions of the dual network.
//!
//! Candle's CPU `conv2d` runs far below matmul speed, and its `conv_transpose2d` — which also
//! computes the input gradient of every `conv2d` — is a direct loop without gemm. The dual
//! network pushes tens of thousands of "images" (one per column) through every convolution and
//! its transpose, and training backpropagates through all of it, so these are the hot loops.
//!
//! [`conv2d_fast`], [`conv_transpose2d_fast`] and [`conv2d_weight_grad`] are custom ops
//! (`CustomOp2` on the input and the kernel) built from im2col/col2im and the `gemm` crate (the
//! one Candle's matmul uses), with their own backward passes expressed through each other:
//!
//! | op | input gradient | kernel gradient |
//! |---|---|---|
//! | `conv2d(x, w)` | `conv_transpose2d(g, w)` | `conv2d_weight_grad(x, g)` |
//! | `conv_transpose2d(x, w)` | `conv2d(g, w)` | `conv2d_weight_grad(g, x)` |
//!
//! so gradients of any order work. A gradient is only computed for an argument that is tracked
//! by autograd (a variable or derived from one). On other devices or dtypes (GPU, f16/bf16) the
//! functions fall back to Candle's own convolutions. Only dilation 1 and groups 1 are supported,
//! which is all the dual network needs.
//!
//! Inputs may have any strides and start offsets (views from `narrow`, `transpose`, ...).

/// Matches CPU storages of one float dtype (f32 or f64) and runs the generic body on their
/// slices: `dispatch!("name", s1, s2; |a, b| body)`.
macro_rules! dispatch {
    ($name:expr, $($s:expr),+ ; |$($a:ident),+| $body:expr) => {
        match ($($s),+) {
            ($(CpuStorage::F32($a)),+) => CpuStorage::F32($body),
            ($(CpuStorage::F64($a)),+) => CpuStorage::F64($body),
            _ => bail!("{}: unsupported or mixed dtypes", $name),
        }
    };
}

mod gemm_conv;
mod im2col;
mod interval;
mod linear;
mod relax;
mod slopes;
mod sparse;
mod train_abs;
mod train_bias;

pub use interval::relu_box;
pub use linear::{linear_columns, linear_weight_grad};
pub use relax::relax_columns;
pub use slopes::{abs_contract, neg_part_contract, scale_columns};
pub use train_abs::abs_tracked;
pub use train_bias::add_channel_bias;

use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use gemm_conv::View4;
use im2col::Geom;
use std::sync::RwLock;

/// Element types of the kernels: `f32` and `f64`.
pub trait Elem:
    Copy
    + Send
    + Sync
    + 'static
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Neg<Output = Self>
    + std::ops::AddAssign
    + std::fmt::Debug
    + Default
{
    /// Additive identity.
    const ZERO: Self;
    /// Multiplicative identity.
    const ONE: Self;
    /// One half.
    const HALF: Self;
    /// `|x|`.
    fn abs(self) -> Self;
    /// `dst[j·rows + i] = src[i·cols + j]`: the contiguous `[rows, cols]` matrix `src` transposed
    /// into `dst` (`[cols, rows]`).
    fn transpose(src: &[Self], rows: usize, cols: usize, dst: &mut [Self]) {
        transpose_scalar(src, rows, cols, dst);
    }
    /// The sign, with `sign(0) = 0` (the subgradient of `|x|` at 0 that PyTorch uses).
    fn signum0(self) -> Self {
        if self > Self::ZERO {
            Self::ONE
        } else if self < Self::ZERO {
            -Self::ONE
        } else {
            Self::ZERO
        }
    }
}

/// [`Elem::transpose`] element by element, in 8×8 tiles.
fn transpose_scalar<T: Copy>(src: &[T], rows: usize, cols: usize, dst: &mut [T]) {
    assert!(src.len() >= rows * cols && dst.len() >= rows * cols, "transpose out of bounds");
    for i0 in (0..rows).step_by(8) {
        for j0 in (0..cols).step_by(8) {
            for i in i0..(i0 + 8).min(rows) {
                for j in j0..(j0 + 8).min(cols) {
                    dst[j * rows + i] = src[i * cols + j];
                }
            }
        }
    }
}

impl Elem for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const HALF: Self = 0.5;
    fn abs(self) -> Self {
        f64::abs(self)
    }
}

impl Elem for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const HALF: Self = 0.5;
    fn abs(self) -> Self {
        f32::abs(self)
    }
    /// Full 8×8 tiles with AVX shuffles when the build has AVX (x86-64-v3), the edges element
    /// by element.
    fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
        #[cfg(all(target_arch = "x86_64", target_feature = "avx"))]
        {
            assert!(src.len() >= rows * cols && dst.len() >= rows * cols, "transpose out of bounds");
            let (r8, c8) = (rows / 8 * 8, cols / 8 * 8);
            for i0 in (0..r8).step_by(8) {
                for j0 in (0..c8).step_by(8) {
                    // SAFETY: rows i0..i0+8 and columns j0..j0+8 lie inside both matrices
                    // (checked above), and AVX is enabled for this build.
                    unsafe {
                        transpose8x8_avx(
                            src.as_ptr().add(i0 * cols + j0),
                            cols,
                            dst.as_mut_ptr().add(j0 * rows + i0),
                            rows,
                        )
                    };
                }
            }
            for i in 0..rows {
                let j_start = if i < r8 { c8 } else { 0 };
                for j in j_start..cols {
                    dst[j * rows + i] = src[i * cols + j];
                }
            }
            return;
        }
        #[allow(unreachable_code)]
        transpose_scalar(src, rows, cols, dst);
    }
}

/// One 8×8 tile: `d[j·ds + i] = s[i·ss + j]` (unpack, shuffle, lane permute).
///
/// # Safety
/// `s[i·ss + j]` must be readable and `d[j·ds + i]` writable for every `i, j < 8`, and the two
/// regions must not overlap.
#[cfg(all(target_arch = "x86_64", target_feature = "avx"))]
#[inline]
unsafe fn transpose8x8_avx(s: *const f32, ss: usize, d: *mut f32, ds: usize) {
    use std::arch::x86_64::*;
    let r: [__m256; 8] = std::array::from_fn(|k| _mm256_loadu_ps(s.add(k * ss)));
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    let out = [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ];
    for (k, v) in out.iter().enumerate() {
        _mm256_storeu_ps(d.add(k * ds), *v);
    }
}

/// The elements of a contiguous layout as a slice of its storage; an error naming `what`
/// otherwise (custom ops that need contiguous operands make them so before they are applied).
#[doc(hidden)]
pub fn contiguous_slice<'a, T>(data: &'a [T], l: &Layout, what: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("{what}: expects a contiguous tensor"),
    }
}

/// `a += v · b` over two slices of one length.
#[inline]
pub(crate) fn axpy<T: Elem>(a: &mut [T], v: T, b: &[T]) {
    for (a, &b) in a.iter_mut().zip(b) {
        *a += v * b;
    }
}

/// `a += b` element by element (the reduction of per-thread accumulators).
pub(crate) fn add_into<T: Elem>(a: &mut [T], b: &[T]) {
    for (a, &b) in a.iter_mut().zip(b) {
        *a += b;
    }
}

/// A buffer of `rows × len` elements whose every row is written by `fill(row index, row)` on
/// rayon's threads (at least `min_rows` rows per task): no zero fill first, since nothing is
/// left unwritten.
///
/// # Safety
/// `fill` must write every element of the row it is given.
pub(crate) unsafe fn rows_filled<T: Send>(
    rows: usize,
    len: usize,
    min_rows: usize,
    fill: impl Fn(usize, &mut [std::mem::MaybeUninit<T>]) + Sync + Send,
) -> Vec<T> {
    use rayon::prelude::*;
    let total = rows * len;
    let mut v: Vec<T> = Vec::with_capacity(total);
    if len > 0 {
        v.spare_capacity_mut()[..total]
            .par_chunks_mut(len)
            .with_min_len(min_rows.max(1))
            .enumerate()
            .for_each(|(q, row)| fill(q, row));
    }
    // SAFETY: `fill` wrote every element of every row (the caller's contract).
    unsafe { v.set_len(total) };
    v
}

/// A zero-filled buffer of `len` elements, filled by rayon's threads when it is large: a single
/// thread zeroing the tens of megabytes of a column block is a serial step every other thread
/// waits for (and the pages are then first touched by the threads that work on them).
#[doc(hidden)]
pub fn zeroed<T: Copy + Send + Sync + Default>(len: usize) -> Vec<T> {
    const CHUNK: usize = 1 << 16;
    if len < 4 * CHUNK || rayon::current_num_threads() == 1 {
        return vec![T::default(); len];
    }
    let mut v: Vec<T> = Vec::with_capacity(len);
    {
        use rayon::prelude::*;
        v.spare_capacity_mut()[..len].par_chunks_mut(CHUNK).for_each(|c| {
            for e in c {
                e.write(T::default());
            }
        });
    }
    // SAFETY: the first `len` elements were all initialised just above.
    unsafe { v.set_len(len) };
    v
}

/// Whether the kernels apply to these tensors: all on the CPU, all of one float dtype (f32 or
/// f64), and Candle's own ops not forced by the tuning.
fn cpu_float(ts: &[&Tensor]) -> bool {
    !tuning().candle
        && ts.iter().all(|t| t.device().is_cpu() && t.dtype() == ts[0].dtype())
        && matches!(ts[0].dtype(), DType::F32 | DType::F64)
}

/// Knobs of the kernels' scheduling, exposed for benchmarks; the defaults were measured on a
/// 2-core machine (see `benches/`).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tuning {
    /// Target size in bytes of the per-task patch buffer: images are grouped into one gemm
    /// until their patch matrices fill it.
    pub group_bytes: usize,
    /// Tasks per rayon thread when splitting the batch (more tasks balance load better).
    pub tasks_per_thread: usize,
    /// Below this many multiply-adds in total, run on the calling thread only.
    pub serial_macs: usize,
    /// Use gemm's own threading on one task instead of splitting the batch over rayon.
    pub gemm_threads: bool,
    /// Route every call to Candle's own convolutions (for before/after comparisons).
    pub candle: bool,
    /// Visit the non-zeros only when fewer than this fraction of an operand is non-zero (and the
    /// dense product costs enough per element to pay for finding them): the input of a
    /// convolution or linear layer, the gradient in their input and kernel gradients (0 turns
    /// it off).
    pub sparse_below: f64,
}

impl Tuning {
    /// The defaults.
    pub const DEFAULT: Tuning = Tuning {
        group_bytes: 256 << 10,
        tasks_per_thread: 4,
        serial_macs: 1 << 18,
        gemm_threads: false,
        candle: false,
        sparse_below: 0.05,
    };
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning::DEFAULT
    }
}

static TUNING: RwLock<Tuning> = RwLock::new(Tuning::DEFAULT);

/// The scheduling knobs in force.
#[doc(hidden)]
pub fn tuning() -> Tuning {
    *TUNING.read().unwrap_or_else(|e| e.into_inner())
}

/// Changes the scheduling knobs (for benchmarks).
#[doc(hidden)]
pub fn set_tuning(t: Tuning) {
    *TUNING.write().unwrap_or_else(|e| e.into_inner()) = t;
}

/// Whether the fast path applies: [`cpu_float`] tensors of rank 4.
fn fast_path(a: &Tensor, b: &Tensor) -> bool {
    cpu_float(&[a, b]) && a.rank() == 4 && b.rank() == 4
}

/// Whether columns `x` (rank > 4, leading dims that merge) can go to the ops directly.
fn fast_columns(x: &Tensor, w: &Tensor) -> bool {
    cpu_float(&[x, w]) && x.rank() > 4 && w.rank() == 4 && as_rank4(x.layout()).is_ok()
}

/// [`conv2d_fast`] on columns `[B, n, c, h, w]` (any rank ≥ 4: the leading dims are merged into
/// the batch inside the op, so no reshape enters the autograd graph) → `[B, n, o, oh, ow]`.
pub fn conv2d_columns(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    if !fast_columns(x, w) {
        let y = conv2d_fast(&to_rank4(x)?, w, stride, padding)?;
        return like_leading(&y, x);
    }
    x.apply_op2(w, Conv2dOp { stride, padding })
}

/// [`conv_transpose2d_fast`] on columns of any rank ≥ 4, like [`conv2d_columns`].
pub fn conv_transpose2d_columns(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    output_padding: usize,
) -> Result<Tensor> {
    if !fast_columns(x, w) {
        let y = conv_transpose2d_fast(&to_rank4(x)?, w, stride, padding, output_padding)?;
        return like_leading(&y, x);
    }
    x.apply_op2(w, ConvTranspose2dOp { stride, padding, output_padding: (output_padding, output_padding) })
}

/// Output size of a convolution along one axis, or an error when the kernel does not fit.
fn conv_out(len: usize, k: usize, stride: usize, padding: usize) -> Result<usize> {
    if stride == 0 {
        bail!("conv2d: stride must be positive");
    }
    match (len + 2 * padding).checked_sub(k) {
        Some(v) => Ok(v / stride + 1),
        None => bail!("conv2d: kernel {k} larger than the padded input {}", len + 2 * padding),
    }
}

/// Output size of a transposed convolution along one axis.
fn conv_transpose_out(len: usize, k: usize, stride: usize, padding: usize, output_padding: usize) -> Result<usize> {
    if stride == 0 {
        bail!("conv_transpose2d: stride must be positive");
    }
    if output_padding >= stride {
        bail!("conv_transpose2d: output padding {output_padding} must be smaller than the stride {stride}");
    }
    if len == 0 {
        bail!("conv_transpose2d: empty input");
    }
    match ((len - 1) * stride + k + output_padding).checked_sub(2 * padding) {
        Some(v) if v > 0 => Ok(v),
        _ => bail!("conv_transpose2d: padding {padding} leaves an empty output"),
    }
}

/// The output padding that makes a transposed convolution give back an input of size `len`.
fn output_padding_for(len: usize, k: usize, stride: usize, padding: usize) -> Result<usize> {
    let out = conv_out(len, k, stride, padding)?;
    Ok(len + 2 * padding - ((out - 1) * stride + k))
}

fn dims4(l: &Layout) -> Result<(usize, usize, usize, usize)> {
    match l.dims() {
        &[a, b, c, d] => Ok((a, b, c, d)),
        d => bail!("expected a rank-4 tensor, got shape {d:?}"),
    }
}

/// A layout of rank ≥ 4 seen as rank 4, `[Π leading dims, c, h, w]`: the leading dims (columns
/// of examples, `[B, n, c, h, w]`) must merge into one strided axis. This lets the dual network
/// convolve its `[B, n, ...]` columns without reshapes, each of which would add a node (and, for
/// a strided view, a full-size copy) to Candle's backward pass.
fn as_rank4(l: &Layout) -> Result<Layout> {
    let d = l.dims();
    let s = l.stride();
    if d.len() == 4 {
        return Ok(l.clone());
    }
    if d.len() < 4 {
        bail!("expected a tensor of rank 4 or more, got shape {d:?}");
    }
    let lead = d.len() - 3;
    let n: usize = d[..lead].iter().product();
    // The merged axis steps by the stride of the innermost leading dim that is not 1; every
    // outer one (dims of size 1 aside) must step by the inner one's whole extent.
    let mut step: Option<usize> = None;
    let mut expect = 0;
    for i in (0..lead).rev().filter(|&i| d[i] != 1) {
        if step.is_some() && s[i] != expect {
            bail!("the leading dimensions of {d:?} (strides {s:?}) do not merge into one axis");
        }
        step.get_or_insert(s[i]);
        expect = s[i] * d[i];
    }
    let step = step.unwrap_or(s[lead - 1]);
    Ok(Layout::new(
        Shape::from((n, d[lead], d[lead + 1], d[lead + 2])),
        vec![step, s[lead], s[lead + 1], s[lead + 2]],
        l.start_offset(),
    ))
}

/// The shape of an op's rank-4 result `[n, a, b, c]` with the leading dims of `like` restored.
fn with_leading(like: &Layout, tail: (usize, usize, usize)) -> Shape {
    let d = like.dims();
    let mut v = d[..d.len() - 3].to_vec();
    v.extend_from_slice(&[tail.0, tail.1, tail.2]);
    Shape::from(v)
}

/// `t` of rank ≥ 4 as rank 4 (merging the leading dims, a view when they are contiguous).
fn to_rank4(t: &Tensor) -> Result<Tensor> {
    if t.rank() == 4 {
        return Ok(t.clone());
    }
    let d = t.dims();
    let lead = d.len() - 3;
    let n: usize = d[..lead].iter().product();
    t.reshape((n, d[lead], d[lead + 1], d[lead + 2]))
}

/// `t` (rank 4) with the leading dims of `like` restored.
fn like_leading(t: &Tensor, like: &Tensor) -> Result<Tensor> {
    if like.rank() == 4 {
        return Ok(t.clone());
    }
    let (_, a, b, c) = t.dims4()?;
    t.reshape(with_leading(like.layout(), (a, b, c)))
}

fn view<'a, T>(data: &'a [T], l: &Layout) -> View4<'a, T> {
    let s = l.stride();
    View4 { data, start: l.start_offset(), stride: [s[0], s[1], s[2], s[3]] }
}

/// The elements of a rank-4 layout in row-major order.
fn gather<T: Copy>(data: &[T], l: &Layout) -> Vec<T> {
    if let Some((a, b)) = l.contiguous_offsets() {
        return data[a..b].to_vec();
    }
    let d = l.dims();
    let s = l.stride();
    let mut out = Vec::with_capacity(d.iter().product());
    for i0 in 0..d[0] {
        for i1 in 0..d[1] {
            for i2 in 0..d[2] {
                let base = l.start_offset() + i0 * s[0] + i1 * s[1] + i2 * s[2];
                out.extend((0..d[3]).map(|i3| data[base + i3 * s[3]]));
            }
        }
    }
    out
}

/// A kernel `[o, c, kh, kw]` as a contiguous `[o, k]` slice (borrowed when already contiguous).
fn kernel_matrix<'a, T: Copy>(data: &'a [T], l: &Layout) -> std::borrow::Cow<'a, [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => std::borrow::Cow::Borrowed(&data[a..b]),
        None => std::borrow::Cow::Owned(gather(data, l)),
    }
}

/// Runs `f` on a view of the `[n, o, oh, ow]` side whose pixels form one strided axis, copying
/// the tensor into a contiguous buffer first when they do not.
fn with_matrix_side<T: Copy, R>(data: &[T], l: &Layout, f: impl FnOnce(View4<'_, T>, usize) -> R) -> R {
    let v = view(data, l);
    let d = l.dims();
    match v.pixel_stride(d[2], d[3]) {
        Some(ps) => f(v, ps),
        None => {
            let owned = gather(data, l);
            let (c, h, w) = (d[1], d[2], d[3]);
            f(View4 { data: &owned, start: 0, stride: [c * h * w, h * w, w, 1] }, 1)
        }
    }
}

/// `conv2d(x, w)` as a custom op on `(x, w)`.
struct Conv2dOp {
    stride: usize,
    padding: usize,
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "conv2d-gemm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let full = l1;
        let l1 = &as_rank4(l1)?;
        let (n, c, h, w) = dims4(l1)?;
        let (o, c2, kh, kw) = dims4(l2)?;
        if c != c2 {
            bail!("conv2d: input has {c} channels, kernel expects {c2}");
        }
        let (oh, ow) = (conv_out(h, kh, self.stride, self.padding)?, conv_out(w, kw, self.stride, self.padding)?);
        let g = Geom { n, c, h, w, o, kh, kw, stride: self.stride, pad: self.padding, oh, ow };
        // Each input element costs about `macs_per_image / in_len` multiply-adds in the gemm.
        let limit = sparse::density_limit(g.macs_per_image() / g.in_len().max(1));
        let out = dispatch!("conv2d", s1, s2; |x, k| {
            let xv = view(x, l1);
            if !g.is_pointwise() && sparse::mostly_zero([n, c, h, w], xv, limit) {
                sparse::conv2d_forward(&g, xv, &kernel_matrix(k, l2))
            } else {
                gemm_conv::conv2d_forward(&g, xv, &kernel_matrix(k, l2))
            }
        });
        Ok((out, with_leading(full, (o, oh, ow))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (x4, g4) = (to_rank4(x)?, to_rank4(grad)?);
        let (_, _, h, wd) = x4.dims4()?;
        let (_, _, kh, kw) = w.dims4()?;
        let dx = if x.track_op() {
            let op_h = output_padding_for(h, kh, self.stride, self.padding)?;
            let op_w = output_padding_for(wd, kw, self.stride, self.padding)?;
            let dx = conv_transpose2d_fast_hw(&g4, w, self.stride, self.padding, (op_h, op_w))?;
            Some(like_leading(&dx, x)?)
        } else {
            None
        };
        let dw =
            if w.track_op() { Some(conv2d_weight_grad(&x4, &g4, (kh, kw), self.stride, self.padding)?) } else { None };
        Ok((dx, dw))
    }
}

/// `conv_transpose2d(x, w)` as a custom op on `(x, w)`, with a per-axis output padding.
struct ConvTranspose2dOp {
    stride: usize,
    padding: usize,
    output_padding: (usize, usize),
}

impl CustomOp2 for ConvTranspose2dOp {
    fn name(&self) -> &'static str {
        "conv-transpose2d-gemm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let full = l1;
        let l1 = &as_rank4(l1)?;
        let (n, o, oh, ow) = dims4(l1)?;
        let (o2, c, kh, kw) = dims4(l2)?;
        if o != o2 {
            bail!("conv_transpose2d: input has {o} channels, kernel expects {o2}");
        }
        let (s, p) = (self.stride, self.padding);
        let h = conv_transpose_out(oh, kh, s, p, self.output_padding.0)?;
        let w = conv_transpose_out(ow, kw, s, p, self.output_padding.1)?;
        let g = Geom { n, c, h, w, o, kh, kw, stride: s, pad: p, oh, ow };
        let limit = sparse::density_limit(g.k());
        let out = dispatch!("conv_transpose2d", s1, s2; |x, k| {
            let k = kernel_matrix(k, l2);
            if sparse::mostly_zero([n, o, oh, ow], view(x, l1), limit) {
                sparse::conv2d_backward_data(&g, view(x, l1), &k)
            } else {
                with_matrix_side(x, l1, |y, ps| gemm_conv::conv2d_backward_data(&g, y, ps, &k))
            }
        });
        Ok((out, with_leading(full, (c, h, w))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (x4, g4) = (to_rank4(x)?, to_rank4(grad)?);
        let (_, _, kh, kw) = w.dims4()?;
        let dx =
            if x.track_op() { Some(like_leading(&conv2d_fast(&g4, w, self.stride, self.padding)?, x)?) } else { None };
        let dw =
            if w.track_op() { Some(conv2d_weight_grad(&g4, &x4, (kh, kw), self.stride, self.padding)?) } else { None };
        Ok((dx, dw))
    }
}

/// The kernel gradient of `conv2d`: `(x, gy) ↦ dW` as a custom op.
struct Conv2dWeightGradOp {
    kernel: (usize, usize),
    stride: usize,
    padding: usize,
}

impl CustomOp2 for Conv2dWeightGradOp {
    fn name(&self) -> &'static str {
        "conv2d-weight-grad-gemm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = dims4(l1)?;
        let (n2, o, oh, ow) = dims4(l2)?;
        let (kh, kw) = self.kernel;
        let (s, p) = (self.stride, self.padding);
        if n != n2 {
            bail!("conv2d weight gradient: batch {n} of the input differs from batch {n2} of the gradient");
        }
        if (oh, ow) != (conv_out(h, kh, s, p)?, conv_out(w, kw, s, p)?) {
            bail!("conv2d weight gradient: gradient of size {oh}x{ow} does not match an input of size {h}x{w}");
        }
        let g = Geom { n, c, h, w, o, kh, kw, stride: s, pad: p, oh, ow };
        let limit = sparse::density_limit(g.k());
        let out = dispatch!("conv2d weight gradient", s1, s2; |x, gy| {
            if sparse::mostly_zero([n, o, oh, ow], view(gy, l2), limit) {
                sparse::conv2d_backward_weight(&g, view(x, l1), view(gy, l2))
            } else {
                with_matrix_side(gy, l2, |gyv, ps| gemm_conv::conv2d_backward_weight(&g, view(x, l1), gyv, ps))
            }
        });
        Ok((out, Shape::from((o, c, kh, kw))))
    }

    fn bwd(&self, x: &Tensor, gy: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // dW is bilinear in (x, gy): dW = <gy, conv2d(x, ·)>.
        let (_, _, h, w) = x.dims4()?;
        let (kh, kw) = self.kernel;
        let (s, p) = (self.stride, self.padding);
        let dx = if x.track_op() {
            let op = (output_padding_for(h, kh, s, p)?, output_padding_for(w, kw, s, p)?);
            Some(conv_transpose2d_fast_hw(gy, grad, s, p, op)?)
        } else {
            None
        };
        let dgy = if gy.track_op() { Some(conv2d_fast(x, grad, s, p)?) } else { None };
        Ok((dx, dgy))
    }
}

/// `conv2d(x, w)` with stride and zero padding (dilation 1, one group): `x` `[n, c, h, w]`,
/// `w` `[o, c, kh, kw]` → `[n, o, oh, ow]`. Same result as Candle's
/// `x.conv2d(w, padding, stride, 1, 1)`, with gemm speed on the CPU.
pub fn conv2d_fast(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    if !fast_path(x, w) {
        return x.conv2d(w, padding, stride, 1, 1);
    }
    x.apply_op2(w, Conv2dOp { stride, padding })
}

/// `conv_transpose2d(x, w)`: `x` `[n, o, oh, ow]`, `w` `[o, c, kh, kw]` (the kernel of the
/// `conv2d` it transposes) → `[n, c, h, w]` with `h = (oh − 1)·stride + kh − 2·padding +
/// output_padding`. Same result as Candle's `x.conv_transpose2d(w, padding, output_padding,
/// stride, 1)`; `output_padding` must be smaller than `stride`.
pub fn conv_transpose2d_fast(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    output_padding: usize,
) -> Result<Tensor> {
    conv_transpose2d_fast_hw(x, w, stride, padding, (output_padding, output_padding))
}

/// [`conv_transpose2d_fast`] with separate output paddings for height and width.
pub fn conv_transpose2d_fast_hw(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    output_padding: (usize, usize),
) -> Result<Tensor> {
    if !fast_path(x, w) {
        if output_padding.0 != output_padding.1 {
            bail!("conv_transpose2d: per-axis output padding is only supported on the CPU in f32/f64");
        }
        return x.conv_transpose2d(w, padding, output_padding.0, stride, 1);
    }
    x.apply_op2(w, ConvTranspose2dOp { stride, padding, output_padding })
}

/// The kernel gradient of `y = conv2d(x, w)` for the output gradient `gy`:
/// `dW[o, c, i, j] = Σ_{n, y, x} gy[n, o, y, x] · x_pad[n, c, y·stride + i, x·stride + j]`, shape
/// `[o, c, kh, kw]`. Differentiable in both arguments.
pub fn conv2d_weight_grad(
    x: &Tensor,
    gy: &Tensor,
    kernel: (usize, usize),
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    if !fast_path(x, gy) {
        // Candle's own formula: a convolution over the batch with the gradient as the kernel.
        let gw = x.transpose(0, 1)?.conv2d(&gy.transpose(0, 1)?, padding, 1, stride, 1)?.transpose(0, 1)?;
        return gw.narrow(2, 0, kernel.0)?.narrow(3, 0, kernel.1);
    }
    x.apply_op2(gy, Conv2dWeightGradOp { kernel, stride, padding })
}
