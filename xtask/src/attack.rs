//! `cargo xtask attack`: clean, FGSM and PGD error of a model on a test set (l_inf).

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use experiments::attacks::{count_errors, fgsm, pgd, PgdConfig};
use experiments::certify::{default_data_dir, load_test_set};
use experiments::progress::Progress;
use experiments::report::{write_json_atomic, Table};
use std::time::Instant;

#[derive(Args, Debug)]
pub struct AttackArgs {
    #[command(flatten)]
    md: crate::args::ModelDataArgs,
    /// Keep the adversarial points in the data range [0, 1] (the papers' PGD does not clip).
    #[arg(long)]
    bounded_input: bool,
    /// PGD steps (the papers: 100).
    #[arg(long, default_value_t = 100)]
    pgd_steps: usize,
    /// PGD step size (the papers: 0.01).
    #[arg(long, default_value_t = 0.01)]
    pgd_step_size: f64,
}

fn pct(v: f64) -> String {
    format!("{:.2} %", 100.0 * v)
}

pub fn run(args: AttackArgs) -> Result<()> {
    let a = &args.md;
    if !a.eps.is_finite() || a.eps < 0.0 {
        bail!("--eps must be a non-negative number, got {}", a.eps);
    }
    if a.batch_size == 0 || a.limit == Some(0) || args.pgd_steps == 0 {
        bail!("--batch-size, --limit and --pgd-steps must be at least 1");
    }
    if !a.model.is_file() {
        bail!("model file {} does not exist", a.model.display());
    }
    let start = Instant::now();
    let dtype = if a.f64 { DType::F64 } else { DType::F32 };
    let dev = Device::Cpu;
    let net = nets::io::load_model(&a.model, a.arch.as_deref(), dtype, &dev)
        .with_context(|| format!("loading model {}", a.model.display()))?;
    let data_dir = a.data_dir.clone().unwrap_or_else(|| default_data_dir(&a.dataset));
    let mut data = load_test_set(&a.dataset, &data_dir)?;
    if let Some(l) = a.limit {
        data.truncate(l);
    }
    let clip = args.bounded_input.then_some((0.0, 1.0));
    let cfg = PgdConfig { step_size: args.pgd_step_size, steps: args.pgd_steps, clip, ..PgdConfig::new(a.eps) };
    let model = |t: &Tensor| net.forward(t).map_err(|e| candle_core::Error::Msg(e.to_string()));
    let total = data.len();
    let bar = Progress::new("attack");
    let (mut clean, mut fg, mut pg) = (0usize, 0usize, 0usize);
    let mut i = 0;
    while i < total {
        let end = (i + a.batch_size).min(total);
        let (x, y) = data.batch(i, end, &dev)?;
        let x = x.to_dtype(dtype)?;
        clean += count_errors(&model(&x)?, &y)?;
        fg += count_errors(&model(&fgsm(model, &x, &y, a.eps, clip)?)?, &y)?;
        pg += count_errors(&model(&pgd(model, &x, &y, &cfg)?)?, &y)?;
        let msg = format!(
            "clean {:.2}% | FGSM {:.2}% | PGD {:.2}%",
            100.0 * clean as f64 / end as f64,
            100.0 * fg as f64 / end as f64,
            100.0 * pg as f64 / end as f64
        );
        bar.update(end as u64, total as u64, &msg);
        i = end;
    }
    bar.finish();
    let n = total.max(1) as f64;
    let seconds = start.elapsed().as_secs_f64();
    let mut t = Table::new(&["figure", "value"]);
    t.row(&["model", &a.model.display().to_string()]);
    t.row(&["data", &format!("{} ({total} test examples)", a.dataset)]);
    t.row(&["threat model", &format!("l_inf ball{}, eps {}", if args.bounded_input { " ∩ [0,1]" } else { "" }, a.eps)]);
    t.row(&["clean error", &pct(clean as f64 / n)]);
    t.row(&["FGSM error", &pct(fg as f64 / n)]);
    t.row(&[&format!("PGD error ({} steps of {})", args.pgd_steps, args.pgd_step_size), &pct(pg as f64 / n)]);
    t.row(&["seconds", &format!("{seconds:.1}")]);
    println!("{t}");
    if let Some(p) = &a.json {
        let v = serde_json::json!({
            "n": total,
            "clean_error": clean as f64 / n,
            "fgsm_error": fg as f64 / n,
            "pgd_error": pg as f64 / n,
            "seconds": seconds,
            "settings": {
                "model": a.model, "arch": a.arch, "dataset": a.dataset, "data_dir": data_dir,
                "eps": a.eps, "limit": a.limit, "batch_size": a.batch_size, "bounded_input": args.bounded_input,
                "pgd_steps": args.pgd_steps, "pgd_step_size": args.pgd_step_size, "f64": a.f64,
            },
        });
        write_json_atomic(p, &v)?;
        println!("results written to {}", p.display());
    }
    Ok(())
}
