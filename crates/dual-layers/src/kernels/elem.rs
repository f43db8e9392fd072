//! The element type of the kernels (`f32`, `f64`) and its matrix transpose (8×8 AVX tiles for
//! `f32` when the build has AVX).

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
    + dual_core::scratch::ScratchElem
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
