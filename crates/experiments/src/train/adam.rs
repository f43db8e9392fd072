//! Adam's update of one parameter in one pass over its data (CPU, f32 / f64).
//!
//! With `g ← g + λθ` (weight decay `λ`, skipped when 0), step `t`, learning rate `η`:
//!
//! `m ← β₁m + (1 − β₁)g`, `v ← β₂v + (1 − β₂)g²`, `θ ← θ − η · (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε)`
//!
//! (a missing `m` or `v`, the first step, counts as 0 and its product is left out). The tensor
//! version of [`super::optim`] runs ~12 Candle ops per parameter, each a full pass with its own
//! allocation; here every element is computed by the same float operations in the same order
//! (a Candle scalar op `x * a` is `x·a + 0` in the tensor's dtype, and so here), so the numbers
//! are identical. Returns `None` when the tensors are not contiguous CPU f32 / f64 of one dtype,
//! where the caller runs the tensor version.

use anyhow::{bail, Result};
use candle_core::{CpuStorage, Storage, Tensor};

/// Adam's constants for one step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdamStep {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub lr: f64,
    /// The step number `t ≥ 1`.
    pub t: i32,
}

/// The element type's conversions of Adam's constants and `√`.
trait Float: Copy + Send + Sync + PartialOrd + std::ops::Add<Output = Self> + std::ops::Mul<Output = Self> {
    const ZERO: Self;
    fn of(v: f64) -> Self;
    fn sqrt(self) -> Self;
    fn is_finite(self) -> bool;
    fn div(self, d: Self) -> Self;
    fn sub(self, d: Self) -> Self;
    fn vec(v: Vec<Self>, shape: &[usize], t: &Tensor) -> candle_core::Result<Tensor>;
}

macro_rules! float {
    ($t:ty) => {
        impl Float for $t {
            const ZERO: Self = 0.0;
            fn of(v: f64) -> Self {
                v as $t
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            fn div(self, d: Self) -> Self {
                self / d
            }
            fn sub(self, d: Self) -> Self {
                self - d
            }
            fn vec(v: Vec<Self>, shape: &[usize], t: &Tensor) -> candle_core::Result<Tensor> {
                Tensor::from_vec(v, shape, t.device())
            }
        }
    };
}
float!(f32);
float!(f64);

/// `x * a` as Candle computes it (`affine(a, 0)`: `x·a + 0`).
#[inline(always)]
fn scale<T: Float>(x: T, a: T) -> T {
    x * a + T::ZERO
}

/// The new `(θ, m, v)` as tensors of `theta`'s shape, or `None` where this path does not apply;
/// an error when the gradient has a non-finite element.
pub(crate) fn adam_update(
    theta: &Tensor,
    g: &Tensor,
    m: Option<&Tensor>,
    v: Option<&Tensor>,
    c: AdamStep,
) -> Result<Option<(Tensor, Tensor, Tensor)>> {
    let all = [Some(theta), Some(g), m, v];
    let ok = all
        .iter()
        .flatten()
        .all(|t| t.device().is_cpu() && t.dtype() == theta.dtype() && t.is_contiguous() && t.dims() == theta.dims());
    if !ok {
        return Ok(None);
    }
    macro_rules! run {
        ($variant:ident) => {{
            let guards: Vec<_> = all.iter().map(|t| t.map(|t| t.storage_and_layout())).collect();
            let mut slices = Vec::with_capacity(4);
            for gl in &guards {
                slices.push(match gl {
                    None => None,
                    Some((s, l)) => match (&**s, l.contiguous_offsets()) {
                        (Storage::Cpu(CpuStorage::$variant(d)), Some((a, b))) => Some(&d[a..b]),
                        _ => return Ok(None),
                    },
                });
            }
            let (th, gr) = (slices[0].expect("θ"), slices[1].expect("g"));
            update(th, gr, slices[2], slices[3], c, theta)?
        }};
    }
    let out = match theta.dtype() {
        candle_core::DType::F32 => run!(F32),
        candle_core::DType::F64 => run!(F64),
        _ => return Ok(None),
    };
    Ok(Some(out))
}

fn update<T: Float>(
    th: &[T],
    g: &[T],
    m: Option<&[T]>,
    v: Option<&[T]>,
    c: AdamStep,
    like: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    use rayon::prelude::*;
    // Elements per task: below this a parameter is updated on one thread.
    const MIN_LEN: usize = 1 << 14;
    if !g.par_iter().with_min_len(MIN_LEN).all(|x| x.is_finite()) {
        bail!("non-finite gradient at step {}: training diverged", c.t);
    }
    let n = th.len();
    let (b1, b2, wd, eps, lr) = (T::of(c.beta1), T::of(c.beta2), T::of(c.weight_decay), T::of(c.eps), T::of(c.lr));
    let (a1, a2) = (T::of(1.0 - c.beta1), T::of(1.0 - c.beta2));
    let (c1, c2) = (T::of(1.0 / (1.0 - c.beta1.powi(c.t))), T::of(1.0 / (1.0 - c.beta2.powi(c.t))));
    // Two passes on rayon's threads (the moments, then θ from them): each element by the same
    // float operations in the same order as one serial pass.
    let (mut mn, mut vn) = (Vec::with_capacity(n), Vec::with_capacity(n));
    (0..n)
        .into_par_iter()
        .with_min_len(MIN_LEN)
        .map(|i| {
            let gi = if c.weight_decay != 0.0 { g[i] + scale(th[i], wd) } else { g[i] };
            let mi = match m {
                None => scale(gi, a1),
                Some(m) => scale(m[i], b1) + scale(gi, a1),
            };
            let vi = match v {
                None => scale(gi * gi, a2),
                Some(v) => scale(v[i], b2) + scale(gi * gi, a2),
            };
            (mi, vi)
        })
        .unzip_into_vecs(&mut mn, &mut vn);
    let mut tn = Vec::with_capacity(n);
    (0..n)
        .into_par_iter()
        .with_min_len(MIN_LEN)
        .map(|i| {
            let upd = scale(mn[i], c1).div(scale(vn[i], c2).sqrt() * T::of(1.0) + eps);
            th[i].sub(scale(upd, lr))
        })
        .collect_into_vec(&mut tn);
    let shape = like.dims();
    Ok((T::vec(tn, shape, like)?, T::vec(mn, shape, like)?, T::vec(vn, shape, like)?))
}
