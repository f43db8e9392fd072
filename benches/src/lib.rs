//! Shared helpers of the criterion benchmarks in `benches/` (`cargo bench -p benches`):
//!
//! * `kernels`: the gemm convolution kernels of `dual_layers::kernels` next to Candle's own
//!   convolutions and a plain matmul with the same FLOP count, on the dual network's shapes.
//!   Throughput is reported in elements per second where one element is one floating-point
//!   operation, so `Gelem/s` reads as GFLOP/s.
//! * `bounds`: the exact layer-wise bounds and the robust loss (forward + backward) of the small
//!   MNIST model, with the gemm kernels and with Candle's convolutions.
//!
//! Examples for profiling without criterion: `conv_profile` (one kernel, GFLOP/s per wall and
//! per CPU second) and `bound_profile` (bounds / loss / backward split).
//!
//! Allocator: the binaries use mimalloc with its default settings, which returns freed memory
//! to the OS after 10 ms; the dual network then page-faults (the kernel zeroes transparent huge
//! pages) on most of its large tensors. `MIMALLOC_PURGE_DELAY=-1` in the environment keeps freed
//! memory instead and, in our measurements, halves the CPU time of a robust-loss step at batch 10.

#![forbid(unsafe_code)]

pub mod scaling;

use candle_core::{DType, Device, Result, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// A tensor of uniform samples in `[lo, hi)`, reproducible by `seed`.
pub fn uniform(shape: &[usize], lo: f64, hi: f64, dtype: DType, seed: u64) -> Result<Tensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(lo..hi) as f32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)
}

/// Random labels in `0..classes`.
pub fn labels(n: usize, classes: u32, seed: u64) -> Vec<u32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(0..classes)).collect()
}

/// Output side length of a convolution.
pub fn conv_out(len: usize, k: usize, stride: usize, padding: usize) -> usize {
    (len + 2 * padding - k) / stride + 1
}

/// Floating-point operations (2 per multiply-add) of `conv2d` on `[n, c, h, w]` (`input`) with
/// `o` filters of `k×k` — the same count for its transpose and its kernel gradient.
pub fn conv_flops(n: usize, input: (usize, usize, usize), o: usize, k: usize, stride: usize, padding: usize) -> u64 {
    let (c, h, w) = input;
    let p = conv_out(h, k, stride, padding) * conv_out(w, k, stride, padding);
    2 * (n * o * c * k * k * p) as u64
}
