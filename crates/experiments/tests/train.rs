//! Training: optimizers against hand-computed / Candle updates, a robust run that lowers its
//! loss and writes its files, and resume giving exactly the uninterrupted run.

use candle_core::{DType, Device, Tensor, Var};
use experiments::certify::Norm;
use experiments::train::{train, EpsilonSchedule, LossKind, LrSchedule, Optimizer, OptimizerConfig, TrainConfig};
use nets::Network;

mod common;
use common::{blobs, spec};

fn tmp(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("convex-train-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn cfg(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 10,
        optimizer: OptimizerConfig::adam(5e-3),
        lr: LrSchedule { base: 5e-3, after: 1, every: 1, gamma: 0.5 },
        eps: EpsilonSchedule::linear(0.0, 0.05, 2),
        loss: LossKind::Robust,
        norm: Norm::Linf,
        bounded_input: true,
        clip_grad_norm: Some(10.0),
        seed: 3,
        eval_limit: None,
        f64: false,
        quiet: true,
        proj: None,
        augment: None,
        recipe: Default::default(),
    }
}

#[test]
fn sgd_momentum_and_weight_decay_match_hand_computation() {
    let w = Var::new(&[1.0f64, -2.0], &Device::Cpu).unwrap();
    let mut opt = Optimizer::new(OptimizerConfig::sgd(0.1, 0.9, 0.01), vec![w.clone()]);
    // loss = sum(w^2) → g = 2w.
    let mut expect = [1.0f64, -2.0];
    let mut buf = [0.0f64; 2];
    for step in 0..3 {
        let loss = w.as_tensor().sqr().unwrap().sum_all().unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
        for i in 0..2 {
            let g = 2.0 * expect[i] + 0.01 * expect[i];
            buf[i] = if step == 0 { g } else { 0.9 * buf[i] + g };
            expect[i] -= 0.1 * buf[i];
        }
    }
    let got = w.as_tensor().to_vec1::<f64>().unwrap();
    for i in 0..2 {
        assert!((got[i] - expect[i]).abs() < 1e-12, "{got:?} vs {expect:?}");
    }
}

#[test]
fn adam_matches_candle_adamw_without_decay() {
    use candle_nn::Optimizer as _;
    let init = [0.5f64, -1.5, 2.0];
    let a = Var::new(&init, &Device::Cpu).unwrap();
    let b = Var::new(&init, &Device::Cpu).unwrap();
    let mut ours = Optimizer::new(OptimizerConfig::adam(0.01), vec![a.clone()]);
    let mut theirs = candle_nn::AdamW::new(
        vec![b.clone()],
        candle_nn::ParamsAdamW { lr: 0.01, weight_decay: 0.0, ..Default::default() },
    )
    .unwrap();
    let target = Tensor::new(&[1.0f64, 1.0, -1.0], &Device::Cpu).unwrap();
    for _ in 0..5 {
        let la = (a.as_tensor() - &target).unwrap().sqr().unwrap().sum_all().unwrap();
        ours.step(&la.backward().unwrap()).unwrap();
        let lb = (b.as_tensor() - &target).unwrap().sqr().unwrap().sum_all().unwrap();
        theirs.step(&lb.backward().unwrap()).unwrap();
    }
    let d = (a.as_tensor() - b.as_tensor()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
    assert!(d < 1e-12, "Adam differs from Candle's AdamW by {d}");
}

#[test]
fn robust_training_lowers_the_loss_and_resume_is_exact() {
    let tr = blobs(60, 1);
    let te = blobs(20, 2);
    // Straight run of 3 epochs.
    let d1 = tmp("straight");
    let net1 = Network::init(&spec(), 5, DType::F32, &Device::Cpu).unwrap();
    let s1 = train(&net1, &tr, &te, &cfg(3), &d1, false).unwrap();
    assert_eq!(s1.log.len(), 3);
    assert!(s1.log[2].train_loss < s1.log[0].train_loss, "loss did not decrease: {:?}", s1.log);
    assert!(s1.log[2].test_robust_error <= 0.5, "robust error {:?}", s1.log[2]);
    for f in [
        "last.safetensors",
        "best.safetensors",
        "optimizer.safetensors",
        "state.json",
        "log.jsonl",
        "config.json",
        "errors.png",
    ] {
        assert!(d1.join(f).is_file(), "{f} missing");
    }
    assert_eq!(std::fs::read_to_string(d1.join("log.jsonl")).unwrap().lines().count(), 3);
    // One epoch, then resume to 3.
    let d2 = tmp("resumed");
    let net2 = Network::init(&spec(), 5, DType::F32, &Device::Cpu).unwrap();
    train(&net2, &tr, &te, &cfg(1), &d2, false).unwrap();
    let net3 = Network::init(&spec(), 99, DType::F32, &Device::Cpu).unwrap(); // other weights: resume must overwrite them
    let s3 = train(&net3, &tr, &te, &cfg(3), &d2, true).unwrap();
    assert_eq!(s3.log.len(), 3);
    for ((n, a), (_, b)) in net1.state_dict().iter().zip(net3.state_dict().iter()) {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-6, "{n} differs by {d} after resume");
    }
    let _ = std::fs::remove_dir_all(&d1);
    let _ = std::fs::remove_dir_all(&d2);
}

#[test]
fn baseline_and_madry_losses_train() {
    let tr = blobs(40, 4);
    let te = blobs(10, 5);
    for loss in [LossKind::Baseline, LossKind::Madry { steps: 3, step: 0.02 }] {
        let d = tmp(if loss == LossKind::Baseline { "base" } else { "madry" });
        let net = Network::init(&spec(), 2, DType::F32, &Device::Cpu).unwrap();
        let mut c = cfg(2);
        c.loss = loss;
        let s = train(&net, &tr, &te, &c, &d, false).unwrap();
        assert!(s.log[1].train_loss < s.log[0].train_loss + 1e-3, "{loss:?}: {:?}", s.log);
        assert!(s.log[1].train_robust_error.is_none());
        let _ = std::fs::remove_dir_all(&d);
    }
}

#[test]
fn projected_training_runs_and_is_reproducible() {
    let tr = blobs(40, 6);
    let te = blobs(10, 7);
    let run = |tag: &str| {
        let d = tmp(tag);
        let net = Network::init(&spec(), 1, DType::F32, &Device::Cpu).unwrap();
        let mut c = cfg(1);
        c.proj = Some(3);
        let s = train(&net, &tr, &te, &c, &d, false).unwrap();
        let _ = std::fs::remove_dir_all(&d);
        (s.log[0].train_loss, net.state_dict())
    };
    let (l1, sd1) = run("proj-a");
    let (l2, sd2) = run("proj-b");
    assert!(l1.is_finite());
    assert_eq!(l1, l2, "same seed, same projections, same loss");
    for ((_, a), (_, b)) in sd1.iter().zip(&sd2) {
        assert_eq!((a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }
}

/// The optimizer state must not hold the graph of the step that produced it: a variable's
/// gradient from Candle's `backward` is still attached to the forward graph, and moments built
/// from it would keep every step's graph alive (memory grew ~300 MB/s in robust training).
#[test]
fn optimizer_state_holds_no_graph() {
    let x = Tensor::new(&[[1.0f64, 2.0], [3.0, -1.0]], &Device::Cpu).unwrap();
    for cfg in [
        OptimizerConfig::adam(0.01),
        OptimizerConfig::sgd(0.1, 0.9, 0.01),
        OptimizerConfig::Adam { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 },
    ] {
        let w = Var::new(&[0.5f64, -1.5], &Device::Cpu).unwrap();
        let mut opt = Optimizer::new(cfg.clone(), vec![w.clone()]);
        for _ in 0..3 {
            // A loss with a product, so the gradient of w is computed from forward tensors.
            let h = x.broadcast_mul(&w.as_tensor().unsqueeze(0).unwrap()).unwrap().relu().unwrap();
            let loss = h.sqr().unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            opt.step(&grads).unwrap();
            let (state, _) = opt.state();
            assert!(!state.is_empty());
            for (name, t) in &state {
                assert!(!t.track_op(), "{cfg:?}: optimizer state {name} is attached to a graph");
            }
        }
    }
}
