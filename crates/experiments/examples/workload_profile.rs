//! Times the issue-5 workloads on the paper's Fashion-MNIST model and real test images:
//!
//! `cargo run --release -p experiments --example workload_profile -- [BATCH] [REPEATS]`
//!
//! `K=10` changes the number of projections (default 50). Prints one line per run: the workload, seconds, loss, robust error and gradient mass.

use anyhow::Result;
use candle_core::{DType, Device};
use experiments::datasets::{load_mnist_like, Split};
use experiments::workloads::{median, run_workload, Workload};
use std::path::Path;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let batch: usize = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(50);
    let reps: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(3);
    let only: Option<String> = args.get(3).cloned();
    let net = nets::io::load_model(Path::new("../shared/models/fashion_mnist_small_eps0.1.pth"), Some("mnist-small"), DType::F32, &Device::Cpu)?;
    let te = load_mnist_like(Path::new("/usr/share/datasets/fashion-mnist"), Split::Test)?;
    let idx: Vec<usize> = (0..batch).collect();
    let (x, y) = te.gather(&idx, DType::F32, &Device::Cpu)?;
    let k: usize = std::env::var("K").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    for mut w in Workload::standard() {
        if let experiments::workloads::BoundKind::Projected { k: kk } = &mut w.bound {
            *kk = k;
        }
        // A full name (`exact/forward`) selects that workload only, anything else by substring.
        let full = Workload::standard().iter().any(|s| only.as_deref() == Some(s.name().as_str()));
        if only.as_ref().is_some_and(|o| if full { w.name() != *o } else { !w.name().contains(o.as_str()) }) {
            continue;
        }
        let mut t = Vec::new();
        for r in 0..reps {
            let run = run_workload(&net, &x, &y, 0.1, true, w, r as u64)?;
            println!("{:28} {:.3} s  loss {:.5}  err {:.3}  |g| {:.4}", w.name(), run.seconds, run.loss, run.robust_error, run.grad_abs_sum);
            t.push(run.seconds);
        }
        println!("{:28} median {:.3} s", w.name(), median(&t));
    }
    Ok(())
}
