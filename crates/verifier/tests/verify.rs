//! The verifier on the `test` benchmark of ../shared/vnncomp2021, counterexample checking,
//! soundness of the bound over a box, result files and the benchmark files.

use onnx_import::Model;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::path::PathBuf;
use std::time::Duration;
use verifier::benchmark::{read_instances, read_reference, score, Verdict};
use verifier::{check_counterexample, verify, Answer, BoundMethod, ExactDual, VerifyOptions};

fn shared(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vnncomp2021").join(rel)
}

fn opts(secs: u64) -> VerifyOptions {
    VerifyOptions { timeout: Duration::from_secs(secs), ..VerifyOptions::default() }
}

fn run(onnx: &str, prop: &str) -> (Model, vnnlib::Property, Answer) {
    let m = Model::load(shared(onnx)).unwrap();
    let p = vnnlib::parse_file(shared(prop)).unwrap();
    let a = verify(&m, &p, &ExactDual, &opts(30));
    (m, p, a)
}

#[test]
fn test_benchmark_sat_instance_gives_a_checked_counterexample() {
    let (m, p, a) = run("test/test_sat.onnx", "test/test_prop.vnnlib");
    let Answer::Sat { x, y } = &a else { panic!("expected sat, got {a:?}") };
    // Inside the box, and the output is the network's and unsafe.
    let (lo, hi) = p.clauses[0].input_box(5);
    assert!(x.iter().zip(lo.iter().zip(&hi)).all(|(v, (l, h))| l <= v && v <= h));
    assert_eq!(&m.forward(x).unwrap(), y);
    assert!(p.violated_by(x, y).is_some());
    let file = a.result_file();
    assert!(file.starts_with("sat\n((X_0 "), "{file}");
    assert!(file.trim_end().ends_with(')') && file.contains("\n (Y_4 "), "{file}");
}

#[test]
fn test_benchmark_unsat_instances() {
    let (_, _, a) = run("test/test_unsat.onnx", "test/test_prop.vnnlib");
    assert_eq!(a, Answer::Unsat);
    let (_, _, a) = run("test/test_tiny.onnx", "test/test_tiny.vnnlib");
    assert_eq!(a, Answer::Unsat);
}

#[test]
fn test_benchmark_open_instances_are_never_answered_wrongly() {
    // 2021: unknown for both entrants; no counterexample is known, so sat must come with one
    // that checks, and unsat would need a proof the entrants lacked: accept unsat only if a
    // dense grid finds no violation.
    for (onnx, prop) in
        [("test/test_nano.onnx", "test/test_nano.vnnlib"), ("test/test_small.onnx", "test/test_small.vnnlib")]
    {
        let m = Model::load(shared(onnx)).unwrap();
        let p = vnnlib::parse_file(shared(prop)).unwrap();
        let a = verify(&m, &p, &ExactDual, &opts(5));
        match &a {
            Answer::Sat { x, y } => assert!(p.violated_by(x, y).is_some()),
            Answer::Unsat => {
                for i in 0..=2000 {
                    let x = [-1.0 + i as f64 / 1000.0];
                    assert!(p.violated_by(&x, &m.forward(&x).unwrap()).is_none(), "{onnx}: unsat but {x:?} violates");
                }
            }
            Answer::Unknown | Answer::Timeout => {}
            Answer::Error(e) => panic!("{onnx}: {e}"),
        }
    }
}

#[test]
fn counterexamples_are_checked_with_the_graph() {
    let m = Model::load(shared("test/test_sat.onnx")).unwrap();
    let p = vnnlib::parse_file(shared("test/test_prop.vnnlib")).unwrap();
    let (lo, hi) = p.clauses[0].input_box(5);
    let Answer::Sat { x, .. } = verify(&m, &p, &ExactDual, &opts(30)) else { panic!() };
    assert!(check_counterexample(&m, &p, &x, &lo, &hi).is_some());
    // Outside the box the point is clipped into it before the check: the answer lies inside.
    let far: Vec<f64> = x.iter().map(|v| v + 100.0).collect();
    if let Some(Answer::Sat { x: c, .. }) = check_counterexample(&m, &p, &far, &lo, &hi) {
        assert_eq!(c, hi);
    }
    // The unsat network has no counterexample anywhere in the box.
    let m = Model::load(shared("test/test_unsat.onnx")).unwrap();
    let mut rng = StdRng::seed_from_u64(1);
    for _ in 0..200 {
        let x: Vec<f64> = lo.iter().zip(&hi).map(|(l, h)| l + rng.random::<f64>() * (h - l)).collect();
        assert!(check_counterexample(&m, &p, &x, &lo, &hi).is_none());
    }
}

#[test]
fn exact_dual_bounds_hold_on_samples_of_the_box() {
    let m = Model::load(shared("acasxu/ACASXU_run2a_1_1_batch_2000.onnx")).unwrap();
    let net = m.to_network("acas", &candle_core::Device::Cpu).unwrap();
    let lo = [-0.3, -0.1, -0.2, 0.3, 0.3];
    let hi = [-0.25, 0.0, -0.1, 0.4, 0.5];
    let rows: Vec<Vec<f64>> =
        vec![vec![1.0, -1.0, 0.0, 0.0, 0.0], vec![0.0, 0.0, 0.0, 0.0, 1.0], vec![-2.0, 0.5, 0.0, 1.0, 0.0]];
    let lbs = ExactDual.lower_bounds(&net, &[(lo.to_vec(), hi.to_vec())], &rows).unwrap().remove(0);
    // The same box in a batch with another gives the same bounds.
    let other = (vec![-0.1; 5], vec![0.1; 5]);
    let batch = ExactDual.lower_bounds(&net, &[other, (lo.to_vec(), hi.to_vec())], &rows).unwrap();
    for (a, b) in batch[1].iter().zip(&lbs) {
        assert!((a - b).abs() <= 1e-9 * (1.0 + a.abs()), "batched {a} vs alone {b}");
    }
    let mut rng = StdRng::seed_from_u64(2);
    for _ in 0..2000 {
        let x: Vec<f64> = lo.iter().zip(&hi).map(|(l, h)| l + rng.random::<f64>() * (h - l)).collect();
        let y = m.forward(&x).unwrap();
        for (row, lb) in rows.iter().zip(&lbs) {
            let v: f64 = row.iter().zip(&y).map(|(c, y)| c * y).sum();
            assert!(*lb <= v + 1e-9, "bound {lb} above the value {v} at {x:?}");
        }
    }
}

#[test]
fn mismatched_property_is_an_error() {
    let m = Model::load(shared("test/test_tiny.onnx")).unwrap();
    let p = vnnlib::parse_file(shared("test/test_prop.vnnlib")).unwrap();
    let Answer::Error(e) = verify(&m, &p, &ExactDual, &opts(5)) else { panic!() };
    assert!(e.contains("5 inputs") && e.contains("network 1"), "{e}");
}

#[test]
fn result_files() {
    assert_eq!(Answer::Unsat.result_file(), "unsat\n");
    assert_eq!(Answer::Timeout.result_file(), "timeout\n");
    let s = Answer::Sat { x: vec![0.5, -1.0], y: vec![3.25] }.result_file();
    assert_eq!(s, "sat\n((X_0 5e-1)\n (X_1 -1e0)\n (Y_0 3.25e0))\n");
}

#[test]
fn benchmark_files() {
    let inst = read_instances(&shared("test/test_instances.csv")).unwrap();
    assert_eq!(inst.len(), 5);
    assert_eq!(
        (inst[3].onnx.as_str(), inst[3].vnnlib.as_str(), inst[3].timeout),
        ("test_sat.onnx", "test_prop.vnnlib", 60.0)
    );
    let r = read_reference(&shared("results_2021.csv")).unwrap();
    assert_eq!(
        r.get(&("test".into(), "test_sat.onnx".into(), "test_prop.vnnlib".into())).map(String::as_str),
        Some("sat")
    );
    assert!(!r.contains_key(&("test".into(), "test_nano.onnx".into(), "test_nano.vnnlib".into())));
    assert_eq!(r.values().filter(|v| *v == "sat").count(), 47 + 21 + 1);
    let dir = std::env::temp_dir().join(format!("verifier-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("x_instances.csv");
    std::fs::write(&bad, "a.onnx,b.vnnlib,60\na.onnx,b.vnnlib\n").unwrap();
    let e = read_instances(&bad).unwrap_err();
    assert!(e.contains("line 2"), "{e}");
    std::fs::write(&bad, "a.onnx,b.vnnlib,-3\n").unwrap();
    assert!(read_instances(&bad).unwrap_err().contains("line 1"));
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!((score(Verdict::Correct), score(Verdict::Wrong), score(Verdict::NoAnswer)), (10, -150, 0));
}

#[test]
fn graphs_the_bounds_cannot_take_are_falsified_or_unknown_never_unsat() {
    // Sigmoid and Tanh: forward pass only (no dual), so sampling falsifies and nothing proves.
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../onnx-import/tests/fixtures/smooth.onnx");
    let m = Model::load(path).unwrap();
    assert!(m.chain().is_err());
    let head = "(declare-const X_0 Real)(declare-const X_1 Real)(declare-const X_2 Real)(declare-const X_3 Real)\n\
                (declare-const Y_0 Real)(declare-const Y_1 Real)(declare-const Y_2 Real)\n\
                (assert (<= X_0 1))(assert (>= X_0 -1))(assert (<= X_1 1))(assert (>= X_1 -1))\n\
                (assert (<= X_2 1))(assert (>= X_2 -1))(assert (<= X_3 1))(assert (>= X_3 -1))\n";
    // tanh > -10 everywhere: sat, with a checked counterexample.
    let p = vnnlib::parse_str(&format!("{head}(assert (>= Y_0 -10))")).unwrap();
    let a = verify(&m, &p, &ExactDual, &opts(5));
    let Answer::Sat { x, y } = &a else { panic!("expected sat, got {a:?}") };
    assert!(p.violated_by(x, y).is_some());
    // tanh < 2 everywhere: true, but without a bound the answer can only be unknown.
    let p = vnnlib::parse_str(&format!("{head}(assert (>= Y_0 2))")).unwrap();
    assert_eq!(verify(&m, &p, &ExactDual, &opts(2)), Answer::Unknown);
}
