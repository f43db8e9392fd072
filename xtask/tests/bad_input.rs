//! Bad input to the built `xtask` binary: every case ends with a clear error naming the problem,
//! before any long work, never with a panic, a hang or a lost file (issue 14 §2). Each case runs
//! the real binary on tiny models and data written into a temporary folder.

use candle_core::{DType, Device, Tensor};
use nets::{spec::build::*, zoo, Network, NetworkSpec};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A fresh temporary folder for one test.
fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("xtask-bad-input-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// IDX files of `n` random `side`×`side` images with labels `i % 10`, for the split `prefix`
/// (`t10k` or `train`).
fn write_idx(dir: &Path, prefix: &str, n: usize, side: u32, seed: u32) {
    let mut img = vec![0, 0, 8, 3];
    for d in [n as u32, side, side] {
        img.extend_from_slice(&d.to_be_bytes());
    }
    let mut s = seed;
    for _ in 0..n * (side * side) as usize {
        s = s.wrapping_mul(1103515245).wrapping_add(12345);
        img.push((s >> 16) as u8);
    }
    let mut lab = vec![0, 0, 8, 1];
    lab.extend_from_slice(&(n as u32).to_be_bytes());
    lab.extend((0..n).map(|i| (i % 10) as u8));
    std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), img).unwrap();
    std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), lab).unwrap();
}

/// A data folder with 20 training and 12 test images of `side`×`side`.
fn data(dir: &Path, side: u32) -> PathBuf {
    let d = dir.join(format!("data{side}"));
    std::fs::create_dir_all(&d).unwrap();
    write_idx(&d, "train", 20, side, 1);
    write_idx(&d, "t10k", 12, side, 2);
    d
}

/// A tiny MLP for `side`×`side` single-channel images.
fn mlp(side: usize, hidden: usize) -> NetworkSpec {
    let n = side * side;
    NetworkSpec::sequential("tiny", &[1, side, side], vec![flatten(), linear(n, hidden), relu(), linear(hidden, 10)])
}

/// The tiny MLP, initialised, saved as safetensors with its architecture inside.
fn model(dir: &Path, side: usize) -> PathBuf {
    let net = Network::init(&mlp(side, 8), 3, DType::F32, &Device::Cpu).unwrap();
    let p = dir.join(format!("tiny{side}.safetensors"));
    nets::io::save_safetensors(&net, &p).unwrap();
    p
}

/// The tiny MLP's architecture as a JSON file (for `train --arch`).
fn arch(dir: &Path, side: usize, hidden: usize) -> PathBuf {
    let p = dir.join(format!("arch{side}_{hidden}.json"));
    std::fs::write(&p, mlp(side, hidden).to_json()).unwrap();
    p
}

/// Runs the binary in `cwd` (so default output folders land in the temporary folder).
fn xtask(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask")).args(args).current_dir(cwd).output().expect("the xtask binary runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Asserts a refusal: a non-zero exit, no panic, and every `needle` in the output.
#[track_caller]
fn refused(o: &Output, needles: &[&str]) -> String {
    let t = text(o);
    assert!(!o.status.success(), "expected a refusal, the run succeeded:\n{t}");
    assert!(!t.contains("panicked"), "panic:\n{t}");
    for n in needles {
        assert!(t.contains(n), "expected `{n}` in:\n{t}");
    }
    t
}

#[track_caller]
fn succeeded(o: &Output) -> String {
    let t = text(o);
    assert!(o.status.success(), "expected success:\n{t}");
    t
}

/// Files in `dir` whose name marks a temporary or probe file.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.contains(".tmp") || n.contains("probe"))
        .collect()
}

/// A path as a `&str` for an argument list (leaked: a test makes a few dozen).
fn s(p: &Path) -> &'static str {
    Box::leak(p.to_str().unwrap().to_string().into_boxed_str())
}

#[test]
fn json_output_is_checked_before_the_work_and_written_after_the_table() {
    let d = tmp("json");
    let data = data(&d, 6);
    let m = model(&d, 6);
    let base = ["certify", "--model", s(&m), "--dataset", "mnist", "--data-dir", s(&data), "--eps", "0.01"];
    // A folder as --json: refused up front, and nothing left beside it.
    let out = d.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let mut a = base.to_vec();
    a.extend(["--json", s(&out)]);
    refused(&xtask(&d, &a), &["--json", "is a folder"]);
    assert!(leftovers(&d).is_empty() && leftovers(&out).is_empty(), "{:?}", leftovers(&d));
    // Up front means before the data: with a data folder that does not exist, the --json error
    // still comes first.
    let mut a = vec!["certify", "--model", s(&m), "--dataset", "mnist", "--data-dir", "/nonexistent", "--eps", "0.1"];
    a.extend(["--json", s(&out)]);
    refused(&xtask(&d, &a), &["--json"]);
    // A path below a regular file cannot be created.
    let below = d.join("tiny6.safetensors/results.json");
    for task in ["certify", "attack"] {
        let mut a = base.to_vec();
        a[0] = task;
        a.extend(["--json", s(&below)]);
        refused(&xtask(&d, &a), &["--json", "not a folder"]);
    }
    // A device is never replaced.
    let mut a = base.to_vec();
    a.extend(["--json", "/dev/null"]);
    refused(&xtask(&d, &a), &["not a regular file"]);
    assert!(!std::fs::metadata("/dev/null").unwrap().file_type().is_file(), "/dev/null was replaced");
    // Writing fails after the work (here: a file-size limit of 0 bytes, with the signal ignored so
    // the write returns an error): the table is still printed, and no temporary file is left.
    for task in ["certify", "attack"] {
        let j = d.join(format!("full/{task}.json"));
        let mut a = base.to_vec();
        a[0] = task;
        a.extend(["--json", s(&j), "--limit", "3"]);
        let o = Command::new("bash")
            .arg("-c")
            .arg("trap '' XFSZ; ulimit -f 0; exec \"$0\" \"$@\"")
            .arg(env!("CARGO_BIN_EXE_xtask"))
            .args(&a)
            .current_dir(&d)
            .output()
            .unwrap();
        let t = refused(&o, &["clean error", "File too large"]);
        assert!(String::from_utf8_lossy(&o.stdout).contains("clean error"), "no table on stdout:\n{t}");
        assert!(!j.exists() && leftovers(&d.join("full")).is_empty(), "{:?}", leftovers(&d.join("full")));
    }
    // A good path: the table is printed and the file written, no temporary file left.
    for task in ["certify", "attack"] {
        let j = d.join(format!("res/{task}.json"));
        let mut a = base.to_vec();
        a[0] = task;
        a.extend(["--json", s(&j), "--limit", "5"]);
        let t = succeeded(&xtask(&d, &a));
        assert!(t.contains("clean error") && t.contains("results written to"), "{t}");
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&j).unwrap()).unwrap();
        assert_eq!(v["n"], 5);
        assert!(leftovers(&d.join("res")).is_empty());
    }
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn resume_needs_a_run_with_the_same_settings() {
    let d = tmp("resume");
    let data = data(&d, 6);
    let a6 = arch(&d, 6, 8);
    let out = d.join("run");
    // The run's settings, each replaced when `extra` gives the flag.
    let train = |extra: &[&str]| {
        let mut a = vec!["train", "--data-dir", s(&data), "--out", s(&out), "--eps", "0.01"];
        let defaults =
            [("--arch", s(&a6)), ("--dataset", "mnist"), ("--epochs", "1"), ("--batch-size", "10"), ("--lr", "0.01")];
        for (flag, v) in defaults {
            if !extra.contains(&flag) {
                a.extend([flag, v]);
            }
        }
        a.extend_from_slice(extra);
        xtask(&d, &a)
    };
    // Nothing to resume: refused, nothing written.
    refused(&train(&["--resume"]), &["nothing to resume", "state.json", "--restart"]);
    assert!(!out.join("last.safetensors").exists() && !out.join("best.safetensors").exists());
    // A first run.
    succeeded(&train(&[]));
    let best = std::fs::read(out.join("best.safetensors")).unwrap();
    // Training again into the same folder without saying how: refused, the run kept.
    refused(&train(&[]), &["already holds a training run", "--resume", "--restart"]);
    // Resume with another architecture, data set, data size or setting: refused, naming it.
    let a6b = arch(&d, 6, 12);
    let t = refused(&train(&["--resume", "--arch", s(&a6b)]), &["cannot resume", "--arch"]);
    assert!(!t.contains("shape mismatch"), "{t}");
    refused(&train(&["--resume", "--dataset", "fashion-mnist"]), &["cannot resume", "`mnist`", "--dataset"]);
    refused(&train(&["--resume", "--train-limit", "10"]), &["cannot resume", "--train-limit"]);
    refused(&train(&["--resume", "--lr", "0.02"]), &["cannot resume", "--lr"]);
    refused(&train(&["--resume", "--loss", "baseline"]), &["cannot resume", "loss", "--loss"]);
    refused(&train(&["--resume", "--batch-size", "5"]), &["cannot resume", "--batch-size"]);
    refused(&train(&["--resume", "--restart"]), &["cannot be used with"]);
    assert_eq!(std::fs::read(out.join("best.safetensors")).unwrap(), best, "a refused run changed best");
    // More epochs is a resume.
    let t = succeeded(&train(&["--resume", "--epochs", "2"]));
    assert!(t.contains("epoch 2"), "{t}");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["epochs_done"], 2);
    // Starting over is allowed when asked for.
    succeeded(&train(&["--restart", "--lr", "0.02"]));
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["epochs_done"], 1);
    // The same rules for reproduce.
    refused(&xtask(&d, &["reproduce", "mnist", "--resume", "--out", s(&d.join("rep"))]), &["nothing to resume"]);
    refused(&xtask(&d, &["reproduce", "mnist", "--out", s(&out)]), &["already holds a training run"]);
    // A cascade cannot be resumed.
    refused(&train(&["--cascade", "2", "--resume"]), &["--resume", "--cascade"]);
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn non_finite_training_stops_and_keeps_the_last_good_checkpoint() {
    let d = tmp("nonfinite");
    let data = data(&d, 6);
    let a6 = arch(&d, 6, 8);
    let run = |out: &Path, extra: &[&str]| {
        let mut a = vec![
            "train",
            "--arch",
            s(&a6),
            "--dataset",
            "mnist",
            "--data-dir",
            s(&data),
            "--out",
            s(out),
            "--batch-size",
            "10",
            "--eps",
            "0.01",
        ];
        a.extend_from_slice(extra);
        xtask(&d, &a)
    };
    // A learning rate finite in f64 but not in the f32 weights: stopped at the first step, no
    // checkpoint written.
    let out = d.join("a");
    refused(&run(&out, &["--epochs", "2", "--lr", "1e39"]), &["NaN or infinite", "epoch 1 batch 1"]);
    assert!(!out.join("best.safetensors").exists() && !out.join("last.safetensors").exists());
    // Blowing up in epoch 2 (the rate is multiplied by 1e300 every epoch): epoch 1's
    // checkpoints stay, finite and loadable.
    let out = d.join("b");
    let t = refused(
        &run(&out, &["--epochs", "3", "--lr", "0.01", "--lr-after", "0", "--lr-every", "1", "--lr-gamma", "1e300"]),
        &["NaN or infinite", "epoch 2", "last good checkpoint (epoch 1)"],
    );
    assert!(t.contains("last.safetensors"), "{t}");
    for f in ["best.safetensors", "last.safetensors"] {
        nets::io::load_model(&out.join(f), None, DType::F32, &Device::Cpu).unwrap();
    }
    // A model with a NaN weight is refused by certify and attack.
    let net = Network::init(&mlp(6, 8), 3, DType::F32, &Device::Cpu).unwrap();
    let mut sd = net.state_dict();
    let mut w = sd[0].1.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    w[5] = f32::NAN;
    sd[0].1 = Tensor::from_vec(w, sd[0].1.dims(), &Device::Cpu).unwrap();
    let bad = Network::from_state_dict(&net.spec(), &sd, DType::F32, &Device::Cpu).unwrap();
    let p = d.join("nan.safetensors");
    nets::io::save_safetensors(&bad, &p).unwrap();
    for task in ["certify", "attack"] {
        let o = xtask(&d, &[task, "--model", s(&p), "--dataset", "mnist", "--data-dir", s(&data), "--eps", "0.1"]);
        refused(&o, &["NaN or infinite", &sd[0].0]);
    }
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn non_finite_and_out_of_range_flags_are_refused_at_parse_time() {
    let d = tmp("flags");
    let m = d.join("m.safetensors");
    let ms = s(&m);
    // (args, text of the error). The model file need not exist: the flag is refused first.
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["certify", "--model", ms, "--eps", "nan"], "--eps"),
        (vec!["certify", "--model", ms, "--eps", "inf"], "finite"),
        (vec!["certify", "--model", ms, "--eps", "-0.1"], "≥ 0"),
        (vec!["certify", "--model", ms, "--eps", "0.1", "--batch-size", "0"], "--batch-size"),
        (vec!["certify", "--model", ms, "--eps", "0.1", "--limit", "0"], "--limit"),
        (vec!["certify", "--model", ms, "--eps", "0.1", "--norm", "linf-median", "--proj", "0"], "--proj"),
        (vec!["certify", "--model", ms, "--eps", "0.1", "--proj", "5", "--inflate-delta", "1"], "--inflate-delta"),
        (vec!["certify", "--model", ms, "--eps", "0.1", "--proj", "5", "--inflate-delta", "nan"], "--inflate-delta"),
        (vec!["attack", "--model", ms, "--eps", "0.1", "--pgd-step-size", "nan"], "--pgd-step-size"),
        (vec!["attack", "--model", ms, "--eps", "0.1", "--pgd-step-size", "-0.01"], "must be > 0"),
        (vec!["attack", "--model", ms, "--eps", "0.1", "--pgd-step-size", "0"], "--pgd-step-size"),
        (vec!["attack", "--model", ms, "--eps", "0.1", "--pgd-steps", "0"], "--pgd-steps"),
        (vec!["train", "--lr", "inf"], "--lr"),
        (vec!["train", "--lr", "-1"], "--lr"),
        (vec!["train", "--eval-limit", "0"], "--eval-limit"),
        (vec!["train", "--train-limit", "0"], "--train-limit"),
        (vec!["train", "--epochs", "0"], "--epochs"),
        (vec!["train", "--batch-size", "0"], "--batch-size"),
        (vec!["train", "--momentum", "1"], "--momentum"),
        (vec!["train", "--weight-decay", "-1e-4"], "--weight-decay"),
        (vec!["train", "--weight-decay", "nan"], "--weight-decay"),
        (vec!["train", "--lr-gamma", "0"], "--lr-gamma"),
        (vec!["train", "--clip-grad", "inf"], "--clip-grad"),
        (vec!["train", "--eps", "nan"], "--eps"),
        (vec!["train", "--eps-start", "inf"], "--eps-start"),
        (vec!["train", "--ramp-epochs", "3"], "--eps-start"),
        (vec!["train", "--eps-start", "0.01", "--ramp-epochs", "0"], "--ramp-epochs"),
        (vec!["train", "--cascade", "0"], "--cascade"),
        (vec!["train", "--proj", "0"], "--proj"),
        (vec!["reproduce", "mnist", "--epochs", "0"], "--epochs"),
        (vec!["reproduce", "mnist", "--test-limit", "0"], "--test-limit"),
        (vec!["reproduce", "min-distance", "--max-eps", "inf"], "--max-eps"),
        (vec!["reproduce", "min-distance", "--eps", "0"], "--eps"),
        (vec!["reproduce", "min-distance", "--batch-size", "0"], "--batch-size"),
        (vec!["reproduce", "min-distance", "--limit", "0"], "--limit"),
        (vec!["reproduce", "min-distance", "--memory-budget", "0.5"], "at least 1 MiB"),
        (vec!["download", "mnist", "--attempts", "0"], "--attempts"),
        (vec!["bench-vs-pytorch", "--batches", "1,0"], "--batches"),
        (vec!["bench-vs-pytorch", "--repeats", "0"], "--repeats"),
        (vec!["bench-vs-pytorch", "--threads", "0"], "--threads"),
        (vec!["bench-vs-pytorch", "--k", "0"], "--k"),
        (vec!["bench-vs-pytorch", "--eps", "nan"], "--eps"),
        (vec!["bench-vs-lirpa", "--images", "0"], "--images"),
        (vec!["bench-vs-lirpa", "--batch", "0"], "--batch"),
        (vec!["bench-vs-lirpa", "--repeats", "0"], "--repeats"),
        (vec!["bench-vs-lirpa", "--threads", "0"], "--threads"),
        (vec!["bench-vs-lirpa", "--eps", "nan"], "--eps"),
    ];
    for (args, needle) in &cases {
        let o = xtask(&d, args);
        let t = refused(&o, &[needle]);
        assert_eq!(o.status.code(), Some(2), "{args:?} is not a usage error:\n{t}");
    }
    // Nothing was written by any of them.
    assert!(std::fs::read_dir(&d).unwrap().next().is_none(), "a refused run wrote into {}", d.display());
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn settings_that_contradict_each_other_are_refused() {
    let d = tmp("contradict");
    let data = data(&d, 6);
    let m = model(&d, 6);
    let base = ["--model", s(&m), "--dataset", "mnist", "--data-dir", s(&data), "--eps", "0.01"];
    let certify = |extra: &[&str]| {
        let mut a = vec!["certify"];
        a.extend_from_slice(&base);
        a.extend_from_slice(extra);
        xtask(&d, &a)
    };
    // --inflate-delta without projections would be ignored; --proj with an exact norm would turn
    // a certificate into an estimate.
    refused(&certify(&["--inflate-delta", "0.01"]), &["--inflate-delta", "--proj"]);
    refused(&certify(&["--proj", "5"]), &["--proj", "estimate", "linf-median"]);
    refused(&certify(&["--norm", "l2", "--proj", "5"]), &["--proj", "l2-normal"]);
    refused(&certify(&["--norm", "linf-median"]), &["needs --proj"]);
    let t = succeeded(&certify(&["--norm", "linf-median", "--proj", "5", "--inflate-delta", "0.01", "--limit", "4"]));
    assert!(t.contains("holds with probability"), "{t}");
    refused(&certify(&["--norm", "l2", "--bounded-input"]), &["--bounded-input"]);
    // train: a ramp that falls, an l2 ball cut to the box.
    let a6 = arch(&d, 6, 8);
    let tr = ["train", "--arch", s(&a6), "--dataset", "mnist", "--data-dir", s(&data)];
    let mut a = tr.to_vec();
    a.extend(["--out", s(&d.join("t1")), "--eps", "0.1", "--eps-start", "0.2"]);
    refused(&xtask(&d, &a), &["--eps-start", "larger than --eps"]);
    let mut a = tr.to_vec();
    a.extend(["--out", s(&d.join("t2")), "--norm", "l2", "--bounded-input"]);
    refused(&xtask(&d, &a), &["--bounded-input"]);
    let mut a = tr.to_vec();
    a.extend(["--out", s(&d.join("t3")), "--norm", "linf-median"]);
    refused(&xtask(&d, &a), &["needs --proj"]);
    // min-distance: a largest radius below the first one.
    let md = ["reproduce", "min-distance", "--model", s(&m), "--dataset", "mnist", "--data-dir", s(&data)];
    let mut a = md.to_vec();
    a.extend(["--eps", "0.5", "--max-eps", "0.1", "--out", s(&d.join("md"))]);
    refused(&xtask(&d, &a), &["--max-eps", "--eps"]);
    // primal: a width of 0.
    refused(&xtask(&d, &["reproduce", "primal", "--hidden", "10,0", "--out", s(&d.join("p"))]), &["--hidden"]);
    // download: a source folder that is not there, a mirror that is not a URL.
    let dd = s(&d.join("dl"));
    refused(
        &xtask(&d, &["download", "mnist", "--data-dir", dd, "--from", "/nonexistent"]),
        &["--from", "not a folder"],
    );
    refused(&xtask(&d, &["download", "mnist", "--data-dir", dd, "--mirror", "ftp://x/"]), &["--mirror", "http"]);
    refused(&xtask(&d, &["reproduce", "nonsense"]), &["unknown experiment", "nonsense"]);
    // reproduce: flags the named experiment would ignore.
    refused(&xtask(&d, &["reproduce", "mnist", "--memory-budget", "1GiB"]), &["--memory-budget", "not used by"]);
    refused(&xtask(&d, &["reproduce", "toy2d", "--epochs", "3", "--f64"]), &["--epochs, --f64", "not used by"]);
    refused(&xtask(&d, &["reproduce", "min-distance", "--resume"]), &["--resume", "not used by"]);
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn memory_budget_has_one_parser_with_documented_units() {
    let d = tmp("budget");
    let data = data(&d, 6);
    let m = model(&d, 6);
    let run = |b: &str| {
        let a = [
            "certify",
            "--model",
            s(&m),
            "--dataset",
            "mnist",
            "--data-dir",
            s(&data),
            "--eps",
            "0.01",
            "--limit",
            "3",
            "--memory-budget",
            b,
        ];
        xtask(&d, &a)
    };
    for ok in ["1e9", "10TiB", "4GiB", "512 MiB", "2GB", "1.5e6", "1MiB"] {
        succeeded(&run(ok));
    }
    refused(&run("0.5"), &["at least 1 MiB"]);
    refused(&run("1000"), &["at least 1 MiB"]);
    refused(&run("4XB"), &["unknown unit", "KiB"]);
    refused(&run("lots"), &["not a size"]);
    refused(&run("-1GiB"), &["--memory-budget"]);
    refused(&run("inf"), &["--memory-budget"]);
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn model_paths_and_input_shapes_are_named() {
    let d = tmp("model");
    let data28 = data(&d, 28);
    let data32 = data(&d, 32);
    let m28 = model(&d, 28);
    let run = |task: &str, model: &Path, data: &Path| {
        xtask(&d, &[task, "--model", s(model), "--dataset", "mnist", "--data-dir", s(data), "--eps", "0.01"])
    };
    for task in ["certify", "attack"] {
        refused(&run(task, &d, &data28), &["is a folder, not a model file"]);
        refused(&run(task, Path::new("/dev/null"), &data28), &["/dev/null", "not a regular file"]);
        refused(&run(task, &d.join("missing.pth"), &data28), &["does not exist"]);
        std::fs::write(d.join("empty.pth"), b"").unwrap();
        refused(&run(task, &d.join("empty.pth"), &data28), &["is empty"]);
        // 32×32 images for a 28×28 model: the shapes are named, not a failed matmul.
        let t = refused(&run(task, &m28, &data32), &["expects inputs of shape [1, 28, 28]", "[1, 32, 32]"]);
        assert!(!t.contains("matmul"), "{t}");
    }
    let md = |model: &Path, data: &Path| {
        let a = [
            "reproduce",
            "min-distance",
            "--model",
            s(model),
            "--dataset",
            "mnist",
            "--data-dir",
            s(data),
            "--limit",
            "2",
            "--out",
            s(&d.join("md")),
        ];
        xtask(&d, &a)
    };
    refused(&md(&m28, &data32), &["expects inputs of shape [1, 28, 28]", "[1, 32, 32]"]);
    refused(&md(&d, &data28), &["is a folder"]);
    // train: an architecture for other images.
    let a6 = arch(&d, 6, 8);
    let o = xtask(
        &d,
        &["train", "--arch", s(&a6), "--dataset", "mnist", "--data-dir", s(&data28), "--out", s(&d.join("t"))],
    );
    refused(&o, &["expects inputs of shape [1, 6, 6]", "[1, 28, 28]"]);
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn min_distance_defaults_to_mnist_small_for_files_without_an_architecture() {
    let d = tmp("mindist");
    let data = data(&d, 28);
    // mnist-small weights in a safetensors file without the architecture (as a PyTorch export
    // would be), and no --arch: the documented default applies.
    let net = Network::init(&zoo::by_name("mnist-small").unwrap(), 1, DType::F32, &Device::Cpu).unwrap();
    let p = d.join("weights.safetensors");
    let map: std::collections::HashMap<String, Tensor> = net.state_dict().into_iter().collect();
    candle_core::safetensors::save(&map, &p).unwrap();
    assert!(!nets::io::holds_architecture(&p).unwrap());
    let out = d.join("md");
    let a = [
        "reproduce",
        "min-distance",
        "--model",
        s(&p),
        "--dataset",
        "mnist",
        "--data-dir",
        s(&data),
        "--limit",
        "2",
        "--eps",
        "0.01",
        "--max-eps",
        "0.02",
        "--out",
        s(&out),
    ];
    let t = succeeded(&xtask(&d, &a));
    assert!(t.contains("mean / median radius"), "{t}");
    assert!(out.join("results.json").is_file());
    // A file with its own architecture keeps it (the tiny MLP is no mnist-small).
    let m = model(&d, 28);
    let mut a = a;
    a[3] = s(&m);
    succeeded(&xtask(&d, &a));
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn output_folders_are_checked_before_the_work() {
    let d = tmp("outdirs");
    let data = data(&d, 6);
    let file = d.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let a6 = arch(&d, 6, 8);
    let o = xtask(&d, &["train", "--arch", s(&a6), "--dataset", "mnist", "--data-dir", s(&data), "--out", s(&file)]);
    refused(&o, &["--out", "not a folder"]);
    let m = model(&d, 6);
    let o = xtask(
        &d,
        &[
            "reproduce",
            "min-distance",
            "--model",
            s(&m),
            "--dataset",
            "mnist",
            "--data-dir",
            s(&data),
            "--out",
            s(&file),
        ],
    );
    refused(&o, &["--out", "not a folder"]);
    refused(&xtask(&d, &["reproduce", "toy2d", "--out", s(&file)]), &["--out", "not a folder"]);
    refused(&xtask(&d, &["reproduce", "mnist", "--out", s(&file)]), &["--out", "not a folder"]);
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn interval_loss_flags_are_checked() {
    let d = tmp("interval");
    let data = data(&d, 6);
    let a6 = arch(&d, 6, 8);
    let out = d.join("run");
    let train = |extra: &[&str]| {
        let mut a = vec!["train", "--data-dir", s(&data), "--dataset", "mnist", "--arch", s(&a6), "--out", s(&out)];
        a.extend(["--eps", "0.01", "--epochs", "2", "--batch-size", "10", "--eval-limit", "4"]);
        a.extend_from_slice(extra);
        xtask(&d, &a)
    };
    let cases: &[(&[&str], &[&str])] = &[
        (&["--loss", "nope"], &["unknown --loss nope", "mtl-ibp"]),
        (&["--loss", "ibp", "--mtl-alpha", "0.3"], &["--mtl-alpha applies to --loss mtl-ibp only"]),
        (&["--loss", "mtl-ibp", "--kappa-end", "0.2"], &["--kappa-start/--kappa-end applies"]),
        (&["--loss", "ibp", "--beta-start", "1"], &["--beta-start/--beta-end applies to --loss crown-ibp"]),
        (&["--loss", "ibp", "--pgd-steps", "3"], &["--pgd-steps/--pgd-step applies to --loss mtl-ibp or sabr"]),
        (&["--loss", "mtl-ibp", "--sabr-lambda", "0.5"], &["--sabr-lambda applies to --loss sabr only"]),
        (&["--loss", "sabr", "--sabr-lambda", "0"], &["--sabr-lambda must be in (0, 1]"]),
        (&["--loss", "robust", "--warmup-reg", "0.5"], &["--warmup-reg applies"]),
        (&["--loss", "wong-kolter", "--ibp-init"], &["--ibp-init applies"]),
        (&["--loss", "ibp", "--proj", "5"], &["--proj"]),
        (&["--loss", "crown-ibp", "--norm", "l2"], &["--norm linf"]),
        (&["--loss", "ibp", "--eps-ramp", "smooth"], &["--eps-ramp smooth needs a ramp", "--eps-start"]),
        (&["--loss", "ibp", "--eps-ramp", "cubic", "--eps-start", "0"], &["unknown --eps-ramp cubic"]),
        (&["--loss", "ibp", "--warmup-epochs", "2"], &["--warmup-epochs 2 leaves no epoch"]),
        (&["--loss", "crown-ibp", "--kappa-end", "1.5"], &["--kappa-end", "[0, 1]"]),
        (&["--loss", "mtl-ibp", "--mtl-alpha", "nan"], &["--mtl-alpha", "finite"]),
        (&["--loss", "mtl-ibp", "--pgd-step", "0"], &["--pgd-step", "> 0"]),
        (&["--loss", "ibp", "--cascade", "2"], &["--cascade", "wong-kolter"]),
    ];
    for (extra, needles) in cases {
        refused(&train(extra), needles);
        assert!(!out.join("state.json").exists(), "{extra:?} started a run");
    }
    // A good combination runs and names its loss in config.json.
    let args = ["--loss", "mtl-ibp", "--mtl-alpha", "0.3", "--ibp-init", "--warmup-reg", "0.5", "--warmup-epochs", "1"];
    succeeded(&train(&[&args[..], &["--eps-start", "0", "--ramp-epochs", "1", "--eps-ramp", "smooth"]].concat()));
    let conf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(conf["loss"], "mtl-ibp");
    assert_eq!(conf["recipe"]["alpha"], 0.3);
    assert_eq!(conf["eps"]["shape"], "smooth");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn sound_is_refused_where_it_checks_nothing() {
    let d = tmp("sound");
    let data = data(&d, 6);
    let m = model(&d, 6);
    let base = ["certify", "--model", s(&m), "--dataset", "mnist", "--data-dir", s(&data), "--eps", "0.01"];
    let certify = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        xtask(&d, &a)
    };
    // The check covers the exact dual's certificates on l_inf balls.
    refused(&certify(&["--sound", "--bound", "crown"]), &["--sound", "--bound crown"]);
    refused(&certify(&["--sound", "--norm", "l2"]), &["--sound", "l2"]);
    refused(&certify(&["--sound", "--norm", "linf-median", "--proj", "5"]), &["--sound", "--proj"]);
    refused(&certify(&["--sound-deployed-f32"]), &["--sound"]);
    let rec = d.join("records");
    refused(&certify(&["--sound", "--shard", "0/2", "--records", s(&rec)]), &["--sound", "--records"]);
    assert!(!rec.exists(), "a refused run wrote records");
    let t = succeeded(&certify(&["--sound", "--bounded-input", "--limit", "4"]));
    assert!(t.contains("checked sound: real") && t.contains("refused by the check"), "{t}");
    let t = succeeded(&certify(&["--sound", "--sound-deployed-f32", "--limit", "4"]));
    assert!(t.contains("checked sound: deployed-f32"), "{t}");
}

#[test]
fn verify_sound_refuses_a_bound_it_does_not_check() {
    let d = tmp("verify-sound");
    let bench = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/vnncomp2021/test");
    assert!(bench.join("test_small.onnx").exists(), "missing {}", bench.display());
    let (onnx, prop) = (bench.join("test_small.onnx"), bench.join("test_small.vnnlib"));
    let verify = |extra: &[&str]| {
        let mut a = vec!["verify", "--onnx", s(&onnx), "--vnnlib", s(&prop)];
        a.extend_from_slice(extra);
        xtask(&d, &a)
    };
    refused(&verify(&["--sound", "--method", "crown"]), &["--sound", "--method crown"]);
    // Counts of branch-and-bound steps are at least 1, refused with the flag's name.
    refused(&verify(&["--beta-iterations", "0"]), &["--beta-iterations"]);
    refused(&verify(&["--branch-candidates", "0"]), &["--branch-candidates"]);
    refused(&verify(&["--refine-domains", "0"]), &["--refine-domains"]);
    let t = succeeded(&verify(&["--sound", "--timeout", "30"]));
    assert!(t.contains("unsat"), "{t}");
}
