//! Speed of one certified-training step, ours beside auto_LiRPA 0.7.1, in the same run:
//!
//! `cargo run --release -p experiments --example train_step_speed -- [OUT_DIR] [REPEATS]`
//!
//! A step is the bound of the margins over the l_inf ball (eps 0.1) ∩ [0, 1] — IBP or CROWN-IBP —,
//! the cross-entropy of the negated lower bounds, the backward pass and one Adam step, on the
//! first 50 Fashion-MNIST training images, for `mnist-small` and `mnist-large` (weights of a
//! seeded initialisation, the same on both sides). Every (model, bound, side) runs in a fresh
//! process with 2 threads (`RAYON_NUM_THREADS`, `torch.set_num_threads`): one warm-up step, then
//! `REPEATS` (default 3) timed ones; the median is reported, with the peak resident memory above
//! the idle process. The Python side is `xtask/python/lirpa_train_step.py`, run with
//! `$PYTHON` (default `/work/pyvenv/bin/python`) and auto_LiRPA found through `$LIRPA_DIR`
//! (default `../shared/tools/auto_LiRPA-0.7.1` or, where that is missing,
//! `/work/lirpa/auto_LiRPA-0.7.1`). Writes `OUT_DIR/results.json` and `OUT_DIR/README.md`
//! (default `docs/results/train_step_speed`).
//!
//! Internal: `--worker ARCH BOUND DIR REPEATS` times our side on the files of `DIR`.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use dual_core::bounds::Method;
use experiments::certify::Norm;
use experiments::datasets::{load_mnist_like, Split};
use experiments::train::certified::{bound_cross_entropy, margin_bounds_with_layers, uncertified_fraction};
use experiments::train::{Optimizer, OptimizerConfig};
use experiments::workloads::{median, proc_status_bytes, time_repeats, WorkerReport};
use nets::Network;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The system allocator below 32 MiB, mimalloc above (`hybrid_alloc`: less resident memory than
/// mimalloc alone at the same speed).
#[global_allocator]
static GLOBAL: hybrid_alloc::Hybrid = hybrid_alloc::Hybrid;

const EPS: f64 = 0.1;
/// `[env]` of `.cargo/config.toml`, and `CANDLE_NUM_THREADS=1`, which `cargo xtask` sets (one set
/// of worker threads: Candle's ops on the calling thread, every parallel pass on rayon's pool;
/// docs/PERFORMANCE.md).
const PROJECT_ENV: [(&str, &str); 4] = [
    ("MIMALLOC_PURGE_DELAY", "-1"),
    ("CANDLE_BARRIER_POOL_SPIN_LIMIT", "100"),
    ("MIMALLOC_ALLOW_LARGE_OS_PAGES", "1"),
    ("CANDLE_NUM_THREADS", "1"),
];
const BATCH: usize = 50;

fn method(name: &str) -> Result<Method> {
    Ok(match name {
        "ibp" => Method::Ibp,
        "crown-ibp" => Method::CrownIbp,
        o => bail!("unknown bound {o} (ibp, crown-ibp)"),
    })
}

/// Our side: times the step on the batch and weights saved in `dir`.
fn worker(arch: &str, bound: &str, dir: &Path, repeats: usize) -> Result<()> {
    let spec = nets::zoo::by_name(arch)?;
    let mut tensors = Vec::new();
    let init = Network::init(&spec, 0, DType::F32, &Device::Cpu)?;
    for (name, _) in init.params() {
        tensors.push((name.clone(), Tensor::read_npy(dir.join(format!("{name}.npy")))?));
    }
    let net = Network::from_state_dict(&spec, &tensors, DType::F32, &Device::Cpu)?;
    let x = Tensor::read_npy(dir.join("X.npy"))?;
    let y: Vec<u32> = Tensor::read_npy(dir.join("y.npy"))?.to_dtype(DType::U32)?.to_vec1()?;
    let m = method(bound)?;
    let mut opt = Optimizer::new(OptimizerConfig::adam(1e-3), net.trainable());
    let t = time_repeats(repeats, |_| {
        // The bound alone, as auto_LiRPA's `compute_bounds` (no forward pass of the batch).
        let (lower, _) = margin_bounds_with_layers(&net, &x, &y, EPS, Norm::Linf, true, m)?;
        let loss = bound_cross_entropy(&lower, &y)?;
        let done = (loss.to_scalar::<f32>()? as f64, uncertified_fraction(&lower, &y)?);
        drop(lower);
        // Consumed: the backward pass frees the bound's graph as it goes (as PyTorch does).
        let grads = loss.backward_consuming()?;
        opt.step(&grads)?;
        Ok(done)
    })?;
    let r = WorkerReport {
        implementation: "rust".into(),
        seconds: t.seconds,
        loss: t.last.0,
        robust_error: t.last.1,
        grad_abs_sum: 0.0,
        idle_rss_bytes: t.idle_rss_bytes,
        peak_rss_above_idle_bytes: t.peak_rss_above_idle_bytes,
    };
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

/// `--profile ARCH BOUND [STEPS]`: the seconds of each phase of a step (median of `STEPS − 1`, default 5),
/// on stderr.
fn profile(arch: &str, bound: &str, steps: usize) -> Result<()> {
    use std::time::Instant;
    let net = Network::init(&nets::zoo::by_name(arch)?, 0, DType::F32, &Device::Cpu)?;
    let data = load_mnist_like(&experiments::certify::default_data_dir("fashion-mnist"), Split::Train)?;
    let (x, y) = data.batch(0, BATCH, &Device::Cpu)?;
    let m = method(bound)?;
    let mut opt = Optimizer::new(OptimizerConfig::adam(1e-3), net.trainable());
    let mut t = vec![Vec::new(); 5];
    for _ in 0..steps.max(2) {
        let t0 = Instant::now();
        let _ = net.forward(&x)?;
        let t1 = Instant::now();
        let _ = net.dual_nodes(&x)?;
        let t2 = Instant::now();
        let (lower, _) = margin_bounds_with_layers(&net, &x, &y, EPS, Norm::Linf, true, m)?;
        let loss = bound_cross_entropy(&lower, &y)?;
        let _ = loss.to_scalar::<f32>()?;
        let t3 = Instant::now();
        drop(lower);
        let grads = loss.backward_consuming()?;
        let t4 = Instant::now();
        opt.step(&grads)?;
        let t5 = Instant::now();
        for (i, (a, b)) in [(t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5)].iter().enumerate() {
            t[i].push((*b - *a).as_secs_f64());
        }
    }
    // The IBP input box alone (built from the input set's terms on identity rows).
    let nodes = net.dual_nodes(&x)?;
    let input = experiments::certify::input_set(&x, EPS, Norm::Linf, true)?;
    let n = dual_core::bounds::Net { nodes: &nodes, x: &x, input: input.as_ref() };
    let mut tb = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        let _ = dual_core::bounds::ibp::input_box(&n)?;
        tb.push(t0.elapsed().as_secs_f64());
    }
    eprintln!("{arch} {bound} of which the input box: {:.4} s", median(&tb));
    for (name, v) in ["forward", "dual_nodes", "bound+CE", "backward", "adam"].iter().zip(&t) {
        eprintln!("{arch} {bound} {name}: {:.4} s", median(&v[1..]));
    }
    Ok(())
}

fn run_json(mut c: Command) -> Result<WorkerReport> {
    c.env("RAYON_NUM_THREADS", "2").env("OMP_NUM_THREADS", "2").env("MKL_NUM_THREADS", "2");
    let o = c.output().with_context(|| format!("running {c:?}"))?;
    if !o.status.success() {
        bail!("{c:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out.lines().rev().find(|l| l.starts_with('{')).context("no JSON line in the output")?;
    Ok(serde_json::from_str(line)?)
}

#[derive(Serialize)]
struct Row {
    arch: String,
    bound: String,
    rust: WorkerReport,
    auto_lirpa: WorkerReport,
    rust_median_s: f64,
    auto_lirpa_median_s: f64,
    speedup: f64,
}

fn lirpa_dir() -> PathBuf {
    if let Ok(d) = std::env::var("LIRPA_DIR") {
        return d.into();
    }
    let shared = Path::new("../shared/tools/auto_LiRPA-0.7.1");
    if shared.join("auto_LiRPA").is_dir() {
        shared.into()
    } else {
        "/work/lirpa/auto_LiRPA-0.7.1".into()
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--worker") {
        let [_, arch, bound, dir, reps] = &args[..] else { bail!("--worker ARCH BOUND DIR REPEATS") };
        return worker(arch, bound, Path::new(dir), reps.parse()?);
    }
    if args.first().map(String::as_str) == Some("--profile") {
        let (arch, bound, steps) = match &args[..] {
            [_, arch, bound] => (arch, bound, 6),
            [_, arch, bound, steps] => (arch, bound, steps.parse()?),
            _ => bail!("--profile ARCH BOUND [STEPS]"),
        };
        return profile(arch, bound, steps);
    }
    let out = PathBuf::from(args.first().cloned().unwrap_or_else(|| "docs/results/train_step_speed".into()));
    let repeats: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "/work/pyvenv/bin/python".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../xtask/python/lirpa_train_step.py");
    let data_dir = experiments::certify::default_data_dir("fashion-mnist");
    let data = load_mnist_like(&data_dir, Split::Train)?;
    let (x, y) = data.batch(0, BATCH, &Device::Cpu)?;
    let tmp = std::env::temp_dir().join(format!("train-step-speed-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    std::fs::create_dir_all(&out)?;
    x.write_npy(tmp.join("X.npy"))?;
    Tensor::from_vec(y.iter().map(|&v| v as i64).collect::<Vec<_>>(), BATCH, &Device::Cpu)?
        .write_npy(tmp.join("y.npy"))?;
    let me = std::env::current_exe()?;
    let mut rows = Vec::new();
    for arch in ["mnist-small", "mnist-large"] {
        let net = Network::init(&nets::zoo::by_name(arch)?, 0, DType::F32, &Device::Cpu)?;
        for (name, t) in net.state_dict() {
            t.write_npy(tmp.join(format!("{name}.npy")))?;
        }
        for (bound, lirpa) in [("ibp", "IBP"), ("crown-ibp", "CROWN-IBP")] {
            let mut ours = Command::new(&me);
            ours.args(["--worker", arch, bound]).arg(&tmp).arg(repeats.to_string());
            // The run-time settings `.cargo/config.toml` gives everything cargo runs, also when
            // this binary is started directly (without the barrier's spin limit, 2 threads on a
            // busy machine wait for each other: measured 9× slower).
            for (k, v) in PROJECT_ENV {
                if std::env::var_os(k).is_none() {
                    ours.env(k, v);
                }
            }
            let rust = run_json(ours)?;
            let mut theirs = Command::new(&python);
            theirs
                .arg(&script)
                .args(["--dir"])
                .arg(&tmp)
                .args(["--arch", arch, "--method", lirpa, "--repeats", &repeats.to_string(), "--threads", "2"])
                .env("PYTHONPATH", lirpa_dir());
            let auto_lirpa = run_json(theirs)?;
            let (a, b) = (median(&rust.seconds), median(&auto_lirpa.seconds));
            eprintln!("{arch} {bound}: ours {a:.4} s, auto_LiRPA {b:.4} s ({:.1}x)", b / a);
            rows.push(Row {
                arch: arch.into(),
                bound: bound.into(),
                rust,
                auto_lirpa,
                rust_median_s: a,
                auto_lirpa_median_s: b,
                speedup: b / a,
            });
        }
    }
    experiments::report::write_json_atomic(&out.join("results.json"), &rows)?;
    let mut md = String::from(
        "# One certified-training step, ours vs auto_LiRPA 0.7.1\n\nMade by `cargo run --release -p experiments \
         --example train_step_speed` (one run, both sides). A step: margin bound over the l_inf ball eps 0.1 ∩ \
         [0, 1], cross-entropy of the negated lower bounds, backward, Adam; batch 50 (first Fashion-MNIST \
         training images), 2 threads, a fresh process per cell, median of the timed steps after a warm-up.\n\n\
         | model | bound | ours (s) | auto_LiRPA (s) | speed-up | peak MB above idle, ours / auto_LiRPA |\n\
         |---|---|---|---|---|---|\n",
    );
    for r in &rows {
        md.push_str(&format!(
            "| {} | {} | {:.4} | {:.4} | {:.1}× | {:.0} / {:.0} |\n",
            r.arch,
            r.bound,
            r.rust_median_s,
            r.auto_lirpa_median_s,
            r.speedup,
            r.rust.peak_rss_above_idle_bytes as f64 / 1e6,
            r.auto_lirpa.peak_rss_above_idle_bytes as f64 / 1e6
        ));
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    md.push_str(&format!(
        "\nRepeats: {repeats}. Load average at the end (1, 5, 15 min): {}. Resident memory of this driver: {} MB.\n",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(", "),
        proc_status_bytes("VmRSS") / 1_000_000
    ));
    std::fs::write(out.join("README.md"), md)?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
