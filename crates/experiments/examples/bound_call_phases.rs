//! Where one certify call of the bound family spends its time, per phase, on the papers'
//! Fashion-MNIST model and the first 50 test images (eps 0.1, ball ∩ [0, 1]) — the Rust side of a
//! `bench-vs-lirpa` batch, taken apart:
//!
//! `cargo run --release -p experiments --example bound_call_phases -- [METHOD] [REPEATS]`
//!
//! METHOD: ibp (default), crown-ibp, crown, alpha-crown, exact. Prints the mean milliseconds of
//! the input set, the dual nodes, the margin bounds and the prediction's forward pass over
//! REPEATS calls (default 200) after 10 untimed ones, all inside `no_grad` as certification runs.

use anyhow::Result;
use candle_core::{DType, Device};
use dual_core::bounds::{BoundOptions, Method, Net};
use experiments::datasets::{load_mnist_like, Split};
use std::path::Path;
use std::time::Instant;

#[global_allocator]
static GLOBAL: hybrid_alloc::Hybrid = hybrid_alloc::Hybrid;

fn main() -> Result<()> {
    let method: Method = std::env::args().nth(1).unwrap_or("ibp".into()).parse()?;
    let reps: usize = std::env::args().nth(2).and_then(|v| v.parse().ok()).unwrap_or(200).max(1);
    let net = nets::io::load_model(
        Path::new("../shared/models/fashion_mnist_small_eps0.1.pth"),
        Some("mnist-small"),
        DType::F32,
        &Device::Cpu,
    )?;
    let te = load_mnist_like(Path::new("/usr/share/datasets/fashion-mnist"), Split::Test)?;
    let (x, y) = te.gather(&(0..50).collect::<Vec<_>>(), DType::F32, &Device::Cpu)?;
    let opts = BoundOptions::default();
    let mut acc = [0f64; 5];
    for r in 0..reps + 10 {
        nets::no_grad(|| -> Result<()> {
            let t0 = Instant::now();
            let set = experiments::certify::input_set(&x, 0.1, experiments::certify::Norm::Linf, true)?;
            let t1 = Instant::now();
            let nodes = net.dual_nodes(&x)?;
            let t2 = Instant::now();
            let n = Net { nodes: &nodes, x: &x, input: set.as_ref() };
            let m = dual_core::bounds::margin_bounds(&n, &y, method, &opts, None)?;
            let _v = m.to_vec2::<f32>()?;
            let t3 = Instant::now();
            let _p: Vec<u32> = net.forward(&x)?.argmax(1)?.to_dtype(DType::U32)?.to_vec1()?;
            let t4 = Instant::now();
            if r >= 10 {
                for (i, d) in [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0].iter().enumerate() {
                    acc[i] += d.as_secs_f64() * 1e3 / reps as f64;
                }
            }
            Ok(())
        })?;
    }
    println!(
        "input_set {:.3} ms, dual_nodes {:.3}, bounds {:.3}, forward {:.3}, total {:.3}",
        acc[0], acc[1], acc[2], acc[3], acc[4]
    );
    Ok(())
}
