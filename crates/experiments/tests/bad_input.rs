//! Bad input gives a clear error naming the problem, never a panic; and the certification
//! program end to end on a small synthetic data set.

use candle_core::{DType, Device, Tensor};
use dual_core::{DualError, DualOptions};
use dual_layers::{Epsilon, InfBall, InfBallBounded, L2Ball};
use experiments::certify::{certify, CertifyConfig, Norm};
use nets::{spec::build::*, zoo, LayerSpec, NetError, Network, NetworkSpec};
use std::path::PathBuf;

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("convex-bad-input-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn small_net() -> Network {
    let spec = NetworkSpec::sequential("t", &[1, 6, 6], vec![conv(1, 2, 3, 1, 1), relu(), flatten(), linear(72, 10)]);
    Network::init(&spec, 1, DType::F32, &Device::Cpu).unwrap()
}

fn x(b: usize) -> Tensor {
    Tensor::rand(0f32, 1f32, (b, 1, 6, 6), &Device::Cpu).unwrap()
}

#[test]
fn negative_or_nan_epsilon_is_an_error() {
    let x = x(2);
    for e in [-0.1, f64::NAN, f64::INFINITY] {
        let err = InfBall::new(&x, e).err().expect("must fail");
        assert!(matches!(err, DualError::InvalidInput(_)) && err.to_string().contains("epsilon"), "{err}");
        assert!(L2Ball::new(&x, e).is_err());
        assert!(InfBallBounded::new(&x, e, 0.0, 1.0).is_err());
    }
    let bad = Tensor::new(&[0.1f32, -0.2], &Device::Cpu).unwrap();
    let err = InfBall::new(&x, Epsilon::Tensor(bad)).err().unwrap();
    assert!(err.to_string().contains("non-negative"), "{err}");
    let wrong = Tensor::new(&[0.1f32, 0.2, 0.3], &Device::Cpu).unwrap();
    let err = InfBall::new(&x, Epsilon::Tensor(wrong)).err().unwrap();
    assert!(matches!(err, DualError::Shape(_)), "{err}");
}

#[test]
fn nan_in_the_input_is_an_error() {
    let mut v = vec![0.5f32; 2 * 36];
    v[7] = f32::NAN;
    let x = Tensor::from_vec(v, (2, 1, 6, 6), &Device::Cpu).unwrap();
    let err = InfBall::new(&x, 0.1).err().expect("must fail");
    assert!(err.to_string().contains("NaN"), "{err}");
    let err = InfBallBounded::new(&x, 0.1, 0.0, 1.0).err().expect("must fail");
    assert!(err.to_string().contains("NaN"), "{err}");
}

#[test]
fn input_outside_the_box_is_an_error() {
    let x = (x(1) + 2.0).unwrap();
    let err = InfBallBounded::new(&x, 0.1, 0.0, 1.0).err().unwrap();
    assert!(err.to_string().contains("outside the box"), "{err}");
}

#[test]
fn wrong_input_shape_is_an_error() {
    let net = small_net();
    let x = Tensor::zeros((2, 1, 5, 6), DType::F32, &Device::Cpu).unwrap();
    let err = net.dual(&x, Box::new(InfBall::new(&x, 0.1).unwrap()), &DualOptions::default()).err().unwrap();
    assert!(err.to_string().contains("expects [B, 1, 6, 6]"), "{err}");
}

#[test]
fn missing_or_misshaped_tensor_is_named() {
    let net = small_net();
    let mut sd = net.state_dict();
    sd.retain(|(n, _)| n != "3.bias");
    let err = Network::from_state_dict(&net.spec(), &sd, DType::F32, &Device::Cpu).err().unwrap();
    assert!(matches!(&err, NetError::MissingTensor { name, .. } if name == "3.bias"), "{err}");
    let mut sd = net.state_dict();
    sd[0].1 = Tensor::zeros((2, 1, 4, 4), DType::F32, &Device::Cpu).unwrap();
    let err = Network::from_state_dict(&net.spec(), &sd, DType::F32, &Device::Cpu).err().unwrap();
    assert!(matches!(&err, NetError::WrongShape { name, .. } if name == "0.weight"), "{err}");
    assert!(err.to_string().contains("[2, 1, 4, 4]") && err.to_string().contains("[2, 1, 3, 3]"), "{err}");
    // A checkpoint for another architecture.
    let err =
        Network::from_state_dict(&zoo::by_name("mnist-small").unwrap(), &net.state_dict(), DType::F32, &Device::Cpu)
            .err()
            .unwrap();
    assert!(err.to_string().contains("0.weight"), "{err}");
}

#[test]
fn unsupported_layers_are_errors() {
    // A layer kind the description cannot build.
    let spec = NetworkSpec::sequential(
        "t",
        &[4],
        vec![LayerSpec::Custom { kind: "MaxPool".into(), config: serde_json::json!({}) }, linear(4, 2)],
    );
    let err = Network::init(&spec, 0, DType::F32, &Device::Cpu).err().unwrap();
    assert!(err.to_string().contains("MaxPool"), "{err}");
    // An activation inside a Dense layer has no affine dual.
    let spec = NetworkSpec::dense_sequential("t", &[4], vec![dense(vec![Some(relu())]), linear(4, 2)]);
    let net = Network::init(&spec, 0, DType::F32, &Device::Cpu).unwrap();
    let x = Tensor::zeros((1, 4), DType::F32, &Device::Cpu).unwrap();
    let err = net.dual(&x, Box::new(InfBall::new(&x, 0.1).unwrap()), &DualOptions::default()).err().unwrap();
    assert!(err.to_string().contains("unsupported") && err.to_string().contains("ReLU"), "{err}");
    // Skip connections in a plain Sequential network.
    let spec = NetworkSpec::sequential("t", &[4], vec![linear(4, 4), dense(vec![Some(linear(4, 2)), None])]);
    assert!(Network::init(&spec, 0, DType::F32, &Device::Cpu).is_err());
}

#[test]
fn corrupt_model_files_are_errors() {
    let d = tmp("models");
    let net = small_net();
    let path = d.join("m.safetensors");
    nets::io::save_safetensors(&net, &path).unwrap();
    let back = nets::io::load_model(&path, None, DType::F32, &Device::Cpu).unwrap();
    let xx = x(3);
    let diff = (net.forward(&xx).unwrap() - back.forward(&xx).unwrap()).unwrap().abs().unwrap().max_all().unwrap();
    assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "save/load round trip changes the model");
    assert_eq!(back.spec(), net.spec());
    let bytes = std::fs::read(&path).unwrap();
    for cut in [0, 4, 8, 20, bytes.len() / 2, bytes.len() - 1] {
        let p = d.join(format!("cut{cut}.safetensors"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        assert!(nets::io::load_model(&p, None, DType::F32, &Device::Cpu).is_err(), "truncated at {cut} loaded");
    }
    let p = d.join("trunc.pth");
    // The paper's checkpoint (shared data: the test fails without it unless CONVEX_SKIP_SHARED=1).
    if let Some(pth) = shared_data::shared_path("models/fashion_mnist_small_eps0.1.pth") {
        let b = std::fs::read(&pth).unwrap();
        std::fs::write(&p, &b[..b.len() / 3]).unwrap();
        let err = nets::io::load_model(&p, Some("mnist-small"), DType::F32, &Device::Cpu).err().unwrap();
        assert!(err.to_string().to_lowercase().contains("truncated"), "{err}");
        // The right file without an architecture.
        let err = nets::io::load_model(&pth, None, DType::F32, &Device::Cpu).err().unwrap();
        assert!(err.to_string().contains("--arch"), "{err}");
    }
    std::fs::remove_dir_all(&d).ok();
}

fn write_idx(dir: &std::path::Path, n: usize, seed: u8) {
    let mut img = vec![0, 0, 8, 3];
    for d in [n as u32, 28, 28] {
        img.extend_from_slice(&d.to_be_bytes());
    }
    let mut s = seed as u32;
    for _ in 0..n * 784 {
        s = s.wrapping_mul(1103515245).wrapping_add(12345);
        img.push((s >> 16) as u8);
    }
    let mut lab = vec![0, 0, 8, 1];
    lab.extend_from_slice(&(n as u32).to_be_bytes());
    lab.extend((0..n).map(|i| (i % 10) as u8));
    std::fs::write(dir.join("t10k-images-idx3-ubyte"), img).unwrap();
    std::fs::write(dir.join("t10k-labels-idx1-ubyte"), lab).unwrap();
}

fn config(dir: &std::path::Path, model: PathBuf) -> CertifyConfig {
    CertifyConfig {
        model,
        arch: None,
        dataset: "mnist".into(),
        data_dir: dir.to_path_buf(),
        eps: 0.02,
        norm: Norm::Linf,
        bounded_input: true,
        limit: Some(12),
        batch_size: 5,
        pgd: true,
        json: Some(dir.join("out/results.json")),
        memory_budget: None,
        f64: false,
        device: "cpu".into(),
        proj: None,
        records: None,
    }
}

#[test]
fn certify_end_to_end_and_its_bad_settings() {
    let d = tmp("certify");
    write_idx(&d, 20, 3);
    let net = Network::init(&zoo::by_name("mnist-small").unwrap(), 7, DType::F32, &Device::Cpu).unwrap();
    let model = d.join("m.safetensors");
    nets::io::save_safetensors(&net, &model).unwrap();
    let cfg = config(&d, model.clone());
    let mut calls = 0;
    let r = certify(&cfg, |_, _, _| calls += 1).unwrap();
    assert_eq!(r.n, 12);
    assert_eq!(calls, 3);
    let pgd = r.pgd_error.unwrap();
    // Soundness: an example PGD breaks can never be certified.
    assert!(r.robust_error >= pgd && pgd >= 0.0 && r.robust_error <= 1.0);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("out/results.json")).unwrap()).unwrap();
    for k in ["n", "clean_error", "robust_error", "pgd_error", "seconds", "settings"] {
        assert!(json.get(k).is_some(), "JSON lacks {k}");
    }
    assert_eq!(json["settings"]["eps"], 0.02);
    // Bad settings.
    let mut c = config(&d, model.clone());
    c.eps = -1.0;
    assert!(certify(&c, |_, _, _| {}).unwrap_err().to_string().contains("--eps"));
    let mut c = config(&d, d.join("missing.safetensors"));
    c.json = None;
    assert!(certify(&c, |_, _, _| {}).unwrap_err().to_string().contains("does not exist"));
    let mut c = config(&d, model.clone());
    c.batch_size = 0;
    assert!(certify(&c, |_, _, _| {}).is_err());
    let mut c = config(&d, model.clone());
    c.dataset = "imagenet".into();
    assert!(format!("{:#}", certify(&c, |_, _, _| {}).unwrap_err()).contains("imagenet"));
    // An IDX file with a wrong magic number.
    let mut b = std::fs::read(d.join("t10k-images-idx3-ubyte")).unwrap();
    b[3] = 9;
    std::fs::write(d.join("t10k-images-idx3-ubyte"), b).unwrap();
    let err = format!("{:#}", certify(&config(&d, model), |_, _, _| {}).unwrap_err());
    assert!(err.contains("magic"), "{err}");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn certify_matches_the_reference_on_real_data() {
    let Some(model) = shared_data::shared_path("models/fashion_mnist_small_eps0.1.pth") else { return };
    let Some(data) = shared_data::fashion_mnist_dir() else { return };
    let Some(err_ref) = shared_data::shared_path("reference/fashion_mnist_eps0.1/robust_loss/err_bounded1.npy") else {
        return;
    };
    let cfg = CertifyConfig {
        model,
        arch: Some("mnist-small".into()),
        dataset: "fashion-mnist".into(),
        data_dir: data,
        eps: 0.1,
        norm: Norm::Linf,
        bounded_input: true,
        limit: Some(20),
        batch_size: 10,
        pgd: false,
        json: None,
        memory_budget: None,
        f64: false,
        device: "cpu".into(),
        proj: None,
        records: None,
    };
    let r = certify(&cfg, |_, _, _| {}).unwrap();
    let want = Tensor::read_npy(err_ref)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()[0];
    assert!((r.robust_error - want).abs() < 1e-9, "robust error {} vs reference {want}", r.robust_error);
}

#[test]
fn certify_names_a_wrong_input_shape_and_checks_the_json_path_first() {
    let d = tmp("shape");
    write_idx(&d, 12, 5);
    // A model for 6×6 images on 28×28 data: both shapes named before any forward pass.
    let model = d.join("small.safetensors");
    nets::io::save_safetensors(&small_net(), &model).unwrap();
    let mut c = config(&d, model.clone());
    c.json = None;
    let err = format!("{:#}", certify(&c, |_, _, _| {}).unwrap_err());
    assert!(err.contains("expects inputs of shape [1, 6, 6]") && err.contains("[1, 28, 28]"), "{err}");
    // A folder as the JSON path is refused by validate, before the model is even loaded.
    let mut c = config(&d, model);
    c.json = Some(d.clone());
    let err = format!("{:#}", c.validate().unwrap_err());
    assert!(err.contains("--json") && err.contains("is a folder"), "{err}");
    // A model file that is a folder or a device.
    for p in [d.clone(), PathBuf::from("/dev/null")] {
        let mut c = config(&d, p);
        c.json = None;
        let err = format!("{:#}", certify(&c, |_, _, _| {}).unwrap_err());
        assert!(err.contains("is a folder") || err.contains("not a regular file"), "{err}");
    }
    std::fs::remove_dir_all(&d).ok();
}
