//! The trait every layer of a network implements, built-in or a user's own.

use crate::spec::LayerSpec;
use candle_core::{Result as CResult, Tensor, Var};
use dual_core::{DualNode, Inputs, IntervalRows, Result as DResult};

/// A layer: its forward pass, its dual, its parameters and its description.
///
/// A user adds a new layer kind by implementing this trait (and, for its dual, `DualAffine` or
/// `DualActivation` from `dual-core`) in their own crate; see `docs/EXTENDING.md`.
pub trait Layer: Send + Sync {
    /// The architecture description of this layer.
    fn spec(&self) -> LayerSpec;

    /// Which earlier outputs the layer reads (`Last` unless it is a Dense layer).
    fn inputs(&self) -> Inputs {
        Inputs::Last
    }

    /// The forward pass on `xs` (one tensor per input, oldest first, each `[B, ...]`).
    fn forward(&self, xs: &[Option<&Tensor>]) -> CResult<Tensor>;

    /// The dual of the layer; `xs` are the nominal inputs of the current batch, as in `forward`
    /// (their shapes fix the transposes, their values the batch statistics of BatchNorm).
    fn dual(&self, xs: &[Option<&Tensor>]) -> DResult<DualNode>;

    /// The parameters, with names relative to the layer (`weight`, `Ws.0.bias`, ...).
    fn params(&self) -> Vec<(String, Var)>;

    /// The forward pass on raw rows for inputs shaped `in_shape` (without batch), for the fused
    /// inference pass of [`crate::Network::forward`] (`dual_core::interval_rows::forward_chain`);
    /// `None` (the default) where the layer has none or its parameters track their ops: the
    /// network then runs layer by layer.
    fn rows(&self, _in_shape: &[usize]) -> Option<DResult<Box<dyn IntervalRows>>> {
        None
    }
}

/// The one input of a single-input layer (for `Layer::forward` / `Layer::dual`).
pub fn single_input<'a>(xs: &[Option<&'a Tensor>]) -> CResult<&'a Tensor> {
    xs.last().copied().flatten().ok_or_else(|| candle_core::Error::Msg("layer called without an input".into()))
}
