//! Cascades: assignment to the first stage that certifies its own prediction, the last stage
//! taking the rest; training stage by stage on what earlier stages leave.

use candle_core::{DType, Device, Tensor};
use experiments::cascade::{certify_own_prediction, evaluate_cascade, train_cascade, Ball};
use experiments::certify::{evaluate, EvalSettings, Norm};
use experiments::datasets::Dataset;
use experiments::train::{EpsilonSchedule, LossKind, LrSchedule, OptimizerConfig, TrainConfig};
use nets::{spec::build::*, Network, NetworkSpec};

fn blobs(n: usize, seed: u64) -> Dataset {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for i in 0..n {
        let c = (i % 2) as u32;
        for p in 0..36 {
            let base = if (p < 18) == (c == 0) { 0.6 } else { 0.4 };
            images.push((base + rng.random_range(-0.15f32..0.15)).clamp(0.0, 1.0));
        }
        labels.push(c);
    }
    Dataset { images, labels, n, channels: 1, height: 6, width: 6 }
}

fn spec() -> NetworkSpec {
    NetworkSpec::sequential("blob", &[1, 6, 6], vec![flatten(), linear(36, 16), relu(), linear(16, 2)])
}

/// A network answering `class` everywhere with margin 10 (certified everywhere).
fn constant(class: usize) -> Network {
    let s = NetworkSpec::sequential("const", &[1, 6, 6], vec![flatten(), linear(36, 2)]);
    let mut b = vec![0f32; 2];
    b[class] = 10.0;
    let sd = vec![
        ("1.weight".to_string(), Tensor::zeros((2, 36), DType::F32, &Device::Cpu).unwrap()),
        ("1.bias".to_string(), Tensor::new(b.as_slice(), &Device::Cpu).unwrap()),
    ];
    Network::from_state_dict(&s, &sd, DType::F32, &Device::Cpu).unwrap()
}

/// A network that never certifies (all logits equal).
fn undecided() -> Network {
    let s = NetworkSpec::sequential("flat", &[1, 6, 6], vec![flatten(), linear(36, 2)]);
    let sd = vec![
        ("1.weight".to_string(), Tensor::zeros((2, 36), DType::F32, &Device::Cpu).unwrap()),
        ("1.bias".to_string(), Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap()),
    ];
    Network::from_state_dict(&s, &sd, DType::F32, &Device::Cpu).unwrap()
}

fn cfg() -> TrainConfig {
    TrainConfig {
        epochs: 2,
        batch_size: 10,
        optimizer: OptimizerConfig::adam(1e-2),
        lr: LrSchedule::constant(1e-2),
        eps: EpsilonSchedule::constant(0.05),
        loss: LossKind::Robust,
        norm: Norm::Linf,
        bounded_input: true,
        clip_grad_norm: None,
        seed: 0,
        eval_limit: None,
        f64: false,
        quiet: true,
        proj: None,
        augment: None,
        recipe: Default::default(),
    }
}

#[test]
fn assignment_follows_the_first_certifying_stage() {
    let data = blobs(30, 1);
    let ball = Ball { eps: 0.05, norm: Norm::Linf, bounded_input: true };
    // A first stage certifying class 1 everywhere takes every example.
    let e = evaluate_cascade(&[constant(1), constant(0)], &data, &ball, 7, None).unwrap();
    assert_eq!(e.assigned, vec![30, 0]);
    assert!((e.robust_error - 0.5).abs() < 1e-12 && (e.clean_error - 0.5).abs() < 1e-12);
    // A stage that never certifies passes everything on; the last stage answers the rest.
    let e = evaluate_cascade(&[undecided(), constant(0)], &data, &ball, 7, None).unwrap();
    assert_eq!(e.assigned, vec![0, 30]);
    let e = evaluate_cascade(&[undecided(), undecided()], &data, &ball, 7, None).unwrap();
    assert_eq!(e.assigned, vec![0, 30]);
    assert_eq!(e.robust_error, 1.0);
}

#[test]
fn trained_cascade_and_single_stage_agree_with_plain_evaluation() {
    let tr = blobs(60, 2);
    let te = blobs(30, 3);
    let dir = std::env::temp_dir().join(format!("cascade-{}", std::process::id()));
    let (nets, eval) = train_cascade(&spec(), &tr, &te, &cfg(), 2, &dir, 0).unwrap();
    // Stage 2 is trained exactly when stage 1 leaves training examples it does not certify for
    // its own prediction; a test example goes to stage 1 exactly when stage 1 certifies it.
    let ball = Ball { eps: 0.05, norm: Norm::Linf, bounded_input: true };
    let own = |set: &Dataset| {
        let (x, _) = set.gather(&(0..set.len()).collect::<Vec<_>>(), DType::F32, &Device::Cpu).unwrap();
        certify_own_prediction(&nets[0], &x, &ball).unwrap().1
    };
    let left = own(&tr).iter().filter(|c| !**c).count();
    assert_eq!(nets.len(), if left > 0 { 2 } else { 1 }, "stage 1 leaves {left} of 60 training examples");
    assert_eq!(dir.join("stage2").is_dir(), nets.len() == 2);
    let first = own(&te).iter().filter(|c| **c).count();
    let want = if nets.len() == 2 { vec![first, 30 - first] } else { vec![30] };
    assert_eq!(eval.assigned, want, "stage 1 certifies {first} of 30 test examples");
    assert!(dir.join("stage1/best.safetensors").is_file() && dir.join("cascade.json").is_file());
    // One stage alone: the cascade's robust error equals the model's own.
    let s =
        EvalSettings { eps: 0.05, norm: Norm::Linf, bounded_input: true, pgd: false, memory_budget: None, proj: None };
    let own = evaluate(&nets[0], &te, &s, 10, None, DType::F32).unwrap();
    let single =
        evaluate_cascade(&nets[..1], &te, &Ball { eps: 0.05, norm: Norm::Linf, bounded_input: true }, 10, None)
            .unwrap();
    assert!((single.robust_error - own.robust_errors as f64 / 30.0).abs() < 1e-12);
    assert!((single.clean_error - own.clean_errors as f64 / 30.0).abs() < 1e-12);
    std::fs::remove_dir_all(&dir).ok();
}
