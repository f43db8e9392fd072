//! The f32 matrix-multiply rate of this CPU through the gemm crate (the microkernels our
//! convolutions and linear layers run on), for roofline arguments: square products of sizes
//! `N` on 1 and on all threads, best of 5 after a warm-up, GFLOP/s = 2·N³ / s.
//!
//! `cargo run --release -p dual-layers --example gemm_peak [N ...]` (default 256 512 1024 2048).

use gemm::Parallelism;
use std::time::Instant;

fn rate(n: usize, par: Parallelism) -> f64 {
    let a: Vec<f32> = (0..n * n).map(|i| ((i * 7919) % 1000) as f32 * 1e-3).collect();
    let b: Vec<f32> = (0..n * n).map(|i| ((i * 104729) % 1000) as f32 * 1e-3).collect();
    let mut c = vec![0f32; n * n];
    let mut best = f64::INFINITY;
    for rep in 0..6 {
        let t0 = Instant::now();
        // SAFETY: all three are n×n row-major buffers of the stated strides.
        unsafe {
            gemm::gemm(
                n,
                n,
                n,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                n as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
        if rep > 0 {
            best = best.min(t0.elapsed().as_secs_f64());
        }
    }
    std::hint::black_box(&c);
    2.0 * (n as f64).powi(3) / best / 1e9
}

fn main() {
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|s| s.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![256, 512, 1024, 2048] } else { sizes };
    let threads = rayon::current_num_threads();
    let avx512 = std::arch::is_x86_feature_detected!("avx512f");
    println!("f32 gemm, AVX-512 {}: GFLOP/s (best of 5)", if avx512 { "yes" } else { "no" });
    println!("| N | 1 thread | {threads} threads |\n|---|---|---|");
    for n in sizes {
        println!("| {n} | {:.1} | {:.1} |", rate(n, Parallelism::None), rate(n, Parallelism::Rayon(threads)));
    }
}
