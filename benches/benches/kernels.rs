//! The convolution kernels on the dual network's shapes, in GFLOP/s (criterion prints
//! `Gelem/s`, one element per floating-point operation), next to Candle's own convolutions and
//! a plain matmul of the same FLOP count in the same run.
//!
//! Shapes: the small MNIST model at batch 10 pushes the 784 input columns of each example as
//! 7840 images through its convolutions:
//! * layer 1: `[7840, 1, 28, 28]` → 16 filters 4x4, stride 2, padding 1;
//! * layer 2: `[7840, 16, 14, 14]` → 32 filters 4x4, stride 2, padding 1;
//!
//! each as conv2d (bounds), conv_transpose2d (the objective's backward pass, and conv2d's input
//! gradient) and the kernel gradient (training).

#![forbid(unsafe_code)]

use benches::{conv_flops, conv_out, uniform};
use candle_core::{DType, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use dual_layers::kernels::{conv2d_fast, conv2d_weight_grad, conv_transpose2d_fast};
use std::time::Duration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Candle's kernel gradient of conv2d (what its backward pass computes).
fn candle_weight_grad(x: &Tensor, g: &Tensor, k: usize, stride: usize, padding: usize) -> candle_core::Result<Tensor> {
    let gw = x.transpose(0, 1)?.conv2d(&g.transpose(0, 1)?, padding, 1, stride, 1)?.transpose(0, 1)?;
    gw.narrow(2, 0, k)?.narrow(3, 0, k)
}

#[allow(clippy::too_many_arguments)]
fn conv_case(
    c: &mut Criterion,
    name: &str,
    dtype: DType,
    n: usize,
    cin: usize,
    hw: usize,
    cout: usize,
    k: usize,
    s: usize,
    p: usize,
    with_candle: bool,
) {
    let o = conv_out(hw, k, s, p);
    let op = hw + 2 * p - ((o - 1) * s + k);
    let flops = conv_flops(n, (cin, hw, hw), cout, k, s, p);
    let x = uniform(&[n, cin, hw, hw], -1.0, 1.0, dtype, 1).unwrap();
    let w = uniform(&[cout, cin, k, k], -0.5, 0.5, dtype, 2).unwrap();
    let g = uniform(&[n, cout, o, o], -1.0, 1.0, dtype, 3).unwrap();
    // The same FLOPs as one matmul: [n·oh·ow, c·k·k] x [c·k·k, o].
    let a = uniform(&[n * o * o, cin * k * k], -1.0, 1.0, dtype, 4).unwrap();
    let b = uniform(&[cin * k * k, cout], -1.0, 1.0, dtype, 5).unwrap();

    let mut group = c.benchmark_group(name);
    group.sample_size(10).sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(flops));
    group.bench_function("matmul_same_flops", |bch| bch.iter(|| a.matmul(&b).unwrap()));
    group.bench_function("conv2d/gemm", |bch| bch.iter(|| conv2d_fast(&x, &w, s, p).unwrap()));
    group.bench_function("conv_transpose2d/gemm", |bch| bch.iter(|| conv_transpose2d_fast(&g, &w, s, p, op).unwrap()));
    group.bench_function("weight_grad/gemm", |bch| bch.iter(|| conv2d_weight_grad(&x, &g, (k, k), s, p).unwrap()));
    if with_candle {
        group.bench_function("conv2d/candle", |bch| bch.iter(|| x.conv2d(&w, p, s, 1, 1).unwrap()));
        group
            .bench_function("conv_transpose2d/candle", |bch| bch.iter(|| g.conv_transpose2d(&w, p, op, s, 1).unwrap()));
        group.bench_function("weight_grad/candle", |bch| bch.iter(|| candle_weight_grad(&x, &g, k, s, p).unwrap()));
    }
    group.finish();
}

/// A square matmul: the machine's practical peak.
fn matmul_peak(c: &mut Criterion) {
    let mut group = c.benchmark_group("matmul_peak");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for dtype in [DType::F32, DType::F64] {
        let n = 1024;
        let a = uniform(&[n, n], -1.0, 1.0, dtype, 6).unwrap();
        let b = uniform(&[n, n], -1.0, 1.0, dtype, 7).unwrap();
        group.throughput(Throughput::Elements(2 * (n * n * n) as u64));
        group.bench_function(format!("{dtype:?}_1024"), |bch| bch.iter(|| a.matmul(&b).unwrap()));
    }
    group.finish();
}

fn kernels(c: &mut Criterion) {
    matmul_peak(c);
    conv_case(c, "mnist_conv2_b10_f32", DType::F32, 7840, 16, 14, 32, 4, 2, 1, true);
    conv_case(c, "mnist_conv1_b10_f32", DType::F32, 7840, 1, 28, 16, 4, 2, 1, true);
    conv_case(c, "mnist_conv2_b2_f64", DType::F64, 1568, 16, 14, 32, 4, 2, 1, true);
    // A stride-1 3x3 layer (the residual networks' shape) and a 1x1 layer.
    conv_case(c, "conv3x3_s1_f32", DType::F32, 512, 16, 16, 16, 3, 1, 1, true);
    conv_case(c, "conv1x1_f32", DType::F32, 512, 32, 16, 32, 1, 1, 0, true);
}

criterion_group!(benches, kernels);
criterion_main!(benches);
