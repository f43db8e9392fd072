//! Runs one convolution kernel repeatedly on a dual-network shape and prints GFLOP/s, for
//! profiling (`perf record`) and tuning sweeps without criterion's statistics around it:
//!
//! `cargo run --release -p benches --example conv_profile -- OP CASE [ITERS]`
//!
//! OP: conv2d | convt | wgrad | matmul (same FLOPs as one big matmul); CASE: l1 | l2 | l2f64;
//! the scheduling knobs come from the environment: GROUP_BYTES, TASKS_PER_THREAD, GEMM_THREADS=1,
//! CANDLE=1 (Candle's own convolutions).

use benches::{conv_flops, conv_out, uniform};
use candle_core::DType;
use dual_layers::kernels::{conv2d_fast, conv2d_weight_grad, conv_transpose2d_fast, set_tuning, Tuning};
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// CPU seconds (user + system) this process has used so far, from `/proc/self/stat` (Linux;
/// 0 elsewhere). On a loaded machine, FLOPs per CPU second are steadier than per wall second.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, i.e. 11 and 12 after the name; ticks
    // of 1/100 s on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

fn main() -> candle_core::Result<()> {
    dual_layers::cpu::exit_if_unsupported();
    let args: Vec<String> = std::env::args().collect();
    let op = args.get(1).map(String::as_str).unwrap_or("conv2d");
    let case = args.get(2).map(String::as_str).unwrap_or("l2");
    let iters: usize = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(10);
    let mut t = Tuning::DEFAULT;
    if let Some(v) = env("GROUP_BYTES") {
        t.group_bytes = v;
    }
    if let Some(v) = env("TASKS_PER_THREAD") {
        t.tasks_per_thread = v;
    }
    t.gemm_threads = env("GEMM_THREADS") == Some(1);
    t.candle = env("CANDLE") == Some(1);
    set_tuning(t);

    let (n, c, hw, o, k, s, p, dtype) = match case {
        "l1" => (7840, 1, 28, 16, 4, 2, 1, DType::F32),
        "l2" => (7840, 16, 14, 32, 4, 2, 1, DType::F32),
        "l2f64" => (1568, 16, 14, 32, 4, 2, 1, DType::F64),
        _ => panic!("unknown case {case}"),
    };
    let oh = conv_out(hw, k, s, p);
    let op_pad = hw + 2 * p - ((oh - 1) * s + k);
    let flops = conv_flops(n, (c, hw, hw), o, k, s, p) as f64;
    let x = uniform(&[n, c, hw, hw], -1.0, 1.0, dtype, 1)?;
    let w = uniform(&[o, c, k, k], -0.5, 0.5, dtype, 2)?;
    let g = uniform(&[n, o, oh, oh], -1.0, 1.0, dtype, 3)?;
    let (a, b) = if op == "matmul" {
        (uniform(&[n * oh * oh, c * k * k], -1.0, 1.0, dtype, 4)?, uniform(&[c * k * k, o], -1.0, 1.0, dtype, 5)?)
    } else {
        (x.clone(), w.clone())
    };
    let run = || -> candle_core::Result<candle_core::Tensor> {
        match op {
            "conv2d" => conv2d_fast(&x, &w, s, p),
            "convt" => conv_transpose2d_fast(&g, &w, s, p, op_pad),
            "wgrad" if t.candle => {
                let gw = x.transpose(0, 1)?.conv2d(&g.transpose(0, 1)?, p, 1, s, 1)?.transpose(0, 1)?;
                gw.narrow(2, 0, k)?.narrow(3, 0, k)
            }
            "wgrad" => conv2d_weight_grad(&x, &g, (k, k), s, p),
            "matmul" => a.matmul(&b),
            _ => panic!("unknown op {op}"),
        }
    };
    run()?;
    let mut best = f64::INFINITY;
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    for _ in 0..iters {
        let t0 = Instant::now();
        std::hint::black_box(run()?);
        best = best.min(t0.elapsed().as_secs_f64());
    }
    let mean = start.elapsed().as_secs_f64() / iters as f64;
    let cpu = (cpu_seconds() - cpu0) / iters as f64;
    println!(
        "{op} {case}: mean {:.1} ms ({:.1} GFLOP/s), best {:.1} ms ({:.1} GFLOP/s), {:.1} GFLOP per CPU second",
        mean * 1e3,
        flops / mean / 1e9,
        best * 1e3,
        flops / best / 1e9,
        flops / cpu / 1e9
    );
    Ok(())
}
