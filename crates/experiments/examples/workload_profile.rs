//! Times the issue-5 workloads on the paper's Fashion-MNIST model and real test images:
//!
//! `cargo run --release -p experiments --example workload_profile -- [BATCH] [REPEATS]`
//!
//! `K=10` changes the number of projections (default 50); `SEED=3` gives every run the same seed
//! (by default run `r` uses seed `r`). Prints one line per run: the workload, seconds, CPU
//! seconds, loss, robust error and gradient mass.

use anyhow::Result;
use candle_core::{DType, Device};
use experiments::datasets::{load_mnist_like, Split};
use experiments::workloads::{median, run_workload, Workload};
use std::path::Path;

#[global_allocator]
static GLOBAL: hybrid_alloc::Hybrid = hybrid_alloc::Hybrid;

/// User + system CPU time of this process so far, in seconds (from `/proc/self/stat`; 0 where
/// that is not readable). On a noisy machine CPU time compares two builds better than wall time.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the file: indices 11 and 12 of what follows the
    // name (which starts at field 3); in clock ticks of 1/100 s on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let batch: usize = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(50);
    let reps: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(3);
    let only: Option<String> = args.get(3).cloned();
    let net = nets::io::load_model(
        Path::new("../shared/models/fashion_mnist_small_eps0.1.pth"),
        Some("mnist-small"),
        DType::F32,
        &Device::Cpu,
    )?;
    let te = load_mnist_like(Path::new("/usr/share/datasets/fashion-mnist"), Split::Test)?;
    let idx: Vec<usize> = (0..batch).collect();
    let (x, y) = te.gather(&idx, DType::F32, &Device::Cpu)?;
    let k: usize = std::env::var("K").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let fixed_seed: Option<u64> = std::env::var("SEED").ok().and_then(|v| v.parse().ok());
    for mut w in Workload::standard() {
        if let experiments::workloads::BoundKind::Projected { k: kk } = &mut w.bound {
            *kk = k;
        }
        // A full name (`exact/forward`) selects that workload only, anything else by substring.
        let full = Workload::standard().iter().any(|s| only.as_deref() == Some(s.name().as_str()));
        if only.as_ref().is_some_and(|o| if full { w.name() != *o } else { !w.name().contains(o.as_str()) }) {
            continue;
        }
        let (mut t, mut cpu) = (Vec::new(), Vec::new());
        for r in 0..reps {
            let c0 = cpu_seconds();
            let run = run_workload(&net, &x, &y, 0.1, true, w, fixed_seed.unwrap_or(r as u64))?;
            let c = cpu_seconds() - c0;
            println!(
                "{:28} {:.3} s  cpu {:.3} s  loss {:.5}  err {:.3}  |g| {:.4}",
                w.name(),
                run.seconds,
                c,
                run.loss,
                run.robust_error,
                run.grad_abs_sum
            );
            t.push(run.seconds);
            if r > 0 {
                cpu.push(c);
            }
        }
        println!("{:28} median {:.3} s  (cpu median {:.3} s after the first run)", w.name(), median(&t), median(&cpu));
    }
    Ok(())
}
