//! `cargo xtask bench-vs-lirpa`: the bound family (IBP, CROWN-IBP, CROWN, α-CROWN) timed in this
//! project and in auto_LiRPA 0.7.1 in the same run, same model, images, batch and thread count,
//! one fresh process per (implementation, method), so each peak memory is its own.
//!
//! The Python environment is prepared by [`crate::lirpa_env`]; the hidden `lirpa-worker` task is
//! the Rust side of one measurement. Writes `bench_vs_lirpa.{json,md}` to `--out`.

use crate::lirpa_env;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use dual_core::bounds::{AlphaOptions, BoundOptions, Method};
use experiments::datasets::load_mnist_like;
use experiments::report::{write_json_atomic, Table};
use experiments::workloads::{median, proc_status_bytes};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;

const PY_SCRIPT: &str = include_str!("../python/bench_lirpa.py");

/// Flags of `bench-vs-lirpa`.
#[derive(Args, Debug)]
pub struct LirpaArgs {
    /// The model (the small MNIST architecture, PyTorch checkpoint).
    #[arg(long, default_value = "../shared/models/fashion_mnist_small_eps0.1.pth")]
    model: PathBuf,
    /// Folder of the Fashion-MNIST IDX files (the first --images test images are bounded).
    #[arg(long, default_value = "/usr/share/datasets/fashion-mnist")]
    data_dir: PathBuf,
    /// Test images (≥ 1).
    #[arg(long, default_value_t = 200, value_parser = crate::parse::at_least_one)]
    images: usize,
    /// Batch size (≥ 1).
    #[arg(long, default_value_t = 50, value_parser = crate::parse::at_least_one)]
    batch: usize,
    /// Methods, comma-separated, from ibp, crown-ibp, crown, alpha-crown.
    #[arg(long, default_value = "ibp,crown-ibp,crown,alpha-crown", value_delimiter = ',')]
    methods: Vec<String>,
    /// Radius of the l_inf ball (∩ [0, 1] unless --unbounded; finite, ≥ 0).
    #[arg(long, default_value_t = 0.1, allow_hyphen_values = true, value_parser = crate::parse::non_negative)]
    eps: f64,
    /// The ball alone, not intersected with [0, 1].
    #[arg(long)]
    unbounded: bool,
    /// Timed passes over the images per measurement (after the warm-up); every batch is timed and
    /// the median seconds per batch reported with the spread.
    #[arg(long, default_value_t = 3, value_parser = crate::parse::at_least_one)]
    repeats: usize,
    /// Untimed warm-up on both sides: passes over every batch until this many seconds have gone
    /// (at least one pass). A fresh process runs its first ~0.1 s of small batches up to 1.6×
    /// slower than its steady state (thread placement settling, measured 2026-12-05); the Python
    /// side spends longer than that importing before its first batch.
    #[arg(long, default_value_t = 1.0, value_parser = crate::parse::non_negative)]
    warmup_seconds: f64,
    /// Threads on both sides.
    #[arg(long, default_value_t = 2, value_parser = crate::parse::at_least_one)]
    threads: usize,
    /// α-CROWN iterations on both sides.
    #[arg(long, default_value_t = 20)]
    alpha_iterations: usize,
    /// α-CROWN learning rate on both sides.
    #[arg(long, default_value_t = 0.1)]
    alpha_lr: f64,
    /// The Python virtual environment (created and filled from PyPI when it lacks torch).
    #[arg(long, default_value = "target/bench-venv")]
    venv: PathBuf,
    /// Python interpreter used to create the environment.
    #[arg(long, default_value = "python3")]
    python: String,
    /// A folder holding the auto_LiRPA package (default: the tarball below, unpacked into target/).
    #[arg(long)]
    lirpa_src: Option<PathBuf>,
    /// The auto_LiRPA 0.7.1 sources.
    #[arg(long, default_value = "../shared/tools/auto_LiRPA-0.7.1.tar.gz")]
    lirpa_tarball: PathBuf,
    /// Results folder: bench_vs_lirpa.json and bench_vs_lirpa.md.
    #[arg(long, default_value = "results")]
    out: PathBuf,
}

/// Flags of the hidden `lirpa-worker` (the Rust side of one measurement).
#[derive(Args, Debug)]
pub struct LirpaWorkerArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    x: PathBuf,
    #[arg(long)]
    y: PathBuf,
    #[arg(long)]
    method: String,
    #[arg(long, allow_hyphen_values = true, value_parser = crate::parse::non_negative)]
    eps: f64,
    #[arg(long)]
    bounded: bool,
    #[arg(long, value_parser = crate::parse::at_least_one)]
    batch: usize,
    #[arg(long, value_parser = crate::parse::at_least_one)]
    repeats: usize,
    #[arg(long, default_value_t = 0.0, value_parser = crate::parse::non_negative)]
    warmup_seconds: f64,
    #[arg(long, default_value_t = 20)]
    alpha_iterations: usize,
    #[arg(long, default_value_t = 0.1)]
    alpha_lr: f64,
}

/// What one worker (either side) reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    /// "rust" or "auto_LiRPA".
    pub implementation: String,
    /// Seconds of every timed batch, all passes.
    pub seconds: Vec<f64>,
    /// Certified robust error of the last pass (wrong prediction or some margin bound ≤ 0).
    pub robust_error: f64,
    /// Resident memory with the model and data loaded, bytes.
    pub idle_rss_bytes: u64,
    /// Peak resident memory above that, bytes.
    pub peak_rss_above_idle_bytes: u64,
}

/// The Rust side of one measurement: prints a [`Measurement`] as JSON.
pub fn worker(a: LirpaWorkerArgs) -> Result<()> {
    let method: Method = a.method.parse()?;
    let net = nets::io::load_model(&a.model, Some("mnist-small"), DType::F32, &Device::Cpu)?;
    let x = Tensor::read_npy(&a.x).with_context(|| format!("reading {}", a.x.display()))?.to_dtype(DType::F32)?;
    let y: Vec<u32> =
        Tensor::read_npy(&a.y)?.to_dtype(DType::I64)?.to_vec1::<i64>()?.into_iter().map(|v| v as u32).collect();
    let n = y.len();
    let opts = BoundOptions {
        alpha: AlphaOptions { iterations: a.alpha_iterations, lr: a.alpha_lr, ..AlphaOptions::default() },
        memory_budget: None,
    };
    // One batch: the bound call timed (input set and margin bounds), then, untimed, the clean
    // prediction as a check: a certified example (every margin bound > 0 over a set that holds
    // the clean point) must be predicted right, so the robust error is read off the bounds alone.
    let run = |lo: usize, hi: usize| -> Result<(usize, f64)> {
        nets::no_grad(|| -> Result<(usize, f64)> {
            let xb = x.narrow(0, lo, hi - lo)?;
            let yb = &y[lo..hi];
            let t0 = std::time::Instant::now();
            let set = experiments::certify::input_set(&xb, a.eps, experiments::certify::Norm::Linf, a.bounded)?;
            let m = net.margin_bounds(&xb, set, yb, method, &opts)?.to_dtype(DType::F64)?.to_vec2::<f64>()?;
            let secs = t0.elapsed().as_secs_f64();
            let pred: Vec<u32> = net.forward(&xb)?.argmax(1)?.to_dtype(DType::U32)?.to_vec1()?;
            let mut errors = 0;
            for (i, (r, (&yi, &p))) in m.iter().zip(yb.iter().zip(&pred)).enumerate() {
                let certified = r.iter().enumerate().all(|(j, &v)| j == yi as usize || v > 0.0);
                if certified && p != yi {
                    bail!("image {}: certified for label {yi} but predicted {p}: an unsound bound", lo + i);
                }
                errors += usize::from(!certified);
            }
            Ok((errors, secs))
        })
    };
    // One pass over every batch: the seconds of each bound call and the robust error.
    let pass = || -> Result<(Vec<f64>, usize)> {
        let (mut seconds, mut errors, mut lo) = (Vec::new(), 0, 0);
        while lo < n {
            let hi = (lo + a.batch).min(n);
            let (e, secs) = run(lo, hi)?;
            errors += e;
            seconds.push(secs);
            lo = hi;
        }
        Ok((seconds, errors))
    };
    let idle = proc_status_bytes("VmRSS");
    // Warm-up, untimed: passes until --warmup-seconds have gone, at least one (as the Python side
    // does). A fresh process's first batches run slower than its steady state (the allocator's
    // and threads' buffers growing, the threads' placement settling), a start-up cost a long run
    // amortises.
    let warm = std::time::Instant::now();
    pass()?;
    while warm.elapsed().as_secs_f64() < a.warmup_seconds {
        pass()?;
    }
    let (mut seconds, mut errors) = (Vec::new(), 0);
    for _ in 0..a.repeats {
        let (s, e) = pass()?;
        seconds.extend(s);
        errors = e;
    }
    let m = Measurement {
        implementation: "rust".into(),
        seconds,
        robust_error: errors as f64 / n.max(1) as f64,
        idle_rss_bytes: idle,
        peak_rss_above_idle_bytes: proc_status_bytes("VmHWM").saturating_sub(idle),
    };
    println!("{}", serde_json::to_string(&m)?);
    Ok(())
}

fn run_json(cmd: &mut Command, what: &str) -> Result<Measurement> {
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

/// Median, minimum and maximum seconds per batch.
fn spread(s: &[f64]) -> (f64, f64, f64) {
    let lo = s.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    (median(s), lo, hi)
}

#[derive(Serialize)]
struct Row {
    method: String,
    lirpa: Measurement,
    rust: Measurement,
    lirpa_median_s_per_batch: f64,
    rust_median_s_per_batch: f64,
    speedup: f64,
}

#[derive(Serialize)]
struct Summary<'a> {
    model: &'a Path,
    images: usize,
    batch: usize,
    eps: f64,
    bounded_input: bool,
    threads: usize,
    repeats: usize,
    warmup_seconds: f64,
    alpha_iterations: usize,
    alpha_lr: f64,
    cpu: String,
    load_average_before: String,
    rows: &'a [Row],
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

pub fn run(a: LirpaArgs) -> Result<()> {
    if !(a.eps.is_finite() && a.alpha_lr.is_finite() && a.alpha_lr > 0.0) {
        bail!("--eps must be finite and --alpha-lr finite and positive");
    }
    let methods = a.methods.iter().map(|s| s.parse::<Method>()).collect::<dual_core::Result<Vec<_>>>()?;
    nets::io::check_model_file(&a.model)?;
    nets::io::check_writable_dir(&a.out).context("--out")?;
    let work = PathBuf::from("target/bench-vs-lirpa");
    std::fs::create_dir_all(&work)?;
    let env = lirpa_env::ensure(&a.venv, &a.python, a.lirpa_src.as_deref(), &a.lirpa_tarball, &work)?;
    let script = work.join("bench_lirpa.py");
    std::fs::write(&script, PY_SCRIPT)?;
    let test = load_mnist_like(&a.data_dir, experiments::datasets::Split::Test)?;
    if a.images > test.len() {
        bail!("--images {} is more than the test set ({})", a.images, test.len());
    }
    let idx: Vec<usize> = (0..a.images).collect();
    let (x, y) = test.gather(&idx, DType::F32, &Device::Cpu)?;
    let (xp, yp) = (work.join("x.npy"), work.join("y.npy"));
    x.write_npy(&xp)?;
    Tensor::from_vec(y.iter().map(|&v| v as i64).collect::<Vec<_>>(), y.len(), &Device::Cpu)?.write_npy(&yp)?;
    let load_before = load_average();
    let threads = a.threads.to_string();
    let exe = std::env::current_exe()?;
    let mut rows = Vec::new();
    for m in &methods {
        let mut common: Vec<String> = vec![
            "--x".into(),
            xp.display().to_string(),
            "--y".into(),
            yp.display().to_string(),
            "--method".into(),
            m.name().into(),
            "--eps".into(),
            a.eps.to_string(),
            "--batch".into(),
            a.batch.to_string(),
            "--repeats".into(),
            a.repeats.to_string(),
            "--warmup-seconds".into(),
            a.warmup_seconds.to_string(),
            "--alpha-iterations".into(),
            a.alpha_iterations.to_string(),
            "--alpha-lr".into(),
            a.alpha_lr.to_string(),
        ];
        if !a.unbounded {
            common.push("--bounded".into());
        }
        eprintln!("{}: auto_LiRPA", m.name());
        let mut pc = env.command(&script);
        pc.arg("--weights").arg(&a.model).args(&common).args(["--threads", &threads]);
        pc.env("OMP_NUM_THREADS", &threads).env("MKL_NUM_THREADS", &threads);
        let lirpa = run_json(&mut pc, "auto_LiRPA")?;
        eprintln!("{}: ours", m.name());
        let mut rc = Command::new(&exe);
        rc.arg("lirpa-worker").arg("--model").arg(&a.model).args(&common);
        rc.env("RAYON_NUM_THREADS", &threads);
        let rust = run_json(&mut rc, "Rust")?;
        let (lm, rm) = (median(&lirpa.seconds), median(&rust.seconds));
        rows.push(Row {
            method: m.name().into(),
            lirpa_median_s_per_batch: lm,
            rust_median_s_per_batch: rm,
            speedup: lm / rm,
            lirpa,
            rust,
        });
        // After every method, so a long run that is stopped keeps what it measured.
        write(&a, &load_before, &rows, false)?;
    }
    write(&a, &load_before, &rows, true)?;
    eprintln!("written {}/bench_vs_lirpa.{{json,md}}", a.out.display());
    Ok(())
}

/// The table (printed when `print`) and the JSON of the methods measured so far.
fn write(a: &LirpaArgs, load_before: &str, rows: &[Row], print: bool) -> Result<()> {
    let mut t = Table::new(&[
        "method",
        "auto_LiRPA s/batch (min–max)",
        "ours s/batch (min–max)",
        "speed-up",
        "robust error auto_LiRPA / ours",
        "peak GiB auto_LiRPA / ours",
    ]);
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    for r in rows {
        let (lm, llo, lhi) = spread(&r.lirpa.seconds);
        let (rm, rlo, rhi) = spread(&r.rust.seconds);
        t.row(&[
            &r.method,
            &format!("{lm:.3} ({llo:.3}–{lhi:.3})"),
            &format!("{rm:.3} ({rlo:.3}–{rhi:.3})"),
            &format!("{:.2}x", r.speedup),
            &format!("{:.2} % / {:.2} %", 100.0 * r.lirpa.robust_error, 100.0 * r.rust.robust_error),
            &format!(
                "{:.2} / {:.2}",
                gib(r.lirpa.idle_rss_bytes + r.lirpa.peak_rss_above_idle_bytes),
                gib(r.rust.idle_rss_bytes + r.rust.peak_rss_above_idle_bytes)
            ),
        ]);
    }
    let cpu = crate::bench_vs_pytorch::cpu_name();
    let head = format!(
        "bench-vs-lirpa: mnist-small ({}), first {} test images, batch {}, eps {}, {}, {} threads, {} passes, \
         α-CROWN {} iterations lr {} ({cpu}; load average before: {load_before})\n\
         Seconds per batch of the bound call (input set and margin bounds; model building, data loading and the \
         clean prediction, checked against the certificates, untimed), median of every batch of every timed pass (after untimed passes for {}s, at least one, on both sides); peak = resident memory at its \
         highest, whole process.\n",
        a.model.display(),
        a.images,
        a.batch,
        a.eps,
        if a.unbounded { "ball" } else { "ball ∩ [0,1]" },
        a.threads,
        a.repeats,
        a.alpha_iterations,
        a.alpha_lr,
        a.warmup_seconds,
    );
    if print {
        println!("{head}\n{t}");
    }
    std::fs::create_dir_all(&a.out)?;
    nets::io::atomic_write(&a.out.join("bench_vs_lirpa.md"), format!("{head}\n{t}").as_bytes())?;
    let summary = Summary {
        model: &a.model,
        images: a.images,
        batch: a.batch,
        eps: a.eps,
        bounded_input: !a.unbounded,
        threads: a.threads,
        repeats: a.repeats,
        warmup_seconds: a.warmup_seconds,
        alpha_iterations: a.alpha_iterations,
        alpha_lr: a.alpha_lr,
        cpu,
        load_average_before: load_before.to_string(),
        rows,
    };
    write_json_atomic(&a.out.join("bench_vs_lirpa.json"), &summary)?;
    Ok(())
}
