//! Turning an architecture description plus a source of parameters into layers.

use crate::{
    layers::{
        AvgPool2d, BatchNorm2d, Conv2d, Dense, Flatten, Identity, Linear, MaxPool2d, Pad, ReLU, Reshape, Sigmoid, Tanh,
    },
    spec::LayerSpec,
    Layer, NetError, Result,
};
use candle_core::{Tensor, Var};

/// How a fresh parameter is initialised (PyTorch's defaults).
#[derive(Debug, Clone, Copy)]
pub enum ParamInit {
    /// `U(-1/√fan_in, 1/√fan_in)`: weights and biases of Linear and Conv2d.
    Uniform { fan_in: usize },
    /// All ones (BatchNorm scale and running variance).
    Ones,
    /// All zeros (BatchNorm shift and running mean).
    Zeros,
}

/// Where parameters come from: `(full name, shape, how to initialise) -> tensor`.
pub type ParamSource<'a> = dyn FnMut(&str, &[usize], ParamInit) -> Result<Tensor> + 'a;

fn var(t: Tensor) -> Result<Var> {
    Ok(Var::from_tensor(&t)?)
}

/// Builds layers the description calls `Custom`: `(kind, config, prefix, params) -> layer`, or
/// `Ok(None)` for a kind it does not know.
pub type CustomBuilder<'a> =
    dyn Fn(&str, &serde_json::Value, &str, &mut ParamSource) -> Result<Option<Box<dyn Layer>>> + 'a;

/// Builds one layer, asking `get` for its parameters under `prefix`.
pub fn build_layer(spec: &LayerSpec, prefix: &str, get: &mut ParamSource) -> Result<Box<dyn Layer>> {
    build_layer_with(spec, prefix, get, None)
}

/// [`build_layer`] with a builder for `Custom` layers.
pub fn build_layer_with(
    spec: &LayerSpec,
    prefix: &str,
    get: &mut ParamSource,
    custom: Option<&CustomBuilder>,
) -> Result<Box<dyn Layer>> {
    let name = |n: &str| format!("{prefix}{n}");
    Ok(match spec {
        LayerSpec::Linear { in_features, out_features, bias } => {
            let init = ParamInit::Uniform { fan_in: *in_features };
            let weight = var(get(&name("weight"), &[*out_features, *in_features], init)?)?;
            let bias = if *bias { Some(var(get(&name("bias"), &[*out_features], init)?)?) } else { None };
            Box::new(Linear { weight, bias })
        }
        LayerSpec::Conv2d { in_channels, out_channels, kernel_size, stride, padding, bias } => {
            if *stride == 0 || *kernel_size == 0 {
                return Err(NetError::BadArchitecture(format!(
                    "{prefix}: Conv2d with stride {stride} and kernel {kernel_size}"
                )));
            }
            let init = ParamInit::Uniform { fan_in: in_channels * kernel_size * kernel_size };
            let weight = var(get(&name("weight"), &[*out_channels, *in_channels, *kernel_size, *kernel_size], init)?)?;
            let bias = if *bias { Some(var(get(&name("bias"), &[*out_channels], init)?)?) } else { None };
            Box::new(Conv2d { weight, bias, stride: *stride, padding: *padding })
        }
        LayerSpec::ReLU => Box::new(ReLU),
        LayerSpec::Sigmoid => Box::new(Sigmoid),
        LayerSpec::Tanh => Box::new(Tanh),
        LayerSpec::MaxPool2d { kernel_size, stride, padding } => {
            check_window(prefix, "MaxPool2d", kernel_size, stride)?;
            Box::new(MaxPool2d { kernel: *kernel_size, stride: *stride, padding: *padding })
        }
        LayerSpec::AvgPool2d { kernel_size, stride, padding, count_include_pad } => {
            check_window(prefix, "AvgPool2d", kernel_size, stride)?;
            Box::new(AvgPool2d {
                kernel: *kernel_size,
                stride: *stride,
                padding: *padding,
                count_include_pad: *count_include_pad,
            })
        }
        LayerSpec::Pad { pads, value } => {
            if !value.is_finite() {
                return Err(NetError::BadArchitecture(format!("{prefix}: Pad with the value {value}")));
            }
            Box::new(Pad { pads: *pads, value: *value })
        }
        LayerSpec::Reshape { shape } => {
            if shape.is_empty() || shape.contains(&0) {
                return Err(NetError::BadArchitecture(format!("{prefix}: Reshape to {shape:?}")));
            }
            Box::new(Reshape { shape: shape.clone() })
        }
        LayerSpec::Flatten => Box::new(Flatten),
        LayerSpec::Identity => Box::new(Identity),
        LayerSpec::BatchNorm2d { num_features, eps, mode } => {
            let c = [*num_features];
            Box::new(BatchNorm2d {
                weight: var(get(&name("weight"), &c, ParamInit::Ones)?)?,
                bias: var(get(&name("bias"), &c, ParamInit::Zeros)?)?,
                running_mean: var(get(&name("running_mean"), &c, ParamInit::Zeros)?)?,
                running_var: var(get(&name("running_var"), &c, ParamInit::Ones)?)?,
                eps: *eps,
                mode: *mode,
            })
        }
        LayerSpec::Dense { parts } => {
            if parts.iter().all(|p| p.is_none()) {
                return Err(NetError::BadArchitecture(format!("{prefix}: Dense layer without parts")));
            }
            let mut built = Vec::new();
            for (i, p) in parts.iter().enumerate() {
                built.push(match p {
                    None => None,
                    Some(LayerSpec::Dense { .. }) => {
                        return Err(NetError::BadArchitecture(format!(
                            "{prefix}: nested Dense layers are not supported"
                        )))
                    }
                    Some(p) => Some(build_layer_with(p, &format!("{prefix}Ws.{i}."), get, custom)?),
                });
            }
            Box::new(Dense { parts: built })
        }
        LayerSpec::Custom { kind, config } => {
            if let Some(b) = custom {
                if let Some(l) = b(kind, config, prefix, get)? {
                    return Ok(l);
                }
            }
            return Err(NetError::BadArchitecture(format!(
                "{prefix}: custom layer `{kind}` cannot be built from a description; pass a CustomBuilder (Network::from_state_dict_with) or construct it in code"
            )));
        }
    })
}

/// A pooling window needs a non-zero kernel and stride.
fn check_window(prefix: &str, name: &str, kernel: &[usize; 2], stride: &[usize; 2]) -> Result<()> {
    if kernel.contains(&0) || stride.contains(&0) {
        return Err(NetError::BadArchitecture(format!(
            "{prefix}: {name} with kernel {kernel:?} and stride {stride:?}"
        )));
    }
    Ok(())
}
