//! One shard's record file: a header line, then one JSON line per finished unit, appended and
//! flushed to disk line by line; reopened, a torn last line (the process was killed mid-write) is
//! cut off, so the unit is done again — never lost, never recorded twice.

use crate::merge::settings_diff;
use crate::shard::Sharding;
use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The contents of a record file.
#[derive(Debug, Clone)]
pub struct Records {
    /// The header (`None` for a file without one complete line).
    pub header: Option<Value>,
    /// The finished units and their records, by unit.
    pub units: BTreeMap<u64, Value>,
    /// Bytes after the last complete line (a write cut short), to be cut off.
    pub torn_bytes: usize,
    /// Length of the complete lines.
    pub valid_len: usize,
}

/// Reads a record file without changing it.
pub fn read_file(path: &Path) -> Result<Records> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse(path, &bytes)
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Records> {
    // Every line is written with its newline in one call: what follows the last newline is a
    // write that a kill cut short, whatever it looks like.
    let valid_len = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    let mut header = None;
    let mut units = BTreeMap::new();
    for (k, line) in bytes[..valid_len].split_inclusive(|&b| b == b'\n').enumerate() {
        let line = &line[..line.len() - 1];
        let bad =
            |why: &str| format!("{} line {}: {why} (not written by this program, or damaged)", path.display(), k + 1);
        let v: Value = serde_json::from_slice(line).map_err(|e| anyhow::anyhow!(bad(&format!("not JSON: {e}"))))?;
        if k == 0 {
            let Some(h) = v.get("header") else { bail!(bad("the first line is not a header")) };
            header = Some(h.clone());
            continue;
        }
        let Some(u) = v.get("unit").and_then(Value::as_u64) else { bail!(bad("a record without a `unit` number")) };
        if units.insert(u, v).is_some() {
            bail!(bad(&format!("unit {u} is recorded twice")));
        }
    }
    Ok(Records { header, units, torn_bytes: bytes.len() - valid_len, valid_len })
}

/// A shard's record file, open for appending (and locked against a second process running the
/// same shard).
#[derive(Debug)]
pub struct RecordFile {
    file: File,
    path: PathBuf,
    units: BTreeMap<u64, Value>,
}

impl RecordFile {
    /// Opens (or creates) the record file of `s.shard` in `s.dir` for a run whose settings are
    /// `header` (a JSON object; its `info` member is kept but not compared). A file written with
    /// other settings is refused, naming what differs; a torn last line is cut off.
    pub fn open(s: &Sharding, header: &Value) -> Result<RecordFile> {
        let Value::Object(h) = header else { bail!("a record header must be a JSON object") };
        let mut h: Map<String, Value> = h.clone();
        h.insert("shard".into(), Value::String(s.shard.to_string()));
        let header = Value::Object(h);
        std::fs::create_dir_all(&s.dir).with_context(|| format!("--records: creating {}", s.dir.display()))?;
        let path = s.dir.join(s.shard.file_name());
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .with_context(|| format!("--records: opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                bail!("{} is in use by another process (is shard {} running twice?)", path.display(), s.shard)
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).with_context(|| format!("reading {}", path.display()))?;
        let rec = parse(&path, &bytes)?;
        if rec.torn_bytes > 0 {
            eprintln!(
                "records: {} ended in a line cut short ({} bytes, the process was killed while writing it); \
                 removed, its unit is done again",
                path.display(),
                rec.torn_bytes
            );
            file.set_len(rec.valid_len as u64).with_context(|| format!("truncating {}", path.display()))?;
        }
        match &rec.header {
            None => {
                let mut line = serde_json::to_vec(&serde_json::json!({ "header": header }))?;
                line.push(b'\n');
                file.write_all(&line)
                    .and_then(|_| file.sync_data())
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Some(old) => {
                let diff = settings_diff(old, &header);
                if !diff.is_empty() {
                    bail!(
                        "{} was written with other settings ({}); rerun with the same settings, or use another \
                         --records folder",
                        path.display(),
                        diff.join("; ")
                    );
                }
            }
        }
        Ok(RecordFile { file, path, units: rec.units })
    }

    /// The record of `unit` if it is done.
    pub fn done(&self, unit: u64) -> Option<&Value> {
        self.units.get(&unit)
    }

    /// How many units are recorded.
    pub fn len(&self) -> usize {
        self.units.len()
    }

    /// Whether no unit is recorded.
    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records `unit` as done with the fields of `record` (a JSON object): one line, written in
    /// one call and flushed to disk before returning.
    pub fn append(&mut self, unit: u64, record: Value) -> Result<()> {
        let Value::Object(mut m) = record else { bail!("a record must be a JSON object") };
        if self.units.contains_key(&unit) {
            bail!("unit {unit} is already recorded in {}", self.path.display());
        }
        m.insert("unit".into(), Value::from(unit));
        let v = Value::Object(m);
        let mut line = serde_json::to_vec(&v)?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|_| self.file.sync_data())
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.units.insert(unit, v);
        Ok(())
    }
}
