//! The issue-5 workloads under criterion: the robust loss of the dual network (l_inf ball of
//! radius 0.1 clipped to [0, 1]) — the bound forward only and forward + backward (one training
//! step's work), exact and with k = 50 projections — on the small MNIST model (the paper's
//! Fashion-MNIST weights from `../shared/models` when present, else a random initialisation) at
//! batch 1, 10 and 50, and on the large MNIST model (random initialisation, the worst case:
//! almost every ReLU unstable) at batch 1 and 10. At batch 10 the small model also runs with
//! Candle's own convolutions (`Tuning::candle`) for comparison.

#![forbid(unsafe_code)]

use benches::{labels, uniform};
use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use dual_layers::kernels::{set_tuning, Tuning};
use experiments::workloads::{run_workload, BoundKind, Workload};
use nets::Network;
use std::path::Path;
use std::time::Duration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EXACT: BoundKind = BoundKind::Exact;
const PROJ: BoundKind = BoundKind::Projected { k: 50 };

fn small_model() -> Network {
    let pth = Path::new("../shared/models/fashion_mnist_small_eps0.1.pth");
    if pth.is_file() {
        if let Ok(net) = nets::io::load_model(pth, Some("mnist-small"), DType::F32, &Device::Cpu) {
            return net;
        }
    }
    Network::init(&nets::zoo::by_name("mnist-small").expect("zoo model"), 0, DType::F32, &Device::Cpu).expect("init")
}

fn run(net: &Network, x: &Tensor, y: &[u32], w: Workload) -> f64 {
    run_workload(net, x, y, 0.1, true, w, 0).expect("workload").loss
}

fn group(
    c: &mut Criterion,
    name: &str,
    net: &Network,
    batch: usize,
    workloads: &[Workload],
    seconds: u64,
    with_candle: bool,
) {
    let x = uniform(&[batch, 1, 28, 28], 0.0, 1.0, DType::F32, 11).expect("input");
    let y = labels(batch, 10, 12);
    let mut g = c.benchmark_group(format!("{name}_b{batch}"));
    g.sample_size(10).sampling_mode(SamplingMode::Flat);
    g.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(seconds));
    for &w in workloads {
        g.bench_function(w.name(), |b| b.iter(|| run(net, &x, &y, w)));
    }
    if with_candle {
        set_tuning(Tuning { candle: true, ..Tuning::DEFAULT });
        for &w in workloads.iter().filter(|w| w.bound == EXACT) {
            g.bench_function(format!("{}/candle-convs", w.name()), |b| b.iter(|| run(net, &x, &y, w)));
        }
        set_tuning(Tuning::DEFAULT);
    }
    g.finish();
}

fn bounds(c: &mut Criterion) {
    let all: Vec<Workload> =
        [EXACT, PROJ].iter().flat_map(|&bound| [false, true].map(|backward| Workload { bound, backward })).collect();
    let small = small_model();
    for (batch, seconds) in [(1usize, 3u64), (10, 8), (50, 20)] {
        group(c, "mnist_small", &small, batch, &all, seconds, batch == 10);
    }
    let large = Network::init(&nets::zoo::by_name("mnist-large").expect("zoo model"), 0, DType::F32, &Device::Cpu)
        .expect("init");
    let fwd = |bound| Workload { bound, backward: false };
    let proj_both = [fwd(PROJ), Workload { bound: PROJ, backward: true }];
    group(c, "mnist_large", &large, 1, &[fwd(EXACT), proj_both[0], proj_both[1]], 20, false);
    group(c, "mnist_large", &large, 10, &proj_both, 20, false);
}

criterion_group!(benches, bounds);
criterion_main!(benches);
