//! Certified training on interval bounds (IBP, CROWN-IBP, MTL-IBP): each loss trains a tiny
//! separable problem to 0 % certified error, the schedules give the papers' values, resume is
//! exact, BatchNorm trains on batch statistics and is saved on running statistics, the warm-up
//! regulariser and the IBP initialisation compute what their formulas say, and the IBP bound of a
//! trained net holds at sampled points.

use candle_core::{DType, Device, Tensor};
use dual_core::bounds::Method;
use dual_core::LayerBounds;
use experiments::certify::Norm;
use experiments::train::certified::margin_bounds_with_layers;
use experiments::train::regularizer::{intensity, warmup_terms, TAU};
use experiments::train::{
    init::ibp_init, train, EpsilonSchedule, LossKind, LrSchedule, Mix, OptimizerConfig, RampShape, Recipe, TrainConfig,
};
use nets::{spec::build::*, spec::BatchNormMode, spec::LayerSpec, Network, NetworkSpec};
use rand::{Rng, SeedableRng};

mod common;
use common::{blobs, spec};

fn tmp(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("convex-certtrain-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn bn_spec() -> NetworkSpec {
    let bn = LayerSpec::BatchNorm2d { num_features: 4, eps: 1e-5, mode: BatchNormMode::BatchStats };
    NetworkSpec::sequential(
        "blob-bn",
        &[1, 6, 6],
        vec![conv(1, 4, 3, 2, 1), bn, relu(), flatten(), linear(36, 16), relu(), linear(16, 2)],
    )
}

fn cfg(loss: LossKind, epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 10,
        optimizer: OptimizerConfig::adam(5e-3),
        lr: LrSchedule::constant(5e-3),
        eps: EpsilonSchedule::constant(0.05),
        loss,
        norm: Norm::Linf,
        bounded_input: true,
        clip_grad_norm: Some(10.0),
        seed: 3,
        eval_limit: None,
        f64: false,
        quiet: true,
        proj: None,
        augment: None,
        recipe: Recipe::default(),
    }
}

fn max_diff(a: &Network, b: &Network) -> f32 {
    a.state_dict()
        .iter()
        .zip(b.state_dict().iter())
        .map(|((_, x), (_, y))| (x - y).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap())
        .fold(0.0, f32::max)
}

#[test]
fn each_interval_loss_decreases_and_certifies_the_separable_problem() {
    let tr = blobs(60, 1);
    let te = blobs(20, 2);
    for loss in [LossKind::Ibp, LossKind::CrownIbp, LossKind::MtlIbp, LossKind::Sabr] {
        let d = tmp(&format!("{loss:?}"));
        let net = Network::init(&spec(), 5, DType::F32, &Device::Cpu).unwrap();
        let mut c = cfg(loss, 6);
        // Pure bound losses at the end: κ 1 → 0 (ibp, crown-ibp), α = 1 would drop PGD: keep 0.5.
        c.recipe.kappa = Mix { start: 0.5, end: 0.0 };
        let s = train(&net, &tr, &te, &c, &d, false).unwrap();
        let (first, last) = (&s.log[0], s.log.last().unwrap());
        assert!(last.train_loss < first.train_loss, "{loss:?}: loss did not decrease: {:?}", s.log);
        assert_eq!(last.test_robust_error, 0.0, "{loss:?}: certified error (exact ∪ IBP) {:?}", s.log);
        assert_eq!(last.test_bound.as_deref(), Some("exact+ibp"), "{loss:?}");
        assert_eq!(last.train_robust_error, Some(0.0), "{loss:?}: training bound's error {:?}", s.log);
        let conf: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).unwrap()).unwrap();
        let name = match loss {
            LossKind::Ibp => "ibp",
            LossKind::CrownIbp => "crown-ibp",
            LossKind::Sabr => "sabr",
            _ => "mtl-ibp",
        };
        assert_eq!(conf["loss"], name);
        let _ = std::fs::remove_dir_all(&d);
    }
}

#[test]
fn resume_is_exact_for_the_interval_losses() {
    let tr = blobs(40, 3);
    let te = blobs(10, 4);
    for (loss, sp) in
        [(LossKind::CrownIbp, spec()), (LossKind::MtlIbp, spec()), (LossKind::Sabr, spec()), (LossKind::Ibp, bn_spec())]
    {
        let mut c = cfg(loss, 3);
        c.eps = EpsilonSchedule { warmup_epochs: 1, shape: RampShape::Smooth, ..EpsilonSchedule::linear(0.0, 0.05, 1) };
        c.recipe.warmup_reg = Some(0.5);
        let d1 = tmp(&format!("straight-{loss:?}"));
        let net1 = Network::init(&sp, 5, DType::F32, &Device::Cpu).unwrap();
        train(&net1, &tr, &te, &c, &d1, false).unwrap();
        let d2 = tmp(&format!("resumed-{loss:?}"));
        let net2 = Network::init(&sp, 5, DType::F32, &Device::Cpu).unwrap();
        train(&net2, &tr, &te, &TrainConfig { epochs: 2, ..c.clone() }, &d2, false).unwrap();
        let net3 = Network::init(&sp, 77, DType::F32, &Device::Cpu).unwrap();
        train(&net3, &tr, &te, &c, &d2, true).unwrap();
        assert_eq!(max_diff(&net1, &net3), 0.0, "{loss:?}: resumed weights differ from the uninterrupted run");
        let _ = std::fs::remove_dir_all(&d1);
        let _ = std::fs::remove_dir_all(&d2);
    }
}

#[test]
fn batchnorm_trains_on_batch_statistics_and_saves_running_ones() {
    let tr = blobs(40, 5);
    let te = blobs(10, 6);
    let d = tmp("bn");
    let net = Network::init(&bn_spec(), 1, DType::F32, &Device::Cpu).unwrap();
    train(&net, &tr, &te, &cfg(LossKind::Ibp, 2), &d, false).unwrap();
    let (saved, tensors) = nets::io::read_safetensors(&d.join("last.safetensors")).unwrap();
    let saved = saved.expect("the architecture is in the file");
    assert!(saved.layers.iter().any(|l| matches!(l, LayerSpec::BatchNorm2d { mode: BatchNormMode::Eval, .. })));
    // Running statistics moved from their initial 0 / 1 towards the data's.
    let rm = tensors.iter().find(|(n, _)| n == "1.running_mean").unwrap().1.to_vec1::<f32>().unwrap();
    assert!(rm.iter().any(|v| v.abs() > 1e-3), "running mean never updated: {rm:?}");
    // The saved model certifies on its own (no --arch) and its forward pass is per-image.
    let m = nets::io::load_model(&d.join("best.safetensors"), None, DType::F32, &Device::Cpu).unwrap();
    let (x, _) = te.batch(0, 4, &Device::Cpu).unwrap();
    let all = m.forward(&x).unwrap();
    let one = m.forward(&x.narrow(0, 2, 1).unwrap()).unwrap();
    let diff = (all.narrow(0, 2, 1).unwrap() - one).unwrap().abs().unwrap().max_all().unwrap();
    assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn ibp_bounds_hold_at_sampled_points_of_a_trained_net() {
    let tr = blobs(60, 7);
    let te = blobs(20, 8);
    let d = tmp("sound");
    let net = Network::init(&spec(), 9, DType::F32, &Device::Cpu).unwrap();
    train(&net, &tr, &te, &cfg(LossKind::Ibp, 3), &d, false).unwrap();
    let net = net.to_dtype(DType::F64).unwrap();
    let (x, y) = te.batch(0, 20, &Device::Cpu).unwrap();
    let x = x.to_dtype(DType::F64).unwrap();
    let eps = 0.05;
    let (lower, layers) =
        nets::no_grad(|| margin_bounds_with_layers(&net, &x, &y, eps, Norm::Linf, true, Method::Ibp)).unwrap();
    let lower = lower.to_vec2::<f64>().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let xv = x.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    for _ in 0..200 {
        // A point of the ball ∩ [0, 1], corners included half of the time.
        let p: Vec<f64> = xv
            .iter()
            .map(|&v| {
                let t: f64 = if rng.random_bool(0.5) {
                    rng.random_range(-1.0..=1.0)
                } else {
                    rng.random_range(0..2) as f64 * 2.0 - 1.0
                };
                (v + eps * t).clamp(0.0, 1.0)
            })
            .collect();
        let xp = Tensor::from_vec(p, x.shape(), &Device::Cpu).unwrap();
        let outs = net.forward_all(&xp).unwrap();
        let z = outs.last().unwrap().to_vec2::<f64>().unwrap();
        for (b, row) in z.iter().enumerate() {
            for j in 0..row.len() {
                let m = row[y[b] as usize] - row[j];
                assert!(m >= lower[b][j] - 1e-9, "margin {m} below the IBP bound {}", lower[b][j]);
            }
        }
        // The layer-wise intervals hold too (ReLU inputs: outputs 1 and 4 of the layers).
        for lb in &layers {
            let v = outs[lb.layer - 1].flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let l = lb.lower.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let u = lb.upper.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            for i in 0..v.len() {
                assert!(v[i] >= l[i] - 1e-9 && v[i] <= u[i] + 1e-9, "layer {} unit {i} outside its interval", lb.layer);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn smoothed_ramp_matches_auto_lirpa_and_the_weights_follow_epsilon() {
    // auto_LiRPA 0.7.1 `SmoothedScheduler(0.1, "start=2,length=4")`, 10 batches per epoch, at
    // global steps 0, 9, 10, 11, 15, 20, 25, 30, 40, 49, 50, 59 (computed by it, see
    // `docs/TRAINING.md`).
    let want = [
        (0, 0.0),
        (9, 0.0),
        (10, 0.0),
        (11, 7.692307692307693e-07),
        (15, 0.0004807692307692308),
        (20, 0.007692307692307693),
        (25, 0.023076923076923078),
        (30, 0.038461538461538464),
        (40, 0.06923076923076923),
        (49, 0.09692307692307693),
        (50, 0.1),
        (59, 0.1),
    ];
    let s = EpsilonSchedule { warmup_epochs: 1, shape: RampShape::Smooth, ..EpsilonSchedule::linear(0.0, 0.1, 4) };
    for (step, v) in want {
        let got = s.at(step / 10, (step % 10) as f64 / 10.0);
        assert!((got - v).abs() < 1e-12, "step {step}: {got} vs {v}");
    }
    // Linear with warm-up: 0 for two epochs, then a straight line.
    let l = EpsilonSchedule { warmup_epochs: 2, ..EpsilonSchedule::linear(0.0, 0.2, 4) };
    assert_eq!(l.at(1, 0.9), 0.0);
    assert!((l.at(3, 0.0) - 0.05).abs() < 1e-12);
    assert!((l.at(4, 0.5) - 0.125).abs() < 1e-12);
    assert_eq!(l.at(6, 0.0), 0.2);
    assert_eq!(l.progress(0.05), 0.25);
    // κ 1 → 0.5 and β 1 → 0 with epsilon's progress.
    let kappa = Mix { start: 1.0, end: 0.5 };
    assert_eq!(kappa.at(0.0), 1.0);
    assert_eq!(kappa.at(0.5), 0.75);
    assert_eq!(kappa.at(1.0), 0.5);
    assert_eq!(Mix { start: 1.0, end: 0.0 }.at(0.25), 0.75);
    assert_eq!(intensity(0.5, 0.2), 0.4);
    assert_eq!(intensity(0.5, 1.0), 0.0);
}

#[test]
fn warmup_regularizer_by_hand() {
    // One ReLU layer, one example, four units: intervals [l, u] =
    // [1, 3] (active, c = 2), [-4, -2] (inactive, c = -3), [-1, 1] (c = 0), [2, 4] (active, c = 3).
    let l = Tensor::new(&[[1.0f64, -4.0, -1.0, 2.0]], &Device::Cpu).unwrap();
    let u = Tensor::new(&[[3.0f64, -2.0, 1.0, 4.0]], &Device::Cpu).unwrap();
    let layers = vec![LayerBounds { layer: 1, lower: l, upper: u }];
    let r0 = 0.25;
    let reg = warmup_terms(&layers, r0).unwrap().unwrap();
    // Mean radius 1: tightness [0.5 − 0.25]₊ / 0.5 = 0.5.
    assert!((reg.tightness - 0.5).abs() < 1e-12);
    // mean(c·1_A) = 5/4, −mean(c·1_I) = 3/4: ρ_m = 5/3 → 3/5. c̄ = 0.5: Σ_A (c−c̄)² = 2.25 + 6.25 =
    // 8.5, Σ_I = 12.25: ρ_v = 8.5/12.25 ≈ 0.694. Terms: [0.5 − 0.6]₊ = 0, [0.5 − 0.694]₊ = 0.
    assert!(reg.balance.abs() < 1e-12);
    let v = reg.value.to_scalar::<f64>().unwrap();
    assert!((v - 0.5).abs() < 1e-12, "{v}");
    // Unbalanced: every unit active → ρ not finite → no balance term; τ is the paper's 0.5.
    let l = Tensor::new(&[[1.0f64, 2.0]], &Device::Cpu).unwrap();
    let u = Tensor::new(&[[3.0f64, 4.0]], &Device::Cpu).unwrap();
    let reg = warmup_terms(&[LayerBounds { layer: 1, lower: l, upper: u }], 1.0).unwrap().unwrap();
    assert_eq!(reg.balance, 0.0);
    assert!((reg.tightness - (TAU - 1.0f64).max(0.0) / TAU).abs() < 1e-12);
}

#[test]
fn ibp_init_draws_the_papers_spread_and_keeps_the_last_layer() {
    let sp = NetworkSpec::sequential(
        "wide",
        &[1, 28, 28],
        vec![conv(1, 64, 3, 1, 1), relu(), flatten(), linear(64 * 28 * 28, 200), relu(), linear(200, 10)],
    );
    let net = Network::init(&sp, 1, DType::F32, &Device::Cpu).unwrap();
    let before = net.state_dict();
    let changed = ibp_init(&net, 1).unwrap();
    assert_eq!(changed, vec!["0.weight".to_string(), "3.weight".to_string()]);
    for (name, fan_in) in [("0.weight", 9.0f64), ("3.weight", 64.0 * 784.0)] {
        let w = net.state_dict().into_iter().find(|(n, _)| n == name).unwrap().1;
        let v = w.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        let want = (2.0 * std::f64::consts::PI).sqrt() / fan_in;
        assert!((std / want - 1.0).abs() < 0.05 * (1.0 + 30.0 / n.sqrt()), "{name}: std {std} vs {want}");
    }
    for (n, t) in &before {
        if n.starts_with("5.") || n.ends_with("bias") {
            let now = net.state_dict().into_iter().find(|(m, _)| m == n).unwrap().1;
            assert_eq!((t - now).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
        }
    }
}

#[test]
fn bad_settings_are_refused() {
    let tr = blobs(10, 1);
    let te = blobs(4, 2);
    let net = Network::init(&spec(), 1, DType::F32, &Device::Cpu).unwrap();
    let d = tmp("bad");
    let mut c = cfg(LossKind::Ibp, 1);
    c.proj = Some(5);
    let e = train(&net, &tr, &te, &c, &d, false).unwrap_err().to_string();
    assert!(e.contains("--proj"), "{e}");
    let mut c = cfg(LossKind::Robust, 1);
    c.recipe.warmup_reg = Some(0.5);
    let e = train(&net, &tr, &te, &c, &d, false).unwrap_err().to_string();
    assert!(e.contains("--warmup-reg"), "{e}");
    let mut c = cfg(LossKind::MtlIbp, 1);
    c.recipe.alpha = 1.5;
    let e = train(&net, &tr, &te, &c, &d, false).unwrap_err().to_string();
    assert!(e.contains("--mtl-alpha"), "{e}");
    let mut c = cfg(LossKind::Sabr, 1);
    c.recipe.sabr_lambda = 0.0;
    let e = train(&net, &tr, &te, &c, &d, false).unwrap_err().to_string();
    assert!(e.contains("--sabr-lambda"), "{e}");
    let mut c = cfg(LossKind::CrownIbp, 1);
    c.norm = Norm::L2;
    c.bounded_input = false;
    let e = train(&net, &tr, &te, &c, &d, false).unwrap_err().to_string();
    assert!(e.contains("--norm linf"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn cnn7_has_the_papers_widths_and_trains_its_batchnorm_on_batch_statistics() {
    let sp = nets::zoo::by_name("cnn7").unwrap();
    let convs: Vec<(usize, usize)> = sp
        .layers
        .iter()
        .filter_map(|l| match l {
            LayerSpec::Conv2d { out_channels, stride, .. } => Some((*out_channels, *stride)),
            _ => None,
        })
        .collect();
    assert_eq!(convs, vec![(64, 1), (64, 1), (128, 2), (128, 1), (128, 1)]);
    let linears: Vec<(usize, usize)> = sp
        .layers
        .iter()
        .filter_map(|l| match l {
            LayerSpec::Linear { in_features, out_features, .. } => Some((*in_features, *out_features)),
            _ => None,
        })
        .collect();
    assert_eq!(linears, vec![(128 * 14 * 14, 512), (512, 10)]);
    let bns = sp.layers.iter().filter(|l| matches!(l, LayerSpec::BatchNorm2d { mode: BatchNormMode::BatchStats, .. }));
    assert_eq!(bns.count(), 5);
    let net = Network::init(&sp, 0, DType::F32, &Device::Cpu).unwrap();
    assert!(experiments::train::batchnorm::trains_batch_stats(&net));
    let x = Tensor::rand(0f32, 1f32, (2, 1, 28, 28), &Device::Cpu).unwrap();
    assert_eq!(net.forward(&x).unwrap().dims(), &[2, 10]);
    let eval = experiments::train::batchnorm::eval_copy(&net).unwrap().unwrap();
    assert!(!experiments::train::batchnorm::trains_batch_stats(&eval));
    assert_eq!(nets::zoo::by_name("cifar-cnn7").unwrap().input_shape, vec![3, 32, 32]);
}

/// Checks [`evaluate_exact_or_ibp`] against the two bounds' verdicts example by example at
/// `eps`; returns how many examples only IBP and only the dual certify.
fn union_check(net: &Network, te: &experiments::datasets::Dataset, eps: f64) -> (usize, usize) {
    use dual_core::{certified_from_bounds, robust_bounds};
    use experiments::certify::{evaluate, evaluate_exact_or_ibp, input_set, EvalSettings};
    let s = EvalSettings { eps, norm: Norm::Linf, bounded_input: true, pgd: false, memory_budget: None, proj: None };
    let (x, y) = te.batch(0, te.len(), &Device::Cpu).unwrap();
    let dual = net.dual(&x, input_set(&x, eps, Norm::Linf, true).unwrap(), &Default::default()).unwrap();
    let by_dual = certified_from_bounds(&robust_bounds(&dual, &y).unwrap(), &y).unwrap();
    let lower = net
        .margin_bounds(&x, input_set(&x, eps, Norm::Linf, true).unwrap(), &y, Method::Ibp, &Default::default())
        .unwrap();
    let by_ibp = certified_from_bounds(&lower.neg().unwrap(), &y).unwrap();
    let count = |f: &dyn Fn(bool, bool) -> bool| by_dual.iter().zip(&by_ibp).filter(|(a, b)| f(**a, **b)).count();
    let union = evaluate_exact_or_ibp(net, te, &s, 7, None, DType::F32).unwrap();
    let exact = evaluate(net, te, &s, 7, None, DType::F32).unwrap();
    assert_eq!(union.robust_errors, count(&|a, b| !a && !b), "eps {eps}");
    assert_eq!(exact.robust_errors, count(&|a, _| !a), "eps {eps}");
    assert_eq!(union.clean_errors, exact.clean_errors);
    (count(&|a, b| !a && b), count(&|a, b| a && !b))
}

/// The per-epoch evaluation of the interval losses counts an example as certified when the exact
/// dual or IBP certifies it: the union, example by example, of the two bounds' verdicts.
#[test]
fn exact_or_ibp_evaluation_is_the_union_of_both_bounds_verdicts() {
    // A partly trained net, where the dual certifies examples IBP does not.
    let (tr, te) = (blobs(60, 5), blobs(40, 6));
    let net = Network::init(&spec(), 9, DType::F32, &Device::Cpu).unwrap();
    let d = tmp("union");
    train(&net, &tr, &te, &cfg(LossKind::Ibp, 1), &d, false).unwrap();
    let _ = std::fs::remove_dir_all(&d);
    let only_dual: usize = [0.02, 0.05, 0.1].iter().map(|&e| union_check(&net, &te, e).1).sum();
    assert!(only_dual > 0, "the dual should certify some examples IBP does not");

    // One pixel x, h = ReLU(x − 0.5), logits (h + 0.1, 0): at x = 0.5 with eps 0.5, IBP proves
    // h ≥ 0 (margin ≥ 0.1) while the dual's lower line h ≥ z/2 gives margin ≥ −0.15.
    let one = NetworkSpec::sequential("one", &[1], vec![linear(1, 1), relu(), linear(1, 2)]);
    let net = Network::init(&one, 0, DType::F32, &Device::Cpu).unwrap();
    let values: [&[f32]; 4] = [&[1.0], &[-0.5], &[1.0, 0.0], &[0.1, 0.0]];
    for ((name, v), w) in net.params().iter().zip(values) {
        let t = Tensor::from_slice(w, v.as_tensor().shape(), &Device::Cpu).unwrap();
        v.set(&t).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let te =
        experiments::datasets::Dataset { images: vec![0.5], labels: vec![0], n: 1, channels: 1, height: 1, width: 1 };
    assert_eq!(union_check(&net, &te, 0.5), (1, 0));

    let proj = experiments::certify::EvalSettings {
        eps: 0.1,
        norm: Norm::Linf,
        bounded_input: true,
        pgd: false,
        memory_budget: None,
        proj: Some(experiments::certify::Projection { k: 5, seed: 0, inflate_delta: None }),
    };
    let err = experiments::certify::evaluate_exact_or_ibp(&net, &te, &proj, 7, None, DType::F32).unwrap_err();
    assert!(format!("{err:#}").contains("exact bound"), "{err:#}");
}
