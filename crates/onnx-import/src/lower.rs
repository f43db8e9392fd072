//! Lowering an imported graph to a `nets::Network` for the bound engine.
//!
//! A graph that is a chain `A_1 → ReLU → A_2 → ReLU → … → A_L`, where every `A_i` is a subgraph
//! affine in the previous ReLU's output (Gemm, MatMul, Add/Sub, Mul/Div by constants, Conv,
//! Flatten, Reshape, Pad, AveragePool, BatchNormalization, Identity — residual Adds of two
//! branches included, as long as both start after the same ReLU), becomes the Sequential
//! network `Linear, ReLU, …, Linear` on the flattened input. Each `A_i(z) = W z + b` is read
//! off the graph's own f64 forward pass: `b = A_i(0)` and column `j` of `W` is `A_i(e_j) − b`
//! (exact up to one rounding of `b` per entry, ~1e-16 relative). Anything else (a ReLU branch
//! joined across a ReLU, Sigmoid, Tanh, MaxPool, a product of two computed values) is refused
//! with the node that breaks the form.
//!
//! [`Model::lower`] is the general form: the graph is cut at ReLU, Sigmoid, Tanh and MaxPool
//! nodes, each becomes a layer of its own (MaxPool on the `[C, H, W]` shape of its input), and
//! the affine segments between them are read off as above.

use crate::error::{ImportError, Result};
use crate::graph::Model;
use crate::ops::Op;
use crate::tensor::Tensor;
use candle_core::{Device, Tensor as CTensor, Var};
use nets::{
    layers::{Flatten, Linear, MaxPool2d, ReLU, Reshape, Sigmoid, Tanh},
    Layer, Network, NetworkKind,
};

/// Largest `W` (entries) read off the graph per affine segment.
pub const MAX_SEGMENT_ENTRIES: usize = 16_000_000;

/// One affine segment `z ↦ W z + b` of the chain, in f64.
#[derive(Debug, Clone)]
pub struct Affine {
    /// `[out][in]` row-major, `out × in` values.
    pub weight: Vec<f64>,
    /// `out` values.
    pub bias: Vec<f64>,
    /// Input length.
    pub inputs: usize,
    /// Output length.
    pub outputs: usize,
}

/// The chain form of a model: affine segments separated by ReLUs (`segments.len() - 1` ReLUs).
#[derive(Debug, Clone)]
pub struct Chain {
    /// `A_1, …, A_L`.
    pub segments: Vec<Affine>,
}

/// Is the op affine in its non-constant inputs `nonconst` (positions)?
fn affine_in(op: &Op, nonconst: &[usize]) -> bool {
    match op {
        Op::Add | Op::Sub => true,
        Op::Mul => nonconst.len() == 1,
        Op::Div => nonconst == [0],
        Op::MatMul => nonconst.len() == 1,
        Op::Gemm { .. } => nonconst.iter().filter(|&&i| i < 2).count() == 1,
        Op::Conv { .. } | Op::Reshape { .. } | Op::Pad { .. } | Op::BatchNormalization { .. } => nonconst == [0],
        Op::Flatten { .. } | Op::AveragePool { .. } | Op::Identity => true,
        Op::Relu | Op::Sigmoid | Op::Tanh | Op::MaxPool { .. } | Op::Constant { .. } => false,
    }
}

/// The nonlinear node that ends a segment of the general lowering ([`Model::lower`]).
#[derive(Debug, Clone)]
enum Cut {
    Relu,
    Sigmoid,
    Tanh,
    /// MaxPool on an input `[C, H, W]` (batch dropped).
    MaxPool {
        chw: [usize; 3],
        kernel: [usize; 2],
        stride: [usize; 2],
        pads: [usize; 4],
    },
}

/// The parts of a graph cut at its nonlinear nodes: `sources[s] → ends[s]` through `members[s]`
/// for every segment, and the cut node after every segment but the last.
struct Parts {
    sources: Vec<usize>,
    ends: Vec<usize>,
    members: Vec<Vec<usize>>,
    cuts: Vec<usize>,
}

impl Model {
    /// The chain form of the model (see the module documentation), or an error naming the node
    /// that does not fit.
    pub fn chain(&self) -> Result<Chain> {
        let p = self.parts(false)?;
        let mut segments = Vec::new();
        for s in 0..p.sources.len() {
            segments.push(self.segment(p.sources[s], p.ends[s], &p.members[s])?);
        }
        Ok(Chain { segments })
    }

    /// The model as a Sequential `nets::Network` on the flattened input, in f64, with ReLU,
    /// Sigmoid, Tanh and MaxPool nodes as layers of their own: each affine segment between them
    /// is one `Linear` read off the graph (none where the segment is empty), a MaxPool becomes
    /// `Reshape([C, H, W])`, `MaxPool2d`, `Flatten`. (A pure ReLU chain gives the same network as
    /// [`Model::to_network`].) Unsupported attributes (a dilated MaxPool) are errors naming the
    /// node.
    pub fn lower(&self, name: &str, device: &Device) -> Result<Network> {
        let p = self.parts(true)?;
        let n_in: usize = self.shapes[self.input].iter().product();
        let mut layers: Vec<Box<dyn Layer>> = Vec::new();
        for s in 0..p.sources.len() {
            if !(p.members[s].is_empty() && p.sources[s] == p.ends[s]) {
                let a = self.segment(p.sources[s], p.ends[s], &p.members[s])?;
                let w = CTensor::from_vec(a.weight, (a.outputs, a.inputs), device)?;
                let b = CTensor::from_vec(a.bias, a.outputs, device)?;
                layers.push(Box::new(Linear { weight: Var::from_tensor(&w)?, bias: Some(Var::from_tensor(&b)?) }));
            }
            let Some(&k) = p.cuts.get(s) else { continue };
            match self.cut(k)? {
                Cut::Relu => layers.push(Box::new(ReLU)),
                Cut::Sigmoid => layers.push(Box::new(Sigmoid)),
                Cut::Tanh => layers.push(Box::new(Tanh)),
                Cut::MaxPool { chw, kernel, stride, pads } => {
                    layers.push(Box::new(Reshape { shape: chw.to_vec() }));
                    layers.push(Box::new(MaxPool2d { kernel, stride, padding: pads }));
                    layers.push(Box::new(Flatten));
                }
            }
        }
        Ok(Network::new(NetworkKind::Sequential, name, &[n_in], layers)?)
    }

    /// What the cut node `k` becomes.
    fn cut(&self, k: usize) -> Result<Cut> {
        let node = &self.nodes[k];
        let bad = |why: String| ImportError::Lower(format!("node `{}` ({}): {why}", node.name, node.op_type));
        Ok(match &node.op {
            Op::Relu => Cut::Relu,
            Op::Sigmoid => Cut::Sigmoid,
            Op::Tanh => Cut::Tanh,
            Op::MaxPool { window } => {
                let x = node.inputs[0].expect("MaxPool has its input");
                let chw = match self.shapes[x][..] {
                    [1, c, h, w] => [c, h, w],
                    ref s => return Err(bad(format!("MaxPool input of shape {s:?}; [1, C, H, W] expected"))),
                };
                if window.dilations != [1, 1] {
                    return Err(bad(format!("dilations {:?} are not supported", window.dilations)));
                }
                let kernel = window.kernel.ok_or_else(|| bad("kernel_shape is required".into()))?;
                let pads = window.pads([chw[1], chw[2]], kernel);
                Cut::MaxPool { chw, kernel, stride: window.strides, pads }
            }
            _ => return Err(bad("not a nonlinear node of the lowering".into())),
        })
    }

    /// Cuts the graph at its ReLUs (and, when `general`, its Sigmoid, Tanh and MaxPool nodes).
    fn parts(&self, general: bool) -> Result<Parts> {
        let is_cut = |op: &Op| match op {
            Op::Relu => true,
            Op::Sigmoid | Op::Tanh | Op::MaxPool { .. } => general,
            _ => false,
        };
        // stage[v]: after how many ReLUs the value `v` is computed (None: constant).
        let mut stage: Vec<Option<usize>> = vec![None; self.value_names.len()];
        stage[self.input] = Some(0);
        let mut sources = vec![self.input]; // value that starts each segment
        let mut ends = Vec::new(); // value that ends each segment (a ReLU's input, then the output)
        let mut members: Vec<Vec<usize>> = vec![vec![]]; // node indices of each segment
        let mut cuts = Vec::new();
        for (k, node) in self.nodes.iter().enumerate() {
            let cur = sources.len() - 1;
            let nonconst: Vec<usize> =
                (0..node.inputs.len()).filter(|&i| node.inputs[i].is_some_and(|v| stage[v].is_some())).collect();
            let st: Vec<usize> = nonconst.iter().map(|&i| stage[node.inputs[i].unwrap()].unwrap()).collect();
            if st.iter().any(|&s| s != cur) {
                return Err(ImportError::Lower(format!(
                    "node `{}` ({}) reads a value from before an earlier ReLU (a skip connection across a ReLU)",
                    node.name, node.op_type
                )));
            }
            if is_cut(&node.op) {
                cuts.push(k);
                ends.push(node.inputs[0].expect("an activation has its input"));
                sources.push(node.output);
                members.push(vec![]);
                stage[node.output] = Some(cur + 1);
                continue;
            }
            if !affine_in(&node.op, &nonconst) {
                return Err(ImportError::Lower(format!(
                    "node `{}` ({}) is not affine in its inputs; the bound engine takes chains of affine maps and ReLUs",
                    node.name, node.op_type
                )));
            }
            stage[node.output] = Some(cur);
            members.last_mut().expect("one segment at least").push(k);
        }
        if stage[self.output] != Some(sources.len() - 1) {
            return Err(ImportError::Lower("the output is not computed after the last ReLU".into()));
        }
        ends.push(self.output);
        Ok(Parts { sources, ends, members, cuts })
    }

    /// Reads `W`, `b` of the affine map from value `from` to value `to` through `nodes`.
    fn segment(&self, from: usize, to: usize, nodes: &[usize]) -> Result<Affine> {
        let n_in: usize = self.shapes[from].iter().product();
        let n_out: usize = self.shapes[to].iter().product();
        if n_in.saturating_mul(n_out) > MAX_SEGMENT_ENTRIES {
            return Err(ImportError::Lower(format!(
                "an affine segment of {n_in} → {n_out} values is too large to read as a matrix"
            )));
        }
        let eval = |z: Vec<f64>| -> Result<Vec<f64>> {
            let mut values: Vec<Option<Tensor>> = vec![None; self.constants.len()];
            values[from] = Some(Tensor { shape: self.shapes[from].clone(), data: z });
            for &k in nodes {
                self.run(&mut values, k..k + 1)?;
            }
            Ok(values[to].take().expect("the segment computes its end").data)
        };
        let bias = eval(vec![0.0; n_in])?;
        let mut weight = vec![0.0; n_out * n_in];
        for j in 0..n_in {
            let mut e = vec![0.0; n_in];
            e[j] = 1.0;
            let col = eval(e)?;
            for i in 0..n_out {
                weight[i * n_in + j] = col[i] - bias[i];
            }
        }
        Ok(Affine { weight, bias, inputs: n_in, outputs: n_out })
    }

    /// The model as a Sequential `nets::Network` (`Linear, ReLU, …, Linear`) on the flattened
    /// input, in f64 on `device`.
    pub fn to_network(&self, name: &str, device: &Device) -> Result<Network> {
        self.chain()?.to_network(name, device)
    }
}

impl Chain {
    /// The chain as a Sequential `nets::Network` in f64.
    pub fn to_network(&self, name: &str, device: &Device) -> Result<Network> {
        let mut layers: Vec<Box<dyn Layer>> = Vec::new();
        for (i, s) in self.segments.iter().enumerate() {
            if i > 0 {
                layers.push(Box::new(ReLU));
            }
            let w = CTensor::from_vec(s.weight.clone(), (s.outputs, s.inputs), device)?;
            let b = CTensor::from_vec(s.bias.clone(), s.outputs, device)?;
            layers.push(Box::new(Linear { weight: Var::from_tensor(&w)?, bias: Some(Var::from_tensor(&b)?) }));
        }
        let n_in = self.segments[0].inputs;
        Ok(Network::new(NetworkKind::Sequential, name, &[n_in], layers)?)
    }

    /// The chain's forward pass in f64 (for checks).
    pub fn forward(&self, x: &[f64]) -> Vec<f64> {
        let mut z = x.to_vec();
        for (i, s) in self.segments.iter().enumerate() {
            if i > 0 {
                z.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            z = (0..s.outputs)
                .map(|o| {
                    s.bias[o]
                        + s.weight[o * s.inputs..(o + 1) * s.inputs].iter().zip(&z).map(|(w, x)| w * x).sum::<f64>()
                })
                .collect();
        }
        z
    }
}
