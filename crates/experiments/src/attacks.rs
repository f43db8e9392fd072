//! Gradient-based adversarial attacks (FGSM, l_inf PGD, l2 PGD) against any differentiable model.
//!
//! The model is a closure `Fn(&Tensor) -> candle_core::Result<Tensor>` mapping a batch of inputs
//! `[b, ...]` to logits `[b, k]`, so this module depends on nothing but Candle. Gradients with
//! respect to the input come from Candle's autograd: the current iterate is made a
//! [`candle_core::Var`], the cross-entropy is back-propagated, and the iterate is detached again
//! after each step.
//!
//! [`pgd`] follows the attack of Wong & Kolter's `convex_adversarial` evaluation code: `steps`
//! steps of `step_size * sign(grad)` on the cross-entropy, each followed by projection onto the
//! l_inf ball of radius `epsilon` around the clean input, returning the last iterate. That code
//! starts at the clean point and does not clip to the data range; both are options here.

use candle_core::{DType, Tensor, Var, D};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Settings of a projected-gradient attack.
#[derive(Clone, Debug, PartialEq)]
pub struct PgdConfig {
    /// Radius of the threat ball (l_inf for [`pgd`], l2 for [`pgd_l2`]).
    pub epsilon: f64,
    /// Length of each step (0.01 in the papers).
    pub step_size: f64,
    /// Number of steps (100 in the papers).
    pub steps: usize,
    /// Data range to stay in, e.g. `Some((0.0, 1.0))` for images; `None` (the papers) leaves the
    /// points unclipped.
    pub clip: Option<(f64, f64)>,
    /// Start from a uniformly random point of the ball instead of the clean input.
    pub random_start: bool,
    /// Seed of the random start.
    pub seed: u64,
}

impl PgdConfig {
    /// The papers' settings (step 0.01, 100 steps, no clipping, no random start) at radius
    /// `epsilon`.
    pub fn new(epsilon: f64) -> Self {
        Self { epsilon, step_size: 0.01, steps: 100, clip: None, random_start: false, seed: 0 }
    }
}

impl Default for PgdConfig {
    /// `PgdConfig::new(0.1)`.
    fn default() -> Self {
        Self::new(0.1)
    }
}

/// An error unless there is one label per example.
fn check_labels(y: &[u32], batch: usize) -> candle_core::Result<()> {
    if y.len() != batch {
        candle_core::bail!("{} labels for a batch of {batch}", y.len());
    }
    Ok(())
}

/// [`dual_core::cross_entropy_per_example`] (the workspace's one cross-entropy) with Candle's
/// error type.
fn cross_entropy_per_example(logits: &Tensor, y: &[u32]) -> candle_core::Result<Tensor> {
    dual_core::cross_entropy_per_example(logits, y).map_err(|e| match e {
        dual_core::DualError::Candle(e) => e,
        e => candle_core::Error::wrap(e),
    })
}

/// Mean cross-entropy of `logits` `[b, k]` against labels `y` (a scalar tensor):
/// [`dual_core::cross_entropy`] with Candle's error type.
pub fn cross_entropy(logits: &Tensor, y: &[u32]) -> candle_core::Result<Tensor> {
    cross_entropy_per_example(logits, y)?.mean_all()
}

/// Per-example cross-entropy of `logits` `[b, k]` against `y`, as host values.
pub fn cross_entropy_values(logits: &Tensor, y: &[u32]) -> candle_core::Result<Vec<f64>> {
    cross_entropy_per_example(logits, y)?.to_dtype(DType::F64)?.to_vec1()
}

/// Gradient of the summed cross-entropy with respect to the input `x` (same shape as `x`).
/// Summing rather than averaging keeps the per-example gradients independent of the batch size;
/// the attacks only use their sign or direction.
fn input_gradient<F>(model: &F, x: &Tensor, y: &[u32]) -> candle_core::Result<Tensor>
where
    F: Fn(&Tensor) -> candle_core::Result<Tensor>,
{
    let var = Var::from_tensor(&x.detach())?;
    let logits = model(var.as_tensor())?;
    let loss = cross_entropy_per_example(&logits, y)?.sum_all()?;
    let grads = loss.backward()?;
    match grads.get(var.as_tensor()) {
        Some(g) => Ok(g.detach()),
        // The loss does not depend on the input: the gradient is zero.
        None => x.zeros_like(),
    }
}

/// Clips `x` to `clip`, if given.
fn clip_to(x: &Tensor, clip: Option<(f64, f64)>) -> candle_core::Result<Tensor> {
    match clip {
        Some((lo, hi)) => x.clamp(lo, hi),
        None => Ok(x.clone()),
    }
}

/// FGSM: `x + epsilon * sign(grad_x CE(model(x), y))`, then clipped to `clip` if given.
pub fn fgsm<F>(model: F, x: &Tensor, y: &[u32], epsilon: f64, clip: Option<(f64, f64)>) -> candle_core::Result<Tensor>
where
    F: Fn(&Tensor) -> candle_core::Result<Tensor>,
{
    check_labels(y, x.dim(0)?)?;
    let g = input_gradient(&model, x, y)?;
    let x_adv = (x.detach() + (g.sign()? * epsilon)?)?;
    clip_to(&x_adv, clip)
}

/// Uniform noise in `[-epsilon, epsilon]` with the shape, dtype and device of `x`.
fn uniform_like(x: &Tensor, epsilon: f64, rng: &mut StdRng) -> candle_core::Result<Tensor> {
    let data: Vec<f64> = (0..x.elem_count()).map(|_| rng.random_range(-1.0..=1.0) * epsilon).collect();
    Tensor::from_vec(data, x.shape(), x.device())?.to_dtype(x.dtype())
}

/// PGD under the l_inf threat model (the papers' attack): `cfg.steps` steps of
/// `cfg.step_size * sign(grad)` on the cross-entropy, each followed by projection onto the l_inf
/// ball of radius `cfg.epsilon` around `x` (and onto `cfg.clip` if given). Returns the last
/// iterate, with the shape of `x`.
pub fn pgd<F>(model: F, x: &Tensor, y: &[u32], cfg: &PgdConfig) -> candle_core::Result<Tensor>
where
    F: Fn(&Tensor) -> candle_core::Result<Tensor>,
{
    let x0 = x.detach();
    check_labels(y, x0.dim(0)?)?;
    // Box = ball ∩ clip range, so one clamp projects onto both.
    let mut lo = (&x0 - cfg.epsilon)?;
    let mut hi = (&x0 + cfg.epsilon)?;
    if let Some((cmin, cmax)) = cfg.clip {
        lo = lo.clamp(cmin, cmax)?;
        hi = hi.clamp(cmin, cmax)?;
    }
    let project = |t: &Tensor| -> candle_core::Result<Tensor> { t.maximum(&lo)?.minimum(&hi) };

    let mut x_adv = if cfg.random_start {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        project(&(&x0 + uniform_like(&x0, cfg.epsilon, &mut rng)?)?)?
    } else {
        project(&x0)?
    };
    for _ in 0..cfg.steps {
        let g = input_gradient(&model, &x_adv, y)?;
        let stepped = (&x_adv + (g.sign()? * cfg.step_size)?)?;
        x_adv = project(&stepped)?.detach();
    }
    Ok(x_adv)
}

/// Per-example l2 norms of `t` `[b, ...]` as a `[b, 1, ..., 1]` tensor broadcastable to `t`.
fn per_example_norm(t: &Tensor) -> candle_core::Result<Tensor> {
    let b = t.dim(0)?;
    let mut shape = vec![1usize; t.rank()];
    shape[0] = b;
    t.flatten_from(1)?.sqr()?.sum_keepdim(1)?.sqrt()?.reshape(shape)
}

/// Scales each example of `delta` so that its l2 norm is at most `epsilon`.
fn project_l2(delta: &Tensor, epsilon: f64) -> candle_core::Result<Tensor> {
    let norm = per_example_norm(delta)?;
    // factor = min(1, eps / norm); the 1e-12 guards a zero norm (factor is then 1 anyway).
    let factor = (norm + 1e-12)?.recip()?.affine(epsilon, 0.0)?.clamp(0.0, 1.0)?;
    delta.broadcast_mul(&factor)
}

/// Standard normal samples (Box–Muller).
fn gaussian(n: usize, rng: &mut StdRng) -> Vec<f64> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        out.push(r * t.cos());
        out.push(r * t.sin());
    }
    out.truncate(n);
    out
}

/// Uniform samples from the l2 ball of radius `epsilon`, one per example of `x`.
fn uniform_l2_ball_like(x: &Tensor, epsilon: f64, rng: &mut StdRng) -> candle_core::Result<Tensor> {
    let b = x.dim(0)?;
    let d = x.elem_count() / b.max(1);
    let mut data = gaussian(x.elem_count(), rng);
    for row in data.chunks_mut(d.max(1)) {
        let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-300);
        let radius = epsilon * rng.random::<f64>().powf(1.0 / d as f64);
        row.iter_mut().for_each(|v| *v *= radius / norm);
    }
    Tensor::from_vec(data, x.shape(), x.device())?.to_dtype(x.dtype())
}

/// PGD under the l2 threat model: `cfg.steps` steps of `cfg.step_size * grad / ||grad||_2`
/// (per example), each followed by projection onto the l2 ball of radius `cfg.epsilon` around
/// `x` and then clipping to `cfg.clip` if given (for a clean point inside the clip range,
/// clipping only moves coordinates towards it, so the result stays in the ball). Returns the
/// last iterate.
pub fn pgd_l2<F>(model: F, x: &Tensor, y: &[u32], cfg: &PgdConfig) -> candle_core::Result<Tensor>
where
    F: Fn(&Tensor) -> candle_core::Result<Tensor>,
{
    let x0 = x.detach();
    check_labels(y, x0.dim(0)?)?;
    let project = |t: &Tensor| -> candle_core::Result<Tensor> {
        let delta = project_l2(&(t - &x0)?, cfg.epsilon)?;
        clip_to(&(&x0 + delta)?, cfg.clip)
    };

    let mut x_adv = if cfg.random_start {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        project(&(&x0 + uniform_l2_ball_like(&x0, cfg.epsilon, &mut rng)?)?)?
    } else {
        clip_to(&x0, cfg.clip)?
    };
    for _ in 0..cfg.steps {
        let g = input_gradient(&model, &x_adv, y)?;
        let direction = g.broadcast_div(&(per_example_norm(&g)? + 1e-12)?)?;
        let stepped = (&x_adv + (direction * cfg.step_size)?)?;
        x_adv = project(&stepped)?.detach();
    }
    Ok(x_adv)
}

/// Number of examples whose predicted class `argmax(logits_i)` differs from `y_i`.
pub fn count_errors(logits: &Tensor, y: &[u32]) -> candle_core::Result<usize> {
    Ok(correct(logits, y)?.iter().filter(|c| !**c).count())
}

/// Per row: is the arg-max of `logits` (`[b, k]`) the label?
pub fn correct(logits: &Tensor, y: &[u32]) -> candle_core::Result<Vec<bool>> {
    let (b, _) = logits.dims2()?;
    if y.len() != b {
        candle_core::bail!("{} labels for {b} rows of logits", y.len());
    }
    let pred: Vec<u32> = logits.argmax(D::Minus1)?.to_dtype(DType::U32)?.to_vec1()?;
    Ok(pred.iter().zip(y).map(|(p, t)| p == t).collect())
}

/// The papers' evaluation: `(clean errors, errors under l_inf PGD)` on one batch.
pub fn pgd_error_counts<F>(model: F, x: &Tensor, y: &[u32], cfg: &PgdConfig) -> candle_core::Result<(usize, usize)>
where
    F: Fn(&Tensor) -> candle_core::Result<Tensor>,
{
    let clean = count_errors(&model(x)?, y)?;
    let x_adv = pgd(&model, x, y, cfg)?;
    let adv = count_errors(&model(&x_adv)?, y)?;
    Ok((clean, adv))
}
