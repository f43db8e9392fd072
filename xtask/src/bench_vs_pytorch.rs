//! `cargo xtask bench-vs-pytorch`: the issue-5 workloads timed in this project and in the
//! PyTorch package `convex_adversarial` 0.4.4, same weights, same inputs, same thread count, on
//! the same machine, one fresh process per (implementation, workload, batch).
//!
//! The Python side runs in a virtual environment (default `target/bench-venv`) that this task
//! creates and fills from PyPI (`torch`, `numpy`, `convex-adversarial==0.4.4`) when it cannot
//! import them yet. The hidden `bench-worker` task is the Rust side of one measurement.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use experiments::datasets::load_mnist_like;
use experiments::report::{write_json_atomic, Table};
use experiments::workloads::{agree, median, time_workload, BoundKind, WorkerReport, Workload};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;

const PY_SCRIPT: &str = include_str!("../python/bench_pytorch.py");

/// Flags of `bench-vs-pytorch`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The model (the small MNIST architecture, PyTorch checkpoint).
    #[arg(long, default_value = "../shared/models/fashion_mnist_small_eps0.1.pth")]
    model: PathBuf,
    /// Folder of the Fashion-MNIST IDX files (the first test images are the batch).
    #[arg(long, default_value = "/usr/share/datasets/fashion-mnist")]
    data_dir: PathBuf,
    /// Batch sizes, comma-separated (each ≥ 1).
    #[arg(long, default_value = "1,10,50", value_delimiter = ',', value_parser = crate::parse::at_least_one)]
    batches: Vec<usize>,
    /// Workloads, comma-separated, from exact-fwd, exact-fwd-bwd, proj-fwd, proj-fwd-bwd.
    #[arg(long, default_value = "exact-fwd,exact-fwd-bwd,proj-fwd,proj-fwd-bwd", value_delimiter = ',')]
    workloads: Vec<String>,
    /// Projections of the projected workloads (≥ 1).
    #[arg(long, default_value_t = 50, value_parser = crate::parse::at_least_one)]
    k: usize,
    /// Radius of the l_inf ball (∩ [0, 1] unless --unbounded; finite, ≥ 0).
    #[arg(long, default_value_t = 0.1, allow_hyphen_values = true, value_parser = crate::parse::non_negative)]
    eps: f64,
    /// The ball alone, not intersected with [0, 1].
    #[arg(long)]
    unbounded: bool,
    /// Timed runs per measurement (after the warm-up); the median is reported.
    #[arg(long, default_value_t = 5, value_parser = crate::parse::at_least_one)]
    repeats: usize,
    /// Untimed warm-up on both sides: runs until this many seconds have gone (at least one run).
    /// A process started right after another freed gigabytes runs its first second or so slower
    /// (measured 2026-12-05, docs/PERFORMANCE.md). 0 gives the single warm-up run of the
    /// benchmarks before 2026-12-05.
    #[arg(long, default_value_t = 2.0, value_parser = crate::parse::non_negative)]
    warmup_seconds: f64,
    /// Threads on both sides.
    #[arg(long, default_value_t = 2, value_parser = crate::parse::at_least_one)]
    threads: usize,
    /// The Python virtual environment.
    #[arg(long, default_value = "target/bench-venv")]
    venv: PathBuf,
    /// Python interpreter used to create the environment.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Results folder: bench_vs_pytorch.json and bench_vs_pytorch.md.
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// Instead of the per-batch workloads: certify the whole test set (exact bound, forward) on
    /// both sides in batches of the first --batches value, timed once as a whole; writes
    /// bench_vs_pytorch_full.{json,md}.
    #[arg(long)]
    full_test_set: bool,
}

/// Flags of the hidden `bench-worker` (the Rust side of one measurement).
#[derive(Args, Debug)]
pub struct WorkerArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    x: PathBuf,
    #[arg(long)]
    y: PathBuf,
    #[arg(long, allow_hyphen_values = true, value_parser = crate::parse::non_negative)]
    eps: f64,
    #[arg(long)]
    bounded: bool,
    #[arg(long, default_value_t = 0)]
    proj: usize,
    #[arg(long)]
    backward: bool,
    #[arg(long, value_parser = crate::parse::at_least_one)]
    repeats: usize,
    #[arg(long, default_value_t = 0.0, value_parser = crate::parse::non_negative)]
    warmup_seconds: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Certify all of `--x` in batches of this size, timed once as a whole.
    #[arg(long, default_value_t = 0)]
    full_batch: usize,
}

fn parse_workload(s: &str, k: usize) -> Result<Workload> {
    Ok(match s {
        "exact-fwd" => Workload { bound: BoundKind::Exact, backward: false },
        "exact-fwd-bwd" => Workload { bound: BoundKind::Exact, backward: true },
        "proj-fwd" => Workload { bound: BoundKind::Projected { k }, backward: false },
        "proj-fwd-bwd" => Workload { bound: BoundKind::Projected { k }, backward: true },
        o => bail!("unknown workload `{o}` (exact-fwd, exact-fwd-bwd, proj-fwd, proj-fwd-bwd)"),
    })
}

/// The Rust side of one measurement: prints a [`WorkerReport`] as JSON.
pub fn worker(a: WorkerArgs) -> Result<()> {
    let net = nets::io::load_model(&a.model, Some("mnist-small"), DType::F32, &Device::Cpu)?;
    let x = Tensor::read_npy(&a.x).with_context(|| format!("reading {}", a.x.display()))?.to_dtype(DType::F32)?;
    let y: Vec<u32> =
        Tensor::read_npy(&a.y)?.to_dtype(DType::I64)?.to_vec1::<i64>()?.into_iter().map(|v| v as u32).collect();
    let w = Workload {
        bound: if a.proj > 0 { BoundKind::Projected { k: a.proj } } else { BoundKind::Exact },
        backward: a.backward,
    };
    let rep = if a.full_batch > 0 {
        time_full_set(&net, &x, &y, a.eps, a.bounded, w, a.full_batch)?
    } else {
        time_workload(&net, &x, &y, a.eps, a.bounded, w, a.repeats, a.warmup_seconds, a.seed)?
    };
    println!("{}", serde_json::to_string(&rep)?);
    Ok(())
}

/// The whole of `x` in batches of `batch`, timed once as a whole (loading excluded): mean loss
/// and the fraction of examples not certified.
fn time_full_set(
    net: &nets::Network,
    x: &Tensor,
    y: &[u32],
    eps: f64,
    bounded: bool,
    w: Workload,
    batch: usize,
) -> Result<WorkerReport> {
    let idle = experiments::workloads::proc_status_bytes("VmRSS");
    let n = y.len();
    let t0 = std::time::Instant::now();
    let (mut loss, mut err) = (0.0, 0.0);
    let mut i = 0;
    while i < n {
        let end = (i + batch).min(n);
        let run = experiments::workloads::run_workload(
            net,
            &x.narrow(0, i, end - i)?,
            &y[i..end],
            eps,
            bounded,
            w,
            i as u64,
        )?;
        loss += run.loss * (end - i) as f64;
        err += run.robust_error * (end - i) as f64;
        i = end;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let peak = experiments::workloads::proc_status_bytes("VmHWM");
    Ok(WorkerReport {
        implementation: "rust".into(),
        seconds: vec![seconds],
        loss: loss / n.max(1) as f64,
        robust_error: err / n.max(1) as f64,
        grad_abs_sum: 0.0,
        idle_rss_bytes: idle,
        peak_rss_above_idle_bytes: peak.saturating_sub(idle),
    })
}

/// `--full-test-set`: the whole test set certified on both sides, one process each.
fn run_full(a: &BenchArgs, py: &Path, script: &Path, work: &Path, test: &experiments::datasets::Dataset) -> Result<()> {
    let batch = a.batches[0];
    let idx: Vec<usize> = (0..test.len()).collect();
    let (x, y) = test.gather(&idx, DType::F32, &Device::Cpu)?;
    let xp = work.join("x_test.npy");
    let yp = work.join("y_test.npy");
    x.write_npy(&xp)?;
    Tensor::from_vec(y.iter().map(|&v| v as i64).collect::<Vec<_>>(), y.len(), &Device::Cpu)?.write_npy(&yp)?;
    let mut common: Vec<String> = vec![
        "--eps".into(),
        a.eps.to_string(),
        "--proj".into(),
        "0".into(),
        "--repeats".into(),
        "1".into(),
        "--full-batch".into(),
        batch.to_string(),
    ];
    if !a.unbounded {
        common.push("--bounded".into());
    }
    eprintln!(
        "certifying {} test images in batches of {batch} with the PyTorch package, then with this project",
        y.len()
    );
    let (pt, rs) = measure_both(a, py, script, &std::env::current_exe()?, &xp, &yp, &common)?;
    let w = Workload { bound: BoundKind::Exact, backward: false };
    // f32 on both sides: an example whose certificate margin is within rounding may fall either
    // way, so up to 2 of the test set may differ; the mean loss must agree to 1e-4.
    let n = y.len() as f64;
    let differ = ((pt.robust_error - rs.robust_error).abs() * n).round() as usize;
    let agree = (pt.loss - rs.loss).abs() <= 1e-4 * pt.loss.abs().max(1e-12) && differ <= 2;
    let mut t = Table::new(&[
        "workload",
        "images",
        "batch",
        "PyTorch s",
        "ours s",
        "speed-up",
        "certified PyTorch / ours",
        "PyTorch peak GiB",
        "ours peak GiB",
        "agree (certificates differing)",
    ]);
    let (ps, rsec) = (pt.seconds[0], rs.seconds[0]);
    t.row(&[
        &w.name(),
        &y.len().to_string(),
        &batch.to_string(),
        &format!("{ps:.1}"),
        &format!("{rsec:.1}"),
        &format!("{:.2}x", ps / rsec),
        &format!("{:.2} % / {:.2} %", 100.0 * (1.0 - pt.robust_error), 100.0 * (1.0 - rs.robust_error)),
        &gib(pt.peak_rss_above_idle_bytes),
        &gib(rs.peak_rss_above_idle_bytes),
        &format!("{} ({differ})", if agree { "yes" } else { "NO" }),
    ]);
    let head = format!(
        "bench-vs-pytorch --full-test-set: mnist-small ({}), eps {}, {}, {} threads ({})\n\
         Wall time of certifying the whole test set once (exact bound, no gradients), data loading excluded.\n",
        a.model.display(),
        a.eps,
        if a.unbounded { "ball" } else { "ball ∩ [0,1]" },
        a.threads,
        cpu_name()
    );
    println!("{head}\n{t}");
    std::fs::create_dir_all(&a.out)?;
    nets::io::atomic_write(&a.out.join("bench_vs_pytorch_full.md"), format!("{head}\n{t}").as_bytes())?;
    #[derive(Serialize)]
    struct Full<'a> {
        model: &'a Path,
        eps: f64,
        bounded_input: bool,
        threads: usize,
        batch: usize,
        images: usize,
        cpu: String,
        pytorch: WorkerReport,
        rust: WorkerReport,
        speedup: f64,
        numbers_agree: bool,
    }
    let full = Full {
        model: &a.model,
        eps: a.eps,
        bounded_input: !a.unbounded,
        threads: a.threads,
        batch,
        images: y.len(),
        cpu: cpu_name(),
        speedup: ps / rsec,
        pytorch: pt,
        rust: rs,
        numbers_agree: agree,
    };
    write_json_atomic(&a.out.join("bench_vs_pytorch_full.json"), &full)?;
    eprintln!("written {}/bench_vs_pytorch_full.{{json,md}}", a.out.display());
    if !agree {
        bail!("the two implementations disagree on the full test set");
    }
    Ok(())
}

/// One measurement on each side, each in a fresh process with `a.threads` threads: the PyTorch
/// worker (`script` under `py`) and this binary's `bench-worker` (`exe`), on the inputs `xp`,
/// `yp` with the workload flags `common`.
fn measure_both(
    a: &BenchArgs,
    py: &Path,
    script: &Path,
    exe: &Path,
    xp: &Path,
    yp: &Path,
    common: &[String],
) -> Result<(WorkerReport, WorkerReport)> {
    let threads = a.threads.to_string();
    let mut pc = Command::new(py);
    pc.arg(script)
        .arg("--weights")
        .arg(&a.model)
        .arg("--x")
        .arg(xp)
        .arg("--y")
        .arg(yp)
        .args(common)
        .args(["--threads", &threads]);
    pc.env("OMP_NUM_THREADS", &threads).env("MKL_NUM_THREADS", &threads);
    let pt = run_json(&mut pc, "PyTorch")?;
    let mut rc = Command::new(exe);
    rc.arg("bench-worker").arg("--model").arg(&a.model).arg("--x").arg(xp).arg("--y").arg(yp).args(common);
    rc.env("RAYON_NUM_THREADS", &threads);
    let rs = run_json(&mut rc, "Rust")?;
    Ok((pt, rs))
}

fn run_json(cmd: &mut Command, what: &str) -> Result<WorkerReport> {
    let out = cmd.output().with_context(|| format!("starting the {what} worker"))?;
    if !out.status.success() {
        bail!("the {what} worker failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    let s = String::from_utf8_lossy(&out.stdout);
    let line = s
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("the {what} worker printed no JSON:\n{s}"))?;
    serde_json::from_str(line).with_context(|| format!("the {what} worker's JSON: {line}"))
}

#[derive(Serialize)]
struct Row {
    workload: String,
    batch: usize,
    pytorch: WorkerReport,
    rust: WorkerReport,
    pytorch_median_s: f64,
    rust_median_s: f64,
    speedup: f64,
    /// Exact workloads: loss, robust error (and gradients) agree; projected: null (random).
    numbers_agree: Option<bool>,
}

#[derive(Serialize)]
struct Summary<'a> {
    model: &'a Path,
    eps: f64,
    bounded_input: bool,
    threads: usize,
    repeats: usize,
    k: usize,
    cpu: String,
    rows: Vec<Row>,
}

pub(crate) fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn gib(b: u64) -> String {
    format!("{:.2}", b as f64 / (1u64 << 30) as f64)
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.batches.is_empty()
        || a.batches.contains(&0)
        || a.repeats == 0
        || a.threads == 0
        || !a.eps.is_finite()
        || a.eps < 0.0
    {
        bail!("--batches must be positive, --repeats and --threads at least 1, --eps ≥ 0");
    }
    let workloads = a.workloads.iter().map(|s| parse_workload(s, a.k)).collect::<Result<Vec<_>>>()?;
    nets::io::check_model_file(&a.model)?;
    nets::io::check_writable_dir(&a.out).context("--out")?;
    let py = crate::pytorch_env::ensure_venv(&a.venv, &a.python)?;
    let work = PathBuf::from("target/bench-vs-pytorch");
    std::fs::create_dir_all(&work)?;
    let script = work.join("bench_pytorch.py");
    std::fs::write(&script, PY_SCRIPT)?;
    let test = load_mnist_like(&a.data_dir, experiments::datasets::Split::Test)?;
    if a.full_test_set {
        return run_full(&a, &py, &script, &work, &test);
    }
    let exe = std::env::current_exe()?;
    let mut rows = Vec::new();
    let bar = indicatif::ProgressBar::new((a.batches.len() * workloads.len()) as u64);
    bar.set_style(indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}").expect("template"));
    for &b in &a.batches {
        if b > test.len() {
            bail!("batch {b} is larger than the test set ({})", test.len());
        }
        let idx: Vec<usize> = (0..b).collect();
        let (x, y) = test.gather(&idx, DType::F32, &Device::Cpu)?;
        let xp = work.join(format!("x{b}.npy"));
        let yp = work.join(format!("y{b}.npy"));
        x.write_npy(&xp)?;
        Tensor::from_vec(y.iter().map(|&v| v as i64).collect::<Vec<_>>(), b, &Device::Cpu)?.write_npy(&yp)?;
        for w in &workloads {
            bar.set_message(format!("batch {b} {}", w.name()));
            let proj = match w.bound {
                BoundKind::Exact => 0,
                BoundKind::Projected { k } => k,
            };
            let mut common: Vec<String> = vec![
                "--eps".into(),
                a.eps.to_string(),
                "--proj".into(),
                proj.to_string(),
                "--repeats".into(),
                a.repeats.to_string(),
                "--warmup-seconds".into(),
                a.warmup_seconds.to_string(),
            ];
            if !a.unbounded {
                common.push("--bounded".into());
            }
            if w.backward {
                common.push("--backward".into());
            }
            let (pt, rs) = measure_both(&a, &py, &script, &exe, &xp, &yp, &common)?;
            let (pm, rm) = (median(&pt.seconds), median(&rs.seconds));
            rows.push(Row {
                workload: w.name(),
                batch: b,
                numbers_agree: agree(*w, &rs, &pt),
                pytorch_median_s: pm,
                rust_median_s: rm,
                speedup: pm / rm,
                pytorch: pt,
                rust: rs,
            });
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let mut t = Table::new(&[
        "workload",
        "batch",
        "PyTorch s",
        "ours s",
        "speed-up",
        "PyTorch peak GiB",
        "ours peak GiB",
        "loss PyTorch / ours",
        "agree",
    ]);
    for r in &rows {
        t.row(&[
            &r.workload,
            &r.batch.to_string(),
            &format!("{:.3}", r.pytorch_median_s),
            &format!("{:.3}", r.rust_median_s),
            &format!("{:.2}x", r.speedup),
            &gib(r.pytorch.peak_rss_above_idle_bytes),
            &gib(r.rust.peak_rss_above_idle_bytes),
            &format!("{:.5} / {:.5}", r.pytorch.loss, r.rust.loss),
            match r.numbers_agree {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "random",
            },
        ]);
    }
    let cpu = cpu_name();
    let head = format!(
        "bench-vs-pytorch: mnist-small ({}), eps {}, {}, {} threads, median of {} runs, k = {} ({cpu})\n\
         Seconds are per batch; peak is resident memory above the idle process. Projected losses are random on both sides.\n\
         Ours runs forward + backward in passes whose dual graph fits 2 GiB (exact; 128 MiB estimated for projections) with gradient accumulation (the same loss and gradients; each projected pass draws its own projections): at batch 50 both in two passes of 25.\n",
        a.model.display(),
        a.eps,
        if a.unbounded { "ball" } else { "ball ∩ [0,1]" },
        a.threads,
        a.repeats,
        a.k
    );
    println!("{head}\n{t}");
    std::fs::create_dir_all(&a.out)?;
    nets::io::atomic_write(&a.out.join("bench_vs_pytorch.md"), format!("{head}\n{t}").as_bytes())?;
    let summary = Summary {
        model: &a.model,
        eps: a.eps,
        bounded_input: !a.unbounded,
        threads: a.threads,
        repeats: a.repeats,
        k: a.k,
        cpu,
        rows,
    };
    write_json_atomic(&a.out.join("bench_vs_pytorch.json"), &summary)?;
    eprintln!("written {}/bench_vs_pytorch.{{json,md}}", a.out.display());
    Ok(())
}
