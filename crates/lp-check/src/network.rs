//! A piecewise-linear network as plain numbers: its affine layers as sparse matrices in f64 (a
//! convolution as the linear map it is), its ReLUs, and every output flattened row-major.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use nets::{LayerSpec, Network};
use std::collections::HashMap;

/// A sparse matrix stored row by row: row `r` holds the nonzero `(column, value)` pairs
/// `entries[row_start[r]..row_start[r + 1]]`.
#[derive(Debug, Clone)]
pub struct Matrix {
    /// Rows (outputs).
    pub rows: usize,
    /// Columns (inputs).
    pub cols: usize,
    row_start: Vec<usize>,
    entries: Vec<(usize, f64)>,
}

impl Matrix {
    /// The matrix of a dense row-major array of `rows * cols` values (zeros dropped).
    pub fn from_dense(rows: usize, cols: usize, data: &[f64]) -> Result<Self> {
        if data.len() != rows * cols {
            bail!("{} values for a {rows} x {cols} matrix", data.len());
        }
        let mut m = Matrix { rows, cols, row_start: vec![0], entries: Vec::new() };
        for r in 0..rows {
            let row = &data[r * cols..(r + 1) * cols];
            m.entries.extend(row.iter().enumerate().filter(|(_, a)| **a != 0.0).map(|(c, &a)| (c, a)));
            m.row_start.push(m.entries.len());
        }
        Ok(m)
    }

    /// The linear map of a 2-d convolution (PyTorch's cross-correlation, no bias) on inputs of
    /// shape `[C, H, W]`, both sides flattened row-major: output `(o, i, j)` is
    /// `Σ_{c,a,b} weight[o, c, a, b] · in[c, s·i − p + a, s·j − p + b]`, the terms outside the
    /// input being the zero padding. `weight` is `[O, C, k, k]` row-major. Returns the matrix and
    /// the output shape `[O, H', W']`, `H' = (H + 2p − k) / s + 1` (rounded down), likewise `W'`.
    pub fn conv2d(
        weight: &[f64],
        in_shape: [usize; 3],
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<(Self, [usize; 3])> {
        let [c_in, h, w] = in_shape;
        if weight.len() != out_channels * c_in * kernel * kernel {
            bail!("{} weights for a {out_channels} x {c_in} x {kernel} x {kernel} convolution", weight.len());
        }
        if stride == 0 || kernel == 0 || h + 2 * padding < kernel || w + 2 * padding < kernel {
            bail!("a convolution with kernel {kernel}, stride {stride}, padding {padding} on a {h} x {w} input");
        }
        let (ho, wo) = ((h + 2 * padding - kernel) / stride + 1, (w + 2 * padding - kernel) / stride + 1);
        let mut m =
            Matrix { rows: out_channels * ho * wo, cols: c_in * h * w, row_start: vec![0], entries: Vec::new() };
        for o in 0..out_channels {
            for i in 0..ho {
                for j in 0..wo {
                    for c in 0..c_in {
                        for a in 0..kernel {
                            let Some(y) = (i * stride + a).checked_sub(padding).filter(|&y| y < h) else { continue };
                            for b in 0..kernel {
                                let Some(x) = (j * stride + b).checked_sub(padding).filter(|&x| x < w) else {
                                    continue;
                                };
                                let v = weight[((o * c_in + c) * kernel + a) * kernel + b];
                                if v != 0.0 {
                                    m.entries.push(((c * h + y) * w + x, v));
                                }
                            }
                        }
                    }
                    m.row_start.push(m.entries.len());
                }
            }
        }
        Ok((m, [out_channels, ho, wo]))
    }

    /// The nonzero `(column, value)` pairs of row `r`.
    pub fn row(&self, r: usize) -> &[(usize, f64)] {
        &self.entries[self.row_start[r]..self.row_start[r + 1]]
    }

    /// `M x`.
    pub fn apply(&self, x: &[f64]) -> Vec<f64> {
        (0..self.rows).map(|r| self.row(r).iter().map(|&(c, a)| a * x[c]).sum()).collect()
    }
}

/// One layer of an [`LpNetwork`].
#[derive(Debug, Clone)]
pub enum Step {
    /// `Σ_s W_s outs[s] + b` (a Linear or Conv2d layer, or a Dense sum of Linear, Conv2d and
    /// Identity parts). `None` as a matrix stands for the identity.
    Affine {
        /// `(index of the output read, W or None for the identity)`.
        parts: Vec<(usize, Option<Matrix>)>,
        /// The bias (of a convolution: one value per output unit, the channel's bias repeated).
        bias: Vec<f64>,
    },
    /// ReLU of the previous output.
    Relu,
    /// The previous output unchanged (Flatten, a bare Identity layer).
    Same,
}

/// A piecewise-linear network in f64, read from a [`Network`]: `outs[0]` is the flattened
/// input, `outs[t]` the output of layer `t` (1-based, as in the dual network's bounds), every
/// output flattened row-major.
#[derive(Debug, Clone)]
pub struct LpNetwork {
    /// Size of the flattened input.
    pub input_size: usize,
    /// The layers.
    pub steps: Vec<Step>,
    /// Size of every output, `widths[0] = input_size`.
    pub widths: Vec<usize>,
}

pub(crate) fn to_f64(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

/// Adds `b` to the running sum of a Dense layer's biases.
fn add_bias(sum: &mut Option<Vec<f64>>, b: Vec<f64>) {
    *sum = Some(match sum.take() {
        None => b,
        Some(a) => a.iter().zip(&b).map(|(x, y)| x + y).collect(),
    });
}

impl LpNetwork {
    /// Reads the layers and weights of `net`. Errors on layers with no LP here (batch norm,
    /// custom layers).
    pub fn from_network(net: &Network) -> Result<Self> {
        let sd: HashMap<String, Tensor> = net.state_dict().into_iter().collect();
        let weight =
            |name: String| -> Result<Vec<f64>> { to_f64(sd.get(&name).with_context(|| format!("no weight {name}"))?) };
        let input_size: usize = net.input_shape().iter().product();
        // The shape of every output (without the batch dimension); its product is the width.
        let mut shapes = vec![net.input_shape().to_vec()];
        let mut steps = Vec::new();
        for (i, layer) in net.spec().layers.iter().enumerate() {
            let t = i + 1;
            let prev = shapes[t - 1].clone();
            let parts: Vec<(usize, &LayerSpec, String)> = match layer {
                LayerSpec::ReLU | LayerSpec::Identity => {
                    steps.push(if matches!(layer, LayerSpec::ReLU) { Step::Relu } else { Step::Same });
                    shapes.push(prev);
                    continue;
                }
                LayerSpec::Flatten => {
                    steps.push(Step::Same);
                    shapes.push(vec![prev.iter().product()]);
                    continue;
                }
                LayerSpec::Dense { parts } => {
                    let m = parts.len();
                    if m == 0 || m > t {
                        bail!("layer {i}: a Dense layer with {m} parts at position {t}");
                    }
                    parts
                        .iter()
                        .enumerate()
                        .filter_map(|(p, s)| s.as_ref().map(|s| (t - m + p, s, format!("{i}.Ws.{p}."))))
                        .collect()
                }
                other => vec![(t - 1, other, format!("{i}."))],
            };
            let mut mats = Vec::new();
            let mut bias: Option<Vec<f64>> = None;
            let mut shape: Option<Vec<usize>> = None;
            for (src, spec, prefix) in parts {
                let width: usize = shapes[src].iter().product();
                let (w, out) = match spec {
                    LayerSpec::Linear { in_features, out_features, .. } => {
                        // A Linear layer acts on the last dimension: one vector only if the
                        // others are 1.
                        if *in_features != width || shapes[src].last() != Some(in_features) {
                            bail!(
                                "layer {i}: Linear expects {in_features} inputs, output {src} has shape {:?}",
                                shapes[src]
                            );
                        }
                        if let Some(b) = sd.get(&format!("{prefix}bias")) {
                            add_bias(&mut bias, to_f64(b)?);
                        }
                        let w = Matrix::from_dense(*out_features, *in_features, &weight(format!("{prefix}weight"))?)?;
                        let mut out = shapes[src].clone();
                        *out.last_mut().expect("a nonempty shape") = *out_features;
                        (Some(w), out)
                    }
                    LayerSpec::Conv2d { in_channels, out_channels, kernel_size, stride, padding, .. } => {
                        let in_shape: [usize; 3] = match shapes[src][..] {
                            [c, h, w] if c == *in_channels => [c, h, w],
                            _ => bail!(
                                "layer {i}: Conv2d expects {in_channels} channels, output {src} has shape {:?}",
                                shapes[src]
                            ),
                        };
                        let w = weight(format!("{prefix}weight"))?;
                        let (m, out) = Matrix::conv2d(&w, in_shape, *out_channels, *kernel_size, *stride, *padding)
                            .with_context(|| format!("layer {i}"))?;
                        if let Some(b) = sd.get(&format!("{prefix}bias")) {
                            let per_unit = out[1] * out[2];
                            add_bias(
                                &mut bias,
                                to_f64(b)?.iter().flat_map(|&v| std::iter::repeat_n(v, per_unit)).collect(),
                            );
                        }
                        (Some(m), out.to_vec())
                    }
                    LayerSpec::Identity => (None, shapes[src].clone()),
                    other => {
                        bail!(
                            "layer {i}: no LP for {other:?} (only Linear, Conv2d, ReLU, Flatten, Identity and Dense layers)"
                        )
                    }
                };
                if shape.as_ref().is_some_and(|s| *s != out) {
                    bail!("layer {i}: Dense parts of different shapes ({:?} and {out:?})", shape.unwrap());
                }
                shape = Some(out);
                mats.push((src, w));
            }
            let shape = shape.with_context(|| format!("layer {i}: a Dense layer without parts"))?;
            let k = shape.iter().product();
            steps.push(Step::Affine { parts: mats, bias: bias.unwrap_or_else(|| vec![0.0; k]) });
            shapes.push(shape);
        }
        let widths = shapes.iter().map(|s| s.iter().product()).collect();
        Ok(LpNetwork { input_size, steps, widths })
    }

    /// The indices `t` of the ReLU layers (the keys of [`ReluBounds`](super::ReluBounds)).
    pub fn relu_layers(&self) -> Vec<usize> {
        self.steps.iter().enumerate().filter(|(_, s)| matches!(s, Step::Relu)).map(|(k, _)| k + 1).collect()
    }

    /// Number of outputs of the last layer.
    pub fn output_size(&self) -> usize {
        *self.widths.last().expect("at least the input")
    }

    /// Every output `outs[0..=L]` of the network at the flattened input `x`, in f64: the exact
    /// arithmetic the LP constrains, to compare with the network's own forward pass.
    pub fn forward(&self, x: &[f64]) -> Result<Vec<Vec<f64>>> {
        if x.len() != self.input_size {
            bail!("input of size {} for a network with {} inputs", x.len(), self.input_size);
        }
        let mut outs = vec![x.to_vec()];
        for step in &self.steps {
            let prev = outs.last().expect("at least the input");
            let y = match step {
                Step::Same => prev.clone(),
                Step::Relu => prev.iter().map(|v| v.max(0.0)).collect(),
                Step::Affine { parts, bias } => {
                    let mut y = bias.clone();
                    for (src, w) in parts {
                        let term = match w {
                            Some(w) => w.apply(&outs[*src]),
                            None => outs[*src].clone(),
                        };
                        y.iter_mut().zip(term).for_each(|(a, b)| *a += b);
                    }
                    y
                }
            };
            outs.push(y);
        }
        Ok(outs)
    }
}
