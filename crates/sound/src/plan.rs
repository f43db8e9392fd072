//! The network's layer list, read for the check: which layers it covers and how many rounded
//! operations feed each output of each layer.

use crate::{Result, SoundError};
use candle_core::{DType, Tensor};
use nets::spec::{BatchNormMode, LayerSpec};
use nets::Network;

/// What the check does at one layer.
pub(crate) enum Step {
    /// An affine layer (Linear, Conv2d, BatchNorm2d in eval mode, Flatten, Identity, Dense).
    Affine {
        /// Products summed into one output (or one entry of the transpose), plus one for the
        /// bias and for every extra rounding in computing a coefficient (BatchNorm's scale):
        /// the `n` of `γ_n`. 0 for a reshape (exact).
        terms: usize,
        /// For BatchNorm (eval): `|β| + |μ| |γ|/√(σ²+ε)` per channel, `[C, 1, 1]`; times `γ_8` it
        /// bounds the error of a computed shift `β − μ γ/√(σ²+ε)` (a cancellation the relative
        /// bound above does not cover).
        bias_error: Option<Tensor>,
        /// A Linear or Conv2d layer: its transpose `Aᵀ g` is a sum of products of `g` with the
        /// stored weights (the transpose of the identity through it holds the weights exactly),
        /// and its bias term is `gᵀ b` with `b` its output at a zero input.
        plain: bool,
    },
    /// A ReLU.
    Relu,
}

fn affine_terms(spec: &LayerSpec, where_: &str) -> Result<usize> {
    Ok(match spec {
        LayerSpec::Linear { in_features, out_features, .. } => in_features.max(out_features) + 1,
        LayerSpec::Conv2d { in_channels, out_channels, kernel_size, .. } => {
            in_channels.max(out_channels) * kernel_size * kernel_size + 1
        }
        LayerSpec::Flatten | LayerSpec::Identity => 0,
        other => {
            return Err(SoundError::Unsupported(format!(
                "{where_}: the sound check does not cover {} inside a Dense layer",
                kind(other)
            )))
        }
    })
}

fn kind(spec: &LayerSpec) -> String {
    match spec {
        LayerSpec::Custom { kind, .. } => format!("the custom layer `{kind}`"),
        LayerSpec::BatchNorm2d { mode: BatchNormMode::BatchStats, .. } => {
            "BatchNorm2d with batch statistics (only eval mode is an affine map of one input)".into()
        }
        other => format!("{other:?}"),
    }
}

/// The steps of `net` (f64), one per layer; an error names the first layer the check does not
/// cover.
pub(crate) fn plan(net: &Network) -> Result<Vec<Step>> {
    let mut steps = Vec::new();
    for (i, layer) in net.layers().iter().enumerate() {
        let spec = layer.spec();
        let where_ = format!("layer {i}");
        let step = match &spec {
            LayerSpec::ReLU => Step::Relu,
            LayerSpec::Linear { .. } | LayerSpec::Conv2d { .. } => {
                Step::Affine { terms: affine_terms(&spec, &where_)?, bias_error: None, plain: true }
            }
            LayerSpec::Flatten | LayerSpec::Identity => {
                Step::Affine { terms: affine_terms(&spec, &where_)?, bias_error: None, plain: false }
            }
            LayerSpec::BatchNorm2d { mode: BatchNormMode::Eval, eps, .. } => Step::Affine {
                terms: 6,
                bias_error: Some(batchnorm_bias_error(layer.params(), *eps, &where_)?),
                plain: false,
            },
            LayerSpec::Dense { parts } => {
                let mut terms = parts.len();
                for p in parts.iter().flatten() {
                    terms += affine_terms(p, &where_)?;
                }
                Step::Affine { terms, bias_error: None, plain: false }
            }
            other => {
                return Err(SoundError::Unsupported(format!(
                    "{where_}: the sound check does not cover {}",
                    kind(other)
                )))
            }
        };
        steps.push(step);
    }
    Ok(steps)
}

/// `(|β| + |μ| |γ|/√(σ²+ε)) (1 + 10⁻⁶)` per channel, `[C, 1, 1]`: the computed shift
/// `β − μ·fl(γ/√(σ²+ε))` has two roundings of its own and inherits the three of the scale, so
/// `γ_8` times this bounds its error (in whichever precision it is computed).
fn batchnorm_bias_error(params: Vec<(String, candle_core::Var)>, eps: f64, where_: &str) -> Result<Tensor> {
    let get = |name: &str| -> Result<Tensor> {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_tensor().to_dtype(DType::F64))
            .transpose()?
            .ok_or_else(|| SoundError::Unsupported(format!("{where_}: BatchNorm2d without `{name}`")))
    };
    let (w, b, m, v) = (get("weight")?, get("bias")?, get("running_mean")?, get("running_var")?);
    let scale = w.abs()?.broadcast_div(&(v + eps)?.sqrt()?)?;
    let bound = (b.abs()? + m.abs()?.broadcast_mul(&scale)?)?;
    let c = bound.dim(0)?;
    Ok((bound * (1.0 + 1e-6))?.reshape((c, 1, 1))?)
}
