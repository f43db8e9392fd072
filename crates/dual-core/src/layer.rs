//! The two kinds of node the engine propagates through.
//!
//! Shapes: every propagated tensor is `[B, n, *shape]`: `B` examples, `n` columns per example
//! (the nominal "center" pass has `n = 1`), `shape` the layer's own output shape without batch.

use crate::bounds::{LinearRelaxation, SlopeRule};
use crate::interval_rows::IntervalRows;
use crate::{source::DualSource, DualError, Result};
use candle_core::Tensor;

/// Which earlier outputs a layer reads. Output 0 is the network input, output `t` the output of
/// layer `t` (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inputs {
    /// The most recent output only (a plain Sequential layer).
    Last,
    /// The last `m` outputs, oldest first (a `Dense` layer of a DenseSequential network).
    LastM(usize),
}

impl Inputs {
    /// Output indices read by the layer that produces output `t`, oldest first. Indices before
    /// the network input are reported as `None`.
    pub fn indices(&self, t: usize) -> Vec<Option<usize>> {
        match *self {
            Inputs::Last => vec![Some(t - 1)],
            Inputs::LastM(m) => (0..m)
                .map(|i| {
                    let back = m - i; // 1 = most recent
                    (t >= back).then(|| t - back)
                })
                .collect(),
        }
    }
}

/// The dual of an affine layer `z_out = Σ_i A_i z_{in_i} + b`.
///
/// In the dual network of Wong & Kolter (Eq. 10) an affine layer appears twice: applied forward
/// to the propagated identity columns when layer-wise bounds are computed, and transposed
/// (`ν̂_i = A_iᵀ ν_{i+1}`) in the objective `J(c)` (Theorem 1). Both are here, together with the
/// bias term `νᵀ b` of the objective.
pub trait DualAffine: Send + Sync {
    /// A short name for messages ("Linear(784->100)").
    fn name(&self) -> String;

    /// Which earlier outputs the layer reads.
    fn inputs(&self) -> Inputs {
        Inputs::Last
    }

    /// `Σ_i A_i x_i (+ b when with_bias)` for `x_i` shaped `[B, n, *in_shape_i]`; `None` stands for
    /// a zero input. May return `None` (a zero output) when every input is `None`; the engine
    /// asks for the bias only on the nominal pass, whose inputs are never `None`.
    fn forward(&self, xs: &[Option<&Tensor>], with_bias: bool) -> Result<Option<Tensor>>;

    /// The adjoint: `A_iᵀ ν` for every input `i` (`None` where the layer does not read it),
    /// for `ν` shaped `[B, n, *out_shape]`.
    fn transpose(&self, nu: &Tensor) -> Result<Vec<Option<Tensor>>>;

    /// `νᵀ b` for `ν` shaped `[B, n, *out_shape]`, as `[B, n]`; `None` when the layer has no bias.
    fn bias_term(&self, nu: &Tensor) -> Result<Option<Tensor>>;

    /// Multiply-adds to apply the layer (or its transpose) to one column, given the number of
    /// elements of each input (`None`: not read) and of the output. Only used to choose between
    /// the forward and backward forms of the bounds; the default is that of a dense matrix.
    fn macs_per_column(&self, in_numels: &[Option<usize>], out_numel: usize) -> usize {
        in_numels.iter().flatten().map(|n| n * out_numel).sum()
    }

    /// `Σ_i |A_i| r_i` for non-negative radii `r_i` shaped `[B, n, *in_shape_i]` (`None`: zero):
    /// the radius of the layer's output over the box `mid ± r` of its inputs, as interval bound
    /// propagation (IBP, CROWN-IBP) needs it. The centre is `forward(mid, true)`. Default: an
    /// error saying the layer does not support interval bounds.
    fn forward_abs(&self, _radii: &[Option<&Tensor>]) -> Result<Option<Tensor>> {
        Err(DualError::Unsupported(format!("{} does not support interval bounds (IBP, CROWN-IBP)", self.name())))
    }

    /// The transpose of coefficients that live on a spatial window of the output (the last two
    /// axes): `g` `[B, n, C_out, h, w]` whose entry `(y, x)` sits at `(at.0 + y, at.1 + x)` of the
    /// output grid. Returns the coefficients on the input window they reach, `[B, n, C_in, h',
    /// w']`, its origin on the input grid (it may reach past the grid: entries there multiply the
    /// layer's zero padding and the caller drops them), and the bias term `νᵀ b` of `g` (`[B, n]`,
    /// `None` without bias). A layer whose transpose is local (a convolution: `h' = (h − 1) s + k`,
    /// origin `at · s − p`) lets CROWN's rows from single units run on windows instead of whole
    /// images (auto_LiRPA's "patches"). `None` (the default): no windowed form, the caller uses
    /// [`Self::transpose`].
    fn transpose_window(&self, _g: &Tensor, _at: (isize, isize)) -> Option<Result<WindowTranspose>> {
        None
    }

    /// The interval map on raw rows for IBP's fused inference pass ([`IntervalRows`]); `None`
    /// (the default): the node runs op by op.
    fn interval_rows(&self) -> Option<Result<Box<dyn IntervalRows + '_>>> {
        None
    }
}

/// The dual of an affine layer with one input, `z_out = A z_in + b`: the short form of
/// What [`DualAffine::transpose_window`] gives: the coefficients on the input window, the
/// window's origin on the input grid, and the bias term.
pub struct WindowTranspose {
    /// `[B, n, C_in, h', w']`.
    pub g: Tensor,
    /// Row and column of the window's first entry on the input grid (negative past its edge).
    pub origin: (isize, isize),
    /// `νᵀ b`, `[B, n]`; `None` without bias.
    pub bias: Option<Tensor>,
}

/// [`DualAffine`] for every layer that reads only the previous output (all but `Dense`).
///
/// The same three quantities of Theorem 1 (`A x (+ b)`, `Aᵀ ν`, `νᵀ b`) on one tensor each; the
/// blanket implementation of [`DualAffine`] maps a zero input (`None`) to a zero output and
/// refuses any other number of inputs than one.
pub trait SingleInputAffine: Send + Sync {
    /// A short name for messages ("Linear(784->100)").
    fn name(&self) -> String;

    /// `A x (+ b when with_bias)` for `x` shaped `[B, n, *in_shape]`, as `[B, n, *out_shape]`.
    fn forward(&self, x: &Tensor, with_bias: bool) -> Result<Tensor>;

    /// The adjoint `Aᵀ ν` for `ν` shaped `[B, n, *out_shape]`, as `[B, n, *in_shape]`.
    fn transpose(&self, nu: &Tensor) -> Result<Tensor>;

    /// `νᵀ b` for `ν` shaped `[B, n, *out_shape]`, as `[B, n]`; `None` (the default) when the
    /// layer has no bias.
    fn bias_term(&self, _nu: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// Multiply-adds to apply `A` (or `Aᵀ`) to one column of `in_numel` elements giving
    /// `out_numel`; only chooses the bounds' form. Default: a dense matrix, `in · out`.
    fn macs_per_column(&self, in_numel: usize, out_numel: usize) -> usize {
        in_numel * out_numel
    }

    /// `|A| r` for a non-negative radius `r` shaped `[B, n, *in_shape]` (interval bounds).
    /// Default: an error saying the layer does not support interval bounds.
    fn forward_abs(&self, _radius: &Tensor) -> Result<Tensor> {
        Err(DualError::Unsupported(format!(
            "{} does not support interval bounds (IBP, CROWN-IBP)",
            SingleInputAffine::name(self)
        )))
    }

    /// The transpose of coefficients that live on a spatial window of the output (the last two
    /// axes): `g` `[B, n, C_out, h, w]` whose entry `(y, x)` sits at `(at.0 + y, at.1 + x)` of the
    /// output grid. Returns the coefficients on the input window they reach, `[B, n, C_in, h',
    /// w']`, its origin on the input grid (it may reach past the grid: entries there multiply the
    /// layer's zero padding and the caller drops them), and the bias term `νᵀ b` of `g` (`[B, n]`,
    /// `None` without bias). A layer whose transpose is local (a convolution: `h' = (h − 1) s + k`,
    /// origin `at · s − p`) lets CROWN's rows from single units run on windows instead of whole
    /// images (auto_LiRPA's "patches"). `None` (the default): no windowed form, the caller uses
    /// [`Self::transpose`].
    fn transpose_window(&self, _g: &Tensor, _at: (isize, isize)) -> Option<Result<WindowTranspose>> {
        None
    }

    /// The interval map on raw rows for IBP's fused inference pass ([`IntervalRows`]); `None`
    /// (the default): the node runs op by op.
    fn interval_rows(&self) -> Option<Result<Box<dyn IntervalRows + '_>>> {
        None
    }
}

/// The one input of a single-input layer, `None` for a zero input; an error naming the layer for
/// any other number of inputs.
fn single_input<'a>(name: impl FnOnce() -> String, xs: &[Option<&'a Tensor>]) -> Result<Option<&'a Tensor>> {
    match xs {
        [x] => Ok(*x),
        _ => Err(DualError::shape(format!("{} reads one input, got {}", name(), xs.len()))),
    }
}

impl<T: SingleInputAffine> DualAffine for T {
    fn name(&self) -> String {
        SingleInputAffine::name(self)
    }

    fn forward(&self, xs: &[Option<&Tensor>], with_bias: bool) -> Result<Option<Tensor>> {
        single_input(|| SingleInputAffine::name(self), xs)?
            .map(|x| SingleInputAffine::forward(self, x, with_bias))
            .transpose()
    }

    fn transpose(&self, nu: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(SingleInputAffine::transpose(self, nu)?)])
    }

    fn bias_term(&self, nu: &Tensor) -> Result<Option<Tensor>> {
        SingleInputAffine::bias_term(self, nu)
    }

    fn macs_per_column(&self, in_numels: &[Option<usize>], out_numel: usize) -> usize {
        in_numels.iter().flatten().map(|&n| SingleInputAffine::macs_per_column(self, n, out_numel)).sum()
    }

    fn forward_abs(&self, radii: &[Option<&Tensor>]) -> Result<Option<Tensor>> {
        single_input(|| SingleInputAffine::name(self), radii)?
            .map(|r| SingleInputAffine::forward_abs(self, r))
            .transpose()
    }

    fn transpose_window(&self, g: &Tensor, at: (isize, isize)) -> Option<Result<WindowTranspose>> {
        SingleInputAffine::transpose_window(self, g, at)
    }

    fn interval_rows(&self) -> Option<Result<Box<dyn IntervalRows + '_>>> {
        SingleInputAffine::interval_rows(self)
    }
}

/// What an activation computes and how its exact-dual relaxation is formed, for code that picks a
/// relaxation policy per activation (the projections replace the exact relaxation of every
/// ReLU by one whose terms are estimated from random projections). The engine never reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivationKind {
    /// `max(ẑ, 0)` with the relaxation of Wong & Kolter (slope `u/(u − l)`, gap `[0, −d l]`).
    Relu,
    /// `max(ẑ, 0)` with the same slopes, the gap's terms estimated from random projections.
    ReluProjected,
    /// Any other activation (Sigmoid, Tanh, MaxPool2d, a user's): no policy replaces it.
    Other,
}

/// A piecewise-linear activation (ReLU) whose relaxation is chosen once the bounds of its input
/// are known.
pub trait DualActivation: Send + Sync {
    /// A short name for messages.
    fn name(&self) -> String;

    /// What the activation is, for relaxation policies ([`ActivationKind`]); default
    /// [`ActivationKind::Other`].
    fn kind(&self) -> ActivationKind {
        ActivationKind::Other
    }

    /// Choose the relaxation for pre-activation bounds `lower ≤ ẑ ≤ upper`, both `[B, *shape]`.
    fn relax(&self, lower: &Tensor, upper: &Tensor) -> Result<Box<dyn Relaxation>>;

    /// The image `[σ(l)', σ(u)']` of the box `lower ≤ ẑ ≤ upper` (both `[B, *shape]`): a lower and
    /// an upper bound of the output, for interval bound propagation. Default: unsupported.
    fn interval(&self, _lower: &Tensor, _upper: &Tensor) -> Result<(Tensor, Tensor)> {
        Err(DualError::Unsupported(format!("{} does not support interval bounds (IBP, CROWN-IBP)", self.name())))
    }

    /// [`DualActivation::interval`] in centre–radius form: for the box `mid ± rad` (both
    /// `[B, *shape]`), the centre and radius `((lo + hi) / 2, (hi − lo) / 2)` of the image
    /// `[lo, hi]` of `[mid − rad, mid + rad]`. Default: through `interval`; an activation may
    /// fuse it (same numbers).
    fn interval_mid_rad(&self, mid: &Tensor, rad: &Tensor) -> Result<(Tensor, Tensor)> {
        let (lo, hi) = self.interval(&(mid - rad)?, &(mid + rad)?)?;
        Ok((((&lo + &hi)? * 0.5)?, ((hi - lo)? * 0.5)?))
    }

    /// The output shape (without batch) for an input shaped `in_shape`. Default: the same shape
    /// (an elementwise activation); a pooling activation (MaxPool2d) changes it.
    fn output_shape(&self, in_shape: &[usize]) -> Result<Vec<usize>> {
        Ok(in_shape.to_vec())
    }

    /// Whether a unit whose bounds do not straddle zero (`l ≥ 0` or `u ≤ 0`) is relaxed exactly,
    /// as for ReLU (default `true`). α-CROWN then keeps IBP's bounds on the units IBP proves
    /// stable and computes CROWN's only on the others; an activation returning `false` (Sigmoid,
    /// Tanh, MaxPool2d) gets CROWN's bounds on every unit, intersected with IBP's.
    fn exact_off_zero(&self) -> bool {
        true
    }

    /// The interval map on raw rows for IBP's fused inference pass ([`IntervalRows`]); `None`
    /// (the default): the node runs op by op.
    fn interval_rows(&self) -> Option<Result<Box<dyn IntervalRows + '_>>> {
        None
    }

    /// Linear bounds with separate lines, `a_L ẑ + b_L ≤ σ(ẑ) ≤ a_U ẑ + b_U` on `[lower, upper]`,
    /// the lower slope chosen by `rule` (CROWN, CROWN-IBP, α-CROWN). Default: unsupported.
    fn linear_relax(&self, _lower: &Tensor, _upper: &Tensor, rule: SlopeRule<'_>) -> Result<Box<dyn LinearRelaxation>> {
        Err(DualError::Unsupported(format!(
            "{} does not support linear bounds with separate lines (slope rule {})",
            self.name(),
            rule.name()
        )))
    }
}

/// A linear relaxation of an activation with the same slope above and below, as in the dual
/// network of Wong & Kolter: `z ≈ D ẑ` on the propagated values, plus a source of free variables
/// whose objective term accounts for the gap (Eq. 10, the `Σ l_ij [ν_ij]_+` term).
pub trait Relaxation: Send + Sync {
    /// `D x` for `x` shaped `[B, n, *shape]` (D is diagonal, so it is also its own transpose).
    fn apply(&self, x: &Tensor) -> Result<Tensor>;

    /// The free variables this relaxation introduces (the unstable units), if any.
    fn source(&self) -> Option<&dyn DualSource>;

    /// Number of units whose bounds straddle zero, per example (for reports).
    fn unstable_counts(&self) -> Vec<usize>;

    /// [`Self::apply`] for columns that live on a spatial window of the `[C, H, W]` grid (`x`
    /// `[B or 1, n, C, h, w]`, first entry at `at`, inside the grid). `None` (the default): no
    /// windowed form.
    fn apply_window(&self, _x: &Tensor, _at: (usize, usize)) -> Option<Result<Tensor>> {
        None
    }
}

/// One node of a dual network.
pub enum DualNode {
    /// An affine layer.
    Affine(Box<dyn DualAffine>),
    /// An activation that is relaxed once its input bounds are known.
    Activation(Box<dyn DualActivation>),
}

impl DualNode {
    /// Which earlier outputs the node reads.
    pub fn inputs(&self) -> Inputs {
        match self {
            DualNode::Affine(a) => a.inputs(),
            DualNode::Activation(_) => Inputs::Last,
        }
    }
    /// The node's name.
    pub fn name(&self) -> String {
        match self {
            DualNode::Affine(a) => a.name(),
            DualNode::Activation(a) => a.name(),
        }
    }
}
