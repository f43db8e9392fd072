//! Sliding 2-d windows (pooling): which input element each slot of each window reads.
//!
//! An input `[…, H, W]` with padding `[top, left, bottom, right]`, kernel `kh × kw` and strides
//! `sh, sw` has `O = H' W'` windows, `H' = ⌊(H + top + bottom − kh) / sh⌋ + 1` (likewise `W'`),
//! of `kk = kh kw` slots each. [`Windows::gather`] reads every window, `[…, H, W] → […, O, kk]`;
//! [`Windows::scatter`] is its adjoint, `[…, O, kk] → […, H, W]`, adding the slots that read the
//! same element (overlapping windows). A slot in the padding is marked invalid and reads the
//! window's first valid element instead, so a max over the slots ignores it and a weight of zero
//! removes it from a sum.

use candle_core::Tensor;
use dual_core::{DualError, Result};

/// The windows of one pooling layer on one input size.
#[derive(Debug, Clone)]
pub struct Windows {
    /// Input height and width.
    pub in_hw: (usize, usize),
    /// Output height and width.
    pub out_hw: (usize, usize),
    /// Kernel height and width.
    pub kernel: (usize, usize),
    /// Strides.
    pub stride: (usize, usize),
    /// Padding `[top, left, bottom, right]`.
    pub pads: [usize; 4],
    /// Flat input index `h W + w` of every slot, `O · kk` entries, window-major.
    pub index: Vec<u32>,
    /// Whether each slot lies in the input (not in the padding).
    pub valid: Vec<bool>,
}

impl Windows {
    /// The windows for an input of `in_hw`; errors on a zero kernel or stride, a window larger
    /// than the padded input, or a window entirely in the padding.
    pub fn new(
        in_hw: (usize, usize),
        kernel: (usize, usize),
        stride: (usize, usize),
        pads: [usize; 4],
    ) -> Result<Self> {
        if kernel.0 == 0 || kernel.1 == 0 || stride.0 == 0 || stride.1 == 0 {
            return Err(DualError::invalid(format!("pooling with kernel {kernel:?} and stride {stride:?}")));
        }
        let out = |i: usize, p0: usize, p1: usize, k: usize, s: usize| -> Result<usize> {
            (i + p0 + p1).checked_sub(k).map(|v| v / s + 1).ok_or_else(|| {
                DualError::shape(format!("pooling window {k} larger than the padded input {}", i + p0 + p1))
            })
        };
        let oh = out(in_hw.0, pads[0], pads[2], kernel.0, stride.0)?;
        let ow = out(in_hw.1, pads[1], pads[3], kernel.1, stride.1)?;
        let kk = kernel.0 * kernel.1;
        let mut index = Vec::with_capacity(oh * ow * kk);
        let mut valid = Vec::with_capacity(oh * ow * kk);
        for oy in 0..oh {
            for ox in 0..ow {
                let start = index.len();
                let mut first = None;
                for ky in 0..kernel.0 {
                    for kx in 0..kernel.1 {
                        let y = (oy * stride.0 + ky) as isize - pads[0] as isize;
                        let x = (ox * stride.1 + kx) as isize - pads[1] as isize;
                        let inside = y >= 0 && x >= 0 && (y as usize) < in_hw.0 && (x as usize) < in_hw.1;
                        let flat = if inside { (y as usize * in_hw.1 + x as usize) as u32 } else { 0 };
                        if inside && first.is_none() {
                            first = Some(flat);
                        }
                        index.push(flat);
                        valid.push(inside);
                    }
                }
                let Some(first) = first else {
                    return Err(DualError::shape(format!(
                        "pooling window ({oy}, {ox}) lies entirely in the padding {pads:?}"
                    )));
                };
                for s in start..index.len() {
                    if !valid[s] {
                        index[s] = first;
                    }
                }
            }
        }
        Ok(Windows { in_hw, out_hw: (oh, ow), kernel, stride, pads, index, valid })
    }

    /// Slots per window.
    pub fn slots(&self) -> usize {
        self.kernel.0 * self.kernel.1
    }

    /// Number of windows `O = H' W'`.
    pub fn windows(&self) -> usize {
        self.out_hw.0 * self.out_hw.1
    }

    fn index_tensor(&self, like: &Tensor) -> Result<Tensor> {
        Ok(Tensor::from_vec(self.index.clone(), self.index.len(), like.device())?)
    }

    /// `[…, H, W] → […, O, kk]`: the elements every window reads.
    pub fn gather(&self, x: &Tensor) -> Result<Tensor> {
        let d = x.dims();
        let r = d.len();
        if r < 2 || (d[r - 2], d[r - 1]) != self.in_hw {
            return Err(DualError::shape(format!("pooling built for {:?} inputs got shape {d:?}", self.in_hw)));
        }
        let lead: usize = d[..r - 2].iter().product();
        let flat = x.reshape((lead, self.in_hw.0 * self.in_hw.1))?;
        let g = flat.index_select(&self.index_tensor(x)?, 1)?;
        let mut s = d[..r - 2].to_vec();
        s.extend_from_slice(&[self.windows(), self.slots()]);
        Ok(g.reshape(s)?)
    }

    /// The adjoint of [`Windows::gather`]: `[…, O, kk] → […, H, W]`, each slot added to the
    /// element it reads.
    pub fn scatter(&self, v: &Tensor) -> Result<Tensor> {
        let d = v.dims();
        let r = d.len();
        if r < 2 || (d[r - 2], d[r - 1]) != (self.windows(), self.slots()) {
            return Err(DualError::shape(format!(
                "pooling adjoint expects [.., {}, {}], got {d:?}",
                self.windows(),
                self.slots()
            )));
        }
        let lead: usize = d[..r - 2].iter().product();
        let src = v.reshape((lead, self.index.len()))?.contiguous()?;
        let zeros = Tensor::zeros((lead, self.in_hw.0 * self.in_hw.1), v.dtype(), v.device())?;
        let out = zeros.index_add(&self.index_tensor(v)?, &src, 1)?;
        let mut s = d[..r - 2].to_vec();
        s.extend_from_slice(&[self.in_hw.0, self.in_hw.1]);
        Ok(out.reshape(s)?)
    }

    /// The output shape `[…, H', W']` of a pooled `[…, O]`.
    pub fn unflatten(&self, y: &Tensor) -> Result<Tensor> {
        let d = y.dims();
        let mut s = d[..d.len() - 1].to_vec();
        s.extend_from_slice(&[self.out_hw.0, self.out_hw.1]);
        Ok(y.reshape(s)?)
    }

    /// `[…, H', W'] → […, O, 1]`.
    pub fn flatten_out(&self, y: &Tensor) -> Result<Tensor> {
        let d = y.dims();
        let r = d.len();
        if r < 2 || (d[r - 2], d[r - 1]) != self.out_hw {
            return Err(DualError::shape(format!("pooling output {:?} expected, got shape {d:?}", self.out_hw)));
        }
        let mut s = d[..r - 2].to_vec();
        s.extend_from_slice(&[self.windows(), 1]);
        Ok(y.reshape(s)?)
    }

    /// `name(k.., s.., p..)` for messages.
    pub fn describe(&self, name: &str) -> String {
        format!("{name}(k{}x{}, s{}x{}, p{:?})", self.kernel.0, self.kernel.1, self.stride.0, self.stride.1, self.pads)
    }
}
