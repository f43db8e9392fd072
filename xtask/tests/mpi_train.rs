//! Data-parallel training with MPI through the built binary (`--features mpi`; run by `.ci/run`
//! with Debian's OpenMPI): `mpirun -np 2 xtask train --mpi` for a few steps ends with the same
//! weights (to 1e-5, f32) as one process training on the whole batch.

#![cfg(feature = "mpi")]

use std::path::{Path, PathBuf};
use std::process::Command;

const N: usize = 64;

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("xtask-mpi-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// 6×6 images of two classes with a fixed pattern of noise, as MNIST-layout IDX files (the
/// same examples for the training and the test split).
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
    for split in ["train", "t10k"] {
        std::fs::write(dir.join(format!("{split}-images-idx3-ubyte")), &images).unwrap();
        std::fs::write(dir.join(format!("{split}-labels-idx1-ubyte")), &labels).unwrap();
    }
}

fn arch() -> nets::NetworkSpec {
    use nets::spec::build::*;
    nets::NetworkSpec::sequential("tiny", &[1, 6, 6], vec![flatten(), linear(36, 20), relu(), linear(20, 2)])
}

fn train_args(dir: &Path, out: &Path) -> Vec<String> {
    let arch_file = dir.join("tiny.json");
    std::fs::write(&arch_file, serde_json::to_string(&arch()).unwrap()).unwrap();
    // 64 examples in global batches of 16 (8 per rank), 2 epochs: 8 optimizer steps.
    [
        "train",
        "--arch",
        arch_file.to_str().unwrap(),
        "--dataset",
        "mnist",
        "--data-dir",
        dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--eps",
        "0.05",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--eval-limit",
        "8",
        "--seed",
        "3",
    ]
    .map(String::from)
    .to_vec()
}

fn weights(out: &Path) -> Vec<(String, Vec<f32>)> {
    let (_, ts) = nets::io::read_safetensors(&out.join("last.safetensors")).unwrap();
    ts.into_iter().map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect()
}

#[test]
fn two_ranks_give_the_weights_of_one_process_on_the_whole_batch() {
    let d = tmp("dp");
    write_idx(&d);
    let (one, two) = (d.join("one"), d.join("two"));
    let out = Command::new(env!("CARGO_BIN_EXE_xtask")).args(train_args(&d, &one)).output().unwrap();
    assert!(out.status.success(), "single process: {}", String::from_utf8_lossy(&out.stderr));
    let mut args = train_args(&d, &two);
    args.push("--mpi".into());
    let out = Command::new("mpirun")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .args(["-np", "2", "--oversubscribe", env!("CARGO_BIN_EXE_xtask")])
        .args(&args)
        .output()
        .expect("mpirun (OpenMPI: apt-get install openmpi-bin libopenmpi-dev)");
    assert!(out.status.success(), "mpirun -np 2: {}", String::from_utf8_lossy(&out.stderr));
    let (a, b) = (weights(&one), weights(&two));
    assert_eq!(a.len(), b.len());
    // The weights moved: the comparison is not of two untouched initialisations.
    let init = nets::Network::init(&arch(), 3, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let moved = init.state_dict().into_iter().zip(&a).map(|((_, t), (_, v))| {
        let t = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        t.iter().zip(v).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
    });
    assert!(moved.fold(0f32, f32::max) > 1e-3, "training did not change the weights");
    let mut worst = 0f32;
    for ((na, va), (nb, vb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        for (x, y) in va.iter().zip(vb) {
            worst = worst.max((x - y).abs());
        }
    }
    eprintln!("largest weight difference, 2 ranks vs 1 process: {worst:e}");
    assert!(worst <= 1e-5, "weights differ by {worst}");
    // Both runs logged the same training loss (the ranks' statistics are summed).
    let log = |p: &Path| std::fs::read_to_string(p.join("log.jsonl")).unwrap();
    let loss = |s: String| -> Vec<f64> {
        s.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["train_loss"].as_f64().unwrap())
            .collect()
    };
    let (la, lb) = (loss(log(&one)), loss(log(&two)));
    assert_eq!(la.len(), 2);
    for (x, y) in la.iter().zip(&lb) {
        assert!((x - y).abs() <= 1e-5 * (1.0 + x.abs()), "training loss {x} vs {y}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}
