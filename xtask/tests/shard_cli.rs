//! Sharded certification the way a cluster runs it (docs/CLUSTER.md): N processes of the built
//! binary on this machine, each with its array index in the environment (`SLURM_ARRAY_TASK_ID`
//! as a Slurm array sets it, `JOB_COMPLETION_INDEX` as a Kubernetes Indexed Job does), one of
//! them killed with SIGKILL mid-way and started again, a line torn as a kill mid-write leaves it;
//! `cargo xtask merge` must give the report of a single-process run. Also: a rerun with other
//! settings and a merge with a shard missing are refused, naming what is wrong.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SHARDS: usize = 3;

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("xtask-shard-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The certification every process runs: the paper's Fashion-MNIST model, 120 test images in
/// blocks of 5 (24 blocks, 8 per shard), with PGD.
fn certify_args(model: &Path, data: &Path, eps: &str) -> Vec<String> {
    [
        "certify",
        "--model",
        model.to_str().unwrap(),
        "--arch",
        "mnist-small",
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        data.to_str().unwrap(),
        "--eps",
        eps,
        "--limit",
        "120",
        "--batch-size",
        "5",
        "--pgd",
    ]
    .map(String::from)
    .to_vec()
}

fn xtask(args: &[String], env: &[(&str, String)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xtask"));
    c.args(args).env_remove("SLURM_ARRAY_TASK_ID").env_remove("JOB_COMPLETION_INDEX");
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn run_ok(mut c: Command) -> String {
    let out = c.output().unwrap();
    assert!(out.status.success(), "{c:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn run_err(mut c: Command) -> String {
    let out = c.output().unwrap();
    assert!(!out.status.success(), "{c:?} should have failed");
    String::from_utf8(out.stderr).unwrap()
}

/// Complete record lines (after the header) in a shard file.
fn recorded(p: &Path) -> usize {
    std::fs::read(p).map(|b| b.iter().filter(|&&c| c == b'\n').count().saturating_sub(1)).unwrap_or(0)
}

/// Array task `i`'s environment: even tasks as Slurm sets it, odd ones as Kubernetes does.
fn task_env(i: usize) -> Vec<(&'static str, String)> {
    vec![(if i.is_multiple_of(2) { "SLURM_ARRAY_TASK_ID" } else { "JOB_COMPLETION_INDEX" }, i.to_string())]
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn shards_killed_and_restarted_merge_to_the_single_process_result() {
    let Some(model) = shared_data::shared_path("models/fashion_mnist_small_eps0.1.pth") else { return };
    let Some(data) = shared_data::fashion_mnist_dir() else { return };
    let d = tmp("cluster");
    let records = d.join("records");
    let shard_args = |eps: &str| {
        let mut a = certify_args(&model, &data, eps);
        a.extend(["--shard".into(), format!("env/{SHARDS}"), "--records".into(), records.display().to_string()]);
        a
    };

    // All array tasks at once, as the scheduler starts them.
    let mut children: Vec<Child> = (0..SHARDS)
        .map(|i| xtask(&shard_args("0.1"), &task_env(i)).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap())
        .collect();
    // Task 1 is killed (SIGKILL: no chance to clean up) once it has recorded a block.
    let victim = 1;
    let file = records.join(format!("shard-{victim:05}-of-{SHARDS:05}.jsonl"));
    let t0 = Instant::now();
    while recorded(&file) < 1 {
        assert!(t0.elapsed() < Duration::from_secs(300), "shard {victim} recorded nothing in 300 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let still_running = children[victim].try_wait().unwrap().is_none();
    children[victim].kill().unwrap();
    children[victim].wait().unwrap();
    let after_kill = recorded(&file);
    eprintln!("shard {victim} killed after {after_kill} of 8 blocks (still running: {still_running})");
    // A kill in the middle of writing a line leaves a torn last line: the restart must cut it.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"clean_errors\":3,\"end\":"))
        .unwrap();
    // Before task 1 is back, the merge refuses the unfinished folder, naming the shard.
    for (i, c) in children.iter_mut().enumerate() {
        if i != victim {
            assert!(c.wait().unwrap().success(), "shard {i} failed");
        }
    }
    let mut merge = xtask(&["merge".into(), records.display().to_string()], &[]);
    let e = run_err(merge);
    assert!(e.contains(&format!("shard {victim}/{SHARDS} lacks")), "{e}");
    // The restart resumes: the blocks recorded before the kill are not done again.
    let before = std::fs::read_to_string(&file).unwrap();
    let out = xtask(&shard_args("0.1"), &task_env(victim)).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "restart failed: {stderr}");
    assert!(stderr.contains("cut short"), "the torn line was not reported: {stderr}");
    let after = std::fs::read_to_string(&file).unwrap();
    let kept = before.rfind('\n').unwrap() + 1;
    assert_eq!(&after[..kept], &before[..kept], "the records before the kill are kept as they were");
    assert_eq!(recorded(&file), 8, "shard {victim} owns blocks 1, 4, ..., 22");
    // Rerunning a finished shard does nothing.
    run_ok(xtask(&shard_args("0.1"), &task_env(victim)));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), after);
    // Other settings into the same folder are refused, naming the setting.
    let e = run_err(xtask(&shard_args("0.05"), &task_env(0)));
    assert!(e.contains("other settings") && e.contains("eps: 0.1 there, 0.05 now"), "{e}");

    // The merged report equals one process's.
    let merged = d.join("merged.json");
    merge = xtask(&["merge".into(), records.display().to_string(), "--json".into(), merged.display().to_string()], &[]);
    let table = run_ok(merge);
    let single = d.join("single.json");
    let mut args = certify_args(&model, &data, "0.1");
    args.extend(["--json".into(), single.display().to_string()]);
    let single_table = run_ok(xtask(&args, &[]));
    let (m, s) = (read_json(&merged), read_json(&single));
    eprintln!("merged: {m}\nsingle: {s}");
    for k in ["n", "clean_error", "robust_error", "pgd_error"] {
        assert_eq!(m[k], s[k], "{k}");
    }
    assert_eq!(m["n"], 120);
    let strip = |mut v: Value| {
        v["settings"]["json"] = Value::Null;
        v["seconds"] = Value::Null;
        v
    };
    assert_eq!(strip(m), strip(s.clone()), "the same keys and settings");
    let rows = |t: &str| -> Vec<String> { t.lines().filter(|l| l.contains('%')).map(String::from).collect() };
    assert_eq!(rows(&table), rows(&single_table), "the same table");

    // Every example's verdicts, in test-set order, counting up to the merged errors.
    let ex = d.join("examples.jsonl");
    run_ok(xtask(&["merge".into(), records.display().to_string(), "--examples".into(), ex.display().to_string()], &[]));
    let lines: Vec<Value> =
        std::fs::read_to_string(&ex).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 120);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["index"], i, "{l}");
    }
    let share = |key: &str| lines.iter().filter(|l| l[key] == Value::Bool(false)).count() as f64 / 120.0;
    let (robust, clean) = (s["robust_error"].as_f64().unwrap(), s["clean_error"].as_f64().unwrap());
    assert!((share("certified") - robust).abs() < 1e-12 && (share("clean") - clean).abs() < 1e-12);
    if let Some(p) = s["pgd_error"].as_f64() {
        assert!((share("pgd") - p).abs() < 1e-12);
    }
    // A record whose verdicts do not add up to its counts is refused at merge.
    let bad = d.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    for i in 0..SHARDS {
        let name = format!("shard-{i:05}-of-{SHARDS:05}.jsonl");
        let mut text = std::fs::read_to_string(records.join(&name)).unwrap();
        if i == 0 {
            // Flip the first recorded verdict of the first block.
            assert!(text.contains("\"certified\":true"), "shard 0 certified nothing");
            text = text.replacen("\"certified\":true", "\"certified\":false", 1);
        }
        std::fs::write(bad.join(&name), text).unwrap();
    }
    let e = run_err(xtask(&["merge".into(), bad.display().to_string()], &[]));
    assert!(e.contains("do not add up"), "{e}");

    // A folder with a shard missing is refused, naming it.
    let partial = d.join("partial");
    std::fs::create_dir_all(&partial).unwrap();
    for i in [0, 2] {
        let name = format!("shard-{i:05}-of-{SHARDS:05}.jsonl");
        std::fs::copy(records.join(&name), partial.join(&name)).unwrap();
    }
    let e = run_err(xtask(&["merge".into(), partial.display().to_string()], &[]));
    assert!(e.contains("shard 1/3 missing"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_shard_flags_are_refused_before_any_work() {
    let d = tmp("flags");
    let model = d.join("m.pth");
    std::fs::write(&model, b"not used").unwrap();
    let base = certify_args(&model, &d, "0.1");
    let with = |extra: &[&str], env: &[(&str, String)]| {
        let mut a = base.clone();
        a.extend(extra.iter().map(|s| s.to_string()));
        run_err(xtask(&a, env))
    };
    assert!(with(&["--shard", "0/2"], &[]).contains("--shard needs --records"));
    let r = d.join("r").display().to_string();
    assert!(with(&["--shard", "2/2", "--records", &r], &[]).contains("not below"));
    assert!(with(&["--shard", "env/2", "--records", &r], &[]).contains("SLURM_ARRAY_TASK_ID"));
    let e = with(&["--shard", "env/2", "--records", &r], &[("SLURM_ARRAY_TASK_ID", "7".into())]);
    assert!(e.contains("not below"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn vnncomp_shards_merge_to_the_single_process_tables() {
    let Some(bench) = shared_data::shared_path("vnncomp2021/test") else { return };
    let d = tmp("vnncomp");
    let s = |p: &Path| p.display().to_string();
    let bench_s = s(&bench);
    run_ok(xtask(&["vnncomp".into(), bench_s.clone(), "--out".into(), s(&d.join("single"))], &[]));
    let records = d.join("records");
    for i in 0..2 {
        let args = ["vnncomp", &bench_s, "--out", &s(&d.join("out")), "--shard", "env/2", "--records", &s(&records)];
        run_ok(xtask(&args.map(String::from), &task_env(i)));
        // Shards leave the tables to the merge.
        assert!(!d.join("out/test_results.csv").exists());
    }
    let e = run_err(xtask(&["merge".into(), s(&records), "--json".into(), s(&d.join("x.json"))], &[]));
    assert!(e.contains("--json and --examples are for certification"), "{e}");
    run_ok(xtask(&["merge".into(), s(&records), "--out".into(), s(&d.join("merged"))], &[]));
    // Every column but the seconds.
    let table = |p: PathBuf| -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| l.split(',').enumerate().filter(|(i, _)| *i != 4).map(|(_, c)| c).collect::<Vec<_>>().join(","))
            .collect()
    };
    let single = table(d.join("single/test_results.csv"));
    assert!(single.len() > 2, "{single:?}");
    assert_eq!(table(d.join("merged/test_results.csv")), single);
    std::fs::remove_dir_all(&d).unwrap();
}
