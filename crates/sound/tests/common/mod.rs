//! Test helpers: small MLPs as `nets::Network`s and their exact forward pass in rationals.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use dual_core::{certified_from_bounds, robust_bounds, DualOptions};
use dual_layers::{InfBall, InfBallBounded};
use nets::spec::{build, NetworkSpec};
use nets::Network;
use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::{FromPrimitive, Signed, Zero};

/// An exact rational.
pub type Q = BigRational;

/// The exact value of a float.
pub fn q(v: f64) -> Q {
    BigRational::from_float(v).expect("finite")
}

/// `n / d` exactly.
pub fn frac(n: i64, d: i64) -> Q {
    BigRational::new(BigInt::from(n), BigInt::from(d))
}

/// A ReLU MLP: `(W [out][in], b [out])` per affine layer, ReLU between them.
#[derive(Clone, Debug)]
pub struct Mlp {
    pub layers: Vec<(Vec<Vec<f64>>, Vec<f64>)>,
}

impl Mlp {
    /// The network in `dtype` (the weights converted; f32 weights must be exact in f32).
    pub fn network(&self, dtype: DType) -> Network {
        let inputs = self.layers[0].0[0].len();
        let mut specs = Vec::new();
        let mut tensors = Vec::new();
        for (k, (w, b)) in self.layers.iter().enumerate() {
            if k > 0 {
                specs.push(build::relu());
            }
            let i = specs.len();
            specs.push(build::linear(w[0].len(), w.len()));
            let flat: Vec<f64> = w.iter().flatten().copied().collect();
            tensors.push((format!("{i}.weight"), Tensor::from_vec(flat, (w.len(), w[0].len()), &Device::Cpu).unwrap()));
            tensors.push((format!("{i}.bias"), Tensor::from_vec(b.clone(), b.len(), &Device::Cpu).unwrap()));
        }
        let spec = NetworkSpec::sequential("mlp", &[inputs], specs);
        Network::from_state_dict(&spec, &tensors, dtype, &Device::Cpu).unwrap()
    }

    /// The exact output at `x`.
    pub fn exact(&self, x: &[Q]) -> Vec<Q> {
        let mut z: Vec<Q> = x.to_vec();
        for (k, (w, b)) in self.layers.iter().enumerate() {
            if k > 0 {
                z = z.into_iter().map(|v| if v.is_negative() { Q::zero() } else { v }).collect();
            }
            z = w
                .iter()
                .zip(b)
                .map(|(row, bi)| row.iter().zip(&z).fold(q(*bi), |acc, (wi, zi)| acc + q(*wi) * zi))
                .collect();
        }
        z
    }
}

/// Does the plain path (the exact dual in `dtype`) certify label `y` at `x` for the l_inf ball
/// (intersected with [0, 1] when `bounded`)?
pub fn plain_certifies(net: &Network, x: &[f64], eps: f64, y: u32, bounded: bool, dtype: DType) -> bool {
    let xt = Tensor::from_vec(x.to_vec(), (1, x.len()), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
    let set: Box<dyn dual_core::DualSource> = if bounded {
        Box::new(InfBallBounded::new(&xt, eps, 0.0, 1.0).unwrap())
    } else {
        Box::new(InfBall::new(&xt, eps).unwrap())
    };
    let dual = net.dual(&xt, set, &DualOptions::default()).unwrap();
    let f = robust_bounds(&dual, &[y]).unwrap();
    certified_from_bounds(&f, &[y]).unwrap()[0]
}

/// `2^k` as a float.
pub fn pow2(k: i32) -> f64 {
    f64::from_i32(2).unwrap().powi(k)
}
