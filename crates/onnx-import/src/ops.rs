//! The ONNX ops we implement: attributes read and checked once at import, then an f64
//! evaluation per op following the ONNX operator specification.

use crate::proto::onnx::{attribute_proto::AttributeType, AttributeProto, NodeProto};
use crate::tensor::{broadcast_binary, matmul, transpose, Tensor};

/// How a convolution or pooling window is padded.
#[derive(Debug, Clone, PartialEq)]
pub enum AutoPad {
    /// Explicit `pads` `[top, left, bottom, right]`.
    Explicit(Vec<usize>),
    /// `SAME_UPPER` (extra padding at the end) or `SAME_LOWER` (at the start).
    Same { upper: bool },
}

/// A 2-d sliding window: kernel, strides, dilations and padding.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Kernel height and width (`None`: from the weight, for Conv).
    pub kernel: Option<[usize; 2]>,
    /// Strides.
    pub strides: [usize; 2],
    /// Dilations.
    pub dilations: [usize; 2],
    /// Padding.
    pub pad: AutoPad,
}

impl Window {
    /// `[top, left, bottom, right]` padding for an input of spatial size `hw` and kernel `k`.
    pub(crate) fn pads(&self, hw: [usize; 2], k: [usize; 2]) -> [usize; 4] {
        match &self.pad {
            AutoPad::Explicit(p) => [p[0], p[1], p[2], p[3]],
            AutoPad::Same { upper } => {
                let mut out = [0; 4];
                for d in 0..2 {
                    let o = hw[d].div_ceil(self.strides[d]);
                    let span = (k[d] - 1) * self.dilations[d] + 1;
                    let total = ((o - 1) * self.strides[d] + span).saturating_sub(hw[d]);
                    let (small, big) = (total / 2, total - total / 2);
                    (out[d], out[d + 2]) = if *upper { (small, big) } else { (big, small) };
                }
                out
            }
        }
    }

    /// Output spatial size and the padding, or an error if the window does not fit.
    fn geometry(&self, hw: [usize; 2], k: [usize; 2]) -> Result<([usize; 2], [usize; 4]), String> {
        let p = self.pads(hw, k);
        let mut out = [0; 2];
        for d in 0..2 {
            let span = (k[d] - 1) * self.dilations[d] + 1;
            let padded = hw[d] + p[d] + p[d + 2];
            if padded < span {
                return Err(format!("the window ({span}) is larger than the padded input ({padded})"));
            }
            out[d] = (padded - span) / self.strides[d] + 1;
        }
        Ok((out, p))
    }
}

/// An op with its attributes.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// `alpha · A' B' + beta · C` with `A'`, `B'` optionally transposed.
    Gemm { alpha: f64, beta: f64, trans_a: bool, trans_b: bool },
    /// `numpy.matmul`.
    MatMul,
    /// Elementwise sum, with broadcasting.
    Add,
    /// Elementwise difference, with broadcasting.
    Sub,
    /// Elementwise product, with broadcasting.
    Mul,
    /// Elementwise quotient, with broadcasting.
    Div,
    /// 2-d convolution (`[N, C, H, W]`, weight `[M, C/group, kH, kW]`, optional bias `[M]`).
    Conv { window: Window, group: usize },
    /// `max(x, 0)`.
    Relu,
    /// `1 / (1 + e^{-x})`.
    Sigmoid,
    /// `tanh x`.
    Tanh,
    /// `[d0, .., d_{axis-1}] × [rest]` as a matrix.
    Flatten { axis: i64 },
    /// New shape from the (constant) second input; `0` copies a dimension unless `allowzero`.
    Reshape { allowzero: bool },
    /// Constant padding; `pads` given by attribute (opset < 11) or by inputs.
    Pad { pads: Option<Vec<i64>>, value: f64 },
    /// 2-d max pooling.
    MaxPool { window: Window },
    /// 2-d average pooling; `count_include_pad` divides by the full window.
    AveragePool { window: Window, count_include_pad: bool },
    /// Inference batch normalisation over axis 1: `(x - mean) / sqrt(var + eps) · scale + B`.
    BatchNormalization { epsilon: f64 },
    /// A constant tensor.
    Constant { value: Tensor },
    /// The identity (also `Dropout` at inference).
    Identity,
}

fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name() == name)
}

fn int(node: &NodeProto, name: &str, default: i64) -> i64 {
    attr(node, name).and_then(|a| a.i).unwrap_or(default)
}

fn float(node: &NodeProto, name: &str, default: f64) -> f64 {
    attr(node, name).and_then(|a| a.f).map(|f| f as f64).unwrap_or(default)
}

fn ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| a.ints.clone())
}

fn string(node: &NodeProto, name: &str) -> Option<String> {
    attr(node, name).and_then(|a| a.s.as_ref()).map(|s| String::from_utf8_lossy(s).into_owned())
}

fn pair(v: &[i64], what: &str) -> Result<[usize; 2], String> {
    match v {
        [a, b] if *a >= 1 && *b >= 1 => Ok([*a as usize, *b as usize]),
        _ => Err(format!("{what} must be two positive integers (2-d only), got {v:?}")),
    }
}

fn window(node: &NodeProto, needs_kernel: bool) -> Result<Window, String> {
    let kernel = match ints(node, "kernel_shape") {
        Some(k) => Some(pair(&k, "kernel_shape")?),
        None if needs_kernel => return Err("kernel_shape is required".into()),
        None => None,
    };
    let strides = match ints(node, "strides") {
        Some(s) => pair(&s, "strides")?,
        None => [1, 1],
    };
    let dilations = match ints(node, "dilations") {
        Some(s) => pair(&s, "dilations")?,
        None => [1, 1],
    };
    let pad = match string(node, "auto_pad").as_deref().unwrap_or("NOTSET") {
        "NOTSET" => match ints(node, "pads") {
            None => AutoPad::Explicit(vec![0; 4]),
            Some(p) if p.len() == 4 && p.iter().all(|&v| v >= 0) => {
                AutoPad::Explicit(p.iter().map(|&v| v as usize).collect())
            }
            Some(p) => return Err(format!("pads must be 4 non-negative integers (2-d only), got {p:?}")),
        },
        "VALID" => AutoPad::Explicit(vec![0; 4]),
        "SAME_UPPER" => AutoPad::Same { upper: true },
        "SAME_LOWER" => AutoPad::Same { upper: false },
        other => return Err(format!("unknown auto_pad `{other}`")),
    };
    Ok(Window { kernel, strides, dilations, pad })
}

/// Outcome of reading a node: the op, or the reason it is not supported.
pub enum Parsed {
    /// A supported op.
    Op(Op),
    /// An op type we do not implement.
    Unsupported(String),
    /// A supported op type with settings we do not implement or that are invalid.
    Invalid(String),
}

impl Op {
    /// Reads a node's op and attributes. `opset` is the default domain's version.
    pub fn parse(node: &NodeProto, opset: i64) -> Parsed {
        match Self::parse_inner(node, opset) {
            Ok(Some(op)) => Parsed::Op(op),
            Ok(None) => Parsed::Unsupported(String::new()),
            Err(e) => Parsed::Invalid(e),
        }
    }

    fn parse_inner(node: &NodeProto, opset: i64) -> Result<Option<Op>, String> {
        if !node.domain().is_empty() && node.domain() != "ai.onnx" {
            return Ok(None);
        }
        Ok(Some(match node.op_type() {
            "Gemm" => Op::Gemm {
                alpha: float(node, "alpha", 1.0),
                beta: float(node, "beta", 1.0),
                trans_a: int(node, "transA", 0) != 0,
                trans_b: int(node, "transB", 0) != 0,
            },
            "MatMul" => Op::MatMul,
            "Add" | "Sub" | "Mul" | "Div" if attr(node, "broadcast").is_some_and(|a| a.i == Some(1)) => {
                return Err("legacy `broadcast`/`axis` attributes (opset < 7) are not supported".into())
            }
            "Add" => Op::Add,
            "Sub" => Op::Sub,
            "Mul" => Op::Mul,
            "Div" => Op::Div,
            "Conv" => Op::Conv { window: window(node, false)?, group: int(node, "group", 1).max(1) as usize },
            "Relu" => Op::Relu,
            "Sigmoid" => Op::Sigmoid,
            "Tanh" => Op::Tanh,
            "Flatten" => Op::Flatten { axis: int(node, "axis", 1) },
            "Reshape" => Op::Reshape { allowzero: int(node, "allowzero", 0) != 0 },
            "Pad" => {
                let mode = string(node, "mode").unwrap_or_else(|| "constant".into());
                if mode != "constant" {
                    return Err(format!("only mode `constant` is supported, got `{mode}`"));
                }
                if opset < 11 {
                    let pads = ints(node, "pads").ok_or("pads is required")?;
                    Op::Pad { pads: Some(pads), value: float(node, "value", 0.0) }
                } else {
                    Op::Pad { pads: None, value: 0.0 }
                }
            }
            "MaxPool" => {
                if int(node, "ceil_mode", 0) != 0 {
                    return Err("ceil_mode = 1 is not supported".into());
                }
                if int(node, "storage_order", 0) != 0 {
                    return Err("storage_order = 1 is not supported".into());
                }
                Op::MaxPool { window: window(node, true)? }
            }
            "AveragePool" => {
                if int(node, "ceil_mode", 0) != 0 {
                    return Err("ceil_mode = 1 is not supported".into());
                }
                let w = window(node, true)?;
                if w.dilations != [1, 1] {
                    return Err("dilations are not supported".into());
                }
                Op::AveragePool { window: w, count_include_pad: int(node, "count_include_pad", 0) != 0 }
            }
            "BatchNormalization" => {
                if int(node, "training_mode", 0) != 0 {
                    return Err("training_mode = 1 is not supported (inference only)".into());
                }
                Op::BatchNormalization { epsilon: float(node, "epsilon", 1e-5) }
            }
            "Constant" => Op::Constant { value: constant_value(node)? },
            "Identity" | "Dropout" => Op::Identity,
            _ => return Ok(None),
        }))
    }

    /// How many inputs the op reads: `(required, at most)`.
    pub fn arity(&self) -> (usize, usize) {
        match self {
            Op::Gemm { .. } => (2, 3),
            Op::MatMul | Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Reshape { .. } => (2, 2),
            Op::Conv { .. } => (2, 3),
            Op::Relu | Op::Sigmoid | Op::Tanh | Op::Flatten { .. } | Op::MaxPool { .. } => (1, 1),
            Op::AveragePool { .. } => (1, 1),
            Op::Pad { pads: Some(_), .. } => (1, 1),
            Op::Pad { pads: None, .. } => (2, 4),
            Op::BatchNormalization { .. } => (5, 5),
            Op::Constant { .. } => (0, 0),
            // Dropout may carry a ratio and a training flag.
            Op::Identity => (1, 3),
        }
    }

    /// Evaluates the op on its inputs (`None` for an omitted optional input).
    pub fn eval(&self, xs: &[Option<&Tensor>]) -> Result<Tensor, String> {
        let get = |i: usize| xs.get(i).copied().flatten().ok_or_else(|| format!("input {i} is missing"));
        match self {
            Op::Gemm { alpha, beta, trans_a, trans_b } => {
                let (a, b) = (get(0)?, get(1)?);
                if a.shape.len() != 2 || b.shape.len() != 2 {
                    return Err(format!("Gemm needs 2-d A and B, got {:?} and {:?}", a.shape, b.shape));
                }
                let a = if *trans_a { transpose(a, &[1, 0]) } else { a.clone() };
                let b = if *trans_b { transpose(b, &[1, 0]) } else { b.clone() };
                let mut y = matmul(&a, &b)?;
                y.data.iter_mut().for_each(|v| *v *= alpha);
                match xs.get(2).copied().flatten() {
                    Some(c) => {
                        let out = broadcast_binary(&y, c, |y, c| y + beta * c)?;
                        if out.shape != y.shape {
                            return Err(format!("C {:?} does not broadcast to {:?}", c.shape, y.shape));
                        }
                        Ok(out)
                    }
                    None => Ok(y),
                }
            }
            Op::MatMul => matmul(get(0)?, get(1)?),
            Op::Add => broadcast_binary(get(0)?, get(1)?, |a, b| a + b),
            Op::Sub => broadcast_binary(get(0)?, get(1)?, |a, b| a - b),
            Op::Mul => broadcast_binary(get(0)?, get(1)?, |a, b| a * b),
            Op::Div => broadcast_binary(get(0)?, get(1)?, |a, b| a / b),
            Op::Conv { window, group } => conv(get(0)?, get(1)?, xs.get(2).copied().flatten(), window, *group),
            Op::Relu => Ok(map(get(0)?, |v| v.max(0.0))),
            Op::Sigmoid => Ok(map(get(0)?, |v| 1.0 / (1.0 + (-v).exp()))),
            Op::Tanh => Ok(map(get(0)?, f64::tanh)),
            Op::Flatten { axis } => {
                let x = get(0)?;
                let r = x.shape.len() as i64;
                let a = if *axis < 0 { axis + r } else { *axis };
                if a < 0 || a > r {
                    return Err(format!("axis {axis} is out of range for rank {r}"));
                }
                let lead: usize = x.shape[..a as usize].iter().product();
                x.clone().reshaped(vec![lead, x.numel() / lead.max(1)])
            }
            Op::Reshape { allowzero } => {
                let x = get(0)?;
                let spec = get(1)?.to_i64()?;
                x.clone().reshaped(reshape_target(&x.shape, &spec, *allowzero)?)
            }
            Op::Pad { pads, value } => {
                let x = get(0)?;
                let (pads, value) = match pads {
                    Some(p) => (p.clone(), *value),
                    None => {
                        let p = get(1)?.to_i64()?;
                        let v = xs.get(2).copied().flatten().map(|t| t.data.first().copied().unwrap_or(0.0));
                        if xs.get(3).copied().flatten().is_some() {
                            return Err("the `axes` input is not supported".into());
                        }
                        (p, v.unwrap_or(0.0))
                    }
                };
                pad(x, &pads, value)
            }
            Op::MaxPool { window } => pool(get(0)?, window, None),
            Op::AveragePool { window, count_include_pad } => pool(get(0)?, window, Some(*count_include_pad)),
            Op::BatchNormalization { epsilon } => {
                let x = get(0)?;
                let [s, b, m, v] = [get(1)?, get(2)?, get(3)?, get(4)?];
                let c = *x.shape.get(1).ok_or("the input needs a channel axis")?;
                if [s, b, m, v].iter().any(|t| t.numel() != c) {
                    return Err(format!("scale, B, mean and var must have {c} values (one per channel)"));
                }
                let inner: usize = x.shape[2..].iter().product();
                let mut y = x.clone();
                for (i, val) in y.data.iter_mut().enumerate() {
                    let ch = (i / inner) % c;
                    *val = (*val - m.data[ch]) / (v.data[ch] + epsilon).sqrt() * s.data[ch] + b.data[ch];
                }
                Ok(y)
            }
            Op::Constant { value } => Ok(value.clone()),
            Op::Identity => Ok(get(0)?.clone()),
        }
    }
}

fn map(x: &Tensor, f: impl Fn(f64) -> f64) -> Tensor {
    Tensor { shape: x.shape.clone(), data: x.data.iter().map(|&v| f(v)).collect() }
}

fn constant_value(node: &NodeProto) -> Result<Tensor, String> {
    let a = node.attribute.first().ok_or("Constant needs a value attribute")?;
    if node.attribute.len() != 1 {
        return Err("Constant needs exactly one value attribute".into());
    }
    match a.name() {
        "value" => Tensor::from_proto(a.t.as_ref().ok_or("`value` holds no tensor")?),
        "value_float" => Ok(Tensor { shape: vec![], data: vec![a.f.ok_or("value_float is empty")? as f64] }),
        "value_floats" => {
            Ok(Tensor { shape: vec![a.floats.len()], data: a.floats.iter().map(|&v| v as f64).collect() })
        }
        "value_int" => Ok(Tensor { shape: vec![], data: vec![a.i.ok_or("value_int is empty")? as f64] }),
        "value_ints" => Ok(Tensor { shape: vec![a.ints.len()], data: a.ints.iter().map(|&v| v as f64).collect() }),
        other => Err(format!("Constant attribute `{other}` is not supported")),
    }
    .map_err(|e| {
        if a.r#type() == AttributeType::SparseTensor {
            "sparse constants are not supported".into()
        } else {
            e
        }
    })
}

/// The target shape of a Reshape (`0` copies the input's dimension unless `allowzero`, one `-1`
/// is inferred).
pub fn reshape_target(input: &[usize], spec: &[i64], allowzero: bool) -> Result<Vec<usize>, String> {
    let n: usize = input.iter().product();
    let mut out = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &d) in spec.iter().enumerate() {
        out.push(match d {
            -1 if infer.is_none() => {
                infer = Some(i);
                1
            }
            -1 => return Err(format!("shape {spec:?} has more than one -1")),
            0 if !allowzero => *input.get(i).ok_or_else(|| format!("shape {spec:?}: 0 at {i} has no input dim"))?,
            d if d >= 0 => d as usize,
            d => return Err(format!("shape {spec:?} has the invalid dimension {d}")),
        });
    }
    if let Some(i) = infer {
        let known: usize = out.iter().product();
        if known == 0 || !n.is_multiple_of(known) {
            return Err(format!("cannot reshape {input:?} to {spec:?}"));
        }
        out[i] = n / known;
    }
    if out.iter().product::<usize>() != n {
        return Err(format!("cannot reshape {input:?} ({n} values) to {spec:?}"));
    }
    Ok(out)
}

fn pad(x: &Tensor, pads: &[i64], value: f64) -> Result<Tensor, String> {
    let r = x.shape.len();
    if pads.len() != 2 * r || pads.iter().any(|&p| p < 0) {
        return Err(format!("pads must be {} non-negative integers for rank {r}, got {pads:?}", 2 * r));
    }
    let shape: Vec<usize> = (0..r).map(|d| x.shape[d] + (pads[d] + pads[d + r]) as usize).collect();
    let os = Tensor::strides(&shape);
    let is = Tensor::strides(&x.shape);
    let mut y = Tensor { shape: shape.clone(), data: vec![value; shape.iter().product()] };
    for (f, &v) in x.data.iter().enumerate() {
        let off: usize = (0..r).map(|d| ((f / is[d]) % x.shape[d] + pads[d] as usize) * os[d]).sum();
        y.data[off] = v;
    }
    Ok(y)
}

fn dims4(x: &Tensor, what: &str) -> Result<[usize; 4], String> {
    match x.shape[..] {
        [n, c, h, w] => Ok([n, c, h, w]),
        _ => Err(format!("{what} needs a 4-d input [N, C, H, W], got {:?}", x.shape)),
    }
}

fn conv(x: &Tensor, w: &Tensor, b: Option<&Tensor>, win: &Window, group: usize) -> Result<Tensor, String> {
    let [n, c, h, wd] = dims4(x, "Conv")?;
    let [m, cg, kh, kw] = dims4(w, "the Conv weight")?;
    if let Some(k) = win.kernel {
        if k != [kh, kw] {
            return Err(format!("kernel_shape {k:?} differs from the weight's {:?}", [kh, kw]));
        }
    }
    if c % group != 0 || m % group != 0 || cg != c / group {
        return Err(format!("{c} input channels, {m} filters of {cg} channels do not fit group = {group}"));
    }
    if let Some(b) = b {
        if b.numel() != m {
            return Err(format!("the bias has {} values for {m} filters", b.numel()));
        }
    }
    let ([oh, ow], p) = win.geometry([h, wd], [kh, kw])?;
    let mg = m / group;
    let mut y = vec![0.0; n * m * oh * ow];
    for img in 0..n {
        for f in 0..m {
            let g = f / mg;
            let bias = b.map_or(0.0, |b| b.data[f]);
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = bias;
                    for ci in 0..cg {
                        let ch = g * cg + ci;
                        for ky in 0..kh {
                            let iy = (oy * win.strides[0] + ky * win.dilations[0]) as isize - p[0] as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            for kx in 0..kw {
                                let ix = (ox * win.strides[1] + kx * win.dilations[1]) as isize - p[1] as isize;
                                if ix < 0 || ix >= wd as isize {
                                    continue;
                                }
                                s += x.data[((img * c + ch) * h + iy as usize) * wd + ix as usize]
                                    * w.data[((f * cg + ci) * kh + ky) * kw + kx];
                            }
                        }
                    }
                    y[((img * m + f) * oh + oy) * ow + ox] = s;
                }
            }
        }
    }
    Tensor::new(vec![n, m, oh, ow], y)
}

/// Max pooling (`avg = None`) or average pooling (`Some(count_include_pad)`).
fn pool(x: &Tensor, win: &Window, avg: Option<bool>) -> Result<Tensor, String> {
    let [n, c, h, wd] = dims4(x, "pooling")?;
    let k = win.kernel.ok_or("kernel_shape is required")?;
    let ([oh, ow], p) = win.geometry([h, wd], k)?;
    let mut y = vec![0.0; n * c * oh * ow];
    for plane in 0..n * c {
        let xp = &x.data[plane * h * wd..(plane + 1) * h * wd];
        for oy in 0..oh {
            for ox in 0..ow {
                let (mut best, mut sum, mut count) = (f64::NEG_INFINITY, 0.0, 0usize);
                for ky in 0..k[0] {
                    for kx in 0..k[1] {
                        let iy = (oy * win.strides[0] + ky * win.dilations[0]) as isize - p[0] as isize;
                        let ix = (ox * win.strides[1] + kx * win.dilations[1]) as isize - p[1] as isize;
                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                            continue;
                        }
                        let v = xp[iy as usize * wd + ix as usize];
                        best = best.max(v);
                        sum += v;
                        count += 1;
                    }
                }
                y[(plane * oh + oy) * ow + ox] = match avg {
                    None => best,
                    // The window lies inside the padded input (geometry), so it always has k₀k₁ places.
                    Some(true) => sum / (k[0] * k[1]) as f64,
                    Some(false) => sum / count.max(1) as f64,
                };
            }
        }
    }
    Tensor::new(vec![n, c, oh, ow], y)
}
