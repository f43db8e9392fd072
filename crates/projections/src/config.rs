//! Choosing where to project (as in the scalable paper) and building the projected dual network.

use crate::guarantee::{median_epsilon, median_epsilon_lower, normal_epsilon_lower};
use crate::input::{InfBallProj, InfBallProjBounded, L2BallProj};
use crate::relu::{DualReLUProj, ReluRule};
use candle_core::Tensor;
use dual_core::{ActivationKind, DualError, DualNetwork, DualNode, DualOptions, DualSource, Result};
use dual_layers::{validate_input, BallNorm, Epsilon, ThreatModel};

/// Which norm the input set has, and so which projections and estimator it uses. ReLU layers
/// always use Cauchy projections and the median (their term is an l1 norm).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjNorm {
    /// l_inf ball: Cauchy projections, median of absolute values (the package's `l1_median`).
    LinfMedian,
    /// l2 ball: normal projections, root mean square (the package's `l2_normal`).
    L2Normal,
}

/// How to build a projected dual network.
#[derive(Debug, Clone)]
pub struct ProjectionConfig {
    /// Number of projections per source.
    pub k: usize,
    /// The input set's norm.
    pub norm: ProjNorm,
    /// Seed: the same seed gives the same projections; the input and every ReLU layer draw from
    /// their own streams of it (stream 0 and the node index).
    pub seed: u64,
    /// Radius of the input ball.
    pub eps: Epsilon,
    /// Clip the l_inf ball to the box `[lo, hi]` (l_inf only).
    pub bounded: Option<(f64, f64)>,
    /// `Some(delta)`: inflate every estimate by `1/(1-ε)` with `ε` such that all estimates the
    /// network makes over-estimate their norms with probability at least `1 - delta`.
    pub inflate: Option<f64>,
    /// When a ReLU layer is projected.
    pub rule: ReluRule,
}

impl ProjectionConfig {
    /// l_inf ball of radius `eps`, `k` Cauchy projections, median estimator.
    pub fn linf(eps: impl Into<Epsilon>, k: usize, seed: u64) -> Self {
        ProjectionConfig {
            k,
            norm: ProjNorm::LinfMedian,
            seed,
            eps: eps.into(),
            bounded: None,
            inflate: None,
            rule: ReluRule::PerExample,
        }
    }
    /// l2 ball of radius `eps`: `k` normal projections for the input, Cauchy for ReLU layers.
    pub fn l2(eps: impl Into<Epsilon>, k: usize, seed: u64) -> Self {
        ProjectionConfig { norm: ProjNorm::L2Normal, ..Self::linf(eps, k, seed) }
    }
    /// The threat model these projections estimate: the ball of [`ProjectionConfig::norm`]
    /// and radius `eps`, clipped as `bounded` says (its exact set is used where the input has
    /// at most `k` features).
    pub fn threat_model(&self) -> ThreatModel {
        let norm = match self.norm {
            ProjNorm::LinfMedian => BallNorm::Linf,
            ProjNorm::L2Normal => BallNorm::L2,
        };
        ThreatModel { norm, eps: self.eps.clone(), clip: self.bounded }
    }
    /// Clips the l_inf ball to `[lo, hi]`.
    pub fn bounded(mut self, lo: f64, hi: f64) -> Self {
        self.bounded = Some((lo, hi));
        self
    }
    /// Inflates the estimates so the bound holds with probability at least `1 - delta`.
    pub fn inflate(mut self, delta: f64) -> Self {
        self.inflate = Some(delta);
        self
    }
    /// Sets the rule for projecting ReLU layers.
    pub fn rule(mut self, rule: ReluRule) -> Self {
        self.rule = rule;
        self
    }
}

/// Is the input (with `width` features per example) projected?
pub fn input_projected(width: usize, k: usize) -> bool {
    width > k
}

/// How many norm estimates a projected dual network for this batch can make, by estimator:
/// every projected source (the input if projected, every ReLU layer that can have more than `k`
/// unstable units) estimates one norm per unit of every later activation's input, per example.
/// Counts every ReLU layer that *may* be projected, so it is an upper bound for the union bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EstimateCount {
    /// Median estimates (Cauchy projections: l_inf input and ReLU layers).
    pub median: usize,
    /// Root-mean-square estimates (normal projections: l2 input).
    pub normal: usize,
}

impl EstimateCount {
    /// All estimates.
    pub fn total(&self) -> usize {
        self.median + self.normal
    }
}

/// Output shapes (without batch) of every node for input `x`, by a nominal forward pass with
/// activations taken as the identity (only the shapes are used).
fn node_widths(x: &Tensor, nodes: &[DualNode]) -> Result<Vec<usize>> {
    let b = x.dim(0)?;
    let mut outs: Vec<Option<Tensor>> = vec![Some(x.narrow(0, 0, 1.min(b))?.unsqueeze(1)?)];
    for (i, node) in nodes.iter().enumerate() {
        let t = i + 1;
        let out = match node {
            DualNode::Affine(a) => {
                let idx = a.inputs().indices(t);
                let xs: Vec<Option<&Tensor>> = idx.iter().map(|i| i.and_then(|i| outs[i].as_ref())).collect();
                a.forward(&xs, true)?
            }
            DualNode::Activation(_) => outs[t - 1].clone(),
        };
        outs.push(out);
    }
    outs.iter()
        .map(|o| o.as_ref().map(|o| o.elem_count()).ok_or_else(|| DualError::shape("a layer produced no output")))
        .collect()
}

/// Counts the estimates (see [`EstimateCount`]) for inputs `x` and the network `nodes`.
pub fn count_estimates(x: &Tensor, nodes: &[DualNode], cfg: &ProjectionConfig) -> Result<EstimateCount> {
    let b = x.dim(0)?;
    let widths = node_widths(x, nodes)?;
    let may_project = |width: usize| match cfg.rule {
        ReluRule::PerExample => width > cfg.k,
        ReluRule::BatchTotal => b * width > cfg.k,
    };
    let input = input_projected(widths[0], cfg.k);
    let mut relu_sources = 0usize;
    let mut count = EstimateCount::default();
    for (i, node) in nodes.iter().enumerate() {
        if let DualNode::Activation(_) = node {
            let units = widths[i]; // the activation's input is output i = t - 1
            if input {
                match cfg.norm {
                    ProjNorm::LinfMedian => count.median += b * units,
                    ProjNorm::L2Normal => count.normal += b * units,
                }
            }
            count.median += b * units * relu_sources;
            if counts_as_relu(node) && may_project(units) {
                relu_sources += 1;
            }
        }
    }
    Ok(count)
}

/// The two-sided relative error `ε` of [`median_epsilon`] for the number of median estimates
/// this network makes on `x`: with probability at least `1 - delta` every median estimate lies
/// within `(1 ± ε)` of its true l1 norm.
pub fn epsilon_from_model(x: &Tensor, nodes: &[DualNode], cfg: &ProjectionConfig, delta: f64) -> Result<f64> {
    let m = count_estimates(x, nodes, cfg)?;
    median_epsilon(cfg.k, m.total(), delta)
}

/// Relative errors used to inflate the estimates (`0` when not inflating).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Inflation {
    /// For median (Cauchy) estimates.
    pub median: f64,
    /// For root-mean-square (normal) estimates.
    pub normal: f64,
}

/// The one-sided relative errors for `cfg.inflate = Some(delta)`: both solve
/// `m·(failure per estimate) ≤ delta` with `m` the total count, so the union bound over all
/// estimates of both kinds gives at most `delta`.
pub fn inflation(x: &Tensor, nodes: &[DualNode], cfg: &ProjectionConfig) -> Result<Inflation> {
    let Some(delta) = cfg.inflate else { return Ok(Inflation::default()) };
    let m = count_estimates(x, nodes, cfg)?.total();
    Ok(Inflation { median: median_epsilon_lower(cfg.k, m, delta)?, normal: normal_epsilon_lower(cfg.k, m, delta)? })
}

/// The input set of `cfg` for `x`: projected when the input has more than `k` features, exact
/// otherwise.
pub fn projected_input(x: &Tensor, cfg: &ProjectionConfig, infl: &Inflation) -> Result<Box<dyn DualSource>> {
    let (_, width) = validate_input(x)?;
    let proj = input_projected(width, cfg.k);
    Ok(match (cfg.norm, cfg.bounded, proj) {
        (ProjNorm::L2Normal, Some(_), _) => {
            return Err(DualError::invalid("an l2 ball cannot be clipped to a box"));
        }
        (ProjNorm::LinfMedian, None, true) => {
            Box::new(InfBallProj::new(x, cfg.eps.clone(), cfg.k, cfg.seed)?.inflate(infl.median)?)
        }
        (ProjNorm::LinfMedian, Some((lo, hi)), true) => {
            Box::new(InfBallProjBounded::new(x, cfg.eps.clone(), lo, hi, cfg.k, cfg.seed)?.inflate(infl.median)?)
        }
        (ProjNorm::L2Normal, None, true) => {
            Box::new(L2BallProj::new(x, cfg.eps.clone(), cfg.k, cfg.seed)?.inflate(infl.normal)?)
        }
        (_, _, false) => cfg.threat_model().exact_set(x)?,
    })
}

/// The activation's kind, if the node is one.
fn activation_kind(node: &DualNode) -> Option<ActivationKind> {
    match node {
        DualNode::Activation(a) => Some(a.kind()),
        DualNode::Affine(_) => None,
    }
}

/// Is this node an exactly relaxed ReLU (the only activation the projections know)?
fn is_relu(node: &DualNode) -> bool {
    activation_kind(node) == Some(ActivationKind::Relu)
}

/// A ReLU or an already projected ReLU.
fn counts_as_relu(node: &DualNode) -> bool {
    matches!(activation_kind(node), Some(ActivationKind::Relu | ActivationKind::ReluProjected))
}

/// The projection policy, chosen per activation by its [`ActivationKind`]: every exactly relaxed
/// ReLU becomes a [`DualReLUProj`] drawing from stream `t` (its 1-based node index); other
/// nodes are kept.
pub fn project_nodes(nodes: Vec<DualNode>, cfg: &ProjectionConfig, infl: &Inflation) -> Result<Vec<DualNode>> {
    nodes
        .into_iter()
        .enumerate()
        .map(|(i, node)| {
            if is_relu(&node) {
                let act = DualReLUProj::new(cfg.k, cfg.seed, (i + 1) as u64).inflate(infl.median)?.with_rule(cfg.rule);
                Ok(DualNode::Activation(Box::new(act)))
            } else {
                Ok(node)
            }
        })
        .collect()
}

/// The projected dual network (layer-wise bounds *estimated*) for inputs `x` and the network
/// `nodes` (e.g. from `Network::dual_nodes`): the input projected if it has more than `k`
/// features, every ReLU layer with more than `k` unstable units projected (see [`ReluRule`]).
///
/// The bounds are estimates, not certificates; with `cfg.inflate = Some(delta)` they hold with
/// probability at least `1 - delta` (see docs/PROJECTIONS.md for the caveats). Certify with the
/// exact network (`Network::dual`).
pub fn projected_dual(
    x: &Tensor,
    nodes: Vec<DualNode>,
    cfg: &ProjectionConfig,
    opts: &DualOptions,
) -> Result<DualNetwork> {
    if cfg.k == 0 {
        return Err(DualError::invalid("the number of projections k must be positive"));
    }
    let infl = inflation(x, &nodes, cfg)?;
    let input = projected_input(x, cfg, &infl)?;
    let nodes = project_nodes(nodes, cfg, &infl)?;
    DualNetwork::build(x, input, nodes, opts)
}
