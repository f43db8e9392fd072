//! IBP initialisation (Shi et al. 2021, Sec. 3.2): every weight matrix or kernel but the last
//! layer's is drawn from `N(0, σ²)` with `σ = √(2π) / n_in` (`n_in` its fan-in: input features,
//! or `c_in · k · k` for a convolution). Then `E Σ_j |w_ij| = n_in σ √(2/π) = 2`: an interval's
//! radius keeps its size through a linear layer and the ReLU after it (which halves it in
//! expectation), instead of growing with the width as under the default initialisation.
//! Biases and BatchNorm parameters keep their values.

use anyhow::{bail, Result};
use candle_core::Tensor;
use nets::Network;
use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, Normal};

/// Re-draws the weights of `net` as above, reproducibly from `seed`; returns the names changed.
pub fn ibp_init(net: &Network, seed: u64) -> Result<Vec<String>> {
    let weights: Vec<_> =
        net.params().into_iter().filter(|(n, v)| n.ends_with("weight") && v.as_tensor().rank() >= 2).collect();
    if weights.len() < 2 {
        bail!("IBP initialisation needs at least two weight layers (the last one keeps its values)");
    }
    let mut rng = StdRng::seed_from_u64(seed ^ 0x1B9_1417);
    let mut changed = Vec::new();
    for (name, var) in &weights[..weights.len() - 1] {
        let dims = var.as_tensor().dims().to_vec();
        let fan_in: usize = dims[1..].iter().product();
        let sigma = (2.0 * std::f64::consts::PI).sqrt() / fan_in.max(1) as f64;
        let normal = Normal::new(0.0, sigma)?;
        let v: Vec<f64> = (0..var.as_tensor().elem_count()).map(|_| normal.sample(&mut rng)).collect();
        let t = Tensor::from_vec(v, dims, var.device())?.to_dtype(var.dtype())?;
        var.set(&t)?;
        changed.push(name.clone());
    }
    Ok(changed)
}
