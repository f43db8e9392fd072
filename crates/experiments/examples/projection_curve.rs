//! Robust (certified) error of the paper's Fashion-MNIST model (eps 0.1) on the first N test
//! images, with *projected* bounds (k = 10, 50, 100, 200; several seeds) and with the exact bound.
//!
//! A projected robust error is an estimate, not a certified number: only the exact row certifies.
//!
//! ```text
//! cargo run --release -p experiments --example projection_curve -- --n 1000
//! ```
//! Options: `--n N` (1000), `--batch B` (50), `--seeds S` (3), `--ks 10,50,100,200`,
//! `--bounded-ks 50` (ball ∩ [0, 1]; empty to skip), `--eps 0.1`, `--rule per-example|batch-total`,
//! `--model PATH` (../shared/models/fashion_mnist_small_eps0.1.pth), `--data DIR`
//! (/usr/share/datasets/fashion-mnist), `--no-exact`, `--png PATH` (the curve as a picture: mean,
//! lowest and highest robust error over the seeds against k, and the exact error).

use candle_core::{DType, Device};
use dual_core::{certified_from_bounds, robust_bounds, DualOptions, DualSource};
use dual_layers::{InfBall, InfBallBounded};
use experiments::datasets::{load_mnist_like, Dataset, Split};
use nets::Network;
use projections::{projected_dual, ProjectionConfig, ReluRule};
use std::path::PathBuf;
use std::time::Instant;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

macro_rules! bail {
    ($($t:tt)*) => { return Err(format!($($t)*).into()) };
}

struct Args {
    n: usize,
    batch: usize,
    seeds: u64,
    ks: Vec<usize>,
    bounded_ks: Vec<usize>,
    eps: f64,
    rule: ReluRule,
    model: PathBuf,
    data: PathBuf,
    exact: bool,
    png: Option<PathBuf>,
}

fn list(s: &str) -> Result<Vec<usize>> {
    s.split(',')
        .filter(|t| !t.trim().is_empty())
        .map(|t| t.trim().parse::<usize>().map_err(|e| format!("a list of integers: {e}").into()))
        .collect()
}

fn parse() -> Result<Args> {
    let mut a = Args {
        n: 1000,
        batch: 50,
        seeds: 3,
        ks: vec![10, 50, 100, 200],
        bounded_ks: vec![50],
        eps: 0.1,
        rule: ReluRule::PerExample,
        model: PathBuf::from("../shared/models/fashion_mnist_small_eps0.1.pth"),
        data: PathBuf::from("/usr/share/datasets/fashion-mnist"),
        exact: true,
        png: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--no-exact" {
            a.exact = false;
            continue;
        }
        const VALUED: [&str; 10] =
            ["--n", "--batch", "--seeds", "--ks", "--bounded-ks", "--eps", "--rule", "--model", "--data", "--png"];
        if !VALUED.contains(&flag.as_str()) {
            bail!("unknown option {flag}");
        }
        let Some(v) = it.next() else { bail!("{flag} needs a value") };
        match flag.as_str() {
            "--n" => a.n = v.parse()?,
            "--batch" => a.batch = v.parse()?,
            "--seeds" => a.seeds = v.parse()?,
            "--ks" => a.ks = list(&v)?,
            "--bounded-ks" => a.bounded_ks = list(&v)?,
            "--eps" => a.eps = v.parse()?,
            "--rule" => {
                a.rule = match v.as_str() {
                    "per-example" => ReluRule::PerExample,
                    "batch-total" => ReluRule::BatchTotal,
                    _ => bail!("--rule is per-example or batch-total"),
                }
            }
            "--model" => a.model = PathBuf::from(v),
            "--data" => a.data = PathBuf::from(v),
            "--png" => a.png = Some(PathBuf::from(v)),
            _ => bail!("unknown option {flag}"),
        }
    }
    if a.batch == 0 {
        bail!("--batch must be positive");
    }
    Ok(a)
}

/// Robust error over the data set: exact when `k` is `None`, else projected with seed `seed`
/// (each batch draws its own projections from it).
fn robust_error(net: &Network, data: &Dataset, a: &Args, bounded: bool, k: Option<usize>, seed: u64) -> Result<f64> {
    let mut wrong = 0;
    let mut start = 0;
    let mut batch_idx = 0u64;
    while start < data.len() {
        let end = (start + a.batch).min(data.len());
        let (x, y) = data.batch(start, end, &Device::Cpu)?;
        let dual = match k {
            None => {
                let src: Box<dyn DualSource> = if bounded {
                    Box::new(InfBallBounded::new(&x, a.eps, 0.0, 1.0)?)
                } else {
                    Box::new(InfBall::new(&x, a.eps)?)
                };
                net.dual(&x, src, &DualOptions::default())?
            }
            Some(k) => {
                let mut cfg =
                    ProjectionConfig::linf(a.eps, k, seed.wrapping_mul(1_000_003).wrapping_add(batch_idx)).rule(a.rule);
                if bounded {
                    cfg = cfg.bounded(0.0, 1.0);
                }
                projected_dual(&x, net.dual_nodes(&x)?, &cfg, &DualOptions::default())?
            }
        };
        let f = robust_bounds(&dual, &y)?;
        wrong += certified_from_bounds(&f, &y)?.iter().filter(|c| !**c).count();
        start = end;
        batch_idx += 1;
    }
    Ok(wrong as f64 / data.len() as f64)
}

fn main() -> Result<()> {
    let a = parse()?;
    let net = nets::io::load_model(&a.model, Some("mnist-small"), DType::F32, &Device::Cpu)
        .map_err(|e| format!("loading {}: {e}", a.model.display()))?;
    let mut data = load_mnist_like(&a.data, Split::Test).map_err(|e| format!("loading {}: {e}", a.data.display()))?;
    data.truncate(a.n);
    println!(
        "Fashion-MNIST test images 0..{}, eps {}, batch {}, ReLU rule {:?}; projected numbers are estimates, only `exact` certifies.",
        data.len(),
        a.eps,
        a.batch,
        a.rule
    );
    println!("| input set | k | robust error per seed | mean | seconds per run |");
    println!("|---|---|---|---|---|");
    let mut rows: Vec<(bool, Vec<usize>)> = vec![(false, a.ks.clone())];
    if !a.bounded_ks.is_empty() {
        rows.push((true, a.bounded_ks.clone()));
    }
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for (bounded, ks) in rows {
        let (mut mean_pts, mut lo_pts, mut hi_pts) = (Vec::new(), Vec::new(), Vec::new());
        let set = if bounded { "ball ∩ [0,1]" } else { "ball" };
        for &k in &ks {
            let t = Instant::now();
            let errs: Vec<f64> =
                (0..a.seeds).map(|s| robust_error(&net, &data, &a, bounded, Some(k), s)).collect::<Result<_>>()?;
            let secs = t.elapsed().as_secs_f64() / a.seeds.max(1) as f64;
            let mean = errs.iter().sum::<f64>() / errs.len().max(1) as f64;
            let per: Vec<String> = errs.iter().map(|e| format!("{:.1} %", 100.0 * e)).collect();
            println!("| {set} | {k} | {} | {:.2} % | {secs:.0} |", per.join(", "), 100.0 * mean);
            let (lo, hi) = errs.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, &e| (a.0.min(e), a.1.max(e)));
            mean_pts.push((k as f64, 100.0 * mean));
            lo_pts.push((k as f64, 100.0 * lo));
            hi_pts.push((k as f64, 100.0 * hi));
        }
        if !mean_pts.is_empty() {
            series.push((format!("{set}: projected, mean"), mean_pts));
            series.push((format!("{set}: lowest seed"), lo_pts));
            series.push((format!("{set}: highest seed"), hi_pts));
        }
        if a.exact {
            let t = Instant::now();
            let e = robust_error(&net, &data, &a, bounded, None, 0)?;
            println!("| {set} | exact | {:.1} % | {:.2} % | {:.0} |", 100.0 * e, 100.0 * e, t.elapsed().as_secs_f64());
            let kmax = ks.iter().copied().max().unwrap_or(1) as f64;
            let kmin = ks.iter().copied().min().unwrap_or(1) as f64;
            series.push((format!("{set}: exact (certified)"), vec![(kmin, 100.0 * e), (kmax, 100.0 * e)]));
        }
    }
    if let Some(p) = &a.png {
        experiments::plot::line_plot(
            p,
            "Robust error: projected estimate vs exact",
            "projections k",
            "robust error (%)",
            &series,
        )
        .map_err(|e| format!("{e}"))?;
        println!("plot written to {}", p.display());
    }
    Ok(())
}
