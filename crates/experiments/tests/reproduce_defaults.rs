//! The full runs' defaults are the papers' (shared/PAPERS.md).

use experiments::certify::Norm;
use experiments::reproduce::registry;
use experiments::train::{LossKind, OptimizerConfig};

#[test]
fn paper_settings_are_the_defaults() {
    let r = registry();
    let get = |n: &str| r.iter().find(|e| e.name == n).unwrap_or_else(|| panic!("{n} missing")).clone();
    let f = get("fashion-mnist");
    assert_eq!((f.train.epochs, f.train.batch_size, f.eps), (20, 50, 0.1));
    assert_eq!(f.train.optimizer, OptimizerConfig::adam(1e-3));
    assert!(!f.train.bounded_input && f.train.loss == LossKind::Robust && f.arch == "mnist-small");
    assert_eq!(f.paper_figures.robust, Some(0.3453));
    let m = get("mnist");
    assert_eq!((m.train.epochs, m.train.eps.start, m.train.eps.end, m.train.eps.ramp_epochs), (100, 0.05, 0.1, 50));
    let s = get("svhn");
    assert_eq!((s.train.batch_size, s.train.eps.start, s.eps), (20, 0.001, 0.01));
    let l = get("mnist-large");
    assert_eq!((l.train.epochs, l.train.eps.start, l.train.eps.ramp_epochs), (60, 0.01, 20));
    assert_eq!((l.train.lr.after, l.train.lr.every, l.train.lr.gamma), (20, 10, 0.5));
    assert!(l.train.bounded_input);
    assert_eq!(get("mnist-l2").train.norm, Norm::L2);
    assert_eq!(get("mnist-l2").eps, 1.58);
    let c = get("cifar-resnet");
    assert_eq!(c.train.optimizer, OptimizerConfig::sgd(0.05, 0.9, 5e-4));
    assert_eq!((c.train.clip_grad_norm, c.train.eps.start, c.eps), (Some(1.0), 0.001, 0.0348));
    assert!(!c.train.bounded_input);
    assert_eq!(get("har").eps, 0.05);
}

#[test]
fn paper2_trains_with_50_projections_and_cifar_augments() {
    let r = registry();
    for e in r.iter().filter(|e| e.paper == 2) {
        assert_eq!(e.train.proj, Some(50), "{}", e.name);
    }
    for e in r.iter().filter(|e| e.paper == 1) {
        assert_eq!(e.train.proj, None, "{}: paper 1 trains with the exact bound", e.name);
    }
    let c = r.iter().find(|e| e.name == "cifar-small").unwrap();
    let a = c.train.augment.as_ref().expect("CIFAR augments");
    assert!(a.flip && a.crop_padding == 4);
    assert!(r.iter().filter(|e| e.dataset != "cifar10").all(|e| e.train.augment.is_none()));
}
