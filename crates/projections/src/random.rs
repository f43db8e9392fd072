//! Seeded random projection matrices.
//!
//! Candle's CPU device cannot be seeded, so every projection is drawn on the host from a
//! [`StdRng`] (ChaCha12, reproducible across runs and platforms for a given `rand` version) and
//! turned into a tensor. Every source draws from its own stream: [`stream_seed`] mixes the user's
//! seed with a stream id (0 for the input set, the node index `t` for the ReLU at output `t`).

use candle_core::{DType, Device, Tensor};
use dual_core::Result;
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::StandardNormal;
use rayon::prelude::*;

/// The distribution of the entries of a projection matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Projection {
    /// Standard Cauchy entries: `rᵀa ~ Cauchy(0, ‖a‖₁)`, for l1 norms (median estimator).
    Cauchy,
    /// Standard normal entries: `rᵀa ~ N(0, ‖a‖₂²)`, for l2 norms (root-mean-square estimator).
    Normal,
}

/// SplitMix64 finaliser: a bijective mix of 64 bits.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The seed of stream `stream` under the user's `seed`: distinct streams (and distinct seeds)
/// give unrelated generators.
pub fn stream_seed(seed: u64, stream: u64) -> u64 {
    splitmix64(seed ^ splitmix64(stream.wrapping_add(0x005e_ed0f_9a3b)))
}

/// `n` i.i.d. draws from `kind`, from the generator seeded with `seed`.
pub fn draw(kind: Projection, n: usize, seed: u64) -> Vec<f64> {
    let mut v = vec![0.0; n];
    fill(kind, &mut v, seed, |x| x);
    v
}

/// `tan(x)` for `|x| ≤ π/4`: `x + x z P(z) / Q(z)` with `z = x²` (the rational approximation of
/// Cephes' `tan`, relative error ~2e-16 on this range).
#[inline]
fn tan_quarter(x: f64) -> f64 {
    const P: [f64; 3] = [-1.309_369_391_813_837_8e4, 1.153_516_648_385_874_2e6, -1.795_652_519_764_848_8e7];
    const Q: [f64; 4] =
        [1.368_129_634_706_929_5e4, -1.320_892_344_402_109_7e6, 2.500_838_018_233_579e7, -5.386_957_559_294_546e7];
    let z = x * x;
    let p = (P[0] * z + P[1]) * z + P[2];
    let q = (((z + Q[0]) * z + Q[1]) * z + Q[2]) * z + Q[3];
    x + x * z * p / q
}

/// A standard Cauchy draw from `u` uniform on the open interval (0, 1): `tan(π (u - ½))`, the
/// inverse of the Cauchy CDF, computed with `tan` on `[-π/4, π/4]` only — in the tails as
/// `∓1 / tan(π u')` with `u' = u` or `1 - u` (exact in floating point), so no digits are lost
/// near the poles. Several times faster than the library `tan`, and finite for every `u` in (0, 1).
#[inline]
pub fn cauchy_from_uniform(u: f64) -> f64 {
    // Written with selects rather than branches, so a loop over many draws vectorises.
    let (lo, hi) = (u < 0.25, u > 0.75);
    let y = if lo {
        u
    } else if hi {
        1.0 - u
    } else {
        u - 0.5
    };
    let t = tan_quarter(std::f64::consts::PI * y);
    let r = 1.0 / t;
    if lo {
        -r
    } else if hi {
        r
    } else {
        t
    }
}

fn fill<T>(kind: Projection, out: &mut [T], seed: u64, conv: impl Fn(f64) -> T) {
    let mut rng = StdRng::seed_from_u64(seed);
    match kind {
        Projection::Cauchy => {
            // Uniforms first, then the inverse CDF over the whole buffer (same values, one tight
            // loop the compiler vectorises).
            let mut u: Vec<f64> = (0..out.len()).map(|_| rng.sample(rand_distr::Open01)).collect();
            u.iter_mut().for_each(|v| *v = cauchy_from_uniform(*v));
            out.iter_mut().zip(&u).for_each(|(o, &v)| *o = conv(v));
        }
        Projection::Normal => out.iter_mut().for_each(|o| *o = conv(rng.sample::<f64, _>(StandardNormal))),
    }
}

/// Runs `f(example, chunk)` over the `b` equal chunks of `out`, in parallel when it is large.
fn per_example<T: Send>(out: &mut [T], b: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    if b == 0 || out.is_empty() {
        return;
    }
    let per = out.len() / b;
    // Rayon's pool (see `estimate::median_indices`).
    let threads = rayon::current_num_threads().min(b);
    if threads <= 1 || out.len() < 1 << 16 {
        out.chunks_mut(per).enumerate().for_each(|(i, c)| f(i, c));
        return;
    }
    let group = b.div_ceil(threads);
    out.par_chunks_mut(group * per)
        .enumerate()
        .for_each(|(g, chunk)| chunk.chunks_mut(per).enumerate().for_each(|(i, c)| f(g * group + i, c)));
}

/// The tensor `[B, k, *shape]` from per-example values `fill_one(example, &mut [k * K])`.
fn build(
    b: usize,
    k: usize,
    shape: &[usize],
    dtype: DType,
    device: &Device,
    fill_one: impl Fn(usize, &mut [f64]) + Sync,
    fill_one32: impl Fn(usize, &mut [f32]) + Sync,
) -> Result<Tensor> {
    let per: usize = shape.iter().product();
    let mut dims = vec![b, k];
    dims.extend_from_slice(shape);
    let t = match dtype {
        DType::F64 => {
            let mut v = dual_layers::kernels::cpu::zeroed::<f64>(b * k * per);
            per_example(&mut v, b, fill_one);
            Tensor::from_vec(v, dims, device)?
        }
        _ => {
            let mut v = dual_layers::kernels::cpu::zeroed::<f32>(b * k * per);
            per_example(&mut v, b, fill_one32);
            Tensor::from_vec(v, dims, device)?.to_dtype(dtype)?
        }
    };
    Ok(t)
}

/// A random matrix `[B, k, *shape]` with i.i.d. entries of `kind` (independent across examples,
/// projections and features), in `dtype` on `device`. Example `b` draws from stream `b` of
/// `seed`, so the values do not depend on the number of threads.
pub fn projection_tensor(
    kind: Projection,
    b: usize,
    k: usize,
    shape: &[usize],
    seed: u64,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    build(
        b,
        k,
        shape,
        dtype,
        device,
        |i, c| fill(kind, c, stream_seed(seed, i as u64), |x| x),
        |i, c| fill(kind, c, stream_seed(seed, i as u64), |x| x as f32),
    )
}

/// Like [`projection_tensor`] for `K` features, but with non-zero entries only at the features
/// `support[b]` of example `b` (zero elsewhere): only `k·|support[b]|` values are drawn. Entry
/// `(b, i, support[b][j])` is draw `i·|support[b]| + j` of stream `b` of `seed`. With
/// `leading_ones` a row of ones comes first (`[B, 1 + k, *shape]`, the draws in rows `1..`): the
/// projected ReLU's columns are this times its weights, without a concatenation.
#[allow(clippy::too_many_arguments)]
pub fn projection_tensor_on(
    kind: Projection,
    k: usize,
    shape: &[usize],
    support: &[Vec<u32>],
    seed: u64,
    dtype: DType,
    device: &Device,
    leading_ones: bool,
) -> Result<Tensor> {
    let kk: usize = shape.iter().product();
    let lead = leading_ones as usize;
    /// Example's draws into `out` (`[lead + k, K]`): row 0 ones when `lead` is 1, then the draws
    /// at the support.
    fn scatter<T: Copy>(
        kind: Projection,
        k: usize,
        kk: usize,
        lead: usize,
        idx: &[u32],
        seed: u64,
        out: &mut [T],
        conv: impl Fn(f64) -> T,
    ) {
        let vals = draws_at(kind, k, idx.len(), seed);
        out[..lead * kk].iter_mut().for_each(|v| *v = conv(1.0));
        for i in 0..k {
            for (j, &u) in idx.iter().enumerate() {
                out[(lead + i) * kk + u as usize] = conv(vals[i * idx.len() + j]);
            }
        }
    }
    build(
        support.len(),
        k + lead,
        shape,
        dtype,
        device,
        |i, c| scatter(kind, k, kk, lead, &support[i], stream_seed(seed, i as u64), c, |x| x),
        |i, c| scatter(kind, k, kk, lead, &support[i], stream_seed(seed, i as u64), c, |x| x as f32),
    )
}

/// The `k · m` draws of one example with `m` supported features, in the order
/// [`projection_tensor_on`] places them (draw `i·m + j` for projection `i`, feature `j`).
pub(crate) fn draws_at(kind: Projection, k: usize, m: usize, seed: u64) -> Vec<f64> {
    let mut vals = vec![0f64; k * m];
    fill(kind, &mut vals, seed, |x| x);
    vals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cauchy_from_uniform_is_the_inverse_cdf() {
        for i in 1..200_000 {
            let u = i as f64 / 200_000.0;
            // Near the poles tan(π(u - ½)) loses digits to the rounding of its argument; the
            // cotangent form is exact there.
            let pi = std::f64::consts::PI;
            let want = if u < 0.25 {
                -1.0 / (pi * u).tan()
            } else if u > 0.75 {
                1.0 / (pi * (1.0 - u)).tan()
            } else {
                (pi * (u - 0.5)).tan()
            };
            let got = cauchy_from_uniform(u);
            assert!((got - want).abs() <= 1e-12 * want.abs().max(1.0), "u {u}: {got} vs {want}");
        }
        assert!(cauchy_from_uniform(1e-300).is_finite() && cauchy_from_uniform(1.0 - 1e-16).is_finite());
    }

    #[test]
    fn cauchy_draws_have_the_cauchy_quantiles() {
        // P(|X| ≤ tan(π q / 2)) = q for a standard Cauchy X.
        let v = draw(Projection::Cauchy, 400_000, 9);
        for q in [0.1, 0.25, 0.5, 0.75, 0.9, 0.99] {
            let x = (std::f64::consts::PI * q / 2.0).tan();
            let frac = v.iter().filter(|d| d.abs() <= x).count() as f64 / v.len() as f64;
            assert!((frac - q).abs() < 0.004, "quantile {q}: {frac}");
        }
    }
}
