//! The communication cost of one data-parallel step: the fused gradient all-reduce of a zoo
//! model (`all_reduce_grads`, as training does it), timed over many steps on every rank.
//!
//! ```sh
//! cargo build --release -p experiments --features mpi --example allreduce_cost
//! mpirun -np 2 target/release/examples/allreduce_cost mnist-small 200
//! ```

use anyhow::Result;
use candle_core::{DType, Device};
use experiments::train::distributed::{all_reduce_grads, Collective};
use experiments::train::mpi::MpiCollective;
use std::time::Instant;

fn main() -> Result<()> {
    let comm = MpiCollective::init()?;
    let mut args = std::env::args().skip(1);
    let arch = args.next().unwrap_or_else(|| "mnist-small".into());
    let steps: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(200);
    let net = nets::Network::init(&nets::zoo::by_name(&arch)?, 0, DType::F32, &Device::Cpu)?;
    let vars = net.trainable();
    let n: usize = vars.iter().map(|v| v.elem_count()).sum();
    // A gradient for every parameter, as the backward pass leaves them.
    let loss = vars.iter().map(|v| v.as_tensor().sqr().unwrap().sum_all().unwrap()).reduce(|a, b| (a + b).unwrap());
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps + 10 {
        let mut g = loss.as_ref().unwrap().backward()?;
        let t0 = Instant::now();
        all_reduce_grads(&comm, &vars, &mut g, 0.5, &[1.0, 2.0, 3.0])?;
        times.push(t0.elapsed().as_secs_f64());
    }
    let mut t = times[10..].to_vec();
    t.sort_by(f64::total_cmp);
    if comm.rank() == 0 {
        println!(
            "{arch}: {n} parameters ({:.2} MB f32), {} ranks, {steps} steps: all-reduce per step median {:.3} ms, \
             p10 {:.3} ms, p90 {:.3} ms",
            4.0 * n as f64 / 1e6,
            comm.size(),
            1e3 * t[t.len() / 2],
            1e3 * t[t.len() / 10],
            1e3 * t[9 * t.len() / 10]
        );
    }
    Ok(())
}
