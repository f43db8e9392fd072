//! `xtask certify` and `xtask attack` on a cascade file, through the built binary: the
//! per-stage table, the JSON (`stages`, overall errors), `--stage K`, and the same numbers as
//! the library's evaluation. The checkpoint is `fixtures/tiny_cascade.pth` (made by
//! `make_tiny_cascade.py`); the test set is written here as IDX files.

use experiments::cascade_certify::{certify_file, Certified};
use experiments::certify::{CertifyConfig, Norm};
use nets::{spec::build::*, NetworkSpec};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const N: usize = 40;
const EPS: f64 = 0.1;

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("xtask-cascade-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// 6×6 images of two classes (top half brighter for class 0, darker for class 1), contrast
/// from 0 to 0.39 and a fixed pattern of noise, as MNIST-layout IDX test files in `dir`.
fn write_idx(dir: &Path) {
    let mut images = vec![0, 0, 8, 3];
    for d in [N as u32, 6, 6] {
        images.extend(d.to_be_bytes());
    }
    let mut labels = vec![0, 0, 8, 1];
    labels.extend((N as u32).to_be_bytes());
    for i in 0..N {
        let class = i % 2;
        let contrast = ((i * 7) % 40) as f64 / 100.0;
        for p in 0..36 {
            let base = if (p < 18) == (class == 0) { 0.5 + contrast } else { 0.5 - contrast };
            let noise = (((i * 31 + p * 17) % 21) as f64 - 10.0) / 100.0;
            images.push(((base + noise).clamp(0.0, 1.0) * 255.0).round() as u8);
        }
        labels.push(class as u8);
    }
    std::fs::write(dir.join("t10k-images-idx3-ubyte"), images).unwrap();
    std::fs::write(dir.join("t10k-labels-idx1-ubyte"), labels).unwrap();
}

fn arch(dir: &Path) -> PathBuf {
    let s = NetworkSpec::sequential("tiny", &[1, 6, 6], vec![flatten(), linear(36, 4), relu(), linear(4, 2)]);
    let p = dir.join("tiny.json");
    std::fs::write(&p, serde_json::to_string(&s).unwrap()).unwrap();
    p
}

fn model() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny_cascade.pth"))
}

/// Runs the binary; returns stdout (panics with stderr on failure).
fn xtask(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask")).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "xtask {args:?} failed: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

fn common<'a>(dir: &'a str, arch: &'a str, model: &'a str) -> Vec<&'a str> {
    vec!["--model", model, "--arch", arch, "--dataset", "mnist", "--data-dir", dir, "--eps", "0.1", "--bounded-input"]
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn certify_prints_the_stage_table_and_writes_stages_to_the_json() {
    let d = tmp("certify");
    write_idx(&d);
    let arch = arch(&d);
    let (ds, archs, models) = (d.to_str().unwrap(), arch.to_str().unwrap(), model());
    let json = d.join("out.json");
    let mut args = vec!["certify"];
    args.extend(common(ds, archs, models.to_str().unwrap()));
    args.extend(["--batch-size", "16", "--json", json.to_str().unwrap()]);
    let out = xtask(&args);
    eprintln!("{out}");
    assert!(out.contains("certified robust error (exact)") && out.contains("2 stages"), "{out}");
    assert!(out.contains("reached") && out.contains("certified here") && out.contains("answered here"), "{out}");
    let j = read_json(&json);
    let stages = j["stages"].as_array().expect("a `stages` array");
    assert_eq!(stages.len(), 2);
    assert_eq!(j["n"].as_u64(), Some(N as u64));
    assert_eq!(stages[0]["reached"].as_u64(), Some(N as u64));
    let answered: Vec<u64> = stages.iter().map(|s| s["answered"].as_u64().unwrap()).collect();
    assert_eq!(answered.iter().sum::<u64>(), N as u64);
    assert!(answered[0] > 0 && answered[1] > 0, "every stage must answer some examples: {answered:?}");
    assert_eq!(stages[1]["reached"].as_u64(), Some(N as u64 - answered[0]));
    // Every table row is printed: stage index, reached, certified, certified & correct, answered.
    for s in stages {
        let want: Vec<String> = ["stage", "reached", "certified", "certified_correct", "answered"]
            .map(|k| s[k].as_u64().unwrap().to_string())
            .to_vec();
        let printed = out.lines().any(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).filter(|c| !c.is_empty()).collect();
            cells.len() >= 5 && cells[..5] == want.iter().map(String::as_str).collect::<Vec<_>>()[..]
        });
        assert!(printed, "no table row starting {want:?} in\n{out}");
    }
    // The last stage's "cut after" errors are the cascade's.
    assert_eq!(stages[1]["robust_error"].as_f64(), j["robust_error"].as_f64());
    assert_eq!(stages[1]["clean_error"].as_f64(), j["clean_error"].as_f64());
    // The same numbers as the library's evaluation.
    let cfg = CertifyConfig {
        model: models.clone(),
        arch: Some(archs.to_string()),
        dataset: "mnist".into(),
        data_dir: d.clone(),
        eps: EPS,
        norm: Norm::Linf,
        bounded_input: true,
        limit: None,
        batch_size: 5,
        pgd: false,
        json: None,
        memory_budget: None,
        f64: false,
        device: "cpu".into(),
        proj: None,
        records: None,
    };
    let r = match certify_file(&cfg, None, |_, _, _| {}).unwrap() {
        Certified::Cascade(r) => r,
        other => panic!("expected a cascade, got {other:?}"),
    };
    assert_eq!(j["robust_error"].as_f64(), Some(r.robust_error));
    assert_eq!(j["clean_error"].as_f64(), Some(r.clean_error));
    assert_eq!(answered, r.stages.iter().map(|s| s.counts.answered as u64).collect::<Vec<_>>());
    assert!(r.robust_error > 0.0 && r.robust_error < 1.0);

    // --stage 1: stage 1 alone, on every example.
    let json1 = d.join("stage1.json");
    let mut args = vec!["certify"];
    args.extend(common(ds, archs, models.to_str().unwrap()));
    args.extend(["--stage", "1", "--json", json1.to_str().unwrap()]);
    let out = xtask(&args);
    assert!(out.contains("1 of a cascade of 2, certified alone"), "{out}");
    let j1 = read_json(&json1);
    assert_eq!((j1["stage"].as_u64(), j1["stages_in_file"].as_u64(), j1["n"].as_u64()), (Some(1), Some(2), Some(40)));
    assert!(j1.get("stages").is_none());
    // A stage the file does not have is a clear error.
    let mut args = vec!["certify"];
    args.extend(common(ds, archs, models.to_str().unwrap()));
    args.extend(["--stage", "2"]);
    let out = Command::new(env!("CARGO_BIN_EXE_xtask")).args(&args).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--stage 2") && err.contains("2 stages"), "{err}");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn attack_on_a_cascade_attacks_each_example_against_its_answering_stage() {
    let d = tmp("attack");
    write_idx(&d);
    let arch = arch(&d);
    let (ds, archs, models) = (d.to_str().unwrap(), arch.to_str().unwrap(), model());
    let json = d.join("attack.json");
    let mut args = vec!["attack"];
    args.extend(common(ds, archs, models.to_str().unwrap()));
    args.extend(["--pgd-steps", "20", "--json", json.to_str().unwrap()]);
    let out = xtask(&args);
    eprintln!("{out}");
    assert!(out.contains("each example attacked against the stage that answers it"), "{out}");
    let j = read_json(&json);
    let stages = j["stages"].as_array().expect("a `stages` array");
    let answered: Vec<u64> = stages.iter().map(|s| s["answered"].as_u64().unwrap()).collect();
    assert_eq!(answered.iter().sum::<u64>(), N as u64);
    // The routing is the certification's.
    let cj = {
        let cjson = d.join("certify.json");
        let mut args = vec!["certify"];
        args.extend(common(ds, archs, models.to_str().unwrap()));
        args.extend(["--json", cjson.to_str().unwrap()]);
        xtask(&args);
        read_json(&cjson)
    };
    let routed: Vec<u64> = cj["stages"].as_array().unwrap().iter().map(|s| s["answered"].as_u64().unwrap()).collect();
    assert_eq!(answered, routed);
    // Errors add up over stages; PGD errors never exceed the certified robust errors.
    let pgd: u64 = stages.iter().map(|s| s["pgd_errors"].as_u64().unwrap()).sum();
    let clean: u64 = stages.iter().map(|s| s["clean_errors"].as_u64().unwrap()).sum();
    assert!((j["pgd_error"].as_f64().unwrap() - pgd as f64 / N as f64).abs() < 1e-12);
    assert!((j["clean_error"].as_f64().unwrap() - clean as f64 / N as f64).abs() < 1e-12);
    assert!(pgd as f64 / N as f64 <= cj["robust_error"].as_f64().unwrap() + 1e-12);
    assert!((j["clean_error"].as_f64().unwrap() - cj["clean_error"].as_f64().unwrap()).abs() < 1e-12);
    // --stage 0 attacks one stage: no per-stage entries.
    let json0 = d.join("attack0.json");
    let mut args = vec!["attack"];
    args.extend(common(ds, archs, models.to_str().unwrap()));
    args.extend(["--pgd-steps", "5", "--stage", "0", "--json", json0.to_str().unwrap()]);
    xtask(&args);
    let j0 = read_json(&json0);
    assert_eq!((j0["stage"].as_u64(), j0["stages_in_file"].as_u64()), (Some(0), Some(2)));
    assert!(j0.get("stages").is_none());
    std::fs::remove_dir_all(&d).ok();
}
