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

/// The reference tolerance: 1e-8 in f64, 1e-4 in f32.
pub fn tol(dtype: DType) -> f64 {
    if dtype == DType::F64 {
        1e-8
    } else {
        1e-4
    }
}

/// The suffix of the reference files in `dtype` (`_fp64` for f64, none for f32).
pub fn suffix(dtype: DType) -> &'static str {
    if dtype == DType::F64 {
        "_fp64"
    } else {
        ""
    }
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

/// Reads an `.npy` file of f32 or f64 in C or Fortran order (Candle's reader refuses the latter).
pub fn npy_any(path: &Path) -> Tensor {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{} is not an .npy file", path.display());
    let (hlen, start) = if bytes[6] == 1 {
        (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)
    } else {
        (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
    };
    let header = std::str::from_utf8(&bytes[start..start + hlen]).expect("npy header is text");
    let data = &bytes[start + hlen..];
    let fortran = header.contains("'fortran_order': True");
    let shape_txt = header.split("'shape': (").nth(1).and_then(|s| s.split(')').next()).expect("npy shape");
    let shape: Vec<usize> =
        shape_txt.split(',').filter(|s| !s.trim().is_empty()).map(|s| s.trim().parse().unwrap()).collect();
    let n: usize = shape.iter().product();
    let vals: Vec<f64> = if header.contains("'<f8'") {
        data[..n * 8].chunks(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect()
    } else if header.contains("'<f4'") {
        data[..n * 4].chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect()
    } else {
        panic!("{}: unsupported dtype in header {header}", path.display())
    };
    let dtype = if header.contains("'<f8'") { DType::F64 } else { DType::F32 };
    let t = if fortran {
        let rev: Vec<usize> = shape.iter().rev().copied().collect();
        let t = Tensor::from_vec(vals, rev, &Device::Cpu).unwrap();
        let perm: Vec<usize> = (0..shape.len()).rev().collect();
        t.permute(perm).unwrap().contiguous().unwrap()
    } else {
        Tensor::from_vec(vals, shape, &Device::Cpu).unwrap()
    };
    t.to_dtype(dtype).unwrap()
}
