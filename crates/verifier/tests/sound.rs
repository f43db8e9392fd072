//! `--sound` in the verifier: the same answers on the `test` benchmark with the checked bound and
//! doubly confirmed counterexamples; the checked bound holds on samples of an ACAS Xu box and
//! sits just below the unchecked dual; f32 points are chosen inside the box.

use candle_core::Device;
use onnx_import::Model;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::path::PathBuf;
use std::time::Duration;
use verifier::VerifyOptions;
use verifier::{confirm_counterexample, f32_point_in_box, verify, Answer, BoundMethod, ExactDual, SoundDual};

fn shared(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vnncomp2021").join(rel)
}

fn sound_opts() -> VerifyOptions {
    VerifyOptions { timeout: Duration::from_secs(30), sound: true, ..VerifyOptions::default() }
}

#[test]
fn test_benchmark_answers_with_sound() {
    let p = vnnlib::parse_file(shared("test/test_prop.vnnlib")).unwrap();
    let method = SoundDual { opts: sound::SoundOptions::default() };
    let m = Model::load(shared("test/test_sat.onnx")).unwrap();
    let a = verify(&m, &p, &method, &sound_opts());
    let Answer::Sat { x, y } = &a else { panic!("expected sat, got {a:?}") };
    // The reported point is an f32 value, the graph's output there is unsafe, and so is the f32
    // network's.
    assert!(x.iter().all(|v| (*v as f32) as f64 == *v));
    assert!(p.violated_by(x, y).is_some());
    let (lo, hi) = p.clauses[0].input_box(5);
    let net = m.to_network("t", &Device::Cpu).unwrap();
    assert!(confirm_counterexample(&m, Some(&net), &p, x, &lo, &hi).is_some());
    // Without the network (no f32 evaluation) nothing is confirmed.
    assert!(confirm_counterexample(&m, None, &p, x, &lo, &hi).is_none());
    let m = Model::load(shared("test/test_unsat.onnx")).unwrap();
    assert_eq!(verify(&m, &p, &method, &sound_opts()), Answer::Unsat);
}

#[test]
fn sound_bound_holds_and_is_close_to_the_dual() {
    let m = Model::load(shared("acasxu/ACASXU_run2a_1_1_batch_2000.onnx")).unwrap();
    let net = m.to_network("acas", &Device::Cpu).unwrap();
    let lo = vec![-0.3, -0.1, -0.2, 0.3, 0.3];
    let hi = vec![-0.25, 0.0, -0.1, 0.4, 0.5];
    let rows = vec![vec![1.0, -1.0, 0.0, 0.0, 0.0], vec![0.0, 0.0, 1.0, 0.0, -1.0]];
    let boxes = [(lo.clone(), hi.clone())];
    let s = SoundDual { opts: sound::SoundOptions::default() }.lower_bounds(&net, &boxes, &rows).unwrap();
    let d = ExactDual.lower_bounds(&net, &boxes, &rows).unwrap();
    for (a, b) in s[0].iter().zip(&d[0]) {
        assert!(a <= b && b - a < 1e-6 * (1.0 + b.abs()), "sound {a}, dual {b}");
    }
    let mut rng = StdRng::seed_from_u64(3);
    for _ in 0..300 {
        let x: Vec<f64> = lo.iter().zip(&hi).map(|(l, h)| l + rng.random::<f64>() * (h - l)).collect();
        let y = m.forward(&x).unwrap();
        for (r, b) in rows.iter().zip(&s[0]) {
            let v: f64 = r.iter().zip(&y).map(|(c, y)| c * y).sum();
            assert!(*b <= v, "bound {b} above the value {v} at {x:?}");
        }
    }
}

#[test]
fn f32_points_stay_in_the_box() {
    let lo = [0.1, -1.0, 0.3];
    let hi = [0.1 + 1e-12, 1.0, 0.3];
    // 0.1 and 0.3 are not f32 values: the first box is too thin to hold one, the third a point.
    assert!(f32_point_in_box(&[0.1, 0.0, 0.3], &lo, &hi).is_none());
    let lo = [0.1, -1.0];
    let hi = [0.2, 1.0];
    let p = f32_point_in_box(&[0.1, 5.0], &lo, &hi).unwrap();
    assert!(p[0] as f64 >= 0.1 && p[0] as f64 <= 0.2 && p[1] == 1.0);
}
