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

use crate::error::{ImportError, Result};
use crate::graph::Model;
use crate::ops::Op;
use crate::tensor::Tensor;
use candle_core::{Device, Tensor as CTensor, Var};
use nets::{
    layers::{Linear, ReLU},
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

impl Model {
    /// The chain form of the model (see the module documentation), or an error naming the node
    /// that does not fit.
    pub fn chain(&self) -> Result<Chain> {
        // stage[v]: after how many ReLUs the value `v` is computed (None: constant).
        let mut stage: Vec<Option<usize>> = vec![None; self.value_names.len()];
        stage[self.input] = Some(0);
        let mut sources = vec![self.input]; // value that starts each segment
        let mut ends = Vec::new(); // value that ends each segment (a ReLU's input, then the output)
        let mut members: Vec<Vec<usize>> = vec![vec![]]; // node indices of each segment
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
            if node.op == Op::Relu {
                ends.push(node.inputs[0].expect("a ReLU has its input"));
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
        let mut segments = Vec::new();
        for s in 0..sources.len() {
            segments.push(self.segment(sources[s], ends[s], &members[s])?);
        }
        Ok(Chain { segments })
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
