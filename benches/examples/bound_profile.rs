//! Times the exact bounds and the robust loss (forward + backward) of the small MNIST model,
//! for profiling outside criterion:
//!
//! `cargo run --release -p benches --example bound_profile -- BATCH [ITERS]`
//!
//! `CANDLE=1` routes the convolutions to Candle's own; the allocator is mimalloc, as in the
//! benches.

use benches::{labels, uniform};
use candle_core::{DType, Device};
use dual_core::{robust_loss, DualOptions};
use dual_layers::kernels::{set_tuning, Tuning};
use dual_layers::InfBallBounded;
use nets::Network;
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    dual_layers::cpu::exit_if_unsupported();
    let args: Vec<String> = std::env::args().collect();
    let batch: usize = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(10);
    let iters: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(3);
    set_tuning(Tuning { candle: std::env::var("CANDLE").as_deref() == Ok("1"), ..Tuning::DEFAULT });
    let spec = nets::zoo::by_name("mnist-small")?;
    let net = Network::init(&spec, 0, DType::F32, &Device::Cpu)?;
    let x = uniform(&[batch, 1, 28, 28], 0.0, 1.0, DType::F32, 11)?;
    let y = labels(batch, 10, 12);
    for _ in 0..iters {
        let t0 = Instant::now();
        let dual = net.dual(&x, Box::new(InfBallBounded::new(&x, 0.1, 0.0, 1.0)?), &DualOptions::default())?;
        let t_bound = t0.elapsed().as_secs_f64();
        let rl = robust_loss(&dual, &y)?;
        let t_loss = t0.elapsed().as_secs_f64();
        let grads = rl.loss.backward()?;
        std::hint::black_box(grads);
        let t_all = t0.elapsed().as_secs_f64();
        println!(
            "batch {batch}: bound {:.3} s, + loss {:.3} s, + backward {:.3} s (total {:.3} s)",
            t_bound,
            t_loss - t_bound,
            t_all - t_loss,
            t_all
        );
    }
    Ok(())
}
