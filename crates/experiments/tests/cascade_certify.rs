//! Certifying cascades: a cascade of two tiny stages gives the verdicts of its stages run by
//! hand; the released CIFAR cascade gives the PyTorch package's verdicts on a CIFAR-format file
//! (`fixtures/cascade_cifar/`, made by `make_fixture.py` there).

use candle_core::{DType, Device, Tensor, D};
use experiments::cascade_certify::{cascade_batch, certify_file, CascadeCounts, Certified};
use experiments::certify::{evaluate_batch, CertifyConfig, EvalSettings, Norm};
use experiments::datasets::Dataset;
use nets::{spec::build::*, Network, NetworkSpec};
use serde_json::Value;
use std::path::PathBuf;

#[global_allocator]
static GLOBAL: hybrid_alloc::Hybrid = hybrid_alloc::Hybrid;

/// 6×6 one-channel images of two classes (top half brighter or darker), of varied contrast.
fn blobs(n: usize, seed: u64) -> Dataset {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for i in 0..n {
        let c = (i % 2) as u32;
        let contrast = rng.random_range(0.0f32..0.4);
        for p in 0..36 {
            let base = if (p < 18) == (c == 0) { 0.5 + contrast } else { 0.5 - contrast };
            images.push((base + rng.random_range(-0.1f32..0.1)).clamp(0.0, 1.0));
        }
        labels.push(c);
    }
    Dataset { images, labels, n, channels: 1, height: 6, width: 6 }
}

/// A tiny stage: flatten, linear, ReLU, linear; the first layer's weights see the two halves
/// of the image with opposite signs, scaled by `gain`; the output biases are `bias` (a stage
/// biased towards class 1 certifies the low-contrast examples of class 0 later or never).
fn stage(gain: f32, bias: [f32; 2], seed: u64) -> Network {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let s = NetworkSpec::sequential("tiny", &[1, 6, 6], vec![flatten(), linear(36, 4), relu(), linear(4, 2)]);
    let mut w1 = Vec::new();
    for h in 0..4 {
        let sign = if h % 2 == 0 { 1.0 } else { -1.0 };
        for p in 0..36 {
            let half = if p < 18 { 1.0 } else { -1.0 };
            w1.push(gain * sign * half / 18.0 + rng.random_range(-0.02f32..0.02));
        }
    }
    let w2 = vec![1.0f32, -1.0, 1.0, -1.0, -1.0, 1.0, -1.0, 1.0];
    let dev = Device::Cpu;
    let sd = vec![
        ("1.weight".to_string(), Tensor::from_vec(w1, (4, 36), &dev).unwrap()),
        ("1.bias".to_string(), Tensor::zeros(4, DType::F32, &dev).unwrap()),
        ("3.weight".to_string(), Tensor::from_vec(w2, (2, 4), &dev).unwrap()),
        ("3.bias".to_string(), Tensor::new(&bias, &dev).unwrap()),
    ];
    Network::from_state_dict(&s, &sd, DType::F32, &dev).unwrap()
}

fn settings(eps: f64, pgd: bool) -> EvalSettings {
    EvalSettings { eps, norm: Norm::Linf, bounded_input: true, pgd, memory_budget: None, proj: None }
}

/// Stage `net` on example `i` alone, through the single-model evaluation: its prediction, and
/// whether the bound certifies that prediction (no robust error with the prediction as label).
fn by_hand(net: &Network, data: &Dataset, i: usize, s: &EvalSettings) -> (u32, bool) {
    let (x, _) = data.batch(i, i + 1, &Device::Cpu).unwrap();
    let p = net.forward(&x).unwrap().argmax(D::Minus1).unwrap().to_vec1::<u32>().unwrap()[0];
    let c = evaluate_batch(net, &x, &[p], &EvalSettings { pgd: false, ..*s }).unwrap();
    (p, c.robust_errors == 0)
}

#[test]
fn two_stage_cascade_gives_the_verdicts_of_its_stages_run_by_hand() {
    let data = blobs(40, 7);
    let stages = [stage(1.0, [0.0, 1.0], 1), stage(3.0, [0.05, -0.05], 2)];
    let s = settings(0.1, false);
    let (x, y) = data.batch(0, data.len(), &Device::Cpu).unwrap();
    let v = cascade_batch(&stages, &x, &y, &s).unwrap();
    let mut counts = CascadeCounts::new(2);
    counts.add(&v);
    let (mut clean, mut robust, mut answered, mut reached1) = (0, 0, [0usize; 2], 0);
    for i in 0..data.len() {
        let (p0, c0) = by_hand(&stages[0], &data, i, &s);
        let (p1, c1) = by_hand(&stages[1], &data, i, &s);
        let got = &v[i];
        assert_eq!((got.stages()[0].prediction, got.stages()[0].certified), (p0, c0), "example {i}, stage 0");
        let (k, p, c) = if c0 { (0, p0, c0) } else { (1, p1, c1) };
        assert_eq!(got.stage(), k, "example {i}");
        if !c0 {
            reached1 += 1;
            assert_eq!((got.stages()[1].prediction, got.stages()[1].certified), (p1, c1), "example {i}, stage 1");
        }
        answered[k] += 1;
        clean += usize::from(p != y[i]);
        robust += usize::from(!(c && p == y[i]));
        assert_eq!((got.clean_error(), got.robust_error()), (p != y[i], !(c && p == y[i])));
    }
    // The test proves little unless every path occurs.
    let only_stage1 = v.iter().filter(|e| e.stage() == 1 && e.answer().certified).count();
    let neither = v.iter().filter(|e| !e.answer().certified).count();
    eprintln!("answered by stage 0: {}, certified only by stage 1: {only_stage1}, by neither: {neither}", answered[0]);
    assert!(answered[0] > 0 && only_stage1 > 0 && neither > 0, "{answered:?} {only_stage1} {neither}");
    assert_eq!(counts.total.n, 40);
    assert_eq!((counts.total.clean_errors, counts.total.robust_errors), (clean, robust));
    let rows = counts.rows();
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].counts.reached, rows[1].counts.reached), (40, reached1));
    assert_eq!((rows[0].counts.answered, rows[1].counts.answered), (answered[0], answered[1]));
    assert_eq!(rows[0].counts.certified, answered[0]);
    // The last row is the whole cascade; the first is the cascade cut after stage 0, i.e. stage
    // 0 alone.
    assert!((rows[1].clean_error - clean as f64 / 40.0).abs() < 1e-12);
    assert!((rows[1].robust_error - robust as f64 / 40.0).abs() < 1e-12);
    let alone = evaluate_batch(&stages[0], &x, &y, &s).unwrap();
    assert!((rows[0].clean_error - alone.clean_errors as f64 / 40.0).abs() < 1e-12);
    assert!((rows[0].robust_error - alone.robust_errors as f64 / 40.0).abs() < 1e-12);
    // Batches do not change verdicts.
    let mut again = Vec::new();
    for start in (0..40).step_by(7) {
        let (xb, yb) = data.batch(start, (start + 7).min(40), &Device::Cpu).unwrap();
        again.extend(cascade_batch(&stages, &xb, &yb, &s).unwrap());
    }
    assert_eq!(
        again.iter().map(|e| (e.stage(), e.answer().prediction)).collect::<Vec<_>>(),
        v.iter().map(|e| (e.stage(), e.answer().prediction)).collect::<Vec<_>>()
    );
}

#[test]
fn pgd_attacks_the_answering_stage_and_never_breaks_a_certificate() {
    let data = blobs(30, 11);
    let stages = [stage(1.0, [0.0, 1.0], 1), stage(3.0, [0.05, -0.05], 2)];
    let s = settings(0.08, true);
    let (x, y) = data.batch(0, data.len(), &Device::Cpu).unwrap();
    let v = cascade_batch(&stages, &x, &y, &s).unwrap();
    assert!(v.iter().any(|e| e.stage() == 0) && v.iter().any(|e| e.stage() == 1));
    for (i, e) in v.iter().enumerate() {
        let pgd_error = e.pgd_error.expect("PGD ran");
        if !e.robust_error() {
            assert!(!pgd_error, "example {i}: PGD broke a certificate");
        }
        // The same attack on the answering stage alone.
        let net = &stages[e.stage()];
        let (xi, yi) = data.batch(i, i + 1, &Device::Cpu).unwrap();
        let alone = evaluate_batch(net, &xi, &yi, &s).unwrap();
        assert_eq!(pgd_error, alone.pgd_errors == 1, "example {i}");
    }
}

fn fixture_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cascade_cifar"))
}

/// The released CIFAR cascade, from `../shared` beside the checkout or `$CONVEX_SHARED_DIR`.
fn cifar_cascade() -> PathBuf {
    let shared = std::env::var_os("CONVEX_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared")));
    let p = shared.join("models/cifar_small_l2_36px_cascade.pth");
    assert!(p.is_file(), "{} is missing (set CONVEX_SHARED_DIR to the shared folder)", p.display());
    p
}

fn cifar_config(json: Option<PathBuf>) -> (CertifyConfig, Value) {
    let fx: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("verdicts.json")).unwrap()).unwrap();
    let cfg = CertifyConfig {
        model: cifar_cascade(),
        arch: Some("cifar-small".into()),
        dataset: "cifar10".into(),
        data_dir: fixture_dir(),
        eps: fx["eps"].as_f64().unwrap(),
        norm: Norm::L2,
        bounded_input: false,
        limit: None,
        batch_size: 16,
        pgd: false,
        json,
        memory_budget: None,
        f64: false,
        device: "cpu".into(),
        proj: None,
        records: None,
    };
    (cfg, fx)
}

#[test]
fn released_cifar_cascade_gives_the_pytorch_package_verdicts() {
    let dir = std::env::temp_dir().join(format!("cascade-certify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("cifar.json");
    let (cfg, fx) = cifar_config(Some(json.clone()));
    // The user's path: `certify` on the file, `--dataset cifar10` normalising per channel.
    let r = match certify_file(&cfg, None, |_, _, _| {}).unwrap() {
        Certified::Cascade(r) => r,
        other => panic!("a 2-stage file must be evaluated as a cascade, got {other:?}"),
    };
    let ex = fx["examples"].as_array().unwrap();
    assert_eq!(r.n, ex.len());
    assert_eq!(r.verdicts.len(), ex.len());
    let mut worst = 0f64;
    for (i, (got, want)) in r.verdicts.iter().zip(ex).enumerate() {
        assert_eq!(got.label as u64, want["label"].as_u64().unwrap(), "example {i}");
        assert_eq!(got.stage() as u64, want["stage"].as_u64().unwrap(), "example {i}: answering stage");
        let stages = want["stages"].as_array().unwrap();
        assert_eq!(got.stages().len(), stages.len(), "example {i}");
        for (k, (g, w)) in got.stages().iter().zip(stages).enumerate() {
            assert_eq!(g.prediction as u64, w["prediction"].as_u64().unwrap(), "example {i} stage {k}");
            assert_eq!(g.certified, w["certified"].as_bool().unwrap(), "example {i} stage {k}");
            for (a, b) in g.f.iter().zip(w["f"].as_array().unwrap()) {
                worst = worst.max((a - b.as_f64().unwrap()).abs());
            }
        }
    }
    eprintln!("largest |f - f_pytorch| = {worst:.2e}");
    assert!(worst < 1e-4, "bounds differ from the PyTorch package's by {worst}");
    // A mixed file: some certified by stage 0, some only by stage 1, some by neither.
    let by0 = r.verdicts.iter().filter(|e| e.stage() == 0).count();
    let by1 = r.verdicts.iter().filter(|e| e.stage() == 1 && e.answer().certified).count();
    let none = r.verdicts.iter().filter(|e| !e.answer().certified).count();
    assert!(by0 >= 5 && by1 >= 5 && none >= 5, "{by0} {by1} {none}");
    let n = r.n as f64;
    assert!((r.clean_error - fx["clean_errors"].as_f64().unwrap() / n).abs() < 1e-12);
    assert!((r.robust_error - fx["robust_errors"].as_f64().unwrap() / n).abs() < 1e-12);
    let assigned: Vec<u64> = fx["assigned"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(r.stages.iter().map(|s| s.counts.answered as u64).collect::<Vec<_>>(), assigned);
    // The JSON: overall errors and one entry per stage.
    let j: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(j["n"].as_u64().unwrap() as usize, r.n);
    assert!((j["robust_error"].as_f64().unwrap() - r.robust_error).abs() < 1e-12);
    assert!((j["clean_error"].as_f64().unwrap() - r.clean_error).abs() < 1e-12);
    let st = j["stages"].as_array().unwrap();
    assert_eq!(st.len(), 2);
    assert_eq!(st[0]["reached"].as_u64().unwrap() as usize, r.n);
    assert_eq!(st[1]["reached"].as_u64().unwrap() as usize, r.n - by0);
    assert!((st[1]["robust_error"].as_f64().unwrap() - r.robust_error).abs() < 1e-12);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn one_stage_of_the_cifar_cascade_alone() {
    let (cfg, fx) = cifar_config(None);
    let ex = fx["examples"].as_array().unwrap();
    // Stage 1 sees every example here, not only those stage 0 passes on; where the fixture has
    // its verdict (the examples stage 0 did not certify), the errors must follow it.
    let s = match certify_file(&cfg, Some(1), |_, _, _| {}).unwrap() {
        Certified::Stage(s) => s,
        other => panic!("expected one stage, got {other:?}"),
    };
    assert_eq!((s.stage, s.stages_in_file, s.report.n), (1, 2, ex.len()));
    let s0 = match certify_file(&cfg, Some(0), |_, _, _| {}).unwrap() {
        Certified::Stage(s) => s,
        other => panic!("expected one stage, got {other:?}"),
    };
    // Stage 0 alone: its clean error from the fixture's stage-0 predictions.
    let wrong0 = ex.iter().filter(|e| e["stages"][0]["prediction"].as_u64() != e["label"].as_u64()).count();
    assert!((s0.report.clean_error - wrong0 as f64 / ex.len() as f64).abs() < 1e-12);
    let err = certify_file(&cfg, Some(2), |_, _, _| {}).unwrap_err().to_string();
    assert!(err.contains("--stage 2") && err.contains("2 stages"), "{err}");
}

#[test]
fn bad_cascade_input_is_an_error() {
    let data = blobs(4, 3);
    let (x, mut y) = data.batch(0, 4, &Device::Cpu).unwrap();
    let stages = [stage(1.0, [0.0, 1.0], 1), stage(3.0, [0.05, -0.05], 2)];
    let s = settings(0.1, false);
    let err = cascade_batch(&[], &x, &y, &s).unwrap_err().to_string();
    assert!(err.contains("at least one stage"), "{err}");
    let err = cascade_batch(&stages, &x, &y[..3], &s).unwrap_err().to_string();
    assert!(err.contains("3 labels for a batch of 4"), "{err}");
    y[2] = 5;
    let err = cascade_batch(&stages, &x, &y, &s).unwrap_err().to_string();
    assert!(err.contains("label 5 of example 2") && err.contains("2 of stage 0"), "{err}");
}
