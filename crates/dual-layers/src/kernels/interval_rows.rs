//! The layers' interval maps on raw rows (`dual_core::IntervalRows`), for IBP's fused inference
//! pass: the box `mid ± rad` through a convolution or linear layer as `W mid + b ± |W| rad`
//! (Gowal et al. 2018, Eq. 6), through ReLU as `[l]₊ … [u]₊` in centre–radius form, through a
//! reshape unchanged. Each runs on the calling thread (gemm without threads), on the few examples
//! its caller gives it; the parameters are read in place from their storage, `|W|` is made once
//! per map. Built only for CPU f32/f64 parameters that track no ops (nothing is differentiated
//! through this pass).

use super::gemm_conv::{conv2d_forward_serial, matmul_col_major, Mat};
use super::im2col::Geom;
use super::interval::{relu, relu_box_elem};
use super::Elem;
use candle_core::{Storage, Tensor, WithDType};
use dual_core::scratch::Scratch;
use dual_core::{DualError, IntervalRows, Result};

/// Whether parameters can be read by a map: CPU f32/f64 tensors that track no ops.
fn plain(ts: &[Option<&Tensor>]) -> bool {
    let ts: Vec<&Tensor> = ts.iter().flatten().copied().collect();
    super::cpu_float(&ts) && ts.iter().all(|t| !t.track_op())
}

/// Runs `f` on the contiguous elements of `t` as `&[T]`.
fn with_slice<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> Result<R>) -> Result<R> {
    let (s, l) = t.storage_and_layout();
    let Storage::Cpu(cs) = &*s else {
        return Err(DualError::Unsupported("interval rows: a parameter is not on the CPU".into()));
    };
    let data = cs.as_slice::<T>()?;
    let data = super::contiguous_slice(data, l, "interval rows")?;
    f(data)
}

/// Checks the lengths of one call: `n` examples of `in_len` in (`x`), `out_len` out (`out`).
fn check(name: &str, n: usize, x: usize, out: usize, in_len: usize, out_len: usize) -> Result<()> {
    if x != n * in_len || out != n * out_len {
        return Err(DualError::shape(format!(
            "{name}: {n} examples need {}/{} values in and out, got {x} and {out}",
            n * in_len,
            n * out_len
        )));
    }
    Ok(())
}

/// `|W|`, or an error when the map was made for the forward pass only.
fn abs_of(w_abs: &Option<Tensor>) -> Result<&Tensor> {
    w_abs.as_ref().ok_or_else(|| DualError::Unsupported("interval rows made without |W| (forward pass only)".into()))
}

/// Adds `b[c]` to every element of channel `c` of `n` images of `channels × pixels` (a linear
/// layer's rows: `pixels = 1`).
fn add_bias<T: Elem>(out: &mut [T], b: &[T], pixels: usize) {
    for (i, channel) in out.chunks_mut(pixels.max(1)).enumerate() {
        let v = b[i % b.len()];
        for e in channel {
            *e += v;
        }
    }
}

/// A map written once for both element types; [`Both`] gives it `IntervalRows`' f32 and f64
/// entries.
trait RowsOf: Send + Sync {
    fn out_shape(&self, in_shape: &[usize]) -> Result<Vec<usize>>;
    fn map<T: Elem + WithDType>(&self, n: usize, mid: &[T], rad: &[T], om: &mut [T], or: &mut [T]) -> Result<()>;
    fn forward<T: Elem + WithDType>(&self, n: usize, x: &[T], out: &mut [T]) -> Result<()>;
}

struct Both<R>(R);

impl<R: RowsOf> IntervalRows for Both<R> {
    fn out_shape(&self, in_shape: &[usize]) -> Result<Vec<usize>> {
        self.0.out_shape(in_shape)
    }
    fn map_f32(&self, n: usize, mid: &[f32], rad: &[f32], om: &mut [f32], or: &mut [f32]) -> Result<()> {
        self.0.map(n, mid, rad, om, or)
    }
    fn map_f64(&self, n: usize, mid: &[f64], rad: &[f64], om: &mut [f64], or: &mut [f64]) -> Result<()> {
        self.0.map(n, mid, rad, om, or)
    }
    fn forward_f32(&self, n: usize, x: &[f32], out: &mut [f32]) -> Result<()> {
        self.0.forward(n, x, out)
    }
    fn forward_f64(&self, n: usize, x: &[f64], out: &mut [f64]) -> Result<()> {
        self.0.forward(n, x, out)
    }
}

/// A convolution (dilation 1, one group) on inputs `[c, h, w]`.
struct ConvRows {
    w: Tensor,
    w_abs: Option<Tensor>,
    b: Option<Tensor>,
    geom: Geom,
}

/// The map of `conv2d(·, weight) + bias` (`weight` `[o, c, kh, kw]`) on `[c, h, w]` inputs;
/// `None` when the parameters are not plain CPU f32/f64 tensors. `radius`: also the interval map
/// (`|W|` is made once here); without it only the forward pass is offered.
pub fn conv_interval_rows(
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    in_hw: (usize, usize),
    radius: bool,
) -> Option<Result<Box<dyn IntervalRows>>> {
    if !plain(&[Some(weight), bias]) {
        return None;
    }
    let f = || -> Result<Box<dyn IntervalRows>> {
        let (o, c, kh, kw) = weight.dims4()?;
        let (h, w) = in_hw;
        let out = |i: usize, k: usize| (i + 2 * padding).checked_sub(k).map(|v| v / stride.max(1) + 1);
        let (Some(oh), Some(ow)) = (out(h, kh), out(w, kw)) else {
            return Err(DualError::shape(format!("conv2d: kernel {kh}x{kw} larger than the padded {h}x{w} input")));
        };
        let geom = Geom { n: 0, c, h, w, o, kh, kw, stride, pad: padding, oh, ow };
        let w = weight.contiguous()?;
        let w_abs = if radius { Some(w.abs()?) } else { None };
        Ok(Box::new(Both(ConvRows { w_abs, w, b: bias.map(|b| b.contiguous()).transpose()?, geom })))
    };
    Some(f())
}

impl RowsOf for ConvRows {
    fn out_shape(&self, in_shape: &[usize]) -> Result<Vec<usize>> {
        let g = &self.geom;
        if in_shape != [g.c, g.h, g.w] {
            return Err(DualError::shape(format!(
                "conv2d expects inputs [{}, {}, {}], got {in_shape:?}",
                g.c, g.h, g.w
            )));
        }
        Ok(vec![g.o, g.oh, g.ow])
    }

    /// `conv2d(x, W) + b` of `n` images.
    fn forward<T: Elem + WithDType>(&self, n: usize, x: &[T], out: &mut [T]) -> Result<()> {
        let g = Geom { n, ..self.geom };
        check("conv2d", n, x.len(), out.len(), g.in_len(), g.out_len())?;
        with_slice::<T, _>(&self.w, |w| {
            conv2d_forward_serial(&g, x, w, out);
            Ok(())
        })?;
        if let Some(b) = &self.b {
            with_slice::<T, _>(b, |b| {
                add_bias(out, b, g.p());
                Ok(())
            })?;
        }
        Ok(())
    }

    fn map<T: Elem + WithDType>(&self, n: usize, mid: &[T], rad: &[T], om: &mut [T], or: &mut [T]) -> Result<()> {
        self.forward(n, mid, om)?;
        let g = Geom { n, ..self.geom };
        check("conv2d", n, rad.len(), or.len(), g.in_len(), g.out_len())?;
        with_slice::<T, _>(abs_of(&self.w_abs)?, |w| {
            conv2d_forward_serial(&g, rad, w, or);
            Ok(())
        })
    }
}

/// A linear layer `W x + b`, `W` `[out, in]`.
struct LinearRows {
    w: Tensor,
    w_abs: Option<Tensor>,
    b: Option<Tensor>,
    out: usize,
    inp: usize,
}

/// The map of `x Wᵀ + b` (`weight` `[out, in]`); `None` when the parameters are not plain CPU
/// f32/f64 tensors. `radius` as for [`conv_interval_rows`].
pub fn linear_interval_rows(
    weight: &Tensor,
    bias: Option<&Tensor>,
    radius: bool,
) -> Option<Result<Box<dyn IntervalRows>>> {
    if !plain(&[Some(weight), bias]) {
        return None;
    }
    let f = || -> Result<Box<dyn IntervalRows>> {
        let (out, inp) = weight.dims2()?;
        let w = weight.contiguous()?;
        let w_abs = if radius { Some(w.abs()?) } else { None };
        Ok(Box::new(Both(LinearRows { w_abs, w, b: bias.map(|b| b.contiguous()).transpose()?, out, inp })))
    };
    Some(f())
}

impl LinearRows {
    /// `dst = x Wᵀ` for `n` rows of `x`.
    fn product<T: Elem + WithDType>(&self, n: usize, x: &[T], w: &Tensor, dst: &mut [T]) -> Result<()> {
        let (out, inp) = (self.out, self.inp);
        check("linear", n, x.len(), dst.len(), inp, out)?;
        with_slice::<T, _>(w, |w| {
            let lhs = Mat { data: x, off: 0, rs: inp, cs: 1 };
            // Wᵀ as an [in, out] matrix over W's [out, in] storage.
            let rhs = Mat { data: w, off: 0, rs: 1, cs: inp };
            // The product is taken column-major (`[out, n]` in scratch), then transposed into the
            // rows: gemm then reads W in place instead of packing all of it on every call (with
            // few rows the packing cost as much as the product: 25 rows of the Fashion model's
            // 1568 → 100 layer, 68 → 53 µs per call, measured 2026-12-05).
            let mut lent = Scratch::<T>::take(&[n * out]);
            let tmp = lent.get(0, n * out);
            matmul_col_major(n, out, inp, tmp, lhs, rhs);
            T::transpose(tmp, out, n, dst);
            Ok(())
        })
    }
}

impl RowsOf for LinearRows {
    fn out_shape(&self, in_shape: &[usize]) -> Result<Vec<usize>> {
        if in_shape != [self.inp] {
            return Err(DualError::shape(format!("linear expects inputs [{}], got {in_shape:?}", self.inp)));
        }
        Ok(vec![self.out])
    }

    /// `x Wᵀ + b` of `n` rows.
    fn forward<T: Elem + WithDType>(&self, n: usize, x: &[T], out: &mut [T]) -> Result<()> {
        self.product(n, x, &self.w, out)?;
        if let Some(b) = &self.b {
            with_slice::<T, _>(b, |b| {
                add_bias(out, b, 1);
                Ok(())
            })?;
        }
        Ok(())
    }

    fn map<T: Elem + WithDType>(&self, n: usize, mid: &[T], rad: &[T], om: &mut [T], or: &mut [T]) -> Result<()> {
        self.forward(n, mid, om)?;
        self.product(n, rad, abs_of(&self.w_abs)?, or)
    }
}

/// ReLU's interval map in centre–radius form, by the operations of `interval.rs`.
struct ReluRows;

/// The map of ReLU (elementwise, any shape).
pub fn relu_interval_rows() -> Box<dyn IntervalRows> {
    Box::new(Both(ReluRows))
}

impl RowsOf for ReluRows {
    fn out_shape(&self, in_shape: &[usize]) -> Result<Vec<usize>> {
        Ok(in_shape.to_vec())
    }

    fn map<T: Elem + WithDType>(&self, _n: usize, mid: &[T], rad: &[T], om: &mut [T], or: &mut [T]) -> Result<()> {
        let len = mid.len();
        check("ReLU", 1, len, om.len(), len, len)?;
        check("ReLU", 1, rad.len(), or.len(), len, len)?;
        for i in 0..len {
            (om[i], or[i]) = relu_box_elem(mid[i], rad[i]);
        }
        Ok(())
    }

    /// `out = max(x, 0)` (NaN to 0, as Candle's ReLU).
    fn forward<T: Elem + WithDType>(&self, _n: usize, x: &[T], out: &mut [T]) -> Result<()> {
        check("ReLU", 1, x.len(), out.len(), x.len(), x.len())?;
        for (o, &v) in out.iter_mut().zip(x) {
            *o = relu(v);
        }
        Ok(())
    }
}

/// A reshape between shapes of one size: the rows are copied.
struct ReshapeRows {
    in_shape: Vec<usize>,
    out_shape: Vec<usize>,
}

/// The map of a reshape from `in_shape` to `out_shape` (without batch).
pub fn reshape_interval_rows(in_shape: &[usize], out_shape: &[usize]) -> Box<dyn IntervalRows> {
    Box::new(Both(ReshapeRows { in_shape: in_shape.to_vec(), out_shape: out_shape.to_vec() }))
}

impl RowsOf for ReshapeRows {
    fn out_shape(&self, in_shape: &[usize]) -> Result<Vec<usize>> {
        if in_shape != self.in_shape.as_slice() {
            return Err(DualError::shape(format!("reshape expects inputs {:?}, got {in_shape:?}", self.in_shape)));
        }
        Ok(self.out_shape.clone())
    }

    fn map<T: Elem + WithDType>(&self, n: usize, mid: &[T], rad: &[T], om: &mut [T], or: &mut [T]) -> Result<()> {
        self.forward(n, mid, om)?;
        self.forward(n, rad, or)
    }

    /// `out = x`.
    fn forward<T: Elem + WithDType>(&self, _n: usize, x: &[T], out: &mut [T]) -> Result<()> {
        check("reshape", 1, x.len(), out.len(), x.len(), x.len())?;
        out.copy_from_slice(x);
        Ok(())
    }
}
