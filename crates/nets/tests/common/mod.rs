//! Paths and loaders shared by the conformance tests (also used by `crates/projections/tests`).
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};

// Large tensors are allocated and freed all the time: the system allocator page-faults on each.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use nets::{zoo, Network};
use std::path::{Path, PathBuf};

/// The Fashion-MNIST reference folder (`reference/fashion_mnist_eps0.1` of the shared data).
/// Fails the test when it is missing; `None` only when the run opted out with
/// `CONVEX_SKIP_SHARED=1` (the skip is printed; see the `shared-data` crate).
pub fn fashion_ref() -> Option<PathBuf> {
    shared_data::shared_path("reference/fashion_mnist_eps0.1")
}

pub fn npy(dir: &Path, name: &str) -> Tensor {
    Tensor::read_npy(dir.join(name)).unwrap_or_else(|e| panic!("reading {name}: {e}"))
}

/// The paper's Fashion-MNIST model from the reference weights (.npy, PyTorch layout).
pub fn fashion_model(dir: &Path, dtype: DType) -> Network {
    let w = dir.join("weights");
    let names = ["0.weight", "0.bias", "2.weight", "2.bias", "5.weight", "5.bias", "7.weight", "7.bias"];
    let sd: Vec<(String, Tensor)> = names.iter().map(|n| (n.to_string(), npy(&w, &format!("{n}.npy")))).collect();
    Network::from_state_dict(&zoo::by_name("mnist-small").unwrap(), &sd, dtype, &Device::Cpu).unwrap()
}

pub fn labels(dir: &Path, name: &str) -> Vec<u32> {
    npy(dir, name).to_dtype(DType::I64).unwrap().to_vec1::<i64>().unwrap().iter().map(|&v| v as u32).collect()
}

/// The values of a tensor as f64.
pub fn flat(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

/// Largest absolute difference.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (flat(a), flat(b));
    assert_eq!(a.len(), b.len(), "sizes differ");
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// Mean absolute difference.
pub fn mean_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (flat(a), flat(b));
    assert_eq!(a.len(), b.len(), "sizes differ");
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f64>() / a.len() as f64
}
