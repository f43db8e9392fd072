//! The exact dual on many small input boxes, as input splitting calls it: ACAS Xu's network
//! `3_3` (5 inputs, six ReLU layers of 50) and property 2's clause, 256 sub-boxes of its box
//! (widths 1/4 to 1/1024 of the box per feature, the sizes branch and bound visits), bounds
//! and sensitivities per call. `dense` is the plain-f64 kernel (`verifier::DenseExactDual`),
//! `tensor engine` the same dual through Candle (`verifier::ExactDual`), side by side.
//! Needs `../shared/vnncomp2021` (or `$CONVEX_SHARED_DIR`).

#![forbid(unsafe_code)]

use criterion::{criterion_group, criterion_main, Criterion};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::time::Duration;
use verifier::{BoundMethod, DenseExactDual, ExactDual, InputBox};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bench(c: &mut Criterion) {
    let dir = shared_data::shared_path("vnncomp2021/acasxu").expect("../shared/vnncomp2021/acasxu is needed");
    let model = onnx_import::Model::load(dir.join("ACASXU_run2a_3_3_batch_2000.onnx")).expect("ACAS Xu 3_3");
    let net = model.to_network("acasxu_3_3", &candle_core::Device::Cpu).expect("a ReLU chain");
    let prop = vnnlib::parse_file(dir.join("prop_2.vnnlib")).expect("property 2");
    let clause = &prop.clauses[0];
    let (lo, hi) = clause.input_box(prop.num_inputs);
    let (rows, rhs) = verifier::falsify::output_rows(clause, prop.num_outputs);
    let mut rng = StdRng::seed_from_u64(1);
    let boxes: Vec<InputBox> = (0..256)
        .map(|i| {
            let frac = 0.25 / f64::powi(2.0, i % 9);
            let mut bl = Vec::with_capacity(lo.len());
            let mut bh = Vec::with_capacity(lo.len());
            for (l, h) in lo.iter().zip(&hi) {
                let w = (h - l) * frac;
                let start = l + rng.random_range(0.0..=1.0) * (h - l - w);
                bl.push(start);
                bh.push(start + w);
            }
            (bl, bh)
        })
        .collect();
    let mut g = c.benchmark_group("box_bounds_acasxu_3_3_prop2_256_boxes");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    g.bench_function("dense", |b| {
        b.iter(|| DenseExactDual.lower_bounds_sensitivity(&net, &boxes, &rows, &rhs).unwrap())
    });
    g.bench_function("tensor engine", |b| {
        b.iter(|| ExactDual.lower_bounds_sensitivity(&net, &boxes, &rows, &rhs).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
