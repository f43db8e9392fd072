//! An imported ONNX graph: one input, one output, nodes in topological order with constants
//! folded, shapes checked by a forward pass at import, and an f64 forward pass.

use crate::error::{ImportError, Result};
use crate::ops::{Op, Parsed};
use crate::proto::onnx::{type_proto, ModelProto, ValueInfoProto};
use crate::tensor::Tensor;
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// One node of the graph after import.
#[derive(Debug, Clone)]
pub struct Node {
    /// The node's name (its first output's name when the file has none).
    pub name: String,
    /// The ONNX op type, e.g. `Gemm`.
    pub op_type: String,
    /// The op and its attributes.
    pub op: Op,
    /// Value ids of the inputs (`None` for an omitted optional input).
    pub inputs: Vec<Option<usize>>,
    /// Value id of the (first) output.
    pub output: usize,
}

/// An imported model.
#[derive(Debug, Clone)]
pub struct Model {
    /// Names of the values, by id.
    pub value_names: Vec<String>,
    /// Constant values by id (initializers and folded nodes); `None` for computed values.
    pub constants: Vec<Option<Tensor>>,
    /// The nodes that compute the output from the input, in topological order.
    pub nodes: Vec<Node>,
    /// The input's value id.
    pub input: usize,
    /// The input's shape (symbolic dimensions, such as a batch size, become 1).
    pub input_shape: Vec<usize>,
    /// The output's value id.
    pub output: usize,
    /// The output's shape (computed at import).
    pub output_shape: Vec<usize>,
    /// Every value's shape, computed at import (by id; constants included).
    pub shapes: Vec<Vec<usize>>,
}

fn declared_shape(v: &ValueInfoProto) -> Option<Vec<usize>> {
    let t = match v.r#type.as_ref()?.value.as_ref()? {
        type_proto::Value::TensorType(t) => t,
        _ => return None,
    };
    let shape = t.shape.as_ref()?;
    Some(
        shape
            .dim
            .iter()
            .map(|d| match d.value {
                Some(crate::proto::onnx::tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => v as usize,
                _ => 1,
            })
            .collect(),
    )
}

impl Model {
    /// Reads and imports an ONNX file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let p = path.as_ref();
        let bytes = std::fs::read(p).map_err(|e| ImportError::Io { path: p.display().to_string(), source: e })?;
        Self::from_bytes(&bytes)
    }

    /// Imports an ONNX model from its serialized bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let model = ModelProto::decode(bytes).map_err(|e| ImportError::Decode(e.to_string()))?;
        Self::from_proto(&model)
    }

    /// Imports a decoded `ModelProto`.
    pub fn from_proto(model: &ModelProto) -> Result<Self> {
        let g = model.graph.as_ref().ok_or_else(|| ImportError::Graph("the model has no graph".into()))?;
        let opset = model
            .opset_import
            .iter()
            .find(|o| o.domain().is_empty() || o.domain() == "ai.onnx")
            .map(|o| o.version())
            .unwrap_or(1);
        let mut ids: HashMap<String, usize> = HashMap::new();
        let mut names: Vec<String> = Vec::new();
        let mut constants: Vec<Option<Tensor>> = Vec::new();
        let mut intern = |name: &str, names: &mut Vec<String>, constants: &mut Vec<Option<Tensor>>| -> usize {
            *ids.entry(name.to_string()).or_insert_with(|| {
                names.push(name.to_string());
                constants.push(None);
                names.len() - 1
            })
        };
        for init in &g.initializer {
            let t = Tensor::from_proto(init)
                .map_err(|e| ImportError::Graph(format!("initializer `{}`: {e}", init.name())))?;
            let id = intern(init.name(), &mut names, &mut constants);
            constants[id] = Some(t);
        }
        let initialised: HashSet<&str> = g.initializer.iter().map(|t| t.name()).collect();
        let real_inputs: Vec<&ValueInfoProto> = g.input.iter().filter(|v| !initialised.contains(v.name())).collect();
        let [input_info] = real_inputs[..] else {
            return Err(ImportError::Graph(format!(
                "the graph must have exactly one input, it has {} ({})",
                real_inputs.len(),
                real_inputs.iter().map(|v| v.name()).collect::<Vec<_>>().join(", ")
            )));
        };
        let [output_info] = &g.output[..] else {
            return Err(ImportError::Graph(format!(
                "the graph must have exactly one output, it has {}",
                g.output.len()
            )));
        };
        let input_shape = declared_shape(input_info)
            .ok_or_else(|| ImportError::Graph(format!("the input `{}` has no tensor shape", input_info.name())))?;
        let input = intern(input_info.name(), &mut names, &mut constants);

        // Parse every node; remember who produces each value.
        let mut parsed: Vec<Node> = Vec::new();
        let mut producer: HashMap<usize, usize> = HashMap::new();
        let mut extra_outputs: HashMap<String, String> = HashMap::new();
        for (k, n) in g.node.iter().enumerate() {
            let first = n.output.first().cloned().unwrap_or_default();
            let name = if n.name().is_empty() {
                if first.is_empty() {
                    format!("#{k}")
                } else {
                    first.clone()
                }
            } else {
                n.name().to_string()
            };
            let op = match Op::parse(n, opset) {
                Parsed::Op(op) => op,
                Parsed::Unsupported(d) => {
                    return Err(ImportError::Unsupported { op: n.op_type().into(), node: name, detail: d })
                }
                Parsed::Invalid(msg) => return Err(ImportError::Node { node: name, op: n.op_type().into(), msg }),
            };
            let (lo, hi) = op.arity();
            let present = n.input.iter().rposition(|s| !s.is_empty()).map_or(0, |i| i + 1);
            if present < lo || n.input.len() > hi {
                return Err(ImportError::Node {
                    node: name,
                    op: n.op_type().into(),
                    msg: format!("expects {lo} to {hi} inputs, has {}", n.input.len()),
                });
            }
            if first.is_empty() {
                return Err(ImportError::Node { node: name, op: n.op_type().into(), msg: "has no output".into() });
            }
            for extra in n.output.iter().skip(1).filter(|s| !s.is_empty()) {
                extra_outputs.insert(extra.clone(), name.clone());
            }
            let inputs = n
                .input
                .iter()
                .map(|s| if s.is_empty() { None } else { Some(intern(s, &mut names, &mut constants)) })
                .collect();
            let output = intern(&first, &mut names, &mut constants);
            if producer.insert(output, parsed.len()).is_some() || constants[output].is_some() || output == input {
                return Err(ImportError::Graph(format!("the value `{first}` is assigned more than once")));
            }
            parsed.push(Node { name, op_type: n.op_type().into(), op, inputs, output });
        }
        let output = *ids
            .get(output_info.name())
            .ok_or_else(|| ImportError::Graph(format!("the output `{}` is never computed", output_info.name())))?;

        // Keep the nodes the output needs, in topological order (depth-first from the output).
        let mut order: Vec<usize> = Vec::new();
        let mut state: HashMap<usize, bool> = HashMap::new(); // false: in progress, true: done
        let mut stack: Vec<(usize, bool)> = Vec::new();
        let need = |v: usize, stack: &mut Vec<(usize, bool)>| -> Result<()> {
            if v == input || constants[v].is_some() {
                return Ok(());
            }
            match producer.get(&v) {
                Some(&n) => {
                    stack.push((n, false));
                    Ok(())
                }
                None => Err(ImportError::Graph(match extra_outputs.get(&names[v]) {
                    Some(node) => format!(
                        "the value `{}` is a secondary output of node `{node}`; only first outputs are supported",
                        names[v]
                    ),
                    None => format!("the value `{}` is used but never defined", names[v]),
                })),
            }
        };
        need(output, &mut stack)?;
        while let Some((n, expanded)) = stack.pop() {
            if expanded {
                state.insert(n, true);
                order.push(n);
                continue;
            }
            match state.get(&n) {
                Some(true) => continue,
                Some(false) => {
                    return Err(ImportError::Graph(format!("the graph has a cycle through node `{}`", parsed[n].name)))
                }
                None => {}
            }
            state.insert(n, false);
            stack.push((n, true));
            for v in parsed[n].inputs.iter().flatten() {
                if let Some(&p) = producer.get(v) {
                    if state.get(&p) == Some(&false) {
                        return Err(ImportError::Graph(format!(
                            "the graph has a cycle through node `{}`",
                            parsed[n].name
                        )));
                    }
                }
                need(*v, &mut stack)?;
            }
        }

        // Fold constants and check shapes with one pass on zeros.
        let mut nodes = Vec::new();
        let mut shapes: Vec<Vec<usize>> =
            constants.iter().map(|c| c.as_ref().map_or(vec![], |t| t.shape.clone())).collect();
        let mut values: Vec<Option<Tensor>> = constants.clone();
        values[input] = Some(Tensor::zeros(&input_shape));
        shapes[input] = input_shape.clone();
        for &k in &order {
            let node = &parsed[k];
            let y = eval_node(node, &values, &[])?;
            shapes[node.output] = y.shape.clone();
            let constant = node.inputs.iter().flatten().all(|&v| constants[v].is_some());
            if constant {
                constants[node.output] = Some(y.clone());
            } else {
                nodes.push(node.clone());
            }
            values[node.output] = Some(y);
        }
        let output_shape = shapes[output].clone();
        if let Some(decl) = declared_shape(output_info) {
            if decl.iter().product::<usize>() != output_shape.iter().product::<usize>() {
                return Err(ImportError::Graph(format!(
                    "the output is declared {decl:?} but the graph computes {output_shape:?}"
                )));
            }
        }
        Ok(Model { value_names: names, constants, nodes, input, input_shape, output, output_shape, shapes })
    }

    /// Number of input values (the flattened input).
    pub fn input_len(&self) -> usize {
        self.input_shape.iter().product()
    }

    /// Number of output values (the flattened output).
    pub fn output_len(&self) -> usize {
        self.output_shape.iter().product()
    }

    /// The forward pass in f64 on one flattened input (row-major in the input's shape); returns
    /// the flattened output. Errors on a wrong length or a non-finite result.
    pub fn forward(&self, x: &[f64]) -> Result<Vec<f64>> {
        if x.len() != self.input_len() {
            return Err(ImportError::Graph(format!(
                "the input has {} values, the model expects {} (shape {:?})",
                x.len(),
                self.input_len(),
                self.input_shape
            )));
        }
        let mut values: Vec<Option<Tensor>> = vec![None; self.constants.len()];
        values[self.input] = Some(Tensor { shape: self.input_shape.clone(), data: x.to_vec() });
        self.run(&mut values, 0..self.nodes.len())?;
        let y = values[self.output].take().expect("the output is computed");
        if y.data.iter().any(|v| !v.is_finite()) {
            return Err(ImportError::Graph("the forward pass produced NaN or infinite values".into()));
        }
        Ok(y.data)
    }

    /// Evaluates `nodes[range]` into `values` (by value id; constants are read from the model
    /// where `values` has none).
    pub fn run(&self, values: &mut [Option<Tensor>], range: std::ops::Range<usize>) -> Result<()> {
        for node in &self.nodes[range] {
            let y = eval_node(node, values, &self.constants)?;
            values[node.output] = Some(y);
        }
        Ok(())
    }

    /// The op types of the (non-constant) nodes, in order.
    pub fn op_types(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| n.op_type.as_str()).collect()
    }
}

fn eval_node(node: &Node, values: &[Option<Tensor>], constants: &[Option<Tensor>]) -> Result<Tensor> {
    let xs: Vec<Option<&Tensor>> = node
        .inputs
        .iter()
        .map(|v| v.and_then(|v| values[v].as_ref().or_else(|| constants.get(v).and_then(|c| c.as_ref()))))
        .collect();
    node.op.eval(&xs).map_err(|msg| ImportError::Node { node: node.name.clone(), op: node.op_type.clone(), msg })
}
