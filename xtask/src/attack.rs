//! `cargo xtask attack`: clean, FGSM and PGD error of a model on a test set (l_inf).
//!
//! A file with several stages is attacked as a cascade: each example is routed to the stage that
//! answers it (the first whose exact bound over the same l_inf ball certifies its own
//! prediction, else the last; `experiments::cascade_certify`) and attacked against that stage.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use experiments::attacks::{count_errors, fgsm, pgd, PgdConfig};
use experiments::cascade_certify::for_each_answering_stage;
use experiments::certify::{check_data_shape, default_data_dir, load_test_set, EvalSettings, Norm};
use experiments::progress::Progress;
use experiments::report::{write_json_atomic, Table};
use nets::Network;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct AttackArgs {
    #[command(flatten)]
    md: crate::args::ModelDataArgs,
    /// Keep the adversarial points in the data range [0, 1] (the papers' PGD does not clip).
    #[arg(long)]
    bounded_input: bool,
    /// PGD steps (the papers: 100).
    #[arg(long, default_value_t = 100, value_parser = crate::parse::at_least_one)]
    pgd_steps: usize,
    /// PGD step size (the papers: 0.01; finite, > 0).
    #[arg(long, default_value_t = 0.01, allow_hyphen_values = true, value_parser = crate::parse::positive)]
    pgd_step_size: f64,
    /// Attack stage K (0 first) of a cascade file alone. Without it, a file with several stages
    /// is attacked as a cascade: each example against the stage that answers it (the first that
    /// certifies its own prediction over the same ball, exact bound; else the last).
    #[arg(long, value_name = "K")]
    stage: Option<usize>,
}

/// Clean, FGSM and PGD errors of one network on a batch.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
struct Counts {
    answered: usize,
    clean_errors: usize,
    fgsm_errors: usize,
    pgd_errors: usize,
}

fn attack_batch(net: &Network, x: &Tensor, y: &[u32], eps: f64, cfg: &PgdConfig) -> Result<Counts> {
    let model = |t: &Tensor| net.forward(t).map_err(|e| candle_core::Error::Msg(e.to_string()));
    Ok(Counts {
        answered: y.len(),
        clean_errors: count_errors(&model(x)?, y)?,
        fgsm_errors: count_errors(&model(&fgsm(model, x, y, eps, cfg.clip)?)?, y)?,
        pgd_errors: count_errors(&model(&pgd(model, x, y, cfg)?)?, y)?,
    })
}

fn pct(v: f64) -> String {
    format!("{:.2} %", 100.0 * v)
}

pub fn run(args: AttackArgs) -> Result<()> {
    let a = &args.md;
    // (Ranges are checked by the flags' parsers; these guard the struct built in code.)
    if !a.eps.is_finite() || a.eps < 0.0 {
        bail!("--eps must be a non-negative number, got {}", a.eps);
    }
    if !(args.pgd_step_size.is_finite() && args.pgd_step_size > 0.0) {
        bail!("--pgd-step-size must be a positive number, got {}", args.pgd_step_size);
    }
    if a.batch_size == 0 || a.limit == Some(0) || args.pgd_steps == 0 {
        bail!("--batch-size, --limit and --pgd-steps must be at least 1");
    }
    a.check_files()?;
    let start = Instant::now();
    let dtype = if a.f64 { DType::F64 } else { DType::F32 };
    let dev = Device::Cpu;
    let mut nets = nets::io::load_models(&a.model, a.arch.as_deref(), dtype, &dev)
        .with_context(|| format!("loading model {}", a.model.display()))?;
    let in_file = nets.len();
    if let Some(k) = args.stage {
        if k >= in_file {
            bail!("--stage {k}: {} holds {in_file} stage(s) (0..={})", a.model.display(), in_file.saturating_sub(1));
        }
        nets = vec![nets.swap_remove(k)];
    }
    if nets.is_empty() {
        bail!("model file {} holds no model", a.model.display());
    }
    // Routing of a cascade: the exact bound over the attack's ball.
    let route = EvalSettings {
        eps: a.eps,
        norm: Norm::Linf,
        bounded_input: args.bounded_input,
        pgd: false,
        memory_budget: None,
        proj: None,
    };
    let data_dir = a.data_dir.clone().unwrap_or_else(|| default_data_dir(&a.dataset));
    let mut data = load_test_set(&a.dataset, &data_dir)?;
    for net in &nets {
        check_data_shape(net, &data, &a.dataset)?;
    }
    if let Some(l) = a.limit {
        data.truncate(l);
    }
    let clip = args.bounded_input.then_some((0.0, 1.0));
    let cfg = PgdConfig { step_size: args.pgd_step_size, steps: args.pgd_steps, clip, ..PgdConfig::new(a.eps) };
    let total = data.len();
    let bar = Progress::new("attack");
    let mut per_stage = vec![Counts::default(); nets.len()];
    let mut i = 0;
    while i < total {
        let end = (i + a.batch_size).min(total);
        let (x, y) = data.batch(i, end, &dev)?;
        let x = x.to_dtype(dtype)?;
        if nets.len() == 1 {
            let c = attack_batch(&nets[0], &x, &y, a.eps, &cfg)?;
            add(&mut per_stage[0], &c);
        } else {
            for_each_answering_stage(&nets, &x, &y, &route, |k, net, xs, ys, _| {
                let c = attack_batch(net, xs, ys, a.eps, &cfg)?;
                add(&mut per_stage[k], &c);
                Ok(())
            })?;
        }
        let (clean, fg, pg) = sums(&per_stage);
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
    let (clean, fg, pg) = sums(&per_stage);
    let seconds = start.elapsed().as_secs_f64();
    let mut t = Table::new(&["figure", "value"]);
    t.row(&["model", &a.model.display().to_string()]);
    t.row(&["data", &format!("{} ({total} test examples)", a.dataset)]);
    t.row(&["threat model", &format!("l_inf ball{}, eps {}", if args.bounded_input { " ∩ [0,1]" } else { "" }, a.eps)]);
    t.row(&["clean error", &pct(clean as f64 / n)]);
    t.row(&["FGSM error", &pct(fg as f64 / n)]);
    t.row(&[&format!("PGD error ({} steps of {})", args.pgd_steps, args.pgd_step_size), &pct(pg as f64 / n)]);
    if let Some(k) = args.stage {
        t.row(&["stage", &format!("{k} of {in_file}, attacked alone")]);
    } else if nets.len() > 1 {
        t.row(&["cascade", &format!("{} stages: each example attacked against the stage that answers it", nets.len())]);
    }
    t.row(&["seconds", &format!("{seconds:.1}")]);
    println!("{t}");
    if nets.len() > 1 {
        let mut st = Table::new(&["stage", "answered here", "clean errors", "FGSM errors", "PGD errors"]);
        for (k, c) in per_stage.iter().enumerate() {
            let cells = [k, c.answered, c.clean_errors, c.fgsm_errors, c.pgd_errors].map(|v| v.to_string());
            st.row(&cells.iter().map(String::as_str).collect::<Vec<_>>());
        }
        println!("{st}");
    }
    if let Some(p) = &a.json {
        let mut v = serde_json::json!({
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
        if let Some(k) = args.stage {
            v["stage"] = serde_json::json!(k);
            v["stages_in_file"] = serde_json::json!(in_file);
        } else if nets.len() > 1 {
            let stages: Vec<_> = per_stage
                .iter()
                .enumerate()
                .map(|(k, c)| {
                    serde_json::json!({"stage": k, "answered": c.answered, "clean_errors": c.clean_errors,
                    "fgsm_errors": c.fgsm_errors, "pgd_errors": c.pgd_errors})
                })
                .collect();
            v["stages"] = serde_json::json!(stages);
        }
        write_json_atomic(p, &v)?;
        println!("results written to {}", p.display());
    }
    Ok(())
}

fn add(acc: &mut Counts, c: &Counts) {
    acc.answered += c.answered;
    acc.clean_errors += c.clean_errors;
    acc.fgsm_errors += c.fgsm_errors;
    acc.pgd_errors += c.pgd_errors;
}

/// Clean, FGSM and PGD errors over all stages.
fn sums(per_stage: &[Counts]) -> (usize, usize, usize) {
    per_stage.iter().fold((0, 0, 0), |(a, b, c), s| (a + s.clean_errors, b + s.fgsm_errors, c + s.pgd_errors))
}
