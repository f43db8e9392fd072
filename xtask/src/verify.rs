//! `cargo xtask verify`: one ONNX network, one VNN-LIB property, one answer.

use anyhow::{Context, Result};
use clap::Args;
use std::time::{Duration, Instant};
use verifier::{verify, BoundMethod, SoundDual, VerifyOptions};

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The network (ONNX).
    #[arg(long)]
    onnx: String,
    /// The property (VNN-LIB 1.0): the conjunction of its assertions is the unsafe set.
    #[arg(long)]
    vnnlib: String,
    /// Time limit in seconds.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Where to write the result file (competition format); printed if absent.
    #[arg(long)]
    out: Option<String>,
    /// Seed of the falsifier's random starts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Sound answers despite floating point (docs/SOUNDNESS.md): `unsat` only from bounds checked
    /// in f64 with every rounding charged, `sat` only when f64 and f32 both confirm the point.
    #[arg(long)]
    sound: bool,
    /// With --sound: the bounds also cover the network's own f32 rounding.
    #[arg(long, requires = "sound")]
    sound_deployed_f32: bool,
    /// Bound method, input splitting and progress lines.
    #[command(flatten)]
    bound: crate::bound_args::BoundArgs,
}

pub fn run(a: VerifyArgs) -> Result<()> {
    anyhow::ensure!(a.timeout > 0.0 && a.timeout.is_finite(), "--timeout must be a positive number of seconds");
    let method: Box<dyn BoundMethod> = if a.sound {
        // The sound bound is the f64 re-check of the exact dual; another method cannot be asked for.
        anyhow::ensure!(
            matches!(a.bound.method_name(), "auto" | "exact"),
            "--sound uses the exact dual re-checked in f64 (docs/SOUNDNESS.md); drop --method {}",
            a.bound.method_name()
        );
        Box::new(SoundDual { opts: sound::SoundOptions { deployed_f32: a.sound_deployed_f32 } })
    } else {
        a.bound.method()?
    };
    let t0 = Instant::now();
    let model = onnx_import::Model::load(&a.onnx).with_context(|| format!("importing {}", a.onnx))?;
    let prop = vnnlib::parse_file(&a.vnnlib)?;
    let opts = VerifyOptions {
        timeout: Duration::from_secs_f64(a.timeout).saturating_sub(t0.elapsed()),
        seed: a.seed,
        sound: a.sound,
        bab: a.bound.bab(),
        ..VerifyOptions::default()
    };
    let answer = verify(&model, &prop, method.as_ref(), &opts);
    eprintln!("{} in {:.2} s", answer.keyword(), t0.elapsed().as_secs_f64());
    if let verifier::Answer::Error(e) = &answer {
        eprintln!("error: {e}");
    }
    match a.out {
        Some(p) => std::fs::write(&p, answer.result_file()).with_context(|| format!("writing {p}"))?,
        None => print!("{}", answer.result_file()),
    }
    Ok(())
}
