//! Sharded, resumable certification (`--shard I/N --records DIR`) and the merge of its shards.
//!
//! The unit of work is a block of `batch_size` consecutive test examples — the batch of a
//! single-process run, so a merged run adds up the very batches one process would have
//! evaluated. Block `b` belongs to shard `b mod N`; each finished block is one record
//! (`start`, `end`, the three error counts, seconds, and `examples`: one verdict per example of
//! the block — clean, certified, PGD — so a merge can say which examples were certified). The header's settings are what defines the
//! results: the model file's and the data's SHA-256, the data set, the number of examples, the
//! threat model, the batch size, PGD, the precision and the method (bound, α-CROWN's options,
//! projections, stage); paths, the memory budget and the device are kept as `info` only.

use crate::cascade_certify::StageReport;
use crate::certify::{BatchCounts, CertifyConfig, CertifyReport, ExampleVerdict};
use crate::certify_family::FamilyReport;
use crate::datasets::Dataset;
use crate::report::Table;
use anyhow::{bail, Context, Result};
use records::{Merged, RecordFile, Sharding};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// What `--shard` and `--records` ask of a certification run.
#[derive(Debug, Clone, PartialEq)]
pub struct CertifyRecords {
    /// The records folder and this process's shard.
    pub sharding: Sharding,
    /// The method beyond the settings: how the merged report names it (see [`Method`]).
    pub method: Method,
}

/// The method of a run, as its report shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// The exact dual (or the projected estimate, per the settings) on a one-model file.
    Exact,
    /// Stage `stage` of a cascade file of `stages_in_file`, certified alone.
    Stage { stage: usize, stages_in_file: usize },
    /// A bound of the family (`ibp`, `crown`, `crown-ibp`, `alpha-crown`).
    Family { bound: String, alpha_iterations: Option<usize>, alpha_lr: Option<f64> },
}

/// The blocks of a test set of `total` examples: block `b` is `b·bs .. min((b+1)·bs, total)`.
pub fn blocks(total: usize, batch_size: usize) -> Vec<(usize, usize)> {
    let bs = batch_size.max(1);
    (0..total.div_ceil(bs)).map(|b| (b * bs, ((b + 1) * bs).min(total))).collect()
}

/// The SHA-256 of the examples (f32, little-endian) and labels (u32, little-endian) of `data`.
fn data_sha256(data: &Dataset) -> String {
    let mut bytes = Vec::with_capacity(4 * (data.images.len() + data.labels.len()) + 32);
    for d in [data.n, data.channels, data.height, data.width] {
        bytes.extend_from_slice(&(d as u64).to_le_bytes());
    }
    for v in &data.images {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    for l in &data.labels {
        bytes.extend_from_slice(&l.to_le_bytes());
    }
    records::sha256_hex(&bytes)
}

/// Opens this shard's record file for a run of `cfg` on `data` (after `--limit`).
pub(crate) fn open(r: &CertifyRecords, cfg: &CertifyConfig, data: &Dataset) -> Result<RecordFile> {
    let config = serde_json::to_value(cfg)?;
    let mut settings = config.clone();
    let Value::Object(m) = &mut settings else { bail!("settings are not a JSON object") };
    // Where things are and how much memory they may use do not change the results.
    for k in ["model", "data_dir", "json", "memory_budget", "device", "limit"] {
        m.remove(k);
    }
    m.insert("model_sha256".into(), records::sha256_file(&cfg.model).context("--records: hashing the model")?.into());
    m.insert("data_sha256".into(), data_sha256(data).into());
    m.insert("examples".into(), data.len().into());
    m.insert("method".into(), serde_json::to_value(&r.method)?);
    let header = json!({
        "kind": "certify",
        "units": blocks(data.len(), cfg.batch_size).len(),
        "settings": settings,
        "info": { "config": config },
    });
    RecordFile::open(&r.sharding, &header).context("--records")
}

/// The record of a finished block.
pub(crate) fn record(start: usize, end: usize, c: &BatchCounts, seconds: f64) -> Value {
    json!({
        "start": start, "end": end, "n": c.n,
        "clean_errors": c.clean_errors, "robust_errors": c.robust_errors, "pgd_errors": c.pgd_errors,
        "seconds": seconds,
        "examples": c.verdicts,
    })
}

/// The counts of a recorded block, checked against the block it should be.
pub(crate) fn counts(v: &Value, start: usize, end: usize) -> Result<BatchCounts> {
    let get = |k: &str| {
        v.get(k).and_then(Value::as_u64).map(|x| x as usize).with_context(|| format!("record {v} lacks `{k}`"))
    };
    if get("start")? != start || get("end")? != end || get("n")? != end - start {
        bail!("record {v} is not the block {start}..{end}");
    }
    let counts = BatchCounts {
        n: get("n")?,
        clean_errors: get("clean_errors")?,
        robust_errors: get("robust_errors")?,
        pgd_errors: get("pgd_errors")?,
        verdicts: Vec::new(),
    };
    // Per-example verdicts (records written before they existed have none): they must count up
    // to the block's counts.
    let Some(ex) = v.get("examples") else { return Ok(counts) };
    let verdicts: Vec<ExampleVerdict> =
        serde_json::from_value(ex.clone()).with_context(|| format!("record {start}..{end}: unreadable `examples`"))?;
    let clean: Vec<bool> = verdicts.iter().map(|e| e.clean).collect();
    let certified: Vec<bool> = verdicts.iter().map(|e| e.certified).collect();
    // PGD verdicts for every example or for none.
    let pgd: Option<Vec<bool>> = verdicts.iter().map(|e| e.pgd).collect();
    if pgd.is_none() && verdicts.iter().any(|e| e.pgd.is_some()) {
        bail!("record {start}..{end}: PGD verdicts for some examples only");
    }
    let from = BatchCounts::from_verdicts(&clean, &certified, pgd.as_deref())?;
    if (from.n, from.clean_errors, from.robust_errors, from.pgd_errors)
        != (counts.n, counts.clean_errors, counts.robust_errors, counts.pgd_errors)
    {
        bail!("record {start}..{end}: its `examples` do not add up to its counts");
    }
    Ok(from)
}

/// Every recorded block of a checked records folder, in test-set order: `(start, counts)`, each
/// block's counts checked against its range and its per-example verdicts ([`counts`]).
fn recorded_blocks(m: &Merged) -> Result<Vec<(usize, BatchCounts)>> {
    let mut blocks = Vec::with_capacity(m.units.len());
    for (u, v) in &m.units {
        let start = v.get("start").and_then(Value::as_u64).with_context(|| format!("unit {u}: no start"))? as usize;
        let end = v.get("end").and_then(Value::as_u64).with_context(|| format!("unit {u}: no end"))? as usize;
        blocks.push((start, counts(v, start, end).with_context(|| format!("unit {u}"))?));
    }
    blocks.sort_by_key(|b| b.0);
    Ok(blocks)
}

/// Every example's verdicts of a merged run, in test-set order, as `(index, verdict)`; `None`
/// when some block's record has none (written before records kept them).
pub fn merged_verdicts(m: &Merged) -> Result<Option<Vec<(usize, ExampleVerdict)>>> {
    let mut out = Vec::new();
    for (start, c) in recorded_blocks(m)? {
        if c.verdicts.len() != c.n {
            return Ok(None);
        }
        out.extend(c.verdicts.into_iter().enumerate().map(|(k, e)| (start + k, e)));
    }
    Ok(Some(out))
}

/// The merged report of a records folder, as one process would have written it.
#[derive(Debug, Clone)]
pub enum MergedReport {
    /// A one-model file, exact dual or projected estimate.
    Exact(CertifyReport),
    /// One stage of a cascade file.
    Stage(StageReport),
    /// A bound of the family.
    Family(FamilyReport),
}

impl MergedReport {
    /// The table one process prints.
    pub fn table(&self) -> Table {
        match self {
            MergedReport::Exact(r) => r.table(),
            MergedReport::Stage(s) => {
                let mut t = s.report.table();
                t.row(&["stage", &format!("{} of a cascade of {}, certified alone", s.stage, s.stages_in_file)]);
                t
            }
            MergedReport::Family(f) => f.table(),
        }
    }

    /// Writes the JSON one process writes (atomically).
    pub fn write_json(&self, path: &std::path::Path) -> Result<()> {
        use crate::report::write_json_atomic;
        match self {
            MergedReport::Exact(r) => write_json_atomic(path, r),
            MergedReport::Stage(s) => write_json_atomic(path, s),
            MergedReport::Family(f) => write_json_atomic(path, f),
        }
    }
}

/// Adds up the blocks of a checked records folder (`records::read_all`) of a certification run.
/// `json` replaces the settings' `json` (where the merged report goes). The report's `seconds`
/// is the sum of the blocks' seconds (compute time, not wall-clock time).
pub fn merge(m: &Merged, json: Option<&std::path::Path>) -> Result<MergedReport> {
    if m.header.get("kind").and_then(Value::as_str) != Some("certify") {
        bail!("not the records of a certification run (kind {})", m.header.get("kind").unwrap_or(&Value::Null));
    }
    let mut cfg: CertifyConfig = serde_json::from_value(m.header["info"]["config"].clone())
        .context("the records' header holds no readable settings")?;
    cfg.json = json.map(Into::into);
    let method: Method = serde_json::from_value(m.header["settings"]["method"].clone())
        .context("the records' header names no method")?;
    let mut acc = BatchCounts::default();
    for (_, c) in recorded_blocks(m)? {
        acc.add(&c);
    }
    let seconds: f64 = m.units.values().map(|v| v.get("seconds").and_then(Value::as_f64).unwrap_or(0.0)).sum();
    let want = m.header["settings"]["examples"].as_u64().context("the records' header has no example count")?;
    if acc.n as u64 != want {
        bail!("the records add up to {} examples, the run has {want}", acc.n);
    }
    let n = acc.n.max(1) as f64;
    let report = CertifyReport {
        n: acc.n,
        clean_error: acc.clean_errors as f64 / n,
        robust_error: acc.robust_errors as f64 / n,
        pgd_error: cfg.pgd.then(|| acc.pgd_errors as f64 / n),
        seconds,
        settings: cfg,
    };
    Ok(match method {
        Method::Exact => MergedReport::Exact(report),
        Method::Stage { stage, stages_in_file } => MergedReport::Stage(StageReport { report, stage, stages_in_file }),
        Method::Family { bound, alpha_iterations, alpha_lr } => {
            MergedReport::Family(FamilyReport { bound, alpha_iterations, alpha_lr, report })
        }
    })
}
