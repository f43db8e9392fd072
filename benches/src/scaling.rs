//! The runtime experiment of Wong, Schmidt, Metzen & Kolter (2018): random 28×28 inputs, one
//! convolution of `j` filters (3×3, padding 1), ReLU, then a linear layer to 2 classes; l_inf
//! radius 0.08. The exact bound pushes one column per input pixel (784) through the convolution
//! and bounds `j·784` ReLU inputs with them; the projected bound pushes `k + 1` columns
//! (`k` Cauchy projections and the box centre) and estimates the l1 norms by a median.

use candle_core::{DType, Device, Result, Tensor};
use dual_core::{robust_loss, DualNetwork, DualOptions};
use dual_layers::InfBallBounded;
use nets::{spec::build::*, Network, NetworkSpec};
use projections::{projected_dual, ProjectionConfig};

/// Radius of the runtime experiment.
pub const SCALING_EPS: f64 = 0.08;

/// The network with `j` filters.
pub fn scaling_spec(j: usize) -> NetworkSpec {
    NetworkSpec::sequential(
        &format!("conv{j}"),
        &[1, 28, 28],
        vec![conv(1, j, 3, 1, 1), relu(), flatten(), linear(j * 784, 2)],
    )
}

/// The network with `j` filters, PyTorch's default initialisation from `seed`.
pub fn scaling_net(j: usize, seed: u64) -> Result<Network> {
    Network::init(&scaling_spec(j), seed, DType::F32, &Device::Cpu).map_err(|e| candle_core::Error::Msg(e.to_string()))
}

/// Which bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalingBound {
    /// The exact dual network.
    Exact,
    /// `k` random projections (median estimator).
    Projected(usize),
}

impl ScalingBound {
    /// `exact` or `proj50`.
    pub fn name(&self) -> String {
        match self {
            ScalingBound::Exact => "exact".into(),
            ScalingBound::Projected(k) => format!("proj{k}"),
        }
    }
}

/// The dual network of `net` at `x` for the ball ∩ [0, 1].
pub fn scaling_dual(net: &Network, x: &Tensor, bound: ScalingBound, seed: u64) -> Result<DualNetwork> {
    let e = |e: dual_core::DualError| candle_core::Error::Msg(e.to_string());
    let n = |e: nets::NetError| candle_core::Error::Msg(e.to_string());
    match bound {
        ScalingBound::Exact => net
            .dual(x, Box::new(InfBallBounded::new(x, SCALING_EPS, 0.0, 1.0).map_err(e)?), &DualOptions::default())
            .map_err(n),
        ScalingBound::Projected(k) => {
            let cfg = ProjectionConfig::linf(SCALING_EPS, k, seed).bounded(0.0, 1.0);
            projected_dual(x, net.dual_nodes(x).map_err(n)?, &cfg, &DualOptions::default()).map_err(e)
        }
    }
}

/// The robust loss of the batch (forward); with `backward`, also its gradients. Returns the loss.
pub fn scaling_step(
    net: &Network,
    x: &Tensor,
    y: &[u32],
    bound: ScalingBound,
    backward: bool,
    seed: u64,
) -> Result<f32> {
    let run = || -> Result<f32> {
        let dual = scaling_dual(net, x, bound, seed)?;
        let rl = robust_loss(&dual, y).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        if backward {
            std::hint::black_box(rl.loss.backward()?);
        }
        rl.loss.to_scalar::<f32>()
    };
    if backward {
        run()
    } else {
        nets::no_grad(run)
    }
}
