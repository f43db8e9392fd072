//! `cargo xtask <task>`: the project's command line, one module per task.
//!
//! A thin layer: raw flags are parsed here into checked configs of the `experiments` crate,
//! which does the work.

#![forbid(unsafe_code)]
// `!(a <= b)` is how the input checks reject NaN together with the wrong order.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

mod args;
mod attack;
mod bench_vs_lirpa;
mod bench_vs_pytorch;
mod bound_args;
mod certify;
mod download;
mod extra;
mod lirpa_env;
mod merge;
mod parse;
mod pytorch_env;
mod reproduce;
mod size;
mod train;
mod venv;
mod verify;
mod vnncomp;

use clap::{Parser, Subcommand};

/// The system allocator below 32 MiB, mimalloc above (`hybrid_alloc`: less resident memory than
/// mimalloc alone at the same speed).
#[global_allocator]
static GLOBAL: hybrid_alloc::Hybrid = hybrid_alloc::Hybrid;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Train, certify and reproduce provably robust networks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Clean, FGSM and PGD error of a model on a test set (l_inf).
    Attack(attack::AttackArgs),
    /// Time the robust loss here and in the PyTorch package (same weights, inputs, threads).
    BenchVsPytorch(bench_vs_pytorch::BenchArgs),
    /// Time IBP, CROWN-IBP, CROWN and α-CROWN here and in auto_LiRPA 0.7.1, side by side.
    BenchVsLirpa(bench_vs_lirpa::LirpaArgs),
    /// One measurement of bench-vs-lirpa (internal).
    #[command(hide = true)]
    LirpaWorker(bench_vs_lirpa::LirpaWorkerArgs),
    /// One measurement of bench-vs-pytorch (internal).
    #[command(hide = true)]
    BenchWorker(bench_vs_pytorch::WorkerArgs),
    /// Certified evaluation of a model on a test set (clean, PGD and certified robust error).
    Certify(certify::CertifyArgs),
    /// Download, verify and unpack a data set (mnist, fashion-mnist, cifar10, svhn, har).
    Download(download::DownloadArgs),
    /// Combine the shards of a --records folder (certify or vnncomp) into one report.
    Merge(merge::MergeArgs),
    /// Reproduce a paper experiment (train, then evaluate clean / PGD / certified error).
    Reproduce(reproduce::ReproduceArgs),
    /// Train a model (robust, interval-bound, baseline or PGD-adversarial), optionally as a cascade.
    Train(Box<train::TrainArgs>),
    /// Verify a VNN-LIB property on an ONNX network (sat / unsat / unknown / timeout).
    Verify(verify::VerifyArgs),
    /// Run a VNN-COMP benchmark folder (its *_instances.csv), with results and a score.
    Vnncomp(vnncomp::VnncompArgs),
}

fn main() {
    // First, before any kernel runs: a CPU without AVX2/FMA would otherwise stop with SIGILL.
    dual_layers::cpu::exit_if_unsupported();
    // (MIMALLOC_PURGE_DELAY is set for `cargo xtask` in .cargo/config.toml: mimalloc reads it
    // before main, so it cannot be set here.)
    // Candle's CPU thread pool spins 25,000 rounds waiting for work; on 2 cores that steals time
    // from the thread doing it (measured: 14.6 s → 13.4 s for 1,000 certified images).
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "100");
    }
    // One set of worker threads: Candle runs its element-wise ops on its own barrier pool and its
    // matmuls (and this workspace's kernels) on rayon's; on 2 CPUs the two pools take turns and
    // preempt each other. With no barrier-pool workers, Candle's ops run on the calling thread and
    // every parallel pass on rayon's pool (`dual_core::CpuPool::of_candle_ops`). Measured
    // 2026-12-05 (docs/PERFORMANCE.md): exact forward 0.105–0.113 → 0.085–0.092 s per batch of
    // 50, forward + backward 0.465–0.478 → 0.425–0.429 s, k = 50 forward + backward 0.123–0.134
    // → 0.119–0.120 s with a tighter spread; IBP, CROWN-IBP and CROWN unchanged. Read when
    // Candle's pool is first used, so set before any op; the environment wins.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let cli = Cli::parse();
    let res = match cli.task {
        Task::Attack(a) => attack::run(a),
        Task::BenchVsPytorch(a) => bench_vs_pytorch::run(a),
        Task::BenchWorker(a) => bench_vs_pytorch::worker(a),
        Task::BenchVsLirpa(a) => bench_vs_lirpa::run(a),
        Task::LirpaWorker(a) => bench_vs_lirpa::worker(a),
        Task::Certify(a) => certify::run(a),
        Task::Download(a) => download::run(a),
        Task::Merge(a) => merge::run(a),
        Task::Reproduce(a) => reproduce::run(a),
        Task::Train(a) => train::run(*a),
        Task::Verify(a) => verify::run(a),
        Task::Vnncomp(a) => vnncomp::run(a),
    };
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
