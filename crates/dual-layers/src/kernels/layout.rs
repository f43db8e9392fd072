//! Layouts of the convolution kernels' operands: rank ≥ 4 columns seen as rank 4, strided views,
//! and contiguous copies where a kernel needs them.

use super::gemm_conv::View4;
use candle_core::{bail, Layout, Result, Shape, Tensor};

pub(super) fn dims4(l: &Layout) -> Result<(usize, usize, usize, usize)> {
    match l.dims() {
        &[a, b, c, d] => Ok((a, b, c, d)),
        d => bail!("expected a rank-4 tensor, got shape {d:?}"),
    }
}

/// A layout of rank ≥ 4 seen as rank 4, `[Π leading dims, c, h, w]`: the leading dims (columns
/// of examples, `[B, n, c, h, w]`) must merge into one strided axis. This lets the dual network
/// convolve its `[B, n, ...]` columns without reshapes, each of which would add a node (and, for
/// a strided view, a full-size copy) to Candle's backward pass.
pub(super) fn as_rank4(l: &Layout) -> Result<Layout> {
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
pub(super) fn with_leading(like: &Layout, tail: (usize, usize, usize)) -> Shape {
    let d = like.dims();
    let mut v = d[..d.len() - 3].to_vec();
    v.extend_from_slice(&[tail.0, tail.1, tail.2]);
    Shape::from(v)
}

/// `t` of rank ≥ 4 as rank 4 (merging the leading dims, a view when they are contiguous).
pub(super) fn to_rank4(t: &Tensor) -> Result<Tensor> {
    if t.rank() == 4 {
        return Ok(t.clone());
    }
    let d = t.dims();
    let lead = d.len() - 3;
    let n: usize = d[..lead].iter().product();
    t.reshape((n, d[lead], d[lead + 1], d[lead + 2]))
}

/// `t` (rank 4) with the leading dims of `like` restored.
pub(super) fn like_leading(t: &Tensor, like: &Tensor) -> Result<Tensor> {
    if like.rank() == 4 {
        return Ok(t.clone());
    }
    let (_, a, b, c) = t.dims4()?;
    t.reshape(with_leading(like.layout(), (a, b, c)))
}

pub(super) fn view<'a, T>(data: &'a [T], l: &Layout) -> View4<'a, T> {
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
pub(super) fn kernel_matrix<'a, T: Copy>(data: &'a [T], l: &Layout) -> std::borrow::Cow<'a, [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => std::borrow::Cow::Borrowed(&data[a..b]),
        None => std::borrow::Cow::Owned(gather(data, l)),
    }
}

/// Runs `f` on a view of the `[n, o, oh, ow]` side whose pixels form one strided axis, copying
/// the tensor into a contiguous buffer first when they do not.
pub(super) fn with_matrix_side<T: Copy, R>(data: &[T], l: &Layout, f: impl FnOnce(View4<'_, T>, usize) -> R) -> R {
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
