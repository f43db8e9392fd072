//! A layer and its dual written outside the library, used together with the built-in layers.
//!
//! Run with `cargo run -p examples --example custom_dual_layer`.
//!
//! This file plays the part of a user's crate. It defines
//! * `ChannelAffine`, a per-channel scale and shift `y = a ⊙ x + b` (a frozen normalisation):
//!   the network layer (`nets::Layer`) and its dual (`dual_core::SingleInputAffine`);
//! * `MaskedInfBall`, an input set: an l_inf ball of radius ε on some pixels only, every other
//!   pixel fixed (`dual_core::DualSource`);
//!
//! then builds a small network from built-in layers and the custom one, computes certified bounds
//! for a few random inputs, and checks them against sampled points of the input set: every sampled
//! output must satisfy `J(c) ≤ cᵀ f(x')`. It also builds the same network with the ChannelAffine
//! folded into the convolution before it, from built-in layers only, and compares the bounds.
//!
//! `examples/tests/custom_layer.rs` includes this file and turns the same checks into tests.

use anyhow::{bail, ensure, Result};
use candle_core::{DType, Device, Tensor, Var};
use dual_core::{
    class_difference_c, DualError, DualNetwork, DualNode, DualOptions, DualSource, Result as DResult, SingleInputAffine,
};
use dual_layers::InfBall;
use nets::layers::{Conv2d, Flatten, Linear, ReLU};
use nets::{Layer, LayerSpec, Network, NetworkKind};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::ops::Range;

// ---------------------------------------------------------------------------------------------
// 1. The layer: what the network computes.
// ---------------------------------------------------------------------------------------------

/// `y[b, c, ...] = scale[c] · x[b, c, ...] + shift[c]` on inputs `[B, C, ...]` (`[B, C, H, W]`
/// after a convolution, or `[B, C]`). Both parameters are learnable.
pub struct ChannelAffine {
    pub scale: Var,
    pub shift: Var,
}

impl ChannelAffine {
    /// From `scale` and `shift`, both `[C]`.
    pub fn new(scale: &Tensor, shift: &Tensor) -> Result<Self> {
        ensure!(
            scale.rank() == 1 && scale.dims() == shift.dims(),
            "scale {:?} and shift {:?} must both be [C]",
            scale.dims(),
            shift.dims()
        );
        Ok(ChannelAffine { scale: Var::from_tensor(scale)?, shift: Var::from_tensor(shift)? })
    }

    /// The number of channels `C`.
    pub fn channels(&self) -> usize {
        self.scale.dims()[0]
    }
}

/// `v` (`[C]`) reshaped to broadcast against `[lead..., C, trailing...]`: `lead` leading and
/// `trailing` trailing axes of size 1.
fn per_channel(v: &Tensor, lead: usize, trailing: usize) -> candle_core::Result<Tensor> {
    let mut shape = vec![1; lead];
    shape.push(v.dim(0)?);
    shape.extend(std::iter::repeat_n(1, trailing));
    v.reshape(shape)
}

impl Layer for ChannelAffine {
    fn spec(&self) -> LayerSpec {
        // `config` is a serde_json::Value; parsing a string avoids a direct serde_json dependency.
        let config = format!(r#"{{"channels": {}}}"#, self.channels()).parse().expect("valid JSON");
        LayerSpec::Custom { kind: "ChannelAffine".into(), config }
    }

    fn forward(&self, xs: &[Option<&Tensor>]) -> candle_core::Result<Tensor> {
        let Some(x) = xs.last().copied().flatten() else { candle_core::bail!("ChannelAffine called without an input") };
        if x.rank() < 2 || x.dim(1)? != self.channels() {
            candle_core::bail!("ChannelAffine({}) got an input shaped {:?}", self.channels(), x.dims());
        }
        let trailing = x.rank() - 2;
        x.broadcast_mul(&per_channel(&nets::param(&self.scale), 1, trailing)?)?.broadcast_add(&per_channel(
            &nets::param(&self.shift),
            1,
            trailing,
        )?)
    }

    fn dual(&self, xs: &[Option<&Tensor>]) -> DResult<DualNode> {
        let x =
            xs.last().copied().flatten().ok_or_else(|| DualError::shape("ChannelAffine called without an input"))?;
        if x.rank() < 2 || x.dims()[1] != self.channels() {
            return Err(DualError::shape(format!(
                "ChannelAffine({}) got an input shaped {:?}",
                self.channels(),
                x.dims()
            )));
        }
        // `nets::param`: the Var itself while training (the bound stays differentiable in the
        // parameters), a detached view inside `nets::no_grad` (certification records no graph).
        Ok(DualNode::Affine(Box::new(DualChannelAffine {
            scale: nets::param(&self.scale),
            shift: nets::param(&self.shift),
        })))
    }

    fn params(&self) -> Vec<(String, Var)> {
        vec![("scale".into(), self.scale.clone()), ("shift".into(), self.shift.clone())]
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Its dual: the same map on propagated columns, its transpose and its bias term.
// ---------------------------------------------------------------------------------------------

/// The dual of [`ChannelAffine`]. The layer is `A x + b` with `A = diag(scale)` repeated over the
/// spatial positions and `b = shift` broadcast the same way, so
/// * forward: `A x (+ b)` on columns `[B, n, C, ...]`,
/// * transpose: `Aᵀ ν = scale ⊙ ν` (A is diagonal),
/// * bias term: `νᵀ b = Σ_c shift[c] Σ_{h,w} ν[c, h, w]`, as `[B, n]`.
pub struct DualChannelAffine {
    pub scale: Tensor,
    pub shift: Tensor,
}

/// A single-input layer implements the short form, `SingleInputAffine` (one tensor in, one out);
/// `DualAffine`, the engine's general form for layers with several inputs, comes with it.
impl SingleInputAffine for DualChannelAffine {
    fn name(&self) -> String {
        format!("ChannelAffine({})", self.scale.dims()[0])
    }

    fn forward(&self, x: &Tensor, with_bias: bool) -> DResult<Tensor> {
        let y = x.broadcast_mul(&per_channel(&self.scale, 2, x.rank() - 3)?)?; // [B, n, C, ...]
        Ok(if with_bias { y.broadcast_add(&per_channel(&self.shift, 2, x.rank() - 3)?)? } else { y })
    }

    /// `|a| ⊙ r` per channel: the radius of the output box, for IBP and CROWN-IBP.
    fn forward_abs(&self, r: &Tensor) -> DResult<Tensor> {
        Ok(r.broadcast_mul(&per_channel(&self.scale.abs()?, 2, r.rank() - 3)?)?)
    }

    fn transpose(&self, nu: &Tensor) -> DResult<Tensor> {
        Ok(nu.broadcast_mul(&per_channel(&self.scale, 2, nu.rank() - 3)?)?)
    }

    fn bias_term(&self, nu: &Tensor) -> DResult<Option<Tensor>> {
        let d = nu.dims();
        let (b, n, c) = (d[0], d[1], d[2]);
        let rest: usize = d[3..].iter().product();
        // Sum over the spatial positions, then a dot product with the shift per channel.
        let per_c = nu.reshape((b * n, c, rest))?.sum(2)?; // [B·n, C]
        let t = per_c.matmul(&self.shift.reshape((c, 1))?)?; // [B·n, 1]
        Ok(Some(t.reshape((b, n))?))
    }
}

// ---------------------------------------------------------------------------------------------
// 3. A custom input set: an l_inf ball on the masked pixels only.
// ---------------------------------------------------------------------------------------------

/// `{x' : |x'_p - x_p| ≤ ε where mask_p, x'_p = x_p elsewhere}`: e.g. a patch attack. Only the
/// masked pixels are free variables, so only they become columns (cheaper than a full ball).
pub struct MaskedInfBall {
    x: Tensor,
    eps: f64,
    /// Flat indices (within one example) of the masked pixels.
    free: Vec<usize>,
    /// The mask as `[1, 1, K]` in the dtype of `x`.
    mask: Tensor,
}

impl MaskedInfBall {
    /// The ball around `x` (`[B, *in_shape]`); `mask` has one entry per pixel of one example.
    pub fn new(x: &Tensor, eps: f64, mask: &[bool]) -> Result<Self> {
        let b = x.dim(0)?;
        let k = x.elem_count() / b;
        ensure!(mask.len() == k, "mask has {} entries; an example has {k} pixels", mask.len());
        ensure!(eps.is_finite() && eps >= 0.0, "epsilon must be finite and non-negative, got {eps}");
        let free = (0..k).filter(|&p| mask[p]).collect();
        let m: Vec<f64> = mask.iter().map(|&v| if v { 1.0 } else { 0.0 }).collect();
        let mask = Tensor::from_vec(m, (1, 1, k), x.device())?.to_dtype(x.dtype())?;
        Ok(MaskedInfBall { x: x.clone(), eps, free, mask })
    }

    /// The radius per pixel, `ε · mask`, shaped like one example (for sampling, or for the
    /// equivalent per-pixel `Epsilon::Tensor` of the built-in ball).
    pub fn radius(&self) -> Result<Tensor> {
        Ok(self.mask.affine(self.eps, 0.0)?.reshape(&self.x.dims()[1..])?)
    }
}

impl DualSource for MaskedInfBall {
    fn num_columns(&self) -> usize {
        self.free.len()
    }

    /// Column `r` is `ε e_{free[r]}`, the same for every example: `[B, len, *in_shape]`.
    fn columns(&self, range: Range<usize>) -> DResult<Tensor> {
        let b = self.x.dim(0)?;
        let k = self.x.elem_count() / b;
        let len = range.len();
        let mut data = vec![0f64; len * k];
        for (j, r) in range.enumerate() {
            data[j * k + self.free[r]] = self.eps;
        }
        let cols = Tensor::from_vec(data, (1, len, k), self.x.device())?.to_dtype(self.x.dtype())?;
        let mut shape = vec![b, len];
        shape.extend_from_slice(&self.x.dims()[1..]);
        Ok(cols.broadcast_as((b, len, k))?.contiguous()?.reshape(shape)?)
    }

    /// Each free variable `t_r ∈ [-1, 1]` moves unit `j` by `t_r P[r, j]`: the terms are
    /// `∓ Σ_r |P[r, j]|` (the ε is already in the columns).
    fn column_terms(&self, p: &Tensor, _range: Range<usize>) -> DResult<(Tensor, Tensor)> {
        let s = p.abs()?.sum(1)?; // [B, K]
        Ok((s.neg()?, s))
    }

    /// `min gᵀ δ = -ε Σ_{p masked} |g_p|`, as `[B, n]`.
    fn lower_term(&self, g: &Tensor) -> DResult<Tensor> {
        let g = g.flatten_from(2)?.abs()?.broadcast_mul(&self.mask)?;
        Ok(g.sum(2)?.affine(-self.eps, 0.0)?)
    }

    fn name(&self) -> String {
        format!("MaskedInfBall({} free pixels)", self.free.len())
    }
}

// ---------------------------------------------------------------------------------------------
// 4. A small network mixing built-in layers and the custom one.
// ---------------------------------------------------------------------------------------------

/// Input shape of the example network.
pub const INPUT: [usize; 3] = [1, 8, 8];
/// Number of classes.
pub const CLASSES: usize = 10;

/// The parameters of the example network, as plain tensors.
pub struct Params {
    pub conv1: (Tensor, Tensor),
    pub affine: (Tensor, Tensor),
    pub conv2: (Tensor, Tensor),
    pub fc1: (Tensor, Tensor),
    pub fc2: (Tensor, Tensor),
}

fn uniform(rng: &mut StdRng, shape: &[usize], lo: f64, hi: f64, dtype: DType) -> Result<Tensor> {
    let n = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)?)
}

impl Params {
    /// Random parameters (PyTorch-like uniform init; scales of both signs, away from 0).
    pub fn random(seed: u64, dtype: DType) -> Result<Self> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut layer = |shape: &[usize], out: usize, fan_in: usize| -> Result<(Tensor, Tensor)> {
            let b = 1.0 / (fan_in as f64).sqrt();
            Ok((uniform(&mut rng, shape, -b, b, dtype)?, uniform(&mut rng, &[out], -b, b, dtype)?))
        };
        let conv1 = layer(&[4, 1, 3, 3], 4, 9)?;
        let conv2 = layer(&[8, 4, 4, 4], 8, 64)?;
        let fc1 = layer(&[32, 128], 32, 128)?;
        let fc2 = layer(&[CLASSES, 32], CLASSES, 32)?;
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        let scale: Vec<f64> = (0..4)
            .map(|_| {
                let s = rng.random_range(0.5..2.0);
                if rng.random_bool(0.25) {
                    -s
                } else {
                    s
                }
            })
            .collect();
        let scale = Tensor::from_vec(scale, 4, &Device::Cpu)?.to_dtype(dtype)?;
        let shift = uniform(&mut rng, &[4], -0.2, 0.2, dtype)?;
        Ok(Params { conv1, affine: (scale, shift), conv2, fc1, fc2 })
    }
}

fn conv(p: &(Tensor, Tensor), stride: usize, padding: usize) -> Result<Box<dyn Layer>> {
    Ok(Box::new(Conv2d { weight: Var::from_tensor(&p.0)?, bias: Some(Var::from_tensor(&p.1)?), stride, padding }))
}

fn linear(p: &(Tensor, Tensor)) -> Result<Box<dyn Layer>> {
    Ok(Box::new(Linear { weight: Var::from_tensor(&p.0)?, bias: Some(Var::from_tensor(&p.1)?) }))
}

/// Conv(1→4, k3) · ChannelAffine(4) · ReLU · Conv(4→8, k4, s2) · ReLU · Flatten · Linear(128→32)
/// · ReLU · Linear(32→10).
pub fn network(p: &Params) -> Result<Network> {
    let layers: Vec<Box<dyn Layer>> = vec![
        conv(&p.conv1, 1, 1)?,
        Box::new(ChannelAffine::new(&p.affine.0, &p.affine.1)?),
        Box::new(ReLU),
        conv(&p.conv2, 2, 1)?,
        Box::new(ReLU),
        Box::new(Flatten),
        linear(&p.fc1)?,
        Box::new(ReLU),
        linear(&p.fc2)?,
    ];
    Ok(Network::new(NetworkKind::Sequential, "custom-affine", &INPUT, layers)?)
}

/// The same function from built-in layers only: `a ⊙ (W x + b) + s = (a ⊙ W) x + (a ⊙ b + s)`,
/// with `a` scaling the output channels of the convolution. An Identity keeps the layer indices
/// (and so the positions of the bounds) the same as in [`network`].
pub fn folded_network(p: &Params) -> Result<Network> {
    let (a, s) = &p.affine;
    let w = p.conv1.0.broadcast_mul(&a.reshape((4, 1, 1, 1))?)?;
    let b = ((&p.conv1.1 * a)? + s)?;
    let layers: Vec<Box<dyn Layer>> = vec![
        conv(&(w, b), 1, 1)?,
        Box::new(nets::layers::Identity),
        Box::new(ReLU),
        conv(&p.conv2, 2, 1)?,
        Box::new(ReLU),
        Box::new(Flatten),
        linear(&p.fc1)?,
        Box::new(ReLU),
        linear(&p.fc2)?,
    ];
    Ok(Network::new(NetworkKind::Sequential, "folded", &INPUT, layers)?)
}

// ---------------------------------------------------------------------------------------------
// 5. Checking soundness by sampling.
// ---------------------------------------------------------------------------------------------

/// Random inputs in `[0, 1]`, `[B, *INPUT]`.
pub fn random_inputs(seed: u64, b: usize, dtype: DType) -> Result<Tensor> {
    let mut shape = vec![b];
    shape.extend_from_slice(&INPUT);
    uniform(&mut StdRng::seed_from_u64(seed), &shape, 0.0, 1.0, dtype)
}

/// The predicted classes of `net` on `x`.
pub fn predictions(net: &Network, x: &Tensor) -> Result<Vec<u32>> {
    Ok(net.forward(x)?.argmax(1)?.to_vec1::<u32>()?)
}

/// What sampling found.
pub struct Sampled {
    /// Per example and class `j`: the smallest sampled margin `f_y(x') - f_j(x')`.
    pub min_margin: Vec<Vec<f64>>,
    /// The largest amount by which a sampled pre-activation left its bounds `[l, u]` (≤ 0 when
    /// every sample respected them).
    pub bound_violation: f64,
}

/// Samples `n` points `x' = x + radius ⊙ u` per example (`radius` shaped like one example): half
/// at vertices (`u ∈ {-1, 1}`), half uniform in the box. Records the smallest margins and how far
/// any pre-activation strays outside the bounds of `dual`.
pub fn sample(
    net: &Network,
    dual: &DualNetwork,
    x: &Tensor,
    y: &[u32],
    radius: &Tensor,
    n: usize,
    seed: u64,
) -> Result<Sampled> {
    let mut rng = StdRng::seed_from_u64(seed);
    let b = x.dim(0)?;
    let k = x.elem_count() / b;
    let u: Vec<f64> = (0..n * b * k)
        .map(|i| {
            if (i / (b * k)).is_multiple_of(2) {
                if rng.random_bool(0.5) {
                    1.0
                } else {
                    -1.0
                }
            } else {
                rng.random_range(-1.0..=1.0)
            }
        })
        .collect();
    let mut shape = vec![n, b];
    shape.extend_from_slice(&x.dims()[1..]);
    let u = Tensor::from_vec(u, shape, x.device())?.to_dtype(x.dtype())?;
    let xs = x.unsqueeze(0)?.broadcast_add(&u.broadcast_mul(radius)?)?; // [n, B, ...]
    let mut flat = vec![n * b];
    flat.extend_from_slice(&x.dims()[1..]);
    let outs = net.forward_all(&xs.reshape(flat)?)?;
    // Layer-wise bounds: the input of activation t is output t - 1.
    let mut bound_violation = f64::NEG_INFINITY;
    for lb in dual.bounds() {
        let v = outs[lb.layer - 1].reshape((n, b, ()))?;
        let lo = lb.lower.reshape((1, b, ()))?;
        let up = lb.upper.reshape((1, b, ()))?;
        let over = v.broadcast_sub(&up)?.max_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let under = lo.broadcast_sub(&v)?.max_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        bound_violation = bound_violation.max(over).max(under);
    }
    // Margins f_y - f_j.
    let logits = outs.last().unwrap().to_dtype(DType::F64)?.reshape((n, b, CLASSES))?.to_vec3::<f64>()?;
    let mut min_margin = vec![vec![f64::INFINITY; CLASSES]; b];
    for sample in &logits {
        for (i, f) in sample.iter().enumerate() {
            for j in 0..CLASSES {
                let m = f[y[i] as usize] - f[j];
                min_margin[i][j] = min_margin[i][j].min(m);
            }
        }
    }
    Ok(Sampled { min_margin, bound_violation })
}

/// `J(e_y - e_j)` for every example and class, `[B][classes]`.
pub fn objectives(dual: &DualNetwork, y: &[u32]) -> Result<Vec<Vec<f64>>> {
    let c = class_difference_c(y, CLASSES, dual.dtype(), &Device::Cpu)?;
    Ok(dual.objective(&c)?.to_dtype(DType::F64)?.to_vec2::<f64>()?)
}

/// The largest `J(e_y - e_j) - min sampled (f_y(x') - f_j(x'))` over examples and classes
/// `j ≠ y`: must be ≤ 0 (up to rounding) if the bound is sound.
pub fn worst_gap(j: &[Vec<f64>], s: &Sampled, y: &[u32]) -> f64 {
    let mut worst = f64::NEG_INFINITY;
    for (i, (jr, mr)) in j.iter().zip(&s.min_margin).enumerate() {
        for c in (0..CLASSES).filter(|&c| c != y[i] as usize) {
            worst = worst.max(jr[c] - mr[c]);
        }
    }
    worst
}

fn report(name: &str, net: &Network, dual: &DualNetwork, x: &Tensor, y: &[u32], radius: &Tensor) -> Result<()> {
    let j = objectives(dual, y)?;
    let s = sample(net, dual, x, y, radius, 2000, 7)?;
    println!("{name}: unstable ReLUs per layer and example {:?}", dual.unstable_counts());
    println!("  example  label  bound min_j J(e_y-e_j)  sampled min_j f_y-f_j  certified");
    for (i, (jr, mr)) in j.iter().zip(&s.min_margin).enumerate() {
        let yi = y[i] as usize;
        let (jb, mb) = (0..CLASSES)
            .filter(|&c| c != yi)
            .fold((f64::INFINITY, f64::INFINITY), |(a, b), c| (a.min(jr[c]), b.min(mr[c])));
        println!("  {i:>7}  {yi:>5}  {jb:>22.6}  {mb:>21.6}  {}", jb > 0.0);
    }
    let gap = worst_gap(&j, &s, y);
    println!("  worst J(c) - sampled cᵀf(x') = {gap:.3e} (must be ≤ 0)");
    println!("  worst sampled pre-activation outside [l, u] = {:.3e} (must be ≤ 0 up to rounding)", s.bound_violation);
    if gap > 1e-9 || s.bound_violation > 1e-9 {
        bail!("{name}: a sampled point violates the certified bound");
    }
    Ok(())
}

fn main() -> Result<()> {
    dual_layers::cpu::exit_if_unsupported();
    let dtype = DType::F64;
    let p = Params::random(0, dtype)?;
    let net = network(&p)?;
    println!("architecture:\n{}", net.spec().to_json());
    let x = random_inputs(1, 4, dtype)?;
    let y = predictions(&net, &x)?;
    let opts = DualOptions::default();

    // The full l_inf ball.
    let eps = 0.04;
    let dual = net.dual(&x, Box::new(InfBall::new(&x, eps)?), &opts)?;
    let radius = Tensor::full(eps, INPUT.to_vec(), &Device::Cpu)?.to_dtype(dtype)?;
    report(&format!("l_inf ball, eps {eps}"), &net, &dual, &x, &y, &radius)?;

    // The same network with the ChannelAffine folded into the convolution.
    let folded = folded_network(&p)?;
    let dual_f = folded.dual(&x, Box::new(InfBall::new(&x, eps)?), &opts)?;
    let (j, jf) = (objectives(&dual, &y)?, objectives(&dual_f, &y)?);
    let diff = j.iter().flatten().zip(jf.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    println!("folded into the conv (built-in layers only): max |ΔJ| = {diff:.3e}");
    ensure!(diff < 1e-9, "the custom layer and its folded form disagree");

    // A 4x4 patch in the middle of the image, larger radius.
    let mask: Vec<bool> = (0..64).map(|p| (2..6).contains(&(p / 8)) && (2..6).contains(&(p % 8))).collect();
    let eps = 0.15;
    let ball = MaskedInfBall::new(&x, eps, &mask)?;
    let radius = ball.radius()?;
    let dual = net.dual(&x, Box::new(ball), &opts)?;
    report(&format!("4x4 patch, eps {eps}"), &net, &dual, &x, &y, &radius)?;
    println!("all sampled points respect the certified bounds");
    Ok(())
}
