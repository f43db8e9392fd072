//! Which units a shard owns, and where its index comes from.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;

/// The environment variables a cluster scheduler sets to a job's index, read in this order when
/// `--shard env/N` leaves the index to the scheduler: a Slurm array task
/// (`#SBATCH --array=0-N-1`) and a Kubernetes Indexed Job (`completionMode: Indexed`).
pub const ENV_INDEX_VARS: [&str; 2] = ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"];

/// Shard `index` of `count`: it owns the units `u` with `u mod count = index` (round robin over
/// small units, so every shard gets a like share of easy and hard parts of the data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard, `0 ≤ index < count`.
    pub index: usize,
    /// How many shards the work is cut into.
    pub count: usize,
}

impl Shard {
    /// The whole run as one shard.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// A shard, checked: `count ≥ 1` and `index < count`.
    pub fn new(index: usize, count: usize) -> Result<Shard> {
        if count == 0 {
            bail!("--shard: the number of shards must be at least 1");
        }
        if index >= count {
            bail!(
                "--shard: shard index {index} is not below the number of shards {count} (indices run 0..={})",
                count - 1
            );
        }
        Ok(Shard { index, count })
    }

    /// Parses `I/N`, or `env/N` to read `I` from the scheduler's environment ([`ENV_INDEX_VARS`]).
    pub fn parse(s: &str) -> Result<Shard> {
        Self::parse_with(s, |k| std::env::var(k).ok())
    }

    /// [`Shard::parse`] with the environment given (for tests).
    pub fn parse_with(s: &str, env: impl Fn(&str) -> Option<String>) -> Result<Shard> {
        let Some((i, n)) = s.split_once('/') else {
            bail!(
                "--shard expects I/N (shard I of N, from 0) or env/N (I from ${}), got `{s}`",
                ENV_INDEX_VARS.join(" or $")
            );
        };
        let count: usize = n.trim().parse().with_context(|| format!("--shard {s}: `{n}` is not a number of shards"))?;
        let index = if i.trim() == "env" {
            let found: Vec<(&str, String)> = ENV_INDEX_VARS.iter().filter_map(|k| env(k).map(|v| (*k, v))).collect();
            match found.as_slice() {
                [] => bail!(
                    "--shard {s}: none of ${} is set (not a Slurm array task or Indexed Job?)",
                    ENV_INDEX_VARS.join(", $")
                ),
                [(k, v), rest @ ..] => {
                    if let Some((k2, v2)) = rest.iter().find(|(_, v2)| v2.trim() != v.trim()) {
                        bail!("--shard {s}: ${k}={v} and ${k2}={v2} disagree");
                    }
                    v.trim().parse().with_context(|| format!("--shard {s}: ${k}=`{v}` is not a shard index"))?
                }
            }
        } else {
            i.trim().parse().with_context(|| format!("--shard {s}: `{i}` is not a shard index (a number or env)"))?
        };
        Self::new(index, count).with_context(|| format!("--shard {s}"))
    }

    /// Whether this shard owns unit `unit`.
    pub fn owns(&self, unit: usize) -> bool {
        unit % self.count == self.index
    }

    /// The name of this shard's record file: `shard-I-of-N.jsonl` (zero-padded, so the files sort).
    pub fn file_name(&self) -> String {
        format!("shard-{:05}-of-{:05}.jsonl", self.index, self.count)
    }

    /// Parses a name made by [`Shard::file_name`].
    pub fn from_file_name(name: &str) -> Option<Shard> {
        let rest = name.strip_prefix("shard-")?.strip_suffix(".jsonl")?;
        let (i, n) = rest.split_once("-of-")?;
        Shard::new(i.parse().ok()?, n.parse().ok()?).ok()
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// What `--shard` and `--records` ask for: this shard's part, recorded in `dir`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sharding {
    /// The records folder (shared by all shards).
    pub dir: PathBuf,
    /// This process's shard.
    pub shard: Shard,
}
