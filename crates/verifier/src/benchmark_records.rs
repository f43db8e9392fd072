//! Sharded, resumable benchmark runs (`--shard I/N --records DIR`): the unit is an instance (a
//! line of `*_instances.csv`), instance `k` belongs to shard `k mod N`; each finished instance is
//! one record (the row of the results table). The header's settings are the benchmark, the
//! SHA-256 of its instance list and of every network and property it names, the time cap, the
//! verifier's options and the bound method.

use crate::benchmark::{Instance, Row, RunOptions, Verdict};
use crate::bounds::BoundMethod;
use records::{Merged, RecordFile, Sharding};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;

fn err(e: anyhow::Error) -> String {
    format!("{e:#}")
}

/// Opens this shard's record file for a run of `instances` (read from `csv`) in folder `dir`.
pub(crate) fn open(
    s: &Sharding,
    dir: &Path,
    name: &str,
    csv: &Path,
    instances: &[Instance],
    opts: &RunOptions,
    method: &dyn BoundMethod,
) -> Result<RecordFile, String> {
    let files: BTreeSet<&str> = instances.iter().flat_map(|i| [i.onnx.as_str(), i.vnnlib.as_str()]).collect();
    let mut hashes = serde_json::Map::new();
    for f in files {
        // A missing file is the instance's own error, recorded as its result.
        let h = records::sha256_file(&dir.join(f)).unwrap_or_else(|_| "missing".into());
        hashes.insert(f.into(), h.into());
    }
    let mut verify = opts.verify.clone();
    verify.timeout = std::time::Duration::ZERO;
    let header = json!({
        "kind": "vnncomp",
        "units": instances.len(),
        "settings": {
            "benchmark": name,
            "instances_sha256": records::sha256_file(csv).map_err(err)?,
            "files_sha256": hashes,
            "max_timeout": opts.max_timeout,
            "verify": format!("{verify:?}"),
            "method": method.name(),
        },
        "info": { "dir": dir.display().to_string(), "out": opts.out_dir.display().to_string() },
    });
    RecordFile::open(s, &header).map_err(|e| format!("--records: {e:#}"))
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Correct => "correct",
        Verdict::Wrong => "wrong",
        Verdict::NoAnswer => "none",
    }
}

/// The record of a finished instance.
pub(crate) fn record(r: &Row) -> Value {
    json!({
        "onnx": r.instance.onnx, "vnnlib": r.instance.vnnlib, "timeout": r.instance.timeout,
        "result": r.result, "error": r.error, "seconds": r.seconds, "reference": r.reference,
        "verdict": verdict_name(r.verdict),
    })
}

/// The row of a recorded instance.
pub fn row(v: &Value) -> Result<Row, String> {
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string).ok_or(format!("record {v} lacks `{k}`"));
    let f = |k: &str| v.get(k).and_then(Value::as_f64).ok_or(format!("record {v} lacks `{k}`"));
    let opt = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let verdict = match s("verdict")?.as_str() {
        "correct" => Verdict::Correct,
        "wrong" => Verdict::Wrong,
        "none" => Verdict::NoAnswer,
        x => return Err(format!("record {v}: unknown verdict `{x}`")),
    };
    Ok(Row {
        instance: Instance { onnx: s("onnx")?, vnnlib: s("vnnlib")?, timeout: f("timeout")? },
        result: s("result")?,
        error: opt("error"),
        seconds: f("seconds")?,
        reference: opt("reference"),
        verdict,
    })
}

/// The rows of a checked records folder (`records::read_all`) of a benchmark run, in the
/// instances' order, with the benchmark's name.
pub fn merge(m: &Merged) -> Result<(String, Vec<Row>), String> {
    if m.header.get("kind").and_then(Value::as_str) != Some("vnncomp") {
        return Err("not the records of a benchmark run".into());
    }
    let name = m.header["settings"]["benchmark"].as_str().unwrap_or("benchmark").to_string();
    let rows = m.units.values().map(row).collect::<Result<Vec<_>, _>>()?;
    Ok((name, rows))
}

/// Whether the records (if any) make instance `k` this process's work.
pub(crate) fn owns(s: Option<&Sharding>, k: usize) -> bool {
    s.is_none_or(|s| s.shard.owns(k))
}
