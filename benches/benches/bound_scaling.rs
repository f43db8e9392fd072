//! Bound scaling (the runtime experiment of Wong et al. 2018): the robust loss forward of a
//! one-conv-layer network as its width `j` grows, exact vs 50 random projections, batch 10.
//! Peak memory and the plot come from the `bound_scaling` example (one process per point).

#![forbid(unsafe_code)]

use benches::scaling::{scaling_net, scaling_step, ScalingBound};
use benches::{labels, uniform};
use candle_core::DType;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};
use std::time::Duration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn scaling(c: &mut Criterion) {
    let batch = 10;
    let x = uniform(&[batch, 1, 28, 28], 0.0, 1.0, DType::F32, 21).unwrap();
    let y = labels(batch, 2, 22);
    let mut group = c.benchmark_group("bound_scaling_b10");
    group.sample_size(10).sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(3));
    for j in [1usize, 4, 16, 64] {
        let net = scaling_net(j, 0).unwrap();
        for bound in [ScalingBound::Exact, ScalingBound::Projected(50)] {
            group.bench_with_input(BenchmarkId::new(bound.name(), j), &j, |b, _| {
                b.iter(|| scaling_step(&net, &x, &y, bound, false, 1).unwrap())
            });
        }
    }
    for j in [256usize, 1000] {
        let net = scaling_net(j, 0).unwrap();
        let bound = ScalingBound::Projected(50);
        group.bench_with_input(BenchmarkId::new(bound.name(), j), &j, |b, _| {
            b.iter(|| scaling_step(&net, &x, &y, bound, false, 1).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, scaling);
criterion_main!(benches);
