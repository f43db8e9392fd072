//! How many columns (forward form) or rows (backward form) are propagated at once.
//!
//! A memory budget bounds the bytes held by the propagated tensors: a column of `B` examples at
//! its widest state of `w` elements takes `B · w · size_of(dtype)` bytes, times
//! [`BYTES_FACTOR`] for the temporaries of one layer. Chunks change only the order of summation,
//! never the set of terms: the bounds are the same up to rounding.

use candle_core::DType;
use std::ops::Range;

/// Propagated tensors and their temporaries take a few times the size of one state.
pub(super) const BYTES_FACTOR: usize = 4;

/// Without a memory budget, the rows of the backward form still go in chunks of about this
/// many bytes per state: the numbers are the same, the working set stays in memory that is
/// reused (a forward pass without gradients then peaks far lower, at no cost in speed).
pub(super) const BACKWARD_CHUNK_BYTES: usize = 256 << 20;

/// Bytes one column (or row) costs at its widest state: `B · widest · size_of(dtype) · BYTES_FACTOR`.
pub(super) fn bytes_per_column(batch: usize, widest: usize, dtype: DType) -> usize {
    batch * widest * dtype.size_in_bytes() * BYTES_FACTOR
}

/// Columns per chunk: as many as fit in `budget` bytes at `per_column` each, at least one and
/// at most `total` (one when `total` is 0).
pub(super) fn chunk_len(budget: usize, per_column: usize, total: usize) -> usize {
    (budget / per_column.max(1)).clamp(1, total.max(1))
}

/// The ranges `0..len, len..2·len, …` covering `0..total` (`len ≥ 1`).
pub(super) fn chunks(total: usize, len: usize) -> impl Iterator<Item = Range<usize>> {
    debug_assert!(len >= 1);
    (0..total).step_by(len.max(1)).map(move |s| s..(s + len).min(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_range_once_in_order() {
        for total in 0..20 {
            for len in 1..7 {
                let v: Vec<usize> = chunks(total, len).flatten().collect();
                assert_eq!(v, (0..total).collect::<Vec<_>>(), "total {total} len {len}");
                assert!(chunks(total, len).all(|r| !r.is_empty() && r.len() <= len));
            }
        }
    }

    #[test]
    fn chunk_len_fits_the_budget_and_is_at_least_one() {
        assert_eq!(chunk_len(100, 10, 1000), 10);
        assert_eq!(chunk_len(100, 10, 4), 4);
        assert_eq!(chunk_len(5, 10, 4), 1);
        assert_eq!(chunk_len(5, 0, 4), 4);
        assert_eq!(chunk_len(5, 10, 0), 1);
        assert_eq!(bytes_per_column(2, 3, DType::F32), 2 * 3 * 4 * BYTES_FACTOR);
    }
}
