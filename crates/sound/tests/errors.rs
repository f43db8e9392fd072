//! Bad input and layers the check does not cover give errors naming the problem.

use candle_core::{DType, Device, Tensor};
use nets::spec::{build, LayerSpec, NetworkSpec};
use nets::Network;
use sound::{DataRounding, InputBox, SoundNetwork, SoundOptions};

fn tiny(layers: Vec<LayerSpec>, input: &[usize]) -> Network {
    Network::init(&NetworkSpec::sequential("t", input, layers), 1, DType::F32, &Device::Cpu).unwrap()
}

#[test]
fn batch_statistics_batchnorm_is_refused_by_name() {
    let net = tiny(
        vec![
            build::conv(1, 2, 3, 1, 1),
            LayerSpec::BatchNorm2d { num_features: 2, eps: 1e-5, mode: nets::spec::BatchNormMode::BatchStats },
            build::relu(),
            build::flatten(),
            build::linear(2 * 4 * 4, 2),
        ],
        &[1, 4, 4],
    );
    let e = SoundNetwork::new(&net, SoundOptions::default()).err().expect("refused").to_string();
    assert!(e.contains("layer 1") && e.contains("batch statistics"), "{e}");
}

#[test]
fn bad_boxes_and_labels() {
    let x = Tensor::from_vec(vec![0.5f32, f32::NAN], (1, 2), &Device::Cpu).unwrap();
    let e = InputBox::linf(&x, 0.1, None, DataRounding::Exact).unwrap_err().to_string();
    assert!(e.contains("non-finite"), "{e}");
    let x = Tensor::from_vec(vec![0.5f32, 0.5], (1, 2), &Device::Cpu).unwrap();
    assert!(InputBox::linf(&x, -1.0, None, DataRounding::Exact).unwrap_err().to_string().contains("epsilon"));
    let lo = Tensor::from_vec(vec![1.0f64, 0.0], (1, 2), &Device::Cpu).unwrap();
    let hi = Tensor::from_vec(vec![0.0f64, 1.0], (1, 2), &Device::Cpu).unwrap();
    assert!(InputBox::new(&lo, &hi).unwrap_err().to_string().contains("lo > hi"));

    let net = tiny(vec![build::linear(2, 3), build::relu(), build::linear(3, 2)], &[2]);
    let sn = SoundNetwork::new(&net, SoundOptions::default()).unwrap();
    let bx = InputBox::linf(&x, 0.1, None, DataRounding::Exact).unwrap();
    assert!(sn.certify(&bx, &[5]).unwrap_err().to_string().contains("label 5"));
    let wrong =
        InputBox::linf(&Tensor::zeros((1, 3), DType::F32, &Device::Cpu).unwrap(), 0.1, None, DataRounding::Exact)
            .unwrap();
    assert!(sn.certify(&wrong, &[0]).unwrap_err().to_string().contains("input box of shape"));
}
