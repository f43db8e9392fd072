//! Resuming a training run safely. A run continues only from a saved state, with the same
//! architecture, data and settings; anything else is refused with a message that names what
//! differs, instead of silently starting over (and overwriting `best`/`last`) or failing deep
//! inside a tensor copy.

use super::TrainConfig;
use crate::report::write_json_atomic;
use anyhow::{bail, Context, Result};
use nets::{Network, NetworkSpec};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The file that marks a folder as holding a training run (written after every epoch).
pub const STATE_FILE: &str = "state.json";
/// The data a run trains on, written by the command line beside the state.
pub const DATA_FILE: &str = "data.json";

/// Settings that may change when a run is resumed: more epochs, another evaluation subset, and
/// whether progress is shown. Every other field of [`TrainConfig`] must stay the same.
const MAY_CHANGE: [&str; 3] = ["epochs", "eval_limit", "quiet"];

/// Whether `dir` holds a training run (its state file exists).
pub fn holds_run(dir: &Path) -> bool {
    dir.join(STATE_FILE).is_file()
}

/// Decides, before any data is loaded, how a run may use its output folder `out` (whose run
/// state lives in `run_dir`: `out` itself, or a cascade's first stage). `resume` needs a run
/// there; a run there is only started over with `restart`, which removes its state file first so
/// a later `--resume` can never mix its old checkpoints with new settings; and `out` must be a
/// folder files can be written into.
pub fn claim_out_dir(out: &Path, run_dir: &Path, resume: bool, restart: bool) -> Result<()> {
    let holds = holds_run(run_dir);
    let state = run_dir.join(STATE_FILE);
    if resume && !holds {
        bail!(
            "nothing to resume in {}: {} is missing. Start without --resume, or pass --restart to start over",
            out.display(),
            state.display()
        );
    }
    if holds && !resume && !restart {
        bail!(
            "{} already holds a training run: pass --resume to continue it, --restart to start over (overwrites its \
             checkpoints), or choose another --out",
            out.display()
        );
    }
    nets::io::check_writable_dir(out).context("--out")?;
    if restart && holds {
        std::fs::remove_file(&state).with_context(|| format!("removing {}", state.display()))?;
    }
    Ok(())
}

/// The command-line flags behind a field of [`TrainConfig`], for messages.
fn flags_of(field: &str) -> &'static str {
    match field {
        "batch_size" => "--batch-size",
        "optimizer" => "--optimizer, --lr, --momentum or --weight-decay",
        "lr" => "--lr, --lr-after, --lr-every or --lr-gamma",
        "eps" => "--eps, --eps-start or --ramp-epochs",
        "loss" => "--loss",
        "norm" => "--norm",
        "bounded_input" => "--bounded-input",
        "clip_grad_norm" => "--clip-grad",
        "seed" => "--seed",
        "proj" => "--proj",
        "f64" => "the precision",
        "augment" => "the data augmentation",
        "recipe" => "--kappa-*, --beta-*, --mtl-alpha, --pgd-steps, --pgd-step, --warmup-reg or --ibp-init",
        _ => "a setting",
    }
}

fn refuse(dir: &Path, what: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot resume the run in {}: {what}. Resume with the run's settings (only --epochs and --eval-limit may \
         change), or pass --restart to start over (overwrites it)",
        dir.display()
    )
}

/// Refuses to resume when `cfg` differs from the run's saved `config.json` in anything but
/// [`MAY_CHANGE`]; the message names the field, both values and the flags that set it.
pub fn check_config(dir: &Path, cfg: &TrainConfig) -> Result<()> {
    let p = dir.join("config.json");
    let text = std::fs::read_to_string(&p)
        .with_context(|| format!("cannot resume the run in {}: reading {}", dir.display(), p.display()))?;
    let saved: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not a training configuration", p.display()))?;
    // Settings added after the run was saved compare by their defaults: read the saved file as a
    // configuration (filling them in) and write it back, when it reads as one.
    let saved = match serde_json::from_value::<TrainConfig>(saved.clone()) {
        Ok(c) => serde_json::to_value(c)?,
        Err(_) => saved,
    };
    let new = serde_json::to_value(cfg)?;
    let (Some(saved), Some(new)) = (saved.as_object(), new.as_object()) else {
        bail!("{} is not a training configuration", p.display());
    };
    for (field, v) in new {
        if MAY_CHANGE.contains(&field.as_str()) {
            continue;
        }
        let old = saved.get(field).unwrap_or(&serde_json::Value::Null);
        if old != v {
            return Err(refuse(
                dir,
                &format!("it was trained with {field} = {old}, this run asks for {field} = {v} ({})", flags_of(field)),
            ));
        }
    }
    Ok(())
}

/// Refuses to resume when the checkpoint's architecture is not the one being trained.
pub fn check_architecture(dir: &Path, saved: Option<&NetworkSpec>, net: &Network) -> Result<()> {
    let want = net.spec();
    match saved {
        Some(s) if *s == want => Ok(()),
        Some(s) => Err(refuse(
            dir,
            &format!(
                "its checkpoint holds the architecture `{}` ({} layers, input {:?}), this run builds `{}` ({} layers, \
                 input {:?}) (--arch)",
                s.name,
                s.layers.len(),
                s.input_shape,
                want.name,
                want.layers.len(),
                want.input_shape
            ),
        )),
        None => Err(refuse(dir, "its last checkpoint holds no architecture description")),
    }
}

/// The data a run trains on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunData {
    /// Data set name (`--dataset`).
    pub dataset: String,
    /// Training examples used (`--train-limit`, or the whole training set).
    pub train_examples: usize,
}

impl RunData {
    /// With `resume`, refuses data other than the run's saved `data.json` (a run without one, from
    /// before it existed, passes); then writes `data.json`.
    pub fn check_and_record(&self, dir: &Path, resume: bool) -> Result<()> {
        let p = dir.join(DATA_FILE);
        if resume && p.is_file() {
            let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            let saved: RunData =
                serde_json::from_str(&text).with_context(|| format!("{} is not a run's data record", p.display()))?;
            if saved.dataset != self.dataset {
                return Err(refuse(
                    dir,
                    &format!(
                        "it was trained on the data set `{}`, this run asks for `{}` (--dataset)",
                        saved.dataset, self.dataset
                    ),
                ));
            }
            if saved.train_examples != self.train_examples {
                return Err(refuse(
                    dir,
                    &format!(
                        "it was trained on {} examples, this run has {} (--train-limit)",
                        saved.train_examples, self.train_examples
                    ),
                ));
            }
        }
        write_json_atomic(&p, self)
    }
}
