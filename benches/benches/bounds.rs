//! The exact dual network of the small MNIST model (random initialisation, l_inf ball of radius
//! 0.1 clipped to [0, 1]): the layer-wise bounds alone, and the robust loss forward + backward
//! (one training step's work), at batch 1 and 10, with the gemm kernels and with Candle's own
//! convolutions (`Tuning::candle`).

use benches::{labels, uniform};
use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use dual_core::{robust_loss, DualOptions};
use dual_layers::kernels::{set_tuning, Tuning};
use dual_layers::InfBallBounded;
use nets::Network;
use std::time::Duration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bound(net: &Network, x: &Tensor) -> dual_core::DualNetwork {
    let input = InfBallBounded::new(x, 0.1, 0.0, 1.0).unwrap();
    net.dual(x, Box::new(input), &DualOptions::default()).unwrap()
}

fn loss_step(net: &Network, x: &Tensor, y: &[u32]) -> f32 {
    let dual = bound(net, x);
    let rl = robust_loss(&dual, y).unwrap();
    let grads = rl.loss.backward().unwrap();
    std::hint::black_box(grads);
    rl.loss.to_scalar::<f32>().unwrap()
}

fn bounds(c: &mut Criterion) {
    let spec = nets::zoo::by_name("mnist-small").unwrap();
    let net = Network::init(&spec, 0, DType::F32, &Device::Cpu).unwrap();
    for batch in [1usize, 10] {
        let x = uniform(&[batch, 1, 28, 28], 0.0, 1.0, DType::F32, 11).unwrap();
        let y = labels(batch, 10, 12);
        let mut group = c.benchmark_group(format!("mnist_small_b{batch}"));
        group.sample_size(10).sampling_mode(SamplingMode::Flat);
        group.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(if batch == 1 { 3 } else { 10 }));
        for (name, t) in [("gemm", Tuning::DEFAULT), ("candle", Tuning { candle: true, ..Tuning::DEFAULT })] {
            set_tuning(t);
            group.bench_function(format!("bound/{name}"), |b| b.iter(|| bound(&net, &x)));
            group.bench_function(format!("robust_loss_fwd_bwd/{name}"), |b| b.iter(|| loss_step(&net, &x, &y)));
        }
        set_tuning(Tuning::DEFAULT);
        group.finish();
    }
}

criterion_group!(benches, bounds);
criterion_main!(benches);
