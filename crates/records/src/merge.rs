//! Reading every shard of a records folder back: the same settings in every file, every shard
//! present, every unit recorded once.

use crate::file::read_file;
use crate::shard::Shard;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// All shards of a records folder, checked.
#[derive(Debug, Clone)]
pub struct Merged {
    /// The header of shard 0 (`settings`, `info`, and what the caller put there).
    pub header: Value,
    /// How many shards wrote the folder.
    pub shards: usize,
    /// Every unit's record, by unit.
    pub units: BTreeMap<u64, Value>,
}

/// The members of two headers that differ, as `path: A here, B there` (the `info` member, which
/// holds paths and other settings that do not change the results, and the shard are ignored).
pub fn settings_diff(a: &Value, b: &Value) -> Vec<String> {
    let mut out = Vec::new();
    diff_into("", a, b, &mut out);
    out
}

fn diff_into(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                if path.is_empty() && (k == "info" || k == "shard") {
                    continue;
                }
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                diff_into(&p, x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null), out);
            }
        }
        _ if a != b => out.push(format!("{path}: {a} there, {b} now")),
        _ => {}
    }
}

/// Reads every `shard-I-of-N.jsonl` of `dir` and checks them: one `N`, every shard `0..N`
/// present, the same settings, and — when the header holds `units` (how many units the run has)
/// — every unit recorded, by the shard that owns it. Errors name the missing shards and units.
pub fn read_all(dir: &Path) -> Result<Merged> {
    let mut files: BTreeMap<usize, (Shard, std::path::PathBuf)> = BTreeMap::new();
    let mut count = None;
    for e in std::fs::read_dir(dir).with_context(|| format!("reading the records folder {}", dir.display()))? {
        let p = e?.path();
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else { continue };
        let Some(s) = Shard::from_file_name(name) else { continue };
        match count {
            None => count = Some(s.count),
            Some(n) if n != s.count => {
                bail!(
                    "{} holds shards of runs cut {n} ways and {} ways ({name}); merge one run",
                    dir.display(),
                    s.count
                )
            }
            _ => {}
        }
        files.insert(s.index, (s, p));
    }
    let Some(n) = count else { bail!("{} holds no shard record files (shard-I-of-N.jsonl)", dir.display()) };
    let missing: Vec<String> = (0..n).filter(|i| !files.contains_key(i)).map(|i| format!("{i}/{n}")).collect();
    if !missing.is_empty() {
        bail!("{}: shard{} {} missing (never started?)", dir.display(), plural(missing.len()), missing.join(", "));
    }
    let mut header: Option<Value> = None;
    let mut units = BTreeMap::new();
    for (s, p) in files.values() {
        let r = read_file(p)?;
        let Some(h) = r.header else { bail!("{} has no header (shard {s} never got started)", p.display()) };
        if let Some(first) = &header {
            let d = settings_diff(first, &h);
            if !d.is_empty() {
                bail!("{} was written with other settings than shard 0/{n}: {}", p.display(), d.join("; "));
            }
        } else {
            header = Some(h);
        }
        for (u, v) in r.units {
            if !s.owns(u as usize) {
                bail!("{} records unit {u}, which shard {s} does not own", p.display());
            }
            units.insert(u, v);
        }
    }
    let header = header.expect("at least one shard");
    if let Some(total) = header.get("units").and_then(Value::as_u64) {
        let mut by_shard: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
        for u in (0..total).filter(|u| !units.contains_key(u)) {
            by_shard.entry((u % n as u64) as usize).or_default().push(u);
        }
        if !by_shard.is_empty() {
            let list: Vec<String> = by_shard
                .iter()
                .map(|(s, us)| {
                    let shown: Vec<String> = us.iter().take(8).map(u64::to_string).collect();
                    let more = if us.len() > 8 { format!(" and {} more", us.len() - 8) } else { String::new() };
                    format!("shard {s}/{n} lacks unit{} {}{more}", plural(us.len()), shown.join(", "))
                })
                .collect();
            bail!(
                "{}: unfinished ({}); rerun those shards with the same command, it resumes",
                dir.display(),
                list.join("; ")
            );
        }
    }
    Ok(Merged { header, shards: n, units })
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
