//! ReLU's interval map in centre–radius form, fused: for the box `m ± r` (`l = m − r`,
//! `u = m + r`) the image `[l]₊ … [u]₊` as `m' = ([l]₊ + [u]₊) / 2` and `r' = ([u]₊ − [l]₊) / 2`.
//!
//! With Candle's ops this is eight full-size passes per ReLU of IBP (two subtractions and sums,
//! two ReLUs, two halvings) and as many under autograd; here it is one pass per output. The same
//! numbers: each element is computed by the same operations in the same order. The gradient
//! (first order), with `a = 1[l ≥ 0]`, `b = 1[u ≥ 0]` (Candle's ReLU gives its tie at 0 slope 1):
//!
//! | output | `∂/∂m` | `∂/∂r` |
//! |---|---|---|
//! | `m'` | `(a + b) / 2` | `(b − a) / 2` |
//! | `r'` | `(b − a) / 2` | `(a + b) / 2` |

use super::{contiguous_slice, cpu_float, Elem};
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

/// Elements of work below which a loop stays on the calling thread.
const MIN_ROWS: usize = 16;
/// Elements per row of the parallel loops.
const ROW: usize = 4096;

/// `(m', r')` of ReLU on the boxes `mid ± rad` (same shape, `rad ≥ 0`); `None` where it does not
/// apply (another device or dtype, shapes that differ). Recorded for backprop when an operand
/// tracks its ops.
pub fn relu_box(mid: &Tensor, rad: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
    if mid.dims() != rad.dims() || !cpu_float(&[mid, rad]) {
        return Ok(None);
    }
    let (m, r) = (mid.contiguous()?, rad.contiguous()?);
    let track = m.track_op() || r.track_op();
    let apply = |part: Part| -> Result<Tensor> {
        if track {
            m.apply_op2(&r, ReluBox(part))
        } else {
            m.apply_op2_no_bwd(&r, &ReluBox(part))
        }
    };
    Ok(Some((apply(Part::Mid)?, apply(Part::Rad)?)))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Part {
    Mid,
    Rad,
}

struct ReluBox(Part);

/// Fills `out[i] = f(i)` in parallel rows.
fn par_fill<T: Elem>(n: usize, f: impl Fn(usize) -> T + Sync + Send) -> Vec<T> {
    super::par_fill(n, ROW, MIN_ROWS, f)
}

/// `max(x, 0)`, NaN to 0 (Candle's ReLU).
pub(super) fn relu<T: Elem>(x: T) -> T {
    if x > T::ZERO {
        x
    } else {
        T::ZERO
    }
}

/// `(m', r')` of one unit: `lo = [m − r]₊`, `hi = [m + r]₊`, `((lo + hi) / 2, (hi − lo) / 2)`
/// (also the fused pass's ReLU, `interval_rows.rs`).
#[inline]
pub(super) fn relu_box_elem<T: Elem>(m: T, r: T) -> (T, T) {
    let (lo, hi) = (relu(m + -r), relu(m + r));
    ((lo + hi) * T::HALF, (hi + -lo) * T::HALF)
}

fn box_fwd<T: Elem>(m: &[T], r: &[T], part: Part) -> Vec<T> {
    par_fill(m.len(), |i| {
        let (mid, rad) = relu_box_elem(m[i], r[i]);
        match part {
            Part::Mid => mid,
            Part::Rad => rad,
        }
    })
}

impl CustomOp2 for ReluBox {
    fn name(&self) -> &'static str {
        match self.0 {
            Part::Mid => "relu-box-mid",
            Part::Rad => "relu-box-rad",
        }
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let part = self.0;
        let out = dispatch!("relu_box", s1, s2; |m, r| {
            box_fwd(contiguous_slice(m, l1, "relu_box")?, contiguous_slice(r, l2, "relu_box")?, part)
        });
        Ok((out, l1.shape().clone()))
    }
    fn bwd(&self, m: &Tensor, r: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        // ∂m'/∂m = ∂r'/∂r = (a + b) / 2 and ∂m'/∂r = ∂r'/∂m = (b − a) / 2.
        let sum = |t: &Tensor| -> Result<Option<Tensor>> {
            Ok(if t.track_op() { Some(grad.apply_op3_no_bwd(m, r, &ReluBoxGrad { diff: false })?) } else { None })
        };
        let diff = |t: &Tensor| -> Result<Option<Tensor>> {
            Ok(if t.track_op() { Some(grad.apply_op3_no_bwd(m, r, &ReluBoxGrad { diff: true })?) } else { None })
        };
        Ok(match self.0 {
            Part::Mid => (sum(m)?, diff(r)?),
            Part::Rad => (diff(m)?, sum(r)?),
        })
    }
}

fn grad_fill<T: Elem>(g: &[T], m: &[T], r: &[T], diff: bool) -> Vec<T> {
    par_fill(g.len(), |i| {
        let h = g[i] * T::HALF;
        let a = if m[i] + -r[i] >= T::ZERO { h } else { T::ZERO };
        let b = if m[i] + r[i] >= T::ZERO { h } else { T::ZERO };
        if diff {
            b + -a
        } else {
            a + b
        }
    })
}

/// `g · (a + b) / 2` (or `g · (b − a) / 2` when `diff`) with `a = 1[m − r ≥ 0]`, `b = 1[m + r ≥ 0]`.
struct ReluBoxGrad {
    diff: bool,
}

impl CustomOp3 for ReluBoxGrad {
    fn name(&self) -> &'static str {
        "relu-box-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let diff = self.diff;
        let out = dispatch!("relu_box_grad", s1, s2, s3; |g, m, r| {
            let (g, m, r) = (
                contiguous_slice(g, l1, "relu_box_grad")?,
                contiguous_slice(m, l2, "relu_box_grad")?,
                contiguous_slice(r, l3, "relu_box_grad")?,
            );
            grad_fill(g, m, r, diff)
        });
        Ok((out, l1.shape().clone()))
    }
}
