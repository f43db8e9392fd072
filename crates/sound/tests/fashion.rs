//! The check on the paper's Fashion-MNIST model (the first 10 reference images, eps 0.1): its margins are
//! the exact dual's (PyTorch package, f64) to within the rounding charges
//! (the outward rounding of the input set, one f32 unit per pixel, moves them by about 5e-6),
//! the verdicts are the same; covering the deployed f32 network costs at most 0.1 per margin.

use candle_core::{DType, Device, Tensor};
use nets::{zoo, Network};
use sound::{DataRounding, InputBox, SoundNetwork, SoundOptions};
use std::path::Path;

fn npy(dir: &Path, name: &str) -> Tensor {
    Tensor::read_npy(dir.join(name)).unwrap_or_else(|e| panic!("reading {name}: {e}"))
}

fn model(dir: &Path) -> Network {
    let w = dir.join("weights");
    let names = ["0.weight", "0.bias", "2.weight", "2.bias", "5.weight", "5.bias", "7.weight", "7.bias"];
    let sd: Vec<(String, Tensor)> = names.iter().map(|n| (n.to_string(), npy(&w, &format!("{n}.npy")))).collect();
    Network::from_state_dict(&zoo::by_name("mnist-small").unwrap(), &sd, DType::F32, &Device::Cpu).unwrap()
}

fn check(bounded: bool, opts: SoundOptions, tol: f64) {
    let Some(dir) = shared_data::shared_path("reference/fashion_mnist_eps0.1") else { return };
    let net = model(&dir);
    let x = npy(&dir, "fashion_X20.npy").narrow(0, 0, 10).unwrap();
    let y: Vec<u32> = npy(&dir, "fashion_y20.npy").to_dtype(DType::I64).unwrap().to_vec1::<i64>().unwrap()[..10]
        .iter()
        .map(|&v| v as u32)
        .collect();
    let b = bounded as u8;
    // f_j = upper bound of z_j − z_y, so −f is the dual's lower bound of the margin z_y − z_j.
    let f = npy(&dir, &format!("f_bounded{b}_fp64.npy")).to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
    let sn = SoundNetwork::new(&net, opts).unwrap();
    let clip = bounded.then_some((0.0, 1.0));
    let bx = InputBox::linf(&x, 0.1, clip, DataRounding::F32Ops(1)).unwrap();
    let m = sn.margins(&bx, &y).unwrap().to_vec2::<f64>().unwrap();
    let mut worst: f64 = 0.0;
    for (i, (mi, fi)) in m.iter().zip(&f).enumerate() {
        let dual_cert = fi.iter().enumerate().all(|(j, v)| j == y[i] as usize || *v < 0.0);
        let sound_cert = mi.iter().enumerate().all(|(j, v)| j == y[i] as usize || *v > 0.0);
        if opts.deployed_f32 {
            assert!(dual_cert || !sound_cert, "image {i}: certified only with the deployed network's rounding");
        } else {
            assert_eq!(dual_cert, sound_cert, "image {i}: verdicts differ ({mi:?} vs {fi:?})");
        }
        for (j, (a, d)) in mi.iter().zip(fi).enumerate() {
            if j != y[i] as usize {
                worst = worst.max((a + d).abs());
                // The deployed network's rounding only lowers the bound.
                assert!(*a <= -d + 1e-5, "image {i} class {j}: sound {a} above the dual's {}", -d);
            }
        }
    }
    println!("bounded {bounded}, {opts:?}: largest |sound − dual| = {worst:e}");
    assert!(worst < tol, "the check's margins differ from the dual's by {worst:e}");
}

#[test]
fn real_network_ball() {
    check(false, SoundOptions::default(), 1e-5);
}

#[test]
fn real_network_clipped_ball() {
    check(true, SoundOptions::default(), 1e-5);
}

#[test]
fn deployed_f32_clipped_ball() {
    check(true, SoundOptions { deployed_f32: true }, 0.1);
}

/// `margins_each` on a batch gives every example the margins of a batch of one (the certify
/// program's mode).
#[test]
fn each_example_as_alone() {
    let Some(dir) = shared_data::shared_path("reference/fashion_mnist_eps0.1") else { return };
    let net = model(&dir);
    let x = npy(&dir, "fashion_X20.npy").narrow(0, 0, 6).unwrap();
    let y: Vec<u32> = npy(&dir, "fashion_y20.npy").to_dtype(DType::I64).unwrap().to_vec1::<i64>().unwrap()[..6]
        .iter()
        .map(|&v| v as u32)
        .collect();
    let sn = SoundNetwork::new(&net, SoundOptions::default()).unwrap();
    let bx = InputBox::linf(&x, 0.1, Some((0.0, 1.0)), DataRounding::F32Ops(3)).unwrap();
    let batch = sn.margins_each(&bx, &y).unwrap().to_vec2::<f64>().unwrap();
    for (i, row) in batch.iter().enumerate() {
        let one = InputBox::linf(&x.narrow(0, i, 1).unwrap(), 0.1, Some((0.0, 1.0)), DataRounding::F32Ops(3)).unwrap();
        let alone = sn.margins(&one, &y[i..i + 1]).unwrap().to_vec2::<f64>().unwrap();
        for (a, b) in row.iter().zip(&alone[0]) {
            assert!((a - b).abs() <= 1e-9 * (1.0 + b.abs()), "image {i}: {a} in the batch, {b} alone");
        }
    }
    assert_eq!(
        sn.certify_each(&bx, &y).unwrap(),
        (0..6).map(|i| batch[i].iter().enumerate().all(|(j, v)| j == y[i] as usize || *v > 0.0)).collect::<Vec<_>>()
    );
}
