//! Buffers and slices of CPU storage shared by the kernels: a contiguous layout's elements, a
//! zeroed buffer filled in parallel, a buffer whose rows are written in parallel without a zero
//! fill, and the two vector updates of the sparse products.

use super::Elem;
use candle_core::{bail, Layout, Result};

/// The elements of a contiguous layout as a slice of its storage; an error naming `what`
/// otherwise (custom ops that need contiguous operands make them so before they are applied).
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

/// `Σ_i f(a_i) · b_i` in eight running sums (lanes `i mod 8`), added pairwise at the end: a
/// single running sum is a chain of dependent additions the compiler may not reorder (float
/// addition is not associative), so it runs one add per add-latency; eight lanes vectorise. The
/// sum's rounding differs from the sequential order by a few ulps.
#[inline]
pub(crate) fn dot_lanes<T: Elem>(a: &[T], b: &[T], f: impl Fn(T) -> T) -> T {
    let mut lanes = [T::ZERO; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            lanes[l] += f(x[l]) * y[l];
        }
    }
    let mut tail = T::ZERO;
    for (&x, &y) in ar.iter().zip(br) {
        tail += f(x) * y;
    }
    sum_lanes(lanes) + tail
}

/// The eight running sums of [`dot_lanes`] added pairwise (a fixed order: the same numbers
/// wherever lanes are kept).
#[inline]
pub(crate) fn sum_lanes<T: Elem>(lanes: [T; 8]) -> T {
    ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]))
}

/// A zero-filled buffer of `len` elements, filled by rayon's threads when it is large: a single
/// thread zeroing the tens of megabytes of a column block is a serial step every other thread
/// waits for (and the pages are then first touched by the threads that work on them).
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

/// `out[i] = f(i)` for `i < n`, computed in parallel rows of `row` elements (on one thread below
/// `min_rows` rows).
pub(crate) fn par_fill<T: Elem>(n: usize, row: usize, min_rows: usize, f: impl Fn(usize) -> T + Sync + Send) -> Vec<T> {
    let rows = n.div_ceil(row);
    // SAFETY: every element of every row is written (the last row is cut to `n`).
    let mut v = unsafe {
        rows_filled(rows, row, min_rows, |q, r| {
            for (i, o) in r.iter_mut().enumerate() {
                let j = q * row + i;
                o.write(if j < n { f(j) } else { T::ZERO });
            }
        })
    };
    v.truncate(n);
    v
}
