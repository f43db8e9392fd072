//! A VNN-COMP benchmark folder: every instance of its `*_instances.csv` (`onnx,vnnlib,timeout`),
//! one result file each, a per-instance table beside the reference answers and a summary with
//! the competition's score (+10 correct, −150 wrong, 0 otherwise).

use crate::answer::Answer;
use crate::bounds::BoundMethod;
use crate::driver::{verify_lowered, VerifyOptions};
use onnx_import::Model;
use std::collections::HashMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One line of an instances file.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// The network, relative to the benchmark folder.
    pub onnx: String,
    /// The property, relative to the benchmark folder.
    pub vnnlib: String,
    /// The time limit in seconds.
    pub timeout: f64,
}

/// Reads an instances file (`onnx,vnnlib,timeout` per line; blank lines skipped).
pub fn read_instances(path: &Path) -> Result<Vec<Instance>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let bad = || format!("{}: line {}: expected `onnx,vnnlib,timeout`, found `{line}`", path.display(), n + 1);
        let [onnx, vnnlib, t] = f[..] else { return Err(bad()) };
        let timeout: f64 = t.parse().map_err(|_| bad())?;
        if !(timeout > 0.0 && timeout.is_finite()) {
            return Err(bad());
        }
        out.push(Instance { onnx: onnx.into(), vnnlib: vnnlib.into(), timeout });
    }
    Ok(out)
}

/// The reference answer of an instance: `sat`/`unsat` when an entrant of the reference file
/// answered so, else `None`.
pub type Reference = HashMap<(String, String, String), String>;

/// Reads `results_2021.csv` (`benchmark,onnx,vnnlib,abcrown_result,abcrown_seconds,
/// nnenum_result,nnenum_seconds`); keeps `sat`/`unsat` answers, and errors if the two entrants
/// contradict each other.
pub fn read_reference(path: &Path) -> Result<Reference, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut out = Reference::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f.len() < 6 {
            return Err(format!("{}: line {}: expected 7 columns", path.display(), n + 1));
        }
        let answers: Vec<&str> = [f[3], f[5]].into_iter().filter(|a| *a == "sat" || *a == "unsat").collect();
        if answers.windows(2).any(|w| w[0] != w[1]) {
            return Err(format!("{}: line {}: the entrants disagree", path.display(), n + 1));
        }
        if let Some(a) = answers.first() {
            out.insert((f[0].into(), f[1].into(), f[2].into()), a.to_string());
        }
    }
    Ok(out)
}

/// Our answer beside the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// sat/unsat, and the reference agrees or has none.
    Correct,
    /// sat/unsat contradicting the reference.
    Wrong,
    /// unknown, timeout or error.
    NoAnswer,
}

/// One instance's outcome.
#[derive(Debug, Clone)]
pub struct Row {
    /// The instance.
    pub instance: Instance,
    /// `sat`, `unsat`, `unknown`, `timeout`, `error`.
    pub result: String,
    /// The error message, if any.
    pub error: Option<String>,
    /// Seconds spent.
    pub seconds: f64,
    /// The reference answer.
    pub reference: Option<String>,
    /// Correct, wrong or no answer.
    pub verdict: Verdict,
}

/// Score of one row: +10 correct, −150 wrong, 0 otherwise.
pub fn score(v: Verdict) -> i64 {
    match v {
        Verdict::Correct => 10,
        Verdict::Wrong => -150,
        Verdict::NoAnswer => 0,
    }
}

/// Settings of a benchmark run.
pub struct RunOptions {
    /// Cap on each instance's time limit (seconds), below the file's.
    pub max_timeout: Option<f64>,
    /// Where result files and tables go.
    pub out_dir: PathBuf,
    /// The reference answers, if any.
    pub reference: Option<Reference>,
    /// Verification settings (its timeout is replaced per instance).
    pub verify: VerifyOptions,
    /// `--shard I/N --records DIR`: this shard's instances only, one record each, resuming from
    /// the records; the tables are then left to `cargo xtask merge`.
    pub records: Option<records::Sharding>,
}

/// Runs every instance of the folder `dir` (its one `*_instances.csv`); calls `progress` after
/// each. Writes `OUT/NAME/results/*.txt`, `OUT/NAME_results.csv` and `OUT/NAME_summary.md`.
pub fn run_benchmark(
    dir: &Path,
    method: &dyn BoundMethod,
    opts: &RunOptions,
    mut progress: impl FnMut(usize, usize, &Row),
) -> Result<Vec<Row>, String> {
    let csv = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with("_instances.csv")))
        .ok_or_else(|| format!("{} has no *_instances.csv", dir.display()))?;
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("benchmark").to_string();
    let instances = read_instances(&csv)?;
    let res_dir = opts.out_dir.join(&name).join("results");
    std::fs::create_dir_all(&res_dir).map_err(|e| format!("cannot create {}: {e}", res_dir.display()))?;
    // Each network imported and lowered once, for all its instances.
    let mut models: HashMap<String, Result<(Model, Option<nets::Network>), String>> = HashMap::new();
    let mut rows = Vec::new();
    let mut log = match &opts.records {
        Some(s) => Some(crate::benchmark_records::open(s, dir, &name, &csv, &instances, opts, method)?),
        None => None,
    };
    let mine = (0..instances.len()).filter(|&k| crate::benchmark_records::owns(opts.records.as_ref(), k)).count();
    for (k, inst) in instances.iter().enumerate() {
        if !crate::benchmark_records::owns(opts.records.as_ref(), k) {
            continue;
        }
        if let Some(v) = log.as_ref().and_then(|l| l.done(k as u64)) {
            let row = crate::benchmark_records::row(v)?;
            progress(rows.len() + 1, mine, &row);
            rows.push(row);
            continue;
        }
        let t0 = Instant::now();
        let model = models.entry(inst.onnx.clone()).or_insert_with(|| {
            let m = Model::load(dir.join(&inst.onnx)).map_err(|e| e.to_string())?;
            let net = m.to_network(&inst.onnx, &candle_core::Device::Cpu).ok();
            Ok((m, net))
        });
        let limit = opts.max_timeout.map_or(inst.timeout, |m| m.min(inst.timeout));
        let answer = match (model, vnnlib::parse_file(dir.join(&inst.vnnlib))) {
            (Err(e), _) => Answer::Error(e.clone()),
            (_, Err(e)) => Answer::Error(e.to_string()),
            (Ok((m, net)), Ok(p)) => {
                let mut v = opts.verify.clone();
                v.timeout = Duration::from_secs_f64(limit).saturating_sub(t0.elapsed());
                verify_lowered(m, net.as_ref(), &p, method, &v)
            }
        };
        let seconds = t0.elapsed().as_secs_f64();
        let stem = |s: &str| Path::new(s).file_stem().and_then(|s| s.to_str()).unwrap_or(s).to_string();
        let file = res_dir.join(format!("{}__{}.txt", stem(&inst.onnx), stem(&inst.vnnlib)));
        std::fs::write(&file, answer.result_file()).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        let reference = opts
            .reference
            .as_ref()
            .and_then(|r| r.get(&(name.clone(), inst.onnx.clone(), inst.vnnlib.clone())).cloned());
        let result = answer.keyword().to_string();
        let verdict = match (result.as_str(), &reference) {
            ("sat" | "unsat", Some(r)) if *r != result => Verdict::Wrong,
            ("sat" | "unsat", _) => Verdict::Correct,
            _ => Verdict::NoAnswer,
        };
        let error = if let Answer::Error(e) = &answer { Some(e.clone()) } else { None };
        let row = Row { instance: inst.clone(), result, error, seconds, reference, verdict };
        if let Some(l) = log.as_mut() {
            l.append(k as u64, crate::benchmark_records::record(&row)).map_err(|e| format!("{e:#}"))?;
        }
        progress(rows.len() + 1, mine, &row);
        rows.push(row);
        if log.is_none() {
            write_tables(&opts.out_dir, &name, &rows, opts.max_timeout)?;
        }
    }
    Ok(rows)
}

/// Writes the per-instance table and the summary (rewritten after every instance, so a run
/// cut short still leaves its tables).
pub fn write_tables(out: &Path, name: &str, rows: &[Row], cap: Option<f64>) -> Result<(), String> {
    let mut csv = String::from("onnx,vnnlib,timeout,result,seconds,reference_2021,verdict\n");
    for r in rows {
        let _ = writeln!(
            csv,
            "{},{},{},{},{:.3},{},{}",
            r.instance.onnx,
            r.instance.vnnlib,
            r.instance.timeout,
            r.result,
            r.seconds,
            r.reference.as_deref().unwrap_or("-"),
            match r.verdict {
                Verdict::Correct => "correct",
                Verdict::Wrong => "WRONG",
                Verdict::NoAnswer => "-",
            }
        );
    }
    let p = out.join(format!("{name}_results.csv"));
    std::fs::write(&p, csv).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    std::fs::write(out.join(format!("{name}_summary.md")), summary(name, rows, cap))
        .map_err(|e| format!("cannot write the summary: {e}"))
}

/// The summary table in Markdown.
pub fn summary(name: &str, rows: &[Row], cap: Option<f64>) -> String {
    let count = |f: &dyn Fn(&Row) -> bool| rows.iter().filter(|r| f(r)).count();
    let sat = count(&|r| r.result == "sat");
    let unsat = count(&|r| r.result == "unsat");
    let unknown = count(&|r| r.result == "unknown");
    let timeout = count(&|r| r.result == "timeout");
    let error = count(&|r| r.result == "error");
    let wrong = count(&|r| r.verdict == Verdict::Wrong);
    let ref_sat = count(&|r| r.reference.as_deref() == Some("sat"));
    let ref_unsat = count(&|r| r.reference.as_deref() == Some("unsat"));
    let total: i64 = rows.iter().map(|r| score(r.verdict)).sum();
    let secs: f64 = rows.iter().map(|r| r.seconds).sum();
    let mut s = format!("# {name}\n\n");
    let _ = writeln!(
        s,
        "{} instances, per-instance limit: the csv's{}; {:.0} s in all.\n",
        rows.len(),
        cap.map(|c| format!(", capped at {c} s")).unwrap_or_default(),
        secs
    );
    s.push_str("| | instances | sat | unsat | unknown | timeout | error | wrong | score |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|\n");
    let _ = writeln!(
        s,
        "| ours | {} | {sat} | {unsat} | {unknown} | {timeout} | {error} | {wrong} | {total} |",
        rows.len()
    );
    let _ = writeln!(
        s,
        "| 2021 (α,β-CROWN / nnenum) | {} | {ref_sat} | {ref_unsat} | {} | | | 0 | {} |",
        rows.len(),
        rows.len() - ref_sat - ref_unsat,
        10 * (ref_sat + ref_unsat)
    );
    s.push_str("\nOur answers against the 2021 answers:\n\n| ours \\ 2021 | sat | unsat | none |\n|---|---|---|---|\n");
    for ours in ["sat", "unsat", "unknown", "timeout", "error"] {
        let c = |theirs: Option<&str>| count(&|r: &Row| r.result == ours && r.reference.as_deref() == theirs);
        let _ = writeln!(s, "| {ours} | {} | {} | {} |", c(Some("sat")), c(Some("unsat")), c(None));
    }
    let errors: Vec<&Row> = rows.iter().filter(|r| r.error.is_some()).collect();
    if !errors.is_empty() {
        s.push_str("\nErrors:\n\n");
        for r in errors {
            let _ = writeln!(s, "- {} / {}: {}", r.instance.onnx, r.instance.vnnlib, r.error.as_deref().unwrap_or(""));
        }
    }
    s
}
