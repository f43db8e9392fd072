//! The readable architecture description saved with every model.

use serde::{Deserialize, Serialize};

/// Which statistics a BatchNorm2d layer normalises with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchNormMode {
    /// The running mean and variance (PyTorch's `eval()`).
    Eval,
    /// The mean and biased variance of the current batch (PyTorch's `train()`).
    BatchStats,
}

/// One layer of an architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum LayerSpec {
    /// `y = W x + b`.
    Linear { in_features: usize, out_features: usize, bias: bool },
    /// 2-d convolution with square kernel, stride and padding.
    Conv2d { in_channels: usize, out_channels: usize, kernel_size: usize, stride: usize, padding: usize, bias: bool },
    /// Rectified linear unit.
    ReLU,
    /// Flatten everything but the batch dimension.
    Flatten,
    /// The identity (PyTorch's empty `nn.Sequential()` inside a Dense layer).
    Identity,
    /// BatchNorm2d with learnable affine parameters.
    BatchNorm2d { num_features: usize, eps: f64, mode: BatchNormMode },
    /// A sum of layers over the last `parts.len()` outputs; the last part reads the most recent
    /// output, `null` skips an output.
    Dense { parts: Vec<Option<LayerSpec>> },
    /// 2-d max pooling: kernel `[h, w]`, stride `[h, w]`, padding `[top, left, bottom, right]`
    /// (padding never wins the max).
    MaxPool2d { kernel_size: [usize; 2], stride: [usize; 2], padding: [usize; 4] },
    /// 2-d average pooling (zero padding; `count_include_pad` as in PyTorch).
    AvgPool2d { kernel_size: [usize; 2], stride: [usize; 2], padding: [usize; 4], count_include_pad: bool },
    /// Constant padding of the last two dimensions, `[top, left, bottom, right]`.
    Pad { pads: [usize; 4], value: f64 },
    /// Reshape everything but the batch dimension.
    Reshape { shape: Vec<usize> },
    /// `1 / (1 + e^{−x})`.
    Sigmoid,
    /// `tanh x`.
    Tanh,
    /// A layer defined outside this crate; `kind` names it and `config` holds its settings.
    Custom { kind: String, config: serde_json::Value },
}

/// Sequential (each layer reads the previous output) or DenseSequential (Dense layers may read
/// several earlier outputs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkKind {
    /// Plain chain of layers.
    Sequential,
    /// Chain with Dense skip connections.
    DenseSequential,
}

/// A whole architecture: what is saved beside the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// Sequential or DenseSequential.
    pub kind: NetworkKind,
    /// Shape of one input without the batch dimension, e.g. `[1, 28, 28]`.
    pub input_shape: Vec<usize>,
    /// The layers in order.
    pub layers: Vec<LayerSpec>,
    /// A name, e.g. `mnist-small`.
    #[serde(default)]
    pub name: String,
}

impl NetworkSpec {
    /// A Sequential architecture.
    pub fn sequential(name: &str, input_shape: &[usize], layers: Vec<LayerSpec>) -> Self {
        NetworkSpec { kind: NetworkKind::Sequential, input_shape: input_shape.to_vec(), layers, name: name.into() }
    }
    /// A DenseSequential architecture.
    pub fn dense_sequential(name: &str, input_shape: &[usize], layers: Vec<LayerSpec>) -> Self {
        NetworkSpec { kind: NetworkKind::DenseSequential, input_shape: input_shape.to_vec(), layers, name: name.into() }
    }
    /// The description as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("specs always serialise")
    }
}

/// Shorthands for writing architectures.
pub mod build {
    use super::LayerSpec;
    /// Conv2d with bias.
    pub fn conv(cin: usize, cout: usize, k: usize, stride: usize, padding: usize) -> LayerSpec {
        LayerSpec::Conv2d { in_channels: cin, out_channels: cout, kernel_size: k, stride, padding, bias: true }
    }
    /// Linear with bias.
    pub fn linear(i: usize, o: usize) -> LayerSpec {
        LayerSpec::Linear { in_features: i, out_features: o, bias: true }
    }
    /// ReLU.
    pub fn relu() -> LayerSpec {
        LayerSpec::ReLU
    }
    /// Flatten.
    pub fn flatten() -> LayerSpec {
        LayerSpec::Flatten
    }
    /// Square max pooling with PyTorch's arguments (`nn.MaxPool2d(k, stride, padding)`).
    pub fn maxpool(k: usize, stride: usize, padding: usize) -> LayerSpec {
        LayerSpec::MaxPool2d { kernel_size: [k, k], stride: [stride, stride], padding: [padding; 4] }
    }
    /// Square average pooling with PyTorch's arguments and defaults (`count_include_pad=True`).
    pub fn avgpool(k: usize, stride: usize, padding: usize) -> LayerSpec {
        LayerSpec::AvgPool2d {
            kernel_size: [k, k],
            stride: [stride, stride],
            padding: [padding; 4],
            count_include_pad: true,
        }
    }
    /// Zero padding `[top, left, bottom, right]`.
    pub fn zero_pad(pads: [usize; 4]) -> LayerSpec {
        LayerSpec::Pad { pads, value: 0.0 }
    }
    /// Sigmoid.
    pub fn sigmoid() -> LayerSpec {
        LayerSpec::Sigmoid
    }
    /// Tanh.
    pub fn tanh() -> LayerSpec {
        LayerSpec::Tanh
    }
    /// Dense over the last `parts.len()` outputs.
    pub fn dense(parts: Vec<Option<LayerSpec>>) -> LayerSpec {
        LayerSpec::Dense { parts }
    }
}
