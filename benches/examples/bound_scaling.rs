//! The bound-scaling sweep with peak memory, a table and a plot:
//!
//! `cargo run --release -p benches --example bound_scaling -- [OUT_DIR]` (default
//! `results/bound_scaling`) writes `bound_scaling.json`, `bound_scaling.md` and
//! `bound_scaling_{time,memory}.png`.
//!
//! Every (width, bound, pass) point runs in a fresh process (this binary with `--point`), so its
//! peak resident memory is its own: the number reported is the peak above the idle process
//! (network and data built). Seconds are the median of 3 runs after a warm-up. Batch 10,
//! eps 0.08, ball ∩ [0, 1]. Exact points stop where they would not fit in memory.

use anyhow::{bail, Context, Result};
use benches::scaling::{scaling_net, scaling_step, ScalingBound};
use benches::{labels, uniform};
use candle_core::DType;
use experiments::workloads::{median, time_repeats};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::process::Command;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 10;
const WIDTHS: &[usize] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000];
/// Widest exact point: forward (no graph) and forward + backward (the graph holds the columns).
const EXACT_MAX: (usize, usize) = (128, 32);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Point {
    width: usize,
    bound: String,
    backward: bool,
    seconds: f64,
    peak_above_idle_bytes: u64,
    loss: f32,
}

fn point(width: usize, bound: ScalingBound, backward: bool) -> Result<Point> {
    let net = scaling_net(width, 0)?;
    let x = uniform(&[BATCH, 1, 28, 28], 0.0, 1.0, DType::F32, 21)?;
    let y = labels(BATCH, 2, 22);
    let t = time_repeats(3, |_| Ok(scaling_step(&net, &x, &y, bound, backward, 1)?))?;
    Ok(Point {
        width,
        bound: bound.name(),
        backward,
        seconds: median(&t.seconds),
        peak_above_idle_bytes: t.peak_rss_above_idle_bytes,
        loss: t.last,
    })
}

fn parse_bound(s: &str) -> Result<ScalingBound> {
    if s == "exact" {
        return Ok(ScalingBound::Exact);
    }
    match s.strip_prefix("proj").and_then(|k| k.parse().ok()) {
        Some(k) => Ok(ScalingBound::Projected(k)),
        None => bail!("unknown bound {s}"),
    }
}

fn main() -> Result<()> {
    dual_layers::cpu::exit_if_unsupported();
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--point") {
        let width: usize = args[2].parse()?;
        let p = point(width, parse_bound(&args[3])?, args[4] == "backward")?;
        println!("{}", serde_json::to_string(&p)?);
        return Ok(());
    }
    let out = PathBuf::from(args.get(1).cloned().unwrap_or_else(|| "results/bound_scaling".into()));
    std::fs::create_dir_all(&out)?;
    let exe = std::env::current_exe()?;
    let mut points = Vec::new();
    for &backward in &[false, true] {
        for &w in WIDTHS {
            for bound in [ScalingBound::Exact, ScalingBound::Projected(50)] {
                let max = if backward { EXACT_MAX.1 } else { EXACT_MAX.0 };
                if bound == ScalingBound::Exact && w > max {
                    continue;
                }
                let o = Command::new(&exe)
                    .args(["--point", &w.to_string(), &bound.name(), if backward { "backward" } else { "forward" }])
                    .output()
                    .context("starting a point")?;
                if !o.status.success() {
                    bail!("point j={w} {} failed: {}", bound.name(), String::from_utf8_lossy(&o.stderr));
                }
                let p: Point = serde_json::from_slice(o.stdout.trim_ascii())?;
                eprintln!(
                    "j {:5} {:7} {:17} {:8.3} s {:8.1} MiB",
                    p.width,
                    p.bound,
                    if backward { "forward+backward" } else { "forward" },
                    p.seconds,
                    p.peak_above_idle_bytes as f64 / 1048576.0
                );
                points.push(p);
            }
        }
    }
    // Table: one row per width, forward and forward+backward columns.
    let mut t = experiments::report::Table::new(&[
        "filters j",
        "exact fwd s",
        "proj50 fwd s",
        "exact fwd MiB",
        "proj50 fwd MiB",
        "exact fwd+bwd s",
        "proj50 fwd+bwd s",
        "exact fwd+bwd MiB",
        "proj50 fwd+bwd MiB",
    ]);
    let get = |w: usize, b: &str, bw: bool| points.iter().find(|p| p.width == w && p.bound == b && p.backward == bw);
    let s = |p: Option<&Point>| p.map_or("–".to_string(), |p| format!("{:.3}", p.seconds));
    let m = |p: Option<&Point>| {
        p.map_or("–".to_string(), |p| format!("{:.0}", p.peak_above_idle_bytes as f64 / 1048576.0))
    };
    for &w in WIDTHS {
        t.row(&[
            &w.to_string(),
            &s(get(w, "exact", false)),
            &s(get(w, "proj50", false)),
            &m(get(w, "exact", false)),
            &m(get(w, "proj50", false)),
            &s(get(w, "exact", true)),
            &s(get(w, "proj50", true)),
            &m(get(w, "exact", true)),
            &m(get(w, "proj50", true)),
        ]);
    }
    let md = format!(
        "# Bound scaling: one conv layer of j filters (3×3, p1) on 28×28, ReLU, Linear to 2\n\n\
         Batch {BATCH}, l_inf eps 0.08 ∩ [0,1], random inputs and weights; robust loss forward (no graph) and forward + backward; \
         median seconds of 3 runs; peak resident memory above the idle process (MiB). \
         Exact points beyond j = {} (forward) / {} (forward + backward) are not run.\n\n{t}",
        EXACT_MAX.0, EXACT_MAX.1
    );
    println!("{md}");
    nets::io::atomic_write(&out.join("bound_scaling.md"), md.as_bytes())?;
    experiments::report::write_json_atomic(&out.join("bound_scaling.json"), &points)?;
    let series = |f: &dyn Fn(&Point) -> f64| -> Vec<(String, Vec<(f64, f64)>)> {
        let mut v = Vec::new();
        for (b, bw, label) in [
            ("exact", false, "exact, forward"),
            ("proj50", false, "k = 50, forward"),
            ("exact", true, "exact, forward+backward"),
            ("proj50", true, "k = 50, forward+backward"),
        ] {
            let pts: Vec<(f64, f64)> = points
                .iter()
                .filter(|p| p.bound == b && p.backward == bw)
                .map(|p| (p.width as f64, f(p).max(1e-6)))
                .collect();
            v.push((label.to_string(), pts));
        }
        v
    };
    experiments::plot::log_log_plot(
        &out.join("bound_scaling_time.png"),
        "Bound computation time vs width (batch 10)",
        "filters j",
        "seconds",
        &series(&|p| p.seconds),
    )?;
    experiments::plot::log_log_plot(
        &out.join("bound_scaling_memory.png"),
        "Peak memory vs width (batch 10)",
        "filters j",
        "MiB above idle",
        &series(&|p| (p.peak_above_idle_bytes as f64 / 1048576.0).max(0.1)),
    )?;
    eprintln!("written {}", out.display());
    Ok(())
}
