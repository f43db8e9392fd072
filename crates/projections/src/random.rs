//! Seeded random projection matrices.
//!
//! Candle's CPU device cannot be seeded, so every projection is drawn on the host from a
//! [`StdRng`] (ChaCha12, reproducible across runs and platforms for a given `rand` version) and
//! turned into a tensor. Every source draws from its own stream: [`stream_seed`] mixes the user's
//! seed with a stream id (0 for the input set, the node index `t` for the ReLU at output `t`).

use candle_core::{DType, Device, Tensor};
use dual_core::Result;
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::{Cauchy, StandardNormal};

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

fn fill<T>(kind: Projection, out: &mut [T], seed: u64, conv: impl Fn(f64) -> T) {
    let mut rng = StdRng::seed_from_u64(seed);
    match kind {
        Projection::Cauchy => {
            let c = Cauchy::new(0.0, 1.0).expect("valid Cauchy parameters");
            out.iter_mut().for_each(|o| *o = conv(rng.sample(c)));
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
    let threads = std::thread::available_parallelism().map(|t| t.get()).unwrap_or(1).min(b);
    if threads <= 1 || out.len() < 1 << 16 {
        out.chunks_mut(per).enumerate().for_each(|(i, c)| f(i, c));
        return;
    }
    let group = b.div_ceil(threads);
    std::thread::scope(|s| {
        for (g, chunk) in out.chunks_mut(group * per).enumerate() {
            let f = &f;
            s.spawn(move || chunk.chunks_mut(per).enumerate().for_each(|(i, c)| f(g * group + i, c)));
        }
    });
}

/// The tensor `[B, k, *shape]` from per-example values `fill_one(example, &mut [k * K])`.
fn build(b: usize, k: usize, shape: &[usize], dtype: DType, device: &Device, fill_one: impl Fn(usize, &mut [f64]) + Sync, fill_one32: impl Fn(usize, &mut [f32]) + Sync) -> Result<Tensor> {
    let per: usize = shape.iter().product();
    let mut dims = vec![b, k];
    dims.extend_from_slice(shape);
    let t = match dtype {
        DType::F64 => {
            let mut v = vec![0f64; b * k * per];
            per_example(&mut v, b, fill_one);
            Tensor::from_vec(v, dims, device)?
        }
        _ => {
            let mut v = vec![0f32; b * k * per];
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
/// `(b, i, support[b][j])` is draw `i·|support[b]| + j` of stream `b` of `seed`.
pub fn projection_tensor_on(
    kind: Projection,
    k: usize,
    shape: &[usize],
    support: &[Vec<u32>],
    seed: u64,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let kk: usize = shape.iter().product();
    fn scatter<T: Copy>(kind: Projection, k: usize, kk: usize, idx: &[u32], seed: u64, out: &mut [T], conv: impl Fn(f64) -> T) {
        let mut vals = vec![0f64; k * idx.len()];
        fill(kind, &mut vals, seed, |x| x);
        for i in 0..k {
            for (j, &u) in idx.iter().enumerate() {
                out[i * kk + u as usize] = conv(vals[i * idx.len() + j]);
            }
        }
    }
    build(
        support.len(),
        k,
        shape,
        dtype,
        device,
        |i, c| scatter(kind, k, kk, &support[i], stream_seed(seed, i as u64), c, |x| x),
        |i, c| scatter(kind, k, kk, &support[i], stream_seed(seed, i as u64), c, |x| x as f32),
    )
}
