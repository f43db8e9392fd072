//! `|W|` of a weight for IBP's radius (`|W| r`), with a one-pass backward.
//!
//! Candle's `abs` backward builds `sign(W)` from five full-size tensors (ones, zeros, a `≥ 0`
//! mask, its negation, `where_cond`) before multiplying by the gradient; on `mnist-large`'s
//! 1.9 M weights that is seven passes per training step. Here the gradient is
//! `∂|w|/∂w · g = s(w) g` in one pass, with Candle's sign convention `s(w) = 1` for `w ≥ 0` and
//! `−1` otherwise (so `s(0) = 1`), so value and gradient equal Candle's bit for bit
//! (`g · (±1)` is exact).

use super::{contiguous_slice, cpu_float, Elem};
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

/// Elements per row of the parallel loops, and rows below which they stay on one thread.
const ROW: usize = 8192;
const MIN_ROWS: usize = 16;

/// `|w|`, recorded for backprop (with a one-pass gradient) when `w` tracks its ops; Candle's
/// `abs` otherwise and on other devices or dtypes.
pub fn abs_tracked(w: &Tensor) -> Result<Tensor> {
    if !w.track_op() || !cpu_float(&[w]) {
        return w.abs();
    }
    w.contiguous()?.apply_op1(AbsOp)
}

struct AbsOp;

/// `out[i] = f(i)` for `i < n`, in parallel rows.
fn fill<T: Elem>(n: usize, f: impl Fn(usize) -> T + Sync + Send) -> Vec<T> {
    super::par_fill(n, ROW, MIN_ROWS, f)
}

impl CustomOp1 for AbsOp {
    fn name(&self) -> &'static str {
        "abs-tracked"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F32(w) => {
                let w = contiguous_slice(w, l, "abs_tracked")?;
                CpuStorage::F32(fill(w.len(), |i| w[i].abs()))
            }
            CpuStorage::F64(w) => {
                let w = contiguous_slice(w, l, "abs_tracked")?;
                CpuStorage::F64(fill(w.len(), |i| w[i].abs()))
            }
            _ => bail!("abs_tracked: unsupported dtype"),
        };
        Ok((out, l.shape().clone()))
    }

    /// `s(w) · g`, `s(w) = 1` for `w ≥ 0`, else `−1`.
    fn bwd(&self, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.contiguous()?;
        Ok(Some(g.apply_op2_no_bwd(w, &SignTimes)?))
    }
}

fn sign_times<T: Elem>(g: &[T], w: &[T]) -> Vec<T> {
    fill(g.len(), |i| if w[i] >= T::ZERO { g[i] * T::ONE } else { g[i] * -T::ONE })
}

/// `(g, w) ↦ s(w) · g` (one pass).
struct SignTimes;

impl candle_core::CustomOp2 for SignTimes {
    fn name(&self) -> &'static str {
        "abs-tracked-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            bail!("abs_tracked: gradient {:?} and weight {:?} differ in shape", l1.dims(), l2.dims());
        }
        let out = dispatch!("abs_tracked", s1, s2; |g, w| {
            let (g, w) = (contiguous_slice(g, l1, "abs_tracked")?, contiguous_slice(w, l2, "abs_tracked")?);
            sign_times(g, w)
        });
        Ok((out, l1.shape().clone()))
    }
}
